//! The node proxy's delta ADS client (protocols.md §4.4): one stream to the control plane,
//! an initial request per type carrying what is held (`initial_resource_versions`), every
//! response applied through the sans-IO [`ClientState`] and answered with an ACK or a NACK
//! naming each refused resource. Readiness waits for the first response of every type. When
//! the stream breaks, the last state received stays in force (last-known-good) while the
//! client reconnects with backoff; nothing is ever cleared because the server went away.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use ferry_core::waypoint_xds::WAYPOINT_POLICY_TYPE;
use ferry_core::wds::{ADDRESS_TYPE, AUTHORIZATION_TYPE};
use ferry_core::xds::ClientState;
use prost::Message;
use serde::Serialize;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

use super::channel::{self, MAX_MESSAGE};
use super::settings::XdsSettings;
use crate::proto::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crate::readiness::{BlockReady, Readiness};
use crate::state::{PolicyNotes, StateStore};

/// The types a node proxy subscribes to, in the order Istio sends them.
const TYPES: [&str; 2] = [ADDRESS_TYPE, AUTHORIZATION_TYPE];
/// A waypoint's: the addresses, and its policies (ferry's type, `ferry_core::waypoint_xds`).
const WAYPOINT_TYPES: [&str; 2] = [ADDRESS_TYPE, WAYPOINT_POLICY_TYPE];

/// A waypoint's policies as received (Kubernetes objects).
pub(crate) type WaypointPolicies = tokio::sync::watch::Sender<Arc<Vec<serde_json::Value>>>;
const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// What the admin `config_dump` shows of the xDS client.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct XdsStatus {
    pub(crate) address: String,
    pub(crate) connected: bool,
    /// Streams opened since start; more than one means the client reconnected.
    pub(crate) streams: u64,
    pub(crate) last_error: Option<String>,
    pub(crate) types: BTreeMap<String, TypeStatus>,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TypeStatus {
    /// Resources held now.
    pub(crate) resources: usize,
    pub(crate) responses: u64,
    /// Resources received on the current stream: after a reconnect that resumed with
    /// `initial_resource_versions`, only what changed while away.
    pub(crate) received_this_stream: u64,
    pub(crate) last_nonce: String,
    /// The last NACK sent, `"<name>: <reason>"` per refused resource.
    pub(crate) last_nack: Option<String>,
}

pub(crate) type SharedStatus = Arc<Mutex<XdsStatus>>;

pub(crate) struct AdsClient {
    settings: Arc<XdsSettings>,
    types: &'static [&'static str],
    store: StateStore,
    /// Set for a waypoint: where its policies go.
    waypoint_policies: Option<WaypointPolicies>,
    held: ClientState,
    notes: PolicyNotes,
    /// One pending readiness component per type until its first response.
    waiting: BTreeMap<&'static str, BlockReady>,
    status: SharedStatus,
}

/// How a stream ended, for the reconnect delay and `istio_xds_connection_terminations_total`.
enum Ended {
    /// The server closed the stream cleanly, or a transient condition (§4.4): reconnect now.
    Reconnect(&'static str, String),
    /// Anything else: back off.
    Error(&'static str, String),
}

impl AdsClient {
    /// A client for a node proxy, or for a waypoint when `waypoint_policies` is given (its
    /// readiness then also waits for the first policy response).
    pub(crate) fn new(
        settings: Arc<XdsSettings>,
        store: StateStore,
        ready: &Readiness,
        waypoint_policies: Option<WaypointPolicies>,
    ) -> (AdsClient, SharedStatus) {
        let types: &'static [&'static str] = if waypoint_policies.is_some() { &WAYPOINT_TYPES } else { &TYPES };
        let waiting = types.iter().map(|t| (*t, ready.block(&format!("xds {}", short(t))))).collect();
        let status = Arc::new(Mutex::new(XdsStatus { address: settings.target.url.clone(), ..Default::default() }));
        let held = ClientState::default();
        let client =
            AdsClient { settings, types, store, waypoint_policies, held, notes: PolicyNotes::default(), waiting, status: status.clone() };
        (client, status)
    }

    /// Runs until the process exits: connect, stream, and on any failure keep the state and
    /// reconnect.
    pub(crate) async fn run(mut self) {
        let mut backoff = BACKOFF_START;
        loop {
            let (reason, why, transient) = match self.stream(&mut backoff).await {
                Ended::Reconnect(reason, why) => (reason, why, true),
                Ended::Error(reason, why) => (reason, why, false),
            };
            // A transient end right after a useful stream reconnects at once; a server that
            // keeps ending streams before answering gets the doubling backoff, not a storm.
            let delay = if transient && backoff == BACKOFF_START { BACKOFF_START } else { backoff };
            backoff = (delay * 2).min(BACKOFF_MAX);
            metrics::counter!("istio_xds_connection_terminations_total", "reason" => reason).increment(1);
            let held = self.held.len();
            tracing::warn!(
                address = %self.settings.target.url, reason, error = %why, retry_in = ?delay, resources_held = held,
                "xDS stream ended; keeping the last state received and reconnecting"
            );
            self.update_status(|s| {
                s.connected = false;
                s.last_error = Some(why.clone());
            });
            tokio::time::sleep(delay.mul_f64(0.8 + fastrand::f64() * 0.4)).await;
        }
    }

    fn update_status(&self, f: impl FnOnce(&mut XdsStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// One stream, from connect to its end.
    async fn stream(&mut self, backoff: &mut Duration) -> Ended {
        let target = &self.settings.target;
        let channel = match channel::connect(target).await {
            Ok(c) => c,
            Err(e) => return Ended::Error("ConnectionError", e.to_string()),
        };
        let (tx, rx) = mpsc::channel(self.types.len() + 4);
        for t in self.types {
            // Cannot fail: the channel has room for every initial request.
            let _ = tx.try_send(self.initial_request(t));
        }
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        if let Err(e) = channel::authorize(&mut req, target) {
            return Ended::Error("ConnectionError", e.to_string());
        }
        let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
        let mut responses = match client.delta_aggregated_resources(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => return classify(&s),
        };
        self.update_status(|s| {
            s.connected = true;
            s.streams += 1;
            s.last_error = None;
            s.types.values_mut().for_each(|t| t.received_this_stream = 0);
        });
        tracing::info!(address = %target.url, "xDS stream open");
        loop {
            match responses.message().await {
                Ok(Some(resp)) => {
                    *backoff = BACKOFF_START;
                    let reply = self.handle(resp);
                    if tx.send(reply).await.is_err() {
                        return Ended::Error("Error", "the request stream closed".into());
                    }
                }
                Ok(None) => return Ended::Reconnect("Complete", "the server closed the stream".into()),
                Err(s) => return classify(&s),
            }
        }
    }

    fn initial_request(&self, type_url: &str) -> DeltaDiscoveryRequest {
        let node = &self.settings.node;
        DeltaDiscoveryRequest {
            node: Some(Node {
                id: node.id.clone(),
                metadata: Some(prost_types::Struct { fields: node.metadata.clone().into_iter().collect() }),
                ..Default::default()
            }),
            type_url: type_url.to_string(),
            initial_resource_versions: self.held.versions(type_url).into_iter().collect(),
            ..Default::default()
        }
    }

    /// Applies one response and returns its ACK or NACK.
    fn handle(&mut self, resp: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let type_url = resp.type_url.clone();
        metrics::counter!("istio_xds_message_total", "url" => type_url.clone()).increment(1);
        metrics::counter!("istio_xds_message_bytes_total", "url" => type_url.clone()).increment(resp.encoded_len() as u64);
        let mut ack = DeltaDiscoveryRequest { type_url: type_url.clone(), response_nonce: resp.nonce.clone(), ..Default::default() };
        if !self.types.contains(&type_url.as_str()) {
            tracing::warn!(%type_url, "xDS response for a type ferry did not subscribe to; acknowledged and ignored");
            return ack;
        }
        let count = resp.resources.len();
        let mut refused = Vec::new();
        let mut good = Vec::with_capacity(count);
        for r in resp.resources {
            match r.resource {
                Some(any) if any.type_url == type_url => good.push((r.name, r.version, any.value)),
                Some(any) => refused.push(format!("{}: carries {} in a {} response", r.name, any.type_url, type_url)),
                None => refused.push(format!("{}: no resource body", r.name)),
            }
        }
        let applied = self.held.apply(&type_url, good, &resp.removed_resources);
        refused.extend(applied.refused.iter().cloned());
        match (&self.waypoint_policies, applied.changed) {
            (Some(tx), true) if type_url == WAYPOINT_POLICY_TYPE => {
                tx.send_replace(Arc::new(self.held.waypoint_policies()));
            }
            (_, true) => {
                let input = self.held.state();
                self.notes.log(&input);
                self.store.replace(input);
            }
            (_, false) => {}
        }
        let nack = (!refused.is_empty()).then(|| refused.join("; "));
        if let Some(msg) = &nack {
            metrics::counter!("ferry_xds_rejected_resources_total", "url" => type_url.clone()).increment(refused.len() as u64);
            tracing::warn!(%type_url, nonce = %resp.nonce, reason = %msg, "xDS resources refused (NACK); the rest of the response is applied");
            ack.error_detail = Some(ferry_core::proto::xds::Status { code: 3, message: msg.clone(), details: Vec::new() });
        }
        let held = self.held.versions(&type_url).len();
        tracing::debug!(%type_url, nonce = %resp.nonce, received = count, removed = resp.removed_resources.len(), held, "xDS response applied");
        self.update_status(|s| {
            let t = s.types.entry(type_url.clone()).or_default();
            t.resources = held;
            t.responses += 1;
            t.received_this_stream += count as u64;
            t.last_nonce = resp.nonce.clone();
            if nack.is_some() {
                t.last_nack = nack.clone();
            }
        });
        if self.waiting.remove(type_url.as_str()).is_some() {
            tracing::info!(%type_url, resources = held, "first xDS response received");
        }
        ack
    }
}

/// §4.4: these end a stream in ways that merit an immediate reconnect; the rest back off.
fn classify(s: &tonic::Status) -> Ended {
    use tonic::Code;
    let why = format!("{}: {}", s.code(), s.message());
    let transient = match s.code() {
        Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => true,
        Code::Unavailable => s.message().contains("transport is closing") || s.message().contains("received prior goaway"),
        _ => false,
    };
    if transient {
        Ended::Reconnect("Reconnect", why)
    } else {
        Ended::Error("Error", why)
    }
}

fn short(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}
