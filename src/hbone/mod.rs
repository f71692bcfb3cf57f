//! HBONE: TCP tunnelled in HTTP/2 CONNECT streams over mutual TLS 1.3 (protocols.md §1).
//!
//! [`client`] dials and pools tunnels (one TLS connection per source/destination identity pair,
//! never shared across identities); [`server`] accepts them and hands each CONNECT stream to a
//! handler. The headers ztunnel sends (`baggage`, `forwarded`, `traceparent`) are built here.

pub mod budget;
pub mod client;
pub mod server;

use std::fmt::Write;
use std::net::SocketAddr;

use h2::{RecvStream, SendStream};
use http::HeaderMap;

use ferry_core::model::Workload;

/// One CONNECT stream: the byte pipe of one proxied TCP connection.
pub struct H2Stream {
    pub(crate) send: SendStream<budget::Chunk>,
    pub(crate) recv: RecvStream,
    /// The connection's budget for bytes queued to the peer.
    pub(crate) budget: budget::Budget,
}

/// `ip:port` with IPv6 in brackets, the form used on the wire.
pub(crate) fn authority_string(a: SocketAddr) -> String {
    a.to_string()
}

/// The `baggage` header describing workload `w` (protocols.md §1.5).
pub(crate) fn baggage(w: &Workload, cluster_default: &str) -> String {
    let cluster = if w.cluster_id.is_empty() { cluster_default } else { &w.cluster_id };
    let name = if w.workload_name.is_empty() { &w.name } else { &w.workload_name };
    let kind = format!("k8s.{}.name", w.workload_type.as_str());
    let entries = [
        ("k8s.cluster.name", cluster),
        ("k8s.namespace.name", w.namespace.as_str()),
        (kind.as_str(), name.as_str()),
        ("service.name", w.canonical_name.as_str()),
        ("service.version", w.canonical_revision.as_str()),
        ("cloud.region", w.locality.region.as_str()),
        ("cloud.availability_zone", w.locality.zone.as_str()),
    ];
    let mut out = String::new();
    for (k, v) in entries.iter().filter(|(_, v)| !v.is_empty()) {
        if !out.is_empty() {
            out.push(',');
        }
        let _ = write!(out, "{k}={v}");
    }
    out
}

/// What a peer's `baggage` says about it; used only for labels, never for decisions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Baggage {
    pub(crate) cluster: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) workload: Option<String>,
    pub(crate) service: Option<String>,
    pub(crate) version: Option<String>,
}

pub(crate) fn parse_baggage(headers: &HeaderMap) -> Baggage {
    let mut b = Baggage::default();
    for value in headers.get_all("baggage") {
        let Ok(s) = value.to_str() else { continue };
        for entry in s.split(',') {
            let Some((k, v)) = entry.trim().split_once('=') else { continue };
            let v = Some(v.trim().to_string()).filter(|v| !v.is_empty() && v.len() <= 253);
            match k.trim() {
                "k8s.cluster.name" => b.cluster = v,
                "k8s.namespace.name" => b.namespace = v,
                "k8s.deployment.name" | "k8s.cronjob.name" | "k8s.pod.name" | "k8s.job.name" => b.workload = v,
                "service.name" => b.service = v,
                "service.version" => b.version = v,
                _ => {}
            }
        }
    }
    b
}

/// RFC 7239 `forwarded` for the original client, with the service host when known.
pub(crate) fn forwarded(client: SocketAddr, host: Option<&str>) -> String {
    match host {
        Some(h) => format!("for=\"{client}\";host={h}"),
        None => format!("for=\"{client}\""),
    }
}

/// A random W3C `traceparent` (for correlating logs across hops).
pub(crate) fn traceparent() -> String {
    format!("00-{:032x}-{:016x}-00", fastrand::u128(1..), fastrand::u64(1..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baggage_round_trip() {
        let mut w = Workload::new("u", "ns", "pod-1");
        w.workload_name = "reviews".into();
        w.canonical_name = "reviews".into();
        w.canonical_revision = "v1".into();
        let b = baggage(&w, "Kubernetes");
        assert_eq!(
            b,
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=ns,k8s.deployment.name=reviews,service.name=reviews,service.version=v1"
        );
        let mut h = HeaderMap::new();
        h.insert("baggage", b.parse().unwrap());
        let p = parse_baggage(&h);
        assert_eq!(p.workload.as_deref(), Some("reviews"));
        assert_eq!(p.namespace.as_deref(), Some("ns"));
    }

    #[test]
    fn headers() {
        assert_eq!(forwarded("10.0.0.1:5000".parse().unwrap(), None), "for=\"10.0.0.1:5000\"");
        assert_eq!(forwarded("[fd00::1]:5000".parse().unwrap(), Some("a.b.svc")), "for=\"[fd00::1]:5000\";host=a.b.svc");
        let t = traceparent();
        assert_eq!(t.len(), 55);
        assert!(t.starts_with("00-") && t.ends_with("-00"));
    }
}
