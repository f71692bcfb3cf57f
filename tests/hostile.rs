//! The standing hostile suite: a node proxy under attack, one test per class of resource
//! exhaustion, each asserting the bound it proves (descriptors, memory, CPU, time to recover)
//! and that legitimate traffic keeps flowing. Root only (network namespaces); fails without.
//!
//! Topology: namespace A runs a legitimate client proxy (in-mesh, its outbound captured), B
//! the victim's server proxy and applications, C the attacker, wired to B on its own link so
//! per-source limits can tell it apart. The attacker holds a valid mesh certificate (for
//! `default/attacker`) where the attack needs one. `FERRY_TEST_BIN` runs the suite against
//! another ferry binary (to show an older build failing it).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcp};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::netns::*;
use common::TempDir;

const STATE: &str = r#"
workloads:
- {uid: cli, name: client, namespace: default, serviceAccount: client, workloadIps: ["198.18.0.1"], protocol: HBONE}
- {uid: srv, name: server, namespace: default, serviceAccount: server, workloadIps: ["198.18.0.2"], protocol: HBONE}
"#;
const SERVER: &str = "198.18.0.2";
/// B's address on the attacker's link.
const VICTIM: &str = "198.18.1.2";

fn ferry() -> String {
    std::env::var("FERRY_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ferry").to_string())
}

/// One attack at a time: each runs three namespaces, two proxies and a flood on two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Victim {
    dir: TempDir,
    a: Ns,
    b: Ns,
    c: Ns,
    procs: Vec<Proc>,
    logs: [PathBuf; 2],
    _guard: std::sync::MutexGuard<'static, ()>,
}

impl Victim {
    /// Starts the topology; `env` goes to the victim's proxy, `nofile` caps its descriptors.
    fn start(env: &[(&str, &str)], nofile: Option<u64>) -> Victim {
        require_root();
        let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = TempDir::new("hostile");
        let ca = dir.path().join("ca");
        assert!(Command::new(ferry()).args(["ca", "init"]).arg(&ca).status().unwrap().success());
        let state = dir.path().join("state.yaml");
        std::fs::write(&state, STATE).unwrap();
        let (a, b, c) = (Ns::new("ha"), Ns::new("hb"), Ns::new("hc"));
        veth(&a, "eth0", "198.18.0.1", &b, "eth0", SERVER);
        veth(&c, "eth0", "198.18.1.3", &b, "eth1", VICTIM);
        install_redirect(&a);
        echo_server(&b, "0.0.0.0:8080");
        black_hole(&b, "0.0.0.0:8081");
        firehose(&b, "0.0.0.0:8082");
        let logs = [dir.path().join("client.log"), dir.path().join("victim.log")];
        let client = proxy(&a, "default/client/client", &state, &ca, &logs[0], &[], None);
        let victim = proxy(&b, "default/server/server", &state, &ca, &logs[1], env, nofile);
        let mut v = Victim { dir, a, b, c, procs: vec![client, victim], logs, _guard: guard };
        let (ns, logs) = ([&v.a, &v.b], v.logs.clone());
        for (i, ns) in ns.into_iter().enumerate() {
            wait_ready(ns, &mut v.procs[i], &logs[i]);
        }
        v
    }

    fn pid(&self) -> i32 {
        self.procs[1].0.id() as i32
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// A legitimate request through the mesh: A's proxy tunnels it to B's.
    fn legit(&self) -> bool {
        let payload = format!("legit {:x} ", fastrand::u64(..)).repeat(50).into_bytes();
        echo_roundtrip(&self.a, &format!("{SERVER}:8080"), payload.clone()).as_deref() == Some(&payload[..])
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.logs[1]).unwrap_or_default()
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, text) = http_get(&self.b, "127.0.0.1:15020", "/metrics").expect("victim metrics");
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

fn proxy(ns: &Ns, workload: &str, state: &Path, ca: &Path, log: &Path, env: &[(&str, &str)], nofile: Option<u64>) -> Proc {
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = ns.command("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg("--").arg(ferry());
            c
        }
        None => ns.command(&ferry()),
    };
    cmd.arg("proxy")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("PROXY_MODE", "dedicated")
        .env("PROXY_WORKLOAD_INFO", workload)
        .env("LOCAL_XDS_PATH", state)
        .env("FERRY_CA_DIR", ca)
        .env("PACKET_MARK", "1337")
        .env("ENABLE_ORIG_SRC", "false")
        .env("LOG_FORMAT", "json")
        .env("IPV6_ENABLED", "false");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.stdout(Stdio::null()).stderr(std::fs::File::create(log).unwrap()).spawn().expect("spawn ferry"))
}

/// A listener whose backlog is full and which never accepts: dials to it hang.
fn black_hole(ns: &Ns, addr: &str) {
    let addr: SocketAddr = addr.parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(1).unwrap();
        tx.send(()).unwrap();
        std::thread::sleep(Duration::from_secs(3600));
        drop(s);
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// A server that writes to every connection as fast as it can, forever.
fn firehose(ns: &Ns, addr: &str) {
    let addr: SocketAddr = addr.parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let l = std::net::TcpListener::bind(addr).unwrap();
        tx.send(()).unwrap();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let chunk = vec![b'x'; 64 * 1024];
                while s.write_all(&chunk).is_ok() {}
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// User plus system CPU time of `pid`, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// Samples `f` every 50 ms for `d` and returns the largest value.
fn peak(d: Duration, mut f: impl FnMut() -> u64) -> u64 {
    let start = Instant::now();
    let mut max = 0;
    while start.elapsed() < d {
        max = max.max(f());
        std::thread::sleep(Duration::from_millis(50));
    }
    max
}

/// Runs `attack` on a thread inside the attacker's namespace, with a current-thread runtime.
fn in_attacker<F, Fut>(c: &Ns, attack: F) -> std::thread::JoinHandle<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let ns = c.handle();
    std::thread::spawn(move || {
        ns.enter().expect("setns");
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(attack());
    })
}

/// An HTTP/2 connection to the victim's HBONE port with a valid mesh certificate, whose reads
/// can be paused (a peer that stops reading).
async fn mesh_client(ca: PathBuf, window: u32, paused: Arc<AtomicBool>) -> h2::client::SendRequest<Bytes> {
    let certs = common::cert_manager(&ca);
    let cert = certs.fetch(&common::id("default", "attacker")).await.unwrap();
    let tcp = tokio::net::TcpStream::connect(format!("{VICTIM}:15008")).await.unwrap();
    let cfg = cert.client_config(vec![common::id("default", "server")]);
    let tls = tokio_rustls::TlsConnector::from(cfg).connect(ferry::tls::dummy_server_name(), tcp).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(window)
        .handshake(Pausable { inner: tls, paused })
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

pin_project_lite::pin_project! {
    /// An I/O stream whose reads stop (pend forever) once `paused` is set.
    struct Pausable<T> {
        #[pin]
        inner: T,
        paused: Arc<AtomicBool>,
    }
}

impl<T: tokio::io::AsyncRead> tokio::io::AsyncRead for Pausable<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        if this.paused.load(Ordering::Relaxed) {
            return std::task::Poll::Pending;
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Pausable<T> {
    fn poll_write(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, b: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, b)
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

fn connect_request(target: &str) -> http::Request<()> {
    http::Request::builder().method(http::Method::CONNECT).uri(target).version(http::Version::HTTP_2).body(()).unwrap()
}

/// Class 1, dial amplification: CONNECT streams to an application that does not answer, each
/// reset by the peer right after the proxy accepts it. Every reset must cancel its dial, and
/// set-ups in flight are capped per connection and per proxy, so descriptors stay bounded.
#[test]
fn a_reset_flood_cannot_make_the_proxy_hold_dials() {
    let v = Victim::start(&[], None);
    let (pid, base) = (v.pid(), fds(v.pid()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let (ca, s2, n2) = (v.ca(), stop.clone(), sent.clone());
    let attacker = in_attacker(&v.c, move || async move {
        let mut conns = Vec::new();
        for _ in 0..2 {
            conns.push(mesh_client(ca.clone(), 65_535, Arc::new(AtomicBool::new(false))).await);
        }
        while !s2.load(Ordering::Relaxed) {
            for c in &mut conns {
                let Ok(mut c) = c.clone().ready().await else { return };
                if let Ok((resp, stream)) = c.send_request(connect_request(&format!("{VICTIM}:8081")), false) {
                    n2.fetch_add(1, Ordering::Relaxed);
                    // Long enough for the proxy to accept the stream and start its dial.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    drop((resp, stream));
                }
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let legit_during = v.legit();
    let max = peak(Duration::from_secs(3), || fds(pid) as u64) as usize;
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    let streams = sent.load(Ordering::Relaxed);
    assert!(streams > 500, "the attack must have sent a flood of streams ({streams})");
    assert!(
        max <= base + 200,
        "{streams} reset streams made the proxy hold {max} descriptors (baseline {base}): dials must be cancelled and capped"
    );
    assert!(legit_during, "legitimate traffic must keep flowing during the attack");
    let handled =
        v.metric("ferry_hbone_setups_total", &[("result", "cancelled")]) + v.metric("ferry_hbone_setups_total", &[("result", "shed")]);
    assert!(handled > 0.0, "cancelled and shed set-ups are counted");
}

/// Class 2, unauthenticated listeners: thousands of idle connections to the metrics and
/// readiness ports. Each server caps its connections (in total and per source), closes a
/// connection that sends no request header in time, and keeps answering the kubelet.
#[test]
fn idle_connections_cannot_exhaust_the_management_ports() {
    let v = Victim::start(&[("FERRY_HTTP_HEADER_TIMEOUT", "1s")], None);
    let (pid, base) = (v.pid(), fds(v.pid()));
    let held = v.c.run(|| {
        let mut held = Vec::new();
        for port in [15020, 15021] {
            for _ in 0..1500 {
                if let Ok(s) = StdTcp::connect_timeout(&format!("{VICTIM}:{port}").parse().unwrap(), Duration::from_secs(2)) {
                    held.push(s);
                }
            }
        }
        held
    });
    assert!(held.len() > 2000, "the attacker must have opened its connections ({})", held.len());
    let max = peak(Duration::from_secs(1), || fds(pid) as u64) as usize;
    let ready = http_get(&v.b, "127.0.0.1:15021", "/healthz/ready").map(|r| r.0);
    assert_eq!(ready, Some(200), "readiness must keep answering the kubelet during the attack");
    assert!(v.legit(), "legitimate traffic must keep flowing during the attack");
    assert!(max <= base + 300, "{} idle connections made the proxy hold {max} descriptors (baseline {base})", held.len());
    // Connections that never send a request header are closed by the server.
    std::thread::sleep(Duration::from_secs(3));
    let closed = held
        .into_iter()
        .filter(|s| {
            let mut s = s.try_clone().unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            matches!(s.read(&mut [0u8; 1]), Ok(0)) || s.take_error().ok().flatten().is_some()
        })
        .count();
    assert!(closed > 2000, "idle connections must be closed by the server ({closed} were)");
    assert!(v.metric("ferry_connections_shed_total", &[]) > 0.0, "shed connections are counted");
}

/// Class 3, accept loops: with the descriptor table full, every accept fails (EMFILE). The
/// loops must back off instead of spinning, log once per burst, count, and recover.
#[test]
fn accept_loops_back_off_when_descriptors_run_out() {
    let v = Victim::start(&[("FERRY_HANDSHAKE_TIMEOUT", "60s"), ("FERRY_MAX_CONNECTIONS", "100000")], Some(96));
    let pid = v.pid();
    let holder = v.c.run(|| {
        let mut held = Vec::new();
        // Raw TCP to 15008 holds a descriptor each until the handshake deadline.
        for _ in 0..200 {
            if let Ok(s) = StdTcp::connect_timeout(&format!("{VICTIM}:15008").parse().unwrap(), Duration::from_secs(1)) {
                held.push(s);
            }
        }
        // And one pending connection on each management port, whose accept now fails.
        for port in [15000, 15020, 15021] {
            if let Ok(s) = StdTcp::connect_timeout(&format!("{VICTIM}:{port}").parse().unwrap(), Duration::from_secs(1)) {
                held.push(s);
            }
        }
        held
    });
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(3));
    let spent = cpu_ticks(pid) - before;
    assert!(spent < 100, "the proxy spent {spent} ticks of CPU in 3 s with its descriptors exhausted: accept loops must back off");
    drop(holder);
    let start = Instant::now();
    while !v.legit() {
        assert!(start.elapsed() < Duration::from_secs(30), "the proxy must recover once descriptors are free again");
        std::thread::sleep(Duration::from_millis(200));
    }
    let warnings = v.log().lines().filter(|l| l.contains("accept failed")).count();
    assert!(warnings <= 8, "accept errors are logged once per listener and burst, not per error ({warnings} lines)");
    assert!(v.metric("ferry_accept_errors_total", &[]) > 0.0, "accept errors are counted");
}

/// Class 4, memory per slow reader: streams from an application that sends as fast as it can
/// to a peer that advertises a huge window and then stops reading. Buffered bytes are bounded
/// per stream, per connection and per proxy; stalled streams are shed and the memory returns.
#[test]
fn a_peer_that_stops_reading_cannot_make_the_proxy_buffer_without_bound() {
    let v = Victim::start(&[("FERRY_HBONE_STALL_TIMEOUT", "3s")], None);
    let (pid, base) = (v.pid(), rss_kib(v.pid()));
    let paused = Arc::new(AtomicBool::new(false));
    let (ca, p2) = (v.ca(), paused.clone());
    let attacker = in_attacker(&v.c, move || async move {
        let client = mesh_client(ca, i32::MAX as u32, p2.clone()).await;
        let mut streams = Vec::new();
        for _ in 0..150 {
            let Ok(mut c) = client.clone().ready().await else { break };
            if let Ok((resp, stream)) = c.send_request(connect_request(&format!("{VICTIM}:8082")), false) {
                streams.push((resp, stream));
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        p2.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(12)).await;
        drop(streams);
    });
    std::thread::sleep(Duration::from_secs(1));
    let grown = peak(Duration::from_secs(2), || rss_kib(pid)).saturating_sub(base);
    eprintln!("slow readers: victim RSS grew by {grown} KiB");
    let legit_during = v.legit();
    assert!(grown < 16 * 1024, "150 stalled streams grew the proxy by {} MiB: buffered bytes must be bounded", grown / 1024);
    assert!(legit_during, "legitimate traffic must keep flowing during the attack");
    let start = Instant::now();
    while v.metric("ferry_hbone_streams_shed_total", &[("reason", "stalled")]) == 0.0 {
        assert!(start.elapsed() < Duration::from_secs(20), "stalled streams must be shed after the stall timeout");
        std::thread::sleep(Duration::from_millis(200));
    }
    attacker.join().unwrap();
    assert!(v.legit());
}

/// Class 5, configuration on the data path: a hostile local config (200 KB of nested `[`) and
/// an oversized one are rejected quickly, off the data-path workers, and the last good state
/// keeps serving.
#[test]
fn a_hostile_local_config_is_rejected_without_stalling_traffic() {
    let v = Victim::start(&[("FERRY_LOCAL_XDS_POLL", "100ms")], None);
    let state = v.dir.path().join("state.yaml");
    let mut rejected = 0;
    for (text, why) in [("[".repeat(200_000), "nesting"), (format!("# {}\n{STATE}", "x".repeat(80 * 1024 * 1024)), "size")] {
        let count = |log: &str| log.lines().filter(|l| l.contains("local config rejected")).count();
        let before = count(&v.log());
        let tmp = v.dir.path().join(".state.tmp");
        std::fs::write(&tmp, &text).unwrap();
        std::fs::rename(&tmp, &state).unwrap();
        let start = Instant::now();
        let mut legit = true;
        while count(&v.log()) == before {
            legit &= v.legit();
            assert!(start.elapsed() < Duration::from_secs(30), "the {why} attack must be reported");
        }
        assert!(legit && v.legit(), "legitimate traffic must keep flowing while the {why} attack is parsed");
        rejected += 1;
        std::fs::write(&tmp, STATE).unwrap();
        std::fs::rename(&tmp, &state).unwrap();
    }
    assert_eq!(rejected, 2);
    assert!(v.log().contains("larger than"), "an oversized file is refused by size, before parsing: {}", v.log());
}
