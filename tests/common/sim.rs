//! Simulated-cluster helpers for the end-to-end tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ferry_harness::sim::{apps, observe, Sim, SimOptions};

/// One simulated cluster at a time per test binary: each runs four processes, and two cores
/// are plenty for one.
static LOCK: Mutex<()> = Mutex::new(());

pub struct TestSim {
    pub sim: Sim,
    _guard: MutexGuard<'static, ()>,
}

impl std::ops::Deref for TestSim {
    type Target = Sim;
    fn deref(&self) -> &Sim {
        &self.sim
    }
}

impl std::ops::DerefMut for TestSim {
    fn deref_mut(&mut self) -> &mut Sim {
        &mut self.sim
    }
}

/// Holds the one-cluster-at-a-time lock (for tests that run a cluster themselves).
pub fn cluster_lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn ferry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// The `shop` namespace in the mesh with `frontend` on node-1 and `backend` on node-2, each
/// with its own service account; scenarios append what they test.
pub const FRONTEND_BACKEND: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
{apiVersion: v1, kind: Pod, metadata: {name: frontend, namespace: shop, labels: {app: frontend}}, spec: {nodeName: node-1, serviceAccountName: frontend}}
---
{apiVersion: v1, kind: Pod, metadata: {name: backend, namespace: shop, labels: {app: backend}}, spec: {nodeName: node-2, serviceAccountName: backend}}
"#;

/// A waypoint declared as Istio's deployer declares it: Gateway `waypoint` of class
/// istio-waypoint in `shop`, and its Service at `vip`.
pub fn waypoint_gateway(vip: &str) -> String {
    format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: shop}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Service
metadata: {{name: waypoint, namespace: shop, labels: {{gateway.istio.io/managed: istio.io-mesh-controller}}}}
spec: {{selector: {{gateway.networking.k8s.io/gateway-name: waypoint}}, clusterIP: {vip}, ports: [{{name: mesh, port: 15008}}]}}
"#
    )
}

/// Three nodes: `front/client` on node-1, the `shop` waypoint's pod on node-2 (the waypoint at
/// 198.19.0.40), `shop/backend` (`app: backend`) on node-3; `shop` uses the waypoint.
/// Scenarios append the backend's Service and their policies.
pub fn three_node_waypoint() -> String {
    let waypoint = waypoint_gateway("198.19.0.40");
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: front, labels: {{istio.io/dataplane-mode: ambient}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}}}
---
{{apiVersion: v1, kind: ServiceAccount, metadata: {{name: client, namespace: front}}}}
---
{{apiVersion: v1, kind: ServiceAccount, metadata: {{name: backend, namespace: shop}}}}
---
{{apiVersion: v1, kind: ServiceAccount, metadata: {{name: waypoint, namespace: shop}}}}
{waypoint}---
{{apiVersion: v1, kind: Pod, metadata: {{name: client, namespace: front}}, spec: {{nodeName: node-1, serviceAccountName: client}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: waypoint-1, namespace: shop, labels: {{gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none}}}}
spec: {{nodeName: node-2, serviceAccountName: waypoint}}
---
{{apiVersion: v1, kind: Pod, metadata: {{name: backend, namespace: shop, labels: {{app: backend}}}}, spec: {{nodeName: node-3, serviceAccountName: backend}}}}
"#
    )
}

/// A started three-node cluster with [`three_node_waypoint`] and `scenario` applied (no
/// waypoint process yet: `spawn_waypoint` starts it).
pub fn waypoint_cluster(scenario: &str) -> TestSim {
    super::netns::require_root();
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut sim = Sim::new(SimOptions::new(ferry_bin(), 3)).expect("build the simulated cluster");
    sim.start().expect("start agents and proxies");
    sim.apply(&format!("{}{scenario}", three_node_waypoint())).expect("apply the scenario");
    TestSim { sim, _guard: guard }
}

/// A started two-node cluster with `scenario` applied and an echo server on 8080 in every pod.
pub fn cluster(scenario: &str) -> TestSim {
    super::netns::require_root();
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let bin = ferry_bin();
    assert!(bin.with_file_name("ferry-cni").exists(), "ferry-cni must be built next to ferry (cargo test --workspace builds it)");
    let mut sim = Sim::new(SimOptions::new(bin, 2)).expect("build the simulated cluster");
    sim.start().expect("start agents and proxies");
    sim.apply(scenario).expect("apply the scenario");
    for p in sim.pods.values() {
        apps::echo_server(&p.netns_path(), 8080).expect("echo server");
    }
    for p in sim.pods.values() {
        sim.wait_known(p.ip).expect("proxies learn every pod");
    }
    TestSim { sim, _guard: guard }
}

/// Round-trips a payload from pod `from` to `dst`; `None` when the connection failed.
pub fn roundtrip(sim: &Sim, from: (&str, &str), dst: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    apps::roundtrip(&sim.pod(from.0, from.1).netns_path(), dst, payload.to_vec()).ok()
}

/// The inbound access-log record on the node of the destination pod.
pub fn inbound_record(sim: &Sim, from: (&str, &str), to: (&str, &str), port: u16) -> Option<serde_json::Value> {
    let (src, dst) = (sim.pod(from.0, from.1), sim.pod(to.0, to.1));
    observe::find_record(&sim.nodes[dst.node].proxy_log(), "inbound", src.ip, dst.addr(port), Duration::from_secs(3))
}

/// A packet capture in `netns` on `iface`, stopped by `finish`.
pub struct Capture {
    child: std::process::Child,
    pub file: PathBuf,
}

impl Capture {
    pub fn start(sim: &Sim, netns: &str, iface: &str) -> Capture {
        let file = sim.work.join(format!("{iface}-{}.pcap", fastrand::u32(..)));
        let log = file.with_extension("log");
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", netns, "tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-s", "0", "-w"])
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("tcpdump must be installed (.ci/run installs it)");
        sim.cleanup.pid(child.id());
        ferry_harness::sim::wait(Duration::from_secs(10), "tcpdump", || {
            std::fs::read_to_string(&log).unwrap_or_default().contains("listening on")
        })
        .unwrap();
        Capture { child, file }
    }

    /// Stops the capture and returns the raw pcap bytes.
    pub fn finish(mut self) -> Vec<u8> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        std::fs::read(&self.file).unwrap()
    }
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Waits for `f`, with a message naming what was awaited.
pub fn eventually(what: &str, f: impl FnMut() -> bool) {
    ferry_harness::sim::wait(Duration::from_secs(20), what, f).unwrap_or_else(|e| panic!("{e}"));
}
