//! A small management HTTP server for the roles without the proxy's admin runtime (the node
//! agent and the controller) and the proxy's admin, metrics and readiness ports: one bounded
//! accept path, readiness, and the shared Prometheus exposition.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::limits::{HTTP_CONNECTIONS, HTTP_CONNECTIONS_PER_SOURCE};
use crate::listen::Gate;
use crate::net::Keepalive;

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

/// Request-header deadline for the roles that have no `FERRY_HTTP_HEADER_TIMEOUT` setting.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head a management server reads (requests have no body).
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Keepalive for management connections: a vanished client's socket is gone in ~90 s.
const MANAGEMENT_KEEPALIVE: Keepalive =
    Keepalive { enabled: true, time: Duration::from_secs(60), interval: Duration::from_secs(10), retries: 3, user_timeout: false };

/// Serves one management listener. Anyone who can reach a pod or node IP can reach these
/// ports, so the server caps its connections (in total and per source), gives a client
/// `header_timeout` to send each request's headers (which also closes idle keep-alive
/// connections), bounds header size, and sets TCP keepalive so sockets of vanished clients
/// are reclaimed.
pub(crate) async fn serve<F>(l: tokio::net::TcpListener, name: &'static str, header_timeout: Duration, route: F)
where
    F: Fn(&Request<Incoming>) -> Resp + Clone + Send + Sync + 'static,
{
    let gate = Gate::new(name, HTTP_CONNECTIONS, HTTP_CONNECTIONS_PER_SOURCE);
    loop {
        let (s, peer) = crate::listen::accept(name, || l.accept()).await;
        let Some(place) = gate.admit(crate::net::canonical(peer).ip()) else { continue };
        crate::net::tune_stream(&s, &MANAGEMENT_KEEPALIVE);
        let route = route.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let r = route(&req);
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_REQUEST_HEAD)
                .serve_connection(TokioIo::new(s), svc)
                .await;
            drop(place);
        });
    }
}
