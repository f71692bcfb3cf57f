//! ferry: an ambient-mode service mesh dataplane. The node proxy carries enrolled workloads'
//! TCP in HBONE tunnels (HTTP/2 CONNECT over mutual TLS 1.3) and speaks Istio's ambient wire
//! protocols exactly (see ARCHITECTURE.md).
#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod config;
pub mod drain;
pub mod hbone;
pub mod netlink;
pub mod identity;
pub mod k8s;
pub mod proto;
pub mod proxy;
pub mod rbac;
pub mod readiness;
pub mod redirect;
pub mod state;
pub mod sys;
pub mod telemetry;
pub mod tls;
pub mod zds;
