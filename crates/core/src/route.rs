//! Routing decisions as pure functions over a state snapshot (protocols.md §1.9, §4.8).
//!
//! Outbound: from the original destination the app dialled to an [`Upstream`]: an HBONE tunnel
//! (with the exact identities the peer must prove), a plain TCP connection to a non-mesh
//! workload, or passthrough for destinations the mesh does not know. A destination the mesh
//! knows as HBONE is never reached in plaintext. A destination behind a waypoint is reached only
//! through one of the waypoint's pods (`route_waypoint.rs`); a waypoint that cannot be resolved
//! or is not ready, and cross-network gateways (not built), fail closed instead of bypassing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::addr::{Authority, HboneTarget, OrigDstAddr, ServerAddr};
use crate::identity::Identity;
use crate::model::{HealthPolicy, HealthStatus, IpFamilies, LbMode, LbScope, Service, ServiceKey, TunnelProtocol, Workload, WorkloadUid};
use crate::ports::Ports;
use crate::state::Snapshot;

#[path = "route_waypoint.rs"]
mod waypoint;
pub use waypoint::waypoint_admits;

#[derive(Clone, Debug)]
pub enum Upstream {
    /// Tunnel to `hbone_addr`, asking for `target`; the peer must prove one of `identities`.
    Hbone { hbone_addr: ServerAddr, target: HboneTarget, identities: Vec<Identity>, workload: Arc<Workload>, service: Option<Arc<Service>> },
    /// Plain TCP to a workload the mesh knows is not captured.
    Direct { addr: ServerAddr, workload: Arc<Workload>, service: Option<Arc<Service>> },
    /// Plain TCP to a destination the mesh does not know.
    Passthrough { addr: ServerAddr },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("destination {0} is one of the proxy's own ports (loop)")]
    SelfCall(SocketAddr),
    #[error("no healthy upstream for service {0}")]
    NoHealthyUpstream(ServiceKey),
    #[error("destination {destination} must go through waypoint {waypoint}, which is not in the mesh state: check that its Gateway (class istio-waypoint) and its Service exist; the connection is refused rather than bypass the waypoint")]
    UnknownWaypoint { destination: String, waypoint: String },
    #[error("destination {destination} must go through waypoint {waypoint}, which has no healthy pod: check the waypoint's pods (label gateway.networking.k8s.io/gateway-name); the connection is refused rather than bypass the waypoint")]
    WaypointNotReady { destination: String, waypoint: String },
    #[error("destination {0} is in network {1:?}; ferry does not route through network gateways yet")]
    CrossNetwork(WorkloadUid, String),
    #[error("workload {0} has an invalid identity: {1}")]
    BadIdentity(WorkloadUid, String),
    #[error("workload {0} has no address usable for {1}")]
    NoAddress(WorkloadUid, ServiceKey),
}

/// Decides how a connection from `src` to `dst` leaves the node. `pick(n)` returns a uniform
/// index below `n` (injected so tests are deterministic).
pub fn outbound(
    snap: &Snapshot,
    src: &Workload,
    dst: OrigDstAddr,
    ports: &Ports,
    pick: &mut dyn FnMut(u64) -> u64,
) -> Result<Upstream, RouteError> {
    if is_own_port(ports, dst.port()) && (dst.ip().is_loopback() || src.addresses.contains(&dst.ip())) {
        return Err(RouteError::SelfCall(dst.0));
    }
    if let Some(svc) = snap.service_by_vip(&src.network, dst.ip(), &src.namespace) {
        return via_service(snap, src, dst, svc, ports, pick);
    }
    match snap.workload_by_addr(&src.network, dst.ip()) {
        Some(w) => to_workload(snap, src, w.clone(), dst.0, None, ports, pick),
        None => Ok(Upstream::Passthrough { addr: ServerAddr(dst.0) }),
    }
}

fn via_service(
    snap: &Snapshot,
    src: &Workload,
    dst: OrigDstAddr,
    svc: Arc<Service>,
    ports: &Ports,
    pick: &mut dyn FnMut(u64) -> u64,
) -> Result<Upstream, RouteError> {
    // Service-addressed: through the service's waypoint, authority = the VIP:port dialled.
    if let Some(gw) = waypoint::of_service(&svc, pick) {
        if let Some(up) = waypoint::route(snap, src, gw, dst.0, Some(svc.clone()), svc.key().as_str(), pick)? {
            return Ok(up);
        }
    }
    let lb = svc.load_balancing.clone().unwrap_or_default();
    if lb.mode == LbMode::Passthrough {
        return match snap.workload_by_addr(&src.network, dst.ip()) {
            Some(w) => to_workload(snap, src, w.clone(), dst.0, Some(svc), ports, pick),
            None => Ok(Upstream::Passthrough { addr: ServerAddr(dst.0) }),
        };
    }
    let key = svc.key();
    let candidates: Vec<(&Arc<Workload>, u16)> = snap
        .endpoints(&key)
        .iter()
        .filter(|w| w.status == HealthStatus::Healthy || lb.health_policy == HealthPolicy::AllowAll)
        .filter(|w| !w.addresses.is_empty())
        .filter_map(|w| target_port(w, &svc, &key, dst.port()).map(|p| (w, p)))
        .collect();
    let ranked = rank(src, &candidates, &lb.routing_preference, lb.mode);
    let (w, port) = weighted_pick(&ranked, pick).ok_or_else(|| RouteError::NoHealthyUpstream(key.clone()))?;
    let ip = choose_ip(&w, svc.ip_families, dst.ip()).ok_or_else(|| RouteError::NoAddress(w.uid.clone(), key))?;
    to_workload(snap, src, w, SocketAddr::new(ip, port), Some(svc), ports, pick)
}

/// The endpoint's own mapping for `port`, else the service's non-zero target port.
fn target_port(w: &Workload, svc: &Service, key: &ServiceKey, port: u16) -> Option<u16> {
    if let Some(p) = w.services.get(key).and_then(|m| m.get(&port)).filter(|p| **p != 0) {
        return Some(*p);
    }
    svc.ports.get(&port).copied().filter(|p| *p != 0)
}

/// Keeps the endpoints with the best locality rank (all of them in STANDARD mode).
fn rank<'a>(src: &Workload, c: &[(&'a Arc<Workload>, u16)], prefs: &[LbScope], mode: LbMode) -> Vec<(&'a Arc<Workload>, u16)> {
    if prefs.is_empty() || mode == LbMode::Standard {
        return c.to_vec();
    }
    let score = |w: &Workload| prefs.iter().take_while(|s| same_scope(src, w, **s)).count();
    let scored: Vec<_> = c.iter().map(|(w, p)| (score(w), *w, *p)).collect();
    let best = if mode == LbMode::Strict { prefs.len() } else { scored.iter().map(|s| s.0).max().unwrap_or(0) };
    scored.into_iter().filter(|s| s.0 == best).map(|(_, w, p)| (w, p)).collect()
}

fn same_scope(a: &Workload, b: &Workload, s: LbScope) -> bool {
    match s {
        LbScope::Region => a.locality.region == b.locality.region,
        LbScope::Zone => a.locality.region == b.locality.region && a.locality.zone == b.locality.zone,
        LbScope::Subzone => a.locality == b.locality,
        LbScope::Node => a.node == b.node,
        LbScope::Cluster => a.cluster_id == b.cluster_id,
        LbScope::Network => a.network == b.network,
    }
}

/// Random choice weighted by capacity (a capacity of 0 counts as 1, like an unset weight).
fn weighted_pick(c: &[(&Arc<Workload>, u16)], pick: &mut dyn FnMut(u64) -> u64) -> Option<(Arc<Workload>, u16)> {
    let weight = |w: &Workload| w.capacity.max(1) as u64;
    let total: u64 = c.iter().map(|(w, _)| weight(w)).sum();
    if total == 0 {
        return None;
    }
    let mut x = pick(total);
    for (w, p) in c {
        if x < weight(w) {
            return Some(((*w).clone(), *p));
        }
        x -= weight(w);
    }
    None
}

fn choose_ip(w: &Workload, families: IpFamilies, dialed: IpAddr) -> Option<IpAddr> {
    let allowed = |ip: &IpAddr| match families {
        IpFamilies::Ipv4Only => ip.is_ipv4(),
        IpFamilies::Ipv6Only => ip.is_ipv6(),
        IpFamilies::Automatic | IpFamilies::Dual => true,
    };
    let mut ips = w.addresses.iter().filter(|ip| allowed(ip));
    let first = ips.clone().next().copied();
    ips.find(|ip| ip.is_ipv4() == dialed.is_ipv4()).copied().or(first)
}

/// To workload `w` at `addr`: through `w`'s own waypoint when it has one (unless `src` is
/// that waypoint), else HBONE or plain TCP by `w`'s protocol.
fn to_workload(
    snap: &Snapshot,
    src: &Workload,
    w: Arc<Workload>,
    addr: SocketAddr,
    svc: Option<Arc<Service>>,
    ports: &Ports,
    pick: &mut dyn FnMut(u64) -> u64,
) -> Result<Upstream, RouteError> {
    if w.network != src.network {
        return Err(RouteError::CrossNetwork(w.uid.clone(), w.network.clone()));
    }
    // A workload waypoint also takes service traffic whose service has none: the destination
    // admits only its waypoint (`waypoint_admits`), so going direct would be refused there.
    if let Some(gw) = &w.waypoint {
        if let Some(up) = waypoint::route(snap, src, gw, addr, svc.clone(), w.uid.as_str(), pick)? {
            return Ok(up);
        }
    }
    if w.protocol != TunnelProtocol::Hbone {
        return Ok(Upstream::Direct { addr: ServerAddr(addr), workload: w, service: svc });
    }
    let own = w.identity().map_err(|e| RouteError::BadIdentity(w.uid.clone(), e.to_string()))?;
    let mut identities = vec![own];
    if let Some(s) = &svc {
        identities.extend(s.subject_alt_names.iter().filter_map(|san| san.parse::<Identity>().ok()));
    }
    Ok(Upstream::Hbone {
        hbone_addr: ServerAddr(SocketAddr::new(addr.ip(), ports.hbone)),
        target: HboneTarget(addr),
        identities,
        workload: w,
        service: svc,
    })
}

pub fn is_own_port(ports: &Ports, port: u16) -> bool {
    ports.is_own(port)
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    #[error("ip mismatch: {requested} != {arrived}")]
    IpMismatch { requested: IpAddr, arrived: IpAddr },
    #[error("destination port {0} belongs to the proxy (self call)")]
    SelfCall(u16),
    #[error("unknown service {0}:{1}")]
    UnknownService(String, u16),
    #[error("service {0} has no target port for {1} on this workload")]
    NoTargetPort(ServiceKey, u16),
    #[error("{peer} may not connect directly: this workload is served through waypoint {waypoints}, and only that waypoint's pods (or the workload itself) may reach it; connect through the waypoint (its service), or remove the workload's istio.io/use-waypoint label")]
    NotFromWaypoint { peer: String, waypoints: String },
}

/// Where an inbound HBONE request for `authority`, arriving on `arrived`, must be delivered in
/// the local workload `w`: only to the pod the tunnel reached (no trampolining, invariant P3).
pub fn inbound_target(
    snap: &Snapshot,
    w: &Workload,
    arrived: IpAddr,
    authority: &Authority,
    ports: &Ports,
) -> Result<(ServerAddr, Option<Arc<Service>>), InboundError> {
    let (addr, svc) = match authority {
        Authority::Addr(a) => {
            if a.ip() != arrived {
                return Err(InboundError::IpMismatch { requested: a.ip(), arrived });
            }
            (*a, None)
        }
        Authority::Host(host, port) => {
            let svc = snap
                .services()
                .filter(|s| s.hostname == *host)
                .min_by_key(|s| s.namespace != w.namespace)
                .cloned()
                .ok_or_else(|| InboundError::UnknownService(host.clone(), *port))?;
            let key = svc.key();
            let target = target_port(w, &svc, &key, *port).ok_or(InboundError::NoTargetPort(key, *port))?;
            (SocketAddr::new(arrived, target), Some(svc))
        }
    };
    if is_own_port(ports, addr.port()) {
        return Err(InboundError::SelfCall(addr.port()));
    }
    Ok((ServerAddr(addr), svc))
}

/// The service an inbound connection to `w`'s `port` most likely came through, for telemetry
/// only (ztunnel does the same guess): the first of `w`'s services, in key order, with a port
/// that maps to `port`. Ports a workload does not override map to the service's own target
/// port, and a target of 0 means the service port itself.
pub fn guess_inbound_service(snap: &Snapshot, w: &Workload, port: u16) -> Option<Arc<Service>> {
    w.services
        .keys()
        .filter_map(|key| snap.service(key))
        .find(|svc| svc.ports.keys().any(|sp| effective_target(w, svc, *sp) == port))
        .cloned()
}

fn effective_target(w: &Workload, svc: &Service, service_port: u16) -> u16 {
    target_port(w, svc, &svc.key(), service_port).unwrap_or(service_port)
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
