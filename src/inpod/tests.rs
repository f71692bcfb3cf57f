//! The ZDS state machine against the semantics of protocols.md §3.4 (the cases upstream's
//! statemanager tests cover). Proxies bind ephemeral ports in real namespaces (root).

use std::fs::File;
use std::os::fd::OwnedFd;

use super::*;
use crate::net::Keepalive;
use crate::state::StateStore;
use crate::tls::ca::{self, InitOptions, LocalCa};
use crate::tls::certs::CertManager;
use crate::zds;
use ferry_core::ports::Ports;

struct Fixture {
    mgr: WorkloadManager,
    ready: Readiness,
    _dir: std::path::PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn fixture(ports: Ports) -> Fixture {
    let dir = std::env::temp_dir().join(format!("ferry-inpod-{}-{}", std::process::id(), fastrand::u32(..)));
    ca::init(
        &dir,
        &InitOptions { root_validity: Duration::from_secs(86400), ca_validity: Duration::from_secs(86400), organization: "t".into() },
    )
    .unwrap();
    let certs = CertManager::new(Arc::new(LocalCa::load(&dir).unwrap()), Duration::from_secs(3600));
    let mut cfg = crate::config::test_config();
    cfg.ports = ports;
    cfg.ipv6 = false;
    let inputs = ProxyInputs::new(Arc::new(cfg), StateStore::new(), certs);
    let ready = Readiness::new();
    let opts = SocketOptions { mark: None, reuse_port: true, keepalive: Keepalive::default() };
    Fixture { mgr: WorkloadManager::new(inputs, opts, ready.clone()), ready, _dir: dir }
}

fn ephemeral() -> Ports {
    Ports { outbound: 0, inbound_plaintext: 0, hbone: 0, ..Ports::default() }
}

fn netns_fd() -> OwnedFd {
    OwnedFd::from(File::open("/proc/self/ns/net").unwrap())
}

fn add(f: &mut Fixture, uid: &str) -> Reply {
    f.mgr.handle(zds::add(uid, uid, "ns", "sa"), vec![netns_fd()])
}

#[tokio::test]
async fn add_starts_one_proxy_and_is_idempotent() {
    let mut f = fixture(ephemeral());
    f.mgr.connected();
    assert_eq!(add(&mut f, "a"), Reply::Ack);
    assert_eq!(add(&mut f, "a"), Reply::Ack);
    assert_eq!(f.mgr.running(), 1);
    assert!(!f.ready.is_ready(), "not ready before the snapshot");
    assert_eq!(f.mgr.handle(zds::snapshot_sent(), vec![]), Reply::Ack);
    assert!(f.ready.is_ready());
}

#[tokio::test]
async fn snapshot_reconciles_and_keep_protects() {
    let mut f = fixture(ephemeral());
    f.mgr.connected();
    for uid in ["a", "b", "c"] {
        assert_eq!(add(&mut f, uid), Reply::Ack);
    }
    f.mgr.handle(zds::snapshot_sent(), vec![]);
    // A new session (agent restart): only "a" is re-added and "b" kept; "c" is gone.
    f.mgr.disconnected();
    assert!(!f.ready.is_ready(), "disconnected means not ready");
    f.mgr.connected();
    assert_eq!(add(&mut f, "a"), Reply::Ack);
    assert_eq!(f.mgr.handle(zds::keep("b"), vec![]), Reply::Ack);
    assert_eq!(f.mgr.handle(zds::snapshot_sent(), vec![]), Reply::Ack);
    let mut uids: Vec<_> = f.mgr.proxies.keys().cloned().collect();
    uids.sort();
    assert_eq!(uids, ["a", "b"]);
}

#[tokio::test]
async fn del_before_snapshot_is_removed_by_reconciliation() {
    let mut f = fixture(ephemeral());
    f.mgr.connected();
    add(&mut f, "a");
    assert_eq!(f.mgr.handle(zds::del("a"), vec![]), Reply::Ack);
    assert_eq!(f.mgr.running(), 1, "before the snapshot, Del only unmarks");
    f.mgr.handle(zds::snapshot_sent(), vec![]);
    assert_eq!(f.mgr.running(), 0);
    assert_eq!(f.mgr.handle(zds::del("never-seen"), vec![]), Reply::Ack, "unknown uid is still acked");
}

#[tokio::test]
async fn add_delete_add_after_snapshot() {
    let mut f = fixture(ephemeral());
    f.mgr.connected();
    f.mgr.handle(zds::snapshot_sent(), vec![]);
    add(&mut f, "a");
    assert_eq!(f.mgr.handle(zds::del("a"), vec![]), Reply::Ack);
    assert_eq!(f.mgr.running(), 0, "after the snapshot, Del stops at once");
    add(&mut f, "a");
    assert_eq!(f.mgr.running(), 1);
}

#[tokio::test]
async fn start_failure_is_pending_and_retried() {
    // Occupy the outbound port without SO_REUSEPORT, as an old proxy might.
    let blocker = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = blocker.local_addr().unwrap().port();
    let mut f = fixture(Ports { outbound: port, inbound_plaintext: 0, hbone: 0, ..Ports::default() });
    f.mgr.connected();
    let r = add(&mut f, "a");
    assert!(matches!(&r, Reply::Nack(e) if e.starts_with("failure to start proxy : ")), "{r:?}");
    f.mgr.handle(zds::snapshot_sent(), vec![]);
    assert!(!f.ready.is_ready(), "pending work keeps the proxy not ready");
    assert_eq!(f.ready.pending(), [READINESS_COMPONENT]);
    assert!(f.mgr.dump()["workloadManager"]["pending"][0]["error"].as_str().unwrap().contains("failure to start proxy"));
    f.mgr.retry_pending();
    assert_eq!(f.mgr.running(), 0);
    drop(blocker);
    f.mgr.retry_pending();
    assert_eq!(f.mgr.running(), 1);
    assert!(f.ready.is_ready());
}

#[tokio::test]
async fn protocol_violations() {
    let mut f = fixture(ephemeral());
    f.mgr.connected();
    let no_info = WorkloadRequest { payload: Some(Payload::Add(AddWorkload { uid: "x".into(), workload_info: None })) };
    assert!(matches!(f.mgr.handle(no_info, vec![netns_fd()]), Reply::Fatal(_)));
    assert!(matches!(f.mgr.handle(zds::add("a", "a", "ns", "sa"), vec![]), Reply::Reconnect(_)), "Add needs its descriptor");
    assert!(matches!(f.mgr.handle(zds::add("a", "a", "ns", "sa"), vec![netns_fd(), netns_fd()]), Reply::Reconnect(_)));
    assert!(matches!(f.mgr.handle(zds::del("a"), vec![netns_fd()]), Reply::Reconnect(_)), "only Add may carry a descriptor");
    let not_netns = OwnedFd::from(File::open("/etc/hostname").unwrap());
    assert!(matches!(f.mgr.handle(zds::add("a", "a", "ns", "sa"), vec![not_netns]), Reply::Nack(_)));
    assert_eq!(f.mgr.running(), 0);
    f.mgr.handle(zds::snapshot_sent(), vec![]);
    assert!(matches!(f.mgr.handle(zds::keep("a"), vec![]), Reply::Fatal(_)), "Keep after the snapshot");
    assert!(matches!(f.mgr.handle(zds::snapshot_sent(), vec![]), Reply::Fatal(_)), "second SnapshotSent");
}
