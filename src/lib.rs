//! ferry: an ambient-mode service mesh dataplane. The node proxy carries enrolled workloads'
//! TCP in HBONE tunnels (HTTP/2 CONNECT over mutual TLS 1.3) and speaks Istio's ambient wire
//! protocols exactly (see ARCHITECTURE.md).
#![deny(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod app;
pub mod bench;
pub mod config;
pub mod demo;
pub mod drain;
pub mod hbone;
pub mod heap;
pub mod identity;
pub mod inpod;
pub mod k8s;
pub mod netlink;
pub mod proto;
pub mod proxy;
pub mod rbac;
pub mod readiness;
pub mod redirect;
pub mod sim;
pub mod state;
pub mod sys;
pub mod telemetry;
pub mod tls;
pub mod zds;
