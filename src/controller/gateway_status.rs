//! Writes waypoint Gateways' status as istiod does (`Accepted`, `Programmed`, the address),
//! computed by the pure `ferry_core::k8s::gateway_status` from the watched state. Level-
//! triggered like the root certificate's publication: on every leadership or state change and
//! every resync period, while this replica leads, each Gateway whose status differs gets one
//! merge patch of `gateways/status`; a failed patch is retried on the next round.
//!
//! A round may run on a view older than this replica's own last write (the watch delivers
//! another object's event first). The status written is remembered, so such a round does not
//! write it again; the memory is cleared every resync period, so a status someone else
//! overwrote is put back then.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_core::k8s::gateway_status::{patches, StatusPatch};
use ferry_core::k8s::objects::ClusterState;
use kube::api::{Patch, PatchParams};
use kube::Api;
use tokio::sync::watch;

use crate::k8s::api::Gateway;

/// Starts writing waypoint status while `leading`.
pub(crate) fn start(
    client: kube::Client,
    cluster_domain: String,
    leading: watch::Receiver<bool>,
    cluster: watch::Receiver<Arc<ClusterState>>,
    resync: Duration,
) -> tokio::task::JoinHandle<()> {
    metrics::describe_counter!("ferry_controller_gateway_status_writes_total", "Waypoint Gateway status patches, by result (ok, error)");
    tokio::spawn(run(client, cluster_domain, leading, cluster, resync))
}

async fn run(
    client: kube::Client,
    domain: String,
    mut leading: watch::Receiver<bool>,
    mut cluster: watch::Receiver<Arc<ClusterState>>,
    resync: Duration,
) {
    let mut written = Written::default();
    let mut next_resync = tokio::time::Instant::now() + resync;
    loop {
        if *leading.borrow_and_update() {
            let state = cluster.borrow_and_update().clone();
            let now = ferry_core::timefmt::rfc3339(SystemTime::now());
            for (p, key, print) in unwritten(patches(&state, &domain, &now), &written) {
                if !*leading.borrow() {
                    break;
                }
                if write(&client, p).await {
                    written.insert(key, print);
                }
            }
        } else {
            written.clear();
        }
        tokio::select! {
            r = leading.changed() => if r.is_err() { return },
            r = cluster.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(next_resync) => {
                written.clear();
                next_resync = tokio::time::Instant::now() + resync;
            }
        }
    }
}

/// The status last written per Gateway (namespace, name), as [`fingerprint`]s.
type Written = HashMap<(String, String), serde_json::Value>;

/// The patches whose status this replica has not already written, with their memo entries.
fn unwritten(all: Vec<StatusPatch>, written: &Written) -> Vec<(StatusPatch, (String, String), serde_json::Value)> {
    all.into_iter()
        .map(|p| {
            let key = (p.namespace.clone(), p.name.clone());
            let print = fingerprint(&p.patch);
            (p, key, print)
        })
        .filter(|(_, key, print)| written.get(key) != Some(print))
        .collect()
}

/// A patch without its transition times: a round on a stale view computes a new time for a
/// condition it does not yet see, yet it is the same status.
fn fingerprint(patch: &serde_json::Value) -> serde_json::Value {
    let mut p = patch.clone();
    if let Some(conditions) = p.pointer_mut("/status/conditions").and_then(serde_json::Value::as_array_mut) {
        for c in conditions.iter_mut().filter_map(serde_json::Value::as_object_mut) {
            c.remove("lastTransitionTime");
        }
    }
    p
}

/// Writes one patch; whether the API took it.
async fn write(client: &kube::Client, p: StatusPatch) -> bool {
    let api: Api<Gateway> = Api::namespaced(client.clone(), &p.namespace);
    let programmed = p.patch.pointer("/status/conditions/1/status").and_then(|s| s.as_str()).unwrap_or("?").to_string();
    match api.patch_status(&p.name, &PatchParams::default(), &Patch::Merge(&p.patch)).await {
        Ok(_) => {
            metrics::counter!("ferry_controller_gateway_status_writes_total", "result" => "ok").increment(1);
            tracing::info!(gateway = %format!("{}/{}", p.namespace, p.name), programmed = %programmed, "waypoint Gateway status written");
            true
        }
        Err(e) => {
            metrics::counter!("ferry_controller_gateway_status_writes_total", "result" => "error").increment(1);
            tracing::warn!(gateway = %format!("{}/{}", p.namespace, p.name), error = %e, "cannot write the waypoint Gateway's status; retrying on the next round");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::k8s::manifests::parse_documents;

    const GW: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n";
    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: waypoint-1, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}\nstatus: {phase: Running, podIP: 198.18.1.30}\n";

    #[test]
    fn a_round_on_a_view_older_than_its_own_write_writes_nothing() {
        let fresh = parse_documents(&[GW, POD].join("---\n"), "t").unwrap();
        let mut written = Written::default();
        let first = unwritten(patches(&fresh, "cluster.local", "2026-12-03T08:00:00Z"), &written);
        assert_eq!(first.len(), 1);
        let (_, key, print) = first.into_iter().next().unwrap();
        written.insert(key, print);
        // The watch delivered the pod before the Gateway's own earlier write (Programmed
        // False): the round computes Programmed True again, with a new transition time.
        let stale_gw = format!("{GW}status: {{conditions: [{{type: Programmed, status: \"False\", reason: NoResources, message: m}}]}}\n");
        let stale = parse_documents(&[stale_gw.as_str(), POD].join("---\n"), "t").unwrap();
        let again = patches(&stale, "cluster.local", "2026-12-03T08:00:05Z");
        assert_eq!(again.len(), 1, "the pure core sees a difference");
        assert!(unwritten(again, &written).is_empty(), "but it is what was just written");
        // After a resync clears the memory, a status that still differs is written again.
        assert_eq!(unwritten(patches(&stale, "cluster.local", "now"), &Written::default()).len(), 1);
    }
}
