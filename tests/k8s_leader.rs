//! Leader election and root-certificate publication of `ferry controller` (the binary) on a
//! fake Kubernetes API server, with short lease timings: two replicas elect exactly one
//! writer, the other takes over once the killed leader's Lease expires; a replica that loses
//! the race for the Lease (409) writes nothing; a leader that cannot renew stops writing a
//! lease duration later and resumes once it renews again; the leader keeps `istio-ca-root-cert` (the
//! CA's root PEM) in every namespace, fixes a tampered one, creates it in a new namespace and
//! touches no other ConfigMap; the leader sets waypoint Gateways' status and server-side
//! applies each one's ServiceAccount, Deployment and Service, owned by the Gateway, once, and
//! again when the Gateway changes. Every assertion is on what the fake server holds or was sent.

#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);
const NS: &str = "istio-system";
const LEASE: &str = "ferry-controller";
const ROOT_CM: &str = "istio-ca-root-cert";

/// A `ferry controller` process and its metrics address, killed on drop.
struct Replica(Child, String);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Replica {
    /// The `ferry_controller_leader` gauge's value on `/metrics`, once it is served.
    fn leader_gauge(&self) -> Option<String> {
        self.metric("ferry_controller_leader")
    }

    /// The value of the sample `series` (name and labels as exposed) on `/metrics`.
    fn metric(&self, series: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.1).ok()?;
        write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')).map(String::from)
    }
}

fn loopback_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Starts replica `who` (its Lease identity and its API token) on `server`, sharing `dir/ca`.
fn replica(dir: &Path, server: &FakeApiServer, who: &str) -> Replica {
    replica_with(dir, server, who, "2s")
}

fn replica_with(dir: &Path, server: &FakeApiServer, who: &str, lease: &str) -> Replica {
    replica_env(dir, server, who, &[("FERRY_LEASE_DURATION", lease)])
}

/// A replica with `extra` environment over the defaults below.
fn replica_env(dir: &Path, server: &FakeApiServer, who: &str, extra: &[(&str, &str)]) -> Replica {
    let kubeconfig = dir.join(format!("kubeconfig-{who}"));
    let stats = loopback_port();
    std::fs::write(&kubeconfig, server.kubeconfig_as(who)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .current_dir(dir)
        .env_remove("FERRY_CLUSTER_STATE")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("FERRY_TOKEN_FILE", dir.join("tokens"))
        .arg("controller")
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", who)
        .env("FERRY_CA_DIR", dir.join("ca"))
        .env("FERRY_XDS_LISTEN", loopback_port())
        .env("FERRY_READINESS_ADDR", loopback_port())
        .env("FERRY_STATS_ADDR", &stats)
        .env("FERRY_LEASE_DURATION", "2s")
        .env("FERRY_LEASE_RENEW", "500ms")
        .env("FERRY_LEASE_RETRY", "200ms")
        .env("FERRY_ROOT_CERT_RESYNC", "300ms")
        .envs(extra.iter().copied())
        .stderr(std::fs::File::create(dir.join(format!("{who}.log"))).unwrap())
        .spawn()
        .unwrap();
    Replica(child, stats)
}

/// A scratch directory with a CA, a runtime and a fake API server holding two namespaces and
/// a ConfigMap that is not ferry's.
fn setup(name: &str) -> (PathBuf, tokio::runtime::Runtime, FakeApiServer, String) {
    let dir = std::env::temp_dir().join(format!("ferry-lease-{name}-{}-{}", std::process::id(), fastrand::u32(..)));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokens"), "").unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .current_dir(&dir)
        .args(["ca", "init", "ca"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(status.unwrap().success(), "ferry ca init");
    let root = std::fs::read_to_string(dir.join("ca/root-cert.pem")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let server = rt.block_on(FakeApiServer::start());
    for ns in [NS, "shop"] {
        server.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    server.apply(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-config", "namespace": "shop"}, "data": {"k": "v"}}),
    );
    (dir, rt, server, root)
}

fn holder(server: &FakeApiServer) -> Option<String> {
    server.get("Lease", NS, LEASE)?["spec"]["holderIdentity"].as_str().map(String::from)
}

fn root_in(server: &FakeApiServer, ns: &str) -> Option<String> {
    server.get("ConfigMap", ns, ROOT_CM)?["data"]["root-cert.pem"].as_str().map(String::from)
}

/// Successful writes of `kind` by `who`.
fn accepted(server: &FakeApiServer, kind: &str, who: &str) -> usize {
    server.writes(kind).iter().filter(|w| w.who == who && w.code < 300).count()
}

/// Only ferry's ConfigMap was written, and the other one is as it was.
fn only_root_configmaps_written(server: &FakeApiServer) {
    let writes = server.writes("ConfigMap");
    assert!(writes.iter().all(|w| w.name == ROOT_CM), "{writes:?}");
    assert_eq!(server.get("ConfigMap", "shop", "app-config").unwrap()["data"], json!({"k": "v"}));
}

#[test]
fn two_replicas_one_writer_and_a_takeover_after_the_leader_dies() {
    let (dir, rt, server, root) = setup("two");
    let mut replicas = vec![("ferry-a", replica(&dir, &server, "ferry-a")), ("ferry-b", replica(&dir, &server, "ferry-b"))];
    rt.block_on(async {
        server.wait_until("a replica holds the Lease", DEADLINE, |s| holder(s).is_some()).await;
        let leader = holder(&server).unwrap();
        let other = if leader == "ferry-a" { "ferry-b" } else { "ferry-a" };
        // The leader renews (several accepted writes) while the other's never succeed.
        server.wait_until("the leader renewed three times", DEADLINE, |s| accepted(s, "Lease", &leader) >= 4).await;
        for ns in [NS, "shop"] {
            server.wait_until("istio-ca-root-cert in every namespace", DEADLINE, |s| root_in(s, ns).is_some()).await;
            assert_eq!(root_in(&server, ns).as_deref(), Some(root.as_str()), "{ns}: the CA's root");
        }
        assert_eq!(holder(&server).as_deref(), Some(leader.as_str()));
        assert_eq!(accepted(&server, "Lease", other), 0, "the follower never wrote the Lease");
        assert!(server.writes("ConfigMap").iter().all(|w| w.who == leader), "only the leader writes ConfigMaps");
        assert_eq!(server.writes("ConfigMap").len(), 2, "one create per namespace, nothing rewritten while equal");
        let gauge = |who: &str| replicas.iter().find(|r| r.0 == who).and_then(|r| r.1.leader_gauge());
        assert_eq!((gauge(&leader).as_deref(), gauge(other).as_deref()), (Some("1"), Some("0")), "ferry_controller_leader");

        // A tampered copy (another key kept) is fixed; a later namespace gets one.
        server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ROOT_CM, "namespace": "shop"},
                            "data": {"root-cert.pem": "tampered", "extra": "kept"}}));
        server.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "late"}}));
        server.wait_until("the tampered root fixed", DEADLINE, |s| root_in(s, "shop").as_deref() == Some(root.as_str())).await;
        assert_eq!(server.get("ConfigMap", "shop", ROOT_CM).unwrap()["data"]["extra"], "kept");
        server.wait_until("the new namespace's root", DEADLINE, |s| root_in(s, "late").as_deref() == Some(root.as_str())).await;

        // Killed (no release): the other takes over once the Lease expires, and publishes.
        let at = replicas.iter().position(|r| r.0 == leader).unwrap();
        drop(replicas.remove(at));
        let written = server.writes("ConfigMap").len();
        server.wait_until("the other replica took over", DEADLINE, |s| holder(s).as_deref() == Some(other)).await;
        server.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "after"}}));
        server.wait_until("the new leader publishes", DEADLINE, |s| root_in(s, "after").as_deref() == Some(root.as_str())).await;
        assert!(server.writes("ConfigMap")[written..].iter().all(|w| w.who == other && w.code < 300));
        let lease = server.get("Lease", NS, LEASE).unwrap();
        assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 2, "{lease}");
    });
    only_root_configmaps_written(&server);
    drop(replicas);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_replica_that_loses_the_race_for_the_lease_writes_nothing() {
    let (dir, rt, server, root) = setup("race");
    let lease = |renewed: &str| -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": LEASE, "namespace": NS},
               "spec": {"holderIdentity": "intruder", "leaseDurationSeconds": 3600, "renewTime": renewed}})
    };
    // The replica finds no Lease and creates one, but another writer's lands first.
    server.lose_next_write("Lease", lease(&k8s_openapi::jiff::Timestamp::now().to_string()));
    let _a = replica(&dir, &server, "ferry-a");
    rt.block_on(async {
        server.wait_until("the replica's write lost", DEADLINE, |s| s.writes("Lease").iter().any(|w| w.code == 409)).await;
        let reads = server.reads("Lease");
        server.wait_until("the replica read the Lease again, three times", DEADLINE, |s| s.reads("Lease") >= reads + 3).await;
        assert_eq!(holder(&server).as_deref(), Some("intruder"), "the winner's Lease stands");
        assert_eq!(accepted(&server, "Lease", "ferry-a"), 0, "no write after the loss: {:?}", server.writes("Lease"));
        assert!(server.writes("ConfigMap").is_empty(), "a non-leader publishes nothing: {:?}", server.writes("ConfigMap"));
        assert!(root_in(&server, "shop").is_none() && root_in(&server, NS).is_none());

        // Once the winner's Lease has expired, the replica takes it and publishes.
        server.apply(lease("2020-01-01T00:00:00.000000Z"));
        server.wait_until("the expired Lease taken over", DEADLINE, |s| holder(s).as_deref() == Some("ferry-a")).await;
        server.wait_until("then published", DEADLINE, |s| root_in(s, "shop").as_deref() == Some(root.as_str())).await;
    });
    only_root_configmaps_written(&server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_leader_that_cannot_renew_stops_writing() {
    let (dir, rt, server, root) = setup("stale");
    let a = replica(&dir, &server, "ferry-a");
    rt.block_on(async {
        server.wait_until("published", DEADLINE, |s| root_in(s, "shop").as_deref() == Some(root.as_str())).await;
        server.wait_until("leading", DEADLINE, |_| a.leader_gauge().as_deref() == Some("1")).await;
        // The Lease cannot be read or renewed; ConfigMaps still can, so only the step-down
        // keeps the replica from writing them.
        server.set_failing("Lease", true);
        server.wait_until("stepped down", DEADLINE, |_| a.leader_gauge().as_deref() == Some("0")).await;
        let written = server.writes("ConfigMap").len();
        server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ROOT_CM, "namespace": "shop"},
                            "data": {"root-cert.pem": "tampered"}}));
        server.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "late"}}));
        let reads = server.reads("Lease");
        // Several retries (200 ms apart), each longer than a resync (300 ms) would need.
        server.wait_until("five more tries of the Lease", DEADLINE, |s| s.reads("Lease") >= reads + 5).await;
        assert_eq!(server.writes("ConfigMap").len(), written, "no ConfigMap write after stepping down");
        assert_eq!(root_in(&server, "shop").as_deref(), Some("tampered"));
        assert!(root_in(&server, "late").is_none());
        // The API answers again: the Lease is still ours, so it is renewed and writes resume.
        server.set_failing("Lease", false);
        server.wait_until("the tampered root fixed", DEADLINE, |s| root_in(s, "shop").as_deref() == Some(root.as_str())).await;
        server.wait_until("the new namespace's root", DEADLINE, |s| root_in(s, "late").as_deref() == Some(root.as_str())).await;
    });
    only_root_configmaps_written(&server);
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_leader_stopped_with_sigterm_releases_the_lease_for_an_immediate_takeover() {
    let (dir, rt, server, _root) = setup("release");
    // A lease far longer than the test's deadline: only a release lets the other take over.
    let mut a = replica_with(&dir, &server, "ferry-a", "600s");
    rt.block_on(async {
        server.wait_until("ferry-a holds the Lease", DEADLINE, |s| holder(s).as_deref() == Some("ferry-a")).await;
        let b = replica_with(&dir, &server, "ferry-b", "600s");
        server.wait_until("ferry-b is running and waits", DEADLINE, |_| b.leader_gauge().as_deref() == Some("0")).await;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(a.0.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = a.0.wait().unwrap();
        assert!(status.success(), "ferry-a exits cleanly on SIGTERM: {status}");
        server.wait_until("ferry-b took over the released Lease", DEADLINE, |s| holder(s).as_deref() == Some("ferry-b")).await;
        let lease = server.get("Lease", NS, LEASE).unwrap();
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 600, "ferry-b wrote its own duration: {lease}");
        let log = std::fs::read_to_string(dir.join("ferry-a.log")).unwrap();
        assert!(log.contains("leader Lease released"), "{log}");
        drop(b);
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_leader_programs_waypoint_gateways_once_their_pod_runs() {
    let (dir, rt, server, _root) = setup("gateway");
    server.apply(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                        "metadata": {"name": "waypoint", "namespace": "shop", "generation": 1, "uid": WAYPOINT_UID},
                        "spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}));
    // The waypoint is deployed by hand here: the status is written, nothing is applied.
    let a = replica_env(&dir, &server, "ferry-a", &[("FERRY_DEPLOY_WAYPOINTS", "false"), ("FERRY_WAYPOINT_IMAGE", "reg/ferry:1")]);
    let programmed = |s: &FakeApiServer| -> Option<(String, String, serde_json::Value)> {
        let g = s.get("Gateway", "shop", "waypoint")?;
        let c = g["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Programmed")?.clone();
        Some((c["status"].as_str()?.to_string(), c["reason"].as_str()?.to_string(), g["status"]["addresses"].clone()))
    };
    rt.block_on(async {
        server
            .wait_until("Programmed False without a pod", DEADLINE, |s| {
                programmed(s).is_some_and(|(st, reason, _)| st == "False" && reason == "NoResources")
            })
            .await;
        server.apply(json!({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": "waypoint-1", "namespace": "shop", "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}},
                            "spec": {"nodeName": "node-1"}, "status": {"phase": "Running", "podIP": "10.0.0.9"}}));
        server.wait_until("Programmed True once its pod runs", DEADLINE, |s| programmed(s).is_some_and(|(st, _, _)| st == "True")).await;
        let (_, _, addresses) = programmed(&server).unwrap();
        assert_eq!(addresses, json!([{"type": "Hostname", "value": "waypoint.shop.svc.cluster.local"}]));
        // Level-triggered without a loop: its own write, seen through the watch, writes nothing.
        let written = server.gateway_patches().len();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(server.gateway_patches().len(), written, "no patch while nothing changes (a write loop)");
        // Two changes; a round may still run on a view older than its own last write (idempotent).
        assert!((2..=4).contains(&written), "about one patch per change, got {written}");
        let g = server.get("Gateway", "shop", "waypoint").unwrap();
        assert_eq!(g["spec"]["gatewayClassName"], "istio-waypoint", "only the status changed: {g}");
        assert!(server.applies().is_empty(), "--deploy-waypoints=false applies nothing: {:?}", server.applies());
    });
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

const WAYPOINT_UID: &str = "9f0c6a52-1111-4222-8333-444455556666";

/// A waypoint Gateway as the API holds one (with a uid), `labels` its infrastructure labels.
fn waypoint_gateway(name: &str, class: &str, labels: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": name, "namespace": "shop", "uid": WAYPOINT_UID, "generation": 1},
           "spec": {"gatewayClassName": class, "infrastructure": {"labels": labels},
                    "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
}

/// Accepted server-side applies of (kind, name).
fn applied(server: &FakeApiServer) -> Vec<(String, String)> {
    server.applies().iter().filter(|a| a.code < 300).map(|a| (a.kind.to_string(), a.name.clone())).collect()
}

#[test]
fn the_leader_deploys_each_waypoint_gateway_once_and_again_when_it_changes() {
    let (dir, rt, server, _root) = setup("deploy");
    server.apply(waypoint_gateway("waypoint", "istio-waypoint", json!({"team": "a"})));
    server.apply(waypoint_gateway("ingress", "istio", json!({})));
    let mut no_uid = waypoint_gateway("nouid", "istio-waypoint", json!({}));
    no_uid["metadata"].as_object_mut().unwrap().remove("uid");
    server.apply(no_uid);
    // The replicas' own pods: the image waypoints run is the controller's.
    for who in ["ferry-a", "ferry-b"] {
        server.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": who, "namespace": NS},
                            "spec": {"nodeName": "node-1", "containers": [{"name": "controller", "image": "reg.example/ferry:t1"}]}}));
    }
    // A resync far beyond the test: every apply after the first round is caused by a change.
    let env = [("FERRY_ROOT_CERT_RESYNC", "600s")];
    // The first apply fails: it is retried on the next round (the others' own events).
    server.fail_applies(1);
    let replicas = [replica_env(&dir, &server, "ferry-a", &env), replica_env(&dir, &server, "ferry-b", &env)];
    rt.block_on(async {
        let three = |s: &FakeApiServer| applied(s).len() >= 3;
        server.wait_until("the ServiceAccount, Deployment and Service applied", DEADLINE, three).await;
        let leader = holder(&server).unwrap();
        let first = applied(&server);
        let mut sorted = first.clone();
        sorted.sort();
        let want: Vec<(String, String)> =
            ["Deployment", "Service", "ServiceAccount"].iter().map(|k| (k.to_string(), "waypoint".to_string())).collect();
        assert_eq!(sorted, want, "one of each, for the waypoint only (not the istio-class Gateway)");
        let failed: Vec<_> = server.applies().iter().filter(|a| a.code == 500).map(|a| a.kind).collect();
        assert_eq!(failed, ["ServiceAccount"], "the first apply failed, then was retried");
        for a in server.applies() {
            assert_eq!((a.who.as_str(), a.field_manager.as_str(), a.force), (leader.as_str(), "ferry-controller", true), "{a:?}");
        }
        for kind in ["ServiceAccount", "Deployment", "Service"] {
            let o = server.get(kind, "shop", "waypoint").unwrap_or_else(|| panic!("no {kind} stored"));
            let owner = &o["metadata"]["ownerReferences"][0];
            assert_eq!((owner["kind"].as_str(), owner["uid"].as_str()), (Some("Gateway"), Some(WAYPOINT_UID)), "{kind}: {o}");
            assert_eq!(o["metadata"]["labels"]["team"], "a", "{kind}");
        }
        let d = server.get("Deployment", "shop", "waypoint").unwrap();
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!((c["image"].as_str(), c["args"][0].as_str()), (Some("reg.example/ferry:t1"), Some("waypoint")));
        assert!(server.get("ServiceAccount", "shop", "ingress").is_none());
        let by_leader = &replicas[if leader == "ferry-a" { 0 } else { 1 }];
        for kind in ["ServiceAccount", "Deployment", "Service"] {
            let series = format!("ferry_controller_waypoint_deploy_writes_total{{kind=\"{kind}\",result=\"ok\"}}");
            assert_eq!(by_leader.metric(&series).as_deref(), Some("1"), "{series}");
        }
        let errors = "ferry_controller_waypoint_deploy_writes_total{kind=\"ServiceAccount\",result=\"error\"}";
        assert_eq!(by_leader.metric(errors).as_deref(), Some("1"), "{errors}");
        // The waypoint the API server gave no uid (as a file would): nothing, and the log says why.
        let log = std::fs::read_to_string(dir.join(format!("{leader}.log"))).unwrap();
        assert!(log.contains("shop/nouid") && log.contains("metadata.uid"), "{log}");

        // Nothing changes (its own applies come back through the watch): nothing is applied
        // again while the leader renews its Lease four more times.
        let renewed = accepted(&server, "Lease", &leader);
        server.wait_until("four more renewals", DEADLINE, |s| accepted(s, "Lease", &leader) >= renewed + 4).await;
        assert_eq!(applied(&server), first, "no apply while nothing changes");

        // The Gateway changes: its objects are applied again, with the new label.
        server.apply(waypoint_gateway("waypoint", "istio-waypoint", json!({"team": "b"})));
        let relabelled =
            |s: &FakeApiServer| s.get("Deployment", "shop", "waypoint").is_some_and(|d| d["metadata"]["labels"]["team"] == "b");
        server.wait_until("the Deployment relabelled", DEADLINE, relabelled).await;
        assert!(server.applies().iter().all(|a| a.who == leader && a.name == "waypoint"), "only the leader applies, only the waypoint's");
    });
    drop(replicas);
    let _ = std::fs::remove_dir_all(&dir);
}
