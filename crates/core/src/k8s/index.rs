//! The cluster-state index the Kubernetes API watchers feed: per kind, watch events (a list
//! bracketed by `ListStart`/`ListDone`, then `Apply`/`Delete`, as kube-runtime's watcher
//! yields them) into one [`ClusterState`]. Sans-IO: the caller owns the watches and feeds
//! events in; the index decides what the state is.
//!
//! Invariants: a list (`ListStart`..`ListDone`) replaces that kind's whole set atomically when
//! it completes, so an object deleted while a watch was down disappears, and until then the
//! previous set stays in force; the state is [`ClusterIndex::synced`] only once every kind has
//! completed its first list, and stays synced across re-lists (a 410 must not make a serving
//! controller unready); every object goes through the same conversion as a manifest on disk
//! ([`manifests::object`]), and one that fails it is refused with a reason while its previous
//! version (if any) and every other object stay.

use std::collections::BTreeMap;

use serde_json::Value;

use super::manifests::{self, ManifestError, Object};
use super::objects::ClusterState;

/// The kinds ferry reads from the Kubernetes API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    ServiceAccount,
    AuthorizationPolicy,
    PeerAuthentication,
    /// Gateway API Gateways: the waypoints (`super::waypoint`).
    Gateway,
    /// Nodes: their topology labels are their pods' locality.
    Node,
    /// EndpointSlices: the endpoints of Services without a selector.
    EndpointSlice,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::ServiceAccount,
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
        Kind::Gateway,
        Kind::Node,
        Kind::EndpointSlice,
    ];

    /// The kind's name as it appears in an object's `kind` field.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::Gateway => "Gateway",
            Kind::Node => "Node",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service | Kind::ServiceAccount | Kind::Node => "v1",
            Kind::AuthorizationPolicy | Kind::PeerAuthentication => "security.istio.io/v1",
            Kind::Gateway => "gateway.networking.k8s.io/v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }
}

/// One watcher event, as kube-runtime's `watcher::Event` (Init, InitApply, InitDone, Apply,
/// Delete), with the object as the API serves it (JSON).
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent {
    /// A (re-)list starts; the objects that follow until `ListDone` are the kind's whole set.
    ListStart,
    /// One object of the list in progress.
    Listed(Value),
    /// The list is complete: its objects replace the kind's set.
    ListDone,
    /// An object was added or changed.
    Apply(Value),
    /// An object was deleted (its last state).
    Delete(Value),
}

/// What feeding one event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The state changed (or, for `ListDone`, the kind's set was replaced by a different one).
    Changed,
    /// Nothing the state holds changed.
    Unchanged,
}

/// An object the index refused, with why; the rest of the state is unaffected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("refused {0}")]
    Invalid(#[from] ManifestError),
    #[error("refused {got} {name} from the {watched} watch: wrong kind")]
    WrongKind { watched: &'static str, got: String, name: String },
    #[error("refused a {kind} delete without metadata.name")]
    NoName { kind: &'static str },
}

#[derive(Clone, Debug, Default)]
struct KindSet {
    current: BTreeMap<String, Object>,
    /// The list in progress, if one is.
    listing: Option<BTreeMap<String, Object>>,
    synced: bool,
}

/// Every watched kind's objects, fed by watch events.
#[derive(Clone, Debug)]
pub struct ClusterIndex {
    /// The kinds whose first list makes the state complete (a node agent watches fewer).
    watched: Vec<Kind>,
    kinds: BTreeMap<Kind, KindSet>,
    /// Whether the state changed since [`ClusterIndex::take_changed`] last returned it.
    dirty: bool,
}

impl Default for ClusterIndex {
    fn default() -> Self {
        ClusterIndex::new()
    }
}

impl ClusterIndex {
    pub fn new() -> Self {
        ClusterIndex::for_kinds(&Kind::ALL)
    }

    /// An index complete once each of `kinds` has listed; other kinds' events are still
    /// applied but not waited for.
    pub fn for_kinds(kinds: &[Kind]) -> Self {
        ClusterIndex { watched: kinds.to_vec(), kinds: BTreeMap::new(), dirty: false }
    }

    /// Feeds one event of `kind`'s watch.
    pub fn apply(&mut self, kind: Kind, event: WatchEvent) -> Result<Outcome, IndexError> {
        let set = self.kinds.entry(kind).or_default();
        let changed = match event {
            WatchEvent::ListStart => {
                set.listing = Some(BTreeMap::new());
                false
            }
            WatchEvent::Listed(v) => {
                let o = convert(kind, v)?;
                let listing = set.listing.get_or_insert_with(BTreeMap::new);
                listing.insert(o.key().to_string(), o);
                false
            }
            WatchEvent::ListDone => {
                let listed = set.listing.take().unwrap_or_default();
                set.synced = true;
                let changed = listed != set.current;
                set.current = listed;
                changed
            }
            WatchEvent::Apply(v) => {
                let o = convert(kind, v)?;
                let key = o.key().to_string();
                if let Some(listing) = set.listing.as_mut() {
                    listing.insert(key.clone(), o.clone());
                }
                if set.current.get(&key) == Some(&o) {
                    false
                } else {
                    set.current.insert(key, o);
                    true
                }
            }
            WatchEvent::Delete(v) => {
                let key = delete_key(kind, &v)?;
                if let Some(listing) = set.listing.as_mut() {
                    listing.remove(&key);
                }
                set.current.remove(&key).is_some()
            }
        };
        self.dirty |= changed;
        Ok(if changed { Outcome::Changed } else { Outcome::Unchanged })
    }

    /// Whether `kind` has completed its first list.
    pub fn kind_synced(&self, kind: Kind) -> bool {
        self.kinds.get(&kind).is_some_and(|s| s.synced)
    }

    /// Whether every watched kind has completed its first list.
    pub fn synced(&self) -> bool {
        self.watched.iter().all(|k| self.kind_synced(*k))
    }

    /// The watched kinds that have not completed their first list.
    pub fn unsynced(&self) -> Vec<Kind> {
        self.watched.iter().copied().filter(|k| !self.kind_synced(*k)).collect()
    }

    /// How many objects of `kind` the state holds.
    pub fn len(&self, kind: Kind) -> usize {
        self.kinds.get(&kind).map_or(0, |s| s.current.len())
    }

    /// The state now (complete only once [`ClusterIndex::synced`]).
    pub fn state(&self) -> ClusterState {
        let mut state = ClusterState::default();
        for o in self.kinds.values().flat_map(|s| s.current.values()) {
            // Keys are unique per kind and kinds map to disjoint fields (or disjoint
            // `kind/...` prefixes of `other`), so insertion cannot meet a duplicate.
            let _ = manifests::insert(&mut state, o.clone());
        }
        state
    }

    /// The state, once synced, if it changed since the last call: what a publisher sends.
    pub fn take_changed(&mut self) -> Option<ClusterState> {
        if !self.synced() {
            return None;
        }
        let changed = std::mem::replace(&mut self.dirty, false);
        changed.then(|| self.state())
    }
}

/// An API object to ferry's type for `kind`. The API server omits `apiVersion`/`kind` on list
/// items; the watch says which kind they are.
fn convert(kind: Kind, mut v: Value) -> Result<Object, IndexError> {
    if let Some(m) = v.as_object_mut() {
        m.entry("apiVersion").or_insert_with(|| kind.api_version().into());
        m.entry("kind").or_insert_with(|| kind.name().into());
    }
    let got = v.get("kind").and_then(Value::as_str).unwrap_or_default();
    if got != kind.name() {
        let name = v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        return Err(IndexError::WrongKind { watched: kind.name(), got: got.to_string(), name });
    }
    Ok(manifests::object(v)?)
}

/// The key a deleted object had. Only its name and namespace matter: a delete must remove the
/// object even when its last state would not convert.
fn delete_key(kind: Kind, v: &Value) -> Result<String, IndexError> {
    let meta = |f: &str| v.pointer(&format!("/metadata/{f}")).and_then(Value::as_str).filter(|s| !s.is_empty());
    let name = meta("name").ok_or(IndexError::NoName { kind: kind.name() })?;
    let ns = meta("namespace").unwrap_or("default");
    Ok(match kind {
        Kind::Namespace => name.to_string(),
        Kind::Pod | Kind::Service | Kind::ServiceAccount => format!("{ns}/{name}"),
        // Cluster-scoped Nodes are kept as `Node/default/name`, as the manifest conversion keys them.
        Kind::AuthorizationPolicy | Kind::PeerAuthentication | Kind::Gateway | Kind::Node | Kind::EndpointSlice => {
            format!("{}/{ns}/{name}", kind.name())
        }
    })
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
