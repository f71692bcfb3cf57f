use super::*;
use crate::state::StateInput;

/// A state with every field the model carries set somewhere.
const STATE: &str = r#"
workloads:
- uid: Kubernetes//Pod/default/a
  name: a
  namespace: default
  serviceAccount: sa-a
  trustDomain: example.org
  workloadIps: ["10.0.0.1", "fd00::1"]
  protocol: HBONE
  node: n1
  network: net1
  clusterId: c1
  canonicalName: app
  canonicalRevision: v2
  workloadName: app-v2
  workloadType: job
  nativeTunnel: true
  applicationTunnel: {protocol: PROXY, port: 15088}
  waypoint: {destination: "default/waypoint.default.svc.cluster.local", hboneMtlsPort: 15008}
  networkGateway: {destination: "net2/192.0.2.1", hboneMtlsPort: 15009}
  authorizationPolicies: [default/selected]
  status: Unhealthy
  locality: {region: r, zone: z, subzone: s}
  capacity: 3
  services:
    "default/echo.default.svc.cluster.local": {80: 8080, 443: 8443}
- uid: Kubernetes//Pod/default/h
  name: h
  namespace: default
  workloadIps: []
  hostname: db.example.com
  networkMode: HostNetwork
  services: {}
services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  vips: ["/10.96.0.10", "net1/10.96.0.11"]
  cidrVips: [{network: "", cidr: "10.97.0.0/16"}]
  ports: {80: 0, 443: 8443}
  subjectAltNames: ["spiffe://example.org/ns/default/sa/extra"]
  weightedWaypoints: [{destination: {destination: "default/wp.default.svc.cluster.local", hboneMtlsPort: 15008}, weight: 10}]
  loadBalancer: {routingPreferences: [Network, Region, Zone, Node], mode: Failover, healthPolicy: AllowAll}
  ipFamilies: Dual
  canonical: true
  visibility: Namespace
policies:
- name: selected
  namespace: default
  scope: WorkloadSelector
  action: Deny
  dryRun: true
  rules:
  - - - principals: [!Exact "example.org/ns/x/sa/y", !Prefix "example.org/ns/evil/"]
        notNamespaces: [!Suffix "-prod", !Presence]
        sourceIps: ["10.1.0.0/16", "fd00::/64"]
        notDestinationIps: ["10.2.0.1"]
        destinationPorts: [80, 443]
        notDestinationPorts: [22]
        serviceAccounts: [{namespace: ns, serviceAccount: sa}]
        notServiceAccounts: [{namespace: ns2, serviceAccount: sa2}]
    - []
- name: mesh
  namespace: istio-system
  scope: Global
  action: Allow
  dryRun: false
  rules: []
"#;

fn round_trip(input: &StateInput) -> StateInput {
    let mut out = StateInput::default();
    for w in &input.workloads {
        match decode_address(workload(w).message).unwrap() {
            Decoded::Workload(w) => out.workloads.push(*w),
            other => panic!("{other:?}"),
        }
    }
    for s in &input.services {
        match decode_address(service(s).message).unwrap() {
            Decoded::Service(s) => out.services.push(*s),
            other => panic!("{other:?}"),
        }
    }
    for p in &input.policies {
        out.policies.push(decode_authorization(authorization(p).message).unwrap());
    }
    out
}

#[test]
fn encoding_and_decoding_are_inverses() {
    let mut input = crate::local_config::parse(STATE, "wds").unwrap();
    input.policies[0].notes.push("L7 field methods dropped".into());
    assert_eq!(round_trip(&input), input);
    // And through the wire bytes too.
    use prost::Message;
    let bytes = workload(&input.workloads[0]).message.encode_to_vec();
    let back = crate::proto::workload::Address::decode(bytes.as_slice()).unwrap();
    assert_eq!(decode_address(back).unwrap(), Decoded::Workload(Box::new(input.workloads[0].clone())));
}

#[test]
fn names_and_aliases_are_istios() {
    let input = crate::local_config::parse(STATE, "wds").unwrap();
    let w = workload(&input.workloads[0]);
    assert_eq!(w.name, "Kubernetes//Pod/default/a");
    assert_eq!(w.aliases, ["net1/10.0.0.1", "net1/fd00::1"]);
    let s = service(&input.services[0]);
    assert_eq!(s.name, "default/echo.default.svc.cluster.local");
    assert_eq!(s.aliases, ["/10.96.0.10", "net1/10.96.0.11"]);
    assert_eq!(authorization(&input.policies[1]).name, "istio-system/mesh");
}

#[test]
fn what_istio_refuses_is_refused_with_a_reason() {
    let input = crate::local_config::parse(STATE, "wds").unwrap();
    let base = || match workload(&input.workloads[0]).message.r#type {
        Some(pw::address::Type::Workload(w)) => w,
        _ => unreachable!(),
    };
    let as_address = |w: pw::Workload| pw::Address { r#type: Some(pw::address::Type::Workload(w)) };
    let cases: Vec<(&str, pw::Workload)> = vec![
        ("4 or 16", pw::Workload { addresses: vec![vec![10, 0, 0]], ..base() }),
        ("LEGACY_ISTIO_MTLS", pw::Workload { tunnel_protocol: pw::TunnelProtocol::LegacyIstioMtls as i32, ..base() }),
        ("unknown tunnel protocol", pw::Workload { tunnel_protocol: 9, ..base() }),
        ("unknown workload status", pw::Workload { status: 7, ..base() }),
        ("without a destination", pw::Workload { waypoint: Some(pw::GatewayAddress { destination: None, hbone_mtls_port: 1 }), ..base() }),
        ("invalid", pw::Workload { service_account: "a/b".into(), ..base() }),
        ("without uid", pw::Workload { uid: String::new(), ..base() }),
        (
            "not a port",
            pw::Workload {
                services: [(
                    "default/x".to_string(),
                    pw::PortList { ports: vec![pw::Port { service_port: 70000, target_port: 1, app_protocol: 0 }] },
                )]
                .into(),
                ..base()
            },
        ),
    ];
    for (why, w) in cases {
        let e = decode_address(as_address(w)).unwrap_err();
        assert!(e.to_string().contains(why), "{why}: {e}");
    }
    // Unknown workload types are deployments, as in Istio's reference.
    let odd = decode_address(as_address(pw::Workload { workload_type: 42, ..base() })).unwrap();
    assert!(matches!(odd, Decoded::Workload(w) if w.workload_type == WorkloadType::Deployment));
    let policy = || authorization(&input.policies[0]).message;
    let mut typeless = policy();
    typeless.rules[0].clauses[0].matches[0].principals.push(ps::StringMatch { match_type: None });
    assert!(decode_authorization(typeless).unwrap_err().to_string().contains("without a match type"));
    let mut bad_ip = policy();
    bad_ip.rules[0].clauses[0].matches[0].source_ips.push(ps::Address { address: vec![1, 2, 3], length: 8 });
    assert!(decode_authorization(bad_ip).is_err(), "a DENY that lost an address would deny less");
    assert!(decode_authorization(ps::Authorization { action: 5, ..policy() }).is_err());
    assert!(decode_address(pw::Address { r#type: None }).is_err());
}
