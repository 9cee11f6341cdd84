//! What a policy's schedule asks for at one look, and what its sets say of it (pure).
//!
//! A look runs the schedule from the latest slot already handled (or the policy's making)
//! to now: the latest slot that passed gets one set if it is no older than the starting
//! deadline; every other slot that passed is missed. Never a burst of catch-up runs. A slot
//! whose predecessor is still waiting to start is skipped (counted as missed): a second
//! waiting set would take the same data at the same moment, and a clinic down for a week
//! would find a queue of them. Slots passed while suspended are nobody's loss.
//!
//! The slot's set has a name made from the policy and the slot, so a restart, a second
//! operator or a lost status write finds it instead of making another.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::backup::BackupPhase;
use crate::api::{BackupPolicyStatus, ConsistencyMode};
use crate::clock::{from_utc, to_utc};
use crate::conditions::Verdict;
use crate::controller::backup::set::scheduled_set_name;
use crate::schedule::Schedule;

/// The condition saying how the newest finished set of the policy ended.
pub const LAST_BACKUP_SUCCEEDED: &str = "LastBackupSucceeded";

/// One set that names the policy, as the cache shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SetSeen {
    pub name: String,
    pub phase: BackupPhase,
    /// When it was made, on the operator's clock.
    pub created: Timestamp,
    pub completed: Option<Timestamp>,
    /// Its `Accepted` condition is False: it will never start.
    pub refused: bool,
    /// Why it failed, when it did.
    pub message: Option<String>,
}

/// What one look at the schedule is planned from.
#[derive(Debug, Clone)]
pub struct Look<'a> {
    pub policy: &'a str,
    pub schedule: &'a Schedule,
    /// When the policy was made, on the operator's clock: the first look starts there.
    pub created: Timestamp,
    pub deadline_seconds: i64,
    pub suspended: bool,
    /// The sets that name this policy.
    pub sets: &'a [SetSeen],
    /// Every set name in the namespace (a slot's name may be taken by a set made by hand).
    pub names: &'a BTreeSet<String>,
    /// The set an earlier look decided to make, as its intent recorded (it may not have been
    /// made: the operator stopped in between).
    pub in_flight: Option<&'a str>,
}

/// A set to make for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSet {
    pub name: String,
    pub slot: DateTime<Utc>,
}

/// What the look asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Runs {
    pub create: Option<NewSet>,
    /// Slots that passed without a set at this look, and why: for an Event.
    pub missed: Option<String>,
}

/// Runs the schedule from where `status` left it to `now`; records the slots handled in
/// `status` (last slot, next slot, the set made, the slots missed).
pub fn next(look: &Look, status: &mut BackupPolicyStatus, now: Timestamp) -> Runs {
    let mut runs = Runs::default();
    // A set decided on and not seen since: made again (the name makes a repeat harmless).
    let remade = look
        .in_flight
        .filter(|name| !look.names.contains(*name))
        .zip(status.last_schedule_time.as_ref())
        .map(|(name, slot)| NewSet {
            name: name.to_string(),
            slot: to_utc(slot.0),
        });
    let since = status
        .last_schedule_time
        .as_ref()
        .map_or(look.created, |t| t.0);
    let due = look.schedule.due(
        to_utc(since),
        to_utc(now),
        chrono::Duration::seconds(look.deadline_seconds),
        look.suspended,
    );
    if let Some(last) = due.last {
        status.last_schedule_time = Some(Time(from_utc(last)));
    }
    status.next_schedule_time = if look.suspended {
        None
    } else {
        due.next.map(|t| Time(from_utc(t)))
    };
    let waiting = remade.as_ref().map(|s| s.name.clone()).or_else(|| {
        look.sets
            .iter()
            .find(|s| s.phase == BackupPhase::Pending && !s.refused)
            .map(|s| s.name.clone())
    });
    let mut missed = Vec::new();
    if due.missed > 0 {
        missed.push(format!(
            "{} slot(s) passed more than {} s ago (startingDeadlineSeconds) without a run: the operator was not running",
            due.missed, look.deadline_seconds
        ));
    }
    let mut missed_count = due.missed;
    if let Some(slot) = due.run {
        let name = scheduled_set_name(look.policy, slot);
        let ours = look.sets.iter().any(|s| s.name == name);
        if ours {
            // Made by an earlier look whose status write was lost: nothing to do.
        } else if look.names.contains(&name) {
            missed_count += 1;
            missed.push(format!(
                "the slot at {} was skipped: its set's name {name:?} is taken by a set this policy did not make",
                slot.to_rfc3339()
            ));
        } else if let Some(waiting) = &waiting {
            missed_count += 1;
            missed.push(format!(
                "the slot at {} was skipped: set {waiting:?} still waits to start, and would take the same data",
                slot.to_rfc3339()
            ));
        } else {
            status.last_scheduled_backup = Some(name.clone());
            runs.create = Some(NewSet { name, slot });
        }
    }
    if missed_count > 0 {
        status.missed_runs += i64::try_from(missed_count).unwrap_or(i64::MAX);
        status.last_missed_time = Some(Time(now));
        runs.missed = Some(missed.join("; "));
    }
    if runs.create.is_none() {
        runs.create = remade;
    }
    runs
}

/// The policy's record of its sets: the newest success, failures since, sets kept, and how
/// the newest finished set ended (`None` until one has).
pub fn summarize(sets: &[SetSeen], status: &mut BackupPolicyStatus) -> Option<Verdict> {
    let newest_completed = sets
        .iter()
        .filter(|s| s.phase == BackupPhase::Completed)
        .max_by_key(|s| (s.completed, s.created));
    status.last_successful_backup = newest_completed.map(|s| s.name.clone());
    status.last_successful_time = newest_completed.and_then(|s| s.completed.map(Time));
    let completed = sets
        .iter()
        .filter(|s| s.phase == BackupPhase::Completed)
        .count();
    status.retained_sets = Some(i32::try_from(completed).unwrap_or(i32::MAX));
    let since = newest_completed.map(|s| s.created);
    let failures = sets
        .iter()
        .filter(|s| s.phase == BackupPhase::Failed && since.is_none_or(|t| s.created > t))
        .count();
    status.consecutive_failures = i32::try_from(failures).unwrap_or(i32::MAX);
    let newest_finished = sets
        .iter()
        .filter(|s| matches!(s.phase, BackupPhase::Completed | BackupPhase::Failed))
        .max_by_key(|s| (s.created, s.name.clone()))?;
    Some(if newest_finished.phase == BackupPhase::Completed {
        Verdict::truthy(
            LAST_BACKUP_SUCCEEDED,
            "Completed",
            format!("set {:?} completed", newest_finished.name),
        )
    } else {
        Verdict::falsy(
            LAST_BACKUP_SUCCEEDED,
            "SetFailed",
            format!(
                "set {:?} failed ({} in a row): {}",
                newest_finished.name,
                failures,
                newest_finished
                    .message
                    .as_deref()
                    .unwrap_or("see its conditions")
            ),
        )
    })
}

/// Whether a set of the policy is under way or waits to start: the policy follows it.
pub fn busy(sets: &[SetSeen]) -> bool {
    sets.iter()
        .any(|s| s.phase == BackupPhase::Running || (s.phase == BackupPhase::Pending && !s.refused))
}

/// The set a schedule makes for a slot: not owned by the policy (deleting the policy
/// keeps its sets), with the policy's consistency and documents setting fixed in its
/// spec.
pub fn set_body(
    namespace: &str,
    new: &NewSet,
    clinic: &str,
    policy: &str,
    consistency: ConsistencyMode,
    include_documents: bool,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "openemr.io/v1alpha1",
        "kind": "OpenEMRBackup",
        "metadata": {
            "name": new.name,
            "namespace": namespace,
            "annotations": {
                crate::api::backup::SCHEDULED_FOR_ANNOTATION:
                    new.slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            },
        },
        "spec": {
            "deploymentRef": {"name": clinic},
            "policyRef": {"name": policy},
            "consistency": consistency,
            "includeDocuments": include_documents,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    fn set(name: &str, phase: BackupPhase, created: &str) -> SetSeen {
        SetSeen {
            name: name.into(),
            phase,
            created: at(created),
            completed: (phase == BackupPhase::Completed).then(|| at(created)),
            refused: false,
            message: (phase == BackupPhase::Failed).then(|| "RDS reports it failed".into()),
        }
    }

    struct World {
        schedule: Schedule,
        sets: Vec<SetSeen>,
        names: BTreeSet<String>,
        suspended: bool,
        in_flight: Option<String>,
    }

    impl World {
        fn hourly() -> World {
            World {
                schedule: Schedule::parse("0 * * * *", "Europe/Berlin").unwrap(),
                sets: Vec::new(),
                names: BTreeSet::new(),
                suspended: false,
                in_flight: None,
            }
        }

        fn look(&self, status: &mut BackupPolicyStatus, now: &str) -> Runs {
            let look = Look {
                policy: "hourly",
                schedule: &self.schedule,
                created: at("2027-03-28T00:10:00Z"),
                deadline_seconds: 600,
                suspended: self.suspended,
                sets: &self.sets,
                names: &self.names,
                in_flight: self.in_flight.as_deref(),
            };
            next(&look, status, at(now))
        }

        fn made(&mut self, runs: &Runs, phase: BackupPhase, now: &str) {
            let new = runs.create.as_ref().expect("a set to make");
            self.names.insert(new.name.clone());
            self.sets.push(set(&new.name, phase, now));
        }
    }

    fn time(t: &Option<Time>) -> String {
        t.as_ref().map(|t| t.0.to_string()).unwrap_or_default()
    }

    #[test]
    fn a_slot_makes_one_set_named_for_it_and_a_later_look_makes_no_other() {
        let mut w = World::hourly();
        let mut status = BackupPolicyStatus::default();
        let runs = w.look(&mut status, "2027-03-28T00:30:00Z");
        assert_eq!(runs, Runs::default());
        assert_eq!(time(&status.next_schedule_time), "2027-03-28T01:00:00Z");
        assert_eq!(status.last_schedule_time, None);

        let runs = w.look(&mut status, "2027-03-28T01:00:02Z");
        let new = runs.create.clone().unwrap();
        assert_eq!(new.name, "hourly-20270328-0100");
        assert_eq!(runs.missed, None);
        assert_eq!(time(&status.last_schedule_time), "2027-03-28T01:00:00Z");
        // Europe/Berlin springs forward at 01:00 UTC that night: local 02:00 never comes,
        // and the slots stay an hour apart.
        assert_eq!(time(&status.next_schedule_time), "2027-03-28T02:00:00Z");
        assert_eq!(
            status.last_scheduled_backup.as_deref(),
            Some("hourly-20270328-0100")
        );
        w.made(&runs, BackupPhase::Running, "2027-03-28T01:00:03Z");
        assert_eq!(w.look(&mut status, "2027-03-28T01:20:00Z"), Runs::default());
        assert_eq!(status.missed_runs, 0);
    }

    #[test]
    fn a_status_write_lost_after_the_set_was_made_makes_no_second_set() {
        let mut w = World::hourly();
        let mut status = BackupPolicyStatus::default();
        let runs = w.look(&mut status, "2027-03-28T01:00:02Z");
        w.made(&runs, BackupPhase::Running, "2027-03-28T01:00:03Z");
        // The status that said so was never written: the look runs again from before.
        let mut lost = BackupPolicyStatus::default();
        let again = w.look(&mut lost, "2027-03-28T01:00:09Z");
        assert_eq!(again, Runs::default());
        assert_eq!(time(&lost.last_schedule_time), "2027-03-28T01:00:00Z");
    }

    #[test]
    fn a_set_decided_on_but_never_made_is_made_at_the_next_look() {
        let mut w = World::hourly();
        let mut status = BackupPolicyStatus::default();
        let runs = w.look(&mut status, "2027-03-28T01:00:02Z");
        // The intent was written, then the operator stopped before the set was made.
        w.in_flight = runs.create.as_ref().map(|n| n.name.clone());
        let again = w.look(&mut status, "2027-03-28T01:04:00Z");
        assert_eq!(again.create, runs.create);
        assert_eq!(again.missed, None);
        // Once it is there, nothing more.
        w.made(&again, BackupPhase::Pending, "2027-03-28T01:04:01Z");
        assert_eq!(w.look(&mut status, "2027-03-28T01:05:00Z"), Runs::default());
    }

    #[test]
    fn a_run_missed_while_down_starts_once_within_the_deadline_else_is_counted() {
        let mut w = World::hourly();
        let mut status = BackupPolicyStatus::default();
        // Down from 00:30 to 03:05: slots 01:00 and 02:00 are missed, 03:00 runs late.
        w.look(&mut status, "2027-03-28T00:30:00Z");
        let runs = w.look(&mut status, "2027-03-28T03:05:00Z");
        assert_eq!(runs.create.unwrap().name, "hourly-20270328-0300");
        assert!(runs.missed.unwrap().starts_with("2 slot(s)"));
        assert_eq!(status.missed_runs, 2);
        assert_eq!(time(&status.last_missed_time), "2027-03-28T03:05:00Z");
        w.sets.clear();
        // Down until 07:30: 04:00 to 07:00 passed, 07:00 is 30 minutes late: no run at all.
        let runs = w.look(&mut status, "2027-03-28T07:30:00Z");
        assert_eq!(runs.create, None);
        assert!(runs.missed.unwrap().starts_with("4 slot(s)"));
        assert_eq!(status.missed_runs, 6);
        assert_eq!(time(&status.last_schedule_time), "2027-03-28T07:00:00Z");
        assert_eq!(time(&status.next_schedule_time), "2027-03-28T08:00:00Z");
    }

    #[test]
    fn suspended_makes_nothing_misses_nothing_and_shows_no_next_slot() {
        let mut w = World::hourly();
        let mut status = BackupPolicyStatus::default();
        w.look(&mut status, "2027-03-28T00:30:00Z");
        w.suspended = true;
        let runs = w.look(&mut status, "2027-03-28T03:01:00Z");
        assert_eq!(runs, Runs::default());
        assert_eq!(status.next_schedule_time, None);
        assert_eq!(status.missed_runs, 0);
        // Resumed: the slots passed while suspended are behind; the next one runs.
        w.suspended = false;
        assert_eq!(w.look(&mut status, "2027-03-28T03:02:00Z"), Runs::default());
        assert_eq!(time(&status.next_schedule_time), "2027-03-28T04:00:00Z");
        let runs = w.look(&mut status, "2027-03-28T04:00:01Z");
        assert_eq!(runs.create.unwrap().name, "hourly-20270328-0400");
    }

    #[test]
    fn a_slot_whose_predecessor_still_waits_is_skipped_and_said() {
        let mut w = World::hourly();
        let mut status = BackupPolicyStatus::default();
        let runs = w.look(&mut status, "2027-03-28T01:00:01Z");
        w.made(&runs, BackupPhase::Pending, "2027-03-28T01:00:01Z");
        let runs = w.look(&mut status, "2027-03-28T02:00:01Z");
        assert_eq!(runs.create, None);
        let said = runs.missed.unwrap();
        assert!(
            said.contains("\"hourly-20270328-0100\" still waits"),
            "{said}"
        );
        assert_eq!(status.missed_runs, 1);
        // A waiting set that was refused never starts: it holds nothing up.
        w.sets[0].refused = true;
        let runs = w.look(&mut status, "2027-03-28T03:00:01Z");
        assert_eq!(runs.create.unwrap().name, "hourly-20270328-0300");
        // A running one does not either: the new set waits for it (one at a time).
        let mut w = World::hourly();
        let mut status = BackupPolicyStatus::default();
        let runs = w.look(&mut status, "2027-03-28T01:00:01Z");
        w.made(&runs, BackupPhase::Running, "2027-03-28T01:00:01Z");
        let runs = w.look(&mut status, "2027-03-28T02:00:01Z");
        assert_eq!(runs.create.unwrap().name, "hourly-20270328-0200");
    }

    #[test]
    fn a_slot_name_taken_by_a_set_made_by_hand_is_skipped() {
        let mut w = World::hourly();
        w.names.insert("hourly-20270328-0100".into());
        let mut status = BackupPolicyStatus::default();
        let runs = w.look(&mut status, "2027-03-28T01:00:01Z");
        assert_eq!(runs.create, None);
        assert!(
            runs.missed
                .unwrap()
                .contains("taken by a set this policy did not make")
        );
    }

    #[test]
    fn the_record_names_the_newest_success_and_counts_failures_since() {
        let mut status = BackupPolicyStatus::default();
        assert_eq!(summarize(&[], &mut status), None);
        assert_eq!(status.retained_sets, Some(0));
        let sets = [
            set("a", BackupPhase::Completed, "2027-01-01T01:00:00Z"),
            set("b", BackupPhase::Failed, "2027-01-01T00:00:00Z"),
            set("c", BackupPhase::Completed, "2027-01-02T01:00:00Z"),
            set("d", BackupPhase::Failed, "2027-01-03T01:00:00Z"),
            set("e", BackupPhase::Failed, "2027-01-04T01:00:00Z"),
            set("f", BackupPhase::Running, "2027-01-05T01:00:00Z"),
        ];
        let verdict = summarize(&sets, &mut status).unwrap();
        assert_eq!(status.last_successful_backup.as_deref(), Some("c"));
        assert_eq!(time(&status.last_successful_time), "2027-01-02T01:00:00Z");
        assert_eq!(status.consecutive_failures, 2);
        assert_eq!(status.retained_sets, Some(2));
        assert!(!verdict.status);
        assert_eq!(verdict.reason, "SetFailed");
        assert!(
            verdict
                .message
                .contains("\"e\" failed (2 in a row): RDS reports it failed"),
            "{}",
            verdict.message
        );
        assert!(busy(&sets));
        let verdict = summarize(&sets[..3], &mut status).unwrap();
        assert!(verdict.status);
        assert_eq!(status.consecutive_failures, 0);
        assert!(!busy(&sets[..3]));
    }

    #[test]
    fn a_scheduled_set_names_its_slot_policy_and_settings_and_has_no_owner() {
        let new = NewSet {
            name: "hourly-20270328-0100".into(),
            slot: to_utc(at("2027-03-28T01:00:00Z")),
        };
        let body = set_body(
            "ns",
            &new,
            "clinic-a",
            "hourly",
            ConsistencyMode::CrashConsistent,
            false,
        );
        let set: crate::api::OpenEMRBackup = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(set.spec.policy_ref.unwrap().name, "hourly");
        assert_eq!(set.spec.include_documents, Some(false));
        assert_eq!(set.spec.consistency, Some(ConsistencyMode::CrashConsistent));
        assert_eq!(
            body["metadata"]["annotations"]["openemr.io/scheduled-for"],
            "2027-03-28T01:00:00Z"
        );
        assert!(body["metadata"].get("ownerReferences").is_none());
    }
}
