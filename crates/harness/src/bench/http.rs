//! HTTP/1.1 load for the waypoint measurements: a keep-alive server answering every request
//! with a fixed body (started by `ferry bench serve` on its HTTP port), and `ferry bench http`,
//! requests over persistent connections, open loop at a rate or closed loop, latency from each
//! request's intended send time (as [`super::tools::rr`]).
//!
//! The client parses responses properly (status line, `content-length`), because a waypoint
//! rewrites the head (its own `date`, no hop-by-hop headers); anything but a `200` with the
//! expected body length is an error, so a proxy answering 403 or 503 cannot look fast.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The response body's length: 1 KiB, as the TCP request/response measurements.
pub(crate) const BODY: usize = 1024;

/// Serves HTTP/1.1 keep-alive on `port`: every request (no body expected) gets `200` and
/// [`BODY`] bytes.
pub(crate) async fn serve(port: u16) -> std::io::Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port)).await?;
    super::tools::accept(l, |s| Box::pin(conn(s))).await;
    Ok(())
}

async fn conn(mut s: TcpStream) {
    let resp = format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {BODY}\r\n\r\n{}", "b".repeat(BODY)).into_bytes();
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        // Answer every complete head in the buffer (pipelined requests included).
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            if s.write_all(&resp).await.is_err() {
                return;
            }
        }
        if buf.len() > 64 * 1024 {
            return;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One keep-alive client connection.
struct Client {
    to: SocketAddr,
    request: Vec<u8>,
    r: BufReader<std::net::TcpStream>,
    line: String,
    body: Vec<u8>,
}

impl Client {
    fn connect(to: SocketAddr, host: &str) -> std::io::Result<Client> {
        let s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let request = format!("GET /bench HTTP/1.1\r\nhost: {host}\r\nuser-agent: ferry-bench\r\n\r\n").into_bytes();
        Ok(Client { to, request, r: BufReader::new(s), line: String::new(), body: vec![0; BODY] })
    }

    /// One request and its whole response; an error for anything but `200` with the body.
    fn request(&mut self) -> std::io::Result<()> {
        self.r.get_mut().write_all(&self.request)?;
        self.line.clear();
        self.r.read_line(&mut self.line)?;
        let status = self.line.split_whitespace().nth(1).unwrap_or_default().to_string();
        let mut length = None;
        loop {
            self.line.clear();
            if self.r.read_line(&mut self.line)? == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed in the head"));
            }
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((_, v)) = l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
                length = v.trim().parse::<usize>().ok();
            }
        }
        if status != "200" || length != Some(BODY) {
            return Err(std::io::Error::other(format!("{} answered {status}, content-length {length:?}", self.to)));
        }
        self.r.read_exact(&mut self.body)
    }
}

/// Settings of one `ferry bench http` run.
#[derive(Clone, Debug)]
pub(crate) struct HttpLoad {
    pub(crate) to: SocketAddr,
    pub(crate) host: String,
    pub(crate) conns: usize,
    /// Requests/s in total; 0 is closed loop.
    pub(crate) rate: u64,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
}

/// Runs the load on one thread per connection; a summary with `requests_per_s` and errors.
pub(crate) fn run(load: HttpLoad) -> std::io::Result<serde_json::Value> {
    let _ = nix::sys::prctl::set_timerslack(1);
    let errors = Arc::new(AtomicU64::new(0));
    let interval = (load.rate > 0).then(|| Duration::from_secs_f64(load.conns as f64 / load.rate as f64));
    let first = Instant::now() + Duration::from_millis(100);
    let threads: Vec<_> = (0..load.conns)
        .map(|c| {
            let (errors, load) = (errors.clone(), load.clone());
            // Open loop: spread the connections' schedules evenly across one interval.
            let start = first + interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / load.conns as f64));
            std::thread::spawn(move || one(&load, start, interval, &errors))
        })
        .collect();
    let h = super::tools::join_histograms(threads, &errors);
    let mut out = super::tools::summary(&h);
    out["requests_per_s"] = json!(h.len() as f64 / load.duration.as_secs_f64());
    out["errors"] = json!(errors.load(Ordering::Relaxed));
    Ok(out)
}

/// One connection's requests: at `interval` from `first` (open loop) or back to back.
fn one(load: &HttpLoad, first: Instant, interval: Option<Duration>, errors: &AtomicU64) -> std::io::Result<Histogram<u64>> {
    let _ = nix::sys::prctl::set_timerslack(1);
    let mut c = Client::connect(load.to, &load.host)?;
    let mut h = super::tools::new_hist();
    let (measure_from, end) = (first + load.warmup, first + load.warmup + load.duration);
    if let Some(wait) = first.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    for k in 0u32.. {
        let intended = interval.map_or_else(Instant::now, |i| first + i * k);
        if intended >= end {
            break;
        }
        if let Some(wait) = intended.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if c.request().is_err() {
            errors.fetch_add(1, Ordering::Relaxed);
            c = Client::connect(load.to, &load.host)?;
        } else if intended >= measure_from {
            let _ = h.record(intended.elapsed().as_micros().max(1) as u64);
        }
    }
    Ok(h)
}
