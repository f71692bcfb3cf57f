use serde_json::json;

use super::*;
use crate::k8s::translate::{to_state, TranslateOptions};
use crate::model::TunnelProtocol;

fn pod(ns: &str, name: &str, ip: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
           "spec": {"nodeName": "n1", "containers": [{"name": "app"}]},
           "status": {"phase": "Running", "podIP": ip}})
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn service(ns: &str, name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": ns},
           "spec": {"clusterIP": "10.96.0.10", "selector": {"app": name}, "ports": [{"port": 80}]}})
}

/// Every kind listed (empty unless given), so the index is synced.
fn listed(objects: &[(Kind, Value)]) -> Events {
    let mut out = Vec::new();
    for k in Kind::ALL {
        out.push((k, WatchEvent::ListStart));
        out.extend(objects.iter().filter(|(ok, _)| *ok == k).map(|(_, v)| (k, WatchEvent::Listed(v.clone()))));
        out.push((k, WatchEvent::ListDone));
    }
    out
}

type Events = Vec<(Kind, WatchEvent)>;

struct Fed {
    index: ClusterIndex,
    refused: Vec<String>,
}

fn feed(events: Events) -> Fed {
    let mut index = ClusterIndex::new();
    let mut refused = Vec::new();
    for (k, e) in events {
        if let Err(e) = index.apply(k, e) {
            refused.push(e.to_string());
        }
    }
    Fed { index, refused }
}

fn pods(f: &Fed) -> Vec<String> {
    f.index.state().pods.into_keys().collect()
}

#[test]
fn watch_events_make_the_state() {
    let base = || listed(&[(Kind::Namespace, namespace("shop", json!({}))), (Kind::Pod, pod("shop", "a", "10.0.0.1"))]);
    let with = |extra: Events| base().into_iter().chain(extra).collect::<Vec<_>>();
    let cases: Vec<(&str, Events, &[&str], usize)> = vec![
        ("the initial list", base(), &["shop/a"], 0),
        ("an added pod", with(vec![(Kind::Pod, WatchEvent::Apply(pod("shop", "b", "10.0.0.2")))]), &["shop/a", "shop/b"], 0),
        ("a deleted pod", with(vec![(Kind::Pod, WatchEvent::Delete(pod("shop", "a", "10.0.0.1")))]), &[], 0),
        (
            "a delete needs only the name, even if the last state would not convert",
            with(vec![(Kind::Pod, WatchEvent::Delete(json!({"metadata": {"name": "a", "namespace": "shop"}, "spec": 7})))]),
            &[],
            0,
        ),
        (
            "a re-list replaces the set: a pod deleted while disconnected disappears",
            with(vec![
                (Kind::Pod, WatchEvent::ListStart),
                (Kind::Pod, WatchEvent::Listed(pod("shop", "c", "10.0.0.3"))),
                (Kind::Pod, WatchEvent::ListDone),
            ]),
            &["shop/c"],
            0,
        ),
        (
            "until the re-list completes, the previous set stays",
            with(vec![(Kind::Pod, WatchEvent::ListStart), (Kind::Pod, WatchEvent::Listed(pod("shop", "c", "10.0.0.3")))]),
            &["shop/a"],
            0,
        ),
        (
            "an invalid object is refused and the rest stays",
            with(vec![
                (Kind::Pod, WatchEvent::Apply(json!({"metadata": {"name": "Bad_Name", "namespace": "shop"}}))),
                (Kind::Pod, WatchEvent::Apply(pod("shop", "b", "10.0.0.2"))),
            ]),
            &["shop/a", "shop/b"],
            1,
        ),
        (
            "an invalid update keeps the previous version",
            with(vec![(
                Kind::Pod,
                WatchEvent::Apply(json!({"metadata": {"name": "a", "namespace": "shop"}, "spec": {"hostNetwork": "yes"}})),
            )]),
            &["shop/a"],
            1,
        ),
        (
            "an object of another kind on a watch is refused",
            with(vec![(Kind::Pod, WatchEvent::Apply(namespace("x", json!({}))))]),
            &["shop/a"],
            1,
        ),
        ("a delete without a name is refused", with(vec![(Kind::Pod, WatchEvent::Delete(json!({"metadata": {}})))]), &["shop/a"], 1),
        (
            "an invalid object in a list is refused, the list still completes",
            listed(&[(Kind::Pod, json!({"metadata": {"name": "a", "namespace": "x/y"}})), (Kind::Pod, pod("shop", "b", "10.0.0.2"))]),
            &["shop/b"],
            1,
        ),
    ];
    for (name, events, want, refused) in cases {
        let f = feed(events);
        assert!(f.index.synced(), "{name}: synced");
        assert_eq!(pods(&f), want, "{name}");
        assert_eq!(f.refused.len(), refused, "{name}: refused {:?}", f.refused);
    }
}

#[test]
fn refusals_say_why() {
    let f = feed(vec![
        (Kind::Pod, WatchEvent::Apply(json!({"metadata": {"name": "Bad_Name", "namespace": "shop"}}))),
        (Kind::Service, WatchEvent::Apply(json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 99999}]}}))),
        (Kind::Pod, WatchEvent::Apply(namespace("x", json!({})))),
    ]);
    let want = ["refused Pod Bad_Name: metadata.name \"Bad_Name\"", "refused Service s: ", "refused Namespace x from the Pod watch"];
    for (got, want) in f.refused.iter().zip(want) {
        assert!(got.starts_with(want), "{got:?} should start with {want:?}");
    }
    assert_eq!(f.refused.len(), 3);
}

#[test]
fn synced_only_once_every_kind_has_listed_and_stays_synced() {
    let mut index = ClusterIndex::new();
    for (i, k) in Kind::ALL.into_iter().enumerate() {
        assert!(!index.synced() && index.take_changed().is_none(), "not synced before {k:?} listed");
        index.apply(k, WatchEvent::ListStart).unwrap();
        if k == Kind::Pod {
            index.apply(k, WatchEvent::Listed(pod("shop", "a", "10.0.0.1"))).unwrap();
        }
        assert!(!index.kind_synced(k), "{k:?} not synced before its ListDone");
        index.apply(k, WatchEvent::ListDone).unwrap();
        assert!(index.kind_synced(k));
        assert_eq!(index.synced(), i == Kind::ALL.len() - 1);
    }
    let first = index.take_changed().expect("the first synced state is published");
    assert_eq!(first.pods.len(), 1);
    assert!(index.take_changed().is_none(), "nothing changed since");
    index.apply(Kind::Pod, WatchEvent::ListStart).unwrap();
    assert!(index.synced(), "a re-list in progress keeps the index synced");
    index.apply(Kind::Pod, WatchEvent::Listed(pod("shop", "a", "10.0.0.1"))).unwrap();
    assert_eq!(index.apply(Kind::Pod, WatchEvent::ListDone).unwrap(), Outcome::Unchanged, "the same set again");
    assert!(index.take_changed().is_none(), "a re-list of the same objects publishes nothing");
    assert_eq!(index.apply(Kind::Pod, WatchEvent::Apply(pod("shop", "a", "10.0.0.1"))).unwrap(), Outcome::Unchanged);
    assert_eq!(index.apply(Kind::Pod, WatchEvent::Apply(pod("shop", "a", "10.0.0.9"))).unwrap(), Outcome::Changed);
    assert_eq!(index.take_changed().unwrap().pod("shop", "a").unwrap().status.pod_ip, "10.0.0.9");
}

#[test]
fn events_during_a_relist_reach_the_new_set() {
    let mut f = feed(listed(&[(Kind::Pod, pod("shop", "a", "10.0.0.1"))]));
    for e in [
        WatchEvent::ListStart,
        WatchEvent::Listed(pod("shop", "a", "10.0.0.1")),
        WatchEvent::Apply(pod("shop", "b", "10.0.0.2")),
        WatchEvent::Delete(pod("shop", "a", "10.0.0.1")),
        WatchEvent::ListDone,
    ] {
        f.index.apply(Kind::Pod, e).unwrap();
    }
    assert_eq!(pods(&f), ["shop/b"]);
}

#[test]
fn every_kind_lands_where_the_file_source_puts_it() {
    let f = feed(listed(&[
        (Kind::Namespace, namespace("shop", json!({}))),
        (Kind::Pod, pod("shop", "a", "10.0.0.1")),
        (Kind::Service, service("shop", "web")),
        (Kind::ServiceAccount, json!({"metadata": {"name": "web", "namespace": "shop"}})),
        (Kind::AuthorizationPolicy, json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": {}})),
        (Kind::PeerAuthentication, json!({"metadata": {"name": "pa", "namespace": "shop"}, "spec": {"mtls": {"mode": "STRICT"}}})),
        (Kind::Gateway, json!({"metadata": {"name": "wp", "namespace": "shop"}, "spec": {"gatewayClassName": "istio-waypoint"}})),
        (Kind::Node, json!({"metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "z1"}}})),
        (Kind::EndpointSlice, json!({"metadata": {"name": "ext-1", "namespace": "shop"}, "addressType": "IPv4", "endpoints": []})),
    ]));
    assert!(f.refused.is_empty(), "{:?}", f.refused);
    let s = f.index.state();
    let manifests = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80}]}\n";
    let from_file = manifests::parse_documents(manifests, "t").unwrap();
    assert_eq!(s.namespaces, from_file.namespaces, "labels default the same way");
    assert_eq!(s.services, from_file.services);
    assert!(s.service_accounts.contains_key("shop/web"));
    let other: Vec<&str> = s.other.keys().map(String::as_str).collect();
    assert_eq!(
        other,
        ["AuthorizationPolicy/shop/p", "EndpointSlice/shop/ext-1", "Gateway/shop/wp", "Node/default/node-1", "PeerAuthentication/shop/pa"]
    );
    assert_eq!(s.node("node-1").unwrap()["metadata"]["labels"]["topology.kubernetes.io/zone"], "z1");
    assert_eq!(s.other["Gateway/shop/wp"]["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(s.other["AuthorizationPolicy/shop/p"]["apiVersion"], "security.istio.io/v1", "the watch's kind fills in what lists omit");
    for k in Kind::ALL {
        assert_eq!(f.index.len(k), 1, "{k:?}");
    }
}

#[test]
fn a_namespace_label_change_changes_the_translation() {
    let mut f = feed(listed(&[(Kind::Namespace, namespace("shop", json!({}))), (Kind::Pod, pod("shop", "a", "10.0.0.1"))]));
    let protocol = |s: &ClusterState| to_state(s, &TranslateOptions::default()).workloads[0].protocol;
    assert_eq!(protocol(&f.index.take_changed().unwrap()), TunnelProtocol::None);
    let ambient = namespace("shop", json!({"istio.io/dataplane-mode": "ambient"}));
    assert_eq!(f.index.apply(Kind::Namespace, WatchEvent::Apply(ambient)).unwrap(), Outcome::Changed);
    assert_eq!(protocol(&f.index.take_changed().unwrap()), TunnelProtocol::Hbone);
}

/// A node agent's index (Namespaces and Pods only) is complete once those two have listed;
/// the kinds it does not watch are never waited for.
#[test]
fn an_index_of_some_kinds_is_complete_once_those_listed() {
    let mut index = ClusterIndex::for_kinds(&[Kind::Namespace, Kind::Pod]);
    assert_eq!(index.unsynced(), vec![Kind::Namespace, Kind::Pod]);
    index.apply(Kind::Namespace, WatchEvent::ListStart).unwrap();
    index.apply(Kind::Namespace, WatchEvent::Listed(namespace("shop", json!({})))).unwrap();
    index.apply(Kind::Namespace, WatchEvent::ListDone).unwrap();
    assert!(index.take_changed().is_none(), "pods have not listed yet");
    assert_eq!(index.unsynced(), vec![Kind::Pod]);
    index.apply(Kind::Pod, WatchEvent::ListStart).unwrap();
    index.apply(Kind::Pod, WatchEvent::Listed(pod("shop", "web-1", "10.0.0.1"))).unwrap();
    index.apply(Kind::Pod, WatchEvent::ListDone).unwrap();
    assert!(index.synced() && index.unsynced().is_empty());
    let state = index.take_changed().expect("complete without services, accounts or policies");
    assert!(state.pod("shop", "web-1").is_some() && state.namespace("shop").is_some());
    assert!(!ClusterIndex::new().synced(), "the full index still waits for every kind");
}
