//! Installs ferry-cni on the node, as istio-cni's installer does: the plugin binary in the
//! host's CNI binary directory and a `ferry-cni` entry appended to the plugin chain of the
//! host's primary network configuration (the lexically first file, the one the runtime reads),
//! kept there while the agent runs (network plugins rewrite their configuration) and removed
//! by `ferry agent --uninstall`.
//!
//! Always a chained entry, never a configuration of its own: ferry-cni only reports pods to the
//! agent and passes the previous plugin's result through, so it must run after the network
//! plugin in the same chain. Every write is a temporary file in the same directory renamed into
//! place, so the runtime never reads a half-written binary or configuration.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub(crate) const PLUGIN: &str = "ferry-cni";

#[derive(Debug, thiserror::Error)]
pub enum CniInstallError {
    #[error(
        "{0} is a single-plugin configuration (not a .conflist); ferry-cni can only be chained into a plugin list, so nothing was changed"
    )]
    NotAList(PathBuf),
    #[error("{0} is not a CNI network configuration list ({1}); fix or remove it, nothing was changed")]
    Invalid(PathBuf, String),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// Where to install, from the agent's flags.
#[derive(Clone, Debug)]
pub(crate) struct CniInstall {
    pub(crate) plugin: PathBuf,
    pub(crate) bin_dir: PathBuf,
    pub(crate) net_dir: PathBuf,
    pub(crate) agent_socket: PathBuf,
}

/// What one pass did, for the log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Chained {
    /// No network configuration yet: the network plugin has not written it.
    NoConfiguration,
    Already(PathBuf),
    Added(PathBuf),
}

/// The entry the agent chains. No `cluster_state`: without the agent, ferry-cni refuses pods
/// (fail closed) instead of starting them uncaptured; the timeout bounds a sandbox's wait.
pub(crate) fn entry(agent_socket: &Path) -> Value {
    json!({"type": PLUGIN, "agent_socket": agent_socket.display().to_string(), "agent_timeout_seconds": 30})
}

/// `conflist` with `entry` last in its chain; `None` when it already chains exactly `entry`.
pub(crate) fn chain(conflist: &str, entry: &Value) -> Result<Option<String>, String> {
    let mut v: Value = serde_json::from_str(conflist).map_err(|e| e.to_string())?;
    let plugins = v.get_mut("plugins").and_then(Value::as_array_mut).ok_or("no \"plugins\" list")?;
    let ours: Vec<&Value> = plugins.iter().filter(|p| p["type"] == PLUGIN).collect();
    if ours.len() == 1 && ours[0] == entry && plugins.last() == Some(entry) {
        return Ok(None);
    }
    plugins.retain(|p| p["type"] != PLUGIN);
    plugins.push(entry.clone());
    serde_json::to_string_pretty(&v).map(Some).map_err(|e| e.to_string())
}

/// `conflist` without any ferry-cni entry; `None` when it has none (or is not a list).
pub(crate) fn unchain(conflist: &str) -> Option<String> {
    let mut v: Value = serde_json::from_str(conflist).ok()?;
    let plugins = v.get_mut("plugins").and_then(Value::as_array_mut)?;
    let before = plugins.len();
    plugins.retain(|p| p["type"] != PLUGIN);
    (plugins.len() != before).then(|| serde_json::to_string_pretty(&v).ok()).flatten()
}

/// The configuration the runtime uses: the lexically first `*.conflist`, `*.conf` or `*.json`.
pub(crate) fn primary(net_dir: &Path) -> Result<Option<PathBuf>, CniInstallError> {
    let read = std::fs::read_dir(net_dir).map_err(io("cannot list", net_dir))?;
    let mut files: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "conflist" || x == "conf" || x == "json"))
        .collect();
    files.sort();
    match files.into_iter().next() {
        Some(p) if p.extension().is_some_and(|x| x == "conflist") => Ok(Some(p)),
        Some(p) => Err(CniInstallError::NotAList(p)),
        None => Ok(None),
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CniInstallError {
    let path = path.to_path_buf();
    move |source| CniInstallError::Io { what, path, source }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
fn replace(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CniInstallError> {
    use std::os::unix::fs::PermissionsExt;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.ferry.tmp"));
    std::fs::write(&tmp, bytes).map_err(io("cannot write", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io("cannot set the mode of", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("cannot rename into place", path))
}

impl CniInstall {
    /// Copies the plugin binary unless the installed one is identical.
    pub(crate) fn install_binary(&self) -> Result<bool, CniInstallError> {
        let want = std::fs::read(&self.plugin).map_err(io("cannot read the plugin binary", &self.plugin))?;
        let dst = self.bin_dir.join(PLUGIN);
        if std::fs::read(&dst).is_ok_and(|have| have == want) {
            return Ok(false);
        }
        replace(&dst, &want, 0o755)?;
        Ok(true)
    }

    /// Chains ferry-cni into the primary configuration (once; a no-op when already there).
    pub(crate) fn chain(&self) -> Result<Chained, CniInstallError> {
        let Some(conf) = primary(&self.net_dir)? else { return Ok(Chained::NoConfiguration) };
        let text = std::fs::read_to_string(&conf).map_err(io("cannot read", &conf))?;
        match chain(&text, &entry(&self.agent_socket)).map_err(|e| CniInstallError::Invalid(conf.clone(), e))? {
            None => Ok(Chained::Already(conf)),
            Some(new) => {
                replace(&conf, new.as_bytes(), 0o644)?;
                Ok(Chained::Added(conf))
            }
        }
    }

    /// Removes ferry-cni from every configuration list and the binary; returns what changed.
    pub(crate) fn remove(&self) -> Result<Vec<PathBuf>, CniInstallError> {
        let mut changed = Vec::new();
        let read = std::fs::read_dir(&self.net_dir).map_err(io("cannot list", &self.net_dir))?;
        let mut confs: Vec<PathBuf> =
            read.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "conflist")).collect();
        confs.sort();
        for conf in confs {
            let Ok(text) = std::fs::read_to_string(&conf) else { continue };
            if let Some(new) = unchain(&text) {
                replace(&conf, new.as_bytes(), 0o644)?;
                changed.push(conf);
            }
        }
        let bin = self.bin_dir.join(PLUGIN);
        match std::fs::remove_file(&bin) {
            Ok(()) => changed.push(bin),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CniInstallError::Io { what: "cannot remove", path: bin, source: e }),
        }
        Ok(changed)
    }

    /// Installs, then keeps the entry chained: a network plugin that rewrites its configuration
    /// (or one written after the agent started) gets ferry-cni chained again within `every`.
    pub(crate) async fn keep_installed(self, every: std::time::Duration, installed: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        let mut said_waiting = false;
        loop {
            let pass = self.install_binary().and_then(|_| self.chain());
            match &pass {
                Ok(Chained::Added(conf)) => {
                    tracing::info!(conf = %conf.display(), bin = %self.bin_dir.join(PLUGIN).display(), "ferry-cni chained into the node's network configuration")
                }
                Ok(Chained::Already(_)) => {}
                Ok(Chained::NoConfiguration) if !said_waiting => {
                    said_waiting = true;
                    tracing::warn!(dir = %self.net_dir.display(), "no CNI network configuration yet (is the network plugin installed?); new pods are not enrolled until there is one");
                }
                Ok(Chained::NoConfiguration) => {}
                Err(e) => tracing::error!(error = %e, "cannot install ferry-cni; retrying"),
            }
            // Chained exactly when this pass added the entry or found it in place.
            let chained = matches!(pass, Ok(Chained::Added(_) | Chained::Already(_)));
            installed.store(chained, std::sync::atomic::Ordering::Release);
            tokio::time::sleep(every).await;
        }
    }
}

#[cfg(test)]
#[path = "cni_install_tests.rs"]
mod tests;
