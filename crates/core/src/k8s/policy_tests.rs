//! AuthorizationPolicy semantics per Istio's documentation, end to end through this module:
//! manifests -> translation -> snapshot -> the evaluation the destination proxy runs.

use super::*;
use crate::k8s::manifests::parse_documents;
use crate::k8s::translate::{to_state, TranslateOptions};
use crate::rbac::{evaluate, ConnAttrs, Decision};
use crate::state::Snapshot;

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: shop, labels: {app: backend}}
spec: {nodeName: n1, serviceAccountName: backend}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: shop, labels: {app: other}}
spec: {nodeName: n1}
status: {podIP: 10.0.0.3}
"#;

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const INTRUDER: &str = "spiffe://cluster.local/ns/evil/sa/intruder";

fn snapshot(policies: &str) -> Snapshot {
    let c = parse_documents(&format!("{BASE}\n---\n{policies}"), "test").unwrap();
    Snapshot::build(to_state(&c, &TranslateOptions::default()), 1)
}

fn decide(snap: &Snapshot, pod: &str, src_ip: &str, id: Option<&str>, port: u16) -> Decision {
    let w = snap.find_workload("shop", pod, None).unwrap();
    let dst = std::net::SocketAddr::new(w.addresses[0], port);
    evaluate(snap, w, &ConnAttrs { src_ip: src_ip.parse().unwrap(), src_identity: id.map(|i| i.parse().unwrap()), dst })
}

fn allowed(snap: &Snapshot, id: Option<&str>, port: u16) -> bool {
    decide(snap, "backend", "10.0.0.1", id, port).is_allow()
}

fn ap(name: &str, spec: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec: {spec}\n")
}

#[test]
fn scopes() {
    let mesh = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: mesh, namespace: istio-system}\nspec: {action: DENY, rules: [{from: [{source: {namespaces: [evil]}}]}]}\n";
    let snap =
        snapshot(&format!("{mesh}---\n{}", ap("only-backend", "{selector: {matchLabels: {app: backend}}, action: DENY, rules: [{}]}")));
    assert!(!allowed(&snap, Some(INTRUDER), 80), "mesh-wide policy from the root namespace");
    assert!(!allowed(&snap, Some(FRONTEND), 80), "selector policy applies to the selected pod");
    assert!(decide(&snap, "other", "10.0.0.1", Some(FRONTEND), 80).is_allow(), "and not to others");
    let scopes: Vec<_> = snap.policies().map(|p| (p.key(), p.scope)).collect();
    assert!(scopes.contains(&("istio-system/mesh".into(), PolicyScope::Global)));
    assert!(scopes.contains(&("shop/only-backend".into(), PolicyScope::WorkloadSelector)));
    let ns = snapshot(&ap("ns", "{action: DENY, rules: [{}]}"));
    assert!(!decide(&ns, "other", "10.0.0.1", Some(FRONTEND), 80).is_allow(), "no selector: the whole namespace");
}

#[test]
fn deny_before_allow_default_allow_and_empty_rules() {
    let cases: Vec<(&str, String, bool)> = vec![
        ("no policy allows", String::new(), true),
        ("allow-nothing (empty spec) denies", ap("nothing", "{}"), false),
        ("ALLOW with an empty rule allows all", ap("all", "{rules: [{}]}"), true),
        ("DENY with no rules denies nothing", ap("d", "{action: DENY}"), true),
        ("DENY beats ALLOW", format!("{}---\n{}", ap("all", "{rules: [{}]}"), ap("d", "{action: DENY, rules: [{}]}")), false),
        ("an ALLOW that does not match denies", ap("a", "{rules: [{from: [{source: {namespaces: [other]}}]}]}"), false),
    ];
    for (name, policies, want) in cases {
        assert_eq!(allowed(&snapshot(&policies), Some(FRONTEND), 80), want, "{name}");
    }
}

#[test]
fn every_field_and_its_negation() {
    let rule = |r: &str| ap("p", &format!("{{rules: [{r}]}}"));
    #[rustfmt::skip]
    let cases: Vec<(&str, String, bool, bool)> = vec![
        // (name, policy, frontend over mTLS allowed, plaintext from 10.0.0.1 allowed)
        ("principals exact", rule("{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}"), true, false),
        ("principals with spiffe:// prefix", rule("{from: [{source: {principals: [\"spiffe://cluster.local/ns/shop/sa/frontend\"]}}]}"), true, false),
        ("principals prefix", rule("{from: [{source: {principals: [\"cluster.local/ns/shop/*\"]}}]}"), true, false),
        ("principals suffix", rule("{from: [{source: {principals: [\"*/sa/frontend\"]}}]}"), true, false),
        ("principals presence", rule("{from: [{source: {principals: [\"*\"]}}]}"), true, false),
        ("notPrincipals", rule("{from: [{source: {notPrincipals: [\"*\"]}}]}"), false, true),
        ("namespaces", rule("{from: [{source: {namespaces: [shop]}}]}"), true, false),
        ("notNamespaces", rule("{from: [{source: {notNamespaces: [shop]}}]}"), false, true),
        ("serviceAccounts", rule("{from: [{source: {serviceAccounts: [shop/frontend]}}]}"), true, false),
        ("notServiceAccounts", rule("{from: [{source: {notServiceAccounts: [shop/frontend]}}]}"), false, true),
        ("ipBlocks", rule("{from: [{source: {ipBlocks: [10.0.0.0/24]}}]}"), true, true),
        ("ipBlocks single IP", rule("{from: [{source: {ipBlocks: [10.0.0.9]}}]}"), false, false),
        ("notIpBlocks", rule("{from: [{source: {notIpBlocks: [10.0.0.1/32]}}]}"), false, false),
        ("ports", rule("{to: [{operation: {ports: [\"80\"]}}]}"), true, true),
        ("ports other", rule("{to: [{operation: {ports: [\"81\"]}}]}"), false, false),
        ("notPorts", rule("{to: [{operation: {notPorts: [\"80\"]}}]}"), false, false),
        ("when source.ip", rule("{when: [{key: source.ip, values: [10.0.0.1]}]}"), true, true),
        ("when source.ip notValues", rule("{when: [{key: source.ip, notValues: [10.0.0.1]}]}"), false, false),
        ("when source.namespace", rule("{when: [{key: source.namespace, values: [shop]}]}"), true, false),
        ("when source.principal", rule("{when: [{key: source.principal, values: [\"*\"]}]}"), true, false),
        ("when destination.ip", rule("{when: [{key: destination.ip, values: [10.0.0.2/32]}]}"), true, true),
        ("when destination.port", rule("{when: [{key: destination.port, values: [\"80\"]}]}"), true, true),
        ("when destination.port notValues", rule("{when: [{key: destination.port, notValues: [\"80\"]}]}"), false, false),
        ("from AND to", rule("{from: [{source: {namespaces: [shop]}}], to: [{operation: {ports: [\"81\"]}}]}"), false, false),
        ("sources OR", rule("{from: [{source: {namespaces: [nope]}}, {source: {ipBlocks: [10.0.0.1]}}]}"), true, true),
        ("fields within a source AND", rule("{from: [{source: {namespaces: [shop], ipBlocks: [10.9.0.0/16]}}]}"), false, false),
    ];
    for (name, policy, mtls, plain) in cases {
        let snap = snapshot(&policy);
        assert_eq!(allowed(&snap, Some(FRONTEND), 80), mtls, "{name} (mTLS)");
        assert_eq!(allowed(&snap, None, 80), plain, "{name} (plaintext)");
    }
}

#[test]
fn dry_run_is_logged_not_enforced() {
    let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d, namespace: shop, annotations: {istio.io/dry-run: \"true\"}}\nspec: {action: DENY, rules: [{}]}\n";
    let snap = snapshot(policy);
    assert!(snap.policy(&"shop/d".into()).unwrap().dry_run);
    assert!(allowed(&snap, Some(FRONTEND), 80));
}

#[test]
fn l7_attributes_never_widen_access() {
    // ALLOW: the rule with L7 attributes is dropped; the plain L4 rule still allows.
    let snap =
        snapshot(&ap("a", "{rules: [{to: [{operation: {methods: [GET], ports: [\"80\"]}}]}, {from: [{source: {namespaces: [other]}}]}]}"));
    assert!(!allowed(&snap, Some(FRONTEND), 80), "the GET-only rule must not become allow-all on port 80");
    let notes = &snap.policy(&"shop/a".into()).unwrap().notes;
    assert!(notes.iter().any(|n| n.contains("rule 0 dropped") && n.contains("to.operation.methods (L7)")), "{notes:?}");
    // DENY: the L7 condition is removed; the rule denies more.
    let snap = snapshot(&ap("d", "{action: DENY, rules: [{to: [{operation: {paths: [/admin], ports: [\"80\"]}}]}]}"));
    assert!(!allowed(&snap, Some(FRONTEND), 80), "deny on port 80 for every path");
    assert!(allowed(&snap, Some(FRONTEND), 81), "but only on port 80");
    assert!(snap.policy(&"shop/d".into()).unwrap().notes.iter().any(|n| n.contains("denies more")));
    for (field, spec) in [
        ("requestPrincipals", "{from: [{source: {requestPrincipals: [\"*\"]}}]}"),
        ("remoteIpBlocks", "{from: [{source: {remoteIpBlocks: [1.2.3.4]}}]}"),
        ("hosts", "{to: [{operation: {hosts: [a.com]}}]}"),
        ("request.headers", "{when: [{key: \"request.headers[x]\", values: [a]}]}"),
        ("request.auth.claims", "{when: [{key: \"request.auth.claims[iss]\", values: [a]}]}"),
    ] {
        let allow = snapshot(&ap("a", &format!("{{rules: [{spec}]}}")));
        assert!(!allowed(&allow, Some(FRONTEND), 80), "ALLOW with {field} allows nothing at L4");
        let deny = snapshot(&ap("d", &format!("{{action: DENY, rules: [{spec}]}}")));
        assert!(!allowed(&deny, Some(FRONTEND), 80), "DENY with {field} denies everything at L4");
    }
}

#[test]
fn unusual_and_invalid_policies_fail_closed() {
    let cases: Vec<(&str, String, bool, &str)> = vec![
        ("CUSTOM is enforced as DENY", ap("c", "{action: CUSTOM, provider: {name: ext}, rules: [{}]}"), false, "enforced as DENY"),
        ("AUDIT has no effect", ap("a", "{action: AUDIT, rules: [{}]}"), true, ""),
        ("waypoint-bound policies are not L4", ap("w", "{targetRefs: [{kind: Service, name: x}], action: DENY, rules: [{}]}"), true, ""),
        ("unknown field in an ALLOW policy allows nothing", ap("u", "{rules: [{}], futureField: 1}"), false, "allows nothing"),
        ("unknown field in a DENY policy denies everything", ap("u", "{action: DENY, futureField: 1}"), false, "denies everything"),
        ("unknown action denies everything", ap("u", "{action: MAYBE}"), false, "unknown action"),
        ("invalid port drops the ALLOW rule", ap("p", "{rules: [{to: [{operation: {ports: [http]}}]}]}"), false, "is not a port"),
        (
            "invalid ipBlock is removed from a DENY rule",
            ap("p", "{action: DENY, rules: [{from: [{source: {ipBlocks: [nope]}}]}]}"),
            false,
            "not an IP or CIDR",
        ),
        (
            "invalid serviceAccount drops the ALLOW rule",
            ap("p", "{rules: [{from: [{source: {serviceAccounts: [frontend]}}]}]}"),
            false,
            "<namespace>/<service-account>",
        ),
    ];
    for (name, policy, want, note) in cases {
        let snap = snapshot(&policy);
        assert_eq!(allowed(&snap, Some(FRONTEND), 80), want, "{name}");
        if !note.is_empty() {
            let notes: Vec<String> = snap.policies().flat_map(|p| p.notes.clone()).collect();
            assert!(notes.iter().any(|n| n.contains(note)), "{name}: {notes:?}");
        }
    }
}

#[test]
fn istio_invalid_empty_shapes_fail_closed() {
    // istio's validation rejects these shapes; read as written they would be an empty match,
    // which matches nothing (§4.9) and so hides the author's intent either way.
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, &str)> = vec![
        // (name, rules, the note's reason)
        ("empty source", "[{from: [{source: {}}]}]", "rule 0: `from.source` must not be empty"),
        ("source of empty lists", "[{from: [{source: {principals: [], namespaces: []}}]}]", "rule 0: `from.source` must not be empty"),
        ("empty from", "[{from: []}]", "rule 0: `from` must not be empty"),
        ("empty operation", "[{to: [{operation: {}}]}]", "rule 0: `to.operation` must not be empty"),
        ("empty to", "[{}, {to: []}]", "rule 1: `to` must not be empty"),
        ("condition without values", "[{when: [{key: source.ip}]}]", "rule 0: at least one of `values` or `notValues` must be set for key source.ip"),
        ("condition with empty values", "[{when: [{key: source.ip, values: [], notValues: []}]}]", "at least one of `values` or `notValues`"),
        ("condition without a key", "[{when: [{key: \"\", values: [a]}]}]", "rule 0: `key` must not be empty"),
        ("one bad source among good ones", "[{from: [{source: {namespaces: [shop]}}, {source: {}}]}]", "`from.source` must not be empty"),
    ];
    for (name, rules, reason) in cases {
        // An invalid ALLOW allows nothing: not the frontend, not plaintext.
        let snap = snapshot(&ap("p", &format!("{{rules: {rules}}}")));
        assert!(!allowed(&snap, Some(FRONTEND), 80), "ALLOW {name}: frontend");
        assert!(!allowed(&snap, None, 80), "ALLOW {name}: plaintext");
        let notes = &snap.policy(&"shop/p".into()).unwrap().notes;
        assert!(notes.iter().any(|n| n.contains(reason) && n.contains("allows nothing")), "ALLOW {name}: {notes:?}");
        // An invalid DENY denies everything in its scope, and nothing outside it.
        let deny = ap("p", &format!("{{selector: {{matchLabels: {{app: backend}}}}, action: DENY, rules: {rules}}}"));
        let snap = snapshot(&deny);
        assert!(!allowed(&snap, Some(FRONTEND), 80), "DENY {name}: frontend");
        assert!(!allowed(&snap, None, 80), "DENY {name}: plaintext");
        assert!(decide(&snap, "other", "10.0.0.1", Some(FRONTEND), 80).is_allow(), "DENY {name}: outside its scope");
        let notes = &snap.policy(&"shop/p".into()).unwrap().notes;
        assert!(notes.iter().any(|n| n.contains(reason) && n.contains("denies everything in its scope")), "DENY {name}: {notes:?}");
    }
}

#[test]
fn deny_rules_stripped_to_nothing_still_deny() {
    // Removing what an L4 proxy cannot see (or a malformed value) from a DENY source leaves
    // nothing to compare: that source must match every connection, so the rule denies more.
    #[rustfmt::skip]
    let cases: Vec<(&str, &str)> = vec![
        ("only L7 in the source", "{from: [{source: {requestPrincipals: [\"*\"]}}]}"),
        ("only L7 in one of two sources", "{from: [{source: {namespaces: [nope]}}, {source: {remoteIpBlocks: [1.2.3.4]}}]}"),
        ("only L7 in the operation", "{to: [{operation: {methods: [GET]}}]}"),
        ("only a malformed ipBlock", "{from: [{source: {ipBlocks: [nope]}}]}"),
        ("only a malformed port", "{to: [{operation: {ports: [http]}}]}"),
        ("only a malformed condition value", "{when: [{key: source.ip, values: [nope]}]}"),
    ];
    for (name, rule) in cases {
        let snap = snapshot(&ap("d", &format!("{{action: DENY, rules: [{rule}]}}")));
        assert!(!allowed(&snap, Some(FRONTEND), 80), "{name}: frontend");
        assert!(!allowed(&snap, Some(INTRUDER), 81), "{name}: anyone, any port");
        assert!(!allowed(&snap, None, 80), "{name}: plaintext");
        let p = snap.policy(&"shop/d".into()).unwrap();
        assert!(p.notes.iter().any(|n| n.contains("denies more")), "{name}: {:?}", p.notes);
        assert!(
            p.rules.iter().flatten().all(|clause| clause.iter().all(|m| *m != Match::default())),
            "{name}: no empty match left: {:?}",
            p.rules
        );
    }
    // What is left of a partly L7 source still narrows the rule.
    let snap = snapshot(&ap("d", "{action: DENY, rules: [{from: [{source: {namespaces: [evil], requestPrincipals: [\"*\"]}}]}]}"));
    assert!(allowed(&snap, Some(FRONTEND), 80), "the namespace condition is kept");
    assert!(!allowed(&snap, Some(INTRUDER), 80));
}

#[test]
fn peer_authentication_strict_denies_plaintext_to_captured_pods() {
    let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n";
    let snap = snapshot(pa);
    assert!(allowed(&snap, Some(FRONTEND), 80));
    let d = decide(&snap, "backend", "10.0.0.1", None, 80);
    assert_eq!(
        d,
        Decision::Deny {
            policy: Some("istio-system/ferry-mtls-strict".into()),
            reason: "explicitly denied by istio-system/ferry-mtls-strict".into()
        }
    );
    let notes = &snap.policy(&"istio-system/ferry-mtls-strict".into()).unwrap().notes;
    assert!(notes.iter().any(|n| n == "from PeerAuthentication shop/strict"), "{notes:?}");
}
