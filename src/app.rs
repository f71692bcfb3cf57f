//! `ferry proxy`: wires state, certificates, the data-path runtime, the admin runtime and
//! graceful shutdown together. SIGTERM, SIGINT or `POST /quitquitquit` start the drain:
//! listeners close at once, open connections get `CONNECTION_TERMINATION_DEADLINE` to finish.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::admin::{self, AdminState};
use crate::config::{CaSource, Config, LocalSource, ProxyArgs, ProxyMode};
use crate::drain;
use crate::inpod::WorkloadManager;
use crate::net::{LocalSockets, SocketOptions};
use crate::proxy::{ProxyInputs, WorkloadProxy};
use crate::readiness::Readiness;
use crate::state::{local, PolicyNotes, StateStore};
use crate::telemetry::{self, LogHandle};
use crate::tls::ca::{CaClient, LocalCa};
use crate::tls::certs::CertManager;
use crate::xds::ads::AdsClient;
use crate::xds::ca::IstioCa;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    LocalFile(#[from] local::LocalFileError),
    #[error("{0}")]
    LocalConfig(#[from] ferry_core::local_config::LocalConfigError),
    #[error("{0}")]
    Ca(#[from] crate::tls::ca::CaError),
    #[error("{0}")]
    Cluster(#[from] ferry_cni::cluster_state::StateError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Unsupported(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AppError {
    let what = what.into();
    move |source| AppError::Io { what, source }
}

pub fn run_proxy(args: ProxyArgs) -> Result<(), AppError> {
    let log_format = args.log_format;
    let log_level = args.log_level.clone();
    let cfg = Arc::new(args.into_config()?);
    let log = Arc::new(telemetry::init_logging(log_format, log_level));
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    match ferry_sys::raise_fd_limit() {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit; busy nodes may run out of descriptors"),
    }
    crate::heap::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.worker_threads)
        .thread_name("ferry-worker")
        .enable_all()
        .build()
        .map_err(io("cannot start the data-path runtime"))?;
    rt.block_on(serve(cfg, log))
}

/// The state store, filled from the configured local source (and kept current by its watcher).
/// Shared with `ferry waypoint`, which is fed by the same sources.
pub(crate) fn load_state(cfg: &Config) -> Result<StateStore, AppError> {
    let store = StateStore::new();
    match &cfg.local {
        LocalSource::File(p) => {
            let (input, mut notes) = (local::load_file(p, cfg.limits.max_config_bytes)?, PolicyNotes::default());
            notes.log(&input);
            store.replace(input);
            tokio::spawn(local::watch_file(p.clone(), store.clone(), cfg.local_poll, cfg.limits.max_config_bytes, notes));
        }
        LocalSource::Inline(y) => {
            let input = ferry_core::local_config::parse(y, "LOCAL_XDS")?;
            PolicyNotes::default().log(&input);
            store.replace(input);
        }
        LocalSource::Cluster(path) => {
            let source = crate::k8s::source::FileSource::load(path)?;
            let opts = ferry_core::k8s::translate::TranslateOptions {
                trust_domain: cfg.trust_domain.clone(),
                cluster_id: cfg.cluster_id.clone(),
                cluster_domain: cfg.cluster_domain.clone(),
                network: String::new(),
                require_redirection_annotation: false,
                waypoint_unavailable: Default::default(),
            };
            let mut rx = crate::k8s::source::ClusterSource::subscribe(source.as_ref());
            let mut notes = PolicyNotes::default();
            let input = ferry_core::k8s::translate::to_state(&rx.borrow_and_update(), &opts);
            notes.log(&input);
            store.replace(input);
            tokio::spawn(source.watch(cfg.local_poll));
            let store2 = store.clone();
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let input = ferry_core::k8s::translate::to_state(&rx.borrow_and_update(), &opts);
                    notes.log(&input);
                    store2.replace(input);
                }
            });
        }
        LocalSource::None if cfg.xds.is_some() => {}
        LocalSource::None => {
            tracing::warn!(
                "no state source (LOCAL_XDS_PATH/LOCAL_XDS): every workload is unknown, so outbound connections will be refused"
            );
        }
    }
    Ok(store)
}

async fn serve(cfg: Arc<Config>, log: Arc<LogHandle>) -> Result<(), AppError> {
    // Before anything records a metric: counters recorded earlier would be lost.
    let metrics = telemetry::metrics::install(telemetry::metrics::Role::Proxy);
    let ready = Readiness::new();
    let state_block = ready.block("state manager");
    let proxy_block = ready.block("proxy");
    let state = load_state(&cfg)?;
    let xds_status = start_xds(&cfg, &state, &ready, None);
    drop(state_block);
    let certs = CertManager::new(ca_client(&cfg, cfg.mode == ProxyMode::Shared)?, cfg.secret_ttl);
    let inputs = ProxyInputs::new(cfg.clone(), state.clone(), certs.clone());
    tokio::spawn(crate::proxy::connections::watch(inputs.conns.clone(), state.clone()));
    let (quit_tx, mut quit_rx) = mpsc::channel(1);
    let (trigger, drain) = drain::new();
    let manager = match cfg.mode {
        ProxyMode::Dedicated => {
            start_dedicated(&inputs, &cfg, drain)?;
            None
        }
        ProxyMode::Shared => Some(start_shared(&inputs, &cfg, &ready, drain)),
    };
    let extra: Option<crate::config_dump::DumpExtra> = match (manager.clone(), xds_status) {
        (None, None) => None,
        (m, x) => Some(Arc::new(move || {
            let mut v = m.as_ref().map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).dump()).unwrap_or_else(|| serde_json::json!({}));
            if let (Some(x), Some(obj)) = (&x, v.as_object_mut()) {
                let status = x.lock().unwrap_or_else(|e| e.into_inner()).clone();
                obj.insert("xds".into(), serde_json::to_value(status).unwrap_or_default());
            }
            v
        })),
    };
    let conns = inputs.conns.clone();
    let runtime = tokio::runtime::Handle::current();
    let admin = Arc::new(AdminState {
        cfg: cfg.clone(),
        state,
        certs,
        log,
        metrics,
        runtime,
        ready: ready.clone(),
        quit: quit_tx,
        conns,
        extra,
        explain: None,
    });
    let addrs = admin::start(admin).map_err(io("cannot bind the admin, metrics or readiness port"))?;
    drop(proxy_block);
    tracing::info!(admin = %addrs[0], metrics = %addrs[1], readiness = %addrs[2], mode = ?cfg.mode, "ferry proxy started");
    wait_for_shutdown(&mut quit_rx).await;
    tracing::info!(deadline = ?cfg.termination_deadline, "draining: listeners closed, open connections may finish");
    let pods = manager.map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).take_all()).unwrap_or_default();
    let deadline = cfg.termination_deadline;
    let mut drains: Vec<_> = pods.into_iter().map(|t| tokio::spawn(t.drain(deadline))).collect();
    drains.push(tokio::spawn(trigger.drain(deadline)));
    let mut clean = true;
    for d in drains {
        clean &= d.await.unwrap_or(false);
    }
    tracing::info!(clean, "drain complete; exiting");
    Ok(())
}

/// The xDS client, when state comes from a control plane; readiness waits for its first state.
/// The xDS client, when the state comes from a control plane; a waypoint passes where its
/// policies go.
pub(crate) fn start_xds(
    cfg: &Config,
    state: &StateStore,
    ready: &Readiness,
    waypoint_policies: Option<crate::xds::ads::WaypointPolicies>,
) -> Option<crate::xds::ads::SharedStatus> {
    cfg.xds.clone().map(|settings| {
        let (client, status) = AdsClient::new(settings.clone(), state.clone(), ready, waypoint_policies);
        tracing::info!(address = %settings.target.url, tls_name = %settings.target.tls_name, node = %settings.node.id, "state from xDS");
        tokio::spawn(client.run());
        status
    })
}

/// Where certificates come from; `impersonate` asks the Istio CA for identities other than
/// the caller's own (the shared node proxy only).
pub(crate) fn ca_client(cfg: &Config, impersonate: bool) -> Result<Arc<dyn CaClient>, AppError> {
    Ok(match &cfg.ca {
        CaSource::Local(dir) => Arc::new(LocalCa::load(dir)?),
        CaSource::Remote(target) => {
            let ca = IstioCa::new(target.clone(), impersonate);
            tracing::info!(ca = ca.url(), impersonate, "certificates from the Istio CA API");
            Arc::new(ca)
        }
    })
}

/// In-pod mode: the ZDS client feeds the workload manager, which opens listeners in each pod.
fn start_shared(
    inputs: &Arc<ProxyInputs>,
    cfg: &Config,
    ready: &Readiness,
    drain: drain::DrainWatch,
) -> Arc<std::sync::Mutex<WorkloadManager>> {
    let opts = SocketOptions { mark: cfg.packet_mark, reuse_port: cfg.port_reuse, keepalive: cfg.keepalive };
    let mgr = Arc::new(std::sync::Mutex::new(WorkloadManager::new(inputs.clone(), opts, ready.clone())));
    tokio::spawn(crate::inpod::client::run(mgr.clone(), cfg.inpod_uds.clone(), drain));
    tracing::info!(socket = %cfg.inpod_uds.display(), "in-pod mode: waiting for pods from the node agent");
    mgr
}

fn start_dedicated(inputs: &Arc<ProxyInputs>, cfg: &Config, drain: drain::DrainWatch) -> Result<(), AppError> {
    let info = cfg.workload_info.clone().ok_or_else(|| AppError::Unsupported("dedicated mode needs PROXY_WORKLOAD_INFO".into()))?;
    let sockets =
        Arc::new(LocalSockets { opts: SocketOptions { mark: cfg.packet_mark, reuse_port: cfg.port_reuse, keepalive: cfg.keepalive } });
    let (px, listeners) = WorkloadProxy::bind(inputs.clone(), info.clone(), sockets).map_err(io("cannot bind the proxy ports"))?;
    let snap = inputs.state.snapshot();
    match snap.find_workload(&info.namespace, &info.name, Some(&info.service_account)).map(|w| w.identity()) {
        Some(Ok(id)) => inputs.certs.prefetch(&id),
        Some(Err(e)) => tracing::warn!(workload = %info, error = %e, "served workload has an invalid identity"),
        None => tracing::warn!(workload = %info, "served workload is not in the state; connections will be refused until it appears"),
    }
    tracing::info!(workload = %info, original_source = px.orig_src, "dedicated proxy listening on 15001, 15006, 15008");
    tokio::spawn(px.run(listeners, drain));
    Ok(())
}

pub(crate) async fn wait_for_shutdown(quit: &mut mpsc::Receiver<()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::warn!("cannot install signal handlers; only /quitquitquit will stop the proxy");
        quit.recv().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = quit.recv() => tracing::info!("shutdown requested on /quitquitquit"),
    }
}
