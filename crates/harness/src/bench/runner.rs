//! `ferry bench run`: the benchmark suite over the simulated cluster. Client pods on node 1,
//! server pods on node 2; targets `direct` (namespace not captured), `ferry`, and optionally
//! another ZDS-speaking proxy (`FERRY_BENCH_ALT_PROXY`). Node 1's processes are pinned to one
//! CPU and node 2's to the other, each proxy with one worker thread; targets are interleaved
//! within each repetition. Nothing here asserts a time: the output is numbers and ratios.
//!
//! The HTTP group measures HTTP/1.1 through a `ferry waypoint` (a pod on node 2, pinned with
//! it, one worker thread) against the L4 mesh path and `direct`: namespace `bench-wp` uses the
//! waypoint, and its client addresses the server's Service, as waypoint traffic is addressed.

use std::path::PathBuf;
use std::time::Duration;

use std::net::SocketAddr;

use super::measure::{self, Target};
use super::results::{Better, Results};
use crate::sim::{apps, AltProxy, Sim, SimOptions};

const SCENARIO: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: bench-direct}
---
apiVersion: v1
kind: Namespace
metadata: {name: bench-mesh, labels: {istio.io/dataplane-mode: ambient}}
---
{apiVersion: v1, kind: Pod, metadata: {name: client, namespace: bench-direct}, spec: {nodeName: node-1, serviceAccountName: client}}
---
{apiVersion: v1, kind: Pod, metadata: {name: server, namespace: bench-direct}, spec: {nodeName: node-2, serviceAccountName: server}}
---
{apiVersion: v1, kind: Pod, metadata: {name: client, namespace: bench-mesh}, spec: {nodeName: node-1, serviceAccountName: client}}
---
{apiVersion: v1, kind: Pod, metadata: {name: server, namespace: bench-mesh}, spec: {nodeName: node-2, serviceAccountName: server}}
---
apiVersion: v1
kind: Namespace
metadata: {name: bench-wp, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: bench-wp}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: waypoint, namespace: bench-wp, labels: {gateway.istio.io/managed: istio.io-mesh-controller}}
spec: {selector: {gateway.networking.k8s.io/gateway-name: waypoint}, clusterIP: 198.19.0.60, ports: [{name: mesh, port: 15008}]}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: bench-wp}
spec: {selector: {app: server}, clusterIP: 198.19.0.61, ports: [{name: http, port: 7002, targetPort: 7002}]}
---
{apiVersion: v1, kind: Pod, metadata: {name: client, namespace: bench-wp}, spec: {nodeName: node-1, serviceAccountName: client}}
---
{apiVersion: v1, kind: Pod, metadata: {name: server, namespace: bench-wp, labels: {app: server}}, spec: {nodeName: node-2, serviceAccountName: server}}
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-1, namespace: bench-wp, labels: {gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none}}
spec: {nodeName: node-2, serviceAccountName: waypoint}
"#;

/// The waypoint target's Service address (`server.bench-wp`).
const WAYPOINT_VIP: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 0, 61));

#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// A seconds-long smoke run (one repetition, short durations, small counts).
    #[arg(long)]
    pub(crate) quick: bool,
    /// Repetitions of every measurement (at least 3 for a report).
    #[arg(long, default_value_t = 3)]
    pub(crate) reps: usize,
    /// Where to write the Markdown report.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub(crate) out: PathBuf,
    /// Where to write one JSON line per measurement (default: next to the report).
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Run only these groups (for profiling one path; a report needs all of them).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub(crate) only: Vec<Group>,
}

/// A group of measurements, named by the first part of the metric names it produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Group {
    Throughput,
    Latency,
    Connections,
    Concurrency,
    Memory,
    Startup,
    Http,
}

impl Group {
    /// The group a metric belongs to (CPU per GB is measured with the throughput runs).
    pub(crate) fn of(metric: &str) -> Option<Group> {
        match metric.split('.').next()? {
            "throughput" | "cpu_s_per_gb" => Some(Group::Throughput),
            "latency" => Some(Group::Latency),
            "connections" => Some(Group::Connections),
            "concurrency" => Some(Group::Concurrency),
            "memory" => Some(Group::Memory),
            "startup" => Some(Group::Startup),
            "http" => Some(Group::Http),
            _ => None,
        }
    }
}

struct Plan {
    reps: usize,
    bulk: Duration,
    rr: Duration,
    crr: Duration,
    sweep: Duration,
    holds: Vec<usize>,
    conns: Vec<usize>,
    only: Vec<Group>,
}

impl Plan {
    fn wants(&self, g: Group) -> bool {
        self.only.is_empty() || self.only.contains(&g)
    }

    fn new(a: &RunArgs) -> Plan {
        if a.quick {
            let ms = Duration::from_millis;
            let (holds, conns, only) = (vec![20], vec![1, 10], a.only.clone());
            return Plan { reps: 1, bulk: ms(1000), rr: ms(1000), crr: ms(1000), sweep: ms(500), holds, conns, only };
        }
        let s = Duration::from_secs;
        Plan {
            reps: a.reps.max(1),
            bulk: s(5),
            rr: s(5),
            crr: s(5),
            sweep: s(3),
            holds: vec![100, 1000, 5000],
            conns: vec![1, 10, 100, 1000],
            only: a.only.clone(),
        }
    }
}

fn alt_from_env() -> Option<(String, AltProxy)> {
    let bin = PathBuf::from(std::env::var_os("FERRY_BENCH_ALT_PROXY")?);
    let name = std::env::var("FERRY_BENCH_ALT_NAME")
        .unwrap_or_else(|_| bin.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or("alt".into()));
    // The alternative proxy reads a local config unless asked to use the controller, so a
    // data-path comparison does not depend on its control-plane interop.
    let control_plane = std::env::var("FERRY_BENCH_ALT_CONTROL_PLANE").is_ok_and(|v| v == "true");
    Some((
        name,
        AltProxy { bin, args: words("FERRY_BENCH_ALT_ARGS"), env: env_pairs("FERRY_BENCH_ALT_ENV"), control_plane, nodes: Vec::new() },
    ))
}

/// The whitespace-separated words of an environment variable.
fn words(var: &str) -> Vec<String> {
    std::env::var(var).unwrap_or_default().split_whitespace().map(String::from).collect()
}

/// `K=V` words of an environment variable.
fn env_pairs(var: &str) -> Vec<(String, String)> {
    words(var).into_iter().filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect()
}

/// Load-generator settings in every pod, the same for all targets: the connection-rate runs
/// leave tens of thousands of TIME_WAIT sockets, which would otherwise exhaust the ephemeral
/// ports for the next minute and stall whatever measurement comes next.
const POD_SYSCTLS: [(&str, &str); 2] = [("net.ipv4.tcp_tw_reuse", "1"), ("net.ipv4.ip_local_port_range", "1024 65535")];

fn tune_pod(netns: &str) -> Result<(), String> {
    for (key, value) in POD_SYSCTLS {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", netns, "sh", "-c", &format!("echo '{value}' > {path}")])
            .output()
            .map_err(|e| format!("cannot run ip netns exec: {e}"))?;
        if !out.status.success() {
            return Err(format!("cannot set {key} in {netns}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
    }
    Ok(())
}

/// The benchmark cluster with servers running: direct and mesh pod pairs.
fn build_cluster(alt: &Option<(String, AltProxy)>) -> Result<(Sim, Vec<Target>), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut opts = SimOptions::new(exe, 2);
    opts.pin_cpus = true;
    // The default poll interval, not the tests' fast one: background work skews CPU numbers.
    opts.poll = Duration::from_secs(1);
    opts.proxy_env = vec![("ZTUNNEL_WORKER_THREADS".into(), "1".into())];
    opts.waypoint_env = vec![("ZTUNNEL_WORKER_THREADS".into(), "1".into())];
    opts.waypoint_env.extend(env_pairs("FERRY_BENCH_WAYPOINT_ENV"));
    // Extra settings for ferry's proxies, e.g. to profile one configuration by hand.
    opts.proxy_env.extend(env_pairs("FERRY_BENCH_PROXY_ENV"));
    let mut sim = Sim::new(opts).map_err(|e| e.to_string())?;
    sim.cleanup.clone().on_signals();
    sim.start().map_err(|e| e.to_string())?;
    sim.apply(SCENARIO).map_err(|e| e.to_string())?;
    let mut targets = vec![
        Target { name: "direct".into(), namespace: "bench-direct".into(), proxied: false, vip: None },
        Target { name: "ferry".into(), namespace: "bench-mesh".into(), proxied: true, vip: None },
    ];
    if let Some((name, _)) = alt {
        targets.push(Target { name: name.clone(), namespace: "bench-mesh".into(), proxied: true, vip: None });
    }
    for t in targets[..2].iter().chain([&waypoint_target()]) {
        measure::start_servers(&sim, t)?;
    }
    for p in sim.pods.values() {
        tune_pod(&p.netns)?;
        sim.wait_known(p.ip).map_err(|e| e.to_string())?;
    }
    Ok((sim, targets))
}

/// HTTP through the waypoint: `bench-wp`'s client to its server's Service.
fn waypoint_target() -> Target {
    Target { name: WAYPOINT_TARGET.into(), namespace: "bench-wp".into(), proxied: true, vip: Some(WAYPOINT_VIP) }
}

pub(crate) const WAYPOINT_TARGET: &str = "ferry+waypoint";

/// `ferry bench cluster`: the benchmark cluster, held until Enter, for profiling by hand.
pub(crate) fn hold_cluster() -> Result<(), String> {
    let (sim, targets) = build_cluster(&None)?;
    for t in &targets[..2] {
        let (c, srv) = (sim.pod(&t.namespace, "client"), sim.pod(&t.namespace, "server"));
        println!(
            "{}: client netns {} -> server {} (echo :{}, sink :{}, iperf3 :{})",
            t.name,
            c.netns,
            srv.ip,
            measure::ECHO_PORT,
            measure::SINK_PORT,
            measure::IPERF_PORT
        );
    }
    for (i, n) in sim.nodes.iter().enumerate() {
        println!("node-{}: netns {}, proxy pid {:?}, log {}", i + 1, n.netns, n.proxy_pid(), n.proxy_log().display());
    }
    println!(
        "example: ip netns exec {} {} bench stream --to {}:{} --duration 5s",
        sim.pod("bench-mesh", "client").netns,
        sim.opts.ferry_bin.display(),
        sim.pod("bench-mesh", "server").ip,
        measure::SINK_PORT
    );
    println!("press Enter to tear the cluster down");
    let _ = std::io::stdin().read_line(&mut String::new());
    Ok(())
}

pub(crate) fn run(args: RunArgs) -> Result<(), String> {
    let plan = Plan::new(&args);
    let alt = alt_from_env();
    let (sim, targets) = build_cluster(&alt)?;
    let mut r = Results::default();
    let waypoint = bench_waypoint(&sim)?;
    let mut bench = Bench { sim, alt, plan, current_alt: false, waypoint: waypoint.id() };
    bench.all(&targets, &mut r);
    drop(waypoint);
    let mut names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    if bench.plan.wants(Group::Http) {
        names.push(WAYPOINT_TARGET.into());
    }
    super::report::write(&args, &r, &names, bench.plan.reps)?;
    let missing = super::report::missing(&r, &targets, &args.only);
    if !r.errors.is_empty() || !missing.is_empty() {
        return Err(format!(
            "{} measurement(s) failed and {} produced no number: {:?} {:?}",
            r.errors.len(),
            missing.len(),
            r.errors,
            missing
        ));
    }
    Ok(())
}

/// The waypoint pod's `ferry waypoint`, once the node proxies know every pod.
fn bench_waypoint(sim: &Sim) -> Result<std::process::Child, String> {
    let child = sim.spawn_waypoint("bench-wp", "waypoint-1", "waypoint").map_err(|e| e.to_string())?;
    let ip = sim.pod("bench-wp", "waypoint-1").ip;
    let netns = sim.pod("bench-wp", "waypoint-1").netns_path();
    let ready =
        || apps::http_bytes(&netns, SocketAddr::new(ip, 15021), "GET", "/healthz/ready", Duration::from_secs(2)).is_ok_and(|r| r.0 == 200);
    crate::sim::wait(Duration::from_secs(20), "the bench waypoint's readiness", ready).map_err(|e| e.to_string())?;
    Ok(child)
}

struct Bench {
    sim: Sim,
    alt: Option<(String, AltProxy)>,
    plan: Plan,
    current_alt: bool,
    /// The waypoint's pid (the HTTP group's CPU and RSS).
    waypoint: u32,
}

impl Bench {
    fn all(&mut self, targets: &[Target], r: &mut Results) {
        if self.plan.wants(Group::Memory) {
            for t in targets.iter().filter(|t| t.proxied) {
                self.use_proxy(t);
                self.idle_rss(t, r);
            }
        }
        for rep in 0..self.plan.reps {
            for t in targets {
                eprintln!("  repetition {}/{}: {}", rep + 1, self.plan.reps, t.name);
                self.use_proxy(t);
                self.steady(t, r);
            }
        }
        for t in targets {
            self.use_proxy(t);
            if self.plan.wants(Group::Memory) {
                self.memory(t, r);
            }
            if self.plan.wants(Group::Startup) {
                self.startup(t, r);
            }
        }
        if self.plan.wants(Group::Http) {
            self.http(targets, r);
        }
        if self.plan.wants(Group::Connections) {
            self.unpooled(targets, r);
        }
        if self.plan.wants(Group::Throughput) {
            self.unpinned(targets, r);
        }
    }

    /// Node proxies of the kind `t` measures (ferry, or the alternative).
    fn use_proxy(&mut self, t: &Target) {
        let want_alt = self.alt.as_ref().is_some_and(|(n, _)| *n == t.name);
        if want_alt == self.current_alt {
            return;
        }
        self.sim.opts.alt_proxy = if want_alt { self.alt.as_ref().map(|(_, a)| a.clone()) } else { None };
        self.restart_proxies();
        self.current_alt = want_alt;
    }

    fn restart_proxies(&mut self) {
        for i in 0..2 {
            self.sim.stop_proxy(i, nix::sys::signal::Signal::SIGTERM);
            if let Err(e) = self.sim.start_proxy(i) {
                eprintln!("  cannot start the node proxy on node {}: {e}", i + 1);
            }
        }
    }

    fn idle_rss(&mut self, t: &Target, r: &mut Results) {
        for (i, side) in ["client", "server"].iter().enumerate() {
            match self.sim.nodes[i].proxy_pid().and_then(super::procstat::rss_kb) {
                Some(kb) => r.add(&format!("memory.idle_rss.{side}_proxy"), "MiB", Better::Lower, &t.name, kb as f64 / 1024.0),
                None => r.error("idle RSS", format!("no proxy process on node {}", i + 1)),
            }
        }
    }

    fn steady(&mut self, t: &Target, r: &mut Results) {
        if self.plan.wants(Group::Throughput) {
            self.throughput(t, r);
        }
        if self.plan.wants(Group::Latency) {
            self.latency(t, r);
        }
        if self.plan.wants(Group::Connections) {
            match measure::crr(&self.sim, t, 4, self.plan.crr) {
                Ok(v) => {
                    r.add("connections.pooled", "conn/s", Better::Higher, &t.name, v["connections_per_s"].as_f64().unwrap_or(0.0));
                    r.add(
                        "connections.pooled.connect_to_first_byte_p50",
                        "µs",
                        Better::Lower,
                        &t.name,
                        v["p50_us"].as_f64().unwrap_or(0.0),
                    );
                    r.add(
                        "connections.pooled.connect_to_first_byte_p99",
                        "µs",
                        Better::Lower,
                        &t.name,
                        v["p99_us"].as_f64().unwrap_or(0.0),
                    );
                }
                Err(e) => r.error(&format!("crr ({})", t.name), e),
            }
        }
        if self.plan.wants(Group::Concurrency) {
            for &n in &self.plan.conns.clone() {
                match measure::concurrency(&self.sim, t, n, self.plan.sweep) {
                    Ok((mbs, p99)) => {
                        r.add(&format!("concurrency.{n}.throughput"), "MB/s", Better::Higher, &t.name, mbs);
                        r.add(&format!("concurrency.{n}.p99"), "µs", Better::Lower, &t.name, p99);
                    }
                    Err(e) => r.error(&format!("{n} concurrent connections ({})", t.name), e),
                }
            }
        }
    }

    fn throughput(&mut self, t: &Target, r: &mut Results) {
        let (sim, p) = (&self.sim, &self.plan);
        for streams in [1, 4] {
            match measure::stream(sim, t, streams, p.bulk) {
                Ok((gbps, cpu)) => {
                    r.add(&format!("throughput.stream.{streams}"), "Gbit/s", Better::Higher, &t.name, gbps);
                    if t.proxied && streams == 1 {
                        r.add("cpu_s_per_gb.client_proxy", "CPU-s/GB", Better::Lower, &t.name, cpu[0]);
                        r.add("cpu_s_per_gb.server_proxy", "CPU-s/GB", Better::Lower, &t.name, cpu[1]);
                    }
                }
                Err(e) => r.error(&format!("stream x{streams} ({})", t.name), e),
            }
            match measure::iperf(sim, t, streams, p.bulk) {
                Ok(gbps) => r.add(&format!("throughput.iperf3.{streams}"), "Gbit/s", Better::Higher, &t.name, gbps),
                Err(e) => r.error(&format!("iperf3 x{streams} ({})", t.name), e),
            }
        }
    }

    fn latency(&mut self, t: &Target, r: &mut Results) {
        match measure::rr(&self.sim, t, 16, 1000, 1024, self.plan.rr) {
            Ok((v, cpu, rss)) => {
                for q in ["p50", "p90", "p99", "p999", "max"] {
                    r.add(
                        &format!("latency.rr_1k_1000rps.{q}"),
                        "µs",
                        Better::Lower,
                        &t.name,
                        v[format!("{q}_us")].as_f64().unwrap_or(0.0),
                    );
                }
                if t.proxied {
                    r.add("latency.rr_1k_1000rps.client_proxy_cpu", "cores", Better::Lower, &t.name, cpu[0]);
                    r.add("latency.rr_1k_1000rps.server_proxy_cpu", "cores", Better::Lower, &t.name, cpu[1]);
                    r.add("latency.rr_1k_1000rps.client_proxy_rss", "MiB", Better::Lower, &t.name, rss[0] as f64 / 1024.0);
                    r.add("latency.rr_1k_1000rps.server_proxy_rss", "MiB", Better::Lower, &t.name, rss[1] as f64 / 1024.0);
                }
            }
            Err(e) => r.error(&format!("rr ({})", t.name), e),
        }
    }

    fn memory(&mut self, t: &Target, r: &mut Results) {
        if !t.proxied {
            return;
        }
        for &n in &self.plan.holds.clone() {
            match measure::idle_memory(&self.sim, t, n) {
                Ok((per, left)) => {
                    r.add(&format!("memory.per_idle_connection.{n}.client_proxy"), "KiB", Better::Lower, &t.name, per[0]);
                    r.add(&format!("memory.per_idle_connection.{n}.server_proxy"), "KiB", Better::Lower, &t.name, per[1]);
                    r.add(&format!("memory.after_close.{n}.client_proxy"), "KiB", Better::Lower, &t.name, left[0]);
                    r.add(&format!("memory.after_close.{n}.server_proxy"), "KiB", Better::Lower, &t.name, left[1]);
                }
                Err(e) => r.error(&format!("{n} idle connections ({})", t.name), e),
            }
        }
    }

    fn startup(&mut self, t: &Target, r: &mut Results) {
        for rep in 0..self.plan.reps {
            if t.proxied {
                match measure::proxy_startup(&mut self.sim) {
                    Ok(ms) => r.add("startup.proxy_ready", "ms", Better::Lower, &t.name, ms),
                    Err(e) => r.error(&format!("proxy startup ({})", t.name), e),
                }
            }
            match measure::pod_to_first_byte(&mut self.sim, t, &format!("fresh-{rep}")) {
                Ok(ms) => r.add("startup.pod_add_to_first_byte", "ms", Better::Lower, &t.name, ms),
                Err(e) => r.error(&format!("pod start ({})", t.name), e),
            }
        }
    }

    /// HTTP/1.1 keep-alive through the waypoint, the L4 mesh path and direct, interleaved:
    /// closed-loop requests/s (and the waypoint's cores), and latency at 1000 requests/s.
    fn http(&mut self, targets: &[Target], r: &mut Results) {
        let Some(ferry) = targets.iter().find(|t| t.name == "ferry") else { return };
        self.use_proxy(ferry);
        let wp = Some(self.waypoint);
        match super::procstat::rss_kb(self.waypoint) {
            Some(kb) => r.add("http.waypoint_idle_rss", "MiB", Better::Lower, WAYPOINT_TARGET, kb as f64 / 1024.0),
            None => r.error("waypoint idle RSS", "no waypoint process".into()),
        }
        let http_targets = [targets[0].clone(), ferry.clone(), waypoint_target()];
        for _ in 0..self.plan.reps {
            for t in &http_targets {
                let via = t.vip.is_some().then_some(self.waypoint);
                match measure::http(&self.sim, t, 16, 0, self.plan.rr, via) {
                    Ok((v, cpu, _)) => {
                        let rps = v["requests_per_s"].as_f64().unwrap_or(0.0);
                        r.add("http.rps_16conns", "req/s", Better::Higher, &t.name, rps);
                        if via.is_some() && cpu > 0.0 {
                            r.add("http.rps_16conns.waypoint_cpu", "cores", Better::Lower, &t.name, cpu);
                            r.add("http.rps_per_waypoint_core", "req/s", Better::Higher, &t.name, rps / cpu);
                        }
                    }
                    Err(e) => r.error(&format!("http closed loop ({})", t.name), e),
                }
                match measure::http(&self.sim, t, 16, 1000, self.plan.rr, via.and(wp)) {
                    Ok((v, cpu, rss)) => {
                        for q in ["p50", "p90", "p99"] {
                            let us = v[format!("{q}_us")].as_f64().unwrap_or(0.0);
                            r.add(&format!("http.latency_1000rps.{q}"), "µs", Better::Lower, &t.name, us);
                        }
                        if via.is_some() {
                            r.add("http.latency_1000rps.waypoint_cpu", "cores", Better::Lower, &t.name, cpu);
                            r.add("http.latency_1000rps.waypoint_rss", "MiB", Better::Lower, &t.name, rss as f64 / 1024.0);
                        }
                    }
                    Err(e) => r.error(&format!("http at 1000 rps ({})", t.name), e),
                }
            }
        }
    }

    /// Connection rate with a fresh mTLS tunnel per connection (no pooling).
    fn unpooled(&mut self, targets: &[Target], r: &mut Results) {
        let Some(ferry) = targets.iter().find(|t| t.name == "ferry") else { return };
        self.use_proxy(ferry);
        self.sim.opts.proxy_env.push(("POOL_MAX_STREAMS_PER_CONNECTION".into(), "1".into()));
        self.restart_proxies();
        for _ in 0..self.plan.reps {
            match measure::crr(&self.sim, ferry, 4, self.plan.crr) {
                Ok(v) => r.add("connections.unpooled", "conn/s", Better::Higher, "ferry", v["connections_per_s"].as_f64().unwrap_or(0.0)),
                Err(e) => r.error("unpooled crr (ferry)", e),
            }
        }
        self.sim.opts.proxy_env.pop();
        self.restart_proxies();
    }

    /// The bulk single-stream measurement again without CPU pinning, as a check on pinning.
    fn unpinned(&mut self, targets: &[Target], r: &mut Results) {
        self.sim.opts.pin_cpus = false;
        self.restart_proxies();
        for t in targets.iter().take(2) {
            match measure::stream(&self.sim, t, 1, self.plan.bulk) {
                Ok((gbps, _)) => r.add("throughput.stream.1.unpinned", "Gbit/s", Better::Higher, &t.name, gbps),
                Err(e) => r.error(&format!("unpinned stream ({})", t.name), e),
            }
        }
        self.sim.opts.pin_cpus = true;
    }
}

#[cfg(test)]
mod tests {
    use super::Group;

    #[test]
    fn every_metric_belongs_to_the_group_that_measures_it() {
        let cases = [
            ("throughput.stream.1", Some(Group::Throughput)),
            ("cpu_s_per_gb.client_proxy", Some(Group::Throughput)),
            ("latency.rr_1k_1000rps.p99", Some(Group::Latency)),
            ("connections.unpooled (ferry)", Some(Group::Connections)),
            ("concurrency.1000.p99", Some(Group::Concurrency)),
            ("memory.per_idle_connection (ferry)", Some(Group::Memory)),
            ("startup.proxy_ready", Some(Group::Startup)),
            ("http.latency_1000rps.p50", Some(Group::Http)),
            ("nonsense", None),
        ];
        for (metric, want) in cases {
            assert_eq!(Group::of(metric), want, "{metric}");
        }
    }
}
