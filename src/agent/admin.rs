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
use crate::telemetry::http::{metrics_route, text, Resp};
use ferry_core::k8s::capture::{decide, Capture};

/// The routes, for `telemetry::http::serve`.
pub(crate) fn route(
    agent: Arc<Agent>,
    ready: Arc<AtomicBool>,
    metrics: PrometheusHandle,
) -> impl Fn(&Request<Incoming>) -> Resp + Clone + Send + Sync + 'static {
    let refresh = {
        let agent = agent.clone();
        move || agent.publish_gauges()
    };
    let scrape = metrics_route(metrics, refresh);
    move |req| match req.uri().path() {
        // Answering at all is liveness: the runtime that serves pods also serves this.
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: restoring the redirection of recorded pods\n"),
        "/debug/pods" => pods(&agent),
        _ => scrape(req),
    }
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
