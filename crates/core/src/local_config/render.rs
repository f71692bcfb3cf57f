//! Renders a state as a local config file in ztunnel's schema (protocols.md §6): the inverse of
//! [`super::parse`], so any state ferry holds can drive another proxy (benchmarks, migration)
//! and a round trip through both functions is lossless.
//!
//! The YAML is emitted here, not by a serde serializer, because ztunnel's reader wants string
//! matches as bare YAML tags (`- !Exact "x"`, `- !Presence`), which no maintained serializer
//! writes. Every string is double-quoted (JSON escaping is valid YAML), so no value can be
//! misread as another type.

use std::fmt::Write;

use crate::model::*;
use crate::state::StateInput;

/// A YAML node, the subset the local config needs.
enum Value {
    Null,
    String(String),
    Number(u64),
    Bool(bool),
    Sequence(Vec<Value>),
    Mapping(Mapping),
    Tagged(Box<TaggedValue>),
}

struct TaggedValue {
    tag: &'static str,
    value: Value,
}

/// Keys in insertion order; inserting an existing key replaces its value.
#[derive(Default)]
struct Mapping(Vec<(Value, Value)>);

impl Mapping {
    fn new() -> Self {
        Mapping::default()
    }
    fn insert(&mut self, k: Value, v: Value) {
        let key = scalar(&k);
        match self.0.iter_mut().find(|(existing, _)| scalar(existing) == key) {
            Some(slot) => slot.1 = v,
            None => self.0.push((k, v)),
        }
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(Value, Value)> for Mapping {
    fn from_iter<I: IntoIterator<Item = (Value, Value)>>(iter: I) -> Self {
        let mut m = Mapping::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.to_string())
    }
}
impl From<u16> for Value {
    fn from(v: u16) -> Self {
        Value::Number(v.into())
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Number(v.into())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

/// A scalar (or an empty collection, or a tagged scalar) on one line; `None` for collections
/// that need a block.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some("null".into()),
        Value::String(s) => Some(serde_json::Value::String(s.clone()).to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Sequence(s) if s.is_empty() => Some("[]".into()),
        Value::Mapping(m) if m.is_empty() => Some("{}".into()),
        Value::Tagged(t) => match &t.value {
            Value::Null => Some(format!("!{}", t.tag)),
            inner => scalar(inner).map(|s| format!("!{} {s}", t.tag)),
        },
        Value::Sequence(_) | Value::Mapping(_) => None,
    }
}

/// Writes `v` as the value after a `key:` or `- ` already on the current line.
fn emit(v: &Value, indent: usize, out: &mut String) {
    if let Some(s) = scalar(v) {
        let _ = writeln!(out, " {s}");
        return;
    }
    out.push('\n');
    emit_block(v, indent, out);
}

fn emit_block(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Mapping(m) => {
            for (k, v) in &m.0 {
                let _ = write!(out, "{pad}{}:", scalar(k).unwrap_or_default());
                emit(v, indent + 2, out);
            }
        }
        Value::Sequence(items) => {
            for item in items {
                let _ = write!(out, "{pad}-");
                emit(item, indent + 2, out);
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other).unwrap_or_default());
        }
    }
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in entries {
        let empty = match &v {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Sequence(s) => s.is_empty(),
            Value::Mapping(m) => m.is_empty(),
            _ => false,
        };
        if !empty {
            m.insert(Value::from(k), v);
        }
    }
    Value::Mapping(m)
}

fn s(v: &str) -> Value {
    Value::from(v)
}

fn seq<T>(items: &[T], f: impl Fn(&T) -> Value) -> Value {
    Value::Sequence(items.iter().map(f).collect())
}

fn ports(p: &PortMap) -> Value {
    Value::Mapping(p.iter().map(|(k, v)| (Value::from(*k), Value::from(*v))).collect())
}

fn gateway(g: &GatewayAddress) -> Value {
    let dest = match &g.destination {
        GatewayDestination::Address(a) => format!("{}/{}", a.network, a.address),
        GatewayDestination::Hostname { namespace, hostname } => format!("{namespace}/{hostname}"),
    };
    map(vec![("destination", s(&dest)), ("hboneMtlsPort", Value::from(g.hbone_mtls_port))])
}

fn workload(w: &Workload) -> Value {
    let services = Value::Mapping(w.services.iter().map(|(k, v)| (s(k.as_str()), ports(v))).collect());
    let mut m = map(vec![
        ("uid", s(w.uid.as_str())),
        ("name", s(&w.name)),
        ("namespace", s(&w.namespace)),
        ("workloadIps", seq(&w.addresses, |a| s(&a.to_string()))),
        ("protocol", s(if w.protocol == TunnelProtocol::Hbone { "HBONE" } else { "TCP" })),
        ("networkMode", s(if w.network_mode == NetworkMode::HostNetwork { "HostNetwork" } else { "" })),
        ("trustDomain", s(&w.trust_domain)),
        ("serviceAccount", s(&w.service_account)),
        ("network", s(&w.network)),
        ("node", s(&w.node)),
        ("hostname", s(&w.hostname)),
        ("clusterId", s(&w.cluster_id)),
        ("workloadName", s(&w.workload_name)),
        ("workloadType", s(w.workload_type.as_str())),
        ("canonicalName", s(&w.canonical_name)),
        ("canonicalRevision", s(&w.canonical_revision)),
        ("waypoint", w.waypoint.as_ref().map(gateway).unwrap_or(Value::Null)),
        ("networkGateway", w.network_gateway.as_ref().map(gateway).unwrap_or(Value::Null)),
        ("authorizationPolicies", seq(&w.authorization_policies, |p| s(p.as_str()))),
        ("status", s(if w.status == HealthStatus::Unhealthy { "Unhealthy" } else { "" })),
        ("locality", map(vec![("region", s(&w.locality.region)), ("zone", s(&w.locality.zone)), ("subzone", s(&w.locality.subzone))])),
        ("capacity", Value::from(w.capacity)),
    ]);
    if let Value::Mapping(m) = &mut m {
        // ztunnel's reader requires the key even when empty.
        m.insert(s("services"), services);
        if w.native_tunnel {
            m.insert(s("nativeTunnel"), Value::from(true));
        }
        if let Some(t) = &w.application_tunnel {
            let proto = if t.protocol == AppTunnelProtocol::Proxy { "PROXY" } else { "NONE" };
            m.insert(s("applicationTunnel"), map(vec![("protocol", s(proto)), ("port", t.port.map(Value::from).unwrap_or(Value::Null))]));
        }
    }
    m
}

fn enum_name<T: std::fmt::Debug>(v: T) -> String {
    format!("{v:?}")
}

fn service(svc: &Service) -> Value {
    let lb = svc.load_balancing.as_ref().map(|l| {
        map(vec![
            ("routingPreferences", seq(&l.routing_preference, |p| s(&enum_name(p)))),
            ("mode", s(&enum_name(l.mode))),
            ("healthPolicy", s(&enum_name(l.health_policy))),
        ])
    });
    let families = match svc.ip_families {
        IpFamilies::Automatic => "",
        IpFamilies::Ipv4Only => "IPv4",
        IpFamilies::Ipv6Only => "IPv6",
        IpFamilies::Dual => "Dual",
    };
    let mut m = map(vec![
        ("name", s(&svc.name)),
        ("namespace", s(&svc.namespace)),
        ("hostname", s(&svc.hostname)),
        ("cidrVips", seq(&svc.cidr_vips, |c| map(vec![("network", s(&c.network)), ("cidr", s(&c.cidr.to_string()))]))),
        ("subjectAltNames", seq(&svc.subject_alt_names, |n| s(n))),
        ("waypoint", svc.waypoint.as_ref().map(gateway).unwrap_or(Value::Null)),
        (
            "weightedWaypoints",
            seq(&svc.weighted_waypoints, |w| map(vec![("destination", gateway(&w.destination)), ("weight", Value::from(w.weight))])),
        ),
        ("loadBalancer", lb.unwrap_or(Value::Null)),
        ("ipFamilies", s(families)),
        ("visibility", s(if svc.visibility == Visibility::Namespace { "Namespace" } else { "" })),
    ]);
    if let Value::Mapping(m) = &mut m {
        m.insert(s("vips"), seq(&svc.vips, |v| s(&format!("{}/{}", v.network, v.address))));
        // No `appProtocols`: ztunnel's reader refuses unknown keys and ignores app protocols.
        m.insert(s("ports"), ports(&svc.ports));
        if svc.canonical {
            m.insert(s("canonical"), Value::from(true));
        }
    }
    m
}

fn tagged(tag: &'static str, v: Value) -> Value {
    Value::Tagged(Box::new(TaggedValue { tag, value: v }))
}

fn string_match(m: &StringMatch) -> Value {
    match m {
        StringMatch::Exact(v) => tagged("Exact", s(v)),
        StringMatch::Prefix(v) => tagged("Prefix", s(v)),
        StringMatch::Suffix(v) => tagged("Suffix", s(v)),
        StringMatch::Presence => tagged("Presence", Value::Null),
    }
}

fn match_value(m: &Match) -> Value {
    let strs = |v: &[StringMatch]| seq(v, string_match);
    let nets = |v: &[ipnet::IpNet]| seq(v, |n| s(&n.to_string()));
    let nums = |v: &[u16]| seq(v, |p| Value::from(*p));
    let accounts =
        |v: &[ServiceAccountMatch]| seq(v, |a| map(vec![("namespace", s(&a.namespace)), ("serviceAccount", s(&a.service_account))]));
    map(vec![
        ("namespaces", strs(&m.namespaces)),
        ("notNamespaces", strs(&m.not_namespaces)),
        ("principals", strs(&m.principals)),
        ("notPrincipals", strs(&m.not_principals)),
        ("sourceIps", nets(&m.source_ips)),
        ("notSourceIps", nets(&m.not_source_ips)),
        ("destinationIps", nets(&m.destination_ips)),
        ("notDestinationIps", nets(&m.not_destination_ips)),
        ("destinationPorts", nums(&m.destination_ports)),
        ("notDestinationPorts", nums(&m.not_destination_ports)),
        ("serviceAccounts", accounts(&m.service_accounts)),
        ("notServiceAccounts", accounts(&m.not_service_accounts)),
    ])
}

fn policy(p: &Authorization) -> Value {
    let rules = seq(&p.rules, |rule| seq(rule, |clause| seq(clause, match_value)));
    let mut m = map(vec![
        ("name", s(&p.name)),
        ("namespace", s(&p.namespace)),
        ("scope", s(&enum_name(p.scope))),
        ("action", s(&enum_name(p.action))),
    ]);
    if let Value::Mapping(m) = &mut m {
        m.insert(s("dryRun"), Value::from(p.dry_run));
        m.insert(s("rules"), rules);
    }
    m
}

pub fn to_yaml(state: &StateInput) -> Result<String, String> {
    let doc = map(vec![
        ("workloads", seq(&state.workloads, workload)),
        ("services", seq(&state.services, service)),
        ("policies", seq(&state.policies, policy)),
    ]);
    let mut out = String::new();
    emit_block(&doc, 0, &mut out);
    Ok(out)
}
