//! The host side of the kubelet probe exemption: connections the node itself opens to an
//! enrolled pod (the kubelet's HTTP and TCP probes) leave with source 169.254.7.127, which the
//! pod's own rules let through uncaptured (`redirect.rs`), as istio-cni's host rules do.
//!
//! One nftables table in the agent's (the host's) network namespace, re-rendered whole and
//! applied as one transaction whenever the set of enrolled pod addresses changes, so it is
//! level-triggered: whatever the previous table held, the new one is exactly the enrolled set.
//! Only locally originated packets match (`fib saddr type local`): traffic between pods on the
//! bridge and traffic forwarded from other nodes is never rewritten.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

use crate::redirect::{PROBE_V4, PROBE_V6};

pub(crate) const TABLE: &str = "ferry_host";

/// Renders the whole table for the enrolled pods' `addrs`. Runs at `srcnat - 1` so it decides
/// before kube-proxy's or the network plugin's masquerade rules.
pub(crate) fn render(addrs: &BTreeSet<IpAddr>) -> String {
    let set = |v6: bool| {
        let members: Vec<String> = addrs.iter().filter(|a| a.is_ipv6() == v6).map(|a| a.to_string()).collect();
        if members.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", members.join(", "))
        }
    };
    let mut s = format!("table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    let _ = writeln!(s, "  set probe_v4 {{ type ipv4_addr;{} }}", set(false));
    let _ = writeln!(s, "  set probe_v6 {{ type ipv6_addr;{} }}", set(true));
    s.push_str("  chain postrouting {\n    type nat hook postrouting priority srcnat - 1; policy accept;\n");
    let _ = writeln!(s, "    meta l4proto tcp ip daddr @probe_v4 fib saddr type local snat ip to {PROBE_V4}");
    let _ = writeln!(s, "    meta l4proto tcp ip6 daddr @probe_v6 fib saddr type local snat ip6 to {PROBE_V6}");
    s.push_str("  }\n}\n");
    s
}

/// Removes the table (a no-op when absent): `ferry agent --uninstall`.
pub(crate) fn render_remove() -> String {
    format!("table inet {TABLE}\ndelete table inet {TABLE}\n")
}

/// What was last applied, so an unchanged set costs nothing.
#[derive(Default)]
pub(crate) struct HostProbeRules {
    applied: Option<BTreeSet<IpAddr>>,
}

impl HostProbeRules {
    /// Applies `want` unless it is what the table already holds. A failure is returned and
    /// retried at the next reconcile (nothing is remembered as applied).
    pub(crate) fn sync(&mut self, want: BTreeSet<IpAddr>) -> Result<(), String> {
        if self.applied.as_ref() == Some(&want) {
            return Ok(());
        }
        crate::redirect::nft_apply_here(&render(&want)).map_err(|e| format!("installing the host probe SNAT (table inet {TABLE}): {e}"))?;
        tracing::debug!(pods = want.len(), "host probe SNAT updated");
        self.applied = Some(want);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_and_empty_sets_without_elements() {
        let addrs: BTreeSet<IpAddr> = ["198.18.1.2", "198.18.1.3", "fd00::2"].iter().map(|a| a.parse().unwrap()).collect();
        let s = render(&addrs);
        assert!(s.starts_with("table inet ferry_host\ndelete table inet ferry_host\n"), "{s}");
        assert!(s.contains("set probe_v4 { type ipv4_addr; elements = { 198.18.1.2, 198.18.1.3 }; }"), "{s}");
        assert!(s.contains("set probe_v6 { type ipv6_addr; elements = { fd00::2 }; }"), "{s}");
        assert!(s.contains("ip daddr @probe_v4 fib saddr type local snat ip to 169.254.7.127"), "{s}");
        assert!(s.contains("snat ip6 to fd16:9254:7127:1337:ffff:ffff:ffff:ffff"), "{s}");
        let empty = render(&BTreeSet::new());
        assert!(empty.contains("set probe_v4 { type ipv4_addr; }"), "{empty}");
        assert!(!empty.contains("elements"), "{empty}");
    }
}
