//! The proxy's xDS and CA clients against the real `ferry controller` (bound in-process on
//! loopback), and against a scripted ADS server for what a correct controller never sends.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use ferry_core::identity::Identity;
use ferry_core::proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

use super::ads::{AdsClient, SharedStatus};
use super::ca::IstioCa;
use super::settings::{NodeInfo, Roots, Target, Token, XdsSettings};
use crate::controller::ControllerArgs;
use crate::readiness::Readiness;
use crate::state::StateStore;

const TLS_NAME: &str = "ferry-controller.istio-system.svc";
const NODE1_TOKEN: &str = "tok-node-1";

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-node-1, namespace: istio-system, uid: uid-z1}
spec: {nodeName: node-1, serviceAccountName: ztunnel}
status: {phase: Running, podIP: 198.19.254.11}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, uid: uid-web-1, labels: {app: web}}
spec: {nodeName: node-1, serviceAccountName: web}
status: {phase: Running, podIP: 198.18.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: shop, uid: uid-db-1, labels: {app: db}}
spec: {nodeName: node-2, serviceAccountName: db}
status: {phase: Running, podIP: 198.18.2.10}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]}]
"#;

struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("ferry-xds-{name}-{}-{}", std::process::id(), fastrand::u32(..)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("state")).unwrap();
        std::fs::write(dir.join("state/cluster.yaml"), CLUSTER).unwrap();
        let opts = crate::tls::ca::InitOptions {
            root_validity: Duration::from_secs(86400),
            ca_validity: Duration::from_secs(86400),
            organization: "ferry test".into(),
        };
        crate::tls::ca::init(&dir.join("ca"), &opts).unwrap();
        std::fs::write(
            dir.join("tokens"),
            format!("{NODE1_TOKEN} istio-system/ztunnel/ztunnel-node-1/uid-z1\ntok-web shop/web/web-1/uid-web-1\n"),
        )
        .unwrap();
        Fixture { dir }
    }

    fn args(&self, listen: &str) -> ControllerArgs {
        #[derive(Parser)]
        struct W {
            #[command(flatten)]
            a: ControllerArgs,
        }
        let d = |p: &str| self.dir.join(p).display().to_string();
        let argv = [
            "ferry".to_string(),
            format!("--cluster-state={}", d("state")),
            "--cluster-state-poll=20ms".into(),
            format!("--listen={listen}"),
            format!("--ca-dir={}", d("ca")),
            format!("--token-file={}", d("tokens")),
            "--readiness-addr=127.0.0.1:0".into(),
            "--stats-addr=127.0.0.1:0".into(),
        ];
        W::try_parse_from(argv).unwrap().a
    }

    /// Binds a controller and serves it until the returned handle is aborted.
    async fn controller(&self, listen: &str) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let running = crate::controller::bind(self.args(listen)).await.unwrap();
        let addr = running.addr;
        let task = tokio::spawn(async move {
            let _ = running.serve(std::future::pending()).await;
        });
        (addr, task)
    }

    fn target(&self, addr: std::net::SocketAddr, token: &str) -> Target {
        Target {
            url: format!("https://{addr}"),
            tls_name: TLS_NAME.into(),
            roots: Roots::File(self.dir.join("ca/root-cert.pem")),
            token: Token::Literal(token.into()),
            cluster_id: "Kubernetes".into(),
            headers: Vec::new(),
        }
    }

    fn client(&self, addr: std::net::SocketAddr, token: &str) -> (StateStore, Readiness, SharedStatus) {
        let settings = XdsSettings {
            target: self.target(addr, token),
            node: NodeInfo {
                id: "ztunnel~198.19.254.11~ztunnel-node-1.istio-system~istio-system.svc.cluster.local".into(),
                ..Default::default()
            },
        };
        let (store, ready) = (StateStore::new(), Readiness::new());
        let (client, status) = AdsClient::new(Arc::new(settings), store.clone(), &ready, None);
        tokio::spawn(client.run());
        (store, ready, status)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_is_ready_only_with_state_from_the_controller_and_keeps_it_when_the_controller_goes() {
    let f = Fixture::new("state");
    let (addr, server) = f.controller("127.0.0.1:0").await;
    let (store, ready, status) = f.client(addr, NODE1_TOKEN);
    assert!(!ready.is_ready(), "not ready before the first responses");
    eventually("readiness after the first response of each type", || ready.is_ready()).await;
    let snap = store.snapshot();
    let web = snap.find_workload("shop", "web-1", None).expect("web-1 arrived over xDS");
    assert_eq!(web.identity().unwrap(), id("spiffe://cluster.local/ns/shop/sa/web"));
    assert!(snap.policies().any(|p| p.key() == "shop/db-from-web"), "the policy arrived over xDS");
    let s = status.lock().unwrap().clone();
    assert!(s.connected && s.streams == 1, "{s:?}");
    assert_eq!(s.types.len(), 2, "{s:?}");

    // The controller dies: the state stays, and the client says it is disconnected.
    server.abort();
    eventually("the client to notice", || !status.lock().unwrap().connected).await;
    assert!(store.snapshot().find_workload("shop", "web-1", None).is_some(), "last-known-good state kept");

    // A new controller on the same address: the client resumes with what it holds, so
    // nothing unchanged is sent again; a change while connected sends just that resource.
    let (_, _server2) = f.controller(&addr.to_string()).await;
    eventually("the reconnect", || status.lock().unwrap().streams == 2 && status.lock().unwrap().connected).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = status.lock().unwrap().clone();
    assert!(s.types.values().all(|t| t.received_this_stream == 0), "a resumed stream needs no full push: {s:?}");
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-2, namespace: shop, uid: uid-web-2, labels: {app: web}}\n\
               spec: {nodeName: node-2, serviceAccountName: web}\nstatus: {phase: Running, podIP: 198.18.2.11}\n";
    std::fs::write(f.dir.join("state/web-2.yaml"), pod).unwrap();
    eventually("the new pod", || store.snapshot().find_workload("shop", "web-2", None).is_some()).await;
    let s = status.lock().unwrap().clone();
    let addresses = &s.types[ferry_core::wds::ADDRESS_TYPE];
    assert_eq!(addresses.received_this_stream, 1, "one pod changed, one resource sent: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_signs_only_what_the_caller_may_have() {
    let f = Fixture::new("ca");
    let (addr, _server) = f.controller("127.0.0.1:0").await;
    let ttl = Duration::from_secs(3600);
    let issue = |token: &str, impersonate: bool, who: &str| {
        let ca = IstioCa::new(f.target(addr, token), impersonate);
        let who = id(who);
        async move { crate::tls::certs::issue(&ca, &who, ttl).await.map(|c| c.identity.clone()).map_err(|e| e.to_string()) }
    };
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    assert_eq!(issue(NODE1_TOKEN, true, web).await.unwrap(), id(web), "a node proxy gets the identity of a pod on its node");
    let db = issue(NODE1_TOKEN, true, "spiffe://cluster.local/ns/shop/sa/db").await.unwrap_err();
    assert!(db.contains("PermissionDenied"), "db-1 runs on node-2: {db}");
    let bad = issue("forged", true, web).await.unwrap_err();
    assert!(bad.contains("Unauthenticated"), "{bad}");
    let not_node = issue("tok-web", true, "spiffe://cluster.local/ns/shop/sa/db").await.unwrap_err();
    assert!(not_node.contains("PermissionDenied"), "a workload account cannot impersonate: {not_node}");
    assert_eq!(issue("tok-web", false, web).await.unwrap(), id(web), "a workload gets its own identity");
}

/// A control plane that sends one scripted response and records what the client answers.
struct ScriptedAds {
    response: DeltaDiscoveryResponse,
    seen: Arc<Mutex<Vec<DeltaDiscoveryRequest>>>,
}

#[tonic::async_trait]
impl crate::proto::xds::aggregated_discovery_service_server::AggregatedDiscoveryService for ScriptedAds {
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, tonic::Status>>;

    async fn delta_aggregated_resources(
        &self,
        req: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        let (tx, rx) = mpsc::channel(4);
        let (response, seen) = (self.response.clone(), self.seen.clone());
        let mut requests = req.into_inner();
        tokio::spawn(async move {
            let mut sent = false;
            while let Ok(Some(r)) = requests.message().await {
                let initial_address = r.type_url == ferry_core::wds::ADDRESS_TYPE && r.response_nonce.is_empty();
                seen.lock().unwrap().push(r);
                if initial_address && !sent {
                    sent = true;
                    let _ = tx.send(Ok(response.clone())).await;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

fn serving_tls(ca_dir: &Path) -> tonic::transport::ServerTlsConfig {
    let ca = crate::tls::ca::LocalCa::load(ca_dir).unwrap();
    let (chain, key) = ca.serving_certificate(&[TLS_NAME.to_string()], Duration::from_secs(3600)).unwrap();
    tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(chain, key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_that_does_not_decode_is_nacked_by_name_and_the_rest_applies() {
    let f = Fixture::new("nack");
    let cluster = ferry_core::k8s::manifests::parse_documents(CLUSTER, "test").unwrap();
    let state = ferry_core::k8s::translate::to_state(&cluster, &Default::default());
    let web = state.workloads.iter().find(|w| w.name == "web-1").unwrap();
    let good = ferry_core::wds::workload(web);
    let any = |value: Vec<u8>| Some(prost_types::Any { type_url: ferry_core::wds::ADDRESS_TYPE.into(), value });
    let response = DeltaDiscoveryResponse {
        type_url: ferry_core::wds::ADDRESS_TYPE.into(),
        nonce: "n1".into(),
        resources: vec![
            Resource {
                name: good.name.clone(),
                version: "1".into(),
                resource: any(prost::Message::encode_to_vec(&good.message)),
                aliases: vec![],
            },
            Resource {
                name: "Kubernetes//Pod/shop/garbled".into(),
                version: "1".into(),
                resource: any(vec![0xff, 0xff, 0xff]),
                aliases: vec![],
            },
        ],
        ..Default::default()
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = crate::proto::xds::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer::new(ScriptedAds {
        response,
        seen: seen.clone(),
    });
    let router = tonic::transport::Server::builder().tls_config(serving_tls(&f.dir.join("ca"))).unwrap().add_service(svc);
    tokio::spawn(router.serve_with_incoming(tonic::codegen::tokio_stream::wrappers::TcpListenerStream::new(listener)));

    let (store, _ready, status) = f.client(addr, NODE1_TOKEN);
    eventually("the reply to n1", || seen.lock().unwrap().iter().any(|r| r.response_nonce == "n1")).await;
    let reply = seen.lock().unwrap().iter().find(|r| r.response_nonce == "n1").cloned().unwrap();
    let msg = reply.error_detail.map(|e| e.message).unwrap_or_default();
    assert!(msg.starts_with("Kubernetes//Pod/shop/garbled: not an Address"), "the NACK names the resource and why: {msg:?}");
    assert!(!msg.contains(&good.name), "the good resource is not refused: {msg}");
    assert!(store.snapshot().find_workload("shop", "web-1", None).is_some(), "the rest of the response is applied");
    let s = status.lock().unwrap().clone();
    assert_eq!(s.types[ferry_core::wds::ADDRESS_TYPE].resources, 1, "the refused one is not held: {s:?}");
    let initial: Vec<_> = seen.lock().unwrap().iter().filter(|r| r.response_nonce.is_empty()).map(|r| r.type_url.clone()).collect();
    assert_eq!(
        initial,
        [ferry_core::wds::ADDRESS_TYPE, ferry_core::wds::AUTHORIZATION_TYPE],
        "one initial request per type, in Istio's order"
    );
    let first = seen.lock().unwrap()[0].clone();
    assert!(first.node.is_some_and(|n| n.id.starts_with("ztunnel~")), "the initial request carries the node");
}
