//! Local config schema to model: validation the schema cannot express (non-empty names, unique
//! keys, identities that parse) and the one-to-one mapping of every enum.

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::Hash;

use ipnet::IpNet;

use super::schema::*;
use crate::model::{self, *};
use crate::state::StateInput;
use crate::yaml::YamlError;

/// A document that parses but does not validate: the line of the entry at fault, and why.
#[derive(Debug)]
pub(super) struct Invalid {
    pub(super) line: usize,
    pub(super) message: String,
}

/// Attaches the entry's line to an entry's validation error.
fn at<T>(line: usize, r: Result<T, String>) -> Result<T, Invalid> {
    r.map_err(|message| Invalid { line, message })
}

/// Refuses a second entry with the same key, naming both lines.
fn unique<K: Hash + Eq + Display>(seen: &mut HashMap<K, usize>, key: K, line: usize, entry: String, what: &str) -> Result<(), Invalid> {
    match seen.get(&key) {
        Some(first) => Err(Invalid { line, message: format!("{entry}: duplicate {what} {key} (first at line {first})") }),
        None => {
            seen.insert(key, line);
            Ok(())
        }
    }
}

impl LocalConfig {
    pub(super) fn into_state(self) -> Result<StateInput, Invalid> {
        let mut workloads = Vec::with_capacity(self.workloads.len());
        let mut uids = HashMap::new();
        for (i, Lined { line, value }) in self.workloads.into_iter().enumerate() {
            let w = at(line, value.into_model(i))?;
            unique(&mut uids, format!("{:?}", w.uid.as_str()), line, format!("workloads[{i}]"), "uid")?;
            workloads.push(w);
        }
        let mut services = Vec::with_capacity(self.services.len());
        let mut keys = HashMap::new();
        for (i, Lined { line, value }) in self.services.into_iter().enumerate() {
            let (svc, endpoints) = at(line, value.into_model(i))?;
            unique(&mut keys, svc.key(), line, format!("services[{i}]"), "service")?;
            at(line, attach_endpoints(&mut workloads, &svc, endpoints, i))?;
            services.push(svc);
        }
        let mut policies = Vec::with_capacity(self.policies.len());
        let mut pkeys = HashMap::new();
        for (i, Lined { line, value }) in self.policies.into_iter().enumerate() {
            let p = at(
                line,
                match value {
                    PolicyEntry::Read(p) => p.into_model(i),
                    PolicyEntry::Unreadable { head, error } => head.failing_closed(i, &error),
                },
            )?;
            unique(&mut pkeys, p.key(), line, format!("policies[{i}]"), "policy")?;
            policies.push(p);
        }
        Ok(StateInput { workloads, services, policies })
    }
}

/// Explicit `endpoints` on a service add that service to the named workloads' services maps.
fn attach_endpoints(workloads: &mut [Workload], svc: &Service, eps: Vec<LocalEndpoint>, i: usize) -> Result<(), String> {
    for ep in eps {
        let w = workloads
            .iter_mut()
            .find(|w| w.uid == ep.workload_uid.as_str())
            .ok_or_else(|| format!("services[{i}]: endpoint names unknown workload uid {:?}", ep.workload_uid))?;
        let ports = if ep.port.is_empty() { svc.ports.clone() } else { ep.port };
        w.services.insert(svc.key(), ports);
    }
    Ok(())
}

impl LocalWorkload {
    fn into_model(self, i: usize) -> Result<Workload, String> {
        if self.namespace.is_empty() {
            return Err(format!("workloads[{i}]: namespace must not be empty"));
        }
        if self.workload_ips.is_empty() && self.hostname.is_empty() {
            return Err(format!("workloads[{i}] ({}): needs workloadIps or hostname", self.name));
        }
        let mut services = std::collections::BTreeMap::new();
        for (key, ports) in self.services {
            let Some(k) = ServiceKey::parse(&key) else {
                return Err(format!("workloads[{i}] ({}): service key {key:?} is not <namespace>/<hostname>", self.name));
            };
            services.insert(k, ports);
        }
        let uid = if self.uid.is_empty() { format!("local//{}/{}", self.namespace, self.name) } else { self.uid };
        let w = Workload {
            uid: uid.into(),
            name: self.name,
            namespace: self.namespace,
            addresses: self.workload_ips,
            hostname: self.hostname,
            network: self.network,
            protocol: match self.protocol {
                LocalProtocol::Tcp => TunnelProtocol::None,
                LocalProtocol::Hbone => TunnelProtocol::Hbone,
            },
            trust_domain: self.trust_domain,
            service_account: self.service_account,
            waypoint: self.waypoint.map(LocalGateway::into_model),
            network_gateway: self.network_gateway.map(LocalGateway::into_model),
            node: self.node,
            canonical_name: self.canonical_name,
            canonical_revision: self.canonical_revision,
            workload_type: match self.workload_type {
                LocalWorkloadType::Deployment => WorkloadType::Deployment,
                LocalWorkloadType::Cronjob => WorkloadType::Cronjob,
                LocalWorkloadType::Pod => WorkloadType::Pod,
                LocalWorkloadType::Job => WorkloadType::Job,
            },
            workload_name: self.workload_name,
            native_tunnel: self.native_tunnel,
            application_tunnel: self.application_tunnel.map(|t| ApplicationTunnel {
                protocol: match t.protocol {
                    LocalAppTunnelProtocol::None => AppTunnelProtocol::None,
                    LocalAppTunnelProtocol::Proxy => AppTunnelProtocol::Proxy,
                },
                port: t.port.filter(|p| *p != 0),
            }),
            services,
            authorization_policies: self.authorization_policies.iter().map(|p| PolicyKey::parse(p)).collect(),
            status: match self.status {
                LocalStatus::Healthy => HealthStatus::Healthy,
                LocalStatus::Unhealthy => HealthStatus::Unhealthy,
            },
            cluster_id: self.cluster_id,
            locality: Locality { region: self.locality.region, zone: self.locality.zone, subzone: self.locality.subzone },
            network_mode: match self.network_mode {
                LocalNetworkMode::Standard => NetworkMode::Standard,
                LocalNetworkMode::HostNetwork => NetworkMode::HostNetwork,
            },
            capacity: self.capacity.unwrap_or(1),
        };
        w.identity().map_err(|e| format!("workloads[{i}] ({}): {e}", w.name))?;
        Ok(w)
    }
}

impl LocalAppProtocol {
    fn into_model(self) -> AppProtocol {
        match self {
            LocalAppProtocol::Http11 => AppProtocol::Http11,
            LocalAppProtocol::Http2 => AppProtocol::Http2,
            LocalAppProtocol::Grpc => AppProtocol::Grpc,
            LocalAppProtocol::Tcp => AppProtocol::Tcp,
            LocalAppProtocol::Tls => AppProtocol::Tls,
        }
    }
}

impl LocalGateway {
    fn into_model(self) -> GatewayAddress {
        GatewayAddress { destination: self.destination.0, hbone_mtls_port: self.hbone_mtls_port }
    }
}

impl LocalService {
    fn into_model(self, i: usize) -> Result<(Service, Vec<LocalEndpoint>), String> {
        if self.namespace.is_empty() || self.hostname.is_empty() {
            return Err(format!("services[{i}] ({}): namespace and hostname must not be empty", self.name));
        }
        let svc = Service {
            name: self.name,
            namespace: self.namespace,
            hostname: self.hostname,
            vips: self.vips.into_iter().map(|v| v.0).collect(),
            cidr_vips: self.cidr_vips.into_iter().map(|c| CidrVip { network: c.network, cidr: c.cidr.0 }).collect(),
            app_protocols: self.app_protocols.into_iter().map(|(p, a)| (p, a.into_model())).collect(),
            ports: self.ports,
            subject_alt_names: self.subject_alt_names,
            waypoint: self.waypoint.map(LocalGateway::into_model),
            weighted_waypoints: self
                .weighted_waypoints
                .into_iter()
                .map(|w| WeightedWaypoint { destination: w.destination.into_model(), weight: w.weight })
                .collect(),
            load_balancing: self.load_balancer.map(LocalLoadBalancer::into_model),
            ip_families: match self.ip_families {
                LocalIpFamilies::Automatic => IpFamilies::Automatic,
                LocalIpFamilies::Ipv4 => IpFamilies::Ipv4Only,
                LocalIpFamilies::Ipv6 => IpFamilies::Ipv6Only,
                LocalIpFamilies::Dual => IpFamilies::Dual,
            },
            canonical: self.canonical,
            visibility: match self.visibility {
                LocalVisibility::Public => Visibility::Public,
                LocalVisibility::Namespace => Visibility::Namespace,
            },
        };
        Ok((svc, self.endpoints))
    }
}

impl LocalLoadBalancer {
    fn into_model(self) -> LoadBalancing {
        LoadBalancing {
            routing_preference: self
                .routing_preferences
                .into_iter()
                .map(|s| match s {
                    LocalScope::Region => LbScope::Region,
                    LocalScope::Zone => LbScope::Zone,
                    LocalScope::Subzone => LbScope::Subzone,
                    LocalScope::Node => LbScope::Node,
                    LocalScope::Cluster => LbScope::Cluster,
                    LocalScope::Network => LbScope::Network,
                })
                .collect(),
            mode: match self.mode {
                LocalLbMode::Standard => LbMode::Standard,
                LocalLbMode::Strict => LbMode::Strict,
                LocalLbMode::Failover => LbMode::Failover,
                LocalLbMode::Passthrough => LbMode::Passthrough,
            },
            health_policy: match self.health_policy {
                LocalHealthPolicy::OnlyHealthy => HealthPolicy::OnlyHealthy,
                LocalHealthPolicy::AllowAll => HealthPolicy::AllowAll,
            },
        }
    }
}

impl LocalPolicy {
    fn into_model(self, i: usize) -> Result<Authorization, String> {
        if self.name.is_empty() || self.namespace.is_empty() {
            return Err(format!("policies[{i}]: name and namespace must not be empty"));
        }
        Ok(Authorization {
            name: self.name,
            namespace: self.namespace,
            scope: match self.scope {
                LocalPolicyScope::Global => PolicyScope::Global,
                LocalPolicyScope::Namespace => PolicyScope::Namespace,
                LocalPolicyScope::WorkloadSelector => PolicyScope::WorkloadSelector,
            },
            action: match self.action {
                LocalAction::Allow => PolicyAction::Allow,
                LocalAction::Deny => PolicyAction::Deny,
            },
            dry_run: self.dry_run,
            rules: self
                .rules
                .into_iter()
                .map(|rule| rule.into_iter().map(|clause| clause.into_iter().map(LocalMatch::into_model).collect()).collect())
                .collect(),
            notes: Vec::new(),
        })
    }
}

impl PolicyHead {
    /// The policy an unreadable entry becomes (see `Authorization::failing_closed`). A scope
    /// that cannot be read is taken as the policy's namespace, as the Kubernetes translation
    /// does for an unreadable selector.
    fn failing_closed(self, i: usize, error: &YamlError) -> Result<Authorization, String> {
        if self.name.is_empty() || self.namespace.is_empty() {
            return Err(format!("policies[{i}]: name and namespace must not be empty"));
        }
        let (scope, fallback) = match self.scope.as_str() {
            Some("Global") => (PolicyScope::Global, ""),
            Some("Namespace") => (PolicyScope::Namespace, ""),
            Some("WorkloadSelector") => (PolicyScope::WorkloadSelector, ""),
            _ => (PolicyScope::Namespace, "; its scope cannot be read, so it applies to its namespace"),
        };
        let allow = self.action.as_str() == Some("Allow");
        let dry_run = matches!(self.dry_run, Loose::Bool(true));
        let why = format!("policies[{i}], line {}, column {}: {}{fallback}", error.line, error.column, error.message);
        Ok(Authorization::failing_closed(self.name, self.namespace, scope, allow, dry_run, &why))
    }
}

fn strings(v: Vec<LocalStringMatch>) -> Vec<model::StringMatch> {
    v.into_iter()
        .map(|m| match m {
            LocalStringMatch::Exact(s) => model::StringMatch::Exact(s),
            LocalStringMatch::Prefix(s) => model::StringMatch::Prefix(s),
            LocalStringMatch::Suffix(s) => model::StringMatch::Suffix(s),
            LocalStringMatch::Presence => model::StringMatch::Presence,
        })
        .collect()
}

fn nets(v: Vec<Cidr>) -> Vec<IpNet> {
    v.into_iter().map(|c| c.0).collect()
}

fn accounts(v: Vec<LocalServiceAccount>) -> Vec<ServiceAccountMatch> {
    v.into_iter().map(|a| ServiceAccountMatch { namespace: a.namespace, service_account: a.service_account }).collect()
}

impl LocalMatch {
    fn into_model(self) -> Match {
        Match {
            namespaces: strings(self.namespaces),
            not_namespaces: strings(self.not_namespaces),
            principals: strings(self.principals),
            not_principals: strings(self.not_principals),
            source_ips: nets(self.source_ips),
            not_source_ips: nets(self.not_source_ips),
            destination_ips: nets(self.destination_ips),
            not_destination_ips: nets(self.not_destination_ips),
            destination_ports: self.destination_ports,
            not_destination_ports: self.not_destination_ports,
            service_accounts: accounts(self.service_accounts),
            not_service_accounts: accounts(self.not_service_accounts),
        }
    }
}
