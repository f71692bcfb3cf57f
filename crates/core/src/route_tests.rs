use super::*;
use crate::model::{GatewayAddress, GatewayDestination, Locality, NetworkAddress, PortMap};
use crate::state::StateInput;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn wl(name: &str, addr: &str, hbone: bool) -> Workload {
    let mut w = Workload::new(&format!("Kubernetes//Pod/ns/{name}"), "ns", name);
    w.addresses = vec![ip(addr)];
    w.service_account = name.to_string();
    w.protocol = if hbone { TunnelProtocol::Hbone } else { TunnelProtocol::None };
    w
}

fn endpoint_of(mut w: Workload, svc: &str, map: &[(u16, u16)]) -> Workload {
    w.services.insert(ServiceKey::new("ns", svc), map.iter().copied().collect::<PortMap>());
    w
}

fn service(host: &str, vip: &str, ports: &[(u16, u16)]) -> Service {
    let mut s = Service::new("ns", host, host);
    s.vips = vec![NetworkAddress { network: String::new(), address: ip(vip) }];
    s.ports = ports.iter().copied().collect();
    s
}

/// Expected outcome, compared on the parts that matter.
#[derive(Debug, PartialEq)]
enum Want {
    Hbone { hbone: &'static str, authority: &'static str, ids: Vec<&'static str> },
    Direct(&'static str),
    Passthrough(&'static str),
    Err(&'static str),
}

fn summarize(r: Result<Upstream, RouteError>) -> String {
    match r {
        Ok(Upstream::Hbone { hbone_addr, target, identities, .. }) => {
            format!("hbone {hbone_addr} {target} {}", identities.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","))
        }
        Ok(Upstream::Direct { addr, .. }) => format!("direct {addr}"),
        Ok(Upstream::Passthrough { addr }) => format!("passthrough {addr}"),
        Err(e) => format!("error {e}"),
    }
}

fn want(w: &Want) -> String {
    match w {
        Want::Hbone { hbone, authority, ids } => format!("hbone {hbone} {authority} {}", ids.join(",")),
        Want::Direct(a) => format!("direct {a}"),
        Want::Passthrough(a) => format!("passthrough {a}"),
        Want::Err(e) => format!("error {e}"),
    }
}

fn snapshot() -> Snapshot {
    let client = wl("client", "10.0.0.1", true);
    let server = endpoint_of(wl("server", "10.0.0.2", true), "echo.ns.svc", &[(80, 8080)]);
    let legacy = endpoint_of(wl("legacy", "10.0.0.3", false), "legacy.ns.svc", &[]);
    let mut waypointed = wl("waypointed", "10.0.0.4", true);
    waypointed.waypoint = Some(GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress { network: String::new(), address: ip("10.0.0.9") }),
        hbone_mtls_port: 15008,
    });
    let mut remote = endpoint_of(wl("remote", "10.0.0.5", true), "remote.ns.svc", &[(80, 80)]);
    remote.network = "west".into();
    let mut sick = endpoint_of(wl("sick", "10.0.0.6", true), "sick.ns.svc", &[(80, 80)]);
    sick.status = HealthStatus::Unhealthy;
    let mut echo = service("echo.ns.svc", "10.96.0.1", &[(80, 0)]);
    echo.subject_alt_names = vec!["spiffe://cluster.local/ns/ns/sa/echo-extra".into(), "not-a-spiffe-id".into()];
    let legacy_svc = service("legacy.ns.svc", "10.96.0.3", &[(80, 9090)]);
    let mut wp_svc = service("wp.ns.svc", "10.96.0.4", &[(80, 80)]);
    wp_svc.waypoint = waypointed.waypoint.clone();
    let sick_svc = service("sick.ns.svc", "10.96.0.6", &[(80, 80)]);
    let mut pass = service("pass.ns.svc", "10.96.0.7", &[(80, 80)]);
    pass.load_balancing = Some(crate::model::LoadBalancing { mode: LbMode::Passthrough, ..Default::default() });
    let empty = service("empty.ns.svc", "10.96.0.8", &[(80, 80)]);
    let remote_svc = service("remote.ns.svc", "10.96.0.5", &[(80, 80)]);
    Snapshot::build(
        StateInput {
            workloads: vec![client, server, legacy, waypointed, remote, sick],
            services: vec![echo, legacy_svc, wp_svc, sick_svc, pass, empty, remote_svc],
            policies: vec![],
        },
        1,
    )
}

#[test]
fn outbound_table() {
    let snap = snapshot();
    let src = snap.find_workload("ns", "client", None).unwrap().clone();
    let server_id = "spiffe://cluster.local/ns/ns/sa/server";
    let cases: Vec<(&str, &str, Want)> = vec![
        (
            "pod IP of an HBONE workload",
            "10.0.0.2:8080",
            Want::Hbone { hbone: "10.0.0.2:15008", authority: "10.0.0.2:8080", ids: vec![server_id] },
        ),
        (
            "service VIP maps the port per endpoint and adds service SANs",
            "10.96.0.1:80",
            Want::Hbone {
                hbone: "10.0.0.2:15008",
                authority: "10.0.0.2:8080",
                ids: vec![server_id, "spiffe://cluster.local/ns/ns/sa/echo-extra"],
            },
        ),
        ("service port without mapping has no upstream", "10.96.0.1:81", Want::Err("no healthy upstream for service ns/echo.ns.svc")),
        ("non-mesh workload is direct TCP", "10.0.0.3:9090", Want::Direct("10.0.0.3:9090")),
        ("service to a non-mesh endpoint uses the service target port", "10.96.0.3:80", Want::Direct("10.0.0.3:9090")),
        ("unknown destination is passthrough", "192.0.2.1:443", Want::Passthrough("192.0.2.1:443")),
        (
            "workload behind an unknown waypoint fails closed",
            "10.0.0.4:80",
            Want::Err("destination Kubernetes//Pod/ns/waypointed must go through waypoint /10.0.0.9, which is not in the mesh state"),
        ),
        (
            "service with an unknown waypoint fails closed",
            "10.96.0.4:80",
            Want::Err("destination ns/wp.ns.svc must go through waypoint /10.0.0.9, which is not in the mesh state"),
        ),
        (
            "endpoint in another network fails closed",
            "10.96.0.5:80",
            Want::Err("destination Kubernetes//Pod/ns/remote is in network \"west\""),
        ),
        ("pod IP in another network is not ours to resolve", "10.0.0.5:80", Want::Passthrough("10.0.0.5:80")),
        ("only unhealthy endpoints", "10.96.0.6:80", Want::Err("no healthy upstream for service ns/sick.ns.svc")),
        ("service without endpoints", "10.96.0.8:80", Want::Err("no healthy upstream for service ns/empty.ns.svc")),
        ("passthrough service to unknown IP", "10.96.0.7:80", Want::Passthrough("10.96.0.7:80")),
        ("own outbound port on loopback", "127.0.0.1:15001", Want::Err("destination 127.0.0.1:15001 is one of the proxy's own ports")),
        ("own HBONE port on own IP", "10.0.0.1:15008", Want::Err("destination 10.0.0.1:15008 is one of the proxy's own ports")),
        ("own admin port on loopback", "127.0.0.1:15000", Want::Err("destination 127.0.0.1:15000 is one of the proxy's own ports")),
    ];
    for (name, dst, expected) in cases {
        let got = summarize(outbound(&snap, &src, OrigDstAddr(sa(dst)), &Ports::default(), &mut |_| 0));
        let want = want(&expected);
        assert!(got.starts_with(&want), "{name}: got {got:?}, want {want:?}");
    }
}

#[test]
fn load_balancing_weights_by_capacity() {
    let mut a = endpoint_of(wl("a", "10.1.0.1", true), "lb.ns.svc", &[(80, 80)]);
    a.capacity = 3;
    let b = endpoint_of(wl("b", "10.1.0.2", true), "lb.ns.svc", &[(80, 80)]);
    let src = wl("client", "10.0.0.1", true);
    let snap = Snapshot::build(
        StateInput { workloads: vec![a, b, src.clone()], services: vec![service("lb.ns.svc", "10.96.1.1", &[(80, 80)])], policies: vec![] },
        1,
    );
    let mut counts = std::collections::HashMap::new();
    for i in 0..4 {
        let r = outbound(&snap, &src, OrigDstAddr(sa("10.96.1.1:80")), &Ports::default(), &mut |_| i).unwrap();
        let Upstream::Hbone { workload, .. } = r else { panic!() };
        *counts.entry(workload.name.clone()).or_insert(0) += 1;
    }
    assert_eq!(counts["a"], 3);
    assert_eq!(counts["b"], 1);
}

#[test]
fn locality_preferences() {
    let loc = |w: &mut Workload, r: &str, z: &str| w.locality = Locality { region: r.into(), zone: z.into(), subzone: String::new() };
    let mut near = endpoint_of(wl("near", "10.1.0.1", true), "loc.ns.svc", &[(80, 80)]);
    loc(&mut near, "r1", "z1");
    let mut far = endpoint_of(wl("far", "10.1.0.2", true), "loc.ns.svc", &[(80, 80)]);
    loc(&mut far, "r2", "z9");
    let mut src = wl("client", "10.0.0.1", true);
    loc(&mut src, "r1", "z1");
    let mut svc = service("loc.ns.svc", "10.96.2.1", &[(80, 80)]);
    for (mode, src_zone, want) in [
        (LbMode::Failover, "z1", Some("near")),
        (LbMode::Failover, "z2", Some("near")),
        (LbMode::Strict, "z1", Some("near")),
        (LbMode::Strict, "z2", None),
    ] {
        svc.load_balancing = Some(crate::model::LoadBalancing {
            routing_preference: vec![LbScope::Region, LbScope::Zone],
            mode,
            health_policy: HealthPolicy::OnlyHealthy,
        });
        let mut s = src.clone();
        s.locality.zone = src_zone.into();
        let snap = Snapshot::build(
            StateInput { workloads: vec![near.clone(), far.clone(), s.clone()], services: vec![svc.clone()], policies: vec![] },
            1,
        );
        for i in 0..2 {
            let got = match outbound(&snap, &s, OrigDstAddr(sa("10.96.2.1:80")), &Ports::default(), &mut |n| i % n) {
                Ok(Upstream::Hbone { workload, .. }) => Some(workload.name.clone()),
                Ok(other) => panic!("{other:?}"),
                Err(_) => None,
            };
            assert_eq!(got.as_deref(), want, "{mode:?} from zone {src_zone}");
        }
    }
}

#[test]
fn inbound_table() {
    let snap = snapshot();
    let w = snap.find_workload("ns", "server", None).unwrap().clone();
    let arrived = ip("10.0.0.2");
    let cases: Vec<(&str, Authority, Result<&str, &str>)> = vec![
        ("own IP", Authority::Addr(sa("10.0.0.2:8080")), Ok("10.0.0.2:8080")),
        ("another IP is a trampoline", Authority::Addr(sa("10.0.0.3:8080")), Err("ip mismatch: 10.0.0.3 != 10.0.0.2")),
        ("loopback is a trampoline", Authority::Addr(sa("127.0.0.1:8080")), Err("ip mismatch")),
        ("own ports", Authority::Addr(sa("10.0.0.2:15001")), Err("self call")),
        ("admin ports", Authority::Addr(sa("10.0.0.2:15021")), Err("self call")),
        ("service hostname", Authority::Host("echo.ns.svc".into(), 80), Ok("10.0.0.2:8080")),
        ("unknown hostname", Authority::Host("nope.ns.svc".into(), 80), Err("unknown service")),
        ("hostname without port mapping", Authority::Host("echo.ns.svc".into(), 81), Err("no target port")),
    ];
    for (name, auth, want) in cases {
        let got = inbound_target(&snap, &w, arrived, &auth, &Ports::default()).map(|(a, _)| a.to_string()).map_err(|e| e.to_string());
        match (got, want) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{name}"),
            (Err(a), Err(b)) => assert!(a.contains(b), "{name}: {a}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn inbound_service_is_guessed_from_the_workloads_services_and_port() {
    let snap = snapshot();
    let guess = |name: &str, port: u16| {
        let w = snap.find_workload("ns", name, None).unwrap();
        guess_inbound_service(&snap, w, port).map(|s| s.hostname.clone())
    };
    assert_eq!(guess("server", 8080).as_deref(), Some("echo.ns.svc"), "the workload's own port override");
    assert_eq!(guess("server", 80), None, "80 is the service port, not where the connection arrived");
    assert_eq!(guess("legacy", 9090).as_deref(), Some("legacy.ns.svc"), "the service's target port");
    assert_eq!(guess("remote", 80).as_deref(), Some("remote.ns.svc"));
    assert_eq!(guess("client", 8080), None, "not an endpoint of any service");
}

fn by_host(ns: &str, host: &str) -> GatewayAddress {
    GatewayAddress { destination: GatewayDestination::Hostname { namespace: ns.into(), hostname: host.into() }, hbone_mtls_port: 15008 }
}

fn by_ip(addr: &str) -> GatewayAddress {
    GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress { network: String::new(), address: ip(addr) }),
        hbone_mtls_port: 15008,
    }
}

/// A mesh with waypoints: `wp` (two pods, one unhealthy), `canary` (one pod), `down` (a
/// waypoint Service without a healthy pod), and destinations enrolled in each.
fn waypoint_snapshot() -> Snapshot {
    let client = wl("client", "10.0.0.1", true);
    let server = endpoint_of(wl("server", "10.0.0.2", true), "echo.ns.svc", &[(80, 8080)]);
    let mut wp_pod = endpoint_of(wl("wp", "10.0.1.1", false), "wp.ns.svc", &[(15008, 15008)]);
    wp_pod.service_account = "wp".into();
    let mut wp_sick = endpoint_of(wl("wp-sick", "10.0.1.2", false), "wp.ns.svc", &[(15008, 15008)]);
    wp_sick.service_account = "wp".into();
    wp_sick.status = HealthStatus::Unhealthy;
    let canary_pod = endpoint_of(wl("canary", "10.0.1.3", false), "canary.ns.svc", &[(15008, 15008)]);
    let down_pod = {
        let mut w = endpoint_of(wl("down", "10.0.1.4", false), "down.ns.svc", &[(15008, 15008)]);
        w.status = HealthStatus::Unhealthy;
        w
    };
    let mut pod_wp = wl("podwp", "10.0.0.7", true);
    pod_wp.waypoint = Some(by_host("ns", "wp.ns.svc"));
    let mut pod_by_ip = wl("podbyip", "10.0.0.8", true);
    pod_by_ip.waypoint = Some(by_ip("10.0.1.3"));
    let mut pod_down = wl("poddown", "10.0.0.9", true);
    pod_down.waypoint = Some(by_host("ns", "down.ns.svc"));
    let plain_ep = endpoint_of(pod_wp.clone(), "plain.ns.svc", &[(80, 8080)]);
    let mut wp_svc = service("wp.ns.svc", "10.96.1.1", &[(15008, 15008)]);
    wp_svc.subject_alt_names = vec!["spiffe://cluster.local/ns/ns/sa/wp-extra".into()];
    let mut echo = service("echo.ns.svc", "10.96.0.1", &[(80, 0)]);
    echo.waypoint = Some(by_host("ns", "wp.ns.svc"));
    let mut weighted = service("weighted.ns.svc", "10.96.0.2", &[(80, 0)]);
    weighted.waypoint = Some(by_host("ns", "wp.ns.svc"));
    weighted.weighted_waypoints = vec![
        crate::model::WeightedWaypoint { destination: by_host("ns", "wp.ns.svc"), weight: 90 },
        crate::model::WeightedWaypoint { destination: by_host("ns", "canary.ns.svc"), weight: 10 },
    ];
    let mut zero = service("zero.ns.svc", "10.96.0.3", &[(80, 0)]);
    zero.waypoint = Some(by_host("ns", "canary.ns.svc"));
    zero.weighted_waypoints = vec![crate::model::WeightedWaypoint { destination: by_host("ns", "wp.ns.svc"), weight: 0 }];
    let mut gone = service("gone.ns.svc", "10.96.0.4", &[(80, 0)]);
    gone.waypoint = Some(by_host("ns", "nope.ns.svc"));
    let mut sick = service("sick.ns.svc", "10.96.0.5", &[(80, 0)]);
    sick.waypoint = Some(by_host("ns", "down.ns.svc"));
    let plain = service("plain.ns.svc", "10.96.0.6", &[(80, 0)]);
    let services = vec![
        wp_svc,
        service("canary.ns.svc", "10.96.1.2", &[(15008, 15008)]),
        service("down.ns.svc", "10.96.1.3", &[(15008, 15008)]),
        echo,
        weighted,
        zero,
        gone,
        sick,
        plain,
    ];
    let workloads = vec![client, server, wp_pod, wp_sick, canary_pod, down_pod, plain_ep, pod_by_ip, pod_down];
    Snapshot::build(StateInput { workloads, services, policies: vec![] }, 1)
}

#[test]
fn waypoint_routing_table() {
    let snap = waypoint_snapshot();
    let wp_ids = vec!["spiffe://cluster.local/ns/ns/sa/wp", "spiffe://cluster.local/ns/ns/sa/wp-extra"];
    let canary_ids = vec!["spiffe://cluster.local/ns/ns/sa/canary"];
    // (case, source, destination, pick result, expected)
    let cases: Vec<(&str, &str, &str, u64, Want)> = vec![
        (
            "service VIP through its waypoint, authority = the VIP:port dialled",
            "client",
            "10.96.0.1:80",
            0,
            Want::Hbone { hbone: "10.0.1.1:15008", authority: "10.96.0.1:80", ids: wp_ids.clone() },
        ),
        (
            "weighted waypoints: the primary by weight",
            "client",
            "10.96.0.2:80",
            89,
            Want::Hbone { hbone: "10.0.1.1:15008", authority: "10.96.0.2:80", ids: wp_ids.clone() },
        ),
        (
            "weighted waypoints: the canary by weight",
            "client",
            "10.96.0.2:80",
            90,
            Want::Hbone { hbone: "10.0.1.3:15008", authority: "10.96.0.2:80", ids: canary_ids.clone() },
        ),
        (
            "all weights 0: falls back to waypoint",
            "client",
            "10.96.0.3:80",
            0,
            Want::Hbone { hbone: "10.0.1.3:15008", authority: "10.96.0.3:80", ids: canary_ids.clone() },
        ),
        (
            "unknown waypoint fails closed",
            "client",
            "10.96.0.4:80",
            0,
            Want::Err("destination ns/gone.ns.svc must go through waypoint ns/nope.ns.svc, which is not in the mesh state"),
        ),
        (
            "waypoint without a healthy pod fails closed",
            "client",
            "10.96.0.5:80",
            0,
            Want::Err("destination ns/sick.ns.svc must go through waypoint ns/down.ns.svc, which has no healthy pod"),
        ),
        (
            "pod IP through the pod's waypoint, authority = the pod IP:port",
            "client",
            "10.0.0.7:8080",
            0,
            Want::Hbone { hbone: "10.0.1.1:15008", authority: "10.0.0.7:8080", ids: wp_ids.clone() },
        ),
        (
            "pod waypoint given by address",
            "client",
            "10.0.0.8:8080",
            0,
            Want::Hbone { hbone: "10.0.1.3:15008", authority: "10.0.0.8:8080", ids: canary_ids.clone() },
        ),
        (
            "pod waypoint not ready fails closed",
            "client",
            "10.0.0.9:8080",
            0,
            Want::Err("destination Kubernetes//Pod/ns/poddown must go through waypoint ns/down.ns.svc, which has no healthy pod"),
        ),
        (
            "service without a waypoint to an endpoint with one: through the endpoint's waypoint",
            "client",
            "10.96.0.6:80",
            0,
            Want::Hbone { hbone: "10.0.1.1:15008", authority: "10.0.0.7:8080", ids: wp_ids.clone() },
        ),
        (
            "the waypoint itself goes direct to the pod (no loop)",
            "wp",
            "10.0.0.7:8080",
            0,
            Want::Hbone { hbone: "10.0.0.7:15008", authority: "10.0.0.7:8080", ids: vec!["spiffe://cluster.local/ns/ns/sa/podwp"] },
        ),
        (
            "the waypoint itself goes to the service's endpoints (no loop)",
            "wp",
            "10.96.0.1:80",
            0,
            Want::Hbone { hbone: "10.0.0.2:15008", authority: "10.0.0.2:8080", ids: vec!["spiffe://cluster.local/ns/ns/sa/server"] },
        ),
    ];
    for (name, from, dst, n, expected) in cases {
        let src = snap.find_workload("ns", from, None).unwrap().clone();
        let got = summarize(outbound(&snap, &src, OrigDstAddr(sa(dst)), &Ports::default(), &mut |total| n.min(total - 1)));
        let want = want(&expected);
        assert!(got.starts_with(&want), "{name}: got {got:?}, want {want:?}");
    }
}

#[test]
fn a_source_with_the_waypoints_identity_but_another_address_is_not_the_waypoint() {
    let snap = waypoint_snapshot();
    let mut impostor = wl("impostor", "10.0.0.50", true);
    impostor.service_account = "wp".into();
    let got = summarize(outbound(&snap, &impostor, OrigDstAddr(sa("10.0.0.7:8080")), &Ports::default(), &mut |_| 0));
    assert!(got.starts_with("hbone 10.0.1.1:15008 10.0.0.7:8080"), "sent through the waypoint: {got}");
}

#[test]
fn destination_admits_only_its_waypoints() {
    let snap = waypoint_snapshot();
    let id = |sa: &str| format!("spiffe://cluster.local/ns/ns/sa/{sa}").parse::<Identity>().unwrap();
    // (case, destination, peer, admitted)
    let cases = [
        ("no waypoint: anyone", "client", "server", true),
        ("service waypoint: its pods' identity", "server", "wp", true),
        ("service waypoint: a client directly", "server", "client", false),
        ("hairpin: the workload itself", "server", "server", true),
        ("workload waypoint (and the service's): the waypoint", "podwp", "wp", true),
        ("workload waypoint: a client directly", "podwp", "client", false),
        ("waypoint by address: the addressed workload", "podbyip", "canary", true),
        ("waypoint by address: another waypoint", "podbyip", "wp", false),
        ("waypoint without a healthy pod still admits its pods' identity", "poddown", "down", true),
        ("a SAN on the waypoint's Service is not a pod identity", "server", "wp-extra", false),
    ];
    for (name, dst, peer, admitted) in cases {
        let w = snap.find_workload("ns", dst, None).unwrap();
        let got = waypoint_admits(&snap, w, Some(&id(peer)));
        assert_eq!(got.is_ok(), admitted, "{name}: {got:?}");
        if let Err(e) = got {
            assert!(e.to_string().contains(&format!("spiffe://cluster.local/ns/ns/sa/{peer} may not connect directly")), "{e}");
        }
    }
    let unknown = {
        let mut w = wl("lost", "10.0.0.60", true);
        w.waypoint = Some(by_host("ns", "nope.ns.svc"));
        w
    };
    let e = waypoint_admits(&snap, &unknown, Some(&id("wp"))).unwrap_err();
    assert!(e.to_string().contains("served through waypoint ns/nope.ns.svc"), "an unknown waypoint admits nobody: {e}");
    let server = snap.find_workload("ns", "server", None).unwrap();
    let e = waypoint_admits(&snap, server, None).unwrap_err();
    assert!(e.to_string().starts_with("a plaintext client may not connect directly"), "plaintext has no identity to admit: {e}");
    let client = snap.find_workload("ns", "client", None).unwrap();
    assert!(waypoint_admits(&snap, client, None).is_ok(), "plaintext to a workload without a waypoint is not this check's business");
}
