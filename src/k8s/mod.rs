//! Kubernetes I/O: where cluster state comes from, behind the `ClusterSource` trait: manifests
//! on disk (`source`) or the Kubernetes API (`api`). The objects, the index the API feeds, the
//! translation and the capture decision are pure and live in `ferry_core::k8s`.

pub mod api;
pub mod source;
