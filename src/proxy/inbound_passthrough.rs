//! Inbound plaintext (15006): TCP from a client outside the mesh, redirected to us by the pod's
//! PREROUTING rule. The connection has no verified identity, so policies see only addresses
//! and ports (positive identity matches never hold). Denied connections are reset.

use std::sync::Arc;

use tokio::net::TcpStream;

use super::connections::Tracking;
use super::copy;
use super::{until_closed, ProxyError, WorkloadProxy};
use crate::drain::DrainWatch;
use crate::net::{canonical, original_dst, set_reset_on_close};
use crate::telemetry::conn::{ConnRecord, Direction, Failure};
use ferry_core::addr::{ClientAddr, ServerAddr};
use ferry_core::rbac::{self, ConnAttrs, Decision};
use ferry_core::route::{guess_inbound_service, is_own_port};

pub(crate) async fn handle(px: Arc<WorkloadProxy>, down: TcpStream, drain: DrainWatch) {
    let (Ok(peer), Ok(orig)) = (down.peer_addr(), original_dst(&down)) else { return };
    let mut rec = ConnRecord::new(Direction::Inbound, ClientAddr(canonical(peer)), orig);
    // Boxed and freed before the copy, so an open connection's task keeps only the copy state.
    let opened = Box::pin(open(&px, &mut rec)).await;
    match opened {
        Ok((up, mut tracking)) => {
            let counters = rec.established();
            let moved = copy::Moved::default();
            let copy = copy::tcp_tcp(&down, &up, &counters.received, &counters.sent, &moved);
            let res = until_closed(&drain, Some(&mut tracking), &moved, copy).await;
            if res.revoked.is_some() {
                set_reset_on_close(&down);
                set_reset_on_close(&up);
            }
            rec.finish(res.received, res.sent, super::copy_failure(&res));
        }
        Err(e) => {
            tracing::debug!(src = %rec.src, dst = %orig, error = %e, "inbound plaintext connection refused");
            set_reset_on_close(&down);
            rec.finish(0, 0, Some(Failure { flags: e.response_flags(), error: e.to_string() }));
        }
    }
}

/// Checks the destination is this pod, authorizes the plaintext peer and dials the application.
async fn open(px: &WorkloadProxy, rec: &mut ConnRecord) -> Result<(TcpStream, Tracking), ProxyError> {
    let local = px.local_workload().await?;
    let dst = rec.arrived;
    if !local.addresses.contains(&dst.ip()) {
        return Err(ProxyError::NotLocal(dst));
    }
    if is_own_port(&px.inputs.cfg.ports, dst.port()) {
        return Err(ProxyError::Inbound(ferry_core::route::InboundError::SelfCall(dst.port())));
    }
    let snap = px.inputs.state.snapshot();
    if let Some(src) = snap.workload_by_addr(&local.network, rec.src.ip()) {
        rec.source_workload(src, None);
    }
    rec.destination_workload(&local, local.identity().ok().as_ref());
    if let Some(s) = guess_inbound_service(&snap, &local, dst.port()) {
        rec.destination_service(&s);
    }
    let attrs = ConnAttrs { src_ip: rec.src.ip(), src_identity: None, dst };
    let tracking = px.inputs.conns.track(&local.uid, attrs.clone());
    super::admit_from_waypoint(&snap, &local, None, *rec.src, dst)?;
    if let Decision::Deny { reason, .. } = rbac::evaluate(&snap, &local, &attrs) {
        return Err(ProxyError::Denied(reason));
    }
    let source = (px.orig_src && rec.src.ip() != dst.ip()).then_some(rec.src.ip());
    rec.upstream = Some(ServerAddr(dst));
    let up = crate::net::connect(px.sockets.as_ref(), dst, source, px.inputs.cfg.connect_timeout)
        .await
        .map_err(|source| ProxyError::Connect { addr: dst, source })?;
    Ok((up, tracking))
}
