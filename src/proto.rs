//! Wire types generated from `proto/` (prost). Field numbers follow protocols.md §3–§5.
#![allow(clippy::all, missing_docs)]

pub mod workload {
    include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));
    pub mod zds {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));
    }
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
