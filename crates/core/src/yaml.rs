//! The one place ferry reads YAML: serde-saphyr, a pure-Rust YAML library that
//! never panics on input and bounds what a document can make it do (nesting depth, alias
//! expansion, document count). Errors carry the line and column an operator needs.

use serde::de::{DeserializeOwned, DeserializeSeed};

/// A YAML document that does not parse or does not fit the expected shape.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct YamlError {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) message: String,
}

impl From<serde_saphyr::Error> for YamlError {
    fn from(e: serde_saphyr::Error) -> Self {
        let (line, column) = e.location().map(|l| (l.line() as usize, l.column() as usize)).unwrap_or((0, 0));
        let text = e.without_snippet().to_string();
        // The library appends " at line L, column C"; the location has its own fields here.
        let message = match text.rfind(" at line ") {
            Some(i) => text[..i].to_string(),
            None => text,
        };
        YamlError { line, column, message }
    }
}

/// One document into `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    Ok(serde_saphyr::from_str(text)?)
}

/// One document through a seed, for a reader that carries state across the document (the local
/// config's set-aside policy entries).
pub(crate) fn from_str_seed<'de, S: DeserializeSeed<'de>>(text: &'de str, seed: S) -> Result<S::Value, YamlError> {
    Ok(serde_saphyr::with_deserializer_from_str(text, |d| seed.deserialize(d))?)
}

/// Every non-empty document of a stream, as JSON values (the shape Kubernetes objects have on
/// the API, so typed conversion is the same for files and the API server).
pub(crate) fn documents(text: &str) -> Result<Vec<serde_json::Value>, YamlError> {
    Ok(serde_saphyr::from_multiple(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        a: u16,
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = from_str::<Doc>("a: 1\nb: 2\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 1));
        assert!(e.message.contains("unknown field `b`"), "{e}");
        let e = from_str::<Doc>("a: 99999\n").unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn hostile_nesting_is_refused_quickly() {
        // 200 KB of `[`: quadratic in depth for some parsers; refused at the depth limit here.
        let deep = "[".repeat(200_000);
        assert!(documents(&deep).is_err());
        assert!(from_str::<serde_json::Value>(&deep).is_err());
    }

    #[test]
    fn streams_skip_empty_documents() {
        let docs = documents("---\n---\na: 1\n---\nb: [x, 2]\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["b"][1], 2);
    }
}
