//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod jwt;
pub mod netns;
pub mod sim;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ferry::config::{Config, ProxyArgs};
use ferry::tls::ca::{self, InitOptions, LocalCa};
use ferry::tls::certs::CertManager;
use ferry_core::identity::Identity;

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("ferry-it-{name}-{}-{}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn new_ca(dir: &std::path::Path) {
    let opts = InitOptions {
        root_validity: Duration::from_secs(86400 * 30),
        ca_validity: Duration::from_secs(86400 * 10),
        organization: "ferry-test".into(),
    };
    ca::init(dir, &opts).unwrap();
}

pub fn cert_manager(dir: &std::path::Path) -> Arc<CertManager> {
    CertManager::new(Arc::new(LocalCa::load(dir).unwrap()), Duration::from_secs(3600))
}

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    args: ProxyArgs,
}

/// A proxy configuration from command-line style arguments (environment ignored).
pub fn config(args: &[&str]) -> Config {
    let mut argv = vec!["ferry"];
    argv.extend_from_slice(args);
    Wrapper::try_parse_from(argv).unwrap().args.into_config().unwrap()
}

pub fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).unwrap()
}

/// A free TCP port on 127.0.0.1 (racy by nature; fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
