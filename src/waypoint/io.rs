//! An HBONE stream as a byte pipe (`AsyncRead` + `AsyncWrite`), so hyper can serve HTTP/1.1
//! on a CONNECT stream and speak it on an upstream one, and TCP can be copied stream to
//! stream. What it queues is bounded by h2: a write waits for the peer's flow-control window
//! and the stream's send buffer (`max_send_buffer_size`), reads release window as consumed.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::hbone::budget::Chunk;
use crate::hbone::H2Stream;

/// Largest piece handed to h2 per write.
const MAX_WRITE: usize = 64 * 1024;

pub(crate) struct H2Io {
    send: SendStream<Chunk>,
    recv: RecvStream,
    /// Received and not yet read.
    pending: Bytes,
    read_done: bool,
    write_done: bool,
}

impl H2Io {
    pub(crate) fn new(send: SendStream<Chunk>, recv: RecvStream) -> Self {
        H2Io { send, recv, pending: Bytes::new(), read_done: false, write_done: false }
    }

    pub(crate) fn from_stream(s: H2Stream) -> Self {
        H2Io::new(s.send, s.recv)
    }
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"));
    }
    io::Error::new(io::ErrorKind::ConnectionReset, e.to_string())
}

impl AsyncRead for H2Io {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pending.is_empty() && !this.read_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
                // A reset with NO_ERROR or CANCEL is a clean end of the peer's data (§1.7).
                Some(Err(e)) if matches!(e.reason(), Some(Reason::NO_ERROR) | Some(Reason::CANCEL)) => this.read_done = true,
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => this.read_done = true,
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        let want = buf.len().min(MAX_WRITE);
        loop {
            this.send.reserve_capacity(want);
            match ready!(this.send.poll_capacity(cx)) {
                None => return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "HBONE stream closed by peer"))),
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(want);
                    this.send.send_data(Chunk::from(Bytes::copy_from_slice(&buf[..n])), false).map_err(h2_io)?;
                    return Poll::Ready(Ok(n));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_done {
            self.write_done = true;
            self.send.send_data(Chunk::from(Bytes::new()), true).map_err(h2_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for H2Io {
    fn drop(&mut self) {
        // A pipe dropped before its end was written is an abort, not a clean close.
        if !self.write_done {
            self.send.send_reset(Reason::CANCEL);
        }
    }
}
