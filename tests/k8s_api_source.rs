//! `ApiSource` (the Kubernetes API as a cluster-state source) against a fake API server: the
//! initial list, watch events, a namespace label turning a pod's translation to HBONE, a
//! dropped watch resumed from the last resourceVersion (bookmarks included), a 410 re-listed
//! so an object deleted meanwhile disappears, nothing published before every kind synced, and
//! the node agent's scope: only Namespaces and its node's Pods (by field selector), complete
//! without the kinds it does not watch.

#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;

use std::sync::Arc;
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use ferry::k8s::api::{ApiSource, Scope};
use ferry::k8s::source::ClusterSource;
use ferry_core::k8s::objects::ClusterState;
use ferry_core::k8s::translate::{to_state, TranslateOptions};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(20);

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "uid": format!("ns-{name}"), "labels": labels}})
}

fn pod(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "labels": {"app": "web"},
                        "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
           "spec": {"nodeName": "node-1", "serviceAccountName": "web", "containers": [{"name": "app", "image": "web:1"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
           "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
}

/// A cluster with every kind ferry watches.
fn seed(server: &FakeApiServer) {
    server.apply(namespace("shop", json!({})));
    server.apply(pod("web-1", "10.244.1.10"));
    server.apply(service("web"));
    server.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": "shop"}}));
    server.apply(json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                        "metadata": {"name": "allow-web", "namespace": "shop"},
                        "spec": {"selector": {"matchLabels": {"app": "web"}}, "rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}]}}));
    server.apply(json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                        "metadata": {"name": "default", "namespace": "shop"}, "spec": {"mtls": {"mode": "STRICT"}}}));
    server.apply(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                        "metadata": {"name": "waypoint", "namespace": "shop"},
                        "spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}));
    server.apply(json!({"apiVersion": "v1", "kind": "Node",
                        "metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "zone-a"}}}));
    server.apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                        "metadata": {"name": "ext-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "ext"}},
                        "endpoints": [{"addresses": ["10.50.0.7"]}]}));
}

async fn source(server: &FakeApiServer) -> ApiSource {
    let client = kube::Client::try_from(server.config()).unwrap();
    let source = ApiSource::start(client);
    tokio::time::timeout(DEADLINE, source.wait_synced()).await.expect("every kind syncs");
    source
}

/// Waits (bounded) until the published state satisfies `pred`.
async fn wait_state(source: &ApiSource, what: &str, pred: impl Fn(&ClusterState) -> bool) -> Arc<ClusterState> {
    let mut rx = source.subscribe();
    let found = tokio::time::timeout(DEADLINE, rx.wait_for(|s| pred(s))).await;
    match found {
        Ok(Ok(s)) => s.clone(),
        _ => panic!("the state never showed {what}; it is {:?}", source.subscribe().borrow()),
    }
}

fn protocol(state: &ClusterState, pod: &str) -> String {
    let translated = to_state(state, &TranslateOptions::default());
    let w = translated.workloads.iter().find(|w| w.name == pod).expect("the pod is a workload");
    serde_json::to_value(w).unwrap()["protocol"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn initial_list_and_watch_events_make_the_state() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let source = source(&server).await;
    let s = source.subscribe().borrow().clone();
    assert!(s.pod("shop", "web-1").is_some() && s.services.contains_key("shop/web"), "{s:?}");
    assert!(s.service_accounts.contains_key("shop/web"));
    assert!(s.other.contains_key("AuthorizationPolicy/shop/allow-web") && s.other.contains_key("PeerAuthentication/shop/default"));
    assert_eq!(s.other["AuthorizationPolicy/shop/allow-web"]["spec"]["rules"][0]["from"][0]["source"]["namespaces"][0], "shop");
    assert_eq!(s.other["Gateway/shop/waypoint"]["spec"]["gatewayClassName"], "istio-waypoint", "Gateways are watched");
    assert_eq!(s.node("node-1").unwrap()["metadata"]["labels"]["topology.kubernetes.io/zone"], "zone-a", "Nodes are watched");
    assert_eq!(s.other["EndpointSlice/shop/ext-1"]["endpoints"][0]["addresses"][0], "10.50.0.7", "EndpointSlices are watched");
    for kind in ["Pod", "Namespace", "AuthorizationPolicy"] {
        let first = &server.requests(kind)[0];
        assert!(!first.is_watch(), "{kind}: a list comes first");
    }

    server.apply(pod("web-2", "10.244.1.11"));
    let s = wait_state(&source, "the added pod", |s| s.pod("shop", "web-2").is_some()).await;
    assert_eq!(s.pods.len(), 2);
    assert_eq!(protocol(&s, "web-1"), "TCP", "not ambient yet");

    server.apply(namespace("shop", json!({"istio.io/dataplane-mode": "ambient"})));
    let s = wait_state(&source, "the ambient label", |s| s.namespace("shop").is_some_and(|n| !n.metadata.labels.is_empty())).await;
    assert_eq!(protocol(&s, "web-1"), "HBONE", "a labelled namespace makes its pods HBONE");

    server.delete("Pod", "shop", "web-2");
    wait_state(&source, "the deleted pod gone", |s| s.pod("shop", "web-2").is_none()).await;
}

#[tokio::test]
async fn a_dropped_watch_resumes_from_the_last_resource_version() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let source = source(&server).await;
    let added = server.apply(pod("web-2", "10.244.1.11"));
    wait_state(&source, "the added pod", |s| s.pod("shop", "web-2").is_some()).await;
    server.drop_watches();
    let resumed = server
        .wait_request("Pod", "resuming the watch", |r| r.is_watch() && r.query.get("resourceVersion") == Some(&added.to_string()))
        .await;
    assert_eq!(resumed.query.get("allowWatchBookmarks").map(String::as_str), Some("true"), "bookmarks are asked for");
    let lists = server.requests("Pod").iter().filter(|r| !r.is_watch()).count();
    assert_eq!(lists, 1, "a dropped watch resumes without a re-list");

    // A bookmark moves the point a watch resumes from past events of other kinds.
    server.wait_delivered("Pod").await;
    server.apply(service("other"));
    let marked = server.bookmark("Pod");
    assert!(marked > added);
    server.wait_delivered("Pod").await;
    server.drop_watches();
    server
        .wait_request("Pod", "resuming from the bookmark", |r| r.is_watch() && r.query.get("resourceVersion") == Some(&marked.to_string()))
        .await;
    let lists = server.requests("Pod").iter().filter(|r| !r.is_watch()).count();
    assert_eq!(lists, 1, "still no re-list");
    assert!(source.subscribe().borrow().pod("shop", "web-2").is_some(), "the state survives the reconnects");
}

#[tokio::test]
async fn gone_relists_and_an_object_deleted_meanwhile_disappears() {
    let server = FakeApiServer::start().await;
    seed(&server);
    server.apply(pod("web-2", "10.244.1.11"));
    let source = source(&server).await;
    assert!(source.subscribe().borrow().pod("shop", "web-2").is_some());
    server.delete_unseen("Pod", "shop", "web-2");
    server.wait_request("Pod", "watch answered 410", |r| r.is_watch() && r.query.get("resourceVersion").is_some_and(|v| v != "0")).await;
    let s = wait_state(&source, "the pod deleted while disconnected gone", |s| s.pod("shop", "web-2").is_none()).await;
    assert!(s.pod("shop", "web-1").is_some(), "the rest stays");
    let lists = server.requests("Pod").iter().filter(|r| !r.is_watch()).count();
    assert_eq!(lists, 2, "410 Gone makes the watcher list again");
    assert!(s.services.contains_key("shop/web"), "other kinds keep their state across their own re-list");
}

#[tokio::test]
async fn nothing_is_published_before_every_kind_synced() {
    let server = FakeApiServer::start().await;
    seed(&server);
    server.set_missing("PeerAuthentication", true);
    let client = kube::Client::try_from(server.config()).unwrap();
    let source = ApiSource::start(client);
    let mut rx = source.subscribe();
    // Every other kind lists and starts watching; PeerAuthentication's list keeps failing.
    for kind in ["Namespace", "Pod", "Service", "ServiceAccount", "AuthorizationPolicy"] {
        server.wait_request(kind, "watching after its list", |r| r.is_watch()).await;
    }
    server.wait_request("PeerAuthentication", "a second list attempt", |_| server.requests("PeerAuthentication").len() >= 2).await;
    assert_eq!(source.unsynced(), ["PeerAuthentication"]);
    assert!(!rx.has_changed().unwrap() && rx.borrow().pods.is_empty(), "nothing published while a kind is unsynced");
    server.set_missing("PeerAuthentication", false);
    tokio::time::timeout(DEADLINE, source.wait_synced()).await.expect("syncs once the kind is served");
    assert!(source.unsynced().is_empty());
    rx.changed().await.unwrap();
    let s = rx.borrow_and_update().clone();
    assert!(
        s.pod("shop", "web-1").is_some() && s.other.contains_key("PeerAuthentication/shop/default"),
        "the first publication is complete"
    );
}

#[tokio::test]
async fn the_node_agent_scope_lists_and_watches_only_its_nodes_pods_and_namespaces() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let mut elsewhere = pod("web-9", "10.244.2.10");
    elsewhere["spec"]["nodeName"] = json!("node-2");
    server.apply(elsewhere.clone());
    // Not served at all: a scoped source must not need them.
    server.set_missing("PeerAuthentication", true);
    let client = kube::Client::try_from(server.config()).unwrap();
    let source = ApiSource::start_scoped(client, &Scope::node_agent("node-1"));
    tokio::time::timeout(DEADLINE, source.wait_synced()).await.expect("Namespaces and Pods sync");
    let s = source.subscribe().borrow().clone();
    assert!(s.pod("shop", "web-1").is_some() && s.namespace("shop").is_some(), "{s:?}");
    assert!(s.pod("shop", "web-9").is_none(), "another node's pod is not listed");
    assert!(s.services.is_empty() && s.service_accounts.is_empty() && s.other.is_empty(), "only the kinds the capture decision reads");
    for kind in ["Service", "ServiceAccount", "AuthorizationPolicy", "PeerAuthentication"] {
        assert!(server.requests(kind).is_empty(), "{kind} is never asked for");
    }
    let watch = server.wait_request("Pod", "watching", |r| r.is_watch()).await;
    for r in server.requests("Pod") {
        assert_eq!(r.query.get("fieldSelector").map(String::as_str), Some("spec.nodeName=node-1"), "every pod request is scoped: {r:?}");
    }
    assert!(watch.query.contains_key("fieldSelector"));
    assert!(server.requests("Namespace").iter().all(|r| !r.query.contains_key("fieldSelector")), "all namespaces");

    // A watch event for another node is filtered by the server; one for this node arrives.
    elsewhere["metadata"]["labels"] = json!({"app": "moved"});
    server.apply(elsewhere);
    server.apply(pod("web-2", "10.244.1.11"));
    let s = wait_state(&source, "this node's new pod", |s| s.pod("shop", "web-2").is_some()).await;
    assert!(s.pod("shop", "web-9").is_none());
}
