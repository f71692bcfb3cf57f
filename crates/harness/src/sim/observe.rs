//! Reading what the node proxies report: access-log records (JSON lines, scope `access`) and
//! Prometheus metric lines, so tests and the demo assert on what an operator would see.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// Every access-log record in a proxy log.
pub fn access_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["scope"] == "access")
        .collect()
}

fn ip_of(v: &Value) -> Option<IpAddr> {
    v.as_str().and_then(|s| s.parse::<SocketAddr>().ok()).map(|a| a.ip())
}

/// The record of a connection from `src` to `dst` as reported in `direction`, waiting up to
/// `limit` for it (records are written when connections close).
pub fn find_record(log: &Path, direction: &str, src: IpAddr, dst: SocketAddr, limit: Duration) -> Option<Value> {
    find_record_after(log, 0, direction, src, dst, limit)
}

/// [`find_record`] among the records after the first `skip` (those already in the log when a
/// connection started): a proxy that logs a connection some time after it closed (ztunnel)
/// is not mistaken for an earlier connection between the same addresses.
pub fn find_record_after(log: &Path, skip: usize, direction: &str, src: IpAddr, dst: SocketAddr, limit: Duration) -> Option<Value> {
    let start = std::time::Instant::now();
    loop {
        let found = access_log(log).into_iter().skip(skip).rev().find(|r| {
            // A tunnel's record names the HBONE port as `dst.addr` and the target as
            // `dst.hbone_addr`; `dst` is the target, which either may hold.
            let at = |k: &str| r[k].as_str() == Some(&dst.to_string());
            r["direction"] == direction && ip_of(&r["src.addr"]) == Some(src) && (at("dst.addr") || at("dst.hbone_addr"))
        });
        if found.is_some() || start.elapsed() > limit {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the first sample of metric `name` (labelled or not) carrying every label pair.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (labelled, bare) = (format!("{name}{{"), format!("{name} "));
    text.lines()
        .filter(|l| l.starts_with(&labelled) || l.starts_with(&bare))
        .find(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
