//! The node agent's management port on the simulated cluster (root only; fails without):
//! liveness, readiness and `/debug/pods`, what the agent believes about each pod on its node.

mod common;

use common::sim::*;

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
