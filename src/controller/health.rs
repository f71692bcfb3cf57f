//! The controller's readiness (`/healthz/ready` on 15021) and Prometheus metrics (`/metrics` on
//! 15014), on the same bounded accept path as the proxy's management servers.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use ferry_core::xds::Resources;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;

use super::ControllerArgs;
use crate::limits::{HTTP_CONNECTIONS, HTTP_CONNECTIONS_PER_SOURCE};
use crate::listen::Gate;

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
    let metrics = crate::telemetry::metrics::install();
    let bind = |a| -> std::io::Result<tokio::net::TcpListener> {
        let l = std::net::TcpListener::bind(a)?;
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    };
    let (r, m) = (bind(args.readiness_addr)?, bind(args.stats_addr)?);
    let flag = ready.clone();
    tokio::spawn(serve(r, "readiness", move |path| match path {
        "/healthz/ready" if flag.0.load(Ordering::Relaxed) => (StatusCode::OK, "ready\n".to_string()),
        "/healthz/ready" => (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting the xDS server\n".to_string()),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    }));
    tokio::spawn(serve(m, "metrics", move |path| match path {
        "/metrics" | "/stats/prometheus" => {
            metrics::gauge!("ferry_controller_resources").set(resources.borrow().len() as f64);
            (StatusCode::OK, metrics.render())
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    }));
    Ok(ready)
}

async fn serve<F>(l: tokio::net::TcpListener, name: &'static str, route: F)
where
    F: Fn(&str) -> (StatusCode, String) + Clone + Send + Sync + 'static,
{
    let gate = Gate::new(name, HTTP_CONNECTIONS, HTTP_CONNECTIONS_PER_SOURCE);
    loop {
        let (s, peer) = crate::listen::accept(name, || l.accept()).await;
        let Some(place) = gate.admit(crate::net::canonical(peer).ip()) else { continue };
        let route = route.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (status, body) = route(req.uri().path());
                let mut r = Response::new(Full::new(Bytes::from(body)));
                *r.status_mut() = status;
                r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(s), svc)
                .await;
            drop(place);
        });
    }
}
