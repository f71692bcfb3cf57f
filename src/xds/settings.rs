//! What the node proxy needs to reach a control plane (protocols.md §4.1, §4.3, §5), parsed
//! from the environment ztunnel reads, as a pure function of it: the server URL and the name
//! its certificate must carry, the roots that verify it, the bearer token, the extra headers,
//! and the node identity sent with every initial xDS request. Nothing here opens a file.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Default files, relative to the working directory as ztunnel's (`/` in its image).
pub(crate) const DEFAULT_ROOT_CA: &str = "./var/run/secrets/istio/root-cert.pem";
pub(crate) const DEFAULT_TOKEN: &str = "./var/run/secrets/tokens/istio-token";
/// Where a proxy in a Kubernetes pod finds istiod (protocols.md §4.1).
pub(crate) const ISTIOD_ADDRESS: &str = "https://istiod.istio-system.svc:15012";

/// The roots a control plane's serving certificate is verified against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Roots {
    /// A PEM file, re-read on every connection (the root rotates).
    File(PathBuf),
    /// PEM given inline.
    Inline(String),
    /// The operating system's bundle (`SYSTEM`).
    System,
}

/// Where the bearer token comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Token {
    /// A file, re-read on every request (projected tokens rotate).
    File(PathBuf),
    Literal(String),
}

/// One gRPC server ferry dials: the xDS server or the CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// `https://host:port`.
    pub(crate) url: String,
    /// The DNS name (or IP) the server's certificate must carry.
    pub(crate) tls_name: String,
    pub(crate) roots: Roots,
    pub(crate) token: Token,
    pub(crate) cluster_id: String,
    /// `XDS_HEADER_<name>` / `CA_HEADER_<name>`, sent on every call.
    pub(crate) headers: Vec<(String, String)>,
}

/// The node identity of the initial xDS requests (protocols.md §4.3).
#[derive(Clone, Debug, PartialEq, Default)]
pub(crate) struct NodeInfo {
    pub(crate) id: String,
    pub(crate) metadata: BTreeMap<String, prost_types::Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct XdsSettings {
    pub(crate) target: Target,
    pub(crate) node: NodeInfo,
}

/// The environment, as the settings read it: a lookup and the full list (for prefixed names).
pub(crate) struct Env<'a> {
    pub(crate) vars: &'a [(String, String)],
}

impl Env<'_> {
    fn get(&self, k: &str) -> Option<&str> {
        self.vars.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    fn prefixed<'b>(&'b self, prefix: &'b str) -> impl Iterator<Item = (&'b str, &'b str)> + 'b {
        self.vars.iter().filter_map(move |(k, v)| Some((k.strip_prefix(prefix)?, v.as_str()))).filter(|(k, _)| !k.is_empty())
    }
}

/// `https://` prepended to a bare `host:port`; the URL's host for TLS unless `alt` names one.
pub(crate) fn target_url(raw: &str, alt: Option<&str>) -> Result<(String, String), String> {
    let url = if raw.contains("://") { raw.to_string() } else { format!("https://{raw}") };
    let uri: http::Uri = url.parse().map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{raw:?}: only https is accepted (the control plane is always reached over TLS)"));
    }
    let host = uri.host().ok_or_else(|| format!("{raw:?} names no host"))?;
    if uri.port_u16().is_none() {
        return Err(format!("{raw:?} names no port (istiod serves on 15012)"));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((url, alt.map(String::from).unwrap_or(host)))
}

fn roots(v: Option<&str>) -> Roots {
    match v {
        None => Roots::File(DEFAULT_ROOT_CA.into()),
        Some("SYSTEM") => Roots::System,
        Some(s) if s.contains("-----BEGIN") => Roots::Inline(s.to_string()),
        Some(s) => Roots::File(s.into()),
    }
}

/// `AUTH_TOKEN`: a path when it looks like one (absolute or `./`), else the token itself.
fn token(v: Option<&str>) -> Token {
    match v {
        None => Token::File(DEFAULT_TOKEN.into()),
        Some(s) if s.starts_with('/') || s.starts_with("./") => Token::File(s.into()),
        Some(s) => Token::Literal(s.to_string()),
    }
}

/// A header name from `XDS_HEADER_<name>`: gRPC metadata keys are lower case.
fn headers(env: &Env, prefix: &str) -> Result<Vec<(String, String)>, String> {
    env.prefixed(prefix)
        .map(|(k, v)| {
            let name = k.to_ascii_lowercase().replace('_', "-");
            http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("{prefix}{k}: {name:?} is not a header name"))?;
            http::HeaderValue::from_str(v).map_err(|_| format!("{prefix}{k}: the value is not a valid header value"))?;
            Ok((name, v.to_string()))
        })
        .collect()
}

/// The xDS target: `address` (already defaulted by the caller), with the roots, token and
/// headers of `XDS_*`.
pub(crate) fn xds_target(env: &Env, address: &str, cluster_id: &str) -> Result<Target, String> {
    let (url, tls_name) = target_url(address, env.get("ALT_XDS_HOSTNAME")).map_err(|e| format!("XDS_ADDRESS={e}"))?;
    Ok(Target {
        url,
        tls_name,
        roots: roots(env.get("XDS_ROOT_CA")),
        token: token(env.get("AUTH_TOKEN")),
        cluster_id: cluster_id.to_string(),
        headers: headers(env, "XDS_HEADER_")?,
    })
}

/// The CA target, with `CA_*`; the token is the same as xDS's.
pub(crate) fn ca_target(env: &Env, address: &str, cluster_id: &str) -> Result<Target, String> {
    let (url, tls_name) = target_url(address, env.get("ALT_CA_HOSTNAME")).map_err(|e| format!("CA_ADDRESS={e}"))?;
    Ok(Target {
        url,
        tls_name,
        roots: roots(env.get("CA_ROOT_CA")),
        token: token(env.get("AUTH_TOKEN")),
        cluster_id: cluster_id.to_string(),
        headers: headers(env, "CA_HEADER_")?,
    })
}

/// `ztunnel~<INSTANCE_IP>~<POD_NAME>.<POD_NAMESPACE>~<POD_NAMESPACE>.svc.cluster.local` and the
/// metadata istiod reads (protocols.md §4.3); `ISTIO_METAJSON_*` values must be JSON.
pub(crate) fn node_info(env: &Env, node_name: &str, cluster_id: &str) -> Result<NodeInfo, String> {
    use prost_types::value::Kind;
    let ip = env.get("INSTANCE_IP").unwrap_or("1.1.1.1");
    let (pod, ns) = (env.get("POD_NAME").unwrap_or(""), env.get("POD_NAMESPACE").unwrap_or(""));
    let s = |v: &str| prost_types::Value { kind: Some(Kind::StringValue(v.to_string())) };
    let mut metadata = BTreeMap::new();
    metadata.insert("NAME".to_string(), s(pod));
    metadata.insert("NAMESPACE".to_string(), s(ns));
    metadata.insert("INSTANCE_IPS".to_string(), s(ip));
    metadata.insert("NODE_NAME".to_string(), s(node_name));
    metadata.insert("CLUSTER_ID".to_string(), s(cluster_id));
    for (k, v) in env.prefixed("ISTIO_META_") {
        metadata.insert(k.to_string(), s(v));
    }
    for (k, v) in env.prefixed("ISTIO_METAJSON_") {
        let json: serde_json::Value = serde_json::from_str(v).map_err(|e| format!("ISTIO_METAJSON_{k} is not JSON: {e}"))?;
        metadata.insert(k.to_string(), json_value(json));
    }
    Ok(NodeInfo { id: format!("ztunnel~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"), metadata })
}

fn json_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue { values: a.into_iter().map(json_value).collect() }),
        serde_json::Value::Object(o) => {
            Kind::StructValue(prost_types::Struct { fields: o.into_iter().map(|(k, v)| (k, json_value(v))).collect() })
        }
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    type UrlCase = (&'static str, Option<&'static str>, Result<(&'static str, &'static str), &'static str>);

    #[test]
    fn addresses_get_https_and_a_name_to_verify() {
        #[rustfmt::skip]
        let cases: &[UrlCase] = &[
            ("istiod.istio-system.svc:15012", None, Ok(("https://istiod.istio-system.svc:15012", "istiod.istio-system.svc"))),
            ("https://10.0.0.1:15012", Some("istiod.istio-system.svc"), Ok(("https://10.0.0.1:15012", "istiod.istio-system.svc"))),
            ("https://[fd00::1]:15012", None, Ok(("https://[fd00::1]:15012", "fd00::1"))),
            ("http://istiod:15010", None, Err("only https")),
            ("https://istiod", None, Err("no port")),
            ("https://", None, Err("not a URL")),
        ];
        for (raw, alt, want) in cases {
            let got = target_url(raw, *alt);
            match (want, &got) {
                (Ok((u, n)), Ok((gu, gn))) => assert_eq!((u.to_string(), n.to_string()), (gu.clone(), gn.clone()), "{raw}"),
                (Err(e), Err(g)) => assert!(g.contains(e), "{raw}: {g}"),
                _ => panic!("{raw}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn roots_tokens_and_headers_follow_ztunnels_rules() {
        let vars = env(&[
            ("XDS_ROOT_CA", "SYSTEM"),
            ("CA_ROOT_CA", "/etc/ca/root.pem"),
            ("AUTH_TOKEN", "abc.def"),
            ("XDS_HEADER_X_TENANT", "blue"),
            ("CA_HEADER_", "ignored"),
        ]);
        let e = Env { vars: &vars };
        let x = xds_target(&e, "https://cp:15012", "c1").unwrap();
        assert_eq!(x.roots, Roots::System);
        assert_eq!(x.token, Token::Literal("abc.def".into()));
        assert_eq!(x.headers, vec![("x-tenant".to_string(), "blue".to_string())]);
        let c = ca_target(&e, "cp:15012", "c1").unwrap();
        assert_eq!(c.roots, Roots::File("/etc/ca/root.pem".into()));
        assert!(c.headers.is_empty());
        let none = Env { vars: &[] };
        let d = xds_target(&none, "cp:15012", "c1").unwrap();
        assert_eq!((d.roots, d.token), (Roots::File(DEFAULT_ROOT_CA.into()), Token::File(DEFAULT_TOKEN.into())));
        let bad = env(&[("XDS_HEADER_BAD", "a\nb")]);
        assert!(xds_target(&Env { vars: &bad }, "cp:15012", "c1").unwrap_err().contains("XDS_HEADER_BAD"));
    }

    #[test]
    fn the_node_identity_is_istios() {
        let vars = env(&[
            ("INSTANCE_IP", "10.1.2.3"),
            ("POD_NAME", "ztunnel-x"),
            ("POD_NAMESPACE", "istio-system"),
            ("ISTIO_META_ENABLE_HBONE", "true"),
            ("ISTIO_METAJSON_LABELS", r#"{"app":"ztunnel","n":2}"#),
        ]);
        let n = node_info(&Env { vars: &vars }, "node-1", "c1").unwrap();
        assert_eq!(n.id, "ztunnel~10.1.2.3~ztunnel-x.istio-system~istio-system.svc.cluster.local");
        let str_of = |k: &str| match &n.metadata[k].kind {
            Some(prost_types::value::Kind::StringValue(s)) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!((str_of("NODE_NAME"), str_of("ENABLE_HBONE"), str_of("CLUSTER_ID")), ("node-1".into(), "true".into(), "c1".into()));
        assert!(matches!(n.metadata["LABELS"].kind, Some(prost_types::value::Kind::StructValue(_))));
        let bad = env(&[("ISTIO_METAJSON_X", "{nope")]);
        assert!(node_info(&Env { vars: &bad }, "n", "c").unwrap_err().contains("ISTIO_METAJSON_X"));
        let dflt = node_info(&Env { vars: &[] }, "", "c").unwrap();
        assert_eq!(dflt.id, "ztunnel~1.1.1.1~.~.svc.cluster.local");
    }
}
