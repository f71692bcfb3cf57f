//! Addresses with their meaning in the type (as linkerd2-proxy's address newtypes): what the
//! application dialled, where a connection came from, what a CONNECT asks for. A value of one
//! kind cannot be passed where another is meant, so the access log's `dst.addr` and
//! `dst.hbone_addr` cannot silently swap.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;

/// A socket address with its meaning in its type.
macro_rules! socket_addr {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct $name(pub SocketAddr);

        impl Deref for $name {
            type Target = SocketAddr;
            fn deref(&self) -> &SocketAddr {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

socket_addr!(
    /// Where a connection came from: the peer of an accepted socket (IPv4-mapped IPv6 made
    /// plain IPv4), or the client address an HBONE peer vouches for.
    ClientAddr
);

socket_addr!(
    /// The destination the application dialled, as the capture rules preserved it
    /// (`SO_ORIGINAL_DST`): a service VIP, a pod IP, or anything else.
    OrigDstAddr
);

socket_addr!(
    /// The address ferry itself connects to: a pod's HBONE port for a tunnel, the workload's
    /// own port for plain TCP. The access log's `dst.addr`.
    ServerAddr
);

socket_addr!(
    /// The address a CONNECT asks for inside a tunnel: the workload and port the bytes are for.
    /// The access log's `dst.hbone_addr`.
    HboneTarget
);

/// A CONNECT `:authority`: `ip:port` (IPv6 bracketed) or `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authority {
    Addr(SocketAddr),
    Host(String, u16),
}

/// Parses an authority as ip:port first, then host:port; anything else is `None` (a 400).
pub fn parse_authority(s: &str) -> Option<Authority> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(Authority::Addr(a));
    }
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !host.starts_with('.')
        && !host.starts_with('-');
    valid_host.then(|| Authority::Host(host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(parse_authority("10.0.0.1:80"), Some(Authority::Addr("10.0.0.1:80".parse().unwrap())));
        assert_eq!(parse_authority("[fd00::5]:8080"), Some(Authority::Addr("[fd00::5]:8080".parse().unwrap())));
        assert_eq!(
            parse_authority("reviews.default.svc.cluster.local:9080"),
            Some(Authority::Host("reviews.default.svc.cluster.local".into(), 9080))
        );
        for bad in [
            "",
            "10.0.0.1",
            "10.0.0.1:",
            "10.0.0.1:99999",
            "fd00::5:80x",
            ":80",
            "a b:80",
            "host:port",
            "-x:1",
            "a/b:80",
            "a\0:80",
            "[fd00::5]",
        ] {
            assert_eq!(parse_authority(bad), None, "{bad:?}");
        }
    }
}
