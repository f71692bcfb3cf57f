//! Kubernetes manifests (YAML or JSON, several documents per text, `kind: List` flattened)
//! into a [`ClusterState`]: the one reader of manifest text for every role. Strict on purpose:
//! an object without `apiVersion`/`kind`, with an invalid name, a field of the wrong type or a
//! duplicate is an error naming the origin, document and object, so a caller never acts on a
//! half-read state.

use std::collections::BTreeMap;

use serde_json::Value;

use super::objects::{ClusterState, Namespace, ObjectMeta, Pod, Service, ServiceAccount};
use crate::yaml;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("cluster state {origin}: line {line}, column {column}: {message}")]
    Syntax { origin: String, line: usize, column: usize, message: String },
    #[error("cluster state {origin}: document {doc} ({kind} {name}): {message}")]
    Invalid { origin: String, doc: usize, kind: String, name: String, message: String },
    #[error("cluster state: {0} is defined twice")]
    Duplicate(String),
    /// One object refused on its own (from the Kubernetes API): no file or document to name.
    #[error("{kind} {name}: {message}")]
    Object { kind: String, name: String, message: String },
}

/// Whether a file name is read as a manifest: `.yaml`, `.yml` or `.json`, and not hidden
/// (Kubernetes volume mounts keep a second copy of every file under `..data`; writers rename
/// dot-files into place atomically).
pub fn is_manifest_file_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.starts_with('.') && (lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json"))
}

pub fn merge(into: &mut ClusterState, from: ClusterState) -> Result<(), ManifestError> {
    fn put<T>(m: &mut BTreeMap<String, T>, kind: &str, from: BTreeMap<String, T>) -> Result<(), ManifestError> {
        for (k, v) in from {
            if m.insert(k.clone(), v).is_some() {
                return Err(ManifestError::Duplicate(format!("{kind} {k}")));
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
pub fn parse_documents(text: &str, origin: &str) -> Result<ClusterState, ManifestError> {
    let docs = yaml::documents(text).map_err(|e| ManifestError::Syntax {
        origin: origin.to_string(),
        line: e.line,
        column: e.column,
        message: e.message,
    })?;
    collect(docs, origin)
}

/// Parses one JSON document (an object or a `kind: List`), as `kubectl get -o json` writes
/// them: the same objects as YAML, read by the smaller JSON parser.
pub fn parse_json_document(text: &str, origin: &str) -> Result<ClusterState, ManifestError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| ManifestError::Syntax {
        origin: origin.to_string(),
        line: e.line(),
        column: e.column(),
        message: e.to_string().split(" at line ").next().unwrap_or_default().to_string(),
    })?;
    collect(vec![doc], origin)
}

fn collect(docs: Vec<Value>, origin: &str) -> Result<ClusterState, ManifestError> {
    let mut state = ClusterState::default();
    for (i, value) in docs.into_iter().enumerate() {
        if value.is_null() {
            continue;
        }
        let items = match value.get("kind").and_then(|k| k.as_str()) {
            Some("List") => value.get("items").and_then(|i| i.as_array()).cloned().unwrap_or_default(),
            _ => vec![value],
        };
        for item in items {
            add_object(&mut state, item, origin, i + 1)?;
        }
    }
    Ok(state)
}

fn add_object(state: &mut ClusterState, v: Value, origin: &str, doc: usize) -> Result<(), ManifestError> {
    let object = object(v).map_err(|e| match e {
        ManifestError::Object { kind, name, message } => ManifestError::Invalid { origin: origin.to_string(), doc, kind, name, message },
        other => other,
    })?;
    insert(state, object)
}

/// One Kubernetes object, typed as ferry reads it, with the key it has in a [`ClusterState`]
/// (`name` for a Namespace, `namespace/name` for the namespaced core kinds,
/// `kind/namespace/name` for every other kind, kept raw).
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Pod(String, Pod),
    Service(String, Service),
    ServiceAccount(String, ServiceAccount),
    Other(String, Value),
}

impl Object {
    /// The object's key in its kind's map of a [`ClusterState`].
    pub fn key(&self) -> &str {
        match self {
            Object::Namespace(n) => &n.metadata.name,
            Object::Pod(k, _) | Object::Service(k, _) | Object::ServiceAccount(k, _) | Object::Other(k, _) => k,
        }
    }
}

/// Validates and types one object (`apiVersion`, `kind`, valid names, typed fields): the one
/// conversion for manifests on disk and objects from the Kubernetes API. Refusals are
/// [`ManifestError::Object`]; a caller reading files adds the file and document.
pub fn object(v: Value) -> Result<Object, ManifestError> {
    let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
    let name = v.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or("").to_string();
    let invalid = |message: String| ManifestError::Object { kind: kind.clone(), name: name.clone(), message };
    if kind.is_empty() || v.get("apiVersion").and_then(|a| a.as_str()).is_none() {
        return Err(invalid("every manifest needs apiVersion and kind".into()));
    }
    if !valid_name(&name) {
        return Err(invalid(format!("metadata.name {name:?} is not a valid Kubernetes name")));
    }
    let namespaced = |meta: &mut ObjectMeta| -> Result<String, ManifestError> {
        if meta.namespace.is_empty() {
            meta.namespace = "default".into();
        }
        if !valid_name(&meta.namespace) {
            return Err(invalid(format!("metadata.namespace {:?} is not a valid Kubernetes name", meta.namespace)));
        }
        Ok(format!("{}/{}", meta.namespace, meta.name))
    };
    fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }
    Ok(match kind.as_str() {
        "Namespace" => Object::Namespace(typed(v).map_err(invalid)?),
        "Pod" => {
            let mut p: Pod = typed(v).map_err(invalid)?;
            Object::Pod(namespaced(&mut p.metadata)?, p)
        }
        "Service" => {
            let mut s: Service = typed(v).map_err(invalid)?;
            Object::Service(namespaced(&mut s.metadata)?, s)
        }
        "ServiceAccount" => {
            let mut s: ServiceAccount = typed(v).map_err(invalid)?;
            Object::ServiceAccount(namespaced(&mut s.metadata)?, s)
        }
        _ => {
            let ns = v.get("metadata").and_then(|m| m.get("namespace")).and_then(|n| n.as_str()).unwrap_or("default").to_string();
            Object::Other(format!("{kind}/{ns}/{name}"), v)
        }
    })
}

/// Adds `object` to `state`; an object already there is a duplicate.
pub fn insert(state: &mut ClusterState, object: Object) -> Result<(), ManifestError> {
    match object {
        Object::Namespace(n) => unique(&mut state.namespaces, "Namespace", n.metadata.name.clone(), n),
        Object::Pod(k, p) => unique(&mut state.pods, "Pod", k, p),
        Object::Service(k, s) => unique(&mut state.services, "Service", k, s),
        Object::ServiceAccount(k, s) => unique(&mut state.service_accounts, "ServiceAccount", k, s),
        Object::Other(k, v) => unique(&mut state.other, "object", k, v),
    }
}

fn unique<T>(m: &mut BTreeMap<String, T>, kind: &str, key: String, v: T) -> Result<(), ManifestError> {
    if m.contains_key(&key) {
        return Err(ManifestError::Duplicate(format!("{kind} {key}")));
    }
    m.insert(key, v);
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
            ("apiVersion: v1\nkind: Pod\nmetadata: {name: a\n", "line 3"),
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
    fn json_documents_read_as_yaml_ones_do() {
        let yaml = parse_documents("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: web}}\n", "y").unwrap();
        let json =
            parse_json_document(r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","namespace":"x","labels":{"app":"web"}}}"#, "j")
                .unwrap();
        assert_eq!(yaml, json);
        let e = parse_json_document("{\n  \"kind\": \n}", "f.json").unwrap_err().to_string();
        assert!(e.contains("f.json: line 3"), "{e}");
        let e = parse_json_document(r#"{"kind":"Pod","metadata":{"name":"a"}}"#, "f.json").unwrap_err().to_string();
        assert!(e.contains("needs apiVersion and kind"), "{e}");
    }

    #[test]
    fn lists_defaults_and_other_kinds() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: a}}\n- {apiVersion: v1, kind: ServiceAccount, metadata: {name: sa, namespace: x}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: x}\n";
        let s = parse_documents(text, "t").unwrap();
        assert!(s.pod("default", "a").is_some(), "namespace defaults to default");
        assert!(s.service_accounts.contains_key("x/sa"));
        assert!(s.other.contains_key("Deployment/x/d"));
    }
}
