//! The waypoint's decisions as pure functions over a state snapshot: whether a CONNECT
//! authority is something this waypoint fronts (a service VIP:port or a workload IP:port whose
//! `waypoint` names it), how the port is served (HTTP/1.1, HTTP/2 prior knowledge or TCP, from
//! the port's declared protocol only: never sniffed), and which endpoint a request goes to (the
//! less loaded of two random HBONE endpoints).
//!
//! Fail closed: a target whose waypoint is another (or none) is refused, never forwarded; an
//! endpoint that is not HBONE-capable is never chosen, so nothing leaves the waypoint in
//! plaintext (invariant P6).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::identity::Identity;
use crate::model::{AppProtocol, GatewayAddress, GatewayDestination, HealthPolicy, HealthStatus, Service, TunnelProtocol, Workload};
use crate::state::Snapshot;

/// How this waypoint is named in `Service.waypoint` / `Workload.waypoint`.
#[derive(Clone, Debug)]
pub struct WaypointSelf {
    pub namespace: String,
    /// The Gateway's name (policies bind to it).
    pub name: String,
    /// Its service's hostname (`<name>.<namespace>.svc.<domain>`).
    pub hostname: String,
    /// Its own addresses, for waypoints referenced by IP.
    pub addresses: Vec<IpAddr>,
    pub network: String,
}

impl WaypointSelf {
    /// Whether `g` designates this waypoint.
    pub(crate) fn is(&self, g: &GatewayAddress) -> bool {
        match &g.destination {
            GatewayDestination::Hostname { namespace, hostname } => {
                *namespace == self.namespace && hostname.eq_ignore_ascii_case(&self.hostname)
            }
            GatewayDestination::Address(a) => a.network == self.network && self.addresses.contains(&a.address),
        }
    }
}

/// How a fronted port is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Protocol {
    /// Requests are parsed, authorized and forwarded one by one.
    Http1,
    /// The same, as HTTP/2 with prior knowledge (h2c) on both sides: `http2`, `grpc`.
    Http2,
    /// Bytes are copied; only the L4 part of policy applies.
    Tcp,
}

impl Protocol {
    /// How a service port declaring `p` is served: HTTP/1.1 for `http`, HTTP/2 for `http2` and
    /// `grpc` (Istio's `IsHTTP2`), TCP for everything else, undeclared included.
    pub fn of(p: Option<AppProtocol>) -> Protocol {
        match p {
            Some(AppProtocol::Http11) => Protocol::Http1,
            Some(AppProtocol::Http2 | AppProtocol::Grpc) => Protocol::Http2,
            Some(AppProtocol::Tcp | AppProtocol::Tls) | None => Protocol::Tcp,
        }
    }
}

/// What the client addressed.
#[derive(Clone, Debug)]
pub enum Fronted {
    Service { service: Arc<Service>, port: u16, protocol: Protocol },
    Workload { workload: Arc<Workload>, port: u16 },
}

impl Fronted {
    pub fn protocol(&self) -> Protocol {
        match self {
            Fronted::Service { protocol, .. } => *protocol,
            Fronted::Workload { .. } => Protocol::Tcp,
        }
    }

    /// The destination service's (namespace, name), for policy attachment and telemetry.
    pub fn service(&self) -> Option<&Service> {
        match self {
            Fronted::Service { service, .. } => Some(service),
            Fronted::Workload { .. } => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrontError {
    #[error("{0} is not a service or workload address this waypoint knows")]
    Unknown(SocketAddr),
    #[error("{addr} is {what}, whose waypoint is not this one ({detail})")]
    OtherWaypoint { addr: SocketAddr, what: String, detail: String },
    #[error("service {service} has no port {port}")]
    NoPort { service: String, port: u16 },
    #[error("no healthy HBONE endpoint for {0}")]
    NoEndpoint(String),
    #[error("endpoint {0} has an invalid identity: {1}")]
    BadIdentity(String, String),
}

fn describe(g: &Option<GatewayAddress>) -> String {
    match g.as_ref().map(|g| &g.destination) {
        None => "it has none".into(),
        Some(GatewayDestination::Hostname { namespace, hostname }) => format!("it names {namespace}/{hostname}"),
        Some(GatewayDestination::Address(a)) => format!("it names {a}"),
    }
}

/// Resolves a CONNECT authority to what this waypoint fronts, or refuses it.
/// One service this waypoint fronts, as `/config_dump` lists it: its hostname and how each
/// port is served.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontedService {
    pub service: String,
    pub ports: std::collections::BTreeMap<u16, Protocol>,
}

/// Every service whose `waypoint` names this one (the waypoint's "listeners").
pub fn fronted_services(snap: &Snapshot, me: &WaypointSelf) -> Vec<FrontedService> {
    let mut out: Vec<FrontedService> = snap
        .services()
        .filter(|s| s.waypoint.as_ref().is_some_and(|g| me.is(g)))
        .map(|s| FrontedService {
            service: s.hostname.clone(),
            ports: s.ports.keys().map(|p| (*p, Protocol::of(s.app_protocols.get(p).copied()))).collect(),
        })
        .collect();
    out.sort_by(|a, b| a.service.cmp(&b.service));
    out
}

pub fn fronted(snap: &Snapshot, me: &WaypointSelf, authority: SocketAddr) -> Result<Fronted, FrontError> {
    let (ip, port) = (authority.ip(), authority.port());
    if let Some(svc) = snap.service_by_vip(&me.network, ip, &me.namespace) {
        if !svc.waypoint.as_ref().is_some_and(|g| me.is(g)) {
            let (what, detail) = (format!("service {}", svc.key()), describe(&svc.waypoint));
            return Err(FrontError::OtherWaypoint { addr: authority, what, detail });
        }
        if !svc.ports.contains_key(&port) {
            return Err(FrontError::NoPort { service: svc.key().to_string(), port });
        }
        let protocol = Protocol::of(svc.app_protocols.get(&port).copied());
        return Ok(Fronted::Service { service: svc, port, protocol });
    }
    let w = snap.workload_by_addr(&me.network, ip).ok_or(FrontError::Unknown(authority))?;
    if !w.waypoint.as_ref().is_some_and(|g| me.is(g)) {
        return Err(FrontError::OtherWaypoint { addr: authority, what: format!("workload {}", w.uid), detail: describe(&w.waypoint) });
    }
    Ok(Fronted::Workload { workload: w.clone(), port })
}

/// One place a request can go: HBONE to `workload` at `hbone_addr`, CONNECT `target`.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    /// `<pod IP>:<target port>`, the CONNECT authority.
    pub target: SocketAddr,
    /// `<pod IP>:15008`.
    pub hbone_addr: SocketAddr,
    /// What the endpoint's certificate must name (its own identity, and the service's SANs).
    pub identities: Vec<Identity>,
}

/// The HBONE endpoints a request to `f` may go to.
pub fn endpoints(snap: &Snapshot, f: &Fronted, hbone_port: u16) -> Result<Vec<Endpoint>, FrontError> {
    let candidates: Vec<(Arc<Workload>, u16)> = match f {
        Fronted::Workload { workload, port } => vec![(workload.clone(), *port)],
        Fronted::Service { service, port, .. } => {
            let key = service.key();
            let all_ok = service.load_balancing.as_ref().is_some_and(|l| l.health_policy == HealthPolicy::AllowAll);
            let healthy = |w: &&Arc<Workload>| w.status == HealthStatus::Healthy || all_ok;
            let mapped = |w: &Arc<Workload>| {
                let own = w.services.get(&key).and_then(|m| m.get(port)).copied().filter(|p| *p != 0);
                own.or(service.ports.get(port).copied().filter(|p| *p != 0)).map(|p| (w.clone(), p))
            };
            snap.endpoints(&key).iter().filter(healthy).filter_map(mapped).collect()
        }
    };
    let sans: Vec<Identity> = f.service().map(|s| s.subject_alt_names.iter().filter_map(|s| s.parse().ok()).collect()).unwrap_or_default();
    let mut out = Vec::new();
    for (w, port) in candidates.into_iter().filter(|(w, _)| w.protocol == TunnelProtocol::Hbone) {
        let Some(ip) = w.addresses.first().copied() else { continue };
        let own = w.identity().map_err(|e| FrontError::BadIdentity(w.uid.to_string(), e.to_string()))?;
        let identities = std::iter::once(own).chain(sans.iter().cloned()).collect();
        out.push(Endpoint { workload: w, target: SocketAddr::new(ip, port), hbone_addr: SocketAddr::new(ip, hbone_port), identities });
    }
    if out.is_empty() {
        let what = match f {
            Fronted::Service { service, port, .. } => format!("service {} port {port}", service.key()),
            Fronted::Workload { workload, .. } => format!("workload {}", workload.uid),
        };
        return Err(FrontError::NoEndpoint(what));
    }
    Ok(out)
}

/// Least-request of two random choices: `load(e)` is the requests in flight to `e`, `pick(n)` a
/// uniform index below `n` (injected so tests are deterministic).
pub fn pick<'a>(eps: &'a [Endpoint], load: &dyn Fn(&Endpoint) -> usize, pick: &mut dyn FnMut(usize) -> usize) -> Option<&'a Endpoint> {
    match eps.len() {
        0 => None,
        1 => eps.first(),
        n => {
            let (a, b) = (&eps[pick(n)], &eps[pick(n)]);
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

#[cfg(test)]
#[path = "waypoint_tests.rs"]
mod tests;
