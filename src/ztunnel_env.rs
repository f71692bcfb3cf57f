//! The ztunnel settings whose behaviour is more than a value: they follow ztunnel's rules
//! (worker threads, the termination deadline, `PROXY_CONFIG`'s `concurrency`) or, where ferry
//! has no such feature, are refused at start with a message naming the variable, so nothing an
//! operator set for ztunnel is silently ignored.

use std::time::Duration;

/// The environment as ferry reads it (a closure, so tests need not touch the process's).
pub(crate) type EnvFn<'a> = &'a dyn Fn(&str) -> Option<String>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ZtunnelEnvError {
    #[error("{var}={value:?}: {reason}")]
    Invalid { var: &'static str, value: String, reason: String },
    #[error("{var}={value:?}: {reason}")]
    Unsupported { var: String, value: String, reason: &'static str },
}

fn invalid(var: &'static str, value: &str, reason: impl Into<String>) -> ZtunnelEnvError {
    ZtunnelEnvError::Invalid { var, value: value.to_string(), reason: reason.into() }
}

/// ztunnel's variables for features ferry does not have, the values that mean "off" (or
/// ztunnel's default), and why anything else is refused.
const UNSUPPORTED: &[(&str, &[&str], &str)] = &[
    ("NETWORK", &[""], "ferry does not support multi-network meshes (it never routes through network gateways); unset it"),
    ("CRL_PATH", &[""], "ferry does not check certificate revocation lists; unset it"),
    ("FAKE_CA", &["", "false"], "ferry has no fake CA; use FERRY_CA_DIR (a local CA, `ferry ca init DIR`) or CA_ADDRESS"),
    ("ENABLE_PROXY", &["", "true"], "ferry always runs its proxy"),
    ("UNSTABLE_ENABLE_SOCKS5", &["", "false"], "ferry has no SOCKS5 listener"),
    ("COMPLIANCE_POLICY", &[""], "ferry's crypto provider (ring) has no post-quantum hybrid; unset it"),
    ("PREFERED_SERVICE_NAMESPACE", &[""], "ferry does not prefer services by namespace; unset it"),
    ("ISTIO_META_DNS_CAPTURE", &["", "false"], "ferry has no DNS proxy, so DNS is not captured; set it to false"),
    ("ISTIO_META_DNS_PROXY_ADDR", &[""], "ferry has no DNS proxy; unset it"),
    ("DNS_PROXY_ADDR", &[""], "ferry has no DNS proxy; unset it"),
];

/// Refuses a ztunnel setting ferry would otherwise ignore.
pub(crate) fn refuse_unsupported(env: EnvFn) -> Result<(), ZtunnelEnvError> {
    for (var, accepted, reason) in UNSUPPORTED {
        if let Some(v) = env(var).filter(|v| !accepted.iter().any(|a| a.eq_ignore_ascii_case(v.trim()))) {
            return Err(ZtunnelEnvError::Unsupported { var: var.to_string(), value: v, reason });
        }
    }
    Ok(())
}

/// `PROXY_CONFIG` (mesh config's ProxyConfig, YAML or JSON): ferry honours `concurrency` (the
/// worker threads when `ZTUNNEL_WORKER_THREADS` is unset) and refuses every other key.
pub(crate) fn proxy_config_concurrency(raw: Option<&str>) -> Result<Option<u64>, ZtunnelEnvError> {
    let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else { return Ok(None) };
    let v: serde_json::Value = ferry_core::yaml::from_str(raw).map_err(|e| invalid("PROXY_CONFIG", raw, e.to_string()))?;
    let serde_json::Value::Object(map) = v else {
        return Err(invalid("PROXY_CONFIG", raw, "must be a mapping (mesh config's ProxyConfig)"));
    };
    let mut concurrency = None;
    for (k, v) in map {
        match (k.as_str(), v.as_u64()) {
            ("concurrency", Some(n)) => concurrency = Some(n),
            ("concurrency", None) => return Err(invalid("PROXY_CONFIG", raw, "concurrency must be a whole number")),
            ("proxyAdminPort" | "statusPort" | "statsPort", _) => {
                return Err(invalid(
                    "PROXY_CONFIG",
                    raw,
                    format!("{k} is not read; set FERRY_ADMIN_ADDR, FERRY_READINESS_ADDR or FERRY_STATS_ADDR"),
                ))
            }
            _ => return Err(invalid("PROXY_CONFIG", raw, format!("ferry honours only `concurrency`; `{k}` is not supported"))),
        }
    }
    Ok(concurrency)
}

/// ztunnel's termination deadline: `CONNECTION_TERMINATION_DEADLINE`, else from
/// `TERMINATION_GRACE_PERIOD_SECONDS` grace - 5 s above 10 s and grace - 1 s otherwise (so the
/// drain ends before the kubelet's SIGKILL), else 5 s; never below 1 s.
pub(crate) fn termination_deadline(explicit: Option<Duration>, grace: Option<u64>) -> Duration {
    let d = match (explicit, grace) {
        (Some(d), _) => d,
        (None, Some(g)) if g > 10 => Duration::from_secs(g - 5),
        (None, Some(g)) => Duration::from_secs(g.saturating_sub(1)),
        (None, None) => Duration::from_secs(5),
    };
    d.max(Duration::from_secs(1))
}

/// A Kubernetes CPU quantity (`2`, `1.5`, `500m`) as whole CPUs, rounded up.
fn cpu_quantity(var: &'static str, env: EnvFn) -> Result<Option<usize>, ZtunnelEnvError> {
    let Some(raw) = env(var).filter(|v| !v.trim().is_empty()) else { return Ok(None) };
    let cores = match raw.trim().strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0),
        None => raw.trim().parse::<f64>(),
    }
    .map_err(|_| invalid(var, &raw, "not a CPU quantity (e.g. 2, 1.5, 500m)"))?;
    if !(cores.is_finite() && cores > 0.0) {
        return Err(invalid(var, &raw, "must be a positive CPU quantity"));
    }
    Ok(Some(cores.ceil() as usize))
}

/// The CPUs to size by: `ZTUNNEL_RESOURCE_CPU_LIMIT`, else `ZTUNNEL_CPU_LIMIT`, else the cores
/// this process may run on.
fn cpu_count(env: EnvFn, available: usize) -> Result<usize, ZtunnelEnvError> {
    if let Some(limit) = cpu_quantity("ZTUNNEL_RESOURCE_CPU_LIMIT", env)? {
        return Ok(limit);
    }
    match env("ZTUNNEL_CPU_LIMIT").filter(|v| !v.trim().is_empty()) {
        Some(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| invalid("ZTUNNEL_CPU_LIMIT", &v, "must be a whole number of CPUs")),
        None => Ok(available),
    }
}

/// Data-path worker threads as ztunnel sizes them: `ZTUNNEL_WORKER_THREADS` (`N`, `N%` of the
/// CPUs, `0` = every CPU), else `PROXY_CONFIG`'s `concurrency` (`0` = every CPU), else the
/// CPU limit raised to the request, else max(2, ⌈25 % of the CPUs⌉, the request).
pub(crate) fn worker_threads(env: EnvFn, concurrency: Option<u64>, available: usize) -> Result<usize, ZtunnelEnvError> {
    const VAR: &str = "ZTUNNEL_WORKER_THREADS";
    if let Some(v) = env(VAR).filter(|v| !v.trim().is_empty()) {
        let s = v.trim();
        return match s.strip_suffix('%') {
            Some(p) => {
                let pct: f64 = p.trim().parse().map_err(|_| invalid(VAR, &v, "not a percentage"))?;
                if !(pct > 0.0 && pct <= 100.0) {
                    return Err(invalid(VAR, &v, "a percentage must be within (0%, 100%]"));
                }
                Ok(((cpu_count(env, available)? as f64 * pct / 100.0).ceil() as usize).max(1))
            }
            None => match s.parse::<usize>().map_err(|_| invalid(VAR, &v, "not a number or a percentage"))? {
                0 => cpu_count(env, available),
                n => Ok(n),
            },
        };
    }
    match concurrency {
        Some(0) => return cpu_count(env, available),
        Some(n) => return Ok(n as usize),
        None => {}
    }
    let request = cpu_quantity("ZTUNNEL_RESOURCE_CPU_REQUEST", env)?.unwrap_or(0);
    if let Some(limit) = cpu_quantity("ZTUNNEL_RESOURCE_CPU_LIMIT", env)? {
        return Ok(limit.max(request));
    }
    let fraction = (cpu_count(env, available)? as f64 * 0.25).ceil() as usize;
    Ok(fraction.max(request).max(2))
}

#[cfg(test)]
#[path = "ztunnel_env_tests.rs"]
mod tests;
