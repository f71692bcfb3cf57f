//! What a peer can make a node proxy hold, and the bound on each (invariant P10). Every limit
//! has a setting (flag and environment variable) and a default sized for a node proxy; what
//! is shed when a limit is reached is counted and logged. The table in ARCHITECTURE.md
//! ("Limits") lists them all.

use std::time::Duration;

use ferry_core::timefmt::parse_duration;

#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Open data-path connections the proxy accepts, per direction (outbound on 15001; inbound
    /// on 15006 and 15008 together), over every pod it serves. More are accepted and closed at
    /// once, and counted. Default: a quarter of the open-file limit each.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Open inbound connections (15006 and 15008) from one source IP.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS_PER_SOURCE", default_value_t = 4096)]
    pub max_connections_per_source: usize,

    /// CONNECT streams of one HBONE connection that may be setting up (authorizing and dialling
    /// the application) at once; more wait for a place, and are answered 503 after waiting
    /// as long as the connect timeout.
    #[arg(long, env = "FERRY_HBONE_SETUPS_PER_CONNECTION", default_value_t = 32)]
    pub hbone_setups_per_connection: usize,

    /// CONNECT streams setting up at once over the whole proxy (more wait, as above).
    #[arg(long, env = "FERRY_HBONE_SETUPS", default_value_t = 1024)]
    pub hbone_setups: usize,

    /// Bytes an HBONE connection may hold queued for a peer that does not read them, over
    /// all its streams; a stream waits for room (back-pressure to its application).
    #[arg(long, env = "FERRY_HBONE_CONNECTION_BUFFER", default_value_t = 4 * 1024 * 1024)]
    pub hbone_connection_buffer: usize,

    /// Bytes all HBONE connections together may hold queued for their peers.
    #[arg(long, env = "FERRY_HBONE_BUFFER_TOTAL", default_value_t = 128 * 1024 * 1024)]
    pub hbone_buffer_total: usize,

    /// A stream that has waited this long for room to queue its next bytes is reset (shed):
    /// its peer has stopped reading.
    #[arg(long, env = "FERRY_HBONE_STALL_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub hbone_stall_timeout: Duration,

    /// An inbound HBONE connection that carries no stream for this long is closed (GOAWAY).
    /// Longer than clients keep idle pooled connections (POOL_UNUSED_RELEASE_TIMEOUT, 5m).
    #[arg(long, env = "FERRY_HBONE_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "10m")]
    pub hbone_idle_timeout: Duration,

    /// Time a client of the admin, metrics and readiness servers has to send a request's
    /// headers, and the longest an idle keep-alive connection stays open.
    #[arg(long, env = "FERRY_HTTP_HEADER_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub http_header_timeout: Duration,

    /// Largest local config file (LOCAL_XDS_PATH) read; a larger one is refused unread.
    #[arg(long, env = "FERRY_MAX_CONFIG_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_config_bytes: u64,
}

/// Connections each management server (admin, metrics, readiness) keeps open, and per source.
pub(crate) const HTTP_CONNECTIONS: usize = 256;
pub(crate) const HTTP_CONNECTIONS_PER_SOURCE: usize = 32;

/// The validated limits.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// `None`: derived from the open-file limit at start.
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_connections_per_source: usize,
    pub(crate) hbone_setups_per_connection: usize,
    pub(crate) hbone_setups: usize,
    pub(crate) hbone_connection_buffer: usize,
    pub(crate) hbone_buffer_total: usize,
    pub(crate) hbone_stall_timeout: Duration,
    pub(crate) hbone_idle_timeout: Duration,
    pub(crate) http_header_timeout: Duration,
    pub(crate) max_config_bytes: u64,
}

impl LimitArgs {
    pub(crate) fn validate(&self) -> Result<Limits, String> {
        let positive = [
            ("FERRY_MAX_CONNECTIONS_PER_SOURCE", self.max_connections_per_source),
            ("FERRY_HBONE_SETUPS_PER_CONNECTION", self.hbone_setups_per_connection),
            ("FERRY_HBONE_SETUPS", self.hbone_setups),
            ("FERRY_MAX_CONNECTIONS", self.max_connections.unwrap_or(1)),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if self.hbone_connection_buffer < 64 * 1024 || self.hbone_buffer_total < self.hbone_connection_buffer {
            return Err("FERRY_HBONE_CONNECTION_BUFFER must be at least 65536 and at most FERRY_HBONE_BUFFER_TOTAL".into());
        }
        if self.hbone_stall_timeout.is_zero() || self.http_header_timeout.is_zero() || self.hbone_idle_timeout.is_zero() {
            return Err("FERRY_HBONE_STALL_TIMEOUT, FERRY_HBONE_IDLE_TIMEOUT and FERRY_HTTP_HEADER_TIMEOUT must be positive".into());
        }
        Ok(Limits {
            max_connections: self.max_connections,
            max_connections_per_source: self.max_connections_per_source,
            hbone_setups_per_connection: self.hbone_setups_per_connection,
            hbone_setups: self.hbone_setups,
            hbone_connection_buffer: self.hbone_connection_buffer,
            hbone_buffer_total: self.hbone_buffer_total,
            hbone_stall_timeout: self.hbone_stall_timeout,
            hbone_idle_timeout: self.hbone_idle_timeout,
            http_header_timeout: self.http_header_timeout,
            max_config_bytes: self.max_config_bytes,
        })
    }
}

impl Limits {
    /// Open data-path connections per direction, given the process's open-file limit: each
    /// proxied connection holds two descriptors, and both directions must fit with room left
    /// for listeners, pools and the management servers.
    pub(crate) fn connections(&self, nofile: u64) -> usize {
        self.max_connections.unwrap_or_else(|| (nofile / 4).clamp(64, 1 << 20) as usize)
    }
}
