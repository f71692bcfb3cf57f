//! Accepting connections without being exhausted by them (invariant P10). Every listener ferry
//! opens goes through [`accept`], which backs off on errors such as `EMFILE` instead of
//! spinning, logs the first error of a burst (and the recovery) rather than every one, and
//! counts them; and through a [`Gate`], which caps open connections in total and per source
//! address. A connection over a cap is accepted and closed at once (shed, counted), so the
//! backlog never fills with connections nobody will serve and a client learns it at once.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one "shed" warning per listener in this interval.
const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Accepts one connection from `accept`, retrying errors with exponential backoff (10 ms to
/// 1 s). `listener` names it in logs and in `ferry_accept_errors_total`.
pub(crate) async fn accept<T, F, Fut>(listener: &'static str, mut accept: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    let mut failures = 0u32;
    loop {
        match accept().await {
            Ok(conn) => {
                if failures > 0 {
                    tracing::info!(listener, failures, "accepting again after errors");
                }
                return conn;
            }
            Err(e) => {
                metrics::counter!("ferry_accept_errors_total", "listener" => listener).increment(1);
                if failures == 0 {
                    tracing::warn!(
                        listener,
                        error = %e,
                        "accept failed; backing off (further errors are counted in ferry_accept_errors_total, not logged)"
                    );
                }
                failures = failures.saturating_add(1);
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}

fn backoff(failures: u32) -> Duration {
    BACKOFF_MIN.saturating_mul(1 << failures.min(10).saturating_sub(1)).min(BACKOFF_MAX)
}

/// A cap on the open connections of one listener (or a set of listeners sharing it): in total
/// and per source IP.
pub(crate) struct Gate {
    name: &'static str,
    total: Arc<Semaphore>,
    per_source: usize,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
    last_shed_log: Mutex<Option<Instant>>,
}

/// An admitted connection's place; dropping it frees the place.
pub(crate) struct Admitted {
    _total: OwnedSemaphorePermit,
    source: IpAddr,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut s = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = s.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                s.remove(&self.source);
            }
        }
    }
}

impl Gate {
    pub(crate) fn new(name: &'static str, total: usize, per_source: usize) -> Arc<Gate> {
        Arc::new(Gate {
            name,
            total: Arc::new(Semaphore::new(total.clamp(1, Semaphore::MAX_PERMITS))),
            per_source: per_source.max(1),
            sources: Arc::default(),
            last_shed_log: Mutex::new(None),
        })
    }

    /// A place for a connection from `source`, or `None` (the caller closes it) when a cap is
    /// reached; shedding is counted in `ferry_connections_shed_total` and logged at most once
    /// per ten seconds.
    pub(crate) fn admit(&self, source: IpAddr) -> Option<Admitted> {
        let Ok(total) = self.total.clone().try_acquire_owned() else {
            self.shed("limit", source);
            return None;
        };
        let mut s = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let n = s.entry(source).or_insert(0);
        if *n >= self.per_source {
            drop(s);
            self.shed("per_source_limit", source);
            return None;
        }
        *n += 1;
        Some(Admitted { _total: total, source, sources: self.sources.clone() })
    }

    fn shed(&self, reason: &'static str, source: IpAddr) {
        metrics::counter!("ferry_connections_shed_total", "listener" => self.name, "reason" => reason).increment(1);
        let mut last = self.last_shed_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= SHED_LOG_INTERVAL) {
            *last = Some(Instant::now());
            tracing::warn!(
                listener = self.name,
                reason,
                %source,
                per_source = self.per_source,
                "connection refused: too many open connections (further refusals in the next 10s are only counted)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_in_total_and_per_source_and_free_on_drop() {
        let g = Gate::new("test", 3, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = g.admit(a).unwrap();
        let _a2 = g.admit(a).unwrap();
        assert!(g.admit(a).is_none(), "per-source cap");
        let b1 = g.admit(b).unwrap();
        assert!(g.admit(b).is_none(), "total cap");
        drop(b1);
        assert!(g.admit(b).is_some(), "a freed place is reusable");
        drop(a1);
        assert!(g.admit(a).is_some());
    }

    #[test]
    fn backoff_grows_to_a_second() {
        assert_eq!(backoff(1), Duration::from_millis(10));
        assert_eq!(backoff(2), Duration::from_millis(20));
        assert_eq!(backoff(30), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn errors_are_retried_not_returned() {
        let mut n = 0;
        let got = accept("test", || {
            n += 1;
            let r = if n < 3 { Err(io::Error::from_raw_os_error(24)) } else { Ok(n) };
            async move { r }
        })
        .await;
        assert_eq!(got, 3);
    }
}
