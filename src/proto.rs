//! Wire types generated from `proto/`: the ZDS messages (prost) and the gRPC services of the
//! delta xDS and CA APIs (tonic). The WDS, xDS and CA messages themselves are shared with every
//! role and live in `ferry_core::proto`.
#![allow(clippy::all, missing_docs)]

pub mod workload {
    pub mod zds {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));
    }
}

pub mod xds {
    include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
}

pub mod ca {
    include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
}
