//! The memory an open connection costs, as the size of the task it is spawned as: each path
//! boxes its set-up and frees it before the copy, so what stays is the copy state. These
//! budgets are the measured sizes with a little headroom; a change that makes every idle
//! connection heavier fails here instead of in a benchmark (ztunnel guards the same with
//! `assertions::size_between`). They measure what is spawned, not only the handler's future:
//! an `async move { conn.await; drop(place) }` wrapper once stored each future twice.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};

use super::inbound::Inbound;
use super::*;
use crate::hbone::budget::Chunk;
use crate::hbone::server::{ConnInfo, StreamHandler};
use crate::net::{Keepalive, LocalSockets, SocketOptions};
use crate::tls::ca::{self, InitOptions, LocalCa};

/// Bytes of task per open connection, by path. Measured 2026-12-01 (debug / release build):
/// outbound 1520 / 1488, inbound plaintext 1496 / 1472, inbound HBONE stream 1192 (1136 before
/// each stream carried its connection's send budget, the bound on memory per slow peer).
const OUTBOUND_BUDGET: usize = 1600;
const INBOUND_PLAINTEXT_BUDGET: usize = 1600;
const INBOUND_STREAM_BUDGET: usize = 1264;

async fn proxy() -> (Arc<WorkloadProxy>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("ferry-task-size-{}-{}", std::process::id(), fastrand::u32(..)));
    let opts = InitOptions { root_validity: Duration::from_secs(86400), ca_validity: Duration::from_secs(86400), organization: "t".into() };
    ca::init(&dir, &opts).unwrap();
    let certs = CertManager::new(Arc::new(LocalCa::load(&dir).unwrap()), Duration::from_secs(3600));
    let mut cfg = crate::config::test_config();
    cfg.ports = ferry_core::ports::Ports { outbound: 0, inbound_plaintext: 0, hbone: 0, ..cfg.ports };
    cfg.ipv6 = false;
    cfg.orig_src = Some(false);
    let inputs = ProxyInputs::new(Arc::new(cfg.clone()), StateStore::new(), certs);
    let sockets = Arc::new(LocalSockets { opts: SocketOptions { mark: None, reuse_port: true, keepalive: Keepalive::default() } });
    let (px, _listeners) = WorkloadProxy::bind(inputs, cfg.workload_info.clone().unwrap(), sockets).unwrap();
    (px, dir)
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    (c, l.accept().await.unwrap().0)
}

/// A real CONNECT stream, as the HBONE server hands it to the handler.
async fn connect_stream() -> (http::Request<h2::RecvStream>, h2::server::SendResponse<Chunk>, h2::client::SendRequest<Bytes>) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut conn = h2::server::Builder::new().handshake::<_, Chunk>(s).await.unwrap();
        let got = conn.accept().await.unwrap().unwrap();
        tokio::spawn(async move { while conn.accept().await.is_some() {} });
        got
    });
    let (mut client, conn) = h2::client::handshake(c).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder().method(http::Method::CONNECT).uri("127.0.0.1:8080").body(()).unwrap();
    let _ = client.send_request(req, false).unwrap();
    let (req, respond) = server.await.unwrap();
    (req, respond, client)
}

#[tokio::test]
async fn open_connection_tasks_stay_within_their_memory_budget() {
    let (px, dir) = proxy().await;
    let (_trigger, drain) = crate::drain::new();

    let (_c1, s1) = tcp_pair().await;
    let gate = crate::listen::Gate::new("test", 4, 4);
    let place = || gate.admit("127.0.0.1".parse().unwrap()).unwrap();
    let out = connection_task(outbound::handle(px.clone(), s1, drain.clone()), place());
    let size = std::mem::size_of_val(&out);
    assert!(size <= OUTBOUND_BUDGET, "outbound connection task: {size} bytes > {OUTBOUND_BUDGET}");

    let (_c2, s2) = tcp_pair().await;
    let plain = connection_task(inbound_passthrough::handle(px.clone(), s2, drain.clone()), place());
    let size = std::mem::size_of_val(&plain);
    assert!(size <= INBOUND_PLAINTEXT_BUDGET, "inbound plaintext connection task: {size} bytes > {INBOUND_PLAINTEXT_BUDGET}");

    let (req, respond, _client) = connect_stream().await;
    let conn = Arc::new(ConnInfo {
        peer: "127.0.0.2:40000".parse().unwrap(),
        local: "127.0.0.1:15008".parse().unwrap(),
        identity: ferry_core::identity::Identity::new("cluster.local", "ns", "sa").unwrap(),
        budget: px.inputs.budget.connection(),
        setups: Arc::new(tokio::sync::Semaphore::new(1)),
    });
    let handler = Arc::new(Inbound { px: px.clone() }).handle(req, respond, conn, drain.clone());
    let stream = crate::hbone::server::stream_task(handler, Arc::new(()));
    let size = std::mem::size_of_val(&stream);
    assert!(size <= INBOUND_STREAM_BUDGET, "inbound HBONE stream task: {size} bytes > {INBOUND_STREAM_BUDGET}");
    let _ = std::fs::remove_dir_all(dir);
}
