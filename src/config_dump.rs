//! The admin `/config_dump` in the shape ztunnel writes, because `istioctl ztunnel-config` and
//! Kiali parse it with fixed types (string VIPs, `workloadIps`, `certChain`, `workloadState`,
//! ...). ferry's own additions (policy notes, pending pods, the xDS status, `config.ca`) are
//! extra keys those readers ignore; they never reuse a name the readers give another type.

use serde_json::{json, Map, Value};

use crate::config::{Config, ProxyMode, WorkloadInfo};
use crate::proxy::connections::ConnectionManager;
use crate::readiness::Readiness;
use crate::state::StateStore;
use crate::tls::certs::CertManager;
use ferry_core::state::Snapshot;

/// Extra sections for the dump (e.g. the in-pod workload manager and the xDS status).
pub(crate) type DumpExtra = std::sync::Arc<dyn Fn() -> Value + Send + Sync>;

/// What the dump is built from.
pub(crate) struct Sources<'a> {
    pub(crate) cfg: &'a Config,
    pub(crate) state: &'a StateStore,
    pub(crate) certs: &'a CertManager,
    pub(crate) ready: &'a Readiness,
    pub(crate) conns: &'a ConnectionManager,
    pub(crate) extra: Option<&'a DumpExtra>,
}

/// The whole dump: state, certificates, `config`, `version`, the served pods' `workloadState`
/// (dedicated mode here; shared mode's comes from the workload manager's extra sections).
pub(crate) fn build(a: &Sources<'_>) -> Value {
    let snap = a.state.snapshot();
    let workloads: Vec<_> = snap.workloads().map(|w| &**w).collect();
    let policies: Vec<_> = snap.policies().map(|p| &**p).collect();
    let mut v = json!({
        "workloads": workloads,
        "services": snap.services_dump(),
        "policies": policies,
        "certificates": a.certs.dump(),
        "config": config(a.cfg),
        "version": version(),
        "stateVersion": snap.version,
        "readiness": { "ready": a.ready.is_ready(), "pending": a.ready.pending() },
    });
    let Some(obj) = v.as_object_mut() else { return v };
    if let (ProxyMode::Dedicated, Some(info)) = (a.cfg.mode, &a.cfg.workload_info) {
        let pod = PodState { uid: format!("{}/{}", info.namespace, info.name), up: true, info, trust_domain: None };
        obj.insert("workloadState".into(), workload_state(&[pod], &snap, a.conns));
    }
    if let Some(Value::Object(m)) = a.extra.map(|extra| extra()) {
        obj.extend(m);
    }
    v
}

/// One pod a proxy serves (or is setting up), for `workloadState`.
pub(crate) struct PodState<'a> {
    pub(crate) uid: String,
    pub(crate) up: bool,
    pub(crate) info: &'a WorkloadInfo,
    /// From the pod's certificate identity when known, else the workload's entry in state.
    pub(crate) trust_domain: Option<String>,
}

/// ztunnel's `workloadState`: per pod uid, `Up` or `Pending`, who it is, and its open
/// connections in both directions; `openInbound` is ferry's count of the inbound ones.
pub(crate) fn workload_state(pods: &[PodState<'_>], snap: &Snapshot, conns: &ConnectionManager) -> Value {
    let mut out = Map::new();
    for p in pods {
        let w = snap.find_workload(&p.info.namespace, &p.info.name, Some(&p.info.service_account));
        let trust_domain = p
            .trust_domain
            .clone()
            .or_else(|| w.and_then(|w| w.identity().ok()).map(|id| id.trust_domain().to_string()))
            .unwrap_or_default();
        let inbound: Vec<Value> = w
            .map(|w| conns.inbound_to(w.uid.as_str()))
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                let protocol = if c.src_identity.is_some() { "HBONE" } else { "TCP" };
                json!({"src": c.src_ip.to_string(), "originalDst": c.dst.to_string(), "actualDst": c.dst.to_string(), "protocol": protocol})
            })
            .collect();
        let outbound: Vec<Value> = w
            .map(|w| conns.outbound_from(w.uid.as_str()))
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                let protocol = if c.hbone { "HBONE" } else { "TCP" };
                json!({"src": c.src.to_string(), "originalDst": c.original_dst.to_string(), "actualDst": c.actual_dst.to_string(), "protocol": protocol})
            })
            .collect();
        let entry = json!({
            "state": if p.up { "Up" } else { "Pending" },
            "info": {"name": p.info.name, "namespace": p.info.namespace, "serviceAccount": p.info.service_account, "trustDomain": trust_domain},
            "openInbound": inbound.len(),
            "connections": {"inbound": inbound, "outbound": outbound},
        });
        out.insert(p.uid.clone(), entry);
    }
    Value::Object(out)
}

/// ztunnel's `version` (its `BuildInfo`, camelCase).
fn version() -> Value {
    let istio = std::env::var("ISTIO_META_ISTIO_VERSION").ok().filter(|t| !t.is_empty());
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "gitRevision": "unknown",
        "rustVersion": "unknown",
        "buildProfile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "buildStatus": "unknown",
        "istioVersion": istio.unwrap_or_default(),
        "cryptoProvider": "ring",
    })
}

/// ztunnel's names (and Kiali's types: durations as `{secs, nanos}`, addresses as
/// `{"SocketAddr": ...}`) where ferry has the same setting, plus ferry's own keys.
fn config(c: &Config) -> Value {
    let duration = |d: std::time::Duration| json!({"secs": d.as_secs(), "nanos": d.subsec_nanos()});
    let mode = match c.mode {
        ProxyMode::Shared => "Shared",
        ProxyMode::Dedicated => "Dedicated",
    };
    json!({
        "proxyMode": mode,
        "localNode": c.node_name,
        "clusterId": c.cluster_id,
        "clusterDomain": c.cluster_domain,
        "network": c.network,
        "caAddress": c.ca.describe(),
        "xdsAddress": c.xds.as_ref().map(|x| x.target.url.clone()),
        "packetMark": c.packet_mark,
        "numWorkerThreads": c.worker_threads,
        "poolMaxStreamsPerConn": c.h2.max_streams_per_conn,
        "poolUnusedReleaseTimeout": duration(c.h2.pool_idle_timeout),
        "windowSize": c.h2.stream_window,
        "connectionWindowSize": c.h2.connection_window,
        "frameSize": c.h2.frame_size,
        "secretTtl": duration(c.secret_ttl),
        "selfTerminationDeadline": duration(c.termination_deadline),
        "inpodUds": c.inpod_uds.display().to_string(),
        "inpodPortReuse": c.port_reuse,
        "adminAddr": {"SocketAddr": c.admin_addr.to_string()},
        "statsAddr": {"SocketAddr": c.stats_addr.to_string()},
        "readinessAddr": {"SocketAddr": c.readiness_addr.to_string()},
        "proxyMetadata": c.proxy_metadata,
        // ferry's own keys.
        "mode": format!("{:?}", c.mode).to_lowercase(),
        "workloadInfo": c.workload_info.as_ref().map(|w| format!("{}/{}/{}", w.namespace, w.name, w.service_account)),
        "trustDomain": c.trust_domain,
        "ca": c.ca.describe(),
        "origSrc": c.orig_src,
    })
}
