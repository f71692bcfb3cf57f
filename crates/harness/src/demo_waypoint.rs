//! `ferry demo`'s waypoint act (e2e/scenarios/waypoint.yaml): namespace store uses a waypoint
//! that runs as a pod on the other node. An allowed and a denied HTTP path from shop/frontend
//! through it, and the same pod dialled directly, refused by its node proxy because it must be
//! reached through its waypoint. Simulated cluster only: the kind runner has no waypoint
//! deployer yet.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::sim::{apps, observe, Sim};

pub const SCENARIO: &str = include_str!("../../../e2e/scenarios/waypoint.yaml");
const SHELF_VIP: &str = "198.19.0.31:80";

/// One check of the act, as the report prints it.
pub(crate) struct Check {
    pub(crate) label: &'static str,
    pub(crate) path: &'static str,
    pub(crate) ok: bool,
    pub(crate) note: String,
}

/// Applies the act's objects, starts the waypoint and the shelf's HTTP server, runs the checks.
pub(crate) fn run(sim: &mut Sim) -> Result<(Vec<Check>, std::process::Child), String> {
    let e = |x: crate::sim::SimError| x.to_string();
    sim.apply(SCENARIO).map_err(e)?;
    apps::http_server(&sim.pod("store", "shelf").netns_path(), 8090, "shelf").map_err(|x| x.to_string())?;
    let waypoint = sim.spawn_waypoint("store", "waypoint-1", "waypoint").map_err(e)?;
    for ns_name in [("store", "waypoint-1"), ("store", "shelf")] {
        sim.wait_known(sim.pod(ns_name.0, ns_name.1).ip).map_err(e)?;
    }
    let client = sim.pod("shop", "frontend").netns_path();
    let vip: SocketAddr = SHELF_VIP.parse().map_err(|_| "bad VIP")?;
    let get = |target: &str| {
        apps::http_bytes(&client, vip, "GET", target, Duration::from_secs(5)).map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned()))
    };
    // The waypoint and the shelf's node proxy learn each other within a few polls.
    let start = Instant::now();
    let mut allowed = get("/items");
    while !matches!(&allowed, Ok((200, _))) && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
        allowed = get("/items");
    }
    let mut checks = vec![Check {
        label: "shop/frontend -> shelf.store GET /items",
        path: "HTTP via the waypoint on node-2",
        ok: matches!(&allowed, Ok((200, b)) if b == "shelf saw /items"),
        note: format!("{allowed:?}"),
    }];
    let denied = get("/admin/prices");
    checks.push(Check {
        label: "shop/frontend -> shelf.store GET /admin/prices",
        path: "403 at the waypoint (L7 DENY)",
        ok: matches!(&denied, Ok((403, b)) if b.trim() == "RBAC: access denied"),
        note: format!("{denied:?}"),
    });
    checks.push(direct_dial(sim));
    Ok((checks, waypoint))
}

/// The shelf pod dialled by its IP, skipping the waypoint: its node proxy must refuse it.
fn direct_dial(sim: &Sim) -> Check {
    let shelf = sim.pod("store", "shelf");
    let frontend = sim.pod("shop", "frontend");
    let label = "shop/frontend -> store/shelf (pod IP, skipping the waypoint)";
    if sim.opts.alt_proxy.as_ref().is_some_and(|a| a.nodes.contains(&shelf.node)) {
        // Istio's ztunnel admits it unless an ALLOW policy for the waypoint's identity exists.
        return Check { label, path: "not checked: the other proxy leaves it to policy", ok: true, note: String::new() };
    }
    let got = apps::http_bytes(&frontend.netns_path(), shelf.addr(8090), "GET", "/items", Duration::from_secs(5));
    let refused = !matches!(&got, Ok((200, _)));
    let log = sim.nodes[shelf.node].proxy_log();
    let record = observe::find_record(&log, "inbound", frontend.ip, shelf.addr(8090), Duration::from_secs(3));
    let deny = record.as_ref().is_some_and(|r| r["response_flags"] == "DENY");
    Check {
        label,
        path: "refused: only its waypoint may reach it",
        ok: refused && deny,
        note: format!("client saw {got:?}; destination record {}", record.map(|r| r.to_string()).unwrap_or_else(|| "none".into())),
    }
}
