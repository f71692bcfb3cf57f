//! Workload, service and policy state as one immutable, indexed [`Snapshot`]. Sources build a
//! [`StateInput`]; the data plane publishes snapshots whole, so every lookup in one
//! connection's decision sees one version.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::model::{
    Authorization, HealthStatus, NetworkMode, PolicyKey, PolicyScope, PortMap, Service, ServiceKey, TunnelProtocol, Visibility, Workload,
    WorkloadUid,
};

/// The unindexed contents of a snapshot, as a source produces them.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct StateInput {
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub policies: Vec<Authorization>,
}

/// One consistent version of the state with the indices the data path needs.
#[derive(Debug, Default)]
pub struct Snapshot {
    workloads: BTreeMap<WorkloadUid, Arc<Workload>>,
    /// IP, then network: lookups on the data path borrow, never allocate.
    by_addr: HashMap<IpAddr, Vec<(String, Arc<Workload>)>>,
    /// Namespace, then name: the served workload of every connection is found by index.
    by_name: HashMap<String, HashMap<String, Vec<Arc<Workload>>>>,
    services: BTreeMap<ServiceKey, Arc<Service>>,
    by_vip: HashMap<IpAddr, Vec<(String, Arc<Service>)>>,
    cidr_services: Vec<Arc<Service>>,
    endpoints: HashMap<ServiceKey, Vec<Arc<Workload>>>,
    policies: BTreeMap<PolicyKey, Arc<Authorization>>,
    /// Bumped on every replacement, for logs and the config dump.
    pub version: u64,
}

impl Snapshot {
    pub fn build(input: StateInput, version: u64) -> Snapshot {
        let mut s = Snapshot { version, ..Default::default() };
        for w in input.workloads {
            s.workloads.insert(w.uid.clone(), Arc::new(w));
        }
        s.index_workloads();
        for svc in input.services {
            let svc = Arc::new(svc);
            for vip in &svc.vips {
                s.by_vip.entry(vip.address).or_default().push((vip.network.clone(), svc.clone()));
            }
            if !svc.cidr_vips.is_empty() {
                s.cidr_services.push(svc.clone());
            }
            s.services.insert(svc.key(), svc);
        }
        for p in input.policies {
            s.policies.insert(p.key(), Arc::new(p));
        }
        s
    }

    fn index_workloads(&mut self) {
        for w in self.workloads.values() {
            for svc in w.services.keys() {
                self.endpoints.entry(svc.clone()).or_default().push(w.clone());
            }
            self.by_name.entry(w.namespace.clone()).or_default().entry(w.name.clone()).or_default().push(w.clone());
            if w.network_mode == NetworkMode::HostNetwork {
                continue;
            }
            for ip in &w.addresses {
                let owners = self.by_addr.entry(*ip).or_default();
                match owners.iter_mut().find(|(n, _)| *n == w.network) {
                    Some(slot) if addr_preference(w) > addr_preference(&slot.1) => slot.1 = w.clone(),
                    Some(_) => {}
                    None => owners.push((w.network.clone(), w.clone())),
                }
            }
        }
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }
    pub fn policies(&self) -> impl Iterator<Item = &Arc<Authorization>> {
        self.policies.values()
    }

    pub fn service(&self, key: &ServiceKey) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(uid)
    }

    /// The workload that owns `ip` in `network`, per protocols.md §4.8 preferences.
    pub fn workload_by_addr(&self, network: &str, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_addr.get(&ip)?.iter().find(|(n, _)| n == network).map(|(_, w)| w)
    }

    /// Finds a workload by namespace and name (and service account, when given), by index.
    pub fn find_workload(&self, namespace: &str, name: &str, service_account: Option<&str>) -> Option<&Arc<Workload>> {
        let candidates = self.by_name.get(namespace)?.get(name)?;
        candidates.iter().find(|w| service_account.is_none_or(|sa| w.identity().is_ok_and(|id| id.service_account() == sa)))
    }

    /// The service a client in `client_ns` means when it dials `ip`: exact VIPs first (visible
    /// ones only; same namespace, then canonical, then first seen), then CIDR VIPs.
    pub(crate) fn service_by_vip(&self, network: &str, ip: IpAddr, client_ns: &str) -> Option<Arc<Service>> {
        let visible = |s: &&Arc<Service>| s.visibility == Visibility::Public || s.namespace == client_ns;
        if let Some(cands) = self.by_vip.get(&ip) {
            let mut cands: Vec<&Arc<Service>> = cands.iter().filter(|(n, _)| n == network).map(|(_, s)| s).filter(visible).collect();
            cands.sort_by_key(|s| (s.namespace != client_ns, !s.canonical));
            if let Some(s) = cands.first() {
                return Some((*s).clone());
            }
        }
        self.cidr_services
            .iter()
            .filter(visible)
            .filter_map(|s| {
                let best =
                    s.cidr_vips.iter().filter(|c| c.network == network && c.cidr.contains(&ip)).map(|c| c.cidr.prefix_len()).max()?;
                Some((s, best))
            })
            .min_by_key(|(s, len)| (s.namespace != client_ns, std::cmp::Reverse(*len), !s.canonical))
            .map(|(s, _)| s.clone())
    }

    /// The services with their endpoints, for the config dump.
    pub fn services_dump(&self) -> Vec<ServiceDump<'_>> {
        self.services
            .iter()
            .map(|(key, service)| {
                let endpoints = self
                    .endpoints(key)
                    .iter()
                    .filter_map(|w| {
                        let port = w.services.get(key)?;
                        Some((w.uid.as_str(), EndpointDump { workload_uid: w.uid.as_str(), service: key.as_str(), port, status: w.status }))
                    })
                    .collect();
                ServiceDump { service, endpoints }
            })
            .collect()
    }

    /// Every workload that lists `service_key` in its services map.
    pub(crate) fn endpoints(&self, service_key: &ServiceKey) -> &[Arc<Workload>] {
        self.endpoints.get(service_key).map(Vec::as_slice).unwrap_or(&[])
    }

    #[cfg(test)]
    pub(crate) fn policy(&self, key: &PolicyKey) -> Option<&Arc<Authorization>> {
        self.policies.get(key)
    }

    /// The policies that apply to `w` (global, its namespace's, and those it references), plus
    /// the keys it references that this snapshot does not hold. The caller must fail closed on
    /// those: a policy still in flight may be a DENY.
    pub(crate) fn policies_for(&self, w: &Workload) -> (Vec<Arc<Authorization>>, Vec<PolicyKey>) {
        let mut found: Vec<Arc<Authorization>> = self
            .policies
            .values()
            .filter(|p| match p.scope {
                PolicyScope::Global => true,
                PolicyScope::Namespace => p.namespace == w.namespace,
                PolicyScope::WorkloadSelector => false,
            })
            .cloned()
            .collect();
        let mut missing = Vec::new();
        for key in &w.authorization_policies {
            match self.policies.get(key) {
                Some(p) if !found.iter().any(|f| Arc::ptr_eq(f, p)) => found.push(p.clone()),
                Some(_) => {}
                None => missing.push(key.clone()),
            }
        }
        (found, missing)
    }
}

/// A service as the config dump shows it: its own fields plus its endpoints keyed by workload
/// uid, as ztunnel's dump has them (istioctl's ENDPOINTS column and Kiali read them there).
#[derive(Serialize)]
pub struct ServiceDump<'a> {
    #[serde(flatten)]
    service: &'a Service,
    endpoints: BTreeMap<&'a str, EndpointDump<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EndpointDump<'a> {
    workload_uid: &'a str,
    service: &'a str,
    port: &'a PortMap,
    status: HealthStatus,
}

fn addr_preference(w: &Workload) -> u8 {
    let pod = w.uid.as_str().contains("//Pod/") as u8;
    let hbone = (w.protocol == TunnelProtocol::Hbone) as u8;
    pod * 2 + hbone
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
