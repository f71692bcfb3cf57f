//! Policy routing inside a pod's network namespace over rtnetlink (protocols.md §2.2):
//! `ip rule fwmark 0x111/0xfff pref 32764 lookup 100` and `local 0.0.0.0/0 dev lo table 100`
//! (and the IPv6 pair). Together with the connmark rules they deliver a pod's replies to the
//! proxy's transparently bound sockets. Install and remove are idempotent.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::route::{RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleHeader, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::redirect::{CONNMARK, MARK_MASK, ROUTE_TABLE, RULE_PRIORITY};
use ferry_sys::Netns;

/// The loopback interface is index 1 in every network namespace.
const LOOPBACK_INDEX: u32 = 1;
const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

fn families(ipv6: bool) -> Vec<IpAddr> {
    let mut f = vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)];
    if ipv6 {
        f.push(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }
    f
}

/// Adds the fwmark rule and the local route in `netns`; already-present entries are fine.
pub fn install(netns: &Netns, ipv6: bool) -> io::Result<()> {
    let sock = open(netns)?;
    for any in families(ipv6) {
        request(&sock, RouteNetlinkMessage::NewRule(rule(any)), NLM_F_CREATE | NLM_F_EXCL, &[EEXIST])?;
        request(&sock, RouteNetlinkMessage::NewRoute(route(any)), NLM_F_CREATE | NLM_F_EXCL, &[EEXIST])?;
    }
    Ok(())
}

/// Removes them; absent entries are fine.
pub fn remove(netns: &Netns, ipv6: bool) -> io::Result<()> {
    let sock = open(netns)?;
    for any in families(ipv6) {
        request(&sock, RouteNetlinkMessage::DelRule(rule(any)), 0, &[ENOENT, ESRCH])?;
        request(&sock, RouteNetlinkMessage::DelRoute(route(any)), 0, &[ENOENT, ESRCH])?;
    }
    Ok(())
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn rule(any: IpAddr) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header = RuleHeader { family: family(any), table: ROUTE_TABLE as u8, action: RuleAction::ToTable, ..Default::default() };
    m.attributes = vec![
        RuleAttribute::Priority(RULE_PRIORITY),
        RuleAttribute::FwMark(CONNMARK),
        RuleAttribute::FwMask(MARK_MASK),
        RuleAttribute::Table(ROUTE_TABLE),
    ];
    m
}

fn route(any: IpAddr) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header = RouteHeader {
        address_family: family(any),
        destination_prefix_length: 0,
        table: ROUTE_TABLE as u8,
        protocol: RouteProtocol::Boot,
        scope: RouteScope::Host,
        kind: RouteType::Local,
        ..Default::default()
    };
    m.attributes = vec![RouteAttribute::Table(ROUTE_TABLE), RouteAttribute::Oif(LOOPBACK_INDEX)];
    m
}

/// A route netlink socket bound inside `netns` (it keeps acting there wherever it is used).
fn open(netns: &Netns) -> io::Result<Socket> {
    netns.run_in(|| -> io::Result<Socket> {
        let mut s = Socket::new(NETLINK_ROUTE)?;
        s.bind_auto()?;
        s.connect(&SocketAddr::new(0, 0))?;
        Ok(s)
    })?
}

/// Sends one request and waits for its acknowledgement; `ok_errnos` count as success.
fn request(sock: &Socket, msg: RouteNetlinkMessage, flags: u16, ok_errnos: &[i32]) -> io::Result<()> {
    let what = format!("{msg:?}").split('(').next().unwrap_or("request").to_string();
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut rx = Vec::with_capacity(8192);
    loop {
        rx.clear();
        let n = sock.recv(&mut rx, 0)?;
        let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[..n])
            .map_err(|e| io::Error::other(format!("netlink: cannot parse the kernel's reply to {what}: {e}")))?;
        match reply.payload {
            NetlinkPayload::Error(e) => {
                return match e.code {
                    None => Ok(()),
                    Some(code) if ok_errnos.contains(&-code.get()) => Ok(()),
                    Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                };
            }
            NetlinkPayload::Done(_) => return Ok(()),
            _ => continue,
        }
    }
}
