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
use tokio::sync::Mutex as AsyncMutex;
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
}

impl HboneError {
    /// Istio's `response_flags` for this failure.
    pub fn response_flags(&self) -> &'static str {
        match self {
            HboneError::Connect { .. } | HboneError::Stream { .. } | HboneError::ResponseTimeout { .. } => "CONNECT",
            HboneError::Tls { source, .. } if is_identity_error(source) => "IDENTITY_ERROR",
            HboneError::Tls { .. } | HboneError::TlsTimeout(_) | HboneError::Alpn(_) => "TLS_FAILURE",
            HboneError::H2Handshake { .. } => "H2_HANDSHAKE_FAILURE",
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

type Slot = Arc<AsyncMutex<Vec<PooledConn>>>;

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
        let (mut sender, mut budget) = self.checkout(key, cert).await?;
        let addr = key.dst;
        // A pooled connection may have died since checkout; one fresh dial is worth a retry.
        if sender.clone().ready().await.is_err() {
            let c = self.dial(key, cert).await?;
            (sender, budget) = (c.sender, c.budget);
        }
        let mut sender = sender.ready().await.map_err(|source| HboneError::Stream { addr, source })?;
        let (resp, send) = sender.send_request(req, false).map_err(|source| HboneError::Stream { addr, source })?;
        let resp = tokio::time::timeout(RESPONSE_TIMEOUT, resp)
            .await
            .map_err(|_| HboneError::ResponseTimeout { addr })?
            .map_err(|source| HboneError::Stream { addr, source })?;
        if resp.status() != StatusCode::OK {
            return Err(HboneError::Status { addr, status: resp.status() });
        }
        Ok(H2Stream { send, recv: resp.into_body(), budget })
    }

    fn slot(&self, key: &PoolKey) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(key.clone()).or_default().clone()
    }

    async fn checkout(&self, key: &PoolKey, cert: &WorkloadCert) -> Result<(SendRequest<Chunk>, Budget), HboneError> {
        let slot = self.slot(key);
        // Holding the slot lock while dialling makes concurrent first connections share one dial.
        let mut conns = slot.lock().await;
        let now = Instant::now();
        conns.retain(|c| c.alive.load(Ordering::Relaxed) && now.duration_since(c.last_used) < self.cfg.pool_idle_timeout);
        if let Some(i) = conns.iter().position(|c| c.key == *key && c.checkouts < c.max) {
            let c = &mut conns[i];
            c.checkouts += 1;
            c.last_used = now;
            let taken = (c.sender.clone(), c.budget.clone());
            if c.checkouts >= c.max {
                conns.swap_remove(i);
            }
            return Ok(taken);
        }
        if self.cfg.max_streams_per_conn <= 1 {
            // Nothing to share: concurrent dials must not queue behind each other.
            drop(conns);
            let c = self.dial(key, cert).await?;
            return Ok((c.sender, c.budget));
        }
        let mut c = self.dial(key, cert).await?;
        c.checkouts = 1;
        let taken = (c.sender.clone(), c.budget.clone());
        if c.checkouts < c.max {
            conns.push(c);
        }
        Ok(taken)
    }

    async fn dial(&self, key: &PoolKey, cert: &WorkloadCert) -> Result<PooledConn, HboneError> {
        let addr = key.dst;
        let tcp = socket::connect(self.sockets.as_ref(), *addr, None, self.connect_timeout)
            .await
            .map_err(|source| HboneError::Connect { addr, source })?;
        let connector = TlsConnector::from(cert.client_config(key.dst_ids.clone()));
        let tls = tokio::time::timeout(self.handshake_timeout, connector.connect(dummy_server_name(), tcp))
            .await
            .map_err(|_| HboneError::TlsTimeout(addr))?
            .map_err(|source| HboneError::Tls { addr, source })?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err(HboneError::Alpn(addr));
        }
        let mut tls = tls;
        tls.get_mut().1.set_buffer_limit(Some(crate::tls::SEND_BUFFER_LIMIT));
        let (sender, mut conn) = h2::client::Builder::new()
            .initial_window_size(self.cfg.stream_window)
            .initial_connection_window_size(self.cfg.connection_window)
            .max_frame_size(self.cfg.frame_size)
            .max_header_list_size(16 * 1024)
            .max_send_buffer_size(self.cfg.stream_window as usize)
            .initial_max_send_streams(self.cfg.max_streams_per_conn as usize)
            .enable_push(false)
            .handshake::<_, Chunk>(tls)
            .await
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
        slots.values().map(|s| s.try_lock().map(|v| v.len()).unwrap_or(0)).sum()
    }
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
        slots.retain(|_, slot| match slot.try_lock() {
            Ok(mut conns) => {
                conns.retain(|c| c.alive.load(Ordering::Relaxed) && now.duration_since(c.last_used) < p.cfg.pool_idle_timeout);
                !conns.is_empty()
            }
            Err(_) => true,
        });
    }
}
