//! Inbound HBONE (15008): accept an mTLS connection as the served workload, then for each
//! CONNECT stream: validate (method, authority, destination is this pod), authorize the
//! verified peer identity, dial the application, and only then answer 200 and copy.
//!
//! Invariant P3: a stream can only reach the pod its tunnel arrived at, never the proxy's own
//! ports. Order per protocols.md §1.6: a 200 always means the app accepted the connection.

use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tokio::net::TcpStream;

use super::connections::Tracking;
use super::copy;
use super::{until_closed, ProxyError, WorkloadProxy};
use crate::drain::DrainWatch;
use crate::hbone::server::{serve, ConnInfo, StreamHandler};
use crate::hbone::{self, H2Stream};
use crate::telemetry::conn::{ConnRecord, Direction, Failure};
use crate::telemetry::metrics::Peer;
use ferry_core::addr::{parse_authority, ClientAddr, HboneTarget};
use ferry_core::rbac::{self, ConnAttrs, Decision};
use ferry_core::route::inbound_target;

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
    if let Err(e) = serve(tcp, tls, &cfg.h2, cfg.handshake_timeout, drain, handler).await {
        metrics::counter!("ferry_hbone_inbound_errors_total", "reason" => error_kind(&e)).increment(1);
        tracing::info!(peer = ?peer, error = %e, "inbound HBONE connection failed");
    }
}

fn refuse(peer: Option<std::net::SocketAddr>, why: &str) {
    metrics::counter!("ferry_hbone_inbound_errors_total", "reason" => "no_certificate").increment(1);
    tracing::warn!(peer = ?peer, error = why, "inbound HBONE connection refused: cannot serve as the local workload");
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
        respond: SendResponse<Bytes>,
        conn: Arc<ConnInfo>,
        drain: DrainWatch,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        // The setup runs in its own allocation, freed before the copy starts: the task of an
        // open connection keeps only what copying needs (it is most of a connection's memory).
        let setup = Box::pin(setup(self.px.clone(), req, respond, conn));
        async move {
            let Some(Opened { up, tunnel, mut tracking, mut rec }) = setup.await else { return };
            let counters = rec.established();
            let copy = copy::tcp_h2(&up, tunnel, false, &counters.received, &counters.sent);
            let res = until_closed(&drain, Some(&mut tracking), copy).await;
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

/// Opens the stream; a refusal is answered with its status and recorded here.
async fn setup(px: Arc<WorkloadProxy>, req: Request<RecvStream>, mut respond: SendResponse<Bytes>, conn: Arc<ConnInfo>) -> Option<Opened> {
    let mut rec = ConnRecord::new(Direction::Inbound, ClientAddr(conn.peer), conn.local);
    rec.source_identity(&conn.identity);
    rec.set_mtls(true);
    match open(&px, req, &mut respond, &conn, &mut rec).await {
        Ok((up, tunnel, tracking)) => Some(Opened { up, tunnel, tracking, rec }),
        Err(e) => {
            tracing::debug!(peer = %conn.peer, identity = %conn.identity, error = %e, "inbound CONNECT refused");
            let mut resp = Response::new(());
            *resp.status_mut() = e.status();
            let _ = respond.send_response(resp, true);
            rec.finish(0, 0, Some(Failure { flags: e.response_flags(), error: e.to_string() }));
            None
        }
    }
}

/// Validates, authorizes and dials the application, then answers 200.
async fn open(
    px: &WorkloadProxy,
    req: Request<RecvStream>,
    respond: &mut SendResponse<Bytes>,
    conn: &ConnInfo,
    rec: &mut ConnRecord,
) -> Result<(TcpStream, H2Stream, Tracking), ProxyError> {
    if req.method() != Method::CONNECT {
        return Err(ProxyError::NotConnect(req.method().to_string()));
    }
    let raw = req.uri().authority().map(|a| a.as_str().to_string()).unwrap_or_default();
    let authority = parse_authority(&raw).ok_or(ProxyError::BadAuthority(raw))?;
    let local = Box::pin(px.local_workload()).await?;
    let local_id = px.identity(&local)?;
    let snap = px.inputs.state.snapshot();
    label_source(rec, &snap, &local.network, conn, &req);
    rec.destination_workload(&local, Some(&local_id));
    let (target, svc) = inbound_target(&snap, &local, conn.local.ip(), &authority, &px.inputs.cfg.ports)?;
    rec.upstream = Some(target);
    rec.hbone_target = Some(HboneTarget(*target));
    if let Some(s) = &svc {
        rec.destination_service(s);
    }
    let attrs = ConnAttrs { src_ip: conn.peer.ip(), src_identity: Some(conn.identity.clone()), dst: *target };
    // Registered before the check, so a policy change racing with it is never missed.
    let tracking = px.inputs.conns.track(&local.uid, attrs.clone());
    if let Decision::Deny { reason, .. } = rbac::evaluate(&snap, &local, &attrs) {
        return Err(ProxyError::Denied(reason));
    }
    let source = (px.orig_src && conn.peer.ip() != target.ip()).then_some(conn.peer.ip());
    let up = crate::net::connect(px.sockets.as_ref(), *target, source, px.inputs.cfg.connect_timeout)
        .await
        .map_err(|source| ProxyError::Connect { addr: *target, source })?;
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::OK;
    if px.inputs.cfg.response_baggage {
        if let Ok(v) = HeaderValue::try_from(hbone::baggage(&local, &px.inputs.cfg.cluster_id)) {
            resp.headers_mut().insert("baggage", v);
        }
    }
    let send = respond
        .send_response(resp, false)
        .map_err(|e| ProxyError::Connect { addr: *target, source: std::io::Error::other(e.to_string()) })?;
    Ok((up, H2Stream { send, recv: req.into_body() }, tracking))
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
