//! Issue 4 end to end on the simulated cluster (root only; fails without): L4 authorization and
//! peer authentication enforced at the destination, denials reset and explained, open
//! connections closed when a policy change denies them, and the explain endpoint agreeing with
//! what is enforced.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use common::sim::*;
use ferry_harness::sim::{apps, observe, Sim};

const SCENARIO: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
{apiVersion: v1, kind: Pod, metadata: {name: frontend, namespace: shop, labels: {app: frontend}}, spec: {nodeName: node-1, serviceAccountName: frontend}}
---
{apiVersion: v1, kind: Pod, metadata: {name: backend, namespace: shop, labels: {app: backend}}, spec: {nodeName: node-2, serviceAccountName: backend}}
---
{apiVersion: v1, kind: Pod, metadata: {name: intruder, namespace: other}, spec: {nodeName: node-1, serviceAccountName: intruder}}
---
{apiVersion: v1, kind: Pod, metadata: {name: client, namespace: legacy}, spec: {nodeName: node-1}}
"#;

const CLIENTS: [(&str, &str); 3] = [("shop", "frontend"), ("other", "intruder"), ("legacy", "client")];

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Outcome {
    Allowed,
    Reset,
}

fn attempt(sim: &Sim, from: (&str, &str), port: u16) -> Outcome {
    let dst = sim.pod("shop", "backend").addr(port);
    let payload = format!("hello from {}/{}", from.0, from.1).into_bytes();
    match apps::roundtrip(&sim.pod(from.0, from.1).netns_path(), dst, payload.clone()) {
        Ok(echo) if echo == payload => Outcome::Allowed,
        Ok(echo) if echo.is_empty() => Outcome::Reset,
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => Outcome::Reset,
        other => panic!("{from:?} -> {dst}: neither echoed nor reset: {other:?}"),
    }
}

/// Replaces the policy manifests and waits until both node proxies enforce exactly them.
fn set_policies(sim: &Sim, written: &mut Vec<(String, String)>, yaml: &str, expect: &[&str]) {
    for (kind, name) in written.drain(..) {
        sim.delete_object(&kind, "shop", &name).unwrap();
    }
    for doc in yaml.split("\n---\n").filter(|d| !d.trim().is_empty()) {
        let v: serde_json::Value = ferry_core::yaml::from_str(doc).unwrap();
        let (kind, name) = (v["kind"].as_str().unwrap().to_string(), v["metadata"]["name"].as_str().unwrap().to_string());
        sim.write_object(&kind, "shop", &name, doc).unwrap();
        written.push((kind, name));
    }
    let mut want: Vec<String> = expect.iter().map(|s| s.to_string()).collect();
    want.sort();
    eventually(&format!("proxies enforce {want:?}"), || {
        sim.nodes.iter().all(|n| {
            n.dump().is_ok_and(|d| {
                let mut got: Vec<String> = d["policies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| format!("{}/{}", p["namespace"].as_str().unwrap_or(""), p["name"].as_str().unwrap_or("")))
                    .collect();
                got.sort();
                got == want
            })
        })
    });
}

fn identity(from: (&str, &str)) -> Option<String> {
    match from {
        ("legacy", _) => None,
        (ns, "frontend") => Some(format!("spiffe://cluster.local/ns/{ns}/sa/frontend")),
        (ns, name) => Some(format!("spiffe://cluster.local/ns/{ns}/sa/{name}")),
    }
}

/// What the destination's explain endpoint predicts for a client and port.
fn explained(sim: &Sim, from: (&str, &str), port: u16) -> Outcome {
    let dst = sim.pod("shop", "backend").addr(port);
    let mut q = format!("/debug/authorization?destination={dst}&source_ip={}", sim.pod(from.0, from.1).ip);
    if let Some(id) = identity(from) {
        q.push_str(&format!("&source_identity={}", id.replace(':', "%3A").replace('/', "%2F")));
    }
    let body = sim.nodes[1].admin(&q).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    match v["decision"]["result"].as_str() {
        Some("allow") => Outcome::Allowed,
        Some("deny") => Outcome::Reset,
        other => panic!("unexpected explanation {other:?}: {body}"),
    }
}

/// Enforcement and explanation for every client on both ports, checked against each other.
fn matrix(sim: &Sim) -> Vec<((&'static str, &'static str), u16, Outcome)> {
    let mut out = Vec::new();
    for from in CLIENTS {
        for port in [8080, 9090] {
            let actual = attempt(sim, from, port);
            assert_eq!(explained(sim, from, port), actual, "explain disagrees with enforcement for {from:?} -> :{port}");
            out.push((from, port, actual));
        }
    }
    out
}

fn outcome(m: &[((&str, &str), u16, Outcome)], from: (&str, &str), port: u16) -> Outcome {
    m.iter().find(|(f, p, _)| *f == from && *p == port).map(|(_, _, o)| *o).unwrap()
}

fn ap(name: &str, spec: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec: {spec}\n")
}

#[test]
fn l4_policies_are_enforced_explained_and_applied_to_open_connections() {
    let sim = cluster(SCENARIO);
    apps::echo_server(&sim.pod("shop", "backend").netns_path(), 9090).unwrap();
    let (fe, intruder, legacy) = (CLIENTS[0], CLIENTS[1], CLIENTS[2]);
    let mut written = Vec::new();

    let m = matrix(&sim);
    assert!(m.iter().all(|(_, _, o)| *o == Outcome::Allowed), "no policy: everything allowed: {m:?}");

    // Allow by principal (selector-scoped).
    let allow = ap(
        "allow-frontend",
        "{selector: {matchLabels: {app: backend}}, rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]}",
    );
    set_policies(&sim, &mut written, &allow, &["shop/allow-frontend"]);
    let m = matrix(&sim);
    assert_eq!(
        (outcome(&m, fe, 8080), outcome(&m, intruder, 8080), outcome(&m, legacy, 8080)),
        (Outcome::Allowed, Outcome::Reset, Outcome::Reset)
    );
    let denial = observe::find_record(
        &sim.nodes[1].proxy_log(),
        "inbound",
        sim.pod("other", "intruder").ip,
        sim.pod("shop", "backend").addr(8080),
        Duration::from_secs(3),
    )
    .unwrap();
    assert_eq!(denial["response_flags"], "DENY", "{denial}");
    assert!(denial["error"].as_str().unwrap().contains("allow policies exist, but none allowed"), "{denial}");
    let metrics = sim.nodes[1].metrics().unwrap();
    let failed = observe::metric(
        &metrics,
        "istio_tcp_connections_failed_total",
        &[("reporter", "destination"), ("response_flags", "DENY"), ("source_principal", "spiffe://cluster.local/ns/other/sa/intruder")],
    );
    assert!(failed.unwrap_or(0.0) >= 2.0, "denials are counted: {metrics}");

    // Deny by namespace (namespace-wide).
    set_policies(
        &sim,
        &mut written,
        &ap("deny-other", "{action: DENY, rules: [{from: [{source: {namespaces: [other]}}]}]}"),
        &["shop/deny-other"],
    );
    let m = matrix(&sim);
    assert_eq!(
        (outcome(&m, fe, 8080), outcome(&m, intruder, 8080), outcome(&m, legacy, 8080)),
        (Outcome::Allowed, Outcome::Reset, Outcome::Allowed)
    );
    let denial = observe::find_record(
        &sim.nodes[1].proxy_log(),
        "inbound",
        sim.pod("other", "intruder").ip,
        sim.pod("shop", "backend").addr(9090),
        Duration::from_secs(3),
    )
    .unwrap();
    assert!(denial["error"].as_str().unwrap().contains("explicitly denied by shop/deny-other"), "{denial}");

    // Port rules.
    set_policies(&sim, &mut written, &ap("only-8080", "{rules: [{to: [{operation: {ports: [\"8080\"]}}]}]}"), &["shop/only-8080"]);
    let m = matrix(&sim);
    assert_eq!(
        (outcome(&m, fe, 8080), outcome(&m, fe, 9090), outcome(&m, legacy, 8080)),
        (Outcome::Allowed, Outcome::Reset, Outcome::Allowed)
    );

    // ipBlocks.
    let ip = sim.pod("other", "intruder").ip;
    set_policies(
        &sim,
        &mut written,
        &ap("deny-ip", &format!("{{action: DENY, rules: [{{from: [{{source: {{ipBlocks: [\"{ip}/32\"]}}}}]}}]}}")),
        &["shop/deny-ip"],
    );
    let m = matrix(&sim);
    assert_eq!(
        (outcome(&m, fe, 8080), outcome(&m, intruder, 8080), outcome(&m, legacy, 9090)),
        (Outcome::Allowed, Outcome::Reset, Outcome::Allowed)
    );

    // Allow-nothing.
    set_policies(&sim, &mut written, &ap("allow-nothing", "{}"), &["shop/allow-nothing"]);
    let m = matrix(&sim);
    assert!(m.iter().all(|(_, _, o)| *o == Outcome::Reset), "allow-nothing denies everything: {m:?}");

    // STRICT peer authentication: plaintext refused, mTLS passes.
    let strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n";
    set_policies(&sim, &mut written, strict, &["istio-system/ferry-mtls-strict"]);
    let m = matrix(&sim);
    assert_eq!(
        (outcome(&m, fe, 8080), outcome(&m, intruder, 9090), outcome(&m, legacy, 8080), outcome(&m, legacy, 9090)),
        (Outcome::Allowed, Outcome::Allowed, Outcome::Reset, Outcome::Reset)
    );

    // Flipping ALLOW to DENY closes a connection that is already open.
    set_policies(&sim, &mut written, &allow, &["shop/allow-frontend"]);
    let mut held = apps::connect(&sim.pod("shop", "frontend").netns_path(), sim.pod("shop", "backend").addr(8080)).unwrap();
    held.write_all(b"opened while allowed").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let deny = ap("allow-frontend", "{selector: {matchLabels: {app: backend}}, action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]}");
    set_policies(&sim, &mut written, &deny, &["shop/allow-frontend"]);
    held.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    let r = held.read(&mut buf);
    assert!(
        matches!(r, Ok(0)) || r.as_ref().is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "the open connection must be closed: {r:?}"
    );
    let late = observe::find_record(
        &sim.nodes[1].proxy_log(),
        "inbound",
        sim.pod("shop", "frontend").ip,
        sim.pod("shop", "backend").addr(8080),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(late["response_flags"], "DENY", "{late}");
    assert!(late["error"].as_str().unwrap().contains("closed after a policy change: explicitly denied by shop/allow-frontend"), "{late}");
    let metrics = sim.nodes[1].metrics().unwrap();
    // Exactly one connection was open when the policy flipped.
    assert_eq!(observe::metric(&metrics, "ferry_authorization_late_rejections_total", &[]), Some(1.0), "{metrics}");
    assert_eq!(attempt(&sim, fe, 8080), Outcome::Reset, "and new ones are refused");
}

#[test]
fn explain_reports_the_policies_it_considered() {
    let sim = cluster(SCENARIO);
    let mut written = Vec::new();
    let policies = format!(
        "{}\n---\n{}",
        ap("deny-other", "{action: DENY, rules: [{from: [{source: {namespaces: [other]}}]}]}"),
        ap("l7", "{rules: [{to: [{operation: {methods: [GET]}}]}]}")
    );
    set_policies(&sim, &mut written, &policies, &["shop/deny-other", "shop/l7"]);
    let dst: SocketAddr = sim.pod("shop", "backend").addr(8080);
    let q =
        format!("/debug/authorization?destination={dst}&source_ip=198.18.1.99&source_identity=spiffe://cluster.local/ns/other/sa/intruder");
    let v: serde_json::Value = serde_json::from_str(&sim.nodes[1].admin(&q).unwrap()).unwrap();
    assert_eq!(v["decision"]["result"], "deny");
    assert_eq!(v["decision"]["reason"], "explicitly denied by shop/deny-other");
    let considered = v["considered"].as_array().unwrap();
    let deny = considered.iter().find(|c| c["policy"] == "shop/deny-other").unwrap();
    assert_eq!(deny["matched"], true);
    let l7 = considered.iter().find(|c| c["policy"] == "shop/l7").unwrap();
    assert_eq!(l7["matched"], false);
    assert!(l7["notes"][0].as_str().unwrap().contains("methods (L7)"), "the L7 translation is explained: {l7}");
    for bad in [
        "/debug/authorization",
        "/debug/authorization?destination=x&source_ip=1.2.3.4",
        "/debug/authorization?destination=1.2.3.4:80&source_ip=1.2.3.4&source_identity=nope",
    ] {
        assert!(sim.nodes[1].admin(bad).is_err(), "{bad} must be a clear 4xx");
    }
}
