//! Cluster state from Kubernetes manifests on disk: the one reader of a cluster-state path.
//! The CNI plugin's fallback (agent unreachable) and the node agent's and proxy's file source
//! both read through [`load`], so they see the same objects from the same files, and both decide
//! capture with `ferry_core::k8s::capture::decide`, so they cannot disagree.
//!
//! Reading is strict: a file that cannot be read, is too large, or holds a document that does
//! not parse makes the whole state unreadable. The fallback then answers [`Lookup::Undecided`]
//! and the caller fails closed; the file source keeps its last good state.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ferry_core::k8s::capture::{self, Capture, SkipReason};
use ferry_core::k8s::manifests::{self, ManifestError};
use ferry_core::k8s::objects::{ClusterState, Pod};

/// Cluster state files are manifests, not bulk data; a larger file is treated as unreadable.
pub(crate) const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;
/// Directory nesting the reader follows (ConfigMap mounts are one or two levels deep).
const MAX_DEPTH: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cluster state {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cluster state {path}: larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("cluster state {path}: deeper than {MAX_DEPTH} directories")]
    TooDeep { path: PathBuf },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// The manifest files under `path` (the path itself when it is a file), in name order,
/// following subdirectories and skipping hidden names (see `manifests::is_manifest_file_name`).
pub(crate) fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, StateError> {
    let err = |source| StateError::Read { path: path.to_path_buf(), source };
    if fs::metadata(path).map_err(err)?.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    walk(path, 0, &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), StateError> {
    if depth > MAX_DEPTH {
        return Err(StateError::TooDeep { path: dir.to_path_buf() });
    }
    let err = |source| StateError::Read { path: dir.to_path_buf(), source };
    let mut entries: Vec<_> = fs::read_dir(dir).map_err(err)?.collect::<Result<_, _>>().map_err(err)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        let p = e.path();
        // Follows symlinks, as a ConfigMap mount needs; a dangling one is an unreadable file.
        match fs::metadata(&p) {
            Ok(m) if m.is_dir() => walk(&p, depth + 1, out)?,
            _ if manifests::is_manifest_file_name(&name) => out.push(p),
            _ => {}
        }
    }
    Ok(())
}

fn read_capped(file: &Path) -> Result<String, StateError> {
    let handle = fs::File::open(file).map_err(|source| StateError::Read { path: file.to_path_buf(), source })?;
    let mut bytes = Vec::new();
    handle.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|source| StateError::Read { path: file.to_path_buf(), source })?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(StateError::TooLarge { path: file.to_path_buf() });
    }
    String::from_utf8(bytes).map_err(|_| StateError::Read {
        path: file.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"),
    })
}

/// Reads and parses every manifest under `path` into one state; any error fails the whole read.
pub fn load(path: &Path) -> Result<ClusterState, StateError> {
    let mut state = ClusterState::default();
    for f in manifest_files(path)? {
        let text = read_capped(&f)?;
        let (text, origin) = (text.trim_start_matches('\u{feff}'), f.display().to_string());
        let parsed = match f.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
            true => manifests::parse_json_document(text, &origin)?,
            false => manifests::parse_documents(text, &origin)?,
        };
        manifests::merge(&mut state, parsed)?;
    }
    Ok(state)
}

/// A cheap fingerprint of `path`'s manifests (names, times, sizes, inodes): a change means reload.
pub(crate) type Stamp = Option<Vec<(PathBuf, SystemTime, u64, u64)>>;

pub fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for f in manifest_files(path).ok()? {
        let m = fs::metadata(&f).ok()?;
        out.push((f, m.modified().ok()?, m.len(), m.ino()));
    }
    Some(out)
}

/// What the fallback may do with a pod when the agent cannot be asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The pod must be captured (so it must not start without the agent); the string says why.
    Enroll(String),
    /// The pod is not captured, for this reason: it may start without the agent.
    Skip(SkipReason),
    /// No safe answer; the string says why, for the operator.
    Undecided(String),
}

/// The capture decision for pod `namespace/name` from the state at `path`: the agent's own
/// decision when the pod is listed; when it is not, its labels are unknown, so only an ambient
/// namespace gives an answer (enroll) and anything else is undecided.
pub fn lookup(path: &Path, namespace: &str, name: &str) -> Lookup {
    let state = match load(path) {
        Ok(s) => s,
        Err(e) => return Lookup::Undecided(e.to_string()),
    };
    let ns = state.namespace(namespace);
    let (pod, listed) = match state.pod(namespace, name) {
        Some(p) => (p.clone(), true),
        None => (unlisted_pod(namespace, name), false),
    };
    match (capture::decide(ns, &pod), listed) {
        (Capture::Enroll, true) => Lookup::Enroll(format!("pod {namespace}/{name} is captured per {}", path.display())),
        (Capture::Enroll, false) => Lookup::Enroll(format!(
            "namespace {namespace} is labelled {}={} in {}",
            capture::DATAPLANE_MODE,
            capture::AMBIENT,
            path.display()
        )),
        (Capture::Skip(reason), true) => Lookup::Skip(reason),
        (Capture::Skip(_), false) => Lookup::Undecided(format!(
            "pod {namespace}/{name} is not in cluster state {}, so its own labels (which may opt it in) are unknown",
            path.display()
        )),
    }
}

fn unlisted_pod(namespace: &str, name: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.namespace = namespace.to_string();
    p.metadata.name = name.to_string();
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    const AMBIENT_NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n  labels:\n    istio.io/dataplane-mode: ambient\n";
    const PLAIN_NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n  labels:\n    team: a\n";
    const PLAIN_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: plain}\n";

    fn enroll(l: &Lookup) -> bool {
        matches!(l, Lookup::Enroll(_))
    }
    fn undecided(l: &Lookup) -> bool {
        matches!(l, Lookup::Undecided(_))
    }
    fn skip(l: &Lookup) -> bool {
        matches!(l, Lookup::Skip(_))
    }

    #[test]
    fn single_file_table() {
        let broken = "key: [unclosed\n";
        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: plain\n";
        type Case = (String, &'static str, &'static str, fn(&Lookup) -> bool);
        let cases: Vec<Case> = vec![
            (format!("{AMBIENT_NS}---\n{PLAIN_NS}"), "mesh", "any", enroll),
            (format!("{AMBIENT_NS}---\n{PLAIN_NS}---\n{PLAIN_POD}"), "plain", "web", skip),
            (format!("%YAML 1.2\n---\n{PLAIN_NS}---\n{PLAIN_POD}...\n"), "plain", "web", skip),
            (format!("\u{feff}# comment\n---\n{PLAIN_NS}---\n{PLAIN_POD}"), "plain", "web", skip),
            (format!("{list}---\n{PLAIN_POD}"), "plain", "web", skip),
            // A pod that is not listed: its labels are unknown.
            (PLAIN_NS.to_string(), "plain", "web", undecided),
            // One broken document makes the whole state unreadable, as it does for the agent.
            (format!("{broken}---\n{PLAIN_NS}---\n{PLAIN_POD}"), "plain", "web", undecided),
            // Two copies of one object are an error, not a guess.
            (format!("{PLAIN_NS}---\n{PLAIN_NS}---\n{PLAIN_POD}"), "plain", "web", undecided),
            (String::new(), "plain", "web", undecided),
        ];
        let dir = TempDir::new("cluster-state");
        for (i, (text, ns, name, want)) in cases.into_iter().enumerate() {
            let file = dir.path().join(format!("case{i}.yaml"));
            fs::write(&file, &text).unwrap();
            let got = lookup(&file, ns, name);
            assert!(want(&got), "case {i}: {got:?}");
        }
    }

    #[test]
    fn directory_reads_visible_manifest_files_recursively() {
        let dir = TempDir::new("cluster-dir");
        fs::write(dir.path().join("a.yaml"), PLAIN_NS).unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/b.YML"), AMBIENT_NS).unwrap();
        fs::write(dir.path().join("c.json"), r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"plain"}}"#).unwrap();
        fs::write(dir.path().join("d.txt"), "not: [read").unwrap();
        fs::create_dir(dir.path().join("..data")).unwrap();
        fs::write(dir.path().join("..data/a.yaml"), PLAIN_NS).unwrap();
        assert!(skip(&lookup(dir.path(), "plain", "web")));
        assert!(enroll(&lookup(dir.path(), "mesh", "any")));
        assert_eq!(manifest_files(dir.path()).unwrap().len(), 3);
    }

    #[test]
    fn missing_unreadable_or_empty_state_is_undecided() {
        let dir = TempDir::new("cluster-empty");
        assert!(undecided(&lookup(dir.path(), "plain", "web")));
        let Lookup::Undecided(why) = lookup(&dir.path().join("absent"), "plain", "web") else { panic!("missing path decided") };
        assert!(why.contains("absent"), "{why}");
        fs::write(dir.path().join("a.yaml"), format!("{PLAIN_NS}---\n{PLAIN_POD}")).unwrap();
        // A dangling symlink stands in for a file we cannot read; permissions would not stop root.
        std::os::unix::fs::symlink(dir.path().join("gone"), dir.path().join("b.yaml")).unwrap();
        assert!(undecided(&lookup(dir.path(), "plain", "web")));
        fs::remove_file(dir.path().join("b.yaml")).unwrap();
        fs::write(dir.path().join("c.yaml"), [0xff, 0xfe, 0x00]).unwrap();
        assert!(undecided(&lookup(dir.path(), "plain", "web")), "a non-UTF-8 file is unreadable");
    }
}
