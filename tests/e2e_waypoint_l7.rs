//! Issue 13 end to end on the simulated cluster (root only; fails without): client, waypoint and
//! server on three nodes. The client's node proxy sends the enrolled service's traffic in HBONE
//! to the `ferry waypoint` pod, which authorizes each HTTP/1.1 request with the client's
//! identity (a DENY by path gets `403 RBAC: access denied`) and forwards the rest in HBONE to
//! the server's node proxy, which admits it because it comes from the waypoint. The waypoint
//! runs as on a cluster: state, policies and certificate from `ferry controller`.

mod common;

use std::time::Duration;

use common::sim::*;
use ferry_harness::sim::{apps, observe};

/// Appended to `three_node_waypoint()`.
const SCENARIO: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: shop}
spec:
  selector: {app: backend}
  clusterIP: 198.19.0.41
  ports: [{name: http, port: 80, targetPort: 8081}, {name: tcp-echo, port: 90, targetPort: 8080}, {name: tcp-closed, port: 91, targetPort: 8080}]
---
# L4 at the waypoint: port 91 is closed to everyone (a TCP port, so only the L4 part applies).
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-91, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: backend}]
  action: DENY
  rules: [{to: [{operation: {ports: ["91"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  # Scoped to port 80: on a TCP port a path condition cannot be evaluated, so a DENY rule
  # with one would hold there for every connection (Istio's semantics too).
  rules: [{to: [{operation: {paths: ["/admin*"], ports: ["80"]}}]}]
---
# By method and by header (port 80 only, as above).
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-writes-and-blocked-testers, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: backend}]
  action: DENY
  rules:
  - to: [{operation: {methods: ["DELETE", "PUT"], ports: ["80"]}}]
  - to: [{operation: {ports: ["80"]}}]
    when: [{key: "request.headers[x-tester]", values: ["blocked*"]}]
---
# Only front/client may call the backend: the waypoint must see the client's identity (the
# HBONE peer the client's node proxy presents), not its own, for this to allow anything.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-front-client, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: backend}]
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/front/sa/client"]}}]}]
---
# The stranger may only GET /hello.txt, and only with x-visitor: yes (an ALLOW by method,
# path and header; ALLOW policies are alternatives, so front/client's stays as it is).
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-visitor-get, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: backend}]
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/front/sa/stranger"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/hello.txt"], ports: ["80"]}}]
    when: [{key: "request.headers[x-visitor]", values: ["yes"]}]
---
{apiVersion: v1, kind: ServiceAccount, metadata: {name: stranger, namespace: front}}
---
{apiVersion: v1, kind: Pod, metadata: {name: stranger, namespace: front}, spec: {nodeName: node-1, serviceAccountName: stranger}}
"#;

#[test]
fn http_goes_through_the_waypoint_on_another_node_with_l7_policy() {
    let mut sim = waypoint_cluster(SCENARIO);
    let site = std::env::temp_dir().join(format!("ferry-wp-site-{}", std::process::id()));
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("hello.txt"), "HELLO-FROM-BACKEND").unwrap();
    let args: Vec<String> = ["-m", "http.server", "8081", "--bind", "0.0.0.0", "--directory"]
        .iter()
        .map(|s| s.to_string())
        .chain([site.display().to_string()])
        .collect();
    let mut http = sim.spawn_program_in_pod("shop", "backend", std::path::Path::new("python3"), &args).unwrap();
    let mut waypoint = sim.spawn_waypoint("shop", "waypoint-1", "waypoint").unwrap();
    apps::echo_server(&sim.pod("shop", "backend").netns_path(), 8080).unwrap();
    for p in sim.pods.values() {
        sim.wait_known(p.ip).expect("proxies learn every pod");
    }
    let client = sim.pod("front", "client").netns_path();
    let vip: std::net::SocketAddr = "198.19.0.41:80".parse().unwrap();
    let get = |path: &str| {
        apps::http_bytes(&client, vip, "GET", path, Duration::from_secs(5)).map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned()))
    };
    let mut last = None;
    eventually("an allowed request through the waypoint reaches the backend", || {
        last = get("/hello.txt").ok();
        last.as_ref().is_some_and(|(s, b)| *s == 200 && b.contains("HELLO-FROM-BACKEND"))
    });
    assert_eq!(get("/missing").map(|r| r.0).ok(), Some(404), "the backend's own 404: the request reached it");
    let (status, body) = get("/admin/users").unwrap();
    assert_eq!((status, body.trim()), (403, "RBAC: access denied"), "the waypoint's L7 DENY");
    let send = |method: &str, headers: &[(&str, &str)]| {
        apps::http_exchange(&client, vip, method, "/hello.txt", headers, Duration::from_secs(5)).map(|r| r.status).ok()
    };
    assert_eq!(send("DELETE", &[]), Some(403), "a DENY by method");
    assert_eq!(send("GET", &[("x-tester", "blocked-42")]), Some(403), "a DENY by header");
    assert_eq!(send("GET", &[("x-tester", "welcome")]), Some(200), "another value of the header is allowed");
    let stranger = sim.pod("front", "stranger").netns_path();
    let as_stranger = |method: &str, path: &str, headers: &[(&str, &str)]| {
        apps::http_exchange(&stranger, vip, method, path, headers, Duration::from_secs(5)).map(|r| r.status).ok()
    };
    assert_eq!(as_stranger("GET", "/hello.txt", &[]), Some(403), "front/client's ALLOW is not the stranger's; its own needs the header");
    assert_eq!(as_stranger("GET", "/hello.txt", &[("x-visitor", "yes")]), Some(200), "an ALLOW by method, path and header");
    assert_eq!(as_stranger("HEAD", "/hello.txt", &[("x-visitor", "yes")]), Some(403), "another method");
    assert_eq!(as_stranger("GET", "/missing", &[("x-visitor", "yes")]), Some(403), "another path");

    // Who saw what: the waypoint the client's identity, the server's node proxy the waypoint's.
    let log = sim.work.join("waypoint-waypoint-1.log");
    let records = observe::access_log(&log);
    let denied = records
        .iter()
        .find(|r| r["path"] == "/admin/users")
        .unwrap_or_else(|| panic!("a waypoint record for the denied request: {records:?}"));
    assert_eq!(denied["src.identity"], "spiffe://cluster.local/ns/front/sa/client", "{denied}");
    let refused = records.iter().find(|r| r["src.identity"] == "spiffe://cluster.local/ns/front/sa/stranger");
    let refused = refused.unwrap_or_else(|| panic!("the stranger's record: {records:?}"));
    let why = refused["error"].as_str().unwrap_or_default();
    assert!(why.contains("no ALLOW policy matched") && why.contains("shop/allow-front-client"), "{refused}");
    let by_method = records.iter().find(|r| r["method"] == "DELETE").unwrap_or_else(|| panic!("the DELETE's record: {records:?}"));
    assert_eq!((by_method["status"].as_u64(), by_method["response_flags"].as_str()), (Some(403), Some("DENY")), "{by_method}");
    assert!(by_method["error"].as_str().is_some_and(|e| e.contains("shop/deny-writes-and-blocked-testers")), "the reason: {by_method}");
    let backend = sim.pod("shop", "backend").clone();
    let inbound = observe::access_log(&sim.nodes[backend.node].proxy_log());
    let via = inbound.iter().find(|r| r["direction"] == "inbound" && r["dst.hbone_addr"] == backend.addr(8081).to_string());
    let via = via.unwrap_or_else(|| panic!("the server's node proxy logged the waypoint's tunnel: {inbound:?}"));
    assert_eq!(via["src.identity"], "spiffe://cluster.local/ns/shop/sa/waypoint", "{via}");

    // A TCP port goes through the waypoint as bytes, under the L4 part of its policy.
    let payload = b"TCP-THROUGH-THE-WAYPOINT".repeat(20);
    let tcp = apps::roundtrip(&client, "198.19.0.41:90".parse().unwrap(), payload.clone());
    let tail = || std::fs::read_to_string(&log).unwrap_or_default().lines().rev().take(6).collect::<Vec<_>>().join("\n");
    assert_eq!(tcp.as_deref().ok(), Some(&payload[..]), "TCP on a non-HTTP port through the waypoint: {tcp:?}\n{}", tail());
    let closed = apps::roundtrip(&client, "198.19.0.41:91".parse().unwrap(), payload.clone());
    assert!(closed.as_ref().map_or(true, |b| b.is_empty()), "port 91 denied at the waypoint: {closed:?}");
    let records = observe::access_log(&log);
    assert!(
        records.iter().any(|r| r["dst.service"].as_str().is_some_and(|s| s.starts_with("backend"))
            && r["src.identity"] == "spiffe://cluster.local/ns/front/sa/client"),
        "{records:?}"
    );

    // Istio's HTTP metric from the waypoint, with both identities.
    let wp_netns = sim.pod("shop", "waypoint-1").netns_path();
    let wp_ip = sim.pod("shop", "waypoint-1").ip;
    let (_, metrics) =
        apps::http_bytes(&wp_netns, std::net::SocketAddr::new(wp_ip, 15020), "GET", "/metrics", Duration::from_secs(5)).unwrap();
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let count = |code: &str| {
        observe::metric(
            &metrics,
            "istio_requests_total",
            &[
                ("reporter", "waypoint"),
                ("source_principal", "spiffe://cluster.local/ns/front/sa/client"),
                ("response_code", code),
                ("destination_service_name", "backend"),
                ("request_protocol", "http"),
            ],
        )
    };
    assert_eq!(count("403"), Some(3.0), "the path, method and header DENYs: {metrics}");
    assert!(count("200").is_some_and(|n| n >= 1.0), "{metrics}");
    let ok = metrics.lines().find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"200\"")).unwrap();
    assert!(ok.contains("destination_principal=\"spiffe://cluster.local/ns/shop/sa/backend\""), "{ok}");
    // Duration and sizes, with the same labels: every 200 observed, each carrying at least
    // the file's 18 bytes back and a request head.
    let family = |name: &str| {
        let labels =
            [("reporter", "waypoint"), ("source_principal", "spiffe://cluster.local/ns/front/sa/client"), ("response_code", "200")];
        observe::metric(&metrics, name, &labels)
    };
    let ok_count = count("200").unwrap();
    assert_eq!(family("istio_request_duration_milliseconds_count"), Some(ok_count), "{metrics}");
    assert!(family("istio_response_bytes_sum").is_some_and(|b| b >= 18.0 * ok_count), "{metrics}");
    assert!(family("istio_request_bytes_sum").is_some_and(|b| b >= 20.0 * ok_count), "{metrics}");

    // The waypoint's policies came from the controller over xDS (as its own account, which
    // sees its namespace's policies), and a change there applies to the next request.
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], 15000));
    let (_, dump) = apps::http_bytes(&wp_netns, local, "GET", "/config_dump", Duration::from_secs(5)).unwrap();
    let dump: serde_json::Value = serde_json::from_slice(&dump).unwrap();
    let policies = &dump["waypoint"]["policies"];
    assert_eq!(policies["source"], "xds", "{policies}");
    let names: Vec<&str> = policies["policies"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(names.contains(&"deny-admin") && names.contains(&"deny-91"), "{names:?}");
    let new_deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-hello, namespace: shop}\nspec:\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n  action: DENY\n  rules: [{to: [{operation: {paths: [/hello.txt], ports: [\"80\"]}}]}]\n";
    sim.apply(new_deny).expect("apply a new policy");
    eventually("the new DENY reaches the waypoint over xDS", || get("/hello.txt").is_ok_and(|(s, _)| s == 403));
    sim.delete_object("AuthorizationPolicy", "shop", "deny-hello").unwrap();
    eventually("its removal too", || get("/hello.txt").is_ok_and(|(s, _)| s == 200));

    // The waypoint process gone (its pod still listed): the traffic fails, it never goes direct.
    let _ = waypoint.kill();
    let _ = waypoint.wait();
    let after = get("/hello.txt");
    assert!(after.as_ref().map_or(true, |(s, _)| *s != 200), "no waypoint, no way through: {after:?}");
    let _ = http.kill();
    let _ = http.wait();
    let _ = std::fs::remove_dir_all(&site);
}
