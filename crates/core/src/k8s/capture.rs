//! Whether a pod's traffic is captured into the mesh: a pure function of the pod and its
//! namespace, shared by the node agent (which installs redirection) and the state translation
//! (which advertises captured pods as HBONE), so both always agree.

use super::objects::{Namespace, Pod};

pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
pub const AMBIENT: &str = "ambient";
pub(crate) const NONE: &str = "none";
/// Per-pod opt-out annotation (protocols.md §3.6), and the node agent's report that the pod's
/// redirection is installed (value [`REDIRECTION_ENABLED`]).
pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";
pub const REDIRECTION_ENABLED: &str = "enabled";
pub(crate) const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capture {
    Enroll,
    Skip(SkipReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    HostNetwork,
    Sidecar,
    PodOptOut,
    NotAmbient,
    UnknownNamespace,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SkipReason::HostNetwork => "pod uses the host network",
            SkipReason::Sidecar => "pod has an Istio sidecar",
            SkipReason::PodOptOut => "pod opted out (istio.io/dataplane-mode=none or ambient.istio.io/redirection=disabled)",
            SkipReason::NotAmbient => "neither the namespace nor the pod is labelled istio.io/dataplane-mode=ambient",
            SkipReason::UnknownNamespace => "the pod's namespace is not known",
        })
    }
}

/// The decision for `pod` in namespace `ns` (`None` when the namespace is unknown).
pub fn decide(ns: Option<&Namespace>, pod: &Pod) -> Capture {
    let labels = &pod.metadata.labels;
    if pod.spec.host_network {
        return Capture::Skip(SkipReason::HostNetwork);
    }
    let sidecar = pod.metadata.annotations.contains_key(SIDECAR_STATUS_ANNOTATION)
        || pod.spec.containers.iter().chain(&pod.spec.init_containers).any(|c| c.name == "istio-proxy");
    if sidecar {
        return Capture::Skip(SkipReason::Sidecar);
    }
    let opted_out = labels.get(DATAPLANE_MODE).is_some_and(|v| v == NONE)
        || pod.metadata.annotations.get(REDIRECTION_ANNOTATION).is_some_and(|v| v == "disabled");
    if opted_out {
        return Capture::Skip(SkipReason::PodOptOut);
    }
    if labels.get(DATAPLANE_MODE).is_some_and(|v| v == AMBIENT) {
        return Capture::Enroll;
    }
    match ns {
        None => Capture::Skip(SkipReason::UnknownNamespace),
        Some(ns) if ns.metadata.labels.get(DATAPLANE_MODE).is_some_and(|v| v == AMBIENT) => Capture::Enroll,
        Some(_) => Capture::Skip(SkipReason::NotAmbient),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::objects::{Container, ObjectMeta};

    fn ns(labels: &[(&str, &str)]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: "ns".into(),
                labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                ..Default::default()
            },
        }
    }

    fn pod(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = "p".into();
        p.metadata.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        p.metadata.annotations = annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        p.spec.containers = vec![Container { name: "app".into(), ..Default::default() }];
        p
    }

    #[test]
    fn capture_table() {
        let ambient = ns(&[(DATAPLANE_MODE, AMBIENT)]);
        let plain = ns(&[]);
        let other_mode = ns(&[(DATAPLANE_MODE, "sidecar")]);
        let capitalised = ns(&[(DATAPLANE_MODE, "Ambient")]);
        let mut host = pod(&[], &[]);
        host.spec.host_network = true;
        let mut sidecar_container = pod(&[], &[]);
        sidecar_container.spec.containers.push(Container { name: "istio-proxy".into(), ..Default::default() });
        let cases: Vec<(&str, Option<&Namespace>, Pod, Capture)> = vec![
            ("ambient namespace", Some(&ambient), pod(&[], &[]), Capture::Enroll),
            ("plain namespace", Some(&plain), pod(&[], &[]), Capture::Skip(SkipReason::NotAmbient)),
            ("other dataplane mode", Some(&other_mode), pod(&[], &[]), Capture::Skip(SkipReason::NotAmbient)),
            ("unknown namespace", None, pod(&[], &[]), Capture::Skip(SkipReason::UnknownNamespace)),
            ("pod opt-out label", Some(&ambient), pod(&[(DATAPLANE_MODE, NONE)], &[]), Capture::Skip(SkipReason::PodOptOut)),
            (
                "pod opt-out annotation",
                Some(&ambient),
                pod(&[], &[(REDIRECTION_ANNOTATION, "disabled")]),
                Capture::Skip(SkipReason::PodOptOut),
            ),
            (
                "redirection enabled annotation is not an opt-out",
                Some(&ambient),
                pod(&[], &[(REDIRECTION_ANNOTATION, "enabled")]),
                Capture::Enroll,
            ),
            ("pod opt-in in plain namespace", Some(&plain), pod(&[(DATAPLANE_MODE, AMBIENT)], &[]), Capture::Enroll),
            ("pod opt-in, namespace unknown", None, pod(&[(DATAPLANE_MODE, AMBIENT)], &[]), Capture::Enroll),
            ("host network", Some(&ambient), host.clone(), Capture::Skip(SkipReason::HostNetwork)),
            (
                "host network even when opted in",
                Some(&ambient),
                {
                    let mut h = host;
                    h.metadata.labels.insert(DATAPLANE_MODE.into(), AMBIENT.into());
                    h
                },
                Capture::Skip(SkipReason::HostNetwork),
            ),
            ("sidecar annotation", Some(&ambient), pod(&[], &[(SIDECAR_STATUS_ANNOTATION, "{}")]), Capture::Skip(SkipReason::Sidecar)),
            ("sidecar container", Some(&ambient), sidecar_container, Capture::Skip(SkipReason::Sidecar)),
            ("label value is exact", Some(&capitalised), pod(&[], &[]), Capture::Skip(SkipReason::NotAmbient)),
        ];
        for (name, ns, pod, want) in cases {
            assert_eq!(decide(ns, &pod), want, "{name}");
        }
    }
}
