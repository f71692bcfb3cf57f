//! The access log as ztunnel writes it, on the simulated cluster (root only; fails without):
//! an asymmetric exchange (the client sends fewer bytes than the server answers) so a swap of
//! `bytes_sent` and `bytes_recv` cannot pass, checked on the outbound and inbound records of a
//! completed connection, of one closed by a policy change, and of one closed at the drain
//! deadline; `dst.addr` is the HBONE port and `dst.hbone_addr` the target on both sides.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use common::sim::*;
use ferry_harness::sim::{apps, observe, Sim};
use nix::sys::signal::Signal;
use serde_json::Value;

const PORT: u16 = 7000;
const REQUEST: usize = 3_000;
const RESPONSE: usize = 50_000;

/// A server in the backend pod: reads the request, answers with more bytes than it got, then
/// waits for the client to finish (so a held connection stays open until something closes it).
fn asymmetric_server(sim: &Sim) {
    let ns = ferry_sys::Netns::open(&sim.pod("shop", "backend").netns_path()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        ns.enter().unwrap();
        let l = TcpListener::bind(("0.0.0.0", PORT)).unwrap();
        tx.send(()).unwrap();
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut req = vec![0u8; REQUEST];
                if s.read_exact(&mut req).is_ok() && s.write_all(&vec![b'r'; RESPONSE]).is_ok() {
                    let _ = s.read_to_end(&mut Vec::new());
                }
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// Opens a connection from frontend and completes the exchange; the connection stays open.
fn exchange(sim: &Sim) -> TcpStream {
    let dst = sim.pod("shop", "backend").addr(PORT);
    let mut s = apps::connect(&sim.pod("shop", "frontend").netns_path(), dst).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&vec![b'q'; REQUEST]).unwrap();
    let mut resp = vec![0u8; RESPONSE];
    s.read_exact(&mut resp).unwrap();
    s
}

/// Waits for the `nth` (0-based) record of `direction` to the backend's port in `node`'s log.
fn record(sim: &Sim, node: usize, direction: &str, nth: usize) -> Value {
    let dst = sim.pod("shop", "backend").addr(PORT).to_string();
    let find = || {
        observe::access_log(&sim.nodes[node].proxy_log())
            .into_iter()
            .filter(|r| r["direction"] == direction && r["dst.hbone_addr"] == dst.as_str())
            .nth(nth)
    };
    eventually(&format!("{direction} record #{nth} on node {node}"), || find().is_some());
    find().unwrap()
}

/// The byte counts and addresses ztunnel's conventions give this exchange.
fn assert_record(r: &Value, direction: &str, sim: &Sim) {
    let backend = sim.pod("shop", "backend");
    let (sent, recv) = if direction == "outbound" { (REQUEST, RESPONSE) } else { (RESPONSE, REQUEST) };
    assert_eq!((r["bytes_sent"].as_u64(), r["bytes_recv"].as_u64()), (Some(sent as u64), Some(recv as u64)), "{r}");
    assert_eq!(r["dst.addr"].as_str(), Some(backend.addr(15008).to_string().as_str()), "{r}");
    assert_eq!(r["dst.hbone_addr"].as_str(), Some(backend.addr(PORT).to_string().as_str()), "{r}");
    assert_eq!(r["src.identity"], "spiffe://cluster.local/ns/shop/sa/frontend", "{r}");
    assert_eq!(r["scope"], "access", "{r}");
    assert!(r["time"].is_string(), "{r}");
}

/// Whether `fields` appear in this order in the raw log line of record `r` (a parsed
/// `Value` sorts its keys, so the order is read from the text).
fn in_order(sim: &Sim, node: usize, r: &Value, fields: &[&str]) -> bool {
    let log = std::fs::read_to_string(sim.nodes[node].proxy_log()).unwrap();
    let time = format!("\"time\":{}", r["time"]);
    let line = log.lines().find(|l| l.contains(&time) && l.contains("\"scope\":\"access\"")).expect("the record's line");
    let at: Vec<Option<usize>> = fields.iter().map(|f| line.find(&format!("\"{f}\":"))).collect();
    at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] < w[1])
}

fn set_policy(sim: &Sim, doc: Option<&str>) {
    match doc {
        Some(d) => sim.write_object("AuthorizationPolicy", "shop", "deny-frontend", d).unwrap(),
        None => sim.delete_object("AuthorizationPolicy", "shop", "deny-frontend").unwrap(),
    }
    let want = doc.is_some();
    eventually("both proxies to hold the policy change", || {
        sim.nodes.iter().all(|n| n.dump().is_ok_and(|d| d["policies"].as_array().is_some_and(|p| p.is_empty() != want)))
    });
}

const DENY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-frontend, namespace: shop}\n\
spec: {selector: {matchLabels: {app: backend}}, action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]}\n";

#[test]
fn bytes_and_addresses_follow_ztunnel_on_completed_revoked_and_drained_connections() {
    let mut sim = cluster(FRONTEND_BACKEND);
    asymmetric_server(&sim);

    // Completed: the client closes after the exchange.
    let s = exchange(&sim);
    s.shutdown(Shutdown::Write).unwrap();
    let _ = (&s).read_to_end(&mut Vec::new());
    drop(s);
    let (out, inb) = (record(&sim, 0, "outbound", 0), record(&sim, 1, "inbound", 0));
    for (r, d) in [(&out, "outbound"), (&inb, "inbound")] {
        assert_record(r, d, &sim);
        assert_eq!((r["level"].as_str(), r["message"].as_str()), (Some("info"), Some("connection complete")), "{r}");
    }
    let order = [
        "src.addr",
        "src.workload",
        "src.namespace",
        "src.identity",
        "src.cluster",
        "dst.addr",
        "dst.hbone_addr",
        "dst.workload",
        "dst.namespace",
        "dst.identity",
        "dst.cluster",
        "direction",
        "bytes_sent",
        "bytes_recv",
        "duration",
    ];
    assert!(in_order(&sim, 1, &inb, &order), "ztunnel's field order {order:?}: {inb}");

    // Revoked: a DENY lands while the connection is open; the destination closes it and logs
    // what it carried.
    let mut s = exchange(&sim);
    set_policy(&sim, Some(DENY));
    let r = s.read(&mut [0u8; 16]);
    assert!(matches!(r, Ok(0)) || r.as_ref().is_err_and(|e| e.kind() == ErrorKind::ConnectionReset), "closed: {r:?}");
    let revoked = record(&sim, 1, "inbound", 1);
    assert_record(&revoked, "inbound", &sim);
    assert_eq!((revoked["response_flags"].as_str(), revoked["level"].as_str()), (Some("DENY"), Some("error")), "{revoked}");
    assert!(revoked["error"].as_str().is_some_and(|e| e.contains("policy change")), "{revoked}");
    // The source's record is written when its client, told of the close, closes too.
    drop(s);
    assert_record(&record(&sim, 0, "outbound", 1), "outbound", &sim);
    set_policy(&sim, None);

    // Drained: the source's proxy stops while the connection is open; at the deadline it
    // closes the connection and logs what it carried.
    let s = exchange(&sim);
    let status = sim.stop_proxy(0, Signal::SIGTERM);
    assert!(status.is_some(), "the proxy exits after its drain");
    let drained = record(&sim, 0, "outbound", 2);
    assert_record(&drained, "outbound", &sim);
    assert!(drained["error"].as_str().is_some_and(|e| e.contains("drain deadline")), "{drained}");
    drop(s);
}
