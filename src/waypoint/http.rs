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
//! start its response within `FERRY_WAYPOINT_RESPONSE_TIMEOUT`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use super::io::H2Io;
use super::stream::{authorize, open_upstream, setup_places, Access, Target, WaypointError};
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

type Body = BoxBody<Bytes, hyper::Error>;

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

async fn request(wp: Arc<Waypoint>, conn: Arc<ConnInfo>, t: Arc<Target>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let method = req.method().to_string();
    let target = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let mut principal = None;
    let (result, ep) = forward(&wp, &conn, &t, req, &mut principal).await;
    let access = Access {
        conn: &conn,
        target: Some(&t),
        upstream: ep.as_ref(),
        start,
        method: Some(&method),
        path: Some(&target),
        principal: principal.as_deref(),
    };
    Ok(match result {
        Ok(resp) => {
            access.log(None, resp.status().as_u16());
            resp
        }
        Err(e) => {
            let resp = local_reply(&e);
            access.log(Some(&e), resp.status().as_u16());
            resp
        }
    })
}

/// Envoy's local replies, which clients and tests of Istio's waypoint recognise.
fn local_reply(e: &WaypointError) -> Response<Body> {
    let (status, body) = match e {
        WaypointError::Unauthenticated { body, realm, .. } => return unauthenticated(body, realm),
        WaypointError::Denied(_) => (StatusCode::FORBIDDEN, "RBAC: access denied"),
        WaypointError::BadRequest(_) => (StatusCode::BAD_REQUEST, "Bad Request"),
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

/// Authorizes and forwards one request; the endpoint it went to, if one was chosen.
async fn forward(
    wp: &Arc<Waypoint>,
    conn: &ConnInfo,
    t: &Target,
    mut req: Request<Incoming>,
    principal: &mut Option<String>,
) -> (Result<Response<Body>, WaypointError>, Option<Endpoint>) {
    if let Err(e) = check(wp, conn, t, &mut req, principal) {
        return (Err(e), None);
    }
    let opened = async {
        let _places = setup_places(wp, conn).await?;
        open_upstream(wp, conn, t).await
    };
    let (stream, ep, inflight) = match opened.await {
        Ok(x) => x,
        Err(e) => return (Err(e), None),
    };
    let sent = async {
        let upstream = ep.target;
        let io = TokioIo::new(H2Io::from_stream(stream));
        let mut b = hyper::client::conn::http1::Builder::new();
        b.max_buf_size(MAX_HEAD).max_headers(MAX_HEADERS);
        let (mut sender, c) = b.handshake(io).await.map_err(|e| WaypointError::Upstream { upstream, reason: e.to_string() })?;
        // The connection task ends with the response body; it holds the in-flight count.
        tokio::spawn(async move {
            let _inflight = inflight;
            if let Err(e) = c.await {
                tracing::debug!(%upstream, error = %e, "upstream HTTP/1.1 connection ended with an error");
            }
        });
        let response = sender.send_request(req);
        let resp = match wp.response_timeout {
            Some(d) => tokio::time::timeout(d, response).await.map_err(|_| WaypointError::ResponseTimeout { upstream, waited: d })?,
            None => response.await,
        };
        let mut resp = resp.map_err(|e| WaypointError::Upstream { upstream, reason: e.to_string() })?;
        strip_hop_by_hop(resp.headers_mut());
        Ok(resp.map(|b| b.boxed()))
    };
    (sent.await, Some(ep))
}

/// Normalizes the path (forwarding exactly what policy saw), verifies the request's JWT,
/// authorizes, and prepares the request for the upstream. `principal` is set as soon as a
/// token verifies, so the log of a request denied after that names it.
fn check(
    wp: &Waypoint,
    conn: &ConnInfo,
    t: &Target,
    req: &mut Request<Incoming>,
    principal: &mut Option<String>,
) -> Result<(), WaypointError> {
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
fn strip_hop_by_hop(h: &mut HeaderMap) {
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
