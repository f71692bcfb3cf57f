//! Open inbound connections and what authorized them, so a policy change also applies to them
//! (late rejection, invariant P5). A connection is registered before its first authorization
//! check, so a policy update that lands between the check and the registration cannot be
//! missed; every state change re-checks all of them and closes those now denied. Open
//! outbound connections are only listed (for `workloadState` in the config dump): they are
//! authorized at their destination, not here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::state::StateStore;
use ferry_core::addr::{ClientAddr, OrigDstAddr, ServerAddr};
use ferry_core::model::WorkloadUid;
use ferry_core::rbac::{evaluate, ConnAttrs, Decision};
use ferry_core::state::Snapshot;

struct Tracked {
    workload_uid: WorkloadUid,
    attrs: ConnAttrs,
    revoke: Arc<Revoke>,
}

/// Why a connection was revoked, and a small waiter for it (every open connection holds one).
#[derive(Default)]
struct Revoke {
    reason: Mutex<Option<String>>,
    notify: Notify,
}

#[derive(Default)]
pub(crate) struct ConnectionManager {
    conns: Mutex<HashMap<u64, Tracked>>,
    outbound: Mutex<HashMap<u64, (WorkloadUid, Outbound)>>,
    next: AtomicU64,
}

/// An open outbound connection of a served pod: who opened it, where it was going, where ferry
/// connected (the peer's HBONE port for a tunnel) and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Outbound {
    pub(crate) src: ClientAddr,
    pub(crate) original_dst: OrigDstAddr,
    pub(crate) actual_dst: ServerAddr,
    pub(crate) hbone: bool,
}

/// A listed outbound connection; dropping it removes it from the list.
pub(crate) struct OutboundTracking {
    id: u64,
    mgr: Arc<ConnectionManager>,
}

impl Drop for OutboundTracking {
    fn drop(&mut self) {
        self.mgr.outbound.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

/// A registered connection; dropping it deregisters.
pub(crate) struct Tracking {
    id: u64,
    mgr: Arc<ConnectionManager>,
    revoke: Arc<Revoke>,
}

impl Drop for Tracking {
    fn drop(&mut self) {
        self.mgr.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

impl Tracking {
    /// Resolves with the reason once a policy change denies this connection.
    pub(crate) async fn revoked(&mut self) -> String {
        let notified = self.revoke.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(r) = self.revoke.reason.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return r;
        }
        notified.await;
        self.revoke.reason.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default()
    }
}

impl ConnectionManager {
    pub(crate) fn track(self: &Arc<Self>, workload_uid: &WorkloadUid, attrs: ConnAttrs) -> Tracking {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let revoke = Arc::new(Revoke::default());
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Tracked { workload_uid: workload_uid.clone(), attrs, revoke: revoke.clone() });
        Tracking { id, mgr: self.clone(), revoke }
    }

    /// Lists an established outbound connection of the served workload `uid` until the
    /// returned guard is dropped.
    pub(crate) fn track_outbound(self: &Arc<Self>, uid: &WorkloadUid, conn: Outbound) -> OutboundTracking {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.outbound.lock().unwrap_or_else(|e| e.into_inner()).insert(id, (uid.clone(), conn));
        OutboundTracking { id, mgr: self.clone() }
    }

    /// The open outbound connections of the served workload `uid`, for the config dump.
    pub(crate) fn outbound_from(&self, uid: &str) -> Vec<Outbound> {
        let conns = self.outbound.lock().unwrap_or_else(|e| e.into_inner());
        conns.values().filter(|(u, _)| *u == uid).map(|(_, c)| c.clone()).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The open inbound connections to the workload `uid`, for the config dump.
    pub(crate) fn inbound_to(&self, uid: &str) -> Vec<ConnAttrs> {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.values().filter(|t| t.workload_uid == uid).map(|t| t.attrs.clone()).collect()
    }

    /// Re-authorizes every open connection against `snap`; returns how many were closed.
    pub(crate) fn recheck(&self, snap: &Snapshot) -> usize {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let mut closed = 0;
        for t in conns.values().filter(|t| t.revoke.reason.lock().unwrap_or_else(|e| e.into_inner()).is_none()) {
            let reason = match snap.workload_by_uid(t.workload_uid.as_str()) {
                None => Some("the destination workload is no longer in the state".to_string()),
                // A workload newly served through a waypoint keeps only its waypoint's connections.
                Some(w) => match ferry_core::route::waypoint_admits(snap, w, t.attrs.src_identity.as_ref()) {
                    Err(e) => Some(e.to_string()),
                    Ok(()) => match evaluate(snap, w, &t.attrs) {
                        Decision::Allow => None,
                        Decision::Deny { reason, .. } => Some(reason),
                    },
                },
            };
            if let Some(reason) = reason {
                tracing::info!(src = %t.attrs.src_ip, dst = %t.attrs.dst, identity = ?t.attrs.src_identity.as_ref().map(|i| i.to_string()), %reason, "closing an open connection: policy now denies it");
                *t.revoke.reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                t.revoke.notify.notify_waiters();
                closed += 1;
            }
        }
        if closed > 0 {
            metrics::counter!("ferry_authorization_late_rejections_total").increment(closed as u64);
        }
        closed
    }
}

/// Re-checks open connections on every state change, until the store goes away.
pub(crate) async fn watch(mgr: Arc<ConnectionManager>, store: StateStore) {
    let mut rx = store.subscribe();
    while rx.changed().await.is_ok() {
        let snap = rx.borrow_and_update().clone();
        if !mgr.is_empty() {
            mgr.recheck(&snap);
        }
    }
}
