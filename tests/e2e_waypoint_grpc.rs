//! gRPC and HTTP/2 through a waypoint on the simulated cluster (root only; fails without):
//! client, waypoint and server on three nodes, as `e2e_waypoint_l7.rs`. The client speaks h2c to
//! the service VIP (a `grpc` port and an `http2` one), its node proxy carries it in HBONE to the
//! `ferry waypoint` pod, which authorizes each request with the client's identity and sends it
//! on one shared HTTP/2 connection per endpoint to the server's node proxy: unary and
//! bidirectional streaming calls arrive with their bytes and `grpc-status: 0`, a denied method
//! gets a trailers-only `grpc-status: 7`, and the waypoint logs and counts each call as gRPC.

mod common;
#[path = "support/grpc.rs"]
mod grpc;

use std::net::SocketAddr;
use std::time::Duration;

use common::sim::*;
use ferry_harness::sim::{apps, observe};

/// Appended to `three_node_waypoint()`.
const SCENARIO: &str = r#"
---
{apiVersion: v1, kind: ServiceAccount, metadata: {name: echo, namespace: shop}}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  clusterIP: 198.19.0.42
  ports: [{name: grpc, port: 50051, targetPort: 9000}, {name: web, port: 81, targetPort: 9000, appProtocol: kubernetes.io/h2c}]
---
# A gRPC service with no pod behind it.
apiVersion: v1
kind: Service
metadata: {name: gone, namespace: shop}
spec: {selector: {app: gone}, clusterIP: 198.19.0.43, ports: [{name: grpc-api, port: 50051, targetPort: 9000}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/ferry.Echo/Admin"]}}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: shop, labels: {app: echo}}
spec: {nodeName: node-3, serviceAccountName: echo}
"#;

const CLIENT: &str = "spiffe://cluster.local/ns/front/sa/client";

#[test]
fn grpc_and_http2_go_through_the_waypoint_with_l7_policy() {
    let sim = waypoint_cluster(SCENARIO);
    // A response timeout well above what a call needs here, so only `Hang` reaches it.
    let mut waypoint = sim.spawn_waypoint_with("shop", "waypoint-1", "waypoint", &["--response-timeout", "5s"]).unwrap();
    let accepted = grpc::serve(&sim.pod("shop", "echo").netns_path(), 9000).unwrap();
    for p in sim.pods.values() {
        sim.wait_known(p.ip).expect("proxies learn every pod");
    }
    let client = sim.pod("front", "client").netns_path();
    let vip: SocketAddr = "198.19.0.42:50051".parse().unwrap();
    let log = sim.work.join("waypoint-waypoint-1.log");
    let tail = || std::fs::read_to_string(&log).unwrap_or_default().lines().rev().take(8).collect::<Vec<_>>().join("\n");

    let mut last = None;
    eventually("a unary call through the waypoint reaches the server", || {
        last = Some(grpc::call(&client, vip, "/ferry.Echo/Unary", vec![b"HELLO-GRPC".to_vec()], false));
        last.as_ref().is_some_and(|r| r.as_ref().is_ok_and(|r| r.grpc_status.as_deref() == Some("0")))
    });
    let unary = last.unwrap().unwrap();
    assert_eq!((unary.http_status, unary.messages.clone()), (200, vec![b"HELLO-GRPC".to_vec()]), "{unary:?}");
    assert_eq!(unary.headers["x-seen-te"], "trailers", "TE: trailers reaches the server");

    // Bidirectional streaming in lockstep: each message waits for the previous one's reply, so
    // this completes only if the waypoint streams both ways rather than buffering.
    let sent: Vec<Vec<u8>> = (0..5).map(|i| format!("MSG-{i}-").repeat(1000).into_bytes()).collect();
    let stream = grpc::call(&client, vip, "/ferry.Echo/Stream", sent.clone(), true);
    let stream = stream.unwrap_or_else(|e| panic!("streaming call: {e}\n{}", tail()));
    assert_eq!((stream.grpc_status.as_deref(), stream.messages.len()), (Some("0"), 5), "{:?}", stream.grpc_message);
    assert!(stream.messages == sent, "every message echoed intact, in order");

    // The upstream connection is shared: more calls, each on a new client connection, open no
    // new connection at the server.
    let before = accepted.count();
    for i in 0..5 {
        let r = grpc::call(&client, vip, "/ferry.Echo/Unary", vec![format!("AGAIN-{i}").into_bytes()], false).unwrap();
        assert_eq!(r.grpc_status.as_deref(), Some("0"), "{r:?}");
    }
    assert_eq!(accepted.count(), before, "the calls reused the waypoint's connection to the server");
    // The server drops that connection: the waypoint dials a new one for the next calls.
    let _ = grpc::call(&client, vip, "/ferry.Echo/Close", vec![b"x".to_vec()], false);
    eventually("a call after the server dropped the shared connection succeeds", || {
        grpc::call(&client, vip, "/ferry.Echo/Unary", vec![b"AFTER".to_vec()], false).is_ok_and(|r| r.grpc_status.as_deref() == Some("0"))
    });
    assert_eq!(accepted.count(), before + 1, "one new connection replaced the dropped one");

    let denied = grpc::call(&client, vip, "/ferry.Echo/Admin", vec![b"x".to_vec()], false).unwrap();
    assert_eq!(
        (denied.http_status, denied.grpc_status.as_deref(), denied.grpc_message.as_deref()),
        (200, Some("7"), Some("RBAC: access denied")),
        "the waypoint's L7 DENY as a gRPC status: {denied:?}"
    );
    assert!(denied.messages.is_empty(), "the server never answered: {denied:?}");
    let hang = grpc::call(&client, vip, "/ferry.Echo/Hang", vec![b"x".to_vec()], false).unwrap();
    let hang = (hang.http_status, hang.grpc_status, hang.grpc_message);
    assert_eq!(hang, (200, Some("4".into()), Some("upstream request timeout".into())), "the waypoint's response timeout");
    let gone = grpc::call(&client, "198.19.0.43:50051".parse().unwrap(), "/ferry.Echo/Unary", vec![b"x".to_vec()], false).unwrap();
    let gone = (gone.http_status, gone.grpc_status, gone.grpc_message);
    assert_eq!(gone, (200, Some("14".into()), Some("no healthy upstream".into())), "a service without endpoints");

    // Plain HTTP/2 on the h2c port.
    let web: SocketAddr = "198.19.0.42:81".parse().unwrap();
    let (status, body) = grpc::get(&client, web, "/plain", None).unwrap();
    assert_eq!((status, String::from_utf8_lossy(&body).into_owned()), (200, "PLAIN-H2:/plain".to_string()));
    // A Host that is not the :authority: policy would read one name and the upstream the other.
    let (status, body) = grpc::get(&client, web, "/spoofed", Some("admin.shop")).unwrap();
    assert_eq!((status, String::from_utf8_lossy(&body).into_owned()), (400, "Bad Request".to_string()));
    assert_eq!(grpc::max_concurrent_streams(&client, web), Ok(100), "the waypoint's stream limit, as the client sees it");
    // Bounded heads on HTTP/2 too: a 70 KiB header and a flood of 2000 headers never reach
    // the server (431 from the waypoint's HTTP/2 server), while a normal request on the port still works.
    let big = grpc::get_with(&client, web, "/big", &[("x-big", "a".repeat(70 * 1024))]);
    assert_eq!(big.map(|r| r.0), Ok(431), "a 70 KiB header");
    let flood: Vec<(String, String)> = (0..2000).map(|i| (format!("x-flood-{i}"), "0123456789abcdef".repeat(2))).collect();
    let flood: Vec<(&str, String)> = flood.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    let flooded = grpc::get_with(&client, web, "/flood", &flood);
    assert_eq!(flooded.map(|r| r.0), Ok(431), "2000 headers");
    assert_eq!(grpc::get(&client, web, "/plain", None).map(|r| r.0), Ok(200), "the port still serves");

    let records = observe::access_log(&log);
    let admin = records.iter().find(|r| r["path"] == "/ferry.Echo/Admin");
    let admin = admin.unwrap_or_else(|| panic!("a waypoint record for the denied call: {records:?}"));
    assert_eq!(
        (&admin["src.identity"], &admin["protocol"], &admin["grpc_status"], &admin["response_flags"]),
        (&CLIENT.into(), &"grpc".into(), &"7".into(), &"DENY".into()),
        "{admin}"
    );
    let streamed = records.iter().find(|r| r["path"] == "/ferry.Echo/Stream").expect("a record for the streaming call");
    assert_eq!((&streamed["grpc_status"], &streamed["status"]), (&"0".into(), &200.into()), "{streamed}");
    assert!(records.iter().any(|r| r["path"] == "/plain" && r["protocol"] == "http"), "{records:?}");
    let spoofed = records.iter().find(|r| r["path"] == "/spoofed").expect("a record for the refused request");
    assert_eq!((&spoofed["status"], &spoofed["response_flags"]), (&400.into(), &"DPE".into()), "{spoofed}");

    let wp = sim.pod("shop", "waypoint-1").clone();
    let (_, metrics) =
        apps::http_bytes(&wp.netns_path(), SocketAddr::new(wp.ip, 15020), "GET", "/metrics", Duration::from_secs(5)).unwrap();
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let count = |protocol: &str, grpc_status: &str| {
        let labels = [
            ("reporter", "waypoint"),
            ("source_principal", CLIENT),
            ("request_protocol", protocol),
            ("response_code", "200"),
            ("grpc_response_status", grpc_status),
            ("destination_service_name", "echo"),
        ];
        observe::metric(&metrics, "istio_requests_total", &labels)
    };
    assert!(count("grpc", "0").is_some_and(|n| n >= 7.0), "{metrics}");
    assert_eq!(count("grpc", "7"), Some(1.0), "{metrics}");
    assert!(count("http", "").is_some_and(|n| n >= 1.0), "{metrics}");

    let _ = waypoint.kill();
    let _ = waypoint.wait();
    let after = grpc::call(&client, vip, "/ferry.Echo/Unary", vec![b"x".to_vec()], false);
    assert!(after.as_ref().map_or(true, |r| r.grpc_status.as_deref() != Some("0")), "no waypoint, no way through: {after:?}");
}
