//! Real network namespaces for root-only tests. Everything created here is removed on drop,
//! also when a test panics. Tests fail (never skip) when namespaces cannot be created.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_sys::Netns;

pub fn require_root() {
    let uid = nix::unistd::geteuid();
    assert!(
        uid.is_root(),
        "this test needs root (network namespaces, nftables); it fails rather than skips. Run it as root, as .ci/run does."
    );
}

pub fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn sh_ok(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(cmd).stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false)
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(tag: &str) -> Ns {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("ferry-{tag}-{}-{n}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        sh(&format!("ip netns add {name} && ip -n {name} link set lo up"));
        Ns { name }
    }

    pub fn exec(&self, cmd: &str) {
        sh(&format!("ip netns exec {} sh -c '{}'", self.name, cmd.replace('\'', "'\\''")));
    }

    pub fn handle(&self) -> Netns {
        Netns::open(&PathBuf::from(format!("/var/run/netns/{}", self.name))).expect("open netns")
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = self.handle();
        std::thread::spawn(move || {
            ns.enter().expect("setns");
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }

    /// Starts `f` on a detached thread inside this namespace.
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) {
        let ns = self.handle();
        std::thread::spawn(move || {
            ns.enter().expect("setns");
            f()
        });
    }

    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Joins two namespaces with a veth pair and addresses `a_ip/24` and `b_ip/24`.
pub fn veth(a: &Ns, a_if: &str, a_ip: &str, b: &Ns, b_if: &str, b_ip: &str) {
    let tmp = format!("fv{}", fastrand::u32(..) % 1_000_000);
    sh(&format!("ip link add {tmp}a type veth peer name {tmp}b"));
    sh(&format!("ip link set {tmp}a netns {} name {a_if} && ip link set {tmp}b netns {} name {b_if}", a.name, b.name));
    sh(&format!("ip -n {} addr add {a_ip}/24 dev {a_if} && ip -n {} link set {a_if} up", a.name, a.name));
    sh(&format!("ip -n {} addr add {b_ip}/24 dev {b_if} && ip -n {} link set {b_if} up", b.name, b.name));
}

/// Installs ferry's in-pod redirection (nftables + policy routing) in `ns`.
pub fn install_redirect(ns: &Ns) {
    let cfg = ferry::redirect::RedirectConfig { ipv6: false, ..Default::default() };
    ferry::redirect::nft_apply(&ns.handle(), &ferry::redirect::nft_install(&cfg)).expect("nft install");
    ns.exec("ip rule add fwmark 0x111/0xfff pref 32764 lookup 100 && ip route add local 0.0.0.0/0 dev lo table 100");
}

/// A blocking HTTP/1.1 GET from inside `ns`; returns (status, body).
pub fn http_get(ns: &Ns, addr: &str, path: &str) -> Option<(u16, String)> {
    http_request(ns, "GET", addr, path)
}

/// A blocking HTTP/1.1 request without a body from inside `ns`; returns (status, body).
pub fn http_request(ns: &Ns, method: &str, addr: &str, path: &str) -> Option<(u16, String)> {
    let (addr, path, method) = (addr.parse::<SocketAddr>().unwrap(), path.to_string(), method.to_string());
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let status = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((status, body))
    })
}

/// Polls `/healthz/ready` in `ns` until it answers 200.
pub fn wait_ready(ns: &Ns, proc: &mut Proc, log: &std::path::Path) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!("proxy in {} exited with {status}: {}", ns.name, std::fs::read_to_string(log).unwrap_or_default());
        }
        if matches!(http_get(ns, "127.0.0.1:15021", "/healthz/ready"), Some((200, _))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("proxy in {} never became ready: {}", ns.name, std::fs::read_to_string(log).unwrap_or_default());
}

/// Sends `payload` from inside `ns` to `dst`, half-closes, and returns what came back
/// (`None` when the connection failed or was reset).
pub fn echo_roundtrip(ns: &Ns, dst: &str, payload: Vec<u8>) -> Option<Vec<u8>> {
    let dst: SocketAddr = dst.parse().unwrap();
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
        s.write_all(&payload).ok()?;
        s.shutdown(std::net::Shutdown::Write).ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).ok()?;
        Some(out)
    })
}

/// An echo server in `ns` on `addr` that reads to EOF, records the peer, and echoes.
pub fn echo_server(ns: &Ns, addr: &str) -> std::sync::Arc<std::sync::Mutex<Vec<SocketAddr>>> {
    let peers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (p, addr) = (peers.clone(), addr.parse::<SocketAddr>().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let l = std::net::TcpListener::bind(addr).expect("bind echo");
        tx.send(()).unwrap();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let p = p.clone();
            std::thread::spawn(move || {
                if let Ok(peer) = s.peer_addr() {
                    p.lock().unwrap().push(peer);
                }
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                let _ = s.write_all(&buf);
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("echo server did not start");
    peers
}
