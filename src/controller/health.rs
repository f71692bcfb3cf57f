//! The controller's readiness (`/healthz/ready` on 15021) and Prometheus metrics (`/metrics` on
//! 15014), served by the shared management server and exposition.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferry_core::xds::Resources;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use super::ControllerArgs;
use crate::telemetry::http::{bind, dispatch, metrics_endpoints, metrics_response, serve, text, Endpoint, Reply, HEADER_TIMEOUT};
use crate::telemetry::metrics::Role;

/// Ready once the state is translated (it is, before this starts) and the server listens.
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
    resources: watch::Receiver<Arc<Resources>>,
    metrics: PrometheusHandle,
    runtime: tokio::runtime::Handle,
}

pub(crate) fn start(args: &ControllerArgs, resources: watch::Receiver<Arc<Resources>>) -> std::io::Result<Ready> {
    let ready = Ready(Arc::default());
    let metrics = crate::telemetry::metrics::install(Role::Controller);
    let (r, m) = (bind(args.readiness_addr)?, bind(args.stats_addr)?);
    let state = Arc::new(Management { ready: ready.clone(), resources, metrics, runtime: tokio::runtime::Handle::current() });
    let s = state.clone();
    tokio::spawn(serve(r, "readiness", HEADER_TIMEOUT, move |req| dispatch("ferry controller: readiness", &[READINESS], &s, req)));
    tokio::spawn(serve(m, "metrics", HEADER_TIMEOUT, move |req| dispatch("ferry controller: metrics", &[STATS], &state, req)));
    Ok(ready)
}

const READINESS: &[Endpoint<Arc<Management>>] = &[Endpoint {
    path: "/healthz/ready",
    usage: "GET",
    about: "200 once the state is translated and the xDS server listens, else 503",
    handler: |m, _| match m.ready.0.load(Ordering::Relaxed) {
        true => text(StatusCode::OK, "ready\n").into(),
        false => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: starting the xDS server\n").into(),
    },
}];

const STATS: &[Endpoint<Arc<Management>>] = &metrics_endpoints(scrape);

fn scrape(m: &Arc<Management>, req: &Request<Incoming>) -> Reply {
    metrics::gauge!("ferry_controller_resources").set(m.resources.borrow().len() as f64);
    metrics_response(&m.metrics, &m.runtime, req).into()
}
