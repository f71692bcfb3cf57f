//! Waypoints as Istio declares them (waypoint-and-k8s.md §1.1): a Gateway API `Gateway` of class
//! `istio-waypoint` with a `mesh` listener (15008, HBONE), and the `istio.io/use-waypoint`
//! labels on Namespaces, Services and Pods that enroll them. Pure: the one resolution of a
//! Service's or a Pod's waypoint, for every source of cluster state.
//!
//! Where ferry differs from istiod: a binding to a waypoint that does not exist or has no
//! running pod is still advertised (so the node proxies refuse the traffic instead of silently
//! skipping the waypoint's policy), unless [`WaypointUnavailable::Direct`] restores istiod's
//! behaviour of omitting it.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::objects::{ClusterState, ObjectMeta, Pod, Service};
use crate::model::{GatewayAddress, GatewayDestination};

pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// On a waypoint's own Service (istiod's deployment controller sets it).
pub const MANAGED: &str = "gateway.istio.io/managed";
pub const MANAGED_MESH: &str = "istio.io-mesh-controller";
/// On every pod of a Gateway's deployment.
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
/// The HBONE port of every waypoint (istiod hard-codes it too).
pub const WAYPOINT_HBONE_PORT: u16 = 15008;

/// What to advertise when an enrolled object's waypoint is missing or has no running pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WaypointUnavailable {
    /// Advertise the waypoint anyway: node proxies refuse the traffic until it is running.
    #[default]
    Refuse,
    /// Omit it, as istiod does: traffic goes directly to the destination, without the
    /// waypoint's (L7) policy.
    Direct,
}

impl std::str::FromStr for WaypointUnavailable {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "refuse" => Ok(WaypointUnavailable::Refuse),
            "direct" => Ok(WaypointUnavailable::Direct),
            other => Err(format!("{other:?} is not refuse or direct")),
        }
    }
}

/// Which original addressing a waypoint handles (`istio.io/waypoint-for`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficType {
    Service,
    Workload,
    All,
    None,
}

impl TrafficType {
    fn parse(v: Option<&str>) -> Result<TrafficType, String> {
        match v {
            None | Some("service") => Ok(TrafficType::Service),
            Some("workload") => Ok(TrafficType::Workload),
            Some("all") => Ok(TrafficType::All),
            Some("none") => Ok(TrafficType::None),
            Some(other) => Err(format!("{WAYPOINT_FOR}={other:?} is not service, workload, all or none")),
        }
    }

    fn serves_services(self) -> bool {
        matches!(self, TrafficType::Service | TrafficType::All)
    }

    fn serves_workloads(self) -> bool {
        matches!(self, TrafficType::Workload | TrafficType::All)
    }
}

/// Which namespaces may use a waypoint from another namespace (the `mesh` listener's
/// `allowedRoutes.namespaces.from`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum AllowedFrom {
    Same,
    All,
    /// Refused: ferry does not evaluate label selectors on namespaces here (yet).
    Selector,
    Invalid(String),
}

/// A declared waypoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waypoint {
    pub namespace: String,
    pub name: String,
    traffic: Result<TrafficType, String>,
    allowed: AllowedFrom,
    /// A pod of the waypoint's deployment is running with an address.
    ready: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Gateway {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: GatewaySpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GatewaySpec {
    #[serde(default)]
    gateway_class_name: String,
    #[serde(default)]
    listeners: Vec<Listener>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Listener {
    #[serde(default)]
    name: String,
    #[serde(default)]
    port: u32,
    #[serde(default)]
    protocol: String,
    #[serde(default)]
    allowed_routes: Option<serde_json::Value>,
}

/// Every declared waypoint, by `namespace/name`, plus what could not be read.
#[derive(Clone, Debug, Default)]
pub struct Waypoints {
    by_key: BTreeMap<String, Waypoint>,
    /// Gateways of the waypoint class that are not valid waypoints, with why.
    pub invalid: Vec<String>,
}

impl Waypoints {
    /// Reads the Gateways in `c` (kept raw under `Gateway/...`) and their pods' readiness.
    pub fn declared(c: &ClusterState) -> Waypoints {
        let mut out = Waypoints::default();
        for v in c.other.iter().filter(|(k, _)| k.starts_with("Gateway/")).map(|(_, v)| v) {
            let Ok(mut gw) = serde_json::from_value::<Gateway>(v.clone()) else {
                let name = v.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("?");
                out.invalid.push(format!("Gateway {name}: not a readable Gateway; it is not a waypoint"));
                continue;
            };
            if gw.spec.gateway_class_name != WAYPOINT_CLASS {
                continue;
            }
            if gw.metadata.namespace.is_empty() {
                gw.metadata.namespace = "default".into();
            }
            let key = format!("{}/{}", gw.metadata.namespace, gw.metadata.name);
            let Some(mesh) = gw.spec.listeners.iter().find(|l| l.name == "mesh" && l.port == 15008 && l.protocol == "HBONE") else {
                out.invalid.push(format!("Gateway {key}: no listener {{name: mesh, port: 15008, protocol: HBONE}}; it is not a waypoint"));
                continue;
            };
            let wp = Waypoint {
                traffic: TrafficType::parse(gw.metadata.labels.get(WAYPOINT_FOR).map(String::as_str)),
                allowed: allowed_from(mesh.allowed_routes.as_ref()),
                ready: has_running_pod(c, &gw.metadata.namespace, &gw.metadata.name),
                namespace: gw.metadata.namespace,
                name: gw.metadata.name,
            };
            out.by_key.insert(key, wp);
        }
        out
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&Waypoint> {
        self.by_key.get(&format!("{namespace}/{name}"))
    }
}

fn allowed_from(routes: Option<&serde_json::Value>) -> AllowedFrom {
    match routes.and_then(|r| r.pointer("/namespaces/from")).map(|f| f.as_str()) {
        None => AllowedFrom::Same,
        Some(Some("Same")) => AllowedFrom::Same,
        Some(Some("All")) => AllowedFrom::All,
        Some(Some("Selector")) => AllowedFrom::Selector,
        Some(other) => AllowedFrom::Invalid(format!("allowedRoutes.namespaces.from {other:?} is not Same, All or Selector")),
    }
}

/// A pod of the waypoint's deployment (labelled with its Gateway's name) is running and has an
/// address: what istiod's status gate waits for.
pub(crate) fn has_running_pod(c: &ClusterState, namespace: &str, name: &str) -> bool {
    c.pods.values().any(|p| {
        p.metadata.namespace == namespace
            && p.metadata.labels.get(GATEWAY_NAME).is_some_and(|g| g == name)
            && matches!(p.status.phase.as_str(), "" | "Running")
            && !p.ips().is_empty()
    })
}

/// The outcome of resolving one object's waypoint: the address to advertise (if any) and, when
/// the binding is not what its labels ask for, why (for the operator's log).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct Resolution {
    pub(crate) address: Option<GatewayAddress>,
    pub(crate) note: Option<String>,
}

/// What the resolution needs besides the object.
pub(crate) struct Context<'a> {
    pub(crate) cluster: &'a ClusterState,
    pub(crate) waypoints: &'a Waypoints,
    pub(crate) cluster_domain: &'a str,
    pub(crate) unavailable: WaypointUnavailable,
}

/// The waypoint of a Service (only `service`/`all` waypoints; never a waypoint's own Service).
pub(crate) fn for_service(cx: &Context<'_>, s: &Service) -> Resolution {
    let is_waypoint = s.metadata.labels.get(MANAGED).is_some_and(|v| v == MANAGED_MESH) || s.spec.selector.contains_key(GATEWAY_NAME);
    if is_waypoint {
        return Resolution::default();
    }
    resolve(cx, &s.metadata, "Service", TrafficType::serves_services)
}

/// The waypoint of a Pod (only `workload`/`all` waypoints; never a waypoint's own pod).
pub(crate) fn for_pod(cx: &Context<'_>, p: &Pod) -> Resolution {
    if p.metadata.labels.contains_key(GATEWAY_NAME) {
        return Resolution::default();
    }
    resolve(cx, &p.metadata, "Pod", TrafficType::serves_workloads)
}

/// The object's label wins over its namespace's; `none` opts out. The waypoint's namespace is
/// the object's unless the level that named the waypoint also sets `use-waypoint-namespace`.
fn binding<'a>(cx: &'a Context<'_>, meta: &'a ObjectMeta) -> Option<(&'a str, &'a str, bool)> {
    let ns_labels = cx.cluster.namespace(&meta.namespace).map(|n| &n.metadata.labels);
    let (labels, inherited) = match meta.labels.get(USE_WAYPOINT) {
        Some(_) => (&meta.labels, false),
        None => (ns_labels?, true),
    };
    let name = labels.get(USE_WAYPOINT).map(String::as_str).filter(|n| !n.is_empty() && *n != "none")?;
    let ns = labels.get(USE_WAYPOINT_NAMESPACE).map(String::as_str).filter(|n| !n.is_empty()).unwrap_or(&meta.namespace);
    Some((ns, name, inherited))
}

fn resolve(cx: &Context<'_>, meta: &ObjectMeta, kind: &str, serves: fn(TrafficType) -> bool) -> Resolution {
    let Some((ns, name, inherited)) = binding(cx, meta) else { return Resolution::default() };
    let who = format!("{kind} {}/{}", meta.namespace, meta.name);
    let address = GatewayAddress {
        destination: GatewayDestination::Hostname { namespace: ns.to_string(), hostname: format!("{name}.{ns}.svc.{}", cx.cluster_domain) },
        hbone_mtls_port: WAYPOINT_HBONE_PORT,
    };
    let unavailable = |why: String| {
        match cx.unavailable {
        WaypointUnavailable::Refuse => Resolution {
            address: Some(address.clone()),
            note: Some(format!("{who} uses waypoint {ns}/{name}, which {why}; its traffic is refused until the waypoint runs (or set --waypoint-unavailable=direct to send it direct, without the waypoint's policy)")),
        },
        WaypointUnavailable::Direct => Resolution {
            address: None,
            note: Some(format!("{who} uses waypoint {ns}/{name}, which {why}; its traffic goes direct, without the waypoint's policy (--waypoint-unavailable=direct)")),
        },
    }
    };
    let Some(wp) = cx.waypoints.get(ns, name) else {
        return unavailable(format!("does not exist (no Gateway {ns}/{name} of class {WAYPOINT_CLASS} with a mesh listener)"));
    };
    let ignored = |why: String| Resolution { address: None, note: Some(format!("{who}: waypoint {ns}/{name} not used: {why}")) };
    match &wp.traffic {
        Err(e) => return ignored(e.clone()),
        // A namespace-wide binding that does not apply to this kind is normal, not a problem.
        Ok(t) if !serves(*t) && inherited => return Resolution::default(),
        Ok(t) => {
            if !serves(*t) {
                return ignored(format!("it is {WAYPOINT_FOR}={}, which does not serve a {kind}", traffic_name(*t)));
            }
        }
    }
    if ns != meta.namespace {
        match &wp.allowed {
            AllowedFrom::All => {}
            AllowedFrom::Same => {
                return ignored(format!("its mesh listener admits only its own namespace ({ns}); set allowedRoutes.namespaces.from: All"))
            }
            AllowedFrom::Selector => return ignored("allowedRoutes.namespaces.from: Selector is not supported by ferry; use All".into()),
            AllowedFrom::Invalid(e) => return ignored(e.clone()),
        }
    }
    if !wp.ready {
        return unavailable(format!("has no running pod (labelled {GATEWAY_NAME}={name})"));
    }
    Resolution { address: Some(address), note: None }
}

fn traffic_name(t: TrafficType) -> &'static str {
    match t {
        TrafficType::Service => "service",
        TrafficType::Workload => "workload",
        TrafficType::All => "all",
        TrafficType::None => "none",
    }
}

#[cfg(test)]
#[path = "waypoint_tests.rs"]
mod tests;
