//! `AuthorizationPolicy` manifests with `targetRefs` into [`L7Policy`]. Everything in the
//! spec must be understood; anything that is not (an unknown field, key or action, a bad
//! CIDR or port, an empty shape istio's validation rejects, CUSTOM) makes the policy a DENY
//! of everything it targets, with a note saying why.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Deserialize;

use super::{AuthKey, Condition, Key, L7Action, L7Policy, Operation, Pair, Rule, Source, Target, Values};
use crate::k8s::policy::{
    accounts, rejected_shape, string_match, ApSpec as Spec, Condition as ConditionSpec, Issues, OperationSpec, RuleSpec, SourceSpec, Strs,
    DRY_RUN_ANNOTATION,
};
use crate::model::StringMatch;

/// Policies in this namespace targeting the waypoint GatewayClass apply to every waypoint.
pub use crate::k8s::policy::ROOT_NAMESPACE;
pub const WAYPOINT_CLASS: &str = "istio-waypoint";

/// One entry of `targetRefs` (Gateway API's `PolicyTargetReference`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetRef {
    #[serde(default)]
    group: String,
    kind: String,
    name: String,
    namespace: Option<String>,
}

/// Why a policy could not be compiled (it then denies everything it targets).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CompileError {
    #[error("unreadable spec: {0}")]
    Spec(String),
    #[error("unknown action {0:?}")]
    Action(String),
    #[error("CUSTOM (external authorization) is not supported by ferry's waypoint")]
    Custom,
    #[error("rule {0}: {1}")]
    Rule(usize, String),
    #[error("{0}")]
    Shape(String),
}

/// Compiles every AuthorizationPolicy with `targetRefs` among raw objects (`kind/ns/name`
/// keys, as a cluster state keeps them); policies without are L4 policies and skipped.
pub fn compile_all<'a>(objects: impl IntoIterator<Item = &'a serde_json::Value>) -> Vec<L7Policy> {
    objects.into_iter().filter(|o| o.get("kind").and_then(|k| k.as_str()) == Some("AuthorizationPolicy")).filter_map(compile).collect()
}

/// One AuthorizationPolicy; `None` when it binds by selector or namespace (the node proxy's).
pub fn compile(obj: &serde_json::Value) -> Option<L7Policy> {
    let meta = obj.get("metadata");
    let text = |k: &str| meta.and_then(|m| m.get(k)).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let namespace = Some(text("namespace")).filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
    let dry_run = meta.and_then(|m| m.get("annotations")).and_then(|a| a.get(DRY_RUN_ANNOTATION)).and_then(|v| v.as_str()) == Some("true");
    let mut p = L7Policy {
        name: text("name"),
        namespace,
        action: L7Action::Deny,
        targets: Vec::new(),
        dry_run,
        rules: Vec::new(),
        notes: Vec::new(),
    };
    let spec = obj.get("spec").cloned().unwrap_or(serde_json::Value::Null);
    if spec.get("targetRef").is_none() && spec.get("targetRefs").is_none() {
        return None;
    }
    // The targets are read on their own first: a policy whose rules are unreadable still
    // fails closed exactly where it was meant to apply.
    let result = targets(&spec, &p.namespace).and_then(|t| {
        p.targets = t;
        let s = match spec {
            serde_json::Value::Null => Spec::default(),
            s => serde_json::from_value::<Spec>(s).map_err(|e| CompileError::Spec(e.to_string()))?,
        };
        let action = action(&s)?;
        if let Some(why) = rejected_shape(s.rules.as_deref().unwrap_or_default()) {
            return Err(CompileError::Shape(why));
        }
        let rules =
            s.rules.iter().flatten().enumerate().map(|(i, r)| rule(r).map_err(|e| CompileError::Rule(i, e))).collect::<Result<_, _>>()?;
        Ok((action, rules))
    });
    match result {
        Ok((action, rules)) => {
            p.action = action;
            p.rules = rules;
        }
        Err(e) => fail_closed(&mut p, &e),
    }
    Some(p)
}

/// A DENY of everything the policy targets (of everything in its namespace when even the
/// targets are unreadable).
fn fail_closed(p: &mut L7Policy, e: &CompileError) {
    if p.targets.is_empty() {
        p.targets = vec![Target::Unreadable];
    }
    p.action = L7Action::Deny;
    p.rules = vec![Rule::default()];
    p.notes.push(format!("invalid policy ({e}); failing closed: it denies every request it targets"));
}

/// The targets, or an error when one cannot be read (the policy then covers its namespace).
pub(crate) fn targets(spec: &serde_json::Value, namespace: &str) -> Result<Vec<Target>, CompileError> {
    let one = spec.get("targetRef").map(std::slice::from_ref).unwrap_or_default();
    let many = match spec.get("targetRefs") {
        None => &[][..],
        Some(v) => v.as_array().map(Vec::as_slice).ok_or_else(|| CompileError::Spec("targetRefs must be a list".into()))?,
    };
    let read = |v: &serde_json::Value| {
        let t: TargetRef = serde_json::from_value(v.clone()).map_err(|e| CompileError::Spec(format!("targetRefs: {e}")))?;
        Ok(target(&t, namespace))
    };
    one.iter().chain(many).map(read).collect()
}

fn target(t: &TargetRef, namespace: &str) -> Target {
    // istio refuses cross-namespace references; a reference to elsewhere binds nothing here.
    if t.namespace.as_deref().is_some_and(|n| n != namespace) {
        return Target::Other(format!("{}/{} in namespace {:?}", t.kind, t.name, t.namespace));
    }
    match (t.group.as_str(), t.kind.as_str()) {
        ("gateway.networking.k8s.io", "Gateway") => Target::Gateway(t.name.clone()),
        ("gateway.networking.k8s.io", "GatewayClass") => Target::GatewayClass(t.name.clone()),
        ("" | "core", "Service") => Target::Service(t.name.clone()),
        (g, k) => Target::Other(format!("{g}/{k}/{}", t.name)),
    }
}

fn action(s: &Spec) -> Result<L7Action, CompileError> {
    if s.selector.is_some() {
        return Err(CompileError::Spec("selector and targetRefs are mutually exclusive".into()));
    }
    match s.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Ok(L7Action::Allow),
        "DENY" => Ok(L7Action::Deny),
        "AUDIT" => Ok(L7Action::Audit),
        "CUSTOM" => {
            let _ = &s.provider;
            Err(CompileError::Custom)
        }
        other => Err(CompileError::Action(other.into())),
    }
}

fn rule(r: &RuleSpec) -> Result<Rule, String> {
    // Empty shapes were refused by `rejected_shape`, so an empty list here cannot occur.
    let from = r.from.as_ref().map(|f| f.iter().map(|f| source(&f.source)).collect::<Result<_, _>>()).transpose()?;
    let to = r.to.as_ref().map(|t| t.iter().map(|t| operation(&t.operation)).collect::<Result<_, _>>()).transpose()?;
    let when = r.when.iter().flatten().map(condition).collect::<Result<_, _>>()?;
    Ok(Rule { from, to, when })
}

fn strs(values: &Strs, not: &Strs, f: fn(&str) -> StringMatch) -> Pair<StringMatch> {
    let list = |v: &Strs| v.iter().flatten().map(|s| f(s)).collect();
    Pair { values: list(values), not: list(not) }
}

fn principal_match(s: &str) -> StringMatch {
    string_match(s.strip_prefix("spiffe://").unwrap_or(s))
}

fn nets(values: &Strs, not: &Strs, field: &str) -> Result<Pair<IpNet>, String> {
    let list = |v: &Strs| {
        v.iter()
            .flatten()
            .map(|s| {
                IpNet::from_str(s)
                    .ok()
                    .or_else(|| IpAddr::from_str(s).ok().map(IpNet::from))
                    .ok_or(format!("{field} {s:?} is not an IP or CIDR"))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Pair { values: list(values)?, not: list(not)? })
}

fn ports(values: &Strs, not: &Strs, field: &str) -> Result<Pair<u16>, String> {
    let list = |v: &Strs| {
        v.iter()
            .flatten()
            .map(|s| s.parse::<u16>().ok().filter(|p| *p != 0).ok_or(format!("{field} {s:?} is not a port")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Pair { values: list(values)?, not: list(not)? })
}

fn source(s: &SourceSpec) -> Result<Source, String> {
    let mut issues = Issues::default();
    let sa = |v: &Strs, issues: &mut Issues| -> Vec<StringMatch> {
        let list = accounts(v, "serviceAccounts", issues);
        // Namespaces and names hold no `/`, so the suffix names exactly one account.
        list.into_iter().map(|a| StringMatch::Suffix(format!("/ns/{}/sa/{}", a.namespace, a.service_account))).collect()
    };
    let mut principals = strs(&s.principals, &s.not_principals, principal_match);
    principals.values.extend(sa(&s.service_accounts, &mut issues));
    principals.not.extend(sa(&s.not_service_accounts, &mut issues));
    if let Some(bad) = issues.invalid.first() {
        return Err(bad.clone());
    }
    if (s.service_accounts.is_some() || s.not_service_accounts.is_some()) && !(s.principals.is_none() && s.not_principals.is_none()) {
        return Err("serviceAccounts and principals cannot be combined in one source".into());
    }
    Ok(Source {
        principals,
        request_principals: strs(&s.request_principals, &s.not_request_principals, string_match),
        namespaces: strs(&s.namespaces, &s.not_namespaces, string_match),
        ip_blocks: nets(&s.ip_blocks, &s.not_ip_blocks, "ipBlocks")?,
        remote_ip_blocks: nets(&s.remote_ip_blocks, &s.not_remote_ip_blocks, "remoteIpBlocks")?,
    })
}

fn operation(o: &OperationSpec) -> Result<Operation, String> {
    Ok(Operation {
        hosts: strs(&o.hosts, &o.not_hosts, string_match),
        ports: ports(&o.ports, &o.not_ports, "ports")?,
        methods: strs(&o.methods, &o.not_methods, string_match),
        paths: strs(&o.paths, &o.not_paths, string_match),
    })
}

fn condition(c: &ConditionSpec) -> Result<Condition, String> {
    let (v, n) = (&c.values, &c.not_values);
    let text = || Values::Strings(strs(v, n, string_match));
    let (key, values) = match c.key.as_str() {
        "source.ip" => (Key::SourceIp, Values::Nets(nets(v, n, "source.ip")?)),
        "remote.ip" => (Key::RemoteIp, Values::Nets(nets(v, n, "remote.ip")?)),
        "destination.ip" => (Key::DestinationIp, Values::Nets(nets(v, n, "destination.ip")?)),
        "destination.port" => (Key::DestinationPort, Values::Ports(ports(v, n, "destination.port")?)),
        "source.namespace" => (Key::SourceNamespace, text()),
        "source.principal" => (Key::SourcePrincipal, Values::Strings(strs(v, n, principal_match))),
        "connection.sni" => (Key::ConnectionSni, text()),
        "request.auth.principal" => (Key::Auth(AuthKey::Principal), text()),
        "request.auth.audiences" => (Key::Auth(AuthKey::Audiences), text()),
        "request.auth.presenter" => (Key::Auth(AuthKey::Presenter), text()),
        k => match (claim(k), header_name(k)) {
            (Some(path), _) => (Key::Auth(AuthKey::Claim(path)), text()),
            (None, Some(h)) => (Key::Header(h), text()),
            (None, None) => return Err(format!("unsupported condition key {k:?}")),
        },
    };
    Ok(Condition { key, values })
}

fn bracketed<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    key.strip_prefix(prefix)?.strip_suffix(']').filter(|inner| !inner.is_empty() && !inner.contains(['[', ']']))
}

/// `request.auth.claims[iss]` or nested `request.auth.claims[a][b]`: the claim's path.
fn claim(key: &str) -> Option<Vec<String>> {
    let inner = key.strip_prefix("request.auth.claims[")?.strip_suffix(']')?;
    let parts: Vec<String> = inner.split("][").map(str::to_string).collect();
    parts.iter().all(|part| !part.is_empty() && !part.contains(['[', ']'])).then_some(parts)
}

/// `request.headers[Name]`, lower-cased; a name with bytes outside HTTP tokens is refused.
fn header_name(key: &str) -> Option<String> {
    let name = bracketed(key, "request.headers[")?;
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    name.bytes().all(token).then(|| name.to_ascii_lowercase())
}
