//! End-to-end tests of the built `ferry-cni` binary: environment and stdin in, stdout JSON and exit code out.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

const CNI_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=name;K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID=uid";

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the plugin with exactly `env` (nothing inherited) and `stdin`.
fn ferry_cni(env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-cni"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry-cni");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    Output { code: out.status.code(), stdout: String::from_utf8(out.stdout).unwrap(), stderr: String::from_utf8(out.stderr).unwrap() }
}

fn pod_env(command: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/p1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", CNI_ARGS),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-cni-bin-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fake ferry node agent serving exactly one connection: returns the request it received.
fn fake_agent(socket: &PathBuf, reply: &'static str) -> thread::JoinHandle<String> {
    let listener = UnixListener::bind(socket).unwrap();
    thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line).unwrap();
        (&conn).write_all(format!("{reply}\n").as_bytes()).unwrap();
        line
    })
}

#[test]
fn version_prints_supported_versions() {
    let out = ferry_cni(&[("CNI_COMMAND", "VERSION")], br#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#);
}

#[test]
fn missing_variable_is_a_cni_error() {
    let env: Vec<_> = pod_env("ADD").into_iter().filter(|(k, _)| *k != "CNI_CONTAINERID").collect();
    let out = ferry_cni(&env, br#"{"cniVersion":"0.4.0","prevResult":{"ips":[]}}"#);
    assert_eq!(out.code, Some(1));
    let reply: Value = serde_json::from_str(&out.stdout).expect("stdout is one JSON error");
    assert_eq!(reply["cniVersion"], "0.4.0");
    assert_eq!(reply["code"], 4);
    assert!(reply["msg"].as_str().unwrap().contains("CNI_CONTAINERID"), "{reply}");
    assert_eq!(out.stderr.lines().count(), 1, "one log line: {}", out.stderr);
}

#[test]
fn add_against_fake_agent_prints_prev_result() {
    let dir = temp_dir("add");
    let socket = dir.join("cni.sock");
    let agent = fake_agent(&socket, r#"{"ok":true,"enrolled":true,"message":"captured"}"#);
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/p1"}],
        "ips": [{"address": "198.18.1.5/24", "gateway": "198.18.1.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0"}]
    });
    let config = json!({
        "cniVersion": "1.0.0", "name": "ferry-net", "type": "ferry-cni",
        "agent_socket": socket, "agent_timeout_seconds": 5, "prevResult": prev
    });
    let out = ferry_cni(&pod_env("ADD"), &serde_json::to_vec(&config).unwrap());
    let request: Value = serde_json::from_str(&agent.join().unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(out.code, Some(0), "stdout {} stderr {}", out.stdout, out.stderr);
    assert_eq!(serde_json::from_str::<Value>(&out.stdout).unwrap(), prev);
    assert_eq!(
        request,
        json!({"command": "ADD", "container_id": "c1", "netns": "/var/run/netns/p1", "ifname": "eth0",
               "pod_namespace": "ns", "pod_name": "name", "pod_uid": "uid", "ips": ["198.18.1.5"]})
    );
    assert!(out.stderr.contains("ADD pod=ns/name ok"), "{}", out.stderr);
}

#[test]
fn del_with_agent_down_succeeds_silently() {
    let dir = temp_dir("del");
    let config = json!({"cniVersion": "1.0.0", "agent_socket": dir.join("absent.sock")});
    let env: Vec<_> = pod_env("DEL").into_iter().filter(|(k, _)| *k != "CNI_NETNS").collect();
    let out = ferry_cni(&env, &serde_json::to_vec(&config).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "");
}
