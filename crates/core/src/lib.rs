//! ferry's pure cores, shared by every role (node proxy, node agent, CNI plugin, and the
//! controller and waypoint to come) so that decisions two roles must agree on have exactly one
//! implementation: identity, the workload/service/policy model and its translation from
//! Kubernetes objects, the capture decision, routing and authorization.
//!
//! Invariant: nothing here does I/O or needs an async runtime. Every function is a function of
//! its arguments, tested with tables; the roles do the I/O at their edges.
#![forbid(unsafe_code)]

pub mod addr;
pub mod identity;
pub mod jwt;
pub mod k8s;
pub mod l7authz;
pub mod local_config;
pub mod model;
pub mod ports;
pub mod proto;
pub mod rbac;
pub mod route;
pub mod state;
pub mod timefmt;
pub mod waypoint;
pub mod waypoint_xds;
pub mod wds;
pub mod xds;
pub mod yaml;
