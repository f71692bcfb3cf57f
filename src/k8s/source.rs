//! Cluster state from Kubernetes YAML in a file or directory, behind [`ClusterSource`] (the
//! Kubernetes API implements the same trait: `super::api`). The path is read by the one cluster-state
//! reader (`ferry_cni::cluster_state`, shared with the CNI plugin's fallback) and polled; a
//! change is applied only if every manifest parses and validates, otherwise the error names the
//! file, document and line, and the last good state stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_cni::cluster_state::{self, StateError};
use ferry_core::k8s::objects::ClusterState;
use tokio::sync::watch;

/// Where the node agent, the node proxy and the controller read Kubernetes objects from.
pub trait ClusterSource: Send + Sync + 'static {
    /// The current state and every later one.
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>>;

    /// The kinds whose first complete read is still missing (none: the state is complete).
    fn unsynced(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

/// Kubernetes manifests in a file or a directory tree (`.yaml`, `.yml`, `.json`; names
/// starting with `.` are ignored so writers can rename into place atomically).
pub(crate) struct FileSource {
    path: PathBuf,
    tx: watch::Sender<Arc<ClusterState>>,
}

impl ClusterSource for FileSource {
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.tx.subscribe()
    }
}

impl FileSource {
    /// Loads `path` now; an unreadable or invalid initial state is an error.
    pub(crate) fn load(path: &Path) -> Result<Arc<Self>, StateError> {
        let state = cluster_state::load(path)?;
        let (tx, _) = watch::channel(Arc::new(state));
        Ok(Arc::new(FileSource { path: path.to_path_buf(), tx }))
    }

    /// Polls for changes until nobody subscribes any more.
    pub(crate) async fn watch(self: Arc<Self>, interval: Duration) {
        let mut last = cluster_state::stamp(&self.path);
        loop {
            tokio::time::sleep(interval).await;
            if self.tx.is_closed() {
                return;
            }
            let now = cluster_state::stamp(&self.path);
            if now == last {
                continue;
            }
            last = now;
            // Reading and parsing run on a blocking thread, never on a data-path worker.
            let path = self.path.clone();
            let Ok(loaded) = tokio::task::spawn_blocking(move || cluster_state::load(&path)).await else { continue };
            match loaded {
                Ok(state) => {
                    if **self.tx.borrow() != state {
                        tracing::info!(path = %self.path.display(), pods = state.pods.len(), services = state.services.len(), "cluster state updated");
                        self.tx.send_replace(Arc::new(state));
                    }
                    metrics::counter!("ferry_cluster_state_reloads_total", "result" => "ok").increment(1);
                }
                Err(e) => {
                    metrics::counter!("ferry_cluster_state_reloads_total", "result" => "error").increment(1);
                    tracing::error!(error = %e, "cluster state rejected; keeping the last good state");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn directory_source_keeps_last_good_state() {
        let dir = std::env::temp_dir().join(format!("ferry-cs-{}-{}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n").unwrap();
        let src = FileSource::load(&dir).unwrap();
        let mut rx = src.subscribe();
        tokio::spawn(src.clone().watch(Duration::from_millis(10)));
        std::fs::write(dir.join("bad.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: \"\"}\n").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!rx.has_changed().unwrap(), "an invalid manifest changes nothing");
        std::fs::write(dir.join("dup.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n").unwrap();
        std::fs::remove_file(dir.join("bad.yaml")).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!rx.has_changed().unwrap(), "a duplicate object changes nothing");
        std::fs::write(dir.join("dup.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n").unwrap();
        std::fs::write(dir.join(".hidden.yaml"), "garbage: [").unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed()).await.unwrap().unwrap();
        assert!(rx.borrow().namespace("b").is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
