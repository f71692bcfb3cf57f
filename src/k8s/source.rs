//! Cluster state from Kubernetes YAML in a file or directory, behind [`ClusterSource`] (the
//! Kubernetes API will implement the same trait). The path is polled; a change is applied
//! only if every manifest parses and validates, otherwise the error names the file, document
//! and line, and the last good state stays in force.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::sync::watch;

use super::objects::{ClusterState, Namespace, Pod, Service, ServiceAccount};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cluster state {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cluster state {origin}: line {line}: {message}")]
    Syntax { origin: String, line: usize, message: String },
    #[error("cluster state {origin}: document {doc} ({kind} {name}): {message}")]
    Invalid { origin: String, doc: usize, kind: String, name: String, message: String },
    #[error("cluster state: {0} is defined twice")]
    Duplicate(String),
}

/// Where the node agent and the node proxy read Kubernetes objects from.
pub trait ClusterSource: Send + Sync + 'static {
    /// The current state and every later one.
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>>;
}

/// Kubernetes manifests in a file or a directory tree (`.yaml`, `.yml`, `.json`; names
/// starting with `.` are ignored so writers can rename into place atomically).
pub struct FileSource {
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
    pub fn load(path: &Path) -> Result<Arc<Self>, SourceError> {
        let state = load_path(path)?;
        let (tx, _) = watch::channel(Arc::new(state));
        Ok(Arc::new(FileSource { path: path.to_path_buf(), tx }))
    }

    /// Polls for changes until nobody subscribes any more.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut last = stamp(&self.path);
        loop {
            tokio::time::sleep(interval).await;
            if self.tx.is_closed() {
                return;
            }
            let now = stamp(&self.path);
            if now == last {
                continue;
            }
            last = now;
            match load_path(&self.path) {
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

fn files(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let err = |source| SourceError::Read { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(err)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(path).map_err(err)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        let p = e.path();
        if name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            out.extend(files(&p)?);
        } else if name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json") {
            out.push(p);
        }
    }
    Ok(out)
}

/// Names, sizes, inodes and times of every manifest: any change triggers a reload.
fn stamp(path: &Path) -> Option<Vec<(PathBuf, SystemTime, u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for f in files(path).ok()? {
        let m = std::fs::metadata(&f).ok()?;
        out.push((f, m.modified().ok()?, m.len(), m.ino()));
    }
    Some(out)
}

pub fn load_path(path: &Path) -> Result<ClusterState, SourceError> {
    let mut state = ClusterState::default();
    for f in files(path)? {
        let text = std::fs::read_to_string(&f).map_err(|source| SourceError::Read { path: f.clone(), source })?;
        merge(&mut state, parse_documents(&text, &f.display().to_string())?)?;
    }
    Ok(state)
}

fn merge(into: &mut ClusterState, from: ClusterState) -> Result<(), SourceError> {
    fn put<T>(m: &mut BTreeMap<String, T>, kind: &str, from: BTreeMap<String, T>) -> Result<(), SourceError> {
        for (k, v) in from {
            if m.insert(k.clone(), v).is_some() {
                return Err(SourceError::Duplicate(format!("{kind} {k}")));
            }
        }
        Ok(())
    }
    put(&mut into.namespaces, "Namespace", from.namespaces)?;
    put(&mut into.pods, "Pod", from.pods)?;
    put(&mut into.services, "Service", from.services)?;
    put(&mut into.service_accounts, "ServiceAccount", from.service_accounts)?;
    put(&mut into.other, "object", from.other)
}

/// Parses a multi-document YAML text (a `kind: List` is flattened).
pub fn parse_documents(text: &str, origin: &str) -> Result<ClusterState, SourceError> {
    let mut state = ClusterState::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| SourceError::Syntax {
            origin: origin.to_string(),
            line: e.location().map(|l| l.line()).unwrap_or(0),
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let items = match value.get("kind").and_then(|k| k.as_str()) {
            Some("List") => value.get("items").and_then(|i| i.as_sequence()).cloned().unwrap_or_default(),
            _ => vec![value],
        };
        for item in items {
            add_object(&mut state, item, origin, i + 1)?;
        }
    }
    Ok(state)
}

fn add_object(state: &mut ClusterState, v: serde_yaml::Value, origin: &str, doc: usize) -> Result<(), SourceError> {
    let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
    let name = v.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or("").to_string();
    let invalid =
        |message: String| SourceError::Invalid { origin: origin.to_string(), doc, kind: kind.clone(), name: name.clone(), message };
    if kind.is_empty() || v.get("apiVersion").and_then(|a| a.as_str()).is_none() {
        return Err(invalid("every manifest needs apiVersion and kind".into()));
    }
    if !valid_name(&name) {
        return Err(invalid(format!("metadata.name {name:?} is not a valid Kubernetes name")));
    }
    let namespaced = |mut meta: super::objects::ObjectMeta| -> Result<(String, super::objects::ObjectMeta), SourceError> {
        if meta.namespace.is_empty() {
            meta.namespace = "default".into();
        }
        if !valid_name(&meta.namespace) {
            return Err(invalid(format!("metadata.namespace {:?} is not a valid Kubernetes name", meta.namespace)));
        }
        Ok((format!("{}/{}", meta.namespace, meta.name), meta))
    };
    fn typed<T: serde::de::DeserializeOwned>(v: serde_yaml::Value) -> Result<T, String> {
        serde_yaml::from_value(v).map_err(|e| e.to_string())
    }
    match kind.as_str() {
        "Namespace" => {
            let n: Namespace = typed(v).map_err(invalid)?;
            state.namespaces.insert(n.metadata.name.clone(), n);
        }
        "Pod" => {
            let mut p: Pod = typed(v).map_err(invalid)?;
            let (key, meta) = namespaced(p.metadata)?;
            p.metadata = meta;
            state.pods.insert(key, p);
        }
        "Service" => {
            let mut s: Service = typed(v).map_err(invalid)?;
            let (key, meta) = namespaced(s.metadata)?;
            s.metadata = meta;
            state.services.insert(key, s);
        }
        "ServiceAccount" => {
            let mut s: ServiceAccount = typed(v).map_err(invalid)?;
            let (key, meta) = namespaced(s.metadata)?;
            s.metadata = meta;
            state.service_accounts.insert(key, s);
        }
        _ => {
            let ns = v.get("metadata").and_then(|m| m.get("namespace")).and_then(|n| n.as_str()).unwrap_or("default").to_string();
            state.other.insert(format!("{kind}/{ns}/{name}"), v);
        }
    }
    Ok(())
}

/// DNS-1123 subdomain: lower-case alphanumerics, `-` and `.`, at most 253 bytes.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_manifests_are_reported_with_location() {
        let cases: &[(&str, &str)] = &[
            ("apiVersion: v1\nkind: Pod\nmetadata: {name: a\n", "line"),
            ("kind: Pod\nmetadata: {name: a}\n", "needs apiVersion and kind"),
            ("apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\n", "not a valid Kubernetes name"),
            ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: \"x/y\"}\n", "metadata.namespace"),
            ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, ports: [{containerPort: http}]}]}\n", "document 1 (Pod a)"),
            ("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 99999}]}\n", "document 2 (Service s)"),
        ];
        for (text, needle) in cases {
            let e = parse_documents(text, "f.yaml").unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("f.yaml"), "{text:?}: {e}");
        }
    }

    #[test]
    fn lists_defaults_and_other_kinds() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: a}}\n- {apiVersion: v1, kind: ServiceAccount, metadata: {name: sa, namespace: x}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: x}\n";
        let s = parse_documents(text, "t").unwrap();
        assert!(s.pod("default", "a").is_some(), "namespace defaults to default");
        assert!(s.service_accounts.contains_key("x/sa"));
        assert!(s.other.contains_key("Deployment/x/d"));
    }

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
