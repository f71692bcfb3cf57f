use std::net::IpAddr;

use super::*;
use crate::model::*;

/// The shape of upstream ztunnel's `examples/localhost.yaml` (one HBONE and one TCP workload,
/// a namespace policy, two services), plus the forms that file does not show.
const ZTUNNEL_STYLE: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/local
  name: local
  namespace: default
  serviceAccount: default
  workloadIps: ["127.0.0.1"]
  protocol: HBONE
  node: local
  network: ""
  services:
    "default/example.com":
      80: 8080
- uid: cluster1//v1/Pod/default/local-tcp
  name: local-tcp
  namespace: default
  serviceAccount: default
  workloadIps: ["127.0.0.2"]
  protocol: TCP
  node: local
  network: ""
  authorizationPolicies: [default/selected]
  locality: {region: r1, zone: z1}
  capacity: 3
  services:
    "default/example.com":
      80: 8080
policies:
  - action: Allow
    rules:
    - - - notDestinationPorts:
          - 9999
    name: deny-9999
    namespace: default
    scope: Namespace
  - name: selected
    namespace: default
    scope: WorkloadSelector
    action: Deny
    dryRun: true
    rules:
    - - - principals: [!Exact "cluster.local/ns/default/sa/bad", !Prefix "cluster.local/ns/evil/"]
          notNamespaces:
          - !Suffix "-prod"
          - !Presence
          sourceIps: ["10.0.0.0/8", "192.168.1.1"]
          serviceAccounts: [{namespace: default, serviceAccount: bad}]
services:
- name: local
  namespace: default
  hostname: example.com
  vips:
    - /127.10.0.1
  ports:
    80: 8080
  subjectAltNames:
   - spiffe://cluster.local/ns/default/sa/local
- name: remote
  namespace: default
  hostname: example2.com
  vips:
    - remote/127.10.0.2
  ports:
    80: 8080
  loadBalancer: {routingPreferences: [Network, Region], mode: Failover}
  cidrVips: [{network: "", cidr: "10.200.0.0/16"}]
"#;

#[test]
fn loads_ztunnel_schema() {
    let s = parse(ZTUNNEL_STYLE, "test").unwrap();
    assert_eq!(s.workloads.len(), 2);
    let w = &s.workloads[0];
    assert_eq!(w.protocol, TunnelProtocol::Hbone);
    assert_eq!(w.addresses, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(w.services["default/example.com"][&80], 8080);
    assert_eq!(w.identity().unwrap().to_string(), "spiffe://cluster.local/ns/default/sa/default");
    assert_eq!(s.workloads[1].capacity, 3);
    assert_eq!(s.services[1].vips[0].network, "remote");
    assert_eq!(s.services[1].load_balancing.as_ref().unwrap().mode, LbMode::Failover);
    let deny = &s.policies[1];
    assert_eq!(deny.action, PolicyAction::Deny);
    assert!(deny.dry_run);
    let m = &deny.rules[0][0][0];
    assert_eq!(m.principals[1], StringMatch::Prefix("cluster.local/ns/evil/".into()));
    assert_eq!(m.not_namespaces[1], StringMatch::Presence);
    assert_eq!(m.source_ips[1].to_string(), "192.168.1.1/32");
    assert!(!s.policies[0].dry_run, "dryRun defaults to false");
}

#[test]
fn empty_file_is_empty_state() {
    let s = parse("", "empty").unwrap();
    assert!(s.workloads.is_empty() && s.services.is_empty() && s.policies.is_empty());
}

#[test]
fn errors_name_line_and_column() {
    let cases: &[(&str, usize, &str)] = &[
        ("workloads:\n- namespace: a\n  workloadIps: [\"10.0.0.1\"]\n  bogus: 1\n", 4, "unknown field `bogus`"),
        ("workloads:\n- namespace: a\n  workloadIps: [\"10.0.0.300\"]\n", 3, "invalid IP address"),
        ("workloads:\n- namespace: a\n  workloadIps: [\"10.0.0.1\"]\n  protocol: QUIC\n", 4, "unknown variant `QUIC`"),
        ("services:\n- name: a\n  namespace: b\n  hostname: c\n  vips: [\"10.0.0.1\"]\n  ports: {}\n", 5, "not of the form <network>/<IP>"),
        ("policies:\n- name: a\n  namespace: b\n  rules: [[[\n", 4, "unclosed bracket"),
        (
            "policies:\n- namespace: b\n  action: Deny\n  rules: [[[{bogus: 1}]]]\n",
            4,
            "policies[0]: missing field `name`; its name and namespace cannot be read",
        ),
        ("policies:\n- name: [a]\n  namespace: b\n  action: Deny\n  bogus: 1\n", 2, "expected string scalar"),
        ("workloads: [\n", 1, "unclosed bracket"),
        ("workloads:\n- namespace: a\n", 2, "missing field `workloadIps`"),
    ];
    for (text, line, needle) in cases {
        match parse(text, "f.yaml") {
            Err(LocalConfigError::Syntax { line: l, message, origin, .. }) => {
                assert_eq!(origin, "f.yaml");
                assert_eq!(l, *line, "{text:?}: {message}");
                assert!(message.contains(needle), "{text:?}: {message}");
            }
            other => panic!("{text:?}: expected a syntax error, got {other:?}"),
        }
    }
}

#[test]
fn semantic_errors_name_the_entry_and_its_line() {
    let w = |uid: &str, ip: &str| format!("- {{uid: {uid}, namespace: a, workloadIps: [\"{ip}\"]}}\n");
    let svc = "- {name: a, namespace: b, hostname: c, vips: [], ports: {}}\n";
    let pol = "- {name: p, namespace: n, scope: Global, action: Deny}\n";
    #[rustfmt::skip]
    let cases: Vec<(String, &str)> = vec![
        // (document, what the error must say)
        (format!("workloads:\n{}{}{}", w("x", "10.0.0.1"), w("y", "10.0.0.2"), w("x", "10.0.0.3")), "line 4: workloads[2]: duplicate uid \"x\" (first at line 2)"),
        ("workloads:\n- {namespace: a, workloadIps: []}\n".into(), "line 2: workloads[0] (): needs workloadIps or hostname"),
        ("workloads:\n- {namespace: \"a/b\", workloadIps: [\"10.0.0.1\"]}\n".into(), "line 2: workloads[0] (): identity \"spiffe://cluster.local/ns/a/b/sa/default\": invalid namespace"),
        ("\nworkloads:\n- {namespace: a, workloadIps: [\"10.0.0.1\"], services: {\"nohost\": {80: 80}}}\n".into(), "line 3: workloads[0] (): service key"),
        ("services:\n- {name: a, namespace: b, hostname: c, vips: [], ports: {}, endpoints: [{workloadUid: nope}]}\n".into(), "line 2: services[0]: endpoint names unknown workload uid"),
        (format!("services:\n{svc}{svc}"), "line 3: services[1]: duplicate service b/c (first at line 2)"),
        (format!("policies:\n{pol}\n{pol}"), "line 4: policies[1]: duplicate policy n/p (first at line 2)"),
        (format!("policies:\n{pol}- {{name: p, namespace: n, scope: Global, action: Deny, bogus: 1}}\n"), "line 3: policies[1]: duplicate policy n/p (first at line 2)"),
    ];
    for (text, needle) in cases {
        match parse(&text, "f.yaml") {
            Err(e @ LocalConfigError::Invalid { .. }) => assert!(e.to_string().contains(needle), "{text:?}:\n{e}\nwant: {needle}"),
            other => panic!("{text:?}: expected a validation error, got {other:?}"),
        }
    }
}

#[test]
fn garbage_never_panics() {
    let inputs = [
        "\0\0\0",
        "- - - -",
        "workloads: 5",
        "{{{{",
        "workloads:\n  - !Exact x",
        ":",
        "!!binary AAAA",
        "policies: [{rules: [[[!Presence]]]}]",
    ];
    for i in inputs {
        assert!(parse(i, "garbage").is_err(), "{i:?} should not parse");
    }
}

#[test]
fn rendering_round_trips() {
    let original = parse(ZTUNNEL_STYLE, "test").unwrap();
    let text = to_yaml(&original).unwrap();
    let back = parse(&text, "rendered").unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back, original, "{text}");
    assert!(text.contains("!Exact \"cluster.local/ns/default/sa/bad\""), "string matches render as ztunnel's YAML tags:\n{text}");
}

/// The workloads, service and valid policy every unreadable-policy case is applied next to.
const AROUND: &str = r#"
workloads:
- {uid: a, name: a, namespace: shop, serviceAccount: a, workloadIps: ["10.0.0.2"], authorizationPolicies: [shop/bad]}
- {uid: b, name: b, namespace: other, workloadIps: ["10.0.0.3"]}
services:
- {name: s, namespace: shop, hostname: s.shop, vips: ["/10.96.0.1"], ports: {80: 8080}}
policies:
- {name: fine, namespace: other, scope: Namespace, action: Deny, rules: [[[{destinationPorts: [9]}]]]}
"#;

#[test]
fn an_unreadable_policy_fails_closed_and_the_rest_applies() {
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, PolicyAction, PolicyScope, &str)> = vec![
        // (name, the entry's keys after name/namespace, resulting action, scope, the note's reason)
        ("unknown field in a DENY match", "scope: Namespace, action: Deny, rules: [[[{sourcePorts: [1]}]]]", PolicyAction::Deny, PolicyScope::Namespace, "unknown field `sourcePorts`"),
        ("bad CIDR in a DENY", "scope: Global, action: Deny, rules: [[[{sourceIps: [\"nope\"]}]]]", PolicyAction::Deny, PolicyScope::Global, "not an IP address or CIDR"),
        ("unknown action", "scope: Namespace, action: Audit, rules: []", PolicyAction::Deny, PolicyScope::Namespace, "unknown variant `Audit`"),
        ("missing action", "scope: Namespace", PolicyAction::Deny, PolicyScope::Namespace, "missing field `action`"),
        ("unknown field in a DENY policy", "scope: WorkloadSelector, action: Deny, priority: 1", PolicyAction::Deny, PolicyScope::WorkloadSelector, "unknown field `priority`"),
        ("bad port in an ALLOW", "scope: Namespace, action: Allow, rules: [[[{destinationPorts: [99999]}]]]", PolicyAction::Allow, PolicyScope::Namespace, "invalid u16"),
        ("unknown string match in an ALLOW", "scope: Namespace, action: Allow, rules: [[[{principals: [!Regex \".*\"]}]]]", PolicyAction::Allow, PolicyScope::Namespace, "Regex"),
        ("unknown scope is taken as the namespace", "scope: Cluster, action: Deny", PolicyAction::Deny, PolicyScope::Namespace, "unknown variant `Cluster`"),
    ];
    for (name, keys, action, scope, reason) in cases {
        let text = format!("{AROUND}- {{name: bad, namespace: shop, {keys}}}\n");
        let s = parse(&text, "f.yaml").unwrap_or_else(|e| panic!("{name}: the file must still apply: {e}"));
        assert_eq!((s.workloads.len(), s.services.len(), s.policies.len()), (2, 1, 2), "{name}: every other entry applies");
        assert_eq!(s.policies[0].key(), "other/fine", "{name}");
        assert_eq!(s.policies[0].rules.len(), 1, "{name}: the valid policy is read as written");
        let bad = &s.policies[1];
        assert_eq!((bad.key(), bad.action, bad.scope, bad.dry_run), ("shop/bad".into(), action, scope, false), "{name}");
        let (rules, outcome): (Vec<Rule>, &str) = match action {
            PolicyAction::Allow => (vec![], "failing closed: it allows nothing"),
            PolicyAction::Deny => (vec![vec![]], "failing closed: it denies everything in its scope"),
        };
        assert_eq!(bad.rules, rules, "{name}");
        let note = bad.notes.join("; ");
        assert!(
            note.contains("policies[1]") && note.contains("line 9") && note.contains(reason) && note.contains(outcome),
            "{name}: {note}"
        );
    }
}

#[test]
fn an_unreadable_dry_run_policy_stays_dry_run() {
    let s =
        parse(&format!("{AROUND}- {{name: bad, namespace: shop, scope: Namespace, action: Deny, dryRun: true, bogus: 1}}\n"), "f").unwrap();
    assert!(s.policies[1].dry_run && s.policies[1].action == PolicyAction::Deny);
}

#[test]
fn an_unreadable_policy_is_enforced() {
    use crate::rbac::{evaluate, ConnAttrs, Decision};
    use crate::state::Snapshot;
    let decide = |text: &str, ns: &str, name: &str| {
        let snap = Snapshot::build(parse(text, "f.yaml").unwrap(), 1);
        let w = snap.find_workload(ns, name, None).unwrap();
        let id = "spiffe://cluster.local/ns/front/sa/client".parse().unwrap();
        let attrs = ConnAttrs { src_ip: "10.0.0.9".parse().unwrap(), src_identity: Some(id), dst: (w.addresses[0], 8080).into() };
        evaluate(&snap, w, &attrs)
    };
    let deny = format!(
        "{AROUND}- {{name: bad, namespace: shop, scope: Namespace, action: Deny, rules: [[[{{sourceIps: [\"10.0.0.0/33\"]}}]]]}}\n"
    );
    assert_eq!(
        decide(&deny, "shop", "a"),
        Decision::Deny { policy: Some("shop/bad".into()), reason: "explicitly denied by shop/bad".into() },
        "the DENY nobody could read denies"
    );
    assert!(decide(&deny, "other", "b").is_allow(), "only in its scope");
    let allow = format!("{AROUND}- {{name: bad, namespace: shop, scope: WorkloadSelector, action: Allow, rules: [[[{{bogus: 1}}]]]}}\n");
    assert_eq!(decide(&allow, "shop", "a"), Decision::Deny { policy: None, reason: "allow policies exist, but none allowed".into() });
    assert!(decide(&allow, "other", "b").is_allow(), "only the selected workload");
}

#[test]
fn empty_matches_allow_nothing() {
    // ztunnel's `rules: [[[{}]]]`: a clause of only empty matches never matches (§4.9).
    use crate::rbac::{evaluate, ConnAttrs};
    use crate::state::Snapshot;
    let text = "workloads:\n- {name: a, namespace: shop, workloadIps: [\"10.0.0.2\"]}\npolicies:\n- {name: p, namespace: shop, scope: Namespace, action: Allow, rules: [[[{}]]]}\n";
    let snap = Snapshot::build(parse(text, "f.yaml").unwrap(), 1);
    let w = snap.find_workload("shop", "a", None).unwrap();
    for id in [None, Some("spiffe://cluster.local/ns/front/sa/client")] {
        let attrs = ConnAttrs {
            src_ip: "10.0.0.9".parse().unwrap(),
            src_identity: id.map(|i| i.parse().unwrap()),
            dst: (w.addresses[0], 80).into(),
        };
        assert!(!evaluate(&snap, w, &attrs).is_allow(), "{id:?}");
    }
}

#[test]
fn what_still_rejects_the_whole_file() {
    let many: String = (0..33).map(|i| format!("- {{name: p{i}, namespace: n, bogus: 1}}\n")).collect();
    let unreadable = "- {name: bad, namespace: shop, bogus: 1}\n";
    let cases: Vec<(&str, String, &str)> = vec![
        ("more unreadable policies than the bound", format!("policies:\n{many}"), "more than 32 policies are unreadable"),
        ("a broken workload next to an unreadable policy", format!("{AROUND}{unreadable}").replace("10.0.0.3", "10.0.0.300"), "invalid IP"),
        ("text that is not YAML after an unreadable policy", format!("policies:\n{unreadable}- [\n"), "unclosed"),
    ];
    for (name, text, needle) in cases {
        match parse(&text, "f.yaml") {
            Err(LocalConfigError::Syntax { message, .. }) => assert!(message.contains(needle), "{name}: {message}"),
            other => panic!("{name}: expected the file to be rejected, got {other:?}"),
        }
    }
}
