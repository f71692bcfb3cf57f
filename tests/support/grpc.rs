//! A gRPC test server and client on hyper's HTTP/2, run inside a pod's network namespace. gRPC
//! is HTTP/2 POST with 5-byte length-prefixed messages and the status in trailers, so messages
//! are opaque bytes here and no protobuf is needed. The server:
//!
//! * `/ferry.Echo/Unary`: one message back, the request's bytes;
//! * `/ferry.Echo/Stream`: each message echoed as soon as it arrives (bidirectional streaming);
//! * `/ferry.Echo/Admin`: one message `ADMIN` (policies are meant to deny it);
//! * `/ferry.Echo/Close`: the server drops the connection the call came on, unanswered;
//! * `/ferry.Echo/Hang`: never answered (the connection stays open);
//! * other gRPC methods: trailers-only `grpc-status: 12` (UNIMPLEMENTED);
//! * anything not gRPC: `200 PLAIN-H2:<path>`.
//!
//! Every response carries `x-seen-te` (the request's `TE`, which gRPC needs to be `trailers`)
//! and the server counts the connections it accepted.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

/// Largest message either side accepts.
const MAX_MESSAGE: usize = 1 << 20;

/// A body fed through a channel, so a side can send while it reads.
pub struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn channel() -> (mpsc::Sender<Frame<Bytes>>, ChannelBody) {
    let (tx, rx) = mpsc::channel(16);
    (tx, ChannelBody(rx))
}

pub fn frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(0);
    b.put_u32(message.len() as u32);
    b.put_slice(message);
    b.freeze()
}

/// Complete messages taken off the front of `buf`; what is left is a partial message.
fn messages(buf: &mut BytesMut) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_MESSAGE || buf[0] != 0 {
            return Err(format!("bad message prefix {:?}", &buf[..5]));
        }
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        out.push(buf.split_to(len).to_vec());
    }
    Ok(out)
}

fn status(code: u32) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(code));
    t
}

/// Runs `f` on a new thread inside the namespace at `netns`, on a tokio runtime of its own.
fn in_netns<T: Send + 'static>(netns: &Path, f: impl std::future::Future<Output = T> + Send + 'static) -> std::io::Result<T> {
    let ns = ferry_sys::Netns::open(netns)?;
    std::thread::spawn(move || -> std::io::Result<T> {
        ns.enter()?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(rt.block_on(f))
    })
    .join()
    .map_err(|_| std::io::Error::other("thread in namespace panicked"))?
}

/// Connections the server accepted.
#[derive(Clone, Default)]
pub struct Accepted(Arc<AtomicUsize>);

impl Accepted {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Starts the server on `port` in the namespace at `netns` (h2c, prior knowledge).
pub fn serve(netns: &Path, port: u16) -> std::io::Result<Accepted> {
    let accepted = Accepted::default();
    let (ns, count) = (ferry_sys::Netns::open(netns)?, accepted.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let run = async move {
            let l = match ns.enter().and_then(|_| std::net::TcpListener::bind(("0.0.0.0", port))) {
                Ok(l) => l,
                Err(e) => return tx.send(Err(e)).unwrap_or(()),
            };
            let l = match l.set_nonblocking(true).and_then(|_| tokio::net::TcpListener::from_std(l)) {
                Ok(l) => l,
                Err(e) => return tx.send(Err(e)).unwrap_or(()),
            };
            let _ = tx.send(Ok(()));
            while let Ok((s, _)) = l.accept().await {
                count.0.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let close = Arc::new(tokio::sync::Notify::new());
                    let c = close.clone();
                    let svc = hyper::service::service_fn(move |req| handle(req, c.clone()));
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(s), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = close.notified() => {}
                    }
                });
            }
        };
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(run),
            Err(e) => eprintln!("gRPC test server: no runtime: {e}"),
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).map_err(|_| std::io::Error::other("gRPC test server did not start"))??;
    Ok(accepted)
}

async fn handle(req: Request<Incoming>, close: Arc<tokio::sync::Notify>) -> Result<Response<ChannelBody>, Infallible> {
    let te = req.headers().get(http::header::TE).cloned().unwrap_or(HeaderValue::from_static("none"));
    let grpc = req.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let path = req.uri().path().to_string();
    let (tx, body) = channel();
    let mut resp = Response::new(body);
    resp.headers_mut().insert("x-seen-te", te);
    if !grpc {
        let _ = tx.try_send(Frame::data(Bytes::from(format!("PLAIN-H2:{path}"))));
        return Ok(resp);
    }
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    let reply: fn(&[u8]) -> Option<Vec<u8>> = match path.as_str() {
        "/ferry.Echo/Unary" | "/ferry.Echo/Stream" => |m| Some(m.to_vec()),
        "/ferry.Echo/Admin" => |_| Some(b"ADMIN".to_vec()),
        "/ferry.Echo/Close" => {
            close.notify_one();
            return Ok(resp);
        }
        "/ferry.Echo/Hang" => std::future::pending().await,
        _ => {
            resp.headers_mut().insert("grpc-status", HeaderValue::from_static("12"));
            return Ok(resp);
        }
    };
    tokio::spawn(async move {
        let mut incoming = req.into_body();
        let mut buf = BytesMut::new();
        while let Some(Ok(f)) = incoming.frame().await {
            let Ok(data) = f.into_data() else { continue };
            buf.extend_from_slice(&data);
            let Ok(ms) = messages(&mut buf) else { return drop(tx.send(Frame::trailers(status(13))).await) };
            for m in ms.iter().filter_map(|m| reply(m)) {
                let _ = tx.send(Frame::data(frame(&m))).await;
            }
        }
        let _ = tx.send(Frame::trailers(status(0))).await;
    });
    Ok(resp)
}

/// What a call got back.
#[derive(Debug, Default)]
pub struct Reply {
    pub http_status: u16,
    pub headers: HeaderMap,
    pub messages: Vec<Vec<u8>>,
    /// From the trailers, or from the headers of a trailers-only response.
    pub grpc_status: Option<String>,
    pub grpc_message: Option<String>,
}

async fn connect(addr: SocketAddr) -> Result<hyper::client::conn::http2::SendRequest<ChannelBody>, String> {
    let s = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(s))
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

fn grpc_request(addr: SocketAddr, method: &str, body: ChannelBody) -> Request<ChannelBody> {
    let mut req = Request::new(body);
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = format!("http://{addr}{method}").parse().expect("a valid URI");
    let h = req.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(http::header::TE, HeaderValue::from_static("trailers"));
    req
}

/// Calls `method` at `addr` from the namespace at `netns`: sends `sent[i]` and, when `lockstep`,
/// waits for a reply message before sending the next (which only works if every hop streams).
pub fn call(netns: &Path, addr: SocketAddr, method: &str, sent: Vec<Vec<u8>>, lockstep: bool) -> Result<Reply, String> {
    let method = method.to_string();
    let run = async move {
        let mut sender = connect(addr).await?;
        let (tx, body) = channel();
        let resp = sender.send_request(grpc_request(addr, &method, body));
        let mut pending = sent.into_iter();
        let first = if lockstep { pending.next().into_iter().collect() } else { pending.by_ref().collect::<Vec<_>>() };
        for m in first {
            let _ = tx.send(Frame::data(frame(&m))).await;
        }
        // Unless in lockstep, the request ends here; else once the last reply arrived.
        let mut tx = lockstep.then_some(tx);
        let resp = resp.await.map_err(|e| format!("response: {e}"))?;
        let (parts, mut incoming) = resp.into_parts();
        let mut reply = Reply { http_status: parts.status.as_u16(), headers: parts.headers, ..Default::default() };
        let mut buf = BytesMut::new();
        while let Some(f) = incoming.frame().await {
            let f = f.map_err(|e| format!("response body: {e}"))?;
            if let Some(t) = f.trailers_ref() {
                reply.grpc_status = t.get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_string);
                reply.grpc_message = t.get("grpc-message").and_then(|v| v.to_str().ok()).map(str::to_string);
            }
            let Ok(data) = f.into_data() else { continue };
            buf.extend_from_slice(&data);
            for m in messages(&mut buf)? {
                reply.messages.push(m);
                // The reply to the last message arrived: send the next, or end the request.
                match (pending.next(), &tx) {
                    (Some(next), Some(t)) => drop(t.send(Frame::data(frame(&next))).await),
                    _ => tx = None,
                }
            }
        }
        if reply.grpc_status.is_none() {
            reply.grpc_status = reply.headers.get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_string);
            reply.grpc_message = reply.headers.get("grpc-message").and_then(|v| v.to_str().ok()).map(str::to_string);
        }
        Ok(reply)
    };
    let timed = async move { tokio::time::timeout(Duration::from_secs(10), run).await.unwrap_or_else(|_| Err("timed out".into())) };
    in_netns(netns, timed).map_err(|e| e.to_string())?
}

/// A plain HTTP/2 (prior knowledge) GET, with a `Host` header when given: the status and the body.
pub fn get(netns: &Path, addr: SocketAddr, path: &str, host: Option<&str>) -> Result<(u16, Vec<u8>), String> {
    let host: Vec<(&str, String)> = host.map(|h| ("host", h.to_string())).into_iter().collect();
    get_with(netns, addr, path, &host)
}

/// [`get`] with these request headers.
pub fn get_with(netns: &Path, addr: SocketAddr, path: &str, headers: &[(&str, String)]) -> Result<(u16, Vec<u8>), String> {
    let path = path.to_string();
    let headers: Vec<(http::HeaderName, HeaderValue)> = headers
        .iter()
        .map(|(n, v)| {
            Ok((
                http::HeaderName::from_bytes(n.as_bytes()).map_err(|e| e.to_string())?,
                HeaderValue::from_str(v).map_err(|e| e.to_string())?,
            ))
        })
        .collect::<Result<_, String>>()?;
    let run = async move {
        let mut sender = connect(addr).await?;
        let (tx, body) = channel();
        drop(tx);
        let mut req = Request::new(body);
        *req.uri_mut() = format!("http://{addr}{path}").parse().map_err(|e| format!("{e}"))?;
        for (n, v) in headers {
            req.headers_mut().append(n, v);
        }
        let resp = sender.send_request(req).await.map_err(|e| format!("response: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        Ok((status, body.to_vec()))
    };
    let timed = async move { tokio::time::timeout(Duration::from_secs(10), run).await.unwrap_or_else(|_| Err("timed out".into())) };
    in_netns(netns, timed).map_err(|e| e.to_string())?
}

/// The SETTINGS_MAX_CONCURRENT_STREAMS the server at `addr` advertises, read with h2 after one
/// request (so its SETTINGS have arrived).
pub fn max_concurrent_streams(netns: &Path, addr: SocketAddr) -> Result<usize, String> {
    let run = async move {
        let s = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut send, mut conn) = h2::client::handshake(s).await.map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let req = Request::get(format!("http://{addr}/settings")).body(()).map_err(|e| e.to_string())?;
        let (resp, _) = send.send_request(req, true).map_err(|e| format!("request: {e}"))?;
        tokio::select! {
            r = &mut conn => return Err(format!("connection ended: {r:?}")),
            r = resp => drop(r.map_err(|e| format!("response: {e}"))?),
        }
        Ok(conn.max_concurrent_send_streams())
    };
    let timed = async move { tokio::time::timeout(Duration::from_secs(10), run).await.unwrap_or_else(|_| Err("timed out".into())) };
    in_netns(netns, timed).map_err(|e| e.to_string())?
}
