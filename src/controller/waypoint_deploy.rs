//! Deploys waypoints as istiod's deployer does: for every waypoint Gateway, the leader
//! server-side applies (field manager `ferry-controller`, forced) the ServiceAccount,
//! Deployment and Service the pure `ferry_core::k8s::waypoint_deploy` derives from the watched
//! state. Level-triggered like the Gateway status writer: on every leadership or state change
//! and every resync period, while this replica leads; a failed apply is retried next round.
//!
//! Nothing here deletes: every object has an owner reference to its Gateway, so Kubernetes'
//! garbage collector removes them with it. What was applied is remembered, so an unchanged
//! object is not applied again on every state change (the applies themselves come back
//! through the watch); the memory is cleared every resync period, so an object someone else
//! changed or deleted is put back then.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::k8s::objects::ClusterState;
use ferry_core::k8s::waypoint_deploy::{is_quantity, own_image, plan, DeployKind, DeploySettings, Desired};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::Value;
use tokio::sync::watch;

/// The server-side apply field manager of every object the controller writes.
const FIELD_MANAGER: &str = "ferry-controller";
/// The controller Deployment's container (manifests/controller): whose image waypoints run.
const OWN_CONTAINER: &str = "controller";

#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Waypoint deployment")]
pub struct WaypointDeployArgs {
    /// Whether the leader creates a ServiceAccount, Deployment and Service for every waypoint
    /// Gateway (class istio-waypoint, listener mesh/15008/HBONE), as istiod does; each is owned
    /// by its Gateway and deleted with it by Kubernetes. `false`: waypoints are deployed by hand.
    #[arg(long, env = "FERRY_DEPLOY_WAYPOINTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub deploy_waypoints: bool,
    /// The image waypoint pods run [default: the controller's own, read from its pod
    /// (POD_NAMESPACE/POD_NAME, container `controller`); nothing is deployed while neither is known].
    #[arg(long, env = "FERRY_WAYPOINT_IMAGE")]
    pub waypoint_image: Option<String>,
    #[arg(long, env = "FERRY_WAYPOINT_IMAGE_PULL_POLICY", default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub waypoint_image_pull_policy: String,
    /// The waypoints' XDS_ADDRESS and CA_ADDRESS: this controller's Service (a name on
    /// --serving-names).
    #[arg(long, env = "FERRY_WAYPOINT_CONTROLLER_ADDRESS", default_value = "https://ferry-controller.istio-system.svc:15012")]
    pub waypoint_controller_address: String,
    #[arg(long, env = "FERRY_WAYPOINT_CPU_REQUEST", value_parser = quantity, default_value = "100m")]
    pub waypoint_cpu_request: String,
    #[arg(long, env = "FERRY_WAYPOINT_MEMORY_REQUEST", value_parser = quantity, default_value = "128Mi")]
    pub waypoint_memory_request: String,
    #[arg(long, env = "FERRY_WAYPOINT_MEMORY_LIMIT", value_parser = quantity, default_value = "1Gi")]
    pub waypoint_memory_limit: String,
}

/// A resource quantity flag, refused at start when the API would refuse every apply.
fn quantity(q: &str) -> Result<String, String> {
    match is_quantity(q) {
        true => Ok(q.to_string()),
        false => Err(format!("{q:?} is not a Kubernetes quantity (e.g. 100m, 0.5, 128Mi, 1Gi)")),
    }
}

/// What the deployer needs besides the API and the state.
pub(crate) struct Config {
    /// The settings; `image` empty when it comes from the controller's own pod.
    pub(crate) settings: DeploySettings,
    /// Where the controller's own pod is: (namespace, name).
    pub(crate) own_pod: (String, String),
}

impl Config {
    pub(crate) fn new(a: &WaypointDeployArgs, cluster_domain: &str, trust_domain: &str, own_pod: (String, String)) -> Config {
        let settings = DeploySettings {
            image: a.waypoint_image.clone().unwrap_or_default(),
            image_pull_policy: a.waypoint_image_pull_policy.clone(),
            xds_address: a.waypoint_controller_address.clone(),
            ca_address: a.waypoint_controller_address.clone(),
            cluster_domain: cluster_domain.into(),
            trust_domain: trust_domain.into(),
            cpu_request: a.waypoint_cpu_request.clone(),
            memory_request: a.waypoint_memory_request.clone(),
            memory_limit: a.waypoint_memory_limit.clone(),
        };
        Config { settings, own_pod }
    }
}

#[derive(Debug, thiserror::Error)]
enum DeployError {
    #[error("no image for waypoint pods: the controller's own pod {0} is not in the watched state (or has no container `controller`); set --waypoint-image / FERRY_WAYPOINT_IMAGE")]
    NoImage(String),
}

/// Starts deploying waypoints while `leading`.
pub(crate) fn start(
    client: kube::Client,
    config: Config,
    leading: watch::Receiver<bool>,
    cluster: watch::Receiver<Arc<ClusterState>>,
    resync: Duration,
) -> tokio::task::JoinHandle<()> {
    metrics::describe_counter!(
        "ferry_controller_waypoint_deploy_writes_total",
        "Server-side applies of waypoint ServiceAccounts, Deployments and Services, by kind and result (ok, error)"
    );
    tokio::spawn(run(client, config, leading, cluster, resync))
}

async fn run(
    client: kube::Client,
    config: Config,
    mut leading: watch::Receiver<bool>,
    mut cluster: watch::Receiver<Arc<ClusterState>>,
    resync: Duration,
) {
    let mut applied = Applied::default();
    let mut said = Vec::new();
    let mut next_resync = tokio::time::Instant::now() + resync;
    loop {
        if *leading.borrow_and_update() {
            let state = cluster.borrow_and_update().clone();
            let (todo, notes) = unapplied(&state, &config, &applied);
            log_new(&mut said, notes);
            for d in todo {
                if !*leading.borrow() {
                    break;
                }
                if apply(&client, &d).await {
                    applied.insert(key(&d), d.object);
                }
            }
        } else {
            applied.clear();
        }
        tokio::select! {
            r = leading.changed() => if r.is_err() { return },
            r = cluster.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(next_resync) => {
                applied.clear();
                next_resync = tokio::time::Instant::now() + resync;
            }
        }
    }
}

/// The object last applied, per (kind, namespace, name).
type Applied = HashMap<(DeployKind, String, String), Value>;

fn key(d: &Desired) -> (DeployKind, String, String) {
    (d.kind, d.namespace.clone(), d.name.clone())
}

/// The objects to apply this round (those not already applied as they are), and why any
/// waypoint Gateway gets nothing.
fn unapplied(state: &ClusterState, config: &Config, applied: &Applied) -> (Vec<Desired>, Vec<String>) {
    let mut settings = config.settings.clone();
    if settings.image.is_empty() {
        let (ns, pod) = &config.own_pod;
        settings.image = own_image(state, ns, pod, OWN_CONTAINER).unwrap_or_default();
    }
    let p = plan(state, &settings);
    let mut notes: Vec<String> = p.skipped.iter().map(ToString::to_string).collect();
    if settings.image.is_empty() {
        if !p.objects.is_empty() {
            let (ns, pod) = &config.own_pod;
            notes.push(DeployError::NoImage(format!("{ns}/{pod}")).to_string());
        }
        return (Vec::new(), notes);
    }
    let todo = p.objects.into_iter().filter(|d| applied.get(&key(d)) != Some(&d.object)).collect();
    (todo, notes)
}

/// Logs each reason once, when it first appears (rounds run on every state change).
fn log_new(said: &mut Vec<String>, notes: Vec<String>) {
    for n in notes.iter().filter(|n| !said.contains(n)) {
        tracing::warn!(reason = %n, "waypoint not deployed");
    }
    *said = notes;
}

/// Applies one object; whether the API took it.
async fn apply(client: &kube::Client, d: &Desired) -> bool {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let patch = Patch::Apply(&d.object);
    let result = match d.kind {
        DeployKind::ServiceAccount => {
            Api::<ServiceAccount>::namespaced(client.clone(), &d.namespace).patch(&d.name, &params, &patch).await.map(drop)
        }
        DeployKind::Deployment => {
            Api::<Deployment>::namespaced(client.clone(), &d.namespace).patch(&d.name, &params, &patch).await.map(drop)
        }
        DeployKind::Service => Api::<Service>::namespaced(client.clone(), &d.namespace).patch(&d.name, &params, &patch).await.map(drop),
    };
    let gateway = format!("{}/{}", d.namespace, d.name);
    let kind = d.kind.as_str();
    let ok = result.is_ok();
    metrics::counter!("ferry_controller_waypoint_deploy_writes_total", "kind" => kind, "result" => if ok { "ok" } else { "error" })
        .increment(1);
    match result {
        Ok(()) => tracing::info!(gateway = %gateway, kind, "waypoint object applied"),
        Err(e) => tracing::warn!(gateway = %gateway, kind, error = %e, "cannot apply the waypoint's object; retrying on the next round"),
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::k8s::manifests::parse_documents;

    const GW: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop, uid: u-1}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n";
    const OWN: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: ctl-1, namespace: istio-system}\nspec: {containers: [{name: controller, image: reg/ferry:7}]}\n";

    fn config(image: Option<&str>) -> Config {
        let args = WaypointDeployArgs {
            deploy_waypoints: true,
            waypoint_image: image.map(String::from),
            waypoint_image_pull_policy: "IfNotPresent".into(),
            waypoint_controller_address: "https://ferry-controller.istio-system.svc:15012".into(),
            waypoint_cpu_request: "100m".into(),
            waypoint_memory_request: "128Mi".into(),
            waypoint_memory_limit: "1Gi".into(),
        };
        Config::new(&args, "cluster.local", "cluster.local", ("istio-system".into(), "ctl-1".into()))
    }

    fn image_of(todo: &[Desired]) -> &str {
        let d = todo.iter().find(|d| d.kind == DeployKind::Deployment).unwrap();
        d.object.pointer("/spec/template/spec/containers/0/image").and_then(Value::as_str).unwrap()
    }

    #[test]
    fn the_image_is_the_flag_else_the_controllers_own_else_nothing_is_applied() {
        let state = parse_documents(&[GW, OWN].join("---\n"), "t").unwrap();
        let (todo, notes) = unapplied(&state, &config(Some("reg/waypoint:1")), &Applied::default());
        assert_eq!((image_of(&todo), notes.len()), ("reg/waypoint:1", 0));
        let (todo, _) = unapplied(&state, &config(None), &Applied::default());
        assert_eq!(image_of(&todo), "reg/ferry:7");

        let alone = parse_documents(GW, "t").unwrap();
        let (todo, notes) = unapplied(&alone, &config(None), &Applied::default());
        assert!(todo.is_empty());
        assert!(notes[0].contains("istio-system/ctl-1") && notes[0].contains("FERRY_WAYPOINT_IMAGE"), "{notes:?}");
    }

    #[test]
    fn what_was_applied_is_not_applied_again_until_it_changes() {
        let state = parse_documents(&[GW, OWN].join("---\n"), "t").unwrap();
        let mut applied = Applied::default();
        let (todo, _) = unapplied(&state, &config(None), &applied);
        assert_eq!(todo.len(), 3);
        for d in todo {
            applied.insert(key(&d), d.object);
        }
        assert!(unapplied(&state, &config(None), &applied).0.is_empty());
        // A new image changes the Deployment only.
        let (todo, _) = unapplied(&state, &config(Some("reg/ferry:8")), &applied);
        assert_eq!(todo.iter().map(|d| d.kind).collect::<Vec<_>>(), [DeployKind::Deployment]);
    }
}
