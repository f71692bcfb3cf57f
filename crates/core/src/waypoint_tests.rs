use super::*;
use crate::local_config::parse;

const STATE: &str = r#"
workloads:
- uid: c//Pod/shop/reviews-1
  name: reviews-1
  namespace: shop
  serviceAccount: reviews
  workloadIps: ["10.0.0.11"]
  protocol: HBONE
  services: {"shop/reviews.shop.svc.cluster.local": {9080: 8080}}
- uid: c//Pod/shop/reviews-2
  name: reviews-2
  namespace: shop
  serviceAccount: reviews
  workloadIps: ["10.0.0.12"]
  protocol: HBONE
  status: Unhealthy
  services: {"shop/reviews.shop.svc.cluster.local": {9080: 8080}}
- uid: c//Pod/shop/plain
  name: plain
  namespace: shop
  workloadIps: ["10.0.0.13"]
  protocol: TCP
  services: {"shop/plain.shop.svc.cluster.local": {80: 80}}
- uid: c//Pod/shop/pod-wp
  name: pod-wp
  namespace: shop
  workloadIps: ["10.0.0.14"]
  protocol: HBONE
  waypoint: {destination: shop/waypoint.shop.svc.cluster.local}
- uid: c//Pod/shop/pod-direct
  name: pod-direct
  namespace: shop
  workloadIps: ["10.0.0.15"]
  protocol: HBONE
services:
- name: reviews
  namespace: shop
  hostname: reviews.shop.svc.cluster.local
  vips: ["/10.96.0.10"]
  ports: {9080: 8080, 9090: 9090, 9091: 9091, 9092: 9092, 9093: 9093}
  appProtocols: {9080: HTTP11, 9091: GRPC, 9092: HTTP2, 9093: TLS}
  waypoint: {destination: shop/waypoint.shop.svc.cluster.local}
- name: plain
  namespace: shop
  hostname: plain.shop.svc.cluster.local
  vips: ["/10.96.0.11"]
  ports: {80: 80}
  waypoint: {destination: /10.0.9.9}
- name: other
  namespace: shop
  hostname: other.shop.svc.cluster.local
  vips: ["/10.96.0.12"]
  ports: {80: 80}
  waypoint: {destination: shop/east.shop.svc.cluster.local}
- name: none
  namespace: shop
  hostname: none.shop.svc.cluster.local
  vips: ["/10.96.0.13"]
  ports: {80: 80}
"#;

fn me() -> WaypointSelf {
    WaypointSelf {
        namespace: "shop".into(),
        name: "waypoint".into(),
        hostname: "waypoint.shop.svc.cluster.local".into(),
        addresses: vec!["10.0.9.9".parse().unwrap()],
        network: String::new(),
    }
}

fn snap() -> Snapshot {
    Snapshot::build(parse(STATE, "test").unwrap(), 1)
}

type Expected = Result<(&'static str, Protocol), &'static str>;

#[test]
fn what_the_waypoint_fronts() {
    let s = snap();
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Expected)> = vec![
        ("service by hostname, HTTP port", "10.96.0.10:9080", Ok(("reviews", Protocol::Http1))),
        ("service port without a protocol is TCP", "10.96.0.10:9090", Ok(("reviews", Protocol::Tcp))),
        ("gRPC port is HTTP/2", "10.96.0.10:9091", Ok(("reviews", Protocol::Http2))),
        ("HTTP/2 port", "10.96.0.10:9092", Ok(("reviews", Protocol::Http2))),
        ("TLS port is bytes", "10.96.0.10:9093", Ok(("reviews", Protocol::Tcp))),
        ("service by waypoint address", "10.96.0.11:80", Ok(("plain", Protocol::Tcp))),
        ("workload-addressed", "10.0.0.14:8080", Ok(("pod-wp", Protocol::Tcp))),
        ("service port it does not have", "10.96.0.10:1", Err("service shop/reviews.shop.svc.cluster.local has no port 1")),
        ("another waypoint's service", "10.96.0.12:80", Err("10.96.0.12:80 is service shop/other.shop.svc.cluster.local, whose waypoint is not this one (it names shop/east.shop.svc.cluster.local)")),
        ("service without waypoint", "10.96.0.13:80", Err("10.96.0.13:80 is service shop/none.shop.svc.cluster.local, whose waypoint is not this one (it has none)")),
        ("workload without waypoint", "10.0.0.15:80", Err("10.0.0.15:80 is workload c//Pod/shop/pod-direct, whose waypoint is not this one (it has none)")),
        ("unknown address", "10.9.9.9:80", Err("10.9.9.9:80 is not a service or workload address this waypoint knows")),
    ];
    for (name, authority, want) in cases {
        let got = fronted(&s, &me(), authority.parse().unwrap()).map(|f| {
            let n = match &f {
                Fronted::Service { service, .. } => service.name.clone(),
                Fronted::Workload { workload, .. } => workload.name.clone(),
            };
            (n, f.protocol())
        });
        let got = got.as_ref().map(|(n, p)| (n.as_str(), *p)).map_err(|e| e.to_string());
        assert_eq!(got, want.map_err(String::from), "{name}");
    }
}

#[test]
fn how_each_declared_protocol_is_served() {
    let cases = [
        (Some(AppProtocol::Http11), Protocol::Http1),
        (Some(AppProtocol::Http2), Protocol::Http2),
        (Some(AppProtocol::Grpc), Protocol::Http2),
        (Some(AppProtocol::Tcp), Protocol::Tcp),
        (Some(AppProtocol::Tls), Protocol::Tcp),
        (None, Protocol::Tcp),
    ];
    for (declared, want) in cases {
        assert_eq!(Protocol::of(declared), want, "{declared:?}");
    }
}

#[test]
fn endpoints_are_healthy_hbone_pods_at_their_target_port() {
    let s = snap();
    let f = fronted(&s, &me(), "10.96.0.10:9080".parse().unwrap()).unwrap();
    let eps = endpoints(&s, &f, 15008).unwrap();
    let got: Vec<_> = eps.iter().map(|e| (e.target.to_string(), e.hbone_addr.to_string(), e.identities[0].to_string())).collect();
    assert_eq!(got, vec![("10.0.0.11:8080".into(), "10.0.0.11:15008".into(), "spiffe://cluster.local/ns/shop/sa/reviews".into())]);
    let f = fronted(&s, &me(), "10.96.0.11:80".parse().unwrap()).unwrap();
    assert_eq!(
        endpoints(&s, &f, 15008).unwrap_err().to_string(),
        "no healthy HBONE endpoint for service shop/plain.shop.svc.cluster.local port 80",
        "never plaintext"
    );
    let f = fronted(&s, &me(), "10.0.0.14:8080".parse().unwrap()).unwrap();
    assert_eq!(endpoints(&s, &f, 15008).unwrap()[0].target.to_string(), "10.0.0.14:8080", "workload-addressed keeps its port");
}

#[test]
fn least_request_of_two() {
    let s = snap();
    let f = fronted(&s, &me(), "10.0.0.14:8080".parse().unwrap()).unwrap();
    let one = endpoints(&s, &f, 15008).unwrap();
    let mut eps = one.clone();
    eps.push(Endpoint { target: "10.0.0.99:8080".parse().unwrap(), ..one[0].clone() });
    let load = |e: &Endpoint| if e.target.port() == 8080 && e.target.ip().to_string() == "10.0.0.14" { 5 } else { 1 };
    let mut seq = [0usize, 1].into_iter().cycle();
    assert_eq!(pick(&eps, &load, &mut |_| seq.next().unwrap()).unwrap().target.to_string(), "10.0.0.99:8080", "the less loaded of the two");
    let mut same = |_| 0;
    assert_eq!(pick(&eps, &load, &mut same).unwrap().target.to_string(), "10.0.0.14:8080", "both draws the same: that one");
    assert!(pick(&[], &load, &mut same).is_none());
}

#[test]
fn the_services_it_fronts_with_each_ports_protocol() {
    let listed = fronted_services(&snap(), &me());
    let want: std::collections::BTreeMap<u16, Protocol> =
        [(9080, Protocol::Http1), (9090, Protocol::Tcp), (9091, Protocol::Http2), (9092, Protocol::Http2), (9093, Protocol::Tcp)].into();
    // plain names this waypoint by address; other and none are not its.
    let names: Vec<&str> = listed.iter().map(|f| f.service.as_str()).collect();
    assert_eq!(names, ["plain.shop.svc.cluster.local", "reviews.shop.svc.cluster.local"]);
    assert_eq!(listed[1].ports, want);
}
