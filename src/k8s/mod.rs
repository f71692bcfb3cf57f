//! Kubernetes objects as ferry reads them: the object subset, the capture decision, the
//! translation into the workload/service model, and the cluster-state source.

pub mod capture;
pub mod objects;
pub mod peer_auth;
pub mod policy;
pub mod source;
pub mod translate;
