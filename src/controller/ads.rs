//! The WDS server: delta ADS (`DeltaAggregatedResources`, protocols.md §4.4) over the
//! controller's current [`Resources`]. Each stream is authenticated by its token and must come
//! from a node proxy account (WDS: `Address`, `Authorization`) or a waypoint's account
//! (`Address` and ferry's waypoint policies of its namespace and the root namespace,
//! `ferry_core::waypoint_xds`); it then gets one [`Subscriber`] per type, so every push is the
//! delta against what that client holds (a pod change sends that pod), and a reconnecting
//! client's `initial_resource_versions` are honoured (no full push). NACKs are logged with the
//! client's reason and counted; the rejected resources are not re-sent until they change.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ferry_core::k8s::objects::ClusterState;
use ferry_core::proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as WireResource};
use ferry_core::waypoint_xds::{self, WAYPOINT_POLICY_TYPE};
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
    /// The cluster, to tell waypoint accounts.
    pub(crate) cluster: watch::Receiver<Arc<ClusterState>>,
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
        let caller = match authenticate(self.reviewer.as_ref(), &req, &self.proxy_accounts, &self.cluster).await {
            Ok(c) => c,
            Err(status) => {
                metrics::counter!("ferry_xds_streams_refused_total").increment(1);
                tracing::warn!(reason = status.message(), "xDS stream refused");
                return Err(status);
            }
        };
        let (tx, rx) = mpsc::channel(16);
        let (caller, role) = caller;
        let stream = Stream {
            caller,
            role,
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

/// What a stream's caller may subscribe to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Role {
    NodeProxy,
    /// A waypoint of this namespace.
    Waypoint(String),
}

impl Role {
    fn serves(&self, type_url: &str) -> bool {
        match self {
            Role::NodeProxy => type_url == ADDRESS_TYPE || type_url == AUTHORIZATION_TYPE,
            Role::Waypoint(_) => type_url == ADDRESS_TYPE || type_url == WAYPOINT_POLICY_TYPE,
        }
    }

    /// Whether this caller may see the resource `name` of `type_url`.
    fn sees(&self, type_url: &str, name: &str) -> bool {
        match self {
            Role::Waypoint(ns) if type_url == WAYPOINT_POLICY_TYPE => waypoint_xds::visible_to(name, ns),
            _ => true,
        }
    }
}

async fn authenticate<T>(
    reviewer: &dyn TokenReviewer,
    req: &Request<T>,
    allowed: &[String],
    cluster: &watch::Receiver<Arc<ClusterState>>,
) -> Result<(Caller, Role), Status> {
    let token = bearer(req.metadata()).map_err(|e| Status::unauthenticated(e.to_string()))?;
    let caller = reviewer.review(token).await.map_err(|e| Status::unauthenticated(e.to_string()))?;
    if allowed.contains(&caller.account()) {
        return Ok((caller, Role::NodeProxy));
    }
    if waypoint_xds::is_waypoint_account(&cluster.borrow(), &caller.namespace, &caller.service_account) {
        let ns = caller.namespace.clone();
        return Ok((caller, Role::Waypoint(ns)));
    }
    Err(Status::permission_denied(format!(
        "{} is neither a node proxy account (allowed: {}) nor the account of a waypoint's pods",
        caller.account(),
        allowed.join(", ")
    )))
}

struct Stream {
    caller: Caller,
    role: Role,
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
        if !self.role.serves(&type_url) {
            tracing::debug!(client = %self.caller.account(), role = ?self.role, %type_url, "ignoring a subscription to a type not served to this caller");
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
        let all = snapshot.of_type(type_url).unwrap_or(&empty);
        let visible: std::collections::BTreeMap<_, _>;
        let now = if self.role == Role::NodeProxy {
            all
        } else {
            visible = all.iter().filter(|(n, _)| self.role.sees(type_url, n)).map(|(n, r)| (n.clone(), r.clone())).collect();
            &visible
        };
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
    match type_url {
        ADDRESS_TYPE => "address",
        WAYPOINT_POLICY_TYPE => "waypoint_policy",
        _ => "authorization",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::auth::AuthError;
    use crate::tls::ca::BoxFuture;

    /// Every token names the account it is.
    struct AccountTokens;

    impl TokenReviewer for AccountTokens {
        fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
            let (namespace, service_account) = token.split_once('/').unwrap_or(("", token));
            let caller = Caller { namespace: namespace.into(), service_account: service_account.into(), pod: None, pod_uid: None };
            Box::pin(async move { Ok(caller) })
        }
    }

    const CLUSTER: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop}\nspec: {gatewayClassName: istio-waypoint}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: waypoint-1, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}\nspec: {serviceAccountName: waypoint}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: app, namespace: shop}\nspec: {serviceAccountName: app}\n";

    #[tokio::test]
    async fn node_proxies_get_wds_waypoints_their_policies_and_nobody_else_anything() {
        let state = ferry_core::k8s::manifests::parse_documents(CLUSTER, "t").unwrap();
        let (_tx, cluster) = watch::channel(Arc::new(state));
        let allowed = vec!["istio-system/ztunnel".to_string()];
        let role = |account: &str| {
            let mut req = Request::new(());
            req.metadata_mut().insert("authorization", format!("Bearer {account}").parse().unwrap());
            let cluster = cluster.clone();
            let allowed = allowed.clone();
            async move { authenticate(&AccountTokens, &req, &allowed, &cluster).await.map(|(_, r)| r).map_err(|s| s.code()) }
        };
        assert_eq!(role("istio-system/ztunnel").await, Ok(Role::NodeProxy));
        assert_eq!(role("shop/waypoint").await, Ok(Role::Waypoint("shop".into())));
        assert_eq!(role("shop/app").await, Err(tonic::Code::PermissionDenied), "an app's account");
        assert_eq!(role("other/waypoint").await, Err(tonic::Code::PermissionDenied), "the same name elsewhere");

        let wp = Role::Waypoint("shop".into());
        let cases = [
            (Role::NodeProxy, AUTHORIZATION_TYPE, true),
            (Role::NodeProxy, WAYPOINT_POLICY_TYPE, false),
            (wp.clone(), ADDRESS_TYPE, true),
            (wp.clone(), AUTHORIZATION_TYPE, false),
            (wp.clone(), WAYPOINT_POLICY_TYPE, true),
        ];
        for (role, type_url, want) in cases {
            assert_eq!(role.serves(type_url), want, "{role:?} {type_url}");
        }
        assert!(wp.sees(WAYPOINT_POLICY_TYPE, "shop/AuthorizationPolicy/a"));
        assert!(wp.sees(WAYPOINT_POLICY_TYPE, "istio-system/AuthorizationPolicy/mesh"));
        assert!(!wp.sees(WAYPOINT_POLICY_TYPE, "front/AuthorizationPolicy/theirs"));
    }
}
