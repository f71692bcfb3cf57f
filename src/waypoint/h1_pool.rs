//! The waypoint's upstream HTTP/1.1 connections, reused across requests and clients per
//! endpoint (as Envoy pools per upstream host): a request takes an idle connection to the
//! endpoint it was balanced to, or dials a new HBONE stream; its connection goes back to the
//! pool when the response head arrives and is taken again once hyper reports it ready (the
//! previous response's body done).
//!
//! Bounds: at most [`MAX_PER_ENDPOINT`] pooled connections per endpoint (more are used for one
//! request and closed); a connection idle for `FERRY_WAYPOINT_UPSTREAM_IDLE_TIMEOUT` is closed
//! by the sweep; a closed one is dropped when seen. A request whose reused connection closed
//! before the request was written is sent once more on a new connection (hyper hands the
//! request back only when nothing of it went out, so nothing is sent twice).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;

use super::record::Counted;

use ferry_core::identity::Identity;

/// Pooled connections per endpoint.
pub(crate) const MAX_PER_ENDPOINT: usize = 128;

/// An endpoint as the pool knows it: where, and the identity it must present.
pub(crate) type Key = (SocketAddr, Identity);

struct Pooled {
    sender: SendRequest<Counted>,
    since: Instant,
}

#[derive(Default)]
pub(crate) struct H1Pool {
    idle: Mutex<HashMap<Key, Vec<Pooled>>>,
}

impl H1Pool {
    /// A pool swept every `idle_timeout / 2` (connections unused that long are closed).
    pub(crate) fn start(idle_timeout: Duration) -> Arc<H1Pool> {
        let pool = Arc::new(H1Pool::default());
        tokio::spawn(sweep(Arc::downgrade(&pool), idle_timeout));
        pool
    }

    /// A connection to `key` ready for a request, if one is pooled.
    pub(crate) fn take(&self, key: &Key) -> Option<SendRequest<Counted>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        list.retain(|p| !p.sender.is_closed());
        let ready = list.iter().position(|p| p.sender.is_ready()).map(|i| list.swap_remove(i).sender);
        if list.is_empty() {
            idle.remove(key);
        }
        ready
    }

    /// Keeps `sender` for the next request to `key` (dropped when the endpoint has enough).
    pub(crate) fn put(&self, key: Key, sender: SendRequest<Counted>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(key).or_default();
        if list.len() < MAX_PER_ENDPOINT {
            list.push(Pooled { sender, since: Instant::now() });
        }
    }

    fn expire(&self, older_than: Duration) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain(|p| !p.sender.is_closed() && p.since.elapsed() < older_than);
            !list.is_empty()
        });
    }

    /// Pooled connections (for tests and the dump).
    pub(crate) fn len(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).values().map(Vec::len).sum()
    }
}

async fn sweep(pool: Weak<H1Pool>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        match pool.upgrade() {
            Some(p) => p.expire(idle_timeout),
            None => return,
        }
    }
}
