//! Certificate checks beyond chain validation (protocols.md §1.3, invariants P2).
//!
//! Both directions require the peer leaf to carry exactly one URI SAN, and that SAN to be a
//! strictly parsed SPIFFE identity: the identity that is verified is the identity that is
//! authorized and logged. Its key usage, when it has one, must include digitalSignature: the
//! leaf's key signs the TLS 1.3 handshake, and webpki does not check key usage. The dialer additionally requires an exact match with one of the
//! identities it expects; the listener requires the peer to be in our trust domain.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use ferry_core::identity::Identity;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub(crate) enum PeerIdentityError {
    #[error("peer certificate is not valid X.509: {0}")]
    Malformed(String),
    #[error("peer certificate carries {0} URI SANs; exactly one SPIFFE identity is required")]
    SanCount(usize),
    #[error("peer certificate SAN is not a valid SPIFFE identity: {0}")]
    BadIdentity(String),
    #[error("peer identity {got} is not one of the expected identities [{expected}]")]
    Unexpected { got: String, expected: String },
    #[error("peer identity {got} is not in trust domain {want}")]
    TrustDomain { got: String, want: String },
    #[error("peer certificate key usage lacks digitalSignature (it allows only {0}), so its key may not sign the handshake")]
    KeyUsage(String),
}

impl From<PeerIdentityError> for rustls::Error {
    fn from(e: PeerIdentityError) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, PeerIdentityError> {
    Ok(X509Certificate::from_der(der).map_err(|e| PeerIdentityError::Malformed(e.to_string()))?.1)
}

/// The SPIFFE identity of a leaf certificate that carries exactly one URI SAN.
pub(crate) fn leaf_identity(der: &[u8]) -> Result<Identity, PeerIdentityError> {
    identity_of(&parse(der)?)
}

/// What both verifiers require of a peer's leaf beyond its chain: a key usage that allows
/// signing (no key usage extension at all is unrestricted, RFC 5280 §4.2.1.3) and exactly one
/// SPIFFE URI SAN. Returns that identity.
pub(crate) fn verified_leaf(der: &[u8]) -> Result<Identity, PeerIdentityError> {
    let cert = parse(der)?;
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.digital_signature() => return Err(PeerIdentityError::KeyUsage(ku.value.to_string())),
        Ok(_) => {}
        Err(e) => return Err(PeerIdentityError::Malformed(e.to_string())),
    }
    identity_of(&cert)
}

fn identity_of(cert: &X509Certificate<'_>) -> Result<Identity, PeerIdentityError> {
    let mut uris = Vec::new();
    for ext in cert.extensions() {
        if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                if let GeneralName::URI(u) = name {
                    uris.push(*u);
                }
            }
        }
    }
    match uris.as_slice() {
        [one] => one.parse().map_err(|e: ferry_core::identity::IdentityError| PeerIdentityError::BadIdentity(e.to_string())),
        other => Err(PeerIdentityError::SanCount(other.len())),
    }
}

fn join(ids: &[Identity]) -> String {
    ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

/// The dialer's verifier: chain to our roots with serverAuth, then an exact identity match.
/// Server names are never checked (HBONE sends no SNI; identities are URI SANs).
#[derive(Debug)]
pub(crate) struct ExpectedIdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<Identity>,
    algs: WebPkiSupportedAlgorithms,
}

impl ExpectedIdentityVerifier {
    pub(crate) fn new(roots: Arc<RootCertStore>, expected: Vec<Identity>, algs: WebPkiSupportedAlgorithms) -> Self {
        ExpectedIdentityVerifier { roots, expected, algs }
    }
}

impl ServerCertVerifier for ExpectedIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(&parsed, &self.roots, intermediates, now, self.algs.all)?;
        let got = verified_leaf(end_entity)?;
        if !self.expected.contains(&got) {
            return Err(PeerIdentityError::Unexpected { got: got.to_string(), expected: join(&self.expected) }.into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The listener's verifier: chain to our roots with clientAuth (delegated to webpki), exactly
/// one SPIFFE URI SAN, in our trust domain. Authorization happens later, per CONNECT.
#[derive(Debug)]
pub(crate) struct TrustDomainVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl TrustDomainVerifier {
    pub(crate) fn new(inner: Arc<dyn ClientCertVerifier>, trust_domain: String) -> Self {
        TrustDomainVerifier { inner, trust_domain }
    }
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let got = verified_leaf(end_entity)?;
        if got.trust_domain() != self.trust_domain {
            return Err(PeerIdentityError::TrustDomain { got: got.to_string(), want: self.trust_domain.clone() }.into());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
