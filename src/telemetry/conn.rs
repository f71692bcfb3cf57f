//! The record of one proxied connection: it owns the connection's metric labels and, when the
//! connection ends, emits exactly one access-log line (tracing target `access`) and the closing
//! metrics. Denied and failed connections are recorded the same way, with their response flag.

use std::net::SocketAddr;
use std::time::Instant;

use super::metrics::{handles, ByteCounters, Peer, Reporter, TrafficLabels};
use crate::identity::Identity;
use crate::state::model::{Service, Workload};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// How a connection ended, as metrics (`response_flags`) and the access log see it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub flags: &'static str,
    pub error: String,
}

pub struct ConnRecord {
    start: Instant,
    direction: Direction,
    pub labels: TrafficLabels,
    pub src_addr: SocketAddr,
    pub dst_addr: SocketAddr,
    pub hbone_addr: Option<SocketAddr>,
    pub src_identity: Option<Identity>,
    pub dst_identity: Option<Identity>,
    established: bool,
}

impl ConnRecord {
    pub fn new(direction: Direction, src_addr: SocketAddr, dst_addr: SocketAddr) -> Self {
        let reporter = if direction == Direction::Outbound { Reporter::Source } else { Reporter::Destination };
        ConnRecord {
            start: Instant::now(),
            direction,
            labels: TrafficLabels::new(reporter),
            src_addr,
            dst_addr,
            hbone_addr: None,
            src_identity: None,
            dst_identity: None,
            established: false,
        }
    }

    /// Sets the source from state; `verified` is the mTLS-verified identity, if any.
    pub fn source_workload(&mut self, w: &Workload, verified: Option<&Identity>) {
        self.labels.source = Peer::from_workload(w, verified);
        if verified.is_some() {
            self.src_identity = verified.cloned();
        }
    }

    pub fn source_identity(&mut self, id: &Identity) {
        self.src_identity = Some(id.clone());
        if self.labels.source.workload.is_none() {
            self.labels.source = Peer::from_identity(id);
        } else {
            self.labels.source.principal = Some(id.to_string());
        }
    }

    pub fn destination_workload(&mut self, w: &Workload, identity: Option<&Identity>) {
        self.labels.destination = Peer::from_workload(w, identity);
        self.dst_identity = identity.cloned();
    }

    pub fn destination_service(&mut self, s: &Service) {
        self.labels.set_service(s);
    }

    pub fn set_mtls(&mut self, on: bool) {
        self.labels.mtls = on;
    }

    /// The connection reached its upstream: count it open and return its byte counters.
    pub fn established(&mut self) -> ByteCounters {
        self.established = true;
        let h = handles(&self.labels, "-");
        h.opened.increment(1);
        h.bytes.clone()
    }

    /// Ends the record: closing metrics and the access log line.
    pub fn finish(self, received: u64, sent: u64, failure: Option<Failure>) {
        let flags = failure.as_ref().map(|f| f.flags).unwrap_or("-");
        if self.established {
            handles(&self.labels, "-").closed.increment(1);
        } else {
            let h = handles(&self.labels, flags);
            h.opened.increment(1);
            h.closed.increment(1);
        }
        if failure.is_some() {
            handles(&self.labels, flags).failed().increment(1);
        }
        self.log(received, sent, failure.as_ref());
    }

    fn log(&self, received: u64, sent: u64, failure: Option<&Failure>) {
        let (s, d) = (&self.labels.source, &self.labels.destination);
        let direction = if self.direction == Direction::Inbound { "inbound" } else { "outbound" };
        let duration = format!("{}ms", self.start.elapsed().as_millis());
        let service = self.labels.service.as_ref().map(|(h, _, _)| h.as_str());
        let msg = if failure.is_some() { "connection failed" } else { "connection complete" };
        tracing::info!(
            target: "access",
            direction,
            src.addr = display(self.src_addr),
            src.workload = s.workload.as_deref(),
            src.namespace = s.namespace.as_deref(),
            src.identity = self.src_identity.as_ref().map(display),
            dst.addr = display(self.dst_addr),
            dst.hbone_addr = self.hbone_addr.as_ref().map(display),
            dst.service = service,
            dst.workload = d.workload.as_deref(),
            dst.namespace = d.namespace.as_deref(),
            dst.identity = self.dst_identity.as_ref().map(display),
            bytes_sent = sent,
            bytes_recv = received,
            duration = display(&duration),
            connection_security_policy = if self.labels.mtls { "mutual_tls" } else { "none" },
            response_flags = failure.map(|f| f.flags).unwrap_or("-"),
            error = failure.map(|f| f.error.as_str()),
            "{msg}"
        );
    }
}
