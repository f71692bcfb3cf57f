use super::*;
use crate::model::{PolicyScope, ServiceAccountMatch, StringMatch};
use crate::state::StateInput;

fn attrs(src: &str, id: Option<&str>, dst: &str) -> ConnAttrs {
    ConnAttrs { src_ip: src.parse().unwrap(), src_identity: id.map(|i| i.parse().unwrap()), dst: dst.parse().unwrap() }
}

type Rules = Vec<Vec<Vec<Match>>>;

fn policy(name: &str, action: PolicyAction, rules: Rules) -> Arc<Authorization> {
    Arc::new(Authorization {
        name: name.into(),
        namespace: "ns".into(),
        scope: PolicyScope::Namespace,
        action,
        dry_run: false,
        rules,
        notes: vec![],
    })
}

fn one(m: Match) -> Rules {
    vec![vec![vec![m]]]
}

/// One rule with no clauses: it matches every connection.
fn everything() -> Rules {
    vec![vec![]]
}

const CLIENT: &str = "spiffe://cluster.local/ns/front/sa/client";

#[test]
fn deny_before_allow_and_defaults() {
    let a = attrs("10.0.0.1", Some(CLIENT), "10.0.0.2:80");
    let allow_all = policy("allow", PolicyAction::Allow, everything());
    let deny_all = policy("deny", PolicyAction::Deny, everything());
    let allow_none = policy("nothing", PolicyAction::Allow, vec![]);
    let cases: Vec<(&str, Vec<Arc<Authorization>>, bool)> = vec![
        ("no policies allow", vec![], true),
        ("allow-all allows", vec![allow_all.clone()], true),
        ("deny wins over allow", vec![allow_all.clone(), deny_all.clone()], false),
        ("allow with empty rules allows nothing", vec![allow_none.clone()], false),
        ("deny with empty rules denies nothing", vec![policy("d", PolicyAction::Deny, vec![])], true),
        ("one matching allow suffices", vec![allow_none, allow_all], true),
        // §4.9: a clause matches if any *non-empty* match does, so `[[[{}]]]` matches nothing.
        ("allow of one empty match allows nothing", vec![policy("e", PolicyAction::Allow, one(Match::default()))], false),
        ("deny of one empty match denies nothing", vec![policy("e", PolicyAction::Deny, one(Match::default()))], true),
    ];
    for (name, ps, want) in cases {
        assert_eq!(evaluate_policies(&ps, &a).is_allow(), want, "{name}");
    }
}

#[test]
fn deny_reasons_name_the_policy() {
    let a = attrs("10.0.0.1", Some(CLIENT), "10.0.0.2:80");
    let d = evaluate_policies(&[policy("deny", PolicyAction::Deny, everything())], &a);
    assert_eq!(d, Decision::Deny { policy: Some("ns/deny".into()), reason: "explicitly denied by ns/deny".into() });
    let d = evaluate_policies(&[policy("a", PolicyAction::Allow, vec![])], &a);
    assert_eq!(d, Decision::Deny { policy: None, reason: "allow policies exist, but none allowed".into() });
}

#[test]
fn every_field_and_its_negation() {
    let mtls = attrs("10.0.0.1", Some(CLIENT), "10.0.0.2:80");
    let plain = attrs("10.0.0.1", None, "10.0.0.2:80");
    let sa = |ns: &str, sa: &str| ServiceAccountMatch { namespace: ns.into(), service_account: sa.into() };
    #[rustfmt::skip]
    let cases: Vec<(&str, Match, bool, bool)> = vec![
        // (name, match, matches mTLS client, matches plaintext client)
        ("principal exact", Match { principals: vec![StringMatch::Exact("cluster.local/ns/front/sa/client".into())], ..Default::default() }, true, false),
        ("principal with spiffe prefix never matches", Match { principals: vec![StringMatch::Exact(CLIENT.into())], ..Default::default() }, false, false),
        ("principal prefix", Match { principals: vec![StringMatch::Prefix("cluster.local/ns/front/".into())], ..Default::default() }, true, false),
        ("principal suffix", Match { principals: vec![StringMatch::Suffix("/sa/client".into())], ..Default::default() }, true, false),
        ("principal presence", Match { principals: vec![StringMatch::Presence], ..Default::default() }, true, false),
        ("principal other", Match { principals: vec![StringMatch::Exact("cluster.local/ns/front/sa/client2".into())], ..Default::default() }, false, false),
        ("not principal", Match { not_principals: vec![StringMatch::Presence], ..Default::default() }, false, true),
        ("namespace", Match { namespaces: vec![StringMatch::Exact("front".into())], ..Default::default() }, true, false),
        ("namespace prefix is not regex", Match { namespaces: vec![StringMatch::Exact("fr.nt".into())], ..Default::default() }, false, false),
        ("not namespace", Match { not_namespaces: vec![StringMatch::Exact("front".into())], ..Default::default() }, false, true),
        ("service account", Match { service_accounts: vec![sa("front", "client")], ..Default::default() }, true, false),
        ("service account other ns", Match { service_accounts: vec![sa("back", "client")], ..Default::default() }, false, false),
        ("not service account", Match { not_service_accounts: vec![sa("front", "client")], ..Default::default() }, false, true),
        ("source ip", Match { source_ips: vec!["10.0.0.0/24".parse().unwrap()], ..Default::default() }, true, true),
        ("source ip miss", Match { source_ips: vec!["10.0.1.0/24".parse().unwrap()], ..Default::default() }, false, false),
        ("not source ip", Match { not_source_ips: vec!["10.0.0.1/32".parse().unwrap()], ..Default::default() }, false, false),
        ("destination ip", Match { destination_ips: vec!["10.0.0.2/32".parse().unwrap()], ..Default::default() }, true, true),
        ("not destination ip", Match { not_destination_ips: vec!["10.0.0.2/32".parse().unwrap()], ..Default::default() }, false, false),
        ("destination port", Match { destination_ports: vec![80], ..Default::default() }, true, true),
        ("destination port miss", Match { destination_ports: vec![81], ..Default::default() }, false, false),
        ("not destination port", Match { not_destination_ports: vec![80], ..Default::default() }, false, false),
        ("all fields must hold", Match { destination_ports: vec![80], source_ips: vec!["10.9.0.0/16".parse().unwrap()], ..Default::default() }, false, false),
    ];
    for (name, m, want_mtls, want_plain) in cases {
        let p = policy("p", PolicyAction::Allow, one(m));
        assert_eq!(policy_matches(&p, &mtls), want_mtls, "{name} (mTLS)");
        assert_eq!(policy_matches(&p, &plain), want_plain, "{name} (plaintext)");
    }
}

#[test]
fn rule_clause_match_structure() {
    let a = attrs("10.0.0.1", Some(CLIENT), "10.0.0.2:80");
    let yes = || Match { destination_ports: vec![80], ..Default::default() };
    let no = || Match { destination_ports: vec![81], ..Default::default() };
    let cases: Vec<(&str, Rules, bool)> = vec![
        ("clause: any match", vec![vec![vec![no(), yes()]]], true),
        ("rule: every clause", vec![vec![vec![yes()], vec![no()]]], false),
        ("policy: any rule", vec![vec![vec![no()]], vec![vec![yes()]]], true),
        ("empty clause matches", vec![vec![vec![]]], true),
        ("empty rule matches", vec![vec![]], true),
        ("no rules never match", vec![], false),
        ("a clause of only an empty match does not match", vec![vec![vec![Match::default()]]], false),
        ("a clause of only empty matches does not match", vec![vec![vec![Match::default(), Match::default()]]], false),
        ("an empty match is skipped, a holding one still counts", vec![vec![vec![Match::default(), yes()]]], true),
        ("an empty match is skipped, not counted as holding", vec![vec![vec![Match::default(), no()]]], false),
        ("an empty-match clause fails the rule", vec![vec![vec![yes()], vec![Match::default()]]], false),
    ];
    for (name, rules, want) in cases {
        assert_eq!(policy_matches(&policy("p", PolicyAction::Allow, rules), &a), want, "{name}");
    }
}

#[test]
fn dry_run_is_never_enforced() {
    let a = attrs("10.0.0.1", Some(CLIENT), "10.0.0.2:80");
    let mut deny = (*policy("deny", PolicyAction::Deny, everything())).clone();
    deny.dry_run = true;
    assert!(evaluate_policies(&[Arc::new(deny)], &a).is_allow());
    let mut allow_nothing = (*policy("a", PolicyAction::Allow, vec![])).clone();
    allow_nothing.dry_run = true;
    assert!(evaluate_policies(&[Arc::new(allow_nothing)], &a).is_allow(), "a dry-run ALLOW does not switch to default-deny");
}

#[test]
fn unknown_referenced_policy_fails_closed() {
    let mut w = Workload::new("u", "ns", "w");
    w.authorization_policies = vec!["ns/in-flight".into()];
    let snap = Snapshot::build(StateInput::default(), 1);
    let d = evaluate(&snap, &w, &attrs("10.0.0.1", Some(CLIENT), "10.0.0.2:80"));
    assert!(matches!(d, Decision::Deny { policy: Some(ref p), .. } if p == "ns/in-flight"), "{d:?}");
}
