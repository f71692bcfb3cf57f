//! Certificate authorities: the [`CaClient`] seam the certificate manager signs through, and
//! [`LocalCa`], ferry's built-in CA for running without a control plane.
//!
//! `LocalCa` reads Istio's plugged-in CA layout (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
//! `cert-chain.pem`), so several proxies sharing one directory share one root. It signs only
//! CSRs whose single SAN is the SPIFFE identity requested, and always sets the validity, key
//! usages and EKUs itself: nothing in a CSR can widen what it issues.

use std::fs;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use ferry_core::identity::Identity;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub(crate) const CA_CERT: &str = "ca-cert.pem";
pub(crate) const CA_KEY: &str = "ca-key.pem";
pub(crate) const ROOT_CERT: &str = "root-cert.pem";
pub(crate) const CERT_CHAIN: &str = "cert-chain.pem";

/// Clock skew tolerated between proxies sharing a CA.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA directory {dir}: cannot read {file}: {source}")]
    Read { dir: PathBuf, file: &'static str, source: std::io::Error },
    #[error("CA directory {dir}: {file} is not a valid {what}: {reason}")]
    Parse { dir: PathBuf, file: &'static str, what: &'static str, reason: String },
    #[error("CA directory {dir}: {CA_KEY} does not match the public key of {CA_CERT}")]
    KeyMismatch { dir: PathBuf },
    #[error("CA directory {0} already holds CA files; refusing to overwrite them")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("certificate request rejected: {0}")]
    BadCsr(String),
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("CA unavailable: {0}")]
    Unavailable(String),
}

/// Signs workload CSRs. Implemented by the built-in CA and (later) Istio's CA API client.
pub trait CaClient: Send + Sync + 'static {
    /// Returns `[leaf, intermediates.., root bundle]` as PEM, per protocols.md §5.
    fn sign<'a>(&'a self, identity: &'a Identity, csr_pem: String, ttl: Duration) -> BoxFuture<'a, Result<Vec<String>, CaError>>;
}

/// A CA whose signing key is on local disk.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    /// PEMs between the leaf and the root: the CA certificate unless it is itself a root.
    intermediates: Vec<String>,
    root_bundle: String,
}

impl LocalCa {
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let read = |file: &'static str| {
            fs::read_to_string(dir.join(file)).map_err(|source| CaError::Read { dir: dir.to_path_buf(), file, source })
        };
        let parse_err = |file, what, reason: String| CaError::Parse { dir: dir.to_path_buf(), file, what, reason };
        let ca_cert = read(CA_CERT)?;
        let key = KeyPair::from_pem(&read(CA_KEY)?).map_err(|e| parse_err(CA_KEY, "private key", e.to_string()))?;
        let root_bundle = read(ROOT_CERT)?;
        let roots = super::parse_certs(&root_bundle).map_err(|e| parse_err(ROOT_CERT, "certificate bundle", e.to_string()))?;
        let ca_der = super::parse_certs(&ca_cert).map_err(|e| parse_err(CA_CERT, "certificate", e.to_string()))?;
        if spki_of(&ca_der[0]).as_deref() != Some(key.public_key_raw()) {
            return Err(CaError::KeyMismatch { dir: dir.to_path_buf() });
        }
        let chain_pem = match fs::read_to_string(dir.join(CERT_CHAIN)) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ca_cert.clone(),
            Err(source) => return Err(CaError::Read { dir: dir.to_path_buf(), file: CERT_CHAIN, source }),
        };
        let chain = super::parse_certs(&chain_pem).map_err(|e| parse_err(CERT_CHAIN, "certificate chain", e.to_string()))?;
        let intermediates = chain.iter().filter(|c| !roots.contains(c)).map(|c| to_pem(c)).collect();
        let issuer = Issuer::from_ca_cert_pem(&ca_cert, key).map_err(|e| parse_err(CA_CERT, "CA certificate", e.to_string()))?;
        Ok(LocalCa { issuer, intermediates, root_bundle })
    }

    /// Signs `csr_pem` for `identity`, valid for `ttl` from now.
    pub(crate) fn sign_csr(&self, identity: &Identity, csr_pem: &str, ttl: Duration) -> Result<Vec<String>, CaError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::BadCsr(e.to_string()))?;
        let want = identity.to_string();
        match csr.params.subject_alt_names.as_slice() {
            [SanType::URI(uri)] if uri.as_str() == want => {}
            other => {
                return Err(CaError::BadCsr(format!("the CSR must carry exactly one URI SAN {want}, it carries {other:?}")));
            }
        }
        let now = time::OffsetDateTime::now_utc();
        let p = &mut csr.params;
        p.not_before = now - BACKDATE;
        p.not_after = now + ttl;
        p.serial_number = Some(random_serial()?);
        p.distinguished_name = DistinguishedName::new();
        p.is_ca = IsCa::NoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.name_constraints = None;
        p.custom_extensions.clear();
        p.use_authority_key_identifier_extension = true;
        let leaf = csr.signed_by(&self.issuer).map_err(|e| CaError::Sign(e.to_string()))?;
        let mut out = Vec::with_capacity(self.intermediates.len() + 2);
        out.push(leaf.pem());
        out.extend(self.intermediates.iter().cloned());
        out.push(self.root_bundle.clone());
        Ok(out)
    }
}

impl CaClient for LocalCa {
    fn sign<'a>(&'a self, identity: &'a Identity, csr_pem: String, ttl: Duration) -> BoxFuture<'a, Result<Vec<String>, CaError>> {
        Box::pin(async move { self.sign_csr(identity, &csr_pem, ttl) })
    }
}

/// Options for [`init`].
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub root_validity: Duration,
    pub ca_validity: Duration,
    pub organization: String,
}

/// Creates a root and an intermediate CA in Istio's plugged-in layout. Refuses to touch a
/// directory that already holds any of the four files.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<(), CaError> {
    for f in [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN] {
        if dir.join(f).exists() {
            return Err(CaError::Exists(dir.to_path_buf()));
        }
    }
    fs::create_dir_all(dir).map_err(|source| CaError::Write { path: dir.to_path_buf(), source })?;
    let sign_err = |e: rcgen::Error| CaError::Sign(e.to_string());
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign_err)?;
    let root_params = ca_params(&opts.organization, "ferry root CA", opts.root_validity, 1)?;
    let root = root_params.self_signed(&root_key).map_err(sign_err)?;
    let root_issuer = Issuer::new(root_params, root_key);
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign_err)?;
    let ca =
        ca_params(&opts.organization, "ferry intermediate CA", opts.ca_validity, 0)?.signed_by(&ca_key, &root_issuer).map_err(sign_err)?;
    write_file(&dir.join(CA_KEY), &ca_key.serialize_pem(), 0o600)?;
    write_file(&dir.join(CA_CERT), &ca.pem(), 0o644)?;
    write_file(&dir.join(ROOT_CERT), &root.pem(), 0o644)?;
    write_file(&dir.join(CERT_CHAIN), &format!("{}{}", ca.pem(), root.pem()), 0o644)?;
    Ok(())
}

fn ca_params(org: &str, cn: &str, validity: Duration, path_len: u8) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - BACKDATE;
    p.not_after = now + validity;
    p.serial_number = Some(random_serial()?);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, org);
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(p)
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| CaError::Write { path: path.to_path_buf(), source })?;
    f.write_all(contents.as_bytes()).map_err(|source| CaError::Write { path: path.to_path_buf(), source })
}

/// A serial from the operating system's CSPRNG (ring's, through rustls): 20 octets, the most
/// RFC 5280 §4.1.2.2 allows, positive and without a leading zero octet (158 random bits), so
/// serials cannot be predicted and never repeat in practice.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut b = [0u8; 20];
    super::provider().secure_random.fill(&mut b).map_err(|_| CaError::Sign("the system random number generator failed".into()))?;
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // no leading zero octet, so the DER integer keeps all 20
    Ok(SerialNumber::from_slice(&b))
}

fn to_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der))
}

impl LocalCa {
    /// The root bundle (`root-cert.pem`), as published in `istio-ca-root-cert`.
    pub(crate) fn root_bundle(&self) -> &str {
        &self.root_bundle
    }

    /// A TLS serving certificate for `dns_names` (the control plane's address as clients dial
    /// it), with a fresh P-256 key: `(chain PEM, leaf first, root last; key PEM)`.
    pub(crate) fn serving_certificate(&self, dns_names: &[String], ttl: Duration) -> Result<(String, String), CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let mut p = CertificateParams::new(dns_names.to_vec()).map_err(|e| CaError::Sign(e.to_string()))?;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - BACKDATE;
        p.not_after = now + ttl;
        p.serial_number = Some(random_serial()?);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let leaf = p.signed_by(&key, &self.issuer).map_err(|e| CaError::Sign(e.to_string()))?;
        let mut chain = leaf.pem();
        for i in &self.intermediates {
            chain.push_str(i);
        }
        chain.push_str(&self.root_bundle);
        Ok((chain, key.serialize_pem()))
    }
}

/// The raw subject public key bits of a certificate.
fn spki_of(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, c) = X509Certificate::from_der(der).ok()?;
    Some(c.public_key().subject_public_key.data.to_vec())
}

#[cfg(test)]
impl LocalCa {
    /// Signs arbitrary leaf parameters (for tests that need certificates the CA never issues).
    pub(crate) fn issue_custom(&self, params: &CertificateParams, key: &KeyPair) -> Vec<String> {
        let leaf = params.signed_by(key, &self.issuer).expect("test certificate");
        let mut out = vec![leaf.pem()];
        out.extend(self.intermediates.iter().cloned());
        out.push(self.root_bundle.clone());
        out
    }
}
