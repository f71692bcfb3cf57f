//! Simulated nodes: the per-node paths and the `ferry agent` / `ferry proxy` processes that
//! run inside each node's network namespace.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{apps, cni, wait, Result, Sim, SimError};

pub struct Node {
    pub(crate) name: String,
    pub netns: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) subnet: String,
    pub(crate) dir: PathBuf,
    pub(crate) conflist: PathBuf,
    pub(crate) zds_socket: PathBuf,
    pub(crate) cni_socket: PathBuf,
    agent: Option<Child>,
    proxy: Option<Child>,
}

impl Node {
    pub(super) fn new(sim: &Sim, i: usize) -> Result<Node> {
        let dir = sim.work.join(format!("node-{i}"));
        Ok(Node {
            name: format!("node-{i}"),
            netns: format!("{}-n{i}", sim.id),
            ip: Sim::node_ip(i),
            subnet: format!("198.18.{i}.0/24"),
            conflist: dir.join("cni.conflist"),
            zds_socket: dir.join("zds.sock"),
            cni_socket: dir.join("cni.sock"),
            dir,
            agent: None,
            proxy: None,
        })
    }

    pub(super) fn conflist_json(&self, sim: &Sim) -> Value {
        cni::node_conflist(&self.subnet, &self.dir.join("ipam"), &self.cni_socket, &sim.state_dir)
    }

    pub fn conflist_value(&self) -> Result<Value> {
        let text = std::fs::read_to_string(&self.conflist)?;
        serde_json::from_str(&text).map_err(|e| SimError::Manifest(format!("{}: {e}", self.conflist.display())))
    }

    /// The node's address on the router's bridge, where other nodes reach its ports.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub(crate) fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.netns))
    }

    pub fn proxy_log(&self) -> PathBuf {
        self.dir.join("proxy.log")
    }

    pub fn agent_log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    pub(crate) fn proxy_running(&mut self) -> bool {
        self.proxy.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub(crate) fn proxy_pid(&self) -> Option<u32> {
        self.proxy.as_ref().map(Child::id)
    }

    pub(crate) fn has_proxy(&self) -> bool {
        self.proxy.is_some()
    }

    /// GET from the node proxy's admin port (inside the node's namespace).
    pub fn admin(&self, target: &str) -> Result<String> {
        self.http(15000, target)
    }

    /// The node proxy's config dump as JSON.
    pub fn dump(&self) -> Result<Value> {
        let body = self.admin("/config_dump")?;
        serde_json::from_str(&body).map_err(|e| SimError::Manifest(format!("config dump: {e}")))
    }

    pub fn metrics(&self) -> Result<String> {
        self.http(15020, "/metrics")
    }

    /// GET from the node agent's management port (metrics, health, `/debug/pods`).
    pub fn agent(&self, target: &str) -> Result<String> {
        self.http(15014, target)
    }

    /// Any request to one of the node's management ports (inside the node's namespace),
    /// whatever the status; returns (status, body).
    pub fn request(&self, port: u16, method: &str, target: &str) -> Result<(u16, String)> {
        let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        Ok(apps::http(&self.netns_path(), addr, method, target)?)
    }

    /// As `request`, with a binary body and reads that may wait up to `read_timeout`.
    pub fn request_bytes(&self, port: u16, target: &str, read_timeout: std::time::Duration) -> Result<(u16, Vec<u8>)> {
        let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        Ok(apps::http_bytes(&self.netns_path(), addr, "GET", target, read_timeout)?)
    }

    pub(crate) fn http(&self, port: u16, target: &str) -> Result<String> {
        let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        let (status, body) = apps::http(&self.netns_path(), addr, "GET", target)?;
        if status != 200 {
            return Err(SimError::Manifest(format!("{} {target}: HTTP {status}: {body}", self.name)));
        }
        Ok(body)
    }

    /// Whether the node proxy answers its readiness probe with 200.
    pub fn ready(&self) -> bool {
        self.http(15021, "/healthz/ready").is_ok()
    }
}

pub(super) fn log_file(path: &Path) -> Result<File> {
    Ok(OpenOptions::new().create(true).append(true).open(path)?)
}

/// `ip netns exec <ns> [taskset -c <cpu>] setpriv --pdeathsig KILL -- <bin>`: the child dies
/// with us.
pub(super) fn in_node(netns: &str, cpu: Option<usize>, bin: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns]);
    if let Some(cpu) = cpu {
        c.args(["taskset", "-c", &cpu.to_string()]);
    }
    c.args(["setpriv", "--pdeathsig", "KILL", "--"]).arg(bin);
    c.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").stdin(Stdio::null()).stdout(Stdio::null());
    c
}

impl Sim {
    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        let n = &self.nodes[i];
        let mut c = in_node(&n.netns, self.cpu_of(i), &self.opts.ferry_bin);
        c.arg("agent")
            .arg("--cluster-state")
            .arg(&self.state_dir)
            .arg("--cluster-state-poll")
            .arg(format!("{}ms", self.opts.poll.as_millis()))
            .args(["--node-name", &n.name])
            .arg("--zds-socket")
            .arg(&n.zds_socket)
            .arg("--cni-socket")
            .arg(&n.cni_socket)
            .arg("--state-dir")
            .arg(n.dir.join("agent"))
            .env("LOG_FORMAT", "json")
            .stderr(log_file(&n.agent_log())?);
        let child = c.spawn()?;
        self.cleanup.pid(child.id());
        let sock = n.cni_socket.clone();
        self.nodes[i].agent = Some(child);
        wait(Duration::from_secs(15), &format!("agent on {} to listen", self.nodes[i].name), || sock.exists())
    }

    pub fn start_proxy(&mut self, i: usize) -> Result<()> {
        let mut c = self.proxy_command(i)?;
        let n = &self.nodes[i];
        c.env("INPOD_UDS", &n.zds_socket)
            .env("PROXY_MODE", "shared")
            .env("NODE_NAME", &n.name)
            .env("LOG_FORMAT", "json")
            .envs(self.opts.proxy_env.iter().map(|(k, v)| (k, v)))
            // ztunnel logs to stdout, ferry to stderr: one log either way.
            .stdout(log_file(&n.proxy_log())?)
            .stderr(log_file(&n.proxy_log())?);
        let child = c.spawn()?;
        self.cleanup.pid(child.id());
        self.nodes[i].proxy = Some(child);
        let name = self.nodes[i].name.clone();
        let node = &mut self.nodes[i];
        wait(Duration::from_secs(20), &format!("proxy on {name} to become ready"), || node.ready() || !node.proxy_running())?;
        if !node.proxy_running() {
            let log = std::fs::read_to_string(node.proxy_log()).unwrap_or_default();
            return Err(SimError::Manifest(format!("proxy on {name} exited:\n{log}")));
        }
        Ok(())
    }

    /// The cluster state rendered as a ztunnel local-config file for an alternative proxy;
    /// rewritten (atomically) on every state change, so a proxy that watches it sees new pods.
    pub(crate) fn render_local_config(&self) -> Result<PathBuf> {
        let state = ferry_cni::cluster_state::load(&self.state_dir).map_err(|e| SimError::Manifest(e.to_string()))?;
        let input = ferry_core::k8s::translate::to_state(&state, &ferry_core::k8s::translate::TranslateOptions::default());
        let file = self.work.join("local-config.yaml");
        let tmp = self.work.join(".local-config.yaml.tmp");
        std::fs::write(&tmp, ferry_core::local_config::to_yaml(&input).map_err(SimError::Manifest)?)?;
        std::fs::rename(&tmp, &file)?;
        Ok(file)
    }

    fn proxy_command(&self, i: usize) -> Result<Command> {
        let cpu = self.cpu_of(i);
        let alt = self.opts.alt_proxy.as_ref().filter(|a| a.nodes.is_empty() || a.nodes.contains(&i));
        let Some(alt) = alt else {
            let mut c = in_node(&self.nodes[i].netns, cpu, &self.opts.ferry_bin);
            c.arg("proxy").envs(self.control_plane_env(i));
            return Ok(c);
        };
        let mut c = in_node(&self.nodes[i].netns, cpu, &alt.bin);
        c.args(&alt.args);
        if alt.control_plane {
            c.envs(self.control_plane_env(i));
        } else {
            let file = self.render_local_config()?;
            c.env("LOCAL_XDS_PATH", &file).env("XDS_ADDRESS", "").env("FAKE_CA", "true");
        }
        c.envs(alt.env.iter().map(|(k, v)| (k, v)));
        Ok(c)
    }

    /// `ferry proxy` (or the alternative proxy) on node `i`, pointed at the controller; or
    /// the alternative proxy reading the cluster state rendered as a ztunnel local config.
    /// Starts the controller, then the agent and the proxy on every node.
    pub fn start(&mut self) -> Result<()> {
        self.start_controller()?;
        for i in 0..self.nodes.len() {
            self.start_agent(i)?;
        }
        for i in 0..self.nodes.len() {
            self.start_proxy(i)?;
        }
        Ok(())
    }

    fn kill(child: &mut Option<Child>, sig: nix::sys::signal::Signal) -> Option<std::process::ExitStatus> {
        let mut c = child.take()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        c.wait().ok()
    }

    /// Kills the node proxy with `sig` and waits for it to exit.
    pub fn stop_proxy(&mut self, i: usize, sig: nix::sys::signal::Signal) -> Option<std::process::ExitStatus> {
        Self::kill(&mut self.nodes[i].proxy, sig)
    }

    pub fn stop_agent(&mut self, i: usize, sig: nix::sys::signal::Signal) -> Option<std::process::ExitStatus> {
        Self::kill(&mut self.nodes[i].agent, sig)
    }
}
