//! The workload/service/authorization model ferry routes and authorizes on (WDS, protocols.md §4.7).
//!
//! These are validated, typed values: every address parsed, every enum known. Sources (the
//! local YAML file, later WDS and the cluster-state translation) convert into these types and
//! reject what does not fit, so the data path never re-validates.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

use crate::identity::{Identity, IdentityError, DEFAULT_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN};

/// Service port to target port.
pub(crate) type PortMap = BTreeMap<u16, u16>;

/// A string key with its own type, so a workload uid cannot be passed where a service key is
/// meant. Cheap to clone (shared), compared and hashed as its string, looked up by `&str`.
macro_rules! string_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }
    };
}

string_key!(
    /// A workload's uid as WDS names it (`<cluster>//Pod/<namespace>/<name>` for pods).
    WorkloadUid
);

impl From<&str> for WorkloadUid {
    fn from(s: &str) -> Self {
        WorkloadUid(s.into())
    }
}

impl From<String> for WorkloadUid {
    fn from(s: String) -> Self {
        WorkloadUid(s.into())
    }
}

string_key!(
    /// `<namespace>/<hostname>`: how a workload names a service it is an endpoint of.
    ServiceKey
);

impl ServiceKey {
    pub(crate) fn new(namespace: &str, hostname: &str) -> Self {
        ServiceKey(format!("{namespace}/{hostname}").into())
    }

    /// A key as written in a local config or WDS: exactly one `/`, both sides non-empty.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let (ns, host) = s.split_once('/')?;
        (!ns.is_empty() && !host.is_empty() && !host.contains('/')).then(|| ServiceKey(s.into()))
    }
}

string_key!(
    /// `<namespace>/<name>`: how workloads reference authorization policies.
    PolicyKey
);

impl PolicyKey {
    pub(crate) fn new(namespace: &str, name: &str) -> Self {
        PolicyKey(format!("{namespace}/{name}").into())
    }

    /// A reference as written in a local config or WDS.
    pub(crate) fn parse(s: &str) -> Self {
        PolicyKey(s.into())
    }
}

impl From<&str> for PolicyKey {
    fn from(s: &str) -> Self {
        PolicyKey::parse(s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
pub(crate) enum TunnelProtocol {
    #[default]
    #[serde(rename = "TCP")]
    None,
    #[serde(rename = "HBONE")]
    Hbone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
pub(crate) enum HealthStatus {
    #[default]
    Healthy,
    Unhealthy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadType {
    #[default]
    Deployment,
    Cronjob,
    Pod,
    Job,
}

impl WorkloadType {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadType::Deployment => "deployment",
            WorkloadType::Cronjob => "cronjob",
            WorkloadType::Pod => "pod",
            WorkloadType::Job => "job",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
pub(crate) enum NetworkMode {
    #[default]
    Standard,
    HostNetwork,
}

/// An IP address qualified by the network it is reachable in ("" = the default network).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct NetworkAddress {
    pub(crate) network: String,
    pub(crate) address: IpAddr,
}

impl fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.address)
    }
}

/// `network/ip`, as ztunnel writes it in its config dump: istioctl and Kiali read VIPs as
/// strings and split them at the `/`.
impl Serialize for NetworkAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum GatewayDestination {
    Address(NetworkAddress),
    Hostname { namespace: String, hostname: String },
}

/// A string (`network/ip` or `namespace/hostname`), as ztunnel writes it: istioctl reads a
/// gateway's `destination` as a string.
impl Serialize for GatewayDestination {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GatewayDestination::Address(a) => s.collect_str(a),
            GatewayDestination::Hostname { namespace, hostname } => s.collect_str(&format_args!("{namespace}/{hostname}")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GatewayAddress {
    pub(crate) destination: GatewayDestination,
    pub(crate) hbone_mtls_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub(crate) subzone: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum AppTunnelProtocol {
    #[serde(rename = "NONE")]
    None,
    #[serde(rename = "PROXY")]
    Proxy,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct ApplicationTunnel {
    pub(crate) protocol: AppTunnelProtocol,
    /// `None` keeps the original destination port.
    pub(crate) port: Option<u16>,
}

/// A pod (or other endpoint) as WDS describes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub uid: WorkloadUid,
    pub name: String,
    pub namespace: String,
    /// ztunnel's config-dump name; istioctl's IP column and `--address` filter read it.
    #[serde(rename = "workloadIps")]
    pub addresses: Vec<IpAddr>,
    pub(crate) hostname: String,
    pub network: String,
    pub(crate) protocol: TunnelProtocol,
    pub(crate) trust_domain: String,
    pub(crate) service_account: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) waypoint: Option<GatewayAddress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) network_gateway: Option<GatewayAddress>,
    pub(crate) node: String,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub workload_type: WorkloadType,
    pub workload_name: String,
    pub(crate) native_tunnel: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) application_tunnel: Option<ApplicationTunnel>,
    /// Each service this workload is an endpoint of, with its port map. The dump lists the
    /// keys only, as ztunnel does (Kiali reads a list of strings); the port maps appear in
    /// each service's `endpoints`.
    #[serde(serialize_with = "service_keys")]
    pub(crate) services: BTreeMap<ServiceKey, PortMap>,
    pub(crate) authorization_policies: Vec<PolicyKey>,
    pub(crate) status: HealthStatus,
    pub cluster_id: String,
    pub locality: Locality,
    pub(crate) network_mode: NetworkMode,
    pub(crate) capacity: u32,
}

fn service_keys<S: serde::Serializer>(m: &BTreeMap<ServiceKey, PortMap>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.keys())
}

impl Workload {
    /// The workload's SPIFFE identity, with Istio's defaults for an empty trust domain or
    /// service account.
    pub fn identity(&self) -> Result<Identity, IdentityError> {
        let td = if self.trust_domain.is_empty() { DEFAULT_TRUST_DOMAIN } else { &self.trust_domain };
        let sa = if self.service_account.is_empty() { DEFAULT_SERVICE_ACCOUNT } else { &self.service_account };
        Identity::new(td, &self.namespace, sa)
    }

    /// A minimal workload, for tests and translations that fill in the rest.
    pub fn new(uid: &str, namespace: &str, name: &str) -> Self {
        Workload {
            uid: uid.into(),
            name: name.to_string(),
            namespace: namespace.to_string(),
            addresses: Vec::new(),
            hostname: String::new(),
            network: String::new(),
            protocol: TunnelProtocol::None,
            trust_domain: String::new(),
            service_account: String::new(),
            waypoint: None,
            network_gateway: None,
            node: String::new(),
            canonical_name: String::new(),
            canonical_revision: String::new(),
            workload_type: WorkloadType::Deployment,
            workload_name: String::new(),
            native_tunnel: false,
            application_tunnel: None,
            services: BTreeMap::new(),
            authorization_policies: Vec::new(),
            status: HealthStatus::Healthy,
            cluster_id: String::new(),
            locality: Locality::default(),
            network_mode: NetworkMode::Standard,
            capacity: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum LbScope {
    Region,
    Zone,
    Subzone,
    Node,
    Cluster,
    Network,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
pub(crate) enum LbMode {
    #[default]
    Standard,
    Strict,
    Failover,
    Passthrough,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
pub(crate) enum HealthPolicy {
    #[default]
    OnlyHealthy,
    AllowAll,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LoadBalancing {
    #[serde(rename = "routingPreferences")]
    pub(crate) routing_preference: Vec<LbScope>,
    pub(crate) mode: LbMode,
    pub(crate) health_policy: HealthPolicy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
pub(crate) enum IpFamilies {
    #[default]
    Automatic,
    Ipv4Only,
    Ipv6Only,
    Dual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
pub(crate) enum Visibility {
    #[default]
    Public,
    Namespace,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct CidrVip {
    pub(crate) network: String,
    pub(crate) cidr: IpNet,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct WeightedWaypoint {
    pub(crate) destination: GatewayAddress,
    pub(crate) weight: u32,
}

/// A service port's application protocol (WDS `Port.app_protocol`), read by the waypoint to
/// choose how to serve a port; a port without one is served as TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AppProtocol {
    #[serde(rename = "HTTP11")]
    Http11,
    #[serde(rename = "HTTP2")]
    Http2,
    #[serde(rename = "GRPC")]
    Grpc,
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "TLS")]
    Tls,
}

/// A Kubernetes service (or ServiceEntry) as WDS describes it. Endpoints are not stored here:
/// they are derived from workloads' `services` maps when the snapshot is indexed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub(crate) vips: Vec<NetworkAddress>,
    pub(crate) cidr_vips: Vec<CidrVip>,
    pub(crate) ports: PortMap,
    /// Service port to its application protocol, for the ports that declare one.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) app_protocols: BTreeMap<u16, AppProtocol>,
    pub(crate) subject_alt_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) waypoint: Option<GatewayAddress>,
    pub(crate) weighted_waypoints: Vec<WeightedWaypoint>,
    /// ztunnel's config-dump name (istioctl reads `loadBalancer`).
    #[serde(rename = "loadBalancer", skip_serializing_if = "Option::is_none")]
    pub(crate) load_balancing: Option<LoadBalancing>,
    pub(crate) ip_families: IpFamilies,
    pub(crate) canonical: bool,
    pub(crate) visibility: Visibility,
}

impl Service {
    /// The key workloads use to name this service: `namespace/hostname`.
    pub(crate) fn key(&self) -> ServiceKey {
        ServiceKey::new(&self.namespace, &self.hostname)
    }

    pub(crate) fn new(namespace: &str, name: &str, hostname: &str) -> Self {
        Service {
            name: name.to_string(),
            namespace: namespace.to_string(),
            hostname: hostname.to_string(),
            vips: Vec::new(),
            cidr_vips: Vec::new(),
            ports: PortMap::new(),
            app_protocols: BTreeMap::new(),
            subject_alt_names: Vec::new(),
            waypoint: None,
            weighted_waypoints: Vec::new(),
            load_balancing: None,
            ip_families: IpFamilies::Automatic,
            canonical: false,
            visibility: Visibility::Public,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum PolicyScope {
    Global,
    Namespace,
    WorkloadSelector,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum PolicyAction {
    Allow,
    Deny,
}

/// Istio's string match forms. Matching is by byte comparison only, never by regular expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

/// ztunnel's shape (`{"Exact": "x"}`, `{"Presence": []}`): istioctl reads a match as an
/// object, so a bare `"Presence"` string would fail its whole policy list.
impl Serialize for StringMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTupleVariant;
        match self {
            StringMatch::Exact(v) => s.serialize_newtype_variant("StringMatch", 0, "Exact", v),
            StringMatch::Prefix(v) => s.serialize_newtype_variant("StringMatch", 1, "Prefix", v),
            StringMatch::Suffix(v) => s.serialize_newtype_variant("StringMatch", 2, "Suffix", v),
            StringMatch::Presence => s.serialize_tuple_variant("StringMatch", 3, "Presence", 0)?.end(),
        }
    }
}

impl StringMatch {
    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Presence => !value.is_empty(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceAccountMatch {
    pub(crate) namespace: String,
    pub(crate) service_account: String,
}

/// One match of a clause; every populated field must hold.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Match {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) namespaces: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) not_namespaces: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) principals: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) not_principals: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) source_ips: Vec<IpNet>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) not_source_ips: Vec<IpNet>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) destination_ips: Vec<IpNet>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) not_destination_ips: Vec<IpNet>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) destination_ports: Vec<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) not_destination_ports: Vec<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) service_accounts: Vec<ServiceAccountMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) not_service_accounts: Vec<ServiceAccountMatch>,
}

impl Match {
    /// No field populated. Such a match never holds (§4.9: a clause matches if any *non-empty*
    /// match does); compared with the default so a new field cannot be forgotten here.
    pub(crate) fn is_empty(&self) -> bool {
        *self == Match::default()
    }
}

/// A clause matches if any of its non-empty matches does (an empty clause matches).
pub(crate) type Clause = Vec<Match>;
/// A rule matches if every clause does.
pub(crate) type Rule = Vec<Clause>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) scope: PolicyScope,
    pub(crate) action: PolicyAction,
    pub(crate) dry_run: bool,
    pub(crate) rules: Vec<Rule>,
    /// What translation changed and why (L7 attributes stripped, invalid input), for operators.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Authorization {
    /// A policy that could not be read, failing closed in its scope: an ALLOW allows nothing
    /// (its presence still makes its scope default-deny), anything else denies everything. One
    /// rule for both readers (Kubernetes manifests and the local config), with the same note.
    pub(crate) fn failing_closed(name: String, namespace: String, scope: PolicyScope, allow: bool, dry_run: bool, why: &str) -> Self {
        let (action, rules, outcome) = match allow {
            true => (PolicyAction::Allow, Vec::new(), "it allows nothing"),
            false => (PolicyAction::Deny, vec![Vec::new()], "it denies everything in its scope"),
        };
        let notes = vec![format!("invalid policy ({why}); failing closed: {outcome}")];
        Authorization { name, namespace, scope, action, dry_run, rules, notes }
    }

    /// The key workloads reference policies by: `namespace/name`.
    pub fn key(&self) -> PolicyKey {
        PolicyKey::new(&self.namespace, &self.name)
    }
}
