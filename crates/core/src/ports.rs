//! The numbers the node proxy, the node agent, the CNI plugin and the harness must agree on:
//! the proxy's ports inside a pod, its socket mark, the in-pod rule table's name
//! (protocols.md §2.1–§2.2). One definition each, so the capture rules and the listeners cannot
//! drift apart.

/// Outbound capture: the in-pod rules redirect the pod's outgoing TCP here.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext capture: incoming TCP that is not HBONE.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// Inbound HBONE (mTLS + HTTP/2 CONNECT).
pub const HBONE_PORT: u16 = 15008;
/// Admin, metrics and readiness: never valid proxy destinations.
pub(crate) const ADMIN_PORTS: [u16; 3] = [15000, 15020, 15021];
/// The proxy's socket mark (0x539) in shared mode: capture rules let marked packets through.
pub const DEFAULT_PACKET_MARK: u32 = 1337;
/// The nftables table the node agent installs in every enrolled pod's namespace.
pub const INPOD_NFT_TABLE: &str = "ferry_inpod";

/// The ports a proxy owns, none of which is ever a valid destination (loop and self-call
/// protection). The capture ports are fixed in production (configurable only for in-process
/// tests); the management ports come from the configured admin, metrics and readiness
/// addresses, so moving one never leaves it reachable through the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub outbound: u16,
    pub inbound_plaintext: u16,
    pub hbone: u16,
    /// Admin, metrics and readiness, as configured.
    pub management: [u16; 3],
}

impl Default for Ports {
    fn default() -> Self {
        Ports { outbound: OUTBOUND_PORT, inbound_plaintext: INBOUND_PLAINTEXT_PORT, hbone: HBONE_PORT, management: ADMIN_PORTS }
    }
}

impl Ports {
    /// Whether `port` is one of this proxy's own.
    pub fn is_own(&self, port: u16) -> bool {
        port == self.outbound || port == self.inbound_plaintext || port == self.hbone || self.management.contains(&port)
    }
}
