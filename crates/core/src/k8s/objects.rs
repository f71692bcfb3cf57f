//! The subset of Kubernetes objects ferry reads (Namespace, Pod, Service, ServiceAccount), with
//! serde shapes matching the API's JSON/YAML. Unknown fields are ignored, as the API server's
//! clients do; fields ferry relies on are typed so a wrong type is a clear error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Namespace {
    pub metadata: ObjectMeta,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ServiceAccount {
    pub metadata: ObjectMeta,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default)]
    pub name: String,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub node_name: String,
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub service_account_name: String,
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default)]
    pub init_containers: Vec<Container>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct PodIp {
    pub ip: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub phase: String,
    #[serde(default, rename = "podIP")]
    pub pod_ip: String,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Pod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

impl Pod {
    /// The service account the pod runs as (Kubernetes defaults it to `default`).
    pub fn service_account(&self) -> &str {
        if self.spec.service_account_name.is_empty() {
            "default"
        } else {
            &self.spec.service_account_name
        }
    }

    /// All pod IPs, `podIPs` first, then `podIP`, de-duplicated, unparsable ones dropped.
    pub fn ips(&self) -> Vec<std::net::IpAddr> {
        let mut out = Vec::new();
        for s in self.status.pod_ips.iter().map(|p| p.ip.as_str()).chain(std::iter::once(self.status.pod_ip.as_str())) {
            if let Ok(ip) = s.parse() {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
        out
    }
}

/// `targetPort` is a number or a container port name.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum IntOrString {
    Int(u16),
    Str(String),
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    pub name: String,
    pub port: u16,
    pub target_port: Option<IntOrString>,
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: String,
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Service {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
}

/// Everything the cluster-state source knows, keyed for lookups.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterState {
    pub namespaces: BTreeMap<String, Namespace>,
    /// Keyed by `namespace/name`.
    pub pods: BTreeMap<String, Pod>,
    pub services: BTreeMap<String, Service>,
    pub service_accounts: BTreeMap<String, ServiceAccount>,
    /// Other kinds (e.g. security.istio.io policies), raw, keyed by `kind/namespace/name`.
    pub other: BTreeMap<String, serde_json::Value>,
}

impl ClusterState {
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&format!("{namespace}/{name}"))
    }

    /// A Node, raw (cluster-scoped: kept under the conversion's `Node/default/` prefix).
    pub fn node(&self, name: &str) -> Option<&serde_json::Value> {
        self.other.get(&format!("Node/default/{name}"))
    }
}
