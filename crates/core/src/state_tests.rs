use std::net::IpAddr;

use super::*;
use crate::model::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn svc(ns: &str, host: &str, vip: &str) -> Service {
    let mut s = Service::new(ns, host, host);
    s.vips.push(NetworkAddress { network: String::new(), address: ip(vip) });
    s
}

#[test]
fn address_lookup_prefers_hbone_pods() {
    let mut a = Workload::new("Kubernetes//Pod/ns/a", "ns", "a");
    a.addresses = vec![ip("10.0.0.1")];
    let mut b = Workload::new("other/b", "ns", "b");
    b.addresses = vec![ip("10.0.0.1")];
    b.protocol = TunnelProtocol::Hbone;
    let mut c = Workload::new("Kubernetes//Pod/ns/c", "ns", "c");
    c.addresses = vec![ip("10.0.0.1")];
    c.protocol = TunnelProtocol::Hbone;
    let mut host = Workload::new("Kubernetes//Pod/ns/h", "ns", "h");
    host.addresses = vec![ip("10.0.0.9")];
    host.network_mode = NetworkMode::HostNetwork;
    let snap = Snapshot::build(StateInput { workloads: vec![a, b, c, host], ..Default::default() }, 1);
    assert_eq!(snap.workload_by_addr("", ip("10.0.0.1")).unwrap().name, "c");
    assert!(snap.workload_by_addr("", ip("10.0.0.9")).is_none(), "host-network workloads are not indexed by IP");
    assert!(snap.workload_by_addr("other", ip("10.0.0.1")).is_none(), "lookups are per network");
}

#[test]
fn service_lookup_prefers_visible_local_canonical() {
    let mut other = svc("other", "a.other", "10.96.0.1");
    other.canonical = true;
    let mine = svc("mine", "a.mine", "10.96.0.1");
    let mut hidden = svc("hidden", "a.hidden", "10.96.0.2");
    hidden.visibility = Visibility::Namespace;
    let mut cidr = Service::new("ns", "wide", "wide.ns");
    cidr.cidr_vips.push(CidrVip { network: String::new(), cidr: "10.97.0.0/16".parse().unwrap() });
    let mut narrow = Service::new("ns", "narrow", "narrow.ns");
    narrow.cidr_vips.push(CidrVip { network: String::new(), cidr: "10.97.1.0/24".parse().unwrap() });
    let snap = Snapshot::build(StateInput { services: vec![other, mine, hidden, cidr, narrow], ..Default::default() }, 1);
    assert_eq!(snap.service_by_vip("", ip("10.96.0.1"), "mine").unwrap().hostname, "a.mine");
    assert_eq!(snap.service_by_vip("", ip("10.96.0.1"), "third").unwrap().hostname, "a.other");
    assert!(snap.service_by_vip("", ip("10.96.0.2"), "third").is_none());
    assert_eq!(snap.service_by_vip("", ip("10.96.0.2"), "hidden").unwrap().hostname, "a.hidden");
    assert_eq!(snap.service_by_vip("", ip("10.97.1.5"), "x").unwrap().hostname, "narrow.ns");
    assert_eq!(snap.service_by_vip("", ip("10.97.2.5"), "x").unwrap().hostname, "wide.ns");
}

#[test]
fn policies_for_reports_missing_references() {
    let p = |ns: &str, name: &str, scope| Authorization {
        name: name.into(),
        namespace: ns.into(),
        scope,
        action: PolicyAction::Deny,
        dry_run: false,
        rules: vec![],
        notes: vec![],
    };
    let mut w = Workload::new("u", "app", "w");
    w.authorization_policies = vec!["app/selected".into(), "app/not-yet-known".into()];
    let snap = Snapshot::build(
        StateInput {
            policies: vec![
                p("istio-system", "mesh", PolicyScope::Global),
                p("app", "ns-wide", PolicyScope::Namespace),
                p("other", "ns-wide", PolicyScope::Namespace),
                p("app", "selected", PolicyScope::WorkloadSelector),
                p("app", "unselected", PolicyScope::WorkloadSelector),
            ],
            ..Default::default()
        },
        1,
    );
    let (found, missing) = snap.policies_for(&w);
    let mut keys: Vec<String> = found.iter().map(|p| p.key().to_string()).collect();
    keys.sort();
    assert_eq!(keys, ["app/ns-wide", "app/selected", "istio-system/mesh"]);
    assert_eq!(missing, ["app/not-yet-known"]);
}
