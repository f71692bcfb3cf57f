//! HTTP/2 with prior knowledge (h2c) on a CONNECT stream, for ports declared `http2` or `grpc`:
//! each request is authorized exactly as an HTTP/1.1 one ([`super::http::check`]: method,
//! normalized path, `:authority` as the host, headers, the HBONE peer as source principal),
//! then sent on the endpoint's shared upstream HTTP/2 connection ([`super::upstream`]). Bodies
//! stream both ways and trailers pass through (gRPC's status is a trailer). A refused gRPC
//! request gets a trailers-only gRPC reply ([`super::grpc`]), any other Envoy's HTTP reply.
//!
//! The access-log line and `istio_requests_total` are written when the response ends (its
//! body finishes, fails or is dropped), so a stream's gRPC status is known.
//!
//! Bounds (ARCHITECTURE.md, Limits): at most [`MAX_CONCURRENT_STREAMS`] requests at once per
//! downstream connection and [`MAX_HEADER_LIST`] of headers (h2 refuses more); a connection with
//! no request in flight for `FERRY_HTTP_HEADER_TIMEOUT` (checked every such period, so closed
//! after one to two of them) is closed with GOAWAY; h2's flow control bounds what a peer can
//! queue; the upstream must start its response within `FERRY_WAYPOINT_RESPONSE_TIMEOUT`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::http::{check, local_reply, strip_hop_by_hop, Body};
use super::io::H2Io;
use super::record::{Counted, Observed, Record};
use super::stream::{choose, Target, WaypointError};
use super::{grpc, Waypoint};
use crate::drain::DrainWatch;
use crate::hbone::server::ConnInfo;

/// Most requests in flight on one downstream HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS).
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Largest request header list (SETTINGS_MAX_HEADER_LIST_SIZE), as the HTTP/1.1 head limit.
pub(crate) const MAX_HEADER_LIST: u32 = 64 * 1024;

/// Serves HTTP/2 on one CONNECT stream until the client closes it, it idles out or the drain
/// ends it.
pub(crate) async fn serve(wp: Arc<Waypoint>, io: H2Io, conn: Arc<ConnInfo>, t: Target, drain: DrainWatch) {
    let t = Arc::new(t);
    let activity = Arc::new(Activity::default());
    let idle = wp.cfg.limits.http_header_timeout;
    let a = activity.clone();
    let svc = service_fn(move |req| request(wp.clone(), conn.clone(), t.clone(), a.busy(), req));
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new()).max_concurrent_streams(MAX_CONCURRENT_STREAMS).max_header_list_size(MAX_HEADER_LIST);
    let c = b.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(c);
    tokio::select! {
        r = c.as_mut() => return done(r),
        _ = drain.draining() => c.as_mut().graceful_shutdown(),
        _ = activity.idle_for(idle) => c.as_mut().graceful_shutdown(),
    }
    tokio::select! {
        r = c => done(r),
        _ = drain.forced() => {}
    }
}

fn done(r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        tracing::debug!(error = %e, "HTTP/2 connection at the waypoint ended with an error");
    }
}

/// Requests in flight on a downstream connection, and how many have started, for the idle close.
#[derive(Default)]
struct Activity {
    active: AtomicUsize,
    started: AtomicU64,
}

impl Activity {
    fn busy(self: &Arc<Self>) -> Busy {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Resolves once a whole period passed with no request in flight and none started.
    async fn idle_for(&self, period: Duration) {
        let mut seen = self.started.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(period).await;
            let now = self.started.load(Ordering::Relaxed);
            if now == seen && self.active.load(Ordering::Relaxed) == 0 {
                return;
            }
            seen = now;
        }
    }
}

/// One request in flight, until its response ends.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn request(
    wp: Arc<Waypoint>,
    conn: Arc<ConnInfo>,
    t: Arc<Target>,
    busy: Busy,
    req: Request<Incoming>,
) -> Result<Response<Observed>, Infallible> {
    let grpc = grpc::is_grpc(req.headers());
    let mut record = Record::new(conn.clone(), t.clone(), &req, if grpc { "grpc" } else { "http" });
    record.held.1 = Some(Box::new(busy));
    match forward(&wp, &conn, &t, req, &mut record).await {
        Ok(resp) => {
            record.respond(&resp);
            Ok(resp.map(|b| Observed::new(b, Some(record))))
        }
        Err(e) => {
            let resp = if grpc { grpc::local_reply(&e) } else { local_reply(&e) };
            record.respond(&resp);
            record.emit(Some(&e));
            Ok(resp.map(|b| Observed::new(b, None)))
        }
    }
}

/// Authorizes `req` and sends it upstream; the endpoint and its in-flight count go in `record`.
async fn forward(
    wp: &Arc<Waypoint>,
    conn: &ConnInfo,
    t: &Target,
    mut req: Request<Incoming>,
    record: &mut Record,
) -> Result<Response<Body>, WaypointError> {
    prepare(wp, conn, t, &mut req, &mut record.principal)?;
    let (ep, inflight) = choose(wp, t)?;
    record.upstream = Some(ep.clone());
    record.held.0 = Some(inflight);
    let req = req.map(|b| Counted::new(b, record.request_bytes.clone()));
    let upstream = ep.target;
    let failed = |e: hyper::Error| WaypointError::Upstream { upstream, reason: e.to_string() };
    let mut sender = wp.upstreams.sender(wp, conn, t, &ep).await?;
    let mut resp = match timed(wp.response_timeout, upstream, sender.try_send_request(req)).await? {
        Ok(resp) => resp,
        Err(mut e) => {
            // The shared connection closed before it took the request (its peer went away
            // since the last one): nothing was sent, so one fresh connection may carry it.
            let Some(req) = e.take_message() else { return Err(failed(e.into_error())) };
            let mut fresh = wp.upstreams.sender(wp, conn, t, &ep).await?;
            timed(wp.response_timeout, upstream, fresh.send_request(req)).await?.map_err(failed)?
        }
    };
    strip_hop_by_hop(resp.headers_mut());
    Ok(resp.map(http_body_util::BodyExt::boxed))
}

/// Authorizes `req` ([`check`], shared with HTTP/1.1) and makes it an HTTP/2 request for the
/// upstream: `check` strips hop-by-hop headers, `TE` among them, and leaves an origin-form URI,
/// but HTTP/2 needs the scheme and authority in the URI and gRPC needs `TE: trailers`.
fn prepare(
    wp: &Waypoint,
    conn: &ConnInfo,
    t: &Target,
    req: &mut Request<Incoming>,
    principal: &mut Option<String>,
) -> Result<(), WaypointError> {
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    // Policy reads the Host header first and the upstream gets `:authority`: a request whose
    // two differ (malformed, RFC 9113 §8.3.1) is refused rather than authorized on one name
    // and sent to the other.
    if let (Some(a), Some(h)) = (authority.as_deref(), host(req)) {
        if !a.eq_ignore_ascii_case(&h) {
            return Err(WaypointError::BadRequest(format!("Host {h:?} differs from :authority {a:?}")));
        }
    }
    let authority = authority.or_else(|| host(req));
    let trailers = req.headers().get_all(header::TE).iter().any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    check(wp, conn, t, req, principal)?;
    let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let authority = authority.ok_or_else(|| WaypointError::BadRequest("no :authority".into()))?;
    *req.uri_mut() =
        format!("http://{authority}{pq}").parse().map_err(|e: http::uri::InvalidUri| WaypointError::BadRequest(e.to_string()))?;
    *req.version_mut() = http::Version::HTTP_2;
    if trailers {
        req.headers_mut().insert(header::TE, HeaderValue::from_static("trailers"));
    }
    Ok(())
}

/// `f`, within the response timeout when there is one.
async fn timed<F: std::future::Future>(limit: Option<Duration>, upstream: std::net::SocketAddr, f: F) -> Result<F::Output, WaypointError> {
    match limit {
        Some(d) => tokio::time::timeout(d, f).await.map_err(|_| WaypointError::ResponseTimeout { upstream, waited: d }),
        None => Ok(f.await),
    }
}

fn host(req: &Request<Incoming>) -> Option<String> {
    req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string)
}
