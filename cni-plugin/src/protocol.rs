//! Wire shapes of the plugin ↔ node agent protocol (one JSON object per line, one request per connection).
//!
//! This module has no I/O and depends only on serde so the agent side can share the exact same
//! definitions. Field names are the contract; do not rename them.
//!
//! ```text
//! → {"command":"ADD","container_id":"c1","netns":"/var/run/netns/p1","ifname":"eth0","pod_namespace":"ns","pod_name":"name","pod_uid":"uid","ips":["198.18.1.5"]}
//! ← {"ok":true,"enrolled":true,"message":"..."}
//! → {"command":"STATUS"}
//! ← {"ok":false,"message":"why"}
//! ```

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Upper bound for one protocol line, either direction. Real messages are a few hundred bytes;
/// the bound stops a confused peer from making the other side buffer without limit.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// One request. The `command` tag sits in the same object as the event fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "UPPERCASE")]
pub enum AgentRequest {
    /// A pod sandbox got its network; the agent enrols it if its namespace is ambient.
    Add(PodEvent),
    /// The sandbox is going away; the agent forgets it. Must be idempotent.
    Del(PodEvent),
    /// The runtime asks whether the pod is still set up as the agent expects.
    Check(PodEvent),
    /// Liveness probe from the plugin's CNI STATUS.
    Status,
}

/// What the plugin knows about the pod sandbox at the time of the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEvent {
    /// The sandbox (CNI_CONTAINERID): with the pod uid, what a DEL must match.
    pub container_id: String,
    /// Path of the pod's network namespace; empty on DEL when the runtime already removed it.
    #[serde(default)]
    pub netns: String,
    pub(crate) ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    #[serde(default)]
    pub pod_uid: String,
    /// Addresses from the previous plugin's result, without prefix length.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

/// The agent's single-line answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentResponse {
    pub ok: bool,
    /// Whether the pod is now captured; `false` for pods outside ambient namespaces.
    #[serde(default)]
    pub enrolled: bool,
    #[serde(default)]
    pub message: String,
}

impl AgentRequest {
    /// Upper-case name as it appears on the wire and in CNI_COMMAND.
    pub fn command_name(&self) -> &'static str {
        match self {
            AgentRequest::Add(_) => "ADD",
            AgentRequest::Del(_) => "DEL",
            AgentRequest::Check(_) => "CHECK",
            AgentRequest::Status => "STATUS",
        }
    }

    /// The request as one line, newline included.
    pub(crate) fn to_line(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut line = serde_json::to_vec(self)?;
        line.push(b'\n');
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> PodEvent {
        PodEvent {
            container_id: "c1".into(),
            netns: "/var/run/netns/p1".into(),
            ifname: "eth0".into(),
            pod_namespace: "ns".into(),
            pod_name: "name".into(),
            pod_uid: "uid".into(),
            ips: vec!["198.18.1.5".parse().unwrap()],
        }
    }

    #[test]
    fn add_request_has_the_documented_shape() {
        let line = String::from_utf8(AgentRequest::Add(event()).to_line().unwrap()).unwrap();
        assert_eq!(
            line,
            concat!(
                r#"{"command":"ADD","container_id":"c1","netns":"/var/run/netns/p1","ifname":"eth0","#,
                r#""pod_namespace":"ns","pod_name":"name","pod_uid":"uid","ips":["198.18.1.5"]}"#,
                "\n"
            )
        );
    }

    #[test]
    fn status_request_is_only_the_command() {
        assert_eq!(serde_json::to_string(&AgentRequest::Status).unwrap(), r#"{"command":"STATUS"}"#);
    }

    #[test]
    fn requests_round_trip_for_the_agent_side() {
        for req in [AgentRequest::Add(event()), AgentRequest::Del(event()), AgentRequest::Check(event()), AgentRequest::Status] {
            let back: AgentRequest = serde_json::from_slice(&req.to_line().unwrap()).unwrap();
            assert_eq!(back, req);
        }
    }

    #[test]
    fn response_optional_fields_default() {
        let cases = [
            (r#"{"ok":true,"enrolled":true,"message":"m"}"#, AgentResponse { ok: true, enrolled: true, message: "m".into() }),
            (r#"{"ok":false,"message":"why"}"#, AgentResponse { ok: false, enrolled: false, message: "why".into() }),
            (r#"{"ok":true,"extra":1}"#, AgentResponse { ok: true, enrolled: false, message: String::new() }),
        ];
        for (line, want) in cases {
            assert_eq!(serde_json::from_str::<AgentResponse>(line).unwrap(), want, "{line}");
        }
        assert!(serde_json::from_str::<AgentResponse>(r#"{"enrolled":true}"#).is_err(), "ok is mandatory");
    }
}
