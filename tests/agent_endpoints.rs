//! The node agent's management port on the simulated cluster (root only; fails without):
//! liveness, readiness and `/debug/pods`, what the agent believes about each pod on its node.

mod common;

use common::sim::*;
use ferry_harness::sim::observe::metric;

const PLAIN: &str = r#"---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
{apiVersion: v1, kind: Pod, metadata: {name: client, namespace: legacy}, spec: {nodeName: node-2}}
"#;

#[test]
fn the_agent_reports_health_readiness_and_each_pods_capture() {
    let sim = cluster(&format!("{FRONTEND_BACKEND}{PLAIN}"));
    let node = &sim.nodes[1];
    assert_eq!(node.agent("/healthz").unwrap(), "ok\n");
    assert_eq!(node.agent("/readyz").unwrap(), "ready\n");
    let d: serde_json::Value = serde_json::from_str(&node.agent("/debug/pods").unwrap()).unwrap();
    assert_eq!((d["node"].as_str(), d["proxiesConnected"].as_u64()), (Some("node-2"), Some(1)), "{d}");
    let pod = |ns: &str, name: &str| {
        d["pods"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["namespace"] == ns && p["name"] == name).cloned())
            .unwrap_or_else(|| panic!("{ns}/{name}: {d}"))
    };
    let backend = pod("shop", "backend");
    assert_eq!((backend["enrolled"].as_bool(), backend["capture"].as_str()), (Some(true), Some("enroll")), "{backend}");
    assert_eq!(backend["ips"][0].as_str(), Some(sim.pod("shop", "backend").ip.to_string().as_str()));
    let client = pod("legacy", "client");
    assert_eq!((client["enrolled"].as_bool(), client["capture"].as_str()), (Some(false), Some("skip: NotAmbient")), "{client}");
    assert!(d["pods"].as_array().unwrap().iter().all(|p| p["name"] != "frontend"), "only this node's pods: {d}");
}

/// Every CNI request the agent answered is in its latency histogram, labelled as in the
/// request counter: the sim created each node-2 pod with a real CNI ADD through `ferry-cni`.
#[test]
fn the_agent_exports_cni_request_latency_by_command_and_result() {
    let sim = cluster(&format!("{FRONTEND_BACKEND}{PLAIN}"));
    let text = sim.nodes[1].agent("/metrics").unwrap();
    let family = "ferry_agent_cni_request_duration_seconds";
    assert!(text.contains(&format!("# TYPE {family} histogram")), "a histogram, not a summary:\n{text}");
    let add_ok = [("command", "ADD"), ("result", "ok")];
    let adds = sim.pods.values().filter(|p| p.node == 1).count() as f64;
    assert_eq!(metric(&text, "ferry_agent_cni_requests_total", &add_ok), Some(adds), "{text}");
    assert_eq!(metric(&text, &format!("{family}_count"), &add_ok), Some(adds), "one observation per ADD:\n{text}");
    let inf = [add_ok[0], add_ok[1], ("le", "+Inf")];
    assert_eq!(metric(&text, &format!("{family}_bucket"), &inf), Some(adds), "{text}");
    let sum = metric(&text, &format!("{family}_sum"), &add_ok).unwrap_or(0.0);
    assert!(sum > 0.0, "an ADD that enrolls a pod takes some time: {sum}\n{text}");
}
