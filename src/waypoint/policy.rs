//! The waypoint's policies: every `AuthorizationPolicy` and `RequestAuthentication` with
//! `targetRefs` in a manifest file or directory (the cluster-state layout), re-read when the
//! files change (a `jwksUri` file with them), or received from the controller over xDS
//! (`ferry_core::waypoint_xds`); compiled by `ferry_core::l7authz` and `ferry_core::jwt`. A
//! set that does not read keeps the last good one in force (as the local config does); an
//! object that reads but does not compile fails closed on its own. Either is reported three
//! ways: a log line, `ferry_waypoint_policy_*` metrics, and the `waypoint.policies` section of
//! `/config_dump` (the set in force, its notes, the last error).

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tokio::sync::watch;

use ferry_core::jwt::{self, jwks::MAX_JWKS_BYTES, RequestAuthn};
use ferry_core::l7authz::{compile_all, L7Policy};

/// Everything the waypoint enforces per request, replaced as one.
#[derive(Debug, Default)]
pub(crate) struct PolicySet {
    pub(crate) authz: Vec<L7Policy>,
    pub(crate) authn: Vec<RequestAuthn>,
}

impl PolicySet {
    fn failing_closed(&self) -> usize {
        self.authz.iter().filter(|p| !p.notes.is_empty()).count() + self.authn.iter().filter(|a| a.broken.is_some()).count()
    }
}

pub(crate) type Policies = watch::Receiver<Arc<PolicySet>>;

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
    /// The `/config_dump` section: every object in force (compiled, with its notes) and the
    /// state of the source.
    pub(crate) fn dump(&self) -> Value {
        let set = self.policies.borrow().clone();
        let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        json!({
            "source": s.path,
            "loadedAt": s.loaded_at,
            "lastError": s.last_error,
            "lastErrorAt": s.last_error_at,
            "policies": set.authz,
            "requestAuthentications": set.authn,
        })
    }
}

fn read(path: &std::path::Path) -> Result<PolicySet, PolicyFileError> {
    let state =
        ferry_cni::cluster_state::load(path).map_err(|e| PolicyFileError { path: path.display().to_string(), source: Box::new(e) })?;
    Ok(compile(state.other.values()))
}

/// Compiles both kinds from the same objects, logging what fails closed.
fn compile<'a>(objects: impl Iterator<Item = &'a Value> + Clone) -> PolicySet {
    let authz = compile_all(objects.clone());
    for p in authz.iter().filter(|p| !p.notes.is_empty()) {
        tracing::warn!(policy = %p.key(), notes = ?p.notes, "waypoint policy changed from what it says (failing closed)");
    }
    let authn = jwt::compile_all(objects, &read_jwks);
    for ra in &authn {
        if let Some(why) = &ra.broken {
            tracing::error!(request_authentication = %ra.key(), error = %why, "RequestAuthentication refused");
        }
        for note in &ra.notes {
            tracing::warn!(request_authentication = %ra.key(), note = %note, "RequestAuthentication key set not usable");
        }
    }
    PolicySet { authz, authn }
}

/// A `jwksUri` file, refused past [`MAX_JWKS_BYTES`] without reading further.
fn read_jwks(path: &str) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("jwksUri file {path}: {e}"))?;
    let mut text = String::new();
    file.take(MAX_JWKS_BYTES as u64 + 1).read_to_string(&mut text).map_err(|e| format!("jwksUri file {path}: {e}"))?;
    match text.len() > MAX_JWKS_BYTES {
        true => Err(format!("jwksUri file {path} is larger than {MAX_JWKS_BYTES} bytes")),
        false => Ok(text),
    }
}

/// The policies the xDS client receives (`received`), compiled as each set arrives. Until
/// the first arrives there are none, and the waypoint is not ready (the client's readiness
/// waits for the first response of each type).
pub(crate) fn from_xds(mut received: watch::Receiver<Arc<Vec<Value>>>) -> Loaded {
    describe();
    let status = Arc::new(Mutex::new(LoadStatus { path: Some("xds".into()), ..Default::default() }));
    let (tx, rx) = watch::channel(Arc::new(PolicySet::default()));
    let shared = status.clone();
    tokio::spawn(async move {
        while received.changed().await.is_ok() {
            let objects = received.borrow_and_update().clone();
            // A jwksUri file is read from disk: off the runtime's threads.
            let set = match tokio::task::spawn_blocking(move || compile(objects.iter())).await {
                Ok(set) => set,
                Err(e) => {
                    record_error(&shared, format!("compiling the policies received failed: {e}"));
                    continue;
                }
            };
            tracing::info!(policies = set.authz.len(), request_authentications = set.authn.len(), "waypoint policies received over xDS");
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
    metrics::describe_gauge!("ferry_waypoint_policies", "Waypoint AuthorizationPolicies and RequestAuthentications in force");
    metrics::describe_gauge!(
        "ferry_waypoint_policies_failing_closed",
        "Waypoint policies in force that could not be compiled as written and deny (or refuse) what they target instead (see /config_dump)"
    );
}

fn record_good(status: &Mutex<LoadStatus>, set: &PolicySet) {
    metrics::counter!("ferry_waypoint_policy_loads_total", "result" => "ok").increment(1);
    metrics::gauge!("ferry_waypoint_policies").set((set.authz.len() + set.authn.len()) as f64);
    metrics::gauge!("ferry_waypoint_policies_failing_closed").set(set.failing_closed() as f64);
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
        let empty = PolicySet::default();
        record_good(&status, &empty);
        return Ok(Loaded { policies: watch::channel(Arc::new(empty)).1, status });
    };
    let first = read(&path)?;
    record_good(&status, &first);
    tracing::info!(path = %path.display(), policies = first.authz.len(), request_authentications = first.authn.len(), "waypoint policies loaded");
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
                    tracing::info!(policies = set.authz.len(), request_authentications = set.authn.len(), "waypoint policies reloaded");
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
