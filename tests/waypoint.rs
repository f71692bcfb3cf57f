//! `ferry waypoint` end to end on 127.0.0.1 (no root): a test HBONE client presenting a client
//! identity sends HTTP/1.1 through the waypoint binary to an HTTP backend behind a ferry node
//! proxy (in process). Allowed requests reach the backend and its body comes back; a DENY
//! path gets `403 RBAC: access denied` and an access-log line naming the policy; an ALLOW on
//! principals sees the client's identity (not the waypoint's); a target the waypoint does not
//! front is refused. Bad input: malformed, oversized and slow requests are answered or cut by
//! the waypoint and never reach the backend; a policy file that does not read keeps the last
//! good set in force, and a policy that does not compile fails closed, both reported.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use ferry::net::{Keepalive, LocalSockets, SocketOptions};
use ferry::proxy::{ProxyInputs, WorkloadProxy};
use ferry::state::StateStore;
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BACKEND_IP: &str = "127.77.0.2";

const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}], when: [{key: destination.ip, notValues: [10.96.0.12]}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/front/sa/client]}}]}]
"#;

type Counter = Arc<std::sync::atomic::AtomicUsize>;

/// An HTTP/1.1 keep-alive backend answering every request with the path it saw (closing
/// when the request asks); the requests and the connections it was sent.
async fn http_backend() -> (SocketAddr, Counter, Counter) {
    let l = TcpListener::bind((BACKEND_IP, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (seen, conns) = (Counter::default(), Counter::default());
    let counters = (seen.clone(), conns.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    buf.drain(..end + 4);
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let close = head.contains("\r\nconnection: close");
                    let mut body = format!("backend saw {}", head.lines().next().unwrap_or_default().split(' ').nth(1).unwrap_or("?"));
                    if let Some(t) = head.lines().find_map(|l| l.strip_prefix("traceparent: ")) {
                        body.push_str(&format!(" traceparent={t}"));
                    }
                    let connection = if close { "close" } else { "keep-alive" };
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: {connection}\r\n\r\n{body}", body.len());
                    if s.write_all(resp.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, counters.0, counters.1)
}

struct Setup {
    dir: TempDir,
    waypoint: SocketAddr,
    admin: SocketAddr,
    stats: SocketAddr,
    backend_requests: Counter,
    backend_connections: Counter,
    child: Child,
    _drain: ferry::drain::DrainTrigger,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Setup {
    fn log(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("waypoint.log")).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

async fn setup() -> Setup {
    setup_with("").await
}

/// The waypoint with `extra` appended to its policies (`{DIR}` names the test's directory).
async fn setup_with(extra: &str) -> Setup {
    let dir = TempDir::new("waypoint");
    new_ca(dir.path());
    let (http, backend_requests, backend_connections) = http_backend().await;
    let yaml = format!(
        r#"
workloads:
- {{uid: c//Pod/shop/backend, name: backend, namespace: shop, serviceAccount: backend, workloadIps: ["{BACKEND_IP}"], protocol: HBONE,
   services: {{"shop/reviews.shop.svc.cluster.local": {{80: {port}}}, "shop/ratings.shop.svc.cluster.local": {{80: {port}}}}}}}
# The waypoint itself: the backend's node proxy admits HBONE to a waypoint-enrolled workload
# only from the identities of the waypoint Service's pods.
- {{uid: c//Pod/shop/waypoint-1, name: waypoint-1, namespace: shop, serviceAccount: waypoint, workloadIps: ["127.0.0.1"],
   services: {{"shop/waypoint.shop.svc.cluster.local": {{15008: 15008}}}}}}
services:
- {{name: waypoint, namespace: shop, hostname: waypoint.shop.svc.cluster.local, vips: ["/10.96.0.20"], ports: {{15008: 15008}}}}
- {{name: reviews, namespace: shop, hostname: reviews.shop.svc.cluster.local, vips: ["/10.96.0.10"], ports: {{80: {port}, 81: {port}}},
   appProtocols: {{80: HTTP11}}, waypoint: {{destination: shop/waypoint.shop.svc.cluster.local}}}}
- {{name: ratings, namespace: shop, hostname: ratings.shop.svc.cluster.local, vips: ["/10.96.0.12"], ports: {{80: {port}}},
   waypoint: {{destination: shop/waypoint.shop.svc.cluster.local}}}}
- {{name: other, namespace: shop, hostname: other.shop.svc.cluster.local, vips: ["/10.96.0.11"], ports: {{80: {port}}}}}
"#,
        port = http.port()
    );
    std::fs::write(dir.path().join("state.yaml"), &yaml).unwrap();
    let extra = extra.replace("{DIR}", dir.path().to_str().unwrap());
    std::fs::write(dir.path().join("policies.yaml"), format!("{POLICIES}{extra}")).unwrap();

    // The backend's node proxy (dedicated, in process), its HBONE port moved off 15008.
    let backend_hbone = free_port();
    let mut cfg = config(&["--mode", "dedicated", "--workload-info", "shop/backend/backend", "--ca-dir", dir.path().to_str().unwrap()]);
    cfg.ports = ferry_core::ports::Ports { outbound: free_port(), inbound_plaintext: free_port(), hbone: backend_hbone, ..cfg.ports };
    cfg.ipv6 = false;
    cfg.orig_src = Some(false);
    let state = StateStore::from_input(ferry_core::local_config::parse(&yaml, "test").unwrap());
    let inputs = ProxyInputs::new(Arc::new(cfg), state, cert_manager(dir.path()));
    let sockets = Arc::new(LocalSockets { opts: SocketOptions { mark: None, reuse_port: true, keepalive: Keepalive::default() } });
    let info = ferry::config::parse_workload_info("shop/backend/backend").unwrap();
    let (px, listeners) = WorkloadProxy::bind(inputs, info, sockets).unwrap();
    let (trigger, drain) = ferry::drain::new();
    tokio::spawn(px.run(listeners, drain));

    let waypoint: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let (admin, stats) = (addr(free_port()), addr(free_port()));
    let log = std::fs::File::create(dir.path().join("waypoint.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["waypoint", "--gateway", "waypoint", "--namespace", "shop"])
        .args(["--hbone-addr", &waypoint.to_string(), "--upstream-hbone-port", &backend_hbone.to_string()])
        .args(["--local-xds-path", dir.path().join("state.yaml").to_str().unwrap()])
        .args(["--policies", dir.path().join("policies.yaml").to_str().unwrap()])
        .args(["--ca-dir", dir.path().to_str().unwrap()])
        .args(["--admin-addr", &admin, "--stats-addr", &stats, "--readiness-addr", &addr(free_port())])
        .args(["--http-header-timeout", "1s", "--local-xds-poll", "200ms"])
        .env_clear()
        .env("LOG_FORMAT", "json")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let (admin, stats) = (admin.parse().unwrap(), stats.parse().unwrap());
    let s = Setup { dir, waypoint, admin, stats, backend_requests, backend_connections, child, _drain: trigger };
    for _ in 0..200 {
        if TcpStream::connect(s.waypoint).await.is_ok() {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the waypoint never listened: {:?}", s.log());
}

/// A CONNECT to `authority` through the waypoint as `client`; the status, and for a 200 the
/// response to one HTTP/1.1 GET of `path` sent on the stream.
async fn get(s: &Setup, client: &str, authority: &str, path: &str) -> (StatusCode, String) {
    get_with(s, client, authority, path, "").await
}

/// As [`get`], with `headers` (`Name: value\r\n` lines) added to the request.
async fn get_with(s: &Setup, client: &str, authority: &str, path: &str, headers: &str) -> (StatusCode, String) {
    let http = format!("GET {path} HTTP/1.1\r\nHost: reviews.shop.svc.cluster.local\r\nConnection: close\r\n{headers}\r\n");
    raw(s, client, authority, vec![http.into_bytes()], Duration::ZERO).await
}

/// A CONNECT to `authority` as `client`, then `chunks` sent on the stream `gap` apart (the
/// stream left open); the CONNECT status and everything read back until the waypoint ends
/// the stream.
async fn raw(s: &Setup, client: &str, authority: &str, chunks: Vec<Vec<u8>>, gap: Duration) -> (StatusCode, String) {
    let cert = cert_manager(s.dir.path()).fetch(&id("front", client)).await.unwrap();
    let tcp = TcpStream::connect(s.waypoint).await.unwrap();
    let cfg = cert.client_config(vec![id("shop", "waypoint")]);
    let tls = tokio_rustls::TlsConnector::from(cfg).connect(ferry::tls::dummy_server_name(), tcp).await.unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = Request::builder().method(Method::CONNECT).uri(authority).body(()).unwrap();
    let (resp, mut stream) = send.send_request(req, false).unwrap();
    let resp = resp.await.unwrap();
    if resp.status() != StatusCode::OK {
        return (resp.status(), String::new());
    }
    let mut body = resp.into_body();
    let mut got = Vec::new();
    // Sending stops at the first refused write: the waypoint has ended the stream.
    let write = async move {
        for c in chunks {
            stream.reserve_capacity(c.len());
            if stream.send_data(Bytes::from(c), false).is_err() {
                break;
            }
            tokio::time::sleep(gap).await;
        }
        std::future::pending::<()>().await
    };
    let read = async {
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
    };
    let ended = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(20), read) => r.is_ok(),
        _ = write => unreachable!(),
    };
    assert!(ended, "the waypoint ends the stream");
    (StatusCode::OK, String::from_utf8_lossy(&got).into_owned())
}

/// A GET of `path` on a management port.
async fn management(addr: SocketAddr, path: &str) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

fn status_line(resp: &str) -> &str {
    resp.lines().next().unwrap_or_default()
}

#[tokio::test]
async fn http_through_the_waypoint_is_authorized_per_request() {
    let s = setup().await;

    let (status, resp) = get(&s, "client", "10.96.0.10:80", "/hello").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(status_line(&resp), "HTTP/1.1 200 OK", "{resp}");
    assert!(resp.ends_with("backend saw /hello"), "the backend's body comes through: {resp}");

    let (_, resp) = get(&s, "client", "10.96.0.10:80", "/admin/users").await;
    assert_eq!(status_line(&resp), "HTTP/1.1 403 Forbidden", "{resp}");
    assert!(resp.ends_with("RBAC: access denied"), "{resp}");

    let (_, resp) = get(&s, "client", "10.96.0.10:80", "/public/../admin").await;
    assert_eq!(status_line(&resp), "HTTP/1.1 403 Forbidden", "a dot segment does not escape the DENY: {resp}");

    // The ALLOW names the client's principal: the waypoint sees the client, not itself.
    let (_, resp) = get(&s, "stranger", "10.96.0.10:80", "/hello").await;
    assert_eq!(status_line(&resp), "HTTP/1.1 403 Forbidden", "another client is not allowed: {resp}");

    // Port 81 declares no protocol: TCP, where the DENY on a path cannot be checked, so it
    // denies (fail closed) rather than letting bytes past a rule it cannot see.
    let (status, _) = get(&s, "client", "10.96.0.10:81", "/hello").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a TCP port under an L7 DENY is denied");

    // A TCP service no policy denies: its bytes are copied to the endpoint and back.
    let (status, resp) = get(&s, "client", "10.96.0.12:80", "/over-tcp").await;
    assert_eq!(status, StatusCode::OK);
    assert!(resp.starts_with("HTTP/1.1 200 OK") && resp.ends_with("backend saw /over-tcp"), "{resp}");

    let (status, _) = get(&s, "client", "10.96.0.11:80", "/hello").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a service whose waypoint is not this one is refused");

    // A TCP stream's line is written when its copy ends, which may follow the client's close.
    let access = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        for _ in 0..400 {
            if let Some(r) = s.log().into_iter().find(|r| r["scope"] == "access" && pred(r)) {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    };
    let denied = access(&|r| r["path"] == "/admin/users").expect("an access-log line for the denied request");
    assert_eq!((denied["status"].as_u64(), denied["response_flags"].as_str()), (Some(403), Some("DENY")), "{denied}");
    assert!(denied["error"].as_str().is_some_and(|e| e.contains("denied by shop/deny-admin")), "{denied}");
    assert_eq!(denied["src.identity"], "spiffe://cluster.local/ns/front/sa/client", "{denied}");
    let ok = access(&|r| r["path"] == "/hello" && r["status"] == 200).expect("an access-log line for the allowed request");
    assert_eq!(ok["dst.identity"], "spiffe://cluster.local/ns/shop/sa/backend", "{ok}");
    assert_eq!(ok["method"], "GET", "{ok}");
    let stranger = access(&|r| r["src.identity"] == "spiffe://cluster.local/ns/front/sa/stranger").expect("the stranger's line");
    assert!(stranger["error"].as_str().is_some_and(|e| e.contains("no ALLOW policy matched (shop/allow-client)")), "{stranger}");
    let tcp = access(&|r| r["dst.addr"] == "10.96.0.12:80").expect("a line for the TCP stream");
    assert_eq!((tcp["status"].as_u64(), tcp["response_flags"].as_str()), (Some(200), Some("-")), "{tcp}");
    assert_eq!(tcp["dst.identity"], "spiffe://cluster.local/ns/shop/sa/backend", "{tcp}");
    let refused = access(&|r| r["error"].as_str().is_some_and(|e| e.starts_with("10.96.0.11:80 is service shop/other")))
        .expect("a line for the refused target");
    assert!(refused["error"].as_str().is_some_and(|e| e.contains("whose waypoint is not this one (it has none)")), "{refused}");
    assert_eq!(refused["status"].as_u64(), Some(400), "{refused}");
}

#[tokio::test]
async fn malformed_oversized_and_slow_requests_never_reach_the_backend() {
    let s = setup().await;
    let (_, resp) = get(&s, "client", "10.96.0.10:80", "/hello").await;
    assert!(resp.ends_with("backend saw /hello"), "the path works: {resp}");
    let before = s.backend_requests.load(std::sync::atomic::Ordering::SeqCst);
    let send = |bytes: Vec<u8>| raw(&s, "client", "10.96.0.10:80", vec![bytes], Duration::ZERO);

    let (_, resp) = send(b"GET /a b c HTTP/1.1\r\nHost: reviews\r\n\r\n".to_vec()).await;
    assert_eq!(status_line(&resp), "HTTP/1.1 400 Bad Request", "a malformed request line: {resp}");
    let (_, resp) = send(b"GET / HTTP/1.1\r\nHost: reviews\r\nBad Header\r\n\r\n".to_vec()).await;
    assert_eq!(status_line(&resp), "HTTP/1.1 400 Bad Request", "a header without a colon: {resp}");
    let (_, resp) = send(b"GET /%zz HTTP/1.1\r\nHost: reviews\r\n\r\n".to_vec()).await;
    assert_eq!(status_line(&resp), "HTTP/1.1 400 Bad Request", "a path that does not decode: {resp}");

    // A header flood (more than 100 headers) and an oversized head (over 64 KiB).
    let mut flood = b"GET / HTTP/1.1\r\nHost: reviews\r\n".to_vec();
    for i in 0..101 {
        flood.extend_from_slice(format!("x-flood-{i}: 1\r\n").as_bytes());
    }
    flood.extend_from_slice(b"\r\n");
    let (_, resp) = send(flood).await;
    assert_eq!(status_line(&resp), "HTTP/1.1 431 Request Header Fields Too Large", "101 headers: {resp}");
    let big = format!("GET / HTTP/1.1\r\nHost: reviews\r\nx-big: {}\r\n\r\n", "a".repeat(70 * 1024));
    let (_, resp) = send(big.into_bytes()).await;
    assert_eq!(status_line(&resp), "HTTP/1.1 431 Request Header Fields Too Large", "a 70 KiB header: {resp}");

    // A slow client: one header byte every 100 ms for 60 s would outlast the 1 s header
    // timeout many times; the waypoint ends the stream long before the client is done.
    let mut slow = vec![b"GET / HTTP/1.1\r\nHost: reviews\r\n".to_vec()];
    slow.extend(std::iter::repeat_n(b"x".to_vec(), 600));
    let sent = std::time::Instant::now();
    let (_, resp) = raw(&s, "client", "10.96.0.10:80", slow, Duration::from_millis(100)).await;
    assert!(sent.elapsed() < Duration::from_secs(60), "cut before the client finished sending: {resp}");
    assert!(!resp.contains("backend saw"), "{resp}");

    assert_eq!(s.backend_requests.load(std::sync::atomic::Ordering::SeqCst), before, "none of them reached the backend");
}

#[tokio::test]
async fn a_policy_file_that_does_not_read_keeps_the_last_good_set_and_is_reported() {
    let s = setup().await;
    let path = s.dir.path().join("policies.yaml");
    let metric = |text: &str, name: &str, labels: &[(&str, &str)]| {
        text.lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
            .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    type Pred = Box<dyn Fn(&serde_json::Value, &str) -> bool>;
    let until = |what: &'static str, pred: Pred| {
        let (admin, stats) = (s.admin, s.stats);
        async move {
            for _ in 0..200 {
                let dump: serde_json::Value = serde_json::from_str(&management(admin, "/config_dump").await).unwrap();
                let metrics = management(stats, "/metrics").await;
                if pred(&dump["waypoint"]["policies"], &metrics) {
                    return (dump, metrics);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{what}");
        }
    };
    let (dump, _) = until(
        "the first load is in /config_dump",
        Box::new(|p, m| p["policies"].as_array().is_some_and(|a| a.len() == 2) && m.contains("ferry_waypoint_policies 2")),
    )
    .await;
    assert_eq!(dump["waypoint"]["identity"], "spiffe://cluster.local/ns/shop/sa/waypoint", "{dump}");
    assert!(dump["waypoint"]["policies"]["lastError"].is_null(), "{dump}");

    // Broken YAML: reported, and the DENY in force before still denies.
    std::fs::write(&path, format!("{POLICIES}\n---\nkind: AuthorizationPolicy\nspec: [unclosed\n")).unwrap();
    let (dump, metrics) = until("the failed reload is reported", Box::new(|p, _| p["lastError"].is_string())).await;
    let policies = &dump["waypoint"]["policies"];
    assert!(policies["lastError"].as_str().unwrap().contains("policies.yaml"), "names the file: {policies}");
    assert_eq!(policies["policies"].as_array().map(Vec::len), Some(2), "the last good set stays: {policies}");
    assert!(metric(&metrics, "ferry_waypoint_policy_loads_total", &[("result", "error")]).is_some_and(|n| n >= 1.0), "{metrics}");
    let (_, resp) = get(&s, "client", "10.96.0.10:80", "/admin/users").await;
    assert_eq!(status_line(&resp), "HTTP/1.1 403 Forbidden", "the last good DENY still holds: {resp}");

    // A policy that reads but does not compile (an unknown action): in force as a DENY of
    // what it targets, with a note, counted.
    let bad = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: typo, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: reviews}]\n  action: ALOW\n";
    std::fs::write(&path, format!("{POLICIES}\n---\n{bad}")).unwrap();
    let (dump, _) = until(
        "the uncompilable policy is in force, failing closed",
        Box::new(|p, m| p["lastError"].is_null() && m.contains("ferry_waypoint_policies_failing_closed 1")),
    )
    .await;
    let typo = dump["waypoint"]["policies"]["policies"].as_array().unwrap().iter().find(|p| p["name"] == "typo").cloned().unwrap();
    assert!(typo["notes"][0].as_str().is_some_and(|n| n.contains("failing closed")), "{typo}");
    let (_, resp) = get(&s, "client", "10.96.0.10:80", "/hello").await;
    assert_eq!(status_line(&resp), "HTTP/1.1 403 Forbidden", "the service it targets is denied: {resp}");
    let (status, resp) = get(&s, "client", "10.96.0.12:80", "/hello").await;
    assert!(status == StatusCode::OK && resp.ends_with("backend saw /hello"), "another service is not: {resp}");
}

#[tokio::test]
async fn upstream_connections_are_reused_across_client_connections() {
    let s = setup().await;
    let count = |c: &Counter| c.load(std::sync::atomic::Ordering::SeqCst);
    for i in 0..6 {
        // Each request on its own client connection and HBONE stream, which it closes.
        let (_, resp) = get(&s, "client", "10.96.0.10:80", &format!("/r{i}")).await;
        assert!(resp.ends_with(&format!("backend saw /r{i}")), "{resp}");
    }
    assert_eq!(count(&s.backend_requests), 6);
    assert_eq!(count(&s.backend_connections), 1, "one upstream connection carried all six requests");
    let dump: serde_json::Value = serde_json::from_str(&management(s.admin, "/config_dump").await).unwrap();
    assert_eq!(dump["waypoint"]["pooledUpstreamConnections"], 1, "{}", dump["waypoint"]);
    // Its listener, with what it fronts and how each port is served.
    let fronts = &dump["waypoint"]["listeners"][0]["fronts"];
    let reviews = fronts.as_array().and_then(|f| f.iter().find(|f| f["service"] == "reviews.shop.svc.cluster.local"));
    assert_eq!(reviews.map(|r| r["ports"].clone()), Some(serde_json::json!({"80": "Http1", "81": "Tcp"})), "{fronts}");
}

#[tokio::test]
async fn a_w3c_traceparent_reaches_the_backend_unchanged() {
    let s = setup().await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = format!("GET /traced HTTP/1.1\r\nHost: reviews.shop.svc.cluster.local\r\ntraceparent: {trace}\r\nConnection: close\r\n\r\n");
    let (_, resp) = raw(&s, "client", "10.96.0.10:80", vec![req.into_bytes()], Duration::ZERO).await;
    assert!(resp.ends_with(&format!("backend saw /traced traceparent={trace}")), "{resp}");
}

#[tokio::test]
async fn the_explain_endpoint_answers_l7_questions_as_the_data_path_decides() {
    let s = setup().await;
    let ask = |q: String| async move {
        let mut c = TcpStream::connect(s.admin).await.unwrap();
        c.write_all(format!("GET /debug/authorization?{q} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or_default();
        (head.split_whitespace().nth(1).unwrap_or_default().to_string(), body.to_string())
    };
    let client = "source_identity=spiffe://cluster.local/ns/front/sa/client";
    let decision = |body: &str| serde_json::from_str::<serde_json::Value>(body).map(|v| v["decision"].clone()).unwrap_or_default();
    let (status, body) = ask(format!("destination=10.96.0.10:80&{client}&path=/public/../admin/users")).await;
    assert_eq!(status, "200", "{body}");
    let d = decision(&body);
    assert_eq!(
        (d["result"].as_str(), d["policy"].as_str()),
        (Some("deny"), Some("shop/deny-admin")),
        "normalized as the data path: {body}"
    );
    let (_, body) = ask(format!("destination=10.96.0.10:80&{client}&method=POST&path=/hello&header=x-a:1")).await;
    assert_eq!(decision(&body)["result"], "allow", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["request"]["headers"], serde_json::json!([["x-a", "1"]]), "{body}");
    let (_, body) = ask("destination=10.96.0.10:80&source_identity=spiffe://cluster.local/ns/front/sa/stranger&path=/hello".into()).await;
    let d = decision(&body);
    assert!(d["reason"].as_str().is_some_and(|r| r.contains("no ALLOW policy matched")), "the ALLOW's principal: {body}");
    let (status, body) = ask(format!("destination=10.96.0.11:80&{client}")).await;
    assert_eq!(status, "404", "a service this waypoint does not front: {body}");
    let (status, _) = ask("destination=nonsense".into()).await;
    assert_eq!(status, "400");
}

/// Keys from a `jwksUri` file, replaced with the policies: tokens of the old key get 401 once
/// the new set is in force, an unreadable set keeps the last good one; claims decide a DENY.
#[tokio::test]
async fn jwt_keys_from_a_file_are_reloaded_with_the_policies() {
    const ISS: &str = "https://issuer.example";
    const RA: &str = r#"
---
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  jwtRules: [{issuer: "https://issuer.example", jwksUri: "file://{DIR}/jwks.json"}]
---
{apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {name: deny-banned, namespace: shop}, spec: {
  targetRefs: [{kind: Service, group: "", name: reviews}], action: DENY,
  rules: [{when: [{key: "request.auth.claims[groups]", values: [banned]}]}]}}
"#;
    let (old, new) = (jwt::Issuer::new(), jwt::Issuer::new());
    let s = setup_with(RA).await;
    let jwks = s.dir.path().join("jwks.json");
    let policies = s.dir.path().join("policies.yaml");
    // Written after the start: the first read found no file, so the issuer's tokens failed.
    std::fs::write(&jwks, old.jwks()).unwrap();
    let text = std::fs::read_to_string(&policies).unwrap();
    std::fs::write(&policies, format!("{text}\n# keys written\n")).unwrap();
    let bearer = |t: String| format!("Authorization: Bearer {t}\r\n");
    let status = |resp: String| status_line(&resp).to_string();
    let until = |want: &'static str, token: String| {
        let s = &s;
        async move {
            let mut last = String::new();
            for _ in 0..200 {
                last = status(get_with(s, "client", "10.96.0.10:80", "/hello", &bearer(token.clone())).await.1);
                if last == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("never {want}, last {last}: {:?}", s.log().iter().rev().take(5).collect::<Vec<_>>());
        }
    };
    until("HTTP/1.1 200 OK", old.token(ISS, "alice", 600)).await;
    let banned = old.sign(&serde_json::json!({"iss": ISS, "sub": "mallory", "exp": jwt::now() + 600, "groups": ["dev", "banned"]}));
    let (_, resp) = get_with(&s, "client", "10.96.0.10:80", "/hello", &bearer(banned)).await;
    assert_eq!(status_line(&resp), "HTTP/1.1 403 Forbidden", "a DENY on a claim: {resp}");

    std::fs::write(&jwks, new.jwks()).unwrap();
    std::fs::write(&policies, format!("{text}\n# keys rotated\n")).unwrap();
    until("HTTP/1.1 200 OK", new.token(ISS, "alice", 600)).await;
    let (_, resp) = get_with(&s, "client", "10.96.0.10:80", "/hello", &bearer(old.token(ISS, "alice", 600))).await;
    assert_eq!(status_line(&resp), "HTTP/1.1 401 Unauthorized", "the rotated-out key: {resp}");
    assert!(resp.ends_with("Jwt verification fails"), "{resp}");

    // A policy file that does not read: the last good set, keys included, stays in force.
    std::fs::write(&policies, "kind: [unclosed").unwrap();
    let refused = || s.log().iter().any(|r| r["message"].as_str().is_some_and(|m| m.contains("not reloaded")));
    for _ in 0..200 {
        if refused() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused(), "the unreadable file was read and refused");
    let (_, resp) = get_with(&s, "client", "10.96.0.10:80", "/hello", &bearer(new.token(ISS, "alice", 600))).await;
    assert_eq!(status_line(&resp), "HTTP/1.1 200 OK", "{resp}");
    let (_, resp) = get_with(&s, "client", "10.96.0.10:80", "/hello", "").await;
    assert_eq!(status_line(&resp), "HTTP/1.1 200 OK", "no token: no request principal needed here: {resp}");
    let ok = s.log().into_iter().rev().find(|r| r["scope"] == "access" && r["request.principal"] == "https://issuer.example/alice");
    assert!(ok.is_some_and(|r| r["status"] == 200), "the request principal in the access log");
}
