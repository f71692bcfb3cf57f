//! The Istio CA client (`IstioCertificateService/CreateCertificate`, protocols.md §5): signs
//! the certificate manager's CSRs at the control plane. In shared mode every request names
//! the pod identity it is for (`ImpersonatedIdentity`), which the CA grants only to a node
//! proxy for pods on its node. The channel is rebuilt when the root certificate changes;
//! at most [`MAX_IN_FLIGHT`] requests run at once, so a burst of new pods cannot flood the CA.

use std::sync::Mutex;
use std::time::Duration;

use ferry_core::identity::Identity;
use ferry_core::proto::ca::IstioCertificateRequest;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use super::channel;
use super::settings::Target;
use crate::proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::tls::ca::{BoxFuture, CaClient, CaError};

/// Istio's limit on concurrent CSRs from one proxy.
const MAX_IN_FLIGHT: usize = 8;
/// A CA that has not answered in this long is treated as down (the manager retries).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct IstioCa {
    target: Target,
    /// Shared mode: request other identities than the proxy's own.
    impersonate: bool,
    /// The channel and the roots it was built with.
    channel: Mutex<Option<(String, Channel)>>,
    in_flight: Semaphore,
}

impl IstioCa {
    pub(crate) fn new(target: Target, impersonate: bool) -> IstioCa {
        IstioCa { target, impersonate, channel: Mutex::new(None), in_flight: Semaphore::new(MAX_IN_FLIGHT) }
    }

    pub(crate) fn url(&self) -> &str {
        &self.target.url
    }

    fn channel(&self) -> Result<Channel, CaError> {
        let roots = channel::read_roots(&self.target.roots).map_err(|e| CaError::Unavailable(e.to_string()))?;
        let mut cur = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((r, c)) = cur.as_ref() {
            if *r == roots {
                return Ok(c.clone());
            }
            tracing::info!(ca = %self.target.url, "CA root certificate changed; reconnecting");
        }
        let c = channel::lazy(&self.target).map_err(|e| CaError::Unavailable(e.to_string()))?;
        *cur = Some((roots, c.clone()));
        Ok(c)
    }

    async fn create(&self, id: &Identity, csr: String, ttl: Duration) -> Result<Vec<String>, CaError> {
        let _permit = self.in_flight.acquire().await.map_err(|_| CaError::Unavailable("CA client closed".into()))?;
        let metadata = self.impersonate.then(|| {
            let v = prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(id.to_string())) };
            prost_types::Struct { fields: [("ImpersonatedIdentity".to_string(), v)].into_iter().collect() }
        });
        let body = IstioCertificateRequest { csr, validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX), metadata };
        let mut req = tonic::Request::new(body);
        req.set_timeout(CALL_TIMEOUT);
        channel::authorize(&mut req, &self.target).map_err(|e| CaError::Unavailable(e.to_string()))?;
        let mut client = IstioCertificateServiceClient::new(self.channel()?);
        let resp = tokio::time::timeout(CALL_TIMEOUT, client.create_certificate(req))
            .await
            .map_err(|_| CaError::Unavailable(format!("{} did not answer within {CALL_TIMEOUT:?}", self.target.url)))?
            .map_err(|s| CaError::Unavailable(format!("{} refused: {:?}: {}", self.target.url, s.code(), s.message())))?;
        let chain = resp.into_inner().cert_chain;
        if chain.len() < 2 {
            return Err(CaError::Unavailable(format!(
                "{} returned {} certificates; a leaf and a root are required",
                self.target.url,
                chain.len()
            )));
        }
        Ok(chain)
    }
}

impl CaClient for IstioCa {
    fn sign<'a>(&'a self, identity: &'a Identity, csr_pem: String, ttl: Duration) -> BoxFuture<'a, Result<Vec<String>, CaError>> {
        Box::pin(self.create(identity, csr_pem, ttl))
    }
}
