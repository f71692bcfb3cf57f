//! The CA API (`IstioCertificateService/CreateCertificate`, protocols.md §5): signs a workload
//! CSR for the caller's own identity, or, for a trusted node account, for the identity of a pod
//! scheduled on the caller's node (impersonation, invariant P1). Every refusal is logged with
//! its reason and counted; the caller gets an opaque `Unauthenticated`/`PermissionDenied`.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::identity::Identity;
use ferry_core::k8s::objects::ClusterState;
use ferry_core::proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::auth::{bearer, Caller, TokenReviewer};
use crate::proto::ca::istio_certificate_service_server::IstioCertificateService;
use crate::tls::ca::LocalCa;

pub(crate) struct CaServer {
    pub(crate) ca: Arc<LocalCa>,
    pub(crate) reviewer: Arc<dyn TokenReviewer>,
    /// `namespace/service-account` of node proxies allowed to impersonate (`CA_TRUSTED_NODE_ACCOUNTS`).
    pub(crate) trusted_node_accounts: Vec<String>,
    pub(crate) cluster: watch::Receiver<Arc<ClusterState>>,
    pub(crate) trust_domain: String,
    pub(crate) max_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    BadRequest(String),
    /// A pod this decision needs is not in the state yet; becomes `Denied` if it never shows.
    #[error("{0}")]
    NotYet(String),
}

/// How long a certificate request waits for a pod this controller has not seen yet.
const CACHE_LAG: Duration = Duration::from_secs(3);

impl Refusal {
    fn label(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::Denied(_) | Refusal::NotYet(_) => "denied",
            Refusal::BadRequest(_) => "bad_request",
        }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaServer {
    async fn create_certificate(&self, req: Request<IstioCertificateRequest>) -> Result<Response<IstioCertificateResponse>, Status> {
        let token = bearer(req.metadata()).map(str::to_string);
        let result = match token {
            Ok(t) => self.issue(&t, req.into_inner()).await,
            Err(e) => Err(Refusal::Unauthenticated(e.to_string())),
        };
        match result {
            Ok((id, chain)) => {
                metrics::counter!("ferry_ca_requests_total", "result" => "issued").increment(1);
                tracing::info!(identity = %id, "certificate issued");
                Ok(Response::new(IstioCertificateResponse { cert_chain: chain }))
            }
            Err(r) => {
                metrics::counter!("ferry_ca_requests_total", "result" => r.label()).increment(1);
                tracing::warn!(reason = %r, "certificate request refused");
                Err(match r {
                    Refusal::Unauthenticated(_) => Status::unauthenticated("request not authenticated"),
                    Refusal::Denied(_) | Refusal::NotYet(_) => Status::permission_denied("not allowed to request this identity"),
                    Refusal::BadRequest(m) => Status::invalid_argument(m),
                })
            }
        }
    }
}

impl CaServer {
    async fn issue(&self, token: &str, req: IstioCertificateRequest) -> Result<(Identity, Vec<String>), Refusal> {
        let caller = self.reviewer.review(token).await.map_err(|e| Refusal::Unauthenticated(e.to_string()))?;
        let own = caller
            .identity(&self.trust_domain)
            .ok_or_else(|| Refusal::Unauthenticated(format!("{} is not a valid identity", caller.account())))?;
        let id = match impersonated(&req)? {
            None => own,
            Some(id) if id == own => own,
            Some(id) => {
                self.authorize_impersonation(&caller, &id).await?;
                id
            }
        };
        let requested = Duration::from_secs(u64::try_from(req.validity_duration).unwrap_or(0));
        let ttl = if requested.is_zero() { self.max_ttl } else { requested.min(self.max_ttl) };
        let chain = self.ca.sign_csr(&id, &req.csr, ttl).map_err(|e| Refusal::BadRequest(e.to_string()))?;
        Ok((id, chain))
    }

    /// The node authorizer, waiting up to [`CACHE_LAG`] for the cluster state to show a pod
    /// it does not know yet: a node proxy learns of a new pod from its node agent and may ask
    /// before this controller's watch has delivered it. Only a refusal about a missing pod is
    /// retried; a wrong account or trust domain is refused at once.
    async fn authorize_impersonation(&self, caller: &Caller, id: &Identity) -> Result<(), Refusal> {
        let mut cluster = self.cluster.clone();
        let deadline = tokio::time::Instant::now() + CACHE_LAG;
        loop {
            cluster.borrow_and_update();
            match self.check_impersonation(caller, id) {
                Err(Refusal::NotYet(why)) => {
                    if tokio::time::timeout_at(deadline, cluster.changed()).await.is_err() {
                        return Err(Refusal::Denied(why));
                    }
                }
                other => return other,
            }
        }
    }

    /// A trusted node account, bound to a pod that exists with the same uid, may get the
    /// identity of a pod scheduled on that pod's node.
    fn check_impersonation(&self, caller: &Caller, id: &Identity) -> Result<(), Refusal> {
        let who = caller.account();
        if !self.trusted_node_accounts.contains(&who) {
            return Err(Refusal::Denied(format!(
                "{who} asked for {id} but is not a trusted node account (CA_TRUSTED_NODE_ACCOUNTS={})",
                self.trusted_node_accounts.join(",")
            )));
        }
        if id.trust_domain() != self.trust_domain {
            return Err(Refusal::Denied(format!("{who} asked for {id}, outside trust domain {}", self.trust_domain)));
        }
        let state = self.cluster.borrow().clone();
        let pod_name = caller.pod.as_deref().ok_or_else(|| Refusal::Denied(format!("{who}'s token is not bound to a pod")))?;
        let pod =
            state.pod(&caller.namespace, pod_name).ok_or_else(|| Refusal::NotYet(format!("{who}'s pod {pod_name} does not exist")))?;
        let same_pod =
            caller.pod_uid.as_deref().is_none_or(|uid| uid == pod.metadata.uid) && pod.service_account() == caller.service_account;
        if !same_pod {
            return Err(Refusal::Denied(format!("{who}'s token does not match pod {pod_name}")));
        }
        let node = &pod.spec.node_name;
        let on_node = state.pods.values().any(|p| {
            p.spec.node_name == *node
                && !node.is_empty()
                && p.metadata.namespace == id.namespace()
                && p.service_account() == id.service_account()
                && p.status.phase != "Failed"
        });
        if !on_node {
            return Err(Refusal::NotYet(format!("{who} on node {node:?} asked for {id}, but no pod with that identity runs on that node")));
        }
        Ok(())
    }
}

/// `metadata.ImpersonatedIdentity`, when present.
fn impersonated(req: &IstioCertificateRequest) -> Result<Option<Identity>, Refusal> {
    use prost_types::value::Kind;
    let Some(v) = req.metadata.as_ref().and_then(|m| m.fields.get("ImpersonatedIdentity")) else { return Ok(None) };
    match &v.kind {
        Some(Kind::StringValue(s)) => {
            s.parse().map(Some).map_err(|e: ferry_core::identity::IdentityError| Refusal::BadRequest(e.to_string()))
        }
        _ => Err(Refusal::BadRequest("ImpersonatedIdentity must be a string".into())),
    }
}
