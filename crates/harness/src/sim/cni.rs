//! A container runtime's part of CNI (spec 1.0 "libcni" behaviour): run a conflist's plugins
//! in order for ADD (each gets the previous result as `prevResult`) and in reverse for DEL
//! (each gets the cached ADD result), with the environment and stdin the spec prescribes,
//! executed in the node's network namespace.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

/// One invocation's parameters.
#[derive(Clone, Debug)]
pub struct CniCall {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// `K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_UID=..`
    pub args: String,
}

#[derive(Debug, thiserror::Error)]
#[error("CNI {command} failed in plugin {plugin}: {message}")]
pub struct CniFailure {
    pub(crate) command: String,
    pub(crate) plugin: String,
    pub message: String,
}

/// Runs `command` for one plugin configuration. Returns its stdout parsed as JSON (`Null`
/// when empty).
pub fn invoke(node_netns: &str, plugin_dirs: &[PathBuf], command: &str, call: &CniCall, conf: &Value) -> Result<Value, CniFailure> {
    let ty = conf["type"].as_str().unwrap_or_default().to_string();
    let fail = |message: String| CniFailure { command: command.into(), plugin: ty.clone(), message };
    let bin = plugin_dirs
        .iter()
        .map(|d| d.join(&ty))
        .find(|p| p.exists())
        .ok_or_else(|| fail(format!("no plugin binary {ty:?} in {plugin_dirs:?}")))?;
    let path = std::env::join_paths(plugin_dirs).map_err(|e| fail(e.to_string()))?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", node_netns])
        .arg(&bin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &call.container_id)
        .env("CNI_NETNS", &call.netns)
        .env("CNI_IFNAME", &call.ifname)
        .env("CNI_ARGS", &call.args)
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", bin.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(conf.to_string().as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed: Value =
        if stdout.trim().is_empty() { Value::Null } else { serde_json::from_str(&stdout).unwrap_or(Value::String(stdout.to_string())) };
    if !out.status.success() {
        let msg = parsed.get("msg").and_then(Value::as_str).unwrap_or("").to_string();
        let details = parsed.get("details").and_then(Value::as_str).unwrap_or("").to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(fail(format!("{msg} {details} {stderr}").trim().to_string()));
    }
    Ok(parsed)
}

fn plugin_conf(list: &Value, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut conf = plugin.clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    if let Some(p) = prev {
        conf["prevResult"] = p.clone();
    }
    conf
}

/// ADD through the whole chain; returns the final result.
pub(crate) fn add(node_netns: &str, plugin_dirs: &[PathBuf], list: &Value, call: &CniCall) -> Result<Value, CniFailure> {
    let mut prev: Option<Value> = None;
    for plugin in list["plugins"].as_array().into_iter().flatten() {
        let result = invoke(node_netns, plugin_dirs, "ADD", call, &plugin_conf(list, plugin, prev.as_ref()))?;
        prev = Some(result);
    }
    prev.ok_or_else(|| CniFailure { command: "ADD".into(), plugin: "-".into(), message: "empty plugin list".into() })
}

/// DEL through the chain in reverse, with the cached ADD result; every plugin is called even
/// when one fails (the runtime must not leak), the first error is returned.
pub(crate) fn del(
    node_netns: &str,
    plugin_dirs: &[PathBuf],
    list: &Value,
    call: &CniCall,
    cached: Option<&Value>,
) -> Result<(), CniFailure> {
    let mut first = None;
    for plugin in list["plugins"].as_array().into_iter().flatten().rev() {
        if let Err(e) = invoke(node_netns, plugin_dirs, "DEL", call, &plugin_conf(list, plugin, cached)) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// The IPs in a CNI result, without prefix lengths.
pub(crate) fn result_ips(result: &Value) -> Vec<std::net::IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect()
}

/// The conflist for one simulated node: bridge + host-local, then ferry-cni.
pub(crate) fn node_conflist(subnet: &str, data_dir: &Path, agent_socket: &Path, cluster_state: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "ferry-sim",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "isDefaultGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir}
            },
            {
                "type": "ferry-cni",
                "agent_socket": agent_socket,
                "cluster_state": cluster_state,
                "agent_timeout_seconds": 30
            }
        ]
    })
}
