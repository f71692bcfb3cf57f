//! Logs, metrics and access logs. Logging levels can be changed at runtime (`/logging`);
//! log lines use Istio's layout (`format`), metrics Istio's names and labels (protocols.md §7).

pub mod conn;
pub(crate) mod exposition;
pub(crate) mod format;
pub(crate) mod http;
pub(crate) mod log_filter;
pub mod metrics;
pub(crate) mod process;
pub(crate) mod profile;
pub(crate) mod runtime;

use std::sync::Mutex;

use log_filter::{FilterError, LogFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Changes the active log filter at runtime (`/logging`).
pub(crate) struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
    startup: LogFilter,
    current: Mutex<LogFilter>,
}

impl LogHandle {
    fn new(reload: reload::Handle<EnvFilter, Registry>, startup: &str) -> Self {
        let startup = LogFilter::startup(startup);
        LogHandle { reload, current: Mutex::new(startup.clone()), startup }
    }

    /// Applies a `/logging?level=` request (see [`LogFilter::apply`]); on any error the
    /// active filter is unchanged.
    pub(crate) fn apply(&self, request: &str) -> Result<(), FilterError> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let next = current.apply(request)?;
        self.install(&next)?;
        *current = next;
        Ok(())
    }

    /// Back to the filter the process started with.
    pub(crate) fn reset(&self) -> Result<(), FilterError> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        self.install(&self.startup)?;
        *current = self.startup.clone();
        Ok(())
    }

    fn install(&self, f: &LogFilter) -> Result<(), FilterError> {
        let filter = f.to_string();
        let fail = |reason: String| FilterError::Apply { filter: filter.clone(), reason };
        let env = EnvFilter::try_new(&filter).map_err(|e| fail(e.to_string()))?;
        self.reload.reload(env).map_err(|e| fail(e.to_string()))
    }

    pub(crate) fn current(&self) -> String {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).to_string()
    }
}

/// Installs the global subscriber. `spec` defaults to `RUST_LOG`, else `info`.
pub(crate) fn init_logging(format: LogFormat, spec: Option<String>) -> LogHandle {
    let spec = spec.or_else(|| std::env::var("RUST_LOG").ok()).unwrap_or_else(|| "info".to_string());
    // An unreadable filter falls back to `info`, and `/logging` then reports `info`.
    let (filter, spec) = match EnvFilter::try_new(&spec) {
        Ok(f) => (f, spec),
        Err(e) => {
            eprintln!("invalid log filter {spec:?} ({e}); using info");
            (EnvFilter::new("info"), "info".to_string())
        }
    };
    let (layer, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(layer);
    let istio = format::IstioFormat { json: format == LogFormat::Json };
    let res = registry.with(fmt::layer().event_format(istio).with_writer(std::io::stderr).with_ansi(false)).try_init();
    if let Err(e) = res {
        eprintln!("logging already initialised: {e}");
    }
    LogHandle::new(handle, &spec)
}

/// A handle and the subscriber it controls, writing plain lines into `out`, for tests that
/// check what a filter lets through without installing a global subscriber.
#[cfg(test)]
pub(crate) fn test_logging(spec: &str, out: std::sync::Arc<Mutex<Vec<u8>>>) -> (LogHandle, impl tracing::Subscriber + Send + Sync) {
    struct Sink(std::sync::Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (layer, handle) = reload::Layer::new(EnvFilter::new(spec));
    let sub = tracing_subscriber::registry().with(layer).with(fmt::layer().with_ansi(false).with_writer(move || Sink(out.clone())));
    (LogHandle::new(handle, spec), sub)
}
