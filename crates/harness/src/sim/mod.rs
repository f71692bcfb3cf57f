//! A simulated cluster on one machine, for tests, benchmarks and the demo: N nodes as network
//! namespaces behind a router namespace, pods as namespaces wired by the real CNI plugins
//! (`bridge` + `host-local`, chained with `ferry-cni`) exactly as a container runtime calls
//! them, the kubelet's part (pod IPs written into the cluster state), and `ferry agent` +
//! `ferry proxy` running in every node.
//!
//! Addresses live in 198.18.0.0/15: pods of node i in 198.18.i.0/24, node uplinks in
//! 198.19.254.0/24, service VIPs in 198.19.0.0/24. Nothing touches the machine's own network
//! namespace; everything created is registered with [`Cleanup`], which runs on drop, on
//! error and (in the demo) on Ctrl-C. Child processes die with the harness (`setpriv
//! --pdeathsig`).

pub mod apps;
pub mod cni;
mod control;
mod nodes;
pub mod observe;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use ferry_core::k8s::objects::Pod;
pub use nodes::Node;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Cni(#[from] cni::CniFailure),
    #[error("{0}")]
    Manifest(String),
    #[error("timed out: {0}")]
    Timeout(String),
}

pub(crate) type Result<T> = std::result::Result<T, SimError>;

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub(crate) nodes: usize,
    /// The `ferry` binary (agent, proxy, CA).
    pub(crate) ferry_bin: PathBuf,
    /// Directories searched for CNI plugins (`ferry-cni`, `bridge`, `host-local`).
    pub cni_dirs: Vec<PathBuf>,
    /// Cluster-state poll interval for agents and proxies.
    pub(crate) poll: Duration,
    /// Extra environment for every node proxy.
    pub(crate) proxy_env: Vec<(String, String)>,
    /// Extra environment for waypoints started with [`Sim::spawn_waypoint`].
    pub(crate) waypoint_env: Vec<(String, String)>,
    /// Extra environment for the controller (its settings, e.g. `FERRY_WAYPOINT_UNAVAILABLE`).
    pub(crate) controller_env: Vec<(String, String)>,
    /// Keep the work directory (logs) after cleanup.
    pub(crate) keep_work_dir: bool,
    /// Pin node i's processes (agent, proxy, and pods' processes started with
    /// [`Sim::spawn_in_pod`]) to CPU `(i - 1) % cpus`.
    pub(crate) pin_cpus: bool,
    /// Run this ZDS-speaking node proxy instead of `ferry proxy` (benchmark comparisons).
    pub(crate) alt_proxy: Option<AltProxy>,
}

/// Another node proxy implementation: started with the in-pod environment ztunnel reads
/// (`PROXY_MODE`, `INPOD_UDS`, `NODE_NAME`) plus `env`, and either pointed at the controller
/// exactly as ferry's proxies are (`control_plane`), or given `LOCAL_XDS_PATH` with the
/// cluster state rendered in ztunnel's local-config schema, `XDS_ADDRESS=""`, `FAKE_CA=true`.
#[derive(Clone, Debug)]
pub(crate) struct AltProxy {
    pub(crate) bin: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) control_plane: bool,
    /// The nodes (0-based) that run it instead of `ferry proxy`; empty: every node.
    pub(crate) nodes: Vec<usize>,
}

impl SimOptions {
    /// Defaults that find `ferry-cni` next to `ferry_bin` and the Debian plugins.
    pub fn new(ferry_bin: PathBuf, nodes: usize) -> Self {
        let dir = ferry_bin.parent().map(Path::to_path_buf).unwrap_or_default();
        SimOptions {
            nodes,
            ferry_bin,
            cni_dirs: vec![dir, "/usr/lib/cni".into(), "/opt/cni/bin".into()],
            poll: Duration::from_millis(100),
            proxy_env: Vec::new(),
            waypoint_env: Vec::new(),
            controller_env: Vec::new(),
            keep_work_dir: false,
            pin_cpus: false,
            alt_proxy: None,
        }
    }
}

/// Everything a simulation created, undone in reverse order. Shared so a signal handler can
/// run it too; running it twice is harmless.
#[derive(Default)]
pub struct Cleanup {
    netns: Mutex<Vec<String>>,
    pids: Mutex<Vec<u32>>,
    dirs: Mutex<Vec<PathBuf>>,
}

impl Cleanup {
    fn netns(&self, name: &str) {
        self.netns.lock().unwrap_or_else(|e| e.into_inner()).push(name.to_string());
    }
    pub fn pid(&self, pid: u32) {
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
    }
    /// Ctrl-C or SIGTERM: undo everything, then exit. Handlers (not a blocked signal mask) so
    /// the processes the simulation starts keep default signal behaviour.
    pub(crate) fn on_signals(self: Arc<Self>) {
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else { return };
                let name = tokio::select! { _ = int.recv() => "SIGINT", _ = term.recv() => "SIGTERM" };
                eprintln!("\n  {name}: cleaning up");
                self.run();
                std::process::exit(130);
            });
        });
    }

    pub(crate) fn run(&self) {
        for pid in self.pids.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
        // Give killed processes a moment to release their sockets in the namespaces.
        std::thread::sleep(Duration::from_millis(50));
        for ns in self.netns.lock().unwrap_or_else(|e| e.into_inner()).drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
        for d in self.dirs.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A pod the harness created.
#[derive(Clone, Debug)]
pub struct SimPod {
    pub uid: String,
    pub node: usize,
    pub netns: String,
    pub ip: IpAddr,
    container_id: String,
    cni_result: Value,
}

impl SimPod {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.netns))
    }
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, port)
    }
}

pub struct Sim {
    pub(crate) id: String,
    pub opts: SimOptions,
    pub work: PathBuf,
    pub state_dir: PathBuf,
    pub(crate) ca_dir: PathBuf,
    pub router: String,
    pub nodes: Vec<Node>,
    pub pods: BTreeMap<String, SimPod>,
    pub cleanup: Arc<Cleanup>,
    pub(crate) controller: control::Controller,
}

pub fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh").arg("-c").arg(cmd).output()?;
    if !out.status.success() {
        return Err(SimError::Command { cmd: cmd.to_string(), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

impl Sim {
    /// Builds the router and node namespaces, the CA and the cluster-state directory.
    pub fn new(opts: SimOptions) -> Result<Sim> {
        if !nix::unistd::geteuid().is_root() {
            return Err(SimError::Manifest("the simulated cluster needs root (network namespaces, nftables)".into()));
        }
        let id = format!("fs{}x{}", std::process::id() % 100_000, fastrand::u16(..1000));
        let work = std::env::temp_dir().join(format!("ferry-sim-{id}"));
        let cleanup = Arc::new(Cleanup::default());
        if !opts.keep_work_dir {
            cleanup.dirs.lock().unwrap_or_else(|e| e.into_inner()).push(work.clone());
        }
        let (state_dir, ca_dir) = (work.join("cluster-state"), work.join("ca"));
        std::fs::create_dir_all(&state_dir)?;
        let mut sim = Sim {
            id: id.clone(),
            opts,
            work,
            state_dir,
            ca_dir,
            router: format!("{id}-router"),
            nodes: Vec::new(),
            pods: BTreeMap::new(),
            cleanup,
            controller: control::Controller { child: None },
        };
        sim.build_network()?;
        let out = Command::new(&sim.opts.ferry_bin).args(["ca", "init"]).arg(&sim.ca_dir).output()?;
        if !out.status.success() {
            return Err(SimError::Command { cmd: "ferry ca init".into(), stderr: String::from_utf8_lossy(&out.stderr).into() });
        }
        sim.issue_tokens()?;
        Ok(sim)
    }

    fn add_netns(&self, name: &str) -> Result<()> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh(&format!("ip netns add {name}"))?;
        self.cleanup.netns(name);
        sh(&format!("ip -n {name} link set lo up"))?;
        Ok(())
    }

    fn build_network(&mut self) -> Result<()> {
        let r = self.router.clone();
        self.add_netns(&r)?;
        sh(&format!("ip -n {r} link add br0 type bridge && ip -n {r} addr add 198.19.254.1/24 dev br0 && ip -n {r} link set br0 up"))?;
        sh(&format!("ip netns exec {r} sysctl -qw net.ipv4.ip_forward=1"))?;
        for i in 1..=self.opts.nodes {
            let node = Node::new(self, i)?;
            self.add_netns(&node.netns)?;
            let (n, tmp) = (&node.netns, format!("{}v{i}", self.id));
            sh(&format!("ip link add {tmp}a type veth peer name {tmp}b"))?;
            sh(&format!("ip link set {tmp}a netns {r} name n{i} && ip link set {tmp}b netns {n} name eth0"))?;
            sh(&format!("ip -n {r} link set n{i} master br0 up && ip -n {n} link set eth0 up"))?;
            sh(&format!("ip -n {n} addr add {}/24 dev eth0 && ip -n {n} route add default via 198.19.254.1", node.ip))?;
            sh(&format!("ip -n {r} route add 198.18.{i}.0/24 via {}", node.ip))?;
            sh(&format!("ip netns exec {n} sysctl -qw net.ipv4.ip_forward=1"))?;
            std::fs::create_dir_all(&node.dir)?;
            std::fs::write(&node.conflist, node.conflist_json(self).to_string())?;
            self.nodes.push(node);
        }
        Ok(())
    }

    fn node_index(&self, name: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| SimError::Manifest(format!("no node named {name:?} in this simulation")))
    }

    /// Writes one object into the cluster state (atomically: agents and proxies never read a
    /// half-written file), as `.json` when the text is JSON (what the harness itself writes)
    /// and `.yaml` otherwise.
    pub fn write_object(&self, kind: &str, namespace: &str, name: &str, text: &str) -> Result<()> {
        let ext = if text.trim_start().starts_with('{') { "json" } else { "yaml" };
        let [json, yaml] = self.object_files(kind, namespace, name);
        let (file, other) = if ext == "json" { (json, yaml) } else { (yaml, json) };
        let tmp = self.state_dir.join(format!(".{}.tmp", fastrand::u64(..)));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &file)?;
        match std::fs::remove_file(other) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        self.state_changed()
    }

    fn object_files(&self, kind: &str, namespace: &str, name: &str) -> [PathBuf; 2] {
        let base = format!("{}-{}-{}", kind.to_lowercase(), namespace, name);
        [self.state_dir.join(format!("{base}.json")), self.state_dir.join(format!("{base}.yaml"))]
    }

    fn state_changed(&self) -> Result<()> {
        if self.opts.alt_proxy.as_ref().is_some_and(|a| !a.control_plane) {
            self.render_local_config()?;
        }
        Ok(())
    }

    pub fn delete_object(&self, kind: &str, namespace: &str, name: &str) -> Result<()> {
        for file in self.object_files(kind, namespace, name) {
            match std::fs::remove_file(file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        self.state_changed()
    }

    /// Applies manifests: pods are created on their node through CNI, everything else is
    /// written into the cluster state.
    pub fn apply(&mut self, yaml: &str) -> Result<()> {
        let docs = ferry_core::k8s::manifests::parse_documents(yaml, "scenario").map_err(|e| SimError::Manifest(e.to_string()))?;
        for n in docs.namespaces.values() {
            self.write_object("Namespace", "", &n.metadata.name, &to_yaml("v1", "Namespace", n)?)?;
        }
        for s in docs.service_accounts.values() {
            self.write_object("ServiceAccount", &s.metadata.namespace, &s.metadata.name, &to_yaml("v1", "ServiceAccount", s)?)?;
        }
        for s in docs.services.values() {
            self.write_object("Service", &s.metadata.namespace, &s.metadata.name, &to_yaml("v1", "Service", s)?)?;
        }
        for (key, v) in &docs.other {
            let text = serde_json::to_string_pretty(v).map_err(|e| SimError::Manifest(e.to_string()))?;
            let mut parts = key.splitn(3, '/');
            let (kind, ns, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            self.write_object(kind, ns, name, &text)?;
        }
        for p in docs.pods.values() {
            self.create_pod(p.clone())?;
        }
        Ok(())
    }

    /// Creates a pod like the kubelet does: API object first, then the sandbox and CNI ADD,
    /// then the pod IP in the status.
    pub(crate) fn create_pod(&mut self, mut pod: Pod) -> Result<SimPod> {
        let node = self.node_index(&pod.spec.node_name)?;
        let (ns, name) = (pod.metadata.namespace.clone(), pod.metadata.name.clone());
        if pod.metadata.uid.is_empty() {
            pod.metadata.uid = format!("{:08x}-{:04x}-4000-8000-{:012x}", fastrand::u32(..), fastrand::u16(..), fastrand::u64(..1 << 48));
        }
        pod.status = Default::default();
        self.write_object("Pod", &ns, &name, &to_yaml("v1", "Pod", &pod)?)?;
        let netns = format!("{}-p-{}-{}", self.id, ns, name);
        self.add_netns(&netns)?;
        let call = self.cni_call(&pod, &netns);
        let result = match cni::add(&self.nodes[node].netns, &self.opts.cni_dirs, &self.nodes[node].conflist_value()?, &call) {
            Ok(r) => r,
            Err(e) => {
                // A failed sandbox is torn down, as the runtime does before retrying.
                let _ = cni::del(&self.nodes[node].netns, &self.opts.cni_dirs, &self.nodes[node].conflist_value()?, &call, None);
                let _ = sh(&format!("ip netns del {netns}"));
                return Err(e.into());
            }
        };
        let ip = *cni::result_ips(&result).first().ok_or_else(|| SimError::Manifest(format!("CNI gave pod {ns}/{name} no IP")))?;
        pod.status.pod_ip = ip.to_string();
        pod.status.phase = "Running".into();
        self.write_object("Pod", &ns, &name, &to_yaml("v1", "Pod", &pod)?)?;
        let sp = SimPod { uid: pod.metadata.uid.clone(), node, netns, ip, container_id: call.container_id, cni_result: result };
        self.pods.insert(format!("{ns}/{name}"), sp.clone());
        Ok(sp)
    }

    fn cni_call(&self, pod: &Pod, netns: &str) -> cni::CniCall {
        cni::CniCall {
            container_id: format!("{:032x}", fastrand::u128(..)),
            netns: PathBuf::from(format!("/var/run/netns/{netns}")),
            ifname: "eth0".into(),
            args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID={}",
                pod.metadata.namespace, pod.metadata.name, pod.metadata.uid
            ),
        }
    }

    /// Deletes a pod like the kubelet: CNI DEL, sandbox removed, API object removed.
    pub(crate) fn delete_pod(&mut self, ns: &str, name: &str) -> Result<()> {
        self.delete_pod_with(ns, name, true)
    }

    /// Like [`Sim::delete_pod`]; with `remove_sandbox = false` the pod's namespace stays (and
    /// is removed at cleanup) so a test can inspect what CNI DEL left in it.
    pub fn delete_pod_with(&mut self, ns: &str, name: &str, remove_sandbox: bool) -> Result<()> {
        let pod = self.pods.remove(&format!("{ns}/{name}")).ok_or_else(|| SimError::Manifest(format!("no pod {ns}/{name}")))?;
        let del = self.cni_del(ns, name, &pod, true, pod.netns_path());
        if remove_sandbox {
            let _ = sh(&format!("ip netns del {}", pod.netns));
        }
        self.delete_object("Pod", ns, name)?;
        del
    }

    /// Repeats the CNI DEL of a sandbox that is gone, as a runtime does after a timeout or its
    /// own restart (DEL must be idempotent): no netns path, as the spec allows once the runtime
    /// removed it (the harness reuses a pod name's netns name, so the old path may now be a
    /// new sandbox's). `with_uid = false` leaves K8S_POD_UID out, as some runtimes do.
    pub fn repeat_del(&self, ns: &str, name: &str, old: &SimPod, with_uid: bool) -> Result<()> {
        self.cni_del(ns, name, old, with_uid, PathBuf::new())
    }

    fn cni_del(&self, ns: &str, name: &str, pod: &SimPod, with_uid: bool, netns: PathBuf) -> Result<()> {
        let n = &self.nodes[pod.node];
        let uid = if with_uid { format!(";K8S_POD_UID={}", pod.uid) } else { String::new() };
        let call = cni::CniCall {
            container_id: pod.container_id.clone(),
            netns,
            ifname: "eth0".into(),
            args: format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}{uid}"),
        };
        Ok(cni::del(&n.netns, &self.opts.cni_dirs, &n.conflist_value()?, &call, Some(&pod.cni_result))?)
    }

    pub fn pod(&self, ns: &str, name: &str) -> &SimPod {
        &self.pods[&format!("{ns}/{name}")]
    }

    /// Sets (or with `None` removes) a label on a namespace object in the cluster state.
    pub fn label_namespace(&self, ns: &str, key: &str, value: Option<&str>) -> Result<()> {
        let mut n = ferry_core::k8s::objects::Namespace::default();
        let [file, _] = self.object_files("Namespace", "", ns);
        if let Ok(text) = std::fs::read_to_string(&file) {
            n = ferry_core::yaml::from_str(&text).map_err(|e| SimError::Manifest(e.to_string()))?;
        }
        n.metadata.name = ns.to_string();
        match value {
            Some(v) => n.metadata.labels.insert(key.to_string(), v.to_string()),
            None => n.metadata.labels.remove(key),
        };
        self.write_object("Namespace", "", ns, &to_yaml("v1", "Namespace", &n)?)
    }

    /// Waits until every running node proxy's state has `ip` as a workload address.
    pub fn wait_known(&self, ip: IpAddr) -> Result<()> {
        let needle = format!("\"{ip}\"");
        wait(Duration::from_secs(20), &format!("every node proxy to learn {ip}"), || {
            self.nodes.iter().filter(|n| n.has_proxy()).all(|n| n.admin("/config_dump").map(|b| b.contains(&needle)).unwrap_or(false))
        })
    }

    /// Creates an empty sandbox namespace registered for cleanup (for tests that drive CNI by
    /// hand).
    pub fn sandbox(&self, name: &str) -> Result<String> {
        let netns = format!("{}-s-{name}", self.id);
        self.add_netns(&netns)?;
        Ok(netns)
    }

    /// Whether ferry's redirection (nftables table and fwmark rule) is present in a namespace.
    pub fn redirection_state(netns: &str) -> Result<(bool, bool)> {
        let tables = sh(&format!("ip netns exec {netns} nft list tables"))?;
        let rules = sh(&format!("ip -n {netns} rule show"))?;
        Ok((tables.contains(ferry_core::ports::INPOD_NFT_TABLE), rules.contains("fwmark 0x111/0xfff")))
    }

    /// The CPU node `node` (0-based) is pinned to, when pinning.
    pub(crate) fn cpu_of(&self, node: usize) -> Option<usize> {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        self.opts.pin_cpus.then_some(node % cpus)
    }

    /// Starts `ferry <args>` inside a pod's namespace (pinned with its node), stdout piped.
    pub(crate) fn spawn_in_pod(&self, ns: &str, name: &str, args: &[String]) -> Result<std::process::Child> {
        self.spawn_program_in_pod(ns, name, &self.opts.ferry_bin.clone(), args)
    }

    /// Runs `ferry waypoint` for Gateway `gateway` inside pod `ns/name` (a pod the agent does not
    /// capture: `istio.io/dataplane-mode: none`), as a waypoint Deployment would: with a token
    /// for its pod's service account, its state, policies and certificate from the controller;
    /// its log in `waypoint-<name>.log` of the work directory.
    pub fn spawn_waypoint(&self, ns: &str, name: &str, gateway: &str) -> Result<std::process::Child> {
        self.spawn_waypoint_with(ns, name, gateway, &[])
    }

    /// [`Sim::spawn_waypoint`] with more `ferry waypoint` arguments (`--response-timeout 5s`).
    pub fn spawn_waypoint_with(&self, ns: &str, name: &str, gateway: &str, extra: &[&str]) -> Result<std::process::Child> {
        let pod = self.pod(ns, name);
        let sa = self.pods_state_service_account(ns, name);
        let log = nodes::log_file(&self.work.join(format!("waypoint-{name}.log")))?;
        // As a waypoint pod on a cluster: its own service account's token, its state,
        // policies and certificate from the controller.
        let token = self.issue_token(&format!("{ns}/{sa}/{name}/uid-{name}"), None)?;
        let token_path = self.work.join(format!("waypoint-{name}.token"));
        std::fs::write(&token_path, token)?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &pod.netns]);
        if let Some(cpu) = self.cpu_of(pod.node) {
            c.args(["taskset", "-c", &cpu.to_string()]);
        }
        c.args(["setpriv", "--pdeathsig", "KILL", "--"]).arg(&self.opts.ferry_bin).arg("waypoint");
        c.args(["--gateway", gateway, "--namespace", ns, "--service-account", &sa, "--address", &pod.ip.to_string()]);
        c.args(extra);
        c.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").env("LOG_FORMAT", "json");
        c.envs(self.controller_env_for(&token_path, name, ns, pod.ip)).envs(self.opts.waypoint_env.iter().cloned());
        c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(log);
        let child = c.spawn()?;
        self.cleanup.pid(child.id());
        Ok(child)
    }

    fn pods_state_service_account(&self, ns: &str, name: &str) -> String {
        ferry_cni::cluster_state::load(&self.state_dir)
            .ok()
            .and_then(|s| s.pod(ns, name).map(|p| p.service_account().to_string()))
            .unwrap_or_else(|| "default".into())
    }

    /// Starts `program <args>` inside a pod's namespace (pinned with its node), stdout piped.
    pub fn spawn_program_in_pod(&self, ns: &str, name: &str, program: &Path, args: &[String]) -> Result<std::process::Child> {
        let pod = self.pod(ns, name);
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &pod.netns]);
        if let Some(cpu) = self.cpu_of(pod.node) {
            c.args(["taskset", "-c", &cpu.to_string()]);
        }
        c.args(["setpriv", "--pdeathsig", "KILL", "--"]).arg(program).args(args);
        c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
        let child = c.spawn()?;
        self.cleanup.pid(child.id());
        Ok(child)
    }

    pub(crate) fn node_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 254, 10 + i as u8)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.cleanup.run();
    }
}

/// A manifest for the cluster state, written as JSON (which every YAML reader reads).
fn to_yaml<T: serde::Serialize>(api: &str, kind: &str, obj: &T) -> Result<String> {
    let mut v = serde_json::to_value(obj).map_err(|e| SimError::Manifest(e.to_string()))?;
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("apiVersion".into(), api.into());
        m.insert("kind".into(), kind.into());
    }
    serde_json::to_string_pretty(&v).map_err(|e| SimError::Manifest(e.to_string()))
}

/// Polls `f` every 50 ms until it holds or `limit` passes.
pub fn wait(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(SimError::Timeout(what.to_string()))
}
