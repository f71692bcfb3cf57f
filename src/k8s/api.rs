//! Cluster state from the Kubernetes API, behind [`ClusterSource`]: one kube-runtime watcher
//! per watched kind (every kind, or a [`Scope`]: a subset with per-kind field selectors; list,
//! then watch from the list's resourceVersion, resumed after a dropped watch, re-listed after
//! `410 Gone`, with kube's default backoff) feeding the sans-IO
//! [`ClusterIndex`]. Objects go through `serde_json` into the same conversion as manifests on
//! disk, so there is one translation.
//!
//! Invariants: nothing is published before every watched kind has completed its first list (the watch
//! channel's initial empty state is never marked changed), then only on change; a kind's
//! re-list keeps its previous objects in force until the list completes; an object that does
//! not convert is refused, logged and counted, and changes nothing else. No reflector store is
//! kept: the index holds ferry's typed objects only, so the API's objects (managedFields and
//! all) live only while one event is converted.

use std::sync::Arc;

use ferry_core::k8s::index::{ClusterIndex, Kind, Outcome, WatchEvent};
use ferry_core::k8s::objects::ClusterState;
use futures_util::stream::{BoxStream, StreamExt};
use futures_util::FutureExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::source::ClusterSource;

/// A custom kind (Istio's `security.istio.io/v1` policies, Gateway API's `Gateway`), typed as
/// far as ferry needs: the spec stays JSON for the one translation in the core
/// (`ferry_core::k8s::{policy, peer_auth, waypoint}`). `kube::Resource` comes from
/// k8s-openapi's traits, not kube's derive, which would pull a schema generator for CRD schemas
/// ferry never publishes.
macro_rules! custom_kind {
    ($name:ident, $group:literal, $version:literal, $plural:literal) => {
        #[derive(Clone, Debug, Deserialize, Serialize)]
        pub(crate) struct $name {
            metadata: ObjectMeta,
            #[serde(default)]
            spec: serde_json::Value,
            /// Kept: the controller compares a waypoint Gateway's status with what it would write.
            #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
            status: serde_json::Value,
        }

        impl k8s_openapi::Resource for $name {
            const API_VERSION: &'static str = concat!($group, "/", $version);
            const GROUP: &'static str = $group;
            const KIND: &'static str = stringify!($name);
            const VERSION: &'static str = $version;
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = k8s_openapi::NamespaceResourceScope;
        }

        impl k8s_openapi::Metadata for $name {
            type Ty = ObjectMeta;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

custom_kind!(AuthorizationPolicy, "security.istio.io", "v1", "authorizationpolicies");
custom_kind!(PeerAuthentication, "security.istio.io", "v1", "peerauthentications");
custom_kind!(Gateway, "gateway.networking.k8s.io", "v1", "gateways");

/// One kind's watcher event, the object as JSON; `Err` is a watch failure kube retries.
type KindEvent = (Kind, Result<WatchEvent, watcher::Error>);

/// What an [`ApiSource`] watches: a subset of the kinds, each optionally narrowed by a field
/// selector the API server applies (so a node agent never receives other nodes' pods).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    kinds: Vec<Kind>,
    field_selectors: Vec<(Kind, String)>,
}

impl Scope {
    /// Every kind, cluster-wide: the controller's view.
    pub fn everything() -> Scope {
        Scope { kinds: Kind::ALL.to_vec(), field_selectors: Vec::new() }
    }

    /// The node agent's view: what the capture decision reads (`ferry_core::k8s::capture`:
    /// the pod and its namespace), Pods restricted to `node` by `spec.nodeName`.
    pub fn node_agent(node: &str) -> Scope {
        Scope { kinds: vec![Kind::Namespace, Kind::Pod], field_selectors: vec![(Kind::Pod, format!("spec.nodeName={node}"))] }
    }

    fn config(&self, kind: Kind) -> watcher::Config {
        let config = watcher::Config::default();
        match self.field_selectors.iter().find(|(k, _)| *k == kind) {
            Some((_, selector)) => config.fields(selector),
            None => config,
        }
    }
}

/// The cluster state the Kubernetes API holds. Dropping it stops the watches.
pub struct ApiSource {
    state: watch::Receiver<Arc<ClusterState>>,
    pending: watch::Receiver<Vec<Kind>>,
    task: tokio::task::JoinHandle<()>,
}

impl ClusterSource for ApiSource {
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.clone()
    }

    fn unsynced(&self) -> Vec<&'static str> {
        self.pending.borrow().iter().map(|k| k.name()).collect()
    }
}

impl Drop for ApiSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiSource {
    /// Starts watching every kind with `client` (on the current tokio runtime).
    pub fn start(client: kube::Client) -> ApiSource {
        ApiSource::start_scoped(client, &Scope::everything())
    }

    /// Starts watching what `scope` names; the state is complete once those kinds listed.
    pub fn start_scoped(client: kube::Client, scope: &Scope) -> ApiSource {
        let (state_tx, state) = watch::channel(Arc::new(ClusterState::default()));
        let (pending_tx, pending) = watch::channel(scope.kinds.clone());
        describe();
        let events = futures_util::stream::select_all(scope.kinds.iter().map(|k| watch_kind(&client, scope, *k)));
        let task = tokio::spawn(run(events.boxed(), ClusterIndex::for_kinds(&scope.kinds), state_tx, pending_tx));
        ApiSource { state, pending, task }
    }

    /// Waits until every kind has completed its first list.
    pub async fn wait_synced(&self) {
        let mut pending = self.pending.clone();
        // The sender lives as long as the task, which lives as long as `self`.
        let _ = pending.wait_for(Vec::is_empty).await;
    }
}

/// A client for the Kubernetes API, configured as kubectl is (in-cluster, else KUBECONFIG).
pub(crate) async fn infer_client() -> Result<kube::Client, String> {
    let config = kube::Config::infer().await.map_err(|e| e.to_string())?;
    tracing::info!(api = %config.cluster_url, "using the Kubernetes API");
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// `kind`'s watcher, typed.
fn watch_kind(client: &kube::Client, scope: &Scope, kind: Kind) -> BoxStream<'static, KindEvent> {
    let (c, config) = (client.clone(), scope.config(kind));
    match kind {
        Kind::Namespace => kind_events::<Namespace>(kind, Api::all(c), config),
        Kind::Pod => kind_events::<Pod>(kind, Api::all(c), config),
        Kind::Service => kind_events::<Service>(kind, Api::all(c), config),
        Kind::ServiceAccount => kind_events::<ServiceAccount>(kind, Api::all(c), config),
        Kind::AuthorizationPolicy => kind_events::<AuthorizationPolicy>(kind, Api::all(c), config),
        Kind::PeerAuthentication => kind_events::<PeerAuthentication>(kind, Api::all(c), config),
        Kind::Gateway => kind_events::<Gateway>(kind, Api::all(c), config),
        Kind::Node => kind_events::<Node>(kind, Api::all(c), config),
        Kind::EndpointSlice => kind_events::<EndpointSlice>(kind, Api::all(c), config),
    }
}

/// `K`'s watcher with kube's default backoff, its objects as JSON.
fn kind_events<K>(kind: Kind, api: Api<K>, config: watcher::Config) -> BoxStream<'static, KindEvent>
where
    K: kube::Resource + Clone + std::fmt::Debug + DeserializeOwned + Serialize + Send + 'static,
{
    metrics::gauge!("ferry_k8s_synced", "kind" => kind.name()).set(0.0);
    watcher(api, config).default_backoff().map(move |r| (kind, r.map(index_event))).boxed()
}

/// kube-runtime's event as the index's (the same five cases). Serialising a typed object
/// cannot fail; if it did, the index would refuse the resulting `null` with a reason.
fn index_event<K: Serialize>(e: Event<K>) -> WatchEvent {
    let json = |o: K| serde_json::to_value(o).unwrap_or_default();
    match e {
        Event::Init => WatchEvent::ListStart,
        Event::InitApply(o) => WatchEvent::Listed(json(o)),
        Event::InitDone => WatchEvent::ListDone,
        Event::Apply(o) => WatchEvent::Apply(json(o)),
        Event::Delete(o) => WatchEvent::Delete(json(o)),
    }
}

/// The most events applied before the state is published.
const MAX_BATCH: usize = 4096;

/// Feeds every event to the index and publishes each changed, synced state. Events already
/// waiting are applied together, so an initial list or a burst is one publication, not one
/// per object.
async fn run(
    mut events: BoxStream<'static, KindEvent>,
    mut index: ClusterIndex,
    state: watch::Sender<Arc<ClusterState>>,
    pending: watch::Sender<Vec<Kind>>,
) {
    while let Some(first) = events.next().await {
        let mut next = Some(first);
        let mut batch = 0;
        while let Some((kind, event)) = next {
            feed(&mut index, kind, event);
            batch += 1;
            // Bounded, so a flood of events still yields to the runtime and publishes.
            next = if batch < MAX_BATCH { events.next().now_or_never().flatten() } else { None };
        }
        let unsynced = index.unsynced();
        pending.send_if_modified(|p| std::mem::replace(p, unsynced.clone()) != unsynced);
        if let Some(next) = index.take_changed() {
            tracing::info!(pods = next.pods.len(), services = next.services.len(), "cluster state from the Kubernetes API updated");
            state.send_replace(Arc::new(next));
        }
    }
}

/// One event into the index, logged and counted.
fn feed(index: &mut ClusterIndex, kind: Kind, event: Result<WatchEvent, watcher::Error>) {
    let k = kind.name();
    let event = match event {
        Ok(e) => e,
        Err(e) => return watch_failed(kind, &e),
    };
    let name = match event {
        WatchEvent::ListStart => {
            if index.kind_synced(kind) {
                tracing::info!(kind = k, "re-listing: the watch could not resume from its resourceVersion");
            }
            "list_start"
        }
        WatchEvent::Listed(_) => "listed",
        WatchEvent::ListDone => "list_done",
        WatchEvent::Apply(_) => "apply",
        WatchEvent::Delete(_) => "delete",
    };
    let list_done = matches!(event, WatchEvent::ListDone);
    metrics::counter!("ferry_k8s_watch_events_total", "kind" => k, "event" => name).increment(1);
    match index.apply(kind, event) {
        Ok(outcome) if list_done => {
            metrics::gauge!("ferry_k8s_synced", "kind" => k).set(1.0);
            let changed = outcome == Outcome::Changed;
            tracing::info!(kind = k, objects = index.len(kind), changed, "list complete");
        }
        Ok(_) => {}
        Err(e) => {
            metrics::counter!("ferry_k8s_objects_refused_total", "kind" => k).increment(1);
            tracing::warn!(kind = k, error = %e, "object from the Kubernetes API refused; the rest of the state stays");
        }
    }
}

/// A failed list or watch: kube's watcher retries after the backoff; a 410 re-lists.
fn watch_failed(kind: Kind, e: &watcher::Error) {
    let reason = match e {
        watcher::Error::WatchError(s) if s.code == 410 => {
            tracing::info!(kind = kind.name(), error = %e, "watch expired (410 Gone): re-listing");
            "gone"
        }
        watcher::Error::InitialListFailed(_) => "list",
        watcher::Error::WatchStartFailed(_) => "watch_start",
        _ => "watch",
    };
    if reason != "gone" {
        tracing::warn!(kind = kind.name(), error = %e, "Kubernetes watch failed; retrying with backoff");
    }
    metrics::counter!("ferry_k8s_watch_events_total", "kind" => kind.name(), "event" => "error").increment(1);
    metrics::counter!("ferry_k8s_watch_errors_total", "kind" => kind.name(), "reason" => reason).increment(1);
}

fn describe() {
    metrics::describe_counter!(
        "ferry_k8s_watch_events_total",
        "Kubernetes watcher events by kind and event (list_start, listed, list_done, apply, delete, error)"
    );
    metrics::describe_counter!(
        "ferry_k8s_watch_errors_total",
        "Failed Kubernetes lists and watches by kind and reason (gone: 410, re-listed)"
    );
    metrics::describe_counter!("ferry_k8s_objects_refused_total", "Kubernetes objects refused by the conversion, by kind");
    metrics::describe_gauge!("ferry_k8s_synced", "1 once the kind's first list from the Kubernetes API completed");
}
