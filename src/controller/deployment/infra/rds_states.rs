//! RDS states that need the operator to act rather than wait, decided purely: a
//! `storage-full` instance gets room, storage growth follows RDS's least step, and a
//! parameter change that waits for a reboot gets one (at once with `applyChanges:
//! Immediately`, else in the maintenance window, on the operator's clock).
//!
//! RDS refuses a storage change of less than 10 % (and one within about six hours of the
//! last, while the last is being optimised, which RDS reports as the `storage-optimization`
//! state: such a change is deferred until that ends, not sent to be refused).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::civil::Weekday;
use k8s_openapi::jiff::tz::TimeZone;

use crate::api::deployment::{ApplyChanges, DatabaseSpec};
use crate::aws::rds::DbInstance;

/// The most storage an RDS MySQL instance can have.
pub const STORAGE_LIMIT_GIB: i32 = 65536;

/// The least storage to ask for to get at least `wanted` from `current`: RDS grows storage
/// by at least 10 % at a time, so a smaller step is rounded up to that.
pub fn storage_step(current: i32, wanted: i32) -> i32 {
    let least = current.saturating_add((current + 9) / 10);
    wanted.max(least).min(STORAGE_LIMIT_GIB)
}

/// What a `storage-full` instance gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageFull {
    /// Grow to this many GiB, at once.
    Grow(i32),
    /// Growth to this size is already pending.
    Pending(i32),
    /// The autoscaling ceiling (`spec.database.maxAllocatedStorageGiB`, or RDS's limit)
    /// leaves no room for RDS's least step: a person must raise it or free space.
    AtCeiling(i32),
}

/// The growth of a full instance: RDS's least step (or the spec's size, if larger), within
/// the spec's autoscaling ceiling.
pub fn storage_full(spec: &DatabaseSpec, db: &DbInstance) -> StorageFull {
    if let Some(pending) = db
        .pending
        .allocated_storage
        .filter(|p| *p > db.allocated_storage)
    {
        return StorageFull::Pending(pending);
    }
    let ceiling = spec
        .max_allocated_storage_gi_b
        .unwrap_or(STORAGE_LIMIT_GIB)
        .min(STORAGE_LIMIT_GIB);
    let target = storage_step(db.allocated_storage, spec.allocated_storage_gi_b);
    if target <= db.allocated_storage || target > ceiling {
        StorageFull::AtCeiling(ceiling)
    } else {
        StorageFull::Grow(target)
    }
}

/// A weekly window in UTC, `ddd:hh:mm-ddd:hh:mm` (RDS's `PreferredMaintenanceWindow`), as
/// minutes since Monday 00:00; `end` may be before `start` (the window spans the week's
/// end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeeklyWindow {
    start: u32,
    end: u32,
}

const MINUTES_PER_WEEK: u32 = 7 * 24 * 60;

fn minute_of_week(text: &str) -> Option<u32> {
    let mut parts = text.split(':');
    let day = match parts.next()?.to_ascii_lowercase().as_str() {
        "mon" => 0,
        "tue" => 1,
        "wed" => 2,
        "thu" => 3,
        "fri" => 4,
        "sat" => 5,
        "sun" => 6,
        _ => return None,
    };
    let hour: u32 = parts.next()?.parse().ok().filter(|h| *h < 24)?;
    let minute: u32 = parts.next()?.parse().ok().filter(|m| *m < 60)?;
    parts
        .next()
        .is_none()
        .then_some(day * 24 * 60 + hour * 60 + minute)
}

impl WeeklyWindow {
    pub fn parse(text: &str) -> Option<WeeklyWindow> {
        let (start, end) = text.split_once('-')?;
        Some(WeeklyWindow {
            start: minute_of_week(start)?,
            end: minute_of_week(end)?,
        })
    }

    fn now(now: Timestamp) -> u32 {
        let t = now.to_zoned(TimeZone::UTC);
        let day = match t.weekday() {
            Weekday::Monday => 0,
            Weekday::Tuesday => 1,
            Weekday::Wednesday => 2,
            Weekday::Thursday => 3,
            Weekday::Friday => 4,
            Weekday::Saturday => 5,
            Weekday::Sunday => 6,
        };
        day * 24 * 60 + t.hour() as u32 * 60 + t.minute() as u32
    }

    /// Whether `now` is inside the window.
    pub fn contains(&self, now: Timestamp) -> bool {
        let m = Self::now(now);
        if self.start <= self.end {
            (self.start..self.end).contains(&m)
        } else {
            m >= self.start || m < self.end
        }
    }

    /// How long from `now` until the window next opens (zero inside it).
    pub fn until_open(&self, now: Timestamp) -> Duration {
        if self.contains(now) {
            return Duration::ZERO;
        }
        let m = Self::now(now);
        let minutes = (self.start + MINUTES_PER_WEEK - m) % MINUTES_PER_WEEK;
        let seconds = now.to_zoned(TimeZone::UTC).second() as u64;
        Duration::from_secs((minutes as u64 * 60).saturating_sub(seconds))
    }
}

/// What to do about a parameter change that waits for a reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reboot {
    /// Nothing waits for a reboot.
    NotNeeded,
    /// Reboot now: `applyChanges: Immediately`, or inside the maintenance window.
    Now { why: String },
    /// Wait for the maintenance window, which opens after this.
    InWindow { window: String, opens_in: Duration },
}

/// Whether the instance's pending parameter change gets its reboot now.
pub fn reboot(spec: &DatabaseSpec, db: &DbInstance, now: Timestamp) -> Reboot {
    if db.parameter_apply_status.as_deref() != Some("pending-reboot") {
        return Reboot::NotNeeded;
    }
    if spec.apply_changes == ApplyChanges::Immediately {
        return Reboot::Now {
            why: "spec.database.applyChanges is Immediately".into(),
        };
    }
    let window = db
        .maintenance_window
        .clone()
        .unwrap_or_else(|| spec.maintenance_window.clone());
    match WeeklyWindow::parse(&window) {
        Some(w) if w.contains(now) => Reboot::Now {
            why: format!("inside the maintenance window {window}"),
        },
        Some(w) => Reboot::InWindow {
            opens_in: w.until_open(now),
            window,
        },
        // RDS always reports a window; without one, nothing says when.
        None => Reboot::InWindow {
            window,
            opens_in: Duration::from_secs(3600),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::rds::Pending;

    fn spec(yaml: &str) -> DatabaseSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn storage_grows_by_at_least_rds_least_step() {
        assert_eq!(storage_step(100, 105), 110, "rounded up to +10 %");
        assert_eq!(storage_step(100, 200), 200);
        assert_eq!(storage_step(20, 21), 22);
        assert_eq!(storage_step(25, 26), 28, "10 % of 25 rounds up to 3");
        assert_eq!(storage_step(65000, 65001), STORAGE_LIMIT_GIB);
    }

    #[test]
    fn a_full_instance_grows_within_its_ceiling() {
        let db = |allocated, pending| DbInstance {
            allocated_storage: allocated,
            pending: Pending {
                allocated_storage: pending,
                ..Pending::default()
            },
            ..DbInstance::default()
        };
        let no_ceiling = spec("{}");
        assert_eq!(
            storage_full(&no_ceiling, &db(100, None)),
            StorageFull::Grow(110)
        );
        assert_eq!(
            storage_full(&no_ceiling, &db(100, Some(110))),
            StorageFull::Pending(110)
        );
        let ceiling = spec("{maxAllocatedStorageGiB: 200}");
        assert_eq!(
            storage_full(&ceiling, &db(150, None)),
            StorageFull::Grow(165)
        );
        assert_eq!(
            storage_full(&ceiling, &db(190, None)),
            StorageFull::AtCeiling(200)
        );
        assert_eq!(
            storage_full(&ceiling, &db(200, None)),
            StorageFull::AtCeiling(200)
        );
        // The spec's own size, when it is more than the step.
        let bigger = spec("{allocatedStorageGiB: 300}");
        assert_eq!(
            storage_full(&bigger, &db(100, None)),
            StorageFull::Grow(300)
        );
    }

    #[test]
    fn weekly_windows_open_and_wrap_around_the_week() {
        let w = WeeklyWindow::parse("sun:05:00-sun:06:00").unwrap();
        // 2026-11-29 is a Sunday.
        assert!(w.contains(at("2026-11-29T05:30:00Z")));
        assert!(!w.contains(at("2026-11-29T06:00:00Z")));
        assert_eq!(w.until_open(at("2026-11-29T05:30:00Z")), Duration::ZERO);
        assert_eq!(
            w.until_open(at("2026-11-29T04:00:30Z")),
            Duration::from_secs(3600 - 30)
        );
        // Monday: six days and some hours away.
        assert_eq!(
            w.until_open(at("2026-11-30T05:00:00Z")),
            Duration::from_secs(6 * 24 * 3600)
        );
        let wrap = WeeklyWindow::parse("sun:23:30-mon:00:30").unwrap();
        assert!(wrap.contains(at("2026-11-29T23:45:00Z")));
        assert!(wrap.contains(at("2026-11-30T00:15:00Z")));
        assert!(!wrap.contains(at("2026-11-30T00:30:00Z")));
        for bad in [
            "",
            "sun:05:00",
            "xyz:05:00-sun:06:00",
            "sun:24:00-sun:06:00",
            "sun:5-sun:6",
        ] {
            assert_eq!(WeeklyWindow::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_pending_reboot_waits_for_the_window_unless_immediately() {
        let db = DbInstance {
            parameter_apply_status: Some("pending-reboot".into()),
            maintenance_window: Some("sun:05:00-sun:06:00".into()),
            ..DbInstance::default()
        };
        let window = spec("{applyChanges: InMaintenanceWindow}");
        assert_eq!(
            reboot(&window, &db, at("2026-11-29T04:00:00Z")),
            Reboot::InWindow {
                window: "sun:05:00-sun:06:00".into(),
                opens_in: Duration::from_secs(3600)
            }
        );
        assert!(matches!(
            reboot(&window, &db, at("2026-11-29T05:10:00Z")),
            Reboot::Now { .. }
        ));
        let now = spec("{applyChanges: Immediately}");
        assert!(matches!(
            reboot(&now, &db, at("2026-11-29T04:00:00Z")),
            Reboot::Now { .. }
        ));
        let in_sync = DbInstance {
            parameter_apply_status: None,
            ..db.clone()
        };
        assert_eq!(
            reboot(&now, &in_sync, at("2026-11-29T04:00:00Z")),
            Reboot::NotNeeded
        );
    }
}
