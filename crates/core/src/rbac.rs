//! L4 authorization at the destination (protocols.md §4.9), as a pure function over a state
//! snapshot: any matching DENY denies; no ALLOW policies allows; a matching ALLOW allows;
//! otherwise deny. Dry-run policies are evaluated and logged but never enforced.
//!
//! Stricter than the reference (invariant P4): a policy a workload references but the snapshot
//! does not hold yet counts as a matching DENY, never as absent.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;

use crate::identity::Identity;
use crate::model::{Authorization, Match, PolicyAction, PolicyKey, Workload};
use crate::state::Snapshot;

/// What the destination knows about one connection.
#[derive(Clone, Debug)]
pub struct ConnAttrs {
    pub src_ip: IpAddr,
    /// The mTLS-verified peer identity; `None` for plaintext.
    pub src_identity: Option<Identity>,
    /// The upstream pod address and port.
    pub dst: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Decision {
    Allow,
    Deny { policy: Option<PolicyKey>, reason: String },
}

impl Decision {
    #[cfg(test)]
    pub(crate) fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// Decides whether `attrs` may reach workload `w`.
pub fn evaluate(snap: &Snapshot, w: &Workload, attrs: &ConnAttrs) -> Decision {
    decide(snap, w, attrs, &mut |_, _| {})
}

/// One policy's part in a decision, for operators.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Considered {
    pub(crate) policy: PolicyKey,
    pub(crate) scope: crate::model::PolicyScope,
    pub(crate) action: PolicyAction,
    pub(crate) dry_run: bool,
    pub(crate) matched: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) notes: Vec<String>,
}

/// A decision with everything that led to it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub considered: Vec<Considered>,
    /// Policies the workload references that are not known (each denies).
    pub missing: Vec<PolicyKey>,
    pub decision: Decision,
}

/// The same decision as [`evaluate`] (the same code path), with every policy's verdict.
pub fn explain(snap: &Snapshot, w: &Workload, attrs: &ConnAttrs) -> Explanation {
    let mut considered = Vec::new();
    let decision = decide(snap, w, attrs, &mut |p, matched| {
        considered.push(Considered {
            policy: p.key(),
            scope: p.scope,
            action: p.action,
            dry_run: p.dry_run,
            matched,
            notes: p.notes.clone(),
        })
    });
    let missing = snap.policies_for(w).1;
    Explanation { considered, missing, decision }
}

fn decide(snap: &Snapshot, w: &Workload, attrs: &ConnAttrs, record: &mut dyn FnMut(&Authorization, bool)) -> Decision {
    let (policies, missing) = snap.policies_for(w);
    let decision = evaluate_policies_with(&policies, attrs, record);
    match missing.first() {
        Some(key) => {
            Decision::Deny { policy: Some(key.clone()), reason: format!("policy {key} is referenced but not known yet; failing closed") }
        }
        None => decision,
    }
}

/// The algorithm of §4.9 over an explicit policy list.
#[cfg(test)]
pub(crate) fn evaluate_policies(policies: &[Arc<Authorization>], attrs: &ConnAttrs) -> Decision {
    evaluate_policies_with(policies, attrs, &mut |_, _| {})
}

/// Evaluates every policy once, reports each verdict, then decides from the verdicts.
fn evaluate_policies_with(policies: &[Arc<Authorization>], attrs: &ConnAttrs, record: &mut dyn FnMut(&Authorization, bool)) -> Decision {
    let verdicts: Vec<(&Arc<Authorization>, bool)> = policies.iter().map(|p| (p, policy_matches(p, attrs))).collect();
    for (p, matched) in &verdicts {
        record(p, *matched);
        if p.dry_run {
            tracing::info!(policy = %p.key(), action = ?p.action, matched, "dry-run policy evaluated");
        }
    }
    let enforced = || verdicts.iter().filter(|(p, _)| !p.dry_run);
    if let Some((p, _)) = enforced().find(|(p, m)| p.action == PolicyAction::Deny && *m) {
        return Decision::Deny { policy: Some(p.key()), reason: format!("explicitly denied by {}", p.key()) };
    }
    let mut allows = enforced().filter(|(p, _)| p.action == PolicyAction::Allow).peekable();
    if allows.peek().is_none() {
        return Decision::Allow;
    }
    if allows.any(|(_, m)| *m) {
        return Decision::Allow;
    }
    Decision::Deny { policy: None, reason: "allow policies exist, but none allowed".into() }
}

/// A policy matches if any rule does; a rule if every clause does; a clause if it is empty or
/// any of its non-empty matches holds. An empty match is skipped, as ztunnel does: an ALLOW of
/// `[[[{}]]]` allows nothing, and a translation that wants "match everything" writes an empty
/// clause instead.
pub(crate) fn policy_matches(p: &Authorization, attrs: &ConnAttrs) -> bool {
    p.rules.iter().any(|rule| rule.iter().all(|clause| clause.is_empty() || clause.iter().any(|m| !m.is_empty() && match_holds(m, attrs))))
}

fn match_holds(m: &Match, a: &ConnAttrs) -> bool {
    let id = a.src_identity.as_ref();
    let principal = id.map(|i| i.principal());
    let ns = id.map(|i| i.namespace());
    // Positive identity lists never match plaintext; negated ones always hold for it.
    let any_str = |list: &[crate::model::StringMatch], v: Option<&str>| v.is_some_and(|v| list.iter().any(|s| s.matches(v)));
    let sa_in = |list: &[crate::model::ServiceAccountMatch]| {
        id.is_some_and(|i| list.iter().any(|s| s.namespace == i.namespace() && s.service_account == i.service_account()))
    };
    let ip_in = |list: &[ipnet::IpNet], ip: IpAddr| list.iter().any(|n| n.contains(&ip));
    let port_in = |list: &[u16]| list.contains(&a.dst.port());
    let pos = |populated: bool, holds: bool| !populated || holds;
    let neg = |populated: bool, hit: bool| !populated || !hit;
    pos(!m.namespaces.is_empty(), any_str(&m.namespaces, ns))
        && neg(!m.not_namespaces.is_empty(), any_str(&m.not_namespaces, ns))
        && pos(!m.principals.is_empty(), any_str(&m.principals, principal.as_deref()))
        && neg(!m.not_principals.is_empty(), any_str(&m.not_principals, principal.as_deref()))
        && pos(!m.service_accounts.is_empty(), sa_in(&m.service_accounts))
        && neg(!m.not_service_accounts.is_empty(), sa_in(&m.not_service_accounts))
        && pos(!m.source_ips.is_empty(), ip_in(&m.source_ips, a.src_ip))
        && neg(!m.not_source_ips.is_empty(), ip_in(&m.not_source_ips, a.src_ip))
        && pos(!m.destination_ips.is_empty(), ip_in(&m.destination_ips, a.dst.ip()))
        && neg(!m.not_destination_ips.is_empty(), ip_in(&m.not_destination_ips, a.dst.ip()))
        && pos(!m.destination_ports.is_empty(), port_in(&m.destination_ports))
        && neg(!m.not_destination_ports.is_empty(), port_in(&m.not_destination_ports))
}

#[cfg(test)]
#[path = "rbac_tests.rs"]
mod tests;
