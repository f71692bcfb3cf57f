//! The one drain primitive every listener and connection uses.
//!
//! A [`DrainTrigger`] owns the signal; every [`DrainWatch`] clone is a participant that keeps
//! the drain waiting while it lives. Draining has two phases: *graceful* (listeners stop
//! accepting, HBONE servers send GOAWAY, open connections continue) and, at the deadline,
//! *forced* (every remaining connection is closed). The trigger returns once all watches are
//! dropped or the forced phase has been signalled and a grace period passed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};

/// The forced phase as a flag plus a `Notify`: every open connection waits on it, and a
/// `Notified` future is a fraction of the size of a `watch` wait.
#[derive(Default)]
struct Forced {
    set: AtomicBool,
    notify: Notify,
}

impl Forced {
    fn fire(&self) {
        self.set.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum DrainState {
    Running,
    Draining,
    Forced,
}

pub struct DrainTrigger {
    state: watch::Sender<DrainState>,
    forced: Arc<Forced>,
    done_rx: mpsc::Receiver<()>,
    done_tx: Option<mpsc::Sender<()>>,
}

#[derive(Clone)]
pub struct DrainWatch {
    state: watch::Receiver<DrainState>,
    forced: Arc<Forced>,
    _alive: mpsc::Sender<()>,
}

pub fn new() -> (DrainTrigger, DrainWatch) {
    let (state, rx) = watch::channel(DrainState::Running);
    let (done_tx, done_rx) = mpsc::channel(1);
    let forced = Arc::new(Forced::default());
    let w = DrainWatch { state: rx, forced: forced.clone(), _alive: done_tx.clone() };
    (DrainTrigger { state, forced, done_rx, done_tx: Some(done_tx) }, w)
}

impl DrainTrigger {
    /// Drains gracefully for up to `deadline`, then forces. Returns true if every participant
    /// finished before the deadline.
    pub async fn drain(mut self, deadline: Duration) -> bool {
        self.done_tx = None;
        self.state.send_replace(DrainState::Draining);
        let clean = tokio::time::timeout(deadline, self.done_rx.recv()).await.is_ok();
        if !clean {
            self.state.send_replace(DrainState::Forced);
            self.forced.fire();
            // Forced participants close at once; give their tasks a moment to unwind.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.done_rx.recv()).await;
        }
        clean
    }

    /// Forces every participant to close now (e.g. a deleted pod's proxy).
    pub(crate) async fn force(mut self) {
        self.done_tx = None;
        self.state.send_replace(DrainState::Forced);
        self.forced.fire();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.done_rx.recv()).await;
    }
}

impl Drop for DrainTrigger {
    /// Without its trigger nobody could ever force the participants closed: force them now.
    fn drop(&mut self) {
        self.forced.fire();
    }
}

impl DrainWatch {
    async fn reached(&self, s: DrainState) {
        let mut rx = self.state.clone();
        // An error means the trigger is gone: treat that as forced.
        let _ = rx.wait_for(|cur| *cur >= s).await;
    }

    /// Resolves when draining starts (listeners stop accepting).
    pub(crate) async fn draining(&self) {
        self.reached(DrainState::Draining).await
    }

    /// Resolves when open connections must be closed now.
    pub(crate) async fn forced(&self) {
        let notified = self.forced.notify.notified();
        tokio::pin!(notified);
        // Registered before the check, so a fire between the two is not missed.
        notified.as_mut().enable();
        if self.forced.set.load(Ordering::SeqCst) {
            return;
        }
        notified.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_participants() {
        let (trigger, watch) = new();
        let w2 = watch.clone();
        let conn = tokio::spawn(async move {
            w2.draining().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(w2);
        });
        drop(watch);
        assert!(trigger.drain(Duration::from_secs(5)).await);
        conn.await.unwrap();
    }

    #[tokio::test]
    async fn drain_forces_after_deadline() {
        let (trigger, watch) = new();
        let forced = tokio::spawn(async move {
            watch.forced().await;
            true
        });
        assert!(!trigger.drain(Duration::from_millis(20)).await);
        assert!(forced.await.unwrap());
    }
}
