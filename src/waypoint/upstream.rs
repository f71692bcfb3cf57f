//! The waypoint's upstream HTTP/2 connections: one h2c (prior knowledge) connection per
//! endpoint, carried in one HBONE stream to it and shared by every HTTP/2 request the waypoint
//! sends there, so a request costs a stream, not a dial (the point of HTTP/2).
//!
//! Bounded: at most [`MAX_CONNECTIONS`] entries (the least recently used one is released for a
//! new one); an entry unused for `FERRY_HBONE_IDLE_TIMEOUT` is released (by [`Upstreams::sweep`],
//! run as often, and at every look-up); a
//! connection that closed or failed is dropped and re-dialled by the next request (and a request
//! it closed under before taking it is sent once on the new one, [`super::h2`]). Releasing an
//! entry never cuts a request: the connection closes once its last stream ends. An endpoint's
//! entry is keyed by its address and the identities its certificate must name, so a changed
//! identity never reuses a connection verified for the old one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::io::H2Io;
use super::record::Counted;
use super::stream::{dial, setup_places, Target, WaypointError};
use super::Waypoint;
use crate::hbone::server::ConnInfo;
use ferry_core::identity::Identity;
use ferry_core::waypoint::Endpoint;

/// Most upstream HTTP/2 connections kept open at once.
pub(crate) const MAX_CONNECTIONS: usize = 1024;
/// Largest response header list an upstream may send (as the downstream limit).
const MAX_HEADER_LIST: u32 = 64 * 1024;

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    target: SocketAddr,
    hbone: SocketAddr,
    identities: Vec<Identity>,
}

impl Key {
    fn of(ep: &Endpoint) -> Self {
        Key { target: ep.target, hbone: ep.hbone_addr, identities: ep.identities.clone() }
    }
}

struct Entry {
    sender: SendRequest<Counted>,
    used: Instant,
}

#[derive(Default)]
pub(crate) struct Upstreams {
    conns: Mutex<HashMap<Key, Entry>>,
}

impl Upstreams {
    /// A sender on the endpoint's connection, dialled (HBONE stream, then h2c handshake) when
    /// there is none or the last one closed.
    pub(crate) async fn sender(
        &self,
        wp: &Waypoint,
        conn: &ConnInfo,
        t: &Target,
        ep: &Endpoint,
    ) -> Result<SendRequest<Counted>, WaypointError> {
        let key = Key::of(ep);
        let idle = wp.cfg.limits.hbone_idle_timeout;
        if let Some(s) = self.reuse(&key, idle) {
            return Ok(s);
        }
        let _places = setup_places(wp, conn).await?;
        let stream = dial(wp, None, t, ep).await?;
        let sender = handshake(H2Io::from_stream(stream), ep.target).await?;
        self.insert(key, sender.clone());
        Ok(sender)
    }

    /// Releases the connections that closed or were unused for `idle`, keeping every
    /// connection the waypoint holds open (and its HBONE stream) in use or recent.
    pub(crate) fn sweep(&self, idle: Duration) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|_, e| !e.sender.is_closed() && e.used.elapsed() < idle);
    }

    fn reuse(&self, key: &Key, idle: Duration) -> Option<SendRequest<Counted>> {
        self.sweep(idle);
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let e = conns.get_mut(key)?;
        e.used = Instant::now();
        Some(e.sender.clone())
    }

    fn insert(&self, key: Key, sender: SendRequest<Counted>) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns.len() >= MAX_CONNECTIONS && !conns.contains_key(&key) {
            let oldest = conns.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                conns.remove(&k);
            }
        }
        // Two requests that dialled at once: the later connection replaces the earlier, which
        // closes when its request ends.
        conns.insert(key, Entry { sender, used: Instant::now() });
    }
}

async fn handshake(io: H2Io, upstream: SocketAddr) -> Result<SendRequest<Counted>, WaypointError> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new()).max_header_list_size(MAX_HEADER_LIST);
    let (sender, c) = b.handshake(TokioIo::new(io)).await.map_err(|e| WaypointError::Upstream { upstream, reason: e.to_string() })?;
    tokio::spawn(async move {
        if let Err(e) = c.await {
            tracing::debug!(%upstream, error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}
