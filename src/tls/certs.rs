//! Workload certificates per local identity: fetched on first use, refreshed from a timer at
//! half-life (never only on demand, invariant P9), retried with per-identity backoff, and kept
//! until expiry when the CA is unreachable. An expired certificate is never served: handshakes
//! fail instead, and nothing falls back to plaintext.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use serde::Serialize;
use tokio::sync::watch;

use super::ca::CaClient;
use super::{CertDump, TlsError, WorkloadCert};
use ferry_core::identity::Identity;

const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(150);

#[derive(Debug, thiserror::Error, Clone)]
pub enum CertError {
    #[error("no certificate for {identity} yet: {reason}")]
    Unavailable { identity: String, reason: String },
}

#[derive(Clone, Debug)]
enum CertState {
    Pending,
    Ready(Arc<WorkloadCert>),
    /// The last attempt failed; a still-valid earlier certificate stays in use.
    Failed {
        error: String,
        last: Option<Arc<WorkloadCert>>,
    },
}

struct Entry {
    rx: watch::Receiver<CertState>,
    task: tokio::task::JoinHandle<()>,
}

/// Issues and rotates one certificate per identity through a [`CaClient`].
pub struct CertManager {
    ca: Arc<dyn CaClient>,
    ttl: Duration,
    entries: Mutex<HashMap<Identity, Entry>>,
}

impl CertManager {
    pub fn new(ca: Arc<dyn CaClient>, ttl: Duration) -> Arc<Self> {
        Arc::new(CertManager { ca, ttl, entries: Mutex::new(HashMap::new()) })
    }

    /// Starts fetching (if not already) and returns a receiver for the identity's state.
    fn watch(self: &Arc<Self>, id: &Identity) -> watch::Receiver<CertState> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = entries.get(id) {
            return e.rx.clone();
        }
        let (tx, rx) = watch::channel(CertState::Pending);
        let task = tokio::spawn(refresh_loop(self.ca.clone(), id.clone(), self.ttl, tx));
        entries.insert(id.clone(), Entry { rx: rx.clone(), task });
        rx
    }

    /// Starts fetching a certificate ahead of the first connection.
    pub(crate) fn prefetch(self: &Arc<Self>, id: &Identity) {
        self.watch(id);
    }

    /// The current valid certificate for `id`, waiting for the first issuance if needed.
    pub async fn fetch(self: &Arc<Self>, id: &Identity) -> Result<Arc<WorkloadCert>, CertError> {
        let mut rx = self.watch(id);
        loop {
            let state = rx.borrow_and_update().clone();
            let now = SystemTime::now();
            match state {
                CertState::Ready(c) if c.is_valid_at(now) => return Ok(c),
                CertState::Failed { last: Some(c), .. } if c.is_valid_at(now) => return Ok(c),
                CertState::Failed { error, .. } => {
                    return Err(CertError::Unavailable { identity: id.to_string(), reason: error });
                }
                CertState::Ready(_) => {
                    return Err(CertError::Unavailable { identity: id.to_string(), reason: "certificate expired".into() });
                }
                CertState::Pending => {}
            }
            if rx.changed().await.is_err() {
                return Err(CertError::Unavailable { identity: id.to_string(), reason: "certificate manager stopped".into() });
            }
        }
    }

    /// Stops rotating `id` and drops its certificate (the last local workload with it left).
    pub(crate) fn forget(&self, id: &Identity) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = entries.remove(id) {
            e.task.abort();
        }
    }

    /// Every identity's certificate in ztunnel's config-dump shape: `Initializing`,
    /// `Available` or `Unavailable: <why>`. A failed refresh that still has a valid
    /// certificate serves it, so it is `Available`, with the failure in ferry's `error`.
    pub(crate) fn dump(&self) -> Vec<CertStateDump> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::now();
        let mut out: Vec<CertStateDump> = entries
            .iter()
            .map(|(id, e)| {
                let (state, error, cert) = match &*e.rx.borrow() {
                    CertState::Pending => ("Initializing".to_string(), None, None),
                    CertState::Ready(c) if c.is_valid_at(now) => ("Available".to_string(), None, Some(c.clone())),
                    CertState::Ready(c) => ("Unavailable: certificate expired".to_string(), None, Some(c.clone())),
                    CertState::Failed { error, last: Some(c) } if c.is_valid_at(now) => {
                        ("Available".to_string(), Some(error.clone()), Some(c.clone()))
                    }
                    CertState::Failed { error, last } => (format!("Unavailable: {error}"), Some(error.clone()), last.clone()),
                };
                let (cert_chain, root_certs) = cert.as_ref().map(|c| c.dump()).unwrap_or_default();
                let refresh_at = cert.map(|c| ferry_core::timefmt::rfc3339(c.refresh_at()));
                CertStateDump { identity: id.to_string(), state, cert_chain, root_certs, refresh_at, error }
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        let entries = self.entries.get_mut().unwrap_or_else(|e| e.into_inner());
        for e in entries.values() {
            e.task.abort();
        }
    }
}

/// ztunnel's `certificates[]` entry, plus ferry's `refreshAt` and `error`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CertStateDump {
    pub(crate) identity: String,
    pub(crate) state: String,
    pub(crate) cert_chain: Vec<CertDump>,
    pub(crate) root_certs: Vec<CertDump>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) refresh_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

async fn refresh_loop(ca: Arc<dyn CaClient>, id: Identity, ttl: Duration, tx: watch::Sender<CertState>) {
    let mut backoff = BACKOFF_START;
    loop {
        match issue(ca.as_ref(), &id, ttl).await {
            Ok(cert) => {
                backoff = BACKOFF_START;
                let wait = cert.refresh_at().duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
                tracing::info!(identity = %cert.identity, expires = %ferry_core::timefmt::rfc3339(cert.not_after), "workload certificate issued");
                tx.send_replace(CertState::Ready(Arc::new(cert)));
                tokio::time::sleep(wait.max(Duration::from_secs(1))).await;
            }
            Err(e) => {
                tracing::warn!(identity = %id, error = %e, retry_in = ?backoff, "workload certificate request failed");
                tx.send_modify(|s| {
                    let last = match s {
                        CertState::Ready(c) => Some(c.clone()),
                        CertState::Failed { last, .. } => last.clone(),
                        CertState::Pending => None,
                    };
                    *s = CertState::Failed { error: e.to_string(), last };
                });
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + fastrand::f64() * 0.4)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum IssueError {
    #[error("cannot build the certificate request: {0}")]
    Csr(String),
    #[error("{0}")]
    Ca(#[from] super::ca::CaError),
    #[error("{0}")]
    Tls(#[from] TlsError),
}

/// One issuance: a fresh P-256 key, a CSR for exactly `id`, the CA's answer checked for `id`.
pub(crate) async fn issue(ca: &dyn CaClient, id: &Identity, ttl: Duration) -> Result<WorkloadCert, IssueError> {
    let (key_der, csr) = new_csr(id)?;
    let chain = ca.sign(id, csr, ttl).await?;
    Ok(WorkloadCert::from_ca_response(id.clone(), key_der, &chain)?)
}

/// A fresh ECDSA P-256 key and a PEM CSR with an empty subject and one URI SAN.
pub(crate) fn new_csr(id: &Identity) -> Result<(Vec<u8>, String), IssueError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| IssueError::Csr(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = id.to_string().try_into().map_err(|e: rcgen::Error| IssueError::Csr(e.to_string()))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params.serialize_request(&key).map_err(|e| IssueError::Csr(e.to_string()))?;
    let pem = csr.pem().map_err(|e| IssueError::Csr(e.to_string()))?;
    Ok((key.serialize_der(), pem))
}
