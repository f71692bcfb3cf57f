//! The HBONE dialer and its connection pool (protocols.md §1.8, invariant P11).
//!
//! Pool key = (source identity, expected destination identities, source IP, destination
//! address). A TLS connection is only ever shared by streams with an equal key, compared in
//! full (not by hash). A connection leaves the pool after `max_streams` checkouts or when idle
//! for the release timeout; leaving the pool never cuts its live streams.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::budget::{Budget, Chunk, TotalBudget};
use h2::client::SendRequest;
use http::{Request, StatusCode};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use super::H2Stream;
use crate::config::H2Config;
use crate::net::{self as socket, SocketFactory};
use crate::tls::{dummy_server_name, WorkloadCert, ALPN_H2};
use ferry_core::addr::ServerAddr;
use ferry_core::identity::Identity;

/// How long a CONNECT may wait for its response (the destination dials the app first).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("cannot connect to {addr}: {source}{hint}", hint = if source.kind() == std::io::ErrorKind::TimedOut { " (is a NetworkPolicy blocking HBONE port 15008?)" } else { "" })]
    Connect { addr: ServerAddr, source: std::io::Error },
    #[error("TLS handshake with {addr} failed: {}", crate::tls::describe_tls_error(source))]
    Tls { addr: ServerAddr, source: std::io::Error },
    #[error("TLS handshake with {0} timed out")]
    TlsTimeout(ServerAddr),
    #[error("{0} did not negotiate ALPN h2")]
    Alpn(ServerAddr),
    #[error("HTTP/2 handshake with {addr} failed: {source}")]
    H2Handshake { addr: ServerAddr, source: h2::Error },
    #[error("CONNECT to {addr} failed: {source}")]
    Stream { addr: ServerAddr, source: h2::Error },
    #[error("CONNECT to {addr} timed out waiting for a response")]
    ResponseTimeout { addr: ServerAddr },
    #[error("CONNECT to {addr} was refused with HTTP {status}")]
    Status { addr: ServerAddr, status: StatusCode },
    #[error("HTTP/2 handshake with {0} timed out")]
    H2Timeout(ServerAddr),
    #[error("the connection to {addr} this request waited for failed: {reason}")]
    SharedDial { addr: ServerAddr, flags: &'static str, reason: Arc<str> },
    #[error("gave up on {addr} after {waited:?} waiting for another request's connection attempt")]
    DialWait { addr: ServerAddr, waited: Duration },
    #[error("no free stream on the connection to {addr} after {waited:?} (it allows fewer concurrent streams than POOL_MAX_STREAMS_PER_CONNECTION)")]
    StreamCapacity { addr: ServerAddr, waited: Duration },
}

impl HboneError {
    /// Istio's `response_flags` for this failure.
    pub fn response_flags(&self) -> &'static str {
        match self {
            HboneError::Connect { .. } | HboneError::Stream { .. } | HboneError::ResponseTimeout { .. } => "CONNECT",
            HboneError::Tls { source, .. } if is_identity_error(source) => "IDENTITY_ERROR",
            HboneError::Tls { .. } | HboneError::TlsTimeout(_) | HboneError::Alpn(_) => "TLS_FAILURE",
            HboneError::H2Handshake { .. } | HboneError::H2Timeout(_) => "H2_HANDSHAKE_FAILURE",
            HboneError::SharedDial { flags, .. } => flags,
            HboneError::DialWait { .. } | HboneError::StreamCapacity { .. } => "CONNECT",
            HboneError::Status { status, .. } if *status == StatusCode::UNAUTHORIZED => "DENY",
            HboneError::Status { .. } => "CONNECT",
        }
    }
}

fn is_identity_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) if o.0.downcast_ref::<crate::tls::verify::PeerIdentityError>().is_some()))
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub(crate) src_id: Identity,
    /// Sorted and de-duplicated, so equal sets compare equal.
    pub(crate) dst_ids: Vec<Identity>,
    pub(crate) src: IpAddr,
    pub(crate) dst: ServerAddr,
}

impl PoolKey {
    pub fn new(src_id: Identity, mut dst_ids: Vec<Identity>, src: IpAddr, dst: ServerAddr) -> Self {
        dst_ids.sort();
        dst_ids.dedup();
        PoolKey { src_id, dst_ids, src, dst }
    }
}

struct PooledConn {
    key: PoolKey,
    sender: SendRequest<Chunk>,
    budget: Budget,
    checkouts: u32,
    max: u32,
    last_used: Instant,
    alive: Arc<AtomicBool>,
}

/// One pool key's connections, and the dial in progress for it, if any.
#[derive(Default)]
struct SlotState {
    conns: Vec<PooledConn>,
    /// Checkouts that find no connection wait for this dial instead of queueing their own.
    dialing: Option<watch::Receiver<Option<DialOutcome>>>,
}

#[derive(Clone, Debug)]
enum DialOutcome {
    /// A connection was added to the slot: look again.
    Added,
    Failed {
        flags: &'static str,
        reason: Arc<str>,
    },
}

type Slot = Arc<Mutex<SlotState>>;

/// The dial in progress for a slot. Dropped without finishing (its request cancelled), it
/// clears the slot's marker: waiters see the channel close and look again, one of them
/// dialling.
struct Dialling<'a> {
    slot: &'a Slot,
    tx: watch::Sender<Option<DialOutcome>>,
}

impl Dialling<'_> {
    /// Ends this dial: the connection (if any) joins the slot and the dial is no longer in
    /// progress before the waiters hear the outcome, so none of them sees a stale dial.
    fn finish(&self, conn: Option<PooledConn>, outcome: DialOutcome) {
        {
            let mut st = lock(self.slot);
            st.conns.extend(conn);
            self.clear(&mut st);
        }
        self.tx.send_replace(Some(outcome));
    }

    /// Clears the slot's dial in progress if it is still this one.
    fn clear(&self, st: &mut SlotState) {
        let mine = self.tx.subscribe();
        if st.dialing.as_ref().is_some_and(|rx| rx.same_channel(&mine)) {
            st.dialing = None;
        }
    }
}

impl Drop for Dialling<'_> {
    fn drop(&mut self) {
        self.clear(&mut lock(self.slot));
    }
}

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, SlotState> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// One pool per source workload (its sockets live in that workload's namespace).
pub struct Pool {
    sockets: Arc<dyn SocketFactory>,
    cfg: H2Config,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    budget: TotalBudget,
    slots: Mutex<HashMap<PoolKey, Slot>>,
}

impl Pool {
    pub fn new(
        sockets: Arc<dyn SocketFactory>,
        cfg: H2Config,
        connect_timeout: Duration,
        handshake_timeout: Duration,
        budget: TotalBudget,
    ) -> Arc<Self> {
        let pool = Arc::new(Pool { sockets, cfg, connect_timeout, handshake_timeout, budget, slots: Mutex::new(HashMap::new()) });
        tokio::spawn(sweep(Arc::downgrade(&pool)));
        pool
    }

    /// Opens a CONNECT stream for `req` over a pooled (or new) connection for `key`.
    pub async fn connect(&self, key: &PoolKey, cert: &WorkloadCert, req: Request<()>) -> Result<H2Stream, HboneError> {
        let (sender, mut conn_budget) = self.checkout(key, cert).await?;
        let addr = key.dst;
        // Every wait for the connection is bounded like a dial. A request beyond the peer's
        // MAX_CONCURRENT_STREAMS is queued by h2 (each pooled handle may queue one), and its
        // handle is ready again only once that stream is open on the wire: waiting for that
        // tells "no free stream" apart from a slow answer.
        let budget = self.dial_budget();
        let ready = |s: SendRequest<Chunk>| async move {
            tokio::time::timeout(budget, s.ready()).await.map_err(|_| HboneError::StreamCapacity { addr, waited: budget })
        };
        let mut sender = match ready(sender).await? {
            Ok(s) => s,
            // A pooled connection may have died since checkout; one fresh dial is worth a retry.
            Err(_) => {
                let c = self.dial(key, cert).await?;
                conn_budget = c.budget;
                ready(c.sender).await?.map_err(|source| HboneError::Stream { addr, source })?
            }
        };
        let (resp, send) = sender.send_request(req, false).map_err(|source| HboneError::Stream { addr, source })?;
        ready(sender).await?.map_err(|source| HboneError::Stream { addr, source })?;
        let resp = tokio::time::timeout(RESPONSE_TIMEOUT, resp)
            .await
            .map_err(|_| HboneError::ResponseTimeout { addr })?
            .map_err(|source| HboneError::Stream { addr, source })?;
        if resp.status() != StatusCode::OK {
            return Err(HboneError::Status { addr, status: resp.status() });
        }
        Ok(H2Stream { send, recv: resp.into_body(), budget: conn_budget })
    }

    /// The longest one dial may take: TCP connect, then TLS and HTTP/2 handshakes.
    fn dial_budget(&self) -> Duration {
        self.connect_timeout + self.handshake_timeout
    }

    fn slot(&self, key: &PoolKey) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(key.clone()).or_default().clone()
    }

    /// A pooled connection with a free checkout, or a new one. Concurrent first connections
    /// share one dial: the others wait for its outcome (a failure is theirs too), never longer
    /// than their own dial could have taken, so against a black hole every one of them fails
    /// within one dial budget, not one budget per waiter in turn.
    async fn checkout(&self, key: &PoolKey, cert: &WorkloadCert) -> Result<(SendRequest<Chunk>, Budget), HboneError> {
        if self.cfg.max_streams_per_conn <= 1 {
            // Nothing to share: concurrent dials must not queue behind each other.
            let c = self.dial(key, cert).await?;
            return Ok((c.sender, c.budget));
        }
        let (slot, addr, start) = (self.slot(key), key.dst, tokio::time::Instant::now());
        let deadline = start + self.dial_budget();
        loop {
            // Under the slot lock (never held across an await): a checkout, or the dial to
            // wait for, or the dial to make.
            let dial_or_wait = {
                let mut st = lock(&slot);
                if let Some(sender) = take_checkout(&mut st.conns, key, self.cfg.pool_idle_timeout) {
                    return Ok(sender);
                }
                match &st.dialing {
                    Some(rx) => Err(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        st.dialing = Some(rx);
                        Ok(tx)
                    }
                }
            };
            let mut wait = match dial_or_wait {
                Ok(tx) => return self.dial_into(key, cert, Dialling { slot: &slot, tx }).await,
                Err(rx) => rx,
            };
            let waited = tokio::time::timeout_at(deadline, wait.wait_for(Option::is_some)).await;
            let outcome = match waited {
                Err(_) => return Err(HboneError::DialWait { addr, waited: start.elapsed() }),
                Ok(Ok(outcome)) => outcome.clone(),
                // The dialler was cancelled: look again (one waiter becomes the dialler).
                Ok(Err(_)) => None,
            };
            if let Some(DialOutcome::Failed { flags, reason }) = outcome {
                return Err(HboneError::SharedDial { addr, flags, reason });
            }
        }
    }

    /// Dials for the slot, adds the connection for others to share, and tells the waiters.
    async fn dial_into(
        &self,
        key: &PoolKey,
        cert: &WorkloadCert,
        dialling: Dialling<'_>,
    ) -> Result<(SendRequest<Chunk>, Budget), HboneError> {
        match self.dial(key, cert).await {
            Ok(mut c) => {
                c.checkouts = 1;
                let taken = (c.sender.clone(), c.budget.clone());
                dialling.finish((c.checkouts < c.max).then_some(c), DialOutcome::Added);
                Ok(taken)
            }
            Err(e) => {
                dialling.finish(None, DialOutcome::Failed { flags: e.response_flags(), reason: e.to_string().into() });
                Err(e)
            }
        }
    }

    async fn dial(&self, key: &PoolKey, cert: &WorkloadCert) -> Result<PooledConn, HboneError> {
        let addr = key.dst;
        let tcp = socket::connect(self.sockets.as_ref(), *addr, None, self.connect_timeout)
            .await
            .map_err(|source| HboneError::Connect { addr, source })?;
        let connector = TlsConnector::from(cert.client_config(key.dst_ids.clone()));
        // The TLS and HTTP/2 handshakes share one deadline, so a dial never exceeds its budget.
        let handshakes_by = tokio::time::Instant::now() + self.handshake_timeout;
        let tls = tokio::time::timeout_at(handshakes_by, connector.connect(dummy_server_name(), tcp))
            .await
            .map_err(|_| HboneError::TlsTimeout(addr))?
            .map_err(|source| HboneError::Tls { addr, source })?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err(HboneError::Alpn(addr));
        }
        let mut tls = tls;
        tls.get_mut().1.set_buffer_limit(Some(crate::tls::SEND_BUFFER_LIMIT));
        let h2 = h2::client::Builder::new()
            .initial_window_size(self.cfg.stream_window)
            .initial_connection_window_size(self.cfg.connection_window)
            .max_frame_size(self.cfg.frame_size)
            .max_header_list_size(16 * 1024)
            .max_send_buffer_size(self.cfg.stream_window as usize)
            .initial_max_send_streams(self.cfg.max_streams_per_conn as usize)
            .enable_push(false)
            .handshake::<_, Chunk>(tls);
        let (sender, mut conn) = tokio::time::timeout_at(handshakes_by, h2)
            .await
            .map_err(|_| HboneError::H2Timeout(addr))?
            .map_err(|source| HboneError::H2Handshake { addr, source })?;
        let alive = Arc::new(AtomicBool::new(true));
        let pings = conn.ping_pong();
        let (interval, timeout, flag) = (self.cfg.ping_interval, self.cfg.ping_timeout, alive.clone());
        tokio::spawn(async move {
            tokio::select! {
                r = &mut conn => if let Err(e) = r { tracing::debug!(%addr, error = %e, "HBONE connection ended") },
                _ = keepalive(pings, interval, timeout) => tracing::warn!(%addr, "HBONE keepalive timed out; closing the connection"),
            }
            flag.store(false, Ordering::Relaxed);
        });
        Ok(PooledConn {
            key: key.clone(),
            sender,
            budget: self.budget.connection(),
            checkouts: 0,
            max: self.cfg.max_streams_per_conn,
            last_used: Instant::now(),
            alive,
        })
    }

    /// Number of pooled connections (for tests and the config dump).
    pub fn pooled(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.values().map(|s| lock(s).conns.len()).sum()
    }
}

/// Takes one checkout of a live, recently used connection for `key`; a connection leaves the
/// list once all its checkouts are taken.
fn take_checkout(conns: &mut Vec<PooledConn>, key: &PoolKey, idle_timeout: Duration) -> Option<(SendRequest<Chunk>, Budget)> {
    let now = Instant::now();
    conns.retain(|c| c.alive.load(Ordering::Relaxed) && now.duration_since(c.last_used) < idle_timeout);
    let i = conns.iter().position(|c| c.key == *key && c.checkouts < c.max)?;
    let c = &mut conns[i];
    c.checkouts += 1;
    c.last_used = now;
    let taken = (c.sender.clone(), c.budget.clone());
    if c.checkouts >= c.max {
        conns.swap_remove(i);
    }
    Some(taken)
}

/// HTTP/2 PINGs every `interval`; returns when one is not answered within `timeout`.
pub(crate) async fn keepalive(pings: Option<h2::PingPong>, interval: Duration, timeout: Duration) {
    let Some(mut pings) = pings else { return std::future::pending().await };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}

/// Drops idle and dead connections (and empty slots) until the pool is gone.
async fn sweep(pool: Weak<Pool>) {
    loop {
        let period = match pool.upgrade() {
            Some(p) => (p.cfg.pool_idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(30)),
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(p) = pool.upgrade() else { return };
        let now = Instant::now();
        let mut slots = p.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|_, slot| {
            let mut st = lock(slot);
            st.conns.retain(|c| c.alive.load(Ordering::Relaxed) && now.duration_since(c.last_used) < p.cfg.pool_idle_timeout);
            !st.conns.is_empty() || st.dialing.is_some()
        });
    }
}
