//! In-pod (shared) mode: one node proxy serves every enrolled pod, with a listener set opened
//! inside each pod's network namespace. [`WorkloadManager`] applies ZDS messages with the
//! semantics of protocols.md §3.4 (idempotent Add, Keep before the snapshot, immediate Del,
//! reconciliation on SnapshotSent, pending retries); [`client`] speaks ZDS to the node agent.
//!
//! Readiness ("workload proxy manager") holds until connected, snapshot received and nothing
//! pending.

pub mod client;

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::config::WorkloadInfo;
use crate::config_dump::{workload_state, PodState};
use crate::drain::{self, DrainTrigger};
use crate::net::{NetnsSockets, SocketOptions};
use crate::proxy::{ProxyInputs, WorkloadProxy};
use crate::readiness::{BlockReady, Readiness};
use crate::zds::{workload_request::Payload, AddWorkload, WorkloadRequest};
use ferry_core::identity::Identity;
use ferry_sys::Netns;

pub(crate) const READINESS_COMPONENT: &str = "workload proxy manager";

/// What to answer a ZDS request with.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    Ack,
    /// NACK; the connection stays.
    Nack(String),
    /// NACK, then close and reconnect (unreadable message, descriptor rules broken).
    Reconnect(String),
    /// NACK, then stop the in-pod manager for good (protocol violation).
    Fatal(String),
}

struct Running {
    info: WorkloadInfo,
    identity: Identity,
    netns: Arc<Netns>,
    trigger: DrainTrigger,
    since: Instant,
}

struct Pending {
    info: WorkloadInfo,
    netns: Arc<Netns>,
    error: String,
}

pub(crate) struct WorkloadManager {
    inputs: Arc<ProxyInputs>,
    opts: SocketOptions,
    proxies: HashMap<String, Running>,
    pending: HashMap<String, Pending>,
    seen: HashSet<String>,
    snapshot_done: bool,
    connected: bool,
    readiness: Readiness,
    block: Option<BlockReady>,
}

impl WorkloadManager {
    pub(crate) fn new(inputs: Arc<ProxyInputs>, opts: SocketOptions, readiness: Readiness) -> Self {
        let block = Some(readiness.block(READINESS_COMPONENT));
        WorkloadManager {
            inputs,
            opts,
            proxies: HashMap::new(),
            pending: HashMap::new(),
            seen: HashSet::new(),
            snapshot_done: false,
            connected: false,
            readiness,
            block,
        }
    }

    /// A new ZDS session: forget the session state, keep the running proxies.
    pub(crate) fn connected(&mut self) {
        self.connected = true;
        self.seen.clear();
        self.snapshot_done = false;
        self.update_readiness();
    }

    pub(crate) fn disconnected(&mut self) {
        self.connected = false;
        self.update_readiness();
    }

    pub(crate) fn handle(&mut self, req: WorkloadRequest, fds: Vec<OwnedFd>) -> Reply {
        let is_add = matches!(req.payload, Some(Payload::Add(_)));
        if (is_add && fds.len() != 1) || (!is_add && !fds.is_empty()) {
            return Reply::Reconnect(format!("failure to read message : expected {} descriptor(s), got {}", is_add as u8, fds.len()));
        }
        let reply = match req.payload {
            Some(Payload::Add(a)) => self.add(a, fds.into_iter().next()),
            Some(Payload::Keep(k)) => self.keep(k.uid),
            Some(Payload::Del(d)) => self.del(&d.uid),
            Some(Payload::SnapshotSent(_)) => self.snapshot(),
            None => Reply::Reconnect("failure to read message : empty or unknown request".into()),
        };
        self.update_readiness();
        reply
    }

    fn add(&mut self, a: AddWorkload, fd: Option<OwnedFd>) -> Reply {
        let Some(wi) = a.workload_info else {
            return Reply::Fatal(format!("AddWorkload for {} without workload_info", a.uid));
        };
        let info = WorkloadInfo { namespace: wi.namespace, name: wi.name, service_account: wi.service_account };
        let netns = match fd.map(Netns::from_fd) {
            Some(Ok(n)) => Arc::new(n),
            Some(Err(e)) => return Reply::Nack(format!("failure to read message : netns of {} is unusable: {e}", a.uid)),
            None => return Reply::Reconnect("failure to read message : AddWorkload without a descriptor".into()),
        };
        if !self.snapshot_done {
            self.seen.insert(a.uid.clone());
        }
        if let Some(r) = self.proxies.get(&a.uid) {
            if r.netns.id() == netns.id() {
                return Reply::Ack;
            }
            tracing::info!(uid = %a.uid, "pod sandbox was re-created; replacing its proxy");
            self.stop(&a.uid);
        }
        self.pending.remove(&a.uid);
        match self.start(&a.uid, info.clone(), netns.clone()) {
            Ok(()) => Reply::Ack,
            Err(error) => {
                let msg = format!("failure to start proxy : {error}");
                self.pending.insert(a.uid.clone(), Pending { info, netns, error: msg.clone() });
                Reply::Nack(msg)
            }
        }
    }

    fn keep(&mut self, uid: String) -> Reply {
        if self.snapshot_done {
            return Reply::Fatal(format!("KeepWorkload for {uid} after SnapshotSent"));
        }
        self.seen.insert(uid);
        Reply::Ack
    }

    fn del(&mut self, uid: &str) -> Reply {
        self.pending.remove(uid);
        if self.snapshot_done {
            self.stop(uid);
        } else {
            // Reconciliation at SnapshotSent removes the running proxy.
            self.seen.remove(uid);
        }
        Reply::Ack
    }

    fn snapshot(&mut self) -> Reply {
        if self.snapshot_done {
            return Reply::Fatal("second SnapshotSent on one connection".into());
        }
        let stale: Vec<String> = self.proxies.keys().filter(|u| !self.seen.contains(*u)).cloned().collect();
        for uid in stale {
            tracing::info!(%uid, "pod not in the agent's snapshot; removing its proxy");
            self.stop(&uid);
        }
        self.pending.retain(|uid, _| self.seen.contains(uid));
        self.snapshot_done = true;
        Reply::Ack
    }

    /// Retries proxies that failed to start (every 5 s while connected).
    pub(crate) fn retry_pending(&mut self) {
        let pending: Vec<(String, Pending)> = self.pending.drain().collect();
        for (uid, p) in pending {
            if let Err(e) = self.start(&uid, p.info.clone(), p.netns.clone()) {
                self.pending.insert(uid, Pending { error: format!("failure to start proxy : {e}"), ..p });
            }
        }
        self.update_readiness();
    }

    fn start(&mut self, uid: &str, info: WorkloadInfo, netns: Arc<Netns>) -> Result<(), String> {
        let sockets = Arc::new(NetnsSockets { netns: netns.clone(), opts: self.opts.clone() });
        let (px, listeners) = WorkloadProxy::bind(self.inputs.clone(), info.clone(), sockets).map_err(|e| e.to_string())?;
        let identity = self.identity_of(&info)?;
        self.inputs.certs.prefetch(&identity);
        let (trigger, watch) = drain::new();
        tokio::spawn(px.run(listeners, watch));
        tracing::info!(%uid, workload = %info, %identity, "proxy started in the pod's network namespace");
        metrics::counter!("workload_manager_proxies_started_total").increment(1);
        self.proxies.insert(uid.to_string(), Running { info, identity, netns, trigger, since: Instant::now() });
        Ok(())
    }

    /// The identity the pod's certificate carries: its workload's trust domain when state
    /// knows it, else the configured one.
    fn identity_of(&self, info: &WorkloadInfo) -> Result<Identity, String> {
        let snap = self.inputs.state.snapshot();
        let td = snap
            .find_workload(&info.namespace, &info.name, Some(&info.service_account))
            .and_then(|w| w.identity().ok())
            .map(|id| id.trust_domain().to_string())
            .unwrap_or_else(|| self.inputs.cfg.trust_domain.clone());
        Identity::new(&td, &info.namespace, &info.service_account).map_err(|e| e.to_string())
    }

    /// Closes the pod's listeners and connections now.
    fn stop(&mut self, uid: &str) {
        if let Some(r) = self.proxies.remove(uid) {
            tracing::info!(%uid, workload = %r.info, "stopping the pod's proxy");
            metrics::counter!("workload_manager_proxies_stopped_total").increment(1);
            if !self.proxies.values().any(|o| o.identity == r.identity) {
                self.inputs.certs.forget(&r.identity);
            }
            tokio::spawn(r.trigger.force());
        }
    }

    fn update_readiness(&mut self) {
        let ready = self.connected && self.snapshot_done && self.pending.is_empty();
        match (ready, self.block.is_some()) {
            (true, true) => self.block = None,
            (false, false) => self.block = Some(self.readiness.block(READINESS_COMPONENT)),
            _ => {}
        }
        metrics::gauge!("workload_manager_active_proxy_count").set(self.proxies.len() as f64);
        metrics::gauge!("workload_manager_pending_proxy_count").set(self.pending.len() as f64);
    }

    /// Takes every pod proxy for a graceful drain (process shutdown).
    pub(crate) fn take_all(&mut self) -> Vec<DrainTrigger> {
        self.pending.clear();
        self.proxies.drain().map(|(_, r)| r.trigger).collect()
    }

    pub(crate) fn dump(&self) -> serde_json::Value {
        let mut running: Vec<_> = self
            .proxies
            .iter()
            .map(|(uid, r)| {
                json!({"uid": uid, "namespace": r.info.namespace, "name": r.info.name, "serviceAccount": r.info.service_account,
                       "identity": r.identity.to_string(), "netns": {"dev": r.netns.id().0, "inode": r.netns.id().1}, "uptimeSeconds": r.since.elapsed().as_secs()})
            })
            .collect();
        running.sort_by(|a, b| a["uid"].as_str().cmp(&b["uid"].as_str()));
        let pending: Vec<_> =
            self.pending.iter().map(|(uid, p)| json!({"uid": uid, "workload": p.info.to_string(), "error": p.error})).collect();
        let mut pods: Vec<PodState<'_>> = self
            .proxies
            .iter()
            .map(|(uid, r)| PodState {
                uid: uid.clone(),
                up: true,
                info: &r.info,
                trust_domain: Some(r.identity.trust_domain().to_string()),
            })
            .collect();
        pods.extend(self.pending.iter().map(|(uid, p)| PodState { uid: uid.clone(), up: false, info: &p.info, trust_domain: None }));
        let snap = self.inputs.state.snapshot();
        json!({
            "workloadManager": {"connected": self.connected, "snapshotReceived": self.snapshot_done, "running": running, "pending": pending},
            "workloadState": workload_state(&pods, &snap, &self.inputs.conns),
        })
    }

    #[cfg(test)]
    pub(crate) fn running(&self) -> usize {
        self.proxies.len()
    }
}

/// How long to wait between pending retries.
pub(crate) const RETRY_INTERVAL: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests;
