//! `/config_dump` read the way istioctl and Kiali read ztunnel's (root only; fails without): a
//! simulated cluster with workloads, a service, a policy, certificates and an open connection,
//! its node proxy's dump deserialised into types transcribed from each reader. Go's decoder
//! fails on a type mismatch and zero-fills a missing field, so a renamed field shows up as
//! an empty column there; here the fields the readers display are required, so a rename fails.

mod common;

use std::io::Write;

use common::sim::*;
use ferry_harness::sim::apps;

/// Appended to `FRONTEND_BACKEND`: a service over backend and a policy.
const SERVICE_AND_POLICY: &str = r#"---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: shop}
spec:
  selector: {app: backend}
  clusterIP: 198.19.0.10
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-frontend, namespace: shop}
spec: {selector: {matchLabels: {app: backend}}, rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]}
"#;

/// istioctl's reader: istio/istio `istioctl/pkg/writer/ztunnel/configdump/api.go` at commit
/// d929cf5b80ce5267361fbe184136ed70b809a8ef (the `ZtunnelDump` that `Prime()` in
/// configdump.go fills, list-or-map version). Go `omitempty` fields are `Option` here.
// Fields are read by deserialising (their names and types are the check), not by the test.
#[allow(dead_code)]
mod istioctl {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    pub struct Dump {
        pub workloads: Vec<Workload>,
        pub services: Vec<Service>,
        pub policies: Vec<Policy>,
        pub certificates: Vec<Certs>,
        pub workload_state: BTreeMap<String, WorkloadState>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    pub struct Workload {
        pub uid: String,
        pub workload_ips: Vec<String>,
        pub waypoint: Option<Gateway>,
        pub network_gateway: Option<Gateway>,
        pub protocol: String,
        pub name: String,
        pub namespace: String,
        pub service_account: String,
        pub workload_name: String,
        pub workload_type: String,
        pub canonical_name: String,
        pub canonical_revision: String,
        pub cluster_id: String,
        pub trust_domain: Option<String>,
        pub locality: Option<Locality>,
        pub node: String,
        pub network: Option<String>,
        pub status: String,
        pub hostname: String,
        pub capacity: u32,
        pub application_tunnel: Option<AppTunnel>,
        pub authorization_policies: Option<Vec<String>>,
    }

    #[derive(Deserialize, Debug)]
    pub struct Locality {
        pub region: Option<String>,
        pub zone: Option<String>,
        pub subzone: Option<String>,
    }

    #[derive(Deserialize, Debug)]
    pub struct AppTunnel {
        pub protocol: String,
        pub port: Option<u16>,
    }

    #[derive(Deserialize, Debug)]
    pub struct Gateway {
        pub destination: String,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    pub struct Service {
        pub name: String,
        pub namespace: String,
        pub hostname: String,
        pub vips: Vec<String>,
        pub ports: BTreeMap<String, i64>,
        pub load_balancer: Option<LoadBalancer>,
        pub waypoint: Option<Gateway>,
        pub endpoints: BTreeMap<String, Endpoint>,
        pub subject_alt_names: Option<Vec<String>>,
        pub ip_families: String,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    pub struct LoadBalancer {
        pub mode: String,
        pub routing_preferences: Vec<String>,
        pub health_policy: String,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    pub struct Endpoint {
        pub workload_uid: String,
        pub service: String,
        pub address: Option<String>,
        pub port: BTreeMap<u16, u16>,
    }

    #[derive(Deserialize, Debug)]
    pub struct Policy {
        pub name: String,
        pub namespace: String,
        pub scope: String,
        pub action: String,
        pub rules: Vec<Vec<Vec<Match>>>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    pub struct Match {
        pub namespaces: Option<Vec<StringMatch>>,
        pub not_namespaces: Option<Vec<StringMatch>>,
        pub principals: Option<Vec<StringMatch>>,
        pub not_principals: Option<Vec<StringMatch>>,
        pub source_ips: Option<Vec<String>>,
        pub not_source_ips: Option<Vec<String>>,
        pub destination_ips: Option<Vec<String>>,
        pub not_destination_ips: Option<Vec<String>>,
        pub destination_ports: Option<Vec<u16>>,
        pub not_destination_ports: Option<Vec<u16>>,
        pub service_accounts: Option<Vec<ServiceAccountMatch>>,
        pub not_service_accounts: Option<Vec<ServiceAccountMatch>>,
    }

    /// Go's `StringMatch` is a struct: a match must be an object, never a bare string.
    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "PascalCase")]
    pub struct StringMatch {
        pub exact: Option<String>,
        pub suffix: Option<String>,
        pub prefix: Option<String>,
        pub presence: Option<serde_json::Value>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    pub struct ServiceAccountMatch {
        pub namespace: String,
        pub service_account: String,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    pub struct Certs {
        pub identity: String,
        pub state: String,
        pub cert_chain: Vec<Cert>,
        pub root_certs: Vec<Cert>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    pub struct Cert {
        pub pem: String,
        pub serial_number: String,
        pub valid_from: String,
        pub expiration_time: String,
    }

    #[derive(Deserialize, Debug)]
    pub struct WorkloadState {
        pub state: String,
        pub connections: Connections,
        pub info: WorkloadInfo,
    }

    #[derive(Deserialize, Debug)]
    pub struct Connections {
        pub inbound: Vec<Connection>,
        pub outbound: Vec<Connection>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    pub struct WorkloadInfo {
        pub name: String,
        pub namespace: String,
        pub trust_domain: String,
        pub service_account: String,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    pub struct Connection {
        pub src: String,
        pub original_dst: String,
        pub actual_dst: String,
        pub protocol: String,
    }
}

/// Kiali's reader: kiali/kiali `kubernetes/ztunnel.go` (`ZtunnelConfigDump`, unmarshalled by
/// `kubernetes/cache/ztunnel_dump.go`) at commit d733a096e02eea357a274edcbbde8314e80786f4.
/// Only the `config` keys ferry writes are listed; Kiali's other config keys are absent
/// from ferry's dump, which Go zero-fills. Those ferry does write must have Kiali's types.
#[allow(dead_code)]
mod kiali {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    pub struct Dump {
        pub certificates: Vec<Certificate>,
        pub config: Config,
        pub policies: Vec<serde_json::Value>,
        pub services: Vec<Service>,
        pub workloads: Vec<Workload>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    pub struct Certificate {
        pub cert_chain: Vec<CertChain>,
        pub identity: String,
        pub state: String,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    pub struct CertChain {
        pub expiration_time: String,
        pub pem: String,
        pub serial_number: Option<String>,
        pub valid_from: String,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    pub struct Config {
        pub admin_addr: Option<serde_json::Map<String, serde_json::Value>>,
        pub ca_address: String,
        pub cluster_domain: String,
        pub cluster_id: String,
        pub connection_window_size: i64,
        pub frame_size: i64,
        pub inpod_port_reuse: bool,
        pub inpod_uds: String,
        pub local_node: String,
        pub network: String,
        pub num_worker_threads: i64,
        pub packet_mark: Option<i64>,
        pub pool_max_streams_per_conn: i64,
        pub pool_unused_release_timeout: TimeDuration,
        pub proxy_metadata: BTreeMap<String, String>,
        pub proxy_mode: String,
        pub readiness_addr: SocketAddress,
        pub secret_ttl: TimeDuration,
        pub self_termination_deadline: TimeDuration,
        pub stats_addr: SocketAddress,
        pub window_size: i64,
        pub xds_address: Option<String>,
    }

    #[derive(Deserialize, Debug)]
    pub struct TimeDuration {
        pub nanos: i64,
        pub secs: i64,
    }

    #[derive(Deserialize, Debug)]
    pub struct SocketAddress {
        #[serde(rename = "SocketAddr")]
        pub socket_addr: String,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    pub struct Service {
        pub endpoints: BTreeMap<String, Endpoint>,
        pub hostname: String,
        pub ip_families: String,
        pub name: String,
        pub namespace: String,
        pub ports: BTreeMap<String, i64>,
        pub subject_alt_names: Vec<String>,
        pub vips: Vec<String>,
        pub waypoint: Option<Waypoint>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    pub struct Endpoint {
        pub port: BTreeMap<String, i64>,
        pub status: String,
        pub workload_uid: String,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    pub struct Waypoint {
        pub destination: String,
        pub hbone_mtls_port: i64,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    pub struct Workload {
        pub canonical_name: String,
        pub canonical_revision: String,
        pub cluster_id: String,
        pub name: String,
        pub namespace: String,
        pub network_mode: String,
        pub node: String,
        pub protocol: String,
        pub service_account: String,
        pub services: Vec<String>,
        pub status: String,
        pub trust_domain: String,
        pub uid: String,
        pub workload_ips: Vec<String>,
        pub workload_name: String,
        pub workload_type: String,
    }
}

#[test]
fn istioctl_and_kiali_read_the_config_dump() {
    let sim = cluster(&format!("{FRONTEND_BACKEND}{SERVICE_AND_POLICY}"));
    let (frontend, backend) = (sim.pod("shop", "frontend"), sim.pod("shop", "backend"));
    let mut held = apps::connect(&frontend.netns_path(), backend.addr(8080)).unwrap();
    held.write_all(b"held open").unwrap();
    let node = &sim.nodes[backend.node];
    // The echo server answers at EOF; the connection is open once its proxy tracks it.
    let src = frontend.ip.to_string();
    let open = |d: &serde_json::Value| {
        d["workloadState"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .any(|w| w["connections"]["inbound"].as_array().is_some_and(|c| c.iter().any(|c| c["src"].as_str() == Some(src.as_str()))))
    };
    eventually("the held connection in workloadState", || node.dump().is_ok_and(|d| open(&d)));
    let raw = node.admin("/config_dump").unwrap();

    let d: istioctl::Dump = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("istioctl's types: {e}\n{raw}"));
    let b = d.workloads.iter().find(|w| w.name == "backend").expect("backend in workloads");
    assert_eq!(b.workload_ips, vec![backend.ip.to_string()]);
    assert_eq!((b.namespace.as_str(), b.service_account.as_str(), b.protocol.as_str()), ("shop", "backend", "HBONE"));
    assert_eq!(b.node, "node-2");
    let svc = d.services.iter().find(|s| s.name == "backend").expect("backend service");
    assert_eq!(svc.vips, vec!["/198.19.0.10".to_string()], "network/ip strings");
    let ep = svc.endpoints.get(&b.uid).unwrap_or_else(|| panic!("backend is an endpoint: {:?}", svc.endpoints));
    assert_eq!((ep.workload_uid.as_str(), ep.port.get(&80)), (b.uid.as_str(), Some(&8080)));
    let p = d.policies.iter().find(|p| p.name == "allow-frontend").expect("the policy");
    let principal = p.rules[0][0][0].principals.as_ref().and_then(|m| m[0].exact.clone());
    assert_eq!((p.action.as_str(), principal.as_deref()), ("Allow", Some("cluster.local/ns/shop/sa/frontend")));
    let cert = d.certificates.iter().find(|c| c.identity == "spiffe://cluster.local/ns/shop/sa/backend").expect("backend's cert");
    assert_eq!(cert.state, "Available");
    assert_eq!((cert.cert_chain.len(), cert.root_certs.len()), (2, 1), "leaf and intermediate, then the root");
    let leaf = &cert.cert_chain[0];
    assert!(leaf.serial_number.chars().all(|c| c.is_ascii_digit()) && !leaf.serial_number.is_empty(), "decimal: {leaf:?}");
    assert!(leaf.valid_from.ends_with('Z') && leaf.expiration_time > leaf.valid_from, "RFC 3339: {leaf:?}");
    assert!(base64_decodes_to_pem(&leaf.pem), "{}", leaf.pem);
    let (uid, ws) = d.workload_state.iter().find(|(_, s)| s.info.name == "backend").expect("backend's workloadState");
    assert!(!uid.is_empty());
    assert_eq!((ws.state.as_str(), ws.info.namespace.as_str(), ws.info.trust_domain.as_str()), ("Up", "shop", "cluster.local"));
    let conn = ws.connections.inbound.iter().find(|c| c.src == frontend.ip.to_string()).expect("the held connection");
    assert_eq!((conn.actual_dst.as_str(), conn.protocol.as_str()), (backend.addr(8080).to_string().as_str(), "HBONE"));
    assert!(ws.connections.outbound.is_empty(), "backend opened nothing");

    // The same connection from the client side: listed as outbound on frontend's node.
    let client_raw = sim.nodes[frontend.node].admin("/config_dump").unwrap();
    let cd: istioctl::Dump = serde_json::from_str(&client_raw).unwrap_or_else(|e| panic!("istioctl's types: {e}\n{client_raw}"));
    let (_, fs) = cd.workload_state.iter().find(|(_, s)| s.info.name == "frontend").expect("frontend's workloadState");
    let out = fs
        .connections
        .outbound
        .iter()
        .find(|c| c.original_dst == backend.addr(8080).to_string())
        .unwrap_or_else(|| panic!("the held connection as outbound: {fs:?}"));
    assert_eq!(out.actual_dst, format!("{}:15008", backend.ip), "the tunnel goes to the backend's HBONE port");
    assert_eq!((out.src.split(':').next(), out.protocol.as_str()), (Some(src.as_str()), "HBONE"));

    let k: kiali::Dump = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("Kiali's types: {e}\n{raw}"));
    let kb = k.workloads.iter().find(|w| w.name == "backend").unwrap();
    assert_eq!(kb.services, vec!["shop/backend.shop.svc.cluster.local".to_string()]);
    assert_eq!(kb.workload_ips, vec![backend.ip.to_string()]);
    assert!(k.services.iter().any(|s| s.vips == ["/198.19.0.10"] && s.endpoints.contains_key(&kb.uid)));
    assert!(k.certificates.iter().any(|c| c.state == "Available" && !c.cert_chain.is_empty()));
    assert_eq!((k.config.proxy_mode.as_str(), k.config.local_node.as_str()), ("Shared", "node-2"));
    assert_eq!(k.config.stats_addr.socket_addr, "[::]:15020");
    assert!(k.config.secret_ttl.secs > 0 && k.config.num_worker_threads >= 1);
    assert!(!k.policies.is_empty());
    drop(held);
}

/// What ztunnel writes in `pem`: the PEM text, base64-encoded.
fn base64_decodes_to_pem(s: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .is_some_and(|pem| pem.starts_with("-----BEGIN CERTIFICATE-----"))
}
