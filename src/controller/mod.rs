//! `ferry controller`, the control plane: watches cluster state, translates it with the one
//! pure translation (`ferry_core::k8s::translate`), and serves it to node proxies over Istio's
//! wire protocols on one TLS port (15012): WDS (delta ADS, `istio.workload.Address` and
//! `istio.security.Authorization`) and the CA API (`CreateCertificate`). Every stream and
//! request is authenticated by its bearer token before anything is served.
//!
//! Cluster state comes from the Kubernetes API (`crate::k8s::api`, the deployment shape) or,
//! with `--cluster-state`, from manifests on disk (the simulated cluster). Either way xDS is
//! served only once the state is complete: from the API, once every kind's first list is in,
//! so a restarted controller never tells proxies that the world is empty.
//!
//! On the API, replicas elect a leader with a Lease (`leader`); every replica serves xDS and
//! the CA, only the leader writes (the root certificate's ConfigMaps, `root_cert`; waypoint
//! Gateways' status, `gateway_status`; each waypoint's ServiceAccount, Deployment and Service,
//! `waypoint_deploy`). With `--cluster-state` there is no API to write to: no election, no
//! publication, no deployment.

mod ads;
pub(crate) mod auth;
mod ca;
mod gateway_status;
mod health;
mod leader;
mod root_cert;
mod token_review;
mod waypoint_deploy;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::k8s::lease::Timings;
use ferry_core::k8s::objects::ClusterState;
use ferry_core::k8s::translate::{translate, TranslateOptions};
use ferry_core::k8s::waypoint::WaypointUnavailable;
use ferry_core::timefmt::parse_duration;
use ferry_core::waypoint_xds::WAYPOINT_POLICY_TYPE;
use ferry_core::xds::Resources;
use tokio::sync::watch;

use crate::k8s::api::ApiSource;
use crate::k8s::source::{ClusterSource, FileSource};
use crate::proto::ca::istio_certificate_service_server::IstioCertificateServiceServer;
use crate::proto::xds::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use crate::telemetry::{self, LogFormat};
use crate::tls::ca::LocalCa;

#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Controller")]
pub struct ControllerArgs {
    /// Kubernetes manifests (a file or directory) the controller serves, re-read on change,
    /// instead of the Kubernetes API (for a simulated cluster or a controller beside one).
    /// Without it the controller watches the API, the deployment shape, so no extra flag is
    /// needed in a pod: configured as kubectl is, in-cluster (the pod's service account) or
    /// `KUBECONFIG`/`~/.kube/config`; it serves xDS and reports ready only once every kind's
    /// first list is complete.
    #[arg(long, env = "FERRY_CLUSTER_STATE", value_name = "PATH")]
    pub cluster_state: Option<PathBuf>,
    /// How often `--cluster-state` is checked for changes.
    #[arg(long, env = "FERRY_CLUSTER_STATE_POLL", value_parser = parse_duration, default_value = "1s")]
    pub cluster_state_poll: Duration,
    /// Address of the TLS gRPC server (xDS and CA), 15012 as istiod.
    #[arg(long, env = "FERRY_XDS_LISTEN", default_value = "[::]:15012")]
    pub listen: SocketAddr,
    /// The mesh CA in Istio's plugged-in layout (`cacerts`: ca-cert.pem, ca-key.pem,
    /// root-cert.pem, cert-chain.pem); create one with `ferry ca init`.
    #[arg(long, env = "FERRY_CA_DIR", value_name = "DIR")]
    pub ca_dir: PathBuf,
    /// DNS names on the serving certificate: the names proxies dial (XDS_ADDRESS's host).
    #[arg(
        long,
        env = "FERRY_SERVING_NAMES",
        value_delimiter = ',',
        default_value = "ferry-controller.istio-system.svc,istiod.istio-system.svc"
    )]
    pub serving_names: Vec<String>,
    /// Tokens the controller accepts, one `token namespace/sa[/pod[/uid]]` per line (the
    /// simulated cluster's harness writes it). Without it every token is reviewed by the
    /// Kubernetes API (a TokenReview with audience `istio-ca`, as istiod does).
    #[arg(long, env = "FERRY_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Service accounts (`namespace/name`) whose tokens may open xDS streams: node proxies.
    #[arg(long, env = "FERRY_PROXY_ACCOUNTS", value_delimiter = ',', default_value = "istio-system/ztunnel")]
    pub proxy_accounts: Vec<String>,
    /// Service accounts allowed to request certificates for pods on their node.
    #[arg(long, env = "CA_TRUSTED_NODE_ACCOUNTS", value_delimiter = ',', default_value = "istio-system/ztunnel")]
    pub trusted_node_accounts: Vec<String>,
    /// Longest certificate lifetime issued; longer requests are capped.
    #[arg(long, env = "FERRY_MAX_CERT_TTL", value_parser = parse_duration, default_value = "24h")]
    pub max_cert_ttl: Duration,
    #[arg(long, env = "TRUST_DOMAIN", default_value = ferry_core::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Readiness (`/healthz/ready`: ready once the state is complete and the server listens).
    #[arg(long, env = "FERRY_READINESS_ADDR", default_value = "[::]:15021")]
    pub readiness_addr: SocketAddr,
    /// Prometheus metrics (`/metrics`), 15014 as istiod.
    #[arg(long, env = "FERRY_STATS_ADDR", default_value = "[::]:15014")]
    pub stats_addr: SocketAddr,
    /// The leader-election Lease (`coordination.k8s.io/v1`) in `--lease-namespace`. Only the
    /// holder writes to the API (the `istio-ca-root-cert` ConfigMaps); every replica serves
    /// xDS and the CA. Not used with `--cluster-state` (no API: nothing is written).
    #[arg(long, env = "FERRY_LEASE_NAME", default_value = "ferry-controller")]
    pub lease_name: String,
    /// The namespace of the Lease: the controller's own (downward API `POD_NAMESPACE`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease; default `POD_NAME`, else the host name.
    #[arg(long, env = "FERRY_LEASE_IDENTITY")]
    pub lease_identity: Option<String>,
    /// How long a written Lease holds (whole seconds): another replica takes over this long
    /// after the leader's last renewal, and a leader that could not renew for this long
    /// stops writing.
    #[arg(long, env = "FERRY_LEASE_DURATION", value_parser = parse_duration, default_value = "15s")]
    pub lease_duration: Duration,
    /// How often the leader renews the Lease (shorter than --lease-duration).
    #[arg(long, env = "FERRY_LEASE_RENEW", value_parser = parse_duration, default_value = "10s")]
    pub lease_renew: Duration,
    /// How often a replica that does not lead tries the Lease again (shorter than --lease-renew).
    #[arg(long, env = "FERRY_LEASE_RETRY", value_parser = parse_duration, default_value = "2s")]
    pub lease_retry: Duration,
    /// How often the leader re-checks `istio-ca-root-cert` in every namespace, besides on
    /// every namespace change; also how often it re-writes what it last wrote and another
    /// writer may have changed since (waypoint Gateways' status and their objects).
    #[arg(long, env = "FERRY_ROOT_CERT_RESYNC", value_parser = parse_duration, default_value = "60s")]
    pub root_cert_resync: Duration,
    /// What a Service or Pod enrolled in a waypoint (`istio.io/use-waypoint`) gets while that
    /// waypoint's Gateway does not exist or has no running pod. `refuse`: the waypoint is
    /// advertised anyway and node proxies refuse the traffic (fail closed: its policy is never
    /// skipped). `direct`: it is left out, as istiod does, and traffic goes straight to the
    /// destination without the waypoint's policy.
    #[arg(long, env = "FERRY_WAYPOINT_UNAVAILABLE", value_enum, default_value = "refuse")]
    pub waypoint_unavailable: WaypointUnavailableArg,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "plain", ignore_case = true)]
    pub log_format: LogFormat,
    #[arg(long, env = "FERRY_LOG")]
    pub log_level: Option<String>,
    #[command(flatten)]
    pub waypoint_deploy: waypoint_deploy::WaypointDeployArgs,
}

/// `--waypoint-unavailable` (ferry_core's type has no clap).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WaypointUnavailableArg {
    Refuse,
    Direct,
}

impl From<WaypointUnavailableArg> for WaypointUnavailable {
    fn from(a: WaypointUnavailableArg) -> Self {
        match a {
            WaypointUnavailableArg::Refuse => WaypointUnavailable::Refuse,
            WaypointUnavailableArg::Direct => WaypointUnavailable::Direct,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    State(#[from] ferry_cni::cluster_state::StateError),
    #[error(transparent)]
    Ca(#[from] crate::tls::ca::CaError),
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("the xDS/CA server failed: {0}")]
    Serve(String),
    #[error("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG): {0}")]
    Kube(String),
    #[error(transparent)]
    Lease(#[from] ferry_core::k8s::lease::LeaseError),
}

pub fn run_controller(args: ControllerArgs) -> Result<(), ControllerError> {
    let _log = telemetry::init_logging(args.log_format, args.log_level.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ferry-controller")
        .enable_all()
        .build()
        .map_err(|source| ControllerError::Io { what: "cannot start the runtime", source })?;
    rt.block_on(serve(args))
}

async fn serve(args: ControllerArgs) -> Result<(), ControllerError> {
    let running = bind(args).await?;
    running.serve(shutdown()).await
}

/// A bound controller: its xDS/CA address and the server, not yet serving.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    listener: tokio::net::TcpListener,
    router: tonic::transport::server::Router,
    ready: health::Ready,
    closing: watch::Sender<bool>,
    /// Kept for the controller's life: dropping an API source stops its watches.
    _source: Arc<dyn ClusterSource>,
    /// The election and publication tasks, stopped with the controller; the election first
    /// releases the Lease once `closing` is set.
    writers: Vec<AbortOnDrop>,
}

/// A task aborted when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Running {
    /// Serves until `stop` completes.
    pub(crate) async fn serve(self, stop: impl std::future::Future<Output = ()>) -> Result<(), ControllerError> {
        self.ready.mark_serving();
        let incoming = tonic::codegen::tokio_stream::wrappers::TcpListenerStream::new(self.listener);
        let closing = self.closing;
        let stop = async move {
            stop.await;
            tracing::info!("ferry controller stopping: ending every xDS stream");
            closing.send_replace(true);
        };
        let served = self.router.serve_with_incoming_shutdown(incoming, stop).await.map_err(|e| ControllerError::Serve(e.to_string()));
        // The election task ends once it has released the Lease; bounded, since the API may
        // not answer (the Lease then expires on its own).
        if let Some(election) = self.writers.into_iter().next() {
            let mut election = election;
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut election.0).await;
        }
        served?;
        tracing::info!(listen = %self.addr, "ferry controller stopped");
        Ok(())
    }
}

/// Where the cluster state and the token reviews come from: files when given, else the
/// Kubernetes API (one client for both).
struct Sources {
    source: Arc<dyn ClusterSource>,
    origin: String,
    reviewer: Arc<dyn auth::TokenReviewer>,
    /// The client when the state comes from the API: the one replicas elect on and write to.
    writer: Option<kube::Client>,
}

async fn sources(args: &ControllerArgs) -> Result<Sources, ControllerError> {
    let client = match (&args.cluster_state, &args.token_file) {
        (Some(_), Some(_)) => None,
        _ => Some(crate::k8s::api::infer_client().await.map_err(ControllerError::Kube)?),
    };
    let api = || client.clone().ok_or_else(|| ControllerError::Kube("no client was configured".into()));
    let (source, origin): (Arc<dyn ClusterSource>, String) = match &args.cluster_state {
        Some(path) => {
            let source = FileSource::load(path)?;
            tokio::spawn(source.clone().watch(args.cluster_state_poll));
            (source, path.display().to_string())
        }
        None => (Arc::new(ApiSource::start(api()?)), "the Kubernetes API".into()),
    };
    let reviewer: Arc<dyn auth::TokenReviewer> = match &args.token_file {
        Some(path) => Arc::new(auth::TokenFile::new(path)),
        None => Arc::new(token_review::KubeTokenReviewer::new(api()?)),
    };
    let writer = if args.cluster_state.is_none() { client } else { None };
    Ok(Sources { source, origin, reviewer, writer })
}

/// On the API: the leader election (first: `Running::serve` waits for it to release the
/// Lease) and, while leading, the Gateway status, the waypoints' objects and the root
/// certificate's publication.
fn writers(
    args: &ControllerArgs,
    timings: Timings,
    client: kube::Client,
    ca: &LocalCa,
    cluster: watch::Receiver<Arc<ClusterState>>,
    closing: watch::Receiver<bool>,
) -> Vec<AbortOnDrop> {
    let election = leader::Election {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: args.lease_identity.clone().filter(|i| !i.is_empty()).unwrap_or_else(leader::default_identity),
        timings,
    };
    let (leading, elect) = leader::start(client.clone(), election, closing);
    let status =
        gateway_status::start(client.clone(), args.cluster_domain.clone(), leading.clone(), cluster.clone(), args.root_cert_resync);
    let mut tasks = vec![AbortOnDrop(elect), AbortOnDrop(status)];
    if args.waypoint_deploy.deploy_waypoints {
        let own_pod = (args.lease_namespace.clone(), leader::default_identity());
        let config = waypoint_deploy::Config::new(&args.waypoint_deploy, &args.cluster_domain, &args.trust_domain, own_pod);
        tasks.push(AbortOnDrop(waypoint_deploy::start(client.clone(), config, leading.clone(), cluster.clone(), args.root_cert_resync)));
    }
    tasks.push(AbortOnDrop(root_cert::start(client, ca.root_bundle().to_string(), leading, cluster, args.root_cert_resync)));
    tasks
}

/// Waits until `source` is complete, saying what it waits for.
async fn wait_complete(source: &dyn ClusterSource) {
    let mut said = Vec::new();
    let mut state = source.subscribe();
    loop {
        let unsynced = source.unsynced();
        if unsynced.is_empty() {
            return;
        }
        if unsynced != said {
            tracing::info!(kinds = %unsynced.join(","), "waiting for the first list of every kind before serving xDS");
            said = unsynced;
        }
        // The API source publishes its first state exactly when the last kind completes;
        // the timeout re-logs progress on a slow or failing list.
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(5), state.changed()).await {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
}

/// Loads the state and the CA and binds every port; serving starts with [`Running::serve`].
pub(crate) async fn bind(args: ControllerArgs) -> Result<Running, ControllerError> {
    // Checked before anything starts, so a bad flag fails at once, not after the first lists.
    let timings = Timings::new(args.lease_duration, args.lease_renew, args.lease_retry)?;
    let ca = Arc::new(LocalCa::load(&args.ca_dir)?);
    let Sources { source, origin, reviewer, writer } = sources(&args).await?;
    let ready = health::start(&args, source.clone())
        .map_err(|source| ControllerError::Io { what: "cannot bind the readiness or metrics port", source })?;
    wait_complete(source.as_ref()).await;
    let cluster = source.subscribe();
    let (closing, closing_rx) = watch::channel(false);
    let writers = match writer {
        Some(client) => writers(&args, timings, client, &ca, cluster.clone(), closing_rx.clone()),
        None => Vec::new(),
    };
    let opts = TranslateOptions {
        trust_domain: args.trust_domain.clone(),
        cluster_id: args.cluster_id.clone(),
        cluster_domain: args.cluster_domain.clone(),
        network: String::new(),
        // Only the API has an annotation writer (the node agent); the file source has none.
        require_redirection_annotation: args.cluster_state.is_none(),
        waypoint_unavailable: args.waypoint_unavailable.into(),
    };
    let resources = publish(cluster.clone(), opts);
    let (chain, key) = ca.serving_certificate(&args.serving_names, Duration::from_secs(365 * 86400))?;
    let ads = ads::Ads {
        resources: resources.clone(),
        reviewer: reviewer.clone(),
        proxy_accounts: args.proxy_accounts.clone(),
        cluster: cluster.clone(),
        nonce: Arc::new(AtomicU64::new(1)),
        closing: closing_rx,
    };
    let cas = ca::CaServer {
        ca,
        reviewer,
        trusted_node_accounts: args.trusted_node_accounts.clone(),
        cluster,
        trust_domain: args.trust_domain.clone(),
        max_ttl: args.max_cert_ttl,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| ControllerError::Io { what: "cannot bind the xDS/CA port", source })?;
    let addr = listener.local_addr().map_err(|source| ControllerError::Io { what: "cannot read the xDS/CA address", source })?;
    tracing::info!(listen = %addr, state = %origin, "ferry controller serving xDS and CA");
    let tls = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(chain, key));
    let router = tonic::transport::Server::builder()
        .tls_config(tls)
        .map_err(|e| ControllerError::Serve(e.to_string()))?
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(AggregatedDiscoveryServiceServer::new(ads))
        .add_service(IstioCertificateServiceServer::new(cas));
    Ok(Running { addr, listener, router, ready, closing, _source: source, writers })
}

/// Re-translates and re-encodes the state on every change (the waypoints' policies as they
/// are); returns the current resources.
fn publish(mut cluster: watch::Receiver<Arc<ClusterState>>, opts: TranslateOptions) -> watch::Receiver<Arc<Resources>> {
    let mut said: Vec<String> = Vec::new();
    let mut build = move |c: &ClusterState| {
        let (state, notes) = translate(c, &opts);
        log_new_notes(&mut said, notes);
        let waypoint_policies = ferry_core::waypoint_xds::resources(c);
        let r = Arc::new(Resources::from_state(&state).with_type(WAYPOINT_POLICY_TYPE, waypoint_policies));
        metrics::gauge!("ferry_controller_resources").set(r.len() as f64);
        r
    };
    let first = build(&cluster.borrow_and_update());
    tracing::info!(resources = first.len(), "cluster state translated");
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        while cluster.changed().await.is_ok() {
            let next = build(&cluster.borrow_and_update());
            tracing::info!(resources = next.len(), "cluster state changed; pushing deltas");
            tx.send_replace(next);
        }
    });
    rx
}

/// Logs each translation note once, when it first appears (the translation runs on every change).
fn log_new_notes(said: &mut Vec<String>, notes: Vec<String>) {
    for n in notes.iter().filter(|n| !said.contains(n)) {
        tracing::warn!(note = %n, "waypoint binding");
    }
    *said = notes;
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
