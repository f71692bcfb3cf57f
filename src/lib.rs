//! ferry: an ambient-mode service mesh dataplane. The node proxy carries enrolled workloads'
//! TCP in HBONE tunnels (HTTP/2 CONNECT over mutual TLS 1.3) and speaks Istio's ambient wire
//! protocols exactly (see ARCHITECTURE.md). This crate is the data plane and the node agent;
//! the decisions they share with other roles are in `ferry_core`, the `unsafe` in `ferry_sys`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod app;
pub mod config;
pub(crate) mod config_dump;
pub mod controller;
pub mod drain;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod hbone;
pub mod heap;
pub mod inpod;
pub mod k8s;
pub mod limits;
pub(crate) mod listen;
pub mod net;
pub mod netlink;
pub mod proto;
pub mod proxy;
pub mod readiness;
pub mod redirect;
pub mod state;
pub(crate) mod task;
pub mod telemetry;
pub mod tls;
pub mod waypoint;
pub(crate) mod xds;
pub mod zds;
pub(crate) mod ztunnel_env;
