//! Issue 13 (part 1) end to end on the simulated cluster (root only; fails without): a waypoint
//! declared as Istio declares it (a Gateway of class istio-waypoint, `istio.io/use-waypoint` on
//! the namespace) but with no waypoint pod running. ferry fails closed where Istio goes direct:
//! the client's node proxy refuses service traffic it cannot send through the waypoint, and the
//! destination's node proxy refuses traffic that bypasses the waypoint (and closes a direct
//! connection opened before the namespace was enrolled); the controller's
//! `--waypoint-unavailable=direct` restores Istio's behaviour.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use common::sim::*;
use ferry_harness::sim::{apps, observe, Sim};

/// Appended to `FRONTEND_BACKEND` with the waypoint at 198.19.0.21; the `shop` namespace is enrolled in the waypoint once the
/// cluster runs.
const SCENARIO: &str = r#"
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
{apiVersion: v1, kind: Pod, metadata: {name: client, namespace: legacy}, spec: {nodeName: node-1}}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: shop}
spec: {selector: {app: backend}, clusterIP: 198.19.0.20, ports: [{port: 80, targetPort: 8080}]}
"#;

const WAYPOINT: &str = "shop/waypoint.shop.svc.cluster.local";
const VIP: &str = "198.19.0.20:80";

/// Whether a round trip echoed (`true`) or was closed or reset without an echo (`false`).
fn echoed(sim: &Sim, from: (&str, &str), dst: SocketAddr) -> bool {
    let payload = format!("hello from {}/{}", from.0, from.1).into_bytes();
    match apps::roundtrip(&sim.pod(from.0, from.1).netns_path(), dst, payload.clone()) {
        Ok(echo) if echo == payload => true,
        Ok(echo) if echo.is_empty() => false,
        // NotConnected: the reset arrived before the client's own shutdown of its write side.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionRefused | ErrorKind::NotConnected
            ) =>
        {
            false
        }
        other => panic!("{from:?} -> {dst}: neither echoed nor closed: {other:?}"),
    }
}

/// The waypoint every node proxy holds for the backend Service (`None`: no waypoint).
fn advertised_waypoint(sim: &Sim) -> Vec<Option<String>> {
    sim.nodes
        .iter()
        .map(|n| {
            let d = n.dump().ok()?;
            let svc = d["services"].as_array()?.iter().find(|s| s["hostname"] == "backend.shop.svc.cluster.local")?.clone();
            svc["waypoint"]["destination"].as_str().map(str::to_string)
        })
        .collect()
}

#[test]
fn a_waypoint_without_pods_fails_closed_at_both_ends_unless_opted_out() {
    let mut sim = cluster(&format!("{FRONTEND_BACKEND}{SCENARIO}{}", waypoint_gateway("198.19.0.21")));
    let vip: SocketAddr = VIP.parse().unwrap();
    let backend = sim.pod("shop", "backend").addr(8080);
    // A direct connection opened before the namespace is enrolled...
    let mut held = apps::connect(&sim.pod("shop", "frontend").netns_path(), backend).unwrap();
    held.write_all(b"opened before the waypoint").unwrap();
    let frontend_ip = sim.pod("shop", "frontend").ip.to_string();
    eventually("the destination holds the direct connection", || {
        sim.nodes[1].dump().is_ok_and(|d| {
            let states = d["workloadState"].as_object().cloned().unwrap_or_default();
            states
                .values()
                .flat_map(|s| s["connections"]["inbound"].as_array().cloned().unwrap_or_default())
                .any(|c| c["src"] == frontend_ip)
        })
    });
    held.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    sim.label_namespace("shop", "istio.io/use-waypoint", Some("waypoint")).unwrap();
    eventually("every proxy holds the backend's waypoint", || advertised_waypoint(&sim).iter().all(|w| w.as_deref() == Some(WAYPOINT)));
    // ...is closed by the destination once it must come through the waypoint.
    let r = held.read(&mut buf);
    assert!(matches!(r, Ok(0)) || r.as_ref().is_err_and(|e| e.kind() == ErrorKind::ConnectionReset), "must be closed: {r:?}");
    let late = inbound_record(&sim, ("shop", "frontend"), ("shop", "backend"), 8080).expect("the closed connection's record");
    assert!(
        late["error"]
            .as_str()
            .unwrap()
            .contains("closed after a policy change: spiffe://cluster.local/ns/shop/sa/frontend may not connect directly"),
        "{late}"
    );
    let controller_log = std::fs::read_to_string(sim.controller_log()).unwrap();
    assert!(
        controller_log.contains("Service shop/backend uses waypoint shop/waypoint, which has no running pod"),
        "the controller says why: {controller_log}"
    );

    // (b) Service traffic must go through the waypoint, which has no pod: refused at the
    // client's node proxy, with the reason in its access log.
    assert!(!echoed(&sim, ("shop", "frontend"), vip), "service traffic must not bypass the waypoint");
    let out = observe::find_record(&sim.nodes[0].proxy_log(), "outbound", sim.pod("shop", "frontend").ip, vip, Duration::from_secs(3))
        .expect("the client's proxy logs the refusal");
    assert_eq!(out["response_flags"], "UH", "{out}");
    let error = out["error"].as_str().unwrap();
    assert!(error.contains(&format!("must go through waypoint {WAYPOINT}, which has no healthy pod")), "{out}");

    // (a) Dialling the pod directly bypasses the waypoint: the destination's node proxy refuses
    // it like a policy denial, from a meshed client (HBONE, 401) and from a plaintext one.
    assert!(!echoed(&sim, ("shop", "frontend"), backend), "a meshed client may not bypass the waypoint");
    let r = inbound_record(&sim, ("shop", "frontend"), ("shop", "backend"), 8080).expect("the destination logs the refusal");
    assert_eq!(r["response_flags"], "DENY", "{r}");
    let error = r["error"].as_str().unwrap();
    assert!(
        error.contains("spiffe://cluster.local/ns/shop/sa/frontend may not connect directly")
            && error.contains(&format!("served through waypoint {WAYPOINT}")),
        "{r}"
    );
    assert!(!echoed(&sim, ("legacy", "client"), backend), "a plaintext client may not bypass the waypoint");
    let r = inbound_record(&sim, ("legacy", "client"), ("shop", "backend"), 8080).expect("the destination logs the refusal");
    assert!(r["error"].as_str().unwrap().contains("a plaintext client may not connect directly"), "{r}");
    let m = sim.nodes[1].metrics().unwrap();
    assert_eq!(observe::metric(&m, "ferry_waypoint_bypass_refused_total", &[]), Some(2.0), "the two refused at setup: {m}");
    let failed = observe::metric(
        &m,
        "istio_tcp_connections_failed_total",
        &[("reporter", "destination"), ("response_flags", "DENY"), ("source_principal", "spiffe://cluster.local/ns/shop/sa/frontend")],
    );
    // The refused stream and the connection closed when the waypoint applied.
    assert_eq!(failed, Some(2.0), "{m}");
    let warned = std::fs::read_to_string(sim.nodes[1].proxy_log()).unwrap().lines().any(|l| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
        v["level"] == "warn"
            && v["message"].as_str().is_some_and(|m| m.contains("not from the destination's waypoint"))
            && v["peer"].as_str().is_some_and(|p| p.starts_with(&frontend_ip))
    });
    assert!(warned, "the refusal is logged at WARN with the peer");

    // (c) The opt-out: the waypoint is left out, as istiod does, and traffic goes direct.
    sim.restart_controller_with("FERRY_WAYPOINT_UNAVAILABLE", "direct").unwrap();
    eventually("no proxy holds a waypoint for the backend", || advertised_waypoint(&sim).iter().all(Option::is_none));
    assert!(echoed(&sim, ("shop", "frontend"), vip), "service traffic goes direct");
    assert!(echoed(&sim, ("shop", "frontend"), backend), "pod traffic goes direct");
    assert!(echoed(&sim, ("legacy", "client"), backend), "plaintext traffic goes direct");
}
