//! Moving bytes: TCP <-> TCP and TCP <-> an HBONE stream (protocols.md §1.7).
//!
//! Half-close is carried end to end: a TCP FIN becomes END_STREAM (or a FIN on the other
//! socket) and vice versa. A reset or error on either side aborts both. Buffers are allocated
//! only when a socket is readable and released when it drains, so an idle connection holds no
//! copy buffer; read sizes grow while reads fill the buffer (bulk transfers) up to `MAX_CHUNK`.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(test)]
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use metrics::Counter;
use socket2::SockRef;
use tokio::net::TcpStream;

use crate::hbone::budget::{Budget, Chunk, Room};
use crate::hbone::H2Stream;

const MIN_CHUNK: usize = 16 * 1024;
const MAX_CHUNK: usize = 256 * 1024;

/// Bytes moved in each direction, and the first error, if any.
#[derive(Debug, Default)]
pub(crate) struct CopyResult {
    /// Downstream to upstream.
    pub(crate) received: u64,
    /// Upstream to downstream.
    pub(crate) sent: u64,
    pub(crate) error: Option<io::Error>,
    /// Closed because a policy change now denies the connection (late rejection).
    pub(crate) revoked: Option<String>,
}

/// The bytes a connection has moved so far, kept outside the copy future: a copy abandoned at
/// the drain deadline or by a revocation is dropped mid-way, and its access-log record must
/// still report what it carried.
#[derive(Debug, Default)]
pub(crate) struct Moved {
    /// Downstream to upstream.
    pub(crate) received: AtomicU64,
    /// Upstream to downstream.
    pub(crate) sent: AtomicU64,
}

impl Moved {
    /// The totals so far, as a result with no error.
    pub(crate) fn result(&self) -> CopyResult {
        CopyResult { received: self.received.load(Ordering::Relaxed), sent: self.sent.load(Ordering::Relaxed), ..Default::default() }
    }
}

/// Copies between two TCP connections until both directions are closed.
pub(crate) async fn tcp_tcp(down: &TcpStream, up: &TcpStream, rx: &Counter, tx: &Counter, moved: &Moved) -> CopyResult {
    let a = tcp_to_tcp(down, up, rx, &moved.received);
    let b = tcp_to_tcp(up, down, tx, &moved.sent);
    let outcome = tokio::try_join!(a, b);
    let mut res = moved.result();
    if let Err(e) = outcome {
        crate::net::set_reset_on_close(down);
        crate::net::set_reset_on_close(up);
        res.error = Some(e);
    }
    res
}

/// Copies between a TCP connection and an HBONE stream. `tcp_is_downstream` says which side
/// the client is on, for the direction of the counters.
pub(crate) async fn tcp_h2(
    tcp: &TcpStream,
    stream: H2Stream,
    tcp_is_downstream: bool,
    rx: &Counter,
    tx: &Counter,
    moved: &Moved,
) -> CopyResult {
    let H2Stream { mut send, mut recv, budget } = stream;
    let (to_h2, to_tcp) = match tcp_is_downstream {
        true => ((rx, &moved.received), (tx, &moved.sent)),
        false => ((tx, &moved.sent), (rx, &moved.received)),
    };
    let a = tcp_to_h2(tcp, &mut send, &budget, to_h2.0, to_h2.1);
    let b = h2_to_tcp(&mut recv, tcp, to_tcp.0, to_tcp.1);
    let error = match tokio::try_join!(a, b) {
        Ok(_) => None,
        Err(e) => {
            send.send_reset(Reason::CANCEL);
            crate::net::set_reset_on_close(tcp);
            Some(e)
        }
    };
    CopyResult { error, ..moved.result() }
}

/// Reads into a fresh buffer once `r` is readable; `Ok(None)` is EOF.
async fn read_chunk(r: &TcpStream, chunk: &mut usize) -> io::Result<Option<BytesMut>> {
    loop {
        r.readable().await?;
        let mut buf = BytesMut::with_capacity(*chunk);
        match r.try_read_buf(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                *chunk = if n == *chunk { (*chunk * 2).min(MAX_CHUNK) } else { (*chunk / 2).max(MIN_CHUNK) };
                return Ok(Some(buf));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

async fn write_all(w: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        w.writable().await?;
        match w.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn shutdown_write(w: &TcpStream) {
    // ENOTCONN after a peer reset is harmless: the other direction reports the error.
    let _ = SockRef::from(w).shutdown(Shutdown::Write);
}

async fn tcp_to_tcp(r: &TcpStream, w: &TcpStream, counter: &Counter, total: &AtomicU64) -> io::Result<()> {
    let mut chunk = MIN_CHUNK;
    while let Some(buf) = read_chunk(r, &mut chunk).await? {
        write_all(w, &buf).await?;
        counter.increment(buf.len() as u64);
        total.fetch_add(buf.len() as u64, Ordering::Relaxed);
    }
    shutdown_write(w);
    Ok(())
}

async fn tcp_to_h2(r: &TcpStream, send: &mut SendStream<Chunk>, budget: &Budget, counter: &Counter, total: &AtomicU64) -> io::Result<()> {
    let mut chunk = MIN_CHUNK;
    loop {
        // Room is taken only once there is data, and before it is read: an idle stream holds
        // no budget, and no stream holds bytes the budget does not count.
        r.readable().await?;
        // Boxed: the wait is rare and short, and an idle connection's task should not carry it.
        let mut room = Box::pin(budget.room(chunk)).await.map_err(|e| io::Error::new(io::ErrorKind::TimedOut, e))?;
        let Some(buf) = read_chunk(r, &mut chunk).await? else { break };
        room.shrink_to(buf.len());
        let n = buf.len() as u64;
        send_h2(send, buf.freeze(), room).await?;
        counter.increment(n);
        total.fetch_add(n, Ordering::Relaxed);
    }
    send.send_data(Chunk::from(Bytes::new()), true).map_err(h2_io)?;
    Ok(())
}

/// Sends `data`, waiting for flow-control capacity as the peer grants it; each part queued in
/// h2 carries its share of `room`.
async fn send_h2(send: &mut SendStream<Chunk>, mut data: Bytes, mut room: Room) -> io::Result<()> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "HBONE stream closed by peer"))?
            .map_err(h2_io)?;
        if granted == 0 {
            continue;
        }
        let part = data.split_to(granted.min(data.len()));
        let part_room = room.split(part.len());
        send.send_data(Chunk::new(part, part_room), false).map_err(h2_io)?;
    }
    Ok(())
}

/// Most chunks coalesced into one write (each chunk is at most one TLS record of payload).
const MAX_BATCH: usize = 32;

async fn h2_to_tcp(recv: &mut RecvStream, w: &TcpStream, counter: &Counter, total: &AtomicU64) -> io::Result<()> {
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let first = recv.data().await;
        let mut ended = false;
        match first {
            None => ended = true,
            Some(Ok(data)) => batch.push(data),
            // A reset with NO_ERROR or CANCEL is a clean end of the peer's data.
            Some(Err(e)) if matches!(e.reason(), Some(Reason::NO_ERROR) | Some(Reason::CANCEL)) => ended = true,
            Some(Err(e)) => return Err(h2_io(e)),
        }
        // Take whatever else already arrived, so a burst is one write instead of many.
        while !ended && batch.len() < MAX_BATCH {
            match std::future::poll_fn(|cx| std::task::Poll::Ready(recv.poll_data(cx))).await {
                std::task::Poll::Ready(Some(Ok(data))) => batch.push(data),
                std::task::Poll::Ready(Some(Err(e))) if matches!(e.reason(), Some(Reason::NO_ERROR) | Some(Reason::CANCEL)) => ended = true,
                std::task::Poll::Ready(Some(Err(e))) => return Err(h2_io(e)),
                std::task::Poll::Ready(None) => ended = true,
                std::task::Poll::Pending => break,
            }
        }
        let n: usize = batch.iter().map(Bytes::len).sum();
        if n > 0 {
            write_all_vectored(w, &mut batch).await?;
            let _ = recv.flow_control().release_capacity(n);
            counter.increment(n as u64);
            total.fetch_add(n as u64, Ordering::Relaxed);
        }
        batch.clear();
        if ended {
            break;
        }
    }
    shutdown_write(w);
    Ok(())
}

/// Writes every chunk, in order, with as few syscalls as the socket allows.
async fn write_all_vectored(w: &TcpStream, bufs: &mut Vec<Bytes>) -> io::Result<()> {
    use bytes::Buf;
    // An empty chunk would never be consumed by a write and the loop would never end.
    bufs.retain(|b| !b.is_empty());
    while !bufs.is_empty() {
        w.writable().await?;
        let slices: Vec<std::io::IoSlice<'_>> = bufs.iter().map(|b| std::io::IoSlice::new(b)).collect();
        match w.try_write_vectored(&slices) {
            Ok(mut n) => {
                drop(slices);
                while n > 0 {
                    let first = &mut bufs[0];
                    let take = n.min(first.len());
                    first.advance(take);
                    n -= take;
                    if first.is_empty() {
                        bufs.remove(0);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"));
    }
    match e.reason() {
        Some(Reason::STREAM_CLOSED) => io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()),
        _ => io::Error::new(io::ErrorKind::ConnectionReset, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn vectored_writes_keep_order_and_skip_empty_chunks() {
        let (a, mut b) = pair().await;
        let big = Bytes::from(vec![7u8; 3 * 1024 * 1024]);
        let mut bufs =
            vec![Bytes::new(), Bytes::from_static(b"head "), Bytes::new(), big.clone(), Bytes::from_static(b" tail"), Bytes::new()];
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            b.read_to_end(&mut out).await.unwrap();
            out
        });
        tokio::time::timeout(Duration::from_secs(10), write_all_vectored(&a, &mut bufs)).await.expect("must not spin").unwrap();
        drop(a);
        let out = reader.await.unwrap();
        assert_eq!(out.len(), 5 + big.len() + 5);
        assert!(out.starts_with(b"head ") && out.ends_with(b" tail"));
    }
}
