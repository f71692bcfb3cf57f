//! `RequestAuthentication` manifests (security.istio.io v1 and v1beta1) with `targetRefs` into
//! [`RequestAuthn`]. Selector-bound or namespace-wide ones are a sidecar's and skipped, as a
//! waypoint in Istio takes only `targetRefs`. A spec ferry cannot read entirely makes the
//! object broken: every request it targets is then refused (invariant P4), with a note.
//! Keys come from `jwks` (inline) or a `jwksUri` naming a file, read by the caller's reader.

use serde::Deserialize;

use super::{jwks, JwtRule, Location, RequestAuthn};
use crate::l7authz::{compile::targets, Target};

/// Reads a `jwksUri` file (the I/O edge supplies it, bounded to [`jwks::MAX_JWKS_BYTES`]).
pub type JwksReader<'a> = &'a dyn Fn(&str) -> Result<String, String>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    selector: Option<serde_json::Value>,
    // Read by `targets` before the spec; named here so `deny_unknown_fields` accepts them.
    #[serde(rename = "targetRef")]
    _target_ref: Option<serde_json::Value>,
    #[serde(rename = "targetRefs")]
    _target_refs: Option<serde_json::Value>,
    jwt_rules: Option<Vec<RuleSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleSpec {
    #[serde(default)]
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(alias = "jwks_uri")]
    jwks_uri: Option<String>,
    jwks: Option<String>,
    #[serde(default)]
    from_headers: Vec<HeaderSpec>,
    #[serde(default)]
    from_params: Vec<String>,
    #[serde(default)]
    from_cookies: Vec<String>,
    output_payload_to_header: Option<String>,
    #[serde(default)]
    forward_original_token: bool,
    #[serde(default)]
    output_claim_to_headers: Vec<ClaimHeaderSpec>,
    /// The fetch timeout of a network `jwksUri`; ferry does not fetch, so it has no effect.
    #[serde(rename = "timeout")]
    _timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderSpec {
    name: String,
    #[serde(default)]
    prefix: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimHeaderSpec {
    header: String,
    claim: String,
}

/// Why a RequestAuthentication could not be read (it then refuses what it targets).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CompileError {
    #[error("unreadable spec: {0}")]
    Spec(String),
    #[error("selector and targetRefs are mutually exclusive")]
    SelectorAndTargets,
    #[error("jwtRules[{0}]: {1}")]
    Rule(usize, String),
}

/// Every RequestAuthentication with `targetRefs` among raw objects.
pub fn compile_all<'a>(objects: impl IntoIterator<Item = &'a serde_json::Value>, read: JwksReader<'_>) -> Vec<RequestAuthn> {
    let ours = |o: &&serde_json::Value| o.get("kind").and_then(|k| k.as_str()) == Some("RequestAuthentication");
    objects.into_iter().filter(ours).filter_map(|o| compile(o, read)).collect()
}

/// One RequestAuthentication; `None` when it is not bound by `targetRefs`.
pub fn compile(obj: &serde_json::Value, read: JwksReader<'_>) -> Option<RequestAuthn> {
    let meta = obj.get("metadata");
    let text = |k: &str| meta.and_then(|m| m.get(k)).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let namespace = Some(text("namespace")).filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
    let spec = obj.get("spec").cloned().unwrap_or(serde_json::Value::Null);
    if spec.get("targetRef").is_none() && spec.get("targetRefs").is_none() {
        return None;
    }
    let mut ra = RequestAuthn { name: text("name"), namespace, targets: Vec::new(), rules: Vec::new(), notes: Vec::new(), broken: None };
    let result = targets(&spec, &ra.namespace).map_err(|e| CompileError::Spec(e.to_string())).and_then(|t| {
        ra.targets = t;
        let s: Spec = serde_json::from_value(spec).map_err(|e| CompileError::Spec(e.to_string()))?;
        if s.selector.is_some() {
            return Err(CompileError::SelectorAndTargets);
        }
        s.jwt_rules.iter().flatten().enumerate().map(|(i, r)| rule(r, read, &mut ra.notes).map_err(|e| CompileError::Rule(i, e))).collect()
    });
    match result {
        Ok(rules) => ra.rules = rules,
        Err(e) => {
            if ra.targets.is_empty() {
                ra.targets = vec![Target::Unreadable];
            }
            ra.broken = Some(format!("invalid RequestAuthentication ({e}); failing closed: every request it targets gets 401"));
        }
    }
    Some(ra)
}

/// A header name as a token, lower-cased (RFC 9110 field names).
fn header_name(name: &str, field: &str) -> Result<String, String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    match !name.is_empty() && name.bytes().all(token) {
        true => Ok(name.to_ascii_lowercase()),
        false => Err(format!("{field} {name:?} is not a header name")),
    }
}

fn rule(r: &RuleSpec, read: JwksReader<'_>, notes: &mut Vec<String>) -> Result<JwtRule, String> {
    if r.issuer.is_empty() {
        return Err("issuer is required".into());
    }
    let mut locations = Vec::new();
    for h in &r.from_headers {
        locations.push(Location::Header { name: header_name(&h.name, "fromHeaders")?, prefix: h.prefix.clone() });
    }
    locations.extend(r.from_params.iter().map(|p| Location::Param(p.clone())));
    locations.extend(r.from_cookies.iter().map(|c| Location::Cookie(c.clone())));
    if locations.is_empty() {
        // Istio's defaults: `Authorization: Bearer <token>` and `?access_token=<token>`.
        locations.push(Location::Header { name: "authorization".into(), prefix: "Bearer ".into() });
        locations.push(Location::Param("access_token".into()));
    }
    let payload_header = r.output_payload_to_header.as_deref().map(|h| header_name(h, "outputPayloadToHeader")).transpose()?;
    let mut claim_headers = Vec::new();
    for c in &r.output_claim_to_headers {
        if c.claim.is_empty() {
            return Err("outputClaimToHeaders: claim is required".into());
        }
        claim_headers.push((header_name(&c.header, "outputClaimToHeaders")?, c.claim.clone()));
    }
    let keys = match keys(r, read) {
        Ok(k) => k,
        Err(why) => {
            notes.push(format!("issuer {:?}: {why}; its tokens are refused (Jwt verification fails)", r.issuer));
            Vec::new()
        }
    };
    Ok(JwtRule {
        issuer: r.issuer.clone(),
        audiences: r.audiences.clone(),
        keys,
        locations,
        forward_original_token: r.forward_original_token,
        payload_header,
        claim_headers,
    })
}

/// The rule's keys: inline `jwks` first (as istiod), else a `jwksUri` that names a file.
fn keys(r: &RuleSpec, read: JwksReader<'_>) -> Result<Vec<jwks::Jwk>, String> {
    let text = match (&r.jwks, &r.jwks_uri) {
        (Some(inline), _) => inline.clone(),
        (None, Some(uri)) => match file_path(uri) {
            Some(path) => read(path)?,
            None => return Err(format!("jwksUri {uri:?} is not fetched: ferry reads keys only from jwks or a file:// jwksUri")),
        },
        (None, None) => return Err("neither jwks nor jwksUri is set (OpenID discovery is not supported)".into()),
    };
    jwks::parse(&text).map_err(|e| e.to_string())
}

/// `file:///abs/path` or `/abs/path`; nothing else names a file.
fn file_path(uri: &str) -> Option<&str> {
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    path.starts_with('/').then_some(path)
}
