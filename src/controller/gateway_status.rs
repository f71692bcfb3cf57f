//! Writes waypoint Gateways' status as istiod does (`Accepted`, `Programmed`, the address),
//! computed by the pure `ferry_core::k8s::gateway_status` from the watched state. Level-
//! triggered like the root certificate's publication: on every leadership or state change and
//! every resync period, while this replica leads, each Gateway whose status differs gets one
//! merge patch of `gateways/status`; a failed patch is retried on the next round.

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
    loop {
        if *leading.borrow_and_update() {
            let state = cluster.borrow_and_update().clone();
            let now = ferry_core::timefmt::rfc3339(SystemTime::now());
            for p in patches(&state, &domain, &now) {
                if !*leading.borrow() {
                    break;
                }
                write(&client, p).await;
            }
        }
        tokio::select! {
            r = leading.changed() => if r.is_err() { return },
            r = cluster.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(resync) => {}
        }
    }
}

async fn write(client: &kube::Client, p: StatusPatch) {
    let api: Api<Gateway> = Api::namespaced(client.clone(), &p.namespace);
    let programmed = p.patch.pointer("/status/conditions/1/status").and_then(|s| s.as_str()).unwrap_or("?").to_string();
    match api.patch_status(&p.name, &PatchParams::default(), &Patch::Merge(&p.patch)).await {
        Ok(_) => {
            metrics::counter!("ferry_controller_gateway_status_writes_total", "result" => "ok").increment(1);
            tracing::info!(gateway = %format!("{}/{}", p.namespace, p.name), programmed = %programmed, "waypoint Gateway status written");
        }
        Err(e) => {
            metrics::counter!("ferry_controller_gateway_status_writes_total", "result" => "error").increment(1);
            tracing::warn!(gateway = %format!("{}/{}", p.namespace, p.name), error = %e, "cannot write the waypoint Gateway's status; retrying on the next round");
        }
    }
}
