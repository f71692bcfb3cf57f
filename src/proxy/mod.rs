//! The L4 data path of one served workload: outbound capture (15001), inbound HBONE (15008)
//! and inbound plaintext (15006), all with sockets from the workload's [`SocketFactory`].
//!
//! Each path reads as accept, decide, connect, copy. Errors are one enum, mapped to HTTP status
//! (inbound HBONE) and Istio response flags in one place ([`ProxyError`]).

pub mod connections;
pub mod copy;
pub mod inbound;
pub mod inbound_passthrough;
pub mod outbound;

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};

use crate::config::{Config, WorkloadInfo};
use crate::drain::DrainWatch;
use crate::hbone::budget::TotalBudget;
use crate::hbone::client::{HboneError, Pool};
use crate::listen::{Admitted, Gate};
use crate::net::SocketFactory;
use crate::state::StateStore;
use crate::tls::certs::{CertError, CertManager};
use ferry_core::identity::Identity;
use ferry_core::model::Workload;
use ferry_core::route;

/// How long a connection waits for its workload to appear in state (protocols.md §3.4).
const LOCAL_WORKLOAD_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("served workload {0} is not in the state (yet)")]
    LocalWorkloadUnknown(String),
    #[error("served workload has an invalid identity: {0}")]
    BadIdentity(String),
    #[error(transparent)]
    Route(#[from] route::RouteError),
    #[error(transparent)]
    Inbound(#[from] route::InboundError),
    #[error(transparent)]
    Hbone(#[from] HboneError),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("{0}")]
    Denied(String),
    #[error("method {0} is not CONNECT")]
    NotConnect(String),
    #[error("unparsable authority {0:?}")]
    BadAuthority(String),
    #[error("plaintext destination {0} is not an address of the served workload")]
    NotLocal(SocketAddr),
    #[error("the peer reset the stream before it was set up; its dial was cancelled")]
    Cancelled,
    #[error("too many CONNECT streams setting up at once on {0}; refused without dialling")]
    Shed(&'static str),
}

impl ProxyError {
    /// Istio's `response_flags` label value.
    // Both mappings are exhaustive on purpose: a new error must be given its flag and status.
    pub(crate) fn response_flags(&self) -> &'static str {
        match self {
            // Refused like a policy denial: the peer is not the destination's waypoint.
            ProxyError::Denied(_) | ProxyError::Inbound(route::InboundError::NotFromWaypoint { .. }) => "DENY",
            // Envoy's flags: no route (the waypoint is unknown), no healthy upstream (none of
            // its pods is ready).
            ProxyError::Route(route::RouteError::UnknownWaypoint { .. }) => "NR",
            ProxyError::Route(route::RouteError::WaypointNotReady { .. }) => "UH",
            ProxyError::Hbone(e) => e.response_flags(),
            ProxyError::Cert(_) | ProxyError::BadIdentity(_) => "IDENTITY_ERROR",
            // Envoy's flags for a downstream that went away and an upstream overflow.
            ProxyError::Cancelled => "DC",
            ProxyError::Shed(_) => "UO",
            ProxyError::LocalWorkloadUnknown(_)
            | ProxyError::Route(_)
            | ProxyError::Inbound(_)
            | ProxyError::Connect { .. }
            | ProxyError::NotConnect(_)
            | ProxyError::BadAuthority(_)
            | ProxyError::NotLocal(_) => "CONNECT",
        }
    }

    /// The HTTP status an inbound CONNECT gets for this error (protocols.md §1.6).
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::NotConnect(_) | ProxyError::BadAuthority(_) => StatusCode::BAD_REQUEST,
            ProxyError::Inbound(route::InboundError::IpMismatch { .. }) => StatusCode::BAD_REQUEST,
            ProxyError::Denied(_) | ProxyError::Inbound(route::InboundError::NotFromWaypoint { .. }) => StatusCode::UNAUTHORIZED,
            ProxyError::Inbound(
                route::InboundError::SelfCall(_) | route::InboundError::UnknownService(..) | route::InboundError::NoTargetPort(..),
            )
            | ProxyError::LocalWorkloadUnknown(_)
            | ProxyError::BadIdentity(_)
            | ProxyError::Route(_)
            | ProxyError::Hbone(_)
            | ProxyError::Cert(_)
            | ProxyError::Connect { .. }
            | ProxyError::NotLocal(_)
            | ProxyError::Cancelled
            | ProxyError::Shed(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The destination's waypoint check (`route::waypoint_admits`) for both inbound paths: a refusal
/// is counted and logged at WARN with the peer, here, before the access log's record.
pub(crate) fn admit_from_waypoint(
    snap: &ferry_core::state::Snapshot,
    local: &Workload,
    identity: Option<&Identity>,
    peer: SocketAddr,
    dst: SocketAddr,
) -> Result<(), ProxyError> {
    route::waypoint_admits(snap, local, identity).map_err(|e| {
        metrics::counter!("ferry_waypoint_bypass_refused_total").increment(1);
        let id = identity.map(|i| i.to_string()).unwrap_or_default();
        tracing::warn!(%peer, identity = %id, destination = %dst, reason = %e, "inbound connection refused: not from the destination's waypoint");
        ProxyError::Inbound(e)
    })
}

/// Everything the proxies of one node share.
pub struct ProxyInputs {
    pub(crate) cfg: Arc<Config>,
    pub(crate) state: StateStore,
    pub(crate) certs: Arc<CertManager>,
    /// Open inbound connections, re-authorized on every policy change.
    pub(crate) conns: Arc<connections::ConnectionManager>,
    /// Caps on open data-path connections over every served pod, per direction.
    pub(crate) outbound_gate: Arc<Gate>,
    pub(crate) inbound_gate: Arc<Gate>,
    /// Places for CONNECT streams setting up at once, over the proxy.
    pub(crate) setups: Arc<tokio::sync::Semaphore>,
    /// Bytes queued for HBONE peers, over the proxy.
    pub(crate) budget: TotalBudget,
}

impl ProxyInputs {
    pub fn new(cfg: Arc<Config>, state: StateStore, certs: Arc<CertManager>) -> Arc<Self> {
        let l = &cfg.limits;
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map(|(soft, _)| soft).unwrap_or(1024);
        let max = l.connections(nofile);
        Arc::new(ProxyInputs {
            outbound_gate: Gate::new("outbound", max, max),
            inbound_gate: Gate::new("inbound", max, l.max_connections_per_source),
            setups: Arc::new(tokio::sync::Semaphore::new(l.hbone_setups)),
            budget: TotalBudget::new(l.hbone_buffer_total, l.hbone_connection_buffer, l.hbone_stall_timeout),
            cfg,
            state,
            certs,
            conns: Default::default(),
        })
    }
}

/// The proxy of one served workload.
pub struct WorkloadProxy {
    pub(crate) inputs: Arc<ProxyInputs>,
    pub(crate) info: WorkloadInfo,
    pub(crate) sockets: Arc<dyn SocketFactory>,
    pub(crate) pool: Arc<Pool>,
    /// Deliver inbound connections from the client's own IP (IP_TRANSPARENT works here).
    pub(crate) orig_src: bool,
}

/// The three listeners of one served workload.
pub struct Listeners {
    pub(crate) outbound: TcpListener,
    pub(crate) inbound_plaintext: TcpListener,
    pub(crate) hbone: TcpListener,
}

impl Listeners {
    pub fn addrs(&self) -> io::Result<(SocketAddr, SocketAddr, SocketAddr)> {
        Ok((self.outbound.local_addr()?, self.inbound_plaintext.local_addr()?, self.hbone.local_addr()?))
    }
}

impl WorkloadProxy {
    /// Binds the listeners for `info` with `sockets` (in that workload's namespace).
    pub fn bind(inputs: Arc<ProxyInputs>, info: WorkloadInfo, sockets: Arc<dyn SocketFactory>) -> io::Result<(Arc<Self>, Listeners)> {
        let cfg = inputs.cfg.clone();
        let want_transparent = cfg.orig_src != Some(false);
        let (outbound, _) = listen_any(sockets.as_ref(), cfg.ports.outbound, cfg.ipv6, false)?;
        let (inbound_plaintext, t1) = listen_any(sockets.as_ref(), cfg.ports.inbound_plaintext, cfg.ipv6, want_transparent)?;
        let (hbone, t2) = listen_any(sockets.as_ref(), cfg.ports.hbone, cfg.ipv6, want_transparent)?;
        let orig_src = want_transparent && t1 && t2;
        if cfg.orig_src == Some(true) && !orig_src {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "ENABLE_ORIG_SRC=true but IP_TRANSPARENT is not permitted (needs CAP_NET_ADMIN)",
            ));
        }
        let pool = Pool::new(sockets.clone(), cfg.h2.clone(), cfg.connect_timeout, cfg.handshake_timeout, inputs.budget.clone());
        let px = Arc::new(WorkloadProxy { inputs, info, sockets, pool, orig_src });
        Ok((px, Listeners { outbound, inbound_plaintext, hbone }))
    }

    /// Serves until `drain` starts; open connections then finish under the drain's control.
    pub async fn run(self: Arc<Self>, l: Listeners, drain: DrainWatch) {
        let (px1, px2, px3) = (self.clone(), self.clone(), self.clone());
        tokio::join!(
            accept_loop(l.outbound, drain.clone(), "outbound", self.inputs.outbound_gate.clone(), move |s, d| outbound::handle(
                px1.clone(),
                s,
                d
            )),
            accept_loop(l.inbound_plaintext, drain.clone(), "inbound plaintext", self.inputs.inbound_gate.clone(), move |s, d| {
                inbound_passthrough::handle(px2.clone(), s, d)
            }),
            accept_loop(l.hbone, drain.clone(), "inbound HBONE", self.inputs.inbound_gate.clone(), move |s, d| {
                inbound::handle_connection(px3.clone(), s, d)
            }),
        );
    }

    /// The served workload as the current state describes it, waiting briefly for state.
    pub(crate) async fn local_workload(&self) -> Result<Arc<Workload>, ProxyError> {
        let info = &self.info;
        self.inputs
            .state
            .wait_for(LOCAL_WORKLOAD_WAIT, |s| s.find_workload(&info.namespace, &info.name, Some(&info.service_account)).cloned())
            .await
            .ok_or_else(|| ProxyError::LocalWorkloadUnknown(info.to_string()))
    }

    pub(crate) fn identity(&self, w: &Workload) -> Result<Identity, ProxyError> {
        w.identity().map_err(|e| ProxyError::BadIdentity(e.to_string()))
    }
}

/// Binds `[::]:port` (dual stack) or, without IPv6, `0.0.0.0:port`.
fn listen_any(sockets: &dyn SocketFactory, port: u16, ipv6: bool, transparent: bool) -> io::Result<(TcpListener, bool)> {
    if ipv6 {
        match sockets.listen(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port), transparent) {
            Ok(l) => return Ok(l),
            // EAFNOSUPPORT / EADDRNOTAVAIL: no IPv6 in this namespace.
            Err(e) if matches!(e.raw_os_error(), Some(97) | Some(99)) => {}
            Err(e) => return Err(e),
        }
    }
    sockets.listen(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port), transparent)
}

/// Accepts until the drain starts. Each connection holds a place in `gate` (over every served
/// pod) for its whole life; one over the cap is closed at once.
async fn accept_loop<F, Fut>(listener: TcpListener, drain: DrainWatch, name: &'static str, gate: Arc<Gate>, handle: F)
where
    F: Fn(TcpStream, DrainWatch) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            (s, peer) = crate::listen::accept(name, || listener.accept()) => {
                if let Some(place) = gate.admit(crate::net::canonical(peer).ip()) {
                    tokio::spawn(connection_task(handle(s, drain.clone()), place));
                }
            }
            _ = drain.draining() => break,
        }
    }
    tracing::debug!(listener = name, "listener closed for drain");
}

/// The task of one accepted connection: its future, holding its place in the listener's caps
/// until it ends (stored once; see `crate::task`).
pub(crate) fn connection_task<Fut: Future<Output = ()>>(conn: Fut, place: Admitted) -> crate::task::Holding<Fut, Admitted> {
    crate::task::holding(conn, place)
}

/// Runs the copy phase of a connection until it ends or the drain deadline forces it closed.
pub(crate) fn until_forced<'a, F: Future<Output = copy::CopyResult> + 'a>(
    drain: &'a DrainWatch,
    moved: &'a copy::Moved,
    copy: F,
) -> UntilClosed<'a, F> {
    until_closed(drain, None, moved, copy)
}

/// Like [`until_forced`], and also ends the copy when a policy change revokes the connection.
pub(crate) fn until_closed<'a, F: Future<Output = copy::CopyResult> + 'a>(
    drain: &'a DrainWatch,
    tracking: Option<&'a mut connections::Tracking>,
    moved: &'a copy::Moved,
    copy: F,
) -> UntilClosed<'a, F> {
    UntilClosed {
        copy,
        moved,
        forced: Box::pin(drain.forced()),
        revoked: tracking.map(|t| Box::pin(t.revoked()) as std::pin::Pin<Box<dyn Future<Output = String> + Send + 'a>>),
    }
}

pin_project_lite::pin_project! {
    /// The copy phase raced against the drain deadline and a revocation. A hand-written future
    /// so the copy future is stored once: an `async fn` taking it by value would hold it twice,
    /// and every idle connection pays for this future's size.
    pub(crate) struct UntilClosed<'a, F> {
        #[pin]
        copy: F,
        // What the copy has moved so far: an abandoned copy's record still reports it.
        moved: &'a copy::Moved,
        forced: std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
        revoked: Option<std::pin::Pin<Box<dyn Future<Output = String> + Send + 'a>>>,
    }
}

impl<F: Future<Output = copy::CopyResult>> Future for UntilClosed<'_, F> {
    type Output = copy::CopyResult;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<copy::CopyResult> {
        use std::task::Poll;
        let this = self.project();
        if let Poll::Ready(r) = this.copy.poll(cx) {
            return Poll::Ready(r);
        }
        if this.forced.as_mut().poll(cx).is_ready() {
            let error = Some(io::Error::new(io::ErrorKind::ConnectionAborted, "closed at the drain deadline"));
            return Poll::Ready(copy::CopyResult { error, ..this.moved.result() });
        }
        if let Some(Poll::Ready(reason)) = this.revoked.as_mut().map(|r| r.as_mut().poll(cx)) {
            return Poll::Ready(copy::CopyResult { revoked: Some(reason), ..this.moved.result() });
        }
        Poll::Pending
    }
}

/// How a finished copy is reported: a revocation is a DENY, an I/O error is recorded as is.
pub(crate) fn copy_failure(res: &copy::CopyResult) -> Option<crate::telemetry::conn::Failure> {
    use crate::telemetry::conn::Failure;
    match (&res.revoked, &res.error) {
        (Some(reason), _) => Some(Failure { flags: "DENY", error: format!("closed after a policy change: {reason}") }),
        (None, Some(e)) => Some(Failure { flags: "-", error: e.to_string() }),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests;
