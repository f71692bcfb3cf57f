//! The simulated cluster's control plane: one `ferry controller` in the router namespace
//! (reachable from every node at 198.19.254.1:15012) serving WDS and the CA API to every node
//! proxy, as istiod does on a real cluster. It reads the same cluster-state directory the
//! harness writes. Every caller is authenticated: the harness issues each node proxy a token
//! bound to that node's `istio-system/ztunnel` pod (written into the cluster state), and the
//! controller checks tokens through the same code path as a Kubernetes TokenReview.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use super::nodes::{in_node, log_file};
use super::{apps, wait, Result, Sim, SimError};

/// The controller's address on the router's bridge.
pub(crate) const CONTROLLER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 254, 1);
pub(crate) const XDS_PORT: u16 = 15012;
/// The name on the controller's serving certificate, which proxies verify.
pub(crate) const CONTROLLER_NAME: &str = "ferry-controller.istio-system.svc";

pub(crate) struct Controller {
    pub(crate) child: Option<Child>,
}

impl Sim {
    pub(crate) fn token_file(&self) -> PathBuf {
        self.work.join("tokens")
    }

    /// A node proxy's token file (its projected `istio-token`).
    pub(crate) fn node_token(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("istio-token")
    }

    pub fn controller_log(&self) -> PathBuf {
        self.work.join("controller.log")
    }

    /// Issues one token per node, bound to that node's ztunnel pod, and writes the pods.
    pub(crate) fn issue_tokens(&self) -> Result<()> {
        let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}});
        self.write_object("Namespace", "", "istio-system", &ns.to_string())?;
        let mut lines = String::from("# token namespace/service-account/pod/uid, issued by the simulated cluster\n");
        for (i, n) in self.nodes.iter().enumerate() {
            let (pod, uid, token) = (format!("ztunnel-{}", n.name), format!("ztunnel-uid-{i}"), format!("{:032x}", fastrand::u128(..)));
            // No pod IP: the proxy runs in the node's namespace, and a workload with the
            // node's address would be mistaken for traffic from the node.
            let obj = serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": "istio-system", "uid": uid, "labels": {"app": "ztunnel"}},
                "spec": {"nodeName": n.name, "serviceAccountName": "ztunnel", "hostNetwork": true},
                "status": {"phase": "Running"},
            });
            self.write_object("Pod", "istio-system", &pod, &obj.to_string())?;
            lines.push_str(&format!("{token} istio-system/ztunnel/{pod}/{uid}\n"));
            // No newline, as the kubelet writes a projected token: ztunnel sends the file's
            // bytes as they are, and a newline is not valid in its authorization header.
            std::fs::write(self.node_token(i), &token)?;
        }
        std::fs::write(self.token_file(), lines)?;
        Ok(())
    }

    /// Issues another token for `account` (`namespace/service-account[/pod/uid]`), for
    /// `audiences` (None: `istio-ca`), as a TokenReview would accept it.
    pub fn issue_token(&self, account: &str, audiences: Option<&str>) -> Result<String> {
        use std::io::Write;
        let token = format!("{:032x}", fastrand::u128(..));
        let aud = audiences.map(|a| format!(" audiences={a}")).unwrap_or_default();
        let mut f = std::fs::OpenOptions::new().append(true).open(self.token_file())?;
        writeln!(f, "{token} {account}{aud}")?;
        Ok(token)
    }

    /// A node proxy's token, as issued.
    pub fn node_token_value(&self, i: usize) -> Result<String> {
        Ok(std::fs::read_to_string(self.node_token(i))?.trim().to_string())
    }

    /// The environment pointing a node proxy (ferry or ztunnel) at the controller.
    pub(crate) fn control_plane_env(&self, i: usize) -> Vec<(String, String)> {
        let n = &self.nodes[i];
        self.controller_env_for(&self.node_token(i), &format!("ztunnel-{}", n.name), "istio-system", n.ip.into())
    }

    /// The controller's addresses and roots, with a caller's token file and pod.
    pub(crate) fn controller_env_for(
        &self,
        token: &std::path::Path,
        pod: &str,
        namespace: &str,
        ip: std::net::IpAddr,
    ) -> Vec<(String, String)> {
        let url = format!("https://{CONTROLLER_IP}:{XDS_PORT}");
        let root = self.ca_dir.join("root-cert.pem").display().to_string();
        [
            ("XDS_ADDRESS", url.clone()),
            ("CA_ADDRESS", url),
            ("ALT_XDS_HOSTNAME", CONTROLLER_NAME.into()),
            ("ALT_CA_HOSTNAME", CONTROLLER_NAME.into()),
            ("XDS_ROOT_CA", root.clone()),
            ("CA_ROOT_CA", root),
            ("AUTH_TOKEN", token.display().to_string()),
            ("POD_NAME", pod.to_string()),
            ("POD_NAMESPACE", namespace.to_string()),
            ("INSTANCE_IP", ip.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Starts the controller (if not running) and waits for it to be ready.
    pub fn start_controller(&mut self) -> Result<()> {
        if self.controller.child.is_some() {
            return Ok(());
        }
        let mut c = in_node(&self.router, None, &self.opts.ferry_bin);
        c.arg("controller")
            .env("FERRY_CLUSTER_STATE", &self.state_dir)
            .env("FERRY_CLUSTER_STATE_POLL", format!("{}ms", self.opts.poll.as_millis()))
            .env("FERRY_CA_DIR", &self.ca_dir)
            .env("FERRY_TOKEN_FILE", self.token_file())
            .env("FERRY_XDS_LISTEN", format!("{CONTROLLER_IP}:{XDS_PORT}"))
            .env("FERRY_SERVING_NAMES", CONTROLLER_NAME)
            .env("LOG_FORMAT", "json")
            .envs(self.opts.controller_env.iter().map(|(k, v)| (k, v)))
            .stderr(log_file(&self.controller_log())?);
        let child = c.spawn()?;
        self.cleanup.pid(child.id());
        self.controller.child = Some(child);
        wait(Duration::from_secs(20), "the controller to become ready", || {
            self.controller_http(15021, "/healthz/ready").is_ok() || !self.controller_running()
        })?;
        if !self.controller_running() {
            let log = std::fs::read_to_string(self.controller_log()).unwrap_or_default();
            return Err(SimError::Manifest(format!("the controller exited:\n{log}")));
        }
        Ok(())
    }

    /// Restarts the controller with `key=value` added to its environment (a setting changed
    /// as an operator would: a new controller process), and waits for it to be ready.
    pub fn restart_controller_with(&mut self, key: &str, value: &str) -> Result<()> {
        self.stop_controller(nix::sys::signal::Signal::SIGTERM);
        self.opts.controller_env.retain(|(k, _)| k != key);
        self.opts.controller_env.push((key.to_string(), value.to_string()));
        self.start_controller()
    }

    fn controller_running(&self) -> bool {
        // `try_wait` needs `&mut`; a zero signal asks the kernel whether the pid lives.
        self.controller.child.as_ref().is_some_and(|c| nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), None).is_ok())
    }

    /// Kills the controller with `sig` and waits for it to exit.
    pub fn stop_controller(&mut self, sig: nix::sys::signal::Signal) -> Option<std::process::ExitStatus> {
        let mut c = self.controller.child.take()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        c.wait().ok()
    }

    /// Any request to the controller's readiness (15021) or metrics (15014) port, whatever the
    /// status; returns (status, body).
    pub fn controller_request(&self, port: u16, method: &str, target: &str) -> Result<(u16, String)> {
        let path = PathBuf::from(format!("/var/run/netns/{}", self.router));
        Ok(apps::http(&path, SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port), method, target)?)
    }

    /// GET from the controller's readiness (15021) or metrics (15014) port.
    pub fn controller_http(&self, port: u16, target: &str) -> Result<String> {
        let path = PathBuf::from(format!("/var/run/netns/{}", self.router));
        let (status, body) = apps::http(&path, SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port), "GET", target)?;
        if status != 200 {
            return Err(SimError::Manifest(format!("controller {target}: HTTP {status}: {body}")));
        }
        Ok(body)
    }

    /// The mesh root certificate (PEM) the controller's serving certificate chains to.
    pub fn root_cert(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.ca_dir.join("root-cert.pem"))?)
    }

    /// The controller's URL and the name its certificate carries.
    pub fn controller_address(&self) -> (String, &'static str) {
        (format!("https://{CONTROLLER_IP}:{XDS_PORT}"), CONTROLLER_NAME)
    }

    pub fn controller_metrics(&self) -> Result<String> {
        self.controller_http(15014, "/metrics")
    }
}
