use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::ca::{self, CaError, InitOptions, LocalCa};
use super::certs::{issue, new_csr};
use super::*;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferry-tls-{name}-{}-{}", std::process::id(), fastrand::u32(..)));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn opts() -> InitOptions {
    InitOptions { root_validity: Duration::from_secs(86400 * 10), ca_validity: Duration::from_secs(86400 * 5), organization: "test".into() }
}

fn new_ca(name: &str) -> LocalCa {
    let d = tmpdir(name);
    ca::init(&d, &opts()).unwrap();
    let ca = LocalCa::load(&d).unwrap();
    let _ = std::fs::remove_dir_all(&d);
    ca
}

fn id(s: &str) -> Identity {
    format!("spiffe://cluster.local/ns/default/sa/{s}").parse().unwrap()
}

async fn cert(ca: &LocalCa, sa: &str) -> WorkloadCert {
    issue(ca, &id(sa), Duration::from_secs(3600)).await.unwrap()
}

/// A certificate with arbitrary parameters, signed by `ca`, assembled without the identity
/// check `from_ca_response` applies.
fn custom(ca: &LocalCa, identity: Identity, params: CertificateParams) -> WorkloadCert {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pems = ca.issue_custom(&params, &key);
    let chain: Vec<_> = pems[..pems.len() - 1].iter().flat_map(|p| parse_certs(p).unwrap()).collect();
    let roots = parse_certs(pems.last().unwrap()).unwrap();
    let chain = chain.into_iter().filter(|c| !roots.contains(c)).collect();
    WorkloadCert::assemble(identity, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())), chain, roots).unwrap()
}

fn leaf_params(uris: &[&str], not_before: time::OffsetDateTime, not_after: time::OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.subject_alt_names = uris.iter().map(|u| SanType::URI((*u).try_into().unwrap())).collect();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = not_before;
    p.not_after = not_after;
    p
}

/// Runs a handshake; returns (client result, server result) as the peer identity or the error.
async fn handshake(
    server: &WorkloadCert,
    client: &WorkloadCert,
    expect: Vec<Identity>,
) -> (Result<Identity, String>, Result<Identity, String>) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server.server_config());
    let connector = TlsConnector::from(client.client_config(expect));
    let srv = async move {
        let tls = acceptor.accept(s).await.map_err(|e| describe_tls_error(&e))?;
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        verify::leaf_identity(&leaf).map_err(|e| e.to_string())
    };
    let cli = async move {
        let tls = connector.connect(dummy_server_name(), c).await.map_err(|e| describe_tls_error(&e))?;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_H2));
        assert_eq!(tls.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        verify::leaf_identity(&leaf).map_err(|e| e.to_string())
    };
    tokio::join!(cli, srv)
}

#[tokio::test]
async fn ca_issues_workload_certificates() {
    let ca = new_ca("issue");
    let c = cert(&ca, "client").await;
    assert_eq!(c.identity, id("client"));
    assert_eq!(c.chain.len(), 2, "leaf and intermediate; never the root");
    assert_eq!(c.roots.len(), 1);
    assert!(!c.chain.contains(&c.roots[0]));
    let life = c.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(life > Duration::from_secs(3500) && life <= Duration::from_secs(3600), "{life:?}");
    assert!(c.refresh_at() < c.not_after && c.refresh_at() > SystemTime::now());
    let (chain, roots) = c.dump();
    assert_eq!(chain[0].uri_sans, vec![id("client").to_string()]);
    assert_eq!((chain.len(), roots.len()), (2, 1));
}

#[test]
fn init_refuses_to_overwrite_and_load_explains_problems() {
    let d = tmpdir("init");
    ca::init(&d, &opts()).unwrap();
    assert!(matches!(ca::init(&d, &opts()), Err(CaError::Exists(_))));
    let key_mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(d.join(ca::CA_KEY)).unwrap().permissions());
    assert_eq!(key_mode & 0o777, 0o600);
    // Swap in another CA's key: the mismatch is caught at load.
    let other = tmpdir("init-other");
    ca::init(&other, &opts()).unwrap();
    std::fs::copy(other.join(ca::CA_KEY), d.join(ca::CA_KEY)).unwrap();
    assert!(matches!(LocalCa::load(&d), Err(CaError::KeyMismatch { .. })));
    std::fs::write(d.join(ca::ROOT_CERT), "garbage").unwrap();
    let e = LocalCa::load(&d).err().unwrap().to_string();
    assert!(e.contains("root-cert.pem"), "{e}");
    std::fs::remove_file(d.join(ca::CA_CERT)).unwrap();
    let e = LocalCa::load(&d).err().unwrap().to_string();
    assert!(e.contains("cannot read ca-cert.pem"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&other);
}

#[test]
fn ca_signs_only_the_requested_identity() {
    let ca = new_ca("csr");
    let (_, csr) = new_csr(&id("a")).unwrap();
    let e = ca.sign_csr(&id("b"), &csr, Duration::from_secs(60)).unwrap_err();
    assert!(matches!(e, CaError::BadCsr(_)), "{e}");
    assert!(matches!(ca.sign_csr(&id("a"), "not a csr", Duration::from_secs(60)), Err(CaError::BadCsr(_))));
    let mut p = CertificateParams::default();
    p.subject_alt_names =
        vec![SanType::URI(id("a").to_string().try_into().unwrap()), SanType::URI(id("b").to_string().try_into().unwrap())];
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let two = p.serialize_request(&key).unwrap().pem().unwrap();
    assert!(matches!(ca.sign_csr(&id("a"), &two, Duration::from_secs(60)), Err(CaError::BadCsr(_))));
}

#[test]
fn a_certificate_for_another_identity_is_discarded() {
    let ca = new_ca("lying");
    let (key, csr) = new_csr(&id("a")).unwrap();
    let chain = ca.sign_csr(&id("a"), &csr, Duration::from_secs(60)).unwrap();
    let e = WorkloadCert::from_ca_response(id("b"), key, &chain).unwrap_err();
    assert!(matches!(e, TlsError::WrongIdentity { .. }), "{e}");
    assert!(matches!(WorkloadCert::from_ca_response(id("a"), vec![], &chain[..1]), Err(TlsError::ShortChain)));
}

#[tokio::test]
async fn mutual_tls_with_expected_identity() {
    let ca = new_ca("hs");
    let (server, client) = (cert(&ca, "server").await, cert(&ca, "client").await);
    let (c, s) = handshake(&server, &client, vec![id("other"), id("server")]).await;
    assert_eq!(c.unwrap(), id("server"));
    assert_eq!(s.unwrap(), id("client"));
}

#[tokio::test]
async fn unexpected_server_identity_is_refused() {
    let ca = new_ca("hs-wrong");
    let (server, client) = (cert(&ca, "attacker").await, cert(&ca, "client").await);
    let (c, s) = handshake(&server, &client, vec![id("server")]).await;
    let e = c.unwrap_err();
    assert!(e.contains("spiffe://cluster.local/ns/default/sa/attacker is not one of the expected identities"), "{e}");
    assert!(s.is_err());
}

#[tokio::test]
async fn other_ca_is_refused_both_ways() {
    let (ca1, ca2) = (new_ca("hs-ca1"), new_ca("hs-ca2"));
    let (server, client) = (cert(&ca1, "server").await, cert(&ca2, "client").await);
    // Same subject names, different keys: the signature check is what refuses it.
    let (c, s) = handshake(&server, &client, vec![id("server")]).await;
    let e = c.unwrap_err();
    assert!(e.contains("BadSignature") || e.contains("UnknownIssuer"), "{e}");
    assert!(s.is_err());
    let (server2, client2) = (cert(&ca2, "server").await, cert(&ca1, "client").await);
    let (c, s) = handshake(&server2, &client2, vec![id("server")]).await;
    assert!(c.is_err() && s.is_err());
}

#[tokio::test]
async fn expired_and_future_certificates_are_refused() {
    let ca = new_ca("hs-expired");
    let now = time::OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let expired = custom(&ca, id("server"), leaf_params(&[&id("server").to_string()], now - hour * 3, now - hour));
    let future = custom(&ca, id("server"), leaf_params(&[&id("server").to_string()], now + hour, now + hour * 3));
    let client = cert(&ca, "client").await;
    for server in [expired, future] {
        let (c, _) = handshake(&server, &client, vec![id("server")]).await;
        let e = c.unwrap_err();
        assert!(e.contains("certificate expired") || e.contains("not valid yet"), "{e}");
    }
    // An expired client is refused by the server.
    let expired_client = custom(&ca, id("client"), leaf_params(&[&id("client").to_string()], now - hour * 3, now - hour));
    let server = cert(&ca, "server").await;
    let (_, s) = handshake(&server, &expired_client, vec![id("server")]).await;
    let e = s.unwrap_err();
    assert!(e.contains("certificate expired"), "{e}");
}

#[tokio::test]
async fn peers_need_exactly_one_spiffe_san_in_our_trust_domain() {
    let ca = new_ca("hs-sans");
    let now = time::OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let server = cert(&ca, "server").await;
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("two SANs", vec![id("client").to_string(), id("admin").to_string()], "carries 2 URI SANs"),
        ("no SAN", vec![], "carries 0 URI SANs"),
        ("other trust domain", vec!["spiffe://evil.local/ns/default/sa/client".into()], "is not in trust domain cluster.local"),
        ("not SPIFFE", vec!["https://example.com/ns/default/sa/client".into()], "not a valid SPIFFE identity"),
        ("extra segment", vec![format!("{}/x", id("client"))], "not a valid SPIFFE identity"),
    ];
    for (name, sans, want) in cases {
        let refs: Vec<&str> = sans.iter().map(String::as_str).collect();
        let client = custom(&ca, id("client"), leaf_params(&refs, now - hour, now + hour));
        let (_, s) = handshake(&server, &client, vec![id("server")]).await;
        let e = s.expect_err(name);
        assert!(e.contains(want), "{name}: {e}");
    }
    // The dialer applies the same single-SAN rule to servers.
    let two = custom(&ca, id("server"), leaf_params(&[&id("server").to_string(), &id("admin").to_string()], now - hour, now + hour));
    let client = cert(&ca, "client").await;
    let (c, _) = handshake(&two, &client, vec![id("server")]).await;
    assert!(c.unwrap_err().contains("carries 2 URI SANs"));
}

#[tokio::test]
async fn leaves_whose_key_usage_forbids_signing_are_refused_both_ways() {
    use rcgen::KeyUsagePurpose as Ku;
    let ca = new_ca("hs-ku");
    let now = time::OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let leaf = |sa: &str, usages: &[Ku]| {
        let mut p = leaf_params(&[&id(sa).to_string()], now - hour, now + hour);
        p.key_usages = usages.to_vec();
        custom(&ca, id(sa), p)
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<Ku>, Option<&str>)> = vec![
        // (name, the leaf's key usage, the refusal; None: accepted)
        ("keyEncipherment only", vec![Ku::KeyEncipherment], Some("key usage lacks digitalSignature")),
        ("keyAgreement only", vec![Ku::KeyAgreement], Some("key usage lacks digitalSignature")),
        ("certificate signing only", vec![Ku::KeyCertSign], Some("key usage lacks digitalSignature")),
        ("digitalSignature and keyEncipherment (what Istio issues)", vec![Ku::DigitalSignature, Ku::KeyEncipherment], None),
        ("no key usage extension (unrestricted, RFC 5280)", vec![], None),
    ];
    for (name, usages, refusal) in cases {
        // The listener judges the client's leaf.
        let (_, s) = handshake(&cert(&ca, "server").await, &leaf("client", &usages), vec![id("server")]).await;
        // The dialer judges the server's leaf.
        let (c, _) = handshake(&leaf("server", &usages), &cert(&ca, "client").await, vec![id("server")]).await;
        match refusal {
            None => assert!(s.is_ok() && c.is_ok(), "{name}: {s:?} {c:?}"),
            Some(want) => {
                let (s, c) = (s.expect_err(name), c.expect_err(name));
                assert!(s.contains(want) && c.contains(want), "{name}: listener: {s}; dialer: {c}");
            }
        }
    }
}

#[tokio::test]
async fn serials_are_positive_twenty_random_bytes() {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let d = tmpdir("serials");
    ca::init(&d, &opts()).unwrap();
    let mut ders: Vec<Vec<u8>> = [ca::ROOT_CERT, ca::CA_CERT]
        .iter()
        .flat_map(|f| parse_certs(&std::fs::read_to_string(d.join(f)).unwrap()).unwrap())
        .map(|c| c.to_vec())
        .collect();
    let ca = LocalCa::load(&d).unwrap();
    let _ = std::fs::remove_dir_all(&d);
    for _ in 0..64 {
        ders.push(cert(&ca, "client").await.chain[0].to_vec());
    }
    let mut seen = std::collections::HashSet::new();
    for der in &ders {
        let (_, c) = X509Certificate::from_der(der).unwrap();
        let serial = c.raw_serial();
        // RFC 5280 §4.1.2.2: positive, at most 20 octets; CA/B forum wants at least 64 random bits.
        assert_eq!(serial.len(), 20, "{serial:02x?}");
        assert!(serial[0] & 0x80 == 0 && serial[0] != 0, "positive and minimally encoded: {serial:02x?}");
        assert!(seen.insert(serial.to_vec()), "a serial repeated: {serial:02x?}");
    }
}
