//! The plugin's single error type and its rendering as a CNI error result.
//!
//! Every failure the runtime can see goes through `CniError`, so the CNI error code, the
//! operator-facing message and the details all come from one place.

use serde::Serialize;

/// Codes defined by the CNI specification; 100 and above are ours.
pub mod code {
    pub(crate) const INCOMPATIBLE_VERSION: u32 = 1;
    pub(crate) const INVALID_ENV: u32 = 4;
    pub(crate) const IO_FAILURE: u32 = 5;
    pub(crate) const DECODE_FAILURE: u32 = 6;
    pub(crate) const INVALID_CONFIG: u32 = 7;
    pub(crate) const TRY_AGAIN_LATER: u32 = 11;
    pub(crate) const PLUGIN_NOT_AVAILABLE: u32 = 50;
    pub(crate) const AGENT_REFUSED: u32 = 100;
    pub(crate) const AGENT_BAD_REPLY: u32 = 101;
    pub(crate) const INTERNAL: u32 = 102;
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI version {requested:?} is not supported by ferry-cni (supported: {supported})")]
    IncompatibleVersion { requested: String, supported: String },

    #[error("environment variable {name} is missing or empty")]
    MissingEnv { name: &'static str },

    #[error("environment variable {name} is not valid UTF-8")]
    NonUtf8Env { name: &'static str },

    #[error("CNI_ARGS is malformed: {reason}")]
    MalformedCniArgs { reason: String },

    #[error("CNI_ARGS does not contain {key}; ferry-cni needs it to identify the pod")]
    MissingCniArg { key: &'static str },

    #[error("unknown CNI_COMMAND {0:?}")]
    UnknownCommand(String),

    #[error("could not read the network config from stdin: {0}")]
    Io(#[source] std::io::Error),

    #[error("the network config on stdin could not be decoded: {0}")]
    Decode(String),

    #[error("invalid network config: {0}")]
    InvalidConfig(String),

    #[error("invalid network config: prevResult is missing; ferry-cni must be chained after an IPAM-capable plugin such as bridge")]
    MissingPrevResult,

    #[error("ferry node agent unreachable at {socket}")]
    AgentUnreachable { socket: String, reason: String },

    #[error("ferry node agent at {socket} sent an answer that is not valid protocol")]
    AgentBadReply { socket: String, reason: String },

    #[error("ferry node agent refused {command} for pod {namespace}/{name}")]
    AgentRefused { command: &'static str, namespace: String, name: String, message: String },

    #[error(
        "ferry node agent unreachable at {socket}: pod {namespace}/{name} must be captured into the mesh and must not start uncaptured"
    )]
    AmbientUncaptured { socket: String, namespace: String, name: String, cause: String },

    #[error("ferry node agent unreachable at {socket}: cannot tell whether pod {namespace}/{name} must be captured ({why}), so it must not start uncaptured")]
    FailClosed { socket: String, namespace: String, name: String, why: String, cause: String },

    #[error("ferry node agent at {socket} is not available")]
    AgentNotAvailable { socket: String, reason: String },

    #[error("ferry-cni hit an internal error: {0}")]
    Internal(String),
}

impl CniError {
    pub(crate) fn code(&self) -> u32 {
        use CniError::*;
        match self {
            IncompatibleVersion { .. } => code::INCOMPATIBLE_VERSION,
            MissingEnv { .. } | NonUtf8Env { .. } | MalformedCniArgs { .. } | MissingCniArg { .. } | UnknownCommand(_) => code::INVALID_ENV,
            Io(_) => code::IO_FAILURE,
            Decode(_) => code::DECODE_FAILURE,
            InvalidConfig(_) | MissingPrevResult => code::INVALID_CONFIG,
            AgentUnreachable { .. } | AmbientUncaptured { .. } | FailClosed { .. } => code::TRY_AGAIN_LATER,
            AgentNotAvailable { .. } => code::PLUGIN_NOT_AVAILABLE,
            AgentRefused { .. } => code::AGENT_REFUSED,
            AgentBadReply { .. } => code::AGENT_BAD_REPLY,
            Internal(_) => code::INTERNAL,
        }
    }

    /// Extra context for the operator: the agent's own words, or the low-level cause.
    pub(crate) fn details(&self) -> String {
        use CniError::*;
        match self {
            AgentRefused { message, .. } => message.clone(),
            AgentUnreachable { reason, .. } | AgentBadReply { reason, .. } | AgentNotAvailable { reason, .. } => reason.clone(),
            AmbientUncaptured { cause, .. } | FailClosed { cause, .. } => cause.clone(),
            UnknownCommand(_) => "expected one of ADD, DEL, CHECK, VERSION, STATUS, GC".to_string(),
            MissingEnv { .. } | NonUtf8Env { .. } | MalformedCniArgs { .. } | MissingCniArg { .. } => {
                "the container runtime must set CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME)".to_string()
            }
            _ => String::new(),
        }
    }

    /// The JSON error object the runtime reads from stdout.
    pub(crate) fn to_cni_json(&self, cni_version: &str) -> String {
        let reply = ErrorReply { cni_version, code: self.code(), msg: self.to_string(), details: self.details() };
        // Serialising plain strings and an integer cannot fail; the fallback keeps stdout valid
        // JSON even if that ever changes.
        serde_json::to_string(&reply).unwrap_or_else(|_| format!(r#"{{"cniVersion":"1.0.0","code":{}}}"#, self.code()))
    }
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    code: u32,
    msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    details: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_renders_agent_message_as_details() {
        let err = CniError::AgentRefused { command: "ADD", namespace: "ns".into(), name: "p".into(), message: "no slot".into() };
        let v: serde_json::Value = serde_json::from_str(&err.to_cni_json("1.0.0")).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["code"], 100);
        assert_eq!(v["msg"], "ferry node agent refused ADD for pod ns/p");
        assert_eq!(v["details"], "no slot");
    }

    #[test]
    fn empty_details_are_omitted() {
        let v: serde_json::Value = serde_json::from_str(&CniError::Decode("eof".into()).to_cni_json("0.4.0")).unwrap();
        assert_eq!(v["code"], 6);
        assert!(v.get("details").is_none());
    }
}
