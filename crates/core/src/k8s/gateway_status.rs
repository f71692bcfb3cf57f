//! The status a waypoint Gateway should carry, as istiod sets it: `Accepted` (the Gateway is
//! a valid waypoint: a listener mesh/15008/HBONE), `Programmed` (a waypoint pod runs and has an
//! address) and, once programmed, the address clients use (the waypoint's Service hostname).
//! Pure: the controller's leader compares it with what the API holds and merge-patches
//! `gateways/status` only when a condition's status, reason or message or the addresses differ,
//! so its own write (seen again through the watch) never triggers another.

use serde_json::{json, Value};

use super::objects::ClusterState;
use super::waypoint::{has_running_pod, WAYPOINT_CLASS};

/// One Gateway's status to write.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusPatch {
    pub namespace: String,
    pub name: String,
    /// A JSON merge patch of the status subresource (`{"status": {...}}`).
    pub patch: Value,
}

/// The status patches the waypoint Gateways in `c` need; `now` (RFC 3339) is the
/// `lastTransitionTime` of a condition whose status changes.
pub fn patches(c: &ClusterState, cluster_domain: &str, now: &str) -> Vec<StatusPatch> {
    let gateways = c.other.iter().filter(|(k, _)| k.starts_with("Gateway/")).map(|(_, v)| v);
    gateways
        .filter(|g| g.pointer("/spec/gatewayClassName").and_then(Value::as_str) == Some(WAYPOINT_CLASS))
        .filter_map(|g| patch(c, g, cluster_domain, now))
        .collect()
}

fn patch(c: &ClusterState, g: &Value, domain: &str, now: &str) -> Option<StatusPatch> {
    let name = g.pointer("/metadata/name").and_then(Value::as_str)?.to_string();
    let namespace = g.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_string();
    let has_mesh = has_mesh_listener(g);
    let ready = has_mesh && has_running_pod(c, &namespace, &name);
    let accepted = if has_mesh {
        ("True", "Accepted", "a waypoint: listener mesh on 15008 (HBONE)".to_string())
    } else {
        ("False", "Invalid", "a waypoint needs a listener {name: mesh, port: 15008, protocol: HBONE}; it is not used".to_string())
    };
    let programmed = if ready {
        ("True", "Programmed", "a waypoint pod is running".to_string())
    } else {
        let why = format!("no running waypoint pod labelled gateway.networking.k8s.io/gateway-name={name}; traffic to what it fronts is refused (fail closed)");
        ("False", "NoResources", why)
    };
    let addresses = if ready { vec![json!({"type": "Hostname", "value": format!("{name}.{namespace}.svc.{domain}")})] } else { vec![] };
    let current = g.get("status").cloned().unwrap_or_default();
    let generation = g.pointer("/metadata/generation").cloned().unwrap_or(Value::Null);
    let want = [("Accepted", accepted), ("Programmed", programmed)];
    let same = current["addresses"].as_array().map(Vec::as_slice).unwrap_or_default() == addresses.as_slice()
        && want
            .iter()
            .all(|(t, (s, r, m))| condition(&current, t).is_some_and(|c| c["status"] == *s && c["reason"] == *r && c["message"] == *m));
    if same {
        return None;
    }
    let conditions: Vec<Value> = want
        .iter()
        .map(|(t, (s, r, m))| {
            // A condition keeps its transition time while its status holds.
            let since = condition(&current, t).filter(|c| c["status"] == *s).and_then(|c| c.get("lastTransitionTime").cloned());
            json!({"type": t, "status": s, "reason": r, "message": m, "observedGeneration": generation,
                   "lastTransitionTime": since.unwrap_or_else(|| json!(now))})
        })
        .collect();
    Some(StatusPatch { namespace, name, patch: json!({"status": {"conditions": conditions, "addresses": addresses}}) })
}

/// Whether a Gateway has the listener that makes it a waypoint: `mesh`, 15008, HBONE.
pub fn has_mesh_listener(g: &Value) -> bool {
    let listeners = g.pointer("/spec/listeners").and_then(Value::as_array);
    listeners.into_iter().flatten().any(|l| l["name"] == "mesh" && l["port"] == 15008 && l["protocol"] == "HBONE")
}

fn condition<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    status["conditions"].as_array()?.iter().find(|c| c["type"] == kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::manifests::parse_documents;

    const GW: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop, generation: 3}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n";
    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: waypoint-1, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}\nstatus: {phase: Running, podIP: 198.18.1.30}\n";

    fn state(docs: &[&str]) -> ClusterState {
        parse_documents(&docs.join("---\n"), "t").unwrap()
    }

    fn conditions(p: &StatusPatch) -> Vec<(String, String, String)> {
        let c = p.patch["status"]["conditions"].as_array().unwrap();
        c.iter()
            .map(|c| (c["type"].as_str().unwrap().into(), c["status"].as_str().unwrap().into(), c["reason"].as_str().unwrap().into()))
            .collect()
    }

    #[test]
    fn programmed_once_a_waypoint_pod_runs_and_nothing_written_when_unchanged() {
        let c = state(&[GW]);
        let p = patches(&c, "cluster.local", "T1");
        assert_eq!(p.len(), 1);
        assert_eq!(
            conditions(&p[0]),
            [("Accepted".into(), "True".into(), "Accepted".into()), ("Programmed".into(), "False".into(), "NoResources".into())]
        );
        assert_eq!(p[0].patch["status"]["addresses"], json!([]));
        assert_eq!(p[0].patch["status"]["conditions"][1]["observedGeneration"], 3);

        let c = state(&[GW, POD]);
        let p = patches(&c, "cluster.local", "T2");
        assert_eq!(conditions(&p[0])[1], ("Programmed".into(), "True".into(), "Programmed".into()));
        assert_eq!(p[0].patch["status"]["addresses"], json!([{"type": "Hostname", "value": "waypoint.shop.svc.cluster.local"}]));

        // The API now holds what was written: nothing more to write.
        let mut written = c.clone();
        let gw = written.other.get_mut("Gateway/shop/waypoint").unwrap();
        gw["status"] = p[0].patch["status"].clone();
        assert_eq!(patches(&written, "cluster.local", "T3"), vec![]);

        // The pod goes: Programmed False again; Accepted keeps its transition time.
        written.pods.clear();
        let p = patches(&written, "cluster.local", "T4");
        assert_eq!(conditions(&p[0])[1].1, "False");
        assert_eq!(p[0].patch["status"]["conditions"][0]["lastTransitionTime"], "T2");
        assert_eq!(p[0].patch["status"]["conditions"][1]["lastTransitionTime"], "T4");
    }

    #[test]
    fn a_gateway_without_the_mesh_listener_is_not_accepted_and_others_are_not_ours() {
        let bad = GW.replace("name: mesh", "name: other");
        let other_class = GW.replace("istio-waypoint", "istio").replace("name: waypoint,", "name: ingress,");
        let c = state(&[&bad, &other_class, POD]);
        let p = patches(&c, "cluster.local", "T");
        assert_eq!(p.len(), 1, "only waypoint-class Gateways: {p:?}");
        assert_eq!(
            conditions(&p[0]),
            [("Accepted".into(), "False".into(), "Invalid".into()), ("Programmed".into(), "False".into(), "NoResources".into())]
        );
    }
}
