//! `ferry waypoint`: the per-namespace L7 proxy of Istio's ambient mode. It terminates HBONE
//! from node proxies (the client's identity as the TLS peer), accepts only CONNECT targets it
//! fronts, and forwards each to a chosen endpoint over HBONE as itself: HTTP/1.1 and HTTP/2
//! (gRPC) ports request by request with JWT authentication and L7 authorization, other ports
//! as TCP with the L4 part of it.
//!
//! State, certificates, limits and the management ports are the node proxy's own machinery
//! (`app`, `hbone`, `tls`, `admin`); only the per-stream decisions differ ([`stream`], [`http`],
//! [`h2`]).

mod explain;
mod grpc;
mod h1_pool;
mod h2;
mod http;
mod io;
mod policy;
mod record;
mod stream;
mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::admin::{self, AdminState};
use crate::app::{ca_client, load_state, wait_for_shutdown, AppError};
use crate::config::{Config, ProxyArgs};
use crate::drain;
use crate::hbone::client::Pool;
use crate::listen::Gate;
use crate::net::{LocalSockets, SocketOptions};
use crate::readiness::Readiness;
use crate::state::StateStore;
use crate::telemetry::{self, LogHandle};
use crate::tls::certs::CertManager;
use ferry_core::identity::Identity;
use ferry_core::timefmt::parse_duration;
use ferry_core::waypoint::WaypointSelf;

#[derive(Clone, Debug, clap::Args)]
#[command(after_long_help = "State (LOCAL_XDS_PATH, FERRY_CLUSTER_STATE or XDS_ADDRESS), certificates (FERRY_CA_DIR or \
CA_ADDRESS, without impersonation: the waypoint's own identity), limits and the admin (15000), metrics (15020) and \
readiness (15021) ports are set as for `ferry proxy` (heading Proxy). PROXY_MODE=dedicated, PROXY_WORKLOAD_INFO, \
PACKET_MARK and ENABLE_ORIG_SRC=true are refused; INPOD_UDS and INPOD_PORT_REUSE have no effect. \
Policies: AuthorizationPolicy and RequestAuthentication objects with targetRefs (this Gateway, a Service it fronts, or \
the istio-waypoint GatewayClass in istio-system) from FERRY_WAYPOINT_POLICIES, or from FERRY_CLUSTER_STATE when that is \
the state source, else with XDS_ADDRESS from `ferry controller` over xDS (ferry's type ferry.waypoint.Policy: the waypoint \
is ready only once it has its policies; a control plane that does not serve the type, such as istiod, leaves it unready). \
A RequestAuthentication's keys come from jwks (inline) or a jwksUri naming a file (file:///path or /path, at most 64 KiB, \
re-read with the policies); an http(s) jwksUri is not fetched and that issuer's tokens get 401.")]
pub struct WaypointArgs {
    /// The waypoint's Gateway name: policies bind to it, and its service is named after it.
    #[arg(long, env = "GATEWAY_NAME")]
    gateway: String,
    /// The waypoint's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// The service account its certificate names (Istio's deployer names it after the Gateway).
    #[arg(long, env = "SERVICE_ACCOUNT")]
    service_account: Option<String>,
    /// The hostname WDS names this waypoint by [default: <gateway>.<namespace>.svc.<CLUSTER_DOMAIN>].
    #[arg(long, env = "FERRY_WAYPOINT_HOSTNAME")]
    hostname: Option<String>,
    /// Addresses WDS may name this waypoint by (comma-separated), besides its hostname.
    #[arg(long, env = "INSTANCE_IPS", value_delimiter = ',')]
    address: Vec<IpAddr>,
    /// AuthorizationPolicy and RequestAuthentication manifests (a file or a directory), re-read when they change.
    #[arg(long, env = "FERRY_WAYPOINT_POLICIES", value_name = "PATH")]
    policies: Option<PathBuf>,
    /// HBONE listener.
    #[arg(long, env = "FERRY_WAYPOINT_HBONE_ADDR", default_value = "[::]:15008")]
    hbone_addr: SocketAddr,
    /// How long a pooled upstream HTTP/1.1 connection may stay unused before it is closed.
    #[arg(long, env = "FERRY_WAYPOINT_UPSTREAM_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    upstream_idle_timeout: Duration,
    /// How long an upstream may take to start its response to a request (0 = no limit).
    #[arg(long, env = "FERRY_WAYPOINT_RESPONSE_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    response_timeout: Duration,
    /// The port destination pods accept HBONE on (Istio's is 15008 everywhere).
    #[arg(long, env = "FERRY_WAYPOINT_UPSTREAM_HBONE_PORT", default_value_t = ferry_core::ports::HBONE_PORT)]
    upstream_hbone_port: u16,
    #[command(flatten)]
    proxy: ProxyArgs,
}

/// Everything the streams of one waypoint share.
pub(crate) struct Waypoint {
    pub(crate) cfg: Arc<Config>,
    pub(crate) me: WaypointSelf,
    pub(crate) identity: Identity,
    pub(crate) state: StateStore,
    pub(crate) certs: Arc<CertManager>,
    pub(crate) policies: policy::Policies,
    pub(crate) pool: Arc<Pool>,
    /// The HBONE listener's address.
    pub(crate) hbone_addr: SocketAddr,
    /// Upstream HTTP/1.1 connections, per endpoint.
    pub(crate) h1: Arc<h1_pool::H1Pool>,
    pub(crate) setups: Arc<tokio::sync::Semaphore>,
    pub(crate) response_timeout: Option<Duration>,
    /// Requests in flight per endpoint, for least-request balancing.
    pub(crate) load: stream::Load,
    pub(crate) upstream_hbone_port: u16,
    /// Bytes queued for HBONE peers, over the waypoint (both directions' connections).
    pub(crate) budget: crate::hbone::budget::TotalBudget,
    /// Upstream HTTP/2 connections, one per endpoint, shared by HTTP/2 requests.
    pub(crate) upstreams: upstream::Upstreams,
}

/// Releases idle upstream HTTP/2 connections even when no request comes to look them up.
async fn sweep_upstreams(wp: Arc<Waypoint>) {
    let idle = wp.cfg.limits.hbone_idle_timeout;
    loop {
        tokio::time::sleep(idle).await;
        wp.upstreams.sweep(idle);
    }
}

fn refuse_proxy_only(a: &ProxyArgs) -> Result<(), AppError> {
    let bad = |what: &str| Err(AppError::Unsupported(format!("{what} is a node-proxy setting; `ferry waypoint` refuses it")));
    match a {
        _ if a.is_dedicated() => bad("PROXY_MODE=dedicated"),
        _ if a.workload_info_set() => bad("PROXY_WORKLOAD_INFO"),
        _ if a.packet_mark_set() => bad("PACKET_MARK"),
        _ if a.orig_src_on() => bad("ENABLE_ORIG_SRC=true"),
        _ => Ok(()),
    }
}

/// The `waypoint` section of `/config_dump`: who this waypoint is and the policies in force.
fn dump_section(wp: &Arc<Waypoint>, loaded: policy::Loaded) -> crate::config_dump::DumpExtra {
    let (me, identity, h1, state) = (wp.me.clone(), wp.identity.to_string(), wp.h1.clone(), wp.state.clone());
    let hbone = wp.hbone_addr;
    Arc::new(move || {
        serde_json::json!({"waypoint": {
            "gateway": me.name, "namespace": me.namespace, "hostname": me.hostname, "addresses": me.addresses,
            "identity": identity,
            "listeners": [{"address": hbone.to_string(), "protocol": "HBONE", "fronts": ferry_core::waypoint::fronted_services(&state.snapshot(), &me)}],
            "policies": loaded.dump(), "pooledUpstreamConnections": h1.len(),
        }})
    })
}

pub fn run_waypoint(args: WaypointArgs) -> Result<(), AppError> {
    refuse_proxy_only(&args.proxy)?;
    let (log_format, log_level) = args.proxy.log_settings();
    let cfg = Arc::new(args.proxy.clone().into_config()?);
    let log = Arc::new(telemetry::init_logging(log_format, log_level));
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.worker_threads)
        .thread_name("ferry-waypoint")
        .enable_all()
        .build()
        .map_err(|source| AppError::Io { what: "cannot start the data-path runtime".into(), source })?;
    rt.block_on(serve(args, cfg, log))
}

async fn serve(args: WaypointArgs, cfg: Arc<Config>, log: Arc<LogHandle>) -> Result<(), AppError> {
    let metrics = telemetry::metrics::install(telemetry::metrics::Role::Waypoint);
    let ready = Readiness::new();
    let (state_block, listener_block) = (ready.block("state manager"), ready.block("waypoint"));
    let state = load_state(&cfg)?;
    // Policies from files when given (or the cluster state), else from the controller.
    let policy_path = args.policies.clone().or_else(|| cfg.cluster_state_path());
    let (from_xds, received) = match (&policy_path, &cfg.xds) {
        (None, Some(_)) => {
            let (tx, rx) = tokio::sync::watch::channel(Arc::new(Vec::new()));
            (Some(tx), Some(rx))
        }
        _ => (None, None),
    };
    let _xds = crate::app::start_xds(&cfg, &state, &ready, from_xds);
    drop(state_block);
    let sa = args.service_account.clone().unwrap_or_else(|| args.gateway.clone());
    let identity =
        Identity::new(&cfg.trust_domain, &args.namespace, &sa).map_err(|e| AppError::Unsupported(format!("waypoint identity: {e}")))?;
    let certs = CertManager::new(ca_client(&cfg, false)?, cfg.secret_ttl);
    certs.prefetch(&identity);
    let loaded = match received {
        Some(rx) => policy::from_xds(rx),
        None => policy::load(policy_path, cfg.local_poll).map_err(|e| AppError::Unsupported(e.to_string()))?,
    };
    let sockets = Arc::new(LocalSockets { opts: SocketOptions { mark: None, reuse_port: true, keepalive: cfg.keepalive } });
    let budget = crate::hbone::budget::TotalBudget::new(
        cfg.limits.hbone_buffer_total,
        cfg.limits.hbone_connection_buffer,
        cfg.limits.hbone_stall_timeout,
    );
    let pool = Pool::new(sockets.clone(), cfg.h2.clone(), cfg.connect_timeout, cfg.handshake_timeout, budget.clone());
    let hostname = args.hostname.clone().unwrap_or_else(|| format!("{}.{}.svc.{}", args.gateway, args.namespace, cfg.cluster_domain));
    let me = WaypointSelf {
        namespace: args.namespace.clone(),
        name: args.gateway.clone(),
        hostname,
        addresses: args.address.clone(),
        network: cfg.network.clone(),
    };
    let wp = Arc::new(Waypoint {
        cfg: cfg.clone(),
        me,
        identity: identity.clone(),
        state: state.clone(),
        certs: certs.clone(),
        policies: loaded.policies.clone(),
        pool,
        h1: h1_pool::H1Pool::start(args.upstream_idle_timeout),
        hbone_addr: args.hbone_addr,
        setups: Arc::new(tokio::sync::Semaphore::new(cfg.limits.hbone_setups)),
        response_timeout: Some(args.response_timeout).filter(|d| !d.is_zero()),
        load: Default::default(),
        upstream_hbone_port: args.upstream_hbone_port,
        budget,
        upstreams: Default::default(),
    });
    let listener = crate::net::SocketFactory::listen(sockets.as_ref(), args.hbone_addr, false)
        .map_err(|source| AppError::Io { what: format!("cannot bind the HBONE port {}", args.hbone_addr), source })?
        .0;
    let (quit_tx, mut quit_rx) = mpsc::channel(1);
    let (trigger, drain) = drain::new();
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map(|(soft, _)| soft).unwrap_or(1024);
    let max = cfg.limits.connections(nofile);
    let gate = Gate::new("waypoint", max, cfg.limits.max_connections_per_source);
    tokio::spawn(stream::accept_loop(wp.clone(), listener, gate, drain));
    tokio::spawn(sweep_upstreams(wp.clone()));
    let runtime = tokio::runtime::Handle::current();
    let conns = Default::default();
    let extra = dump_section(&wp, loaded);
    let explained = wp.clone();
    let explain: crate::admin::Explain = Arc::new(move |q: &str| explain::explain(&explained, q));
    let admin = Arc::new(AdminState {
        cfg: cfg.clone(),
        state,
        certs,
        log,
        metrics,
        runtime,
        ready,
        quit: quit_tx,
        conns,
        extra: Some(extra),
        explain: Some(explain),
    });
    let addrs =
        admin::start(admin).map_err(|source| AppError::Io { what: "cannot bind the admin, metrics or readiness port".into(), source })?;
    drop(listener_block);
    tracing::info!(gateway = %args.gateway, namespace = %args.namespace, identity = %identity, hbone = %args.hbone_addr, admin = %addrs[0], metrics = %addrs[1], readiness = %addrs[2], "ferry waypoint started");
    wait_for_shutdown(&mut quit_rx).await;
    tracing::info!(deadline = ?cfg.termination_deadline, "draining: listener closed, open streams may finish");
    let clean = trigger.drain(cfg.termination_deadline).await;
    tracing::info!(clean, "drain complete; exiting");
    Ok(())
}
