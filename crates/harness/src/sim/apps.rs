//! Applications inside simulated pods: an echo server that records who connected, a client
//! that round-trips bytes, and a tiny HTTP client for the nodes' admin ports. Each runs on a
//! thread that entered the pod's (or node's) network namespace.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use ferry_sys::Netns;

/// Runs `f` on a new thread inside the namespace at `path` and returns its result.
pub(crate) fn in_netns<T: Send + 'static>(path: &std::path::Path, f: impl FnOnce() -> T + Send + 'static) -> std::io::Result<T> {
    let ns = Netns::open(path)?;
    std::thread::spawn(move || {
        ns.enter()?;
        Ok(f())
    })
    .join()
    .map_err(|_| std::io::Error::other("thread in namespace panicked"))?
}

/// Peers an echo server has seen.
#[derive(Clone, Default)]
pub struct Peers(pub Arc<Mutex<Vec<SocketAddr>>>);

impl Peers {
    pub fn list(&self) -> Vec<SocketAddr> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// An echo server on `port` in the namespace at `path`: reads to EOF, echoes, closes.
pub fn echo_server(path: &std::path::Path, port: u16) -> std::io::Result<Peers> {
    let peers = Peers::default();
    let p = peers.clone();
    serve_in(path, port, "echo server", move |s| serve_echo(s, p.clone()))?;
    Ok(peers)
}

/// Listens on `port` in the namespace at `path` and handles each connection on its own thread.
fn serve_in(path: &std::path::Path, port: u16, what: &str, handle: impl Fn(TcpStream) + Send + Clone + 'static) -> std::io::Result<()> {
    let ns = Netns::open(path)?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let l = match ns.enter().and_then(|_| TcpListener::bind(("0.0.0.0", port))) {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        for s in l.incoming().flatten() {
            let handle = handle.clone();
            std::thread::spawn(move || handle(s));
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).map_err(|_| std::io::Error::other(format!("{what} did not start")))?
}

fn serve_echo(mut s: TcpStream, peers: Peers) {
    if let Ok(peer) = s.peer_addr() {
        peers.0.lock().unwrap_or_else(|e| e.into_inner()).push(peer);
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buf = Vec::new();
    if s.read_to_end(&mut buf).is_ok() {
        let _ = s.write_all(&buf);
    }
}

/// Sends `payload` from the namespace at `path` to `dst`, half-closes and returns the reply.
pub fn roundtrip(path: &std::path::Path, dst: SocketAddr, payload: Vec<u8>) -> std::io::Result<Vec<u8>> {
    in_netns(path, move || -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        s.write_all(&payload)?;
        s.shutdown(Shutdown::Write)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    })?
}

/// Opens a connection from the namespace at `path` and keeps it for later use.
pub fn connect(path: &std::path::Path, dst: SocketAddr) -> std::io::Result<TcpStream> {
    in_netns(path, move || TcpStream::connect_timeout(&dst, Duration::from_secs(5)))?
}

/// A blocking HTTP/1.1 request without a body; returns (status, body).
pub(crate) fn http(path: &std::path::Path, addr: SocketAddr, method: &str, target: &str) -> std::io::Result<(u16, String)> {
    let (status, body) = http_bytes(path, addr, method, target, Duration::from_secs(5))?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A blocking HTTP/1.1 request without a body, waiting up to `read_timeout` between reads;
/// returns (status, body bytes).
pub fn http_bytes(
    path: &std::path::Path,
    addr: SocketAddr,
    method: &str,
    target: &str,
    read_timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    http_exchange(path, addr, method, target, &[], read_timeout).map(|r| (r.status, r.body))
}

/// What an HTTP/1.1 server answered.
#[derive(Clone, Debug)]
pub struct HttpReply {
    pub status: u16,
    /// The status line and headers, as received.
    pub head: String,
    pub body: Vec<u8>,
}

/// A blocking HTTP/1.1 request without a body and with these extra headers.
pub fn http_exchange(
    path: &std::path::Path,
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    read_timeout: Duration,
) -> std::io::Result<HttpReply> {
    let extra: String = headers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
    let request = format!("{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n{extra}\r\n");
    in_netns(path, move || -> std::io::Result<HttpReply> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(read_timeout))?;
        s.write_all(request.as_bytes())?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        let split = resp.windows(4).position(|w| w == b"\r\n\r\n");
        let head = String::from_utf8_lossy(&resp[..split.unwrap_or(resp.len())]).into_owned();
        let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = split.map(|i| resp[i + 4..].to_vec()).unwrap_or_default();
        Ok(HttpReply { status, head, body })
    })?
}

/// An HTTP/1.1 server on `port` in the namespace at `path`: answers every request `200` with
/// the body `<name> saw <request target>`, then closes.
pub fn http_server(path: &std::path::Path, port: u16, name: &str) -> std::io::Result<()> {
    let name = name.to_string();
    serve_in(path, port, "http server", move |s| serve_http(s, &name))
}

/// An HTTP/1.1 server on `port` in the namespace at `path` that answers every request `200`
/// with the request's head (request line and headers) as its body, then closes: what an
/// upstream was sent.
pub fn http_head_echo_server(path: &std::path::Path, port: u16) -> std::io::Result<()> {
    serve_in(path, port, "http head echo server", |mut s| {
        let Some(head) = read_head(&mut s) else { return };
        let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{head}", head.len());
    })
}

/// A request head, up to 16 KiB; `None` if the peer closed first.
fn read_head(s: &mut TcpStream) -> Option<String> {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

fn serve_http(mut s: TcpStream, name: &str) {
    let Some(head) = read_head(&mut s) else { return };
    let line = head.lines().next().unwrap_or_default().to_string();
    let body = format!("{name} saw {}", line.split(' ').nth(1).unwrap_or("?"));
    let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
}
