//! The load generators and servers that run inside simulated pods. Each prints one JSON object
//! on stdout with its result, so the runner (and a person) can read it.
//!
//! Latency is measured open-loop from each request's *intended* send time, so a stalled
//! request also charges the requests queued behind it (coordinated omission corrected).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Byte `i` of every stream is `i % 251`, so the receiver can verify every byte.
fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

fn fill_pattern(buf: &mut [u8], offset: u64) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(offset + k as u64);
    }
}

/// Echo on `port`, verifying sink on `port + 1`, HTTP/1.1 on `port + 2` ([`super::http`]).
pub(crate) async fn serve(port: u16) -> std::io::Result<()> {
    let echo = TcpListener::bind(("0.0.0.0", port)).await?;
    let sink = TcpListener::bind(("0.0.0.0", port + 1)).await?;
    let http = tokio::spawn(super::http::serve(port + 2));
    println!("{}", json!({"listening": {"echo": port, "sink": port + 1, "http": port + 2}}));
    let e = tokio::spawn(accept(echo, |s| Box::pin(echo_conn(s))));
    let k = tokio::spawn(accept(sink, |s| Box::pin(sink_conn(s))));
    let _ = tokio::join!(e, k, http);
    Ok(())
}

pub(crate) type ConnFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub(crate) async fn accept(l: TcpListener, handle: fn(TcpStream) -> ConnFuture) {
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(handle(s));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn echo_conn(mut s: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The pattern from offset 0, long enough to compare any read starting at any phase.
fn pattern_table(len: usize) -> Vec<u8> {
    let mut t = vec![0u8; len + 251];
    fill_pattern(&mut t, 0);
    t
}

/// Reads to EOF checking the pattern (by memcmp against a table), then answers
/// `<bytes> <ok|bad>\n`.
async fn sink_conn(mut s: TcpStream) {
    const READ: usize = 256 * 1024;
    let table = pattern_table(READ);
    let mut buf = vec![0u8; READ];
    let (mut total, mut ok) = (0u64, true);
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let phase = (total % 251) as usize;
                ok &= buf[..n] == table[phase..phase + n];
                total += n as u64;
            }
            Err(_) => return,
        }
    }
    let _ = s.write_all(format!("{total} {}\n", if ok { "ok" } else { "bad" }).as_bytes()).await;
}

async fn connect(to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(to))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Bulk goodput over `streams` connections for `duration`, counted by the receiver.
pub(crate) async fn stream(to: SocketAddr, streams: usize, duration: Duration) -> std::io::Result<serde_json::Value> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        tasks.push(tokio::spawn(one_stream(to, duration)));
    }
    let (mut bytes, mut verified) = (0u64, true);
    for t in tasks {
        let (n, ok) = t.await.map_err(std::io::Error::other)??;
        bytes += n;
        verified &= ok;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(json!({"bytes": bytes, "seconds": secs, "gbit_per_s": bytes as f64 * 8.0 / secs / 1e9, "verified": verified, "streams": streams}))
}

async fn one_stream(to: SocketAddr, duration: Duration) -> std::io::Result<(u64, bool)> {
    let mut s = connect(to).await?;
    let mut buf = vec![0u8; 251 * 512];
    fill_pattern(&mut buf, 0);
    let end = Instant::now() + duration;
    let mut sent = 0u64;
    while Instant::now() < end {
        // The buffer length is a multiple of 251, so the pattern continues across writes.
        s.write_all(&buf).await?;
        sent += buf.len() as u64;
    }
    s.shutdown().await?;
    let mut line = String::new();
    tokio::io::BufReader::new(s).read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let got: u64 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let ok = parts.next() == Some("ok") && got == sent;
    Ok((got, ok))
}

pub(crate) fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub(crate) fn summary(h: &Histogram<u64>) -> serde_json::Value {
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}

/// Request/response of `size` bytes on `conns` connections. `rate` > 0: open loop at `rate`
/// requests/s in total, each connection on its own thread with microsecond-precise sleeps (an
/// async timer's millisecond ticks would dominate the latency measured); `rate` = 0: closed loop
/// as fast as each connection can.
pub(crate) async fn rr(
    to: SocketAddr,
    conns: usize,
    rate: u64,
    size: usize,
    duration: Duration,
    warmup: Duration,
) -> std::io::Result<serde_json::Value> {
    let errors = Arc::new(AtomicU64::new(0));
    let h = if rate > 0 {
        let e = errors.clone();
        tokio::task::spawn_blocking(move || open_loop(to, conns, rate, size, duration, warmup, e))
            .await
            .map_err(std::io::Error::other)??
    } else {
        closed_loop(to, conns, size, duration, warmup, errors.clone()).await
    };
    let secs = duration.as_secs_f64();
    let mut out = summary(&h);
    out["requests_per_s"] = json!(h.len() as f64 / secs);
    out["mbyte_per_s"] = json!(h.len() as f64 * size as f64 * 2.0 / secs / 1e6);
    out["errors"] = json!(errors.load(Ordering::Relaxed));
    Ok(out)
}

fn open_loop(
    to: SocketAddr,
    conns: usize,
    rate: u64,
    size: usize,
    duration: Duration,
    warmup: Duration,
    errors: Arc<AtomicU64>,
) -> std::io::Result<Histogram<u64>> {
    // Timer slack (default 50 µs) would otherwise be added to every sleep.
    let _ = nix::sys::prctl::set_timerslack(1);
    let interval = Duration::from_secs_f64(conns as f64 / rate as f64);
    let first = Instant::now() + Duration::from_millis(100);
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let errors = errors.clone();
            // Spread the connections' schedules evenly across one interval.
            let start = first + interval.mul_f64(c as f64 / conns as f64);
            std::thread::spawn(move || open_loop_conn(to, start, interval, size, warmup, duration, errors))
        })
        .collect();
    Ok(join_histograms(threads, &errors))
}

/// The threads' histograms merged; a thread that failed counts as an error.
pub(crate) fn join_histograms(
    threads: Vec<std::thread::JoinHandle<std::io::Result<Histogram<u64>>>>,
    errors: &AtomicU64,
) -> Histogram<u64> {
    let mut h = new_hist();
    for t in threads {
        match t.join() {
            Ok(Ok(part)) => {
                let _ = h.add(part);
            }
            _ => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    h
}

fn open_loop_conn(
    to: SocketAddr,
    first: Instant,
    interval: Duration,
    size: usize,
    warmup: Duration,
    duration: Duration,
    errors: Arc<AtomicU64>,
) -> std::io::Result<Histogram<u64>> {
    use std::io::{Read, Write};
    let _ = nix::sys::prctl::set_timerslack(1);
    let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
    s.set_nodelay(true)?;
    let (req, mut resp) = (vec![7u8; size], vec![0u8; size]);
    let mut h = new_hist();
    let (measure_from, end) = (first + warmup, first + warmup + duration);
    for k in 0u32.. {
        let intended = first + interval * k;
        if intended >= end {
            break;
        }
        if let Some(wait) = intended.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if s.write_all(&req).and_then(|_| s.read_exact(&mut resp)).is_err() {
            errors.fetch_add(1, Ordering::Relaxed);
            s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
            s.set_nodelay(true)?;
        } else if intended >= measure_from {
            let _ = h.record(intended.elapsed().as_micros().max(1) as u64);
        }
    }
    Ok(h)
}

async fn closed_loop(
    to: SocketAddr,
    conns: usize,
    size: usize,
    duration: Duration,
    warmup: Duration,
    errors: Arc<AtomicU64>,
) -> Histogram<u64> {
    let start = Instant::now();
    let (measure_from, end) = (start + warmup, start + warmup + duration);
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let errors = errors.clone();
            tokio::spawn(async move {
                let mut h = new_hist();
                let Ok(mut s) = connect(to).await else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return h;
                };
                let (req, mut resp) = (vec![7u8; size], vec![0u8; size]);
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        return h;
                    }
                    if s.write_all(&req).await.is_err() || s.read_exact(&mut resp).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return h;
                    }
                    if t0 >= measure_from {
                        let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
                    }
                }
            })
        })
        .collect();
    let mut h = new_hist();
    for t in tasks {
        if let Ok(part) = t.await {
            let _ = h.add(part);
        }
    }
    h
}

/// New connections per second: connect, `size`-byte echo, close, with `concurrency` workers.
pub(crate) async fn crr(to: SocketAddr, concurrency: usize, size: usize, duration: Duration) -> std::io::Result<serde_json::Value> {
    let end = Instant::now() + duration;
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = new_hist();
            let msg = vec![1u8; size];
            let mut back = vec![0u8; size];
            while Instant::now() < end {
                let t0 = Instant::now();
                let ok = async {
                    let mut s = connect(to).await?;
                    s.write_all(&msg).await?;
                    s.read_exact(&mut back).await?;
                    std::io::Result::Ok(())
                }
                .await;
                match ok {
                    Ok(()) => {
                        let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            h
        }));
    }
    let mut h = new_hist();
    for t in tasks {
        if let Ok(part) = t.await {
            let _ = h.add(part);
        }
    }
    let mut out = summary(&h);
    out["connections_per_s"] = json!(h.len() as f64 / duration.as_secs_f64());
    out["errors"] = json!(errors.load(Ordering::Relaxed));
    Ok(out)
}

/// Opens `n` connections, proves each open with a one-byte echo, reports, then holds them
/// until stdin closes; then closes them all and reports again.
pub(crate) async fn hold(to: SocketAddr, n: usize) -> std::io::Result<()> {
    let mut conns = Vec::with_capacity(n);
    let failed = Arc::new(AtomicBool::new(false));
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let opened = futures_join(chunk.iter().map(|_| async move {
            let mut s = connect(to).await?;
            s.write_all(b"h").await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            std::io::Result::Ok(s)
        }))
        .await;
        for r in opened {
            match r {
                Ok(s) => conns.push(s),
                Err(_) => failed.store(true, Ordering::Relaxed),
            }
        }
    }
    println!("{}", json!({"held": conns.len(), "requested": n}));
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await;
    let proven = conns.len();
    drop(conns);
    println!("{}", json!({"closed": proven}));
    Ok(())
}

async fn futures_join<F: std::future::Future + Send + 'static>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
