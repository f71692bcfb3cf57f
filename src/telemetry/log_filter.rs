//! The log filter `/logging` edits, with ztunnel's semantics: a bare level replaces the whole
//! filter, `target=level` or `target:level` directives (comma-separated, as istioctl sends
//! them) are merged into the current one, and anything else is refused without a change.

use std::fmt;

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FilterError {
    #[error("invalid level {0:?}: use one of off, error, warn, info, debug, trace")]
    Level(String),
    #[error("invalid directive {0:?}: use a level (debug), or target=level / target:level (access=debug), comma-separated")]
    Syntax(String),
    #[error("empty level: use ?level=<level> or ?level=<target>=<level>[,...]")]
    Empty,
    #[error("the filter {filter:?} could not be applied ({reason}); the previous one stays")]
    Apply { filter: String, reason: String },
}

/// One comma-separated part of a filter. Start-up filters (`RUST_LOG`) may hold directives
/// `/logging` does not write (span or field filters); those are kept verbatim.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Directive {
    Default(String),
    Target(String, String),
    Verbatim(String),
}

impl fmt::Display for Directive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Directive::Default(l) => f.write_str(l),
            Directive::Target(t, l) => write!(f, "{t}={l}"),
            Directive::Verbatim(s) => f.write_str(s),
        }
    }
}

/// A log filter in `RUST_LOG` syntax, kept as directives so requests can merge into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LogFilter(Vec<Directive>);

impl fmt::Display for LogFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|d| d.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

impl LogFilter {
    /// A start-up filter, already accepted by `EnvFilter`: what this module cannot read is
    /// kept as it is.
    pub(crate) fn startup(spec: &str) -> LogFilter {
        LogFilter(
            spec.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| parse(s).unwrap_or(Directive::Verbatim(s.into()))).collect(),
        )
    }

    /// The filter after a `/logging?level=` request, or why the request is refused. A single
    /// bare level replaces everything; otherwise each directive replaces the one for its
    /// target (or the default level) and the rest of the filter stays.
    pub(crate) fn apply(&self, request: &str) -> Result<LogFilter, FilterError> {
        let parts: Vec<&str> = request.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        if parts.is_empty() {
            return Err(FilterError::Empty);
        }
        let new = parts.into_iter().map(parse).collect::<Result<Vec<_>, _>>()?;
        if let [Directive::Default(_)] = new.as_slice() {
            return Ok(LogFilter(new));
        }
        let mut merged = self.0.clone();
        for d in new {
            merged.retain(|old| !same_slot(old, &d));
            merged.push(d);
        }
        Ok(LogFilter(merged))
    }
}

fn same_slot(a: &Directive, b: &Directive) -> bool {
    match (a, b) {
        (Directive::Default(_), Directive::Default(_)) => true,
        (Directive::Target(x, _), Directive::Target(y, _)) => x == y,
        _ => false,
    }
}

/// `level`, `target=level` or `target:level`; a target may hold `::` (`ferry::proxy:debug`),
/// so the level is what follows the last single `:`.
fn parse(s: &str) -> Result<Directive, FilterError> {
    let (target, level) = match s.split_once('=') {
        Some((t, l)) => (Some(t), l),
        None => match s.rsplit_once(':') {
            Some((t, l)) if !t.ends_with(':') => (Some(t), l),
            Some(_) => return Err(FilterError::Syntax(s.into())),
            None => (None, s),
        },
    };
    let level = level.trim().to_ascii_lowercase();
    if !LEVELS.contains(&level.as_str()) {
        return Err(if target.is_none() { FilterError::Level(s.into()) } else { FilterError::Level(level) });
    }
    match target.map(str::trim) {
        None => Ok(Directive::Default(level)),
        Some(t) if valid_target(t) => Ok(Directive::Target(t.into(), level)),
        Some(_) => Err(FilterError::Syntax(s.into())),
    }
}

/// A module path or `tracing` target: words joined by `::`, each of letters, digits, `_`
/// and `-`.
fn valid_target(t: &str) -> bool {
    !t.is_empty() && t.split("::").all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(start: &str, req: &str) -> Result<String, FilterError> {
        LogFilter::startup(start).apply(req).map(|f| f.to_string())
    }

    /// Every row of the operator review's `/logging` table, with ztunnel's answer.
    #[test]
    fn the_reviews_table() {
        assert_eq!(applied("info", "debug").as_deref(), Ok("debug"), "a bare level sets the whole level");
        assert_eq!(applied("info,access=debug", "warn").as_deref(), Ok("warn"), "and drops target directives");
        assert!(matches!(applied("info", "xyz"), Err(FilterError::Level(_))));
        assert!(matches!(applied("info", "bogus:::"), Err(FilterError::Syntax(_))));
        assert_eq!(applied("info", "access:debug").as_deref(), Ok("info,access=debug"), "istioctl's syntax merges");
        assert_eq!(applied("info", "access=debug").as_deref(), Ok("info,access=debug"));
        assert_eq!(applied("info", "access:debug,info").as_deref(), Ok("access=debug,info"), "istioctl's help example");
    }

    #[test]
    fn directives_replace_their_own_slot_and_keep_the_rest() {
        assert_eq!(applied("info,access=debug", "access=warn").as_deref(), Ok("info,access=warn"));
        assert_eq!(applied("info,access=debug", "ferry::proxy:trace").as_deref(), Ok("info,access=debug,ferry::proxy=trace"));
        assert_eq!(applied("info,access=debug", "ferry::proxy=TRACE,error").as_deref(), Ok("access=debug,ferry::proxy=trace,error"));
        assert_eq!(applied("info,ferry[conn]=debug", "access=off").as_deref(), Ok("info,ferry[conn]=debug,access=off"));
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in ["a=b=c", "access=", "=debug", "access:", ":debug", "ferry::", "a b=debug", "acc[ess]=debug", "debug,xyz", "5"] {
            assert!(applied("info", bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(applied("info", ""), Err(FilterError::Empty));
        assert_eq!(applied("info", " , "), Err(FilterError::Empty));
    }

    #[test]
    fn every_accepted_filter_is_one_tracing_accepts() {
        for req in ["debug", "access:debug", "access=debug,info", "ferry::proxy::inbound:trace", "OFF"] {
            let f = applied("info,ferry[conn]=debug", req).unwrap();
            assert!(tracing_subscriber::EnvFilter::try_new(&f).is_ok(), "{f}");
        }
    }
}
