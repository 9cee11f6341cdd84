//! Cron schedules read in an IANA time zone: parsing (with errors that name what is wrong)
//! and the next firing time, correct across daylight-saving changes.
//!
//! The API server checks the shape of a cron string with a pattern; only a parser can tell
//! that `61 * * * *` names no minute or that `Mars/Olympus` is no zone, so controllers call
//! this and turn the error into a condition.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed schedule: a five-field cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid cron expression {expr:?}: {detail}")]
    InvalidCron { expr: String, detail: String },
    #[error("unknown time zone {0:?}: not in the IANA time zone database")]
    UnknownTimeZone(String),
    #[error("cron expression {0:?} never fires (it names a date that does not exist)")]
    NeverFires(String),
}

impl ScheduleError {
    /// Stable reason for conditions and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ScheduleError::InvalidCron { .. } => "InvalidSchedule",
            ScheduleError::UnknownTimeZone(_) => "UnknownTimeZone",
            ScheduleError::NeverFires(_) => "ScheduleNeverFires",
        }
    }
}

impl Schedule {
    /// Parses `expr` (five fields, or a macro such as `@daily`) read in zone `time_zone`.
    pub fn parse(expr: &str, time_zone: &str) -> Result<Schedule, ScheduleError> {
        let tz = Tz::from_str(time_zone)
            .map_err(|_| ScheduleError::UnknownTimeZone(time_zone.to_string()))?;
        // The parser accepts empty list items and empty or zero steps, and then searches
        // for decades (tens of seconds of CPU) for a firing that never comes.
        let malformed = expr
            .split_whitespace()
            .flat_map(|f| f.split(','))
            .any(|item| {
                item.is_empty()
                    || item
                        .split_once('/')
                        .is_some_and(|(_, step)| step.parse::<u32>().map_or(true, |n| n == 0))
            });
        if malformed {
            return Err(ScheduleError::InvalidCron {
                expr: expr.to_string(),
                detail: "empty list item or missing or zero step".into(),
            });
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(expr).map_err(|e| ScheduleError::InvalidCron {
            expr: expr.to_string(),
            detail: e.to_string(),
        })?;
        Ok(Schedule { cron, tz })
    }

    /// The first firing strictly after `after`, or `None` if the expression never fires
    /// again (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// What a schedule asks for at one look: at most one run (never a burst of catch-up
/// runs), the slots missed since the last look, and the next slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The slot to run now: the latest one at or before `now`, when it is no older than
    /// the starting deadline and the schedule is not suspended.
    pub run: Option<DateTime<Utc>>,
    /// Slots that passed without a run: all but the latest, and the latest too when it is
    /// past its deadline. Slots passed while suspended are not missed: nobody wanted them.
    pub missed: u64,
    /// The latest slot at or before `now` (run, missed or suspended): the next look starts
    /// after it.
    pub last: Option<DateTime<Utc>>,
    /// The first slot after `now`.
    pub next: Option<DateTime<Utc>>,
}

/// Most slots counted one by one between two looks (a schedule every minute, down for
/// weeks); beyond it the latest slot is found from a day before now, and the count of
/// missed slots is a lower bound.
pub const MAX_SLOTS_COUNTED: u64 = 100_000;

impl Schedule {
    /// What is due at `now` for a schedule last looked at `since` (its last slot, or when
    /// it was made): a run for the latest slot if within `deadline`, else nothing and a
    /// missed slot.
    pub fn due(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        deadline: chrono::Duration,
        suspended: bool,
    ) -> Due {
        let mut last = None;
        let mut passed = 0u64;
        let mut at = since;
        let mut jumped = false;
        while let Some(slot) = self.next_after(at) {
            if slot > now {
                break;
            }
            if passed >= MAX_SLOTS_COUNTED && !jumped {
                // Too many to count (a frequent schedule, long unattended): the latest
                // slot is found from a day (or the deadline) before now instead.
                jumped = true;
                let reach = now - deadline.max(chrono::Duration::days(1));
                if reach > at {
                    at = reach;
                    continue;
                }
            }
            last = Some(slot);
            passed += 1;
            at = slot;
        }
        let next = self.next_after(last.unwrap_or(since).max(now));
        if suspended {
            return Due {
                run: None,
                missed: 0,
                last,
                next,
            };
        }
        let run = last.filter(|slot| now - *slot <= deadline);
        Due {
            run,
            missed: passed - u64::from(run.is_some()),
            last,
            next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn parses_fields_and_macros() {
        assert!(Schedule::parse("30 2 * * *", "UTC").is_ok());
        assert!(Schedule::parse("@daily", "Europe/Berlin").is_ok());
        assert!(Schedule::parse("0 6 1 * MON-FRI", "America/Argentina/Buenos_Aires").is_ok());
    }

    #[test]
    fn out_of_range_fields_are_refused_with_the_expression() {
        let err = Schedule::parse("61 * * * *", "UTC").unwrap_err();
        assert_eq!(err.reason(), "InvalidSchedule");
        assert!(err.to_string().contains("\"61 * * * *\""), "{err}");
        assert!(Schedule::parse("0 25 * * *", "UTC").is_err());
        assert!(Schedule::parse("0 0 32 * *", "UTC").is_err());
        assert!(Schedule::parse("0 0 * 13 *", "UTC").is_err());
    }

    #[test]
    fn six_field_expressions_are_refused() {
        assert!(Schedule::parse("0 30 2 * * *", "UTC").is_err());
    }

    #[test]
    fn unknown_zones_are_refused() {
        let err = Schedule::parse("@daily", "Mars/Olympus_Mons").unwrap_err();
        assert_eq!(
            err,
            ScheduleError::UnknownTimeZone("Mars/Olympus_Mons".into())
        );
        assert_eq!(err.reason(), "UnknownTimeZone");
    }

    #[test]
    fn next_firing_follows_the_zone_across_dst() {
        // 02:30 local in Berlin: UTC+1 in winter, UTC+2 in summer.
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-10T12:00:00Z")),
            Some(utc("2026-01-11T01:30:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-07-10T12:00:00Z")),
            Some(utc("2026-07-11T00:30:00Z"))
        );
    }

    /// A daily run in Europe/Berlin across the spring gap (2026-03-29: 02:00 CET jumps to
    /// 03:00 CEST, so 02:30 does not exist) and the autumn overlap (2026-10-25: 02:00-03:00
    /// happens twice): the run on the gap day happens at the first instant after the gap,
    /// and the repeated hour runs it once.
    #[test]
    fn daily_runs_across_berlin_dst_gap_and_overlap() {
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let table = [
            // (after, next) in UTC
            ("2026-03-27T12:00:00Z", "2026-03-28T01:30:00Z"), // 02:30 CET
            ("2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z"), // gap: 03:00 CEST
            ("2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"), // 02:30 CEST
            ("2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z"), // first 02:30 (CEST)
            ("2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"), // not the second 02:30 (CET)
            ("2026-10-26T01:30:00Z", "2026-10-27T01:30:00Z"),
        ];
        for (after, next) in table {
            assert_eq!(s.next_after(utc(after)), Some(utc(next)), "after {after}");
        }
        // The run of a daily schedule lands once per local day across both changes.
        let mut t = utc("2026-03-20T00:00:00Z");
        let mut days = std::collections::BTreeSet::new();
        let mut runs = 0;
        while t < utc("2026-11-01T00:00:00Z") {
            t = s.next_after(t).unwrap();
            days.insert(t.with_timezone(&s.tz).date_naive());
            runs += 1;
        }
        assert_eq!(runs, days.len(), "one run per local day");
    }

    #[test]
    fn next_firing_is_strictly_after() {
        let s = Schedule::parse("0 * * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(utc("2026-03-01T10:00:00Z")),
            Some(utc("2026-03-01T11:00:00Z"))
        );
    }
}

#[cfg(test)]
mod hostile_input {
    use super::*;

    /// Strings the API server's pattern lets through (and some it does not) must give an
    /// error or a schedule, never a panic.
    #[test]
    fn odd_expressions_never_panic() {
        let now = Utc::now();
        for expr in [
            "*/0 * * * *",
            "0-59/0 * * * *",
            "99999999999999999999 * * * *",
            "0 0 L * *",
            "0 0 LW * *",
            "0 0 ? * 5#3",
            "0 0 ? * 5#9",
            "0 0 * * 5L",
            "0 0 31 2 *",
            "0 0 30 2 *",
            "59-0 * * * *",
            "- * * * *",
            "/ * * * *",
            ", * * * *",
            "1,,2 * * * *",
            "*/ * * * *",
            "@reboot",
            "",
            "0 0 1-31/7 JAN-DEC MON-SUN",
        ] {
            if let Ok(s) = Schedule::parse(expr, "Pacific/Chatham") {
                let _ = s.next_after(now);
            }
        }
    }

    #[test]
    fn empty_items_and_zero_steps_are_refused() {
        for expr in [
            ", * * * *",
            "1,,2 * * * *",
            "*/ * * * *",
            "*/0 * * * *",
            "0 0 1, * *",
        ] {
            let err = Schedule::parse(expr, "UTC").unwrap_err();
            assert_eq!(err.reason(), "InvalidSchedule", "{expr}");
        }
    }

    #[test]
    fn a_schedule_that_never_fires_has_no_next_time() {
        let s = Schedule::parse("0 0 30 2 *", "UTC").unwrap();
        assert_eq!(s.next_after(Utc::now()), None);
    }
}

#[cfg(test)]
mod due {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn minutes(n: i64) -> chrono::Duration {
        chrono::Duration::minutes(n)
    }

    #[test]
    fn nothing_is_due_before_the_slot_and_one_run_at_it() {
        let s = Schedule::parse("0 3 * * *", "Europe/Berlin").unwrap();
        let since = utc("2026-01-10T12:00:00Z");
        let early = s.due(since, utc("2026-01-11T01:59:00Z"), minutes(30), false);
        assert_eq!(
            early,
            Due {
                run: None,
                missed: 0,
                last: None,
                next: Some(utc("2026-01-11T02:00:00Z")),
            }
        );
        let on_time = s.due(since, utc("2026-01-11T02:00:05Z"), minutes(30), false);
        assert_eq!(on_time.run, Some(utc("2026-01-11T02:00:00Z")));
        assert_eq!(on_time.missed, 0);
        assert_eq!(on_time.next, Some(utc("2026-01-12T02:00:00Z")));
    }

    #[test]
    fn an_operator_down_for_days_runs_the_latest_slot_once_or_misses_it_past_the_deadline() {
        let s = Schedule::parse("0 3 * * *", "Europe/Berlin").unwrap();
        let since = utc("2026-01-10T02:00:00Z");
        // Back 10 minutes after the fourth slot since: three missed, the fourth run.
        let back = s.due(since, utc("2026-01-14T02:10:00Z"), minutes(30), false);
        assert_eq!(back.run, Some(utc("2026-01-14T02:00:00Z")));
        assert_eq!(back.missed, 3);
        // Back an hour after it: past the 30-minute deadline, all four missed.
        let late = s.due(since, utc("2026-01-14T03:00:00Z"), minutes(30), false);
        assert_eq!(late.run, None);
        assert_eq!(late.missed, 4);
        assert_eq!(late.last, Some(utc("2026-01-14T02:00:00Z")));
    }

    #[test]
    fn a_frequent_schedule_long_unattended_still_finds_its_latest_slot() {
        let s = Schedule::parse("* * * * *", "UTC").unwrap();
        // A year of minutes: more than can be counted.
        let due = s.due(
            utc("2025-01-01T00:00:00Z"),
            utc("2026-01-01T00:00:30Z"),
            minutes(5),
            false,
        );
        assert_eq!(due.run, Some(utc("2026-01-01T00:00:00Z")));
        assert_eq!(due.last, due.run);
        assert!(due.missed >= MAX_SLOTS_COUNTED, "{due:?}");
    }

    #[test]
    fn suspended_schedules_run_nothing_and_miss_nothing() {
        let s = Schedule::parse("0 3 * * *", "UTC").unwrap();
        let due = s.due(
            utc("2026-01-10T00:00:00Z"),
            utc("2026-01-13T03:00:00Z"),
            minutes(30),
            true,
        );
        assert_eq!((due.run, due.missed), (None, 0));
        assert_eq!(due.last, Some(utc("2026-01-13T03:00:00Z")));
        assert_eq!(due.next, Some(utc("2026-01-14T03:00:00Z")));
    }

    #[test]
    fn a_slot_in_the_spring_gap_and_the_autumn_repeat_runs_once() {
        // Berlin skips 02:00–03:00 on 29 March 2026 and repeats it on 25 October.
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let spring = s.due(
            utc("2026-03-28T12:00:00Z"),
            utc("2026-03-29T12:00:00Z"),
            chrono::Duration::hours(12),
            false,
        );
        assert_eq!(
            spring.missed + u64::from(spring.run.is_some()),
            1,
            "{spring:?}"
        );
        let autumn = s.due(
            utc("2026-10-24T12:00:00Z"),
            utc("2026-10-25T12:00:00Z"),
            chrono::Duration::hours(12),
            false,
        );
        assert_eq!(
            autumn.missed + u64::from(autumn.run.is_some()),
            1,
            "{autumn:?}"
        );
    }
}
