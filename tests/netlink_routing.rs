//! Policy routing installed over rtnetlink inside a real namespace (root only; fails without).

mod common;

use common::netns::*;

#[test]
fn install_is_idempotent_and_removal_is_complete() {
    require_root();
    let ns = Ns::new("nl");
    let h = ns.handle();
    for _ in 0..2 {
        ferry::netlink::install(&h, true).unwrap();
    }
    let rules = String::from_utf8(ns.command("ip").args(["rule", "show"]).output().unwrap().stdout).unwrap();
    assert!(rules.contains("32764:\tfrom all fwmark 0x111/0xfff lookup 100"), "{rules}");
    let routes =
        String::from_utf8(ns.command("ip").args(["route", "show", "table", "100", "type", "local"]).output().unwrap().stdout).unwrap();
    assert!(routes.contains("local default dev lo"), "{routes}");
    let rules6 = String::from_utf8(ns.command("ip").args(["-6", "rule", "show"]).output().unwrap().stdout).unwrap();
    assert!(rules6.contains("fwmark 0x111/0xfff lookup 100"), "{rules6}");
    for _ in 0..2 {
        ferry::netlink::remove(&h, true).unwrap();
    }
    let rules = String::from_utf8(ns.command("ip").args(["rule", "show"]).output().unwrap().stdout).unwrap();
    assert!(!rules.contains("0x111"), "{rules}");
    let routes = String::from_utf8(ns.command("ip").args(["route", "show", "table", "100"]).output().unwrap().stdout).unwrap();
    assert!(routes.trim().is_empty(), "{routes}");
}

#[test]
fn a_file_that_is_not_a_network_namespace_is_refused() {
    require_root();
    let e = ferry_sys::Netns::open(std::path::Path::new("/etc/hostname")).unwrap_err();
    assert!(e.to_string().contains("not a namespace file"), "{e}");
    let e = ferry_sys::Netns::open(std::path::Path::new("/proc/self/ns/mnt")).unwrap_err();
    assert!(e.to_string().contains("not a network namespace"), "{e}");
    assert!(ferry_sys::Netns::open(std::path::Path::new("/nonexistent/ns")).is_err());
}
