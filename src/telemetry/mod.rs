//! Logs, metrics and access logs. Logging levels can be changed at runtime (`/logging`);
//! metrics use Istio's names and labels (protocols.md §7) so existing dashboards work.

pub mod conn;
pub(crate) mod exposition;
pub(crate) mod http;
pub mod metrics;
pub(crate) mod process;

use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Changes the active log filter at runtime.
pub(crate) struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
    default: String,
    current: Mutex<String>,
}

impl LogHandle {
    /// Applies a filter in `RUST_LOG` syntax (`info`, `access=info,ferry=debug`).
    pub(crate) fn set(&self, spec: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(spec).map_err(|e| format!("invalid level {spec:?}: {e}"))?;
        self.reload.reload(filter).map_err(|e| e.to_string())?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = spec.to_string();
        Ok(())
    }

    pub(crate) fn reset(&self) -> Result<(), String> {
        let d = self.default.clone();
        self.set(&d)
    }

    pub(crate) fn current(&self) -> String {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Installs the global subscriber. `spec` defaults to `RUST_LOG`, else `info`.
pub(crate) fn init_logging(format: LogFormat, spec: Option<String>) -> LogHandle {
    let spec = spec.or_else(|| std::env::var("RUST_LOG").ok()).unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(layer);
    let res = match format {
        LogFormat::Plain => registry.with(fmt::layer().with_writer(std::io::stderr).with_ansi(false)).try_init(),
        LogFormat::Json => {
            registry.with(fmt::layer().json().flatten_event(true).with_current_span(false).with_writer(std::io::stderr)).try_init()
        }
    };
    if let Err(e) = res {
        eprintln!("logging already initialised: {e}");
    }
    LogHandle { reload: handle, default: spec.clone(), current: Mutex::new(spec) }
}
