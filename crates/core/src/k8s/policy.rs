//! `AuthorizationPolicy` and `PeerAuthentication` (security.istio.io/v1) to the WDS
//! `Authorization` model an L4 proxy enforces (protocols.md §4.7). A pure module, shared with
//! the future control plane.
//!
//! The rule is to never widen access. What an L4 proxy cannot see (methods, paths, hosts,
//! headers, request principals, remote IPs, unknown `when` keys) drops an ALLOW rule (allows
//! less) and is removed from a DENY rule (denies more). A policy that cannot be read at all, or
//! has a shape istio's validation rejects (an empty source, operation or condition), fails
//! closed: an invalid ALLOW allows nothing, an invalid DENY denies everything in its scope.
//! Every such change is recorded as a note on the resulting policy.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::model::{Authorization, Clause, Match, PolicyAction, PolicyScope, Rule, ServiceAccountMatch, StringMatch};

/// Istio's root namespace: mesh-wide policies live here.
pub const ROOT_NAMESPACE: &str = "istio-system";
pub(crate) const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Selector {
    #[serde(default)]
    pub(crate) match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ApSpec {
    pub(crate) selector: Option<Selector>,
    pub(crate) target_ref: Option<serde_json::Value>,
    pub(crate) target_refs: Option<Vec<serde_json::Value>>,
    pub(crate) action: Option<String>,
    pub(crate) provider: Option<serde_json::Value>,
    pub(crate) rules: Option<Vec<RuleSpec>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleSpec {
    pub(crate) from: Option<Vec<FromSpec>>,
    pub(crate) to: Option<Vec<ToSpec>>,
    pub(crate) when: Option<Vec<Condition>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FromSpec {
    pub(crate) source: SourceSpec,
}

pub(crate) type Strs = Option<Vec<String>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct SourceSpec {
    pub(crate) principals: Strs,
    pub(crate) not_principals: Strs,
    pub(crate) request_principals: Strs,
    pub(crate) not_request_principals: Strs,
    pub(crate) namespaces: Strs,
    pub(crate) not_namespaces: Strs,
    pub(crate) service_accounts: Strs,
    pub(crate) not_service_accounts: Strs,
    pub(crate) ip_blocks: Strs,
    pub(crate) not_ip_blocks: Strs,
    pub(crate) remote_ip_blocks: Strs,
    pub(crate) not_remote_ip_blocks: Strs,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToSpec {
    pub(crate) operation: OperationSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct OperationSpec {
    pub(crate) hosts: Strs,
    pub(crate) not_hosts: Strs,
    pub(crate) ports: Strs,
    pub(crate) not_ports: Strs,
    pub(crate) methods: Strs,
    pub(crate) not_methods: Strs,
    pub(crate) paths: Strs,
    pub(crate) not_paths: Strs,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Condition {
    pub(crate) key: String,
    pub(crate) values: Strs,
    pub(crate) not_values: Strs,
}

/// A translated AuthorizationPolicy and which pods it selects.
#[derive(Clone, Debug)]
pub(crate) struct TranslatedPolicy {
    pub(crate) policy: Authorization,
    /// `Some` for WORKLOAD_SELECTOR scope: the labels a pod must carry.
    pub(crate) selector: Option<BTreeMap<String, String>>,
}

/// Istio's string forms: `*` (presence), `prefix*`, `*suffix`, exact.
pub(crate) fn string_match(s: &str) -> StringMatch {
    if s == "*" {
        StringMatch::Presence
    } else if let Some(p) = s.strip_suffix('*') {
        StringMatch::Prefix(p.to_string())
    } else if let Some(p) = s.strip_prefix('*') {
        StringMatch::Suffix(p.to_string())
    } else {
        StringMatch::Exact(s.to_string())
    }
}

/// Principals are matched without `spiffe://` (`td/ns/x/sa/y`), as Istio does.
fn principal_match(s: &str) -> StringMatch {
    string_match(s.strip_prefix("spiffe://").unwrap_or(s))
}

fn cidr(s: &str) -> Option<IpNet> {
    IpNet::from_str(s).ok().or_else(|| IpAddr::from_str(s).ok().map(IpNet::from))
}

/// Collects what a rule uses that an L4 proxy cannot evaluate, and what is malformed.
#[derive(Default)]
pub(crate) struct Issues {
    l7: Vec<String>,
    pub(crate) invalid: Vec<String>,
}

impl Issues {
    fn l7_field(&mut self, name: &str, v: &Strs) {
        if v.as_ref().is_some_and(|v| !v.is_empty()) {
            self.l7.push(name.to_string());
        }
    }
}

fn unset(v: &Strs) -> bool {
    v.as_ref().is_none_or(|v| v.is_empty())
}

impl SourceSpec {
    fn is_empty(&self) -> bool {
        [
            &self.principals,
            &self.not_principals,
            &self.request_principals,
            &self.not_request_principals,
            &self.namespaces,
            &self.not_namespaces,
            &self.service_accounts,
            &self.not_service_accounts,
            &self.ip_blocks,
            &self.not_ip_blocks,
            &self.remote_ip_blocks,
            &self.not_remote_ip_blocks,
        ]
        .into_iter()
        .all(unset)
    }
}

impl OperationSpec {
    fn is_empty(&self) -> bool {
        [&self.hosts, &self.not_hosts, &self.ports, &self.not_ports, &self.methods, &self.not_methods, &self.paths, &self.not_paths]
            .into_iter()
            .all(unset)
    }
}

/// The empty shapes istio's validation (`pkg/config/validation`) rejects, in its words. ferry
/// reads manifests with no admission webhook in front, so it must refuse them itself: read as
/// written each is an empty match, which matches nothing (§4.9), so an ALLOW would silently
/// allow less than meant and a DENY deny nothing at all. The author's intent is unknown, so the
/// policy fails closed like any other unreadable one.
pub(crate) fn rejected_shape(rules: &[RuleSpec]) -> Option<String> {
    for (i, r) in rules.iter().enumerate() {
        let why = if r.from.as_ref().is_some_and(|f| f.is_empty()) {
            "`from` must not be empty".to_string()
        } else if r.from.iter().flatten().any(|f| f.source.is_empty()) {
            "`from.source` must not be empty".to_string()
        } else if r.to.as_ref().is_some_and(|t| t.is_empty()) {
            "`to` must not be empty".to_string()
        } else if r.to.iter().flatten().any(|t| t.operation.is_empty()) {
            "`to.operation` must not be empty".to_string()
        } else if r.when.iter().flatten().any(|c| c.key.is_empty()) {
            "`key` must not be empty".to_string()
        } else if let Some(c) = r.when.iter().flatten().find(|c| unset(&c.values) && unset(&c.not_values)) {
            format!("at least one of `values` or `notValues` must be set for key {}", c.key)
        } else {
            continue;
        };
        return Some(format!("rule {i}: {why}, which istio's validation rejects"));
    }
    None
}

fn strings(v: &Strs, f: fn(&str) -> StringMatch) -> Vec<StringMatch> {
    v.iter().flatten().map(|s| f(s)).collect()
}

fn nets(v: &Strs, field: &str, issues: &mut Issues) -> Vec<IpNet> {
    let mut out = Vec::new();
    for s in v.iter().flatten() {
        match cidr(s) {
            Some(n) => out.push(n),
            None => issues.invalid.push(format!("{field} {s:?} is not an IP or CIDR")),
        }
    }
    out
}

fn ports(v: &Strs, field: &str, issues: &mut Issues) -> Vec<u16> {
    let mut out = Vec::new();
    for s in v.iter().flatten() {
        match s.parse::<u16>() {
            Ok(p) if p != 0 => out.push(p),
            _ => issues.invalid.push(format!("{field} {s:?} is not a port")),
        }
    }
    out
}

pub(crate) fn accounts(v: &Strs, field: &str, issues: &mut Issues) -> Vec<ServiceAccountMatch> {
    let mut out = Vec::new();
    for s in v.iter().flatten() {
        match s.split_once('/') {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
                out.push(ServiceAccountMatch { namespace: ns.into(), service_account: sa.into() })
            }
            _ => issues.invalid.push(format!("{field} {s:?} is not <namespace>/<service-account>")),
        }
    }
    out
}

fn source_match(s: &SourceSpec, issues: &mut Issues) -> Match {
    issues.l7_field("from.source.requestPrincipals", &s.request_principals);
    issues.l7_field("from.source.notRequestPrincipals", &s.not_request_principals);
    issues.l7_field("from.source.remoteIpBlocks", &s.remote_ip_blocks);
    issues.l7_field("from.source.notRemoteIpBlocks", &s.not_remote_ip_blocks);
    Match {
        principals: strings(&s.principals, principal_match),
        not_principals: strings(&s.not_principals, principal_match),
        namespaces: strings(&s.namespaces, string_match),
        not_namespaces: strings(&s.not_namespaces, string_match),
        service_accounts: accounts(&s.service_accounts, "serviceAccounts", issues),
        not_service_accounts: accounts(&s.not_service_accounts, "notServiceAccounts", issues),
        source_ips: nets(&s.ip_blocks, "ipBlocks", issues),
        not_source_ips: nets(&s.not_ip_blocks, "notIpBlocks", issues),
        ..Default::default()
    }
}

fn operation_match(o: &OperationSpec, issues: &mut Issues) -> Match {
    for (name, v) in [
        ("to.operation.hosts", &o.hosts),
        ("to.operation.notHosts", &o.not_hosts),
        ("to.operation.methods", &o.methods),
        ("to.operation.notMethods", &o.not_methods),
        ("to.operation.paths", &o.paths),
        ("to.operation.notPaths", &o.not_paths),
    ] {
        issues.l7_field(name, v);
    }
    Match {
        destination_ports: ports(&o.ports, "ports", issues),
        not_destination_ports: ports(&o.not_ports, "notPorts", issues),
        ..Default::default()
    }
}

/// One `when` condition as a single-match clause; `None` for keys an L4 proxy cannot see.
fn condition_match(c: &Condition, issues: &mut Issues) -> Option<Match> {
    let mut m = Match::default();
    match c.key.as_str() {
        "source.ip" => {
            m.source_ips = nets(&c.values, "source.ip", issues);
            m.not_source_ips = nets(&c.not_values, "source.ip", issues);
        }
        "destination.ip" => {
            m.destination_ips = nets(&c.values, "destination.ip", issues);
            m.not_destination_ips = nets(&c.not_values, "destination.ip", issues);
        }
        "destination.port" => {
            m.destination_ports = ports(&c.values, "destination.port", issues);
            m.not_destination_ports = ports(&c.not_values, "destination.port", issues);
        }
        "source.namespace" => {
            m.namespaces = strings(&c.values, string_match);
            m.not_namespaces = strings(&c.not_values, string_match);
        }
        "source.principal" => {
            m.principals = strings(&c.values, principal_match);
            m.not_principals = strings(&c.not_values, principal_match);
        }
        other => {
            issues.l7.push(format!("when {other}"));
            return None;
        }
    }
    Some(m)
}

/// A rule for `action`, or the reason an ALLOW rule was dropped.
fn translate_rule(r: &RuleSpec, action: PolicyAction, notes: &mut Vec<String>, index: usize) -> Option<Rule> {
    let mut issues = Issues::default();
    let mut rule: Rule = Vec::new();
    if let Some(from) = r.from.as_ref().filter(|f| !f.is_empty()) {
        rule.push(from.iter().map(|f| source_match(&f.source, &mut issues)).collect::<Clause>());
    }
    if let Some(to) = r.to.as_ref().filter(|t| !t.is_empty()) {
        rule.push(to.iter().map(|t| operation_match(&t.operation, &mut issues)).collect::<Clause>());
    }
    for c in r.when.iter().flatten() {
        if let Some(m) = condition_match(c, &mut issues) {
            rule.push(vec![m]);
        }
    }
    if issues.l7.is_empty() && issues.invalid.is_empty() {
        return Some(rule);
    }
    let what = issues.l7.iter().map(|f| format!("{f} (L7)")).chain(issues.invalid.iter().cloned()).collect::<Vec<_>>().join(", ");
    match action {
        PolicyAction::Allow => {
            notes.push(format!("rule {index} dropped: it uses {what}, which an L4 proxy cannot enforce; dropping it allows less"));
            None
        }
        PolicyAction::Deny => {
            // Malformed values were skipped and L7 conditions never became matches: the rule
            // now matches more, so it denies more. A source or operation left with nothing to
            // compare must match every connection, but an empty match matches none (§4.9), so
            // its whole clause (an OR) becomes the empty clause, which matches all.
            for clause in rule.iter_mut().filter(|c| c.iter().any(Match::is_empty)) {
                clause.clear();
            }
            notes.push(format!("rule {index}: removed {what}, which an L4 proxy cannot enforce; the rule now denies more"));
            Some(rule)
        }
    }
}

/// Translates one AuthorizationPolicy manifest. `None` when it does not apply to L4 proxies.
pub(crate) fn authorization_policy(obj: &serde_json::Value) -> Option<TranslatedPolicy> {
    let meta = obj.get("metadata");
    let text = |k: &str| meta.and_then(|m| m.get(k)).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let (name, namespace) = (text("name"), if text("namespace").is_empty() { "default".to_string() } else { text("namespace") });
    let dry_run = meta.and_then(|m| m.get("annotations")).and_then(|a| a.get(DRY_RUN_ANNOTATION)).and_then(|v| v.as_str()) == Some("true");
    let mut p = Authorization {
        name,
        namespace,
        scope: PolicyScope::Namespace,
        action: PolicyAction::Allow,
        dry_run,
        rules: Vec::new(),
        notes: Vec::new(),
    };
    let spec: ApSpec = match obj.get("spec").cloned().map(serde_json::from_value).unwrap_or(Ok(ApSpec::default())) {
        Ok(s) => s,
        Err(e) => return Some(invalid_policy(p, obj, &e.to_string())),
    };
    if spec.target_ref.is_some() || spec.target_refs.is_some() {
        tracing::debug!(policy = %p.key(), "policy binds to a waypoint or gateway (targetRef); not an L4 node-proxy policy");
        return None;
    }
    match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => {}
        "DENY" => p.action = PolicyAction::Deny,
        "CUSTOM" => {
            p.action = PolicyAction::Deny;
            p.notes.push("CUSTOM (external authorization) cannot be consulted by an L4 proxy; enforced as DENY".into());
        }
        "AUDIT" => return None,
        other => return Some(invalid_policy(p, obj, &format!("unknown action {other:?}"))),
    }
    let _ = spec.provider;
    if let Some(why) = rejected_shape(spec.rules.as_deref().unwrap_or_default()) {
        return Some(invalid_policy(p, obj, &why));
    }
    let (scope, selector) = scope_of(&p.namespace, spec.selector.as_ref());
    p.scope = scope;
    let mut notes = Vec::new();
    p.rules = spec.rules.iter().flatten().enumerate().filter_map(|(i, r)| translate_rule(r, p.action, &mut notes, i)).collect();
    p.notes.extend(notes);
    Some(TranslatedPolicy { policy: p, selector })
}

fn scope_of(namespace: &str, selector: Option<&Selector>) -> (PolicyScope, Option<BTreeMap<String, String>>) {
    match selector.filter(|s| !s.match_labels.is_empty()) {
        Some(s) => (PolicyScope::WorkloadSelector, Some(s.match_labels.clone())),
        None if namespace == ROOT_NAMESPACE => (PolicyScope::Global, None),
        None => (PolicyScope::Namespace, None),
    }
}

/// An unreadable policy fails closed for its scope: ALLOW allows nothing, anything else
/// denies everything.
fn invalid_policy(p: Authorization, obj: &serde_json::Value, why: &str) -> TranslatedPolicy {
    let spec = obj.get("spec");
    let action = spec.and_then(|s| s.get("action")).and_then(|a| a.as_str()).unwrap_or("ALLOW");
    let selector: Option<Selector> = spec.and_then(|s| s.get("selector")).cloned().and_then(|s| serde_json::from_value(s).ok());
    let (scope, labels) = scope_of(&p.namespace, selector.as_ref());
    let mut failed = Authorization::failing_closed(p.name, p.namespace, scope, action == "ALLOW", p.dry_run, why);
    failed.notes.splice(0..0, p.notes);
    TranslatedPolicy { policy: failed, selector: labels }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
