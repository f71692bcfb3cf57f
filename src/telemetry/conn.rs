//! The record of one proxied connection: it owns the connection's metric labels and, when the
//! connection ends, emits exactly one access-log line (tracing target `access`) and the closing
//! metrics. Denied and failed connections are recorded the same way, with their response flag.
//! Once established, a record drops its own copy of the labels and refers to the interned set
//! of its metric handles, so an open connection costs one pointer of telemetry, not twenty
//! strings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::metrics::{handles, ByteCounters, Handles, OpenSocket, Peer, Reporter, TrafficLabels};
use ferry_core::addr::{ClientAddr, HboneTarget, ServerAddr};
use ferry_core::identity::Identity;
use ferry_core::model::{Service, Workload};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Inbound,
    Outbound,
}

/// How a connection ended, as metrics (`response_flags`) and the access log see it.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) flags: &'static str,
    pub(crate) error: String,
}

pub(crate) struct ConnRecord {
    start: Instant,
    direction: Direction,
    labels: Labels,
    /// Who connected.
    pub(crate) src: ClientAddr,
    /// Where the connection arrived, as the client addressed it: the original destination of
    /// a captured connection, the HBONE listener for a tunnel. Fixed at accept.
    pub(crate) arrived: SocketAddr,
    /// Where ferry connected, once it did (`dst.addr`; `arrived` until then).
    pub(crate) upstream: Option<ServerAddr>,
    /// What the tunnel carries the bytes to (`dst.hbone_addr`), for HBONE connections.
    pub(crate) hbone_target: Option<HboneTarget>,
    /// Held from establishment until the record ends.
    open: Option<OpenSocket>,
}

/// Labels are built while the connection is set up and fixed once it is counted.
enum Labels {
    Building(Box<TrafficLabels>),
    /// The metric handles of an established connection, with the interned label set.
    Counted(Arc<Handles>),
}

impl ConnRecord {
    pub(crate) fn new(direction: Direction, src: ClientAddr, arrived: SocketAddr) -> Self {
        let reporter = if direction == Direction::Outbound { Reporter::Source } else { Reporter::Destination };
        ConnRecord {
            start: Instant::now(),
            direction,
            labels: Labels::Building(Box::new(TrafficLabels::new(reporter))),
            src,
            arrived,
            upstream: None,
            hbone_target: None,
            open: None,
        }
    }

    /// The connection's labels (the source and destination principals are the identities the
    /// access log reports).
    pub(crate) fn labels(&self) -> &TrafficLabels {
        match &self.labels {
            Labels::Building(l) => l,
            Labels::Counted(h) => &h.traffic,
        }
    }

    /// Applies `f` to the labels unless the connection is already counted (then they are fixed).
    fn edit(&mut self, f: impl FnOnce(&mut TrafficLabels)) {
        if let Labels::Building(l) = &mut self.labels {
            f(l);
        }
    }

    /// Sets the source from state; `verified` is the mTLS-verified identity, if any.
    pub(crate) fn source_workload(&mut self, w: &Workload, verified: Option<&Identity>) {
        self.edit(|l| {
            let principal = l.source.principal.take();
            l.source = Peer::from_workload(w, verified);
            if verified.is_none() {
                l.source.principal = principal;
            }
        });
    }

    /// Sets the source labels of a peer known only by its identity and baggage.
    pub(crate) fn source_peer(&mut self, p: Peer) {
        self.edit(|l| l.source = p);
    }

    pub(crate) fn source_identity(&mut self, id: &Identity) {
        self.edit(|l| {
            if l.source.workload.is_none() {
                l.source = Peer::from_identity(id);
            } else {
                l.source.principal = Some(id.to_string());
            }
        });
    }

    pub(crate) fn destination_workload(&mut self, w: &Workload, identity: Option<&Identity>) {
        self.edit(|l| l.destination = Peer::from_workload(w, identity));
    }

    pub(crate) fn destination_service(&mut self, s: &Service) {
        self.edit(|l| l.set_service(s));
    }

    pub(crate) fn set_mtls(&mut self, on: bool) {
        self.edit(|l| l.mtls = on);
    }

    /// The connection reached its upstream: count it open and return its byte counters. Its
    /// own copy of the labels is dropped for the interned one.
    pub(crate) fn established(&mut self) -> ByteCounters {
        let h = match &self.labels {
            Labels::Building(l) => handles(l, "-"),
            Labels::Counted(h) => return h.bytes.clone(),
        };
        h.opened.increment(1);
        self.open = Some(OpenSocket::new(h.traffic.reporter));
        let bytes = h.bytes.clone();
        self.labels = Labels::Counted(h);
        bytes
    }

    /// Ends the record: closing metrics and the access log line.
    pub(crate) fn finish(self, received: u64, sent: u64, failure: Option<Failure>) {
        let flags = failure.as_ref().map(|f| f.flags).unwrap_or("-");
        match &self.labels {
            Labels::Counted(h) => h.closed.increment(1),
            Labels::Building(l) => {
                let h = handles(l, flags);
                h.opened.increment(1);
                h.closed.increment(1);
            }
        }
        if failure.is_some() {
            handles(self.labels(), flags).failed().increment(1);
        }
        self.log(received, sent, failure.as_ref());
    }

    /// One line in ztunnel's field order (ferry's `connection_security_policy` and
    /// `response_flags` last). ztunnel's conventions: identities only when mTLS verified them;
    /// `dst.addr` is the L4 peer (the HBONE port for a tunnel) and `dst.hbone_addr` the
    /// tunnelled target; `bytes_sent` is what the connection's own side sent (the source on
    /// outbound, the destination on inbound), the reverse of the metrics' request-bytes rule;
    /// success at INFO, a failure after the connection opened at ERROR, an early refusal at WARN.
    fn log(&self, received: u64, sent: u64, failure: Option<&Failure>) {
        let labels = self.labels();
        let (s, d) = (&labels.source, &labels.destination);
        let inbound = self.direction == Direction::Inbound;
        let direction = if inbound { "inbound" } else { "outbound" };
        let duration = format!("{}ms", self.start.elapsed().as_millis());
        let service = labels.service.as_ref().map(|(h, _, _)| h.as_str());
        let mtls = labels.mtls;
        let (bytes_sent, bytes_recv) = if inbound { (sent, received) } else { (received, sent) };
        let dst_addr = match (inbound, &self.hbone_target) {
            (true, Some(_)) => self.arrived,
            _ => self.upstream.map(|u| u.0).unwrap_or(self.arrived),
        };
        let opened = matches!(self.labels, Labels::Counted(_));
        let level = match failure {
            None => tracing::Level::INFO,
            Some(_) if opened => tracing::Level::ERROR,
            Some(_) => tracing::Level::WARN,
        };
        macro_rules! access {
            ($lvl:expr, $msg:literal) => {
                tracing::event!(
                    target: "access",
                    $lvl,
                    src.addr = display(self.src),
                    src.workload = s.workload.as_deref(),
                    src.namespace = s.namespace.as_deref(),
                    src.identity = s.principal.as_deref().filter(|_| mtls),
                    src.cluster = s.cluster.as_deref(),
                    dst.addr = display(dst_addr),
                    dst.hbone_addr = self.hbone_target.as_ref().map(display),
                    dst.service = service,
                    dst.workload = d.workload.as_deref(),
                    dst.namespace = d.namespace.as_deref(),
                    dst.identity = d.principal.as_deref().filter(|_| mtls),
                    dst.cluster = d.cluster.as_deref(),
                    direction,
                    bytes_sent,
                    bytes_recv,
                    duration = display(&duration),
                    error = failure.map(|f| f.error.as_str()),
                    connection_security_policy = if mtls { "mutual_tls" } else { "unknown" },
                    response_flags = failure.map(|f| f.flags).unwrap_or("-"),
                    $msg
                )
            };
        }
        match level {
            tracing::Level::INFO => access!(tracing::Level::INFO, "connection complete"),
            tracing::Level::ERROR => access!(tracing::Level::ERROR, "connection complete"),
            _ => access!(tracing::Level::WARN, "connection failed"),
        }
    }
}
