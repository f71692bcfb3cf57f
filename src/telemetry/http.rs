//! A small management HTTP server for the roles without the proxy's admin runtime (the node
//! agent and the controller) and the proxy's admin, metrics and readiness ports: one bounded
//! accept path, readiness, the shared Prometheus exposition, and endpoint tables from which
//! both the router and the HTML index at `/` are derived, so the index lists exactly the
//! paths that answer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
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

/// What a handler answers: at once, or after work that takes a while (a CPU profile runs for
/// seconds) and must not stop the server answering other requests meanwhile.
pub(crate) enum Reply {
    Now(Resp),
    Later(Pin<Box<dyn Future<Output = Resp> + Send>>),
}

impl From<Resp> for Reply {
    fn from(r: Resp) -> Self {
        Reply::Now(r)
    }
}

impl Reply {
    async fn resolve(self) -> Resp {
        match self {
            Reply::Now(r) => r,
            Reply::Later(f) => f.await,
        }
    }
}

/// One endpoint of a management server: the router answers `path` with `handler`, and the
/// index at `/` lists it with `usage` (methods and parameters) and `about`.
pub(crate) struct Endpoint<S> {
    pub(crate) path: &'static str,
    pub(crate) usage: &'static str,
    pub(crate) about: &'static str,
    pub(crate) handler: fn(&S, &Request<Incoming>) -> Reply,
}

/// `/metrics` and `/stats/prometheus` (the paths ztunnel and istiod answer on), both answered
/// by `scrape`.
pub(crate) const fn metrics_endpoints<S>(scrape: fn(&S, &Request<Incoming>) -> Reply) -> [Endpoint<S>; 2] {
    [
        Endpoint {
            path: "/metrics",
            usage: "GET",
            about: "Prometheus metrics (text 0.0.4 or OpenMetrics 1.0, by Accept)",
            handler: scrape,
        },
        Endpoint {
            path: "/stats/prometheus",
            usage: "GET",
            about: "the same metrics, at the path Istio's scrape annotations name",
            handler: scrape,
        },
    ]
}

/// Routes `req` through `tables` (one server's endpoints, in index order); `/` is their
/// index, anything else is 404.
pub(crate) fn dispatch<S>(title: &str, tables: &[&[Endpoint<S>]], state: &S, req: &Request<Incoming>) -> Reply {
    let path = req.uri().path();
    if path == "/" {
        return index(title, tables).into();
    }
    match tables.iter().flat_map(|t| t.iter()).find(|e| e.path == path) {
        Some(e) => (e.handler)(state, req),
        None => text(StatusCode::NOT_FOUND, "not found; GET / lists the endpoints\n").into(),
    }
}

/// The HTML index: one row per endpoint, its path a link.
fn index<S>(title: &str, tables: &[&[Endpoint<S>]]) -> Resp {
    let mut rows = String::new();
    for e in tables.iter().flat_map(|t| t.iter()) {
        let (path, usage, about) = (escape(e.path), escape(e.usage), escape(e.about));
        rows.push_str(&format!("<tr><td><a href=\"{path}\">{path}</a></td><td><code>{usage}</code></td><td>{about}</td></tr>\n"));
    }
    let title = escape(title);
    let body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head><body>\n<h1>{title}</h1>\n<table>\n<tr><th>path</th><th>usage</th><th>what it answers</th></tr>\n{rows}</table>\n</body></html>\n"
    );
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// The Prometheus exposition with `runtime`'s families, for a `/metrics` or
/// `/stats/prometheus` entry of a table (the paths ztunnel and istiod answer on).
pub(crate) fn metrics_response(handle: &PrometheusHandle, runtime: &tokio::runtime::Handle, req: &Request<Incoming>) -> Resp {
    super::exposition::response(handle, runtime, req.headers())
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
pub(crate) async fn serve<F, R>(l: tokio::net::TcpListener, name: &'static str, header_timeout: Duration, route: F)
where
    F: Fn(&Request<Incoming>) -> R + Clone + Send + Sync + 'static,
    R: Into<Reply>,
{
    let gate = Gate::new(name, HTTP_CONNECTIONS, HTTP_CONNECTIONS_PER_SOURCE);
    loop {
        let (s, peer) = crate::listen::accept(name, || l.accept()).await;
        let Some(place) = gate.admit(crate::net::canonical(peer).ip()) else { continue };
        crate::net::tune_stream(&s, &MANAGEMENT_KEEPALIVE);
        let route = route.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let r = route(&req).into();
                async move { Ok::<_, Infallible>(r.resolve().await) }
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
