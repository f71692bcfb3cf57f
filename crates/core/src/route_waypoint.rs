//! Waypoints in routing (waypoint-and-k8s.md §1.4, §1.5, §1.7): which waypoint a connection must
//! traverse, the HBONE upstream to one of its pods, and the destination's check that traffic to
//! a workload behind a waypoint came from that waypoint. Fails closed: a waypoint that cannot be
//! resolved or has no healthy pod refuses the connection, never bypasses it.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{choose_ip, weighted_pick, InboundError, RouteError, Upstream};
use crate::addr::{HboneTarget, ServerAddr};
use crate::identity::Identity;
use crate::model::{GatewayAddress, GatewayDestination, HealthStatus, IpFamilies, Service, ServiceKey, Workload};
use crate::state::Snapshot;

/// The waypoint of a service-addressed connection: a choice from `weighted_waypoints` by weight,
/// else (none, or every weight 0) `waypoint`.
pub(super) fn of_service<'a>(svc: &'a Service, pick: &mut dyn FnMut(u64) -> u64) -> Option<&'a GatewayAddress> {
    let total: u64 = svc.weighted_waypoints.iter().map(|w| u64::from(w.weight)).sum();
    if total == 0 {
        return svc.waypoint.as_ref();
    }
    let mut x = pick(total);
    for w in &svc.weighted_waypoints {
        if x < u64::from(w.weight) {
            return Some(&w.destination);
        }
        x -= u64::from(w.weight);
    }
    svc.waypoint.as_ref()
}

/// How an operator reads a waypoint reference: `namespace/hostname` or `network/ip`.
pub(super) fn name(gw: &GatewayAddress) -> String {
    match &gw.destination {
        GatewayDestination::Hostname { namespace, hostname } => format!("{namespace}/{hostname}"),
        GatewayDestination::Address(a) => a.to_string(),
    }
}

/// A waypoint's pods, and its Service when it is addressed by one (for its SANs).
type Instances = (Vec<Arc<Workload>>, Option<Arc<Service>>);

/// The waypoint's pods and Service; `None` when the reference resolves to nothing.
fn instances(snap: &Snapshot, network: &str, client_ns: &str, gw: &GatewayAddress) -> Option<Instances> {
    let of_service = |s: Arc<Service>| (snap.endpoints(&s.key()).to_vec(), Some(s));
    match &gw.destination {
        GatewayDestination::Hostname { namespace, hostname } => {
            snap.service(&ServiceKey::new(namespace, hostname)).cloned().map(of_service)
        }
        GatewayDestination::Address(a) => match snap.workload_by_addr(&a.network, a.address) {
            Some(w) => Some((vec![w.clone()], None)),
            None => snap.service_by_vip(network, a.address, client_ns).map(of_service),
        },
    }
}

/// ztunnel's `check_from_waypoint`: the source is one of the waypoint's pods (same identity
/// and one of its addresses), so its traffic is never sent back to the waypoint.
fn is_instance(src: &Workload, pods: &[Arc<Workload>]) -> bool {
    let Ok(src_id) = src.identity() else { return false };
    pods.iter().any(|p| p.identity().is_ok_and(|id| id == src_id) && p.addresses.iter().any(|ip| src.addresses.contains(ip)))
}

/// The HBONE upstream through waypoint `gw` for a connection to `target` (the original
/// destination, which becomes the CONNECT authority); `None` when `src` is that waypoint.
/// `dest` names the destination in errors.
pub(super) fn route(
    snap: &Snapshot,
    src: &Workload,
    gw: &GatewayAddress,
    target: SocketAddr,
    svc: Option<Arc<Service>>,
    dest: &str,
    pick: &mut dyn FnMut(u64) -> u64,
) -> Result<Option<Upstream>, RouteError> {
    let unknown = || RouteError::UnknownWaypoint { destination: dest.to_string(), waypoint: name(gw) };
    let (pods, wp_svc) = instances(snap, &src.network, &src.namespace, gw).ok_or_else(unknown)?;
    if is_instance(src, &pods) {
        return Ok(None);
    }
    let ready: Vec<(&Arc<Workload>, u16)> = pods
        .iter()
        .filter(|p| p.status == HealthStatus::Healthy && !p.addresses.is_empty() && p.network == src.network)
        .map(|p| (p, gw.hbone_mtls_port))
        .collect();
    let not_ready = || RouteError::WaypointNotReady { destination: dest.to_string(), waypoint: name(gw) };
    let (pod, port) = weighted_pick(&ready, pick).ok_or_else(not_ready)?;
    let families = wp_svc.as_ref().map_or(IpFamilies::Automatic, |s| s.ip_families);
    let ip = choose_ip(&pod, families, target.ip()).ok_or_else(not_ready)?;
    let mut identities = vec![pod.identity().map_err(|e| RouteError::BadIdentity(pod.uid.clone(), e.to_string()))?];
    if let Some(s) = &wp_svc {
        identities.extend(s.subject_alt_names.iter().filter_map(|san| san.parse::<Identity>().ok()));
    }
    Ok(Some(Upstream::Hbone {
        hbone_addr: ServerAddr(SocketAddr::new(ip, port)),
        target: HboneTarget(target),
        identities,
        workload: pod,
        service: svc,
    }))
}

/// Destination enforcement (ferry's, not Istio's: §1.7): a connection to local workload `w` that
/// uses a waypoint (its own, or one of its services') is admitted only from one of those
/// waypoints' pods (by verified identity, exactly) or from `w`'s own identity (hairpin). A
/// plaintext peer (`None`) has no identity and is never admitted.
pub fn waypoint_admits(snap: &Snapshot, w: &Workload, peer: Option<&Identity>) -> Result<(), InboundError> {
    let mut waypoints: Vec<&GatewayAddress> = w.waypoint.iter().collect();
    for svc in w.services.keys().filter_map(|k| snap.service(k)) {
        waypoints.extend(svc.waypoint.iter().chain(svc.weighted_waypoints.iter().map(|ww| &ww.destination)));
    }
    if waypoints.is_empty() {
        return Ok(());
    }
    let Some(peer) = peer else {
        return Err(InboundError::NotFromWaypoint { peer: "a plaintext client".into(), waypoints: names(&waypoints) });
    };
    if w.identity().is_ok_and(|own| own == *peer) {
        return Ok(());
    }
    let admitted = |gw: &&GatewayAddress| {
        instances(snap, &w.network, &w.namespace, gw).is_some_and(|(pods, _)| pods.iter().any(|p| p.identity().is_ok_and(|id| id == *peer)))
    };
    if waypoints.iter().any(admitted) {
        return Ok(());
    }
    Err(InboundError::NotFromWaypoint { peer: peer.to_string(), waypoints: names(&waypoints) })
}

fn names(waypoints: &[&GatewayAddress]) -> String {
    let mut names: Vec<String> = waypoints.iter().map(|gw| name(gw)).collect();
    names.sort();
    names.dedup();
    names.join(", ")
}
