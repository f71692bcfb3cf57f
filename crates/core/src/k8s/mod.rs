//! Kubernetes objects as ferry reads them: the object subset, manifest parsing, the capture
//! decision and the translation into the workload/service/policy model. Pure: the file source,
//! the CNI plugin's fallback and the API watchers (through `index`) all feed these same functions.

pub mod capture;
mod endpoint_slices;
pub mod gateway_status;
pub mod index;
pub mod lease;
pub mod manifests;
pub mod objects;
pub mod peer_auth;
pub mod policy;
pub mod translate;
pub mod waypoint;
pub mod waypoint_deploy;
