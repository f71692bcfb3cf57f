//! The waypoint's policies over xDS (ferry's own type, `proto/waypoint.proto`): which objects
//! the controller serves, to whom, and how a waypoint reads them back. Pure: the controller's
//! ADS and the waypoint's client call these.
//!
//! Served: every AuthorizationPolicy and RequestAuthentication that binds by `targetRef(s)`
//! (selector-bound ones are the node proxies', over `istio.security.Authorization`), named
//! `<namespace>/<kind>/<name>`. A waypoint account sees its own namespace's and the root
//! namespace's (mesh-wide `istio-waypoint` GatewayClass policies), nothing else. A waypoint
//! account is the service account of a pod labelled with a waypoint Gateway's name in that
//! Gateway's namespace, so only a waypoint's own pods ever get its policies. A resource that
//! does not decode is read as a policy whose targets cannot be read, which the compiler turns
//! into a DENY of its whole namespace (failing closed, invariant P4).

use std::collections::BTreeMap;

use prost::Message;
use serde_json::Value;

use crate::k8s::objects::ClusterState;
use crate::k8s::waypoint::{GATEWAY_NAME, WAYPOINT_CLASS};
use crate::l7authz::ROOT_NAMESPACE;
use crate::proto::waypoint::Policy;

pub const WAYPOINT_POLICY_TYPE: &str = "type.googleapis.com/ferry.waypoint.Policy";

/// The kinds a waypoint enforces.
const KINDS: [&str; 2] = ["AuthorizationPolicy", "RequestAuthentication"];

/// Every waypoint policy in the cluster, encoded, by resource name.
pub fn resources(c: &ClusterState) -> BTreeMap<String, Vec<u8>> {
    c.other
        .values()
        .filter(|o| o.get("kind").and_then(Value::as_str).is_some_and(|k| KINDS.contains(&k)))
        .filter(|o| o.get("spec").is_some_and(|s| s.get("targetRef").is_some() || s.get("targetRefs").is_some()))
        .map(|o| {
            let text = |p: &str| o.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
            let (kind, name) = (text("/kind"), text("/metadata/name"));
            let namespace = Some(text("/metadata/namespace")).filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
            let key = format!("{namespace}/{kind}/{name}");
            (key, Policy { kind, namespace, name, json: o.to_string() }.encode_to_vec())
        })
        .collect()
}

/// Whether a waypoint in `namespace` may see the resource `name`.
pub fn visible_to(name: &str, namespace: &str) -> bool {
    let ns = name.split('/').next().unwrap_or_default();
    ns == namespace || ns == ROOT_NAMESPACE
}

/// Whether `namespace/service_account` runs a waypoint: some pod of that account carries the
/// name of a waypoint Gateway of its namespace.
pub fn is_waypoint_account(c: &ClusterState, namespace: &str, service_account: &str) -> bool {
    let is_waypoint = |gw: &str| {
        c.other
            .get(&format!("Gateway/{namespace}/{gw}"))
            .is_some_and(|g| g.pointer("/spec/gatewayClassName") == Some(&WAYPOINT_CLASS.into()))
    };
    c.pods.values().any(|p| {
        p.metadata.namespace == namespace
            && p.service_account() == service_account
            && p.metadata.labels.get(GATEWAY_NAME).is_some_and(|g| is_waypoint(g))
    })
}

/// A received resource as the Kubernetes object it carries; one that does not decode becomes an
/// AuthorizationPolicy (named from the resource name) whose targets cannot be read. The error
/// is the NACK's reason.
pub fn decode(name: &str, body: &[u8]) -> (Value, Option<String>) {
    let read = Policy::decode(body).map_err(|e| format!("not a ferry.waypoint.Policy: {e}")).and_then(|p| {
        let v: Value = serde_json::from_str(&p.json).map_err(|e| format!("policy JSON: {e}"))?;
        let kind_ok = v.get("kind").and_then(Value::as_str) == Some(p.kind.as_str()) && KINDS.contains(&p.kind.as_str());
        if !kind_ok {
            return Err(format!("kind {:?} is not one a waypoint enforces", p.kind));
        }
        Ok(v)
    });
    match read {
        Ok(v) => (v, None),
        Err(e) => {
            let mut parts = name.splitn(3, '/');
            let (ns, _, n) = (parts.next().unwrap_or("default"), parts.next(), parts.next().unwrap_or(name));
            let unreadable = serde_json::json!({
                "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": n, "namespace": ns},
                "spec": {"targetRefs": format!("unreadable resource: {e}")},
            });
            (unreadable, Some(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::manifests::parse_documents;
    use crate::l7authz::{compile_all, L7Action, Target};

    const DOCS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-1, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {serviceAccountName: wp-sa}
---
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: not-a-gateway}}
spec: {serviceAccountName: app}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], action: DENY}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec: {targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-selector, namespace: shop}
spec: {selector: {matchLabels: {app: x}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: elsewhere, namespace: other}
spec: {targetRefs: [{kind: Service, group: "", name: s}]}
"#;

    #[test]
    fn target_ref_policies_are_served_and_each_waypoint_sees_its_namespace_and_the_root() {
        let c = parse_documents(DOCS, "t").unwrap();
        let all = resources(&c);
        let names: Vec<&str> = all.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["istio-system/AuthorizationPolicy/mesh-wide", "other/AuthorizationPolicy/elsewhere", "shop/AuthorizationPolicy/deny-admin"],
            "selector-bound policies are the node proxies'"
        );
        let shop: Vec<&str> = names.iter().copied().filter(|n| visible_to(n, "shop")).collect();
        assert_eq!(shop, ["istio-system/AuthorizationPolicy/mesh-wide", "shop/AuthorizationPolicy/deny-admin"]);
        // What the waypoint decodes compiles to what the file source would give.
        let decoded: Vec<Value> = all.iter().map(|(n, body)| decode(n, body)).map(|(v, e)| (assert!(e.is_none()), v).1).collect();
        assert_eq!(compile_all(&decoded), compile_all(c.other.values()));
    }

    #[test]
    fn only_a_waypoint_gateways_pods_accounts_are_waypoint_accounts() {
        let c = parse_documents(DOCS, "t").unwrap();
        let cases = [("shop", "wp-sa", true), ("shop", "app", false), ("other", "wp-sa", false), ("shop", "waypoint", false)];
        for (ns, sa, want) in cases {
            assert_eq!(is_waypoint_account(&c, ns, sa), want, "{ns}/{sa}");
        }
    }

    #[test]
    fn a_resource_that_does_not_decode_denies_its_namespace() {
        let cases: [(&str, Vec<u8>); 3] = [
            ("shop/AuthorizationPolicy/broken", b"\xff\xff not protobuf".to_vec()),
            (
                "shop/AuthorizationPolicy/json",
                Policy { kind: "AuthorizationPolicy".into(), json: "{".into(), ..Default::default() }.encode_to_vec(),
            ),
            ("shop/Secret/x", Policy { kind: "Secret".into(), json: r#"{"kind":"Secret"}"#.into(), ..Default::default() }.encode_to_vec()),
        ];
        for (name, body) in cases {
            let (v, err) = decode(name, &body);
            assert!(err.is_some(), "{name}: refused (NACK)");
            let compiled = compile_all([&v]);
            assert_eq!(compiled.len(), 1, "{name}");
            let p = &compiled[0];
            assert_eq!(
                (p.namespace.as_str(), p.action, p.targets.as_slice()),
                ("shop", L7Action::Deny, &[Target::Unreadable][..]),
                "{name}"
            );
        }
    }
}
