//! A small management HTTP server for the roles without the proxy's admin runtime (the node
//! agent and the controller): readiness and the shared Prometheus exposition, on the same
//! bounded accept path as the proxy's management servers.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::limits::{HTTP_CONNECTIONS, HTTP_CONNECTIONS_PER_SOURCE};
use crate::listen::Gate;

pub(crate) type Resp = Response<Full<Bytes>>;

pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Binds `addr` now, so a port conflict fails start-up rather than a later scrape.
pub(crate) fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}

/// `/metrics` and `/stats/prometheus` (the paths ztunnel and istiod answer on), after
/// `before_scrape` refreshes any gauges computed on demand.
pub(crate) fn metrics_route(
    handle: PrometheusHandle,
    before_scrape: impl Fn() + Clone + Send + Sync + 'static,
) -> impl Fn(&Request<Incoming>) -> Resp + Clone + Send + Sync + 'static {
    move |req| match req.uri().path() {
        "/metrics" | "/stats/prometheus" => {
            before_scrape();
            super::exposition::response(&handle, req.headers())
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

pub(crate) async fn serve<F>(l: tokio::net::TcpListener, name: &'static str, route: F)
where
    F: Fn(&Request<Incoming>) -> Resp + Clone + Send + Sync + 'static,
{
    let gate = Gate::new(name, HTTP_CONNECTIONS, HTTP_CONNECTIONS_PER_SOURCE);
    loop {
        let (s, peer) = crate::listen::accept(name, || l.accept()).await;
        let Some(place) = gate.admit(crate::net::canonical(peer).ip()) else { continue };
        let route = route.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let r = route(&req);
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
