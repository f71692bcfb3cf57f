use super::*;
use crate::model::{Service, Workload};

fn state(pods: &[(&str, &str)]) -> StateInput {
    let workloads = pods
        .iter()
        .map(|(name, ip)| {
            let mut w = Workload::new(&format!("Kubernetes//Pod/ns/{name}"), "ns", name);
            w.addresses = vec![ip.parse().unwrap()];
            w
        })
        .collect();
    StateInput { workloads, services: vec![Service::new("ns", "svc", "svc.ns.svc.cluster.local")], policies: Vec::new() }
}

fn names(d: &Delta) -> Vec<&str> {
    d.updated.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn a_wildcard_client_gets_everything_then_only_what_changed() {
    let mut sub = Subscriber::new(&[], &[], BTreeMap::new());
    let one = Resources::from_state(&state(&[("a", "10.0.0.1"), ("b", "10.0.0.2")]));
    let d = sub.delta(one.of_type(ADDRESS_TYPE).unwrap());
    assert_eq!(names(&d), ["Kubernetes//Pod/ns/a", "Kubernetes//Pod/ns/b", "ns/svc.ns.svc.cluster.local"]);
    assert!(sub.delta(one.of_type(ADDRESS_TYPE).unwrap()).is_empty(), "nothing changed, nothing sent");
    // b's IP changes and c appears: exactly those two; a is not re-sent.
    let two = Resources::from_state(&state(&[("a", "10.0.0.1"), ("b", "10.0.0.9"), ("c", "10.0.0.3")]));
    let d = sub.delta(two.of_type(ADDRESS_TYPE).unwrap());
    assert_eq!(names(&d), ["Kubernetes//Pod/ns/b", "Kubernetes//Pod/ns/c"]);
    assert!(d.removed.is_empty());
    let three = Resources::from_state(&state(&[("b", "10.0.0.9"), ("c", "10.0.0.3")]));
    let d = sub.delta(three.of_type(ADDRESS_TYPE).unwrap());
    assert!(d.updated.is_empty());
    assert_eq!(d.removed, ["Kubernetes//Pod/ns/a"]);
}

#[test]
fn a_reconnecting_client_gets_only_what_changed_while_it_was_away() {
    let before = Resources::from_state(&state(&[("a", "10.0.0.1"), ("b", "10.0.0.2")]));
    let held: BTreeMap<String, String> =
        before.of_type(ADDRESS_TYPE).unwrap().values().map(|r| (r.name.clone(), r.version.clone())).collect();
    // Versions are a function of the bytes: a restarted control plane computes the same ones.
    assert_eq!(Resources::from_state(&state(&[("a", "10.0.0.1"), ("b", "10.0.0.2")])), before);
    let now = Resources::from_state(&state(&[("a", "10.0.0.1"), ("c", "10.0.0.3")]));
    let mut sub = Subscriber::new(&[], &[], held);
    let d = sub.delta(now.of_type(ADDRESS_TYPE).unwrap());
    assert_eq!(names(&d), ["Kubernetes//Pod/ns/c"]);
    assert_eq!(d.removed, ["Kubernetes//Pod/ns/b"]);
}

#[test]
fn on_demand_clients_get_what_they_asked_for_by_name_or_alias() {
    let now = Resources::from_state(&state(&[("a", "10.0.0.1"), ("b", "10.0.0.2")]));
    let addrs = now.of_type(ADDRESS_TYPE).unwrap();
    // Istio's explicit mode: subscribe ["*"] and unsubscribe ["*"] means nothing yet.
    let mut sub = Subscriber::new(&["*".to_string()], &["*".to_string()], BTreeMap::new());
    assert!(sub.delta(addrs).is_empty());
    sub.change(&["/10.0.0.2".to_string(), "/10.9.9.9".to_string()], &[]);
    let d = sub.delta(addrs);
    assert_eq!(names(&d), ["Kubernetes//Pod/ns/b"], "found by its alias");
    assert_eq!(d.removed, ["/10.9.9.9"], "an unknown name is answered with its removal, once");
    assert!(sub.delta(addrs).is_empty());
}

fn wire(r: &Resources, type_url: &str) -> Vec<(String, String, Vec<u8>)> {
    r.of_type(type_url).unwrap().values().map(|r| (r.name.clone(), r.version.clone(), r.body.clone())).collect()
}

#[test]
fn the_client_applies_what_decodes_and_refuses_the_rest_failing_closed() {
    use crate::model::{Authorization, PolicyAction, PolicyScope};
    let deny = Authorization {
        name: "d".into(),
        namespace: "ns".into(),
        scope: PolicyScope::Namespace,
        action: PolicyAction::Deny,
        dry_run: false,
        rules: vec![vec![vec![crate::model::Match { destination_ports: vec![22], ..Default::default() }]]],
        notes: Vec::new(),
    };
    let server = Resources::from_state(&StateInput { policies: vec![deny.clone()], ..state(&[("a", "10.0.0.1")]) });
    let mut c = ClientState::default();
    let mut addrs = wire(&server, ADDRESS_TYPE);
    addrs.push(("bad".into(), "1".into(), vec![0xff, 0xff]));
    let applied = c.apply(ADDRESS_TYPE, addrs, &[]);
    assert!(applied.changed);
    assert!(applied.nack().unwrap().starts_with("bad: not an Address"), "{:?}", applied.nack());
    assert_eq!(c.state().workloads.len(), 1);
    assert!(!c.versions(ADDRESS_TYPE).contains_key("bad"), "a refused resource is not recorded");
    // A DENY whose rules cannot be read is refused, and enforced as deny-everything.
    let mut broken = crate::wds::authorization(&deny).message;
    broken.rules[0].clauses[0].matches[0].destination_ports = vec![70000];
    let applied = c.apply(AUTHORIZATION_TYPE, vec![("ns/d".into(), "2".into(), broken.encode_to_vec())], &[]);
    assert!(applied.nack().is_some());
    let p = &c.state().policies[0];
    assert_eq!((p.action, p.rules.clone()), (PolicyAction::Deny, vec![vec![]]));
    assert!(p.notes[0].contains("refused from xDS") && p.notes[0].contains("denies everything"), "{:?}", p.notes);
    // Removals by name.
    let applied = c.apply(ADDRESS_TYPE, Vec::new(), &["Kubernetes//Pod/ns/a".into()]);
    assert!(applied.changed && applied.nack().is_none());
    assert!(c.state().workloads.is_empty());
}
