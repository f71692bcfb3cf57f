//! Outbound (15001): a connection the app made, redirected to us. Decide where it goes (pure
//! routing over the state snapshot), connect (HBONE tunnel or plain TCP), copy.
//!
//! Invariant P6: a connection from a workload we cannot find in state is refused, never passed
//! through; a destination known as HBONE is only ever reached through an mTLS tunnel.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Request};
use tokio::net::TcpStream;

use super::copy::{self, CopyResult};
use super::route::{self, Upstream};
use super::socket::{canonical, original_dst, set_reset_on_close};
use super::{until_forced, ProxyError, WorkloadProxy};
use crate::drain::DrainWatch;
use crate::hbone::client::PoolKey;
use crate::hbone::{self, authority_string};
use crate::state::model::{Service, Workload};
use crate::telemetry::conn::{ConnRecord, Direction, Failure};

pub async fn handle(px: Arc<WorkloadProxy>, down: TcpStream, drain: DrainWatch) {
    let (Ok(peer), Ok(orig)) = (down.peer_addr(), original_dst(&down)) else { return };
    let mut rec = ConnRecord::new(Direction::Outbound, canonical(peer), orig);
    match proxy(&px, &down, &mut rec, &drain).await {
        Ok(res) => {
            let failure = super::copy_failure(&res);
            rec.finish(res.received, res.sent, failure);
        }
        Err(e) => {
            tracing::debug!(src = %rec.src_addr, dst = %orig, error = %e, "outbound connection refused");
            // The app sees a reset, as it would from a refused connection.
            set_reset_on_close(&down);
            rec.finish(0, 0, Some(Failure { flags: e.response_flags(), error: e.to_string() }));
        }
    }
}

async fn proxy(px: &WorkloadProxy, down: &TcpStream, rec: &mut ConnRecord, drain: &DrainWatch) -> Result<CopyResult, ProxyError> {
    let src = px.local_workload().await?;
    let src_id = px.identity(&src)?;
    rec.source_workload(&src, Some(&src_id));
    let snap = px.inputs.state.snapshot();
    let upstream = route::outbound(&snap, &src, rec.dst_addr, &px.inputs.cfg.ports, &mut |n| fastrand::u64(..n))?;
    match upstream {
        Upstream::Hbone { hbone_addr, authority, identities, workload, service } => {
            rec.hbone_addr = Some(hbone_addr);
            rec.dst_addr = authority;
            rec.destination_workload(&workload, workload.identity().ok().as_ref());
            if let Some(s) = &service {
                rec.destination_service(s);
            }
            rec.set_mtls(true);
            let cert = px.inputs.certs.fetch(&src_id).await?;
            let key = PoolKey::new(src_id, identities, rec.src_addr.ip(), hbone_addr);
            let req = connect_request(authority, rec.src_addr, &src, service.as_deref(), &px.inputs.cfg.cluster_id)?;
            let stream = px.pool.connect(&key, &cert, req).await?;
            let counters = rec.established();
            Ok(until_forced(drain, copy::tcp_h2(down, stream, true, &counters.received, &counters.sent)).await)
        }
        Upstream::Direct { addr, workload, service } => {
            rec.dst_addr = addr;
            rec.destination_workload(&workload, None);
            if let Some(s) = &service {
                rec.destination_service(s);
            }
            plain(px, down, addr, rec, drain).await
        }
        Upstream::Passthrough { addr } => plain(px, down, addr, rec, drain).await,
    }
}

async fn plain(
    px: &WorkloadProxy,
    down: &TcpStream,
    addr: SocketAddr,
    rec: &mut ConnRecord,
    drain: &DrainWatch,
) -> Result<CopyResult, ProxyError> {
    let up = super::socket::connect(px.sockets.as_ref(), addr, None, px.inputs.cfg.connect_timeout)
        .await
        .map_err(|source| ProxyError::Connect { addr, source })?;
    let counters = rec.established();
    Ok(until_forced(drain, copy::tcp_tcp(down, &up, &counters.received, &counters.sent)).await)
}

/// The CONNECT request with the headers ztunnel sends (protocols.md §1.5). Headers built from
/// state that are not valid header values are left out rather than failing the connection.
fn connect_request(
    authority: SocketAddr,
    client: SocketAddr,
    src: &Workload,
    svc: Option<&Service>,
    cluster: &str,
) -> Result<Request<()>, ProxyError> {
    let uri = http::Uri::try_from(authority_string(authority)).map_err(|_| ProxyError::BadAuthority(authority.to_string()))?;
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
    add("forwarded", hbone::forwarded(client, svc.map(|s| s.hostname.as_str())));
    add("traceparent", hbone::traceparent());
    let baggage = hbone::baggage(src, cluster);
    if !baggage.is_empty() {
        add("baggage", baggage);
    }
    Ok(req)
}
