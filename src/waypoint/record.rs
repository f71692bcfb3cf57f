//! One HTTP request's access-log line and metrics, written once when its response ends (the
//! body finishes, fails or is dropped), for HTTP/1.1 and HTTP/2 alike: so the duration is the
//! whole exchange, the byte counts are what went through, and a gRPC stream's status (a
//! trailer) is known. [`Counted`] counts the request body on its way upstream; [`Observed`]
//! the response body on its way back.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};

use super::grpc;
use super::http::Body;
use super::stream::{Access, InFlight, Target, WaypointError};
use crate::hbone::server::ConnInfo;
use ferry_core::waypoint::Endpoint;

/// What the access-log line and the metrics of one request say.
pub(crate) struct Record {
    pub(crate) conn: Arc<ConnInfo>,
    pub(crate) target: Arc<Target>,
    pub(crate) upstream: Option<Endpoint>,
    pub(crate) start: Instant,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) protocol: &'static str,
    pub(crate) status: u16,
    pub(crate) grpc_status: Option<String>,
    /// The request principal of its verified JWT.
    pub(crate) principal: Option<String>,
    /// The request's head, then its body as it is sent upstream ([`Counted`]).
    pub(crate) request_bytes: Arc<AtomicU64>,
    /// The response's head, then its body as it is sent to the client.
    pub(crate) response_bytes: u64,
    /// Held until the response ends: the endpoint's load, and what the protocol needs.
    pub(crate) held: (Option<InFlight>, Option<Box<dyn Send + Sync>>),
}

impl Record {
    pub(crate) fn new(conn: Arc<ConnInfo>, target: Arc<Target>, req: &http::Request<Incoming>, protocol: &'static str) -> Record {
        let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        Record {
            conn,
            target,
            upstream: None,
            start: Instant::now(),
            method: req.method().to_string(),
            path,
            protocol,
            status: 0,
            grpc_status: None,
            principal: None,
            request_bytes: Arc::new(AtomicU64::new(head_size(req.uri(), req.method().as_str(), req.headers()) as u64)),
            response_bytes: 0,
            held: (None, None),
        }
    }

    /// The response's status and head, before its body.
    pub(crate) fn respond(&mut self, resp: &http::Response<Body>) {
        self.status = resp.status().as_u16();
        self.grpc_status = (self.protocol == "grpc").then(|| grpc::status_in(resp.headers())).flatten();
        self.response_bytes = 15 + resp.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>() as u64;
    }

    pub(crate) fn emit(&self, error: Option<&WaypointError>) {
        Access {
            conn: &self.conn,
            target: Some(&self.target),
            upstream: self.upstream.as_ref(),
            start: self.start,
            method: Some(&self.method),
            path: Some(&self.path),
            protocol: self.protocol,
            grpc_status: self.grpc_status.as_deref(),
            bytes: Some((self.request_bytes.load(Ordering::Relaxed), self.response_bytes)),
            principal: self.principal.as_deref(),
        }
        .log(error, self.status)
    }
}

/// A request head's size as sent (`method target`, every `name: value\r\n`).
pub(crate) fn head_size(uri: &http::Uri, method: &str, headers: &http::HeaderMap) -> usize {
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len());
    target + method.len() + headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>()
}

/// A request body on its way upstream, counting its data into its record.
pub(crate) struct Counted {
    inner: Incoming,
    bytes: Arc<AtomicU64>,
}

impl Counted {
    pub(crate) fn new(inner: Incoming, bytes: Arc<AtomicU64>) -> Counted {
        Counted { inner, bytes }
    }
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            self.bytes.fetch_add(data.map_or(0, |d| d.len() as u64), Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that writes its request's record when it ends, fails or is dropped, with
/// the bytes it carried and the gRPC status its trailers carry.
pub(crate) struct Observed {
    inner: Body,
    record: Option<Record>,
    failure: Option<WaypointError>,
}

impl Observed {
    /// `record` is written when the body ends; `None` for a reply whose record is written.
    pub(crate) fn new(inner: Body, record: Option<Record>) -> Observed {
        Observed { inner, record, failure: None }
    }

    fn finish(&mut self, ended: bool) {
        let Some(r) = self.record.take() else { return };
        let failure = match self.failure.take() {
            Some(f) => Some(f),
            None if !ended => Some(WaypointError::ClientReset),
            None => None,
        };
        r.emit(failure.as_ref());
    }
}

impl hyper::body::Body for Observed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(r) = this.record.as_mut() {
                    r.response_bytes += f.data_ref().map_or(0, |d| d.len() as u64);
                    if let Some(t) = f.trailers_ref() {
                        r.grpc_status = (r.protocol == "grpc").then(|| grpc::status_in(t)).flatten();
                    }
                }
            }
            Some(Err(e)) => {
                let upstream = this.record.as_ref().and_then(|r| r.upstream.as_ref()).map(|e| e.target);
                let upstream = upstream.unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
                this.failure = Some(WaypointError::UpstreamReset { upstream, reason: e.to_string() });
                this.finish(true);
            }
            None => this.finish(true),
        }
        if this.inner.is_end_stream() {
            this.finish(true);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // Dropped before its end was read: hyper stopped sending it, the client having reset
        // the stream or gone away; unless it was empty from the start (a trailers-only reply).
        let ended = self.inner.is_end_stream();
        self.finish(ended);
    }
}
