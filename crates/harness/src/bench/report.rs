//! Writes the benchmark report: JSON lines, and a Markdown section (machine, command, table with
//! ratios to `direct`, the targets) placed between markers in `docs/benchmarks.md` so the
//! hand-written analysis around it survives re-runs.

use std::fmt::Write;

use super::measure::Target;
use super::results::{fmt, Results};
use super::runner::{Group, RunArgs};

const BEGIN: &str = "<!-- results:begin (written by `ferry bench run`) -->";
const END: &str = "<!-- results:end -->";

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("unknown").trim().to_string();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = mem
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cpus} CPUs, {mem_gib:.0} GiB RAM, Linux {}", kernel.trim())
}

/// What a target of the issue needs, against what was measured.
fn targets_section(r: &Results) -> String {
    let m = |name: &str, t: &str| r.summary(name, t).map(|s| s.median);
    let ratio = |name: &str| Some(m(name, "ferry")? / m(name, "direct")?);
    let added = |q: &str| Some(m(&format!("latency.rr_1k_1000rps.{q}"), "ferry")? - m(&format!("latency.rr_1k_1000rps.{q}"), "direct")?);
    let worst = |a: &str, b: &str| Some(m(a, "ferry")?.max(m(b, "ferry")?));
    let idle = worst("memory.idle_rss.client_proxy", "memory.idle_rss.server_proxy");
    let per_conn = worst("memory.per_idle_connection.1000.client_proxy", "memory.per_idle_connection.1000.server_proxy")
        .or_else(|| worst("memory.per_idle_connection.20.client_proxy", "memory.per_idle_connection.20.server_proxy"));
    let rows: Vec<(&str, Option<f64>, &str, bool)> = vec![
        (
            "single-stream throughput ratio to direct (stream)",
            ratio("throughput.stream.1"),
            "≥ 0.35×",
            ratio("throughput.stream.1").is_some_and(|v| v >= 0.35),
        ),
        (
            "4-stream throughput ratio to direct (stream)",
            ratio("throughput.stream.4"),
            "≥ 0.45×",
            ratio("throughput.stream.4").is_some_and(|v| v >= 0.45),
        ),
        ("added p50 latency, 1 KB at 1000 rps (µs)", added("p50"), "≤ 100", added("p50").is_some_and(|v| v <= 100.0)),
        ("added p99 latency, 1 KB at 1000 rps (µs)", added("p99"), "≤ 250", added("p99").is_some_and(|v| v <= 250.0)),
        ("idle RSS per node proxy (MiB)", idle, "≤ 12", idle.is_some_and(|v| v <= 12.0)),
        ("memory per idle proxied connection, 1000 open (KiB, worse proxy)", per_conn, "≤ 4", per_conn.is_some_and(|v| v <= 4.0)),
        (
            "unpooled new mTLS tunnels per second (per proxy core)",
            m("connections.unpooled", "ferry"),
            "≥ 1500",
            m("connections.unpooled", "ferry").is_some_and(|v| v >= 1500.0),
        ),
    ];
    let wp = super::runner::WAYPOINT_TARGET;
    let wp_idle = m("http.waypoint_idle_rss", wp);
    let wp_rps = m("http.rps_per_waypoint_core", wp);
    let wp_added = m("http.latency_1000rps.p50", wp).zip(m("http.latency_1000rps.p50", "ferry")).map(|(w, l4)| w - l4);
    let mut rows = rows;
    rows.push(("waypoint idle RSS (MiB)", wp_idle, "≤ 20", wp_idle.is_some_and(|v| v <= 20.0)));
    rows.push(("waypoint HTTP/1.1 requests/s per waypoint core, keep-alive", wp_rps, "≥ 10000", wp_rps.is_some_and(|v| v >= 10000.0)));
    rows.push((
        "waypoint added p50 over the L4 mesh path, HTTP/1.1 at 1000 rps (µs)",
        wp_added,
        "≤ 150",
        wp_added.is_some_and(|v| v <= 150.0),
    ));
    let mut out = String::from("| target | measured | goal | met |\n|---|---|---|---|\n");
    for (what, v, goal, met) in rows {
        let _ = writeln!(out, "| {what} | {} | {goal} | {} |", v.map(fmt).unwrap_or("–".into()), if met { "yes" } else { "no" });
    }
    out
}

pub(crate) fn write(args: &RunArgs, r: &Results, targets: &[String], reps: usize) -> Result<(), String> {
    let json_path = args.json.clone().unwrap_or_else(|| args.out.with_extension("jsonl"));
    if let Some(dir) = json_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    std::fs::write(&json_path, r.json_lines()).map_err(|e| format!("{}: {e}", json_path.display()))?;
    let mut section = format!("{BEGIN}\n\n");
    let command = if args.quick { "sudo ferry bench run --quick".to_string() } else { format!("sudo ferry bench run --reps {reps}") };
    let date = ferry_core::timefmt::rfc3339(std::time::SystemTime::now());
    let _ = writeln!(section, "Measured {date} on {}.\n", machine());
    let _ = writeln!(section, "Command: `{command}` (release build). {reps} repetition(s), targets interleaved; node 1 (clients, its proxy) pinned to CPU 0, node 2 (servers, its proxy) to CPU 1, one proxy worker thread; every pod has `net.ipv4.tcp_tw_reuse=1` and ports 1024–65535 so connection-rate runs cannot exhaust ephemeral ports. Medians with [min–max].\n");
    let _ = writeln!(section, "### Against the goals\n\n{}", targets_section(r));
    let _ = writeln!(section, "### All measurements\n\n{}", r.markdown_table(targets));
    if !r.errors.is_empty() {
        let _ = writeln!(section, "Failed measurements:\n");
        for e in &r.errors {
            let _ = writeln!(section, "* {e}");
        }
        section.push('\n');
    }
    let _ = writeln!(section, "Raw results: `{}` (one JSON line per measurement).\n\n{END}", json_path.display());
    let existing = std::fs::read_to_string(&args.out).unwrap_or_default();
    let text = match (existing.find(BEGIN), existing.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{}{}", &existing[..b], section, &existing[e + END.len()..]),
        _ if existing.is_empty() => format!("# Benchmarks\n\n{section}\n"),
        _ => format!("{existing}\n{section}\n"),
    };
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    std::fs::write(&args.out, text).map_err(|e| format!("{}: {e}", args.out.display()))?;
    eprintln!("  wrote {} and {}", args.out.display(), json_path.display());
    Ok(())
}

/// Measurements that should have produced a number and did not.
pub(crate) fn missing(r: &Results, targets: &[Target], only: &[Group]) -> Vec<String> {
    let common = [
        "throughput.stream.1",
        "throughput.stream.4",
        "throughput.iperf3.1",
        "throughput.iperf3.4",
        "latency.rr_1k_1000rps.p50",
        "latency.rr_1k_1000rps.p99",
        "connections.pooled",
        "concurrency.1.throughput",
        "concurrency.10.p99",
        "startup.pod_add_to_first_byte",
    ];
    let proxied = [
        "cpu_s_per_gb.client_proxy",
        "cpu_s_per_gb.server_proxy",
        "latency.rr_1k_1000rps.client_proxy_cpu",
        "memory.idle_rss.client_proxy",
        "startup.proxy_ready",
    ];
    let mut out = Vec::new();
    for t in targets {
        for name in common.iter().chain(if t.proxied { proxied.iter() } else { [].iter() }) {
            if r.summary(name, &t.name).is_none() {
                out.push(format!("{name} ({})", t.name));
            }
        }
        let per_conn = r.metrics.iter().any(|m| m.name.starts_with("memory.per_idle_connection") && r.summary(&m.name, &t.name).is_some());
        if t.proxied && !per_conn {
            out.push(format!("memory.per_idle_connection ({})", t.name));
        }
    }
    let http = ["http.rps_16conns", "http.latency_1000rps.p50", "http.latency_1000rps.p99"];
    for t in ["direct", "ferry", super::runner::WAYPOINT_TARGET] {
        out.extend(http.iter().filter(|n| r.summary(n, t).is_none()).map(|n| format!("{n} ({t})")));
    }
    for n in ["http.waypoint_idle_rss", "http.rps_per_waypoint_core", "http.latency_1000rps.waypoint_cpu"] {
        if r.summary(n, super::runner::WAYPOINT_TARGET).is_none() {
            out.push(format!("{n} ({})", super::runner::WAYPOINT_TARGET));
        }
    }
    if r.summary("connections.unpooled", "ferry").is_none() {
        out.push("connections.unpooled (ferry)".into());
    }
    out.retain(|m| only.is_empty() || Group::of(m).is_some_and(|g| only.contains(&g)));
    out
}
