//! The state store: publishes the current [`Snapshot`] (built by `ferry_core::state`) to every
//! reader through a watch channel, and the local config file watcher that feeds it. Readers
//! take an `Arc<Snapshot>` and never see a half-applied update.

pub mod local;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::state::{Snapshot, StateInput};
use tokio::sync::watch;

/// Logs each policy note (a translation change, a policy failing closed) once per run; the
/// notes also stay visible in `/config_dump`.
#[derive(Default)]
pub(crate) struct PolicyNotes(HashSet<String>);

impl PolicyNotes {
    /// Logs the notes of `input` not logged before; returns how many it logged.
    pub(crate) fn log(&mut self, input: &StateInput) -> usize {
        let mut logged = 0;
        for p in &input.policies {
            for note in &p.notes {
                if self.0.insert(format!("{}: {note}", p.key())) {
                    tracing::warn!(policy = %p.key(), note = %note, "authorization policy translated for L4 enforcement");
                    logged += 1;
                }
            }
        }
        logged
    }
}

/// Publishes snapshots. Cheap to clone; every clone sees the same current snapshot.
#[derive(Clone)]
pub struct StateStore {
    tx: Arc<watch::Sender<Arc<Snapshot>>>,
}

impl Default for StateStore {
    fn default() -> Self {
        Self::new()
    }
}

impl StateStore {
    pub(crate) fn new() -> Self {
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        StateStore { tx: Arc::new(tx) }
    }

    pub fn from_input(input: StateInput) -> Self {
        let s = Self::new();
        s.replace(input);
        s
    }

    /// Replaces the whole state; returns the new version.
    pub(crate) fn replace(&self, input: StateInput) -> u64 {
        let version = self.tx.borrow().version + 1;
        self.tx.send_replace(Arc::new(Snapshot::build(input, version)));
        version
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Waits up to `timeout` for `find` to return something from a snapshot (state may still be
    /// catching up when a connection arrives).
    pub(crate) async fn wait_for<T>(&self, timeout: Duration, mut find: impl FnMut(&Snapshot) -> Option<T>) -> Option<T> {
        let mut rx = self.subscribe();
        let wait = async {
            loop {
                let found = find(&rx.borrow_and_update());
                if found.is_some() {
                    return found;
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Duration;

    use ferry_core::model::Workload;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn wait_for_sees_later_updates() {
        let store = StateStore::new();
        let s2 = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut w = Workload::new("u", "ns", "late");
            w.addresses = vec![ip("10.0.0.7")];
            s2.replace(StateInput { workloads: vec![w], ..Default::default() });
        });
        let found = store.wait_for(Duration::from_secs(5), |s| s.workload_by_addr("", ip("10.0.0.7")).cloned()).await;
        assert_eq!(found.unwrap().name, "late");
        assert!(store.wait_for(Duration::from_millis(10), |s| s.workload_by_uid("nope").cloned()).await.is_none());
    }
}
