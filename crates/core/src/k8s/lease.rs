//! Leader election on a `coordination.k8s.io/v1` Lease, the decision only (sans-IO): given the
//! Lease as read, the time and this replica's identity, what to do next. The caller does the
//! API calls and writes with the read object's `resourceVersion`, so a concurrent writer makes
//! the write fail (409) instead of both winning.
//!
//! Invariants: a Lease held by another identity is taken over only once its own
//! `renewTime + leaseDurationSeconds` has passed by our clock (a renewal in our future counts
//! as fresh, never as expired); leadership is kept only while the last successful write is
//! younger than the lease duration, measured from before that write was sent, so a replica
//! stops writing no later than the moment another may take the Lease.

use std::time::{Duration, Instant, SystemTime};

/// The fields of a Lease the decision reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub holder: Option<String>,
    pub renewed: Option<SystemTime>,
    /// `leaseDurationSeconds` as the holder wrote it (the holder's promise, not ours).
    pub duration: Option<Duration>,
}

/// What to do with the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// There is none: create it, holding it.
    Create,
    /// We hold it: write a new `renewTime`.
    Renew,
    /// Nobody holds it, or its holder let it expire: write ourselves as holder.
    TakeOver { from: Option<String> },
    /// Another holder's Lease is in force until `until`: write nothing.
    Wait { holder: String, until: SystemTime },
}

/// Durations of the election, checked once at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// How long a written Lease is in force.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew: Duration,
    /// How often a non-holder (or a holder whose renewal failed) tries again.
    pub retry: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error(
        "the lease renew period ({renew:?}) must be shorter than the lease duration ({duration:?}), or the lease expires between renewals"
    )]
    RenewNotShorter { renew: Duration, duration: Duration },
    #[error("the lease retry period must be non-zero and shorter than the renew period ({renew:?}), got {retry:?}")]
    RetryNotShorter { retry: Duration, renew: Duration },
    #[error("the lease duration must be whole seconds from 1s to 2^31s (leaseDurationSeconds), got {0:?}")]
    Duration(Duration),
}

impl Timings {
    pub fn new(duration: Duration, renew: Duration, retry: Duration) -> Result<Timings, LeaseError> {
        if duration.subsec_nanos() != 0 || duration.as_secs() == 0 || duration.as_secs() > i32::MAX as u64 {
            return Err(LeaseError::Duration(duration));
        }
        if renew >= duration {
            return Err(LeaseError::RenewNotShorter { renew, duration });
        }
        if retry.is_zero() || retry >= renew {
            return Err(LeaseError::RetryNotShorter { retry, renew });
        }
        Ok(Timings { duration, renew, retry })
    }

    /// `leaseDurationSeconds` to write.
    pub fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// The action for `lease` (None: there is none) seen at `now` by `me`; `fallback` is the
/// duration assumed when the holder wrote none.
pub fn decide(lease: Option<&Observed>, now: SystemTime, me: &str, fallback: Duration) -> Action {
    let Some(lease) = lease else { return Action::Create };
    let holder = lease.holder.clone().filter(|h| !h.is_empty());
    let Some(holder) = holder else { return Action::TakeOver { from: None } };
    if holder == me {
        return Action::Renew;
    }
    let Some(renewed) = lease.renewed else { return Action::TakeOver { from: Some(holder) } };
    let until = renewed + lease.duration.unwrap_or(fallback);
    if now >= until {
        Action::TakeOver { from: Some(holder) }
    } else {
        Action::Wait { holder, until }
    }
}

/// Whether a replica whose last successful write was sent at `written` still leads at `now`.
pub fn still_leading(written: Option<Instant>, now: Instant, duration: Duration) -> bool {
    written.is_some_and(|w| now.saturating_duration_since(w) < duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn held(holder: &str, renewed: Option<u64>, duration: Option<u64>) -> Observed {
        Observed { holder: Some(holder.into()), renewed: renewed.map(at), duration: duration.map(Duration::from_secs) }
    }

    #[test]
    fn decide_table() {
        let other = |s: &str| Some(s.to_string());
        #[rustfmt::skip]
        let cases: Vec<(&str, Option<Observed>, u64, Action)> = vec![
            ("absent", None, 0, Action::Create),
            ("ours, fresh", Some(held("me", Some(0), Some(15))), 5, Action::Renew),
            ("ours, expired (we renew, not re-acquire)", Some(held("me", Some(0), Some(15))), 100, Action::Renew),
            ("no holder", Some(Observed { renewed: Some(at(0)), ..Default::default() }), 1, Action::TakeOver { from: None }),
            ("empty holder (released)", Some(held("", Some(0), Some(15))), 1, Action::TakeOver { from: None }),
            ("other, fresh", Some(held("b", Some(0), Some(15))), 14, Action::Wait { holder: "b".into(), until: at(15) }),
            ("other, exactly expired", Some(held("b", Some(0), Some(15))), 15, Action::TakeOver { from: other("b") }),
            ("other, expired", Some(held("b", Some(0), Some(15))), 40, Action::TakeOver { from: other("b") }),
            ("other's own duration counts", Some(held("b", Some(0), Some(60))), 40, Action::Wait { holder: "b".into(), until: at(60) }),
            ("other without a duration: ours", Some(held("b", Some(0), None)), 14, Action::Wait { holder: "b".into(), until: at(15) }),
            ("other never renewed", Some(held("b", None, Some(15))), 0, Action::TakeOver { from: other("b") }),
            ("other renewed in our future (skew)", Some(held("b", Some(30), Some(15))), 0, Action::Wait { holder: "b".into(), until: at(45) }),
        ];
        for (what, lease, now, want) in cases {
            assert_eq!(decide(lease.as_ref(), at(now), "me", D), want, "{what}");
        }
    }

    #[test]
    fn leadership_lapses_a_duration_after_the_last_write() {
        let t0 = Instant::now();
        assert!(!still_leading(None, t0, D), "never written");
        assert!(still_leading(Some(t0), t0, D));
        assert!(still_leading(Some(t0), t0 + Duration::from_secs(14), D));
        assert!(!still_leading(Some(t0), t0 + D, D), "another may take it now");
        assert!(still_leading(Some(t0 + D), t0, D), "a write after now (clock order) still leads");
    }

    #[test]
    fn timings_are_checked() {
        let s = Duration::from_secs;
        assert_eq!(Timings::new(s(15), s(10), s(2)).unwrap().duration_seconds(), 15);
        assert_eq!(Timings::new(s(15), s(15), s(2)), Err(LeaseError::RenewNotShorter { renew: s(15), duration: s(15) }));
        assert_eq!(Timings::new(s(15), s(10), s(10)), Err(LeaseError::RetryNotShorter { retry: s(10), renew: s(10) }));
        assert_eq!(Timings::new(s(15), s(10), s(0)), Err(LeaseError::RetryNotShorter { retry: s(0), renew: s(10) }));
        assert_eq!(
            Timings::new(Duration::from_millis(1500), s(1), Duration::from_millis(200)),
            Err(LeaseError::Duration(Duration::from_millis(1500)))
        );
        assert_eq!(Timings::new(s(0), s(0), s(0)), Err(LeaseError::Duration(s(0))));
    }
}
