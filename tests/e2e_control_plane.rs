//! The simulated cluster on its real architecture (root only; fails without): one `ferry
//! controller` serving WDS and the CA API over TLS to every node proxy. What a user sees: the
//! proxies' state and certificates come from the controller; mesh traffic survives the
//! controller's death on last-known-good state; a restarted controller resumes every proxy
//! from what it holds (no full push); the CA refuses what a caller may not have, and says so
//! in its log and metrics; a NACK reaches the controller's log and metrics.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::sim::*;
use ferry::proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use ferry::proto::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ferry_core::proto::ca::IstioCertificateRequest;
use ferry_core::proto::xds::{DeltaDiscoveryRequest, Status};
use ferry_harness::sim::{apps, observe, Sim};
use nix::sys::signal::Signal;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const DEMO: &str = ferry_harness::demo::SCENARIO;
const FRONTEND: (&str, &str) = ("shop", "frontend");
const ADDRESS: &str = "type.googleapis.com/istio.workload.Address";

fn id(ns: &str, sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
}

/// Runs `f` on a runtime whose thread is inside node `i`'s network namespace (the controller
/// is reachable from the nodes, not from the machine's own namespace).
fn on_node<T: Send + 'static, F: std::future::Future<Output = T>>(sim: &Sim, i: usize, f: impl FnOnce() -> F + Send + 'static) -> T {
    let ns = ferry_sys::Netns::open(&std::path::PathBuf::from(format!("/var/run/netns/{}", sim.nodes[i].netns))).unwrap();
    std::thread::spawn(move || {
        ns.enter().unwrap();
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f())
    })
    .join()
    .unwrap()
}

async fn channel(url: String, name: &'static str, root: String) -> Channel {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(root)).domain_name(name);
    Endpoint::from_shared(url).unwrap().tls_config(tls).unwrap().connect().await.unwrap()
}

fn bearer<T>(body: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// A CSR for `identity` and the CA's answer: the chain, or the status code's name.
fn request_certificate(sim: &Sim, token: &str, identity: &str, impersonate: bool) -> Result<Vec<String>, String> {
    let (url, name) = sim.controller_address();
    let root = sim.root_cert().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(identity.to_string().try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let metadata = impersonate.then(|| {
        let v = prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(identity.to_string())) };
        prost_types::Struct { fields: [("ImpersonatedIdentity".to_string(), v)].into_iter().collect() }
    });
    let req = bearer(IstioCertificateRequest { csr, validity_duration: 3600, metadata }, token);
    on_node(sim, 0, move || async move {
        let mut ca = IstioCertificateServiceClient::new(channel(url, name, root).await);
        ca.create_certificate(req).await.map(|r| r.into_inner().cert_chain).map_err(|s| format!("{:?}", s.code()))
    })
}

fn counter(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    observe::metric(text, name, labels).unwrap_or(0.0)
}

fn xds_status(sim: &Sim, node: usize) -> serde_json::Value {
    sim.nodes[node].dump().unwrap()["xds"].clone()
}

#[test]
fn proxies_run_on_xds_and_the_ca_and_outlive_the_controller() {
    let mut sim = cluster(DEMO);
    let backend = sim.pod("shop", "backend").addr(8080);
    let (url, _) = sim.controller_address();
    for n in 0..2 {
        let dump = sim.nodes[n].dump().unwrap();
        assert_eq!(dump["config"]["xdsAddress"], url.as_str(), "state comes from the controller");
        assert_eq!(dump["config"]["ca"], url.as_str(), "certificates come from the controller's CA");
        let x = &dump["xds"];
        assert_eq!(x["connected"], true, "{x}");
        for t in [ADDRESS, "type.googleapis.com/istio.security.Authorization"] {
            assert!(x["types"][t]["responses"].as_u64() >= Some(1), "{t}: {x}");
        }
        assert!(dump["workloads"].as_array().is_some_and(|w| w.iter().any(|w| w["name"] == "backend")), "workloads over WDS");
    }
    let payload = b"through the controller's state".to_vec();
    assert_eq!(roundtrip(&sim, FRONTEND, backend, &payload).as_deref(), Some(&payload[..]));
    let certs = sim.nodes[0].dump().unwrap()["certificates"].clone();
    let frontend_cert = certs.as_array().and_then(|c| c.iter().find(|c| c["identity"] == id("shop", "frontend")).cloned());
    assert_eq!(frontend_cert.map(|c| c["state"].clone()), Some("Available".into()), "{certs}");
    let m = sim.controller_metrics().unwrap();
    assert!(counter(&m, "ferry_ca_requests_total", &[("result", "issued")]) >= 3.0, "one per local identity per node:\n{m}");

    // The controller dies: a held connection keeps flowing, new connections still work, on
    // the state and certificates the proxies hold.
    let mut held = apps::connect(&sim.pod("shop", "frontend").netns_path(), backend).unwrap();
    held.write_all(b"before the controller died, ").unwrap();
    sim.stop_controller(Signal::SIGKILL);
    eventually("the proxies to notice the controller is gone", || (0..2).all(|n| xds_status(&sim, n)["connected"] == false));
    held.write_all(b"after").unwrap();
    held.shutdown(std::net::Shutdown::Write).unwrap();
    let mut echoed = String::new();
    held.read_to_string(&mut echoed).unwrap();
    assert_eq!(echoed, "before the controller died, after");
    let fresh = b"a new connection without a controller".to_vec();
    assert_eq!(roundtrip(&sim, FRONTEND, backend, &fresh).as_deref(), Some(&fresh[..]), "last-known-good state and certificates");
    assert!(sim.nodes[0].ready(), "a proxy that has its state stays ready");

    // It comes back: every proxy resumes with what it holds, so nothing is pushed again.
    sim.start_controller().unwrap();
    eventually("the proxies to reconnect", || {
        (0..2).all(|n| {
            let x = xds_status(&sim, n);
            x["connected"] == true && x["streams"].as_u64() == Some(2)
        })
    });
    for n in 0..2 {
        let x = xds_status(&sim, n);
        let received: Vec<u64> = x["types"].as_object().unwrap().values().map(|t| t["receivedThisStream"].as_u64().unwrap()).collect();
        assert!(received.iter().all(|r| *r == 0), "a resumed stream needs no push: {x}");
    }
    let m = sim.controller_metrics().unwrap();
    assert_eq!(counter(&m, "ferry_xds_resources_sent_total", &[("type", "address")]), 0.0, "no full push after a restart:\n{m}");
    assert_eq!(roundtrip(&sim, FRONTEND, backend, &payload).as_deref(), Some(&payload[..]));
    let proxy_metrics = sim.nodes[0].metrics().unwrap();
    assert!(proxy_metrics.contains("istio_xds_connection_terminations_total{"), "the broken stream is counted:\n{proxy_metrics}");
    assert!(counter(&proxy_metrics, "istio_xds_message_total", &[("url", ADDRESS)]) >= 1.0, "{proxy_metrics}");
}

#[test]
fn the_ca_refuses_what_a_caller_may_not_have_and_says_so() {
    let sim = cluster(DEMO);
    let (node1, node2) = (sim.node_token_value(0).unwrap(), sim.node_token_value(1).unwrap());
    // An identity that runs only on node-2 (the demo's identities all run on node-1 too).
    let db = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "db", "namespace": "shop", "uid": "uid-db"},
        "spec": {"nodeName": "node-2", "serviceAccountName": "db"},
        "status": {"phase": "Running"},
    });
    sim.write_object("Pod", "shop", "db", &db.to_string()).unwrap();
    let (frontend, db) = (id("shop", "frontend"), id("shop", "db"));
    assert!(request_certificate(&sim, &node1, &frontend, true).is_ok(), "a node proxy may have its own pods' identities");
    assert!(request_certificate(&sim, &node2, &db, true).is_ok(), "node-2's proxy may have db's identity");
    let wrong_audience = sim.issue_token("istio-system/ztunnel/ztunnel-node-1/ztunnel-uid-0", Some("kubernetes.default.svc")).unwrap();
    let workload = sim.issue_token("shop/frontend", None).unwrap();
    let refusals = [
        ("a pod on another node", node1.as_str(), db.as_str(), "PermissionDenied"),
        ("an invalid token", "not-a-token", frontend.as_str(), "Unauthenticated"),
        ("a token for another audience", wrong_audience.as_str(), frontend.as_str(), "Unauthenticated"),
        ("a workload account impersonating", workload.as_str(), db.as_str(), "PermissionDenied"),
    ];
    for (case, token, who, want) in refusals {
        assert_eq!(request_certificate(&sim, token, who, true).err().as_deref(), Some(want), "{case}");
    }
    let own = sim.issue_token("shop/frontend", None).unwrap();
    assert!(request_certificate(&sim, &own, &frontend, false).is_ok(), "a workload account gets its own identity");
    let m = sim.controller_metrics().unwrap();
    assert_eq!(counter(&m, "ferry_ca_requests_total", &[("result", "denied")]), 2.0, "{m}");
    assert_eq!(counter(&m, "ferry_ca_requests_total", &[("result", "unauthenticated")]), 2.0, "{m}");
    let log = std::fs::read_to_string(sim.controller_log()).unwrap();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("certificate request refused")).collect();
    assert_eq!(refused.len(), 4, "every refusal is logged:\n{log}");
    for (words, case) in [
        ("no pod with that identity runs on that node", "other node"),
        ("unknown token", "invalid token"),
        ("not istio-ca", "audience"),
        ("not a trusted node account", "workload account"),
    ] {
        assert!(refused.iter().any(|l| l.contains(words)), "the {case} refusal says why ({words:?}):\n{}", refused.join("\n"));
    }
}

#[test]
fn a_nack_reaches_the_controllers_log_and_metrics() {
    let sim = cluster(DEMO);
    let (url, name) = sim.controller_address();
    let (root, token) = (sim.root_cert().unwrap(), sim.node_token_value(0).unwrap());
    on_node(&sim, 0, move || async move {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(DeltaDiscoveryRequest { type_url: ADDRESS.into(), ..Default::default() }).await.unwrap();
        let mut ads = AggregatedDiscoveryServiceClient::new(channel(url, name, root).await);
        let req = bearer(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx), &token);
        let mut responses = ads.delta_aggregated_resources(req).await.unwrap().into_inner();
        let first = responses.message().await.unwrap().expect("a first response");
        assert!(!first.resources.is_empty(), "the demo's workloads");
        let nack = Status { code: 3, message: "Kubernetes//Pod/shop/frontend: this client cannot read it".into(), details: vec![] };
        let reply =
            DeltaDiscoveryRequest { type_url: ADDRESS.into(), response_nonce: first.nonce, error_detail: Some(nack), ..Default::default() };
        tx.send(reply).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let m = sim.controller_metrics().unwrap();
    assert_eq!(counter(&m, "ferry_xds_nacks_total", &[("type", "address")]), 1.0, "{m}");
    let log = std::fs::read_to_string(sim.controller_log()).unwrap();
    assert!(
        log.lines().any(|l| l.contains("NACK") && l.contains("this client cannot read it") && l.contains("istio-system/ztunnel")),
        "the NACK is logged with the client and its reason:\n{log}"
    );
}
