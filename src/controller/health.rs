//! The controller's readiness (`/healthz/ready` on 15021) and Prometheus metrics (`/metrics` on
//! 15014), served by the shared management server and exposition.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferry_core::xds::Resources;
use http::StatusCode;
use tokio::sync::watch;

use super::ControllerArgs;
use crate::telemetry::http::{bind, metrics_route, serve, text, HEADER_TIMEOUT};
use crate::telemetry::metrics::Role;

/// Ready once the state is translated (it is, before this starts) and the server listens.
#[derive(Clone)]
pub(crate) struct Ready(Arc<AtomicBool>);

impl Ready {
    pub(crate) fn mark_serving(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

pub(crate) fn start(args: &ControllerArgs, resources: watch::Receiver<Arc<Resources>>) -> std::io::Result<Ready> {
    let ready = Ready(Arc::default());
    let metrics = crate::telemetry::metrics::install(Role::Controller);
    let (r, m) = (bind(args.readiness_addr)?, bind(args.stats_addr)?);
    let flag = ready.clone();
    tokio::spawn(serve(r, "readiness", HEADER_TIMEOUT, move |req| match req.uri().path() {
        "/healthz/ready" if flag.0.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n"),
        "/healthz/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: starting the xDS server\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }));
    let refresh = move || metrics::gauge!("ferry_controller_resources").set(resources.borrow().len() as f64);
    tokio::spawn(serve(m, "metrics", HEADER_TIMEOUT, metrics_route(metrics, refresh)));
    Ok(ready)
}
