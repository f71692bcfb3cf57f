//! WDS resources into the model, refusing what Istio's reference refuses (protocols.md §4.7).

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::{bad, ip_from, WdsError};
use crate::model::*;
use crate::proto::security as ps;
use crate::proto::workload as pw;

/// What an `Address` resource holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    Workload(Box<Workload>),
    Service(Box<Service>),
}

pub fn decode_address(a: pw::Address) -> Result<Decoded, WdsError> {
    match a.r#type {
        Some(pw::address::Type::Workload(w)) => workload(w).map(|w| Decoded::Workload(Box::new(w))),
        Some(pw::address::Type::Service(s)) => service(s).map(|s| Decoded::Service(Box::new(s))),
        None => Err(bad("an Address with neither a workload nor a service")),
    }
}

fn enum_value<T>(v: i32, what: &str, f: impl FnOnce(i32) -> Option<T>) -> Result<T, WdsError> {
    f(v).ok_or_else(|| bad(format!("unknown {what} {v}")))
}

fn port(v: u32, what: &str) -> Result<u16, WdsError> {
    u16::try_from(v).map_err(|_| bad(format!("{what} {v} is not a port")))
}

fn ports(list: &[pw::Port]) -> Result<PortMap, WdsError> {
    list.iter().map(|p| Ok((port(p.service_port, "service port")?, port(p.target_port, "target port")?))).collect()
}

/// The ports that declare a protocol; an unknown value is no declaration (the port is then
/// served as TCP, which applies only the L4 part of a waypoint's policy).
fn app_protocols(list: &[pw::Port]) -> std::collections::BTreeMap<u16, AppProtocol> {
    let known = |v: i32| match pw::AppProtocol::try_from(v).ok()? {
        pw::AppProtocol::Unknown => None,
        pw::AppProtocol::Http11 => Some(AppProtocol::Http11),
        pw::AppProtocol::Http2 => Some(AppProtocol::Http2),
        pw::AppProtocol::Grpc => Some(AppProtocol::Grpc),
        pw::AppProtocol::Tcp => Some(AppProtocol::Tcp),
        pw::AppProtocol::Tls => Some(AppProtocol::Tls),
    };
    list.iter().filter_map(|p| Some((u16::try_from(p.service_port).ok()?, known(p.app_protocol)?))).collect()
}

fn gateway(g: Option<pw::GatewayAddress>) -> Result<Option<GatewayAddress>, WdsError> {
    let Some(g) = g else { return Ok(None) };
    let destination = match g.destination {
        Some(pw::gateway_address::Destination::Address(a)) => {
            GatewayDestination::Address(NetworkAddress { network: a.network, address: ip_from(&a.address)? })
        }
        Some(pw::gateway_address::Destination::Hostname(h)) => {
            GatewayDestination::Hostname { namespace: h.namespace, hostname: h.hostname }
        }
        None => return Err(bad("a gateway address without a destination")),
    };
    Ok(Some(GatewayAddress { destination, hbone_mtls_port: port(g.hbone_mtls_port, "HBONE port")? }))
}

fn workload(w: pw::Workload) -> Result<Workload, WdsError> {
    if w.uid.is_empty() || w.namespace.is_empty() {
        return Err(bad("a workload without uid or namespace"));
    }
    let mut m = Workload::new(&w.uid, &w.namespace, &w.name);
    m.addresses = w.addresses.iter().map(|a| ip_from(a)).collect::<Result<_, _>>()?;
    m.hostname = w.hostname;
    m.network = w.network;
    m.protocol = match pw::TunnelProtocol::try_from(w.tunnel_protocol) {
        Ok(pw::TunnelProtocol::None) => TunnelProtocol::None,
        Ok(pw::TunnelProtocol::Hbone) => TunnelProtocol::Hbone,
        Ok(pw::TunnelProtocol::LegacyIstioMtls) => return Err(bad("tunnel protocol LEGACY_ISTIO_MTLS is not supported")),
        Err(_) => return Err(bad(format!("unknown tunnel protocol {}", w.tunnel_protocol))),
    };
    m.trust_domain = w.trust_domain;
    m.service_account = w.service_account;
    m.waypoint = gateway(w.waypoint)?;
    m.network_gateway = gateway(w.network_gateway)?;
    m.node = w.node;
    m.canonical_name = w.canonical_name;
    m.canonical_revision = w.canonical_revision;
    // Istio's reference treats an unknown workload type as a deployment.
    m.workload_type = match pw::WorkloadType::try_from(w.workload_type) {
        Ok(pw::WorkloadType::Cronjob) => WorkloadType::Cronjob,
        Ok(pw::WorkloadType::Pod) => WorkloadType::Pod,
        Ok(pw::WorkloadType::Job) => WorkloadType::Job,
        _ => WorkloadType::Deployment,
    };
    m.workload_name = w.workload_name;
    m.native_tunnel = w.native_tunnel;
    m.application_tunnel = match w.application_tunnel {
        None => None,
        Some(t) => Some(ApplicationTunnel {
            protocol: enum_value(t.protocol, "application tunnel protocol", |v| {
                match pw::application_tunnel::Protocol::try_from(v).ok()? {
                    pw::application_tunnel::Protocol::None => Some(AppTunnelProtocol::None),
                    pw::application_tunnel::Protocol::Proxy => Some(AppTunnelProtocol::Proxy),
                }
            })?,
            port: Some(port(t.port, "application tunnel port")?).filter(|p| *p != 0),
        }),
    };
    let mut services = BTreeMap::new();
    for (key, list) in w.services {
        let k = ServiceKey::parse(&key).ok_or_else(|| bad(format!("service key {key:?} is not <namespace>/<hostname>")))?;
        services.insert(k, ports(&list.ports)?);
    }
    m.services = services;
    m.authorization_policies = w.authorization_policies.iter().map(|p| PolicyKey::parse(p)).collect();
    m.status = enum_value(w.status, "workload status", |v| match pw::WorkloadStatus::try_from(v).ok()? {
        pw::WorkloadStatus::Healthy => Some(HealthStatus::Healthy),
        pw::WorkloadStatus::Unhealthy => Some(HealthStatus::Unhealthy),
    })?;
    m.cluster_id = w.cluster_id;
    if let Some(l) = w.locality {
        m.locality = Locality { region: l.region, zone: l.zone, subzone: l.subzone };
    }
    m.network_mode = enum_value(w.network_mode, "network mode", |v| match pw::NetworkMode::try_from(v).ok()? {
        pw::NetworkMode::Standard => Some(NetworkMode::Standard),
        pw::NetworkMode::HostNetwork => Some(NetworkMode::HostNetwork),
    })?;
    m.capacity = w.capacity.unwrap_or(1);
    m.identity().map_err(|e| bad(e.to_string()))?;
    Ok(m)
}

fn service(s: pw::Service) -> Result<Service, WdsError> {
    if s.namespace.is_empty() || s.hostname.is_empty() {
        return Err(bad("a service without namespace or hostname"));
    }
    let mut m = Service::new(&s.namespace, &s.name, &s.hostname);
    for a in s.addresses {
        let ip = ip_from(&a.address)?;
        let host_len = if ip.is_ipv4() { 32 } else { 128 };
        match a.length {
            None => m.vips.push(NetworkAddress { network: a.network, address: ip }),
            Some(len) if len == host_len => m.vips.push(NetworkAddress { network: a.network, address: ip }),
            Some(len) => {
                let cidr =
                    IpNet::new(ip, u8::try_from(len).unwrap_or(u8::MAX)).map_err(|_| bad(format!("prefix length {len} for {ip}")))?;
                m.cidr_vips.push(CidrVip { network: a.network, cidr });
            }
        }
    }
    m.ports = ports(&s.ports)?;
    m.app_protocols = app_protocols(&s.ports);
    m.subject_alt_names = s.subject_alt_names;
    m.waypoint = gateway(s.waypoint)?;
    m.load_balancing = s.load_balancing.map(load_balancing).transpose()?;
    m.ip_families = enum_value(s.ip_families, "IP families", |v| match pw::IpFamilies::try_from(v).ok()? {
        pw::IpFamilies::Automatic => Some(IpFamilies::Automatic),
        pw::IpFamilies::Ipv4Only => Some(IpFamilies::Ipv4Only),
        pw::IpFamilies::Ipv6Only => Some(IpFamilies::Ipv6Only),
        pw::IpFamilies::Dual => Some(IpFamilies::Dual),
    })?;
    m.canonical = s.canonical;
    for w in s.weighted_waypoints {
        let destination = gateway(w.destination)?.ok_or_else(|| bad("a weighted waypoint without a destination"))?;
        m.weighted_waypoints.push(WeightedWaypoint { destination, weight: w.weight });
    }
    // Istio's reference treats an unknown visibility as public.
    m.visibility = if s.visibility == pw::Visibility::Namespace as i32 { Visibility::Namespace } else { Visibility::Public };
    Ok(m)
}

fn load_balancing(l: pw::LoadBalancing) -> Result<LoadBalancing, WdsError> {
    use pw::load_balancing::{HealthPolicy as H, Mode as M, Scope as S};
    let routing_preference = l
        .routing_preference
        .iter()
        .map(|v| {
            enum_value(*v, "load-balancing scope", |v| match S::try_from(v).ok()? {
                S::Region => Some(LbScope::Region),
                S::Zone => Some(LbScope::Zone),
                S::Subzone => Some(LbScope::Subzone),
                S::Node => Some(LbScope::Node),
                S::Cluster => Some(LbScope::Cluster),
                S::Network => Some(LbScope::Network),
                S::UnspecifiedScope => None,
            })
        })
        .collect::<Result<_, _>>()?;
    let mode = enum_value(l.mode, "load-balancing mode", |v| match M::try_from(v).ok()? {
        M::UnspecifiedMode => Some(LbMode::Standard),
        M::Strict => Some(LbMode::Strict),
        M::Failover => Some(LbMode::Failover),
        M::Passthrough => Some(LbMode::Passthrough),
    })?;
    let health_policy = enum_value(l.health_policy, "health policy", |v| match H::try_from(v).ok()? {
        H::OnlyHealthy => Some(HealthPolicy::OnlyHealthy),
        H::AllowAll => Some(HealthPolicy::AllowAll),
    })?;
    Ok(LoadBalancing { routing_preference, mode, health_policy })
}

pub fn decode_authorization(p: ps::Authorization) -> Result<Authorization, WdsError> {
    if p.name.is_empty() || p.namespace.is_empty() {
        return Err(bad("a policy without name or namespace"));
    }
    let scope = enum_value(p.scope, "policy scope", |v| match ps::Scope::try_from(v).ok()? {
        ps::Scope::Global => Some(PolicyScope::Global),
        ps::Scope::Namespace => Some(PolicyScope::Namespace),
        ps::Scope::WorkloadSelector => Some(PolicyScope::WorkloadSelector),
    })?;
    let action = enum_value(p.action, "policy action", |v| match ps::Action::try_from(v).ok()? {
        ps::Action::Allow => Some(PolicyAction::Allow),
        ps::Action::Deny => Some(PolicyAction::Deny),
    })?;
    let rules = p
        .rules
        .into_iter()
        .map(|r| r.clauses.into_iter().map(|c| c.matches.into_iter().map(match_model).collect::<Result<Vec<_>, _>>()).collect())
        .collect::<Result<_, _>>()?;
    let notes = p.extensions.iter().filter(|e| e.name == super::NOTE_EXTENSION).filter_map(super::note_text).collect();
    Ok(Authorization { name: p.name, namespace: p.namespace, scope, action, dry_run: p.dry_run, rules, notes })
}

// Stricter than Istio's reference, which drops string matches without a type and addresses
// with bad bytes: dropping an entry of a DENY rule narrows it, which widens access (P4). The
// whole policy is refused instead, and the xDS client fails closed in its scope.
fn strings(v: Vec<ps::StringMatch>) -> Result<Vec<StringMatch>, WdsError> {
    use ps::string_match::MatchType as T;
    v.into_iter()
        .map(|m| {
            Ok(match m.match_type.ok_or_else(|| bad("a string match without a match type"))? {
                T::Exact(s) => StringMatch::Exact(s),
                T::Prefix(s) => StringMatch::Prefix(s),
                T::Suffix(s) => StringMatch::Suffix(s),
                T::Presence(()) => StringMatch::Presence,
            })
        })
        .collect()
}

fn nets(v: Vec<ps::Address>) -> Result<Vec<IpNet>, WdsError> {
    v.into_iter()
        .map(|a| {
            let ip = ip_from(&a.address)?;
            u8::try_from(a.length)
                .ok()
                .and_then(|l| IpNet::new(ip, l).ok())
                .ok_or_else(|| bad(format!("prefix length {} for {ip}", a.length)))
        })
        .collect()
}

fn accounts(v: Vec<ps::ServiceAccountMatch>) -> Vec<ServiceAccountMatch> {
    v.into_iter().map(|a| ServiceAccountMatch { namespace: a.namespace, service_account: a.service_account }).collect()
}

fn match_model(m: ps::Match) -> Result<Match, WdsError> {
    let ports = |v: Vec<u32>| v.into_iter().map(|p| port(p, "destination port")).collect::<Result<Vec<_>, _>>();
    Ok(Match {
        namespaces: strings(m.namespaces)?,
        not_namespaces: strings(m.not_namespaces)?,
        principals: strings(m.principals)?,
        not_principals: strings(m.not_principals)?,
        source_ips: nets(m.source_ips)?,
        not_source_ips: nets(m.not_source_ips)?,
        destination_ips: nets(m.destination_ips)?,
        not_destination_ips: nets(m.not_destination_ips)?,
        destination_ports: ports(m.destination_ports)?,
        not_destination_ports: ports(m.not_destination_ports)?,
        service_accounts: accounts(m.service_accounts),
        not_service_accounts: accounts(m.not_service_accounts),
    })
}
