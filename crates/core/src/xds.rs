//! Delta xDS bookkeeping, sans-IO (protocols.md §4.4–§4.6), shared by the control plane (what to
//! send each subscriber) and the node proxy (what it holds and ACKs).
//!
//! Server side: a [`Resources`] snapshot is every WDS resource encoded once, each with a version
//! derived from its bytes, so an unchanged resource keeps its version across snapshots and
//! across control-plane restarts. A [`Subscriber`] remembers what it told one client; the
//! delta between that and a new snapshot is exactly the resources that changed and the names
//! that went away, so a pod change sends that pod, not the world, and a client reconnecting
//! with `initial_resource_versions` gets only what changed while it was away.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;

use crate::model::Authorization;
use crate::state::StateInput;
use crate::waypoint_xds::WAYPOINT_POLICY_TYPE;
use crate::wds::{self, ADDRESS_TYPE, AUTHORIZATION_TYPE};

/// One encoded resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub name: String,
    pub aliases: Vec<String>,
    pub version: String,
    /// The encoded message (`Any.value`).
    pub body: Vec<u8>,
}

/// Every resource of one state, by type URL and name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    by_type: BTreeMap<&'static str, BTreeMap<String, Resource>>,
}

/// FNV-1a, 64 bit: stable across processes and builds, so versions survive restarts.
fn version_of(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn resource<T: Message>(n: wds::Named<T>) -> Resource {
    let body = n.message.encode_to_vec();
    Resource { name: n.name, aliases: n.aliases, version: version_of(&body), body }
}

impl Resources {
    pub fn from_state(s: &StateInput) -> Resources {
        let mut r = Resources::default();
        let addresses = r.by_type.entry(ADDRESS_TYPE).or_default();
        for w in &s.workloads {
            let res = resource(wds::workload(w));
            addresses.insert(res.name.clone(), res);
        }
        for svc in &s.services {
            let res = resource(wds::service(svc));
            addresses.insert(res.name.clone(), res);
        }
        let policies = r.by_type.entry(AUTHORIZATION_TYPE).or_default();
        for p in &s.policies {
            let res = resource(wds::authorization(p));
            policies.insert(res.name.clone(), res);
        }
        r
    }

    /// The encoded messages of another type (the waypoints' policies), by name, each
    /// versioned by its bytes; replaces any held.
    pub fn with_type(mut self, type_url: &'static str, encoded: BTreeMap<String, Vec<u8>>) -> Resources {
        let resources = encoded
            .into_iter()
            .map(|(name, body)| (name.clone(), Resource { name, aliases: Vec::new(), version: version_of(&body), body }))
            .collect();
        self.by_type.insert(type_url, resources);
        self
    }

    pub fn of_type(&self, type_url: &str) -> Option<&BTreeMap<String, Resource>> {
        self.by_type.get(type_url)
    }

    pub fn len(&self) -> usize {
        self.by_type.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What to send one client for one type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub updated: Vec<Resource>,
    pub removed: Vec<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.removed.is_empty()
    }
}

/// One client's subscription to one type and what it has been sent.
#[derive(Clone, Debug, Default)]
pub struct Subscriber {
    /// Everything (wildcard), or only the names and aliases in `names` (on demand).
    wildcard: bool,
    names: BTreeSet<String>,
    /// Name to version, as the client holds them.
    sent: BTreeMap<String, String>,
    /// On-demand names already answered with a removal because nothing matches them.
    answered_missing: BTreeSet<String>,
}

impl Subscriber {
    /// A subscriber from the client's first request: wildcard unless it subscribed to names
    /// (or to `*` and unsubscribed `*`, Istio's explicit mode with nothing subscribed), holding
    /// `initial` (its `initial_resource_versions`).
    pub fn new(subscribe: &[String], unsubscribe: &[String], initial: BTreeMap<String, String>) -> Subscriber {
        // Nothing, or only `*`, subscribed means wildcard.
        let wildcard = subscribe.is_empty() || (subscribe == ["*"] && unsubscribe.is_empty());
        let mut s = Subscriber { wildcard, names: BTreeSet::new(), sent: initial, answered_missing: BTreeSet::new() };
        s.change(subscribe, unsubscribe);
        s
    }

    /// Applies a later request's subscription changes.
    pub fn change(&mut self, subscribe: &[String], unsubscribe: &[String]) {
        for n in subscribe.iter().filter(|n| *n != "*") {
            self.names.insert(n.clone());
        }
        for n in unsubscribe {
            if n != "*" {
                self.names.remove(n);
                self.sent.remove(n);
                self.answered_missing.remove(n);
            }
        }
    }

    fn wants(&self, r: &Resource) -> bool {
        self.wildcard || self.names.contains(&r.name) || r.aliases.iter().any(|a| self.names.contains(a))
    }

    /// What this client lacks from `now` (changed or new resources it wants, names it holds
    /// that are gone or no longer wanted), recorded as sent.
    pub fn delta(&mut self, now: &BTreeMap<String, Resource>) -> Delta {
        let mut d = Delta::default();
        for r in now.values().filter(|r| self.wants(r)) {
            if self.sent.get(&r.name) != Some(&r.version) {
                d.updated.push(r.clone());
            }
        }
        let keep: BTreeSet<&str> = now.values().filter(|r| self.wants(r)).map(|r| r.name.as_str()).collect();
        d.removed = self.sent.keys().filter(|n| !keep.contains(n.as_str())).cloned().collect();
        // An on-demand name that matches nothing is answered with its removal, as istiod does.
        if !self.wildcard {
            for n in &self.names {
                let known = now.values().any(|r| &r.name == n || r.aliases.contains(n));
                if known {
                    self.answered_missing.remove(n);
                } else if !d.removed.contains(n) && self.answered_missing.insert(n.clone()) {
                    d.removed.push(n.clone());
                }
            }
        }
        for n in &d.removed {
            self.sent.remove(n);
        }
        for r in &d.updated {
            self.sent.insert(r.name.clone(), r.version.clone());
        }
        d
    }
}

/// What a node proxy holds from the control plane, by type and name (protocols.md §4.4).
#[derive(Clone, Debug, Default)]
pub struct ClientState {
    addresses: BTreeMap<String, (String, wds::Decoded)>,
    policies: BTreeMap<String, (String, Authorization)>,
    /// A waypoint's policies (Kubernetes objects, compiled by the waypoint).
    waypoint_policies: BTreeMap<String, (String, serde_json::Value)>,
}

/// The outcome of applying one response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// `"<name>: <reason>"` per refused resource; non-empty means NACK.
    pub refused: Vec<String>,
    pub changed: bool,
}

impl Applied {
    /// The NACK message (protocols.md §4.4), or `None` for an ACK.
    pub fn nack(&self) -> Option<String> {
        (!self.refused.is_empty()).then(|| self.refused.join("; "))
    }
}

impl ClientState {
    /// Applies one response: updates, then removals. A resource that does not decode is
    /// refused and not recorded; the rest of the response still applies. A policy whose
    /// rules cannot be read is refused *and* replaced by one that fails closed in its scope
    /// (a DENY denies everything, an ALLOW allows nothing), so a refused deny never allows.
    pub fn apply(&mut self, type_url: &str, resources: Vec<(String, String, Vec<u8>)>, removed: &[String]) -> Applied {
        let mut out = Applied::default();
        for (name, version, body) in resources {
            let result = match type_url {
                ADDRESS_TYPE => self.apply_address(&name, version, &body),
                AUTHORIZATION_TYPE => self.apply_policy(&name, version, &body),
                WAYPOINT_POLICY_TYPE => self.apply_waypoint_policy(&name, version, &body),
                other => Err(format!("unknown type {other}")),
            };
            match result {
                Ok(()) => out.changed = true,
                Err(e) => out.refused.push(format!("{name}: {e}")),
            }
        }
        for name in removed {
            let gone = match type_url {
                ADDRESS_TYPE => self.addresses.remove(name).is_some(),
                AUTHORIZATION_TYPE => self.policies.remove(name).is_some(),
                WAYPOINT_POLICY_TYPE => self.waypoint_policies.remove(name).is_some(),
                _ => false,
            };
            out.changed |= gone;
        }
        out
    }

    fn apply_address(&mut self, name: &str, version: String, body: &[u8]) -> Result<(), String> {
        let msg = crate::proto::workload::Address::decode(body).map_err(|e| format!("not an Address: {e}"))?;
        let decoded = wds::decode_address(msg).map_err(|e| e.to_string())?;
        self.addresses.insert(name.to_string(), (version, decoded));
        Ok(())
    }

    fn apply_policy(&mut self, name: &str, version: String, body: &[u8]) -> Result<(), String> {
        let msg = crate::proto::security::Authorization::decode(body).map_err(|e| format!("not an Authorization: {e}"))?;
        match wds::decode_authorization(msg.clone()) {
            Ok(p) => {
                self.policies.insert(name.to_string(), (version, p));
                Ok(())
            }
            Err(e) => {
                let why = e.to_string();
                self.policies.insert(name.to_string(), (version, fail_closed(msg, &why)));
                Err(why)
            }
        }
    }

    /// Kept even when it does not decode: as a policy failing closed in its namespace.
    fn apply_waypoint_policy(&mut self, name: &str, version: String, body: &[u8]) -> Result<(), String> {
        let (object, refused) = crate::waypoint_xds::decode(name, body);
        self.waypoint_policies.insert(name.to_string(), (version, object));
        refused.map_or(Ok(()), Err)
    }

    /// The waypoint policies held (Kubernetes objects).
    pub fn waypoint_policies(&self) -> Vec<serde_json::Value> {
        self.waypoint_policies.values().map(|(_, v)| v.clone()).collect()
    }

    /// Resources held, of every type.
    pub fn len(&self) -> usize {
        self.addresses.len() + self.policies.len() + self.waypoint_policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `initial_resource_versions` for a reconnect.
    pub fn versions(&self, type_url: &str) -> BTreeMap<String, String> {
        match type_url {
            ADDRESS_TYPE => self.addresses.iter().map(|(n, (v, _))| (n.clone(), v.clone())).collect(),
            AUTHORIZATION_TYPE => self.policies.iter().map(|(n, (v, _))| (n.clone(), v.clone())).collect(),
            WAYPOINT_POLICY_TYPE => self.waypoint_policies.iter().map(|(n, (v, _))| (n.clone(), v.clone())).collect(),
            _ => BTreeMap::new(),
        }
    }

    pub fn state(&self) -> StateInput {
        let mut s = StateInput::default();
        for (_, d) in self.addresses.values() {
            match d {
                wds::Decoded::Workload(w) => s.workloads.push((**w).clone()),
                wds::Decoded::Service(svc) => s.services.push((**svc).clone()),
            }
        }
        s.policies = self.policies.values().map(|(_, p)| p.clone()).collect();
        s
    }
}

/// A policy whose rules could not be read, in the same scope, failing closed (the one rule
/// every reader uses, [`Authorization::failing_closed`]).
fn fail_closed(msg: crate::proto::security::Authorization, why: &str) -> Authorization {
    use crate::model::PolicyScope;
    let scope = match msg.scope {
        0 => PolicyScope::Global,
        2 => PolicyScope::WorkloadSelector,
        _ => PolicyScope::Namespace,
    };
    let allow = msg.action == crate::proto::security::Action::Allow as i32;
    Authorization::failing_closed(msg.name, msg.namespace, scope, allow, false, &format!("refused from xDS: {why}"))
}

#[cfg(test)]
#[path = "xds_tests.rs"]
mod tests;
