//! Kubernetes I/O: where cluster state comes from (today Kubernetes manifests on disk, behind
//! the `ClusterSource` trait the API watchers will implement). The objects, the translation
//! and the capture decision are pure and live in `ferry_core::k8s`.

pub mod source;
