//! The HBONE pool against a black-holed destination, in process on 127.0.0.1 (a listener whose
//! accept queue is full, so every further SYN is dropped and connect hangs). Times are measured
//! on tokio's paused clock, which jumps to the next timer whenever every task waits: the
//! assertions are about timeouts, never about how fast this machine is.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry::hbone::client::{Pool, PoolKey};
use ferry::net::{Keepalive, LocalSockets, SocketOptions};
use ferry_core::addr::ServerAddr;
use http::{Method, Request};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
const CONCURRENT: usize = 8;

/// A listener that never accepts, its queue full: connecting to it hangs until the timeout.
fn black_hole() -> (SocketAddr, socket2::Socket, std::net::TcpStream) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    // With a backlog of 0 the queue holds one connection: this one fills it.
    let filler = std::net::TcpStream::connect(addr).unwrap();
    (addr, s, filler)
}

fn pool(max_streams: &str) -> Arc<Pool> {
    let sockets = Arc::new(LocalSockets { opts: SocketOptions { mark: None, reuse_port: false, keepalive: Keepalive::default() } });
    let args =
        ["--mode", "dedicated", "--workload-info", "a/b/c", "--ca-dir", "/nonexistent", "--pool-max-streams-per-connection", max_streams];
    let budget = ferry::hbone::budget::TotalBudget::new(1 << 24, 1 << 22, Duration::from_secs(60));
    Pool::new(sockets, config(&args).h2, CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT, budget)
}

/// A client certificate and a pool key for the black hole, which lives as long as this does.
struct Fixture {
    cert: Arc<ferry::tls::WorkloadCert>,
    key: PoolKey,
    _hole: (socket2::Socket, std::net::TcpStream),
    _dir: TempDir,
}

async fn fixture(tag: &str) -> Fixture {
    let dir = TempDir::new(tag);
    new_ca(dir.path());
    let cert = cert_manager(dir.path()).fetch(&id("default", "client")).await.unwrap();
    let (hole, listener, filler) = black_hole();
    let key = PoolKey::new(id("default", "client"), vec![id("default", "server")], "127.0.0.1".parse().unwrap(), ServerAddr(hole));
    Fixture { cert, key, _hole: (listener, filler), _dir: dir }
}

/// One CONNECT through `pool`: its error's response flags and text, or `None` on success.
async fn attempt(pool: Arc<Pool>, key: PoolKey, cert: Arc<ferry::tls::WorkloadCert>) -> Option<(&'static str, String)> {
    let req = Request::builder().method(Method::CONNECT).uri("127.0.0.1:80").body(()).unwrap();
    pool.connect(&key, &cert, req).await.err().map(|e| (e.response_flags(), e.to_string()))
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_connections_to_a_black_hole_all_fail_within_one_timeout() {
    let f = fixture("pool").await;
    // Sharing (many streams per connection) makes first connections wait for one dial;
    // without sharing each dials alone.
    for max_streams in ["100", "1"] {
        let pool = pool(max_streams);
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..CONCURRENT)
            .map(|_| {
                let tried = attempt(pool.clone(), f.key.clone(), f.cert.clone());
                tokio::spawn(async move { (tried.await, start.elapsed()) })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let failed: Vec<_> = results.iter().filter_map(|(e, _)| e.clone()).collect();
        assert_eq!(failed.len(), CONCURRENT, "max streams {max_streams}: every connection fails: {results:?}");
        assert!(failed.iter().all(|(flags, _)| *flags == "CONNECT"), "max streams {max_streams}: {failed:?}");
        let slowest = results.iter().map(|(_, t)| *t).max().unwrap();
        assert!(
            slowest <= CONNECT_TIMEOUT + HANDSHAKE_TIMEOUT && slowest < 2 * CONNECT_TIMEOUT,
            "max streams {max_streams}: the last of {CONCURRENT} gave up after {slowest:?} (virtual), not within one attempt's \
             {CONNECT_TIMEOUT:?} + {HANDSHAKE_TIMEOUT:?}: {results:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_dial_hands_over_to_a_waiting_request() {
    let f = fixture("pool-cancel").await;
    let pool = pool("100");
    let dialler = tokio::spawn(attempt(pool.clone(), f.key.clone(), f.cert.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = tokio::time::Instant::now();
    let waiter = tokio::spawn(attempt(pool.clone(), f.key.clone(), f.cert.clone()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    dialler.abort();
    let (_, e) = waiter.await.unwrap().expect("the black hole still fails");
    assert!(e.contains("cannot connect"), "the waiter dialled itself once the dialler was gone: {e}");
    assert!(start.elapsed() <= CONNECT_TIMEOUT + HANDSHAKE_TIMEOUT, "within its own budget: {:?}", start.elapsed());
}
