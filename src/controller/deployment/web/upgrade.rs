//! Image upgrades of a set-up clinic: snapshot (if asked) seen `available` → a Job with
//! the new image migrates → the workers roll → done, or, past the timeout, the workers go
//! back to the previous image (`RolledBack`) or stay (`Failed`). A failed upgrade is tried
//! again only after the spec named another image in between (`superseded`); one whose
//! image no worker runs yet is cancelled when the spec names another.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::render::WebInputs;
use super::scripts::SetupMode;
use super::{JobState, WebChange, WebNames, WorkloadSeen};
use crate::api::deployment::{UpgradePhase, UpgradeStatus};
use crate::clock;

/// Whether an upgrade has ended, well or not.
fn ended(u: &UpgradeStatus) -> bool {
    matches!(
        u.phase,
        Some(
            UpgradePhase::Succeeded
                | UpgradePhase::RolledBack
                | UpgradePhase::Failed
                | UpgradePhase::Cancelled
        )
    )
}

/// The spec names another image than `u`'s: an upgrade under way whose image no worker
/// runs yet is cancelled, and one that failed or was cancelled may be tried again later.
/// (Once the workers run the new image, naming another is an upgrade of its own.)
pub fn leave_upgrade(
    u: &mut UpgradeStatus,
    current: &str,
    now: Timestamp,
    changes: &mut Vec<WebChange>,
) {
    if !ended(u) && current == u.from_image {
        u.phase = Some(UpgradePhase::Cancelled);
        u.completion_time = Some(Time(now));
        let migrated = u
            .migration_job
            .as_ref()
            .map(|j| format!("; Job {j} may have migrated the schema already"))
            .unwrap_or_default();
        changes.push(WebChange::Announce {
            reason: "UpgradeCancelled",
            note: format!(
                "the spec no longer names {}: the workers stay on {}{migrated}",
                u.to_image, u.from_image
            ),
            warning: true,
        });
    }
    if matches!(
        u.phase,
        Some(UpgradePhase::RolledBack | UpgradePhase::Failed | UpgradePhase::Cancelled)
    ) {
        u.superseded = true;
    }
}

/// Why the workers do not run the image the spec names, after `u` ended without it.
pub fn unmet(u: &UpgradeStatus) -> String {
    let how = match u.phase {
        Some(UpgradePhase::Failed) => "failed",
        _ => "rolled back",
    };
    let snapshot = u
        .snapshot
        .as_ref()
        .map(|s| format!(" (snapshot {s} holds the database from before)"))
        .unwrap_or_default();
    format!(
        "spec.web.image {} does not run: its upgrade from {} {how}{snapshot}; to try again, \
         name another image, then this one",
        u.to_image, u.from_image
    )
}

/// What one look at an upgrade asks for.
pub struct UpgradeStep {
    pub changes: Vec<WebChange>,
    pub in_progress: bool,
    pub wake_after: Option<Duration>,
    pub busy: bool,
    /// The image the workers are to run.
    pub image: String,
}

/// One look at an upgrade in progress (or finished: then only the image it left).
pub fn upgrade_step(
    u: &mut UpgradeStatus,
    inputs: &WebInputs,
    names: &WebNames,
    seen: &WorkloadSeen,
    current: &str,
    held: bool,
    now: Timestamp,
) -> UpgradeStep {
    let mut step = UpgradeStep {
        changes: Vec::new(),
        in_progress: false,
        wake_after: None,
        busy: true,
        image: u.from_image.clone(),
    };
    let announce = |reason: &'static str, note: String, warning: bool| WebChange::Announce {
        reason,
        note,
        warning,
    };
    match u.phase {
        Some(UpgradePhase::Succeeded) => {
            step.image = u.to_image.clone();
            step.busy = false;
            return step;
        }
        Some(UpgradePhase::RolledBack) | Some(UpgradePhase::Cancelled) => {
            step.busy = false;
            return step;
        }
        Some(UpgradePhase::Failed) => {
            // rollbackOnFailure is off: the workers stay where the upgrade left them.
            step.image = current.to_string();
            step.busy = false;
            return step;
        }
        _ => {}
    }
    if held {
        // A hold (a backup, a restore), or infrastructure that is busy or unreadable,
        // pauses the upgrade where it is.
        step.image = current.to_string();
        return step;
    }
    if u.phase == Some(UpgradePhase::SnapshotPending) {
        let snapshot = u.snapshot.clone().unwrap_or_default();
        match seen.upgrade_snapshot.as_deref() {
            Some("available") => {
                u.phase = Some(UpgradePhase::Rolling);
                step.changes.push(announce(
                    "UpgradeSnapshotAvailable",
                    format!(
                        "snapshot {snapshot} is available; migrating to {}",
                        u.to_image
                    ),
                    false,
                ));
            }
            None => {
                step.changes.push(WebChange::CreateUpgradeSnapshot {
                    snapshot: snapshot.clone(),
                });
                step.in_progress = true;
                return step;
            }
            Some(_) => {
                step.in_progress = true;
                return step;
            }
        }
    }
    // Rolling: the migration Job, then the workers.
    let mut upgraded = inputs.web.clone();
    upgraded.image = u.to_image.clone();
    let job_inputs = WebInputs {
        web: &upgraded,
        ..inputs.clone()
    };
    // Upgrades recorded before the Job was named used the first setup's naming.
    let job_name = u
        .migration_job
        .get_or_insert_with(|| names.setup_job(&u.to_image, 1))
        .clone();
    let job = seen.setup_jobs.iter().find(|j| j.name == job_name);
    let started = u.start_time.as_ref().map_or(now, |t| t.0);
    let timeout = Duration::from_secs(inputs.web.upgrade.timeout_seconds.max(0) as u64);
    // A start later than now (a clock set back) counts as just started, never as overdue.
    let elapsed = Duration::try_from(now.duration_since(started)).unwrap_or_default();
    let timed_out = elapsed >= timeout;
    // A Job of a cancelled upgrade may still run: two at once would migrate the same
    // database concurrently. Its end wakes the clinic through the Jobs' watch.
    let other_running = seen
        .setup_jobs
        .iter()
        .any(|j| j.name != job_name && j.state == JobState::Running);
    let failure = match job.map(|j| &j.state) {
        None if other_running => None,
        None => {
            // Numbered after the Jobs that ran this image before (an earlier upgrade to
            // it that failed), so the newest is the one whose failure is read.
            let attempt = 1 + seen
                .setup_jobs
                .iter()
                .filter(|j| j.image == u.to_image)
                .map(|j| j.attempt)
                .max()
                .unwrap_or(0);
            step.changes
                .push(WebChange::ApplyChildren(vec![job_inputs.setup_job(
                    &job_name,
                    attempt,
                    &SetupMode::Migrate,
                )]));
            step.changes.push(announce(
                "UpgradeMigrating",
                format!("Job {job_name} migrates the site to {}", u.to_image),
                false,
            ));
            None
        }
        Some(JobState::Running) => None,
        Some(JobState::Failed { reason, detail, .. }) => {
            Some(format!("the migration Job failed: {reason} {detail}"))
        }
        Some(JobState::Complete) => {
            step.image = u.to_image.clone();
            let rolled = seen
                .workers
                .as_ref()
                .is_some_and(|w| w.image == u.to_image && w.rolled_out(inputs.web.replicas));
            if rolled {
                step.busy = false;
                u.phase = Some(UpgradePhase::Succeeded);
                u.completion_time = Some(Time(now));
                step.changes.push(announce(
                    "UpgradeSucceeded",
                    format!("every replica runs {} and is ready", u.to_image),
                    false,
                ));
                // The older upgrades' snapshots beyond what is kept go now.
                if let Some(current) = &u.snapshot {
                    step.changes.push(WebChange::PruneUpgradeSnapshots {
                        current: current.clone(),
                        keep: seen.config.upgrade_snapshots_kept,
                    });
                }
                return step;
            }
            None
        }
    };
    let failure = failure.or_else(|| {
        timed_out.then(|| {
            format!(
                "{} was not ready within spec.web.upgrade.timeoutSeconds ({}s)",
                u.to_image, inputs.web.upgrade.timeout_seconds
            )
        })
    });
    let Some(why) = failure else {
        let left = clock::current().real(timeout.saturating_sub(elapsed));
        step.wake_after = Some(left.max(Duration::from_secs(1)));
        return step;
    };
    step.busy = false;
    u.completion_time = Some(Time(now));
    let restore_from = u
        .snapshot
        .as_ref()
        .map(|s| format!("; snapshot {s} holds the database from before the upgrade, for a person to restore from"))
        .unwrap_or_default();
    if inputs.web.upgrade.rollback_on_failure {
        u.phase = Some(UpgradePhase::RolledBack);
        step.image = u.from_image.clone();
        // The old image on a schema the new one migrated may not work well: said plainly.
        let migrated = match job.map(|j| &j.state) {
            Some(JobState::Complete) => {
                format!(" on the schema Job {job_name} migrated to {}", u.to_image)
            }
            _ => String::new(),
        };
        step.changes.push(announce(
            "UpgradeRolledBack",
            format!(
                "{why}: the workers run {} again{migrated}{restore_from}",
                u.from_image
            ),
            true,
        ));
    } else {
        u.phase = Some(UpgradePhase::Failed);
        step.changes.push(announce(
            "UpgradeFailed",
            format!(
                "{why}; rollbackOnFailure is off, so the workers stay on {}{restore_from}",
                step.image
            ),
            true,
        ));
    }
    step
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::deployment::web::plan::plan_workload;
    use crate::controller::deployment::web::plan::tests::{
        carry, child, clinic, now, seen, set_up, site, workers,
    };
    use crate::controller::deployment::web::{
        ATTEMPT_ANNOTATION, ChildKind, SetupJob, WorkersSeen,
    };

    #[test]
    fn an_upgrade_waits_for_its_snapshot_then_migrates_then_rolls() {
        let mut d = clinic(serde_json::json!({"replicas": 2, "image": "openemr/openemr:8.0.1"}));
        set_up(&mut d, "openemr/openemr:8.0.0");
        let mut s = seen();
        s.workers = Some(workers("openemr/openemr:8.0.0", 2));
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        let u = plan.upgrade.clone().unwrap();
        assert_eq!(u.phase, Some(UpgradePhase::SnapshotPending));
        assert_eq!(u.snapshot.as_deref(), Some("db-1-upgrade-uid-1-g3"));
        assert!(plan.changes.contains(&WebChange::CreateUpgradeSnapshot {
            snapshot: "db-1-upgrade-uid-1-g3".into()
        }));
        // The new image is nowhere yet.
        let workers_child = child(&plan, ChildKind::Deployment).unwrap();
        assert!(!workers_child.body.to_string().contains("8.0.1"));
        assert!(child(&plan, ChildKind::Job).is_none());

        // The snapshot is available: the migration Job runs the new image, without the
        // setup credentials.
        carry(&mut d, &plan);
        s.upgrade_snapshot = Some("available".into());
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert_eq!(
            plan.upgrade.as_ref().unwrap().phase,
            Some(UpgradePhase::Rolling)
        );
        let job = child(&plan, ChildKind::Job).unwrap();
        assert!(job.body.to_string().contains("openemr/openemr:8.0.1"));
        let env = job.body["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
        assert!(env.contains("\"migrate\""));
        assert!(
            !env.contains("OPENEMR_MASTER_PASS")
                && !env
                    .contains("secretKeyRef\":{\"key\":\"password\",\"name\":\"clinic-a-db-master")
        );
        assert!(
            !child(&plan, ChildKind::Deployment)
                .unwrap()
                .body
                .to_string()
                .contains("8.0.1")
        );

        // Migrated: the workers roll.
        carry(&mut d, &plan);
        let migration = job.name.clone();
        assert_eq!(
            plan.upgrade.as_ref().unwrap().migration_job.as_ref(),
            Some(&migration)
        );
        assert!(migration.starts_with("clinic-a-migrate-"), "{migration}");
        s.setup_jobs = vec![SetupJob {
            name: migration,
            image: "openemr/openemr:8.0.1".into(),
            attempt: 1,
            state: JobState::Complete,
        }];
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert!(
            child(&plan, ChildKind::Deployment)
                .unwrap()
                .body
                .to_string()
                .contains("8.0.1")
        );

        // Not ready within the timeout: back to the previous image, the snapshot named.
        let late = now() + std::time::Duration::from_secs(1801);
        // The old replicas still serve (ready counts them); the new ones never become ready.
        s.workers = Some(WorkersSeen {
            ready: 2,
            updated: 1,
            total: 3,
            ..workers("openemr/openemr:8.0.1", 0)
        });
        assert!(!s.workers.as_ref().unwrap().rolled_out(2));
        let plan = plan_workload(&d, Some(&site()), true, &s, late);
        assert_eq!(
            plan.upgrade.as_ref().unwrap().phase,
            Some(UpgradePhase::RolledBack)
        );
        let workers_child = child(&plan, ChildKind::Deployment).unwrap();
        assert!(
            workers_child
                .body
                .to_string()
                .contains("openemr/openemr:8.0.0")
        );
        let Some(WebChange::Announce {
            note,
            warning: true,
            ..
        }) = plan
            .changes
            .iter()
            .find(|c| matches!(c, WebChange::Announce { .. }))
        else {
            panic!("no warning Event: {:?}", plan.changes)
        };
        assert!(note.contains("db-1-upgrade-uid-1-g3"), "{note}");
        assert!(
            note.contains("on the schema Job clinic-a-migrate-"),
            "{note}"
        );

        // Rolled back stays rolled back: no second upgrade, no second snapshot.
        carry(&mut d, &plan);
        s.workers = Some(workers("openemr/openemr:8.0.0", 2));
        let plan = plan_workload(&d, Some(&site()), true, &s, late);
        assert!(
            !plan
                .changes
                .iter()
                .any(|c| matches!(c, WebChange::CreateUpgradeSnapshot { .. }))
        );
        assert_eq!(
            plan.upgrade.as_ref().unwrap().phase,
            Some(UpgradePhase::RolledBack)
        );
        assert_eq!(plan.verdict.reason, "UpgradeNotApplied");
        assert!(plan.verdict.status);
        assert!(
            plan.verdict.message.contains("db-1-upgrade-uid-1-g3"),
            "{}",
            plan.verdict.message
        );

        // The spec goes back to the running image: nothing to do, the record kept.
        carry(&mut d, &plan);
        d.spec.web.image = "openemr/openemr:8.0.0".into();
        d.metadata.generation = Some(4);
        let plan = plan_workload(&d, Some(&site()), true, &s, late);
        let u = plan.upgrade.clone().unwrap();
        assert_eq!(u.phase, Some(UpgradePhase::RolledBack));
        assert!(u.superseded);
        assert!(plan.changes.iter().all(|c| !matches!(
            c,
            WebChange::CreateUpgradeSnapshot { .. } | WebChange::Announce { .. }
        )));
        assert_eq!(plan.verdict.reason, "ReplicasReady");

        // And names the failed image again: a new upgrade, its own snapshot and Job.
        carry(&mut d, &plan);
        d.spec.web.image = "openemr/openemr:8.0.1".into();
        d.metadata.generation = Some(5);
        s.upgrade_snapshot = None; // db-1-upgrade-uid-1-g5 is not there yet
        let plan = plan_workload(&d, Some(&site()), true, &s, late);
        let again = plan.upgrade.clone().unwrap();
        assert_eq!(again.phase, Some(UpgradePhase::SnapshotPending));
        assert_eq!(again.snapshot.as_deref(), Some("db-1-upgrade-uid-1-g5"));
        assert!(!again.superseded);
        assert_ne!(again.migration_job, u.migration_job);
        assert!(plan.changes.contains(&WebChange::CreateUpgradeSnapshot {
            snapshot: "db-1-upgrade-uid-1-g5".into()
        }));

        // Its migration Job is numbered after the first one, and the first one's state
        // (completed) does not count for it.
        carry(&mut d, &plan);
        s.upgrade_snapshot = Some("available".into());
        let plan = plan_workload(&d, Some(&site()), true, &s, late);
        let job = child(&plan, ChildKind::Job).unwrap();
        assert_eq!(Some(&job.name), again.migration_job.as_ref());
        assert_eq!(job.body["metadata"]["annotations"][ATTEMPT_ANNOTATION], "2");
        assert!(
            !child(&plan, ChildKind::Deployment)
                .unwrap()
                .body
                .to_string()
                .contains("8.0.1"),
            "the workers wait for this upgrade's own migration"
        );
    }

    #[test]
    fn an_image_edited_into_the_workers_by_hand_is_put_back_not_upgraded_from() {
        let mut d = clinic(serde_json::json!({"replicas": 2}));
        let image = d.spec.web.image.clone();
        set_up(&mut d, &image);
        let mut s = seen();
        s.workers = Some(workers("openemr/openemr:7.0.3", 2));
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert!(plan.upgrade.is_none(), "{:?}", plan.upgrade);
        assert!(
            plan.changes
                .iter()
                .all(|c| !matches!(c, WebChange::CreateUpgradeSnapshot { .. }))
        );
        let workers = child(&plan, ChildKind::Deployment).unwrap();
        assert!(
            workers
                .body
                .to_string()
                .contains(&format!("\"{}\"", d.spec.web.image))
        );
    }

    #[test]
    fn naming_another_image_before_the_workers_moved_cancels_the_upgrade() {
        let mut d = clinic(serde_json::json!({"replicas": 2, "image": "openemr/openemr:8.0.1"}));
        set_up(&mut d, "openemr/openemr:8.0.0");
        let mut s = seen();
        s.workers = Some(workers("openemr/openemr:8.0.0", 2));
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        carry(&mut d, &plan);
        d.spec.web.image = "openemr/openemr:8.0.0".into();
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        let u = plan.upgrade.clone().unwrap();
        assert_eq!(u.phase, Some(UpgradePhase::Cancelled));
        assert!(u.superseded && u.completion_time.is_some());
        assert!(plan.changes.iter().any(|c| matches!(
            c,
            WebChange::Announce {
                reason: "UpgradeCancelled",
                warning: true,
                ..
            }
        )));
        assert!(!plan.busy);
        assert!(
            !child(&plan, ChildKind::Deployment)
                .unwrap()
                .body
                .to_string()
                .contains("8.0.1")
        );

        // Named again while the cancelled upgrade's Job still migrates: the new upgrade's
        // Job waits for it to end.
        carry(&mut d, &plan);
        d.spec.web.image = "openemr/openemr:8.0.1".into();
        d.metadata.generation = Some(5);
        s.setup_jobs = vec![SetupJob {
            name: u.migration_job.clone().unwrap(),
            image: "openemr/openemr:8.0.1".into(),
            attempt: 1,
            state: JobState::Running,
        }];
        s.upgrade_snapshot = Some("available".into());
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        carry(&mut d, &plan);
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        let again = plan.upgrade.clone().unwrap();
        assert_eq!(again.phase, Some(UpgradePhase::Rolling));
        assert_ne!(again.migration_job, u.migration_job);
        assert!(child(&plan, ChildKind::Job).is_none(), "{:?}", plan.changes);
        assert!(plan.busy);
        // It ended: now the new one starts.
        s.setup_jobs[0].state = JobState::Complete;
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert_eq!(
            child(&plan, ChildKind::Job).map(|j| j.name.clone()),
            again.migration_job
        );
    }

    #[test]
    fn a_failed_upgrade_without_rollback_leaves_the_workers_where_they_are() {
        let mut d = clinic(serde_json::json!({
            "replicas": 2,
            "image": "openemr/openemr:8.0.1",
            "upgrade": {"rollbackOnFailure": false, "snapshotBeforeUpgrade": false},
        }));
        set_up(&mut d, "openemr/openemr:8.0.0");
        let mut s = seen();
        s.workers = Some(workers("openemr/openemr:8.0.0", 2));
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        let u = plan.upgrade.clone().unwrap();
        assert_eq!(u.phase, Some(UpgradePhase::Rolling));
        carry(&mut d, &plan);
        s.setup_jobs = vec![SetupJob {
            name: u.migration_job.clone().unwrap(),
            image: "openemr/openemr:8.0.1".into(),
            attempt: 1,
            state: JobState::Complete,
        }];
        s.workers = Some(WorkersSeen {
            ready: 2,
            updated: 1,
            total: 3,
            ..workers("openemr/openemr:8.0.1", 0)
        });
        let late = now() + std::time::Duration::from_secs(1801);
        let plan = plan_workload(&d, Some(&site()), true, &s, late);
        assert_eq!(
            plan.upgrade.as_ref().unwrap().phase,
            Some(UpgradePhase::Failed)
        );
        // Looked at again later: still the new image, never rolled back behind the spec.
        carry(&mut d, &plan);
        let plan = plan_workload(&d, Some(&site()), true, &s, late);
        assert!(
            child(&plan, ChildKind::Deployment)
                .is_none_or(|w| w.body.to_string().contains("openemr/openemr:8.0.1")),
            "{:?}",
            plan.changes
        );
        assert_eq!(plan.web.image.as_deref(), Some("openemr/openemr:8.0.1"));
    }
}
