//! Table-driven tests of `run`/`execute` against a fake ferry node agent and local cluster state files.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use serde_json::{json, Value};

use crate::test_support::{FakeAgent, TempDir};
use crate::{execute, run, CniError, Env};

const CNI_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=name;K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID=uid";
const OK_REPLY: &str = r#"{"ok":true,"enrolled":true,"message":"enrolled"}"#;

fn env(command: &str) -> Env {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/p1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", CNI_ARGS),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
    .into_iter()
    .map(|(k, v)| (OsString::from(k), OsString::from(v)))
    .collect()
}

fn env_with(command: &str, key: &str, value: Option<&str>) -> Env {
    let mut e = env(command);
    match value {
        Some(v) => e.insert(key.into(), v.into()),
        None => e.remove(&OsString::from(key)),
    };
    e
}

fn prev_result() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/p1", "mac": "0a:58:c6:12:01:05"}],
        "ips": [
            {"address": "198.18.1.5/24", "gateway": "198.18.1.1", "interface": 0},
            {"address": "fd00:18::5/64", "interface": 0}
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["ns.svc.cluster.local"]}
    })
}

/// A network config pointing at `socket`, with extra top-level fields merged in.
fn conf(socket: &Path, extra: Value) -> Vec<u8> {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": "ferry-net",
        "type": "ferry-cni",
        "agent_socket": socket,
        "agent_timeout_seconds": 2,
        "prevResult": prev_result(),
    });
    if let (Value::Object(c), Value::Object(extra)) = (&mut c, extra) {
        c.extend(extra);
    }
    serde_json::to_vec(&c).unwrap()
}

fn code_of(result: Result<Option<String>, CniError>) -> u32 {
    match result {
        Ok(out) => panic!("expected an error, got success {out:?}"),
        Err(e) => e.code(),
    }
}

/// Cluster state with one ambient and one plain namespace, and the plain one's pod `name`.
fn cluster_state(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.path().join("state.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n  labels:\n    istio.io/dataplane-mode: ambient\n\
         ---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: name\n  namespace: ns\n",
    )
    .unwrap();
    path
}

fn missing_socket(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("no-agent.sock")
}

#[test]
fn version_output() {
    for stdin in [&b""[..], br#"{"cniVersion":"1.0.0"}"#, b"garbage"] {
        let out = run(&env("VERSION"), stdin).unwrap().unwrap();
        assert_eq!(out, r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#);
    }
}

#[test]
fn missing_or_bad_environment_is_code_4() {
    let dir = TempDir::new("env");
    let stdin = conf(&missing_socket(&dir), json!({}));
    let non_utf8 = OsString::from_vec(vec![0x2f, 0xff, 0xfe]);
    let cases: Vec<(&str, Env)> = vec![
        ("no CNI_COMMAND", env_with("ADD", "CNI_COMMAND", None)),
        ("empty CNI_COMMAND", env_with("ADD", "CNI_COMMAND", Some(""))),
        ("unknown command", env("FROB")),
        ("lower-case command", env("add")),
        ("no CNI_CONTAINERID", env_with("ADD", "CNI_CONTAINERID", None)),
        ("no CNI_NETNS", env_with("ADD", "CNI_NETNS", None)),
        ("no CNI_IFNAME", env_with("ADD", "CNI_IFNAME", None)),
        ("no CNI_ARGS", env_with("ADD", "CNI_ARGS", None)),
        ("no namespace", env_with("ADD", "CNI_ARGS", Some("K8S_POD_NAME=name"))),
        ("no pod name", env_with("ADD", "CNI_ARGS", Some("K8S_POD_NAMESPACE=ns"))),
        ("empty pod name", env_with("ADD", "CNI_ARGS", Some("K8S_POD_NAMESPACE=ns;K8S_POD_NAME="))),
        ("malformed CNI_ARGS", env_with("ADD", "CNI_ARGS", Some("K8S_POD_NAMESPACE=ns;oops"))),
        ("CHECK without CNI_NETNS", env_with("CHECK", "CNI_NETNS", None)),
        ("DEL without CNI_CONTAINERID", env_with("DEL", "CNI_CONTAINERID", None)),
        ("non-UTF-8 netns", {
            let mut e = env("ADD");
            e.insert("CNI_NETNS".into(), non_utf8.clone());
            e
        }),
        ("non-UTF-8 command", {
            let mut e = env("ADD");
            e.insert("CNI_COMMAND".into(), non_utf8.clone());
            e
        }),
    ];
    for (name, e) in cases {
        assert_eq!(code_of(run(&e, &stdin)), 4, "{name}");
    }
}

#[test]
fn bad_config_codes() {
    let dir = TempDir::new("conf");
    let socket = missing_socket(&dir);
    let no_prev = {
        let mut v: Value = serde_json::from_slice(&conf(&socket, json!({}))).unwrap();
        v.as_object_mut().unwrap().remove("prevResult");
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("not JSON", b"{not json".to_vec(), 6),
        ("empty stdin", Vec::new(), 6),
        ("truncated", conf(&socket, json!({}))[..20].to_vec(), 6),
        ("invalid UTF-8", vec![b'{', 0xff, b'}'], 6),
        ("too large", vec![b' '; crate::config::MAX_CONFIG_BYTES + 1], 6),
        ("unsupported version", conf(&socket, json!({"cniVersion": "0.2.0"})), 1),
        ("future version", conf(&socket, json!({"cniVersion": "2.0.0"})), 1),
        ("ADD without prevResult", no_prev, 7),
        ("null prevResult", conf(&socket, json!({"prevResult": null})), 7),
        ("array config", b"[1,2]".to_vec(), 7),
        ("ips not an array", conf(&socket, json!({"prevResult": {"ips": {"address": "1.2.3.4/32"}}})), 7),
        ("address not an IP", conf(&socket, json!({"prevResult": {"ips": [{"address": "pod/24"}]}})), 7),
        ("address missing", conf(&socket, json!({"prevResult": {"ips": [{"gateway": "1.2.3.1"}]}})), 7),
    ];
    for (name, stdin, code) in cases {
        assert_eq!(code_of(run(&env("ADD"), &stdin)), code, "{name}");
    }
}

#[test]
fn error_reply_carries_config_version_and_exit_code_1() {
    let dir = TempDir::new("reply");
    let stdin = conf(&missing_socket(&dir), json!({"cniVersion": "0.4.0", "prevResult": null}));
    let inv = execute(&env("ADD"), &stdin);
    assert_eq!(inv.exit_code, 1);
    let reply: Value = serde_json::from_str(inv.stdout.as_deref().unwrap()).unwrap();
    assert_eq!(reply["cniVersion"], "0.4.0");
    assert_eq!(reply["code"], 7);
    assert!(reply["msg"].as_str().unwrap().contains("prevResult"));
    assert!(inv.log_line.starts_with("ferry-cni: ADD pod=ns/name failed with code 7"), "{}", inv.log_line);
}

#[test]
fn add_passes_prev_result_through_and_forwards_ips() {
    for version in ["1.0.0", "0.4.0", "1.1.0"] {
        let agent = FakeAgent::start(Some(OK_REPLY));
        let stdin = conf(agent.socket(), json!({"cniVersion": version}));
        let out = run(&env("ADD"), &stdin).unwrap().expect("ADD prints a result");
        let mut want = prev_result();
        want["cniVersion"] = json!(version);
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), want, "{version}");

        let requests = agent.requests();
        assert_eq!(
            requests,
            vec![json!({
                "command": "ADD", "container_id": "c1", "netns": "/var/run/netns/p1", "ifname": "eth0",
                "pod_namespace": "ns", "pod_name": "name", "pod_uid": "uid", "ips": ["198.18.1.5", "fd00:18::5"]
            })]
        );
    }
}

#[test]
fn add_without_pod_uid_sends_empty_uid() {
    let agent = FakeAgent::start(Some(OK_REPLY));
    let e = env_with("ADD", "CNI_ARGS", Some("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=name"));
    run(&e, &conf(agent.socket(), json!({}))).unwrap();
    assert_eq!(agent.requests()[0]["pod_uid"], "");
}

#[test]
fn agent_refusal_is_code_100_with_details() {
    for (command, reply) in [
        ("ADD", r#"{"ok":false,"message":"netns vanished"}"#),
        ("CHECK", r#"{"ok":false,"message":"netns vanished"}"#),
        ("DEL", r#"{"ok":false,"message":"netns vanished","enrolled":true}"#),
    ] {
        let agent = FakeAgent::start(Some(reply));
        let inv = execute(&env(command), &conf(agent.socket(), json!({})));
        assert_eq!(inv.exit_code, 1, "{command}");
        let reply: Value = serde_json::from_str(inv.stdout.as_deref().unwrap()).unwrap();
        assert_eq!(reply["code"], 100, "{command}");
        assert_eq!(reply["msg"], format!("ferry node agent refused {command} for pod ns/name"));
        assert_eq!(reply["details"], "netns vanished");
    }
}

#[test]
fn agent_bad_reply_is_an_error_for_add() {
    let agent = FakeAgent::start(Some("this is not json"));
    assert_eq!(code_of(run(&env("ADD"), &conf(agent.socket(), json!({})))), 101);
}

#[test]
fn agent_unreachable_falls_back_to_cluster_state() {
    let dir = TempDir::new("fallback");
    let state = cluster_state(&dir);
    let socket = missing_socket(&dir);
    let in_ns = |ns: &str| env_with("ADD", "CNI_ARGS", Some(&format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME=name")));
    let cases: Vec<(&str, Env, Value, Option<u32>)> = vec![
        ("ambient namespace", in_ns("mesh"), json!({"cluster_state": state}), Some(11)),
        ("non-ambient namespace", in_ns("ns"), json!({"cluster_state": state}), None),
        ("unknown namespace", in_ns("other"), json!({"cluster_state": state}), Some(11)),
        ("no cluster_state", in_ns("ns"), json!({}), Some(11)),
        ("empty cluster_state", in_ns("ns"), json!({"cluster_state": ""}), Some(11)),
        ("missing cluster_state file", in_ns("ns"), json!({"cluster_state": dir.path().join("nope.yaml")}), Some(11)),
        ("state directory", in_ns("ns"), json!({"cluster_state": dir.path()}), None),
        (
            "CHECK, ambient",
            env_with("CHECK", "CNI_ARGS", Some("K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=n")),
            json!({"cluster_state": state}),
            Some(11),
        ),
        ("CHECK, non-ambient", env("CHECK"), json!({"cluster_state": state}), None),
    ];
    for (name, e, extra, want) in cases {
        let result = run(&e, &conf(&socket, extra));
        match want {
            Some(code) => assert_eq!(code_of(result), code, "{name}"),
            None => {
                let out = result.unwrap_or_else(|err| panic!("{name}: {err}"));
                if e.get(&OsString::from("CNI_COMMAND")).unwrap() == "ADD" {
                    assert_eq!(serde_json::from_str::<Value>(&out.unwrap()).unwrap(), prev_result(), "{name}");
                } else {
                    assert_eq!(out, None, "{name}");
                }
            }
        }
    }
}

#[test]
fn ambient_fallback_message_names_socket_and_pod() {
    let dir = TempDir::new("ambient-msg");
    let state = cluster_state(&dir);
    let socket = missing_socket(&dir);
    let e = env_with("ADD", "CNI_ARGS", Some("K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=web-0"));
    let err = run(&e, &conf(&socket, json!({"cluster_state": state}))).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "ferry node agent unreachable at {}: pod mesh/web-0 must be captured into the mesh and must not start uncaptured",
            socket.display()
        )
    );
    assert!(err.details().contains("does not exist"), "{}", err.details());
}

#[test]
fn refused_connection_and_timeout_count_as_unreachable() {
    let dir = TempDir::new("refused");
    let state = cluster_state(&dir);
    // A socket file nobody listens on any more: connect gets ECONNREFUSED.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let silent = FakeAgent::start(None);
    for socket in [stale.as_path(), silent.socket()] {
        let stdin = conf(socket, json!({"cluster_state": state, "agent_timeout_seconds": 1}));
        assert!(run(&env("ADD"), &stdin).is_ok(), "{}", socket.display());
        let mesh = env_with("ADD", "CNI_ARGS", Some("K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=n"));
        assert_eq!(code_of(run(&mesh, &stdin)), 11, "{}", socket.display());
    }
}

#[test]
fn del_is_quiet_and_tolerates_missing_agent_and_netns() {
    let dir = TempDir::new("del");
    let socket = missing_socket(&dir);
    let cases: Vec<(&str, Env, Vec<u8>)> = vec![
        ("agent unreachable", env("DEL"), conf(&socket, json!({}))),
        ("no netns", env_with("DEL", "CNI_NETNS", None), conf(&socket, json!({}))),
        ("empty netns", env_with("DEL", "CNI_NETNS", Some("")), conf(&socket, json!({}))),
        ("no CNI_ARGS", env_with("DEL", "CNI_ARGS", None), conf(&socket, json!({}))),
        ("no prevResult", env("DEL"), conf(&socket, json!({"prevResult": null}))),
    ];
    for (name, e, stdin) in cases {
        for _ in 0..2 {
            assert_eq!(run(&e, &stdin).unwrap_or_else(|err| panic!("{name}: {err}")), None, "{name}");
        }
    }
}

#[test]
fn del_reaches_the_agent_with_empty_netns() {
    let agent = FakeAgent::start(Some(r#"{"ok":true}"#));
    let e = env_with("DEL", "CNI_NETNS", None);
    assert_eq!(run(&e, &conf(agent.socket(), json!({}))).unwrap(), None);
    let requests = agent.requests();
    assert_eq!(requests[0]["command"], "DEL");
    assert_eq!(requests[0]["netns"], "");
}

#[test]
fn check_success_is_silent() {
    let agent = FakeAgent::start(Some(OK_REPLY));
    assert_eq!(run(&env("CHECK"), &conf(agent.socket(), json!({}))).unwrap(), None);
    assert_eq!(agent.requests()[0]["command"], "CHECK");
}

#[test]
fn status_up_and_down() {
    let up = FakeAgent::start(Some(r#"{"ok":true}"#));
    let not_ready = FakeAgent::start(Some(r#"{"ok":false,"message":"still syncing"}"#));
    let garbage = FakeAgent::start(Some("{"));
    let dir = TempDir::new("status");
    let status_conf =
        |socket: &Path| serde_json::to_vec(&json!({"cniVersion": "1.1.0", "agent_socket": socket, "agent_timeout_seconds": 1})).unwrap();

    assert_eq!(run(&env("STATUS"), &status_conf(up.socket())).unwrap(), None);
    assert_eq!(up.requests(), vec![json!({"command": "STATUS"})]);

    for (name, socket) in [("not ready", not_ready.socket()), ("garbage", garbage.socket()), ("absent", missing_socket(&dir).as_path())] {
        let inv = execute(&env("STATUS"), &status_conf(socket));
        assert_eq!(inv.exit_code, 1, "{name}");
        let reply: Value = serde_json::from_str(inv.stdout.as_deref().unwrap()).unwrap();
        assert_eq!(reply["code"], 50, "{name}");
        assert_eq!(reply["cniVersion"], "1.1.0", "{name}");
    }
    let inv = execute(&env("STATUS"), &status_conf(not_ready.socket()));
    assert!(inv.stdout.unwrap().contains("still syncing"));
}

#[test]
fn gc_is_a_no_op() {
    for stdin in [&b""[..], b"garbage", br#"{"cniVersion":"1.1.0","cni.dev/valid-attachments":[]}"#] {
        assert_eq!(run(&env("GC"), stdin).unwrap(), None);
    }
}

#[test]
fn log_line_is_one_line() {
    let dir = TempDir::new("log");
    let e = env_with("ADD", "CNI_ARGS", Some("K8S_POD_NAMESPACE=ns\nforged;K8S_POD_NAME=a\rb"));
    let inv = execute(&e, &conf(&missing_socket(&dir), json!({})));
    assert!(!inv.log_line.contains(['\n', '\r']), "{}", inv.log_line);
    assert!(inv.log_line.contains("ADD") && inv.log_line.contains("code 11"), "{}", inv.log_line);
}

#[test]
fn garbage_inputs_never_panic() {
    let dir = TempDir::new("garbage");
    let socket = missing_socket(&dir);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let stdins: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"null".to_vec(),
        b"\"string\"".to_vec(),
        b"1e999".to_vec(),
        deep.into_bytes(),
        vec![0xff; 1024],
        vec![b'{'; crate::config::MAX_CONFIG_BYTES + 10],
        br#"{"cniVersion":null,"prevResult":5}"#.to_vec(),
        br#"{"cniVersion":"1.0.0","prevResult":{"ips":[1,null,{"address":7},{"address":"1.2.3.4/32/1"}]}}"#.to_vec(),
        br#"{"cniVersion":"1.0.0","agent_socket":"","cluster_state":["x"],"prevResult":{}}"#.to_vec(),
        conf(&socket, json!({"agent_socket": "x".repeat(5000)})),
        conf(&socket, json!({"cluster_state": "/dev/null"})),
        conf(&socket, json!({"cluster_state": "/proc/self"})),
        conf(&socket, json!({"prevResult": {"ips": []}})),
    ];
    let odd = OsString::from_vec(vec![b'K', b'=', 0xc3, 0x28]);
    let envs: Vec<Env> = ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "", "ÄDD\0"]
        .iter()
        .map(|c| env(c))
        .chain([
            Env::new(),
            {
                let mut e = env("ADD");
                e.insert("CNI_ARGS".into(), odd.clone());
                e
            },
            env_with("ADD", "CNI_ARGS", Some(&";=;".repeat(10_000))),
        ])
        .collect();
    for stdin in &stdins {
        for e in &envs {
            let inv = execute(e, stdin);
            if inv.exit_code != 0 {
                let reply: Value = serde_json::from_str(inv.stdout.as_deref().expect("errors are printed")).expect("error is JSON");
                assert!(reply["code"].as_u64().is_some());
                assert!(reply["msg"].as_str().is_some_and(|m| !m.is_empty()));
            }
        }
    }
}

/// The fallback must decide as the agent does (one capture decision): a pod that opts in with
/// its own label, in a namespace that is not ambient, must not start uncaptured.
#[test]
fn fallback_uses_the_agents_capture_decision() {
    let dir = TempDir::new("fallback-pods");
    let path = dir.path().join("state.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n\
         ---\napiVersion: v1\nkind: Namespace\nmetadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {name: opted-in, namespace: plain, labels: {istio.io/dataplane-mode: ambient}}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: plain}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {name: opted-out, namespace: mesh, labels: {istio.io/dataplane-mode: none}}\n",
    )
    .unwrap();
    let socket = missing_socket(&dir);
    let pod = |ns: &str, name: &str| env_with("ADD", "CNI_ARGS", Some(&format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}")));
    let state = json!({"cluster_state": path});
    assert_eq!(code_of(run(&pod("plain", "opted-in"), &conf(&socket, state.clone()))), 11, "pod-level opt-in is captured");
    assert!(run(&pod("plain", "web"), &conf(&socket, state.clone())).is_ok(), "a plain pod in a plain namespace starts");
    assert!(run(&pod("mesh", "opted-out"), &conf(&socket, state.clone())).is_ok(), "a pod that opted out starts uncaptured");
    assert_eq!(code_of(run(&pod("mesh", "new"), &conf(&socket, state))), 11, "an unlisted pod in an ambient namespace is refused");
}
