//! PeerAuthentication to L4 policy: STRICT means "deny connections without a verified peer
//! identity", so it becomes a DENY policy whose single match is `notPrincipals: [*]` (Istio's
//! own translation), scoped to the pods whose effective mode is STRICT, with `portLevelMtls`
//! exceptions as port matches. Precedence per Istio: workload selector, then namespace, then
//! mesh (root namespace); UNSET inherits; DISABLE is plaintext-permitted like PERMISSIVE.
//! An unreadable PeerAuthentication fails closed as STRICT.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::policy::{Selector, ROOT_NAMESPACE};
use crate::model::{Authorization, Match, PolicyAction, PolicyScope, StringMatch};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Unset,
    Permissive,
    Strict,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PaSpec {
    selector: Option<Selector>,
    mtls: Option<MtlsSpec>,
    port_level_mtls: Option<BTreeMap<String, MtlsSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MtlsSpec {
    mode: Option<String>,
}

/// A parsed PeerAuthentication.
#[derive(Clone, Debug)]
pub(crate) struct PeerAuthn {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) selector: Option<BTreeMap<String, String>>,
    pub(crate) mode: Mode,
    pub(crate) ports: BTreeMap<u16, Mode>,
    pub(crate) note: Option<String>,
}

fn mode(s: &MtlsSpec) -> Result<Mode, String> {
    match s.mode.as_deref().unwrap_or("UNSET") {
        "UNSET" => Ok(Mode::Unset),
        "PERMISSIVE" | "DISABLE" => Ok(Mode::Permissive),
        "STRICT" => Ok(Mode::Strict),
        other => Err(format!("unknown mTLS mode {other:?}")),
    }
}

pub(crate) fn parse(obj: &serde_json::Value) -> PeerAuthn {
    let meta = obj.get("metadata");
    let text = |k: &str| meta.and_then(|m| m.get(k)).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let namespace = if text("namespace").is_empty() { "default".to_string() } else { text("namespace") };
    let mut pa = PeerAuthn { name: text("name"), namespace, selector: None, mode: Mode::Unset, ports: BTreeMap::new(), note: None };
    let parsed = obj.get("spec").cloned().map(serde_json::from_value::<PaSpec>).unwrap_or(Ok(PaSpec {
        selector: None,
        mtls: None,
        port_level_mtls: None,
    }));
    let result = parsed.map_err(|e| e.to_string()).and_then(|spec| {
        pa.selector = spec.selector.map(|s| s.match_labels).filter(|l| !l.is_empty());
        pa.mode = spec.mtls.as_ref().map(mode).transpose()?.unwrap_or(Mode::Unset);
        for (port, m) in spec.port_level_mtls.iter().flatten() {
            let p: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| format!("portLevelMtls key {port:?} is not a port"))?;
            pa.ports.insert(p, mode(m)?);
        }
        Ok(())
    });
    if let Err(why) = result {
        pa.mode = Mode::Strict;
        pa.ports.clear();
        pa.note = Some(format!("PeerAuthentication {}/{} is invalid ({why}); failing closed as STRICT", pa.namespace, pa.name));
    }
    pa
}

/// Which PeerAuthentications decide a pod's mode, most specific first.
fn applicable<'a>(pas: &'a [PeerAuthn], ns: &str, labels: &BTreeMap<String, String>) -> [Option<&'a PeerAuthn>; 3] {
    let selects = |p: &PeerAuthn| p.selector.as_ref().is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)));
    [
        pas.iter().find(|p| p.namespace == ns && selects(p)),
        pas.iter().find(|p| p.namespace == ns && p.selector.is_none()),
        pas.iter().find(|p| p.namespace == ROOT_NAMESPACE && p.selector.is_none()),
    ]
}

/// The DENY-plaintext policy a captured pod needs, if any of its ports is STRICT.
pub(crate) fn policy_for(pas: &[PeerAuthn], ns: &str, labels: &BTreeMap<String, String>) -> Option<Authorization> {
    let chain = applicable(pas, ns, labels);
    let default = chain.iter().flatten().map(|p| p.mode).find(|m| *m != Mode::Unset).unwrap_or(Mode::Permissive);
    let mut differing: Vec<u16> = chain[0]
        .map(|p| p.ports.iter().filter(|(_, m)| **m != Mode::Unset && **m != default).map(|(p, _)| *p).collect())
        .unwrap_or_default();
    differing.sort_unstable();
    let list = differing.iter().map(u16::to_string).collect::<Vec<_>>().join("-");
    let (name, m) = match (default, differing.is_empty()) {
        (Mode::Strict, true) => ("ferry-mtls-strict".to_string(), Match::default()),
        (Mode::Strict, false) => {
            (format!("ferry-mtls-strict-except-{list}"), Match { not_destination_ports: differing, ..Default::default() })
        }
        (_, false) => (format!("ferry-mtls-strict-ports-{list}"), Match { destination_ports: differing, ..Default::default() }),
        (_, true) => return None,
    };
    let m = Match { not_principals: vec![StringMatch::Presence], ..m };
    let mut notes: Vec<String> = chain.iter().flatten().map(|p| format!("from PeerAuthentication {}/{}", p.namespace, p.name)).collect();
    notes.extend(chain.iter().flatten().filter_map(|p| p.note.clone()));
    Some(Authorization {
        name,
        namespace: ROOT_NAMESPACE.into(),
        scope: PolicyScope::WorkloadSelector,
        action: PolicyAction::Deny,
        dry_run: false,
        rules: vec![vec![vec![m]]],
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pa(yaml: &str) -> PeerAuthn {
        parse(&crate::yaml::from_str(yaml).unwrap())
    }

    fn labels(l: &[(&str, &str)]) -> BTreeMap<String, String> {
        l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn outcome(pas: &[PeerAuthn], ns: &str, l: &[(&str, &str)]) -> Option<String> {
        policy_for(pas, ns, &labels(l)).map(|p| p.name)
    }

    #[test]
    fn precedence_and_port_levels() {
        let mesh_strict = pa("metadata: {name: mesh, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}");
        let ns_permissive = pa("metadata: {name: ns, namespace: shop}\nspec: {mtls: {mode: PERMISSIVE}}");
        let ns_unset = pa("metadata: {name: ns-unset, namespace: other}\nspec: {mtls: {mode: UNSET}}");
        let wl = pa("metadata: {name: wl, namespace: shop}\nspec: {selector: {matchLabels: {app: db}}, mtls: {mode: STRICT}, portLevelMtls: {\"9000\": {mode: PERMISSIVE}, \"9001\": {mode: UNSET}}}");
        let wl_ports = pa("metadata: {name: wl2, namespace: shop}\nspec: {selector: {matchLabels: {app: cache}}, portLevelMtls: {\"6379\": {mode: STRICT}}}");
        let disable = pa("metadata: {name: off, namespace: legacy}\nspec: {mtls: {mode: DISABLE}}");
        let all = vec![mesh_strict.clone(), ns_permissive, ns_unset, wl, wl_ports, disable];
        type Case<'a> = (&'a str, &'a [PeerAuthn], &'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
        let cases: Vec<Case> = vec![
            ("nothing configured is permissive", &[], "shop", &[], None),
            ("mesh STRICT", std::slice::from_ref(&mesh_strict), "shop", &[], Some("ferry-mtls-strict")),
            ("namespace PERMISSIVE overrides mesh", &all, "shop", &[], None),
            ("UNSET inherits mesh STRICT", &all, "other", &[], Some("ferry-mtls-strict")),
            ("DISABLE permits plaintext", &all, "legacy", &[], None),
            ("workload STRICT with a permissive port", &all, "shop", &[("app", "db")], Some("ferry-mtls-strict-except-9000")),
            ("workload port STRICT over permissive namespace", &all, "shop", &[("app", "cache")], Some("ferry-mtls-strict-ports-6379")),
            ("namespace without PA inherits mesh", &all, "fresh", &[], Some("ferry-mtls-strict")),
        ];
        for (name, pas, ns, l, want) in cases {
            assert_eq!(outcome(pas, ns, l).as_deref(), want, "{name}");
        }
    }

    #[test]
    fn strict_denies_only_plaintext() {
        let p =
            policy_for(&[pa("metadata: {name: m, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}")], "x", &BTreeMap::new()).unwrap();
        let attrs = |id: Option<&str>| crate::rbac::ConnAttrs {
            src_ip: "10.0.0.1".parse().unwrap(),
            src_identity: id.map(|i| i.parse().unwrap()),
            dst: "10.0.0.2:80".parse().unwrap(),
        };
        assert!(crate::rbac::policy_matches(&p, &attrs(None)), "plaintext is denied");
        assert!(!crate::rbac::policy_matches(&p, &attrs(Some("spiffe://cluster.local/ns/a/sa/b"))), "mTLS passes");
    }

    #[test]
    fn invalid_fails_closed_as_strict() {
        for bad in [
            "metadata: {name: b, namespace: shop}\nspec: {mtls: {mode: MAYBE}}",
            "metadata: {name: b, namespace: shop}\nspec: {mtls: {mode: PERMISSIVE}, extra: 1}",
            "metadata: {name: b, namespace: shop}\nspec: {portLevelMtls: {http: {mode: PERMISSIVE}}}",
        ] {
            let p = pa(bad);
            assert_eq!(p.mode, Mode::Strict, "{bad}");
            let policy = policy_for(&[p], "shop", &BTreeMap::new()).unwrap();
            assert!(policy.notes.iter().any(|n| n.contains("failing closed as STRICT")), "{:?}", policy.notes);
        }
    }
}
