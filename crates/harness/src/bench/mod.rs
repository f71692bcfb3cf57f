//! `ferry bench`: load tools that run inside simulated pods (`serve`, `stream`, `rr`, `crr`,
//! `hold`, `http`) and the suite that runs them over the simulated cluster (`run`).

pub mod http;
pub mod measure;
pub mod procstat;
pub mod report;
pub mod results;
pub mod runner;
pub mod tools;

use std::net::SocketAddr;
use std::time::Duration;

use ferry_core::timefmt::parse_duration;

#[derive(Clone, Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// Echo server on PORT, a verifying sink on PORT+1, an HTTP/1.1 server on PORT+2.
    Serve {
        #[arg(long, default_value_t = measure::ECHO_PORT)]
        port: u16,
    },
    /// Bulk goodput to a sink, every byte verified by the receiver.
    Stream {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        streams: usize,
        #[arg(long, value_parser = parse_duration, default_value = "5s")]
        duration: Duration,
    },
    /// Request/response latency: open loop at --rate requests/s in total (0 = closed loop),
    /// measured from each request's intended send time.
    Rr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 16)]
        conns: usize,
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, value_parser = parse_duration, default_value = "5s")]
        duration: Duration,
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        warmup: Duration,
    },
    /// New connections per second: connect, small echo, close.
    Crr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, value_parser = parse_duration, default_value = "5s")]
        duration: Duration,
    },
    /// HTTP/1.1 requests over keep-alive connections: open loop at --rate requests/s in total
    /// (0 = closed loop); every response must be a 200 with the server's body.
    Http {
        #[arg(long)]
        to: SocketAddr,
        /// The Host header (a service's name, for a waypoint's routing and policy).
        #[arg(long, default_value = "bench")]
        host: String,
        #[arg(long, default_value_t = 16)]
        conns: usize,
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, value_parser = parse_duration, default_value = "5s")]
        duration: Duration,
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        warmup: Duration,
    },
    /// Opens N idle connections (each proven open by a one-byte echo) and holds them until
    /// stdin closes.
    Hold {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 100)]
        conns: usize,
    },
    /// Run the benchmark suite over a simulated cluster (as root) and write the report.
    #[command(after_help = ENV_HELP)]
    Run(runner::RunArgs),
    /// Build the benchmark cluster and keep it until Enter, to profile by hand (as root).
    #[command(after_help = ENV_HELP)]
    Cluster,
}

const ENV_HELP: &str = "Environment:
  FERRY_BENCH_ALT_PROXY  another ZDS-speaking node proxy binary, measured as an extra target
  FERRY_BENCH_ALT_NAME   its name in the report (default: the binary's file name)
  FERRY_BENCH_ALT_ARGS   its arguments, whitespace-separated
  FERRY_BENCH_ALT_ENV    its environment, whitespace-separated K=V
  FERRY_BENCH_ALT_CONTROL_PLANE
                         \"true\": point it at the cluster's `ferry controller` (XDS_ADDRESS,
                         CA_ADDRESS, ...) as ferry's proxies are; otherwise it reads a
                         local config (LOCAL_XDS_PATH) and uses FAKE_CA
  FERRY_BENCH_PROXY_ENV  extra environment for ferry's node proxies, whitespace-separated K=V
  FERRY_BENCH_WAYPOINT_ENV
                         extra environment for the HTTP group's waypoint, whitespace-separated K=V";

pub fn run(cmd: BenchCmd) -> Result<(), String> {
    match cmd {
        BenchCmd::Run(args) => return runner::run(args),
        BenchCmd::Cluster => return runner::hold_cluster(),
        _ => {}
    }
    let _ = ferry_sys::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let out = match cmd {
            BenchCmd::Serve { port } => tools::serve(port).await.map(|_| None),
            BenchCmd::Stream { to, streams, duration } => tools::stream(to, streams, duration).await.map(Some),
            BenchCmd::Rr { to, conns, rate, size, duration, warmup } => tools::rr(to, conns, rate, size, duration, warmup).await.map(Some),
            BenchCmd::Crr { to, concurrency, size, duration } => tools::crr(to, concurrency, size, duration).await.map(Some),
            BenchCmd::Hold { to, conns } => tools::hold(to, conns).await.map(|_| None),
            BenchCmd::Http { to, host, conns, rate, duration, warmup } => {
                let load = http::HttpLoad { to, host, conns, rate, duration, warmup };
                tokio::task::spawn_blocking(move || http::run(load)).await.map_err(std::io::Error::other).and_then(|r| r).map(Some)
            }
            BenchCmd::Run(_) | BenchCmd::Cluster => Ok(None),
        };
        match out {
            Ok(Some(v)) => {
                println!("{v}");
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    })
}
