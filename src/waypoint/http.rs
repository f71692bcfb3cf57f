//! HTTP/1.1 on a CONNECT stream: each request's JWT is verified (RequestAuthentication), then
//! the request is authorized with its method, normalized path, host, headers and request
//! principal (the source principal is the HBONE peer: the client, as the node proxy presents
//! the client's certificate), then forwarded on a new HBONE stream to an endpoint and its
//! response streamed back. A token that does not verify gets Envoy's `401` with jwt_authn's
//! message; denied requests get Envoy's `403 RBAC: access denied`.
//!
//! Bounds (ARCHITECTURE.md, Limits): the request head must arrive within
//! `FERRY_HTTP_HEADER_TIMEOUT` (also what an idle keep-alive connection may wait) and fit in
//! 64 KiB with at most 100 headers; bodies are streamed, never buffered; the upstream must
//! start its response within `FERRY_WAYPOINT_RESPONSE_TIMEOUT`. Upstream connections are
//! pooled per endpoint ([`super::h1_pool`]).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use super::h1_pool;
use super::io::H2Io;
use super::record::{head_size, Counted, Observed, Record};
use super::stream::{self, authorize, choose, setup_places, Target, WaypointError};
use super::Waypoint;
use crate::drain::DrainWatch;
use crate::hbone::server::ConnInfo;
use ferry_core::jwt;
use ferry_core::l7authz::{path, HttpAttrs};
use ferry_core::waypoint::Endpoint;

/// Largest request or response head read (hyper's read buffer).
const MAX_HEAD: usize = 64 * 1024;
/// Most request or response headers.
const MAX_HEADERS: usize = 100;

pub(super) type Body = BoxBody<Bytes, hyper::Error>;

/// Serves HTTP/1.1 requests on one CONNECT stream until the client closes it or the drain ends it.
pub(crate) async fn serve(wp: Arc<Waypoint>, io: H2Io, conn: Arc<ConnInfo>, t: Target, drain: DrainWatch) {
    let t = Arc::new(t);
    let header_timeout = wp.cfg.limits.http_header_timeout;
    let svc = service_fn(move |req| request(wp.clone(), conn.clone(), t.clone(), req));
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(MAX_HEAD).max_headers(MAX_HEADERS);
    let c = b.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(c);
    tokio::select! {
        r = c.as_mut() => return done(r),
        _ = drain.draining() => c.as_mut().graceful_shutdown(),
    }
    tokio::select! {
        r = c => done(r),
        _ = drain.forced() => {}
    }
}

fn done(r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        tracing::debug!(error = %e, "HTTP/1.1 connection at the waypoint ended with an error");
    }
}

async fn request(wp: Arc<Waypoint>, conn: Arc<ConnInfo>, t: Arc<Target>, req: Request<Incoming>) -> Result<Response<Observed>, Infallible> {
    let mut record = Record::new(conn.clone(), t.clone(), &req, "http");
    match forward(&wp, &conn, &t, req, &mut record).await {
        Ok(resp) => {
            record.respond(&resp);
            Ok(resp.map(|b| Observed::new(b, Some(record))))
        }
        Err(e) => {
            let resp = local_reply(&e);
            record.respond(&resp);
            record.emit(Some(&e));
            Ok(resp.map(|b| Observed::new(b, None)))
        }
    }
}

/// Envoy's local replies, which clients and tests of Istio's waypoint recognise.
pub(super) fn local_reply(e: &WaypointError) -> Response<Body> {
    let (status, body) = match e {
        WaypointError::Unauthenticated { body, realm, .. } => return unauthenticated(body, realm),
        WaypointError::Denied(_) => (StatusCode::FORBIDDEN, "RBAC: access denied"),
        WaypointError::BadRequest(_) => (StatusCode::BAD_REQUEST, "Bad Request"),
        WaypointError::HeadTooLarge { .. } => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "Request Header Fields Too Large"),
        WaypointError::ResponseTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
        WaypointError::Front(_) => (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "upstream connect error or disconnect/reset before headers"),
    };
    text_reply(status, Bytes::from_static(body.as_bytes()))
}

fn text_reply(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    resp
}

/// Envoy jwt_authn's refusal: `401`, its message as the body, and a Bearer challenge naming
/// the request's URI as the realm (RFC 6750 §3).
fn unauthenticated(body: &str, realm: &str) -> Response<Body> {
    let mut resp = text_reply(StatusCode::UNAUTHORIZED, Bytes::from(body.to_string()));
    let challenge = format!("Bearer realm=\"{realm}\", error=\"invalid_token\"");
    let value = http::HeaderValue::try_from(challenge).unwrap_or_else(|_| http::HeaderValue::from_static("Bearer error=\"invalid_token\""));
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    resp
}

/// Authorizes and forwards one request; the endpoint and its in-flight count go in `record`.
async fn forward(
    wp: &Arc<Waypoint>,
    conn: &ConnInfo,
    t: &Target,
    mut req: Request<Incoming>,
    record: &mut Record,
) -> Result<Response<Body>, WaypointError> {
    check(wp, conn, t, &mut req, &mut record.principal)?;
    let (ep, inflight) = choose(wp, t)?;
    record.upstream = Some(ep.clone());
    // The request is in flight (for balancing) until its response body is done.
    record.held.0 = Some(inflight);
    let req = req.map(|b| Counted::new(b, record.request_bytes.clone()));
    Ok(send(wp, conn, t, &ep, req).await?.map(BodyExt::boxed))
}

/// Sends `req` to `ep` on a pooled connection, or a new one; once more on a new connection
/// when a pooled one turns out closed before anything of the request was written.
async fn send(
    wp: &Arc<Waypoint>,
    conn: &ConnInfo,
    t: &Target,
    ep: &Endpoint,
    mut req: Request<Counted>,
) -> Result<Response<Incoming>, WaypointError> {
    let upstream = ep.target;
    let key: h1_pool::Key = (ep.target, ep.identities[0].clone());
    let mut pooled = wp.h1.take(&key);
    loop {
        let reused = pooled.is_some();
        let mut sender = match pooled.take() {
            Some(s) => s,
            None => connect(wp, conn, t, ep).await?,
        };
        let response = sender.try_send_request(req);
        let resp = match wp.response_timeout {
            Some(d) => tokio::time::timeout(d, response).await.map_err(|_| WaypointError::ResponseTimeout { upstream, waited: d })?,
            None => response.await,
        };
        match resp {
            Ok(mut resp) => {
                wp.h1.put(key, sender);
                strip_hop_by_hop(resp.headers_mut());
                return Ok(resp);
            }
            Err(mut e) => match e.take_message() {
                Some(back) if reused => req = back,
                _ => return Err(WaypointError::Upstream { upstream, reason: e.into_error().to_string() }),
            },
        }
    }
}

/// A new HTTP/1.1 connection to `ep` over a new HBONE stream (within the set-up limit).
async fn connect(wp: &Arc<Waypoint>, conn: &ConnInfo, t: &Target, ep: &Endpoint) -> Result<SendRequest<Counted>, WaypointError> {
    let upstream = ep.target;
    let stream = {
        let _places = setup_places(wp, conn).await?;
        stream::dial(wp, None, t, ep).await?
    };
    let io = TokioIo::new(H2Io::from_stream(stream));
    let mut b = hyper::client::conn::http1::Builder::new();
    b.max_buf_size(MAX_HEAD).max_headers(MAX_HEADERS);
    let (sender, c) = b.handshake(io).await.map_err(|e| WaypointError::Upstream { upstream, reason: e.to_string() })?;
    tokio::spawn(async move {
        if let Err(e) = c.await {
            tracing::debug!(%upstream, error = %e, "upstream HTTP/1.1 connection ended with an error");
        }
    });
    Ok(sender)
}

/// Normalizes the path (forwarding exactly what policy saw), verifies the request's JWT,
/// authorizes, and prepares the request for the upstream. `principal` is set as soon as a
/// token verifies, so the log of a request denied after that names it.
pub(super) fn check(
    wp: &Waypoint,
    conn: &ConnInfo,
    t: &Target,
    req: &mut Request<Incoming>,
    principal: &mut Option<String>,
) -> Result<(), WaypointError> {
    // hyper checks its buffer only while a head is incomplete, so a head that arrives in one
    // read may exceed it; the limit is what was parsed, as Envoy's max_request_headers_kb.
    let size = head_size(req.uri(), req.method().as_str(), req.headers());
    if size > MAX_HEAD {
        return Err(WaypointError::HeadTooLarge { size, limit: MAX_HEAD });
    }
    let raw = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let (normalized, query) = path::normalize(raw).map_err(|e| WaypointError::BadRequest(e.to_string()))?;
    let query = query.to_string();
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string);
    let host = host.or_else(|| req.uri().authority().map(|a| a.to_string())).ok_or_else(|| WaypointError::BadRequest("no Host".into()))?;
    // Header values as text; bytes that are not UTF-8 are replaced, so a DENY on a header
    // still sees the header (it is never skipped).
    let owned: Vec<(String, String)> =
        req.headers().iter().map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    let headers: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let authn = authenticate(wp, t, &headers, &query, &format!("http://{host}{normalized}"))?;
    *principal = authn.claims.as_ref().map(|c| c.principal().to_string());
    let attrs = HttpAttrs { method: req.method().as_str(), path: &normalized, host: &host, headers: &headers };
    authorize(wp, conn, t, Some(attrs), authn.claims.as_ref())?;
    let uri = format!("{normalized}{query}").parse::<http::Uri>().map_err(|e| WaypointError::BadRequest(e.to_string()))?;
    *req.uri_mut() = uri;
    apply(&authn, req.headers_mut());
    strip_hop_by_hop(req.headers_mut());
    Ok(())
}

/// Verifies the request's JWT against the RequestAuthentications bound to this target.
fn authenticate(wp: &Waypoint, t: &Target, headers: &[(&str, &str)], query: &str, realm: &str) -> Result<jwt::Outcome, WaypointError> {
    let set = wp.policies.borrow().clone();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let req = jwt::Request { headers, query: query.strip_prefix('?').unwrap_or(query) };
    jwt::authenticate(set.authn.iter(), &t.scope(wp), &req, now).map_err(|e| {
        let reason = match &e {
            jwt::JwtError::Broken(why) => why.clone(),
            other => other.to_string(),
        };
        WaypointError::Unauthenticated { body: e.to_string(), reason, realm: realm.to_string() }
    })
}

/// What authentication changes before forwarding: the token (unless `forwardOriginalToken`)
/// and client-supplied claim headers removed, the verified claims' headers set.
fn apply(authn: &jwt::Outcome, h: &mut HeaderMap) {
    for name in &authn.remove {
        h.remove(name.as_str());
    }
    for (name, value) in &authn.set {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), http::HeaderValue::try_from(value.as_str())) {
            h.insert(n, v);
        }
    }
}

/// Removes the headers that describe one hop (RFC 9110 §7.6.1), including those the
/// `Connection` header names; hyper frames each hop itself.
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"] {
        h.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [("connection", "close, x-secret"), ("x-secret", "1"), ("keep-alive", "5"), ("upgrade", "websocket"), ("x-kept", "2")]
        {
            h.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept"]);
    }
}
