//! One benchmark measurement at a time, against one target (a client pod on node 1 and a server
//! pod on node 2, in a namespace that is or is not captured). Each returns numbers; the runner
//! repeats, interleaves and reports them.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::procstat::{cpu_ns, rss_kb};
use crate::sim::{apps, Sim};

pub(crate) const ECHO_PORT: u16 = 7000;
pub(crate) const SINK_PORT: u16 = 7001;
pub(crate) const IPERF_PORT: u16 = 5201;
/// `ferry bench serve`'s HTTP/1.1 port (its echo port + 2).
pub(crate) const HTTP_PORT: u16 = ECHO_PORT + 2;

/// Where a measurement's traffic goes.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// `direct`, `ferry`, or the alternative proxy's name.
    pub(crate) name: String,
    pub(crate) namespace: String,
    /// Whether node proxies carry this target's traffic (CPU and memory are reported).
    pub(crate) proxied: bool,
    /// The server's Service address, when the traffic is addressed to the service (a
    /// waypoint serves service-addressed traffic); otherwise the server pod's IP.
    pub(crate) vip: Option<std::net::IpAddr>,
}

impl Target {
    pub(crate) fn server_addr(&self, sim: &Sim, port: u16) -> SocketAddr {
        match self.vip {
            Some(ip) => SocketAddr::new(ip, port),
            None => sim.pod(&self.namespace, "server").addr(port),
        }
    }
}

pub(crate) type Res<T> = Result<T, String>;

/// Runs `ferry bench <args>` in the target's client pod and returns its last JSON line.
pub(crate) fn tool(sim: &Sim, t: &Target, args: &[String]) -> Res<Value> {
    let child = sim.spawn_in_pod(&t.namespace, "client", args).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().ok_or_else(|| format!("`ferry {}` printed nothing ({})", args.join(" "), out.status))?;
    serde_json::from_str(last).map_err(|e| format!("`ferry {}`: {e}: {last}", args.join(" ")))
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

fn secs(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Proxy CPU nanoseconds on both nodes (0 when not proxied).
fn proxy_cpu(sim: &Sim) -> [u64; 2] {
    [0, 1].map(|i| sim.nodes[i].proxy_pid().and_then(cpu_ns).unwrap_or(0))
}

fn proxy_rss(sim: &Sim) -> [u64; 2] {
    [0, 1].map(|i| sim.nodes[i].proxy_pid().and_then(rss_kb).unwrap_or(0))
}

/// Bulk goodput in Gbit/s with `ferry bench stream`, and each proxy's CPU-seconds per GB.
pub(crate) fn stream(sim: &Sim, t: &Target, streams: usize, d: Duration) -> Res<(f64, [f64; 2])> {
    let before = proxy_cpu(sim);
    let v = tool(
        sim,
        t,
        &[s("bench"), s("stream"), s("--to"), s(t.server_addr(sim, SINK_PORT)), s("--streams"), s(streams), s("--duration"), secs(d)],
    )?;
    let after = proxy_cpu(sim);
    if v["verified"] != true {
        return Err(format!("stream data failed verification: {v}"));
    }
    let gb = v["bytes"].as_f64().unwrap_or(0.0) / 1e9;
    let cpu = [0, 1].map(|i| if gb > 0.0 { (after[i] - before[i]) as f64 / 1e9 / gb } else { 0.0 });
    Ok((v["gbit_per_s"].as_f64().unwrap_or(0.0), cpu))
}

/// Bulk goodput in Gbit/s with iperf3 (receiver side).
pub(crate) fn iperf(sim: &Sim, t: &Target, streams: usize, d: Duration) -> Res<f64> {
    let args = [
        s("-c"),
        s(t.server_addr(sim, IPERF_PORT).ip()),
        s("-p"),
        s(IPERF_PORT),
        s("-P"),
        s(streams),
        s("-t"),
        format!("{:.1}", d.as_secs_f64()),
        s("-J"),
    ];
    let child = sim.spawn_program_in_pod(&t.namespace, "client", Path::new("iperf3"), &args).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("iperf3 output: {e}"))?;
    v["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e9).ok_or_else(|| format!("iperf3: {}", v["error"]))
}

/// `ferry bench rr` arguments against the target's echo server (`rate` 0 is closed-loop).
fn rr_args(sim: &Sim, t: &Target, conns: usize, rate: u64, size: usize, d: Duration, warmup: &str) -> Vec<String> {
    let to = s(t.server_addr(sim, ECHO_PORT));
    let args =
        [("--to", to), ("--conns", s(conns)), ("--rate", s(rate)), ("--size", s(size)), ("--duration", secs(d)), ("--warmup", s(warmup))];
    [s("bench"), s("rr")].into_iter().chain(args.into_iter().flat_map(|(k, v)| [s(k), v])).collect()
}

/// Open-loop request/response latency; with proxy CPU (fraction of a core) and RSS at load.
pub(crate) fn rr(sim: &Sim, t: &Target, conns: usize, rate: u64, size: usize, d: Duration) -> Res<(Value, [f64; 2], [u64; 2])> {
    let before = proxy_cpu(sim);
    let start = Instant::now();
    let args = rr_args(sim, t, conns, rate, size, d, "500ms");
    let v = tool(sim, t, &args)?;
    let wall = start.elapsed().as_secs_f64();
    let rss = proxy_rss(sim);
    let after = proxy_cpu(sim);
    if v["count"].as_u64().unwrap_or(0) == 0 {
        return Err(format!("rr measured nothing: {v}"));
    }
    Ok((v, [0, 1].map(|i| (after[i] - before[i]) as f64 / 1e9 / wall), rss))
}

/// HTTP/1.1 requests (1 KiB responses, keep-alive) over `conns` connections at `rate`
/// requests/s (0: closed loop); with the waypoint's CPU (fraction of a core) and RSS (KiB)
/// when `waypoint` is its pid.
pub(crate) fn http(sim: &Sim, t: &Target, conns: usize, rate: u64, d: Duration, waypoint: Option<u32>) -> Res<(Value, f64, u64)> {
    let before = waypoint.and_then(cpu_ns).unwrap_or(0);
    let start = Instant::now();
    let args = [
        ("--to", s(t.server_addr(sim, HTTP_PORT))),
        ("--host", format!("server.{}.svc.cluster.local", t.namespace)),
        ("--conns", s(conns)),
        ("--rate", s(rate)),
        ("--duration", secs(d)),
        ("--warmup", s("500ms")),
    ];
    let args: Vec<String> = [s("bench"), s("http")].into_iter().chain(args.into_iter().flat_map(|(k, v)| [s(k), v])).collect();
    let v = tool(sim, t, &args)?;
    let wall = start.elapsed().as_secs_f64();
    let rss = waypoint.and_then(rss_kb).unwrap_or(0);
    let cpu = waypoint.and_then(cpu_ns).unwrap_or(0).saturating_sub(before) as f64 / 1e9 / wall;
    if v["count"].as_u64().unwrap_or(0) == 0 || v["errors"].as_u64().unwrap_or(0) > 0 {
        return Err(format!("http: no clean measurement: {v}"));
    }
    Ok((v, cpu, rss))
}

/// New connections per second (connect, 64-byte echo, close).
pub(crate) fn crr(sim: &Sim, t: &Target, concurrency: usize, d: Duration) -> Res<Value> {
    let v = tool(
        sim,
        t,
        &[s("bench"), s("crr"), s("--to"), s(t.server_addr(sim, ECHO_PORT)), s("--concurrency"), s(concurrency), s("--duration"), secs(d)],
    )?;
    if v["count"].as_u64().unwrap_or(0) == 0 {
        return Err(format!("crr measured nothing: {v}"));
    }
    Ok(v)
}

/// Memory per idle proxied connection: proxies' RSS growth while `n` proven-open idle
/// connections are held, per connection (KiB), and RSS growth left after closing them (KiB).
pub(crate) fn idle_memory(sim: &Sim, t: &Target, n: usize) -> Res<([f64; 2], [f64; 2])> {
    // Let the proxies' heap reclaimers (1 s period) return what earlier runs freed first.
    std::thread::sleep(Duration::from_millis(2500));
    let base = proxy_rss(sim);
    let mut child = sim
        .spawn_in_pod(&t.namespace, "client", &[s("bench"), s("hold"), s("--to"), s(t.server_addr(sim, ECHO_PORT)), s("--conns"), s(n)])
        .map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let held: Value =
        serde_json::from_str(&lines.next().ok_or("hold printed nothing")?.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    if held["held"].as_u64() != Some(n as u64) {
        let _ = child.kill();
        return Err(format!("only {} of {n} connections could be opened", held["held"]));
    }
    std::thread::sleep(Duration::from_millis(500));
    let loaded = proxy_rss(sim);
    drop(child.stdin.take());
    let _ = lines.next();
    let _ = child.wait();
    std::thread::sleep(Duration::from_secs(2));
    let after = proxy_rss(sim);
    let per = [0, 1].map(|i| loaded[i].saturating_sub(base[i]) as f64 / n as f64);
    let left = [0, 1].map(|i| after[i] as f64 - base[i] as f64);
    Ok((per, left))
}

/// Closed-loop 16 KiB request/response over `conns` connections: aggregate MB/s and p99 µs.
pub(crate) fn concurrency(sim: &Sim, t: &Target, conns: usize, d: Duration) -> Res<(f64, f64)> {
    let args = rr_args(sim, t, conns, 0, 16 * 1024, d, "300ms");
    let v = tool(sim, t, &args)?;
    if v["count"].as_u64().unwrap_or(0) == 0 || v["errors"].as_u64().unwrap_or(0) > 0 {
        return Err(format!("{conns} connections: no clean measurement: {v}"));
    }
    Ok((v["mbyte_per_s"].as_f64().unwrap_or(0.0), v["p99_us"].as_f64().unwrap_or(0.0)))
}

/// Time from starting node 2's proxy to its readiness, in ms.
pub(crate) fn proxy_startup(sim: &mut Sim) -> Res<f64> {
    sim.stop_proxy(1, nix::sys::signal::Signal::SIGTERM);
    let start = Instant::now();
    sim.start_proxy(1).map_err(|e| e.to_string())?;
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

/// Time from creating a client pod to its first byte echoed by the target's server, in ms.
pub(crate) fn pod_to_first_byte(sim: &mut Sim, t: &Target, name: &str) -> Res<f64> {
    let manifest =
        format!("{{apiVersion: v1, kind: Pod, metadata: {{name: {name}, namespace: {}}}, spec: {{nodeName: node-1}}}}", t.namespace);
    let pod = ferry_core::k8s::manifests::parse_documents(&manifest, "bench")
        .map_err(|e| e.to_string())?
        .pods
        .into_values()
        .next()
        .ok_or("no pod")?;
    let dst = t.server_addr(sim, ECHO_PORT);
    let start = Instant::now();
    let p = sim.create_pod(pod).map_err(|e| e.to_string())?;
    loop {
        if apps::roundtrip(&p.netns_path(), dst, b"first".to_vec()).is_ok_and(|b| b == b"first") {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err("the new pod never reached the server".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    sim.delete_pod(&t.namespace, name).map_err(|e| e.to_string())?;
    Ok(ms)
}

/// Starts the servers (ferry bench serve and iperf3) in the target's server pod.
pub(crate) fn start_servers(sim: &Sim, t: &Target) -> Res<()> {
    let mut serve =
        sim.spawn_in_pod(&t.namespace, "server", &[s("bench"), s("serve"), s("--port"), s(ECHO_PORT)]).map_err(|e| e.to_string())?;
    let mut first = String::new();
    BufReader::new(serve.stdout.take().ok_or("no stdout")?).read_line(&mut first).map_err(|e| e.to_string())?;
    if !first.contains("listening") {
        return Err(format!("bench server did not start: {first}"));
    }
    let args = [s("-s"), s("-p"), s(IPERF_PORT)];
    let iperf = sim.spawn_program_in_pod(&t.namespace, "server", Path::new("iperf3"), &args).map_err(|e| e.to_string())?;
    // Both run for the whole benchmark; the simulation's cleanup kills them.
    std::mem::forget(serve);
    std::mem::forget(iperf);
    let netns = sim.pod(&t.namespace, "server").netns_path();
    let listening = || {
        crate::sim::sh(&format!("ip netns exec {} ss -ltnH", netns.file_name().unwrap_or_default().to_string_lossy()))
            .is_ok_and(|l| l.contains(&format!(":{IPERF_PORT}")))
    };
    crate::sim::wait(Duration::from_secs(10), "iperf3 server", listening).map_err(|e| e.to_string())
}
