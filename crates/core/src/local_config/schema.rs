//! The local config schema (protocols.md §6) as serde types: ztunnel's field names, unknown
//! keys refused, string matches as YAML tags. Converted into the model by `convert`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer};

use crate::model::{GatewayDestination, NetworkAddress};
use crate::yaml::YamlError;

/// An enum written as one YAML word, deserialized through the string path: every such enum then
/// shares one instantiation of the parser (a derived enum costs ~13 KB of code each, and the
/// proxy's idle memory is mostly the pages of its binary). `default` names the variant an
/// absent key takes.
macro_rules! words {
    ($name:ident $(default $default:ident)? { $($variant:ident = [$($word:literal),+]),+ $(,)? }) => {
        #[derive(Clone, Copy, Debug)]
        pub(super) enum $name {
            $($variant),+
        }

        $(impl Default for $name {
            fn default() -> Self {
                $name::$default
            }
        })?

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                match s.as_str() {
                    $($($word)|+ => Ok($name::$variant),)+
                    other => Err(de::Error::unknown_variant(other, &[$($($word),+),+])),
                }
            }
        }
    };
}

/// The document. Read by `read` (not derived) so one unreadable policy entry can be set aside.
#[derive(Default)]
pub(super) struct LocalConfig {
    pub(super) workloads: Vec<Lined<LocalWorkload>>,
    pub(super) services: Vec<Lined<LocalService>>,
    pub(super) policies: Vec<Lined<PolicyEntry>>,
}

/// An entry and the line it starts on, for the errors validation reports about it.
pub(super) struct Lined<T> {
    pub(super) line: usize,
    pub(super) value: T,
}

impl<T> Lined<T> {
    pub(super) fn map<U>(self, f: impl FnOnce(T) -> U) -> Lined<U> {
        Lined { line: self.line, value: f(self.value) }
    }
}

impl<T> From<serde_saphyr::Spanned<T>> for Lined<T> {
    fn from(s: serde_saphyr::Spanned<T>) -> Self {
        Lined { line: s.referenced.line() as usize, value: s.value }
    }
}

/// One entry of `policies`: as written, or, when it cannot be read, what places it.
pub(super) enum PolicyEntry {
    Read(LocalPolicy),
    Unreadable { head: PolicyHead, error: YamlError },
}

/// What places an unreadable policy entry, read leniently; every other key is skipped unread.
/// The name and namespace must still be strings: without them the entry has no scope.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PolicyHead {
    pub(super) name: String,
    pub(super) namespace: String,
    #[serde(default)]
    pub(super) scope: Loose,
    #[serde(default)]
    pub(super) action: Loose,
    #[serde(default)]
    pub(super) dry_run: Loose,
}

/// Any well-formed YAML node, keeping only a string or boolean scalar; never fails on one.
#[derive(Default)]
pub(super) enum Loose {
    #[default]
    Other,
    Str(String),
    Bool(bool),
}

impl Loose {
    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Loose::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Loose;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_str<E>(self, v: &str) -> Result<Loose, E> {
                Ok(Loose::Str(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Loose, E> {
                Ok(Loose::Bool(v))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Loose, E> {
                Ok(Loose::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Loose, E> {
                Ok(Loose::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Loose, E> {
                Ok(Loose::Other)
            }
            fn visit_unit<E>(self) -> Result<Loose, E> {
                Ok(Loose::Other)
            }
            fn visit_none<E>(self) -> Result<Loose, E> {
                Ok(Loose::Other)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Loose, D::Error> {
                Loose::deserialize(d)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Loose, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Loose, A::Error> {
                while map.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LocalWorkload {
    #[serde(default)]
    pub(super) uid: String,
    #[serde(default)]
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) workload_ips: Vec<IpAddr>,
    #[serde(default)]
    pub(super) protocol: LocalProtocol,
    #[serde(default)]
    pub(super) network_mode: LocalNetworkMode,
    #[serde(default)]
    pub(super) trust_domain: String,
    #[serde(default)]
    pub(super) service_account: String,
    #[serde(default)]
    pub(super) network: String,
    #[serde(default)]
    pub(super) node: String,
    #[serde(default)]
    pub(super) hostname: String,
    #[serde(default)]
    pub(super) cluster_id: String,
    #[serde(default)]
    pub(super) workload_name: String,
    #[serde(default)]
    pub(super) workload_type: LocalWorkloadType,
    #[serde(default)]
    pub(super) canonical_name: String,
    #[serde(default)]
    pub(super) canonical_revision: String,
    pub(super) waypoint: Option<LocalGateway>,
    pub(super) network_gateway: Option<LocalGateway>,
    #[serde(default)]
    pub(super) native_tunnel: bool,
    pub(super) application_tunnel: Option<LocalAppTunnel>,
    #[serde(default)]
    pub(super) authorization_policies: Vec<String>,
    #[serde(default)]
    pub(super) status: LocalStatus,
    #[serde(default)]
    pub(super) locality: LocalLocality,
    pub(super) capacity: Option<u32>,
    #[serde(default)]
    pub(super) services: BTreeMap<String, BTreeMap<u16, u16>>,
}

words!(LocalProtocol default Tcp { Tcp = ["TCP", "tcp"], Hbone = ["HBONE", "hbone"] });

words!(LocalNetworkMode default Standard { Standard = ["Standard"], HostNetwork = ["HostNetwork"] });

words!(LocalWorkloadType default Deployment {
    Deployment = ["deployment", "Deployment"],
    Cronjob = ["cronjob", "CronJob", "Cronjob"],
    Pod = ["pod", "Pod"],
    Job = ["job", "Job"],
});

words!(LocalStatus default Healthy { Healthy = ["Healthy"], Unhealthy = ["Unhealthy"] });

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct LocalLocality {
    #[serde(default)]
    pub(super) region: String,
    #[serde(default)]
    pub(super) zone: String,
    #[serde(default)]
    pub(super) subzone: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LocalGateway {
    pub(super) destination: GatewayDest,
    #[serde(default = "default_hbone_port")]
    pub(super) hbone_mtls_port: u16,
}

fn default_hbone_port() -> u16 {
    crate::ports::HBONE_PORT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LocalAppTunnel {
    pub(super) protocol: LocalAppTunnelProtocol,
    pub(super) port: Option<u16>,
}

words!(LocalAppTunnelProtocol { None = ["NONE"], Proxy = ["PROXY"] });

words!(LocalAppProtocol { Http11 = ["HTTP11", "http"], Http2 = ["HTTP2", "http2"], Grpc = ["GRPC", "grpc"], Tcp = ["TCP", "tcp"], Tls = ["TLS", "tls"] });

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LocalService {
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) hostname: String,
    pub(super) vips: Vec<NetAddr>,
    pub(super) ports: BTreeMap<u16, u16>,
    /// ferry's addition (ztunnel's file has none): a service port's application protocol, as
    /// WDS `Port.app_protocol` carries it, for the waypoint.
    #[serde(default)]
    pub(super) app_protocols: BTreeMap<u16, LocalAppProtocol>,
    #[serde(default)]
    pub(super) cidr_vips: Vec<LocalCidrVip>,
    #[serde(default)]
    pub(super) endpoints: Vec<LocalEndpoint>,
    #[serde(default)]
    pub(super) subject_alt_names: Vec<String>,
    pub(super) waypoint: Option<LocalGateway>,
    #[serde(default)]
    pub(super) weighted_waypoints: Vec<LocalWeightedWaypoint>,
    pub(super) load_balancer: Option<LocalLoadBalancer>,
    #[serde(default)]
    pub(super) ip_families: LocalIpFamilies,
    #[serde(default)]
    pub(super) canonical: bool,
    #[serde(default)]
    pub(super) visibility: LocalVisibility,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LocalEndpoint {
    pub(super) workload_uid: String,
    #[serde(default)]
    pub(super) port: BTreeMap<u16, u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LocalCidrVip {
    #[serde(default)]
    pub(super) network: String,
    pub(super) cidr: Cidr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LocalWeightedWaypoint {
    pub(super) destination: LocalGateway,
    #[serde(default)]
    pub(super) weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LocalLoadBalancer {
    #[serde(default)]
    pub(super) routing_preferences: Vec<LocalScope>,
    #[serde(default)]
    pub(super) mode: LocalLbMode,
    #[serde(default)]
    pub(super) health_policy: LocalHealthPolicy,
}

words!(LocalScope {
    Region = ["Region"],
    Zone = ["Zone"],
    Subzone = ["Subzone"],
    Node = ["Node"],
    Cluster = ["Cluster"],
    Network = ["Network"],
});

words!(LocalLbMode default Standard {
    Standard = ["Standard"],
    Strict = ["Strict"],
    Failover = ["Failover"],
    Passthrough = ["Passthrough"],
});

words!(LocalHealthPolicy default OnlyHealthy { OnlyHealthy = ["OnlyHealthy"], AllowAll = ["AllowAll"] });

words!(LocalIpFamilies default Automatic {
    Automatic = ["Automatic"],
    Ipv4 = ["IPv4", "IPv4Only"],
    Ipv6 = ["IPv6", "IPv6Only"],
    Dual = ["Dual"],
});

words!(LocalVisibility default Public { Public = ["Public"], Namespace = ["Namespace"] });

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LocalPolicy {
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) scope: LocalPolicyScope,
    pub(super) action: LocalAction,
    #[serde(default)]
    pub(super) dry_run: bool,
    #[serde(default)]
    pub(super) rules: Vec<Vec<Vec<LocalMatch>>>,
}

#[derive(Deserialize, Clone, Copy)]
pub(super) enum LocalPolicyScope {
    Global,
    Namespace,
    WorkloadSelector,
}

#[derive(Deserialize, Clone, Copy)]
pub(super) enum LocalAction {
    Allow,
    Deny,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LocalMatch {
    #[serde(default)]
    pub(super) namespaces: Vec<LocalStringMatch>,
    #[serde(default)]
    pub(super) not_namespaces: Vec<LocalStringMatch>,
    #[serde(default)]
    pub(super) principals: Vec<LocalStringMatch>,
    #[serde(default)]
    pub(super) not_principals: Vec<LocalStringMatch>,
    #[serde(default)]
    pub(super) source_ips: Vec<Cidr>,
    #[serde(default)]
    pub(super) not_source_ips: Vec<Cidr>,
    #[serde(default)]
    pub(super) destination_ips: Vec<Cidr>,
    #[serde(default)]
    pub(super) not_destination_ips: Vec<Cidr>,
    #[serde(default)]
    pub(super) destination_ports: Vec<u16>,
    #[serde(default)]
    pub(super) not_destination_ports: Vec<u16>,
    #[serde(default)]
    pub(super) service_accounts: Vec<LocalServiceAccount>,
    #[serde(default)]
    pub(super) not_service_accounts: Vec<LocalServiceAccount>,
}

/// Written as YAML tags: `!Exact "x"`, `!Prefix x`, `!Suffix x`, `!Presence`.
#[derive(Deserialize)]
pub(super) enum LocalStringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LocalServiceAccount {
    pub(super) namespace: String,
    pub(super) service_account: String,
}

/// `"<network>/<IP>"`; the network may be empty (`"/10.0.0.1"`).
pub(super) struct NetAddr(pub(super) NetworkAddress);

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
pub(super) struct GatewayDest(pub(super) GatewayDestination);

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
pub(super) struct Cidr(pub(super) IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(net) = IpNet::from_str(&s) {
            return Ok(Cidr(net));
        }
        IpAddr::from_str(&s).map(|ip| Cidr(IpNet::from(ip))).map_err(|_| de::Error::custom(format!("{s:?} is not an IP address or CIDR")))
    }
}
