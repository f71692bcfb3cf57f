//! `ferry agent` on the Kubernetes API (root only; fails without): no `--cluster-state`, a
//! kubeconfig pointing at the fake API server. The agent lists and watches only its node's
//! pods (the field selector the server received) and Namespaces; a pod of an ambient namespace
//! on its node is enrolled at CNI ADD (rules in a real network namespace, handed to a minimal
//! ZDS peer standing in for the node proxy) and then carries `ambient.istio.io/redirection:
//! enabled` on the server (a merge patch of `pods/status`, as istio-cni's); removing the
//! namespace label releases it and the annotation is removed (patched to null), retried with
//! backoff past two failed writes.

mod common;
#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;

use std::io::{BufRead, BufReader, IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netns::{require_root, Ns, Proc};
use common::TempDir;
use fake_apiserver::FakeApiServer;
use ferry::proto::workload::zds::{workload_request, workload_response, Ack, Version, WorkloadRequest, WorkloadResponse, ZdsHello};
use nix::sys::socket::{connect, recvmsg, send, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use prost::Message;
use serde_json::{json, Value};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const ANNOTATION: &str = "ambient.istio.io/redirection";

fn namespace(labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "uid": "ns-shop", "labels": labels}})
}

fn pod(name: &str, node: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
           "spec": {"nodeName": node, "serviceAccountName": "web", "containers": [{"name": "app", "image": "web:1"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// Waits (bounded) for `f`, polling.
fn wait(what: &str, log: &Path, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        let log = std::fs::read_to_string(log).unwrap_or_default();
        assert!(Instant::now() < deadline, "timed out waiting for {what}; agent log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A ZDS peer in place of the node proxy: says hello, acknowledges every request and records
/// it (`add <uid>`, `del <uid>`, `snapshot`).
fn fake_proxy(socket_path: PathBuf, seen: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        let fd: OwnedFd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).unwrap();
        connect(fd.as_raw_fd(), &UnixAddr::new(&socket_path).unwrap()).unwrap();
        send(fd.as_raw_fd(), &ZdsHello { version: Version::V1 as i32 }.encode_to_vec(), MsgFlags::empty()).unwrap();
        let ack = WorkloadResponse { payload: Some(workload_response::Payload::Ack(Ack { error: String::new() })) }.encode_to_vec();
        loop {
            let mut buf = [0u8; 1024];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let Ok(msg) = recvmsg::<()>(fd.as_fd().as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()) else { return };
            let len = msg.bytes;
            // Received descriptors (the pod's netns) are closed with the message.
            for c in msg.cmsgs().into_iter().flatten() {
                if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                    for f in fds {
                        let _ = nix::unistd::close(f);
                    }
                }
            }
            if len == 0 {
                return;
            }
            let req = WorkloadRequest::decode(&buf[..len]).unwrap();
            let what = match req.payload {
                Some(workload_request::Payload::Add(a)) => format!("add {}", a.uid),
                Some(workload_request::Payload::Del(d)) => format!("del {}", d.uid),
                Some(workload_request::Payload::Keep(k)) => format!("keep {}", k.uid),
                Some(workload_request::Payload::SnapshotSent(_)) => "snapshot".to_string(),
                None => "empty".to_string(),
            };
            seen.lock().unwrap().push(what);
            if send(fd.as_raw_fd(), &ack, MsgFlags::empty()).is_err() {
                return;
            }
        }
    });
}

/// One CNI request line to the agent; its answer.
fn cni(socket: &Path, request: Value) -> Value {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut line = serde_json::to_vec(&request).unwrap();
    line.push(b'\n');
    s.write_all(&line).unwrap();
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("agent answered {answer:?}: {e}"))
}

fn annotation(o: &Value) -> Option<&str> {
    o["metadata"]["annotations"][ANNOTATION].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_on_the_api_enrolls_its_nodes_pod_and_annotates_it() {
    require_root();
    let server = FakeApiServer::start().await;
    server.apply(namespace(json!({"istio.io/dataplane-mode": "ambient"})));
    server.apply(pod("web-1", "node-1", "10.244.1.10"));
    server.apply(pod("web-9", "node-2", "10.244.2.10"));
    let dir = TempDir::new("agent-api");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
    let (zds, cni_sock, log) = (dir.path().join("zds.sock"), dir.path().join("cni.sock"), dir.path().join("agent.log"));
    let child = Command::new(FERRY)
        .args(["agent", "--node-name", "node-1", "--metrics-addr", "127.0.0.1:0"])
        .arg("--zds-socket")
        .arg(&zds)
        .arg("--cni-socket")
        .arg(&cni_sock)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("KUBECONFIG", &kubeconfig)
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _agent = Proc(child);
    let ready = || std::fs::read_to_string(&log).unwrap_or_default().contains("ferry agent ready");
    tokio::task::block_in_place(|| wait("the agent to be ready", &log, ready));
    for r in server.requests("Pod") {
        assert_eq!(r.query.get("fieldSelector").map(String::as_str), Some("spec.nodeName=node-1"), "{r:?}");
    }
    assert!(!server.requests("Namespace").is_empty() && server.requests("Service").is_empty());

    let seen = Arc::new(Mutex::new(Vec::new()));
    fake_proxy(zds.clone(), seen.clone());
    let snapshot = || seen.lock().unwrap().contains(&"snapshot".to_string());
    tokio::task::block_in_place(|| wait("the ZDS snapshot", &log, snapshot));

    let ns = Ns::new("agentapi");
    ns.exec(
        "ip link add eth0 type veth peer name peer0 && ip link set eth0 up && ip link set peer0 up && ip addr add 10.244.1.10/24 dev eth0",
    );
    let event = json!({"command": "ADD", "container_id": "c1", "netns": format!("/var/run/netns/{}", ns.name), "ifname": "eth0",
                       "pod_namespace": "shop", "pod_name": "web-1", "pod_uid": "uid-web-1", "ips": ["10.244.1.10"]});
    let answer = tokio::task::block_in_place(|| cni(&cni_sock, event));
    assert_eq!((answer["ok"].as_bool(), answer["enrolled"].as_bool()), (Some(true), Some(true)), "{answer}");
    assert!(seen.lock().unwrap().contains(&"add uid-web-1".to_string()));

    let annotated = server.wait_object("Pod", "shop", "web-1", "annotated", |o| annotation(o) == Some("enabled")).await;
    assert_eq!(annotated["spec"]["nodeName"], "node-1", "the merge patch kept the rest of the pod");
    let first = &server.pod_patches()[0];
    assert_eq!((first.content_type.as_str(), first.status), ("application/merge-patch+json", 200));
    assert_eq!(first.subresource, "status", "written through pods/status, as istio-cni does");
    assert_eq!(first.patch, json!({"metadata": {"annotations": {ANNOTATION: "enabled"}}}));
    assert!(server.pod_patches().iter().all(|p| p.name == "web-1"), "only the enrolled pod is written");

    // The API server refuses the next two writes: the removal is retried until it lands.
    server.fail_patches(2);
    server.apply(namespace(json!({})));
    server.wait_object("Pod", "shop", "web-1", "released (annotation removed)", |o| annotation(o).is_none()).await;
    let last = server.pod_patches().last().cloned().unwrap();
    assert_eq!(last.patch, json!({"metadata": {"annotations": {ANNOTATION: null}}}), "removed with a null merge patch");
    let statuses: Vec<u16> = server.pod_patches().iter().skip(1).map(|p| p.status).collect();
    assert_eq!(statuses, [500, 500, 200], "two failed writes retried, then the removal");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("cannot write the pod's").count(), 2, "each failed write is logged:\n{text}");
    let released = || seen.lock().unwrap().contains(&"del uid-web-1".to_string());
    tokio::task::block_in_place(|| wait("the ZDS delete", &log, released));
}
