//! Issue 13's JWT rule end to end on the simulated cluster (root only; fails without): client,
//! waypoint and server on three nodes. A RequestAuthentication on the waypoint Gateway with an
//! inline JWKS (an EC key generated here) and an ALLOW that wants a request principal of the
//! issuer on `/secure*`: a valid token reaches the backend (without the token, which is not
//! forwarded), an expired one and one of another issuer get Envoy's `401`, none gets `403`;
//! the waypoint's access log names the request principal.

mod common;

use std::time::Duration;

use common::jwt::Issuer;
use common::sim::*;
use ferry_harness::sim::{apps, observe};
use serde_json::json;

const ISSUER: &str = "https://issuer.example";

/// Appended to `three_node_waypoint()`.
const SCENARIO: &str = r#"
---
{apiVersion: v1, kind: Service, metadata: {name: backend, namespace: shop}, spec: {selector: {app: backend}, clusterIP: 198.19.0.41, ports: [{name: http, port: 80, targetPort: 8081}]}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: secure-needs-jwt, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ["https://issuer.example/*"]}}]
    to: [{operation: {paths: ["/secure*"]}}]
  - to: [{operation: {notPaths: ["/secure*"]}}]
"#;

fn request_authentication(jwks: &str) -> String {
    let ra = json!({
        "apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
        "metadata": {"name": "issuer-example", "namespace": "shop"},
        "spec": {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
                 "jwtRules": [{"issuer": ISSUER, "jwks": jwks}]},
    });
    format!("---\n{ra}\n")
}

#[test]
fn jwt_rules_at_the_waypoint_on_another_node() {
    let issuer = Issuer::new();
    let sim = waypoint_cluster(&format!("{SCENARIO}{}", request_authentication(&issuer.jwks())));
    apps::http_head_echo_server(&sim.pod("shop", "backend").netns_path(), 8081).unwrap();
    let mut waypoint = sim.spawn_waypoint("shop", "waypoint-1", "waypoint").unwrap();
    for p in sim.pods.values() {
        sim.wait_known(p.ip).expect("proxies learn every pod");
    }
    let client = sim.pod("front", "client").netns_path();
    let vip: std::net::SocketAddr = "198.19.0.41:80".parse().unwrap();
    let get = |path: &str, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("Authorization", a)]).unwrap_or_default();
        apps::http_exchange(&client, vip, "GET", path, &headers, Duration::from_secs(5))
    };
    eventually("a request without a token off /secure reaches the backend through the waypoint", || {
        get("/public", None).is_ok_and(|r| r.status == 200 && String::from_utf8_lossy(&r.body).starts_with("GET /public"))
    });

    let valid = issuer.token(ISSUER, "alice", 600);
    let r = get("/secure/data", Some(&valid)).unwrap();
    let seen = String::from_utf8_lossy(&r.body).to_ascii_lowercase();
    assert_eq!(r.status, 200, "a valid token: {r:?}");
    assert!(seen.starts_with("get /secure/data"), "the backend answered: {seen}");
    assert!(!seen.contains("authorization:") && !seen.contains(&valid.to_ascii_lowercase()), "the token is not forwarded: {seen}");

    #[rustfmt::skip]
    let refused: Vec<(&str, String, &str)> = vec![
        ("expired", issuer.token(ISSUER, "alice", -3600), "Jwt is expired"),
        ("another issuer", issuer.token("https://evil.example", "alice", 600), "Jwt issuer is not configured"),
    ];
    for (name, token, message) in &refused {
        let r = get("/secure/data", Some(token)).unwrap();
        assert_eq!((r.status, String::from_utf8_lossy(&r.body).as_ref()), (401, *message), "{name}: {r:?}");
        let challenge = r.head.lines().find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"));
        assert!(challenge.is_some_and(|c| c.contains("Bearer realm=\"http://") && c.contains("/secure/data")), "{name}: {}", r.head);
    }
    let r = get("/secure/data", None).unwrap();
    assert_eq!((r.status, String::from_utf8_lossy(&r.body).trim()), (403, "RBAC: access denied"), "no token: {r:?}");

    // The waypoint's records: the request principal for the valid token, Envoy's message for
    // the refused ones, none for a request without a token.
    let log = sim.work.join("waypoint-waypoint-1.log");
    let records = observe::access_log(&log);
    let secure: Vec<&serde_json::Value> = records.iter().filter(|r| r["path"] == "/secure/data").collect();
    let ok = secure.iter().find(|r| r["status"] == 200).unwrap_or_else(|| panic!("a record of the valid request: {records:?}"));
    assert_eq!(ok["request.principal"], "https://issuer.example/alice", "{ok}");
    assert_eq!(ok["src.identity"], "spiffe://cluster.local/ns/front/sa/client", "{ok}");
    let unauthenticated: Vec<_> = secure.iter().filter(|r| r["status"] == 401).collect();
    assert_eq!(unauthenticated.len(), 2, "{secure:?}");
    assert!(unauthenticated.iter().any(|r| r["error"].as_str().is_some_and(|e| e.contains("Jwt is expired"))), "{secure:?}");
    let denied = secure.iter().find(|r| r["status"] == 403).unwrap_or_else(|| panic!("the 403's record: {secure:?}"));
    assert!(denied.get("request.principal").is_none_or(|p| p.is_null()), "{denied}");

    // 401s count in istio_requests_total like any other status.
    let wp = sim.pod("shop", "waypoint-1");
    let (_, metrics) =
        apps::http_bytes(&wp.netns_path(), std::net::SocketAddr::new(wp.ip, 15020), "GET", "/metrics", Duration::from_secs(5)).unwrap();
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let count = |code: &str| {
        let labels = [("reporter", "waypoint"), ("response_code", code), ("destination_service_name", "backend")];
        observe::metric(&metrics, "istio_requests_total", &labels)
    };
    assert_eq!((count("401"), count("403")), (Some(2.0), Some(1.0)), "{metrics}");
    let _ = waypoint.kill();
    let _ = waypoint.wait();
}
