//! The waypoint's L7 policies: every `AuthorizationPolicy` with `targetRefs` in a manifest
//! file or directory (the cluster-state layout), compiled by `ferry_core::l7authz`, re-read
//! when the files change. A set that does not read keeps the last good one in force (as the
//! local config does); a policy that reads but does not compile fails closed on its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use ferry_core::l7authz::{compile_all, L7Policy};

pub(crate) type Policies = watch::Receiver<Arc<Vec<L7Policy>>>;

#[derive(Debug, thiserror::Error)]
#[error("waypoint policies {path}: {source}")]
pub struct PolicyFileError {
    path: String,
    source: Box<ferry_cni::cluster_state::StateError>,
}

fn read(path: &std::path::Path) -> Result<Vec<L7Policy>, PolicyFileError> {
    let state =
        ferry_cni::cluster_state::load(path).map_err(|e| PolicyFileError { path: path.display().to_string(), source: Box::new(e) })?;
    let compiled = compile_all(state.other.values());
    for p in compiled.iter().filter(|p| !p.notes.is_empty()) {
        tracing::warn!(policy = %p.key(), notes = ?p.notes, "waypoint policy changed from what it says");
    }
    Ok(compiled)
}

/// Loads the policies (none without a path) and keeps them current.
pub(crate) fn load(path: Option<PathBuf>, poll: Duration) -> Result<Policies, PolicyFileError> {
    let Some(path) = path else {
        return Ok(watch::channel(Arc::new(Vec::new())).1);
    };
    let first = read(&path)?;
    tracing::info!(path = %path.display(), policies = first.len(), "waypoint policies loaded");
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
                    tracing::info!(policies = set.len(), "waypoint policies reloaded");
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
