//! A real Prometheus server (Debian's `prometheus`, root only; fails without root or without
//! the binary) scrapes both node proxies, a node agent and the controller of the simulated
//! cluster with its default scrape protocol negotiation (Prometheus 2.42 asks for OpenMetrics
//! first), and its query API shows the Istio TCP series for traffic the test sent with the
//! labels the Istio dashboards and Kiali select on.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sim::*;
use common::TempDir;
use ferry_harness::sim::Sim;
use serde_json::Value;

const FRONTEND: (&str, &str) = ("shop", "frontend");
const BACKEND_SERVICE: &str = "backend.shop.svc.cluster.local";
/// Prometheus listens inside node-2's namespace, which nothing else uses this port in.
const PROMETHEUS: &str = "127.0.0.1:9090";
/// Bounds every wait on Prometheus (start, first scrapes, series appearing); never asserted on.
const DEADLINE: Duration = Duration::from_secs(90);

/// The Prometheus server, killed (and its storage removed) on drop.
struct Prometheus {
    child: std::process::Child,
    netns: String,
    dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_bin() -> PathBuf {
    let found = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"].into_iter().map(PathBuf::from).find(|p| p.exists());
    found.expect(
        "this test needs Debian's `prometheus` package (apt-get install prometheus; ./x test installs it); it fails rather than skips",
    )
}

/// Scrape jobs with Prometheus' defaults apart from the interval (the default minute would
/// make the test wait minutes): the scrape protocol negotiation is the one operators get.
fn config(sim: &Sim) -> String {
    let (url, _) = sim.controller_address();
    let controller = url.trim_start_matches("https://").rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or(url);
    let node1 = sim.nodes[0].ip();
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n\
         - job_name: ferry-proxy\n  static_configs:\n  - targets: ['127.0.0.1:15020', '{node1}:15020']\n\
         - job_name: ferry-agent\n  static_configs:\n  - targets: ['127.0.0.1:15014']\n\
         - job_name: ferry-controller\n  static_configs:\n  - targets: ['{controller}:15014']\n"
    )
}

fn start_prometheus(sim: &Sim) -> Prometheus {
    let bin = prometheus_bin();
    let dir = TempDir::new("prometheus");
    std::fs::write(dir.path().join("prometheus.yml"), config(sim)).unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let netns = sim.nodes[1].netns.clone();
    let child = Command::new("ip")
        .args(["netns", "exec", &netns, "setpriv", "--pdeathsig", "KILL", "--"])
        .arg(bin)
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn prometheus");
    sim.cleanup.pid(child.id());
    let p = Prometheus { child, netns, dir };
    poll("Prometheus to become ready", &p, |p| get(p, "/-/ready", &[]).is_some_and(|b| b.contains("Ready")).then_some(()));
    p
}

/// A GET to Prometheus' HTTP API from inside its namespace (curl does the URL encoding).
fn get(p: &Prometheus, path: &str, form: &[(&str, &str)]) -> Option<String> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &p.netns, "curl", "-sf", "--max-time", "5", "-G"]);
    for (k, v) in form {
        c.arg("--data-urlencode").arg(format!("{k}={v}"));
    }
    let out = c.arg(format!("http://{PROMETHEUS}{path}")).stderr(Stdio::null()).output().expect("curl (./x installs it)");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The instant-vector result of `promql`, as (labels, value) pairs.
fn query(p: &Prometheus, promql: &str) -> Vec<(Value, f64)> {
    let Some(body) = get(p, "/api/v1/query", &[("query", promql)]) else { return Vec::new() };
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let rows = v["data"]["result"].as_array().cloned().unwrap_or_default();
    rows.into_iter().map(|r| (r["metric"].clone(), r["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN))).collect()
}

fn poll<T>(what: &str, p: &Prometheus, mut f: impl FnMut(&Prometheus) -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f(p) {
            return v;
        }
        if Instant::now() > end {
            let targets = get(p, "/api/v1/targets", &[]).unwrap_or_default();
            let log = std::fs::read_to_string(p.dir.path().join("prometheus.log")).unwrap_or_default();
            panic!("timed out waiting for {what}\ntargets: {targets}\nprometheus log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn label<'a>(m: &'a Value, name: &str) -> &'a str {
    m[name].as_str().unwrap_or("")
}

#[test]
fn a_real_prometheus_scrapes_every_role_and_sees_the_dashboard_labels() {
    let sim = cluster(ferry_harness::demo::SCENARIO);
    let prom = start_prometheus(&sim);
    let up = poll("all four targets up", &prom, |p| {
        let up = query(p, "up");
        (up.len() == 4 && up.iter().all(|(_, v)| *v == 1.0)).then_some(up)
    });
    let jobs: Vec<&str> = up.iter().map(|(m, _)| label(m, "job")).collect();
    assert_eq!(jobs.iter().filter(|j| **j == "ferry-proxy").count(), 2, "{up:?}");

    let backend = sim.pod("shop", "backend").addr(8080);
    let vip: std::net::SocketAddr = "198.19.0.10:80".parse().unwrap();
    for dst in [backend, vip] {
        let payload = b"scraped by prometheus".repeat(10);
        assert_eq!(roundtrip(&sim, FRONTEND, dst, &payload).as_deref(), Some(&payload[..]), "{dst}");
    }

    // What the Istio Service dashboard's server-side panels and Kiali's graph select on.
    let promql = "sum by (reporter, source_workload, destination_service, connection_security_policy) \
                  (istio_tcp_connections_opened_total{source_workload=\"frontend\"})";
    let want = |rows: &[(Value, f64)], reporter: &str, n: f64| {
        rows.iter().any(|(m, v)| {
            label(m, "reporter") == reporter
                && label(m, "destination_service") == BACKEND_SERVICE
                && label(m, "connection_security_policy") == "mutual_tls"
                && *v == n
        })
    };
    let rows = poll("the frontend's connections to the backend in Prometheus", &prom, |p| {
        let rows = query(p, promql);
        (want(&rows, "destination", 2.0) && want(&rows, "source", 1.0)).then_some(rows)
    });
    // The pod-IP connection names no service on the source side (as ztunnel), so every
    // source series is accounted for: one to the VIP, one to the pod.
    let source: f64 = rows.iter().filter(|(m, _)| label(m, "reporter") == "source").map(|(_, v)| v).sum();
    assert_eq!(source, 2.0, "{rows:?}");

    // The backend echoed both 210-byte payloads: its response bytes, on the destination side.
    let sent = "sum(istio_tcp_sent_bytes_total{reporter=\"destination\",source_workload=\"frontend\",destination_service=\"backend.shop.svc.cluster.local\"})";
    poll("the echoed bytes in istio_tcp_sent_bytes_total", &prom, |p| (query(p, sent).first().map(|r| r.1) == Some(420.0)).then_some(()));
    let build = query(&prom, "istio_build{component=\"ztunnel\"}");
    assert_eq!(build.len(), 2, "both node proxies in the Ztunnel dashboard's versions panel: {build:?}");
    let enrolled = query(&prom, "ferry_agent_enrolled_pods{job=\"ferry-agent\"}");
    assert_eq!(enrolled.first().map(|r| r.1), Some(1.0), "node-2's agent enrolled the backend: {enrolled:?}");
    let cni_adds = query(&prom, "sum(ferry_agent_cni_requests_total{job=\"ferry-agent\",command=\"ADD\",result=\"ok\"})");
    let on_node2 = sim.pods.values().filter(|p| p.node == 1).count() as f64;
    assert_eq!(cni_adds.first().map(|r| r.1), Some(on_node2), "one CNI ADD per pod created on node-2: {cni_adds:?}");
    let zds = query(&prom, "ferry_agent_zds_connections{job=\"ferry-agent\"}");
    assert_eq!(zds.first().map(|r| r.1), Some(1.0), "node-2's proxy is connected to its agent: {zds:?}");

    // A held connection is one open socket on each side, and none once it is closed.
    let sockets = |p: &Prometheus| {
        let mut by: Vec<(String, f64)> =
            query(p, "sum by (reporter) (istio_tcp_sockets_open)").iter().map(|(m, v)| (label(m, "reporter").to_string(), *v)).collect();
        by.sort_by(|a, b| a.0.cmp(&b.0));
        by
    };
    let open = |n: f64| vec![("destination".to_string(), n), ("source".to_string(), n)];
    let held = ferry_harness::sim::apps::connect(&sim.pod("shop", "frontend").netns_path(), backend).expect("hold a connection");
    poll("one open socket per side in istio_tcp_sockets_open", &prom, |p| (sockets(p) == open(1.0)).then_some(()));
    drop(held);
    poll("no open sockets once the connection closed", &prom, |p| (sockets(p) == open(0.0)).then_some(()));
    let cni_latency =
        query(&prom, "sum(ferry_agent_cni_request_duration_seconds_count{job=\"ferry-agent\",command=\"ADD\",result=\"ok\"})");
    assert_eq!(cni_latency.first().map(|r| r.1), Some(on_node2), "each CNI ADD in the latency histogram: {cni_latency:?}");
    for family in
        ["process_open_fds", "process_resident_memory_bytes", "process_cpu_seconds_total", "tokio_num_workers", "tokio_num_alive_tasks"]
    {
        assert_eq!(query(&prom, family).len(), 4, "{family} from every target");
    }
}
