//! The agent's management port: Prometheus metrics, liveness (`/healthz`), readiness
//! (`/readyz`, ready once the pods recorded before a restart have their redirection back) and
//! `/debug/pods`, what the agent believes about each pod on the node.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use super::Agent;
use crate::telemetry::http::{dispatch, metrics_endpoints, metrics_response, text, Endpoint, Reply, Resp};
use ferry_core::k8s::capture::{decide, Capture};

/// What the management port's handlers read.
pub(crate) struct Management {
    pub(crate) agent: Arc<Agent>,
    pub(crate) ready: Arc<AtomicBool>,
    /// With `--install-cni`: ferry-cni is chained into the node's network configuration.
    pub(crate) cni_installed: Arc<AtomicBool>,
    pub(crate) metrics: PrometheusHandle,
    /// The agent's runtime, for the `tokio_*` families.
    pub(crate) runtime: tokio::runtime::Handle,
}

/// The routes, for `telemetry::http::serve`.
pub(crate) fn route(m: Management) -> impl Fn(&Request<Incoming>) -> Reply + Clone + Send + Sync + 'static {
    let m = Arc::new(m);
    move |req| dispatch("ferry node agent", &[ENDPOINTS, METRICS], &m, req)
}

const METRICS: &[Endpoint<Arc<Management>>] = &metrics_endpoints(scrape);

const ENDPOINTS: &[Endpoint<Arc<Management>>] = &[
    // Answering at all is liveness: the runtime that serves pods also serves this.
    Endpoint {
        path: "/healthz",
        usage: "GET",
        about: "liveness: 200 while the agent's runtime answers",
        handler: |_, _| text(StatusCode::OK, "ok\n").into(),
    },
    Endpoint {
        path: "/readyz",
        usage: "GET",
        about: "readiness: 200 once the pods recorded before a restart have their redirection back and (with --install-cni) ferry-cni is chained, else 503",
        handler: |m, _| readiness(m).into(),
    },
    Endpoint {
        path: "/debug/pods",
        usage: "GET",
        about: "every pod the agent has a record of, what the cluster state decides for it, and whether a node proxy is connected",
        handler: |m, _| pods(&m.agent).into(),
    },
];

fn readiness(m: &Management) -> Resp {
    if !m.ready.load(Ordering::Acquire) {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready: restoring the redirection of recorded pods\n")
    } else if !m.cni_installed.load(Ordering::Acquire) {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: ferry-cni is not chained into the node's CNI configuration yet (see the agent's log)\n",
        )
    } else {
        text(StatusCode::OK, "ready\n")
    }
}

fn scrape(m: &Arc<Management>, req: &Request<Incoming>) -> Reply {
    m.agent.publish_gauges();
    metrics_response(&m.metrics, &m.runtime, req).into()
}

/// Every pod the agent has a record of: the record, what the cluster state now decides for it
/// and why, and whether a node proxy is connected to receive it.
fn pods(agent: &Agent) -> Resp {
    // The cache lock is held across an enrollment; a debug read must not wait behind one.
    let Ok(cache) = agent.pods.try_lock() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "the pod cache is busy (an enrollment is in progress); retry\n");
    };
    let cluster = agent.cluster.borrow().clone();
    let pods: Vec<_> = cache
        .pods
        .values()
        .map(|e| {
            let r = &e.record;
            let capture = match cluster.pod(&r.namespace, &r.name) {
                None => "unknown: not in the cluster state".to_string(),
                Some(p) => match decide(cluster.namespace(&r.namespace), p) {
                    Capture::Enroll => "enroll".to_string(),
                    Capture::Skip(why) => format!("skip: {why:?}"),
                },
            };
            json!({
                "uid": r.uid, "namespace": r.namespace, "name": r.name, "containerId": r.container_id,
                "netns": r.netns_path, "ips": r.ips, "enrolled": r.enrolled, "capture": capture,
            })
        })
        .collect();
    let body = json!({"node": agent.args.node_name, "proxiesConnected": agent.proxies_connected(), "pods": pods});
    let mut resp = text(StatusCode::OK, format!("{body:#}\n"));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
