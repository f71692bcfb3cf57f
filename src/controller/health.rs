//! The controller's readiness (`/healthz/ready` on 15021) and Prometheus metrics (`/metrics` on
//! 15014), served by the shared management server and exposition. Ready means the cluster
//! state is complete (every kind listed, for the API source) and the xDS server listens; the
//! not-ready answer says which of the two is missing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;

use super::ControllerArgs;
use crate::k8s::source::ClusterSource;
use crate::telemetry::http::{bind, dispatch, metrics_endpoints, metrics_response, serve, text, Endpoint, Reply, Resp, HEADER_TIMEOUT};
use crate::telemetry::metrics::Role;

/// Whether the xDS server listens (set once, by [`Ready::mark_serving`]).
#[derive(Clone)]
pub(crate) struct Ready(Arc<AtomicBool>);

impl Ready {
    pub(crate) fn mark_serving(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What the controller's management handlers read.
struct Management {
    ready: Ready,
    source: Arc<dyn ClusterSource>,
    metrics: PrometheusHandle,
    runtime: tokio::runtime::Handle,
}

pub(crate) fn start(args: &ControllerArgs, source: Arc<dyn ClusterSource>) -> std::io::Result<Ready> {
    let ready = Ready(Arc::default());
    let metrics = crate::telemetry::metrics::install(Role::Controller);
    let (r, m) = (bind(args.readiness_addr)?, bind(args.stats_addr)?);
    let state = Arc::new(Management { ready: ready.clone(), source, metrics, runtime: tokio::runtime::Handle::current() });
    let s = state.clone();
    tokio::spawn(serve(r, "readiness", HEADER_TIMEOUT, move |req| dispatch("ferry controller: readiness", &[READINESS], &s, req)));
    tokio::spawn(serve(m, "metrics", HEADER_TIMEOUT, move |req| dispatch("ferry controller: metrics", &[STATS], &state, req)));
    Ok(ready)
}

const READINESS: &[Endpoint<Arc<Management>>] = &[Endpoint {
    path: "/healthz/ready",
    usage: "GET",
    about: "200 once every kind of the cluster state is listed and the xDS server listens, else 503 saying which is missing",
    handler: |m, _| readiness(m).into(),
}];

const STATS: &[Endpoint<Arc<Management>>] = &metrics_endpoints(scrape);

fn readiness(m: &Management) -> Resp {
    let unsynced = m.source.unsynced();
    if !unsynced.is_empty() {
        text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: waiting for the first list of {}\n", unsynced.join(", ")))
    } else if !m.ready.0.load(Ordering::Relaxed) {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready: starting the xDS server\n")
    } else {
        text(StatusCode::OK, "ready\n")
    }
}

fn scrape(m: &Arc<Management>, req: &Request<Incoming>) -> Reply {
    metrics_response(&m.metrics, &m.runtime, req).into()
}
