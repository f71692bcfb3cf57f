//! The model to and from WDS resources (protocols.md §4.5, §4.7): the one conversion both the
//! control plane (encoding what it serves) and the node proxy (decoding what it receives) use.
//!
//! Decoding is strict where Istio's reference rejects (addresses of other lengths than 4 or 16
//! bytes, `LEGACY_ISTIO_MTLS`, unknown enum values, a gateway without a destination, an
//! identity that does not parse): such a resource is refused with a reason, which the xDS
//! client turns into a NACK, and never half-applied. Encoding and decoding are inverses for
//! every value the model can hold.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::*;
use crate::proto::security as ps;
use crate::proto::workload as pw;

pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";

/// A resource as WDS names it: its name, the aliases it can be looked up by, its message.
#[derive(Clone, Debug, PartialEq)]
pub struct Named<T> {
    pub name: String,
    pub aliases: Vec<String>,
    pub message: T,
}

/// A WDS resource that cannot become part of the model.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WdsError(pub String);

fn bad(msg: impl Into<String>) -> WdsError {
    WdsError(msg.into())
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn ip_from(b: &[u8]) -> Result<IpAddr, WdsError> {
    match b.len() {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(b).map_err(|_| bad("address"))?)),
        16 => Ok(IpAddr::from(<[u8; 16]>::try_from(b).map_err(|_| bad("address"))?)),
        n => Err(bad(format!("an address of {n} bytes (must be 4 or 16)"))),
    }
}

fn alias(network: &str, ip: &IpAddr) -> String {
    format!("{network}/{ip}")
}

// === Encoding ===

pub fn workload(w: &Workload) -> Named<pw::Address> {
    let message = pw::Workload {
        uid: w.uid.to_string(),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        addresses: w.addresses.iter().map(ip_bytes).collect(),
        hostname: w.hostname.clone(),
        network: w.network.clone(),
        tunnel_protocol: match w.protocol {
            TunnelProtocol::None => pw::TunnelProtocol::None,
            TunnelProtocol::Hbone => pw::TunnelProtocol::Hbone,
        } as i32,
        trust_domain: w.trust_domain.clone(),
        service_account: w.service_account.clone(),
        waypoint: w.waypoint.as_ref().map(gateway),
        network_gateway: w.network_gateway.as_ref().map(gateway),
        node: w.node.clone(),
        canonical_name: w.canonical_name.clone(),
        canonical_revision: w.canonical_revision.clone(),
        workload_type: match w.workload_type {
            WorkloadType::Deployment => pw::WorkloadType::Deployment,
            WorkloadType::Cronjob => pw::WorkloadType::Cronjob,
            WorkloadType::Pod => pw::WorkloadType::Pod,
            WorkloadType::Job => pw::WorkloadType::Job,
        } as i32,
        workload_name: w.workload_name.clone(),
        native_tunnel: w.native_tunnel,
        application_tunnel: w.application_tunnel.as_ref().map(|t| pw::ApplicationTunnel {
            protocol: match t.protocol {
                AppTunnelProtocol::None => pw::application_tunnel::Protocol::None,
                AppTunnelProtocol::Proxy => pw::application_tunnel::Protocol::Proxy,
            } as i32,
            port: t.port.unwrap_or(0).into(),
        }),
        services: w.services.iter().map(|(k, ports)| (k.to_string(), port_list(ports))).collect(),
        authorization_policies: w.authorization_policies.iter().map(|p| p.to_string()).collect(),
        status: match w.status {
            HealthStatus::Healthy => pw::WorkloadStatus::Healthy,
            HealthStatus::Unhealthy => pw::WorkloadStatus::Unhealthy,
        } as i32,
        cluster_id: w.cluster_id.clone(),
        locality: Some(pw::Locality {
            region: w.locality.region.clone(),
            zone: w.locality.zone.clone(),
            subzone: w.locality.subzone.clone(),
        }),
        network_mode: match w.network_mode {
            NetworkMode::Standard => pw::NetworkMode::Standard,
            NetworkMode::HostNetwork => pw::NetworkMode::HostNetwork,
        } as i32,
        extensions: Vec::new(),
        capacity: Some(w.capacity),
    };
    Named {
        name: w.uid.to_string(),
        aliases: w.addresses.iter().map(|ip| alias(&w.network, ip)).collect(),
        message: pw::Address { r#type: Some(pw::address::Type::Workload(message)) },
    }
}

fn service_ports(s: &Service) -> Vec<pw::Port> {
    let protocol = |p: &u16| match s.app_protocols.get(p) {
        None => pw::AppProtocol::Unknown,
        Some(AppProtocol::Http11) => pw::AppProtocol::Http11,
        Some(AppProtocol::Http2) => pw::AppProtocol::Http2,
        Some(AppProtocol::Grpc) => pw::AppProtocol::Grpc,
        Some(AppProtocol::Tcp) => pw::AppProtocol::Tcp,
        Some(AppProtocol::Tls) => pw::AppProtocol::Tls,
    } as i32;
    let ports = s.ports.iter();
    ports.map(|(sp, t)| pw::Port { service_port: (*sp).into(), target_port: (*t).into(), app_protocol: protocol(sp) }).collect()
}

fn port_list(ports: &PortMap) -> pw::PortList {
    pw::PortList {
        ports: ports.iter().map(|(s, t)| pw::Port { service_port: (*s).into(), target_port: (*t).into(), app_protocol: 0 }).collect(),
    }
}

fn network_address(a: &NetworkAddress) -> pw::NetworkAddress {
    pw::NetworkAddress { network: a.network.clone(), address: ip_bytes(&a.address), length: None }
}

fn gateway(g: &GatewayAddress) -> pw::GatewayAddress {
    let destination = match &g.destination {
        GatewayDestination::Address(a) => pw::gateway_address::Destination::Address(network_address(a)),
        GatewayDestination::Hostname { namespace, hostname } => {
            pw::gateway_address::Destination::Hostname(pw::NamespacedHostname { namespace: namespace.clone(), hostname: hostname.clone() })
        }
    };
    pw::GatewayAddress { destination: Some(destination), hbone_mtls_port: g.hbone_mtls_port.into() }
}

pub fn service(s: &Service) -> Named<pw::Address> {
    let mut addresses: Vec<pw::NetworkAddress> = s.vips.iter().map(network_address).collect();
    addresses.extend(s.cidr_vips.iter().map(|c| pw::NetworkAddress {
        network: c.network.clone(),
        address: ip_bytes(&c.cidr.network()),
        length: Some(c.cidr.prefix_len().into()),
    }));
    let message = pw::Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.clone(),
        addresses,
        ports: service_ports(s),
        subject_alt_names: s.subject_alt_names.clone(),
        waypoint: s.waypoint.as_ref().map(gateway),
        load_balancing: s.load_balancing.as_ref().map(|l| pw::LoadBalancing {
            routing_preference: l.routing_preference.iter().map(|p| scope(*p) as i32).collect(),
            mode: match l.mode {
                LbMode::Standard => pw::load_balancing::Mode::UnspecifiedMode,
                LbMode::Strict => pw::load_balancing::Mode::Strict,
                LbMode::Failover => pw::load_balancing::Mode::Failover,
                LbMode::Passthrough => pw::load_balancing::Mode::Passthrough,
            } as i32,
            health_policy: match l.health_policy {
                HealthPolicy::OnlyHealthy => pw::load_balancing::HealthPolicy::OnlyHealthy,
                HealthPolicy::AllowAll => pw::load_balancing::HealthPolicy::AllowAll,
            } as i32,
        }),
        ip_families: match s.ip_families {
            IpFamilies::Automatic => pw::IpFamilies::Automatic,
            IpFamilies::Ipv4Only => pw::IpFamilies::Ipv4Only,
            IpFamilies::Ipv6Only => pw::IpFamilies::Ipv6Only,
            IpFamilies::Dual => pw::IpFamilies::Dual,
        } as i32,
        extensions: Vec::new(),
        canonical: s.canonical,
        ingress_use_waypoint: false,
        weighted_waypoints: s
            .weighted_waypoints
            .iter()
            .map(|w| pw::WeightedWaypoint { destination: Some(gateway(&w.destination)), weight: w.weight })
            .collect(),
        visibility: match s.visibility {
            Visibility::Public => pw::Visibility::Public,
            Visibility::Namespace => pw::Visibility::Namespace,
        } as i32,
    };
    Named {
        name: s.key().to_string(),
        aliases: s.vips.iter().map(|v| alias(&v.network, &v.address)).collect(),
        message: pw::Address { r#type: Some(pw::address::Type::Service(message)) },
    }
}

fn scope(s: LbScope) -> pw::load_balancing::Scope {
    use pw::load_balancing::Scope as S;
    match s {
        LbScope::Region => S::Region,
        LbScope::Zone => S::Zone,
        LbScope::Subzone => S::Subzone,
        LbScope::Node => S::Node,
        LbScope::Cluster => S::Cluster,
        LbScope::Network => S::Network,
    }
}

pub fn authorization(p: &Authorization) -> Named<ps::Authorization> {
    let message = ps::Authorization {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        scope: match p.scope {
            PolicyScope::Global => ps::Scope::Global,
            PolicyScope::Namespace => ps::Scope::Namespace,
            PolicyScope::WorkloadSelector => ps::Scope::WorkloadSelector,
        } as i32,
        action: match p.action {
            PolicyAction::Allow => ps::Action::Allow,
            PolicyAction::Deny => ps::Action::Deny,
        } as i32,
        rules: p
            .rules
            .iter()
            .map(|rule| ps::Rule { clauses: rule.iter().map(|c| ps::Clause { matches: c.iter().map(match_message).collect() }).collect() })
            .collect(),
        dry_run: p.dry_run,
        extensions: p.notes.iter().map(|n| note_extension(n)).collect(),
    };
    Named { name: p.key().to_string(), aliases: Vec::new(), message }
}

/// Translation notes travel as extensions, which Istio's data planes ignore.
pub(crate) const NOTE_EXTENSION: &str = "ferry.dev/translation-note";
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

fn note_extension(note: &str) -> pw::Extension {
    use prost::Message;
    let value = prost_types::Any { type_url: STRING_VALUE.into(), value: note.to_string().encode_to_vec() };
    pw::Extension { name: NOTE_EXTENSION.into(), config: Some(value) }
}

pub(crate) fn note_text(e: &pw::Extension) -> Option<String> {
    use prost::Message;
    let c = e.config.as_ref().filter(|c| c.type_url == STRING_VALUE)?;
    String::decode(c.value.as_slice()).ok()
}

fn string_matches(v: &[StringMatch]) -> Vec<ps::StringMatch> {
    use ps::string_match::MatchType as M;
    v.iter()
        .map(|m| ps::StringMatch {
            match_type: Some(match m {
                StringMatch::Exact(s) => M::Exact(s.clone()),
                StringMatch::Prefix(s) => M::Prefix(s.clone()),
                StringMatch::Suffix(s) => M::Suffix(s.clone()),
                StringMatch::Presence => M::Presence(()),
            }),
        })
        .collect()
}

fn addresses(v: &[IpNet]) -> Vec<ps::Address> {
    v.iter().map(|n| ps::Address { address: ip_bytes(&n.network()), length: n.prefix_len().into() }).collect()
}

fn accounts(v: &[ServiceAccountMatch]) -> Vec<ps::ServiceAccountMatch> {
    v.iter().map(|a| ps::ServiceAccountMatch { namespace: a.namespace.clone(), service_account: a.service_account.clone() }).collect()
}

fn match_message(m: &Match) -> ps::Match {
    let ports = |v: &[u16]| v.iter().map(|p| u32::from(*p)).collect();
    ps::Match {
        namespaces: string_matches(&m.namespaces),
        not_namespaces: string_matches(&m.not_namespaces),
        principals: string_matches(&m.principals),
        not_principals: string_matches(&m.not_principals),
        source_ips: addresses(&m.source_ips),
        not_source_ips: addresses(&m.not_source_ips),
        destination_ips: addresses(&m.destination_ips),
        not_destination_ips: addresses(&m.not_destination_ips),
        destination_ports: ports(&m.destination_ports),
        not_destination_ports: ports(&m.not_destination_ports),
        service_accounts: accounts(&m.service_accounts),
        not_service_accounts: accounts(&m.not_service_accounts),
        extensions: Vec::new(),
    }
}

#[cfg(test)]
#[path = "wds_tests.rs"]
mod tests;

mod decode;
pub use decode::{decode_address, decode_authorization, Decoded};
