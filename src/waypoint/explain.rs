//! `/debug/authorization` on a waypoint: what it would decide for a request, without sending
//! one — the target resolved as a CONNECT's would be, the request's attributes (method, path,
//! host, headers) normalized as the data path normalizes them, and the same evaluation over
//! the policies in force, as for a request carrying no JWT. Nothing here has effects.

use std::net::{IpAddr, SocketAddr};

use http::StatusCode;
use serde_json::{json, Value};

use super::stream::Target;
use super::Waypoint;
use ferry_core::identity::Identity;
use ferry_core::l7authz::{self, path, HttpAttrs, RequestAttrs};
use ferry_core::waypoint::{self as wp_core, Protocol};

const USAGE: &str = "usage: /debug/authorization?destination=<ip:port>[&source_identity=<spiffe id>][&source_ip=<ip>]\
[&method=GET][&path=/p][&host=h][&header=name:value]...";

type Answer = Result<Value, (StatusCode, String)>;

fn bad(what: String) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, format!("{what}; {USAGE}\n"))
}

/// The decision for the request `query` describes.
pub(crate) fn explain(wp: &Waypoint, query: &str) -> Answer {
    let params: Vec<(String, String)> =
        query.split('&').filter_map(|p| p.split_once('=')).map(|(k, v)| (k.to_string(), crate::admin::percent_decode(v))).collect();
    let one = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
    let dst: SocketAddr = one("destination").and_then(|d| d.parse().ok()).ok_or_else(|| bad("destination must be <ip:port>".into()))?;
    let src_identity =
        one("source_identity").map(|s| s.parse::<Identity>()).transpose().map_err(|e| bad(format!("source_identity: {e}")))?;
    let src_ip: IpAddr = match one("source_ip") {
        Some(s) => s.parse().map_err(|_| bad("source_ip must be an IP address".into()))?,
        None => IpAddr::from([0, 0, 0, 0]),
    };
    let fronted = wp_core::fronted(&wp.state.snapshot(), &wp.me, dst).map_err(|e| (StatusCode::NOT_FOUND, format!("{e}\n")))?;
    let t = Target { authority: dst, fronted };
    let protocol = t.fronted.protocol();
    let host = one("host").map(str::to_string).or_else(|| t.fronted.service().map(|s| s.hostname.clone())).unwrap_or_default();
    let (normalized, _) = path::normalize(one("path").unwrap_or("/")).map_err(|e| bad(format!("path: {e} (the waypoint answers 400)")))?;
    let headers: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k == "header")
        .map(|(_, v)| v.split_once(':').map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string())))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("header must be name:value".into()))?;
    let header_refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let method = one("method").unwrap_or("GET");
    let http = (protocol != Protocol::Tcp).then_some(HttpAttrs { method, path: &normalized, host: &host, headers: &header_refs });
    // As a request without a token: no request principal or claims.
    let attrs = RequestAttrs { src_ip, src_identity: src_identity.as_ref(), dst, http, auth: None };
    let policies = wp.policies.borrow().clone();
    let scope = t.scope(wp);
    let considered: Vec<String> = policies.authz.iter().filter(|p| p.applies(&scope)).map(|p| p.key()).collect();
    let verdict = l7authz::evaluate(policies.authz.iter(), &scope, &attrs);
    Ok(json!({
        "destination": {"address": dst.to_string(), "service": t.fronted.service().map(|s| s.hostname.clone()), "protocol": format!("{protocol:?}")},
        "source": {"ip": src_ip.to_string(), "identity": src_identity.map(|i| i.to_string())},
        "request": (protocol != Protocol::Tcp).then(|| json!({"method": method, "path": normalized, "host": host, "headers": headers})),
        "considered": considered,
        "decision": verdict.decision,
        "audited": verdict.audited,
        "dryRunMatched": verdict.dry_run_matched,
    }))
}
