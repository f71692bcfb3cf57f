use super::*;

const KINDNET: &str = r#"{"cniVersion":"0.3.1","name":"kindnet","plugins":[{"type":"ptp"},{"type":"portmap"}]}"#;

fn types(text: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(text).unwrap();
    v["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap().to_string()).collect()
}

struct Host {
    dir: PathBuf,
    install: CniInstall,
}

impl Host {
    fn new(name: &str) -> Host {
        let dir = std::env::temp_dir().join(format!("ferry-cni-install-{name}-{}-{}", std::process::id(), fastrand::u32(..)));
        let (bin_dir, net_dir) = (dir.join("bin"), dir.join("net"));
        std::fs::create_dir_all(&bin_dir).unwrap();
        std::fs::create_dir_all(&net_dir).unwrap();
        let plugin = dir.join("ferry-cni-in-image");
        std::fs::write(&plugin, b"\x7fELF plugin v1").unwrap();
        let install = CniInstall { plugin, bin_dir, net_dir, agent_socket: "/var/run/ferry/cni.sock".into() };
        Host { dir, install }
    }
    fn net(&self, name: &str) -> PathBuf {
        self.install.net_dir.join(name)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn chaining_table() {
    let e = entry(Path::new("/s"));
    let chained = chain(KINDNET, &e).unwrap().unwrap();
    assert_eq!(types(&chained), ["ptp", "portmap", "ferry-cni"]);
    assert_eq!(chain(&chained, &e).unwrap(), None, "already chained: no rewrite");
    let moved = chain(&chained, &entry(Path::new("/elsewhere"))).unwrap().unwrap();
    assert_eq!(types(&moved), ["ptp", "portmap", "ferry-cni"], "a changed socket replaces the entry, never a second one");
    let not_last = r#"{"plugins":[{"type":"ferry-cni","agent_socket":"/s","agent_timeout_seconds":30},{"type":"ptp"}]}"#;
    assert_eq!(types(&chain(not_last, &e).unwrap().unwrap()), ["ptp", "ferry-cni"], "ferry-cni runs after the network plugin");
    assert!(chain("{\"type\":\"bridge\"}", &e).is_err());
    assert!(chain("not json", &e).is_err());
    assert_eq!(types(&unchain(&chained).unwrap()), ["ptp", "portmap"]);
    assert_eq!(unchain(KINDNET), None);
    let v: Value = serde_json::from_str(&chained).unwrap();
    assert!(v["plugins"][2].get("cluster_state").is_none(), "without the agent, ferry-cni must fail closed");
    assert_eq!(v["plugins"][2]["agent_socket"], "/s");
}

#[test]
fn installs_into_the_primary_configuration_once_and_removes_everything() {
    let h = Host::new("once");
    std::fs::write(h.net("10-kindnet.conflist"), KINDNET).unwrap();
    std::fs::write(h.net("20-later.conflist"), KINDNET).unwrap();
    assert!(h.install.install_binary().unwrap(), "copied");
    assert!(!h.install.install_binary().unwrap(), "identical: not copied again");
    assert_eq!(h.install.chain().unwrap(), Chained::Added(h.net("10-kindnet.conflist")));
    assert_eq!(h.install.chain().unwrap(), Chained::Already(h.net("10-kindnet.conflist")));
    let read = |n: &str| std::fs::read_to_string(h.net(n)).unwrap();
    assert_eq!(types(&read("10-kindnet.conflist")), ["ptp", "portmap", "ferry-cni"]);
    assert_eq!(types(&read("20-later.conflist")), ["ptp", "portmap"], "only the configuration the runtime uses");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(h.install.bin_dir.join(PLUGIN)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let leftovers: Vec<_> = std::fs::read_dir(&h.install.net_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The network plugin rewrites its configuration: chained again.
    std::fs::write(h.net("10-kindnet.conflist"), KINDNET).unwrap();
    assert_eq!(h.install.chain().unwrap(), Chained::Added(h.net("10-kindnet.conflist")));

    let removed = h.install.remove().unwrap();
    assert_eq!(removed, vec![h.net("10-kindnet.conflist"), h.install.bin_dir.join(PLUGIN)]);
    assert_eq!(types(&read("10-kindnet.conflist")), ["ptp", "portmap"]);
    assert_eq!(h.install.remove().unwrap(), Vec::<PathBuf>::new(), "idempotent");
}

#[test]
fn waits_for_a_configuration_and_refuses_what_it_cannot_chain_into() {
    let h = Host::new("refuse");
    assert_eq!(h.install.chain().unwrap(), Chained::NoConfiguration);
    std::fs::write(h.net("05-single.conf"), r#"{"cniVersion":"0.3.1","name":"x","type":"bridge"}"#).unwrap();
    std::fs::write(h.net("10-kindnet.conflist"), KINDNET).unwrap();
    let err = h.install.chain().unwrap_err();
    assert!(err.to_string().contains("05-single.conf is a single-plugin configuration"), "{err}");
    assert_eq!(std::fs::read_to_string(h.net("05-single.conf")).unwrap(), r#"{"cniVersion":"0.3.1","name":"x","type":"bridge"}"#);
    std::fs::remove_file(h.net("05-single.conf")).unwrap();
    std::fs::write(h.net("01-broken.conflist"), "{").unwrap();
    let err = h.install.chain().unwrap_err();
    assert!(err.to_string().contains("01-broken.conflist is not a CNI network configuration list"), "{err}");
    assert_eq!(std::fs::read_to_string(h.net("01-broken.conflist")).unwrap(), "{", "nothing changed");
}
