//! The `ferry` binary: one executable, roles as subcommands.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use ferry::config::ProxyArgs;
use ferry_core::timefmt::parse_duration;

#[derive(Parser)]
#[command(name = "ferry", version, about = "Ambient-mode service mesh dataplane (HBONE node proxy)", propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node proxy: HBONE tunnels between workloads (Istio ztunnel compatible).
    Proxy(Box<ProxyArgs>),
    /// Run the node agent: decide which pods are captured, install their redirection, and
    /// hand their network namespaces to the node proxy (ZDS); serves the CNI plugin.
    Agent(Box<ferry::agent::AgentArgs>),
    /// Run the control plane: serve workloads and policies over WDS (delta xDS) and workload
    /// certificates over Istio's CA API, to node proxies (ferry's or Istio's ztunnel), on 15012.
    Controller(Box<ferry::controller::ControllerArgs>),
    /// Run the mesh on this machine without Kubernetes (as root): two simulated nodes, pods in
    /// and outside the mesh, traffic between them, and a report of what was encrypted.
    #[cfg(feature = "harness")]
    Demo(ferry_harness::demo::DemoArgs),
    /// Benchmarks: load tools for pods, and the suite over a simulated cluster (`bench run`).
    #[cfg(feature = "harness")]
    Bench {
        #[command(subcommand)]
        cmd: ferry_harness::bench::BenchCmd,
    },
    /// Manage ferry's built-in certificate authority.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Create a root and an intermediate CA in DIR, in Istio's plugged-in CA layout
    /// (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem). Proxies given the same
    /// --ca-dir share one root. Refuses to overwrite existing CA files.
    Init(CaInitArgs),
}

#[derive(clap::Args)]
struct CaInitArgs {
    /// Directory to create the CA in (created if missing).
    dir: PathBuf,
    /// Lifetime of the root certificate (e.g. 87600h, 3650d).
    #[arg(long, value_parser = parse_duration, default_value = "3650d")]
    root_validity: Duration,
    /// Lifetime of the intermediate (signing) certificate.
    #[arg(long, value_parser = parse_duration, default_value = "1825d")]
    ca_validity: Duration,
    /// Organization name in the CA certificates' subjects.
    #[arg(long, default_value = "ferry")]
    organization: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Proxy(args) => ferry::app::run_proxy(*args).map_err(|e| e.to_string()),
        Cmd::Agent(args) => ferry::agent::run_agent(*args).map_err(|e| e.to_string()),
        Cmd::Controller(args) => ferry::controller::run_controller(*args).map_err(|e| e.to_string()),
        #[cfg(feature = "harness")]
        Cmd::Demo(a) => ferry_harness::demo::run(a),
        #[cfg(feature = "harness")]
        Cmd::Bench { cmd } => ferry_harness::bench::run(cmd),
        Cmd::Ca { cmd: CaCmd::Init(a) } => ca_init(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ca_init(a: CaInitArgs) -> Result<(), String> {
    if a.ca_validity > a.root_validity {
        return Err("--ca-validity must not exceed --root-validity".into());
    }
    let opts = ferry::tls::ca::InitOptions { root_validity: a.root_validity, ca_validity: a.ca_validity, organization: a.organization };
    ferry::tls::ca::init(&a.dir, &opts).map_err(|e| e.to_string())?;
    println!("created a ferry CA in {}", a.dir.display());
    Ok(())
}
