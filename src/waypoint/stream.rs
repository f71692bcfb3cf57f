//! One CONNECT stream at the waypoint: accept the TLS connection as the waypoint, check the
//! stream's target is one this waypoint fronts, then serve it as HTTP/1.1 ([`super::http`]),
//! HTTP/2 ([`super::h2`]) or TCP (authorize at L4, dial an endpoint over HBONE, answer 200,
//! copy). Refusals are answered with a status and logged once, with the reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};

use super::io::H2Io;
use super::Waypoint;
use crate::drain::DrainWatch;
use crate::hbone::budget::Chunk;
use crate::hbone::client::{HboneError, PoolKey};
use crate::hbone::server::{serve, ConnInfo, ServeLimits, StreamHandler};
use crate::hbone::H2Stream;
use crate::listen::Gate;
use crate::tls::certs::CertError;
use ferry_core::addr::{parse_authority, Authority};
use ferry_core::jwt::Claims;
use ferry_core::l7authz::{self, L7Decision, RequestAttrs, Scope};
use ferry_core::waypoint::{self as wp_core, Endpoint, FrontError, Fronted};

/// Requests in flight per endpoint (its HBONE target), for least-request balancing.
pub(crate) type Load = Mutex<HashMap<SocketAddr, usize>>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum WaypointError {
    #[error("method {0} is not CONNECT")]
    NotConnect(String),
    #[error("authority {0:?} is not <ip>:<port>")]
    BadAuthority(String),
    #[error(transparent)]
    Front(#[from] FrontError),
    #[error("{0}")]
    Denied(String),
    /// A JWT did not verify: `body` is Envoy's message for the client, `reason` the operator's.
    #[error("request authentication refused: {reason}")]
    Unauthenticated { body: String, reason: String, realm: String },
    #[error(transparent)]
    Hbone(#[from] HboneError),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("too many CONNECT streams setting up at once; refused")]
    Shed,
    #[error("no response from {upstream} within {waited:?} (FERRY_WAYPOINT_RESPONSE_TIMEOUT)")]
    ResponseTimeout { upstream: SocketAddr, waited: std::time::Duration },
    #[error("upstream {upstream}: {reason}")]
    Upstream { upstream: SocketAddr, reason: String },
    #[error("request refused: {0}")]
    BadRequest(String),
    #[error("request head of {size} bytes is over the {limit}-byte limit")]
    HeadTooLarge { size: usize, limit: usize },
    #[error("upstream {upstream} reset the response: {reason}")]
    UpstreamReset { upstream: SocketAddr, reason: String },
    #[error("the client reset the stream before the response ended")]
    ClientReset,
}

impl WaypointError {
    /// The CONNECT status (and, for HTTP, the request's status) for this error.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            WaypointError::NotConnect(_) | WaypointError::BadAuthority(_) | WaypointError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WaypointError::Front(FrontError::Unknown(_) | FrontError::OtherWaypoint { .. } | FrontError::NoPort { .. }) => {
                StatusCode::BAD_REQUEST
            }
            WaypointError::Denied(_) | WaypointError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            WaypointError::ResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            WaypointError::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            WaypointError::Front(FrontError::NoEndpoint(_) | FrontError::BadIdentity(..))
            | WaypointError::Hbone(_)
            | WaypointError::Cert(_)
            | WaypointError::Shed
            | WaypointError::Upstream { .. }
            | WaypointError::UpstreamReset { .. }
            | WaypointError::ClientReset => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Istio's response flags (Envoy's for HTTP) for this error.
    pub(crate) fn flags(&self) -> &'static str {
        match self {
            WaypointError::Denied(_) => "DENY",
            // Envoy's jwt_authn sets no response flag on its 401.
            WaypointError::Unauthenticated { .. } => "-",
            WaypointError::Front(FrontError::NoEndpoint(_)) => "UH",
            WaypointError::Front(_) | WaypointError::NotConnect(_) | WaypointError::BadAuthority(_) => "NR",
            WaypointError::Hbone(e) => e.response_flags(),
            WaypointError::Cert(_) => "IDENTITY_ERROR",
            WaypointError::Shed => "UO",
            WaypointError::ResponseTimeout { .. } => "UT",
            WaypointError::Upstream { .. } => "UF",
            WaypointError::BadRequest(_) | WaypointError::HeadTooLarge { .. } => "DPE",
            WaypointError::UpstreamReset { .. } => "UR",
            WaypointError::ClientReset => "DC",
        }
    }
}

/// Accepts HBONE connections until the drain starts; each holds a place in `gate`.
pub(crate) async fn accept_loop(wp: Arc<Waypoint>, listener: TcpListener, gate: Arc<Gate>, drain: DrainWatch) {
    loop {
        tokio::select! {
            (s, peer) = crate::listen::accept("waypoint", || listener.accept()) => {
                if let Some(place) = gate.admit(crate::net::canonical(peer).ip()) {
                    tokio::spawn(crate::proxy::connection_task(connection(wp.clone(), s, drain.clone()), place));
                }
            }
            _ = drain.draining() => break,
        }
    }
}

async fn connection(wp: Arc<Waypoint>, tcp: TcpStream, drain: DrainWatch) {
    let peer = tcp.peer_addr().map(|p| p.to_string()).unwrap_or_default();
    let tls = match wp.certs.fetch(&wp.identity).await {
        Ok(cert) => cert.server_config(),
        Err(e) => return tracing::warn!(%peer, error = %e, "HBONE connection refused: the waypoint has no certificate yet"),
    };
    let l = &wp.cfg.limits;
    let limits =
        ServeLimits { budget: wp.budget.clone(), setups_per_connection: l.hbone_setups_per_connection, idle_timeout: l.hbone_idle_timeout };
    let handler = Arc::new(Handler { wp: wp.clone() });
    if let Err(e) = serve(tcp, tls, &wp.cfg.h2, wp.cfg.handshake_timeout, &limits, drain, handler).await {
        tracing::warn!(%peer, error = %e, "HBONE connection to the waypoint ended with an error");
    }
}

struct Handler {
    wp: Arc<Waypoint>,
}

impl StreamHandler for Handler {
    fn handle(
        self: Arc<Self>,
        req: Request<RecvStream>,
        respond: SendResponse<Chunk>,
        conn: Arc<ConnInfo>,
        drain: DrainWatch,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        one_stream(self.wp.clone(), req, respond, conn, drain)
    }
}

/// The CONNECT target, once it is known to be one this waypoint fronts.
pub(crate) struct Target {
    pub(crate) authority: SocketAddr,
    pub(crate) fronted: Fronted,
}

impl Target {
    pub(crate) fn scope<'a>(&'a self, wp: &'a Waypoint) -> Scope<'a> {
        let service = self.fronted.service().map(|s| (s.namespace.as_str(), s.name.as_str()));
        Scope { namespace: &wp.me.namespace, gateway: &wp.me.name, service }
    }
}

fn target(wp: &Waypoint, req: &Request<RecvStream>) -> Result<Target, WaypointError> {
    if req.method() != Method::CONNECT {
        return Err(WaypointError::NotConnect(req.method().to_string()));
    }
    let raw = req.uri().authority().map(|a| a.as_str().to_string()).unwrap_or_default();
    let authority = match parse_authority(&raw) {
        Some(Authority::Addr(a)) => crate::net::canonical(a),
        _ => return Err(WaypointError::BadAuthority(raw)),
    };
    let fronted = wp_core::fronted(&wp.state.snapshot(), &wp.me, authority)?;
    Ok(Target { authority, fronted })
}

async fn one_stream(wp: Arc<Waypoint>, req: Request<RecvStream>, mut respond: SendResponse<Chunk>, conn: Arc<ConnInfo>, drain: DrainWatch) {
    let start = Instant::now();
    let t = match target(&wp, &req) {
        Ok(t) => t,
        Err(e) => return refuse(&mut respond, &conn, None, &e, start),
    };
    match t.fronted.protocol() {
        wp_core::Protocol::Http1 => {
            let Ok(send) = ok(&mut respond) else { return };
            super::http::serve(wp, H2Io::new(send, req.into_body()), conn, t, drain).await
        }
        wp_core::Protocol::Http2 => {
            let Ok(send) = ok(&mut respond) else { return };
            super::h2::serve(wp, H2Io::new(send, req.into_body()), conn, t, drain).await
        }
        wp_core::Protocol::Tcp => tcp(wp, req, respond, conn, t, drain, start).await,
    }
}

fn ok(respond: &mut SendResponse<Chunk>) -> Result<h2::SendStream<Chunk>, h2::Error> {
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::OK;
    respond.send_response(resp, false)
}

fn refuse(respond: &mut SendResponse<Chunk>, conn: &ConnInfo, t: Option<&Target>, e: &WaypointError, start: Instant) {
    let mut resp = Response::new(());
    *resp.status_mut() = e.status();
    let _ = respond.send_response(resp, true);
    Access::tcp(conn, t, None, start).log(Some(e), e.status().as_u16());
}

/// TCP: authorize the connection (no HTTP attributes), dial an endpoint, answer 200, copy.
async fn tcp(
    wp: Arc<Waypoint>,
    req: Request<RecvStream>,
    mut respond: SendResponse<Chunk>,
    conn: Arc<ConnInfo>,
    t: Target,
    drain: DrainWatch,
    start: Instant,
) {
    let opened = async {
        let _places = setup_places(&wp, &conn).await?;
        authorize(&wp, &conn, &t, None, None)?;
        open_upstream(&wp, &conn, &t).await
    };
    let (up, ep, _inflight) = match opened.await {
        Ok(x) => x,
        Err(e) => return refuse(&mut respond, &conn, Some(&t), &e, start),
    };
    let Ok(send) = ok(&mut respond) else { return };
    let (mut down, mut upstream) = (H2Io::new(send, req.into_body()), H2Io::from_stream(up));
    let copied = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut down, &mut upstream) => r.map_err(|e| e.to_string()),
        _ = drain.forced() => Err("closed at the drain deadline".into()),
    };
    let failure = copied.as_ref().err().map(|e| WaypointError::Upstream { upstream: ep.target, reason: e.clone() });
    Access::tcp(&conn, Some(&t), Some(&ep), start).log(failure.as_ref(), 200);
}

/// A place for one set-up on the stream's connection and on the waypoint (see the node
/// proxy's inbound path: a burst queues, bounded by HTTP/2's streams per connection).
pub(crate) async fn setup_places(wp: &Waypoint, conn: &ConnInfo) -> Result<[tokio::sync::OwnedSemaphorePermit; 2], WaypointError> {
    let deadline = tokio::time::Instant::now() + wp.cfg.connect_timeout;
    let on_conn = tokio::time::timeout_at(deadline, conn.setups.clone().acquire_owned()).await;
    let on_conn = on_conn.ok().and_then(Result::ok).ok_or(WaypointError::Shed)?;
    let all = tokio::time::timeout_at(deadline, wp.setups.clone().acquire_owned()).await;
    Ok([on_conn, all.ok().and_then(Result::ok).ok_or(WaypointError::Shed)?])
}

/// Decides `http` (or a TCP connection) against the policies bound to this target; `auth` is
/// the request's verified JWT.
pub(crate) fn authorize(
    wp: &Waypoint,
    conn: &ConnInfo,
    t: &Target,
    http: Option<l7authz::HttpAttrs<'_>>,
    auth: Option<&Claims>,
) -> Result<(), WaypointError> {
    let attrs = RequestAttrs { src_ip: conn.peer.ip(), src_identity: Some(&conn.identity), dst: t.authority, http, auth };
    let policies = wp.policies.borrow().clone();
    let verdict = l7authz::evaluate(policies.authz.iter(), &t.scope(wp), &attrs);
    if !verdict.audited.is_empty() || !verdict.dry_run_matched.is_empty() {
        tracing::info!(target: "access", audited = ?verdict.audited, dry_run = ?verdict.dry_run_matched, "policies matched without enforcing");
    }
    match verdict.decision {
        L7Decision::Allow => Ok(()),
        L7Decision::Deny { reason, .. } => Err(WaypointError::Denied(reason)),
    }
}

/// Counts a request in flight to an endpoint until dropped.
pub(crate) struct InFlight {
    wp: Arc<Waypoint>,
    key: SocketAddr,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut load = self.wp.load.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = load.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                load.remove(&self.key);
            }
        }
    }
}

/// Picks an endpoint and opens an HBONE stream to it as the waypoint.
pub(crate) async fn open_upstream(
    wp: &Arc<Waypoint>,
    conn: &ConnInfo,
    t: &Target,
) -> Result<(H2Stream, Endpoint, InFlight), WaypointError> {
    let (ep, inflight) = choose(wp, t)?;
    let stream = dial(wp, Some(conn.peer), t, &ep).await?;
    Ok((stream, ep, inflight))
}

/// The less loaded of two random endpoints for `t`, counted in flight until the guard drops.
pub(crate) fn choose(wp: &Arc<Waypoint>, t: &Target) -> Result<(Endpoint, InFlight), WaypointError> {
    let eps = wp_core::endpoints(&wp.state.snapshot(), &t.fronted, wp.upstream_hbone_port)?;
    let mut load = wp.load.lock().unwrap_or_else(|e| e.into_inner());
    let ep = wp_core::pick(&eps, &|e| load.get(&e.target).copied().unwrap_or(0), &mut |n| fastrand::usize(..n)).cloned();
    let ep = ep.ok_or_else(|| FrontError::NoEndpoint(t.authority.to_string()))?;
    *load.entry(ep.target).or_default() += 1;
    let key = ep.target;
    Ok((ep, InFlight { wp: wp.clone(), key }))
}

/// Opens an HBONE stream to `ep` as the waypoint. `client` goes in `Forwarded` when the stream
/// carries one client's traffic (not on an HTTP/2 connection shared by many).
pub(crate) async fn dial(wp: &Waypoint, client: Option<SocketAddr>, t: &Target, ep: &Endpoint) -> Result<H2Stream, WaypointError> {
    let cert = wp.certs.fetch(&wp.identity).await?;
    let key = PoolKey::new(
        wp.identity.clone(),
        ep.identities.clone(),
        std::net::Ipv4Addr::UNSPECIFIED.into(),
        ferry_core::addr::ServerAddr(ep.hbone_addr),
    );
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.version_mut() = http::Version::HTTP_2;
    *req.uri_mut() = http::Uri::try_from(ep.target.to_string()).map_err(|e| WaypointError::BadRequest(e.to_string()))?;
    let host = t.fronted.service().map(|s| s.hostname.as_str());
    let forwarded = match (client, host) {
        (Some(c), h) => Some(crate::hbone::forwarded(c, h)),
        (None, Some(h)) => Some(format!("host={h}")),
        (None, None) => None,
    };
    if let Some(v) = forwarded.and_then(|f| HeaderValue::try_from(f).ok()) {
        req.headers_mut().insert("forwarded", v);
    }
    if let Ok(v) = HeaderValue::try_from(crate::hbone::traceparent()) {
        req.headers_mut().insert("traceparent", v);
    }
    Ok(wp.pool.connect(&key, &cert, req).await?)
}

/// One access-log line (scope `access`): per request on HTTP ports, per stream on TCP ports.
pub(crate) struct Access<'a> {
    pub(crate) conn: &'a ConnInfo,
    pub(crate) target: Option<&'a Target>,
    pub(crate) upstream: Option<&'a Endpoint>,
    pub(crate) start: Instant,
    pub(crate) method: Option<&'a str>,
    pub(crate) path: Option<&'a str>,
    /// Istio's `request_protocol`: `tcp`, `http` or `grpc`.
    pub(crate) protocol: &'static str,
    /// The gRPC status the response ended with (gRPC requests only).
    pub(crate) grpc_status: Option<&'a str>,
    /// HTTP only: the request's and the response's bytes (heads and bodies).
    pub(crate) bytes: Option<(u64, u64)>,
    /// The request principal (`<iss>/<sub>` of its verified JWT), logged as `request.principal`.
    pub(crate) principal: Option<&'a str>,
}

impl<'a> Access<'a> {
    pub(crate) fn tcp(conn: &'a ConnInfo, target: Option<&'a Target>, upstream: Option<&'a Endpoint>, start: Instant) -> Self {
        Access { conn, target, upstream, start, method: None, path: None, protocol: "tcp", grpc_status: None, bytes: None, principal: None }
    }

    pub(crate) fn log(&self, error: Option<&WaypointError>, status: u16) {
        let service = self.target.and_then(|t| t.fronted.service()).map(|s| s.hostname.as_str());
        let dst_identity = self.upstream.map(|e| e.identities[0].to_string());
        let duration = format!("{}ms", self.start.elapsed().as_millis());
        let flags = error.map(WaypointError::flags).unwrap_or("-");
        requests_total(self, service, dst_identity.as_deref(), status, flags);
        macro_rules! line {
            ($lvl:expr) => {
                tracing::event!(
                    target: "access",
                    $lvl,
                    src.addr = %self.conn.peer,
                    src.identity = %self.conn.identity,
                    request.principal = self.principal,
                    dst.addr = self.target.map(|t| tracing::field::display(t.authority)),
                    dst.service = service,
                    upstream = self.upstream.map(|e| tracing::field::display(e.target)),
                    dst.identity = dst_identity.as_deref(),
                    method = self.method,
                    path = self.path,
                    protocol = self.protocol,
                    status,
                    grpc_status = self.grpc_status,
                    response_flags = flags,
                    duration = %duration,
                    error = error.map(tracing::field::display),
                    "request complete"
                )
            };
        }
        match error {
            None => line!(tracing::Level::INFO),
            Some(_) => line!(tracing::Level::WARN),
        }
    }
}

/// `istio_requests_total` with `reporter="waypoint"` (TCP streams count as one request each).
fn requests_total(a: &Access<'_>, service: Option<&str>, dst_principal: Option<&str>, status: u16, flags: &'static str) {
    let svc = a.target.and_then(|t| t.fronted.service());
    let labels = [
        ("reporter", "waypoint".to_string()),
        ("source_principal", a.conn.identity.to_string()),
        ("source_workload_namespace", a.conn.identity.namespace().to_string()),
        ("destination_principal", dst_principal.unwrap_or("unknown").to_string()),
        ("destination_service", service.unwrap_or("unknown").to_string()),
        ("destination_service_name", svc.map(|s| s.name.clone()).unwrap_or_else(|| "unknown".into())),
        ("destination_service_namespace", svc.map(|s| s.namespace.clone()).unwrap_or_else(|| "unknown".into())),
        ("request_protocol", a.protocol.to_string()),
        ("response_code", status.to_string()),
        ("grpc_response_status", a.grpc_status.unwrap_or_default().to_string()),
        ("response_flags", flags.to_string()),
        ("connection_security_policy", "mutual_tls".to_string()),
    ];
    metrics::counter!("istio_requests_total", &labels).increment(1);
    if let Some((request, response)) = a.bytes {
        metrics::histogram!(REQUEST_DURATION, &labels).record(a.start.elapsed().as_secs_f64() * 1000.0);
        metrics::histogram!(REQUEST_BYTES, &labels).record(request as f64);
        metrics::histogram!(RESPONSE_BYTES, &labels).record(response as f64);
    }
}

const REQUEST_DURATION: &str = "istio_request_duration_milliseconds";
const REQUEST_BYTES: &str = "istio_request_bytes";
const RESPONSE_BYTES: &str = "istio_response_bytes";
