//! The `ferry` binary: one executable, roles as subcommands.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

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
    /// Run a waypoint: the per-namespace L7 proxy of ambient mode (Istio's `istio-waypoint`
    /// Gateway). Terminates HBONE on 15008, serves HTTP/1.1 and HTTP/2 (gRPC, h2c) ports with L7
    /// AuthorizationPolicy and other ports as TCP, and forwards to the destination pods over HBONE.
    Waypoint(Box<ferry::waypoint::WaypointArgs>),
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
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        if let Some(line) = env_var_of(&Cli::command(), &e, &|k| std::env::var(k).ok()) {
            eprintln!("ferry: error: {line}");
        }
        e.exit()
    });
    let result = match cli.cmd {
        Cmd::Proxy(args) => ferry::app::run_proxy(*args).map_err(|e| e.to_string()),
        Cmd::Agent(args) => ferry::agent::run_agent(*args).map_err(|e| e.to_string()),
        Cmd::Controller(args) => ferry::controller::run_controller(*args).map_err(|e| e.to_string()),
        Cmd::Waypoint(args) => ferry::waypoint::run_waypoint(*args).map_err(|e| e.to_string()),
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

/// Operators set ztunnel's settings as environment variables in a DaemonSet, and clap's
/// message names only the flag: when the refused value came from a variable, name it.
fn env_var_of(cmd: &clap::Command, e: &clap::error::Error, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let text = |k| match e.get(k) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let (arg, value) = (text(ContextKind::InvalidArg)?, text(ContextKind::InvalidValue)?);
    let mut stack = vec![cmd];
    while let Some(c) = stack.pop() {
        stack.extend(c.get_subcommands());
        for a in c.get_arguments() {
            let (Some(var), Some(long)) = (a.get_env().and_then(|v| v.to_str()), a.get_long()) else { continue };
            let named = arg.starts_with(&format!("--{long} ")) || arg == format!("--{long}");
            if named && env(var).as_deref() == Some(value.as_str()) {
                return Some(format!("invalid environment variable {var}={value:?} (it sets --{long}):"));
            }
        }
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_value_from_the_environment_is_named_by_its_variable() {
        let env = |k: &str| (k == "PROXY_MODE").then(|| "sidecar".to_string());
        let e = Cli::try_parse_from(["ferry", "proxy", "--mode", "sidecar"]).err().unwrap();
        let line = env_var_of(&Cli::command(), &e, &env).unwrap();
        assert_eq!(line, "invalid environment variable PROXY_MODE=\"sidecar\" (it sets --mode):");
        let e = Cli::try_parse_from(["ferry", "proxy", "--secret-ttl", "1day"]).err().unwrap();
        assert_eq!(
            env_var_of(&Cli::command(), &e, &|k| (k == "SECRET_TTL").then(|| "1day".into()))
                .as_deref()
                .map(|l| l.starts_with("invalid environment variable SECRET_TTL=")),
            Some(true)
        );
        assert_eq!(env_var_of(&Cli::command(), &e, &|_| None), None, "a flag on the command line is named by clap already");
    }
}
