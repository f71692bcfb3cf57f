//! Dedicated-mode proxies on real kernel networking (root only; fails without root): network
//! namespaces on veth pairs, one ferry proxy in each (shared CA directory, one local config
//! file), outbound TCP redirected to 15001 by ferry's nftables rules. One behaviour per test:
//! echo through the tunnel (pod IP and service VIP) from the client's own IP; nothing but TLS
//! to 15008 on the wire; both identities in the destination's metrics and access log; an
//! impostor's certificate refused and explained; management ports unreachable through the
//! mesh; the admin endpoints; a clean exit on SIGTERM.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::netns::*;
use common::TempDir;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

const STATE: &str = r#"
workloads:
- uid: Kubernetes//Pod/default/client-0
  name: client
  namespace: default
  serviceAccount: client
  workloadIps: ["198.18.0.1"]
  protocol: HBONE
  node: node-a
  canonicalName: client
- uid: Kubernetes//Pod/default/server-0
  name: server
  namespace: default
  serviceAccount: server
  workloadIps: ["198.18.0.2"]
  protocol: HBONE
  node: node-b
  canonicalName: echo
  canonicalRevision: v1
  services:
    "default/echo.default.svc.cluster.local":
      80: 8080
- uid: Kubernetes//Pod/default/payments-0
  name: payments
  namespace: default
  serviceAccount: payments
  workloadIps: ["198.18.1.3"]
  protocol: HBONE
services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  vips: ["/198.19.0.10"]
  ports:
    80: 8080
policies:
- name: only-client
  namespace: default
  scope: Namespace
  action: Allow
  rules:
  - - - principals: [!Exact "cluster.local/ns/default/sa/client"]
"#;

/// The impostor's own view: it claims payments' IP but holds the "attacker" identity.
const IMPOSTOR_STATE: &str = r#"
workloads:
- uid: Kubernetes//Pod/default/payments-0
  name: payments
  namespace: default
  serviceAccount: attacker
  workloadIps: ["198.18.1.3"]
  protocol: HBONE
"#;

fn start_proxy(ns: &Ns, workload: &str, state: &Path, ca: &Path, log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let child = ns
        .command(FERRY)
        .arg("proxy")
        .env_clear()
        .env("PROXY_MODE", "dedicated")
        .env("PROXY_WORKLOAD_INFO", workload)
        .env("LOCAL_XDS_PATH", state)
        .env("FERRY_CA_DIR", ca)
        .env("PACKET_MARK", "1337")
        .env("ENABLE_ORIG_SRC", "true")
        .env("LOG_FORMAT", "json")
        .env("IPV6_ENABLED", "false")
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("spawn ferry");
    Proc(child)
}

fn access_lines(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["scope"] == "access")
        .collect()
}

fn metric_line<'a>(metrics: &'a str, name: &str, labels: &[(&str, &str)]) -> Option<&'a str> {
    metrics.lines().find(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
}

/// Three namespaces: A (client) wired to B (server) and to C (an impostor claiming payments'
/// IP with a valid certificate for another identity), each with ferry's redirection and one
/// dedicated-mode proxy. One behaviour per test; each test gets its own.
struct TwoProxies {
    dir: TempDir,
    a: Ns,
    b: Ns,
    c: Ns,
    logs: [std::path::PathBuf; 3],
    procs: [Proc; 3],
    b_peers: std::sync::Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>,
    c_peers: std::sync::Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>,
    _guard: std::sync::MutexGuard<'static, ()>,
}

/// Three proxies per fixture: one fixture at a time keeps two cores responsive.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl TwoProxies {
    fn start() -> TwoProxies {
        require_root();
        let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = TempDir::new("two-ns");
        let ca = dir.path().join("ca");
        let st = Command::new(FERRY).args(["ca", "init"]).arg(&ca).status().unwrap();
        assert!(st.success(), "ferry ca init failed");
        let state = dir.path().join("state.yaml");
        std::fs::write(&state, STATE).unwrap();
        let impostor_state = dir.path().join("impostor.yaml");
        std::fs::write(&impostor_state, IMPOSTOR_STATE).unwrap();
        let (a, b, c) = (Ns::new("a"), Ns::new("b"), Ns::new("c"));
        veth(&a, "eth0", "198.18.0.1", &b, "eth0", "198.18.0.2");
        veth(&a, "eth1", "198.18.1.1", &c, "eth0", "198.18.1.3");
        a.exec("ip route add 198.19.0.0/16 dev eth0");
        for ns in [&a, &b, &c] {
            install_redirect(ns);
        }
        let b_peers = echo_server(&b, "0.0.0.0:8080");
        let c_peers = echo_server(&c, "0.0.0.0:8080");
        let logs = [dir.path().join("a.log"), dir.path().join("b.log"), dir.path().join("c.log")];
        let mut procs = [
            start_proxy(&a, "default/client/client", &state, &ca, &logs[0]),
            start_proxy(&b, "default/server/server", &state, &ca, &logs[1]),
            start_proxy(&c, "default/payments/attacker", &impostor_state, &ca, &logs[2]),
        ];
        for (i, ns) in [&a, &b, &c].into_iter().enumerate() {
            wait_ready(ns, &mut procs[i], &logs[i]);
        }
        TwoProxies { dir, a, b, c, logs, procs, b_peers, c_peers, _guard: guard }
    }

    /// A payload with a random canary, sent to the server by pod IP and by service VIP.
    fn echo_twice(&self) -> Vec<u8> {
        let canary = format!("FERRY-CANARY-{:016x}", fastrand::u64(..));
        let payload = canary.repeat(64).into_bytes();
        for (dst, what) in [("198.18.0.2:8080", "pod IP"), ("198.19.0.10:80", "service VIP")] {
            let got = echo_roundtrip(&self.a, dst, payload.clone()).unwrap_or_else(|| panic!("echo via {what}"));
            assert_eq!(got, payload, "echo through the tunnel ({what})");
        }
        payload
    }

    /// The access-log lines of proxy `i`, once `want` of them have been written.
    fn access_lines(&self, i: usize, want: usize) -> Vec<serde_json::Value> {
        wait_for(|| access_lines(&self.logs[i]).len() >= want, "access-log lines");
        access_lines(&self.logs[i])
    }
}

#[test]
fn echo_goes_through_the_tunnel_by_pod_ip_and_service_vip_from_the_clients_own_address() {
    let f = TwoProxies::start();
    f.echo_twice();
    let peers = f.b_peers.lock().unwrap().clone();
    assert_eq!(peers.len(), 2);
    assert!(peers.iter().all(|p| p.ip().to_string() == "198.18.0.1"), "server saw {peers:?}");
}

#[test]
fn only_hbone_crosses_the_link_and_never_the_plaintext() {
    let f = TwoProxies::start();
    let pcap = f.dir.path().join("ab.pcap");
    let cap_log = f.dir.path().join("tcpdump.log");
    let mut tcpdump = Proc(
        f.a.command("tcpdump")
            .args(["-i", "eth0", "-n", "-U", "--immediate-mode", "-s", "0", "-w"])
            .arg(&pcap)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&cap_log).unwrap())
            .spawn()
            .expect("tcpdump must be installed (./x test installs it)"),
    );
    wait_for(|| std::fs::read_to_string(&cap_log).unwrap_or_default().contains("listening on"), "tcpdump to start");
    f.echo_twice();
    // Both connections are complete at the destination before the capture stops.
    f.access_lines(1, 2);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(tcpdump.0.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let _ = tcpdump.0.wait();
    let raw = std::fs::read(&pcap).unwrap();
    let dump = Command::new("tcpdump").args(["-nn", "-r"]).arg(&pcap).output().unwrap();
    assert!(raw.len() > 1000, "the capture must have seen the traffic ({} bytes): {}", raw.len(), String::from_utf8_lossy(&dump.stdout));
    assert!(!raw.windows(13).any(|w| w == b"FERRY-CANARY-"), "plaintext canary found on the veth");
    let other = Command::new("tcpdump").args(["-nn", "-r"]).arg(&pcap).arg("tcp and not port 15008").output().unwrap();
    assert!(other.status.success());
    let other = String::from_utf8_lossy(&other.stdout);
    assert!(other.trim().is_empty(), "TCP other than HBONE on the wire:\n{other}");
    let hbone = Command::new("tcpdump").args(["-nn", "-r"]).arg(&pcap).arg("tcp port 15008").output().unwrap();
    assert!(String::from_utf8_lossy(&hbone.stdout).lines().count() > 10, "HBONE traffic must be on the wire");
}

#[test]
fn destination_metrics_and_access_log_name_both_identities() {
    let f = TwoProxies::start();
    let payload = f.echo_twice();
    let lines = f.access_lines(1, 2);
    let ok: Vec<_> = lines.iter().filter(|l| l["message"] == "connection complete").collect();
    assert_eq!(ok.len(), 2, "access log lines: {lines:#?}");
    for l in ok {
        assert_eq!(l["src.identity"], "spiffe://cluster.local/ns/default/sa/client");
        assert_eq!(l["dst.identity"], "spiffe://cluster.local/ns/default/sa/server");
        assert_eq!(l["connection_security_policy"], "mutual_tls");
        assert_eq!(l["direction"], "inbound");
        assert_eq!(l["bytes_recv"].as_u64(), Some(payload.len() as u64));
        assert_eq!(l["bytes_sent"].as_u64(), Some(payload.len() as u64));
        assert_eq!((l["dst.addr"].as_str(), l["dst.hbone_addr"].as_str()), (Some("198.18.0.2:15008"), Some("198.18.0.2:8080")));
    }
    let (status, metrics) = http_get(&f.b, "127.0.0.1:15020", "/metrics").expect("metrics");
    assert_eq!(status, 200);
    let line = metric_line(
        &metrics,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("source_principal", "spiffe://cluster.local/ns/default/sa/client"),
            ("destination_principal", "spiffe://cluster.local/ns/default/sa/server"),
            ("connection_security_policy", "mutual_tls"),
            ("source_workload", "client"),
            ("destination_canonical_service", "echo"),
            ("response_flags", "-"),
        ],
    );
    let line = line.unwrap_or_else(|| panic!("no matching opened metric in:\n{metrics}"));
    assert!(line.trim_end().ends_with(" 2"), "two connections: {line}");
    assert!(metric_line(&metrics, "istio_tcp_received_bytes_total", &[("reporter", "destination")]).is_some());
    let closed = metric_line(
        &metrics,
        "istio_tcp_connections_closed_total",
        &[("reporter", "destination"), ("source_principal", "spiffe://cluster.local/ns/default/sa/client")],
    );
    assert!(closed.is_some_and(|l| l.trim_end().ends_with(" 2")), "two closed connections: {closed:?}");
}

#[test]
fn an_impostor_certificate_is_refused_and_the_refusal_explained() {
    let f = TwoProxies::start();
    let refused = echo_roundtrip(&f.a, "198.18.1.3:8080", b"secret for payments".to_vec());
    assert!(refused.as_deref().unwrap_or_default().is_empty(), "nothing may come back from an impostor: {refused:?}");
    assert!(f.c_peers.lock().unwrap().is_empty(), "the impostor's application must never be reached");
    let a_lines = f.access_lines(0, 1);
    let refused = a_lines
        .iter()
        .find(|l| l["dst.addr"] == "198.18.1.3:15008")
        .unwrap_or_else(|| panic!("no access log for the impostor connection: {a_lines:#?}"));
    assert_eq!(refused["response_flags"], "IDENTITY_ERROR");
    assert_eq!(refused["dst.hbone_addr"], "198.18.1.3:8080");
    let err = refused["error"].as_str().unwrap();
    assert!(err.contains("spiffe://cluster.local/ns/default/sa/attacker is not one of the expected identities"), "{err}");
    let (_, a_metrics) = http_get(&f.a, "127.0.0.1:15020", "/metrics").expect("metrics");
    assert!(
        metric_line(&a_metrics, "istio_tcp_connections_failed_total", &[("reporter", "source"), ("response_flags", "IDENTITY_ERROR")])
            .is_some(),
        "{a_metrics}"
    );
}

#[test]
fn management_and_proxy_ports_are_not_reachable_through_the_mesh() {
    let f = TwoProxies::start();
    for port in [15000, 15020, 15021, 15008, 15001, 15006] {
        let r = echo_roundtrip(&f.a, &format!("198.18.0.2:{port}"), b"GET / HTTP/1.0\r\n\r\n".to_vec());
        assert!(r.as_deref().unwrap_or_default().is_empty(), "port {port} answered through the mesh: {r:?}");
    }
    // The server's own port is reachable, so the refusals above are not a broken path.
    assert_eq!(echo_roundtrip(&f.a, "198.18.0.2:8080", b"x".to_vec()).as_deref(), Some(&b"x"[..]));
}

#[test]
fn admin_serves_the_config_dump_and_log_levels_and_quits_on_request() {
    let mut f = TwoProxies::start();
    let (status, dump) = http_get(&f.a, "127.0.0.1:15000", "/config_dump").expect("config dump");
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["workloads"].as_array().unwrap().len(), 3);
    assert_eq!(dump["services"][0]["hostname"], "echo.default.svc.cluster.local");
    assert_eq!(dump["policies"][0]["name"], "only-client");
    assert_eq!(dump["config"]["mode"], "dedicated");
    let cert = &dump["certificates"][0];
    assert_eq!(cert["identity"], "spiffe://cluster.local/ns/default/sa/client");
    assert_eq!(cert["state"], "Available");
    assert_eq!(cert["certChain"][0]["uriSans"][0], "spiffe://cluster.local/ns/default/sa/client");
    assert_eq!(dump["workloadState"]["default/client"]["state"], "Up", "the served workload");
    let a = &f.a;
    let admin = |method: &str, target: &str| http_request(a, method, "127.0.0.1:15000", target).unwrap();
    assert_eq!(admin("GET", "/logging"), (200, "current log level: info\n".into()));
    assert_eq!(admin("POST", "/logging?level=a=b=c").0, 400);
    assert_eq!(admin("POST", "/logging?level=bogus:::").0, 400);
    // istioctl's `ztunnel-config log --level access:debug`: merged, and logging keeps going.
    assert_eq!(admin("POST", "/logging?level=access:debug"), (200, "current log level: info,access=debug\n".into()));
    let before = std::fs::read_to_string(&f.logs[0]).unwrap().matches("connection complete").count();
    f.echo_twice();
    ferry_harness::sim::wait(Duration::from_secs(10), "access-log lines after access:debug", || {
        std::fs::read_to_string(&f.logs[0]).unwrap().matches("connection complete").count() >= before + 2
    })
    .unwrap();
    assert_eq!(admin("POST", "/logging?level=debug"), (200, "current log level: debug\n".into()));
    assert_eq!(admin("DELETE", "/logging").0, 405);
    assert_eq!(admin("POST", "/logging?reset"), (200, "current log level: info\n".into()));
    assert_eq!(http_request(&f.c, "POST", "127.0.0.1:15000", "/quitquitquit").unwrap().0, 200);
    let status = wait_exit(&mut f.procs[2]);
    assert!(status.success(), "exit after /quitquitquit: {status}");
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let mut f = TwoProxies::start();
    f.echo_twice();
    for i in [0, 1] {
        let p = &mut f.procs[i];
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.0.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = wait_exit(p);
        let log = std::fs::read_to_string(&f.logs[i]).unwrap_or_default();
        assert!(status.success(), "proxy exit on SIGTERM: {status}; log: {log}");
        assert!(log.contains("drain complete"), "the proxy reports its drain: {log}");
    }
}

fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn wait_exit(p: &mut Proc) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "proxy did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
