//! Leader election on the Kubernetes API: one `coordination.k8s.io/v1` Lease, read and written
//! with `kube::Api<Lease>` around the sans-IO decision (`ferry_core::k8s::lease`). Both
//! replicas keep serving xDS and the CA; only the leader writes (the root-certificate
//! ConfigMaps), and it learns that it leads from the `watch::Receiver<bool>` this returns.
//!
//! Invariants: every write carries the `resourceVersion` it was decided on, so of two
//! replicas racing for one Lease the API server lets one win and answers the other 409, which
//! is a loss (no retry of the write, no leadership); leadership is reported only while the
//! last successful write is younger than the lease duration (measured from before it was
//! sent), so a leader cut off from the API stops writing before another may take over.

use std::time::{Duration, Instant, SystemTime};

use ferry_core::k8s::lease::{decide, still_leading, Action, Observed, Timings};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::Api;
use tokio::sync::watch;

/// Where the Lease is and who we are.
#[derive(Clone, Debug)]
pub(crate) struct Election {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) identity: String,
    pub(crate) timings: Timings,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaderError {
    #[error("another replica wrote the Lease first (409 Conflict); it leads")]
    Lost,
    #[error("cannot read or write the Lease on the Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

/// Starts the election loop on the current runtime; the receiver says whether we lead. Once
/// `closing` turns true the loop stops and a held Lease is released (the task then ends).
pub(crate) fn start(
    client: kube::Client,
    election: Election,
    closing: watch::Receiver<bool>,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    metrics::describe_gauge!("ferry_controller_leader", "1 while this controller holds the leader Lease (only the leader writes)");
    metrics::gauge!("ferry_controller_leader").set(0.0);
    let api = Api::namespaced(client, &election.namespace);
    tracing::info!(lease = %format!("{}/{}", election.namespace, election.name), identity = %election.identity,
        duration = ?election.timings.duration, "leader election started");
    (rx, tokio::spawn(run(api, election, tx, closing)))
}

async fn run(api: Api<Lease>, election: Election, leading: watch::Sender<bool>, mut closing: watch::Receiver<bool>) {
    let mut written: Option<Instant> = None;
    loop {
        let sent = Instant::now();
        match attempt(&api, &election).await {
            Ok(true) => written = Some(sent),
            Ok(false) => written = None,
            Err(LeaderError::Lost) => {
                tracing::info!(identity = %election.identity, "{}", LeaderError::Lost);
                written = None;
            }
            // Keep what we had: still leading until the last write's lease runs out.
            Err(e) => tracing::warn!(error = %e, "leader election: retrying"),
        }
        let now = still_leading(written, Instant::now(), election.timings.duration);
        if leading.send_if_modified(|l| std::mem::replace(l, now) != now) {
            metrics::gauge!("ferry_controller_leader").set(if now { 1.0 } else { 0.0 });
            if now {
                tracing::info!(identity = %election.identity, "became the leader: writing");
            } else {
                tracing::warn!(identity = %election.identity, "no longer the leader: writes stop");
            }
        }
        let t = &election.timings;
        tokio::select! {
            _ = tokio::time::sleep(if now { t.renew } else { t.retry }) => {}
            _ = closing.wait_for(|c| *c) => break,
        }
    }
    if written.is_some() {
        // Writers stop first, so nothing is written after the Lease says nobody leads.
        leading.send_replace(false);
        metrics::gauge!("ferry_controller_leader").set(0.0);
        match release(&api, &election).await {
            Ok(()) => tracing::info!(identity = %election.identity, "leader Lease released: another replica can take over at once"),
            Err(e) => tracing::warn!(error = %e, "cannot release the leader Lease; another replica takes over once it expires"),
        }
    }
}

/// Hands the Lease back as client-go's `ReleaseOnCancel` does: no holder, a one-second
/// duration, conditional on the version read (a 409 means it was no longer ours).
async fn release(api: &Api<Lease>, e: &Election) -> Result<(), LeaderError> {
    let Some(mut lease) = api.get_opt(&e.name).await? else { return Ok(()) };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(e.identity.as_str()) {
        return Ok(());
    }
    let now = Timestamp::try_from(SystemTime::now()).ok().map(MicroTime);
    spec.holder_identity = Some(String::new());
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = now.clone();
    spec.acquire_time = now;
    api.replace(&e.name, &PostParams::default(), &lease).await?;
    Ok(())
}

/// One round: read the Lease, decide, write if the decision says so. `Ok(true)`: we hold it
/// now; `Ok(false)`: another holds it.
async fn attempt(api: &Api<Lease>, e: &Election) -> Result<bool, LeaderError> {
    let now = SystemTime::now();
    let current = api.get_opt(&e.name).await?;
    let action = decide(current.as_ref().map(observe).as_ref(), now, &e.identity, e.timings.duration);
    let lost = |err: kube::Error| match err {
        kube::Error::Api(s) if s.code == 409 => LeaderError::Lost,
        other => LeaderError::Api(other),
    };
    match action {
        Action::Wait { holder, until } => {
            tracing::debug!(%holder, ?until, "the Lease is held by another replica");
            Ok(false)
        }
        Action::Create => {
            let lease = Lease { metadata: ObjectMeta { name: Some(e.name.clone()), ..Default::default() }, spec: None };
            api.create(&PostParams::default(), &held(lease, e, now, true)).await.map_err(lost)?;
            Ok(true)
        }
        Action::Renew | Action::TakeOver { .. } => {
            let taking = matches!(action, Action::TakeOver { .. });
            if let Action::TakeOver { from } = &action {
                tracing::info!(from = from.as_deref().unwrap_or("nobody"), "taking over the expired Lease");
            }
            // `current` is Some for these actions; its resourceVersion makes the write conditional.
            let lease = current.unwrap_or_default();
            api.replace(&e.name, &PostParams::default(), &held(lease, e, now, taking)).await.map_err(lost)?;
            Ok(true)
        }
    }
}

/// The fields the decision reads; an unreadable time counts as absent.
fn observe(lease: &Lease) -> Observed {
    let spec = lease.spec.clone().unwrap_or_default();
    Observed {
        holder: spec.holder_identity,
        renewed: spec.renew_time.map(|t| SystemTime::from(t.0)),
        duration: spec.lease_duration_seconds.and_then(|s| u64::try_from(s).ok()).map(Duration::from_secs),
    }
}

/// `lease` held by us from `now`; `acquired` marks a new holder (a transition).
fn held(mut lease: Lease, e: &Election, now: SystemTime, acquired: bool) -> Lease {
    let time = Timestamp::try_from(now).ok().map(MicroTime);
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let had_holder = spec.holder_identity.as_ref().is_some_and(|h| !h.is_empty());
    spec.holder_identity = Some(e.identity.clone());
    spec.lease_duration_seconds = Some(e.timings.duration_seconds());
    spec.renew_time = time.clone();
    if acquired {
        spec.acquire_time = time;
        // client-go's count: a change of holder, not the first holder.
        let before = spec.lease_transitions.unwrap_or(0);
        spec.lease_transitions = Some(if had_holder { before.saturating_add(1) } else { before });
    }
    lease
}

/// This replica's identity: `POD_NAME` (the downward API), else the host name.
pub(crate) fn default_identity() -> String {
    let from_env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    from_env("POD_NAME")
        .or_else(|| from_env("HOSTNAME"))
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty()))
        .unwrap_or_else(|| format!("ferry-controller-{}", std::process::id()))
}
