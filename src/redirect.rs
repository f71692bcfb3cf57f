//! In-pod traffic redirection (protocols.md §2), rendered as one nftables table so installing,
//! replacing and removing it are each a single atomic transaction.
//!
//! Semantics match istio-cni's REDIRECT-mode iptables rules: outbound TCP to 15001, inbound TCP
//! (except to 15008) to 15006, packets carrying the proxy mark 0x539 skip capture, and the
//! connmark 0x111 plus policy routing (table 100, see [`RouteConfig`]) deliver replies to
//! transparently bound proxy sockets. The kubelet probe source is exempt. DNS capture (15053)
//! is not rendered because ferry has no DNS proxy yet.

use std::fmt::Write;
use std::io::{self, Write as IoWrite};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use ferry_sys::Netns;

pub(crate) const TABLE: &str = "ferry_inpod";
pub(crate) const CONNMARK: u32 = 0x111;
pub(crate) const MARK_MASK: u32 = 0xfff;
pub(crate) const ROUTE_TABLE: u32 = 100;
pub(crate) const RULE_PRIORITY: u32 = 32764;
pub(crate) const PROBE_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 127);
pub(crate) const PROBE_V6: Ipv6Addr = Ipv6Addr::new(0xfd16, 0x9254, 0x7127, 0x1337, 0xffff, 0xffff, 0xffff, 0xffff);

/// What to render for one pod.
#[derive(Clone, Debug)]
pub struct RedirectConfig {
    /// The proxy's socket mark (`PACKET_MARK`, 1337 = 0x539).
    pub mark: u32,
    pub outbound_port: u16,
    pub inbound_plaintext_port: u16,
    pub hbone_port: u16,
    pub ipv6: bool,
    /// `false` for ingress mode (`ambient.istio.io/bypass-inbound-capture`): outbound only.
    pub capture_inbound: bool,
    /// Interfaces whose incoming TCP is treated as outbound (`istio.io/reroute-virtual-interfaces`).
    pub virtual_interfaces: Vec<String>,
    pub probe_v4: Ipv4Addr,
    pub probe_v6: Ipv6Addr,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        RedirectConfig {
            mark: ferry_core::ports::DEFAULT_PACKET_MARK,
            outbound_port: ferry_core::ports::OUTBOUND_PORT,
            inbound_plaintext_port: ferry_core::ports::INBOUND_PLAINTEXT_PORT,
            hbone_port: ferry_core::ports::HBONE_PORT,
            ipv6: true,
            capture_inbound: true,
            virtual_interfaces: Vec::new(),
            probe_v4: PROBE_V4,
            probe_v6: PROBE_V6,
        }
    }
}

/// The nft script that installs (or atomically replaces) the pod's rules.
pub fn nft_install(c: &RedirectConfig) -> String {
    let mark = format!("meta mark & {MARK_MASK:#x} != {:#x}", c.mark & MARK_MASK);
    let mut s = String::new();
    // Declaring then deleting the table makes the script idempotent in one transaction.
    let _ = writeln!(s, "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{");
    let _ = writeln!(s, "  chain prerouting_mangle {{\n    type filter hook prerouting priority mangle; policy accept;");
    if c.capture_inbound {
        let _ = writeln!(
            s,
            "    meta mark & {MARK_MASK:#x} == {:#x} ct mark set ct mark & {:#x} | {CONNMARK:#x}",
            c.mark & MARK_MASK,
            !MARK_MASK
        );
    }
    let _ = writeln!(s, "  }}\n  chain output_route {{\n    type route hook output priority mangle; policy accept;");
    let _ = writeln!(s, "    ct mark & {MARK_MASK:#x} == {CONNMARK:#x} meta mark set ct mark");
    let _ = writeln!(s, "  }}\n  chain prerouting_nat {{\n    type nat hook prerouting priority dstnat; policy accept;");
    for ifname in &c.virtual_interfaces {
        let _ = writeln!(s, "    iifname {:?} meta l4proto tcp redirect to :{}", ifname, c.outbound_port);
    }
    if c.capture_inbound {
        let _ = writeln!(s, "    ip saddr {} meta l4proto tcp accept", c.probe_v4);
        let _ = writeln!(
            s,
            "    meta l4proto tcp ip daddr != 127.0.0.1 tcp dport != {} {mark} redirect to :{}",
            c.hbone_port, c.inbound_plaintext_port
        );
        if c.ipv6 {
            let _ = writeln!(s, "    ip6 saddr {} meta l4proto tcp accept", c.probe_v6);
            let _ = writeln!(
                s,
                "    meta l4proto tcp ip6 daddr != ::1 tcp dport != {} {mark} redirect to :{}",
                c.hbone_port, c.inbound_plaintext_port
            );
        }
    }
    let _ = writeln!(s, "  }}\n  chain output_nat {{\n    type nat hook output priority -100; policy accept;");
    let _ = writeln!(s, "    ip daddr {} meta l4proto tcp accept", c.probe_v4);
    let _ = writeln!(s, "    meta l4proto tcp meta mark & {MARK_MASK:#x} == {CONNMARK:#x} accept");
    let _ = writeln!(s, "    oifname \"lo\" ip daddr != 127.0.0.1 accept");
    let _ = writeln!(s, "    meta l4proto tcp ip daddr != 127.0.0.1 {mark} redirect to :{}", c.outbound_port);
    if c.ipv6 {
        let _ = writeln!(s, "    ip6 daddr {} meta l4proto tcp accept", c.probe_v6);
        let _ = writeln!(s, "    oifname \"lo\" ip6 daddr != ::1 accept");
        let _ = writeln!(s, "    meta l4proto tcp ip6 daddr != ::1 {mark} redirect to :{}", c.outbound_port);
    }
    s.push_str("  }\n}\n");
    s
}

/// The nft script that removes the pod's rules (a no-op when they are absent).
pub(crate) fn nft_remove() -> String {
    format!("table inet {TABLE}\ndelete table inet {TABLE}\n")
}

/// Runs `nft -f -` with `script` inside `netns` (the child inherits the calling thread's
/// namespace). The whole script is one transaction: it applies entirely or not at all.
pub fn nft_apply(netns: &Netns, script: &str) -> io::Result<()> {
    nft_wait(netns.run_in(nft_spawn)??, script)
}

/// [`nft_apply`] in the caller's own network namespace (the agent's host rules).
pub(crate) fn nft_apply_here(script: &str) -> io::Result<()> {
    nft_wait(nft_spawn()?, script)
}

fn nft_spawn() -> io::Result<std::process::Child> {
    Command::new("nft").args(["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()
}

fn nft_wait(mut child: std::process::Child, script: &str) -> io::Result<()> {
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("nft failed: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_istio_semantics() {
        let s = nft_install(&RedirectConfig::default());
        assert!(s.starts_with("table inet ferry_inpod\ndelete table inet ferry_inpod\n"));
        assert!(s.contains("meta mark & 0xfff == 0x539 ct mark set ct mark & 0xfffff000 | 0x111"));
        assert!(s.contains("tcp dport != 15008 meta mark & 0xfff != 0x539 redirect to :15006"));
        assert!(s.contains("ip daddr != 127.0.0.1 meta mark & 0xfff != 0x539 redirect to :15001"));
        assert!(s.contains("ip saddr 169.254.7.127 meta l4proto tcp accept"));
        assert!(s.contains("ip6 daddr != ::1 meta mark & 0xfff != 0x539 redirect to :15001"));
    }

    #[test]
    fn ingress_mode_and_virtual_interfaces() {
        let c = RedirectConfig { capture_inbound: false, ipv6: false, virtual_interfaces: vec!["virt0".into()], ..Default::default() };
        let s = nft_install(&c);
        assert!(!s.contains(":15006"));
        assert!(!s.contains("ct mark set"));
        assert!(!s.contains("ip6"));
        assert!(s.contains("iifname \"virt0\" meta l4proto tcp redirect to :15001"));
    }
}
