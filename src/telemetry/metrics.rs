//! Istio's TCP metrics (protocols.md §7): names, the traffic label set, and the exporter.
//!
//! Each connection resolves its labels once and holds counter handles, so the per-chunk cost of
//! byte accounting on the data path is one atomic add.

use std::sync::OnceLock;

use metrics::{Counter, Label};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use ferry_core::identity::Identity;
use ferry_core::model::{Service, Workload};

pub(crate) const OPENED: &str = "istio_tcp_connections_opened_total";
pub(crate) const CLOSED: &str = "istio_tcp_connections_closed_total";
pub(crate) const FAILED: &str = "istio_tcp_connections_failed_total";
pub(crate) const RECEIVED: &str = "istio_tcp_received_bytes_total";
pub(crate) const SENT: &str = "istio_tcp_sent_bytes_total";
pub(crate) const SOCKETS_OPEN: &str = "istio_tcp_sockets_open";
/// How long the node agent took to answer a CNI request, by command and result.
pub(crate) const CNI_DURATION: &str = "ferry_agent_cni_request_duration_seconds";

const UNKNOWN: &str = "unknown";

/// Which ferry role a process plays, for its build-info series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Proxy,
    Agent,
    Controller,
    Waypoint,
}

impl Role {
    /// `istio_build`'s `component`: the node proxy answers as `ztunnel`, the name Istio's
    /// Ztunnel dashboard selects on; the other roles have no Istio counterpart dashboard.
    fn component(self) -> &'static str {
        match self {
            Role::Proxy => "ztunnel",
            Role::Agent => "ferry-agent",
            Role::Controller => "ferry-controller",
            Role::Waypoint => "ferry-waypoint",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Proxy => "proxy",
            Role::Agent => "agent",
            Role::Controller => "controller",
            Role::Waypoint => "waypoint",
        }
    }
}

/// Installs the process-wide Prometheus recorder (idempotent; the first caller's role names
/// the build-info series).
pub(crate) fn install(role: Role) -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = buckets(PrometheusBuilder::new()).build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; ferry metrics will not be exported");
            }
            describe();
            // ztunnel's tag is the Istio version it was built for, which the mesh sets here.
            let tag = std::env::var("ISTIO_META_ISTIO_VERSION").ok().filter(|t| !t.is_empty());
            let tag = tag.unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
            metrics::gauge!("istio_build", "component" => role.component(), "tag" => tag).set(1.0);
            metrics::gauge!("ferry_build_info", "role" => role.name(), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// Histograms are exported as Prometheus histograms (the exporter's default is a summary,
/// which cannot be aggregated across nodes). A CNI ADD may wait up to `FERRY_POD_WAIT` for
/// its pod, so the buckets reach 30 s. The waypoint's request duration and sizes use Istio's
/// buckets, so dashboards' quantiles read the same.
fn buckets(b: PrometheusBuilder) -> PrometheusBuilder {
    const CNI: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
    const MILLISECONDS: &[f64] =
        &[0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1e3, 2.5e3, 5e3, 1e4, 3e4, 6e4, 3e5, 6e5, 1.8e6, 3.6e6];
    const BYTES: &[f64] = &[1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
    let sets = [
        (CNI_DURATION, CNI),
        ("istio_request_duration_milliseconds", MILLISECONDS),
        ("istio_request_bytes", BYTES),
        ("istio_response_bytes", BYTES),
    ];
    sets.into_iter().fold(b, |b, (name, buckets)| {
        let matcher = metrics_exporter_prometheus::Matcher::Full(name.to_string());
        // Only an empty bucket list is refused, and none of these is empty.
        b.set_buckets_for_metric(matcher, buckets).unwrap_or_else(|_| PrometheusBuilder::new())
    })
}

/// `# HELP` text for the families dashboards read, worded as ztunnel's.
fn describe() {
    metrics::describe_gauge!("istio_build", "Istio component build info");
    metrics::describe_gauge!("ferry_build_info", "The ferry release and role of this process");
    metrics::describe_counter!(OPENED, "The total number of TCP connections opened");
    metrics::describe_counter!(CLOSED, "The total number of TCP connections closed");
    metrics::describe_counter!(FAILED, "The total number of TCP connections that failed to establish");
    metrics::describe_counter!(RECEIVED, "The size of total bytes received during request in case of a TCP connection");
    metrics::describe_counter!(SENT, "The size of total bytes sent during response in case of a TCP connection");
    metrics::describe_gauge!(SOCKETS_OPEN, "The number of TCP connections currently open");
    metrics::describe_histogram!("istio_request_duration_milliseconds", "Request duration, from the request to the end of the response");
    metrics::describe_histogram!("istio_request_bytes", "Request sizes (head and body)");
    metrics::describe_histogram!("istio_response_bytes", "Response sizes (head and body)");
    metrics::describe_counter!(
        "ferry_waypoint_bypass_refused_total",
        "Inbound HBONE streams refused because the destination uses a waypoint and the peer is not one of its pods"
    );
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Reporter {
    Source,
    Destination,
}

impl Reporter {
    fn label(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// Counts one established connection in `istio_tcp_sockets_open` until it is dropped, so a
/// connection torn down on any path (an error, a panic, a drain) leaves the gauge.
pub(crate) struct OpenSocket(metrics::Gauge);

impl OpenSocket {
    pub(crate) fn new(reporter: Reporter) -> Self {
        static GAUGES: OnceLock<[metrics::Gauge; 2]> = OnceLock::new();
        let [src, dst] = GAUGES
            .get_or_init(|| [Reporter::Source, Reporter::Destination].map(|r| metrics::gauge!(SOCKETS_OPEN, "reporter" => r.label())));
        let g = if reporter == Reporter::Source { src.clone() } else { dst.clone() };
        g.increment(1.0);
        OpenSocket(g)
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// One side (source or destination) of the traffic labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Peer {
    pub(crate) workload: Option<String>,
    pub(crate) canonical_service: Option<String>,
    pub(crate) canonical_revision: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) principal: Option<String>,
    pub(crate) cluster: Option<String>,
}

impl Peer {
    /// Labels for a workload known from state; `principal` only when verified by mTLS.
    pub(crate) fn from_workload(w: &Workload, principal: Option<&Identity>) -> Peer {
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Peer {
            workload: nonempty(&w.workload_name).or_else(|| nonempty(&w.name)),
            canonical_service: nonempty(&w.canonical_name).or_else(|| nonempty(&w.name)),
            canonical_revision: nonempty(&w.canonical_revision).or_else(|| Some("latest".into())),
            namespace: nonempty(&w.namespace),
            principal: principal.map(|p| p.to_string()),
            cluster: nonempty(&w.cluster_id).or_else(|| Some("Kubernetes".into())),
        }
    }

    /// Labels for a peer known only by its verified identity.
    pub(crate) fn from_identity(id: &Identity) -> Peer {
        Peer { namespace: Some(id.namespace().to_string()), principal: Some(id.to_string()), ..Default::default() }
    }
}

/// The full Istio traffic label set of one connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TrafficLabels {
    pub(crate) reporter: Reporter,
    pub(crate) source: Peer,
    pub(crate) destination: Peer,
    pub(crate) service: Option<(String, String, String)>,
    pub(crate) mtls: bool,
}

impl TrafficLabels {
    pub(crate) fn new(reporter: Reporter) -> Self {
        TrafficLabels { reporter, source: Peer::default(), destination: Peer::default(), service: None, mtls: false }
    }

    pub(crate) fn set_service(&mut self, s: &Service) {
        self.service = Some((s.hostname.clone(), s.namespace.clone(), s.name.clone()));
    }

    pub(crate) fn to_labels(&self, response_flags: &str) -> Vec<Label> {
        let v = |o: &Option<String>| o.clone().unwrap_or_else(|| UNKNOWN.to_string());
        let (s, d) = (&self.source, &self.destination);
        let (svc_host, svc_ns, svc_name) = match &self.service {
            Some((h, n, name)) => (h.clone(), n.clone(), name.clone()),
            None => (UNKNOWN.into(), UNKNOWN.into(), UNKNOWN.into()),
        };
        vec![
            Label::new("reporter", self.reporter.label()),
            Label::new("source_workload", v(&s.workload)),
            Label::new("source_canonical_service", v(&s.canonical_service)),
            Label::new("source_canonical_revision", v(&s.canonical_revision)),
            Label::new("source_workload_namespace", v(&s.namespace)),
            Label::new("source_principal", v(&s.principal)),
            Label::new("source_app", v(&s.canonical_service)),
            Label::new("source_version", v(&s.canonical_revision)),
            Label::new("source_cluster", v(&s.cluster)),
            Label::new("destination_service", svc_host),
            Label::new("destination_service_namespace", svc_ns),
            Label::new("destination_service_name", svc_name),
            Label::new("destination_workload", v(&d.workload)),
            Label::new("destination_canonical_service", v(&d.canonical_service)),
            Label::new("destination_canonical_revision", v(&d.canonical_revision)),
            Label::new("destination_workload_namespace", v(&d.namespace)),
            Label::new("destination_principal", v(&d.principal)),
            Label::new("destination_app", v(&d.canonical_service)),
            Label::new("destination_version", v(&d.canonical_revision)),
            Label::new("destination_cluster", v(&d.cluster)),
            Label::new("request_protocol", "tcp"),
            Label::new("response_flags", response_flags.to_string()),
            Label::new("connection_security_policy", if self.mtls { "mutual_tls" } else { UNKNOWN }),
        ]
    }
}

/// Every counter of one label set (one response-flags value).
pub(crate) struct Handles {
    pub(crate) opened: Counter,
    pub(crate) closed: Counter,
    /// Registered on first failure, so healthy label sets export no zero-valued series.
    failed: OnceLock<Counter>,
    labels: Vec<Label>,
    pub(crate) bytes: ByteCounters,
    /// The label set these counters carry, shared by every connection that has it.
    pub(crate) traffic: TrafficLabels,
}

impl Handles {
    pub(crate) fn failed(&self) -> &Counter {
        self.failed.get_or_init(|| metrics::counter!(FAILED, self.labels.clone()))
    }
}

/// Distinct label sets are few (pod pairs x flags); beyond this the cache is reset rather than
/// grow without bound.
const CACHE_LIMIT: usize = 16 * 1024;

type Cache = std::sync::Mutex<std::collections::HashMap<(TrafficLabels, &'static str), std::sync::Arc<Handles>>>;

/// The counters for `labels` with `flags`, registered once per distinct label set: a
/// connection then costs one hash lookup, not 23 label allocations per counter.
pub(crate) fn handles(labels: &TrafficLabels, flags: &'static str) -> std::sync::Arc<Handles> {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (labels.clone(), flags);
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = map.get(&key) {
        return h.clone();
    }
    if map.len() >= CACHE_LIMIT {
        map.clear();
    }
    let l = labels.to_labels(flags);
    let h = std::sync::Arc::new(Handles {
        opened: metrics::counter!(OPENED, l.clone()),
        closed: metrics::counter!(CLOSED, l.clone()),
        failed: OnceLock::new(),
        bytes: ByteCounters::new(&l),
        labels: l,
        traffic: labels.clone(),
    });
    map.insert(key, h.clone());
    h
}

/// Byte counters of an established connection.
#[derive(Clone)]
pub(crate) struct ByteCounters {
    /// Downstream to upstream ("received" by the proxy, Istio's request bytes).
    pub(crate) received: Counter,
    /// Upstream to downstream ("sent" to the client, Istio's response bytes).
    pub(crate) sent: Counter,
}

impl ByteCounters {
    pub(crate) fn new(labels: &[Label]) -> Self {
        ByteCounters { received: metrics::counter!(RECEIVED, labels.to_vec()), sent: metrics::counter!(SENT, labels.to_vec()) }
    }
}
