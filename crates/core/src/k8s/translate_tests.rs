use super::*;
use crate::k8s::manifests::parse_documents;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web, version: v2}}
spec:
  nodeName: node-1
  serviceAccountName: web
  containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]
status: {phase: Running, podIP: 198.18.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web, istio.io/dataplane-mode: none}}
spec:
  nodeName: node-2
  containers: [{name: app, ports: [{name: http, containerPort: 9090}]}]
status: {podIP: 198.18.2.10}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: shop, labels: {app: web}}
spec: {nodeName: node-1}
---
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: legacy}
spec: {nodeName: node-1}
status: {podIP: 198.18.1.11, phase: Failed}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  clusterIP: 198.19.0.10
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: admin, port: 81, targetPort: 7000}
  - {name: same, port: 82}
"#;

#[test]
fn pods_and_services_become_workloads_and_endpoints() {
    let c = parse_documents(MANIFESTS, "test").unwrap();
    let s = to_state(&c, &TranslateOptions::default());
    let by_name = |n: &str| s.workloads.iter().find(|w| w.name == n).unwrap();
    assert_eq!(s.workloads.len(), 3, "the pod without an IP is not a workload");

    let w1 = by_name("web-1");
    assert_eq!(w1.uid, "Kubernetes//Pod/shop/web-1");
    assert_eq!(w1.protocol, TunnelProtocol::Hbone, "captured: ambient namespace");
    assert_eq!(w1.identity().unwrap().to_string(), "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(w1.node, "node-1");
    assert_eq!((w1.canonical_name.as_str(), w1.canonical_revision.as_str()), ("web", "v2"));
    let ports = &w1.services["shop/web.shop.svc.cluster.local"];
    assert_eq!(ports.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(), vec![(80, 8080), (81, 7000), (82, 82)]);

    let w2 = by_name("web-2");
    assert_eq!(w2.protocol, TunnelProtocol::None, "opted out");
    assert_eq!(w2.service_account, "default");
    assert_eq!(w2.services["shop/web.shop.svc.cluster.local"][&80], 9090, "named port resolved per pod");

    let old = by_name("old");
    assert_eq!(old.status, HealthStatus::Unhealthy);
    assert!(old.services.is_empty());

    let svc = &s.services[0];
    assert_eq!(svc.hostname, "web.shop.svc.cluster.local");
    assert_eq!(svc.vips[0].address.to_string(), "198.19.0.10");
    assert_eq!(svc.ports[&80], 0, "named target ports are resolved per endpoint");
    assert_eq!(svc.ports[&81], 7000);
}

/// API mode: HBONE exactly when the node agent's annotation says the redirection is
/// installed; the file mode keeps the capture decision.
#[test]
fn api_mode_advertises_hbone_only_with_the_redirection_annotation() {
    let docs = |annotations: &str, ns_labels: &str| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{{ns_labels}}}}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: web-1, namespace: shop, annotations: {{{annotations}}}}}\n\
             spec: {{nodeName: node-1}}\nstatus: {{podIP: 198.18.1.10}}\n"
        )
    };
    let ambient = "istio.io/dataplane-mode: ambient";
    let enabled = "ambient.istio.io/redirection: enabled";
    let api = TranslateOptions { require_redirection_annotation: true, ..Default::default() };
    let file = TranslateOptions::default();
    let cases = [
        ("captured, not yet annotated: TCP", "", ambient, &api, TunnelProtocol::None),
        ("captured and annotated: HBONE", enabled, ambient, &api, TunnelProtocol::Hbone),
        ("annotated, release pending: still HBONE", enabled, "", &api, TunnelProtocol::Hbone),
        ("opt-out annotation: TCP", "ambient.istio.io/redirection: disabled", ambient, &api, TunnelProtocol::None),
        ("not captured, not annotated: TCP", "", "", &api, TunnelProtocol::None),
        ("file mode, captured without annotation: HBONE", "", ambient, &file, TunnelProtocol::Hbone),
        ("file mode, annotated but not captured: TCP", enabled, "", &file, TunnelProtocol::None),
    ];
    for (name, annotations, ns_labels, opts, want) in cases {
        let c = parse_documents(&docs(annotations, ns_labels), "test").unwrap();
        assert_eq!(to_state(&c, opts).workloads[0].protocol, want, "{name}");
    }
}

#[test]
fn locality_comes_from_the_pod_label_else_its_nodes_topology_labels() {
    let nodes = r#"
apiVersion: v1
kind: Node
metadata:
  name: node-1
  labels: {topology.kubernetes.io/region: eu-west, topology.kubernetes.io/zone: eu-west-1a, topology.istio.io/subzone: rack7}
---
apiVersion: v1
kind: Node
metadata: {name: node-2, labels: {topology.kubernetes.io/zone: only-zone}}
---
apiVersion: v1
kind: Pod
metadata: {name: pinned, namespace: shop, labels: {istio-locality: us-east.us-east-1b}}
spec: {nodeName: node-1}
status: {podIP: 198.18.1.20}
---
apiVersion: v1
kind: Pod
metadata: {name: nowhere, namespace: shop}
spec: {nodeName: node-9}
status: {podIP: 198.18.9.20}
"#;
    let c = parse_documents(&format!("{MANIFESTS}---{nodes}"), "t").unwrap();
    let s = to_state(&c, &TranslateOptions::default());
    let loc = |name: &str| {
        let w = s.workloads.iter().find(|w| w.name == name).unwrap_or_else(|| panic!("{name}"));
        (w.locality.region.clone(), w.locality.zone.clone(), w.locality.subzone.clone())
    };
    #[rustfmt::skip]
    let cases: &[(&str, (&str, &str, &str))] = &[
        ("web-1", ("eu-west", "eu-west-1a", "rack7")),        // every node label
        ("web-2", ("", "only-zone", "")),                     // what the node has
        ("pinned", ("us-east", "us-east-1b", "")),            // the pod's label wins
        ("nowhere", ("", "", "")),                            // unknown node: unknown
    ];
    for (name, (r, z, sz)) in cases {
        assert_eq!(loc(name), (r.to_string(), z.to_string(), sz.to_string()), "{name}");
    }
}

#[test]
fn selector_less_services_take_their_endpoints_from_endpoint_slices() {
    let extra = r#"
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec:
  clusterIP: 198.19.0.20
  ports: [{name: db, port: 5432}, {name: other, port: 6000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-abc, namespace: shop, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
ports: [{name: db, port: 15432}, {name: unknown, port: 7}]
endpoints:
- addresses: [198.18.1.10]
  targetRef: {kind: Pod, name: web-1, namespace: shop}
- addresses: [10.50.0.7]
  conditions: {ready: false}
- addresses: [10.50.0.8]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-managed, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 1}]
endpoints: [{addresses: [10.60.0.1]}]
"#;
    let c = parse_documents(&format!("{MANIFESTS}---{extra}"), "t").unwrap();
    let s = to_state(&c, &TranslateOptions::default());
    let ext = ServiceKey::new("shop", "ext.shop.svc.cluster.local");
    let web1 = s.workloads.iter().find(|w| w.name == "web-1").unwrap();
    assert_eq!(
        web1.services.get(&ext),
        Some(&BTreeMap::from([(5432, 15432)])),
        "the pod behind the slice serves ext; unnamed slice ports left out"
    );
    let by_ip = |ip: &str| s.workloads.iter().find(|w| w.addresses == vec![ip.parse::<IpAddr>().unwrap()]);
    let seven = by_ip("10.50.0.7").expect("an address of no pod is a workload of its own");
    assert_eq!(seven.uid.to_string(), "Kubernetes/discovery.k8s.io/EndpointSlice/shop/ext-abc/10.50.0.7");
    assert_eq!((seven.protocol, seven.status), (TunnelProtocol::None, HealthStatus::Unhealthy), "plain TCP; not ready is unhealthy");
    assert_eq!(by_ip("10.50.0.8").unwrap().status, HealthStatus::Healthy, "an unset ready condition means ready");
    assert!(by_ip("10.60.0.1").is_none(), "slices of a Service with a selector are ignored");
}

#[test]
fn service_ports_declare_their_protocol_by_app_protocol_else_name() {
    let svc = r#"
apiVersion: v1
kind: Service
metadata: {name: multi, namespace: shop}
spec:
  clusterIP: 198.19.0.30
  ports:
  - {name: http-web, port: 80}
  - {name: grpc, port: 81}
  - {name: web, port: 82, appProtocol: kubernetes.io/h2c}
  - {name: http-but, port: 83, appProtocol: tcp}
  - {name: db, port: 84}
  - {name: web2, port: 85, appProtocol: mongo}
"#;
    let c = parse_documents(&format!("{MANIFESTS}---{svc}"), "t").unwrap();
    let s = to_state(&c, &TranslateOptions::default());
    let multi = s.services.iter().find(|s| s.name == "multi").unwrap();
    let want = BTreeMap::from([(80, AppProtocol::Http11), (81, AppProtocol::Grpc), (82, AppProtocol::Http2), (83, AppProtocol::Tcp)]);
    assert_eq!(multi.app_protocols, want, "appProtocol wins over the name; undeclared and unknown ports are TCP");
}

#[test]
fn port_protocol_follows_istiod_conversion() {
    use crate::k8s::objects::ServicePort;
    let port = |name: &str, app: Option<&str>| {
        let mut p: ServicePort = serde_json::from_value(serde_json::json!({"name": name, "port": 80})).unwrap();
        p.app_protocol = app.map(str::to_string);
        app_protocol(&p)
    };
    let cases = [
        ("http", None, Some(AppProtocol::Http11)),
        ("HTTP-web", None, Some(AppProtocol::Http11)),
        ("http2-api", None, Some(AppProtocol::Http2)),
        ("grpc", None, Some(AppProtocol::Grpc)),
        ("grpc-web", None, Some(AppProtocol::Grpc)),
        ("grpc-webapp", None, Some(AppProtocol::Grpc)),
        ("grpc-x", None, Some(AppProtocol::Grpc)),
        ("web", Some("kubernetes.io/h2c"), Some(AppProtocol::Http2)),
        ("web", Some("kubernetes.io/ws"), Some(AppProtocol::Http11)),
        ("web", Some("kubernetes.io/wss"), Some(AppProtocol::Tls)),
        ("web", Some("http2"), Some(AppProtocol::Http2)),
        ("web", Some("grpc-web"), Some(AppProtocol::Grpc)),
        ("web", Some("h2c"), None),
        ("http", Some("mongo"), None),
        ("http", Some("tcp"), Some(AppProtocol::Tcp)),
        ("kubernetes.io/h2c", None, None),
        ("h2c", None, None),
        ("db", None, None),
        ("https-x", None, Some(AppProtocol::Tls)),
    ];
    for (name, app, want) in cases {
        assert_eq!(port(name, app), want, "name {name:?}, appProtocol {app:?}");
    }
}
