//! Operations endpoints, served on their own single-threaded runtime so a busy data path
//! never starves them, by the bounded management server every role shares
//! (`telemetry::http`): admin (config dump, logging, quit) on localhost, Prometheus metrics,
//! and readiness (protocols.md §7). Admin is never bound in a pod's namespace (invariant P13).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, Method, Request, StatusCode};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::readiness::Readiness;
use crate::state::StateStore;
use crate::telemetry::http::{dispatch, metrics_endpoints, metrics_response, text, Endpoint, Reply, Resp};
use crate::telemetry::LogHandle;
use crate::tls::certs::CertManager;

pub(crate) struct AdminState {
    pub(crate) cfg: Arc<Config>,
    pub(crate) state: StateStore,
    pub(crate) certs: Arc<CertManager>,
    pub(crate) log: Arc<LogHandle>,
    pub(crate) metrics: PrometheusHandle,
    /// The data-path runtime, whose `tokio_*` families the metrics port exports (the admin
    /// servers run on their own).
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) ready: Readiness,
    pub(crate) quit: mpsc::Sender<()>,
    /// Open inbound connections, for the dump's `workloadState`.
    pub(crate) conns: Arc<crate::proxy::connections::ConnectionManager>,
    pub(crate) extra: Option<crate::config_dump::DumpExtra>,
    /// A role's own `/debug/authorization` (the waypoint's L7 one); the node proxy's otherwise.
    pub(crate) explain: Option<Explain>,
}

/// Answers `/debug/authorization` from its query: the JSON answer, or a status and a message.
pub(crate) type Explain = Arc<dyn Fn(&str) -> Result<serde_json::Value, (StatusCode, String)> + Send + Sync>;

impl AdminState {
    fn dump_sources(&self) -> crate::config_dump::Sources<'_> {
        crate::config_dump::Sources {
            cfg: &self.cfg,
            state: &self.state,
            certs: &self.certs,
            ready: &self.ready,
            conns: &self.conns,
            extra: self.extra.as_ref(),
        }
    }
}

#[derive(Clone, Copy)]
enum Server {
    Admin,
    Stats,
    Readiness,
}

/// Binds the three servers now (so a port conflict fails startup) and serves them on a
/// dedicated thread. Returns the bound addresses.
pub(crate) fn start(admin: Arc<AdminState>) -> std::io::Result<[SocketAddr; 3]> {
    let bind = |a: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let l = std::net::TcpListener::bind(a).or_else(|e| match a {
            // Fall back to IPv4 when the namespace has no IPv6.
            SocketAddr::V6(v6) if v6.ip().is_unspecified() => std::net::TcpListener::bind(("0.0.0.0", a.port())),
            _ => Err(e),
        })?;
        l.set_nonblocking(true)?;
        Ok(l)
    };
    let listeners = [
        (bind(admin.cfg.admin_addr)?, Server::Admin),
        (bind(admin.cfg.stats_addr)?, Server::Stats),
        (bind(admin.cfg.readiness_addr)?, Server::Readiness),
    ];
    let addrs = [listeners[0].0.local_addr()?, listeners[1].0.local_addr()?, listeners[2].0.local_addr()?];
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("ferry-admin".into()).spawn(move || {
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for (l, kind) in listeners {
                match TcpListener::from_std(l) {
                    Ok(l) => tasks.push(tokio::spawn(serve(l, kind, admin.clone()))),
                    Err(e) => tracing::error!(error = %e, "admin listener failed"),
                }
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    })?;
    Ok(addrs)
}

/// Serves one management listener on the shared bounded server, with the configured
/// `FERRY_HTTP_HEADER_TIMEOUT`.
async fn serve(l: TcpListener, kind: Server, admin: Arc<AdminState>) {
    let header_timeout = admin.cfg.limits.http_header_timeout;
    let (name, title, table) = kind.endpoints();
    crate::telemetry::http::serve(l, name, header_timeout, move |req| dispatch(title, &[table], &admin, req)).await
}

impl Server {
    /// The listener's name (for logs and shedding metrics), its index title and its table.
    fn endpoints(self) -> (&'static str, &'static str, &'static [Endpoint<AdminState>]) {
        match self {
            Server::Admin => ("admin", "ferry node proxy: admin", ADMIN),
            Server::Stats => ("metrics", "ferry node proxy: metrics", STATS),
            Server::Readiness => ("readiness", "ferry node proxy: readiness", READINESS),
        }
    }
}

const ADMIN: &[Endpoint<AdminState>] = &[
    Endpoint {
        path: "/config_dump",
        usage: "GET",
        about: "workloads, services, policies, certificates and per-pod connections, in ztunnel's shape (istioctl ztunnel-config, Kiali)",
        handler: |a, _| json_resp(crate::config_dump::build(&a.dump_sources())).into(),
    },
    Endpoint {
        path: "/logging",
        usage: "GET (list) | POST ?level=<level>|<target>=<level>[,...] | POST ?reset",
        about: "the log filter: a level replaces it, target directives merge into it, reset restores the start-up filter",
        handler: |a, req| match *req.method() {
            Method::GET | Method::POST => logging(&a.log, req.method(), req.uri().query().unwrap_or("")).into(),
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "use GET to list or POST to change\n").into(),
        },
    },
    Endpoint {
        path: "/debug/authorization",
        usage: "GET ?destination=<ip:port>&source_ip=<ip>[&source_identity=<spiffe id>]",
        about: "what the destination's policies would decide for such a connection, and which policy decided",
        handler: |a, req| explain(a, req.uri().query().unwrap_or("")).into(),
    },
    Endpoint {
        path: "/debug/pprof/profile",
        usage: "GET ?seconds=N (default 10, at most 60)",
        about: "a CPU profile of every thread in pprof's protobuf format (go tool pprof); one at a time",
        handler: |_, req| crate::telemetry::profile::cpu(req.uri().query().unwrap_or("")),
    },
    Endpoint {
        path: "/debug/pprof/heap",
        usage: "GET",
        about: "501: glibc malloc records no allocation stacks, so there is no heap profile (the answer says what would enable one)",
        handler: |_, _| crate::telemetry::profile::heap().into(),
    },
    Endpoint { path: "/quitquitquit", usage: "POST", about: "drain open connections and exit", handler: |a, req| quit(a, req).into() },
];

const STATS: &[Endpoint<AdminState>] = &metrics_endpoints(scrape);

const READINESS: &[Endpoint<AdminState>] = &[Endpoint {
    path: "/healthz/ready",
    usage: "GET",
    about: "200 ready once certificates, state and the workload proxy manager are, else 500 naming what is pending",
    handler: |a, req| match *req.method() {
        Method::GET => readiness(a).into(),
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into(),
    },
}];

fn scrape(a: &AdminState, req: &Request<Incoming>) -> Reply {
    metrics_response(&a.metrics, &a.runtime, req).into()
}

fn quit(a: &AdminState, req: &Request<Incoming>) -> Resp {
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
    }
    // The drain starts a moment after this answer is written: an idle proxy exits as soon as
    // it drains, and the caller should see its 200, not a reset.
    let quit = a.quit.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let _ = quit.try_send(());
    });
    text(StatusCode::OK, "shutting down\n")
}

fn readiness(a: &AdminState) -> Resp {
    let pending = a.ready.pending();
    if pending.is_empty() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::INTERNAL_SERVER_ERROR, format!("not ready, pending: {}\n", pending.join(", ")))
    }
}

/// ztunnel's `/logging`: GET (or a bare POST) lists the filter; POST `?level=` sets a level
/// or merges `target=level` / `target:level` directives; POST `?reset` restores the start-up
/// filter. A refused request changes nothing.
fn logging(log: &LogHandle, method: &Method, query: &str) -> Resp {
    let mut level = None;
    let mut reset = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("level", v)) if level.is_none() => level = Some(percent_decode(v)),
            Some(("reset", _)) => reset = true,
            None if pair == "reset" => reset = true,
            _ => return text(StatusCode::BAD_REQUEST, format!("unknown or repeated parameter {pair:?}; use level=<filter> or reset\n")),
        }
    }
    if *method != Method::POST && (level.is_some() || reset) {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST to change the log level\n");
    }
    let result = match (level, reset) {
        (Some(l), false) => log.apply(&l),
        (None, true) => log.reset(),
        (None, false) => Ok(()),
        (Some(_), true) => return text(StatusCode::BAD_REQUEST, "use either level or reset\n"),
    };
    match result {
        Ok(()) => text(StatusCode::OK, format!("current log level: {}\n", log.current())),
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// Explains, without sending traffic, what the destination proxy would decide for a connection
/// (the same evaluation the data path runs).
fn explain(a: &AdminState, query: &str) -> Resp {
    if let Some(own) = &a.explain {
        return match own(query) {
            Ok(v) => json_resp(v),
            Err((status, msg)) => text(status, msg),
        };
    }
    let params: std::collections::HashMap<String, String> =
        query.split('&').filter_map(|p| p.split_once('=')).map(|(k, v)| (k.to_string(), percent_decode(v))).collect();
    let usage = "usage: /debug/authorization?destination=<ip:port>&source_ip=<ip>[&source_identity=<spiffe id>]\n";
    let Some(dst) = params.get("destination").and_then(|d| d.parse::<SocketAddr>().ok()) else {
        return text(StatusCode::BAD_REQUEST, format!("destination must be <ip:port>; {usage}"));
    };
    let Some(src_ip) = params.get("source_ip").and_then(|s| s.parse().ok()) else {
        return text(StatusCode::BAD_REQUEST, format!("source_ip must be an IP address; {usage}"));
    };
    let src_identity = match params.get("source_identity").filter(|s| !s.is_empty()) {
        Some(s) => match s.parse::<ferry_core::identity::Identity>() {
            Ok(id) => Some(id),
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("source_identity: {e}\n")),
        },
        None => None,
    };
    let snap = a.state.snapshot();
    let network = params.get("network").cloned().unwrap_or_default();
    let Some(w) = snap.workload_by_addr(&network, dst.ip()) else {
        return text(StatusCode::NOT_FOUND, format!("no workload has address {} in network {network:?}\n", dst.ip()));
    };
    let attrs = ferry_core::rbac::ConnAttrs { src_ip, src_identity: src_identity.clone(), dst };
    let e = ferry_core::rbac::explain(&snap, w, &attrs);
    json_resp(json!({
        "destination": {"uid": w.uid, "namespace": w.namespace, "name": w.name, "address": dst.to_string()},
        "source": {"ip": src_ip.to_string(), "identity": src_identity.map(|i| i.to_string()), "mtls": attrs.src_identity.is_some()},
        "stateVersion": snap.version,
        "considered": e.considered,
        "missing": e.missing,
        "decision": e.decision,
    }))
}

pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_resp(v: serde_json::Value) -> Resp {
    let body = serde_json::to_string_pretty(&v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn call(log: &LogHandle, method: Method, query: &str) -> (u16, String) {
        let r = logging(log, &method, query);
        let status = r.status().as_u16();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let body = rt.block_on(r.into_body().collect()).unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The review's table through the handler, and what each filter lets through: after
    /// istioctl's `access:debug` both the access log and the other logs keep coming.
    #[test]
    fn logging_rows_through_the_handler() {
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (log, sub) = crate::telemetry::test_logging("info", out.clone());
        let dispatch = tracing::Dispatch::new(sub);
        // The whole test runs under the subscriber: a reload recomputes which call sites are
        // enabled against the current dispatcher, as it does against the global one in ferry.
        tracing::dispatcher::with_default(&dispatch, || handler_rows(&log, &out));
    }

    fn handler_rows(log: &LogHandle, out: &std::sync::Mutex<Vec<u8>>) {
        let lines = |f: &dyn Fn()| {
            out.lock().unwrap().clear();
            f();
            String::from_utf8(out.lock().unwrap().clone()).unwrap()
        };
        let emit = || {
            tracing::info!(target: "access", "access-info");
            tracing::debug!(target: "access", "access-debug");
            tracing::info!(target: "ferry::proxy", "proxy-info");
            tracing::debug!(target: "ferry::proxy", "proxy-debug");
        };
        assert_eq!(call(log, Method::POST, ""), (200, "current log level: info\n".into()));
        assert_eq!(call(log, Method::GET, ""), (200, "current log level: info\n".into()));
        for bad in ["level=xyz", "level=bogus:::", "level=info&x=1", "level=debug&reset", "level=a=b=c"] {
            assert_eq!(call(log, Method::POST, bad).0, 400, "{bad}");
        }
        assert_eq!(call(log, Method::GET, "level=debug").0, 405);
        assert_eq!(log.current(), "info", "refused requests change nothing");

        assert_eq!(call(log, Method::POST, "level=access%3Adebug"), (200, "current log level: info,access=debug\n".into()));
        let seen = lines(&emit);
        for want in ["access-info", "access-debug", "proxy-info"] {
            assert!(seen.contains(want), "{want} missing after access:debug:\n{seen}");
        }
        assert!(!seen.contains("proxy-debug"), "{seen}");

        assert_eq!(call(log, Method::POST, "level=ferry::proxy=debug").1, "current log level: info,access=debug,ferry::proxy=debug\n");
        let seen = lines(&emit);
        assert!(seen.contains("proxy-debug"), "{seen}");
        assert_eq!(call(log, Method::POST, "level=warn").1, "current log level: warn\n");
        assert!(lines(&emit).is_empty(), "warn replaces the whole filter");
        assert_eq!(call(log, Method::POST, "reset").1, "current log level: info\n");
        let seen = lines(&emit);
        assert!(seen.contains("proxy-info") && !seen.contains("access-debug"), "{seen}");
    }
}
