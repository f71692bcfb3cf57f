//! ferry-cni: a chained CNI plugin that reports pod sandboxes to the ferry node agent and refuses to let an ambient pod start uncaptured.
//!
//! The runtime runs it after `bridge` + `host-local`. `run` is the whole plugin as a function
//! of the environment and stdin so tests can drive it without a process; `execute` adds the
//! reply rendering and log line that `main` prints.
#![forbid(unsafe_code)]

pub mod agent;
pub mod cluster_state;
pub mod config;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod protocol;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

use std::io::{Read, Write};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::cluster_state::Lookup;
use crate::config::{Command, NetConf, PodContext, MAX_CONFIG_BYTES};
use crate::protocol::AgentRequest;
pub use crate::{config::Env, error::CniError};

/// What one invocation prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The CNI result or error object; `None` when the command has no output.
    pub(crate) stdout: Option<String>,
    pub(crate) exit_code: u8,
    /// The single stderr line recording command, pod and outcome.
    pub(crate) log_line: String,
}

/// A successful command: what to print and a note for the log.
struct Outcome {
    stdout: Option<String>,
    note: String,
}

impl Outcome {
    fn quiet(note: impl Into<String>) -> Self {
        Outcome { stdout: None, note: note.into() }
    }
}

/// Runs one CNI command. `Ok(Some(json))` is the result to print, `Ok(None)` a silent success.
#[cfg(test)]
pub(crate) fn run(env: &Env, stdin: &[u8]) -> Result<Option<String>, CniError> {
    dispatch(env, stdin).map(|outcome| outcome.stdout)
}

/// Runs one CNI command and renders everything the process must print.
pub fn execute(env: &Env, stdin: &[u8]) -> Invocation {
    match dispatch(env, stdin) {
        Ok(outcome) => Invocation { stdout: outcome.stdout, exit_code: 0, log_line: log_line(env, &format!("ok: {}", outcome.note)) },
        Err(err) => failure(env, stdin, &err),
    }
}

/// The invocation for an error, including ones raised before `execute` could run.
pub fn failure(env: &Env, stdin: &[u8], err: &CniError) -> Invocation {
    let details = match err.details() {
        d if d.is_empty() => String::new(),
        d => format!(" ({d})"),
    };
    Invocation {
        stdout: Some(err.to_cni_json(&config::reply_version(stdin))),
        exit_code: 1,
        log_line: log_line(env, &format!("failed with code {}: {err}{details}", err.code())),
    }
}

impl Invocation {
    /// Writes the log line and the reply; returns the exit code, forced to 1 if stdout is gone
    /// because the runtime would then see no result at all.
    pub fn emit(&self, stdout: &mut impl Write, stderr: &mut impl Write) -> u8 {
        let _ = writeln!(stderr, "{}", self.log_line);
        if let Some(reply) = &self.stdout {
            if writeln!(stdout, "{reply}").and_then(|()| stdout.flush()).is_err() {
                return 1;
            }
        }
        self.exit_code
    }
}

/// Reads stdin, stopping one byte past the limit so an oversized config is reported, not buffered.
pub fn read_input(input: impl Read) -> Result<Vec<u8>, CniError> {
    let mut bytes = Vec::new();
    input.take(MAX_CONFIG_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(CniError::Io)?;
    Ok(bytes)
}

fn log_line(env: &Env, outcome: &str) -> String {
    let command: String = env
        .get(std::ffi::OsStr::new("CNI_COMMAND"))
        .map(|c| c.to_string_lossy().chars().take(16).collect())
        .unwrap_or_else(|| "?".to_string());
    let line = format!("ferry-cni: {command} pod={} {outcome}", config::pod_label(env));
    // Values come from the runtime and the agent; a newline in them must not forge a log line.
    line.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn dispatch(env: &Env, stdin: &[u8]) -> Result<Outcome, CniError> {
    match config::command(env)? {
        Command::Version => Ok(Outcome { stdout: Some(version_reply()?), note: "reported supported versions".into() }),
        // The agent owns all node state and reconciles it itself; there is nothing to collect here.
        Command::Gc => Ok(Outcome::quiet("nothing to collect")),
        Command::Add => cmd_add(env, &config::parse_netconf(stdin)?),
        Command::Del => cmd_del(env, &config::parse_netconf(stdin)?),
        Command::Check => cmd_check(env, &config::parse_netconf(stdin)?),
        Command::Status => cmd_status(&config::parse_netconf(stdin)?),
    }
}

#[derive(Serialize)]
struct VersionReply {
    #[serde(rename = "cniVersion")]
    cni_version: &'static str,
    #[serde(rename = "supportedVersions")]
    supported_versions: [&'static str; 5],
}

fn version_reply() -> Result<String, CniError> {
    let reply = VersionReply { cni_version: config::FALLBACK_VERSION, supported_versions: config::SUPPORTED_VERSIONS };
    serde_json::to_string(&reply).map_err(|e| CniError::Internal(format!("cannot encode VERSION reply: {e}")))
}

fn cmd_add(env: &Env, conf: &NetConf) -> Result<Outcome, CniError> {
    let pod = config::pod_context(env, Command::Add)?;
    let prev = conf.prev_result.as_ref().ok_or(CniError::MissingPrevResult)?;
    let ips = config::pod_ips(prev)?;
    let note = ask_agent_or_fallback(conf, &pod, AgentRequest::Add(pod.event(ips)))?;
    Ok(Outcome { stdout: Some(chained_result(prev, &conf.cni_version)?), note })
}

/// The runtime sends prevResult on CHECK too, but nothing here depends on it, so its absence is
/// not worth failing a health check over.
fn cmd_check(env: &Env, conf: &NetConf) -> Result<Outcome, CniError> {
    let pod = config::pod_context(env, Command::Check)?;
    let ips = match &conf.prev_result {
        Some(prev) => config::pod_ips(prev)?,
        None => Vec::new(),
    };
    let note = ask_agent_or_fallback(conf, &pod, AgentRequest::Check(pod.event(ips)))?;
    Ok(Outcome::quiet(note))
}

/// DEL must converge: the runtime retries it until it succeeds, so anything short of the agent
/// explicitly refusing counts as done. A restarted agent reconciles from its own state.
fn cmd_del(env: &Env, conf: &NetConf) -> Result<Outcome, CniError> {
    let pod = config::pod_context(env, Command::Del)?;
    let ips = conf.prev_result.as_ref().and_then(|prev| config::pod_ips(prev).ok()).unwrap_or_default();
    let request = AgentRequest::Del(pod.event(ips));
    match agent::exchange(&conf.agent_socket, conf.agent_timeout, &request) {
        Ok(reply) if reply.ok => Ok(Outcome::quiet("agent released the pod")),
        Ok(reply) => Err(refused(&request, &pod, reply.message)),
        Err(err @ (CniError::AgentUnreachable { .. } | CniError::AgentBadReply { .. })) => {
            Ok(Outcome::quiet(format!("{err}: {}; treating DEL as done", err.details())))
        }
        Err(err) => Err(err),
    }
}

fn cmd_status(conf: &NetConf) -> Result<Outcome, CniError> {
    let socket = conf.agent_socket.display().to_string();
    match agent::exchange(&conf.agent_socket, conf.agent_timeout, &AgentRequest::Status) {
        Ok(reply) if reply.ok => Ok(Outcome::quiet("agent is ready")),
        Ok(reply) if reply.message.is_empty() => {
            Err(CniError::AgentNotAvailable { socket, reason: "the agent reports it is not ready".into() })
        }
        Ok(reply) => Err(CniError::AgentNotAvailable { socket, reason: format!("the agent reports it is not ready: {}", reply.message) }),
        Err(err) => {
            Err(CniError::AgentNotAvailable { socket, reason: if err.details().is_empty() { err.to_string() } else { err.details() } })
        }
    }
}

fn refused(request: &AgentRequest, pod: &PodContext, message: String) -> CniError {
    CniError::AgentRefused { command: request.command_name(), namespace: pod.namespace.clone(), name: pod.name.clone(), message }
}

/// Asks the agent; if it cannot be reached, decides from cluster state so a pod that must be
/// captured never starts without capture.
fn ask_agent_or_fallback(conf: &NetConf, pod: &PodContext, request: AgentRequest) -> Result<String, CniError> {
    match agent::exchange(&conf.agent_socket, conf.agent_timeout, &request) {
        Ok(reply) if reply.ok => Ok(format!("agent accepted, enrolled={}", reply.enrolled)),
        Ok(reply) => Err(refused(&request, pod, reply.message)),
        Err(CniError::AgentUnreachable { socket, reason }) => fallback(conf, pod, socket, reason),
        Err(err) => Err(err),
    }
}

fn fallback(conf: &NetConf, pod: &PodContext, socket: String, cause: String) -> Result<String, CniError> {
    let fail_closed = |why: String| CniError::FailClosed {
        socket: socket.clone(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        why,
        cause: cause.clone(),
    };
    let Some(state) = &conf.cluster_state else {
        return Err(fail_closed("no cluster_state is configured to decide without the agent".into()));
    };
    match cluster_state::lookup(state, &pod.namespace, &pod.name) {
        Lookup::Skip(reason) => Ok(format!(
            "agent unreachable at {socket} ({cause}); pod {}/{} is not captured per {} ({reason}), it starts without capture",
            pod.namespace,
            pod.name,
            state.display()
        )),
        Lookup::Enroll(why) => Err(CniError::AmbientUncaptured {
            cause: format!("{cause}; {why}"),
            socket,
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
        }),
        Lookup::Undecided(why) => Err(fail_closed(why)),
    }
}

/// A chained plugin's result is the previous result unchanged, stamped with our config's version.
fn chained_result(prev: &Map<String, Value>, cni_version: &str) -> Result<String, CniError> {
    let mut result = prev.clone();
    result.insert("cniVersion".to_string(), Value::String(cni_version.to_string()));
    serde_json::to_string(&result).map_err(|e| CniError::Internal(format!("cannot encode the result: {e}")))
}
