//! Kubernetes objects to the workload/service model (a pure function, reused later by the
//! control plane): each pod with an IP becomes a workload (HBONE when captured, by the same
//! decision the node agent enforces), each Service a service whose endpoints are the pods its
//! selector matches, with service ports mapped to (possibly named) target ports.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::capture::{decide, Capture, REDIRECTION_ANNOTATION, REDIRECTION_ENABLED};
use super::endpoint_slices;
use super::objects::{ClusterState, IntOrString, Pod, Service as K8sService, ServicePort};
use super::peer_auth::{self, PeerAuthn};
use super::policy::{self, TranslatedPolicy};
use super::waypoint::{self, WaypointUnavailable, Waypoints};
use crate::model::{
    AppProtocol, Authorization, HealthStatus, Locality, NetworkAddress, NetworkMode, PolicyKey, PortMap, Service, ServiceKey,
    TunnelProtocol, Workload, WorkloadType,
};
use crate::state::StateInput;

#[derive(Clone, Debug)]
pub struct TranslateOptions {
    pub trust_domain: String,
    pub cluster_id: String,
    pub cluster_domain: String,
    pub network: String,
    /// Advertise a pod as HBONE only when it carries `ambient.istio.io/redirection: enabled`,
    /// as istiod does: on a real cluster the node agent writes that annotation once the pod's
    /// redirection is installed, so the annotation (not the labels) says whether inbound
    /// traffic to the pod is captured. A captured pod without it is plain TCP. Off for the
    /// file-based simulated cluster, which has no annotation writer and where the capture
    /// decision itself is the truth.
    pub require_redirection_annotation: bool,
    /// What to advertise for an object enrolled in a waypoint that is missing or has no
    /// running pod (`ferry_core::k8s::waypoint`): refuse (the default) or go direct.
    pub waypoint_unavailable: WaypointUnavailable,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        TranslateOptions {
            trust_domain: crate::identity::DEFAULT_TRUST_DOMAIN.into(),
            cluster_id: "Kubernetes".into(),
            cluster_domain: "cluster.local".into(),
            network: String::new(),
            require_redirection_annotation: false,
            waypoint_unavailable: WaypointUnavailable::Refuse,
        }
    }
}

pub fn to_state(c: &ClusterState, o: &TranslateOptions) -> StateInput {
    translate(c, o).0
}

/// [`to_state`], with what an operator should know about the translation: waypoint bindings
/// that are refused, ignored or unavailable, and Gateways that are not valid waypoints.
pub fn translate(c: &ClusterState, o: &TranslateOptions) -> (StateInput, Vec<String>) {
    let waypoints = Waypoints::declared(c);
    let cx =
        waypoint::Context { cluster: c, waypoints: &waypoints, cluster_domain: &o.cluster_domain, unavailable: o.waypoint_unavailable };
    let mut notes = waypoints.invalid.clone();
    let mut note = |r: waypoint::Resolution| {
        notes.extend(r.note);
        r.address
    };
    let services: Vec<&K8sService> = c.services.values().collect();
    let authz: Vec<TranslatedPolicy> = objects_of(c, "AuthorizationPolicy").filter_map(policy::authorization_policy).collect();
    let peer_authns: Vec<PeerAuthn> = objects_of(c, "PeerAuthentication").map(peer_auth::parse).collect();
    let mut generated: BTreeMap<PolicyKey, Authorization> = BTreeMap::new();
    let mut workloads = Vec::new();
    let mut by_pod: BTreeMap<&str, usize> = BTreeMap::new();
    for (key, p) in &c.pods {
        let Some(mut w) = workload(c, p, &services, o) else { continue };
        by_pod.insert(key, workloads.len());
        w.waypoint = note(waypoint::for_pod(&cx, p));
        w.authorization_policies = selected(&authz, p);
        if w.protocol == TunnelProtocol::Hbone {
            if let Some(strict) = peer_auth::policy_for(&peer_authns, &p.metadata.namespace, &p.metadata.labels) {
                w.authorization_policies.push(strict.key());
                let entry = generated.entry(strict.key()).or_insert_with(|| Authorization { notes: Vec::new(), ..strict.clone() });
                for n in strict.notes {
                    if !entry.notes.contains(&n) {
                        entry.notes.push(n);
                    }
                }
            }
        }
        workloads.push(w);
    }
    slice_endpoints(c, o, &by_pod, &mut workloads);
    let services = services
        .iter()
        .map(|s| {
            let mut svc = service(s, o);
            svc.waypoint = note(waypoint::for_service(&cx, s));
            svc
        })
        .collect();
    let policies = authz.into_iter().map(|t| t.policy).chain(generated.into_values()).collect();
    (StateInput { workloads, services, policies }, notes)
}

/// The protocol a waypoint serves a Service port with, as istiod's `ConvertProtocol` reads it:
/// `appProtocol` first, else the port name; Kubernetes' standard names (`kubernetes.io/h2c`,
/// `kubernetes.io/ws`, `kubernetes.io/wss`) as themselves, a `grpc-web` prefix as gRPC (WDS has
/// no gRPC-Web: both are HTTP/2 to the upstream), else the prefix before `-` (`http-web`,
/// `grpc`). None: undeclared, served as TCP (a waypoint never sniffs).
fn app_protocol(p: &ServicePort) -> Option<AppProtocol> {
    let name = p.app_protocol.as_deref().unwrap_or(&p.name).to_ascii_lowercase();
    match name.as_str() {
        "kubernetes.io/h2c" if p.app_protocol.is_some() => return Some(AppProtocol::Http2),
        "kubernetes.io/ws" if p.app_protocol.is_some() => return Some(AppProtocol::Http11),
        "kubernetes.io/wss" if p.app_protocol.is_some() => return Some(AppProtocol::Tls),
        n if n.starts_with("grpc-web") => return Some(AppProtocol::Grpc),
        _ => {}
    }
    match name.split('-').next().unwrap_or_default() {
        "http" => Some(AppProtocol::Http11),
        "http2" => Some(AppProtocol::Http2),
        "grpc" => Some(AppProtocol::Grpc),
        "tcp" => Some(AppProtocol::Tcp),
        "tls" | "https" => Some(AppProtocol::Tls),
        _ => None,
    }
}

/// Selector-less Services' endpoints (`endpoint_slices`): a pod's workload gains the Service;
/// an address of no known pod becomes a plain-TCP workload of its own, one per slice and address.
fn slice_endpoints(c: &ClusterState, o: &TranslateOptions, by_pod: &BTreeMap<&str, usize>, workloads: &mut Vec<Workload>) {
    let mut standalone: BTreeMap<String, Workload> = BTreeMap::new();
    for ep in endpoint_slices::endpoints(c) {
        let Some(svc) = c.services.get(&ep.service) else { continue };
        let key = ServiceKey::new(&svc.metadata.namespace, &hostname(svc, o));
        if let Some(i) = ep.pod.as_deref().and_then(|p| by_pod.get(p)) {
            workloads[*i].services.insert(key, ep.ports);
            continue;
        }
        let ns = &svc.metadata.namespace;
        let (slice_ns, slice_name) = ep.slice.split_once('/').unwrap_or((ns, &ep.slice));
        let uid = format!("{}/discovery.k8s.io/EndpointSlice/{slice_ns}/{slice_name}/{}", o.cluster_id, ep.ip);
        let w = standalone.entry(uid.clone()).or_insert_with(|| {
            let mut w = Workload::new(&uid, slice_ns, slice_name);
            w.addresses = vec![ep.ip];
            w.network = o.network.clone();
            w.protocol = TunnelProtocol::None;
            w.trust_domain = o.trust_domain.clone();
            w.service_account = "default".into();
            w.cluster_id = o.cluster_id.clone();
            w.canonical_name = svc.metadata.name.clone();
            w.workload_name = svc.metadata.name.clone();
            w
        });
        w.status = if ep.ready { HealthStatus::Healthy } else { HealthStatus::Unhealthy };
        w.services.insert(key, ep.ports);
    }
    workloads.extend(standalone.into_values());
}

fn objects_of<'a>(c: &'a ClusterState, kind: &'a str) -> impl Iterator<Item = &'a serde_json::Value> {
    let prefix = format!("{kind}/");
    c.other.iter().filter(move |(k, _)| k.starts_with(&prefix)).map(|(_, v)| v)
}

/// Keys of the selector-scoped policies that select `p`: same namespace, or the root
/// namespace (mesh-wide selectors), with every selector label on the pod.
fn selected(authz: &[TranslatedPolicy], p: &Pod) -> Vec<PolicyKey> {
    authz
        .iter()
        .filter(|t| t.policy.namespace == p.metadata.namespace || t.policy.namespace == policy::ROOT_NAMESPACE)
        .filter(|t| t.selector.as_ref().is_some_and(|s| s.iter().all(|(k, v)| p.metadata.labels.get(k) == Some(v))))
        .map(|t| t.policy.key())
        .collect()
}

pub(crate) fn hostname(s: &K8sService, o: &TranslateOptions) -> String {
    format!("{}.{}.svc.{}", s.metadata.name, s.metadata.namespace, o.cluster_domain)
}

fn label<'a>(p: &'a Pod, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| p.metadata.labels.get(*k)).map(String::as_str).filter(|v| !v.is_empty())
}

fn workload(c: &ClusterState, p: &Pod, services: &[&K8sService], o: &TranslateOptions) -> Option<Workload> {
    let ips: Vec<IpAddr> = p.ips();
    if ips.is_empty() {
        return None;
    }
    let (ns, name) = (&p.metadata.namespace, &p.metadata.name);
    let mut w = Workload::new(&format!("{}//Pod/{ns}/{name}", o.cluster_id), ns, name);
    w.addresses = ips;
    w.network = o.network.clone();
    w.protocol = protocol(c, p, o);
    w.trust_domain = o.trust_domain.clone();
    w.service_account = p.service_account().to_string();
    w.node = p.spec.node_name.clone();
    w.locality = locality(c, p);
    w.cluster_id = o.cluster_id.clone();
    w.canonical_name = label(p, &["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"]).unwrap_or(name).to_string();
    w.canonical_revision =
        label(p, &["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"]).unwrap_or("latest").to_string();
    match label(p, &["app.kubernetes.io/name", "app"]) {
        Some(app) => w.workload_name = app.to_string(),
        None => {
            w.workload_name = name.clone();
            w.workload_type = WorkloadType::Pod;
        }
    }
    w.status = if matches!(p.status.phase.as_str(), "" | "Running") { HealthStatus::Healthy } else { HealthStatus::Unhealthy };
    if p.spec.host_network {
        w.network_mode = NetworkMode::HostNetwork;
    }
    for s in services.iter().filter(|s| selects(s, p)) {
        w.services.insert(ServiceKey::new(&s.metadata.namespace, &hostname(s, o)), endpoint_ports(s, p));
    }
    Some(w)
}

/// Where the pod runs, as istiod reads it: the pod's `istio-locality` label
/// (`region.zone.subzone`, dots because a label value cannot hold `/`), else its node's
/// `topology.kubernetes.io/region`, `topology.kubernetes.io/zone` and
/// `topology.istio.io/subzone` labels. Unknown (empty) when neither is there.
fn locality(c: &ClusterState, p: &Pod) -> Locality {
    if let Some(l) = label(p, &["istio-locality"]) {
        let mut parts = l.splitn(3, '.').map(str::to_string);
        let (region, zone, subzone) =
            (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        return Locality { region, zone, subzone };
    }
    let labels = c.node(&p.spec.node_name).and_then(|n| n.pointer("/metadata/labels"));
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    Locality {
        region: get("topology.kubernetes.io/region"),
        zone: get("topology.kubernetes.io/zone"),
        subzone: get("topology.istio.io/subzone"),
    }
}

/// HBONE when the pod's traffic is captured: by the capture decision, or (API mode) by the
/// node agent's annotation alone, as istiod's `IsPodAmbient` does. The annotation alone, not
/// the decision and the annotation: while a release is pending (labels changed, agent not yet
/// done) the redirection is still installed and the pod still only answers over HBONE.
fn protocol(c: &ClusterState, p: &Pod, o: &TranslateOptions) -> TunnelProtocol {
    let captured = if o.require_redirection_annotation {
        p.metadata.annotations.get(REDIRECTION_ANNOTATION).is_some_and(|v| v == REDIRECTION_ENABLED)
    } else {
        decide(c.namespace(&p.metadata.namespace), p) == Capture::Enroll
    };
    if captured {
        TunnelProtocol::Hbone
    } else {
        TunnelProtocol::None
    }
}

/// A service selects pods in its own namespace whose labels include its whole (non-empty)
/// selector; a service without selector has no automatic endpoints.
fn selects(s: &K8sService, p: &Pod) -> bool {
    s.metadata.namespace == p.metadata.namespace
        && !s.spec.selector.is_empty()
        && s.spec.selector.iter().all(|(k, v)| p.metadata.labels.get(k) == Some(v))
}

/// Service port to this pod's target port; a named target port the pod does not declare is
/// left out (the endpoint cannot serve it).
fn endpoint_ports(s: &K8sService, p: &Pod) -> PortMap {
    let mut out = BTreeMap::new();
    for port in &s.spec.ports {
        let target = match &port.target_port {
            None => Some(port.port),
            Some(IntOrString::Int(t)) => Some(*t),
            Some(IntOrString::Str(name)) => {
                p.spec.containers.iter().flat_map(|c| &c.ports).find(|cp| cp.name == *name).map(|cp| cp.container_port)
            }
        };
        if let Some(t) = target.filter(|t| *t != 0) {
            out.insert(port.port, t);
        }
    }
    out
}

fn service(s: &K8sService, o: &TranslateOptions) -> Service {
    let mut svc = Service::new(&s.metadata.namespace, &s.metadata.name, &hostname(s, o));
    let ips = s.spec.cluster_ips.iter().chain(std::iter::once(&s.spec.cluster_ip));
    for ip in ips.filter_map(|ip| ip.parse::<IpAddr>().ok()) {
        let vip = NetworkAddress { network: o.network.clone(), address: ip };
        if !svc.vips.contains(&vip) {
            svc.vips.push(vip);
        }
    }
    for port in &s.spec.ports {
        let target = match &port.target_port {
            None => port.port,
            Some(IntOrString::Int(t)) => *t,
            // Named ports are resolved per endpoint.
            Some(IntOrString::Str(_)) => 0,
        };
        svc.ports.insert(port.port, target);
        if let Some(p) = app_protocol(port) {
            svc.app_protocols.insert(port.port, p);
        }
    }
    svc.canonical = true;
    svc
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
