//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, never in a product build).
//! Each runs one parser that takes input from outside the proxy, called the way the data path
//! calls it; a panic, a hang or unbounded memory in any of them is a bug.

use std::sync::OnceLock;

use ferry_core::addr::parse_authority;
use ferry_core::identity::Identity;
use ferry_core::ports::Ports;
use ferry_core::state::Snapshot;
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message;

/// A node with one HBONE pod behind a service, for resolving fuzzed CONNECT targets.
const STATE: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/server
  name: server
  namespace: default
  serviceAccount: server
  workloadIps: ["10.0.0.2"]
  protocol: HBONE
  node: local
  services:
    "default/echo.default.svc.cluster.local":
      80: 8080
services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  vips: ["/10.96.0.1"]
  ports: {80: 8080}
"#;

fn snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| Snapshot::build(ferry_core::local_config::parse(STATE, "fuzz").expect("fixed fuzz state parses"), 1))
}

/// A CONNECT request as the HBONE listener sees it after h2 decoded it: the first line is the
/// `:authority`, each further line `name: value`. Runs the authority parse, the target
/// resolution against a fixed node, and the baggage the source is labelled from.
pub fn connect_request(data: &[u8]) {
    let mut lines = data.split(|b| *b == b'\n');
    let Some(authority) = lines.next() else { return };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(line[colon + 1..].trim_ascii()))
        else {
            continue;
        };
        headers.append(name, value);
    }
    let _ = crate::hbone::parse_baggage(&headers);
    // h2 hands the proxy an `http::uri::Authority`; only what that accepts reaches ferry.
    let Ok(authority) = http::uri::Authority::try_from(authority) else { return };
    let Some(target) = parse_authority(authority.as_str()) else { return };
    let snap = snapshot();
    let Some(local) = snap.find_workload("default", "server", None) else { return };
    let arrived = local.addresses[0];
    let _ = ferry_core::route::inbound_target(snap, local, arrived, &target, &Ports::default());
}

/// A peer's leaf certificate (DER), through both verifiers' identity and key-usage checks.
pub fn peer_certificate(der: &[u8]) {
    let _ = crate::tls::verify::leaf_identity(der);
    let _ = crate::tls::verify::verified_leaf(der);
}

/// A CA response's certificate chain (PEM strings separated by NUL bytes), as the proxy turns it
/// into a workload certificate for a fixed identity and key.
pub fn ca_response(data: &[u8]) {
    static KEY: OnceLock<(Identity, Vec<u8>)> = OnceLock::new();
    let (identity, key) = KEY.get_or_init(|| {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/default".parse().expect("fixed identity parses");
        let (key, _) = crate::tls::certs::new_csr(&id).expect("a CSR for a fixed identity");
        (id, key)
    });
    let pems: Vec<String> = data.split(|b| *b == 0).map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    if let Ok(cert) = crate::tls::WorkloadCert::from_ca_response(identity.clone(), key.clone(), &pems) {
        let _ = cert.dump();
    }
}

/// One ZDS message from the node agent, decoded as the proxy decodes it; an Add's workload
/// info goes through the identity the proxy would serve.
pub fn zds_message(data: &[u8]) {
    use crate::proto::workload::zds::{workload_request::Payload, WorkloadRequest, WorkloadResponse};
    let _ = WorkloadResponse::decode(data);
    let Ok(req) = WorkloadRequest::decode(data) else { return };
    if let Some(Payload::Add(add)) = req.payload {
        if let Some(info) = add.workload_info {
            let _ = Identity::new("cluster.local", &info.namespace, &info.service_account);
        }
    }
}
