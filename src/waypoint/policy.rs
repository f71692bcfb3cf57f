//! The waypoint's L7 policies: every `AuthorizationPolicy` with `targetRefs` in a manifest
//! file or directory (the cluster-state layout), re-read when the files change, or received
//! from the controller over xDS (`ferry_core::waypoint_xds`); compiled by
//! `ferry_core::l7authz`. A set that does not read keeps the last good one in force (as the
//! local config does); a policy that reads but does not compile fails closed on its own.
//! Either is reported three ways: a log line, `ferry_waypoint_policy_*` metrics, and the
//! `waypoint.policies` section of `/config_dump` (the set in force, its notes, the last error).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tokio::sync::watch;

use ferry_core::l7authz::{compile_all, L7Policy};

pub(crate) type Policies = watch::Receiver<Arc<Vec<L7Policy>>>;

#[derive(Debug, thiserror::Error)]
#[error("waypoint policies {path}: {source}")]
pub struct PolicyFileError {
    path: String,
    source: Box<ferry_cni::cluster_state::StateError>,
}

/// What the last loads did, for `/config_dump`.
#[derive(Debug, Default)]
pub(crate) struct LoadStatus {
    path: Option<String>,
    loaded_at: Option<String>,
    /// The last reload's error while the previous set stays in force; cleared by a good load.
    last_error: Option<String>,
    last_error_at: Option<String>,
}

/// The policies in force and how they got there.
#[derive(Clone)]
pub(crate) struct Loaded {
    pub(crate) policies: Policies,
    status: Arc<Mutex<LoadStatus>>,
}

impl Loaded {
    /// The `/config_dump` section: every policy in force (compiled, with its notes) and the
    /// state of the source.
    pub(crate) fn dump(&self) -> Value {
        let set = self.policies.borrow().clone();
        let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        json!({
            "source": s.path,
            "loadedAt": s.loaded_at,
            "lastError": s.last_error,
            "lastErrorAt": s.last_error_at,
            "policies": *set,
        })
    }
}

fn read(path: &std::path::Path) -> Result<Vec<L7Policy>, PolicyFileError> {
    let state =
        ferry_cni::cluster_state::load(path).map_err(|e| PolicyFileError { path: path.display().to_string(), source: Box::new(e) })?;
    Ok(compile(state.other.values()))
}

fn compile<'a>(objects: impl Iterator<Item = &'a serde_json::Value>) -> Vec<L7Policy> {
    let compiled = compile_all(objects);
    for p in compiled.iter().filter(|p| !p.notes.is_empty()) {
        tracing::warn!(policy = %p.key(), notes = ?p.notes, "waypoint policy changed from what it says (failing closed)");
    }
    compiled
}

/// The policies the xDS client receives (`received`), compiled as each set arrives. Until
/// the first arrives there are none, and the waypoint is not ready (the client's readiness
/// waits for the first response of each type).
pub(crate) fn from_xds(mut received: watch::Receiver<Arc<Vec<serde_json::Value>>>) -> Loaded {
    describe();
    let status = Arc::new(Mutex::new(LoadStatus { path: Some("xds".into()), ..Default::default() }));
    let (tx, rx) = watch::channel(Arc::new(Vec::new()));
    let shared = status.clone();
    tokio::spawn(async move {
        while received.changed().await.is_ok() {
            let objects = received.borrow_and_update().clone();
            let set = compile(objects.iter());
            tracing::info!(policies = set.len(), "waypoint policies received over xDS");
            record_good(&shared, &set);
            tx.send_replace(Arc::new(set));
        }
    });
    Loaded { policies: rx, status }
}

fn describe() {
    metrics::describe_counter!(
        "ferry_waypoint_policy_loads_total",
        "Waypoint policy (re)loads, by result (ok, error: the last good set stays)"
    );
    metrics::describe_gauge!("ferry_waypoint_policies", "Waypoint policies in force");
    metrics::describe_gauge!(
        "ferry_waypoint_policies_failing_closed",
        "Waypoint policies in force that could not be compiled as written and deny what they target instead (see /config_dump)"
    );
}

fn record_good(status: &Mutex<LoadStatus>, set: &[L7Policy]) {
    metrics::counter!("ferry_waypoint_policy_loads_total", "result" => "ok").increment(1);
    metrics::gauge!("ferry_waypoint_policies").set(set.len() as f64);
    metrics::gauge!("ferry_waypoint_policies_failing_closed").set(set.iter().filter(|p| !p.notes.is_empty()).count() as f64);
    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
    s.loaded_at = Some(ferry_core::timefmt::rfc3339(SystemTime::now()));
    s.last_error = None;
    s.last_error_at = None;
}

fn record_error(status: &Mutex<LoadStatus>, e: String) {
    metrics::counter!("ferry_waypoint_policy_loads_total", "result" => "error").increment(1);
    tracing::error!(error = %e, "waypoint policies not reloaded; the last good set stays in force");
    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
    s.last_error = Some(e);
    s.last_error_at = Some(ferry_core::timefmt::rfc3339(SystemTime::now()));
}

/// Loads the policies (none without a path) and keeps them current. The first load must
/// read: a waypoint never starts without the policies it was given.
pub(crate) fn load(path: Option<PathBuf>, poll: Duration) -> Result<Loaded, PolicyFileError> {
    describe();
    let status = Arc::new(Mutex::new(LoadStatus { path: path.as_ref().map(|p| p.display().to_string()), ..Default::default() }));
    let Some(path) = path else {
        record_good(&status, &[]);
        return Ok(Loaded { policies: watch::channel(Arc::new(Vec::new())).1, status });
    };
    let first = read(&path)?;
    record_good(&status, &first);
    tracing::info!(path = %path.display(), policies = first.len(), "waypoint policies loaded");
    let (tx, rx) = watch::channel(Arc::new(first));
    let shared = status.clone();
    tokio::spawn(async move {
        let mut stamp = ferry_cni::cluster_state::stamp(&path);
        loop {
            tokio::time::sleep(poll).await;
            let now = ferry_cni::cluster_state::stamp(&path);
            if now == stamp {
                continue;
            }
            stamp = now;
            let p = path.clone();
            match tokio::task::spawn_blocking(move || read(&p)).await {
                Ok(Ok(set)) => {
                    tracing::info!(policies = set.len(), "waypoint policies reloaded");
                    record_good(&shared, &set);
                    tx.send_replace(Arc::new(set));
                }
                Ok(Err(e)) => record_error(&shared, e.to_string()),
                Err(e) => record_error(&shared, format!("the reload task failed: {e}")),
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(Loaded { policies: rx, status })
}
