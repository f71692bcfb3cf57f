//! `ferry proxy` configuration: command-line flags, each also read from the environment
//! variable Istio's ztunnel uses for it (protocols.md §6), so ferry drops into an existing
//! ztunnel deployment. Parsing produces a validated [`Config`]; nothing downstream re-checks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use ferry_core::timefmt::parse_duration;

use crate::net::Keepalive;
use crate::telemetry::LogFormat;
use crate::xds::settings::{self, Env, Target, XdsSettings};
use crate::ztunnel_env;
use ferry_core::identity::{Identity, DEFAULT_TRUST_DOMAIN};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ProxyMode {
    /// One node proxy serves every enrolled pod, with listeners inside each pod's network
    /// namespace (handed over by the node agent through ZDS).
    Shared,
    /// The proxy serves one workload from inside that workload's network namespace.
    Dedicated,
}

#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Proxy")]
pub struct ProxyArgs {
    /// Proxy mode.
    #[arg(long, env = "PROXY_MODE", value_enum, default_value = "shared", ignore_case = true)]
    pub(crate) mode: ProxyMode,

    /// Dedicated mode: the workload served, as <namespace>/<name>/<service-account>.
    #[arg(long, env = "PROXY_WORKLOAD_INFO", value_name = "NS/NAME/SA")]
    pub(crate) workload_info: Option<String>,

    /// Local state file (workloads, services, policies) in ztunnel's local-config schema.
    /// Re-read when it changes; a bad file is reported and the last good state kept.
    #[arg(long, env = "LOCAL_XDS_PATH", value_name = "FILE", conflicts_with = "local_xds")]
    pub(crate) local_xds_path: Option<PathBuf>,

    /// Local state as inline YAML (same schema as --local-xds-path).
    #[arg(long, env = "LOCAL_XDS", value_name = "YAML")]
    pub(crate) local_xds: Option<String>,

    /// Kubernetes manifests (Namespaces, Pods, Services, ServiceAccounts) in a file or
    /// directory, translated into workloads and services; stands in for the Kubernetes API.
    #[arg(long, env = "FERRY_CLUSTER_STATE", value_name = "PATH", conflicts_with_all = ["local_xds_path", "local_xds"])]
    pub(crate) cluster_state: Option<PathBuf>,

    /// Cluster DNS domain for service hostnames (<name>.<namespace>.svc.<domain>).
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub(crate) cluster_domain: String,

    /// Shared mode: the node agent's ZDS socket.
    #[arg(long, env = "INPOD_UDS", default_value = "/var/run/ztunnel/ztunnel.sock")]
    pub(crate) inpod_uds: PathBuf,

    /// How often the local state file or cluster state is checked for changes.
    #[arg(long, env = "FERRY_LOCAL_XDS_POLL", value_parser = parse_duration, default_value = "1s")]
    pub(crate) local_xds_poll: Duration,

    /// xDS (WDS) server, `https://host:port` (a bare `host:port` gets `https://`). Unset: istiod
    /// (https://istiod.istio-system.svc:15012) when running in Kubernetes (KUBERNETES_SERVICE_HOST
    /// set) without a local state source, else none. The empty value disables xDS.
    #[arg(long, env = "XDS_ADDRESS")]
    pub(crate) xds_address: Option<String>,

    /// Roots that verify the xDS server: a PEM file, inline PEM, or SYSTEM (the OS bundle).
    #[arg(long, env = "XDS_ROOT_CA", default_value = crate::xds::settings::DEFAULT_ROOT_CA)]
    pub(crate) xds_root_ca: String,

    /// Name the xDS server's certificate must carry, when it is not XDS_ADDRESS's host.
    #[arg(long, env = "ALT_XDS_HOSTNAME")]
    pub(crate) alt_xds_hostname: Option<String>,

    /// Bearer token for xDS and the CA: a file (re-read on every call) or the token itself.
    /// Extra metadata: XDS_HEADER_<NAME>=<value>, CA_HEADER_<NAME>=<value>; node metadata:
    /// ISTIO_META_<KEY>=<value>, ISTIO_METAJSON_<KEY>=<json>, INSTANCE_IP, POD_NAME, POD_NAMESPACE.
    #[arg(long, env = "AUTH_TOKEN", default_value = crate::xds::settings::DEFAULT_TOKEN)]
    pub(crate) auth_token: String,

    /// On-demand address discovery. Not implemented: ferry subscribes to every address, so
    /// only "false" is accepted.
    #[arg(long, env = "XDS_ON_DEMAND", action = clap::ArgAction::Set, value_parser = BoolishValueParser::new(), default_value = "false")]
    pub(crate) xds_on_demand: bool,

    /// Built-in CA directory in Istio's plugged-in CA layout (ca-cert.pem, ca-key.pem,
    /// root-cert.pem, cert-chain.pem); create one with `ferry ca init`. The standalone
    /// alternative to CA_ADDRESS.
    #[arg(long, env = "FERRY_CA_DIR", value_name = "DIR")]
    pub(crate) ca_dir: Option<PathBuf>,

    /// Istio CA (`IstioCertificateService`), `https://host:port`. Unset: XDS_ADDRESS's server
    /// when xDS is on and no --ca-dir is given.
    #[arg(long, env = "CA_ADDRESS")]
    pub(crate) ca_address: Option<String>,

    /// Roots that verify the CA server (as XDS_ROOT_CA).
    #[arg(long, env = "CA_ROOT_CA", default_value = crate::xds::settings::DEFAULT_ROOT_CA)]
    pub(crate) ca_root_ca: String,

    /// Name the CA server's certificate must carry, when it is not CA_ADDRESS's host.
    #[arg(long, env = "ALT_CA_HOSTNAME")]
    pub(crate) alt_ca_hostname: Option<String>,

    /// Workload certificate lifetime requested from the CA.
    #[arg(long, env = "SECRET_TTL", value_parser = parse_duration, default_value = "24h")]
    pub(crate) secret_ttl: Duration,

    /// Trust domain for identities whose workload entry names none.
    #[arg(long, env = "TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub(crate) trust_domain: String,

    /// Name of the node this proxy runs on; workloads with this `node` are local.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub(crate) node_name: String,

    /// Cluster ID (metrics labels, baggage). Without this flag: ISTIO_META_CLUSTER_ID, else
    /// CLUSTER_ID, else "Kubernetes" (Istio's order); the flag wins over both, with a warning
    /// naming what it overrides.
    #[arg(long)]
    pub(crate) cluster_id: Option<String>,

    /// Mark set on the proxy's sockets so the capture rules skip them. Default: 1337 in shared
    /// mode, unset in dedicated mode.
    #[arg(long, env = "PACKET_MARK")]
    pub(crate) packet_mark: Option<u32>,

    /// Deliver inbound connections from the original client IP (IP_TRANSPARENT + the table-100
    /// policy route the node agent installs): "true" (failure is fatal), "false", or unset:
    /// best effort in shared mode, off in dedicated mode.
    #[arg(long, env = "ENABLE_ORIG_SRC", value_parser = BoolishValueParser::new())]
    pub(crate) enable_orig_src: Option<bool>,

    /// Listen on IPv6 as well as IPv4.
    #[arg(long, env = "IPV6_ENABLED", action = clap::ArgAction::Set, value_parser = BoolishValueParser::new(), default_value = "true")]
    pub(crate) ipv6_enabled: bool,

    /// Set SO_REUSEPORT on listeners so a new proxy can bind while the old one drains.
    #[arg(long, env = "INPOD_PORT_REUSE", action = clap::ArgAction::Set, value_parser = BoolishValueParser::new(), default_value = "true")]
    pub(crate) inpod_port_reuse: bool,

    /// Maximum streams opened on one pooled HBONE connection before a new one is dialled.
    #[arg(long, env = "POOL_MAX_STREAMS_PER_CONNECTION", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) pool_max_streams_per_connection: u32,

    /// Idle time after which a pooled HBONE connection is released.
    #[arg(long, env = "POOL_UNUSED_RELEASE_TIMEOUT", value_parser = parse_duration, default_value = "5m")]
    pub(crate) pool_unused_release_timeout: Duration,

    /// HTTP/2 per-stream flow-control window, bytes.
    #[arg(long, env = "HTTP2_STREAM_WINDOW_SIZE", default_value_t = 4 * 1024 * 1024)]
    pub(crate) http2_stream_window_size: u32,

    /// HTTP/2 connection flow-control window, bytes.
    #[arg(long, env = "HTTP2_CONNECTION_WINDOW_SIZE", default_value_t = 16 * 1024 * 1024)]
    pub(crate) http2_connection_window_size: u32,

    /// HTTP/2 maximum frame size, bytes (16384..=16777215).
    #[arg(long, env = "HTTP2_FRAME_SIZE", default_value_t = 1024 * 1024)]
    pub(crate) http2_frame_size: u32,

    /// How long open connections may finish after SIGTERM before they are closed. Default:
    /// from TERMINATION_GRACE_PERIOD_SECONDS (grace - 5 s above 10 s, else grace - 1 s, at least
    /// 1 s), else 5s (ztunnel's rule).
    #[arg(long, env = "CONNECTION_TERMINATION_DEADLINE", value_parser = parse_duration)]
    pub(crate) connection_termination_deadline: Option<Duration>,

    /// Pod termination grace period, used to derive the termination deadline.
    #[arg(long, env = "TERMINATION_GRACE_PERIOD_SECONDS")]
    pub(crate) termination_grace_period_seconds: Option<u64>,

    /// Data-path worker threads: a number, a percentage of the CPUs ("50%"), or 0 for every CPU.
    /// Unset: PROXY_CONFIG's concurrency, else ztunnel's sizing: the CPU limit
    /// (ZTUNNEL_RESOURCE_CPU_LIMIT) raised to the request (ZTUNNEL_RESOURCE_CPU_REQUEST), else
    /// max(2, 25% of the CPUs (ZTUNNEL_CPU_LIMIT or the cores available), the request).
    #[arg(long, env = "ZTUNNEL_WORKER_THREADS")]
    pub(crate) worker_threads: Option<String>,

    /// Mesh config's ProxyConfig (YAML or JSON). Only `concurrency` is honoured; any other key
    /// is refused.
    #[arg(long, env = "PROXY_CONFIG")]
    pub(crate) proxy_config: Option<String>,

    /// TCP keepalive on every proxied socket.
    #[arg(long, env = "KEEPALIVE_ENABLED", action = clap::ArgAction::Set, value_parser = BoolishValueParser::new(), default_value = "true")]
    pub(crate) keepalive_enabled: bool,
    /// TCP keepalive idle time.
    #[arg(long, env = "KEEPALIVE_TIME", value_parser = parse_duration, default_value = "180s")]
    pub(crate) keepalive_time: Duration,
    /// TCP keepalive probe interval.
    #[arg(long, env = "KEEPALIVE_INTERVAL", value_parser = parse_duration, default_value = "180s")]
    pub(crate) keepalive_interval: Duration,
    /// TCP keepalive probes before the connection is dropped.
    #[arg(long, env = "KEEPALIVE_RETRIES", default_value_t = 9)]
    pub(crate) keepalive_retries: u32,
    /// Also set TCP_USER_TIMEOUT (keepalive time + retries * interval).
    #[arg(long, env = "USER_TIMEOUT_ENABLED", action = clap::ArgAction::Set, value_parser = BoolishValueParser::new(), default_value = "false")]
    pub(crate) user_timeout_enabled: bool,

    /// Return `baggage` describing the destination on HBONE responses.
    #[arg(long, env = "ENABLE_RESPONSE_BAGGAGE", action = clap::ArgAction::Set, value_parser = BoolishValueParser::new(), default_value = "true")]
    pub(crate) enable_response_baggage: bool,

    /// TLS 1.2 for HBONE. ferry speaks TLS 1.3 only; "true" is refused.
    #[arg(long, env = "TLS12_ENABLED", action = clap::ArgAction::Set, value_parser = BoolishValueParser::new(), default_value = "false")]
    pub(crate) tls12_enabled: bool,

    /// Deadline for a peer to complete the TLS and HTTP/2 handshakes on 15008.
    #[arg(long, env = "FERRY_HANDSHAKE_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub(crate) handshake_timeout: Duration,

    /// Admin server (config dump, logging, quit); keep it on localhost.
    #[arg(long, env = "FERRY_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub(crate) admin_addr: SocketAddr,

    /// Prometheus metrics server (/metrics, /stats/prometheus).
    #[arg(long, env = "FERRY_STATS_ADDR", default_value = "[::]:15020")]
    pub(crate) stats_addr: SocketAddr,

    /// Readiness server (/healthz/ready).
    #[arg(long, env = "FERRY_READINESS_ADDR", default_value = "[::]:15021")]
    pub(crate) readiness_addr: SocketAddr,

    #[command(flatten)]
    pub limits: crate::limits::LimitArgs,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "plain", ignore_case = true)]
    pub(crate) log_format: LogFormat,

    /// Initial log filter (RUST_LOG syntax, e.g. "info,access=info"); default RUST_LOG or info.
    #[arg(long, env = "FERRY_LOG")]
    pub(crate) log_level: Option<String>,
}

/// Which local state source to load.
#[derive(Clone, Debug)]
pub(crate) enum LocalSource {
    None,
    File(PathBuf),
    Inline(String),
    Cluster(PathBuf),
}

/// Where workload certificates come from.
#[derive(Clone, Debug)]
pub(crate) enum CaSource {
    /// The built-in CA, from a directory (standalone mode).
    Local(PathBuf),
    /// Istio's CA API at a control plane.
    Remote(Target),
}

impl CaSource {
    pub(crate) fn describe(&self) -> String {
        match self {
            CaSource::Local(d) => format!("built-in CA at {}", d.display()),
            CaSource::Remote(t) => t.url.clone(),
        }
    }
}

/// The workload a dedicated-mode proxy serves.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadInfo {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) service_account: String,
}

impl std::fmt::Display for WorkloadInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} (service account {})", self.namespace, self.name, self.service_account)
    }
}

#[derive(Clone, Debug)]
pub struct H2Config {
    pub(crate) stream_window: u32,
    pub(crate) connection_window: u32,
    pub(crate) frame_size: u32,
    pub(crate) max_streams_per_conn: u32,
    pub(crate) pool_idle_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
}

/// Validated proxy configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) mode: ProxyMode,
    pub(crate) workload_info: Option<WorkloadInfo>,
    pub(crate) local: LocalSource,
    pub(crate) local_poll: Duration,
    pub(crate) cluster_domain: String,
    pub(crate) inpod_uds: PathBuf,
    /// Workload discovery over xDS, unless state comes from a local source.
    pub(crate) xds: Option<std::sync::Arc<XdsSettings>>,
    pub(crate) ca: CaSource,
    pub(crate) secret_ttl: Duration,
    pub(crate) trust_domain: String,
    pub(crate) node_name: String,
    pub(crate) cluster_id: String,
    pub(crate) network: String,
    /// `ISTIO_META_*` without the prefix: sent to istiod as node metadata, shown in the dump.
    pub(crate) proxy_metadata: std::collections::BTreeMap<String, String>,
    /// What choosing the configuration overrode, for the log once it is set up.
    pub(crate) warnings: Vec<String>,
    pub(crate) packet_mark: Option<u32>,
    pub orig_src: Option<bool>,
    pub ipv6: bool,
    pub(crate) port_reuse: bool,
    pub h2: H2Config,
    pub(crate) termination_deadline: Duration,
    pub(crate) worker_threads: usize,
    pub(crate) keepalive: Keepalive,
    pub(crate) response_baggage: bool,
    pub(crate) handshake_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) admin_addr: SocketAddr,
    pub(crate) stats_addr: SocketAddr,
    pub(crate) readiness_addr: SocketAddr,
    pub ports: ferry_core::ports::Ports,
    pub(crate) limits: crate::limits::Limits,
}

impl Config {
    /// The cluster-state path when that is the state source (it also holds policies).
    pub(crate) fn cluster_state_path(&self) -> Option<PathBuf> {
        match &self.local {
            LocalSource::Cluster(p) => Some(p.clone()),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Ztunnel(#[from] crate::ztunnel_env::ZtunnelEnvError),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

impl ProxyArgs {
    /// Settings only the node proxy has a meaning for, which `ferry waypoint` refuses.
    pub(crate) fn is_dedicated(&self) -> bool {
        self.mode == ProxyMode::Dedicated
    }
    pub(crate) fn workload_info_set(&self) -> bool {
        self.workload_info.is_some()
    }
    pub(crate) fn packet_mark_set(&self) -> bool {
        self.packet_mark.is_some()
    }
    pub(crate) fn orig_src_on(&self) -> bool {
        self.enable_orig_src == Some(true)
    }
    /// The log format and initial filter, needed before the configuration is validated.
    pub(crate) fn log_settings(&self) -> (LogFormat, Option<String>) {
        (self.log_format, self.log_level.clone())
    }

    pub fn into_config(self) -> Result<Config, ConfigError> {
        if self.tls12_enabled {
            return Err(invalid("TLS12_ENABLED=true: ferry speaks TLS 1.3 only on HBONE"));
        }
        if !(16_384..=16_777_215).contains(&self.http2_frame_size) {
            return Err(invalid(format!("HTTP2_FRAME_SIZE={} must be within 16384..=16777215", self.http2_frame_size)));
        }
        if self.http2_stream_window_size == 0 || self.http2_connection_window_size < self.http2_stream_window_size {
            return Err(invalid("HTTP2_CONNECTION_WINDOW_SIZE must be at least HTTP2_STREAM_WINDOW_SIZE, and both > 0"));
        }
        Identity::new(&self.trust_domain, "x", "x").map_err(|_| invalid(format!("invalid TRUST_DOMAIN {:?}", self.trust_domain)))?;
        let workload_info = self.workload_info.as_deref().map(parse_workload_info).transpose()?;
        if self.mode == ProxyMode::Dedicated && workload_info.is_none() {
            return Err(invalid("dedicated mode needs PROXY_WORKLOAD_INFO=<namespace>/<name>/<service-account>"));
        }
        let local = match (self.local_xds_path.clone(), self.local_xds.clone(), self.cluster_state.clone()) {
            (Some(p), None, None) => LocalSource::File(p),
            (None, Some(y), None) => LocalSource::Inline(y),
            (None, None, Some(c)) => LocalSource::Cluster(c),
            (None, None, None) => LocalSource::None,
            _ => return Err(invalid("set one of LOCAL_XDS_PATH, LOCAL_XDS or FERRY_CLUSTER_STATE")),
        };
        let worker_flag = self.worker_threads.clone();
        let env_fn = move |k: &str| match k {
            "ZTUNNEL_WORKER_THREADS" => worker_flag.clone(),
            _ => std::env::var(k).ok(),
        };
        ztunnel_env::refuse_unsupported(&env_fn)?;
        let concurrency = ztunnel_env::proxy_config_concurrency(self.proxy_config.as_deref())?;
        let available = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let worker_threads = ztunnel_env::worker_threads(&env_fn, concurrency, available)?;
        let (cluster_id, warnings) = cluster_id(self.cluster_id.as_deref(), &|k| std::env::var(k).ok());
        let env = self.control_plane_env(std::env::vars());
        let proxy_metadata = env.iter().filter_map(|(k, v)| Some((k.strip_prefix("ISTIO_META_")?.to_string(), v.clone()))).collect();
        let in_kubernetes = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        let (xds, ca) = self.control_plane(&Env { vars: &env }, in_kubernetes, !matches!(local, LocalSource::None), &cluster_id)?;
        let packet_mark = match (self.mode, self.packet_mark) {
            (ProxyMode::Shared, None) => Some(ferry_core::ports::DEFAULT_PACKET_MARK),
            (_, m) => m,
        };
        Ok(Config {
            mode: self.mode,
            workload_info,
            local,
            local_poll: self.local_xds_poll,
            cluster_domain: self.cluster_domain.clone(),
            inpod_uds: self.inpod_uds.clone(),
            xds,
            ca,
            secret_ttl: self.secret_ttl,
            trust_domain: self.trust_domain.clone(),
            node_name: self.node_name.clone(),
            cluster_id,
            network: std::env::var("NETWORK").unwrap_or_default(),
            proxy_metadata,
            warnings,
            packet_mark,
            // Without the agent's policy routing, replies to a spoofed source would leave the
            // namespace instead of returning to the proxy; dedicated mode opts in explicitly.
            orig_src: match (self.mode, self.enable_orig_src) {
                (ProxyMode::Dedicated, None) => Some(false),
                (_, v) => v,
            },
            ipv6: self.ipv6_enabled,
            port_reuse: self.inpod_port_reuse,
            h2: H2Config {
                stream_window: self.http2_stream_window_size,
                connection_window: self.http2_connection_window_size,
                frame_size: self.http2_frame_size,
                max_streams_per_conn: self.pool_max_streams_per_connection,
                pool_idle_timeout: self.pool_unused_release_timeout,
                ping_interval: Duration::from_secs(10),
                ping_timeout: Duration::from_secs(20),
            },
            termination_deadline: ztunnel_env::termination_deadline(
                self.connection_termination_deadline,
                self.termination_grace_period_seconds,
            ),
            worker_threads,
            keepalive: Keepalive {
                enabled: self.keepalive_enabled,
                time: self.keepalive_time,
                interval: self.keepalive_interval,
                retries: self.keepalive_retries,
                user_timeout: self.user_timeout_enabled,
            },
            response_baggage: self.enable_response_baggage,
            handshake_timeout: self.handshake_timeout,
            connect_timeout: Duration::from_secs(10),
            admin_addr: self.admin_addr,
            stats_addr: self.stats_addr,
            readiness_addr: self.readiness_addr,
            limits: self.limits.validate().map_err(invalid)?,
            ports: ferry_core::ports::Ports {
                management: [self.admin_addr.port(), self.stats_addr.port(), self.readiness_addr.port()],
                ..Default::default()
            },
        })
    }
}

impl ProxyArgs {
    /// The control-plane settings as the environment ferry reads: the flags (which carry
    /// their env vars) plus the prefixed variables, which have no flags.
    fn control_plane_env(&self, vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
        const PREFIXES: [&str; 4] = ["XDS_HEADER_", "CA_HEADER_", "ISTIO_META_", "ISTIO_METAJSON_"];
        const PLAIN: [&str; 3] = ["INSTANCE_IP", "POD_NAME", "POD_NAMESPACE"];
        let mut env: Vec<(String, String)> =
            vars.filter(|(k, _)| PREFIXES.iter().any(|p| k.starts_with(p)) || PLAIN.contains(&k.as_str())).collect();
        env.push(("XDS_ROOT_CA".into(), self.xds_root_ca.clone()));
        env.push(("CA_ROOT_CA".into(), self.ca_root_ca.clone()));
        env.push(("AUTH_TOKEN".into(), self.auth_token.clone()));
        env.extend(self.alt_xds_hostname.iter().map(|h| ("ALT_XDS_HOSTNAME".to_string(), h.clone())));
        env.extend(self.alt_ca_hostname.iter().map(|h| ("ALT_CA_HOSTNAME".to_string(), h.clone())));
        env
    }

    /// Chooses the state source's control plane and the CA, refusing combinations that
    /// would leave it unclear where state or certificates come from.
    fn control_plane(
        &self,
        env: &Env,
        in_kubernetes: bool,
        local_state: bool,
        cluster_id: &str,
    ) -> Result<(Option<std::sync::Arc<XdsSettings>>, CaSource), ConfigError> {
        if self.xds_on_demand {
            return Err(invalid(
                "XDS_ON_DEMAND=true: on-demand discovery is not implemented; ferry subscribes to every address (unset it)",
            ));
        }
        let address = match &self.xds_address {
            Some(a) => a.clone(),
            None if in_kubernetes && !local_state => crate::xds::settings::ISTIOD_ADDRESS.to_string(),
            None => String::new(),
        };
        if !address.is_empty() && local_state {
            return Err(invalid(format!(
                "XDS_ADDRESS={address:?} and a local state source (LOCAL_XDS_PATH, LOCAL_XDS or FERRY_CLUSTER_STATE) are both set; \
                 state comes from one source: set XDS_ADDRESS=\"\" to use the local one"
            )));
        }
        let xds = if address.is_empty() {
            None
        } else {
            let target = settings::xds_target(env, &address, cluster_id).map_err(invalid)?;
            let node = settings::node_info(env, &self.node_name, cluster_id).map_err(invalid)?;
            Some(std::sync::Arc::new(XdsSettings { target, node }))
        };
        let ca_address = self.ca_address.clone().filter(|a| !a.is_empty());
        let ca = match (&self.ca_dir, ca_address) {
            (Some(_), Some(a)) => {
                return Err(invalid(format!("both FERRY_CA_DIR and CA_ADDRESS={a:?} are set; choose the built-in CA or the control plane's")))
            }
            (Some(d), None) => CaSource::Local(d.clone()),
            (None, Some(a)) => CaSource::Remote(settings::ca_target(env, &a, cluster_id).map_err(invalid)?),
            (None, None) if !address.is_empty() && self.ca_address.is_none() => {
                CaSource::Remote(settings::ca_target(env, &address, cluster_id).map_err(invalid)?)
            }
            (None, None) => {
                return Err(invalid(
                    "no certificate authority: set CA_ADDRESS (a control plane's CA) or --ca-dir/FERRY_CA_DIR (create one with `ferry ca init DIR`)",
                ))
            }
        };
        Ok((xds, ca))
    }
}

/// The cluster id: `--cluster-id`, else ISTIO_META_CLUSTER_ID, else CLUSTER_ID, else
/// "Kubernetes" (empty values are unset). Each source it overrides with a different value is
/// named in a warning, so a flag that silently lost (or won) is visible in the log.
fn cluster_id(flag: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> (String, Vec<String>) {
    let set = |v: Option<String>| v.filter(|s| !s.is_empty());
    let sources = [
        set(flag.map(String::from)).map(|v| (format!("--cluster-id {v}"), v)),
        set(env("ISTIO_META_CLUSTER_ID")).map(|v| (format!("ISTIO_META_CLUSTER_ID={v}"), v)),
        set(env("CLUSTER_ID")).map(|v| (format!("CLUSTER_ID={v}"), v)),
    ];
    let mut given = sources.into_iter().flatten();
    let Some((winner, id)) = given.next() else { return ("Kubernetes".into(), Vec::new()) };
    let warnings = given.filter(|(_, v)| *v != id).map(|(loser, _)| format!("cluster id: {winner} overrides {loser}")).collect();
    (id, warnings)
}

/// A configuration with every default, for tests.
#[cfg(test)]
pub(crate) fn test_config() -> Config {
    test_config_with(&[]).expect("defaults are valid")
}

/// A configuration with every default plus `extra` flags, for tests.
#[cfg(test)]
pub(crate) fn test_config_with(extra: &[&str]) -> Result<Config, ConfigError> {
    use clap::Parser;
    #[derive(Parser)]
    struct W {
        #[command(flatten)]
        a: ProxyArgs,
    }
    let base = ["ferry", "--mode", "dedicated", "--workload-info", "test/test/test", "--ca-dir", "/nonexistent"];
    W::try_parse_from(base.iter().chain(extra)).expect("flags parse").a.into_config()
}

/// `<namespace>/<name>/<service-account>`.
pub fn parse_workload_info(s: &str) -> Result<WorkloadInfo, ConfigError> {
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        [ns, name, sa] if !ns.is_empty() && !name.is_empty() && !sa.is_empty() => {
            Ok(WorkloadInfo { namespace: ns.to_string(), name: name.to_string(), service_account: sa.to_string() })
        }
        _ => Err(invalid(format!("PROXY_WORKLOAD_INFO={s:?} is not <namespace>/<name>/<service-account>"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ztunnel rules (`ztunnel_env`) reach the configuration the proxy runs with.
    #[test]
    fn ztunnel_settings_reach_the_config() {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let c = |flags: &[&str]| test_config_with(flags).unwrap();
        assert_eq!(c(&["--termination-grace-period-seconds", "3"]).termination_deadline, Duration::from_secs(2));
        assert_eq!(c(&["--termination-grace-period-seconds", "30"]).termination_deadline, Duration::from_secs(25));
        assert_eq!(c(&["--worker-threads", "0"]).worker_threads, cpus);
        assert_eq!(c(&["--proxy-config", "concurrency: 3"]).worker_threads, 3);
        assert_eq!(c(&["--worker-threads", "1", "--proxy-config", "concurrency: 3"]).worker_threads, 1);
        let e = test_config_with(&["--worker-threads", "lots"]).err().unwrap().to_string();
        assert!(e.starts_with("ZTUNNEL_WORKER_THREADS=\"lots\""), "{e}");
        let e = test_config_with(&["--proxy-config", "statsPort: 1"]).err().unwrap().to_string();
        assert!(e.starts_with("PROXY_CONFIG=") && e.contains("FERRY_STATS_ADDR"), "{e}");
    }

    #[test]
    fn workload_info() {
        let w = parse_workload_info("ns/name/sa").unwrap();
        assert_eq!((w.namespace.as_str(), w.name.as_str(), w.service_account.as_str()), ("ns", "name", "sa"));
        for bad in ["ns/name", "ns//sa", "a/b/c/d", ""] {
            assert!(parse_workload_info(bad).is_err(), "{bad:?}");
        }
    }

    /// (case, --cluster-id, environment, the cluster id, what the warnings name)
    type ClusterIdCase =
        (&'static str, Option<&'static str>, &'static [(&'static str, &'static str)], &'static str, &'static [&'static str]);

    #[test]
    fn an_explicit_cluster_id_wins_and_an_overridden_one_is_named() {
        #[rustfmt::skip]
        let cases: &[ClusterIdCase] = &[
            ("nothing set", None, &[], "Kubernetes", &[]),
            ("CLUSTER_ID", None, &[("CLUSTER_ID", "c1")], "c1", &[]),
            ("ISTIO_META_CLUSTER_ID over CLUSTER_ID (Istio's order)", None, &[("CLUSTER_ID", "c1"), ("ISTIO_META_CLUSTER_ID", "m1")], "m1", &["ISTIO_META_CLUSTER_ID=m1", "CLUSTER_ID=c1"]),
            ("the same value twice raises nothing", None, &[("CLUSTER_ID", "m1"), ("ISTIO_META_CLUSTER_ID", "m1")], "m1", &[]),
            ("an empty ISTIO_META_CLUSTER_ID is unset", None, &[("CLUSTER_ID", "c1"), ("ISTIO_META_CLUSTER_ID", "")], "c1", &[]),
            ("the flag alone", Some("f1"), &[], "f1", &[]),
            ("the flag over ISTIO_META_CLUSTER_ID", Some("f1"), &[("ISTIO_META_CLUSTER_ID", "m1")], "f1", &["--cluster-id f1", "ISTIO_META_CLUSTER_ID=m1"]),
            ("the flag over both", Some("f1"), &[("CLUSTER_ID", "c1"), ("ISTIO_META_CLUSTER_ID", "m1")], "f1", &["--cluster-id f1", "ISTIO_META_CLUSTER_ID=m1", "CLUSTER_ID=c1"]),
            ("the flag equal to the environment", Some("m1"), &[("ISTIO_META_CLUSTER_ID", "m1")], "m1", &[]),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter_map(|(case, flag, env, want, named)| {
                let lookup = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
                let (id, warnings) = cluster_id(*flag, &lookup);
                let all = warnings.join("; ");
                let ok = id == *want && named.iter().all(|n| all.contains(n)) && named.is_empty() == warnings.is_empty();
                (!ok).then(|| format!("{case}: got {id:?} {warnings:?}, want {want:?} naming {named:?}"))
            })
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    type ControlPlaneCase = (&'static str, &'static [&'static str], bool, bool, Result<(Option<&'static str>, &'static str), &'static str>);

    #[test]
    fn the_control_plane_is_chosen_explicitly_and_never_two_at_once() {
        use clap::Parser;
        #[derive(Parser)]
        struct W {
            #[command(flatten)]
            a: ProxyArgs,
        }
        // (case, flags, in Kubernetes, local state, Ok((xds url, ca)) or the error's words)
        #[rustfmt::skip]
        let cases: &[ControlPlaneCase] = &[
            ("standalone", &["--ca-dir=/ca"], false, true, Ok((None, "built-in CA at /ca"))),
            ("in Kubernetes, istiod by default for both", &[], true, false, Ok((Some("https://istiod.istio-system.svc:15012"), "https://istiod.istio-system.svc:15012"))),
            ("a bare host:port", &["--xds-address=cp:15012"], false, false, Ok((Some("https://cp:15012"), "https://cp:15012"))),
            ("a separate CA", &["--xds-address=cp:15012", "--ca-address=ca:15012"], false, false, Ok((Some("https://cp:15012"), "https://ca:15012"))),
            ("xDS with the built-in CA", &["--xds-address=cp:15012", "--ca-dir=/ca"], false, false, Ok((Some("https://cp:15012"), "built-in CA at /ca"))),
            ("a local file in Kubernetes needs no xDS", &["--ca-dir=/ca"], true, true, Ok((None, "built-in CA at /ca"))),
            ("xDS and a local file", &["--xds-address=cp:15012", "--ca-dir=/ca"], false, true, Err("both set")),
            ("two CAs", &["--ca-dir=/ca", "--ca-address=ca:15012"], false, true, Err("choose the built-in CA")),
            ("no CA at all", &[], false, true, Err("no certificate authority")),
            ("xDS disabled, CA_ADDRESS=\"\"", &["--xds-address=", "--ca-address="], true, false, Err("no certificate authority")),
            ("plaintext", &["--xds-address=http://cp:15010"], false, false, Err("only https")),
            ("on demand", &["--xds-on-demand=true", "--ca-dir=/ca"], false, true, Err("XDS_ON_DEMAND")),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter_map(|(case, flags, k8s, local, want)| {
                let args = W::try_parse_from(std::iter::once("ferry").chain(flags.iter().copied())).expect(case).a;
                let env = args.control_plane_env(std::iter::empty());
                let got = args.control_plane(&Env { vars: &env }, *k8s, *local, "Kubernetes");
                let ok = match (&got, want) {
                    (Ok((x, ca)), Ok((wx, wca))) => x.as_ref().map(|x| x.target.url.as_str()) == *wx && ca.describe() == *wca,
                    (Err(e), Err(words)) => e.to_string().contains(words),
                    _ => false,
                };
                let shown = got.map(|(x, ca)| (x.map(|x| x.target.url.clone()), ca.describe()));
                (!ok).then(|| format!("{case}: got {shown:?}, want {want:?}"))
            })
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
