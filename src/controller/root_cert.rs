//! Publishes the mesh root certificate as istiod does: a ConfigMap `istio-ca-root-cert` with
//! key `root-cert.pem` in every namespace, so proxies (ferry's or Istio's ztunnel) and workloads
//! can verify the controller. Level-triggered: on every leadership or namespace change and
//! every resync period, each namespace's ConfigMap is read and written only if it is missing
//! (create) or its `root-cert.pem` differs (replace, with the read resourceVersion).
//!
//! Invariants: only while this replica leads (checked again before every write); only the
//! ConfigMap of that one name is read or written, and of it only the one key is changed (other
//! keys and labels someone added stay); a failed or conflicting write is retried on the next
//! round, never in a loop against the API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::k8s::objects::ClusterState;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::Api;
use tokio::sync::watch;

/// The ConfigMap istiod publishes and proxies mount.
pub(crate) const NAME: &str = "istio-ca-root-cert";
/// Its key holding the PEM bundle.
pub(crate) const KEY: &str = "root-cert.pem";

#[derive(Debug, thiserror::Error)]
pub(crate) enum RootCertError {
    #[error("cannot read or write ConfigMap {namespace}/istio-ca-root-cert: {source}")]
    Api { namespace: String, source: kube::Error },
}

/// What one namespace's ConfigMap needs.
#[derive(Debug, PartialEq, Eq)]
enum Write {
    Create,
    Replace,
}

/// The write `existing` (its data) needs to carry `pem`, if any.
fn needed(existing: Option<&BTreeMap<String, String>>, pem: &str) -> Option<Write> {
    match existing {
        None => Some(Write::Create),
        Some(data) if data.get(KEY).map(String::as_str) == Some(pem) => None,
        Some(_) => Some(Write::Replace),
    }
}

/// Starts publishing `pem` while `leading`, for the namespaces in `cluster`.
pub(crate) fn start(
    client: kube::Client,
    pem: String,
    leading: watch::Receiver<bool>,
    cluster: watch::Receiver<Arc<ClusterState>>,
    resync: Duration,
) -> tokio::task::JoinHandle<()> {
    metrics::describe_counter!(
        "ferry_controller_root_cert_writes_total",
        "istio-ca-root-cert ConfigMaps written, by op (create, replace, error)"
    );
    tokio::spawn(run(client, pem, leading, cluster, resync))
}

async fn run(
    client: kube::Client,
    pem: String,
    mut leading: watch::Receiver<bool>,
    mut cluster: watch::Receiver<Arc<ClusterState>>,
    resync: Duration,
) {
    loop {
        if *leading.borrow_and_update() {
            let namespaces: Vec<String> = cluster.borrow_and_update().namespaces.keys().cloned().collect();
            round(&client, &pem, &leading, &namespaces).await;
        }
        tokio::select! {
            r = leading.changed() => if r.is_err() { return },
            r = cluster.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(resync) => {}
        }
    }
}

/// One pass over every namespace, stopping as soon as leadership is lost.
async fn round(client: &kube::Client, pem: &str, leading: &watch::Receiver<bool>, namespaces: &[String]) {
    let (mut written, mut failed) = (0, 0);
    for ns in namespaces {
        if !*leading.borrow() {
            tracing::info!("leadership lost: root-certificate publication stops");
            return;
        }
        match ensure(Api::namespaced(client.clone(), ns), ns, pem).await {
            Ok(Some(op)) => {
                written += 1;
                let op = if op == Write::Create { "create" } else { "replace" };
                metrics::counter!("ferry_controller_root_cert_writes_total", "op" => op).increment(1);
                tracing::info!(namespace = %ns, op, "published {NAME}");
            }
            Ok(None) => {}
            Err(e) => {
                failed += 1;
                metrics::counter!("ferry_controller_root_cert_writes_total", "op" => "error").increment(1);
                tracing::warn!(error = %e, "will retry on the next round");
            }
        }
    }
    tracing::debug!(namespaces = namespaces.len(), written, failed, "root certificate published");
}

/// Brings `namespace`'s ConfigMap to `pem`; returns the write made, if any.
async fn ensure(api: Api<ConfigMap>, namespace: &str, pem: &str) -> Result<Option<Write>, RootCertError> {
    let err = |source| RootCertError::Api { namespace: namespace.to_string(), source };
    let current = api.get_opt(NAME).await.map_err(err)?;
    let data = current.as_ref().map(|c| c.data.clone().unwrap_or_default());
    let Some(write) = needed(data.as_ref(), pem) else { return Ok(None) };
    match current {
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta { name: Some(NAME.into()), namespace: Some(namespace.into()), ..Default::default() },
                data: Some([(KEY.to_string(), pem.to_string())].into_iter().collect()),
                ..Default::default()
            };
            api.create(&PostParams::default(), &cm).await.map_err(err)?;
        }
        Some(mut cm) => {
            cm.data.get_or_insert_with(BTreeMap::new).insert(KEY.into(), pem.into());
            api.replace(NAME, &PostParams::default(), &cm).await.map_err(err)?;
        }
    }
    Ok(Some(write))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_what_differs() {
        let data = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
        assert_eq!(needed(None, "R"), Some(Write::Create));
        assert_eq!(needed(Some(&data(&[(KEY, "R")])), "R"), None);
        assert_eq!(needed(Some(&data(&[(KEY, "R"), ("extra", "x")])), "R"), None, "other keys are not ours");
        assert_eq!(needed(Some(&data(&[(KEY, "tampered")])), "R"), Some(Write::Replace));
        assert_eq!(needed(Some(&data(&[])), "R"), Some(Write::Replace));
    }
}
