//! The WDS server: delta ADS (`DeltaAggregatedResources`, protocols.md §4.4) over the
//! controller's current [`Resources`]. Each stream is authenticated by its token and must come
//! from a node proxy account; it then gets one [`Subscriber`] per type, so every push is the
//! delta against what that client holds (a pod change sends that pod), and a reconnecting
//! client's `initial_resource_versions` are honoured (no full push). NACKs are logged with the
//! client's reason and counted; the rejected resources are not re-sent until they change.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ferry_core::proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as WireResource};
use ferry_core::wds::{ADDRESS_TYPE, AUTHORIZATION_TYPE};
use ferry_core::xds::{Resources, Subscriber};
use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{bearer, Caller, TokenReviewer};
use crate::proto::xds::aggregated_discovery_service_server::AggregatedDiscoveryService;

pub(crate) struct Ads {
    pub(crate) resources: watch::Receiver<Arc<Resources>>,
    pub(crate) reviewer: Arc<dyn TokenReviewer>,
    /// `namespace/service-account` of the accounts allowed to receive WDS (node proxies).
    pub(crate) proxy_accounts: Vec<String>,
    pub(crate) nonce: Arc<AtomicU64>,
    /// Turns true when the controller stops: every stream ends, so clients reconnect
    /// elsewhere and graceful shutdown does not wait on streams that never finish.
    pub(crate) closing: watch::Receiver<bool>,
}

type Out = Result<DeltaDiscoveryResponse, Status>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type DeltaAggregatedResourcesStream = ReceiverStream<Out>;

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let caller = match authenticate(self.reviewer.as_ref(), &req, &self.proxy_accounts).await {
            Ok(c) => c,
            Err(status) => {
                metrics::counter!("ferry_xds_streams_refused_total").increment(1);
                tracing::warn!(reason = status.message(), "xDS stream refused");
                return Err(status);
            }
        };
        let (tx, rx) = mpsc::channel(16);
        let stream = Stream {
            caller,
            tx,
            resources: self.resources.clone(),
            nonce: self.nonce.clone(),
            subs: HashMap::new(),
            closing: self.closing.clone(),
        };
        tokio::spawn(stream.run(req.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn authenticate<T>(reviewer: &dyn TokenReviewer, req: &Request<T>, allowed: &[String]) -> Result<Caller, Status> {
    let token = bearer(req.metadata()).map_err(|e| Status::unauthenticated(e.to_string()))?;
    let caller = reviewer.review(token).await.map_err(|e| Status::unauthenticated(e.to_string()))?;
    if !allowed.contains(&caller.account()) {
        return Err(Status::permission_denied(format!(
            "{} is not a node proxy account (allowed: {})",
            caller.account(),
            allowed.join(", ")
        )));
    }
    Ok(caller)
}

struct Stream {
    caller: Caller,
    tx: mpsc::Sender<Out>,
    resources: watch::Receiver<Arc<Resources>>,
    nonce: Arc<AtomicU64>,
    subs: HashMap<String, Subscriber>,
    closing: watch::Receiver<bool>,
}

impl Stream {
    async fn run(mut self, mut requests: Streaming<DeltaDiscoveryRequest>) {
        let who = self.caller.account();
        metrics::gauge!("ferry_xds_connections").increment(1.0);
        tracing::info!(client = %who, "xDS stream opened");
        let mut closing = self.closing.clone();
        loop {
            tokio::select! {
                msg = requests.message() => match msg {
                    Ok(Some(req)) => {
                        if !self.request(req).await {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(client = %who, error = %e, "xDS stream ended");
                        break;
                    }
                },
                _ = closing.changed() => break,
                changed = self.resources.changed() => {
                    if changed.is_err() || !self.push_all().await {
                        break;
                    }
                }
            }
        }
        metrics::gauge!("ferry_xds_connections").decrement(1.0);
        tracing::info!(client = %who, "xDS stream closed");
    }

    /// Handles one request; `false` when the client is gone.
    async fn request(&mut self, req: DeltaDiscoveryRequest) -> bool {
        let type_url = req.type_url.clone();
        if type_url != ADDRESS_TYPE && type_url != AUTHORIZATION_TYPE {
            tracing::debug!(client = %self.caller.account(), %type_url, "ignoring a subscription to an unserved type");
            return true;
        }
        if !req.response_nonce.is_empty() {
            match &req.error_detail {
                Some(e) if !e.message.is_empty() => {
                    metrics::counter!("ferry_xds_nacks_total", "type" => short(&type_url)).increment(1);
                    tracing::warn!(client = %self.caller.account(), %type_url, nonce = %req.response_nonce, reason = %e.message, "xDS client rejected resources (NACK)");
                }
                _ => metrics::counter!("ferry_xds_acks_total", "type" => short(&type_url)).increment(1),
            }
        }
        let first = !self.subs.contains_key(&type_url);
        let sub = self.subs.entry(type_url.clone()).or_insert_with(|| {
            let initial = req.initial_resource_versions.clone().into_iter().collect();
            Subscriber::new(&req.resource_names_subscribe, &req.resource_names_unsubscribe, initial)
        });
        if !first {
            sub.change(&req.resource_names_subscribe, &req.resource_names_unsubscribe);
        }
        let changes_subscription = first || !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty();
        !changes_subscription || self.push(&type_url, first).await
    }

    async fn push_all(&mut self) -> bool {
        let types: Vec<String> = self.subs.keys().cloned().collect();
        for t in types {
            if !self.push(&t, false).await {
                return false;
            }
        }
        true
    }

    /// Sends the subscriber of `type_url` what it lacks; the first response of a type is sent
    /// even when empty, so the client knows it is complete (and becomes ready).
    async fn push(&mut self, type_url: &str, first: bool) -> bool {
        let snapshot = self.resources.borrow().clone();
        let empty = Default::default();
        let now = snapshot.of_type(type_url).unwrap_or(&empty);
        let Some(sub) = self.subs.get_mut(type_url) else { return true };
        let delta = sub.delta(now);
        if delta.is_empty() && !first {
            return true;
        }
        let nonce = self.nonce.fetch_add(1, Ordering::Relaxed).to_string();
        metrics::counter!("ferry_xds_pushes_total", "type" => short(type_url)).increment(1);
        metrics::counter!("ferry_xds_resources_sent_total", "type" => short(type_url)).increment(delta.updated.len() as u64);
        tracing::debug!(client = %self.caller.account(), type_url, updated = delta.updated.len(), removed = delta.removed.len(), "xDS push");
        let resp = DeltaDiscoveryResponse {
            system_version_info: String::new(),
            type_url: type_url.to_string(),
            resources: delta
                .updated
                .into_iter()
                .map(|r| WireResource {
                    name: r.name,
                    aliases: r.aliases,
                    version: r.version,
                    resource: Some(prost_types::Any { type_url: type_url.to_string(), value: r.body }),
                })
                .collect(),
            removed_resources: delta.removed,
            nonce,
        };
        self.tx.send(Ok(resp)).await.is_ok()
    }
}

fn short(type_url: &str) -> &'static str {
    if type_url == ADDRESS_TYPE {
        "address"
    } else {
        "authorization"
    }
}
