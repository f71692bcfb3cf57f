//! `ferry demo`: the ambient mesh on this machine without Kubernetes. Builds a two-node
//! simulated cluster, runs pods inside and outside the mesh, sends traffic between them, and
//! prints for each flow whether it was encrypted, the two SPIFFE identities and the bytes,
//! with where an operator would look. Exits 0 only when every flow behaved as expected, and
//! leaves nothing behind (also on Ctrl-C).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::sim::{apps, observe, Sim, SimOptions};

pub const SCENARIO: &str = include_str!("../../../e2e/scenarios/demo.yaml");
/// The scenario's checks, shared with the kind runner (e2e/kind/run.sh), which reads the file.
pub const FLOWS: &str = include_str!("../../../e2e/scenarios/demo.flows");
const MESH_CANARY: &str = "FERRY-MESH-CANARY";
const PLAIN_CANARY: &str = "FERRY-PLAIN-CANARY";

#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep the cluster running after the report until Enter or Ctrl-C, to look around.
    #[arg(long)]
    pub(crate) hold: bool,
    /// Keep the working directory (logs, cluster state) after exit.
    #[arg(long)]
    pub(crate) keep_logs: bool,
    /// Run node N's proxy as another ZDS-speaking binary, e.g. Istio's ztunnel (`2=/path/to/ztunnel`),
    /// pointed at the controller exactly as ferry's proxies are: an interop check. Its access log
    /// must be JSON lines with ztunnel's field names (`LOG_FORMAT=json`, set for it).
    #[arg(long, value_name = "N=PATH", value_parser = node_proxy)]
    pub(crate) node_proxy: Option<(usize, PathBuf)>,
    /// Arguments for the --node-proxy binary, whitespace-separated (`proxy` to run ferry itself).
    #[arg(long, value_name = "ARGS", requires = "node_proxy", default_value = "")]
    pub(crate) node_proxy_args: String,
    /// Extra environment for the --node-proxy binary, `K=V` (repeatable).
    #[arg(long, value_name = "K=V", requires = "node_proxy")]
    pub(crate) node_proxy_env: Vec<String>,
}

fn node_proxy(s: &str) -> Result<(usize, PathBuf), String> {
    let (n, path) = s.split_once('=').ok_or("expected N=PATH, e.g. 2=/usr/local/bin/ztunnel")?;
    match n.parse::<usize>() {
        Ok(n @ 1..=2) => Ok((n - 1, PathBuf::from(path))),
        _ => Err(format!("node {n:?}: the demo has nodes 1 and 2")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// HBONE: mutual TLS with both identities.
    Mtls,
    /// The destination is outside the mesh: plain TCP, no identities.
    Passthrough,
    /// The source is outside the mesh: plain TCP captured at the destination (15006).
    PlainInbound,
    /// Refused by an AuthorizationPolicy at the destination: no echo, and the destination's
    /// record says no ALLOW policy matched.
    Denied,
}

#[derive(Debug)]
struct Flow {
    label: &'static str,
    from: (&'static str, &'static str),
    to: Target,
    expect: Expect,
    /// `/ns/<ns>/sa/<sa>` of the source and of the destination pod, from the scenario: how
    /// their SPIFFE identities end.
    src_sa: String,
    dst_sa: String,
}

#[derive(Debug)]
enum Target {
    Pod(&'static str, &'static str, u16),
    /// A Service's VIP, resolved from the scenario, and the pod behind it on its target port.
    Vip {
        vip: SocketAddr,
        backend: (String, String),
        target_port: u16,
    },
}

/// The flows of e2e/scenarios/demo.flows (its header says the format).
fn flows() -> Result<Vec<Flow>, String> {
    let state = ferry_core::k8s::manifests::parse_documents(SCENARIO, "demo.yaml").map_err(|e| e.to_string())?;
    let ns_name = |s: &'static str| s.split_once('/').ok_or_else(|| format!("demo.flows: {s:?} is not namespace/name"));
    let mut out = Vec::new();
    for line in FLOWS.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let bad = || format!("demo.flows: cannot read {line:?}");
        let mut words = line.split_whitespace();
        let (Some(expect), Some(from), Some(to)) = (words.next(), words.next(), words.next()) else { return Err(bad()) };
        let label = line[line.find(to).ok_or_else(bad)? + to.len()..].trim();
        let expect = match expect {
            "mtls" => Expect::Mtls,
            "passthrough" => Expect::Passthrough,
            "plain-inbound" => Expect::PlainInbound,
            "denied" => Expect::Denied,
            _ => return Err(bad()),
        };
        let (kind, rest) = to.split_once(':').ok_or_else(bad)?;
        let (target, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let (ns, name) = ns_name(target)?;
        let to = match kind {
            "pod" => Target::Pod(ns, name, port),
            "service" => vip_target(&state, ns, name, port).ok_or_else(|| format!("demo.flows: no service port {to} in demo.yaml"))?,
            _ => return Err(bad()),
        };
        let from = ns_name(from)?;
        let sa_of = |ns: &str, name: &str| {
            let p = state.pod(ns, name).ok_or_else(|| format!("demo.flows: no pod {ns}/{name} in demo.yaml"))?;
            Ok::<_, String>(format!("/ns/{ns}/sa/{}", p.service_account()))
        };
        let dst_sa = match &to {
            Target::Pod(ns, name, _) => sa_of(ns, name)?,
            Target::Vip { backend: (ns, name), .. } => sa_of(ns, name)?,
        };
        out.push(Flow { label, from, to, expect, src_sa: sa_of(from.0, from.1)?, dst_sa });
    }
    Ok(out)
}

/// A Service port of the scenario: its VIP, the first pod its selector matches, and the target
/// port on that pod (a named one resolved against the pod's container ports).
fn vip_target(state: &ferry_core::k8s::objects::ClusterState, ns: &str, name: &str, port: u16) -> Option<Target> {
    use ferry_core::k8s::objects::IntOrString;
    let svc = state.services.get(&format!("{ns}/{name}"))?;
    let sp = svc.spec.ports.iter().find(|p| p.port == port)?;
    let vip = SocketAddr::new(svc.spec.cluster_ip.parse().ok()?, port);
    let sel = &svc.spec.selector;
    let pod = state
        .pods
        .values()
        .find(|p| p.metadata.namespace == ns && !sel.is_empty() && sel.iter().all(|(k, v)| p.metadata.labels.get(k) == Some(v)))?;
    let target_port = match &sp.target_port {
        None => port,
        Some(IntOrString::Int(t)) => *t,
        Some(IntOrString::Str(n)) => pod.spec.containers.iter().flat_map(|c| &c.ports).find(|p| &p.name == n)?.container_port,
    };
    Some(Target::Vip { vip, backend: (ns.to_string(), pod.metadata.name.clone()), target_port })
}

pub fn run(args: DemoArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    preflight(&exe)?;
    let mut opts = SimOptions::new(exe, 2);
    opts.keep_work_dir = args.keep_logs;
    if let Some((node, bin)) = &args.node_proxy {
        let env = args.node_proxy_env.iter().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string()));
        opts.alt_proxy = Some(crate::sim::AltProxy {
            bin: bin.clone(),
            args: args.node_proxy_args.split_whitespace().map(String::from).collect(),
            env: env.chain([("LOG_FORMAT".to_string(), "json".to_string())]).collect(),
            control_plane: true,
            nodes: vec![*node],
        });
        println!("ferry demo: node-{}'s proxy is {} (interop check)\n", node + 1, bin.display());
    }
    println!("ferry demo: an ambient mesh on this machine, no Kubernetes needed\n");
    println!("  building 2 nodes and a router as network namespaces; pods get their network from");
    println!("  the bridge + host-local CNI plugins chained with ferry-cni, as a container runtime does;");
    println!("  one `ferry controller` serves workloads (WDS over delta xDS) and certificates (the Istio");
    println!("  CA API) over TLS to every node proxy, each authenticated by its own token\n");
    let mut sim = Sim::new(opts).map_err(|e| e.to_string())?;
    sim.cleanup.clone().on_signals();
    let work = sim.work.clone();
    let result = scenario(&mut sim, args.hold);
    drop(sim);
    if args.keep_logs {
        println!("  logs and cluster state kept in {}", work.display());
    }
    println!("  cleaned up: every namespace, rule and process the demo created is gone");
    result
}

fn preflight(exe: &std::path::Path) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("the demo builds network namespaces and nftables rules: run it as root (sudo)".into());
    }
    let cni = exe.with_file_name("ferry-cni");
    if !cni.exists() {
        return Err(format!("{} not found: build the workspace (`cargo build --release`) so ferry-cni sits next to ferry", cni.display()));
    }
    for bin in ["/usr/lib/cni/bridge", "/usr/lib/cni/host-local"] {
        if !std::path::Path::new(bin).exists() {
            return Err(format!("{bin} not found: install the CNI plugins (apt-get install containernetworking-plugins)"));
        }
    }
    for tool in ["nft", "ip", "setpriv", "tcpdump"] {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err(format!("`{tool}` not found: install nftables, iproute2, util-linux and tcpdump"));
        }
    }
    Ok(())
}

fn scenario(sim: &mut Sim, hold: bool) -> Result<(), String> {
    let e = |x: crate::sim::SimError| x.to_string();
    sim.start().map_err(e)?;
    sim.apply(SCENARIO).map_err(e)?;
    for p in sim.pods.values() {
        apps::echo_server(&p.netns_path(), 8080).map_err(|x| x.to_string())?;
        sim.wait_known(p.ip).map_err(e)?;
    }
    println!("  mesh:    namespace shop (istio.io/dataplane-mode=ambient): frontend + cache on node-1, backend on node-2");
    println!("  outside: namespace legacy: client on node-1, web on node-2\n");
    let capture = Capture::start(sim)?;
    let mut rows = Vec::new();
    for f in flows()? {
        rows.push(run_flow(sim, &f));
    }
    let wire = capture.finish()?;
    report(sim, &rows, &wire);
    println!(
        "\n  waypoint act: namespace store (istio.io/use-waypoint: waypoint), its waypoint `ferry waypoint` on node-2, shelf on node-1"
    );
    let (checks, _waypoint) = crate::demo_waypoint::run(sim)?;
    for c in &checks {
        println!("  {:<60} {:<42} {}", c.label, c.path, if c.ok { "ok" } else { "UNEXPECTED" });
        if !c.ok {
            println!("      {}", c.note);
        }
    }
    if hold {
        println!("\n  the cluster stays up; press Enter to tear it down");
        let _ = std::io::stdin().read_line(&mut String::new());
    }
    let failed = rows.iter().filter(|r| !r.ok).count() + usize::from(!wire.ok) + checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        println!("\n  result: every flow behaved as expected");
        Ok(())
    } else {
        Err(format!("{failed} check(s) did not behave as expected (see above)"))
    }
}

struct Row {
    label: &'static str,
    path: String,
    src_id: String,
    dst_id: String,
    bytes: u64,
    ok: bool,
    note: String,
}

fn target_addr(sim: &Sim, t: &Target) -> SocketAddr {
    match t {
        Target::Pod(ns, name, port) => sim.pod(ns, name).addr(*port),
        Target::Vip { vip, .. } => *vip,
    }
}

fn run_flow(sim: &Sim, f: &Flow) -> Row {
    let src = sim.pod(f.from.0, f.from.1);
    let dst = target_addr(sim, &f.to);
    let canary = if f.expect == Expect::Mtls { MESH_CANARY } else { PLAIN_CANARY };
    let payload = format!("{canary} {} ", f.label).repeat(16).into_bytes();
    let mut row =
        Row { label: f.label, path: String::new(), src_id: "-".into(), dst_id: "-".into(), bytes: 0, ok: false, note: String::new() };
    let logs: Vec<usize> = sim.nodes.iter().map(|n| observe::access_log(&n.proxy_log()).len()).collect();
    match (apps::roundtrip(&src.netns_path(), dst, payload.clone()), f.expect) {
        (Ok(echo), Expect::Denied) if echo == payload => {
            row.note = "the connection was allowed: the payload came back".into();
            return row;
        }
        (Ok(echo), e) if e != Expect::Denied && echo != payload => {
            row.note = format!("echo mismatch ({} of {} bytes)", echo.len(), payload.len());
            return row;
        }
        (Err(err), e) if e != Expect::Denied => {
            row.note = format!("connection failed: {err}");
            return row;
        }
        _ => {}
    }
    let wait = Duration::from_secs(3);
    let (direction, node) = match f.expect {
        Expect::Passthrough => ("outbound", src.node),
        _ => match &f.to {
            Target::Pod(ns, name, _) => ("inbound", sim.pod(ns, name).node),
            Target::Vip { backend: (ns, name), .. } => ("inbound", sim.pod(ns, name).node),
        },
    };
    let log = sim.nodes[node].proxy_log();
    let record_dst = match &f.to {
        Target::Vip { backend: (ns, name), target_port, .. } => sim.pod(ns, name).addr(*target_port),
        Target::Pod(..) => dst,
    };
    let Some(r) = observe::find_record_after(&log, logs[node], direction, src.ip, record_dst, wait) else {
        row.note = format!("no {direction} access-log record at {}", log.display());
        return row;
    };
    let text = |k: &str| r[k].as_str().unwrap_or("-").to_string();
    row.src_id = text("src.identity");
    row.dst_id = text("dst.identity");
    row.bytes = r["bytes_recv"].as_u64().unwrap_or(0);
    // ztunnel's records carry no security policy; an identity on both sides means mTLS there.
    let mtls = match r.get("connection_security_policy") {
        Some(p) => p == "mutual_tls",
        None => r["src.identity"].is_string() && r["dst.identity"].is_string(),
    };
    row.path = match (f.expect, mtls) {
        (Expect::Denied, _) => "refused by policy at the destination".into(),
        (_, true) => "HBONE, mutual TLS".into(),
        (Expect::Passthrough, false) => "plain TCP (destination not in mesh)".into(),
        (_, false) => "plain TCP, captured on 15006".into(),
    };
    row.ok = match f.expect {
        Expect::Mtls => mtls && row.src_id.ends_with(&f.src_sa) && row.dst_id == format!("spiffe://cluster.local{}", f.dst_sa),
        Expect::Passthrough => !mtls && r["dst.hbone_addr"].is_null(),
        Expect::PlainInbound => !mtls && r["src.identity"].is_null(),
        // ferry's and ztunnel's records carry the same reason.
        Expect::Denied => r["error"].as_str().is_some_and(|e| e.contains("allow policies exist, but none allowed")),
    } && (f.expect == Expect::Denied || row.bytes == payload.len() as u64);
    if !row.ok {
        row.note = format!("unexpected record: {r}");
    }
    row
}

struct Wire {
    ok: bool,
    packets: usize,
    line: String,
}

/// A packet capture on the router bridge every node-to-node packet crosses.
struct Capture {
    child: std::process::Child,
    file: PathBuf,
}

impl Capture {
    fn start(sim: &Sim) -> Result<Capture, String> {
        let file = sim.work.join("links.pcap");
        let log = sim.work.join("tcpdump.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &sim.router, "tcpdump", "-i", "br0", "-n", "-U", "--immediate-mode", "-s", "0", "-w"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("tcpdump: {e}"))?;
        sim.cleanup.pid(child.id());
        crate::sim::wait(Duration::from_secs(10), "tcpdump to start", || {
            std::fs::read_to_string(&log).unwrap_or_default().contains("listening on")
        })
        .map_err(|e| e.to_string())?;
        Ok(Capture { child, file })
    }

    fn finish(mut self) -> Result<Wire, String> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        let raw = std::fs::read(&self.file).map_err(|e| e.to_string())?;
        let has = |needle: &str| raw.windows(needle.len()).any(|w| w == needle.as_bytes());
        let out = Command::new("tcpdump").args(["-nn", "-r"]).arg(&self.file).output().map_err(|e| e.to_string())?;
        let packets = String::from_utf8_lossy(&out.stdout).lines().count();
        let (mesh_seen, plain_seen) = (has(MESH_CANARY), has(PLAIN_CANARY));
        let line = match (mesh_seen, plain_seen) {
            (false, true) => format!("the mesh canary never crossed the node-to-node links in plaintext ({packets} packets captured; the non-mesh canary was visible, as it should be)"),
            (true, _) => "PLAINTEXT LEAK: the mesh canary was captured on a node-to-node link".to_string(),
            (false, false) => "the capture did not see the non-mesh canary either, so it proves nothing".to_string(),
        };
        Ok(Wire { ok: !mesh_seen && plain_seen, packets, line })
    }
}

fn report(sim: &Sim, rows: &[Row], wire: &Wire) {
    println!("  {:<52} {:<38} {:>6}  result", "flow", "path", "bytes");
    for r in rows {
        println!("  {:<52} {:<38} {:>6}  {}", r.label, r.path, r.bytes, if r.ok { "ok" } else { "UNEXPECTED" });
        if r.src_id != "-" || r.dst_id != "-" {
            println!("      source {}  ->  destination {}", r.src_id, r.dst_id);
        }
        if !r.note.is_empty() {
            println!("      {}", r.note);
        }
    }
    println!("\n  wire check ({} packets): {}", wire.packets, if wire.ok { "ok" } else { "FAILED" });
    println!("      {}", wire.line);
    let n2 = &sim.nodes[1];
    if let Ok(m) = n2.metrics() {
        let labels = [("reporter", "destination"), ("connection_security_policy", "mutual_tls"), ("destination_workload", "backend")];
        if let Some(v) = observe::metric(&m, "istio_tcp_connections_opened_total", &labels) {
            println!("\n  node-2 metrics: istio_tcp_connections_opened_total{{reporter=\"destination\",destination_workload=\"backend\",connection_security_policy=\"mutual_tls\",..}} {v}");
        }
    }
    println!("\n  where to look while a cluster runs (ferry demo --hold):");
    println!("      metrics      ip netns exec {} curl -s 127.0.0.1:15020/metrics", n2.netns);
    println!("      config dump  ip netns exec {} curl -s 127.0.0.1:15000/config_dump", n2.netns);
    println!("      access log   {} (JSON lines, target \"access\")", n2.proxy_log().display());
    println!("      controller   ip netns exec {} curl -s 127.0.0.1:15014/metrics; log {}", sim.router, sim.controller_log().display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flows_file_reads_into_the_demo_checks() {
        let flows = flows().unwrap();
        assert_eq!(flows.len(), 6);
        let vip = &flows[1];
        assert_eq!(vip.label, "shop/frontend -> backend.shop (service VIP)");
        match &vip.to {
            Target::Vip { vip, backend, target_port } => {
                assert_eq!((vip.to_string(), backend.1.as_str(), *target_port), ("198.19.0.10:80".into(), "backend", 8080));
            }
            t => panic!("{t:?}"),
        }
        assert_eq!((vip.src_sa.as_str(), vip.dst_sa.as_str()), ("/ns/shop/sa/frontend", "/ns/shop/sa/backend"));
        assert_eq!(flows[4].expect, Expect::PlainInbound);
        assert_eq!(flows[4].src_sa, "/ns/legacy/sa/default");
        assert_eq!(flows[5].expect, Expect::Denied);
    }
}
