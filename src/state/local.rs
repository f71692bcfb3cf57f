//! The local state file: workloads, services and policies in the YAML schema Istio's ztunnel
//! reads from `LOCAL_XDS_PATH` (protocols.md §6), so one file drives either proxy.
//!
//! Unknown keys are errors. A file that fails to parse or validate is reported with its line
//! and column and changes nothing: the watcher keeps serving the last good state.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer};

use super::model::{self, *};
use super::{StateInput, StateStore};

#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    #[error("cannot read local config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("local config {origin}: line {line}, column {column}: {message}")]
    Syntax { origin: String, line: usize, column: usize, message: String },
    #[error("local config {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// Parses a local config document; `origin` names it in errors (a path, or `LOCAL_XDS`).
pub fn parse(text: &str, origin: &str) -> Result<StateInput, LocalConfigError> {
    let doc: LocalConfig = if text.trim().is_empty() {
        LocalConfig::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
            LocalConfigError::Syntax { origin: origin.to_string(), line, column, message: strip_location(&e.to_string()) }
        })?
    };
    doc.into_state().map_err(|message| LocalConfigError::Invalid { origin: origin.to_string(), message })
}

pub fn load_file(path: &Path) -> Result<StateInput, LocalConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| LocalConfigError::Read { path: path.to_path_buf(), source })?;
    parse(&text, &path.display().to_string())
}

/// serde_yaml appends " at line X column Y"; we report the location in our own fields.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Polls `path` and republishes the state whenever its contents change. Polling (not inotify)
/// also follows Kubernetes ConfigMap symlink swaps.
pub async fn watch_file(path: PathBuf, store: StateStore, interval: Duration) {
    let mut last = file_stamp(&path);
    loop {
        tokio::time::sleep(interval).await;
        let stamp = file_stamp(&path);
        if stamp == last {
            continue;
        }
        last = stamp;
        match load_file(&path) {
            Ok(input) => {
                let (w, s, p) = (input.workloads.len(), input.services.len(), input.policies.len());
                let version = store.replace(input);
                metrics::counter!("ferry_local_config_reloads_total", "result" => "ok").increment(1);
                tracing::info!(path = %path.display(), version, workloads = w, services = s, policies = p, "local config reloaded");
            }
            Err(e) => {
                metrics::counter!("ferry_local_config_reloads_total", "result" => "error").increment(1);
                tracing::error!(error = %e, "local config rejected; keeping the last good state");
            }
        }
    }
}

type Stamp = Option<(SystemTime, u64, u64)>;

fn file_stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LocalConfig {
    #[serde(default)]
    workloads: Vec<LocalWorkload>,
    #[serde(default)]
    services: Vec<LocalService>,
    #[serde(default)]
    policies: Vec<LocalPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LocalWorkload {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    name: String,
    namespace: String,
    workload_ips: Vec<IpAddr>,
    #[serde(default)]
    protocol: LocalProtocol,
    #[serde(default)]
    network_mode: LocalNetworkMode,
    #[serde(default)]
    trust_domain: String,
    #[serde(default)]
    service_account: String,
    #[serde(default)]
    network: String,
    #[serde(default)]
    node: String,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    cluster_id: String,
    #[serde(default)]
    workload_name: String,
    #[serde(default)]
    workload_type: LocalWorkloadType,
    #[serde(default)]
    canonical_name: String,
    #[serde(default)]
    canonical_revision: String,
    waypoint: Option<LocalGateway>,
    network_gateway: Option<LocalGateway>,
    #[serde(default)]
    native_tunnel: bool,
    application_tunnel: Option<LocalAppTunnel>,
    #[serde(default)]
    authorization_policies: Vec<String>,
    #[serde(default)]
    status: LocalStatus,
    #[serde(default)]
    locality: LocalLocality,
    capacity: Option<u32>,
    #[serde(default)]
    services: BTreeMap<String, BTreeMap<u16, u16>>,
}

#[derive(Deserialize, Default, Clone, Copy)]
enum LocalProtocol {
    #[default]
    #[serde(rename = "TCP", alias = "tcp")]
    Tcp,
    #[serde(rename = "HBONE", alias = "hbone")]
    Hbone,
}

#[derive(Deserialize, Default, Clone, Copy)]
enum LocalNetworkMode {
    #[default]
    Standard,
    HostNetwork,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum LocalWorkloadType {
    #[default]
    #[serde(alias = "Deployment")]
    Deployment,
    #[serde(alias = "CronJob", alias = "Cronjob")]
    Cronjob,
    #[serde(alias = "Pod")]
    Pod,
    #[serde(alias = "Job")]
    Job,
}

#[derive(Deserialize, Default, Clone, Copy)]
enum LocalStatus {
    #[default]
    Healthy,
    Unhealthy,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LocalLocality {
    #[serde(default)]
    region: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    subzone: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LocalGateway {
    destination: GatewayDest,
    #[serde(default = "default_hbone_port")]
    hbone_mtls_port: u16,
}

fn default_hbone_port() -> u16 {
    crate::proxy::HBONE_PORT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalAppTunnel {
    protocol: LocalAppTunnelProtocol,
    port: Option<u16>,
}

#[derive(Deserialize, Clone, Copy)]
enum LocalAppTunnelProtocol {
    #[serde(rename = "NONE")]
    None,
    #[serde(rename = "PROXY")]
    Proxy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LocalService {
    name: String,
    namespace: String,
    hostname: String,
    vips: Vec<NetAddr>,
    ports: BTreeMap<u16, u16>,
    #[serde(default)]
    cidr_vips: Vec<LocalCidrVip>,
    #[serde(default)]
    endpoints: Vec<LocalEndpoint>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
    waypoint: Option<LocalGateway>,
    #[serde(default)]
    weighted_waypoints: Vec<LocalWeightedWaypoint>,
    load_balancer: Option<LocalLoadBalancer>,
    #[serde(default)]
    ip_families: LocalIpFamilies,
    #[serde(default)]
    canonical: bool,
    #[serde(default)]
    visibility: LocalVisibility,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LocalEndpoint {
    workload_uid: String,
    #[serde(default)]
    port: BTreeMap<u16, u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalCidrVip {
    #[serde(default)]
    network: String,
    cidr: Cidr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalWeightedWaypoint {
    destination: LocalGateway,
    #[serde(default)]
    weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LocalLoadBalancer {
    #[serde(default)]
    routing_preferences: Vec<LocalScope>,
    #[serde(default)]
    mode: LocalLbMode,
    #[serde(default)]
    health_policy: LocalHealthPolicy,
}

#[derive(Deserialize, Clone, Copy)]
enum LocalScope {
    Region,
    Zone,
    Subzone,
    Node,
    Cluster,
    Network,
}

#[derive(Deserialize, Default, Clone, Copy)]
enum LocalLbMode {
    #[default]
    Standard,
    Strict,
    Failover,
    Passthrough,
}

#[derive(Deserialize, Default, Clone, Copy)]
enum LocalHealthPolicy {
    #[default]
    OnlyHealthy,
    AllowAll,
}

#[derive(Deserialize, Default, Clone, Copy)]
enum LocalIpFamilies {
    #[default]
    Automatic,
    #[serde(rename = "IPv4", alias = "IPv4Only")]
    Ipv4,
    #[serde(rename = "IPv6", alias = "IPv6Only")]
    Ipv6,
    Dual,
}

#[derive(Deserialize, Default, Clone, Copy)]
enum LocalVisibility {
    #[default]
    Public,
    Namespace,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LocalPolicy {
    name: String,
    namespace: String,
    scope: LocalPolicyScope,
    action: LocalAction,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    rules: Vec<Vec<Vec<LocalMatch>>>,
}

#[derive(Deserialize, Clone, Copy)]
enum LocalPolicyScope {
    Global,
    Namespace,
    WorkloadSelector,
}

#[derive(Deserialize, Clone, Copy)]
enum LocalAction {
    Allow,
    Deny,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LocalMatch {
    #[serde(default)]
    namespaces: Vec<LocalStringMatch>,
    #[serde(default)]
    not_namespaces: Vec<LocalStringMatch>,
    #[serde(default)]
    principals: Vec<LocalStringMatch>,
    #[serde(default)]
    not_principals: Vec<LocalStringMatch>,
    #[serde(default)]
    source_ips: Vec<Cidr>,
    #[serde(default)]
    not_source_ips: Vec<Cidr>,
    #[serde(default)]
    destination_ips: Vec<Cidr>,
    #[serde(default)]
    not_destination_ips: Vec<Cidr>,
    #[serde(default)]
    destination_ports: Vec<u16>,
    #[serde(default)]
    not_destination_ports: Vec<u16>,
    #[serde(default)]
    service_accounts: Vec<LocalServiceAccount>,
    #[serde(default)]
    not_service_accounts: Vec<LocalServiceAccount>,
}

/// Written as YAML tags: `!Exact "x"`, `!Prefix x`, `!Suffix x`, `!Presence`.
#[derive(Deserialize)]
enum LocalStringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LocalServiceAccount {
    namespace: String,
    service_account: String,
}

/// `"<network>/<IP>"`; the network may be empty (`"/10.0.0.1"`).
struct NetAddr(NetworkAddress);

impl<'de> Deserialize<'de> for NetAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (network, ip) =
            s.rsplit_once('/').ok_or_else(|| de::Error::custom(format!("address {s:?} is not of the form <network>/<IP>")))?;
        let address = IpAddr::from_str(ip).map_err(|_| de::Error::custom(format!("{ip:?} in {s:?} is not an IP address")))?;
        Ok(NetAddr(NetworkAddress { network: network.to_string(), address }))
    }
}

/// `<network>/<IP>` or `<namespace>/<hostname>`.
struct GatewayDest(GatewayDestination);

impl<'de> Deserialize<'de> for GatewayDest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (left, right) =
            s.split_once('/').ok_or_else(|| de::Error::custom(format!("gateway {s:?} is not <network>/<IP> or <namespace>/<hostname>")))?;
        Ok(GatewayDest(match IpAddr::from_str(right) {
            Ok(address) => GatewayDestination::Address(NetworkAddress { network: left.to_string(), address }),
            Err(_) if !left.is_empty() && !right.is_empty() && !right.contains('/') => {
                GatewayDestination::Hostname { namespace: left.to_string(), hostname: right.to_string() }
            }
            Err(_) => return Err(de::Error::custom(format!("gateway {s:?} is not <network>/<IP> or <namespace>/<hostname>"))),
        }))
    }
}

/// A CIDR (`10.0.0.0/8`) or a bare IP (a host route).
struct Cidr(IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(net) = IpNet::from_str(&s) {
            return Ok(Cidr(net));
        }
        IpAddr::from_str(&s).map(|ip| Cidr(IpNet::from(ip))).map_err(|_| de::Error::custom(format!("{s:?} is not an IP address or CIDR")))
    }
}

impl LocalConfig {
    fn into_state(self) -> Result<StateInput, String> {
        let mut workloads = Vec::with_capacity(self.workloads.len());
        let mut uids = HashSet::new();
        for (i, w) in self.workloads.into_iter().enumerate() {
            let w = w.into_model(i)?;
            if !uids.insert(w.uid.clone()) {
                return Err(format!("workloads[{i}]: duplicate uid {:?}", w.uid));
            }
            workloads.push(w);
        }
        let mut services = Vec::with_capacity(self.services.len());
        let mut keys = HashSet::new();
        for (i, s) in self.services.into_iter().enumerate() {
            let (svc, endpoints) = s.into_model(i)?;
            if !keys.insert(svc.key()) {
                return Err(format!("services[{i}]: duplicate service {}", svc.key()));
            }
            attach_endpoints(&mut workloads, &svc, endpoints, i)?;
            services.push(svc);
        }
        let mut policies = Vec::with_capacity(self.policies.len());
        let mut pkeys = HashSet::new();
        for (i, p) in self.policies.into_iter().enumerate() {
            let p = p.into_model(i)?;
            if !pkeys.insert(p.key()) {
                return Err(format!("policies[{i}]: duplicate policy {}", p.key()));
            }
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
            .find(|w| w.uid == ep.workload_uid)
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
        for key in self.services.keys() {
            if key.split('/').count() != 2 {
                return Err(format!("workloads[{i}] ({}): service key {key:?} is not <namespace>/<hostname>", self.name));
            }
        }
        let uid = if self.uid.is_empty() { format!("local//{}/{}", self.namespace, self.name) } else { self.uid };
        let w = Workload {
            uid,
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
            services: self.services,
            authorization_policies: self.authorization_policies,
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

pub use super::local_out::to_yaml;

#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;
