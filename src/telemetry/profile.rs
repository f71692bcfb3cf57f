//! `/debug/pprof/profile` and `/debug/pprof/heap` on the proxy's admin port. A CPU profile
//! samples every thread with SIGPROF (pprof-rs) for a bounded number of seconds, one profile
//! at a time, on a thread of its own, and is encoded as pprof's protobuf `Profile` (what
//! `go tool pprof` reads). Nothing runs on the data path unless a profile is being taken. A
//! build without the `cpu-profile` feature answers 501.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{header, HeaderValue, StatusCode};

use super::http::{text, Reply, Resp};

/// `seconds` when the request names none (Go's and ztunnel's default).
const DEFAULT_SECONDS: u64 = 10;
/// The longest profile served: the sampling signal costs the data path while it runs.
const MAX_SECONDS: u64 = 60;
/// Samples per second per CPU-second (pprof's usual rate; not a multiple of common timers).
#[cfg(feature = "cpu-profile")]
const FREQUENCY: i32 = 99;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProfileError {
    #[error("seconds must be a whole number from 1 to {MAX_SECONDS} (default {DEFAULT_SECONDS}), not {0:?}")]
    Seconds(String),
    #[error("a CPU profile is already being taken; retry when it finishes (at most {MAX_SECONDS} s)")]
    Busy,
    #[cfg(feature = "cpu-profile")]
    #[error("cannot start the CPU profiler: {0}")]
    Start(::pprof::Error),
    #[cfg(feature = "cpu-profile")]
    #[error("cannot build the CPU profile: {0}")]
    Report(::pprof::Error),
    #[cfg(not(feature = "cpu-profile"))]
    #[error("this build leaves the CPU profiler out; build ferry with the cargo feature cpu-profile (a default feature)")]
    NotBuilt,
    #[error("the profiler thread stopped without a profile")]
    Lost,
}

impl ProfileError {
    fn response(&self) -> Resp {
        let status = match self {
            ProfileError::Seconds(_) => StatusCode::BAD_REQUEST,
            ProfileError::Busy => StatusCode::TOO_MANY_REQUESTS,
            #[cfg(not(feature = "cpu-profile"))]
            ProfileError::NotBuilt => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        text(status, format!("{self}\n"))
    }
}

/// The profile's length from the query (`seconds=N`); other parameters are ignored, as Go's
/// handler does.
pub(crate) fn seconds(query: &str) -> Result<u64, ProfileError> {
    let Some(v) = query.split('&').find_map(|p| p.strip_prefix("seconds=")) else { return Ok(DEFAULT_SECONDS) };
    match v.parse::<u64>() {
        Ok(n @ 1..=MAX_SECONDS) => Ok(n),
        _ => Err(ProfileError::Seconds(v.to_string())),
    }
}

/// Set while a profile is taken; pprof-rs's profiler is process-wide.
static BUSY: AtomicBool = AtomicBool::new(false);

/// Clears `BUSY` however the profile ends.
struct Slot;

impl Slot {
    fn take() -> Result<Slot, ProfileError> {
        BUSY.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).map(|_| Slot).map_err(|_| ProfileError::Busy)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        BUSY.store(false, Ordering::Release);
    }
}

/// `GET /debug/pprof/profile?seconds=N`.
pub(crate) fn cpu(query: &str) -> Reply {
    let secs = match seconds(query) {
        Ok(s) => s,
        Err(e) => return e.response().into(),
    };
    let slot = match Slot::take() {
        Ok(s) => s,
        Err(e) => return e.response().into(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Sampling and symbolization (seconds of CPU for a big binary) stay off every runtime.
    let spawned = std::thread::Builder::new().name("ferry-profile".into()).spawn(move || {
        let _ = tx.send(take(Duration::from_secs(secs)));
        drop(slot);
    });
    if let Err(e) = spawned {
        return text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot start the profiler thread: {e}\n")).into();
    }
    Reply::Later(Box::pin(async move {
        match rx.await.unwrap_or(Err(ProfileError::Lost)) {
            Ok(body) => {
                let mut r = text(StatusCode::OK, String::new());
                *r.body_mut() = http_body_util::Full::new(bytes::Bytes::from(body));
                let h = r.headers_mut();
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
                h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"profile\""));
                r
            }
            Err(e) => e.response(),
        }
    }))
}

#[cfg(not(feature = "cpu-profile"))]
fn take(_: Duration) -> Result<Vec<u8>, ProfileError> {
    Err(ProfileError::NotBuilt)
}

#[cfg(feature = "cpu-profile")]
fn take(length: Duration) -> Result<Vec<u8>, ProfileError> {
    // The C library's own frames say nothing about ferry and unwind poorly.
    let guard = ::pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(ProfileError::Start)?;
    std::thread::sleep(length);
    let report = guard.report().build().map_err(ProfileError::Report)?;
    drop(guard);
    Ok(prost::Message::encode_to_vec(&encode(&report)))
}

/// `GET /debug/pprof/heap`: glibc malloc keeps no allocation stacks to profile.
pub(crate) fn heap() -> Resp {
    text(
        StatusCode::NOT_IMPLEMENTED,
        "no heap profile: ferry allocates with glibc malloc, which records no allocation call stacks. \
         A heap profile needs an allocator that samples them (jemalloc built with profiling, as ztunnel uses); \
         ferry does not ship one, to keep its idle memory small. For memory use, see process_resident_memory_bytes \
         on the metrics port.\n",
    )
}

/// pprof's `profile.proto` (github.com/google/pprof), the messages and fields a CPU profile
/// uses; strings are indices into `string_table`, whose entry 0 is "".
#[cfg(feature = "cpu-profile")]
pub(crate) mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub(crate) sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub(crate) sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub(crate) location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub(crate) function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub(crate) string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub(crate) time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub(crate) duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub(crate) period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub(crate) period: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct ValueType {
        #[prost(int64, tag = "1")]
        pub(crate) r#type: i64,
        #[prost(int64, tag = "2")]
        pub(crate) unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub(crate) location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub(crate) value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub(crate) label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Label {
        #[prost(int64, tag = "1")]
        pub(crate) key: i64,
        #[prost(int64, tag = "2")]
        pub(crate) str: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Location {
        #[prost(uint64, tag = "1")]
        pub(crate) id: u64,
        #[prost(message, repeated, tag = "4")]
        pub(crate) line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Line {
        #[prost(uint64, tag = "1")]
        pub(crate) function_id: u64,
        #[prost(int64, tag = "2")]
        pub(crate) line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Function {
        #[prost(uint64, tag = "1")]
        pub(crate) id: u64,
        #[prost(int64, tag = "2")]
        pub(crate) name: i64,
        #[prost(int64, tag = "3")]
        pub(crate) system_name: i64,
        #[prost(int64, tag = "4")]
        pub(crate) filename: i64,
    }
}

/// Builds the tables of a `Profile`: interned strings, one function per symbol name and one
/// location per (function, line).
#[cfg(feature = "cpu-profile")]
#[derive(Default)]
struct Tables {
    strings: Vec<String>,
    string_ids: std::collections::HashMap<String, i64>,
    functions: Vec<proto::Function>,
    function_ids: std::collections::HashMap<String, u64>,
    locations: Vec<proto::Location>,
    location_ids: std::collections::HashMap<(u64, i64), u64>,
}

#[cfg(feature = "cpu-profile")]
impl Tables {
    fn string(&mut self, s: &str) -> i64 {
        if self.strings.is_empty() {
            self.strings.push(String::new());
            self.string_ids.insert(String::new(), 0);
        }
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    fn location(&mut self, sym: &::pprof::Symbol) -> u64 {
        let name = sym.name();
        let function_id = match self.function_ids.get(&name) {
            Some(&id) => id,
            None => {
                let id = self.functions.len() as u64 + 1;
                let (n, sys, file) = (self.string(&name), self.string(&sym.sys_name()), self.string(&sym.filename()));
                self.functions.push(proto::Function { id, name: n, system_name: sys, filename: file });
                self.function_ids.insert(name, id);
                id
            }
        };
        let line = i64::from(sym.lineno());
        *self.location_ids.entry((function_id, line)).or_insert_with(|| {
            let id = self.locations.len() as u64 + 1;
            self.locations.push(proto::Location { id, line: vec![proto::Line { function_id, line }] });
            id
        })
    }
}

/// A report as pprof's CPU profile: values are (samples, CPU nanoseconds), each sample labelled
/// with its thread, its locations leaf first.
#[cfg(feature = "cpu-profile")]
fn encode(report: &::pprof::Report) -> proto::Profile {
    let mut t = Tables::default();
    let period = 1_000_000_000 / i64::from(report.timing.frequency.max(1));
    let sample_type = vec![
        proto::ValueType { r#type: t.string("samples"), unit: t.string("count") },
        proto::ValueType { r#type: t.string("cpu"), unit: t.string("nanoseconds") },
    ];
    let thread = t.string("thread");
    let mut sample = Vec::with_capacity(report.data.len());
    for (frames, &count) in &report.data {
        let location_id = frames.frames.iter().flatten().map(|sym| t.location(sym)).collect();
        let label = vec![proto::Label { key: thread, str: t.string(&frames.thread_name_or_id()) }];
        sample.push(proto::Sample { location_id, value: vec![count as i64, count as i64 * period], label });
    }
    let since_epoch = report.timing.start_time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    proto::Profile {
        sample_type,
        sample,
        period_type: Some(proto::ValueType { r#type: t.string("cpu"), unit: t.string("nanoseconds") }),
        period,
        time_nanos: since_epoch.as_nanos() as i64,
        duration_nanos: report.timing.duration.as_nanos() as i64,
        location: t.locations,
        function: t.functions,
        string_table: t.strings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_default_to_ten_and_are_bounded() {
        assert_eq!(seconds("").unwrap(), 10);
        assert_eq!(seconds("debug=1").unwrap(), 10);
        assert_eq!(seconds("seconds=1").unwrap(), 1);
        assert_eq!(seconds("x=1&seconds=60").unwrap(), 60);
        for bad in ["seconds=0", "seconds=61", "seconds=abc", "seconds=", "seconds=-1", "seconds=1.5"] {
            let e = seconds(bad).unwrap_err();
            assert!(e.to_string().contains("from 1 to 60"), "{bad}: {e}");
        }
    }

    #[test]
    fn one_profile_at_a_time() {
        let first = Slot::take().expect("no profile is running");
        assert!(matches!(Slot::take(), Err(ProfileError::Busy)));
        drop(first);
        assert!(Slot::take().is_ok(), "the slot is free once the profile ends");
    }

    #[cfg(feature = "cpu-profile")]
    #[test]
    fn strings_are_interned_after_the_empty_string() {
        let mut t = Tables::default();
        assert_eq!(t.string("cpu"), 1);
        assert_eq!(t.string("samples"), 2);
        assert_eq!(t.string("cpu"), 1);
        assert_eq!(t.strings, ["", "cpu", "samples"]);
    }
}
