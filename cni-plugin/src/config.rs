//! Parsing of what the container runtime hands us: CNI_* environment variables, CNI_ARGS and the network config on stdin.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::CniError;
use crate::protocol::PodEvent;

/// The process environment as given to `run`; a map so tests need not touch the real one.
pub type Env = HashMap<OsString, OsString>;

pub(crate) const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// Used in replies when the config gives us no usable version of its own.
pub(crate) const FALLBACK_VERSION: &str = "1.0.0";
pub(crate) const DEFAULT_AGENT_SOCKET: &str = "/var/run/ferry/cni.sock";
pub(crate) const DEFAULT_AGENT_TIMEOUT_SECS: u64 = 30;
/// Above this a pod start would stall for longer than any runtime waits; also keeps deadline
/// arithmetic far from overflow.
pub(crate) const MAX_AGENT_TIMEOUT_SECS: u64 = 3600;
/// Network configs with a prevResult are a few KiB; anything near this is not a config.
pub(crate) const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub(crate) fn parse(raw: &str) -> Result<Self, CniError> {
        Ok(match raw {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            // Cap the echo so a hostile value cannot bloat the error reply.
            other => return Err(CniError::UnknownCommand(other.chars().take(64).collect())),
        })
    }
}

/// The parts of the network config this plugin acts on.
#[derive(Debug, Clone)]
pub(crate) struct NetConf {
    pub(crate) cni_version: String,
    pub(crate) agent_socket: PathBuf,
    pub(crate) cluster_state: Option<PathBuf>,
    pub(crate) agent_timeout: Duration,
    pub(crate) prev_result: Option<Map<String, Value>>,
}

/// Pod identity and sandbox details from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodContext {
    pub(crate) container_id: String,
    pub(crate) netns: String,
    pub(crate) ifname: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) uid: String,
}

impl PodContext {
    pub(crate) fn event(&self, ips: Vec<IpAddr>) -> PodEvent {
        PodEvent {
            container_id: self.container_id.clone(),
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            pod_namespace: self.namespace.clone(),
            pod_name: self.name.clone(),
            pod_uid: self.uid.clone(),
            ips,
        }
    }
}

/// A variable's value; absent and empty are the same to the CNI spec.
pub(crate) fn env_var(env: &Env, name: &'static str) -> Result<Option<String>, CniError> {
    match env.get(&OsString::from(name)) {
        None => Ok(None),
        Some(raw) => match raw.to_str() {
            Some("") => Ok(None),
            Some(s) => Ok(Some(s.to_string())),
            None => Err(CniError::NonUtf8Env { name }),
        },
    }
}

pub(crate) fn required_env(env: &Env, name: &'static str) -> Result<String, CniError> {
    env_var(env, name)?.ok_or(CniError::MissingEnv { name })
}

pub(crate) fn command(env: &Env) -> Result<Command, CniError> {
    Command::parse(&required_env(env, "CNI_COMMAND")?)
}

/// Splits `K=V;K=V`. Empty segments are tolerated (runtimes emit trailing `;`); a segment
/// without `=` is rejected because guessing could attach a pod to the wrong name.
pub(crate) fn parse_cni_args(raw: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for segment in raw.split(';') {
        let segment = segment.trim();
        if segment.is_empty() {
            continue;
        }
        let Some((key, value)) = segment.split_once('=') else {
            let shown: String = segment.chars().take(64).collect();
            return Err(CniError::MalformedCniArgs { reason: format!("segment {shown:?} is not KEY=VALUE") });
        };
        if key.is_empty() {
            return Err(CniError::MalformedCniArgs { reason: "a segment has an empty key".to_string() });
        }
        out.insert(key.to_string(), value.to_string());
    }
    Ok(out)
}

/// Gathers the pod context. DEL is lenient about everything that may already be gone or that
/// the agent can find by container id, because a failing DEL wedges pod deletion.
pub(crate) fn pod_context(env: &Env, cmd: Command) -> Result<PodContext, CniError> {
    let strict = cmd != Command::Del;
    let container_id = required_env(env, "CNI_CONTAINERID")?;
    let ifname = required_env(env, "CNI_IFNAME")?;
    let netns = if strict { required_env(env, "CNI_NETNS")? } else { env_var(env, "CNI_NETNS")?.unwrap_or_default() };
    let args = match env_var(env, "CNI_ARGS")? {
        Some(raw) => parse_cni_args(&raw)?,
        None if strict => return Err(CniError::MissingEnv { name: "CNI_ARGS" }),
        None => BTreeMap::new(),
    };
    let arg = |key: &'static str| -> Result<String, CniError> {
        match args.get(key).filter(|v| !v.is_empty()) {
            Some(v) => Ok(v.clone()),
            None if strict => Err(CniError::MissingCniArg { key }),
            None => Ok(String::new()),
        }
    };
    Ok(PodContext {
        container_id,
        netns,
        ifname,
        namespace: arg("K8S_POD_NAMESPACE")?,
        name: arg("K8S_POD_NAME")?,
        uid: args.get("K8S_POD_UID").cloned().unwrap_or_default(),
    })
}

/// Best-effort `namespace/name` for the log line, never failing.
pub(crate) fn pod_label(env: &Env) -> String {
    let args = env_var(env, "CNI_ARGS").ok().flatten().and_then(|raw| parse_cni_args(&raw).ok()).unwrap_or_default();
    let get = |k: &str| args.get(k).map(|v| v.chars().take(253).collect::<String>()).unwrap_or_else(|| "?".to_string());
    format!("{}/{}", get("K8S_POD_NAMESPACE"), get("K8S_POD_NAME"))
}

pub(crate) fn parse_netconf(stdin: &[u8]) -> Result<NetConf, CniError> {
    if stdin.len() > MAX_CONFIG_BYTES {
        return Err(CniError::Decode(format!("input is {} bytes, more than the {MAX_CONFIG_BYTES} allowed", stdin.len())));
    }
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::Decode("stdin is empty; the runtime must pass the network config".to_string()));
    }
    let value: Value = serde_json::from_slice(stdin).map_err(|e| CniError::Decode(format!("not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(CniError::InvalidConfig("the network config must be a JSON object".to_string()));
    };
    let cni_version = cni_version(&obj)?;
    Ok(NetConf {
        cni_version,
        agent_socket: path_field(&obj, "agent_socket")?.unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET)),
        cluster_state: path_field(&obj, "cluster_state")?,
        agent_timeout: agent_timeout(&obj)?,
        prev_result: prev_result(&obj)?,
    })
}

fn cni_version(obj: &Map<String, Value>) -> Result<String, CniError> {
    let version = match obj.get("cniVersion") {
        Some(Value::String(v)) => v,
        None | Some(Value::Null) => return Err(CniError::InvalidConfig("cniVersion is missing".to_string())),
        Some(_) => return Err(CniError::InvalidConfig("cniVersion must be a string".to_string())),
    };
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(CniError::IncompatibleVersion {
            requested: version.chars().take(32).collect(),
            supported: SUPPORTED_VERSIONS.join(", "),
        });
    }
    Ok(version.clone())
}

/// An optional string path; empty counts as absent so templated configs can blank it out.
fn path_field(obj: &Map<String, Value>, key: &str) -> Result<Option<PathBuf>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(PathBuf::from(s))),
        Some(_) => Err(CniError::InvalidConfig(format!("{key} must be a string path"))),
    }
}

fn agent_timeout(obj: &Map<String, Value>) -> Result<Duration, CniError> {
    let secs = match obj.get("agent_timeout_seconds") {
        None | Some(Value::Null) => DEFAULT_AGENT_TIMEOUT_SECS,
        Some(v) => v.as_u64().filter(|s| (1..=MAX_AGENT_TIMEOUT_SECS).contains(s)).ok_or_else(|| {
            CniError::InvalidConfig(format!("agent_timeout_seconds must be a whole number from 1 to {MAX_AGENT_TIMEOUT_SECS}"))
        })?,
    };
    Ok(Duration::from_secs(secs))
}

fn prev_result(obj: &Map<String, Value>) -> Result<Option<Map<String, Value>>, CniError> {
    match obj.get("prevResult") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(_) => Err(CniError::InvalidConfig("prevResult must be a JSON object".to_string())),
    }
}

/// Pod addresses from `prevResult.ips[].address`, prefix length stripped, duplicates dropped.
pub(crate) fn pod_ips(prev: &Map<String, Value>) -> Result<Vec<IpAddr>, CniError> {
    let entries = match prev.get("ips") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(CniError::InvalidConfig("prevResult.ips must be an array".to_string())),
    };
    let mut ips = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let Some(address) = entry.get("address").and_then(Value::as_str) else {
            return Err(CniError::InvalidConfig(format!("prevResult.ips[{i}].address is missing or not a string")));
        };
        let ip = parse_cidr_address(address)
            .ok_or_else(|| CniError::InvalidConfig(format!("prevResult.ips[{i}].address {:?} is not an IP/prefix", truncate(address))))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

/// `198.18.1.5/24` → 198.18.1.5. A bare address is accepted too; a bad prefix is not, since it
/// means the previous plugin produced something we do not understand.
fn parse_cidr_address(s: &str) -> Option<IpAddr> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match prefix {
        None => Some(ip),
        Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).map(|_| ip),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The version to stamp on a reply: the config's own when it is one we speak.
pub(crate) fn reply_version(stdin: &[u8]) -> String {
    if stdin.len() > MAX_CONFIG_BYTES {
        return FALLBACK_VERSION.to_string();
    }
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| FALLBACK_VERSION.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_table() {
        let ok: &[(&str, &[(&str, &str)])] = &[
            ("", &[]),
            ("IgnoreUnknown=1", &[("IgnoreUnknown", "1")]),
            (
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=name;K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID=uid",
                &[
                    ("IgnoreUnknown", "1"),
                    ("K8S_POD_NAMESPACE", "ns"),
                    ("K8S_POD_NAME", "name"),
                    ("K8S_POD_INFRA_CONTAINER_ID", "x"),
                    ("K8S_POD_UID", "uid"),
                ],
            ),
            ("K8S_POD_NAME=a;;K8S_POD_NAME=b;", &[("K8S_POD_NAME", "b")]),
            ("A=x=y", &[("A", "x=y")]),
            ("A=", &[("A", "")]),
            (" A=1 ; B=2 ", &[("A", "1"), ("B", "2")]),
        ];
        for (raw, want) in ok {
            let got = parse_cni_args(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
            let want: BTreeMap<String, String> = want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            assert_eq!(got, want, "{raw:?}");
        }
        for bad in ["K8S_POD_NAME", "A=1;junk", "=value"] {
            let err = parse_cni_args(bad).unwrap_err();
            assert_eq!(err.code(), 4, "{bad:?}");
        }
    }

    #[test]
    fn cidr_addresses() {
        let cases = [
            ("198.18.1.5/24", Some("198.18.1.5")),
            ("198.18.1.5", Some("198.18.1.5")),
            ("fd00::5/64", Some("fd00::5")),
            ("1.2.3.4/33", None),
            ("fd00::5/129", None),
            ("1.2.3.4/", None),
            ("nope/24", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_cidr_address(input), want.map(|w| w.parse().unwrap()), "{input:?}");
        }
    }

    #[test]
    fn netconf_defaults_and_limits() {
        let conf = parse_netconf(br#"{"cniVersion":"1.0.0"}"#).unwrap();
        assert_eq!(conf.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert_eq!(conf.agent_timeout, Duration::from_secs(30));
        assert!(conf.cluster_state.is_none() && conf.prev_result.is_none());

        let bad_configs: &[(&[u8], u32)] = &[
            (br#"{"cniVersion":"1.0.0","agent_timeout_seconds":0}"#, 7),
            (br#"{"cniVersion":"1.0.0","agent_timeout_seconds":-1}"#, 7),
            (br#"{"cniVersion":"1.0.0","agent_timeout_seconds":1.5}"#, 7),
            (br#"{"cniVersion":"1.0.0","agent_timeout_seconds":99999999999}"#, 7),
            (br#"{"cniVersion":"1.0.0","agent_socket":5}"#, 7),
            (br#"{"cniVersion":"1.0.0","prevResult":[]}"#, 7),
            (br#"{"cniVersion":1}"#, 7),
            (br#"{}"#, 7),
            (br#"{"cniVersion":"0.2.0"}"#, 1),
            (b"", 6),
            (b"{", 6),
        ];
        for (input, code) in bad_configs {
            let err = parse_netconf(input).unwrap_err();
            assert_eq!(err.code(), *code, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn reply_version_only_echoes_supported_versions() {
        assert_eq!(reply_version(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
        assert_eq!(reply_version(br#"{"cniVersion":"9.9.9"}"#), "1.0.0");
        assert_eq!(reply_version(b"garbage"), "1.0.0");
    }
}
