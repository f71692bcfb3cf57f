//! gRPC at the waypoint, as Envoy treats it: a request is gRPC when its `content-type` is
//! `application/grpc` or `application/grpc+<codec>`/`-web...`; a local reply to one is HTTP 200
//! with a trailers-only response (`grpc-status`, `grpc-message`), since gRPC clients read the
//! status there and not from `:status`; the status a response ends with is read from its
//! trailers, or from its headers when it is trailers-only.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty};

use super::http::Body;
use super::stream::WaypointError;
use ferry_core::waypoint::FrontError;

const PERMISSION_DENIED: u16 = 7;
const UNAVAILABLE: u16 = 14;
const DEADLINE_EXCEEDED: u16 = 4;
const INTERNAL: u16 = 13;

/// Whether the request is gRPC (or gRPC-Web), by its content type.
pub(crate) fn is_grpc(h: &HeaderMap) -> bool {
    let ct = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    ct.get(..16).is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"))
        && matches!(ct.as_bytes().get(16), None | Some(b'+' | b';' | b'-'))
}

/// The gRPC status and message of a local reply: Envoy's HTTP-to-gRPC mapping of the reply it
/// would send, except a timeout, which is DEADLINE_EXCEEDED (Envoy's since envoyproxy/envoy
/// #44479; the mapping gives a 504 UNAVAILABLE, which tells clients to retry).
fn status(e: &WaypointError) -> (u16, &'static str) {
    match e {
        WaypointError::Denied(_) => (PERMISSION_DENIED, "RBAC: access denied"),
        WaypointError::ResponseTimeout { .. } => (DEADLINE_EXCEEDED, "upstream request timeout"),
        WaypointError::BadRequest(_) => (INTERNAL, "Bad Request"),
        WaypointError::Front(FrontError::NoEndpoint(_)) => (UNAVAILABLE, "no healthy upstream"),
        _ => (UNAVAILABLE, "upstream connect error or disconnect/reset before headers"),
    }
}

/// A trailers-only gRPC reply for `e`.
pub(crate) fn local_reply(e: &WaypointError) -> Response<Body> {
    let (code, message) = status(e);
    let mut resp = Response::new(Empty::<Bytes>::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code));
    h.insert("grpc-message", HeaderValue::from_static(message));
    resp
}

/// The `grpc-status` in `h`, if it carries one.
pub(crate) fn status_in(h: &HeaderMap) -> Option<String> {
    h.get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_by_content_type() {
        let cases = [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC+json", true),
            ("application/grpc-web", true),
            ("application/grpc-web-text", true),
            ("application/grpc; charset=utf-8", true),
            ("application/grpcx", false),
            ("application/json", false),
            ("application/grp", false),
            ("", false),
        ];
        for (ct, want) in cases {
            let mut h = HeaderMap::new();
            if !ct.is_empty() {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            }
            assert_eq!(is_grpc(&h), want, "{ct:?}");
        }
    }

    #[test]
    fn local_replies_are_trailers_only_with_envoys_status() {
        let up: std::net::SocketAddr = "10.0.0.1:80".parse().unwrap();
        let cases = [
            (WaypointError::Denied("policy shop/deny".into()), "7", "RBAC: access denied"),
            (WaypointError::ResponseTimeout { upstream: up, waited: std::time::Duration::from_secs(1) }, "4", "upstream request timeout"),
            (WaypointError::Front(FrontError::NoEndpoint("svc".into())), "14", "no healthy upstream"),
            (
                WaypointError::Upstream { upstream: up, reason: "refused".into() },
                "14",
                "upstream connect error or disconnect/reset before headers",
            ),
            (WaypointError::BadRequest("encoded slash".into()), "13", "Bad Request"),
        ];
        for (e, code, message) in cases {
            let r = local_reply(&e);
            assert_eq!(r.status(), StatusCode::OK, "{e}");
            assert_eq!(status_in(r.headers()).as_deref(), Some(code), "{e}");
            assert_eq!(r.headers()["grpc-message"], message, "{e}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], "application/grpc", "{e}");
            assert!(hyper::body::Body::is_end_stream(r.body()), "trailers-only: no body, {e}");
        }
    }
}
