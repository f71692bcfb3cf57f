//! The controller's readiness (`/healthz/ready` on 15021) and Prometheus metrics (`/metrics` on
//! 15014), served by the shared management server and exposition. Ready means the cluster
//! state is complete (every kind listed, for the API source) and the xDS server listens; the
//! not-ready answer says which of the two is missing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::StatusCode;

use super::ControllerArgs;
use crate::k8s::source::ClusterSource;
use crate::telemetry::http::{bind, metrics_route, serve, text, HEADER_TIMEOUT};
use crate::telemetry::metrics::Role;

/// Whether the xDS server listens (set once, by [`Ready::mark_serving`]).
#[derive(Clone)]
pub(crate) struct Ready(Arc<AtomicBool>);

impl Ready {
    pub(crate) fn mark_serving(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

pub(crate) fn start(args: &ControllerArgs, source: Arc<dyn ClusterSource>) -> std::io::Result<Ready> {
    let ready = Ready(Arc::default());
    let metrics = crate::telemetry::metrics::install(Role::Controller);
    let (r, m) = (bind(args.readiness_addr)?, bind(args.stats_addr)?);
    let flag = ready.clone();
    tokio::spawn(serve(r, "readiness", HEADER_TIMEOUT, move |req| {
        if req.uri().path() != "/healthz/ready" {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        let unsynced = source.unsynced();
        if !unsynced.is_empty() {
            text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: waiting for the first list of {}\n", unsynced.join(", ")))
        } else if !flag.0.load(Ordering::Relaxed) {
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready: starting the xDS server\n")
        } else {
            text(StatusCode::OK, "ready\n")
        }
    }));
    tokio::spawn(serve(m, "metrics", HEADER_TIMEOUT, metrics_route(metrics, || {})));
    Ok(ready)
}
