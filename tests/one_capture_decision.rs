//! The node agent and the CNI plugin's fallback decide capture with one function: fed the
//! same pod table through the same cluster-state file, they give the same answer for every pod.

use ferry::agent::pods::{wants_capture, PodRecord};
use ferry_cni::cluster_state::{self, Lookup};

const NAMESPACES: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
";

/// (name, metadata and spec of a pod), placed in every namespace of the table.
const PODS: &[(&str, &str)] = &[
    ("app", "labels: {app: web}"),
    ("opt-in", "labels: {istio.io/dataplane-mode: ambient}"),
    ("opt-out", "labels: {istio.io/dataplane-mode: none}"),
    ("annotated-out", "annotations: {ambient.istio.io/redirection: disabled}"),
    ("sidecar", "annotations: {sidecar.istio.io/status: '{}'}"),
];

fn pod_yaml(ns: &str, name: &str, meta: &str, host_network: bool) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, {meta}}}\nspec: {{hostNetwork: {host_network}}}\n")
}

#[test]
fn agent_and_cni_fallback_agree_on_every_pod() {
    let dir = std::env::temp_dir().join(format!("ferry-one-decision-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut docs = vec![NAMESPACES.to_string()];
    let mut pods = Vec::new();
    for ns in ["mesh", "plain", "unlisted-ns"] {
        for (name, meta) in PODS {
            for host in [false, true] {
                let name = if host { format!("{name}-host") } else { name.to_string() };
                docs.push(pod_yaml(ns, &name, meta, host));
                pods.push((ns, name));
            }
        }
    }
    let path = dir.join("state.yaml");
    std::fs::write(&path, docs.join("---\n")).unwrap();
    let state = cluster_state::load(&path).unwrap();
    let mut enrolled = 0;
    for (ns, name) in &pods {
        let record = PodRecord {
            uid: format!("{ns}/{name}"),
            namespace: ns.to_string(),
            name: name.clone(),
            container_id: String::new(),
            netns_path: "/nonexistent".into(),
            ips: Vec::new(),
            enrolled: false,
        };
        let agent = wants_capture(&state, &record).expect("the pod is in the state");
        let cni = match cluster_state::lookup(&path, ns, name) {
            Lookup::Enroll(_) => true,
            Lookup::Skip(_) => false,
            Lookup::Undecided(why) => panic!("{ns}/{name}: the fallback could not decide: {why}"),
        };
        assert_eq!(agent, cni, "{ns}/{name}: agent says capture={agent}, CNI fallback says capture={cni}");
        enrolled += agent as usize;
    }
    // The table is not trivial: mesh/app and the opt-in pod of each namespace are captured.
    assert_eq!(enrolled, 4, "captured pods in the table");
    let _ = std::fs::remove_dir_all(&dir);
}
