//! The local state file: workloads, services and policies in the YAML schema Istio's ztunnel
//! reads from `LOCAL_XDS_PATH` (protocols.md §6), so one file drives either proxy.
//!
//! Unknown keys are errors. A policy entry that cannot be read fails closed in its scope (an
//! ALLOW allows nothing, anything else denies everything) with a note naming its line, and the
//! rest of the file applies. Any other document that fails to parse or validate is reported
//! with its line and column and yields nothing: the caller keeps its last good state.

mod convert;
mod read;
mod render;
mod schema;

use crate::state::StateInput;
pub use render::to_yaml;

#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    #[error("local config {origin}: line {line}, column {column}: {message}")]
    Syntax { origin: String, line: usize, column: usize, message: String },
    #[error("local config {origin}: line {line}: {message}")]
    Invalid { origin: String, line: usize, message: String },
}

/// Parses a local config document; `origin` names it in errors (a path, or `LOCAL_XDS`).
pub fn parse(text: &str, origin: &str) -> Result<StateInput, LocalConfigError> {
    let doc: schema::LocalConfig = if text.trim().is_empty() {
        schema::LocalConfig::default()
    } else {
        read::read(text).map_err(|e| LocalConfigError::Syntax {
            origin: origin.to_string(),
            line: e.line,
            column: e.column,
            message: e.message,
        })?
    };
    doc.into_state().map_err(|e| LocalConfigError::Invalid { origin: origin.to_string(), line: e.line, message: e.message })
}

#[cfg(test)]
mod tests;
