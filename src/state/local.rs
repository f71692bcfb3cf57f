//! The local state file (`LOCAL_XDS_PATH`): read at start and polled for changes. Parsing and
//! validation are `ferry_core::local_config`; a file that fails them is reported with its line
//! and column and changes nothing: the watcher keeps serving the last good state. (A policy
//! entry that cannot be read does not fail the file: it fails closed, with a note logged once.)
//!
//! Invariant P10: a file larger than `FERRY_MAX_CONFIG_BYTES` is refused unread, and parsing
//! runs on a blocking thread, never on a data-path worker, so even a slow parse cannot delay
//! connections.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ferry_core::local_config::{self, LocalConfigError};
use ferry_core::state::StateInput;

use super::{PolicyNotes, StateStore};

#[derive(Debug, thiserror::Error)]
pub enum LocalFileError {
    #[error("cannot read local config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("local config {path} is larger than {max} bytes (FERRY_MAX_CONFIG_BYTES); refused unread")]
    TooLarge { path: PathBuf, max: u64 },
    #[error(transparent)]
    Config(#[from] LocalConfigError),
}

pub(crate) fn load_file(path: &Path, max_bytes: u64) -> Result<StateInput, LocalFileError> {
    use std::io::Read;
    let read = |source| LocalFileError::Read { path: path.to_path_buf(), source };
    let mut text = String::new();
    std::fs::File::open(path).map_err(read)?.take(max_bytes + 1).read_to_string(&mut text).map_err(read)?;
    if text.len() as u64 > max_bytes {
        return Err(LocalFileError::TooLarge { path: path.to_path_buf(), max: max_bytes });
    }
    Ok(local_config::parse(&text, &path.display().to_string())?)
}

/// Polls `path` and republishes the state whenever its contents change, logging each new
/// policy note once. Polling (not inotify) also follows Kubernetes ConfigMap symlink swaps.
pub(crate) async fn watch_file(path: PathBuf, store: StateStore, interval: Duration, max_bytes: u64, mut notes: PolicyNotes) {
    let mut last = file_stamp(&path);
    loop {
        tokio::time::sleep(interval).await;
        let stamp = file_stamp(&path);
        if stamp == last {
            continue;
        }
        last = stamp;
        let p = path.clone();
        let loaded = tokio::task::spawn_blocking(move || load_file(&p, max_bytes)).await;
        let Ok(loaded) = loaded else { continue };
        match loaded {
            Ok(input) => {
                notes.log(&input);
                let (w, s, p) = (input.workloads.len(), input.services.len(), input.policies.len());
                let version = store.replace(input);
                metrics::counter!("ferry_local_config_reloads_total", "result" => "ok").increment(1);
                tracing::info!(path = %path.display(), version, workloads = w, services = s, policies = p, "local config reloaded");
            }
            Err(e) => {
                metrics::counter!("ferry_local_config_reloads_total", "result" => "error").increment(1);
                tracing::error!(error = %e, "local config rejected; keeping the last good state");
            }
        }
    }
}

type Stamp = Option<(SystemTime, u64, u64)>;

fn file_stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watcher_keeps_last_good_state() {
        let dir = std::env::temp_dir().join(format!("ferry-local-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.yaml");
        std::fs::write(&path, "workloads:\n- {name: a, namespace: n, workloadIps: [\"10.0.0.1\"]}\n").unwrap();
        let store = StateStore::from_input(load_file(&path, 1 << 20).unwrap());
        let task = tokio::spawn(watch_file(path.clone(), store.clone(), Duration::from_millis(10), 1 << 20, PolicyNotes::default()));
        let v1 = store.snapshot().version;

        std::fs::write(&path, "workloads:\n- {name: a, namespace: n, workloadIps: [\"not-an-ip\"]}\n").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(store.snapshot().version, v1, "a bad file must not replace the state");
        assert!(store.snapshot().find_workload("n", "a", None).is_some());

        std::fs::write(&path, "workloads:\n- {name: b, namespace: n, workloadIps: [\"10.0.0.2\"], padding: x}\n").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(store.snapshot().version, v1, "unknown keys are errors");

        std::fs::write(&path, "workloads:\n- {name: b, namespace: n, workloadIps: [\"10.0.0.2\"]}\n").unwrap();
        let found = store.wait_for(Duration::from_secs(5), |s| s.find_workload("n", "b", None).cloned()).await;
        assert!(found.is_some(), "a good file is picked up");
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_unreadable_deny_is_applied_failing_closed() {
        let dir = std::env::temp_dir().join(format!("ferry-local-deny-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.yaml");
        let workload = "workloads:\n- {name: a, namespace: n, workloadIps: [\"10.0.0.1\"]}\n";
        std::fs::write(&path, workload).unwrap();
        let store = StateStore::from_input(load_file(&path, 1 << 20).unwrap());
        let task = tokio::spawn(watch_file(path.clone(), store.clone(), Duration::from_millis(10), 1 << 20, PolicyNotes::default()));
        // One runtime thread: yielding lets the watcher take its first stamp of the old file.
        tokio::task::yield_now().await;

        let deny = "policies:\n- {name: d, namespace: n, scope: Namespace, action: Deny, rules: [[[{sourceIps: [nope]}]]]}\n";
        std::fs::write(&path, format!("{workload}{deny}")).unwrap();
        let found = store.wait_for(Duration::from_secs(5), |s| s.policies().find(|p| p.key() == "n/d").cloned()).await;
        let p = found.expect("the file is applied, not rejected");
        assert!(p.notes.iter().any(|n| n.contains("line 4") && n.contains("denies everything in its scope")), "{:?}", p.notes);
        assert!(store.snapshot().find_workload("n", "a", None).is_some(), "the rest of the file applies");
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn policy_notes_are_logged_once() {
        let text = "policies:\n- {name: d, namespace: n, scope: Namespace, action: Deny, bogus: 1}\n";
        let input = local_config::parse(text, "f.yaml").unwrap();
        let mut notes = PolicyNotes::default();
        assert_eq!(notes.log(&input), 1);
        assert_eq!(notes.log(&input), 0, "the same note on a reload is not logged again");
    }
}
