//! Endpoints of Services without a selector, from their `discovery.k8s.io/v1` EndpointSlices,
//! as istiod's ambient index reads them: an endpoint whose `targetRef` is a Pod makes that
//! pod's workload an endpoint of the Service; any other address becomes a workload of its own
//! (plain TCP: nothing captures it). Slices of Services with a selector are ignored: their
//! endpoints come from the selector, and the slices Kubernetes writes for them say the same.
//!
//! Ports are matched by name, as EndpointSlices name them after the Service's ports; a slice
//! port without a matching Service port is left out. FQDN slices are ignored.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;

use super::objects::{ClusterState, Service as K8sService};
use crate::model::PortMap;

/// The label naming the Service a slice belongs to.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One endpoint address of a selector-less Service.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SliceEndpoint {
    /// `namespace/name` of the Service.
    pub(crate) service: String,
    /// `namespace/slice-name`.
    pub(crate) slice: String,
    pub(crate) ip: IpAddr,
    /// `namespace/name` of the Pod the address belongs to, if the slice says.
    pub(crate) pod: Option<String>,
    pub(crate) ready: bool,
    /// Service port to the endpoint's port.
    pub(crate) ports: PortMap,
}

/// Every endpoint of every selector-less Service in `c`.
pub(crate) fn endpoints(c: &ClusterState) -> Vec<SliceEndpoint> {
    let mut out = Vec::new();
    for (key, slice) in c.other.iter().filter(|(k, _)| k.starts_with("EndpointSlice/")) {
        let ns = slice.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default");
        let Some(svc_name) = slice.pointer(&format!("/metadata/labels/{}", SERVICE_NAME_LABEL.replace('/', "~1"))).and_then(Value::as_str)
        else {
            continue;
        };
        let Some(svc) = c.services.get(&format!("{ns}/{svc_name}")).filter(|s| s.spec.selector.is_empty()) else { continue };
        if slice["addressType"] == "FQDN" {
            continue;
        }
        let ports = port_map(svc, slice);
        let slice_key = key.trim_start_matches("EndpointSlice/").to_string();
        for ep in slice["endpoints"].as_array().into_iter().flatten() {
            out.extend(endpoint(ns, svc_name, &slice_key, ep, &ports));
        }
    }
    out
}

fn endpoint(ns: &str, svc: &str, slice: &str, ep: &Value, ports: &PortMap) -> Vec<SliceEndpoint> {
    // Kubernetes: an unset `ready` means ready.
    let ready = ep.pointer("/conditions/ready").and_then(Value::as_bool).unwrap_or(true);
    let pod = match (ep.pointer("/targetRef/kind").and_then(Value::as_str), ep.pointer("/targetRef/name").and_then(Value::as_str)) {
        (Some("Pod"), Some(name)) => {
            let pod_ns = ep.pointer("/targetRef/namespace").and_then(Value::as_str).unwrap_or(ns);
            Some(format!("{pod_ns}/{name}"))
        }
        _ => None,
    };
    let ips = ep["addresses"].as_array().into_iter().flatten().filter_map(|a| a.as_str()?.parse::<IpAddr>().ok());
    ips.map(|ip| SliceEndpoint {
        service: format!("{ns}/{svc}"),
        slice: slice.to_string(),
        ip,
        pod: pod.clone(),
        ready,
        ports: ports.clone(),
    })
    .collect()
}

/// Service port to slice port, matched by port name (an unnamed port matches an unnamed one).
fn port_map(svc: &K8sService, slice: &Value) -> PortMap {
    let mut out = BTreeMap::new();
    for p in slice["ports"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default();
        let Some(port) = p["port"].as_u64().and_then(|n| u16::try_from(n).ok()).filter(|n| *n != 0) else { continue };
        if let Some(sp) = svc.spec.ports.iter().find(|sp| sp.name == name) {
            out.insert(sp.port, port);
        }
    }
    out
}
