//! Inbound HBONE (15008): accept an mTLS connection as the served workload, then for each
//! CONNECT stream: validate (method, authority, destination is this pod), authorize the
//! verified peer identity, dial the application, and only then answer 200 and copy.
//!
//! Invariant P3: a stream can only reach the pod its tunnel arrived at, never the proxy's own
//! ports. Order per protocols.md §1.6: a 200 always means the app accepted the connection.

use std::sync::Arc;

use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tokio::net::TcpStream;

use super::connections::Tracking;
use super::copy;
use super::{until_closed, ProxyError, WorkloadProxy};
use crate::drain::DrainWatch;
use crate::hbone::budget::Chunk;
use crate::hbone::server::{serve, ConnInfo, ServeLimits, StreamHandler};
use crate::hbone::{self, H2Stream};
use crate::telemetry::conn::{ConnRecord, Direction, Failure};
use crate::telemetry::metrics::Peer;
use ferry_core::addr::{parse_authority, ClientAddr, HboneTarget};
use ferry_core::rbac::{self, ConnAttrs, Decision};
use ferry_core::route::{guess_inbound_service, inbound_target};

/// Serves one TCP connection on the HBONE port.
pub(crate) async fn handle_connection(px: Arc<WorkloadProxy>, tcp: TcpStream, drain: DrainWatch) {
    let peer = tcp.peer_addr().ok();
    let tls = match Box::pin(px.local_workload()).await.and_then(|w| px.identity(&w)) {
        Ok(id) => match px.inputs.certs.fetch(&id).await {
            Ok(cert) => cert.server_config(),
            Err(e) => return refuse(peer, &e.to_string()),
        },
        Err(e) => return refuse(peer, &e.to_string()),
    };
    let cfg = &px.inputs.cfg;
    let handler = Arc::new(Inbound { px: px.clone() });
    let limits = ServeLimits {
        budget: px.inputs.budget.clone(),
        setups_per_connection: cfg.limits.hbone_setups_per_connection,
        idle_timeout: cfg.limits.hbone_idle_timeout,
    };
    if let Err(e) = serve(tcp, tls, &cfg.h2, cfg.handshake_timeout, &limits, drain, handler).await {
        let reason = error_kind(&e);
        metrics::counter!("ferry_hbone_inbound_errors_total", "reason" => reason).increment(1);
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        // A peer that fails the handshake or presents the wrong identity is what an operator
        // must see; an HTTP/2 error after a good handshake is most often a peer going away.
        if reason == "http2" {
            tracing::debug!(%peer, reason, error = %e, "inbound HBONE connection ended with an HTTP/2 error");
        } else {
            tracing::warn!(%peer, reason, error = %e, "inbound HBONE connection refused");
        }
    }
}

fn refuse(peer: Option<std::net::SocketAddr>, why: &str) {
    metrics::counter!("ferry_hbone_inbound_errors_total", "reason" => "no_certificate").increment(1);
    let peer = peer.map(|p| p.to_string()).unwrap_or_default();
    tracing::warn!(%peer, reason = "no_certificate", error = why, "inbound HBONE connection refused: cannot serve as the local workload");
}

fn error_kind(e: &crate::hbone::server::ServeError) -> &'static str {
    use crate::hbone::server::ServeError::*;
    match e {
        Tls(_) => "tls",
        Timeout(_) => "handshake_timeout",
        Alpn => "alpn",
        NoClientCertificate => "no_client_certificate",
        Identity(_) => "identity",
        H2(_) => "http2",
    }
}

pub(super) struct Inbound {
    pub(super) px: Arc<WorkloadProxy>,
}

impl StreamHandler for Inbound {
    fn handle(
        self: Arc<Self>,
        req: Request<RecvStream>,
        respond: SendResponse<Chunk>,
        conn: Arc<ConnInfo>,
        drain: DrainWatch,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        // The setup runs in its own allocation, freed before the copy starts: the task of an
        // open connection keeps only what copying needs (it is most of a connection's memory).
        let setup = Box::pin(setup(self.px.clone(), req, respond, conn));
        async move {
            let Some(Opened { up, tunnel, mut tracking, mut rec }) = setup.await else { return };
            let counters = rec.established();
            let moved = copy::Moved::default();
            let copy = copy::tcp_h2(&up, tunnel, false, &counters.received, &counters.sent, &moved);
            let res = until_closed(&drain, Some(&mut tracking), &moved, copy).await;
            if res.revoked.is_some() {
                crate::net::set_reset_on_close(&up);
            }
            rec.finish(res.received, res.sent, super::copy_failure(&res));
        }
    }
}

/// A stream whose application connection is open and answered with 200.
struct Opened {
    up: TcpStream,
    tunnel: H2Stream,
    tracking: Tracking,
    rec: ConnRecord,
}

/// Opens the stream; a refusal is answered with its status and recorded here. The set-up holds
/// a place on its connection and on the proxy while it authorizes and dials, and is abandoned
/// (its wait or dial cancelled) the moment the peer resets the stream, so reset floods cannot
/// make the proxy hold dials (P10).
async fn setup(px: Arc<WorkloadProxy>, req: Request<RecvStream>, mut respond: SendResponse<Chunk>, conn: Arc<ConnInfo>) -> Option<Opened> {
    let mut rec = ConnRecord::new(Direction::Inbound, ClientAddr(conn.peer), conn.local);
    rec.source_identity(&conn.identity);
    rec.set_mtls(true);
    let work = async {
        let _places = setup_places(&px, &conn).await?;
        dial(&px, &req, &conn, &mut rec).await
    };
    let opened = tokio::select! {
        r = work => r,
        _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => Err(ProxyError::Cancelled),
    };
    let result = opened.and_then(|(up, tracking, baggage)| accept(&mut respond, up, tracking, baggage));
    let outcome = match &result {
        Ok(_) => "ok",
        Err(ProxyError::Cancelled) => "cancelled",
        Err(ProxyError::Shed(_)) => "shed",
        Err(_) => "refused",
    };
    metrics::counter!("ferry_hbone_setups_total", "result" => outcome).increment(1);
    match result {
        Ok((up, send, tracking)) => {
            let tunnel = H2Stream { send, recv: req.into_body(), budget: conn.budget.clone() };
            Some(Opened { up, tunnel, tracking, rec })
        }
        Err(e) => {
            tracing::debug!(peer = %conn.peer, identity = %conn.identity, error = %e, "inbound CONNECT refused");
            if !matches!(e, ProxyError::Cancelled) {
                let mut resp = Response::new(());
                *resp.status_mut() = e.status();
                let _ = respond.send_response(resp, true);
            }
            rec.finish(0, 0, Some(Failure { flags: e.response_flags(), error: e.to_string() }));
            None
        }
    }
}

/// A place for one set-up on the stream's connection and on the proxy. A stream beyond the
/// caps waits for a place, so a legitimate burst multiplexed on one pooled connection queues
/// instead of failing; the queue is bounded by HTTP/2's streams per connection, and a stream
/// that waits longer than the connect timeout is shed.
async fn setup_places(px: &WorkloadProxy, conn: &ConnInfo) -> Result<[tokio::sync::OwnedSemaphorePermit; 2], ProxyError> {
    let deadline = tokio::time::Instant::now() + px.inputs.cfg.connect_timeout;
    let on_conn = match tokio::time::timeout_at(deadline, conn.setups.clone().acquire_owned()).await {
        Ok(Ok(p)) => p,
        _ => return Err(ProxyError::Shed("this HBONE connection (FERRY_HBONE_SETUPS_PER_CONNECTION)")),
    };
    match tokio::time::timeout_at(deadline, px.inputs.setups.clone().acquire_owned()).await {
        Ok(Ok(on_proxy)) => Ok([on_conn, on_proxy]),
        _ => Err(ProxyError::Shed("the proxy (FERRY_HBONE_SETUPS)")),
    }
}

/// Validates, authorizes and dials the application; returns the app connection, its tracking
/// and the baggage to answer with.
async fn dial(
    px: &WorkloadProxy,
    req: &Request<RecvStream>,
    conn: &ConnInfo,
    rec: &mut ConnRecord,
) -> Result<(TcpStream, Tracking, Option<HeaderValue>), ProxyError> {
    if req.method() != Method::CONNECT {
        return Err(ProxyError::NotConnect(req.method().to_string()));
    }
    let raw = req.uri().authority().map(|a| a.as_str().to_string()).unwrap_or_default();
    let authority = parse_authority(&raw).ok_or(ProxyError::BadAuthority(raw))?;
    let local = Box::pin(px.local_workload()).await?;
    let local_id = px.identity(&local)?;
    let snap = px.inputs.state.snapshot();
    label_source(rec, &snap, &local.network, conn, req);
    rec.destination_workload(&local, Some(&local_id));
    let (target, svc) = inbound_target(&snap, &local, conn.local.ip(), &authority, &px.inputs.cfg.ports)?;
    rec.upstream = Some(target);
    rec.hbone_target = Some(HboneTarget(*target));
    // A tunnel to a pod address names no service; the destination's telemetry still does.
    if let Some(s) = svc.or_else(|| guess_inbound_service(&snap, &local, target.port())) {
        rec.destination_service(&s);
    }
    let attrs = ConnAttrs { src_ip: conn.peer.ip(), src_identity: Some(conn.identity.clone()), dst: *target };
    // Registered before the checks, so a state change racing with them is never missed.
    let tracking = px.inputs.conns.track(&local.uid, attrs.clone());
    super::admit_from_waypoint(&snap, &local, Some(&conn.identity), conn.peer, *target)?;
    if let Decision::Deny { reason, .. } = rbac::evaluate(&snap, &local, &attrs) {
        return Err(ProxyError::Denied(reason));
    }
    let source = (px.orig_src && conn.peer.ip() != target.ip()).then_some(conn.peer.ip());
    let up = crate::net::connect(px.sockets.as_ref(), *target, source, px.inputs.cfg.connect_timeout)
        .await
        .map_err(|source| ProxyError::Connect { addr: *target, source })?;
    let baggage =
        px.inputs.cfg.response_baggage.then(|| HeaderValue::try_from(hbone::baggage(&local, &px.inputs.cfg.cluster_id)).ok()).flatten();
    Ok((up, tracking, baggage))
}

/// Answers 200: the application accepted the connection.
fn accept(
    respond: &mut SendResponse<Chunk>,
    up: TcpStream,
    tracking: Tracking,
    baggage: Option<HeaderValue>,
) -> Result<(TcpStream, SendStream<Chunk>, Tracking), ProxyError> {
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::OK;
    if let Some(v) = baggage {
        resp.headers_mut().insert("baggage", v);
    }
    let send = respond.send_response(resp, false).map_err(|_| ProxyError::Cancelled)?;
    Ok((up, send, tracking))
}

/// Source labels: from state when the workload at the peer IP has the verified identity,
/// otherwise from the identity and the peer's baggage (never trusted for decisions).
fn label_source(rec: &mut ConnRecord, snap: &ferry_core::state::Snapshot, network: &str, conn: &ConnInfo, req: &Request<RecvStream>) {
    let by_ip = snap.workload_by_addr(network, conn.peer.ip()).filter(|w| w.identity().ok().as_ref() == Some(&conn.identity));
    match by_ip {
        Some(w) => rec.source_workload(w, Some(&conn.identity)),
        None => {
            let b = hbone::parse_baggage(req.headers());
            let mut p = Peer::from_identity(&conn.identity);
            p.workload = b.workload;
            p.canonical_service = b.service;
            p.canonical_revision = b.version;
            p.cluster = b.cluster;
            rec.source_peer(p);
        }
    }
}
