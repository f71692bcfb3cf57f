//! `ferry controller` (the binary, without `--cluster-state`) on a fake Kubernetes API server
//! found through `KUBECONFIG`: not ready while a kind's list fails, ready once every kind has
//! listed, then serving WDS to a delta-xDS client, and pushing a pod added on the API (TCP
//! until it carries `ambient.istio.io/redirection: enabled`, then HBONE, as istiod); without
//! `--token-file`, xDS and CA callers are reviewed by TokenReview (accepted, unknown, wrong
//! audience, not a node proxy).

#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use ferry::proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use ferry::proto::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ferry_core::proto::ca::IstioCertificateRequest;
use ferry_core::proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use serde_json::json;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const ADDRESS: &str = "type.googleapis.com/istio.workload.Address";
const TOKEN: &str = "tok-node-1";
const DEADLINE: Duration = Duration::from_secs(30);

/// A `ferry controller` process, killed on drop.
struct Controller {
    child: Child,
    xds: String,
    readiness: String,
    stats: String,
    log: PathBuf,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on now (the controller binds it right after).
fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn ferry(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.current_dir(dir).env_remove("FERRY_CLUSTER_STATE").env_remove("KUBERNETES_SERVICE_HOST");
    c
}

/// Starts the controller on `server`; with `token_file`, callers are checked against a file
/// accepting [`TOKEN`], else by TokenReview.
fn start_controller(dir: &Path, server: &FakeApiServer, token_file: bool) -> Controller {
    std::fs::write(dir.join("kubeconfig"), server.kubeconfig()).unwrap();
    let status = ferry(dir).args(["ca", "init", "ca"]).stderr(Stdio::null()).status().unwrap();
    assert!(status.success(), "ferry ca init");
    let (xds, readiness, stats) = (free_port(), free_port(), free_port());
    let log = dir.join("controller.log");
    let mut cmd = ferry(dir);
    cmd.env_remove("FERRY_TOKEN_FILE");
    if token_file {
        std::fs::write(dir.join("tokens"), format!("{TOKEN} istio-system/ztunnel/ztunnel-node-1/uid-z1\n")).unwrap();
        cmd.env("FERRY_TOKEN_FILE", dir.join("tokens"));
    }
    let child = cmd
        .arg("controller")
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .env("FERRY_CA_DIR", dir.join("ca"))
        .env("FERRY_XDS_LISTEN", &xds)
        .env("FERRY_READINESS_ADDR", &readiness)
        .env("FERRY_STATS_ADDR", &stats)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Controller { child, xds, readiness, stats, log }
}

/// `GET path` on `addr`: the status code and body (an error while nothing listens yet).
fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()))
}

/// Waits (bounded) until the readiness answer satisfies `pred`; returns it.
fn wait_readiness(c: &mut Controller, what: &str, pred: impl Fn(u16, &str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok((code, body)) = get(&c.readiness, "/healthz/ready") {
            if pred(code, &body) {
                return body;
            }
        }
        if let Ok(Some(exit)) = c.child.try_wait() {
            panic!("the controller exited ({exit}):\n{}", std::fs::read_to_string(&c.log).unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "readiness never {what}:\n{}", std::fs::read_to_string(&c.log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn seed(server: &FakeApiServer) {
    server.apply(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}}),
    );
    server.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}}));
    for (ns, name, sa, ip) in [("istio-system", "ztunnel-node-1", "ztunnel", "10.244.1.2"), ("shop", "web-1", "web", "10.244.1.10")] {
        server.apply(pod(ns, name, sa, ip));
    }
    server.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
                        "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"}, "ports": [{"port": 80}]}}));
}

fn pod(ns: &str, name: &str, sa: &str, ip: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": {"app": sa}},
           "spec": {"nodeName": "node-1", "serviceAccountName": sa, "containers": [{"name": "app"}]},
           "status": {"phase": "Running", "podIP": ip}})
}

/// Opens a delta ADS stream for addresses with `token`: its first response, or the status.
async fn first_response(
    xds: &str,
    root: &str,
    token: &str,
) -> Result<
    (tokio::sync::mpsc::Sender<DeltaDiscoveryRequest>, tonic::Streaming<DeltaDiscoveryResponse>, DeltaDiscoveryResponse),
    tonic::Status,
> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(root)).domain_name("ferry-controller.istio-system.svc");
    let channel = Endpoint::from_shared(format!("https://{xds}")).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest { type_url: ADDRESS.into(), ..Default::default() }).await.unwrap();
    let mut req = tonic::Request::new(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut responses = AggregatedDiscoveryServiceClient::new(channel).delta_aggregated_resources(req).await?.into_inner();
    let first = tokio::time::timeout(DEADLINE, responses.message()).await.expect("an answer in time")?;
    Ok((tx, responses, first.expect("a first response")))
}

/// A certificate request for `identity` (no impersonation) with `token`: the chain's length,
/// or the status code.
async fn certificate(xds: &str, root: &str, token: &str, identity: &str) -> Result<usize, tonic::Code> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(root)).domain_name("ferry-controller.istio-system.svc");
    let channel = Endpoint::from_shared(format!("https://{xds}")).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(identity.to_string().try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let mut req = tonic::Request::new(IstioCertificateRequest { csr, validity_duration: 3600, metadata: None });
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let answer = IstioCertificateServiceClient::new(channel).create_certificate(req).await;
    answer.map(|r| r.into_inner().cert_chain.len()).map_err(|s| s.code())
}

/// The tunnel protocol a response advertises for the workload named `…/<pod>`.
fn tunnel_of(r: &DeltaDiscoveryResponse, pod: &str) -> Option<i32> {
    use ferry_core::proto::workload::{address, Address};
    use prost::Message;
    let res = r.resources.iter().find(|x| x.name.ends_with(&format!("/{pod}")))?;
    match Address::decode(res.resource.as_ref()?.value.as_slice()).ok()?.r#type? {
        address::Type::Workload(w) => Some(w.tunnel_protocol),
        _ => None,
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|r| r.name.clone()).collect()
}

/// A scratch directory, a runtime for the fake API server and the server, seeded.
fn setup(name: &str) -> (PathBuf, tokio::runtime::Runtime, FakeApiServer) {
    let dir = std::env::temp_dir().join(format!("ferry-kube-{name}-{}-{}", std::process::id(), fastrand::u32(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let server = rt.block_on(FakeApiServer::start());
    seed(&server);
    (dir, rt, server)
}

#[test]
fn the_controller_serves_wds_from_the_kubernetes_api_once_every_kind_synced() {
    let (dir, rt, server) = setup("ctl");
    server.set_missing("PeerAuthentication", true);
    let mut c = start_controller(&dir, &server, true);

    // Not ready, and once every other kind has listed, the answer names only the failing one.
    let waiting = |code: u16, body: &str| code == 503 && body.contains("first list of PeerAuthentication\n");
    wait_readiness(&mut c, "named only the kind whose list fails", waiting);
    assert!(std::net::TcpStream::connect(&c.xds).is_err(), "no xDS is served from an incomplete state");
    server.set_missing("PeerAuthentication", false);
    wait_readiness(&mut c, "ready after every kind listed", |code, _| code == 200);
    let (_, metrics) = get(&c.stats, "/metrics").unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("ferry_k8s_synced{kind=\"PeerAuthentication\"") && l.ends_with(" 1")), "{metrics}");

    let root = std::fs::read_to_string(dir.join("ca/root-cert.pem")).unwrap();
    let xds = c.xds.clone();
    rt.block_on(async {
        let (tx, mut responses, first) = first_response(&xds, &root, TOKEN).await.unwrap();
        assert!(names(&first).iter().any(|n| n.ends_with("shop/web-1")), "the listed pod is served: {:?}", names(&first));
        tx.send(DeltaDiscoveryRequest { type_url: ADDRESS.into(), response_nonce: first.nonce, ..Default::default() }).await.unwrap();

        server.apply(pod("shop", "web-2", "web", "10.244.1.11"));
        let next = tokio::time::timeout(DEADLINE, responses.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(names(&next).iter().filter(|n| n.ends_with("shop/web-2")).count(), 1, "the watched pod is pushed: {:?}", names(&next));
        assert!(!names(&next).iter().any(|n| n.ends_with("shop/web-1")), "and only what changed: {:?}", names(&next));
        // In an ambient namespace, but not yet annotated by a node agent: plain TCP, as istiod.
        let (tcp, hbone) =
            (ferry_core::proto::workload::TunnelProtocol::None as i32, ferry_core::proto::workload::TunnelProtocol::Hbone as i32);
        assert_eq!(tunnel_of(&next, "web-2"), Some(tcp), "a captured pod without the annotation is TCP");
        tx.send(DeltaDiscoveryRequest { type_url: ADDRESS.into(), response_nonce: next.nonce, ..Default::default() }).await.unwrap();
        let mut annotated = pod("shop", "web-2", "web", "10.244.1.11");
        annotated["metadata"]["annotations"] = json!({"ambient.istio.io/redirection": "enabled"});
        server.apply(annotated);
        let next = tokio::time::timeout(DEADLINE, responses.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(tunnel_of(&next, "web-2"), Some(hbone), "the node agent's annotation makes it HBONE: {:?}", names(&next));
        tx.send(DeltaDiscoveryRequest { type_url: ADDRESS.into(), response_nonce: next.nonce, ..Default::default() }).await.unwrap();

        // Deleted while the watches were down and past compaction: 410, re-list, and the
        // proxy is told the pod is gone.
        server.delete_unseen("Pod", "shop", "web-2");
        let gone = tokio::time::timeout(DEADLINE, responses.message()).await.unwrap().unwrap().unwrap();
        assert!(gone.removed_resources.iter().any(|n| n.ends_with("shop/web-2")), "removed after the re-list: {gone:?}");
    });
    let (_, metrics) = get(&c.stats, "/metrics").unwrap();
    let gone = metrics
        .lines()
        .find(|l| l.starts_with("ferry_k8s_watch_errors_total{") && l.contains("kind=\"Pod\"") && l.contains("reason=\"gone\""));
    assert!(gone.is_some(), "the 410 is counted: {metrics}");
    let log = std::fs::read_to_string(&c.log).unwrap();
    assert!(log.lines().any(|l| l.contains("watch expired (410 Gone): re-listing") && l.contains("Pod")), "and logged:\n{log}");
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_token_file_callers_are_reviewed_by_the_kubernetes_api() {
    let (dir, rt, server) = setup("tr");
    server.add_token("good", "system:serviceaccount:istio-system:ztunnel", &["istio-ca"], Some("ztunnel-node-1"));
    server.add_token("other-audience", "system:serviceaccount:istio-system:ztunnel", &["https://kubernetes.default.svc"], None);
    server.add_token("not-a-proxy", "system:serviceaccount:shop:web", &["istio-ca"], None);
    let mut c = start_controller(&dir, &server, false);
    wait_readiness(&mut c, "ready", |code, _| code == 200);
    let root = std::fs::read_to_string(dir.join("ca/root-cert.pem")).unwrap();
    let xds = c.xds.clone();
    rt.block_on(async {
        let (_, _, first) = first_response(&xds, &root, "good").await.expect("an accepted token is served");
        assert!(names(&first).iter().any(|n| n.ends_with("shop/web-1")), "{:?}", names(&first));
        let refusals = [
            ("unknown", tonic::Code::Unauthenticated, "invalid bearer token"),
            ("other-audience", tonic::Code::Unauthenticated, "is invalid for the target audiences"),
            // Authenticated, but neither as a node proxy nor as a waypoint: reviewed, then refused.
            ("not-a-proxy", tonic::Code::PermissionDenied, "shop/web is neither a node proxy account"),
        ];
        for (token, code, why) in refusals {
            let status = first_response(&xds, &root, token).await.err().unwrap_or_else(|| panic!("{token}: refused"));
            assert_eq!(status.code(), code, "{token}: {status:?}");
            assert!(status.message().contains(why), "{token}: {:?} should say {why:?}", status.message());
        }
        // The CA reviews the same way: its own identity for an accepted token, nothing for a
        // token of another audience.
        let own = "spiffe://cluster.local/ns/istio-system/sa/ztunnel";
        assert!(certificate(&xds, &root, "good", own).await.expect("signed") >= 1);
        assert_eq!(certificate(&xds, &root, "other-audience", own).await, Err(tonic::Code::Unauthenticated));
    });
    let reviews = server.token_reviews();
    assert_eq!(reviews.len(), 6, "one review per stream and per certificate request: {reviews:?}");
    assert!(reviews.iter().all(|r| r["audiences"] == json!(["istio-ca"])), "every review asks for istio-ca: {reviews:?}");
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}
