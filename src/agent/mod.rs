//! `ferry agent`, the node agent: decides which pods are captured (a pure function of the
//! cluster state), installs and removes their in-pod redirection (nftables + policy routing,
//! each step rolled back if a later one fails), hands their network namespaces to the node
//! proxy over ZDS, and answers the CNI plugin only once a pod that must be captured is.
//!
//! Cluster state comes from the Kubernetes API (its node's Pods and the Namespaces; on the API
//! it also writes each enrolled pod's `ambient.istio.io/redirection` annotation, `annotate`)
//! or, with `--cluster-state`, from files; nothing is reconciled before that state is
//! complete, since an empty one would release every pod.
//!
//! Enrollment operations are serialized by the pod-cache lock; the ZDS snapshot for a newly
//! connected proxy is taken under the same lock, so no pod is ever missed or sent twice.

pub(crate) mod admin;
pub(crate) mod annotate;
pub mod cni_install;
pub mod cni_server;
pub mod pods;
pub(crate) mod probe_snat;
pub mod zds_server;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex};

use crate::k8s::api::{ApiSource, Scope};
use crate::k8s::source::{ClusterSource, FileSource};
use crate::redirect::{self, RedirectConfig};
use crate::telemetry::{self, LogFormat};
use ferry_core::k8s::capture::{REDIRECTION_ANNOTATION, REDIRECTION_ENABLED};
use ferry_core::k8s::objects::ClusterState;
use pods::{Action, PodCache, PodEntry};

#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Agent")]
pub struct AgentArgs {
    /// Kubernetes manifests (Namespaces, Pods) in a file or directory, watched for changes,
    /// instead of the Kubernetes API (the simulated cluster). No pod annotation is written
    /// then: there is no API to write it to. Without it the agent watches the Kubernetes API
    /// (in-cluster config or KUBECONFIG): Namespaces and the Pods on NODE_NAME, and writes
    /// `ambient.istio.io/redirection: enabled` on the pods it enrolls.
    #[arg(long, env = "FERRY_CLUSTER_STATE", value_name = "PATH")]
    pub(crate) cluster_state: Option<PathBuf>,
    /// How often `--cluster-state` is checked for changes.
    #[arg(long, env = "FERRY_CLUSTER_STATE_POLL", value_parser = ferry_core::timefmt::parse_duration, default_value = "1s")]
    pub(crate) cluster_state_poll: Duration,
    /// This node's name; only pods scheduled here are handled. Required unless --uninstall.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub(crate) node_name: String,
    /// ZDS socket the node proxy connects to.
    #[arg(long, env = "FERRY_ZDS_SOCKET", default_value = "/var/run/ztunnel/ztunnel.sock")]
    pub(crate) zds_socket: PathBuf,
    /// Socket the CNI plugin sends pod events to.
    #[arg(long, env = "FERRY_CNI_SOCKET", default_value = "/var/run/ferry/cni.sock")]
    pub(crate) cni_socket: PathBuf,
    /// Where the agent keeps its pod records across restarts.
    #[arg(long, env = "FERRY_AGENT_STATE_DIR", default_value = "/var/run/ferry/agent")]
    pub(crate) state_dir: PathBuf,
    /// The node proxy's socket mark (must match its PACKET_MARK).
    #[arg(long, env = "PACKET_MARK", default_value_t = ferry_core::ports::DEFAULT_PACKET_MARK)]
    pub(crate) packet_mark: u32,
    /// Also capture IPv6.
    #[arg(long, env = "IPV6_ENABLED", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), default_value = "true")]
    pub(crate) ipv6_enabled: bool,
    /// How long a CNI ADD waits for its pod to appear in the cluster state.
    #[arg(long, env = "FERRY_POD_WAIT", value_parser = ferry_core::timefmt::parse_duration, default_value = "10s")]
    pub(crate) pod_wait: Duration,
    /// Where the agent serves Prometheus metrics (`/metrics`, `/stats/prometheus`), liveness
    /// (`/healthz`), readiness (`/readyz`) and `/debug/pods`; the port istio-cni uses for its
    /// metrics. Use port 0 for any free port.
    #[arg(long, env = "FERRY_AGENT_METRICS_ADDR", default_value = "127.0.0.1:15014")]
    pub(crate) metrics_addr: std::net::SocketAddr,
    /// Rewrite the source of connections this node opens to enrolled pods (the kubelet's
    /// probes) to 169.254.7.127, which the pods' rules let through uncaptured, as istio-cni
    /// does: without it, probes of a pod under STRICT mutual TLS fail. One nftables table,
    /// `inet ferry_host`, in the agent's network namespace (the host's).
    #[arg(long, env = "FERRY_HOST_PROBE_SNAT", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), default_value = "true")]
    pub(crate) host_probe_snat: bool,
    /// Install ferry-cni on the node and keep it installed while running: copy the plugin
    /// binary into --cni-bin-dir and chain it into the primary configuration in
    /// --cni-net-dir (re-chained within 5 s when the network plugin rewrites it). Readiness
    /// waits for it.
    #[arg(long, env = "FERRY_INSTALL_CNI", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    pub(crate) install_cni: bool,
    /// The host's CNI binary directory, as mounted in the agent.
    #[arg(long, env = "CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    pub(crate) cni_bin_dir: PathBuf,
    /// The host's CNI configuration directory, as mounted in the agent.
    #[arg(long, env = "CNI_NET_DIR", default_value = "/host/etc/cni/net.d")]
    pub(crate) cni_net_dir: PathBuf,
    /// The ferry-cni binary to install [default: `ferry-cni` next to this executable].
    #[arg(long, env = "FERRY_CNI_PLUGIN", value_name = "PATH")]
    pub(crate) cni_plugin: Option<PathBuf>,
    /// Remove what the agent installs on the node and exit: ferry-cni from every
    /// configuration list in --cni-net-dir and from --cni-bin-dir, and the host probe SNAT
    /// table. Pods keep their in-pod rules until they restart.
    #[arg(long)]
    pub(crate) uninstall: bool,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "plain", ignore_case = true)]
    pub(crate) log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Cluster(#[from] ferry_cni::cluster_state::StateError),
    #[error("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG; or pass --cluster-state): {0}")]
    Kube(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    CniInstall(#[from] cni_install::CniInstallError),
    #[error("cannot remove the host probe SNAT (nftables table inet ferry_host): {0}")]
    HostRules(std::io::Error),
    #[error("--node-name (NODE_NAME) is required: the agent handles only the pods of its node")]
    NoNodeName,
}

pub(crate) struct Agent {
    pub(crate) args: AgentArgs,
    pub(crate) cluster: watch::Receiver<Arc<ClusterState>>,
    pub(crate) pods: Mutex<PodCache>,
    conns: std::sync::Mutex<Vec<zds_server::ConnHandle>>,
    next_conn: AtomicU64,
    redirect: RedirectConfig,
    /// The pod annotation writer; `None` with `--cluster-state` (no API to write to).
    annotations: Option<annotate::Annotator>,
    /// The host probe SNAT; `None` with `--host-probe-snat=false`.
    probe_snat: Option<std::sync::Mutex<probe_snat::HostProbeRules>>,
}

pub fn run_agent(args: AgentArgs) -> Result<(), AgentError> {
    telemetry::init_logging(args.log_format, None);
    if args.uninstall {
        return uninstall(&args);
    }
    if args.node_name.is_empty() {
        return Err(AgentError::NoNodeName);
    }
    // Before anything runs, so no count is recorded into the no-op recorder.
    let metrics = telemetry::metrics::install(telemetry::metrics::Role::Agent);
    describe_metrics();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AgentError::Io { what: "cannot start the runtime".into(), source })?;
    rt.block_on(serve(args, metrics))
}

/// `--uninstall`: what the agent put on the node, removed; idempotent.
fn uninstall(args: &AgentArgs) -> Result<(), AgentError> {
    let removed = cni_installer(args).remove()?;
    for path in &removed {
        tracing::info!(path = %path.display(), "ferry-cni removed");
    }
    redirect::nft_apply_here(&probe_snat::render_remove()).map_err(AgentError::HostRules)?;
    tracing::info!(table = probe_snat::TABLE, "host probe SNAT removed; ferry agent uninstalled from this node");
    Ok(())
}

fn cni_installer(args: &AgentArgs) -> cni_install::CniInstall {
    let plugin = args.cni_plugin.clone().unwrap_or_else(|| {
        std::env::current_exe().map(|p| p.with_file_name(cni_install::PLUGIN)).unwrap_or_else(|_| cni_install::PLUGIN.into())
    });
    cni_install::CniInstall {
        plugin,
        bin_dir: args.cni_bin_dir.clone(),
        net_dir: args.cni_net_dir.clone(),
        agent_socket: args.cni_socket.clone(),
    }
}

async fn serve(args: AgentArgs, metrics: metrics_exporter_prometheus::PrometheusHandle) -> Result<(), AgentError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| AgentError::Io { what, source }
    };
    let (source, client) = cluster_source(&args).await?;
    std::fs::create_dir_all(&args.state_dir).map_err(io("cannot create the agent state directory"))?;
    let cache = PodCache::load(&args.state_dir.join("pods.json"));
    let zds = crate::zds::ZdsListener::bind(&args.zds_socket).map_err(io("cannot bind the ZDS socket"))?;
    let cni = cni_server::bind(&args.cni_socket).map_err(io("cannot bind the CNI event socket"))?;
    let stats = telemetry::http::bind(args.metrics_addr)
        .map_err(io(&format!("cannot bind the metrics address {} (--metrics-addr/FERRY_AGENT_METRICS_ADDR)", args.metrics_addr)))?;
    let annotations = client.map(annotate::Annotator::start);
    // Without --install-cni the plugin is someone else's to install: counted as installed.
    let cni_installed = Arc::new(std::sync::atomic::AtomicBool::new(!args.install_cni));
    if args.install_cni {
        tokio::spawn(cni_installer(&args).keep_installed(Duration::from_secs(5), cni_installed.clone()));
    }
    let agent = Arc::new(Agent::new(args, source.subscribe(), cache, annotations));
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    agent.publish_gauges();
    // Served from here on, so liveness answers while the restore runs and readiness says why
    // it is not ready yet.
    tokio::spawn(telemetry::http::serve(
        stats,
        "metrics",
        telemetry::http::HEADER_TIMEOUT,
        admin::route(admin::Management {
            agent: agent.clone(),
            ready: ready.clone(),
            cni_installed,
            metrics,
            runtime: tokio::runtime::Handle::current(),
        }),
    ));
    // Before any reconcile: an empty state would release every pod.
    wait_complete(source.as_ref()).await;
    agent.restore().await;
    ready.store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(node = %agent.args.node_name, zds = %agent.args.zds_socket.display(), cni = %agent.args.cni_socket.display(), "ferry agent ready");
    tokio::spawn(agent.clone().serve_zds(zds));
    tokio::spawn(agent.clone().serve_cni(cni));
    tokio::spawn(agent.clone().reconcile_loop());
    wait_for_signal().await;
    tracing::info!("ferry agent stopping; pods keep their redirection");
    Ok(())
}

/// The file source with `--cluster-state`, else the API (and the client to annotate with),
/// watching only what the capture decision reads for this node.
async fn cluster_source(args: &AgentArgs) -> Result<(Arc<dyn ClusterSource>, Option<kube::Client>), AgentError> {
    if let Some(path) = &args.cluster_state {
        let source = FileSource::load(path)?;
        tokio::spawn(source.clone().watch(args.cluster_state_poll));
        return Ok((source, None));
    }
    let client = crate::k8s::api::infer_client().await.map_err(AgentError::Kube)?;
    let source = ApiSource::start_scoped(client.clone(), &Scope::node_agent(&args.node_name));
    Ok((Arc::new(source), Some(client)))
}

/// Waits until `source` has listed every kind it watches, saying what it waits for.
async fn wait_complete(source: &dyn ClusterSource) {
    let mut state = source.subscribe();
    loop {
        let unsynced = source.unsynced();
        if unsynced.is_empty() {
            return;
        }
        tracing::info!(kinds = %unsynced.join(","), "waiting for the first list of every kind before reconciling pods");
        // The API source publishes its first state exactly when the last kind completes; the
        // timeout re-logs progress on a slow or failing list.
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(5), state.changed()).await {
            return;
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut t), Ok(mut i)) => tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} },
        _ => std::future::pending().await,
    }
}

impl Agent {
    pub(crate) fn new(
        args: AgentArgs,
        cluster: watch::Receiver<Arc<ClusterState>>,
        cache: PodCache,
        annotations: Option<annotate::Annotator>,
    ) -> Self {
        let redirect = RedirectConfig { mark: args.packet_mark, ipv6: args.ipv6_enabled, ..Default::default() };
        let conns = std::sync::Mutex::new(Vec::new());
        let probe_snat = args.host_probe_snat.then(Default::default);
        Agent { args, cluster, pods: Mutex::new(cache), conns, next_conn: AtomicU64::new(1), redirect, annotations, probe_snat }
    }

    /// Brings the host probe SNAT to the enrolled pods' addresses; called under the pod-cache
    /// lock after every change, so it never lags an enrollment the CNI plugin was told of.
    fn sync_host_rules(&self, cache: &PodCache) {
        let Some(rules) = &self.probe_snat else { return };
        let want = cache.pods.values().filter(|e| e.record.enrolled).flat_map(|e| e.record.ips.iter().copied()).collect();
        let result = rules.lock().unwrap_or_else(|p| p.into_inner()).sync(want);
        if let Err(e) = result {
            metrics::counter!("ferry_agent_enrollment_failures_total", "reason" => "host_probe_snat").increment(1);
            tracing::error!(error = %e, "kubelet probes of enrolled pods are captured like any other traffic until this succeeds; retrying at the next reconcile");
        }
    }

    /// Wants the pod's redirection annotation to say `enrolled` (API mode; a no-op otherwise).
    fn annotate(&self, e: &PodEntry) {
        if let Some(a) = &self.annotations {
            a.set(&e.record.namespace, &e.record.name, e.record.enrolled);
        }
    }

    /// Level-triggered repair: every known pod whose annotation in the state disagrees with
    /// its enrollment (a write lost to an agent restart, a release while the agent was down).
    fn annotate_drift(&self, cache: &PodCache, state: &ClusterState) {
        for e in cache.pods.values() {
            let Some(p) = state.pod(&e.record.namespace, &e.record.name) else { continue };
            let annotated = p.metadata.annotations.get(REDIRECTION_ANNOTATION).is_some_and(|v| v == REDIRECTION_ENABLED);
            if annotated != e.record.enrolled {
                self.annotate(e);
            }
        }
    }

    /// After a restart: re-apply the redirection of pods that were enrolled (an atomic
    /// replace, harmless when intact), so rules lost meanwhile come back.
    async fn restore(&self) {
        let cache = self.pods.lock().await;
        for e in cache.pods.values().filter(|e| e.record.enrolled) {
            if let Err(e2) = self.install_rules(e) {
                tracing::error!(pod = %pod_name(e), error = %e2, "cannot restore the pod's redirection");
            }
        }
        self.sync_host_rules(&cache);
        tracing::info!(
            pods = cache.pods.len(),
            enrolled = cache.pods.values().filter(|e| e.record.enrolled).count(),
            "pod records restored"
        );
    }

    async fn reconcile_loop(self: Arc<Self>) {
        let mut rx = self.cluster.clone();
        loop {
            self.reconcile().await;
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                // Retries failed enrollments even when nothing changes.
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    pub(crate) async fn reconcile(&self) {
        let state = self.cluster.borrow().clone();
        let mut cache = self.pods.lock().await;
        for action in pods::plan(&cache, &state) {
            let (uid, result) = match &action {
                Action::Enroll(uid) => (uid, self.enroll(&mut cache, uid).await),
                Action::Release(uid) => (uid, self.release(&mut cache, uid).await),
            };
            if let Err(e) = result {
                tracing::warn!(%uid, ?action, error = %e, "reconcile step failed; will retry");
            }
        }
        self.annotate_drift(&cache, &state);
        self.sync_host_rules(&cache);
        cache.save();
    }

    fn install_rules(&self, e: &PodEntry) -> Result<(), String> {
        let state = self.cluster.borrow().clone();
        let cfg = pods::redirect_config(state.pod(&e.record.namespace, &e.record.name), &self.redirect);
        redirect::nft_apply(&e.netns, &redirect::nft_install(&cfg)).map_err(|err| format!("installing nftables rules: {err}"))?;
        if let Err(err) = crate::netlink::install(&e.netns, self.ipv6_in(e)) {
            let _ = redirect::nft_apply(&e.netns, &redirect::nft_remove());
            return Err(format!("installing policy routing: {err}"));
        }
        Ok(())
    }

    fn remove_rules(&self, e: &PodEntry) -> Result<(), String> {
        let a = redirect::nft_apply(&e.netns, &redirect::nft_remove()).map_err(|err| format!("removing nftables rules: {err}"));
        let b = crate::netlink::remove(&e.netns, self.ipv6_in(e)).map_err(|err| format!("removing policy routing: {err}"));
        a.and(b)
    }

    /// IPv6 policy routing only where the pod has IPv6 (the family may be disabled there).
    fn ipv6_in(&self, e: &PodEntry) -> bool {
        self.args.ipv6_enabled && e.record.ips.iter().any(|ip| ip.is_ipv6())
    }

    /// Rules, then the proxy's acknowledgement; any failure undoes the rules.
    pub(crate) async fn enroll(&self, cache: &mut PodCache, uid: &str) -> Result<(), String> {
        let failed = |reason: &'static str| {
            metrics::counter!("ferry_agent_enrollment_failures_total", "reason" => reason).increment(1);
        };
        let Some(e) = cache.pods.get_mut(uid) else {
            failed("unknown_pod");
            return Err(format!("unknown pod {uid}"));
        };
        if let Err(err) = self.install_rules(e) {
            failed("redirection");
            return Err(err);
        }
        let sa = self.service_account(&e.record.namespace, &e.record.name);
        if let Err(err) = self.zds_add(uid, &e.record.namespace, &e.record.name, &sa, e.netns.clone()).await {
            failed("node_proxy");
            let _ = self.remove_rules(e);
            return Err(err);
        }
        e.record.enrolled = true;
        self.annotate(e);
        tracing::info!(pod = %pod_name(e), %uid, "pod enrolled: traffic is captured by the node proxy");
        self.sync_host_rules(cache);
        metrics::counter!("ferry_agent_enrollments_total", "result" => "enrolled").increment(1);
        Ok(())
    }

    /// Rules removed, then every connected proxy told to drop the pod.
    pub(crate) async fn release(&self, cache: &mut PodCache, uid: &str) -> Result<(), String> {
        let e = cache.pods.get_mut(uid).ok_or_else(|| format!("unknown pod {uid}"))?;
        let rules = self.remove_rules(e);
        self.zds_del(uid).await;
        e.record.enrolled = false;
        self.annotate(e);
        tracing::info!(pod = %pod_name(e), %uid, "pod released from the mesh");
        self.sync_host_rules(cache);
        metrics::counter!("ferry_agent_enrollments_total", "result" => "released").increment(1);
        rules
    }

    /// Gauges read at scrape time. The pod cache is skipped while an enrollment holds it; the
    /// gauge then keeps the value of the previous scrape.
    fn publish_gauges(&self) {
        metrics::gauge!("ferry_agent_zds_connections").set(self.proxies_connected() as f64);
        if let Ok(cache) = self.pods.try_lock() {
            metrics::gauge!("ferry_agent_enrolled_pods").set(cache.pods.values().filter(|e| e.record.enrolled).count() as f64);
        }
    }

    fn service_account(&self, ns: &str, name: &str) -> String {
        self.cluster.borrow().pod(ns, name).map(|p| p.service_account().to_string()).unwrap_or_else(|| "default".into())
    }
}

/// `# HELP` for the agent's families.
fn describe_metrics() {
    metrics::describe_histogram!(
        crate::telemetry::metrics::CNI_DURATION,
        metrics::Unit::Seconds,
        "Time from a CNI plugin's request to the agent's answer, by command and result"
    );
    metrics::describe_gauge!("ferry_agent_enrolled_pods", "Pods on this node whose traffic the node proxy captures");
    metrics::describe_gauge!("ferry_agent_zds_connections", "Node proxies connected over ZDS");
    metrics::describe_counter!("ferry_agent_enrollment_failures_total", "Enrollment attempts that failed, by reason; retried");
    metrics::describe_counter!("ferry_agent_enrollments_total", "Pods enrolled in and released from the mesh");
    metrics::describe_counter!("ferry_agent_cni_requests_total", "Requests from the CNI plugin, by command and result");
}

/// Whether the process on the other end of one of the agent's sockets may use it: root or the
/// agent's own user, who could already do what the sockets allow. The socket files are 0600
/// as well; this holds even where a file mode was loosened. Anyone else is refused with a
/// warning naming it and `ferry_agent_socket_peers_refused_total{socket}`; the error is the
/// refusal in words for the peer.
pub(crate) fn peer_allowed(socket: &'static str, uid: std::io::Result<u32>, pid: Option<i32>) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    let refusal = match uid {
        Ok(uid) if uid == 0 || uid == me => return Ok(()),
        Ok(uid) => {
            let why = "refusing a connection from a process that is neither root nor the agent's user";
            tracing::warn!(socket, peer_uid = uid, peer_pid = pid, "{why}");
            format!("refused: this socket answers only root or the agent's user (uid {me}), not uid {uid}")
        }
        Err(e) => {
            tracing::warn!(socket, error = %e, "refusing a connection whose peer credentials cannot be read");
            "refused: the peer's credentials cannot be read".to_string()
        }
    };
    metrics::counter!("ferry_agent_socket_peers_refused_total", "socket" => socket).increment(1);
    Err(refusal)
}

pub(crate) fn pod_name(e: &PodEntry) -> String {
    format!("{}/{}", e.record.namespace, e.record.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_or_the_agents_user_pass_and_every_refusal_is_counted() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let me = nix::unistd::geteuid().as_raw();
        let verdicts = metrics::with_local_recorder(&recorder, || {
            [("cni", Ok(0)), ("cni", Ok(me)), ("cni", Ok(65534)), ("cni", Err(std::io::Error::other("no credentials"))), ("zds", Ok(65534))]
                .map(|(socket, uid)| peer_allowed(socket, uid, Some(42)))
        });
        assert!(verdicts[0].is_ok() && verdicts[1].is_ok(), "{verdicts:?}");
        assert_eq!(verdicts[2], Err(format!("refused: this socket answers only root or the agent's user (uid {me}), not uid 65534")));
        assert!(verdicts[3].is_err() && verdicts[4].is_err());
        let text = handle.render();
        assert!(text.contains("ferry_agent_socket_peers_refused_total{socket=\"cni\"} 2"), "{text}");
        assert!(text.contains("ferry_agent_socket_peers_refused_total{socket=\"zds\"} 1"), "{text}");
    }
}
