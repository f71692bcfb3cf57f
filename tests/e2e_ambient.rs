//! Issue 3 end to end on the simulated cluster (root only; fails without): two nodes, pods
//! wired by the real CNI plugins chained with ferry-cni, ferry agent + ferry proxy per node.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::sim::*;
use ferry_harness::sim::{apps, observe, Sim};
use nix::sys::signal::Signal;

const DEMO: &str = ferry_harness::demo::SCENARIO;
const FRONTEND: (&str, &str) = ("shop", "frontend");
const BACKEND: (&str, &str) = ("shop", "backend");

fn id(ns: &str, sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
}

fn assert_mtls(r: &serde_json::Value, src: &str, dst: &str) {
    assert_eq!(r["connection_security_policy"], "mutual_tls", "{r}");
    assert_eq!(r["src.identity"], src, "{r}");
    assert_eq!(r["dst.identity"], dst, "{r}");
}

#[test]
fn mesh_traffic_is_encrypted_identified_and_never_plaintext_on_the_links() {
    let sim = cluster(DEMO);
    let links = Capture::start(&sim, &sim.router, "br0");
    let node1_bridge = Capture::start(&sim, &sim.nodes[0].netns, "cni0");
    let backend = sim.pod("shop", "backend").addr(8080);
    let cache = sim.pod("shop", "cache").addr(8080);
    let vip: std::net::SocketAddr = "198.19.0.10:80".parse().unwrap();
    for (dst, what) in [(backend, "pod across nodes"), (vip, "service VIP"), (cache, "pod on the same node")] {
        let payload = format!("MESH-CANARY via {what} ").repeat(40).into_bytes();
        assert_eq!(roundtrip(&sim, FRONTEND, dst, &payload).as_deref(), Some(&payload[..]), "{what}");
    }
    let r = inbound_record(&sim, FRONTEND, BACKEND, 8080).expect("destination access log");
    assert_mtls(&r, &id("shop", "frontend"), &id("shop", "backend"));
    let r = inbound_record(&sim, FRONTEND, ("shop", "cache"), 8080).expect("same-node access log");
    assert_mtls(&r, &id("shop", "frontend"), &id("shop", "backend"));
    let m = sim.nodes[1].metrics().unwrap();
    let opened = observe::metric(
        &m,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("source_principal", &id("shop", "frontend")),
            ("destination_principal", &id("shop", "backend")),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    assert_eq!(opened, Some(2.0), "pod IP and VIP connections in the destination's metrics:\n{m}");

    // Out of the mesh and into it: plain TCP, expected and visible.
    let web = sim.pod("legacy", "web").addr(8080);
    let plain = b"PLAIN-CANARY to a pod outside the mesh".to_vec();
    assert_eq!(roundtrip(&sim, FRONTEND, web, &plain).as_deref(), Some(&plain[..]));
    let out = observe::find_record(&sim.nodes[0].proxy_log(), "outbound", sim.pod("shop", "frontend").ip, web, Duration::from_secs(3))
        .expect("passthrough is logged by the source");
    assert!(out["dst.hbone_addr"].is_null() && out["connection_security_policy"] == "unknown", "{out}");
    let inbound = b"PLAIN-CANARY from outside into the mesh".to_vec();
    assert_eq!(roundtrip(&sim, ("legacy", "client"), backend, &inbound).as_deref(), Some(&inbound[..]));
    let r = inbound_record(&sim, ("legacy", "client"), BACKEND, 8080).expect("captured on 15006 at the destination");
    assert!(r["src.identity"].is_null() && r["connection_security_policy"] == "unknown", "{r}");

    let wire = links.finish();
    assert!(!contains(&wire, "MESH-CANARY"), "mesh canary in plaintext on a node-to-node link");
    assert!(contains(&wire, "PLAIN-CANARY"), "the capture must see non-mesh plaintext, or it proves nothing");
    let bridge = node1_bridge.finish();
    assert!(!contains(&bridge, "MESH-CANARY"), "mesh canary in plaintext on node-1's pod bridge");
}

#[test]
fn namespace_label_switches_capture_on_running_pods() {
    let scenario = r#"
apiVersion: v1
kind: Namespace
metadata: {name: late}
---
{apiVersion: v1, kind: Pod, metadata: {name: a, namespace: late}, spec: {nodeName: node-1}}
---
{apiVersion: v1, kind: Pod, metadata: {name: b, namespace: late}, spec: {nodeName: node-2}}
"#;
    let sim = cluster(scenario);
    let (a, b) = (sim.pod("late", "a").clone(), sim.pod("late", "b").clone());
    let peers_before = apps::echo_server(&b.netns_path(), 9090).unwrap();
    let send = |label: &str| {
        let p = format!("{label} ").repeat(10).into_bytes();
        assert_eq!(roundtrip(&sim, ("late", "a"), b.addr(9090), &p).as_deref(), Some(&p[..]), "{label}");
    };
    send("before");
    assert_eq!(Sim::redirection_state(&a.netns).unwrap(), (false, false));

    sim.label_namespace("late", "istio.io/dataplane-mode", Some("ambient")).unwrap();
    eventually("both pods captured", || [&a, &b].iter().all(|p| Sim::redirection_state(&p.netns).unwrap() == (true, true)));
    eventually("node-1's proxy knows b is HBONE", || hbone(&sim, 0, &b.ip.to_string()));
    send("captured");
    let r = observe::find_record(&sim.nodes[1].proxy_log(), "inbound", a.ip, b.addr(9090), Duration::from_secs(3)).expect("captured");
    assert_mtls(&r, &id("late", "default"), &id("late", "default"));

    sim.label_namespace("late", "istio.io/dataplane-mode", None).unwrap();
    eventually("both pods released", || [&a, &b].iter().all(|p| Sim::redirection_state(&p.netns).unwrap() == (false, false)));
    eventually("pod proxies stopped", || sim.nodes.iter().all(|n| running(n).iter().all(|u| u.as_str() != a.uid && u.as_str() != b.uid)));
    eventually("node-1's proxy knows b is plain TCP", || !hbone(&sim, 0, &b.ip.to_string()));
    // Positive evidence that released traffic bypasses the mesh: its bytes cross the link in
    // plaintext to b's own port (through a tunnel they would be encrypted, on 15008).
    let wire = Capture::start(&sim, &sim.router, "br0");
    send("released");
    assert!(contains(&wire.finish(), "released released"), "released traffic must cross the link as plain TCP, not through a tunnel");
    // The same sandboxes served all three phases: nothing was restarted.
    assert_eq!(peers_before.list().len(), 3);
}

fn hbone(sim: &Sim, node: usize, ip: &str) -> bool {
    let Ok(d) = sim.nodes[node].dump() else { return false };
    d["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|w| w["protocol"] == "HBONE" && w["workloadIps"].as_array().is_some_and(|a| a.iter().any(|x| x == ip)))
}

fn running(n: &ferry_harness::sim::Node) -> Vec<String> {
    n.dump()
        .map(|d| {
            d["workloadManager"]["running"].as_array().into_iter().flatten().filter_map(|r| r["uid"].as_str().map(String::from)).collect()
        })
        .unwrap_or_default()
}

#[test]
fn killed_proxy_fails_closed_and_recovers_without_touching_pods() {
    let mut sim = cluster(DEMO);
    let backend = sim.pod("shop", "backend").addr(8080);
    sim.stop_proxy(0, Signal::SIGKILL);
    let links = Capture::start(&sim, &sim.router, "br0");
    for _ in 0..3 {
        let got = roundtrip(&sim, FRONTEND, backend, b"MESH-CANARY while the proxy is down");
        assert!(got.as_ref().is_none_or(|g| g.is_empty()), "connections from enrolled pods must fail while their proxy is down: {got:?}");
    }
    let wire = links.finish();
    assert!(!contains(&wire, "MESH-CANARY"), "nothing may leave in plaintext while the proxy is down");
    sim.start_proxy(0).expect("restart the node proxy");
    let payload = b"after the restart".to_vec();
    eventually("traffic recovers", || roundtrip(&sim, FRONTEND, backend, &payload).as_deref() == Some(&payload[..]));
    let r = inbound_record(&sim, FRONTEND, BACKEND, 8080).unwrap();
    assert_mtls(&r, &id("shop", "frontend"), &id("shop", "backend"));
}

#[test]
fn agent_restart_does_not_disturb_traffic() {
    let mut sim = cluster(DEMO);
    let backend = sim.pod("shop", "backend").addr(8080);
    let mut held = apps::connect(&sim.pod("shop", "frontend").netns_path(), backend).unwrap();
    held.write_all(b"first half, ").unwrap();
    let before: Vec<Vec<String>> = sim.nodes.iter().map(running).collect();
    for i in 0..2 {
        sim.stop_agent(i, Signal::SIGKILL);
    }
    let p = b"agent down".to_vec();
    assert_eq!(roundtrip(&sim, FRONTEND, backend, &p).as_deref(), Some(&p[..]), "traffic does not need the agent");
    for i in 0..2 {
        sim.start_agent(i).unwrap();
    }
    eventually("proxies reconnect and receive the snapshot", || {
        sim.nodes
            .iter()
            .all(|n| n.dump().is_ok_and(|d| d["workloadManager"]["snapshotReceived"] == true && d["workloadManager"]["connected"] == true))
    });
    let after: Vec<Vec<String>> = sim.nodes.iter().map(running).collect();
    assert_eq!(before, after, "the snapshot reconciles to the same pod proxies");
    held.write_all(b"second half").unwrap();
    held.shutdown(std::net::Shutdown::Write).unwrap();
    let mut echo = Vec::new();
    held.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    held.read_to_end(&mut echo).unwrap();
    assert_eq!(echo, b"first half, second half", "a connection opened before the restart survives it");
    let p = b"after agent restart".to_vec();
    assert_eq!(roundtrip(&sim, FRONTEND, backend, &p).as_deref(), Some(&p[..]));
}

#[test]
fn deleting_a_pod_drains_its_listeners_and_frees_its_sockets() {
    let mut sim = cluster(DEMO);
    let cache = sim.pod("shop", "cache").clone();
    let listening = |netns: &str| ferry_harness::sim::sh(&format!("ip netns exec {netns} ss -ltnH")).unwrap();
    let l = listening(&cache.netns);
    assert!(l.contains(":15001") && l.contains(":15006") && l.contains(":15008"), "{l}");
    let mut held = apps::connect(&sim.pod("shop", "frontend").netns_path(), cache.addr(8080)).unwrap();
    held.write_all(b"open").unwrap();
    sim.delete_pod_with("shop", "cache", false).unwrap();
    eventually("the pod's listeners are closed", || {
        let l = listening(&cache.netns);
        !l.contains(":15001") && !l.contains(":15006") && !l.contains(":15008")
    });
    assert_eq!(Sim::redirection_state(&cache.netns).unwrap(), (false, false), "CNI DEL removes the redirection");
    assert!(!running(&sim.nodes[0]).contains(&cache.uid));
    held.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(held.read(&mut buf), Ok(0) | Err(_)), "connections to a deleted pod are closed");
}

#[test]
fn bad_input_changes_nothing_and_says_why() {
    let mut sim = cluster(DEMO);
    let node = sim.nodes[0].netns.clone();
    let dirs = sim.opts.cni_dirs.clone();
    let conflist = sim.nodes[0].conflist_value().unwrap();
    let ferry_cni = conflist["plugins"][1].clone();
    let call = |netns: String, pod: &str| ferry_harness::sim::cni::CniCall {
        container_id: format!("c-{pod}"),
        netns: netns.into(),
        ifname: "eth0".into(),
        args: format!("K8S_POD_NAMESPACE=shop;K8S_POD_NAME={pod};K8S_POD_UID=uid-{pod}"),
    };
    let prev = serde_json::json!({"cniVersion": "1.0.0", "ips": [{"address": "198.18.1.200/24"}]});
    let mut conf = ferry_cni.clone();
    conf["cniVersion"] = "1.0.0".into();
    conf["name"] = "ferry-sim".into();
    conf["prevResult"] = prev;

    // A netns path that is not a network namespace.
    let e = ferry_harness::sim::cni::invoke(&node, &dirs, "ADD", &call("/etc/hostname".into(), "frontend"), &conf).unwrap_err();
    assert!(e.message.contains("not a namespace file"), "{e}");

    // Must be captured, but the node proxy is not connected: refused, and rolled back fully.
    sim.stop_proxy(0, Signal::SIGKILL);
    let sandbox = sim.sandbox("noproxy").unwrap();
    let e =
        ferry_harness::sim::cni::invoke(&node, &dirs, "ADD", &call(format!("/var/run/netns/{sandbox}"), "frontend"), &conf).unwrap_err();
    assert!(e.message.contains("no node proxy is connected"), "{e}");
    assert_eq!(Sim::redirection_state(&sandbox).unwrap(), (false, false), "no partial rules after a failed enrollment");

    // The agent is not running: pods that must be captured cannot start; others can.
    sim.stop_agent(0, Signal::SIGKILL);
    let sandbox = sim.sandbox("noagent").unwrap();
    let e =
        ferry_harness::sim::cni::invoke(&node, &dirs, "ADD", &call(format!("/var/run/netns/{sandbox}"), "frontend"), &conf).unwrap_err();
    assert!(e.message.contains("must not start uncaptured"), "{e}");
    assert_eq!(Sim::redirection_state(&sandbox).unwrap(), (false, false));
    let mut legacy = conf.clone();
    legacy["prevResult"]["ips"][0]["address"] = "198.18.1.201/24".into();
    let legacy_call = ferry_harness::sim::cni::CniCall {
        args: "K8S_POD_NAMESPACE=legacy;K8S_POD_NAME=client;K8S_POD_UID=u".into(),
        ..call(format!("/var/run/netns/{sandbox}"), "client")
    };
    ferry_harness::sim::cni::invoke(&node, &dirs, "ADD", &legacy_call, &legacy)
        .expect("a pod outside the mesh may start while the agent is down");

    // Missing CNI variables and malformed configuration: CNI errors, not crashes.
    let mut no_args = call(format!("/var/run/netns/{sandbox}"), "frontend");
    no_args.args = String::new();
    let e = ferry_harness::sim::cni::invoke(&node, &dirs, "ADD", &no_args, &conf).unwrap_err();
    assert!(e.message.to_lowercase().contains("k8s_pod_namespace"), "{e}");
    let mut bad = conf.clone();
    bad["cniVersion"] = "9.9.9".into();
    assert!(ferry_harness::sim::cni::invoke(&node, &dirs, "ADD", &call(format!("/var/run/netns/{sandbox}"), "frontend"), &bad).is_err());

    // An invalid manifest in the cluster state: rejected with the reason, last good state kept.
    sim.start_agent(0).unwrap();
    sim.start_proxy(0).unwrap();
    std::fs::write(sim.state_dir.join("broken.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: Not_Valid}\n").unwrap();
    for log in [sim.nodes[0].agent_log(), sim.controller_log()] {
        eventually("the bad manifest is reported", || {
            std::fs::read_to_string(&log).unwrap_or_default().contains("not a valid Kubernetes name")
        });
    }
    let p = b"state kept".to_vec();
    assert_eq!(roundtrip(&sim, FRONTEND, sim.pod("shop", "backend").addr(8080), &p).as_deref(), Some(&p[..]));
}

#[test]
fn the_readme_demo_succeeds_and_leaves_nothing_behind() {
    common::netns::require_root();
    let _guard = cluster_lock();
    // Other ferry processes and namespaces may exist on this machine (other tests, a held
    // demo): only what appeared during this run and is still there counts as left behind.
    let snapshot = || -> (std::collections::BTreeSet<String>, std::collections::BTreeSet<String>) {
        let lines = |cmd: &str| ferry_harness::sim::sh(cmd).unwrap().lines().map(str::to_string).collect();
        (lines("ip netns list"), lines("pgrep -f 'ferry (agent|proxy|controller)' || true"))
    };
    let (ns_before, procs_before) = snapshot();
    let out = std::process::Command::new(ferry_bin()).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ferry demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("every flow behaved as expected"), "{stdout}");
    let (ns_after, procs_after) = snapshot();
    let new_ns: Vec<_> = ns_after.difference(&ns_before).collect();
    assert!(new_ns.is_empty(), "the demo left namespaces behind: {new_ns:?}");
    let new_procs: Vec<_> = procs_after.difference(&procs_before).collect();
    assert!(new_procs.is_empty(), "the demo left ferry processes behind: {new_procs:?}");
}

#[test]
fn a_late_del_of_an_old_sandbox_leaves_the_recreated_pod_captured() {
    let mut sim = cluster(DEMO);
    let old = sim.pod("shop", "cache").clone();
    sim.delete_pod_with("shop", "cache", true).unwrap();
    // The same name again (a StatefulSet, or any re-created pod): a new uid and sandbox.
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata: {name: cache, namespace: shop, labels: {app: cache}}\nspec: {nodeName: node-1, serviceAccountName: backend}\n";
    sim.apply(manifest).unwrap();
    let new = sim.pod("shop", "cache").clone();
    assert_ne!(new.uid, old.uid);
    apps::echo_server(&new.netns_path(), 8080).unwrap();
    sim.wait_known(new.ip).unwrap();
    assert_eq!(Sim::redirection_state(&new.netns).unwrap(), (true, true), "the new pod is enrolled at ADD");

    // The runtime repeats the old sandbox's DEL, with its uid and without one.
    for with_uid in [true, false] {
        sim.repeat_del("shop", "cache", &old, with_uid).expect("DEL is idempotent");
        assert_eq!(Sim::redirection_state(&new.netns).unwrap(), (true, true), "with uid {with_uid}: the new pod keeps its redirection");
        assert!(running(&sim.nodes[0]).contains(&new.uid), "with uid {with_uid}: the node proxy still serves the new pod");
    }
    let p = b"still in the mesh".to_vec();
    assert_eq!(roundtrip(&sim, FRONTEND, new.addr(8080), &p).as_deref(), Some(&p[..]));
    assert_mtls(
        &inbound_record(&sim, FRONTEND, ("shop", "cache"), 8080).expect("inbound record"),
        &id("shop", "frontend"),
        &id("shop", "backend"),
    );
}

#[test]
fn kubelet_probes_from_the_node_reach_an_enrolled_pod_under_strict_mtls() {
    let sim = cluster(DEMO);
    let backend = sim.pod("shop", "backend").clone();
    let peers = apps::echo_server(&backend.netns_path(), 8081).unwrap();
    let strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n";
    sim.write_object("PeerAuthentication", "shop", "strict", strict).unwrap();
    let netns = sim.nodes[backend.node].netns.clone();
    let node_ns = std::path::PathBuf::from(format!("/var/run/netns/{netns}"));
    let probe = || apps::roundtrip(&node_ns, backend.addr(8081), b"probe".to_vec()).ok();
    // STRICT is in force: plaintext from a pod outside the mesh is refused.
    eventually("plaintext into shop refused under STRICT", || roundtrip(&sim, ("legacy", "client"), backend.addr(8081), b"x").is_none());

    // A probe from the node (the kubelet's position) is rewritten to 169.254.7.127, exempt.
    assert_eq!(probe().as_deref(), Some(&b"probe"[..]), "a probe from the node reaches the pod");
    assert!(peers.list().iter().any(|p| p.ip().to_string() == "169.254.7.127"), "the app sees the probe source: {:?}", peers.list());
    let rules = ferry_harness::sim::sh(&format!("ip netns exec {netns} nft list table inet ferry_host")).unwrap();
    assert!(rules.contains(&backend.ip.to_string()), "the enrolled pod is in the host's probe set:\n{rules}");

    // Without the host rule the same probe is captured, and STRICT refuses it.
    ferry_harness::sim::sh(&format!("ip netns exec {netns} nft delete table inet ferry_host")).unwrap();
    assert_eq!(probe(), None, "without the SNAT a probe is plaintext into a STRICT pod");

    // Released pods leave the set: the agent re-renders the table on the next change.
    sim.label_namespace("shop", "istio.io/dataplane-mode", None).unwrap();
    eventually("backend released and dropped from the probe set", || {
        ferry_harness::sim::sh(&format!("ip netns exec {netns} nft list table inet ferry_host"))
            .is_ok_and(|r| !r.contains(&backend.ip.to_string()))
    });
}
