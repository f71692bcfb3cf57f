//! Durations and times as operators write and read them: Go-style durations (what Istio's
//! settings use) and RFC 3339 timestamps.

use std::time::{Duration, SystemTime};

/// Go-style durations (`500ms`, `10s`, `5m`, `24h`, `1h30m`) plus days (`30d`); a bare
/// number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(|| format!("{s:?}: missing unit"))?;
        let (num, tail) = rest.split_at(num_end);
        let value: f64 = num.parse().map_err(|_| format!("{s:?}: bad number {num:?}"))?;
        let unit_end = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)")),
        };
        let part = Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{s:?}: {e}"))?;
        // Each part fits; their sum may not (an operator's typo, or hostile input).
        total = total.checked_add(part).ok_or_else(|| format!("{s:?}: too long for a duration"))?;
        rest = next;
    }
    Ok(total)
}

/// `t` as RFC 3339 in UTC, to the second (logs, config dumps, reports).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(dt) => dt.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        Err(_) => secs.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "5x", "s", "1h30", "-5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_too_long_to_hold_are_errors_not_panics() {
        let huge = "10000000000000000000s"; // 1e19 s: fits a Duration once, not twice
        assert!(parse_duration(huge).is_ok());
        let cases =
            [huge.repeat(2), format!("{huge}{}", "5000000000000000000h"), "9".repeat(40) + "d", "1h".repeat(100_000) + &huge.repeat(2)];
        for s in cases {
            let r = std::panic::catch_unwind(|| parse_duration(&s));
            let e = r.unwrap_or_else(|_| panic!("parse_duration panicked on {} bytes", s.len())).expect_err("too long");
            assert!(e.contains("too long") || e.contains("overflow") || e.contains("cannot"), "{e}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(86400)), "1970-01-02T00:00:00Z");
    }
}
