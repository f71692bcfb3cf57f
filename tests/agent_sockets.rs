//! The node agent's sockets (root only; fails without root). The CNI socket can release a pod
//! from the mesh and the ZDS socket decides which identities a node proxy serves, so only root
//! or the agent's own user may use them: the socket files are 0600 from the moment they exist
//! (here under umask 000), and the CNI socket checks its peer (SO_PEERCRED), so a loosened
//! file mode still lets no one else through. Driven with the real `ferry-cni` as the client,
//! as root and as `nobody`.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{require_root, Proc};
use common::TempDir;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const NOBODY: u32 = 65534;

struct Agent {
    dir: TempDir,
    _proc: Proc,
}

impl Agent {
    /// `ferry agent` under umask 000, its sockets in `<dir>/run`, which anyone may traverse.
    fn start() -> Agent {
        require_root();
        let dir = TempDir::new("agent-sockets");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let state = dir.path().join("cluster.yaml");
        std::fs::write(&state, "apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n").unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new("sh")
            .args(["-c", "umask 000; exec \"$@\"", "sh", FERRY, "agent", "--node-name", "n1", "--metrics-addr", "127.0.0.1:0"])
            .arg("--cluster-state")
            .arg(&state)
            .arg("--zds-socket")
            .arg(run.join("zds.sock"))
            .arg("--cni-socket")
            .arg(run.join("cni.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env_clear()
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ferry agent");
        let agent = Agent { dir, _proc: Proc(child) };
        agent.wait_log("ferry agent ready");
        agent
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join("run").join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(Instant::now() < deadline, "no {needle:?} in the agent log:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `ferry-cni` STATUS against `socket`, as `uid` (root when `None`): its exit status and output.
fn cni_status(socket: &Path, uid: Option<u32>) -> (bool, String) {
    let bin = PathBuf::from(FERRY).with_file_name("ferry-cni");
    assert!(bin.exists(), "ferry-cni must be built next to ferry (cargo test --workspace builds it)");
    // Another user runs a copy in /tmp: the checkout may sit under a directory only root can
    // enter (a `mktemp -d` clone), which would refuse the exec, not the socket.
    let copy = uid.map(|u| std::env::temp_dir().join(format!("ferry-cni-as-{u}-{}", std::process::id())));
    if let Some(c) = &copy {
        use std::os::unix::fs::PermissionsExt;
        std::fs::copy(&bin, c).unwrap();
        std::fs::set_permissions(c, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut cmd = Command::new(copy.as_ref().unwrap_or(&bin));
    cmd.env_clear().env("CNI_COMMAND", "STATUS").env("CNI_PATH", "/opt/cni/bin");
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let conf =
        serde_json::json!({"cniVersion": "1.1.0", "name": "t", "type": "ferry-cni", "agent_socket": socket, "agent_timeout_seconds": 5});
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if let Some(c) = &copy {
        let _ = std::fs::remove_file(c);
    }
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn sockets_are_owner_only_even_under_a_permissive_umask() {
    let agent = Agent::start();
    for name in ["cni.sock", "zds.sock"] {
        let m = std::fs::metadata(agent.socket(name)).unwrap();
        assert_eq!((m.mode() & 0o777, m.uid()), (0o600, 0), "{name}: mode {:o}", m.mode() & 0o777);
    }
    let mut left: Vec<String> =
        std::fs::read_dir(agent.dir.path().join("run")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left, ["cni.sock", "zds.sock"], "nothing else is left where the sockets were bound");
}

#[test]
fn only_root_or_the_agents_user_may_use_the_cni_socket() {
    let agent = Agent::start();
    let cni = agent.socket("cni.sock");
    // Root is answered: the agent processed STATUS (no node proxy is connected in this test).
    let (ok, out) = cni_status(&cni, None);
    assert!(!ok && out.contains("no node proxy is connected"), "root: {out}");
    // Another user cannot open the socket file at all.
    let (ok, out) = cni_status(&cni, Some(NOBODY));
    assert!(!ok && out.contains("ermission denied"), "nobody, mode 0600: {out}");
    // With the file mode loosened (an operator's chmod, a hostPath mount), the agent itself
    // still refuses the connection, says so, and logs who it was.
    std::fs::set_permissions(&cni, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (ok, out) = cni_status(&cni, Some(NOBODY));
    assert!(!ok && out.contains("only root or the agent's user") && !out.contains("no node proxy"), "nobody, mode 0666: {out}");
    let line: serde_json::Value = serde_json::from_str(&agent.wait_log("refusing a connection")).unwrap();
    assert_eq!(
        (line["level"].as_str(), line["socket"].as_str(), line["peer_uid"].as_u64()),
        (Some("warn"), Some("cni"), Some(NOBODY as u64)),
        "{line}"
    );
    assert!(line["peer_pid"].as_u64().is_some(), "{line}");
    let (ok, out) = cni_status(&cni, None);
    assert!(!ok && out.contains("no node proxy is connected"), "root after a refusal: {out}");
}
