//! ferry-cni: a chained CNI plugin that reports pod sandboxes to the ferry node agent and refuses to let an ambient pod start uncaptured.
#![forbid(unsafe_code)]

pub mod cluster_state;
pub mod config;
pub mod error;
pub mod protocol;

#[cfg(test)]
mod test_support;

pub use crate::{config::Env, error::CniError};
