//! The objects a waypoint Gateway needs to run, as istiod's deployer creates them
//! (waypoint-and-k8s.md §1.2): a ServiceAccount, a Deployment of `ferry waypoint` and a Service,
//! each named after the Gateway, in its namespace. Pure: the controller's leader server-side
//! applies what this returns and compares it with what it last applied.
//!
//! Invariants: only a Gateway of class `istio-waypoint` with the mesh listener, a uid and a
//! name that can name a Service gets objects, and none while a Service or ServiceAccount of
//! its name exists that ferry did not create; every object carries an owner reference to its
//! Gateway (so Kubernetes' garbage collector deletes it with the Gateway, nothing here deletes);
//! the same state gives the same objects, byte for byte, so an unchanged Gateway is never
//! re-applied; the waypoint pod is never captured (`istio.io/dataplane-mode: none`).

use serde_json::{json, Map, Value};

use super::gateway_status::has_mesh_listener;
use super::objects::ClusterState;
use super::waypoint::{GATEWAY_NAME, MANAGED, MANAGED_MESH, WAYPOINT_CLASS, WAYPOINT_HBONE_PORT};

/// Says which objects ferry's controller created (and may overwrite).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_FERRY: &str = "ferry-controller";
/// The Gateway's class, on its objects (as istiod labels them).
pub const GATEWAY_CLASS_NAME: &str = "gateway.networking.k8s.io/gateway-class-name";
/// The pod's grace period; the waypoint's drain deadline derives from the same number
/// (TERMINATION_GRACE_PERIOD_SECONDS: grace - 5 s), so connections finish before the kill.
pub const GRACE_SECONDS: u32 = 30;
/// The audience `ferry controller` and istiod require of a caller's token.
const TOKEN_AUDIENCE: &str = "istio-ca";
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
const ROOT_DIR: &str = "/var/run/secrets/istio";
/// The UID of the image's user (Dockerfile `USER`), which the controller runs as too.
const RUN_AS: u32 = 65532;

/// What every generated Deployment shares, from the controller's flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploySettings {
    pub image: String,
    pub image_pull_policy: String,
    /// Where the waypoint gets WDS (and, later, its policies): the controller's xDS URL.
    pub xds_address: String,
    /// Where the waypoint gets its certificate: the controller's CA URL.
    pub ca_address: String,
    pub cluster_domain: String,
    pub trust_domain: String,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
}

/// The kinds applied, in the order they are applied: the ServiceAccount before the pods
/// that run as it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeployKind {
    ServiceAccount,
    Deployment,
    Service,
}

impl DeployKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployKind::ServiceAccount => "ServiceAccount",
            DeployKind::Deployment => "Deployment",
            DeployKind::Service => "Service",
        }
    }
}

/// One object to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub kind: DeployKind,
    pub namespace: String,
    pub name: String,
    /// The whole object, apiVersion and kind included, as server-side apply takes it.
    pub object: Value,
}

/// Why a waypoint-class Gateway gets nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WaypointDeployError {
    #[error("waypoint Gateway {gateway} has no metadata.uid (it was not read from the Kubernetes API), so no owner reference can name it: nothing is deployed for it")]
    NoUid { gateway: String },
    #[error("waypoint Gateway {gateway} has no listener {{name: mesh, port: 15008, protocol: HBONE}}: nothing is deployed for it until it has one")]
    NoMeshListener { gateway: String },
    #[error("waypoint Gateway {gateway}: a {kind} of that name exists that ferry did not create (no label app.kubernetes.io/managed-by: ferry-controller); nothing is deployed for it, so a hand-made or another controller's waypoint is never overwritten: delete that {kind}, or set --deploy-waypoints=false")]
    NotOurs { gateway: String, kind: &'static str },
    #[error("waypoint Gateway {gateway}: its name must be a DNS-1035 label (at most 63 lowercase letters, digits or '-', starting with a letter, not ending with '-') to name its Service; nothing is deployed for it, rename the Gateway")]
    BadName { gateway: String },
}

/// What the waypoint Gateways in a state need.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub objects: Vec<Desired>,
    pub skipped: Vec<WaypointDeployError>,
}

/// The objects every waypoint Gateway in `c` needs, and the waypoint Gateways that get none.
pub fn plan(c: &ClusterState, s: &DeploySettings) -> Plan {
    let mut out = Plan::default();
    let gateways = c.other.iter().filter(|(k, _)| k.starts_with("Gateway/")).map(|(_, v)| v);
    for g in gateways.filter(|g| g.pointer("/spec/gatewayClassName").and_then(Value::as_str) == Some(WAYPOINT_CLASS)) {
        match for_gateway(c, g, s) {
            Ok(objects) => out.objects.extend(objects),
            Err(e) => out.skipped.push(e),
        }
    }
    out
}

/// Whether `q` is a Kubernetes resource quantity in the forms requests and limits use
/// (`100m`, `0.5`, `128Mi`, `1G`, `2e3`): checked when the controller starts, so a typo fails
/// there instead of in every apply.
pub fn is_quantity(q: &str) -> bool {
    const SUFFIXES: &[&str] = &["", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let digits_end = q.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(q.len());
    let (number, suffix) = q.split_at(digits_end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let exponent = suffix.strip_prefix(['e', 'E']).map(|e| e.strip_prefix(['+', '-']).unwrap_or(e));
    let suffix_ok = match exponent {
        Some(e) => !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()),
        None => SUFFIXES.contains(&suffix),
    };
    number_ok && suffix_ok && q.len() <= 32
}

/// The image of a running pod's container `container` (else of its only container): the
/// controller's own, read from its pod, so the waypoints run the release the controller does
/// and follow an image override (`kustomize edit set image`) without a second setting.
pub fn own_image(c: &ClusterState, namespace: &str, pod: &str, container: &str) -> Option<String> {
    let containers = &c.pod(namespace, pod)?.spec.containers;
    let only = if containers.len() == 1 { containers.first() } else { None };
    let chosen = containers.iter().find(|k| k.name == container).or(only)?;
    Some(chosen.image.clone()).filter(|i| !i.is_empty())
}

/// The Gateway's identity as its objects need it.
struct Owner<'a> {
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
    g: &'a Value,
}

fn for_gateway(c: &ClusterState, g: &Value, s: &DeploySettings) -> Result<[Desired; 3], WaypointDeployError> {
    let name = g.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let namespace = g.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default");
    let gateway = format!("{namespace}/{name}");
    if !is_dns1035_label(name) {
        return Err(WaypointDeployError::BadName { gateway });
    }
    if !has_mesh_listener(g) {
        return Err(WaypointDeployError::NoMeshListener { gateway });
    }
    let uid = g.pointer("/metadata/uid").and_then(Value::as_str).filter(|u| !u.is_empty());
    let uid = uid.ok_or_else(|| WaypointDeployError::NoUid { gateway: gateway.clone() })?;
    // Only the kinds the controller watches can be checked; the Deployment cannot.
    let foreign =
        |labels: &std::collections::BTreeMap<String, String>| labels.get(MANAGED_BY).map(String::as_str) != Some(MANAGED_BY_FERRY);
    let key = format!("{namespace}/{name}");
    if c.services.get(&key).is_some_and(|o| foreign(&o.metadata.labels)) {
        return Err(WaypointDeployError::NotOurs { gateway, kind: "Service" });
    }
    if c.service_accounts.get(&key).is_some_and(|o| foreign(&o.metadata.labels)) {
        return Err(WaypointDeployError::NotOurs { gateway, kind: "ServiceAccount" });
    }
    let o = Owner { namespace, name, uid, g };
    let desired = |kind: DeployKind, object: Value| Desired { kind, namespace: namespace.into(), name: name.into(), object };
    Ok([
        desired(DeployKind::ServiceAccount, service_account(&o)),
        desired(DeployKind::Deployment, deployment(&o, s)),
        desired(DeployKind::Service, service(&o)),
    ])
}

/// What a Service's name must be (the strictest of the three kinds' name rules).
fn is_dns1035_label(n: &str) -> bool {
    let b = n.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    (1..=63).contains(&b.len()) && b[0].is_ascii_lowercase() && b.iter().all(inner) && b[b.len() - 1] != b'-'
}

/// The labels on every object: the Gateway's infrastructure labels, then ours, which win.
fn labels(o: &Owner) -> Value {
    let mut l = infrastructure(o.g, "labels");
    l.insert(GATEWAY_NAME.into(), json!(o.name));
    l.insert(GATEWAY_CLASS_NAME.into(), json!(WAYPOINT_CLASS));
    l.insert(MANAGED.into(), json!(MANAGED_MESH));
    l.insert(MANAGED_BY.into(), json!(MANAGED_BY_FERRY));
    Value::Object(l)
}

/// `spec.infrastructure.<field>` of the Gateway, string values only (the API validates the
/// rest; anything else is not copied).
fn infrastructure(g: &Value, field: &str) -> Map<String, Value> {
    let from = g.pointer(&format!("/spec/infrastructure/{field}")).and_then(Value::as_object);
    from.into_iter().flatten().filter(|(_, v)| v.is_string()).map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn metadata(o: &Owner) -> Value {
    let mut m = json!({
        "name": o.name,
        "namespace": o.namespace,
        "labels": labels(o),
        // No blockOwnerDeletion, as istiod: it would need `update` on gateways/finalizers.
        "ownerReferences": [{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": o.name,
                             "uid": o.uid, "controller": true}],
    });
    let annotations = infrastructure(o.g, "annotations");
    if !annotations.is_empty() {
        m["annotations"] = Value::Object(annotations);
    }
    m
}

fn service_account(o: &Owner) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(o)})
}

fn service(o: &Owner) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(o),
        "spec": {
            "type": "ClusterIP",
            "ipFamilyPolicy": "PreferDualStack",
            "selector": {GATEWAY_NAME: o.name},
            "ports": [{"name": "mesh", "port": WAYPOINT_HBONE_PORT, "targetPort": WAYPOINT_HBONE_PORT,
                       "protocol": "TCP", "appProtocol": "hbone"}],
        },
    })
}

fn deployment(o: &Owner, s: &DeploySettings) -> Value {
    let mut pod_labels = labels(o);
    // Never captured: the waypoint speaks HBONE itself; captured, its traffic would loop.
    pod_labels["istio.io/dataplane-mode"] = json!("none");
    pod_labels["sidecar.istio.io/inject"] = json!("false");
    pod_labels["service.istio.io/canonical-name"] = json!(o.name);
    let mut pod_annotations = infrastructure(o.g, "annotations");
    pod_annotations.insert("prometheus.io/scrape".into(), json!("true"));
    pod_annotations.insert("prometheus.io/port".into(), json!("15020"));
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(o),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {GATEWAY_NAME: o.name}},
            // The new pod is ready before the old one drains: no gap in the waypoint.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": pod_spec(o, s),
            },
        },
    })
}

fn pod_spec(o: &Owner, s: &DeploySettings) -> Value {
    json!({
        "serviceAccountName": o.name,
        // It never calls the Kubernetes API: its only credential is the istio-ca token below.
        "automountServiceAccountToken": false,
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "securityContext": {"runAsNonRoot": true, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container(o, s)],
        "volumes": [
            {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken":
                {"audience": TOKEN_AUDIENCE, "expirationSeconds": 43200, "path": "istio-token"}}]}},
            {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}},
            {"name": "tmp", "emptyDir": {}},
        ],
    })
}

fn container(o: &Owner, s: &DeploySettings) -> Value {
    json!({
        "name": "waypoint",
        "image": s.image,
        "imagePullPolicy": s.image_pull_policy,
        "args": ["waypoint"],
        "ports": [
            {"name": "hbone", "containerPort": WAYPOINT_HBONE_PORT, "protocol": "TCP"},
            {"name": "http-metrics", "containerPort": 15020, "protocol": "TCP"},
            {"name": "http-ready", "containerPort": 15021, "protocol": "TCP"},
        ],
        "env": env(o, s),
        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 5, "failureThreshold": 3},
        "resources": {"requests": {"cpu": s.cpu_request, "memory": s.memory_request}, "limits": {"memory": s.memory_limit}},
        "securityContext": {"privileged": false, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            {"name": "istio-token", "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": "istiod-ca-cert", "mountPath": ROOT_DIR, "readOnly": true},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    })
}

/// The waypoint's environment: who it is from the downward API, the controller as for
/// `ferry proxy` (the DaemonSet's XDS/CA settings), and its listeners.
fn env(o: &Owner, s: &DeploySettings) -> Value {
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let value = |name: &str, v: &str| json!({"name": name, "value": v});
    let root = format!("{ROOT_DIR}/root-cert.pem");
    json!([
        value("GATEWAY_NAME", o.name),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("POD_NAME", "metadata.name"),
        // The identity its certificate names is the pod's own service account.
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field("INSTANCE_IPS", "status.podIPs"),
        field("NODE_NAME", "spec.nodeName"),
        value("XDS_ADDRESS", &s.xds_address),
        value("CA_ADDRESS", &s.ca_address),
        value("XDS_ROOT_CA", &root),
        value("CA_ROOT_CA", &root),
        value("AUTH_TOKEN", &format!("{TOKEN_DIR}/istio-token")),
        value("TRUST_DOMAIN", &s.trust_domain),
        value("CLUSTER_DOMAIN", &s.cluster_domain),
        value("FERRY_WAYPOINT_HBONE_ADDR", &format!("[::]:{WAYPOINT_HBONE_PORT}")),
        value("FERRY_STATS_ADDR", "[::]:15020"),
        value("FERRY_READINESS_ADDR", "[::]:15021"),
        value("TERMINATION_GRACE_PERIOD_SECONDS", &GRACE_SECONDS.to_string()),
        value("LOG_FORMAT", "json"),
    ])
}

#[cfg(test)]
#[path = "waypoint_deploy_tests.rs"]
mod tests;
