use super::*;
use crate::k8s::manifests::parse_documents;
use crate::k8s::translate::{translate, TranslateOptions};

/// A waypoint Gateway `name` in `ns`, with the labels and `from` given, and (when `running`) a
/// pod of its deployment.
fn gateway(ns: &str, name: &str, labels: &str, from: Option<&str>, running: bool) -> String {
    let routes = from.map(|f| format!(", allowedRoutes: {{namespaces: {{from: {f}}}}}")).unwrap_or_default();
    let mut out = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec: {{gatewayClassName: istio-waypoint, listeners: [{{name: mesh, port: 15008, protocol: HBONE{routes}}}]}}\n"
    );
    if running {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}-pod, namespace: {ns}, labels: {{{GATEWAY_NAME}: {name}}}}}\n\
             spec: {{nodeName: n1, serviceAccountName: {name}}}\nstatus: {{phase: Running, podIP: 198.18.9.9}}\n"
        ));
    }
    out
}

fn ns(name: &str, labels: &str) -> String {
    format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n")
}

fn pod(ns: &str, name: &str, labels: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}, {labels}}}}}\n\
         spec: {{nodeName: n1}}\nstatus: {{phase: Running, podIP: 198.18.1.{}}}\n",
        name.len()
    )
}

fn svc(ns: &str, name: &str, labels: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec: {{selector: {{app: {name}}}, clusterIP: 198.19.0.{}, ports: [{{port: 80}}]}}\n",
        name.len()
    )
}

/// The waypoint advertised for Service or Pod `ns/name`, as `namespace/hostname`, and the notes.
fn resolved(docs: &str, kind: &str, ns: &str, name: &str, mode: WaypointUnavailable) -> (Option<String>, Vec<String>) {
    let c = parse_documents(docs, "test").unwrap();
    let (state, notes) = translate(&c, &TranslateOptions { waypoint_unavailable: mode, ..Default::default() });
    let addr = match kind {
        "Service" => state.services.iter().find(|s| s.namespace == ns && s.name == name).unwrap().waypoint.clone(),
        _ => state.workloads.iter().find(|w| w.namespace == ns && w.name == name).unwrap().waypoint.clone(),
    };
    let shown = addr.map(|a| {
        assert_eq!(a.hbone_mtls_port, 15008);
        match a.destination {
            GatewayDestination::Hostname { namespace, hostname } => format!("{namespace}/{hostname}"),
            GatewayDestination::Address(a) => panic!("waypoints are advertised by hostname, got {a}"),
        }
    });
    (shown, notes)
}

const WP: &str = "shop/wp.shop.svc.cluster.local";

/// (case, manifests, kind, name, mode, advertised, a note containing; "" = no note).
type Case = (&'static str, String, &'static str, &'static str, WaypointUnavailable, Option<&'static str>, &'static str);

#[test]
fn enrollment_rules() {
    use WaypointUnavailable::{Direct, Refuse};
    let use_wp = "istio.io/use-waypoint: wp";
    let cases: Vec<Case> = vec![
        // (case, manifests, kind, name, mode, advertised, note contains)
        (
            "service label, service waypoint",
            ns("shop", "") + &gateway("shop", "wp", "", None, true) + &svc("shop", "web", use_wp),
            "Service",
            "web",
            Refuse,
            Some(WP),
            "",
        ),
        (
            "namespace label reaches the service",
            ns("shop", use_wp) + &gateway("shop", "wp", "", None, true) + &svc("shop", "web", ""),
            "Service",
            "web",
            Refuse,
            Some(WP),
            "",
        ),
        (
            "object's none beats the namespace",
            ns("shop", use_wp) + &gateway("shop", "wp", "", None, true) + &svc("shop", "web", "istio.io/use-waypoint: none"),
            "Service",
            "web",
            Refuse,
            None,
            "",
        ),
        (
            "object's label beats the namespace",
            ns("shop", "istio.io/use-waypoint: other") + &gateway("shop", "wp", "", None, true) + &svc("shop", "web", use_wp),
            "Service",
            "web",
            Refuse,
            Some(WP),
            "",
        ),
        (
            "no label anywhere",
            ns("shop", "") + &gateway("shop", "wp", "", None, true) + &svc("shop", "web", ""),
            "Service",
            "web",
            Refuse,
            None,
            "",
        ),
        (
            "pod on a default (service) waypoint: inherited, silently none",
            ns("shop", use_wp) + &gateway("shop", "wp", "", None, true) + &pod("shop", "web", ""),
            "Pod",
            "web",
            Refuse,
            None,
            "",
        ),
        (
            "pod label on a service waypoint: refused with a note",
            ns("shop", "") + &gateway("shop", "wp", "", None, true) + &pod("shop", "web", use_wp),
            "Pod",
            "web",
            Refuse,
            None,
            "does not serve a Pod",
        ),
        (
            "pod on a workload waypoint",
            ns("shop", use_wp) + &gateway("shop", "wp", "istio.io/waypoint-for: workload", None, true) + &pod("shop", "web", ""),
            "Pod",
            "web",
            Refuse,
            Some(WP),
            "",
        ),
        (
            "service on a workload waypoint: inherited, none",
            ns("shop", use_wp) + &gateway("shop", "wp", "istio.io/waypoint-for: workload", None, true) + &svc("shop", "web", ""),
            "Service",
            "web",
            Refuse,
            None,
            "",
        ),
        (
            "pod on an all waypoint",
            ns("shop", use_wp) + &gateway("shop", "wp", "istio.io/waypoint-for: all", None, true) + &pod("shop", "web", ""),
            "Pod",
            "web",
            Refuse,
            Some(WP),
            "",
        ),
        (
            "service on an all waypoint",
            ns("shop", use_wp) + &gateway("shop", "wp", "istio.io/waypoint-for: all", None, true) + &svc("shop", "web", ""),
            "Service",
            "web",
            Refuse,
            Some(WP),
            "",
        ),
        (
            "none waypoint serves nothing",
            ns("shop", "") + &gateway("shop", "wp", "istio.io/waypoint-for: none", None, true) + &svc("shop", "web", use_wp),
            "Service",
            "web",
            Refuse,
            None,
            "does not serve a Service",
        ),
        (
            "unknown traffic type",
            ns("shop", "") + &gateway("shop", "wp", "istio.io/waypoint-for: sometimes", None, true) + &svc("shop", "web", use_wp),
            "Service",
            "web",
            Refuse,
            None,
            "is not service, workload, all or none",
        ),
        (
            "the waypoint's own service never gets one",
            ns("shop", use_wp)
                + &gateway("shop", "wp", "", None, true)
                + &svc("shop", "wp", "gateway.istio.io/managed: istio.io-mesh-controller"),
            "Service",
            "wp",
            Refuse,
            None,
            "",
        ),
        (
            "the waypoint's own pod never gets one",
            ns("shop", use_wp) + &gateway("shop", "wp", "istio.io/waypoint-for: all", None, true),
            "Pod",
            "wp-pod",
            Refuse,
            None,
            "",
        ),
        (
            "missing gateway, refuse: still advertised",
            ns("shop", "") + &svc("shop", "web", use_wp),
            "Service",
            "web",
            Refuse,
            Some(WP),
            "does not exist",
        ),
        ("missing gateway, direct: omitted", ns("shop", "") + &svc("shop", "web", use_wp), "Service", "web", Direct, None, "goes direct"),
        (
            "no running pod, refuse: still advertised",
            ns("shop", "") + &gateway("shop", "wp", "", None, false) + &svc("shop", "web", use_wp),
            "Service",
            "web",
            Refuse,
            Some(WP),
            "has no running pod",
        ),
        (
            "no running pod, direct: omitted",
            ns("shop", "") + &gateway("shop", "wp", "", None, false) + &svc("shop", "web", use_wp),
            "Service",
            "web",
            Direct,
            None,
            "has no running pod",
        ),
        (
            "running waypoint, direct mode: advertised",
            ns("shop", "") + &gateway("shop", "wp", "", None, true) + &svc("shop", "web", use_wp),
            "Service",
            "web",
            Direct,
            Some(WP),
            "",
        ),
        (
            "another class is not a waypoint",
            ns("shop", "") + &gateway("shop", "wp", "", None, true).replace("istio-waypoint", "istio") + &svc("shop", "web", use_wp),
            "Service",
            "web",
            Refuse,
            Some(WP),
            "does not exist",
        ),
        (
            "cross-namespace, default Same: refused",
            ns("shop", "")
                + &ns("mesh", "")
                + &gateway("mesh", "wp", "", None, true)
                + &svc("shop", "web", "istio.io/use-waypoint: wp, istio.io/use-waypoint-namespace: mesh"),
            "Service",
            "web",
            Refuse,
            None,
            "admits only its own namespace",
        ),
        (
            "cross-namespace, All: bound",
            ns("shop", "")
                + &ns("mesh", "")
                + &gateway("mesh", "wp", "", Some("All"), true)
                + &svc("shop", "web", "istio.io/use-waypoint: wp, istio.io/use-waypoint-namespace: mesh"),
            "Service",
            "web",
            Refuse,
            Some("mesh/wp.mesh.svc.cluster.local"),
            "",
        ),
        (
            "cross-namespace, Selector: refused",
            ns("shop", "")
                + &ns("mesh", "")
                + &gateway("mesh", "wp", "", Some("Selector"), true)
                + &svc("shop", "web", "istio.io/use-waypoint: wp, istio.io/use-waypoint-namespace: mesh"),
            "Service",
            "web",
            Refuse,
            None,
            "Selector is not supported",
        ),
        (
            "namespace-level waypoint namespace",
            ns("shop", "istio.io/use-waypoint: wp, istio.io/use-waypoint-namespace: mesh")
                + &ns("mesh", "")
                + &gateway("mesh", "wp", "", Some("All"), true)
                + &svc("shop", "web", ""),
            "Service",
            "web",
            Refuse,
            Some("mesh/wp.mesh.svc.cluster.local"),
            "",
        ),
    ];
    for (case, docs, kind, name, mode, want, note) in cases {
        let (got, notes) = resolved(&docs, kind, "shop", name, mode);
        assert_eq!(got.as_deref(), want, "{case}");
        if note.is_empty() {
            assert!(notes.is_empty(), "{case}: no note expected, got {notes:?}");
        } else {
            assert!(notes.iter().any(|n| n.contains(note)), "{case}: want a note with {note:?}, got {notes:?}");
        }
    }
}

#[test]
fn gateways_that_are_not_waypoints_are_reported() {
    let bad_listener = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp, namespace: shop}\n\
                        spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15009, protocol: HBONE}]}\n";
    let (got, notes) = resolved(
        &(ns("shop", "") + bad_listener + &svc("shop", "web", "istio.io/use-waypoint: wp")),
        "Service",
        "shop",
        "web",
        WaypointUnavailable::Refuse,
    );
    assert_eq!(got.as_deref(), Some(WP), "an invalid waypoint is a missing one: refused");
    assert!(notes.iter().any(|n| n.contains("no listener {name: mesh, port: 15008, protocol: HBONE}")), "{notes:?}");
}
