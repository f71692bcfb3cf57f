//! Outbound (15001): a connection the app made, redirected to us. Decide where it goes (pure
//! routing over the state snapshot), connect (HBONE tunnel or plain TCP), copy.
//!
//! Invariant P6: a connection from a workload we cannot find in state is refused, never passed
//! through; a destination known as HBONE is only ever reached through an mTLS tunnel.

use std::sync::Arc;

use http::{HeaderValue, Method, Request};
use tokio::net::TcpStream;

use super::connections::{Outbound, OutboundTracking};
use super::copy;
use super::{until_forced, ProxyError, WorkloadProxy};
use crate::drain::DrainWatch;
use crate::hbone::client::PoolKey;
use crate::hbone::{self, authority_string, H2Stream};
use crate::net::{canonical, original_dst, set_reset_on_close};
use crate::telemetry::conn::{ConnRecord, Direction, Failure};
use ferry_core::addr::{ClientAddr, HboneTarget, OrigDstAddr, ServerAddr};
use ferry_core::model::{Service, Workload};
use ferry_core::route::{self, Upstream};

pub(crate) async fn handle(px: Arc<WorkloadProxy>, down: TcpStream, drain: DrainWatch) {
    let (Ok(peer), Ok(orig)) = (down.peer_addr(), original_dst(&down)) else { return };
    let mut rec = ConnRecord::new(Direction::Outbound, ClientAddr(canonical(peer)), orig);
    // The decision and the dial run in their own allocation, freed before the copy starts: the
    // task of an open connection keeps only what copying needs, not TLS and HTTP/2 handshakes.
    let connected = Box::pin(connect(&px, &mut rec)).await;
    match connected {
        Ok((up, _listed)) => {
            let counters = rec.established();
            let (rx, tx) = (&counters.received, &counters.sent);
            let moved = copy::Moved::default();
            let res = match up {
                Connected::Tunnel(stream) => until_forced(&drain, &moved, copy::tcp_h2(&down, stream, true, rx, tx, &moved)).await,
                Connected::Tcp(up) => until_forced(&drain, &moved, copy::tcp_tcp(&down, &up, rx, tx, &moved)).await,
            };
            rec.finish(res.received, res.sent, super::copy_failure(&res));
        }
        Err(e) => {
            tracing::debug!(src = %rec.src, dst = %orig, error = %e, "outbound connection refused");
            // The app sees a reset, as it would from a refused connection.
            set_reset_on_close(&down);
            rec.finish(0, 0, Some(Failure { flags: e.response_flags(), error: e.to_string() }));
        }
    }
}

/// The upstream side of an outbound connection, ready to copy.
enum Connected {
    Tunnel(H2Stream),
    Tcp(TcpStream),
}

/// Routes the connection over the state snapshot, dials its upstream, and lists it as an open
/// outbound connection of its source pod.
async fn connect(px: &WorkloadProxy, rec: &mut ConnRecord) -> Result<(Connected, OutboundTracking), ProxyError> {
    let src = px.local_workload().await?;
    let (up, actual_dst) = dial(px, rec, &src).await?;
    let conn = Outbound { src: rec.src, original_dst: OrigDstAddr(rec.arrived), actual_dst, hbone: matches!(up, Connected::Tunnel(_)) };
    Ok((up, px.inputs.conns.track_outbound(&src.uid, conn)))
}

/// Routes and dials; returns the upstream and the address connected to.
async fn dial(px: &WorkloadProxy, rec: &mut ConnRecord, src: &Workload) -> Result<(Connected, ServerAddr), ProxyError> {
    let src_id = px.identity(src)?;
    rec.source_workload(src, Some(&src_id));
    let snap = px.inputs.state.snapshot();
    let upstream = route::outbound(&snap, src, OrigDstAddr(rec.arrived), &px.inputs.cfg.ports, &mut |n| fastrand::u64(..n))?;
    let addr = match upstream {
        Upstream::Hbone { hbone_addr, target, identities, workload, service } => {
            rec.upstream = Some(hbone_addr);
            rec.hbone_target = Some(target);
            rec.destination_workload(&workload, workload.identity().ok().as_ref());
            if let Some(s) = &service {
                rec.destination_service(s);
            }
            rec.set_mtls(true);
            let cert = px.inputs.certs.fetch(&src_id).await?;
            let key = PoolKey::new(src_id, identities, rec.src.ip(), hbone_addr);
            let req = connect_request(target, rec.src, src, service.as_deref(), &px.inputs.cfg.cluster_id)?;
            return Ok((Connected::Tunnel(px.pool.connect(&key, &cert, req).await?), hbone_addr));
        }
        Upstream::Direct { addr, workload, service } => {
            rec.destination_workload(&workload, None);
            if let Some(s) = &service {
                rec.destination_service(s);
            }
            addr
        }
        Upstream::Passthrough { addr } => addr,
    };
    rec.upstream = Some(addr);
    let up = crate::net::connect(px.sockets.as_ref(), *addr, None, px.inputs.cfg.connect_timeout)
        .await
        .map_err(|source| ProxyError::Connect { addr: *addr, source })?;
    Ok((Connected::Tcp(up), addr))
}

/// The CONNECT request with the headers ztunnel sends (protocols.md §1.5). Headers built from
/// state that are not valid header values are left out rather than failing the connection.
fn connect_request(
    target: HboneTarget,
    client: ClientAddr,
    src: &Workload,
    svc: Option<&Service>,
    cluster: &str,
) -> Result<Request<()>, ProxyError> {
    let uri = http::Uri::try_from(authority_string(*target)).map_err(|_| ProxyError::BadAuthority(target.to_string()))?;
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    let h = req.headers_mut();
    let mut add = |name: &'static str, value: String| match HeaderValue::try_from(value) {
        Ok(v) => {
            h.insert(name, v);
        }
        Err(_) => tracing::debug!(header = name, "header value from state is not valid; omitted"),
    };
    add("forwarded", hbone::forwarded(*client, svc.map(|s| s.hostname.as_str())));
    add("traceparent", hbone::traceparent());
    let baggage = hbone::baggage(src, cluster);
    if !baggage.is_empty() {
        add("baggage", baggage);
    }
    Ok(req)
}
