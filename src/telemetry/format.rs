//! Log lines in Istio's layout, so pipelines written for ztunnel parse ferry's: plain is
//! `<time>\t<level>\t<scope>\t<message>\tkey=value ...` (tabs, lower-case level); JSON is one
//! object per line opening with `level`, `time` and `scope`, then `message` and the fields.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Which of the two layouts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IstioFormat {
    pub(crate) json: bool,
}

/// ferry's own targets lose their crate prefix, as ztunnel's do (`proxy::inbound`).
fn scope(target: &str) -> &str {
    target.strip_prefix("ferry::").unwrap_or(target)
}

fn now() -> String {
    let t = std::time::SystemTime::now();
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = ferry_core::timefmt::rfc3339(t);
    // RFC 3339 with microseconds, as ztunnel writes: `2026-11-23T10:00:00.123456Z`.
    match secs.strip_suffix('Z') {
        Some(base) => format!("{base}.{:06}Z", d.subsec_micros()),
        None => secs,
    }
}

impl<S, N> FormatEvent<S, N> for IstioFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let level = meta.level().as_str().to_ascii_lowercase();
        if self.json {
            let line = json_line(&level, scope(meta.target()), event).map_err(|_| fmt::Error)?;
            return writeln!(w, "{line}");
        }
        write!(w, "{}\t{level}\t{}", now(), scope(meta.target()))?;
        let mut v = PlainFields { message: String::new(), rest: String::new() };
        event.record(&mut v);
        write!(w, "\t{}", v.message)?;
        if !v.rest.is_empty() {
            write!(w, "\t{}", v.rest.trim_end())?;
        }
        writeln!(w)
    }
}

/// One JSON object, entries written in order: the envelope, then the event's fields as
/// recorded (so the access log keeps ztunnel's field order); numbers stay numbers.
fn json_line(level: &str, scope: &str, event: &Event<'_>) -> Result<String, serde_json::Error> {
    use serde::ser::{SerializeMap, Serializer as _};
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut buf);
    let mut map = ser.serialize_map(None)?;
    map.serialize_entry("level", level)?;
    map.serialize_entry("time", &now())?;
    map.serialize_entry("scope", scope)?;
    let mut v = JsonFields { map, state: Ok(()) };
    event.record(&mut v);
    v.state?;
    v.map.end()?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

struct JsonFields<M> {
    map: M,
    state: Result<(), serde_json::Error>,
}

impl<M: serde::ser::SerializeMap<Error = serde_json::Error>> JsonFields<M> {
    fn put<V: serde::Serialize + ?Sized>(&mut self, f: &Field, v: &V) {
        if self.state.is_ok() {
            self.state = self.map.serialize_entry(f.name(), v);
        }
    }
}

impl<M: serde::ser::SerializeMap<Error = serde_json::Error>> Visit for JsonFields<M> {
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.put(f, &v);
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.put(f, &v);
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.put(f, &v);
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.put(f, v);
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        self.put(f, &format!("{v:?}"));
    }
}

/// Plain: the message first, then `key=value` separated by spaces; strings are quoted (Debug)
/// like ztunnel's, so a value with a space stays one field.
struct PlainFields {
    message: String,
    rest: String,
}

impl Visit for PlainFields {
    fn record_str(&mut self, f: &Field, v: &str) {
        match f.name() {
            "message" => self.message.push_str(v),
            name => {
                let _ = write!(self.rest, "{name}={v:?} ");
            }
        }
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        match f.name() {
            "message" => {
                let _ = write!(self.message, "{v:?}");
            }
            name => {
                let _ = write!(self.rest, "{name}={v:?} ");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn capture(json: bool, f: impl FnOnce()) -> String {
        #[derive(Clone)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(out.clone());
        let sub = tracing_subscriber::fmt().event_format(IstioFormat { json }).with_writer(move || sink.clone()).finish();
        tracing::subscriber::with_default(sub, f);
        let s = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        s
    }

    fn emit() {
        tracing::event!(target: "access", tracing::Level::ERROR, src.addr = "10.0.0.1:1234", bytes_sent = 5u64, error = "boom", "connection complete");
    }

    #[test]
    fn json_lines_carry_level_time_scope_and_keep_field_order() {
        let line = capture(true, emit);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (v["level"].as_str(), v["scope"].as_str(), v["message"].as_str()),
            (Some("error"), Some("access"), Some("connection complete"))
        );
        assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z') && t.contains('T')), "{line}");
        assert_eq!(v["bytes_sent"], 5);
        // Order as written (a parsed `Value` sorts its keys).
        let at = |k: &str| line.find(&format!("\"{k}\":")).unwrap_or_else(|| panic!("{k} missing: {line}"));
        let order: Vec<usize> = ["level", "time", "scope", "message", "src.addr", "bytes_sent", "error"].iter().map(|k| at(k)).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{line}");
    }

    #[test]
    fn plain_lines_are_tab_separated_like_istios() {
        let line = capture(false, emit);
        let cols: Vec<&str> = line.trim_end().split('\t').collect();
        assert_eq!(cols.len(), 5, "{line:?}");
        assert_eq!(&cols[1..4], ["error", "access", "connection complete"]);
        assert_eq!(cols[4], r#"src.addr="10.0.0.1:1234" bytes_sent=5 error="boom""#);
    }
}
