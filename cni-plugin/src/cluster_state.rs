//! Fallback decision when the node agent is unreachable: is the pod's namespace ambient according to a local copy of cluster state?
//!
//! The state is a YAML file, or a directory of `.yaml`/`.yml` files, holding Kubernetes objects
//! (possibly several documents per file, possibly `kind: List`). Only a definite "this
//! namespace exists and is not ambient" lets a pod start without the agent; every doubt is
//! reported as `Undecided` so the caller fails closed.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
pub const AMBIENT: &str = "ambient";
/// Cluster state files are manifests, not bulk data; a larger file is treated as unreadable.
pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;
/// `List` objects nest in practice one level deep; the cap keeps hostile input from recursing.
const MAX_LIST_DEPTH: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The namespace carries `istio.io/dataplane-mode: ambient`.
    Ambient,
    /// The namespace was found, without the ambient label, and nothing was left unread.
    NotAmbient,
    /// No safe answer; the string says why, for the operator.
    Undecided(String),
}

/// Looks up `namespace` in the state at `path`.
pub fn lookup(path: &Path, namespace: &str) -> Lookup {
    let files = match state_files(path) {
        Ok(files) => files,
        Err(why) => return Lookup::Undecided(why),
    };
    let mut scan = Scan::default();
    for file in &files {
        match read_capped(file) {
            Ok(bytes) => scan.scan_file(&bytes, namespace),
            Err(why) => scan.unreadable.push(format!("{}: {why}", file.display())),
        }
    }
    scan.verdict(path, namespace)
}

/// The files to read: the path itself, or the YAML files directly inside it, in name order.
fn state_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = fs::metadata(path).map_err(|e| format!("cluster state {} cannot be read: {e}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !meta.is_dir() {
        return Err(format!("cluster state {} is neither a file nor a directory", path.display()));
    }
    let entries = fs::read_dir(path).map_err(|e| format!("cluster state directory {} cannot be listed: {e}", path.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cluster state directory {} cannot be listed: {e}", path.display()))?;
        let file = entry.path();
        if is_state_file_name(&file) && fs::metadata(&file).map(|m| m.is_file()).unwrap_or(true) {
            files.push(file);
        }
    }
    if files.is_empty() {
        return Err(format!("cluster state directory {} has no .yaml or .yml files", path.display()));
    }
    files.sort();
    Ok(files)
}

/// Hidden entries are skipped because Kubernetes volume mounts keep a second copy of every file
/// under `..data`; reading both would only duplicate documents.
fn is_state_file_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return false };
    let lower = name.to_ascii_lowercase();
    !name.starts_with('.') && (lower.ends_with(".yaml") || lower.ends_with(".yml"))
}

fn read_capped(file: &Path) -> Result<Vec<u8>, String> {
    let handle = fs::File::open(file).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    handle.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    Ok(bytes)
}

#[derive(Default)]
struct Scan {
    ambient: bool,
    found: bool,
    documents: usize,
    skipped: usize,
    unreadable: Vec<String>,
}

impl Scan {
    fn scan_file(&mut self, bytes: &[u8], namespace: &str) {
        let Ok(text) = std::str::from_utf8(bytes) else {
            // Not UTF-8 means not YAML we can trust; it cannot be the namespace.
            self.skipped += 1;
            return;
        };
        for doc in split_documents(text.trim_start_matches('\u{feff}')) {
            self.documents += 1;
            match serde_yaml::from_str::<Value>(&doc) {
                Ok(value) => self.visit(&value, namespace, 0),
                Err(_) => self.skipped += 1,
            }
        }
    }

    fn visit(&mut self, obj: &Value, namespace: &str, depth: usize) {
        if is_namespace_named(obj, namespace) {
            self.found = true;
            // Conflicting copies resolve to ambient: wrongly failing a pod start is recoverable,
            // an uncaptured pod in an ambient namespace is not.
            self.ambient |= is_ambient(obj);
            return;
        }
        let is_list = obj.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List"));
        if let (true, Some(Value::Sequence(items))) = (is_list && depth < MAX_LIST_DEPTH, obj.get("items")) {
            for item in items {
                self.visit(item, namespace, depth + 1);
            }
        }
    }

    fn verdict(&self, path: &Path, namespace: &str) -> Lookup {
        if self.ambient {
            return Lookup::Ambient;
        }
        if !self.unreadable.is_empty() {
            // An unread file could hold an ambient copy of the namespace.
            return Lookup::Undecided(format!("cluster state {} is partly unreadable: {}", path.display(), self.unreadable.join("; ")));
        }
        if self.found {
            return Lookup::NotAmbient;
        }
        let skipped = match self.skipped {
            0 => String::new(),
            n => format!(", {n} invalid skipped"),
        };
        Lookup::Undecided(format!(
            "namespace {namespace:?} is not in cluster state {}; documents read: {}{skipped}",
            path.display(),
            self.documents
        ))
    }
}

fn is_namespace_named(obj: &Value, namespace: &str) -> bool {
    obj.get("apiVersion").and_then(Value::as_str) == Some("v1")
        && obj.get("kind").and_then(Value::as_str) == Some("Namespace")
        && obj.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str) == Some(namespace)
}

fn is_ambient(ns: &Value) -> bool {
    ns.get("metadata").and_then(|m| m.get("labels")).and_then(|l| l.get(DATAPLANE_MODE_LABEL)).and_then(Value::as_str) == Some(AMBIENT)
}

/// Splits a YAML stream into documents ourselves so one broken document cannot hide the
/// others: a parser error mid-stream would otherwise end the whole file.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = marker_rest(line, "---") {
            push_document(&mut docs, &mut current);
            // Content may share the marker line, as in `--- {kind: Namespace}`.
            if !rest.trim().is_empty() {
                current.push_str(rest);
                current.push('\n');
            }
        } else if marker_rest(line, "...").is_some() {
            push_document(&mut docs, &mut current);
        } else if line.starts_with('%') && current.trim().is_empty() {
            // Directives (%YAML, %TAG) belong to the stream, not to a document's content.
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    push_document(&mut docs, &mut current);
    docs
}

/// A document marker is the three characters at column 0, alone or followed by whitespace.
fn marker_rest<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(marker)?;
    (rest.is_empty() || rest.starts_with([' ', '\t'])).then_some(rest)
}

fn push_document(docs: &mut Vec<String>, current: &mut String) {
    let has_content = current.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    });
    if has_content {
        docs.push(std::mem::take(current));
    } else {
        current.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    const AMBIENT_NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n  labels:\n    istio.io/dataplane-mode: ambient\n";
    const PLAIN_NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n  labels:\n    team: a\n";

    #[test]
    fn single_file_table() {
        let broken = "key: [unclosed\n";
        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: listed\n";
        let cases: Vec<(String, &str, Lookup)> = vec![
            (format!("{AMBIENT_NS}---\n{PLAIN_NS}"), "mesh", Lookup::Ambient),
            (format!("{AMBIENT_NS}---\n{PLAIN_NS}"), "plain", Lookup::NotAmbient),
            (format!("{broken}---\n{PLAIN_NS}---\n{broken}"), "plain", Lookup::NotAmbient),
            (format!("%YAML 1.2\n---\n{PLAIN_NS}...\n"), "plain", Lookup::NotAmbient),
            (format!("\u{feff}# comment\n---\n{PLAIN_NS}"), "plain", Lookup::NotAmbient),
            (list.to_string(), "listed", Lookup::NotAmbient),
            // Same name twice, one ambient: ambient wins.
            (format!("{AMBIENT_NS}---\n{}", AMBIENT_NS.replace("ambient", "none")), "mesh", Lookup::Ambient),
            // Wrong kind or apiVersion is not the namespace.
            (PLAIN_NS.replace("Namespace", "ConfigMap"), "plain", undecided()),
            (PLAIN_NS.replace("v1", "v2"), "plain", undecided()),
            (format!("{broken}---\n{broken}"), "plain", undecided()),
            (String::new(), "plain", undecided()),
        ];
        let dir = TempDir::new("cluster-state");
        for (i, (text, ns, want)) in cases.into_iter().enumerate() {
            let file = dir.path().join(format!("case{i}.yaml"));
            fs::write(&file, &text).unwrap();
            let got = lookup(&file, ns);
            match want {
                Lookup::Undecided(_) => assert!(matches!(got, Lookup::Undecided(_)), "case {i}: {got:?}"),
                want => assert_eq!(got, want, "case {i}"),
            }
        }
    }

    fn undecided() -> Lookup {
        Lookup::Undecided(String::new())
    }

    #[test]
    fn directory_reads_only_visible_yaml_files() {
        let dir = TempDir::new("cluster-dir");
        fs::write(dir.path().join("a.yaml"), PLAIN_NS).unwrap();
        fs::write(dir.path().join("b.YML"), AMBIENT_NS).unwrap();
        fs::write(dir.path().join("c.txt"), AMBIENT_NS.replace("mesh", "txt")).unwrap();
        fs::write(dir.path().join(".hidden.yaml"), AMBIENT_NS.replace("mesh", "plain")).unwrap();
        fs::write(dir.path().join("d.yaml"), [0xff, 0xfe, 0x00]).unwrap();
        assert_eq!(lookup(dir.path(), "plain"), Lookup::NotAmbient);
        assert_eq!(lookup(dir.path(), "mesh"), Lookup::Ambient);
        assert!(matches!(lookup(dir.path(), "txt"), Lookup::Undecided(_)));
    }

    #[test]
    fn missing_or_empty_state_is_undecided() {
        let dir = TempDir::new("cluster-empty");
        let Lookup::Undecided(why) = lookup(dir.path(), "plain") else { panic!("empty dir decided") };
        assert!(why.contains("no .yaml"), "{why}");
        let Lookup::Undecided(why) = lookup(&dir.path().join("absent"), "plain") else { panic!("missing path decided") };
        assert!(why.contains("cannot be read"), "{why}");
    }

    #[test]
    fn unreadable_file_blocks_a_not_ambient_answer() {
        let dir = TempDir::new("cluster-unreadable");
        fs::write(dir.path().join("a.yaml"), PLAIN_NS).unwrap();
        // A dangling symlink stands in for a file we cannot read; permissions would not stop root.
        std::os::unix::fs::symlink(dir.path().join("gone"), dir.path().join("b.yaml")).unwrap();
        assert!(matches!(lookup(dir.path(), "plain"), Lookup::Undecided(_)));
    }

    #[test]
    fn document_splitting() {
        let docs = split_documents("a: 1\n---\nb: 2\n--- c: 3\n----\n...\n# only comment\n---\n");
        assert_eq!(docs, vec!["a: 1\n".to_string(), "b: 2\n".to_string(), " c: 3\n----\n".to_string()]);
    }
}
