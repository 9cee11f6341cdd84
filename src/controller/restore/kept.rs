//! What an in-place restore keeps, once it has ended: the instance the clinic ran on before
//! and the site entries it replaced (`sites/_previous-<token>`), for `keepPreviousFor`.
//! Planned from what was observed (pure).
//!
//! - **Rollback**: asked with the annotation [`ROLLBACK_ANNOTATION`] on a succeeded request
//!   within the window, or by itself when the restore failed after it had quiesced the
//!   clinic (a check failed after the switch, or a step before it). Four steps, recorded
//!   after the restore's: [`ROLLBACK_QUIESCE`] (the clinic held again, only if something was
//!   replaced), [`ROLLBACK_DOCUMENTS`] (a Job puts the kept entries back, the restored ones
//!   moved into `_rolled-back-<token>`), [`ROLLBACK_SWITCH`] (the clinic switched back to
//!   the instance it ran on) and [`ROLLBACK_RELEASE`]. The restored instance is then what
//!   is kept, for inspection.
//! - **The end of the window**: what is kept (the replaced instance, or after a rollback, or
//!   a restore that failed before it replaced anything, the restored one) gets a final
//!   snapshot, loses its deletion protection and is deleted; the
//!   kept site entries are deleted by a Job. Never an instance the clinic runs on.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::steps::{Change, holder, mark};
use crate::api::RestoreRequestStatus;
use crate::api::restore::{RestorePhase, StepPhase};
use crate::aws::rds::{DbInstance, DbSnapshot};
use crate::conditions::Verdict;
use crate::controller::backup::job::{DocumentsJob, Task};
use crate::controller::backup::plan::JobSeen;
use crate::controller::deployment::clinic::{RESTORED_BY, short_hash};

/// On a RestoreRequest: `"true"` asks a succeeded in-place restore to roll back, while
/// what it replaced is still kept. The spec is immutable; this is how a person asks.
pub const ROLLBACK_ANNOTATION: &str = "openemr.io/rollback";

pub const ROLLBACK_QUIESCE: &str = "RollbackQuiesce";
pub const ROLLBACK_DOCUMENTS: &str = "RollbackDocuments";
pub const ROLLBACK_SWITCH: &str = "RollbackSwitch";
pub const ROLLBACK_RELEASE: &str = "RollbackRelease";
pub const ROLLBACK: [&str; 4] = [
    ROLLBACK_QUIESCE,
    ROLLBACK_DOCUMENTS,
    ROLLBACK_SWITCH,
    ROLLBACK_RELEASE,
];

/// The condition saying whether the clinic was rolled back.
pub const ROLLED_BACK: &str = "RolledBack";
/// The condition saying whether what the restore kept was removed.
pub const PREVIOUS_REMOVED: &str = "PreviousRemoved";

/// The snapshot taken of the kept instance before it is deleted.
pub fn final_identifier(request_uid: &str) -> String {
    format!("restore-{}-final", short_hash(&[request_uid]))
}

/// The Job that puts the kept site entries back.
pub fn rollback_job_name(request_uid: &str) -> String {
    format!("rollback-documents-{}", short_hash(&[request_uid]))
}

/// The Job that deletes the kept site entries.
pub fn discard_job_name(request_uid: &str) -> String {
    format!("discard-documents-{}", short_hash(&[request_uid]))
}

/// The clinic restored into, as its status and the caches show it now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClinicNow {
    pub uid: String,
    /// The request's hold on it is placed.
    pub held: bool,
    /// That hold has taken effect.
    pub quiet: bool,
    /// The instance its status says it runs on.
    pub serving: Option<String>,
    /// The instance its `status.databaseSwitch` names.
    pub switched_to: Option<String>,
    pub claim: String,
    /// Backup sets of the clinic still reading its live data: it is stopped again only
    /// once they have their parts.
    pub sets_reading: Vec<String>,
}

/// What a Job on the clinic's volume is made with.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteJobs {
    pub namespace: String,
    /// The operator's `--documents-image`; none: the step waits, saying so.
    pub image: Option<String>,
    pub service_account: String,
    pub backoff_limit: i32,
    pub deadline_seconds: i64,
    pub region: String,
    pub bucket: String,
}

/// What is planned from.
#[derive(Debug, Clone)]
pub struct KeptSeen {
    pub request: String,
    pub uid: String,
    pub clinic: String,
    /// `None`: the clinic is gone.
    pub target: Option<ClinicNow>,
    /// The instance the clinic ran on before the restore.
    pub previous: String,
    /// The instance the restore made.
    pub restored: String,
    pub rollback_asked: bool,
    /// Another RestoreRequest restored into the clinic since (its switch is that one's),
    /// or is under way: this one's rollback would undo that one's work.
    pub superseded: Option<String>,
    /// The instance to remove at the end of the window (the replaced one, or after a
    /// rollback the restored one), as AWS shows it; read once the window has ended.
    pub leftover: Option<DbInstance>,
    pub final_snapshot: Option<DbSnapshot>,
    pub rollback_job: JobSeen,
    /// The restore's documents Job, which exchanges the site, still runs: the rollback's
    /// own Job on the same directories waits for it to end.
    pub exchange_running: bool,
    pub discard_job: JobSeen,
    pub jobs: SiteJobs,
    /// The clinic's tags (the final snapshot's).
    pub tags: BTreeMap<String, String>,
}

/// What the plan wants: changes, conditions, and whether to look again soon.
#[derive(Debug, Clone, Default)]
pub struct KeptOutcome {
    pub changes: Vec<Change>,
    pub verdicts: Vec<Verdict>,
    pub in_progress: bool,
    /// When the window ends, if that is still ahead.
    pub until: Option<Timestamp>,
}

enum Step {
    Done(String),
    Skipped(String),
    Waiting(String),
    Act(Change, String),
    Failed(String),
}

/// Whether the restore may have replaced anything of the clinic: its documents Job made
/// (it exchanges the site before it reports, so a step that failed may still have), or
/// its switch asked for.
fn replaced(status: &RestoreRequestStatus) -> bool {
    status.steps.iter().any(|s| {
        matches!(
            s.name.as_str(),
            super::steps::RESTORE_DOCUMENTS | super::steps::SWITCH_DATABASE
        ) && s.start_time.is_some()
    })
}

/// Whether what is kept is the instance the restore made (after a rollback, or a restore
/// that failed before it replaced anything) rather than the one the clinic ran on.
pub fn keeps_restored(status: &RestoreRequestStatus) -> bool {
    let rolled_back = crate::conditions::find(&status.conditions, ROLLED_BACK)
        .is_some_and(|c| c.status == "True");
    rolled_back || (status.phase == Some(RestorePhase::Failed) && !replaced(status))
}

/// Whether an in-place request leaves its clinic as it should be if it went now: it never
/// stopped it, or the clinic was let go on the restored data (released for `Verify`, or
/// succeeded), or rolled back and released, or its rollback was refused because a later
/// restore owns the clinic. Not while the clinic is stopped by it, nor while a rollback is
/// to come (a failed restore), under way, or failed (the clinic is held then).
pub fn clinic_settled(status: &RestoreRequestStatus) -> bool {
    if !quiesced(status) {
        return true;
    }
    let rolled_back = crate::conditions::find(&status.conditions, ROLLED_BACK);
    if rolled_back.is_some_and(|c| c.reason == "Superseded") {
        return true;
    }
    let ended = |name: &str| {
        status
            .steps
            .iter()
            .any(|s| s.name == name && matches!(s.phase, StepPhase::Succeeded | StepPhase::Skipped))
    };
    if status.steps.iter().any(|s| s.name == ROLLBACK_QUIESCE) {
        return ended(ROLLBACK_RELEASE);
    }
    if status.phase == Some(RestorePhase::Failed) {
        return false;
    }
    ended(super::steps::RELEASE_HOLD) || status.phase == Some(RestorePhase::Succeeded)
}

/// Whether the documents were (or may have been) downloaded beside the live site.
fn staged(status: &RestoreRequestStatus) -> bool {
    status
        .steps
        .iter()
        .any(|s| s.name == super::steps::STAGE_DOCUMENTS && s.start_time.is_some())
}

/// Whether the restore stopped the clinic at some point (its hold placed).
fn quiesced(status: &RestoreRequestStatus) -> bool {
    status
        .steps
        .iter()
        .any(|s| s.name == super::steps::QUIESCE && s.start_time.is_some())
}

/// Plans a finished in-place request: its rollback, then, once the window has ended, the
/// removal of what it kept.
pub fn plan(seen: &KeptSeen, status: &mut RestoreRequestStatus, now: Timestamp) -> KeptOutcome {
    let mut outcome = KeptOutcome::default();
    let expires = status.previous_expires_at.as_ref().map(|t| t.0);
    let expired = expires.is_some_and(|e| now >= e);
    let rolling = status.steps.iter().any(|s| s.name == ROLLBACK_QUIESCE);
    let failed = status.phase == Some(RestorePhase::Failed);
    let wanted = rolling
        || (failed && quiesced(status))
        || (seen.rollback_asked && status.phase == Some(RestorePhase::Succeeded) && !expired);
    let mut rolled_back = false;
    if let (true, false, Some(later)) = (wanted, rolling, &seen.superseded) {
        outcome.verdicts.push(Verdict::falsy(
            ROLLED_BACK,
            "Superseded",
            format!(
                "RestoreRequest {later} restored into clinic {} since: rolling this one back would undo it; roll that one back first",
                seen.clinic
            ),
        ));
    } else if wanted {
        match rollback(seen, status, now, &mut outcome) {
            Some(verdict) if verdict.reason == "RollbackFailed" => {
                // What is kept is what the clinic needs back: nothing is removed.
                outcome.verdicts.push(verdict);
                outcome.verdicts.push(Verdict::falsy(
                    PREVIOUS_REMOVED,
                    "RollbackIncomplete",
                    format!(
                        "the rollback did not finish: {} kept whatever keepPreviousFor says",
                        kept_what(seen, status, false)
                    ),
                ));
                return outcome;
            }
            Some(verdict) => {
                rolled_back = verdict.status;
                outcome.verdicts.push(verdict);
            }
            None => return outcome,
        }
    } else if seen.rollback_asked && expired {
        outcome.verdicts.push(Verdict::falsy(
            ROLLED_BACK,
            "WindowPassed",
            format!(
                "{ROLLBACK_ANNOTATION} came after spec.target.inPlace.keepPreviousFor had passed: what the clinic ran on before is no longer kept"
            ),
        ));
    }
    let Some(expires) = expires else {
        return outcome;
    };
    // A restore that failed before it replaced anything keeps what it made (the restored
    // instance, the staged documents) for inspection, as a rollback does.
    let rolled_back = rolled_back || (failed && !replaced(status));
    if !expired {
        outcome.until = Some(expires);
        outcome.verdicts.push(Verdict::falsy(
            PREVIOUS_REMOVED,
            "Kept",
            format!(
                "{} kept until {expires} (spec.target.inPlace.keepPreviousFor)",
                kept_what(seen, status, rolled_back)
            ),
        ));
        return outcome;
    }
    let removed = remove(seen, status, rolled_back, &mut outcome);
    outcome.verdicts.push(removed);
    outcome
}

/// The instance kept: the replaced one, or after a rollback the restored one.
fn kept_instance(seen: &KeptSeen, rolled_back: bool) -> &str {
    if rolled_back {
        &seen.restored
    } else {
        &seen.previous
    }
}

/// The site directory kept, if the restore made or moved one.
fn kept_dir(seen: &KeptSeen, status: &RestoreRequestStatus, rolled_back: bool) -> Option<String> {
    let token = super::steps::swap_token(&seen.uid);
    match (rolled_back, &status.previous_documents) {
        (true, None) if staged(status) => Some(format!("_restoring-{token}")),
        (true, None) => None,
        (true, _) => Some(format!("_rolled-back-{token}")),
        (false, Some(dir)) => Some(dir.clone()),
        (false, None) => Some(format!("_previous-{token}")),
    }
}

/// What is kept, in words: "DB instance … and sites/… are" (or "is").
fn kept_what(seen: &KeptSeen, status: &RestoreRequestStatus, rolled_back: bool) -> String {
    let instance = kept_instance(seen, rolled_back);
    match kept_dir(seen, status, rolled_back) {
        Some(dir) => format!("DB instance {instance} and sites/{dir} are"),
        None => format!("DB instance {instance} is"),
    }
}

/// Walks the rollback's steps; `None` while they are under way (nothing else is planned
/// then), else the `RolledBack` verdict.
fn rollback(
    seen: &KeptSeen,
    status: &mut RestoreRequestStatus,
    now: Timestamp,
    outcome: &mut KeptOutcome,
) -> Option<Verdict> {
    let mut blocked = false;
    for name in ROLLBACK {
        if blocked {
            mark(status, name, StepPhase::Pending, None, now);
            continue;
        }
        let done = status.steps.iter().any(|s| {
            s.name == name && matches!(s.phase, StepPhase::Succeeded | StepPhase::Skipped)
        });
        if done {
            continue;
        }
        match rollback_step(seen, status, name) {
            Step::Done(m) => mark(status, name, StepPhase::Succeeded, Some(m), now),
            Step::Skipped(m) => mark(status, name, StepPhase::Skipped, Some(m), now),
            Step::Waiting(m) => {
                mark(status, name, StepPhase::Running, Some(m), now);
                blocked = true;
            }
            Step::Act(change, m) => {
                mark(status, name, StepPhase::Running, Some(m), now);
                outcome.changes.push(change);
                blocked = true;
            }
            Step::Failed(m) => {
                mark(status, name, StepPhase::Failed, Some(m.clone()), now);
                return Some(Verdict::falsy(
                    ROLLED_BACK,
                    "RollbackFailed",
                    format!(
                        "{name}: {m}; the clinic stays held. Once the cause is fixed, delete the failed Job (if any) to try the step again"
                    ),
                ));
            }
        }
    }
    if blocked {
        outcome.in_progress = true;
        let step = status.steps.iter().find(|s| s.phase == StepPhase::Running);
        outcome.verdicts.push(Verdict::falsy(
            ROLLED_BACK,
            "RollingBack",
            step.map_or_else(String::new, |s| {
                format!("{}: {}", s.name, s.message.clone().unwrap_or_default())
            }),
        ));
        return None;
    }
    Some(if replaced(status) {
        Verdict::truthy(
            ROLLED_BACK,
            "RolledBack",
            format!(
                "clinic {} runs on DB instance {} again with its site as it was; the restored instance {} is kept until the window ends",
                seen.clinic, seen.previous, seen.restored
            ),
        )
    } else {
        Verdict::truthy(
            ROLLED_BACK,
            "NothingReplaced",
            format!(
                "the restore failed before it replaced anything of clinic {}: its hold is released and it runs on its own data",
                seen.clinic
            ),
        )
    })
}

fn rollback_step(seen: &KeptSeen, status: &RestoreRequestStatus, name: &str) -> Step {
    let Some(clinic) = &seen.target else {
        return Step::Failed(format!("clinic {} is gone", seen.clinic));
    };
    let switched_here = clinic.switched_to.as_deref() == Some(seen.restored.as_str());
    // The undo is harmless where nothing was moved: it runs whenever the Job may have.
    let documents = status.previous_documents.is_some();
    match name {
        ROLLBACK_QUIESCE if !switched_here && !documents => {
            Step::Skipped("nothing of the clinic was replaced".into())
        }
        ROLLBACK_QUIESCE if !clinic.sets_reading.is_empty() && (!clinic.held || clinic.quiet) => {
            Step::Waiting(super::steps::sets_reading_message(
                &seen.clinic,
                &clinic.sets_reading,
            ))
        }
        ROLLBACK_QUIESCE if !clinic.held => Step::Act(
            Change::PlaceHold {
                clinic: seen.clinic.clone(),
                clinic_uid: clinic.uid.clone(),
            },
            format!("holding clinic {} to put its data back", seen.clinic),
        ),
        ROLLBACK_QUIESCE if !clinic.quiet => {
            Step::Waiting(format!("clinic {}'s workers and Jobs to stop", seen.clinic))
        }
        ROLLBACK_QUIESCE => Step::Done(format!("clinic {} is quiesced", seen.clinic)),
        ROLLBACK_DOCUMENTS if !documents => {
            Step::Skipped("the clinic's documents were never exchanged".into())
        }
        ROLLBACK_DOCUMENTS if seen.exchange_running => Step::Waiting(format!(
            "the restore's documents Job {} to end: it works on the same directories",
            super::steps::documents_job_name(&seen.uid)
        )),
        ROLLBACK_DOCUMENTS => site_job(seen, clinic, true),
        ROLLBACK_SWITCH if switched_here => Step::Act(
            Change::SwitchDatabase {
                clinic: seen.clinic.clone(),
                identifier: seen.previous.clone(),
                previous: seen.restored.clone(),
            },
            format!(
                "switching clinic {} back to DB instance {}",
                seen.clinic, seen.previous
            ),
        ),
        ROLLBACK_SWITCH
            if clinic.switched_to.as_deref() == Some(seen.previous.as_str())
                && clinic.serving.as_deref() != Some(seen.previous.as_str()) =>
        {
            Step::Waiting(format!(
                "clinic {} to take DB instance {} again",
                seen.clinic, seen.previous
            ))
        }
        ROLLBACK_SWITCH if clinic.serving.as_deref() == Some(seen.previous.as_str()) => {
            Step::Done(format!(
                "clinic {} runs on DB instance {}",
                seen.clinic, seen.previous
            ))
        }
        ROLLBACK_SWITCH => Step::Skipped(format!(
            "clinic {} was never switched to {}",
            seen.clinic, seen.restored
        )),
        ROLLBACK_RELEASE if clinic.held => Step::Act(
            Change::ReleaseHold {
                clinic: seen.clinic.clone(),
            },
            "releasing the hold: the clinic's workers start again".into(),
        ),
        _ => Step::Done("the clinic's web tier may start".into()),
    }
}

/// The Job on the clinic's volume that puts the kept entries back (`undo`) or deletes them.
fn site_job(seen: &KeptSeen, clinic: &ClinicNow, undo: bool) -> Step {
    let (name, job) = if undo {
        (rollback_job_name(&seen.uid), &seen.rollback_job)
    } else {
        (discard_job_name(&seen.uid), &seen.discard_job)
    };
    let token = super::steps::swap_token(&seen.uid);
    match job {
        JobSeen::Absent => {
            let Some(image) = &seen.jobs.image else {
                return Step::Waiting(
                    "a documents image: start the operator with --documents-image".into(),
                );
            };
            let run = &seen.jobs;
            let job = DocumentsJob {
                name: &name,
                namespace: &run.namespace,
                set: &seen.request,
                set_uid: &seen.uid,
                clinic: &seen.clinic,
                task: Task::SiteDirs {
                    claim: &clinic.claim,
                    swap_token: &token,
                    undo,
                },
                image,
                service_account: &run.service_account,
                region: &run.region,
                bucket: &run.bucket,
                kms_key: None,
                backoff_limit: run.backoff_limit,
                deadline_seconds: run.deadline_seconds,
            };
            Step::Act(
                Change::CreateDocumentsJob {
                    name: name.clone(),
                    body: job.render(),
                    network_policy: job.network_policy(),
                },
                if undo {
                    format!("Job {name} puts the kept site entries back")
                } else {
                    format!("Job {name} deletes the kept site entries")
                },
            )
        }
        JobSeen::Running => Step::Waiting(format!("Job {name}")),
        JobSeen::Succeeded(summary) => Step::Done(format!("Job {name}: {}", summary.trim())),
        JobSeen::Failed(words) => Step::Failed(format!("Job {name} failed: {words}")),
        JobSeen::Foreign => Step::Failed(format!("Job {name} belongs to another object")),
    }
}

/// Once the window has ended: the kept instance's final snapshot, then its deletion, and
/// the kept site entries' deletion. Never an instance the clinic runs on.
fn remove(
    seen: &KeptSeen,
    status: &RestoreRequestStatus,
    rolled_back: bool,
    outcome: &mut KeptOutcome,
) -> Verdict {
    let identifier = kept_instance(seen, rolled_back).to_string();
    let in_use = seen.target.as_ref().is_some_and(|c| {
        c.serving.as_deref() == Some(identifier.as_str())
            || c.switched_to.as_deref() == Some(identifier.as_str())
    });
    if in_use {
        return Verdict::falsy(
            PREVIOUS_REMOVED,
            "InUse",
            format!(
                "clinic {} runs on DB instance {identifier}: it is never removed by this request",
                seen.clinic
            ),
        );
    }
    let final_name = final_identifier(&seen.uid);
    let mut waiting = Vec::new();
    match (&seen.leftover, &seen.final_snapshot) {
        (Some(db), _) if db.status == "deleting" => {
            waiting.push(format!("DB instance {identifier} is being deleted"));
        }
        (Some(db), None) if db.status == "available" => {
            let mut tags = seen.tags.clone();
            tags.insert(RESTORED_BY.to_string(), seen.uid.clone());
            outcome.changes.push(Change::SafetySnapshot {
                instance: identifier.clone(),
                identifier: final_name.clone(),
                tags,
            });
            waiting.push(format!(
                "taking final snapshot {final_name} of {identifier}"
            ));
        }
        (Some(_), Some(snapshot)) if snapshot.status != "available" => {
            waiting.push(format!(
                "final snapshot {final_name} is {}",
                snapshot.status
            ));
        }
        (Some(db), Some(_)) if db.deletion_protection => {
            outcome.changes.push(Change::UnprotectKept {
                identifier: identifier.clone(),
            });
            waiting.push(format!("turning off {identifier}'s deletion protection"));
        }
        (Some(db), Some(_)) if db.status == "available" => {
            outcome.changes.push(Change::DeleteKept {
                identifier: identifier.clone(),
            });
            waiting.push(format!("deleting DB instance {identifier}"));
        }
        (Some(db), _) => waiting.push(format!("DB instance {identifier} is {}", db.status)),
        (None, _) => {}
    }
    let dir = kept_dir(seen, status, rolled_back);
    if dir.is_some() && outcome.changes.is_empty() {
        match (&seen.target, &seen.discard_job) {
            (_, JobSeen::Succeeded(_)) | (None, _) => {}
            (Some(clinic), _) => match site_job(seen, clinic, false) {
                Step::Act(change, m) => {
                    outcome.changes.push(change);
                    waiting.push(m);
                }
                Step::Waiting(m) => waiting.push(m),
                Step::Failed(m) => {
                    return Verdict::falsy(PREVIOUS_REMOVED, "RemoveFailed", m);
                }
                Step::Done(_) | Step::Skipped(_) => {}
            },
        }
    }
    if waiting.is_empty() {
        Verdict::truthy(
            PREVIOUS_REMOVED,
            "Removed",
            format!(
                "DB instance {identifier} was deleted after its final snapshot {final_name}{}",
                dir.map(|d| format!(", and sites/{d} with it"))
                    .unwrap_or_default()
            ),
        )
    } else {
        outcome.in_progress = true;
        Verdict::falsy(PREVIOUS_REMOVED, "Removing", waiting.join("; "))
    }
}

/// The end of the window for a request that ended at `done`.
pub fn expires_at(done: Timestamp, keep: std::time::Duration) -> Time {
    Time(
        Timestamp::from_second(done.as_second().saturating_add(keep.as_secs() as i64))
            .unwrap_or(done),
    )
}

/// Whether a finished in-place request's rollback is asked for by its annotation.
pub fn rollback_asked(request: &crate::api::RestoreRequest) -> bool {
    request
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROLLBACK_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// The hold the rollback places is the restore's own (same holder).
pub fn lease(clinic: &str, request: &str) -> String {
    crate::controller::deployment::web::holds::lease_name(clinic, &holder(request))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::restore::RestoreStep;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn seen() -> KeptSeen {
        KeptSeen {
            request: "undo".into(),
            uid: "req-uid".into(),
            clinic: "clinic-a".into(),
            target: Some(ClinicNow {
                uid: "clinic-uid".into(),
                held: false,
                quiet: false,
                serving: Some("restore-new".into()),
                switched_to: Some("restore-new".into()),
                claim: "clinic-a-sites".into(),
                sets_reading: Vec::new(),
            }),
            previous: "clinic-a-db".into(),
            restored: "restore-new".into(),
            rollback_asked: false,
            superseded: None,
            leftover: None,
            final_snapshot: None,
            rollback_job: JobSeen::Absent,
            exchange_running: false,
            discard_job: JobSeen::Absent,
            jobs: SiteJobs {
                namespace: "clinics".into(),
                image: Some("registry.example.org/openemr-operator:1".into()),
                service_account: "openemr-documents".into(),
                backoff_limit: 2,
                deadline_seconds: 600,
                region: "us-east-1".into(),
                bucket: "oe-clinic-a".into(),
            },
            tags: BTreeMap::new(),
        }
    }

    /// What a succeeded in-place restore leaves in its status.
    fn succeeded() -> RestoreRequestStatus {
        let step = |name: &str| RestoreStep {
            name: name.into(),
            phase: StepPhase::Succeeded,
            start_time: Some(Time(at("2026-12-01T10:00:00Z"))),
            completion_time: Some(Time(at("2026-12-01T10:00:00Z"))),
            message: None,
        };
        RestoreRequestStatus {
            phase: Some(RestorePhase::Succeeded),
            steps: super::super::steps::IN_PLACE
                .iter()
                .map(|n| step(n))
                .collect(),
            previous_db_instance: Some("clinic-a-db".into()),
            restored_db_instance: Some("restore-new".into()),
            previous_documents: Some("_previous-x".into()),
            previous_expires_at: Some(Time(at("2026-12-02T10:00:00Z"))),
            ..Default::default()
        }
    }

    fn actions(outcome: &KeptOutcome) -> Vec<String> {
        outcome.changes.iter().map(|c| c.intent().0).collect()
    }

    fn verdict<'a>(outcome: &'a KeptOutcome, kind: &str) -> &'a Verdict {
        outcome.verdicts.iter().find(|v| v.type_ == kind).unwrap()
    }

    /// Asked within the window, the clinic is held, its kept site entries put back, it is
    /// switched back to the instance it ran on and let go; once the window ends, the
    /// restored instance (now the one kept) is snapshotted and deleted, and the restored
    /// entries with it. The instance the clinic runs on is never touched.
    #[test]
    fn a_rollback_puts_the_clinic_back_and_the_window_end_removes_what_was_restored() {
        let mut seen = seen();
        let mut status = succeeded();
        let now = at("2026-12-01T12:00:00Z");
        let out = plan(&seen, &mut status, now);
        assert!(out.changes.is_empty());
        assert_eq!(verdict(&out, PREVIOUS_REMOVED).reason, "Kept");
        assert_eq!(out.until, Some(at("2026-12-02T10:00:00Z")));

        seen.rollback_asked = true;
        let out = plan(&seen, &mut status, now);
        assert_eq!(actions(&out), ["PlaceHold"]);
        assert_eq!(verdict(&out, ROLLED_BACK).reason, "RollingBack");
        let target = seen.target.as_mut().unwrap();
        target.held = true;
        assert!(
            plan(&seen, &mut status, now).changes.is_empty(),
            "waits for quiet"
        );
        seen.target.as_mut().unwrap().quiet = true;
        let out = plan(&seen, &mut status, now);
        let Change::CreateDocumentsJob { body, name, .. } = &out.changes[0] else {
            panic!("{out:?}")
        };
        assert_eq!(name, &rollback_job_name("req-uid"));
        let args = body["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert!(
            args.contains("site-dirs") && args.contains("--undo"),
            "{args}"
        );
        seen.rollback_job = JobSeen::Succeeded("{\"undone\":1}".into());
        let out = plan(&seen, &mut status, now);
        let Change::SwitchDatabase {
            identifier,
            previous,
            ..
        } = &out.changes[0]
        else {
            panic!("{out:?}")
        };
        assert_eq!(
            (identifier.as_str(), previous.as_str()),
            ("clinic-a-db", "restore-new")
        );
        seen.target.as_mut().unwrap().switched_to = Some("clinic-a-db".into());
        assert!(
            plan(&seen, &mut status, now).changes.is_empty(),
            "waits for the clinic"
        );
        seen.target.as_mut().unwrap().serving = Some("clinic-a-db".into());
        let out = plan(&seen, &mut status, now);
        assert_eq!(actions(&out), ["ReleaseHold"]);
        seen.target.as_mut().unwrap().held = false;
        let out = plan(&seen, &mut status, now);
        assert!(out.changes.is_empty());
        assert!(verdict(&out, ROLLED_BACK).status);
        assert_eq!(verdict(&out, PREVIOUS_REMOVED).reason, "Kept");
        assert!(
            verdict(&out, PREVIOUS_REMOVED)
                .message
                .contains("restore-new")
        );
        let names: Vec<&str> = status.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names[11..], ROLLBACK);

        // The window ends: the restored instance goes, after its final snapshot.
        let removed = window_end(&mut seen, &mut status, "restore-new");
        assert!(
            removed.message.contains("_rolled-back-"),
            "{}",
            removed.message
        );
    }

    /// Plays the end of the window: the final snapshot of `instance` (protected), its
    /// protection off, its deletion, the discard Job; the `PreviousRemoved` verdict then.
    fn window_end(
        seen: &mut KeptSeen,
        status: &mut RestoreRequestStatus,
        instance: &str,
    ) -> Verdict {
        let later = at("2026-12-02T10:00:01Z");
        seen.leftover = Some(DbInstance {
            identifier: instance.into(),
            status: "available".into(),
            deletion_protection: true,
            ..DbInstance::default()
        });
        let out = plan(seen, status, later);
        let Change::SafetySnapshot {
            instance: snapshotted,
            identifier,
            ..
        } = &out.changes[0]
        else {
            panic!("{out:?}")
        };
        assert_eq!(
            (snapshotted.as_str(), identifier.as_str()),
            (instance, final_identifier("req-uid").as_str())
        );
        seen.final_snapshot = Some(DbSnapshot {
            identifier: final_identifier("req-uid"),
            status: "available".into(),
            ..DbSnapshot::default()
        });
        assert_eq!(actions(&plan(seen, status, later)), ["ModifyDBInstance"]);
        seen.leftover.as_mut().unwrap().deletion_protection = false;
        assert_eq!(actions(&plan(seen, status, later)), ["DeleteDBInstance"]);
        seen.leftover = None;
        let out = plan(seen, status, later);
        let Change::CreateDocumentsJob { body, .. } = &out.changes[0] else {
            panic!("{out:?}")
        };
        assert!(body.to_string().contains("--discard"));
        seen.discard_job = JobSeen::Succeeded("{}".into());
        let out = plan(seen, status, later);
        assert!(out.changes.is_empty());
        let removed = verdict(&out, PREVIOUS_REMOVED).clone();
        assert!(removed.status, "{removed:?}");
        removed
    }

    #[test]
    fn the_instance_the_clinic_runs_on_is_never_removed() {
        let mut seen = seen();
        // Switched back by hand to the previous instance, no rollback recorded.
        let target = seen.target.as_mut().unwrap();
        target.serving = Some("clinic-a-db".into());
        target.switched_to = Some("clinic-a-db".into());
        seen.leftover = Some(DbInstance {
            identifier: "clinic-a-db".into(),
            status: "available".into(),
            ..DbInstance::default()
        });
        let mut status = succeeded();
        let out = plan(&seen, &mut status, at("2026-12-03T00:00:00Z"));
        assert!(out.changes.is_empty(), "{out:?}");
        assert_eq!(verdict(&out, PREVIOUS_REMOVED).reason, "InUse");
    }

    /// A restore that failed after quiescing the clinic but before replacing anything
    /// only lets it go again; a rollback asked after the window is refused, saying so.
    #[test]
    fn a_failure_before_anything_was_replaced_only_releases_the_clinic() {
        let mut seen = seen();
        let target = seen.target.as_mut().unwrap();
        target.held = true;
        target.serving = Some("clinic-a-db".into());
        target.switched_to = None;
        let mut status = succeeded();
        status.phase = Some(RestorePhase::Failed);
        status.previous_documents = None;
        // Failed at the safety snapshot.
        status.steps.truncate(7);
        status.steps[6].phase = StepPhase::Failed;
        let now = at("2026-12-01T12:00:00Z");
        let out = plan(&seen, &mut status, now);
        assert_eq!(actions(&out), ["ReleaseHold"]);
        seen.target.as_mut().unwrap().held = false;
        let out = plan(&seen, &mut status, now);
        let rolled = verdict(&out, ROLLED_BACK);
        assert_eq!((rolled.status, rolled.reason), (true, "NothingReplaced"));
        let kept = verdict(&out, PREVIOUS_REMOVED);
        assert_eq!(kept.reason, "Kept");
        assert!(
            kept.message.contains("restore-new") && kept.message.contains("_restoring-"),
            "what the restore made is kept for inspection: {}",
            kept.message
        );

        let mut status = succeeded();
        let mut seen = self::seen();
        seen.rollback_asked = true;
        let out = plan(&seen, &mut status, at("2026-12-03T00:00:00Z"));
        assert_eq!(verdict(&out, ROLLED_BACK).reason, "WindowPassed");
        assert!(!actions(&out).contains(&"PlaceHold".to_string()));
    }

    /// A deleted in-place request stays while the clinic is stopped by it or to be put
    /// back, and goes once it never stopped it, succeeded, or was rolled back.
    #[test]
    fn a_request_leaves_the_clinic_settled_only_once_it_is_let_go() {
        let mut status = succeeded();
        assert!(clinic_settled(&status));
        status.phase = Some(RestorePhase::Failed);
        assert!(!clinic_settled(&status), "a rollback is to come");
        let mut seen = seen();
        seen.target.as_mut().unwrap().held = true;
        seen.target.as_mut().unwrap().quiet = true;
        let now = at("2026-12-01T12:00:00Z");
        plan(&seen, &mut status, now);
        assert!(!clinic_settled(&status), "under way");
        seen.rollback_job = JobSeen::Failed("BackoffLimitExceeded".into());
        plan(&seen, &mut status, now);
        assert!(!clinic_settled(&status), "failed: the clinic stays held");

        let mut early = succeeded();
        early.phase = Some(RestorePhase::Failed);
        early.steps.truncate(5);
        assert!(clinic_settled(&early), "never stopped the clinic");

        // Deleted while verifying: the clinic serves the restored data again, and stays so.
        let mut verifying = succeeded();
        verifying.phase = Some(RestorePhase::Verifying);
        verifying.steps.last_mut().unwrap().phase = StepPhase::Running;
        assert!(clinic_settled(&verifying));
        verifying.steps[9].phase = StepPhase::Running;
        assert!(!clinic_settled(&verifying), "held, not yet released");
    }

    /// A restore that failed before it quiesced the clinic (its staging Job failed) never
    /// touches the clinic; what it made (the restored instance, the staged documents) is
    /// kept for the window, then removed: the instance after its final snapshot, the staged
    /// tree by the discard Job. The instance the clinic runs on is not touched.
    #[test]
    fn a_restore_that_failed_before_quiescing_removes_what_it_made_when_the_window_ends() {
        let mut seen = seen();
        let target = seen.target.as_mut().unwrap();
        target.serving = Some("clinic-a-db".into());
        target.switched_to = None;
        let mut status = succeeded();
        status.phase = Some(RestorePhase::Failed);
        status.previous_documents = None;
        status.steps.truncate(5);
        status.steps[4].phase = StepPhase::Failed;
        let out = plan(&seen, &mut status, at("2026-12-01T12:00:00Z"));
        assert!(out.changes.is_empty(), "{out:?}");
        assert!(out.verdicts.iter().all(|v| v.type_ != ROLLED_BACK));
        assert_eq!(verdict(&out, PREVIOUS_REMOVED).reason, "Kept");

        let removed = window_end(&mut seen, &mut status, "restore-new");
        assert!(removed.message.contains("_restoring-"), "{removed:?}");
    }

    /// The documents Job exchanges the site before it reports: a documents step that
    /// failed may have replaced the site, so the rollback puts back whatever is there.
    /// A rollback that fails removes nothing when the window ends.
    #[test]
    fn a_failed_documents_step_is_undone_and_a_failed_rollback_keeps_everything() {
        let mut seen = seen();
        let target = seen.target.as_mut().unwrap();
        target.held = true;
        target.quiet = true;
        target.serving = Some("clinic-a-db".into());
        target.switched_to = None;
        let mut status = succeeded();
        status.phase = Some(RestorePhase::Failed);
        status.steps.truncate(8);
        status.steps[7].phase = StepPhase::Failed;
        let now = at("2026-12-01T12:00:00Z");
        // A documents Job still running (a request deleted mid-exchange) is waited for.
        seen.exchange_running = true;
        let out = plan(&seen, &mut status, now);
        assert!(out.changes.is_empty(), "{out:?}");
        seen.exchange_running = false;
        let out = plan(&seen, &mut status, now);
        let Change::CreateDocumentsJob { name, .. } = &out.changes[0] else {
            panic!("{out:?}")
        };
        assert_eq!(name, &rollback_job_name("req-uid"));

        seen.rollback_job = JobSeen::Failed("BackoffLimitExceeded".into());
        let later = at("2026-12-03T00:00:00Z");
        seen.leftover = Some(DbInstance {
            identifier: "clinic-a-db".into(),
            status: "available".into(),
            ..DbInstance::default()
        });
        let out = plan(&seen, &mut status, later);
        assert!(out.changes.is_empty(), "{out:?}");
        assert_eq!(verdict(&out, ROLLED_BACK).reason, "RollbackFailed");
        assert!(
            verdict(&out, ROLLED_BACK)
                .message
                .contains("delete the failed Job")
        );
        assert_eq!(verdict(&out, PREVIOUS_REMOVED).reason, "RollbackIncomplete");
    }

    /// A rollback asked after another restore replaced the clinic's data since would undo
    /// that one's: refused, naming it.
    #[test]
    fn a_rollback_of_a_restore_superseded_since_is_refused() {
        let mut seen = seen();
        seen.rollback_asked = true;
        seen.superseded = Some("later".into());
        let mut status = succeeded();
        let out = plan(&seen, &mut status, at("2026-12-01T12:00:00Z"));
        assert!(out.changes.is_empty(), "{out:?}");
        let rolled = verdict(&out, ROLLED_BACK);
        assert_eq!((rolled.status, rolled.reason), (false, "Superseded"));
        assert!(rolled.message.contains("later"));
        assert!(status.steps.iter().all(|s| !s.name.starts_with("Rollback")));
    }
}
