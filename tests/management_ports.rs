//! Every role's management ports (root only; fails without). The HTML index at `/` of each
//! lists exactly the endpoints it answers, and every listed path answers (the index and the
//! router come from one table, so this fails if a handler itself answers 404 or the table and
//! this list part ways). Every metrics port exports ztunnel's `tokio_*` runtime families.

mod common;

use common::sim::*;
use ferry_harness::sim::observe::metric;

/// The `href`s of an index page, in order.
fn links(html: &str) -> Vec<String> {
    html.split("href=\"").skip(1).filter_map(|rest| rest.split_once('"')).map(|(href, _)| href.replace("&amp;", "&")).collect()
}

/// GETs `/` through `get`, checks it is an HTML index listing exactly `want`, and that each
/// listed path answers something other than 404 while an unlisted one gets 404.
fn check_index(server: &str, want: &[&str], get: &dyn Fn(&str) -> (u16, String)) {
    let (status, html) = get("/");
    assert_eq!(status, 200, "{server} /: {html}");
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<table>"), "{server} / is not an HTML index:\n{html}");
    assert_eq!(links(&html), want, "{server} lists other endpoints:\n{html}");
    for path in want {
        // The CPU profile is asked for one second, not its 10 s default.
        let target = if path.ends_with("/profile") { format!("{path}?seconds=1") } else { path.to_string() };
        let (status, body) = get(&target);
        assert_ne!(status, 404, "{server} lists {path}, which answers 404: {body}");
    }
    assert_eq!(get("/not-an-endpoint").0, 404, "{server}: an unlisted path");
}

#[test]
fn every_management_server_indexes_exactly_what_it_answers() {
    let mut sim = cluster(FRONTEND_BACKEND);
    sim.start_controller().expect("start the controller");
    let sim = &*sim;
    let node = &sim.nodes[1];
    let on_node = |port: u16| move |target: &str| node.request(port, "GET", target).expect("request");
    check_index(
        "proxy admin (15000)",
        &["/config_dump", "/logging", "/debug/authorization", "/debug/pprof/profile", "/debug/pprof/heap", "/quitquitquit"],
        &on_node(15000),
    );
    check_index("proxy metrics (15020)", &["/metrics", "/stats/prometheus"], &on_node(15020));
    check_index("proxy readiness (15021)", &["/healthz/ready"], &on_node(15021));
    check_index("agent (15014)", &["/healthz", "/readyz", "/debug/pods", "/metrics", "/stats/prometheus"], &on_node(15014));
    let on_controller = |port: u16| move |target: &str| sim.controller_request(port, "GET", target).expect("request");
    check_index("controller readiness (15021)", &["/healthz/ready"], &on_controller(15021));
    check_index("controller metrics (15014)", &["/metrics", "/stats/prometheus"], &on_controller(15014));
    // The index is for people: each row says what the endpoint answers.
    let (_, html) = node.request(15000, "GET", "/").unwrap();
    assert!(html.contains("drain open connections and exit"), "{html}");
    // Listing /quitquitquit must not have stopped the proxy (GET is refused).
    assert!(node.ready(), "the proxy still runs after its index was walked");
}

/// The families ztunnel's runtime collector exports, by type.
const TOKIO_GAUGES: [&str; 3] = ["tokio_num_workers", "tokio_num_alive_tasks", "tokio_global_queue_depth"];
const TOKIO_COUNTERS: [&str; 3] =
    ["tokio_worker_total_busy_duration_seconds_total", "tokio_worker_park_count_total", "tokio_worker_park_unpark_count_total"];

/// `text` carries each tokio family with its type, one per-worker series per worker, and
/// returns the worker count it reports.
fn tokio_families(role: &str, text: &str) -> f64 {
    for g in TOKIO_GAUGES {
        assert!(text.contains(&format!("# TYPE {g} gauge\n")), "{role}: {g}\n{text}");
    }
    let workers = metric(text, "tokio_num_workers", &[]).unwrap_or_else(|| panic!("{role}: tokio_num_workers\n{text}"));
    for c in TOKIO_COUNTERS {
        assert!(text.contains(&format!("# TYPE {c} counter\n")), "{role}: {c}\n{text}");
        let series = text.lines().filter(|l| l.starts_with(&format!("{c}{{worker=\""))).count();
        assert_eq!(series as f64, workers, "{role}: one {c} series per worker\n{text}");
    }
    workers
}

#[test]
fn every_metrics_port_exports_the_tokio_runtime_families() {
    let mut sim = cluster(FRONTEND_BACKEND);
    sim.start_controller().expect("start the controller");
    let node = &sim.nodes[1];
    // The proxy's families describe its data path, not the admin thread's runtime.
    let want = node.dump().unwrap()["config"]["numWorkerThreads"].as_f64().expect("numWorkerThreads");
    assert_eq!(tokio_families("proxy", &node.metrics().unwrap()), want, "the data path's workers");
    let alive = metric(&node.metrics().unwrap(), "tokio_num_alive_tasks", &[]).unwrap();
    assert!(alive >= 1.0, "the proxy's listeners are tasks: {alive}");
    assert_eq!(tokio_families("agent", &node.agent("/metrics").unwrap()), 1.0, "the agent runs one current-thread runtime");
    tokio_families("controller", &sim.controller_metrics().unwrap());
}

/// The parts of pprof's `profile.proto` the checks read, decoded independently of ferry's
/// encoder (field numbers from the published schema).
#[cfg(feature = "cpu-profile")]
mod pprof_proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
    }
}

#[cfg(feature = "cpu-profile")]
#[test]
fn the_proxy_serves_a_cpu_profile_while_traffic_flows_and_explains_the_missing_heap_profile() {
    let sim = cluster(FRONTEND_BACKEND);
    let node = &sim.nodes[1];
    for bad in ["0", "61", "abc", ""] {
        let (status, body) = node.request(15000, "GET", &format!("/debug/pprof/profile?seconds={bad}")).unwrap();
        assert_eq!(status, 400, "seconds={bad}: {body}");
        assert!(body.contains("from 1 to 60"), "{body}");
    }
    // Traffic through node-2's proxy for as long as the profile runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (from, dst) = (sim.pod("shop", "frontend").netns_path(), sim.pod("shop", "backend").addr(8080));
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut ok = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                ok += u32::from(ferry_harness::sim::apps::roundtrip(&from, dst, vec![7u8; 64 * 1024]).is_ok());
            }
            ok
        })
    };
    // Two overlapping requests: one is served, the other refused at once, not queued.
    let get = || node.request_bytes(15000, "/debug/pprof/profile?seconds=3", std::time::Duration::from_secs(60)).expect("request");
    let (a, b) = std::thread::scope(|s| {
        let (a, b) = (s.spawn(get), s.spawn(get));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (profile, refused) = if a.0 == 200 { (a, b) } else { (b, a) };
    let refused_body = String::from_utf8_lossy(&refused.1);
    assert_eq!(refused.0, 429, "{refused_body}");
    assert!(refused_body.contains("already being taken"), "{refused_body}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(traffic.join().unwrap() > 0, "traffic flowed during the profile");
    let (status, body) = profile;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let p = <pprof_proto::Profile as prost::Message>::decode(&body[..]).expect("a pprof protobuf");
    assert!(!p.sample.is_empty(), "the profile has samples");
    assert!(p.sample.iter().all(|s| s.value.len() == 2 && !s.location_id.is_empty()), "(count, cpu ns) with a stack");
    assert!(p.duration_nanos >= 3_000_000_000, "it ran for the three seconds asked: {}", p.duration_nanos);
    let names: Vec<&str> = p.function.iter().filter_map(|f| p.string_table.get(f.name as usize)).map(String::as_str).collect();
    assert!(names.iter().any(|n| n.starts_with("ferry::")), "function names from ferry: {names:?}");
    // The slot is free again.
    let (status, _) = node.request_bytes(15000, "/debug/pprof/profile?seconds=1", std::time::Duration::from_secs(60)).unwrap();
    assert_eq!(status, 200);

    let (status, body) = node.request(15000, "GET", "/debug/pprof/heap").unwrap();
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("glibc malloc") && body.contains("jemalloc"), "says why and what would enable it: {body}");
}
