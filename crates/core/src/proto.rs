//! The wire messages shared by every role, generated from `proto/` (prost): WDS (`istio.workload`,
//! `istio.security`), the delta xDS envelope and the CA API (protocols.md §4–§5). Field numbers
//! are Istio's; `wds` converts between these and the model.
#![allow(clippy::all, missing_docs)]

pub mod workload {
    include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));
}

pub mod security {
    include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
}

pub mod ca {
    include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
}

pub mod xds {
    include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
}

pub mod waypoint {
    include!(concat!(env!("OUT_DIR"), "/ferry.waypoint.rs"));
}
