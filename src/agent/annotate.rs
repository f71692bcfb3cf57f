//! The `ambient.istio.io/redirection: enabled` annotation on the pods the agent enrolled (API
//! mode only): set once a pod's redirection is installed and the node proxy acknowledged it,
//! removed on release. It is the control plane's signal (ferry controller's and istiod's) to
//! advertise the pod as HBONE; without it other nodes send the pod plaintext.
//!
//! Invariants: writes run on their own task, so a CNI answer never waits for the API; each
//! pod's wanted value is level-triggered (the latest wins, an older failed write is not
//! retried over a newer one); a failed write is retried with exponential backoff until it
//! lands or the pod is gone, each attempt logged and counted in
//! `ferry_agent_annotation_writes_total{result}`.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_core::k8s::capture::{REDIRECTION_ANNOTATION, REDIRECTION_ENABLED};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::Api;
use tokio::sync::mpsc;
use tokio::time::Instant;

const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// One pod's wanted annotation: `true` = `enabled`, `false` = absent.
type Want = (String, String, bool);

/// Hands wanted annotations to the writer task; cheap to call from any path.
pub(crate) struct Annotator {
    tx: mpsc::UnboundedSender<Want>,
}

impl Annotator {
    /// Starts the writer on the current runtime; it ends when the annotator is dropped.
    pub(crate) fn start(client: kube::Client) -> Annotator {
        metrics::describe_counter!(
            "ferry_agent_annotation_writes_total",
            "Writes of the ambient.istio.io/redirection pod annotation by result (ok, error: retried, gone: pod deleted)"
        );
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(client, rx));
        Annotator { tx }
    }

    /// Wants `namespace/name` annotated (`enabled`) or not (the annotation removed).
    pub(crate) fn set(&self, namespace: &str, name: &str, enabled: bool) {
        // The writer lives as long as the annotator, so the send cannot fail while it does.
        let _ = self.tx.send((namespace.to_string(), name.to_string(), enabled));
    }
}

/// A write still to land.
struct Pending {
    enabled: bool,
    attempt: u32,
    due: Instant,
}

async fn writer(client: kube::Client, mut rx: mpsc::UnboundedReceiver<Want>) {
    let mut pending: BTreeMap<(String, String), Pending> = BTreeMap::new();
    // What was last written per pod, so a repeated wish for the same value costs nothing.
    let mut written: BTreeMap<(String, String), bool> = BTreeMap::new();
    loop {
        let next_due = pending.values().map(|p| p.due).min();
        let wanted = match next_due {
            Some(due) => tokio::select! {
                w = rx.recv() => w.map(Some),
                _ = tokio::time::sleep_until(due) => Some(None),
            },
            None => rx.recv().await.map(Some),
        };
        match wanted {
            None => return,
            Some(Some((ns, name, enabled))) => {
                let key = (ns, name);
                if written.get(&key) == Some(&enabled) {
                    pending.remove(&key);
                } else if pending.get(&key).is_none_or(|p| p.enabled != enabled) {
                    // A repeated wish keeps its place in the backoff; a new value goes now.
                    pending.insert(key, Pending { enabled, attempt: 0, due: Instant::now() });
                }
            }
            Some(None) => {}
        }
        let now = Instant::now();
        let due: Vec<(String, String)> = pending.iter().filter(|(_, p)| p.due <= now).map(|(k, _)| k.clone()).collect();
        for key in due {
            let Some(p) = pending.get_mut(&key) else { continue };
            match write(&client, &key.0, &key.1, p.enabled).await {
                Outcome::Done => {
                    written.insert(key.clone(), p.enabled);
                    pending.remove(&key);
                }
                Outcome::Gone => {
                    written.remove(&key);
                    pending.remove(&key);
                }
                Outcome::Retry => {
                    p.attempt += 1;
                    p.due = Instant::now() + backoff(p.attempt);
                }
            }
        }
    }
}

/// Doubling from [`FIRST_RETRY`], capped at [`MAX_RETRY`].
fn backoff(attempt: u32) -> Duration {
    FIRST_RETRY.saturating_mul(1 << attempt.min(16)).min(MAX_RETRY)
}

enum Outcome {
    Done,
    Gone,
    Retry,
}

/// One merge patch of the pod's annotation (`null` removes it) on `pods/status`, logged and
/// counted.
async fn write(client: &kube::Client, ns: &str, name: &str, enabled: bool) -> Outcome {
    let value = if enabled { serde_json::Value::from(REDIRECTION_ENABLED) } else { serde_json::Value::Null };
    let patch = serde_json::json!({"metadata": {"annotations": {REDIRECTION_ANNOTATION: value}}});
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = format!("{ns}/{name}");
    // Through the status subresource, as istio-cni does: the grant is `patch pods/status`,
    // which cannot change a pod's spec or labels (Kubernetes keeps metadata edits made there).
    match api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {
            metrics::counter!("ferry_agent_annotation_writes_total", "result" => "ok").increment(1);
            tracing::info!(%pod, enabled, "pod annotation {REDIRECTION_ANNOTATION} written");
            Outcome::Done
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {
            metrics::counter!("ferry_agent_annotation_writes_total", "result" => "gone").increment(1);
            tracing::info!(%pod, "pod is gone; its {REDIRECTION_ANNOTATION} annotation needs no write");
            Outcome::Gone
        }
        Err(e) => {
            metrics::counter!("ferry_agent_annotation_writes_total", "result" => "error").increment(1);
            tracing::warn!(%pod, enabled, error = %e, "cannot write the pod's {REDIRECTION_ANNOTATION} annotation; retrying with backoff");
            Outcome::Retry
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0), FIRST_RETRY);
        assert_eq!(backoff(1), FIRST_RETRY * 2);
        assert_eq!(backoff(40), MAX_RETRY);
    }
}
