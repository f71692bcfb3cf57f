//! The node proxy as a client of a control plane (istiod or `ferry controller`): workload
//! discovery over delta ADS ([`ads`]) and workload certificates from the CA API ([`ca`]),
//! both over TLS to a server verified against configured roots, every call carrying the
//! proxy's bearer token. The local config file and the built-in CA remain the standalone mode.

pub(crate) mod ads;
pub(crate) mod ca;
pub(crate) mod channel;
pub(crate) mod settings;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub(crate) enum XdsError {
    #[error("cannot read the {what} at {path}: {source}")]
    File { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error(
        "the bearer token is empty; the control plane refuses unauthenticated requests (check AUTH_TOKEN or the projected istio-token)"
    )]
    EmptyToken,
    #[error("{0:?} cannot be sent as gRPC metadata")]
    Header(String),
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
}
