//! The operator's wall clock. Everything that compares times (conditions' transition
//! times, holds' lapse, setup retries, upgrade deadlines, schedules and, once backup sets
//! exist, their keep-for durations) reads [`now`] instead of the system clock.
//!
//! In production it *is* the system clock. Tests start the operator with `--clock-start`
//! (the instant the clock shows at `--clock-anchor`, a real instant) and `--clock-speed`,
//! so a night of schedules or an hour-long hold passes in seconds; a test process installs
//! the same [`Clock`] to agree with the operator to the millisecond about what "now" is.
//!
//! Why not `faketime` (LD_PRELOAD): it speeds the monotonic clock too, so every timer,
//! backoff, HTTP timeout and AWS call budget in the process would run faster and the call
//! counts the tests assert would change; it would also move the real time rustls checks
//! certificates against. Here only decisions about the clinic's timeline move; poll
//! intervals and budgets stay real.
//!
//! Times stamped by the API server (a Job's failure, a Pod's end) are real; [`seen_at`]
//! places them on the clock's timeline before they are compared with [`now`].

use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Fastest a clock may run: a day in under 9 s. Faster and a 1 s poll skips whole
/// schedule slots, which no test wants.
pub const MAX_SPEED: f64 = 10_000.0;
/// Slowest: a thousandth of real time (slower is no use, and would overflow waits).
pub const MIN_SPEED: f64 = 0.001;

/// A clock that showed `shows` at the real instant `anchor` and runs `speed` times as fast
/// as real time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock {
    anchor: Timestamp,
    shows: Timestamp,
    speed: f64,
}

impl Clock {
    /// The system clock.
    pub const SYSTEM: Clock = Clock {
        anchor: Timestamp::UNIX_EPOCH,
        shows: Timestamp::UNIX_EPOCH,
        speed: 1.0,
    };

    /// A clock showing `shows` at the real instant `anchor`, running `speed` times as fast.
    pub fn new(anchor: Timestamp, shows: Timestamp, speed: f64) -> Result<Clock, String> {
        if !(speed.is_finite() && (MIN_SPEED..=MAX_SPEED).contains(&speed)) {
            return Err(format!(
                "clock speed {speed} must be from {MIN_SPEED} to {MAX_SPEED}"
            ));
        }
        Ok(Clock {
            anchor,
            shows,
            speed,
        })
    }

    /// Whether this is the system clock (nothing to say in the log).
    pub fn is_system(&self) -> bool {
        self.speed == 1.0 && self.anchor == self.shows
    }

    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// What the clock shows at the real instant `real`.
    pub fn at(&self, real: Timestamp) -> Timestamp {
        if self.is_system() {
            return real;
        }
        let elapsed = real.duration_since(self.anchor).as_secs_f64() * self.speed;
        SignedDuration::try_from_secs_f64(elapsed)
            .ok()
            .and_then(|d| self.shows.checked_add(d).ok())
            .unwrap_or(if elapsed < 0.0 {
                Timestamp::MIN
            } else {
                Timestamp::MAX
            })
    }

    /// The real time it takes this clock to advance by `span`: what to sleep or requeue
    /// for to wake at a time on the clock.
    pub fn real(&self, span: Duration) -> Duration {
        if self.speed == 1.0 {
            return span;
        }
        Duration::try_from_secs_f64(span.as_secs_f64() / self.speed).unwrap_or(Duration::MAX)
    }
}

static CLOCK: OnceLock<Clock> = OnceLock::new();

/// Makes `clock` the process's clock. Once only, before anything reads it: a clock that
/// changed under running reconciles would reorder their decisions.
pub fn install(clock: Clock) -> Result<(), String> {
    let installed = *CLOCK.get_or_init(|| clock);
    if installed == clock {
        Ok(())
    } else {
        Err(format!(
            "the clock is already {installed:?}; it cannot become {clock:?}"
        ))
    }
}

/// The process's clock: the installed one, else the system clock.
pub fn current() -> Clock {
    CLOCK.get().copied().unwrap_or(Clock::SYSTEM)
}

/// Now, on the process's clock.
pub fn now() -> Timestamp {
    current().at(Timestamp::now())
}

/// Now, on the process's clock, for the schedule code (chrono).
pub fn now_utc() -> chrono::DateTime<chrono::Utc> {
    to_utc(now())
}

/// `t` as chrono's UTC instant (the schedule code's type).
pub fn to_utc(t: Timestamp) -> chrono::DateTime<chrono::Utc> {
    let nanos = u32::try_from(t.subsec_nanosecond()).unwrap_or(0);
    chrono::DateTime::from_timestamp(t.as_second(), nanos).unwrap_or_default()
}

/// chrono's UTC instant `t` (the schedule code's) as a [`Timestamp`].
pub fn from_utc(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32).unwrap_or(Timestamp::MIN)
}

/// The real instant `real`, stamped by the API server or another real clock, as the
/// process's clock saw it.
pub fn seen_at(real: Timestamp) -> Timestamp {
    current().at(real)
}

/// The real wait until the clock shows `due`, or `None` once it has.
pub fn real_wait_until(due: Timestamp, now: Timestamp) -> Option<Duration> {
    if due <= now {
        return None;
    }
    Some(current().real(due.duration_since(now).unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    #[test]
    fn the_system_clock_shows_real_time() {
        let t = at("2026-11-30T16:00:00.123456789Z");
        assert_eq!(Clock::SYSTEM.at(t), t);
        assert!(Clock::SYSTEM.is_system());
        assert_eq!(
            Clock::SYSTEM.real(Duration::from_secs(90)),
            Duration::from_secs(90)
        );
    }

    #[test]
    fn a_test_clock_starts_where_told_and_runs_at_its_speed() {
        let clock =
            Clock::new(at("2026-11-30T16:00:00Z"), at("2027-03-14T06:59:00Z"), 60.0).unwrap();
        assert!(!clock.is_system());
        assert_eq!(
            clock.at(at("2026-11-30T16:00:00Z")),
            at("2027-03-14T06:59:00Z")
        );
        // One real second is a minute on the clock; an hour on it is a real minute.
        assert_eq!(
            clock.at(at("2026-11-30T16:00:01Z")),
            at("2027-03-14T07:00:00Z")
        );
        assert_eq!(
            clock.at(at("2026-11-30T15:59:59Z")),
            at("2027-03-14T06:58:00Z")
        );
        assert_eq!(
            clock.real(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn an_offset_clock_at_speed_one_keeps_real_durations() {
        let clock =
            Clock::new(at("2026-11-30T16:00:00Z"), at("2026-12-01T16:00:00Z"), 1.0).unwrap();
        assert!(!clock.is_system());
        assert_eq!(
            clock.at(at("2026-11-30T17:30:00Z")),
            at("2026-12-01T17:30:00Z")
        );
        assert_eq!(clock.real(Duration::from_secs(5)), Duration::from_secs(5));
    }

    #[test]
    fn speeds_that_would_stop_or_reverse_time_are_refused() {
        let t = at("2026-11-30T16:00:00Z");
        for speed in [0.0, -1.0, 1e-300, f64::NAN, f64::INFINITY, MAX_SPEED * 2.0] {
            assert!(Clock::new(t, t, speed).is_err(), "{speed}");
        }
        assert!(Clock::new(t, t, MAX_SPEED).is_ok());
    }

    #[test]
    fn instants_far_outside_the_range_saturate_instead_of_panicking() {
        let clock = Clock::new(Timestamp::MIN, Timestamp::MAX, MAX_SPEED).unwrap();
        assert_eq!(clock.at(at("2026-11-30T16:00:00Z")), Timestamp::MAX);
    }

    #[test]
    fn chrono_and_jiff_agree_on_the_instant() {
        let t = at("2027-03-14T06:59:00.5Z");
        assert_eq!(to_utc(t).to_rfc3339(), "2027-03-14T06:59:00.500+00:00");
    }
}
