//! Grandfather-father-son retention of a clinic's completed sets (pure).
//!
//! Periods are calendar periods in the policy's time zone: days, ISO weeks (Monday
//! first), months and years. For each rule with a count N above 0, the newest set of each
//! of the last N periods, the current one included, is kept; a period without a set keeps
//! nothing and still counts. With `maxAgeDays`, no rule keeps a set older than that. Never
//! expired, whatever the rules say: the newest completed set, a set with the hold label,
//! a set a restore uses.
//!
//! Calendar periods make the expiry of a kept set knowable now: a set kept as the newest
//! of day D by `keepDaily: N` is kept until local midnight starting day D+N (for the
//! current period, a newer set in it takes its place sooner). That instant is
//! `status.expiresAt`: the latest release among its rules, the earliest of that and its
//! `maxAgeDays`.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use crate::api::backup_policy::Retention;
use crate::conditions::Verdict;

/// A completed set, as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub completed: DateTime<Utc>,
    /// Carries the hold label.
    pub held: bool,
    /// A restore uses it.
    pub in_use: bool,
}

/// Why a set stays, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// `daily`, `weekly`, `monthly`, `yearly`, `newest`, `held`, `restore`.
    pub reasons: Vec<&'static str>,
    /// When retention will expire it as things stand; none while it is the newest, held or
    /// in use.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetentionPlan {
    pub kept: BTreeMap<String, Kept>,
    /// Sets to prune, oldest first.
    pub expired: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    fn reason(self) -> &'static str {
        match self {
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
            Period::Year => "yearly",
        }
    }

    /// The index of the period holding `date` (consecutive periods, consecutive indexes).
    fn index(self, date: NaiveDate) -> i64 {
        match self {
            Period::Day => i64::from(date.num_days_from_ce()),
            // Mondays are seven days apart: the ISO week's Monday, in weeks.
            Period::Week => {
                let monday =
                    date - Duration::days(i64::from(date.weekday().num_days_from_monday()));
                (i64::from(monday.num_days_from_ce()) - monday_offset()).div_euclid(7)
            }
            Period::Month => i64::from(date.year()) * 12 + i64::from(date.month0()),
            Period::Year => i64::from(date.year()),
        }
    }

    /// The first day of the period of index `index`.
    fn first_day(self, index: i64) -> Option<NaiveDate> {
        match self {
            Period::Day => NaiveDate::from_num_days_from_ce_opt(i32::try_from(index).ok()?),
            Period::Week => NaiveDate::from_num_days_from_ce_opt(
                i32::try_from(index * 7 + monday_offset()).ok()?,
            ),
            Period::Month => NaiveDate::from_ymd_opt(
                i32::try_from(index.div_euclid(12)).ok()?,
                u32::try_from(index.rem_euclid(12)).ok()? + 1,
                1,
            ),
            Period::Year => NaiveDate::from_ymd_opt(i32::try_from(index).ok()?, 1, 1),
        }
    }
}

/// What every Monday's day number is, modulo seven (1 January 2024 was a Monday).
fn monday_offset() -> i64 {
    let monday = NaiveDate::from_ymd_opt(2024, 1, 1).expect("a date");
    i64::from(monday.num_days_from_ce()).rem_euclid(7)
}

/// Local midnight starting `date` in `tz`; where a clock change skips midnight, the first
/// instant of the day that exists.
fn start_of(date: NaiveDate, tz: Tz) -> Option<DateTime<Utc>> {
    let midnight = date.and_hms_opt(0, 0, 0)?;
    (0..=3)
        .filter_map(|hours| {
            tz.from_local_datetime(&(midnight + Duration::hours(hours)))
                .earliest()
        })
        .next()
        .map(|t| t.with_timezone(&Utc))
}

/// Which sets stay and which go, as of `now`.
pub fn plan(
    candidates: &[Candidate],
    retention: &Retention,
    tz: Tz,
    now: DateTime<Utc>,
) -> RetentionPlan {
    let mut sets: Vec<&Candidate> = candidates.iter().collect();
    // Newest first; a tie goes to the name, so the plan never depends on input order.
    sets.sort_by(|a, b| b.completed.cmp(&a.completed).then(b.name.cmp(&a.name)));
    let today = now.with_timezone(&tz).date_naive();
    let too_old = retention
        .max_age_days
        .map(|days| now - Duration::days(i64::from(days)));

    let mut kept: BTreeMap<String, Kept> = BTreeMap::new();
    let rules = [
        (Period::Day, retention.keep_daily),
        (Period::Week, retention.keep_weekly),
        (Period::Month, retention.keep_monthly),
        (Period::Year, retention.keep_yearly),
    ];
    for (period, count) in rules {
        if count <= 0 {
            continue;
        }
        let count = i64::from(count);
        let oldest = period.index(today) - (count - 1);
        let mut taken = std::collections::BTreeSet::new();
        for set in &sets {
            let index = period.index(set.completed.with_timezone(&tz).date_naive());
            if index < oldest || !taken.insert(index) {
                continue;
            }
            if too_old.is_some_and(|cutoff| set.completed < cutoff) {
                continue;
            }
            let until = period
                .first_day(index + count)
                .and_then(|day| start_of(day, tz));
            let entry = kept.entry(set.name.clone()).or_insert(Kept {
                reasons: Vec::new(),
                expires_at: None,
            });
            entry.reasons.push(period.reason());
            entry.expires_at = entry.expires_at.max(until);
        }
    }
    for set in &sets {
        if let (Some(cutoff), Some(entry)) = (too_old, kept.get_mut(&set.name)) {
            let aged = set.completed + (now - cutoff);
            entry.expires_at = entry.expires_at.map(|t| t.min(aged));
        }
    }
    let mut always = |name: &str, reason: &'static str| {
        let entry = kept.entry(name.to_string()).or_insert(Kept {
            reasons: Vec::new(),
            expires_at: None,
        });
        entry.reasons.push(reason);
        entry.expires_at = None;
    };
    if let Some(newest) = sets.first() {
        always(&newest.name, "newest");
    }
    for set in &sets {
        if set.held {
            always(&set.name, "held");
        }
        if set.in_use {
            always(&set.name, "restore");
        }
    }
    let expired = sets
        .iter()
        .rev()
        .filter(|s| !kept.contains_key(&s.name))
        .map(|s| s.name.clone())
        .collect();
    RetentionPlan { kept, expired }
}

/// The condition retention's verdict on a set is written as.
pub const RETAINED: &str = "Retained";

/// Retention's verdict on one set, as its status says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: Verdict,
    /// `status.expiresAt`: when a kept set goes as things stand; `now` for one that goes.
    pub expires_at: Option<DateTime<Utc>>,
    /// It goes now.
    pub expire: bool,
}

impl Judgement {
    fn expired(now: DateTime<Utc>, message: &str) -> Self {
        Judgement {
            verdict: Verdict::falsy(RETAINED, "Expired", message),
            expires_at: Some(now),
            expire: true,
        }
    }

    /// Whether `recorded` (a set's `Retained` condition and `expiresAt`) says the same.
    /// The instant an expired set was found so is not compared: it differs at every look.
    fn matches(&self, recorded: &Recorded) -> bool {
        let Some(verdict) = &recorded.verdict else {
            return false;
        };
        let same_verdict = verdict.status == self.verdict.status
            && verdict.reason == self.verdict.reason
            && verdict.message == self.verdict.message;
        let seconds = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp());
        same_verdict && (self.expire || seconds(recorded.expires_at) == seconds(self.expires_at))
    }
}

/// The verdict on the completed set `name`, from its policy's plan; `None` when the plan
/// does not judge it (it is not among the candidates).
pub fn judge_completed(plan: &RetentionPlan, name: &str, now: DateTime<Utc>) -> Option<Judgement> {
    if let Some(kept) = plan.kept.get(name) {
        let until = kept.expires_at.map_or("while it is so".to_string(), |t| {
            format!(
                "until {}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        });
        return Some(Judgement {
            verdict: Verdict::truthy(
                RETAINED,
                "Kept",
                format!("kept ({}) {until}", kept.reasons.join(", ")),
            ),
            expires_at: kept.expires_at,
            expire: false,
        });
    }
    plan.expired
        .iter()
        .any(|n| n == name)
        .then(|| Judgement::expired(now, "no rule of the policy's retention keeps it any more"))
}

/// The verdict on a failed set made at `created`: it is kept for inspection until a later
/// set of its policy has completed; then it goes, with whatever part of it was taken.
/// `None` while it is kept (no rule speaks for it).
pub fn judge_failed(
    candidates: &[Candidate],
    created: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<Judgement> {
    candidates.iter().any(|c| c.completed > created).then(|| {
        Judgement::expired(
            now,
            "a later set of its policy completed: a failed set is kept only until then",
        )
    })
}

/// Another finished set of the policy, with retention's verdict as its status records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub name: String,
    /// When it was made (a failed set is judged by it).
    pub created: DateTime<Utc>,
    pub failed: bool,
    /// Its `Retained` condition, if it has one.
    pub verdict: Option<RecordedVerdict>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedVerdict {
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// The sets among `others` whose recorded verdict is not what retention now says of them
/// (`plan` judged the policy's completed sets as of `now`): only these need another look
/// when a set completes, not every set of the policy.
pub fn out_of_date(
    others: &[Recorded],
    candidates: &[Candidate],
    plan: &RetentionPlan,
    now: DateTime<Utc>,
) -> Vec<String> {
    others
        .iter()
        .filter(|set| {
            let judged = if set.failed {
                judge_failed(candidates, set.created, now)
            } else {
                judge_completed(plan, &set.name, now)
            };
            match judged {
                Some(judged) => !judged.matches(set),
                // Nothing to say of it: a verdict it still shows is out of date.
                None => set.verdict.is_some(),
            }
        })
        .map(|set| set.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW_YORK: Tz = chrono_tz::America::New_York;

    fn retention(daily: i32, weekly: i32, monthly: i32, yearly: i32) -> Retention {
        Retention {
            keep_daily: daily,
            keep_weekly: weekly,
            keep_monthly: monthly,
            keep_yearly: yearly,
            max_age_days: None,
        }
    }

    fn local(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        NEW_YORK
            .with_ymd_and_hms(y, m, d, h, min, 0)
            .single()
            .unwrap()
            .with_timezone(&Utc)
    }

    fn set(name: &str, completed: DateTime<Utc>) -> Candidate {
        Candidate {
            name: name.into(),
            completed,
            held: false,
            in_use: false,
        }
    }

    /// A set every day of 2024 (a leap year, with New York's two clock changes) at 03:00
    /// local, named by its date.
    fn a_year_of_dailies() -> Vec<Candidate> {
        let mut sets = Vec::new();
        let mut day = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
        while day.year() == 2024 {
            sets.push(set(
                &day.format("%m-%d").to_string(),
                local(2024, day.month(), day.day(), 3, 0),
            ));
            day += Duration::days(1);
        }
        sets
    }

    #[test]
    fn a_year_of_daily_sets_keeps_days_weeks_months_and_the_year() {
        let sets = a_year_of_dailies();
        assert_eq!(sets.len(), 366);
        let plan = plan(
            &sets,
            &retention(7, 4, 12, 1),
            NEW_YORK,
            local(2024, 12, 31, 12, 0),
        );
        let kept: Vec<&str> = plan.kept.keys().map(String::as_str).collect();
        assert_eq!(
            kept,
            [
                // The newest of each month, February's on the 29th.
                "01-31", "02-29", "03-31", "04-30", "05-31", "06-30", "07-31", "08-31", "09-30",
                "10-31", "11-30",
                // ISO weeks 50 and 51 of 2024 end on Sundays 15 and 22 December; week 52
                // and week 1 of 2025 (from Monday 30 December) are in the last 7 days.
                "12-15", "12-22", // The last seven days.
                "12-25", "12-26", "12-27", "12-28", "12-29", "12-30", "12-31",
            ]
        );
        assert_eq!(plan.expired.len(), 366 - kept.len());
        assert_eq!(plan.expired.first().map(String::as_str), Some("01-01"));
        let newest = &plan.kept["12-31"];
        assert_eq!(
            newest.reasons,
            ["daily", "weekly", "monthly", "yearly", "newest"]
        );
        assert_eq!(newest.expires_at, None);
        // December 29th: the newest of its day and of ISO week 52; it goes once both have
        // passed out of the windows: week 52 is the second of four, so in three weeks.
        let sunday = &plan.kept["12-29"];
        assert_eq!(sunday.reasons, ["daily", "weekly"]);
        assert_eq!(sunday.expires_at, Some(local(2025, 1, 20, 0, 0)));
        // A month's newest stays twelve months from its month.
        assert_eq!(plan.kept["02-29"].expires_at, Some(local(2025, 2, 1, 0, 0)));
    }

    /// The operator's way through a year: each set, when it completes or its timer
    /// fires, judges itself and wakes only the sets `out_of_date` names; an expired set
    /// is pruned. After every day, every set's recorded verdict is what judging all of
    /// them afresh would say, and each completion woke a handful of sets, not the year.
    #[test]
    fn judging_only_the_sets_out_of_date_keeps_every_verdict_current() {
        use std::collections::{BTreeMap, BTreeSet};
        let rules = retention(7, 4, 12, 1);
        let mut completed: Vec<Candidate> = Vec::new();
        let mut recorded: BTreeMap<String, Recorded> = BTreeMap::new();
        let mut most_woken = 0;
        let mut woken_total = 0;
        // One look at `name`: its verdict recorded (or it is pruned), and the sets it finds
        // out of date returned.
        let look = |name: &str,
                    completed: &mut Vec<Candidate>,
                    recorded: &mut BTreeMap<String, Recorded>,
                    now: DateTime<Utc>| {
            let judged = plan(completed, &rules, NEW_YORK, now);
            let others: Vec<Recorded> = recorded
                .values()
                .filter(|r| r.name != name)
                .cloned()
                .collect();
            let stale = out_of_date(&others, completed, &judged, now);
            let Some(judgement) = judge_completed(&judged, name, now) else {
                return stale;
            };
            if judgement.expire {
                completed.retain(|c| c.name != name);
                recorded.remove(name);
            } else if let Some(r) = recorded.get_mut(name) {
                r.verdict = Some(RecordedVerdict {
                    status: judgement.verdict.status,
                    reason: judgement.verdict.reason.to_string(),
                    message: judgement.verdict.message.clone(),
                });
                r.expires_at = judgement.expires_at;
            }
            stale
        };
        for new in a_year_of_dailies() {
            let now = new.completed + Duration::minutes(1);
            // Timers first: sets whose expiry has come look again.
            let due: Vec<String> = recorded
                .values()
                .filter(|r| r.expires_at.is_some_and(|t| t <= now))
                .map(|r| r.name.clone())
                .collect();
            let mut queue: BTreeSet<String> = due.into_iter().collect();
            completed.push(new.clone());
            recorded.insert(
                new.name.clone(),
                Recorded {
                    name: new.name.clone(),
                    created: new.completed,
                    failed: false,
                    verdict: None,
                    expires_at: None,
                },
            );
            let mut woken = BTreeSet::new();
            queue.insert(new.name.clone());
            while let Some(name) = queue.pop_first() {
                for stale in look(&name, &mut completed, &mut recorded, now) {
                    if stale != new.name {
                        woken.insert(stale.clone());
                    }
                    queue.insert(stale);
                }
            }
            most_woken = most_woken.max(woken.len());
            woken_total += woken.len();
            let judged = plan(&completed, &rules, NEW_YORK, now);
            assert!(
                judged.expired.is_empty(),
                "after {}: {:?}",
                new.name,
                judged.expired
            );
            for r in recorded.values() {
                let fresh = judge_completed(&judged, &r.name, now).unwrap();
                let verdict = r.verdict.as_ref().unwrap();
                assert_eq!(
                    (verdict.message.as_str(), r.expires_at),
                    (fresh.verdict.message.as_str(), fresh.expires_at),
                    "{} after {}",
                    r.name,
                    new.name
                );
            }
        }
        // What stays at the year's end is what one plan of all of them keeps.
        let all = plan(
            &a_year_of_dailies(),
            &rules,
            NEW_YORK,
            local(2024, 12, 31, 3, 1),
        );
        assert!(recorded.keys().eq(all.kept.keys()), "{:?}", recorded.keys());
        // Each completion changes the verdict of the set it supersedes (the previous
        // newest, as the newest of its day, week, month or year) and rarely more.
        assert!(most_woken <= 2, "{most_woken}");
        assert!(woken_total <= 2 * 366, "{woken_total}");
    }

    #[test]
    fn periods_are_the_policys_local_calendar() {
        // 23:30 on 31 January in New York is 1 February in UTC: still January's newest.
        let sets = [
            set("jan-late", local(2024, 1, 31, 23, 30)),
            set("jan-early", local(2024, 1, 31, 1, 0)),
            set("feb", local(2024, 2, 1, 0, 30)),
        ];
        let plan = plan(
            &sets,
            &retention(0, 0, 12, 0),
            NEW_YORK,
            local(2024, 2, 2, 12, 0),
        );
        assert!(plan.kept.contains_key("jan-late"), "{plan:?}");
        assert_eq!(plan.expired, ["jan-early"]);
    }

    #[test]
    fn a_day_kept_across_the_spring_clock_change_ends_at_local_midnight() {
        // Kept two days: from 9 March, through the change on the 10th, to midnight
        // starting the 11th, which is 04:00 UTC (EDT), not 05:00.
        let sets = [
            set("sat", local(2024, 3, 9, 3, 0)),
            set("sat-earlier", local(2024, 3, 9, 1, 0)),
            set("newer", local(2024, 3, 10, 12, 0)),
        ];
        let plan = plan(
            &sets,
            &retention(2, 0, 0, 0),
            NEW_YORK,
            local(2024, 3, 10, 13, 0),
        );
        assert_eq!(
            plan.kept["sat"].expires_at,
            Some(Utc.with_ymd_and_hms(2024, 3, 11, 4, 0, 0).unwrap())
        );
        assert_eq!(plan.expired, ["sat-earlier"]);
    }

    #[test]
    fn a_day_whose_midnight_a_clock_change_skips_starts_at_its_first_instant() {
        // Chile moves its clocks from 00:00 to 01:00 on 8 September 2024.
        let santiago = chrono_tz::America::Santiago;
        let day = NaiveDate::from_ymd_opt(2024, 9, 8).unwrap();
        assert_eq!(
            start_of(day, santiago),
            Some(Utc.with_ymd_and_hms(2024, 9, 8, 4, 0, 0).unwrap())
        );
        // And in New York's autumn change (3 November), midnight is there once, in EDT.
        let day = NaiveDate::from_ymd_opt(2024, 11, 3).unwrap();
        assert_eq!(
            start_of(day, NEW_YORK),
            Some(Utc.with_ymd_and_hms(2024, 11, 3, 4, 0, 0).unwrap())
        );
    }

    #[test]
    fn max_age_wins_over_counts_but_never_over_the_newest_a_hold_or_a_restore() {
        let mut r = retention(0, 0, 12, 0);
        r.max_age_days = Some(90);
        let now = local(2024, 12, 31, 12, 0);
        let sets = a_year_of_dailies();
        let plan = plan(&sets, &r, NEW_YORK, now);
        let kept: Vec<&str> = plan.kept.keys().map(String::as_str).collect();
        // The months' newest within 90 days of now: September's is 92 days old.
        assert_eq!(kept, ["10-31", "11-30", "12-31"]);
        assert_eq!(
            plan.kept["11-30"].expires_at,
            Some(local(2024, 11, 30, 3, 0) + Duration::days(90))
        );
        // Backups stopped long ago: the newest stays, as do a held one and one in use.
        let mut old = vec![
            set("last", local(2024, 1, 10, 3, 0)),
            set("held", local(2024, 1, 5, 3, 0)),
            set("restoring", local(2024, 1, 4, 3, 0)),
            set("plain", local(2024, 1, 3, 3, 0)),
        ];
        old[1].held = true;
        old[2].in_use = true;
        let plan = super::plan(&old, &r, NEW_YORK, now);
        assert_eq!(plan.expired, ["plain"]);
        assert_eq!(plan.kept["last"].reasons, ["newest"]);
        assert_eq!(plan.kept["held"].reasons, ["held"]);
        assert_eq!(plan.kept["restoring"].reasons, ["restore"]);
        assert!(plan.kept.values().all(|k| k.expires_at.is_none()));
    }

    #[test]
    fn an_empty_period_still_counts_and_input_order_does_not_matter() {
        // Daily 3: today, yesterday (no set) and the day before.
        let sets = [
            set("today", local(2024, 6, 10, 3, 0)),
            set("two-days-ago", local(2024, 6, 8, 3, 0)),
            set("three-days-ago", local(2024, 6, 7, 3, 0)),
        ];
        let now = local(2024, 6, 10, 12, 0);
        let forward = plan(&sets, &retention(3, 0, 0, 0), NEW_YORK, now);
        assert_eq!(forward.expired, ["three-days-ago"]);
        let mut reversed = sets.to_vec();
        reversed.reverse();
        assert_eq!(
            plan(&reversed, &retention(3, 0, 0, 0), NEW_YORK, now),
            forward
        );
    }
}
