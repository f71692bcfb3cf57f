//! The agent's record of pods on this node (from CNI events), persisted so a restarted agent
//! knows every sandbox again, and the pure reconcile plan: which pods to enroll or release so
//! capture matches the cluster state.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::redirect::RedirectConfig;
use ferry_core::k8s::capture::{decide, Capture};
use ferry_core::k8s::objects::{ClusterState, Pod};
use ferry_sys::Netns;

pub(crate) const BYPASS_INBOUND_ANNOTATION: &str = "ambient.istio.io/bypass-inbound-capture";
pub(crate) const VIRTUAL_INTERFACES_ANNOTATION: &str = "istio.io/reroute-virtual-interfaces";

/// One pod sandbox the agent has seen through CNI.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodRecord {
    /// The cache key: the pod's uid, or `namespace/name` when the runtime passed none.
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The sandbox (CNI_CONTAINERID). Empty in records persisted before it was kept.
    #[serde(default)]
    pub container_id: String,
    pub netns_path: PathBuf,
    pub ips: Vec<IpAddr>,
    /// Redirection installed and the node proxy acknowledged the pod.
    pub enrolled: bool,
}

pub(crate) struct PodEntry {
    pub(crate) record: PodRecord,
    pub(crate) netns: Arc<Netns>,
}

#[derive(Default)]
pub(crate) struct PodCache {
    pub(crate) pods: BTreeMap<String, PodEntry>,
    file: Option<PathBuf>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Enroll(String),
    Release(String),
}

impl PodCache {
    /// Loads the persisted records, keeping those whose namespace still exists.
    pub(crate) fn load(file: &Path) -> PodCache {
        let mut cache = PodCache { pods: BTreeMap::new(), file: Some(file.to_path_buf()) };
        let records: Vec<PodRecord> = match std::fs::read(file) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "ignoring an unreadable pod cache");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        for r in records {
            match Netns::open(&r.netns_path) {
                Ok(ns) => {
                    cache.pods.insert(r.uid.clone(), PodEntry { record: r, netns: Arc::new(ns) });
                }
                Err(e) => tracing::info!(pod = %format!("{}/{}", r.namespace, r.name), error = %e, "pod sandbox is gone; forgetting it"),
            }
        }
        cache
    }

    pub(crate) fn save(&self) {
        let Some(file) = &self.file else { return };
        let records: Vec<&PodRecord> = self.pods.values().map(|e| &e.record).collect();
        let tmp = file.with_extension("tmp");
        let result = serde_json::to_vec_pretty(&records)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, file));
        if let Err(e) = result {
            tracing::error!(file = %file.display(), error = %e, "cannot persist the pod cache");
        }
    }

    /// The record a CNI DEL or CHECK is about: the one of the same sandbox (a sandbox belongs
    /// to one pod, so where the event and the record both name a pod uid they must agree), or,
    /// for a record persisted before sandboxes were kept, the one of the same pod uid. Never a
    /// name alone: a late or retried DEL of an old sandbox must not release a re-created pod of
    /// the same name, which would then run uncaptured until something re-added it.
    pub(crate) fn sandbox_record(&self, s: &Sandbox) -> Option<&PodEntry> {
        let same_pod = |e: &PodEntry| s.pod_uid.is_empty() || !keyed_by_uid(&e.record) || e.record.uid == s.pod_uid;
        if let Some(e) = self.pods.values().find(|e| !s.container_id.is_empty() && e.record.container_id == s.container_id) {
            return Some(e).filter(|e| same_pod(e));
        }
        self.pods.get(s.pod_uid).filter(|e| !s.pod_uid.is_empty() && e.record.container_id.is_empty())
    }
}

/// The cache key of a pod: its uid, or `namespace/name` when the runtime passed none (a real
/// uid never contains `/`).
pub(crate) fn pod_key(pod_uid: &str, namespace: &str, name: &str) -> String {
    if pod_uid.is_empty() {
        format!("{namespace}/{name}")
    } else {
        pod_uid.to_string()
    }
}

fn keyed_by_uid(r: &PodRecord) -> bool {
    !r.uid.contains('/')
}

/// Which sandbox a CNI event is about: K8S_POD_UID (may be empty) and CNI_CONTAINERID.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sandbox<'a> {
    pub(crate) pod_uid: &'a str,
    pub(crate) container_id: &'a str,
}

/// Whether the cluster state wants `r` captured. A pod missing from the state keeps its
/// current status: its sandbox exists, and the runtime's CNI DEL will release it.
pub fn wants_capture(c: &ClusterState, r: &PodRecord) -> Option<bool> {
    let pod = c.pod(&r.namespace, &r.name)?;
    Some(matches!(decide(c.namespace(&r.namespace), pod), Capture::Enroll))
}

/// The changes that make capture match the cluster state.
pub(crate) fn plan(cache: &PodCache, c: &ClusterState) -> Vec<Action> {
    cache
        .pods
        .values()
        .filter_map(|e| match (wants_capture(c, &e.record), e.record.enrolled) {
            (Some(true), false) => Some(Action::Enroll(e.record.uid.clone())),
            (Some(false), true) => Some(Action::Release(e.record.uid.clone())),
            _ => None,
        })
        .collect()
}

/// The pod's redirection, honouring the ingress-mode and virtual-interface annotations.
pub(crate) fn redirect_config(pod: Option<&Pod>, base: &RedirectConfig) -> RedirectConfig {
    let mut c = base.clone();
    if let Some(p) = pod {
        let a = &p.metadata.annotations;
        if a.get(BYPASS_INBOUND_ANNOTATION).is_some_and(|v| v == "true") {
            c.capture_inbound = false;
        }
        if let Some(v) = a.get(VIRTUAL_INTERFACES_ANNOTATION) {
            c.virtual_interfaces = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.len() <= 15 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
                .map(String::from)
                .collect();
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::k8s::manifests::parse_documents;

    fn entry(uid: &str, ns: &str, name: &str, enrolled: bool) -> PodEntry {
        sandbox_entry(uid, ns, name, "", enrolled)
    }

    fn sandbox_entry(uid: &str, ns: &str, name: &str, container_id: &str, enrolled: bool) -> PodEntry {
        PodEntry {
            record: PodRecord {
                uid: uid.into(),
                namespace: ns.into(),
                name: name.into(),
                container_id: container_id.into(),
                netns_path: "/proc/self/ns/net".into(),
                ips: vec![],
                enrolled,
            },
            netns: Arc::new(Netns::current().unwrap()),
        }
    }

    #[test]
    fn plan_table() {
        let state = parse_documents(
            r#"
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
{apiVersion: v1, kind: Pod, metadata: {name: a, namespace: mesh}}
---
{apiVersion: v1, kind: Pod, metadata: {name: b, namespace: mesh}}
---
{apiVersion: v1, kind: Pod, metadata: {name: c, namespace: plain}}
---
{apiVersion: v1, kind: Pod, metadata: {name: d, namespace: plain}}
---
{apiVersion: v1, kind: Pod, metadata: {name: e, namespace: mesh, labels: {istio.io/dataplane-mode: none}}}
"#,
            "t",
        )
        .unwrap();
        let mut cache = PodCache::default();
        for (uid, ns, name, enrolled) in [
            ("1", "mesh", "a", false),
            ("2", "mesh", "b", true),
            ("3", "plain", "c", true),
            ("4", "plain", "d", false),
            ("5", "mesh", "e", true),
            ("6", "mesh", "gone", true),
        ] {
            cache.pods.insert(uid.into(), entry(uid, ns, name, enrolled));
        }
        assert_eq!(plan(&cache, &state), vec![Action::Enroll("1".into()), Action::Release("3".into()), Action::Release("5".into())]);
    }

    #[test]
    fn a_del_matches_its_pod_and_its_sandbox_never_the_name_alone() {
        let mut cache = PodCache::default();
        for (key, name, cid) in [
            ("u-a", "a", "c-a2"),  // pod a; its sandbox was re-created (c-a1 is the old one)
            ("u-b2", "b", "c-b2"), // pod b re-created under the same name (the old pod was u-b1)
            ("ns/c", "c", "c-c"),  // pod c, added without K8S_POD_UID
            ("u-d", "d", ""),      // pod d, from a record persisted before sandboxes were kept
        ] {
            cache.pods.insert(key.into(), sandbox_entry(key, "ns", name, cid, true));
        }
        let del = |pod_uid, container_id| cache.sandbox_record(&Sandbox { pod_uid, container_id }).map(|e| e.record.uid.clone());
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str, &str, Option<&str>)] = &[
            // (case, K8S_POD_UID, pod name, CNI_CONTAINERID, the record released)
            ("the pod's current sandbox", "u-a", "a", "c-a2", Some("u-a")),
            ("a late DEL of the pod's old sandbox", "u-a", "a", "c-a1", None),
            ("a retried DEL of the old pod of the same name", "u-b1", "b", "c-b1", None),
            ("an old sandbox of the same name, no uid", "", "b", "c-b1", None),
            ("the new pod's sandbox, no uid", "", "b", "c-b2", Some("u-b2")),
            ("the current sandbox under another pod's uid", "u-z", "a", "c-a2", None),
            ("a pod added without a uid: its sandbox", "", "c", "c-c", Some("ns/c")),
            ("a pod added without a uid: another sandbox", "", "c", "c-c0", None),
            ("a pod added without a uid: its sandbox under a uid", "u-c", "c", "c-c", Some("ns/c")),
            ("a persisted record, by its uid", "u-d", "d", "c-d", Some("u-d")),
            ("a persisted record, by name only", "", "d", "c-d", None),
            ("an unknown pod", "u-x", "x", "c-x", None),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter_map(|(case, uid, _name, cid, want)| {
                let got = del(uid, cid);
                (got.as_deref() != *want).then(|| format!("{case}: released {got:?}, want {want:?}"))
            })
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn records_persisted_without_a_sandbox_still_load() {
        let old = r#"[{"uid":"u","namespace":"ns","name":"a","netns_path":"/proc/self/ns/net","ips":["10.0.0.1"],"enrolled":true}]"#;
        let file = std::env::temp_dir().join(format!("ferry-pods-{}.json", std::process::id()));
        std::fs::write(&file, old).unwrap();
        let cache = PodCache::load(&file);
        let _ = std::fs::remove_file(&file);
        let r = &cache.pods["u"].record;
        assert!(r.enrolled && r.container_id.is_empty(), "{r:?}");
    }

    #[test]
    fn annotations_shape_the_redirection() {
        let mut p = Pod::default();
        p.metadata.annotations.insert(BYPASS_INBOUND_ANNOTATION.into(), "true".into());
        p.metadata.annotations.insert(VIRTUAL_INTERFACES_ANNOTATION.into(), "virt0, virt1,bad iface;,".into());
        let c = redirect_config(Some(&p), &RedirectConfig::default());
        assert!(!c.capture_inbound);
        assert_eq!(c.virtual_interfaces, ["virt0", "virt1"]);
        assert!(redirect_config(None, &RedirectConfig::default()).capture_inbound);
    }
}
