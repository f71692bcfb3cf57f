//! The waypoint's L7 policies: every `AuthorizationPolicy` and `RequestAuthentication` with
//! `targetRefs` in a manifest file or directory (the cluster-state layout), compiled by
//! `ferry_core::l7authz` and `ferry_core::jwt`, re-read when the files change (a `jwksUri`
//! file with them). A set that does not read keeps the last good one in force (as the local
//! config does); an object that reads but does not compile fails closed on its own.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use ferry_core::jwt::{self, jwks::MAX_JWKS_BYTES, RequestAuthn};
use ferry_core::l7authz::{compile_all, L7Policy};

/// Everything the waypoint enforces per request, replaced as one.
#[derive(Debug, Default)]
pub(crate) struct PolicySet {
    pub(crate) authz: Vec<L7Policy>,
    pub(crate) authn: Vec<RequestAuthn>,
}

pub(crate) type Policies = watch::Receiver<Arc<PolicySet>>;

#[derive(Debug, thiserror::Error)]
#[error("waypoint policies {path}: {source}")]
pub struct PolicyFileError {
    path: String,
    source: Box<ferry_cni::cluster_state::StateError>,
}

fn read(path: &std::path::Path) -> Result<PolicySet, PolicyFileError> {
    let state =
        ferry_cni::cluster_state::load(path).map_err(|e| PolicyFileError { path: path.display().to_string(), source: Box::new(e) })?;
    let authz = compile_all(state.other.values());
    for p in authz.iter().filter(|p| !p.notes.is_empty()) {
        tracing::warn!(policy = %p.key(), notes = ?p.notes, "waypoint policy changed from what it says");
    }
    let authn = jwt::compile_all(state.other.values(), &read_jwks);
    for ra in &authn {
        if let Some(why) = &ra.broken {
            tracing::error!(request_authentication = %ra.key(), error = %why, "RequestAuthentication refused");
        }
        for note in &ra.notes {
            tracing::warn!(request_authentication = %ra.key(), note = %note, "RequestAuthentication key set not usable");
        }
    }
    Ok(PolicySet { authz, authn })
}

/// A `jwksUri` file, refused past [`MAX_JWKS_BYTES`] without reading further.
fn read_jwks(path: &str) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("jwksUri file {path}: {e}"))?;
    let mut text = String::new();
    file.take(MAX_JWKS_BYTES as u64 + 1).read_to_string(&mut text).map_err(|e| format!("jwksUri file {path}: {e}"))?;
    match text.len() > MAX_JWKS_BYTES {
        true => Err(format!("jwksUri file {path} is larger than {MAX_JWKS_BYTES} bytes")),
        false => Ok(text),
    }
}

/// Loads the policies (none without a path) and keeps them current.
pub(crate) fn load(path: Option<PathBuf>, poll: Duration) -> Result<Policies, PolicyFileError> {
    let Some(path) = path else {
        return Ok(watch::channel(Arc::new(PolicySet::default())).1);
    };
    let first = read(&path)?;
    tracing::info!(path = %path.display(), policies = first.authz.len(), request_authentications = first.authn.len(), "waypoint policies loaded");
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        let mut stamp = ferry_cni::cluster_state::stamp(&path);
        loop {
            tokio::time::sleep(poll).await;
            let now = ferry_cni::cluster_state::stamp(&path);
            if now == stamp {
                continue;
            }
            stamp = now;
            let p = path.clone();
            match tokio::task::spawn_blocking(move || read(&p)).await {
                Ok(Ok(set)) => {
                    tracing::info!(policies = set.authz.len(), request_authentications = set.authn.len(), "waypoint policies reloaded");
                    tx.send_replace(Arc::new(set));
                }
                Ok(Err(e)) => tracing::error!(error = %e, "waypoint policies not reloaded; the last good set stays in force"),
                Err(e) => tracing::error!(error = %e, "waypoint policy reload failed"),
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(rx)
}
