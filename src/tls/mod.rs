//! mTLS for HBONE (protocols.md §1.2): TLS 1.3 only, AES-GCM suites, ALPN `h2`, mandatory client
//! certificates, no SNI, no session resumption. One [`WorkloadCert`] per local identity carries
//! its ready-built server config; client configs are built per pooled connection because the
//! expected peer identities are part of the verifier.

pub mod ca;
pub mod certs;
pub mod verify;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde::Serialize;

use ferry_core::identity::Identity;
use verify::{leaf_identity, ExpectedIdentityVerifier, TrustDomainVerifier};

pub(crate) const ALPN_H2: &[u8] = b"h2";

/// How much plaintext rustls encrypts per write before it must flush. The default (64 KiB)
/// caps each socket write at four records; larger batches make fewer, larger writes.
pub(crate) const SEND_BUFFER_LIMIT: usize = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("certificate chain from the CA is empty or has no root")]
    ShortChain,
    #[error("cannot parse PEM certificate: {0}")]
    Pem(String),
    #[error("CA returned a certificate for {got}, but {want} was requested")]
    WrongIdentity { got: String, want: String },
    #[error("certificate identity: {0}")]
    Identity(#[from] verify::PeerIdentityError),
    #[error("cannot parse certificate validity: {0}")]
    Validity(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("no usable root certificate: {0}")]
    Roots(String),
}

/// ring, restricted to TLS 1.3 AES-GCM suites (AES-256 first, like Istio); default key exchange
/// groups (X25519, P-256, P-384).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = rustls::crypto::ring::default_provider();
            p.cipher_suites = vec![
                rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
                rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
            ];
            Arc::new(p)
        })
        .clone()
}

/// A workload certificate with everything needed to serve and dial as that identity.
#[derive(Debug)]
pub struct WorkloadCert {
    pub(crate) identity: Identity,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    /// Leaf first, then intermediates (never the root).
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) roots: Vec<CertificateDer<'static>>,
    certified: Arc<CertifiedKey>,
    root_store: Arc<RootCertStore>,
    server_config: Arc<ServerConfig>,
}

impl WorkloadCert {
    /// Builds a workload certificate from a CA response (`[leaf, intermediates.., root bundle]`,
    /// protocols.md §5) and the private key that signed the CSR. The leaf must carry exactly
    /// `identity` (invariant P1: never present an identity that was not asked for).
    pub(crate) fn from_ca_response(identity: Identity, key_pkcs8: Vec<u8>, pems: &[String]) -> Result<Self, TlsError> {
        let (leaf_pem, rest) = pems.split_first().ok_or(TlsError::ShortChain)?;
        let (root_pem, intermediates) = rest.split_last().ok_or(TlsError::ShortChain)?;
        let leaf = parse_certs(leaf_pem)?.into_iter().next().ok_or(TlsError::ShortChain)?;
        let got = leaf_identity(&leaf)?;
        if got != identity {
            return Err(TlsError::WrongIdentity { got: got.to_string(), want: identity.to_string() });
        }
        let roots = parse_certs(root_pem)?;
        let mut chain = vec![leaf];
        for pem in intermediates {
            chain.extend(parse_certs(pem)?.into_iter().filter(|c| !roots.contains(c)));
        }
        Self::assemble(identity, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8)), chain, roots)
    }

    fn assemble(
        identity: Identity,
        key: PrivateKeyDer<'static>,
        chain: Vec<CertificateDer<'static>>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, TlsError> {
        let (not_before, not_after) = validity(&chain[0])?;
        let mut store = RootCertStore::empty();
        for r in &roots {
            store.add(r.clone()).map_err(|e| TlsError::Roots(e.to_string()))?;
        }
        let root_store = Arc::new(store);
        let signer = provider().key_provider.load_private_key(key)?;
        let certified = Arc::new(CertifiedKey::new(chain.clone(), signer));
        let server_config = server_config(&identity, root_store.clone(), certified.clone())?;
        Ok(WorkloadCert { identity, not_before, not_after, chain, roots, certified, root_store, server_config })
    }

    pub(crate) fn server_config(&self) -> Arc<ServerConfig> {
        self.server_config.clone()
    }

    /// A client config presenting this certificate that accepts only a peer proving one of
    /// `expected`.
    pub fn client_config(&self, expected: Vec<Identity>) -> Arc<ClientConfig> {
        let p = provider();
        let verifier = ExpectedIdentityVerifier::new(self.root_store.clone(), expected, p.signature_verification_algorithms);
        let mut c = ClientConfig::builder_with_provider(p)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the ring provider supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(FixedCert(self.certified.clone())));
        c.alpn_protocols = vec![ALPN_H2.to_vec()];
        c.resumption = Resumption::disabled();
        c.enable_sni = false;
        Arc::new(c)
    }

    /// Istio refreshes at half-life (protocols.md §5).
    pub(crate) fn refresh_at(&self) -> SystemTime {
        let life = self.not_after.duration_since(self.not_before).unwrap_or(Duration::ZERO);
        self.not_before + life / 2
    }

    pub(crate) fn is_valid_at(&self, t: SystemTime) -> bool {
        t >= self.not_before && t < self.not_after
    }

    /// The chain (leaf first) and the roots, as the config dump lists them.
    pub(crate) fn dump(&self) -> (Vec<CertDump>, Vec<CertDump>) {
        (self.chain.iter().map(|c| describe(c)).collect(), self.roots.iter().map(|c| describe(c)).collect())
    }
}

/// An operator-readable description of a TLS I/O error (rustls wraps ferry's own certificate
/// errors in an opaque variant whose Display is a Debug dump).
pub(crate) fn describe_tls_error(e: &std::io::Error) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o))) => format!("invalid peer certificate: {}", o.0),
        Some(r) => r.to_string(),
        None => e.to_string(),
    }
}

/// Whether a handshake failed because the peer sent no certificate (mandatory client auth).
pub(crate) fn is_no_certificate(e: &std::io::Error) -> bool {
    matches!(e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()), Some(rustls::Error::NoCertificatesPresented))
}

/// The server name rustls requires; never sent (SNI off) and never checked.
pub fn dummy_server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into())
}

fn server_config(identity: &Identity, roots: Arc<RootCertStore>, cert: Arc<CertifiedKey>) -> Result<Arc<ServerConfig>, TlsError> {
    let p = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(roots, p.clone()).build().map_err(|e| TlsError::Roots(e.to_string()))?;
    let verifier = TrustDomainVerifier::new(inner, identity.trust_domain().to_string());
    let mut c = ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(FixedCert(cert)));
    c.alpn_protocols = vec![ALPN_H2.to_vec()];
    c.session_storage = Arc::new(NoServerSessionStorage {});
    c.send_tls13_tickets = 0;
    Ok(Arc::new(c))
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for FixedCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

pub(crate) fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn validity(der: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), TlsError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, c) = X509Certificate::from_der(der).map_err(|e| TlsError::Validity(e.to_string()))?;
    let t = |ts: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(ts.max(0) as u64);
    Ok((t(c.validity().not_before.timestamp()), t(c.validity().not_after.timestamp())))
}

/// One certificate as ztunnel's config dump shows it (istioctl's `ztunnel-config certificate`
/// reads `serialNumber` as a decimal and both times as RFC 3339), plus ferry's `subject` and
/// `uriSans`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CertDump {
    /// The PEM text, base64-encoded as ztunnel encodes it.
    pub(crate) pem: String,
    pub(crate) serial_number: String,
    pub(crate) valid_from: String,
    pub(crate) expiration_time: String,
    pub(crate) subject: String,
    pub(crate) uri_sans: Vec<String>,
}

fn describe(der: &CertificateDer<'_>) -> CertDump {
    use base64::Engine;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let pem = base64::engine::general_purpose::STANDARD.encode(pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())));
    let time = |t: x509_parser::time::ASN1Time| {
        ferry_core::timefmt::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64))
    };
    match X509Certificate::from_der(der) {
        Ok((_, c)) => CertDump {
            pem,
            serial_number: c.serial.to_string(),
            valid_from: time(c.validity().not_before),
            expiration_time: time(c.validity().not_after),
            subject: c.subject().to_string(),
            uri_sans: c
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|s| {
                    s.value
                        .general_names
                        .iter()
                        .filter_map(|n| match n {
                            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        },
        // Empty times: istioctl shows such a certificate as not valid rather than guessing.
        Err(e) => CertDump {
            pem,
            serial_number: String::new(),
            valid_from: String::new(),
            expiration_time: String::new(),
            subject: format!("<unparsable: {e}>"),
            uri_sans: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests;
