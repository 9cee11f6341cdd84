//! The steps of a side-by-side restore, planned from what was observed (pure). Each step
//! finds what an earlier run did (the clinic by its name and mark, the snapshot copy and
//! the instance by their identifiers, the password by logging in with it) before doing it
//! again, so a crash at any point resumes without repeating a call AWS already took.
//!
//! 1. `CreateTarget`: the target clinic, marked [`RESTORED_BY`](crate::controller::deployment::clinic::RESTORED_BY),
//!    and a hold on it (a Lease without a lifetime, owned by the clinic) so no setup Job or
//!    worker starts on a half-restored site. Its stack (key, bucket, file system, network)
//!    is made by the clinic controller as for any clinic.
//! 2. `CopySnapshot`: the source snapshot copied with the target's key (RDS restores a
//!    snapshot with the key it has, and the target has a key of its own), in the target's
//!    region.
//! 3. `RestoreDatabase`: `RestoreDBInstanceFromDBSnapshot` under the target's identifier,
//!    with the target's subnet group, security group, parameter group, settings and tags,
//!    plus the restore's mark; the clinic controller takes it as its database.
//! 4. `ManageMasterPassword`: RDS keeps the snapshot's master password on a MySQL restore;
//!    `ModifyDBInstance` gives the instance a managed secret of its own, under the target's
//!    key, with a password nobody knew before.
//! 5. `ResetDatabaseUser`: as the master user, over TLS, the OpenEMR user's password is set
//!    to the one in the target's own credentials Secret, and OpenEMR's first administrator's
//!    to the one in the target's admin Secret (made for the user the database names, when
//!    the operator generates it; [`crate::mysql::admin`]). Done once that password opens
//!    the database and the administrator's hash there is of the admin Secret's password.
//! 6. `RestoreDocuments`: a Job of the operator's image restores the set's documents into
//!    the target's volume (owners and modes kept) and points its `sqlconf.php` at the
//!    restored instance with the target's OpenEMR password; skipped for a database-only
//!    source.
//! 7. `ReleaseHold`: the target's setup Job attaches to the restored database and site.
//! 8. `Verify`: the request's checks, once the target is Ready.
//!
//! A point in time has no snapshot to copy: `RestoreDBInstanceToPointInTime` takes no key,
//! so what it makes keeps the source's. Three steps go around it ([`POINT_IN_TIME`]):
//! `RestorePointInTime` into a staging instance beside the source (its placement, no
//! backups, no deletion protection), `SnapshotPointInTime` of it, which `CopySnapshot`
//! then copies under the target's key as for a set, and `RemoveStaging` once the target's
//! instance is restored: the staging instance and its snapshot are deleted (both marked
//! as this request's; nothing else is ever deleted).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::source::Resolved;
use crate::api::VerificationCheck;
use crate::api::deployment::DatabaseSpec;
use crate::api::restore::CheckResult;
use crate::api::restore::{RestorePhase, RestoreStep, StepPhase};
use crate::api::{OpenEMRDeployment, RestoreRequestStatus};
use crate::aws::rds::{DbInstance, DbSnapshot, PointInTimeDb, RestoreDb};
use crate::controller::backup::job::{DocumentsJob, SiteDatabase, Task};
use crate::controller::backup::plan::JobSeen;
use crate::controller::deployment::clinic::{RESTORED_BY, short_hash};
use crate::controller::deployment::infra::database::Placement;
use crate::mysql::Endpoint;
use crate::mysql::checks::Finding;

pub const CREATE_TARGET: &str = "CreateTarget";
pub const COPY_SNAPSHOT: &str = "CopySnapshot";
pub const RESTORE_DATABASE: &str = "RestoreDatabase";
pub const MANAGE_MASTER_PASSWORD: &str = "ManageMasterPassword";
pub const RESET_DATABASE_USER: &str = "ResetDatabaseUser";
pub const RESTORE_DOCUMENTS: &str = "RestoreDocuments";
pub const RELEASE_HOLD: &str = "ReleaseHold";
pub const VERIFY: &str = "Verify";
pub const RESTORE_POINT_IN_TIME: &str = "RestorePointInTime";
pub const SNAPSHOT_POINT_IN_TIME: &str = "SnapshotPointInTime";
pub const REMOVE_STAGING: &str = "RemoveStaging";
pub const QUIESCE: &str = "Quiesce";
pub const SAFETY_SNAPSHOT: &str = "SafetySnapshot";
pub const SWITCH_DATABASE: &str = "SwitchDatabase";
pub const STAGE_DOCUMENTS: &str = "StageDocuments";

/// A side-by-side restore's steps, in order.
pub const SIDE_BY_SIDE: [&str; 8] = [
    CREATE_TARGET,
    COPY_SNAPSHOT,
    RESTORE_DATABASE,
    MANAGE_MASTER_PASSWORD,
    RESET_DATABASE_USER,
    RESTORE_DOCUMENTS,
    RELEASE_HOLD,
    VERIFY,
];

/// A side-by-side restore of a point in time's steps, in order.
pub const POINT_IN_TIME: [&str; 11] = [
    CREATE_TARGET,
    RESTORE_POINT_IN_TIME,
    SNAPSHOT_POINT_IN_TIME,
    COPY_SNAPSHOT,
    RESTORE_DATABASE,
    REMOVE_STAGING,
    MANAGE_MASTER_PASSWORD,
    RESET_DATABASE_USER,
    RESTORE_DOCUMENTS,
    RELEASE_HOLD,
    VERIFY,
];

/// An in-place restore's steps, in order. What does not touch the clinic (the copy, the
/// restore into a new instance, its credentials, the documents' download beside the live
/// site) runs while it still serves; it is quiesced only for the safety snapshot, the
/// documents' exchange (renames) and the switch.
pub const IN_PLACE: [&str; 11] = [
    COPY_SNAPSHOT,
    RESTORE_DATABASE,
    MANAGE_MASTER_PASSWORD,
    RESET_DATABASE_USER,
    STAGE_DOCUMENTS,
    QUIESCE,
    SAFETY_SNAPSHOT,
    RESTORE_DOCUMENTS,
    SWITCH_DATABASE,
    RELEASE_HOLD,
    VERIFY,
];

/// An in-place restore of a point in time's steps, in order.
pub const IN_PLACE_POINT_IN_TIME: [&str; 14] = [
    RESTORE_POINT_IN_TIME,
    SNAPSHOT_POINT_IN_TIME,
    COPY_SNAPSHOT,
    RESTORE_DATABASE,
    REMOVE_STAGING,
    MANAGE_MASTER_PASSWORD,
    RESET_DATABASE_USER,
    STAGE_DOCUMENTS,
    QUIESCE,
    SAFETY_SNAPSHOT,
    RESTORE_DOCUMENTS,
    SWITCH_DATABASE,
    RELEASE_HOLD,
    VERIFY,
];

/// The steps restoring `source` takes, side by side or in place.
pub fn steps_of(source: &Resolved, in_place: bool) -> &'static [&'static str] {
    match (source.point_in_time.is_some(), in_place) {
        (true, false) => &POINT_IN_TIME,
        (false, false) => &SIDE_BY_SIDE,
        (true, true) => &IN_PLACE_POINT_IN_TIME,
        (false, true) => &IN_PLACE,
    }
}

/// The new instance an in-place restore restores into (its name carries the request's
/// uid; the clinic is switched to it).
pub fn in_place_identifier(request_uid: &str) -> String {
    format!("restore-{}", short_hash(&[request_uid]))
}

/// The in-place restore's copy of its source snapshot.
pub fn in_place_copy_identifier(request_uid: &str) -> String {
    format!("restore-{}-copy", short_hash(&[request_uid]))
}

/// The snapshot of the clinic's database taken, quiesced, before it is replaced.
pub fn safety_identifier(request_uid: &str) -> String {
    format!("restore-{}-safety", short_hash(&[request_uid]))
}

/// The token of an in-place restore's documents directories on the clinic's volume
/// ([`crate::documents::swap`]).
pub fn swap_token(request_uid: &str) -> String {
    short_hash(&[request_uid])
}

/// The staging instance a point in time is restored into (and its snapshot's name): the
/// request's, whatever its name's length.
pub fn staging_identifier(request_uid: &str) -> String {
    format!("restore-{}-staging", short_hash(&[request_uid]))
}

/// Who holds a restore's target (the Lease is `<clinic>-hold-<holder>`).
pub fn holder(request: &str) -> String {
    format!("restore-{request}")
}

/// The copy of the source snapshot under the target's key: derived from the target's
/// database identifier (≤ 63) and the request's uid, so a restart finds it.
pub fn copy_identifier(db_identifier: &str, request_uid: &str) -> String {
    format!("{db_identifier}-restore-{}", short_hash(&[request_uid]))
}

/// The Job restoring a request's documents (one per request, whatever its name's length).
pub fn documents_job_name(request_uid: &str) -> String {
    format!("restore-documents-{}", short_hash(&[request_uid]))
}

/// In place: the Job that restores the documents beside the live site while the clinic
/// still serves ([`documents_job_name`]'s then only exchanges them).
pub fn stage_job_name(request_uid: &str) -> String {
    format!("stage-documents-{}", short_hash(&[request_uid]))
}

/// What the documents Job is made with.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentsRun {
    pub namespace: String,
    /// The operator's `--documents-image`; none: the step waits, saying so.
    pub image: Option<String>,
    pub service_account: String,
    pub backoff_limit: i32,
    pub deadline_seconds: i64,
    /// The region of the bucket the set's documents are in (the source clinic's).
    pub region: String,
    /// Files the set's documents manifest holds, when the set says.
    pub expected_files: Option<i64>,
    pub job: JobSeen,
    /// In place: restored beside the live site and exchanged for it under this token.
    pub swap_token: Option<String>,
    /// In place: the Job restoring beside the live site before the clinic is quiesced.
    pub stage_job: JobSeen,
}

/// The target clinic, as the caches and AWS show it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSeen {
    pub uid: String,
    /// Made by this request ([`super::target::made_by`]).
    pub ours: bool,
    /// The request's hold on it is placed.
    pub held: bool,
    /// Its `Ready` condition is true.
    pub ready: bool,
    pub region: String,
    /// Its key, once its stack made it.
    pub kms_key: Option<String>,
    /// Where its database goes, once its stack made the pieces.
    pub placement: Option<Placement>,
    /// The tags on everything it makes.
    pub tags: BTreeMap<String, String>,
    /// Its credentials Secret's name, once the Secret exists.
    pub credentials_secret: Option<String>,
    pub database: DatabaseSpec,
    /// The claim of its `sites/` volume.
    pub claim: String,
    /// The instance the restore makes: the clinic's own identifier side by side, a new
    /// one ([`in_place_identifier`]) in place.
    pub restore_identifier: String,
    /// The source snapshot's copy under the clinic's key.
    pub copy_identifier: String,
    /// In place: the clinic as it runs now.
    pub in_place: Option<InPlaceSeen>,
}

/// An in-place target, as its status and AWS show it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InPlaceSeen {
    /// The instance the clinic ran on when the restore started.
    pub previous_identifier: String,
    /// That instance, while its safety snapshot is to be taken.
    pub previous: Option<DbInstance>,
    /// The request's hold has taken effect: no worker and no Job of the clinic runs.
    pub quiet: bool,
    pub safety: Option<DbSnapshot>,
    /// The clinic's `status.databaseSwitch` names the restored instance, by this request.
    pub switched: bool,
    /// The clinic's status says it runs on the restored instance.
    pub serving_restored: bool,
    /// Backup sets of the clinic still reading its live data: the clinic is stopped and
    /// its data replaced only once they have their parts.
    pub sets_reading: Vec<String>,
}

/// The target's first administrator's Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAccount {
    /// The target spec's `web.adminCredentialsSecretRef`, or `<clinic>-admin`.
    pub secret: String,
    /// `<clinic>-admin`, the operator's: made by the restore when missing, for the user
    /// the restored database names its first administrator.
    pub generated: bool,
}

/// The target's first administrator, as the restored database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSeen {
    pub account: AdminAccount,
    /// Whether the database's hash for the Secret's user is of the Secret's password, or
    /// why not; `None` when not looked at (the database was not opened).
    pub matches: Option<Result<(), String>>,
}

/// What the steps are planned from.
#[derive(Debug, Clone)]
pub struct Seen {
    pub request: String,
    pub uid: String,
    pub target_name: String,
    /// The source as fixed when the restore started.
    pub source: Resolved,
    /// The clinic the target is made as; `None` when there is nothing to copy (the source
    /// clinic is gone and the request gives no `deploymentSpec`).
    pub target_spec: Option<OpenEMRDeployment>,
    /// `None`: no clinic of the target's name.
    pub target: Option<TargetSeen>,
    pub copy: Option<DbSnapshot>,
    pub instance: Option<DbInstance>,
    /// Whether the target Secret's password opens the restored database as the OpenEMR
    /// user (looked at once the instance has its own master secret), or why not.
    pub user_opens: Option<Result<(), String>>,
    /// Side by side: the target's first administrator, whose password the restored
    /// database must hold (the source's would open the copy otherwise). In place the
    /// clinic keeps its own: its administrator's password is what the clinic's data says.
    pub admin: Option<AdminSeen>,
    /// Steps recorded done (succeeded or skipped) by an earlier look: what they did stands
    /// (the hold placed by `CreateTarget` is not placed again once released).
    pub done: Vec<String>,
    /// The checks the request asks for.
    pub checks: Vec<VerificationCheck>,
    /// When the request was made: the restore's RTO runs from then, and its RPO is how
    /// old the restored data was then.
    pub requested: Option<Timestamp>,
    /// The database checks' findings, as the OpenEMR user, once the target is Ready.
    pub database_checks: Option<Vec<Finding>>,
    /// The documents Job, for a source with documents.
    pub documents_run: Option<DocumentsRun>,
    /// For a point in time: the source instance and the staging pieces.
    pub staging: Option<StagingSeen>,
    /// Into an existing clinic (`spec.target.inPlace`).
    pub in_place: bool,
}

/// A point in time's way to a snapshot, as AWS shows it (in the source clinic's region).
#[derive(Debug, Clone, PartialEq)]
pub struct StagingSeen {
    /// The source clinic's instance, whose point in time is restored.
    pub source: Option<DbInstance>,
    pub instance: Option<DbInstance>,
    pub snapshot: Option<DbSnapshot>,
}

/// A mutating call the steps ask for.
#[derive(Debug, Clone)]
pub enum Change {
    CreateTarget(Box<OpenEMRDeployment>),
    PlaceHold {
        clinic: String,
        clinic_uid: String,
    },
    CopySnapshot {
        source_arn: String,
        identifier: String,
        kms_key: String,
        tags: BTreeMap<String, String>,
    },
    RestoreDatabase(Box<RestoreDb>),
    RestorePointInTime(Box<PointInTimeDb>),
    /// A snapshot of the staging instance (in the source clinic's region).
    SnapshotStaging {
        instance: String,
        identifier: String,
        tags: BTreeMap<String, String>,
    },
    /// Turns off deletion protection the staging instance came with (it was asked
    /// without; an emulator copies the source's), so it can be deleted.
    UnprotectStaging {
        identifier: String,
    },
    /// Deletes the staging instance (without a final snapshot: its own was copied).
    DeleteStagingInstance {
        identifier: String,
    },
    DeleteStagingSnapshot {
        identifier: String,
    },
    ManageMasterPassword {
        identifier: String,
        kms_key: String,
    },
    ResetDatabaseUser {
        endpoint: Endpoint,
        master_secret_arn: String,
        master_user: String,
        user: String,
        database: String,
        secret: String,
        /// Side by side: the first administrator gets the password in this Secret too.
        admin: Option<AdminAccount>,
    },
    ReleaseHold {
        clinic: String,
    },
    /// The snapshot of an in-place target's database, quiesced, before it is replaced.
    SafetySnapshot {
        instance: String,
        identifier: String,
        tags: BTreeMap<String, String>,
    },
    /// Turns off the deletion protection of an instance an in-place restore kept, once
    /// its window has ended (in the clinic's account and region).
    UnprotectKept {
        identifier: String,
    },
    /// Deletes it, after its final snapshot.
    DeleteKept {
        identifier: String,
    },
    /// Records in the clinic's `status.databaseSwitch` that it runs on `identifier`.
    SwitchDatabase {
        clinic: String,
        identifier: String,
        previous: String,
    },
    /// `keepTargetFor` has passed: the restore's snapshot copy is deleted, then the target
    /// clinic, made to take everything with it (`deletionPolicy: Delete`, no final
    /// snapshot: it holds only copied data).
    RemoveTarget {
        clinic: String,
        /// The uid it was seen with: the calls are made on condition it is still that one.
        clinic_uid: String,
        copy_snapshot: Option<String>,
    },
    /// The documents Job and, first, the NetworkPolicy of its pods.
    CreateDocumentsJob {
        name: String,
        body: serde_json::Value,
        network_policy: serde_json::Value,
    },
}

impl Change {
    /// The action recorded in flight, and its token (what it names).
    pub fn intent(&self) -> (String, String) {
        let (action, token) = match self {
            Change::CreateTarget(c) => {
                ("CreateTarget", c.metadata.name.clone().unwrap_or_default())
            }
            Change::PlaceHold { clinic, .. } => ("PlaceHold", clinic.clone()),
            Change::CopySnapshot { identifier, .. } => ("CopyDBSnapshot", identifier.clone()),
            Change::RestoreDatabase(r) => ("RestoreDBInstanceFromDBSnapshot", r.identifier.clone()),
            Change::RestorePointInTime(r) => {
                ("RestoreDBInstanceToPointInTime", r.identifier.clone())
            }
            Change::SnapshotStaging { identifier, .. } => ("CreateDBSnapshot", identifier.clone()),
            Change::UnprotectStaging { identifier } => ("ModifyDBInstance", identifier.clone()),
            Change::DeleteStagingInstance { identifier } => {
                ("DeleteDBInstance", identifier.clone())
            }
            Change::DeleteStagingSnapshot { identifier } => {
                ("DeleteDBSnapshot", identifier.clone())
            }
            Change::ManageMasterPassword { identifier, .. } => {
                ("ModifyDBInstance", identifier.clone())
            }
            Change::ResetDatabaseUser { user, endpoint, .. } => {
                ("ResetDatabaseUser", format!("{user}@{}", endpoint.host))
            }
            Change::ReleaseHold { clinic } => ("ReleaseHold", clinic.clone()),
            Change::SafetySnapshot { identifier, .. } => ("CreateDBSnapshot", identifier.clone()),
            Change::UnprotectKept { identifier } => ("ModifyDBInstance", identifier.clone()),
            Change::DeleteKept { identifier } => ("DeleteDBInstance", identifier.clone()),
            Change::SwitchDatabase {
                clinic, identifier, ..
            } => ("SwitchDatabase", format!("{clinic}:{identifier}")),
            Change::CreateDocumentsJob { name, .. } => ("CreateDocumentsJob", name.clone()),
            Change::RemoveTarget { clinic, .. } => ("RemoveTarget", clinic.clone()),
        };
        (action.to_string(), token)
    }
}

/// Where the steps stand: the status's steps and phase, and the changes to make.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub changes: Vec<Change>,
    /// The restore failed, with the reason and message.
    pub failed: Option<(&'static str, String)>,
    /// Waiting on AWS or on the target: look again at the progress interval.
    pub in_progress: bool,
}

/// The state of one step and what it needs.
enum Step {
    /// Recorded done by an earlier look: its record stands as it is.
    Recorded,
    Done(String),
    Skipped(String),
    /// Under way; the message says on what it waits.
    Waiting(String),
    /// Not begun: it waits for something else to end first (the message says what).
    Queued(String),
    /// Make this change; the message says what it is.
    Act(Change, String),
    Failed(&'static str, String),
}

/// Plans the steps into `status` (steps, progress, what was made) at `now`.
pub fn plan(seen: &Seen, status: &mut RestoreRequestStatus, now: Timestamp) -> Outcome {
    let mut outcome = Outcome {
        changes: Vec::new(),
        failed: None,
        in_progress: false,
    };
    status.target_deployment = Some(seen.target_name.clone());
    let mut blocked = false;
    let in_place = seen.target.as_ref().and_then(|t| t.in_place.as_ref());
    let names = steps_of(&seen.source, seen.in_place);
    if let Some(target) = in_place {
        status.previous_db_instance = Some(target.previous_identifier.clone());
    }
    // A request that reached the clinic's hold or its documents before `StageDocuments`
    // existed (an operator upgraded mid-restore) restores them as it began to: a stage Job
    // now would write where its exchange Job works.
    let begun = |step: &str| {
        status
            .steps
            .iter()
            .any(|s| s.name == step && s.start_time.is_some())
    };
    let unstaged = (begun(QUIESCE) || begun(RESTORE_DOCUMENTS))
        && !status.steps.iter().any(|s| s.name == STAGE_DOCUMENTS);
    for &name in names {
        if blocked {
            mark(status, name, StepPhase::Pending, None, now);
            continue;
        }
        if name == STAGE_DOCUMENTS && unstaged {
            let why = "the restore began before this step existed: its documents are downloaded by RestoreDocuments";
            mark(status, name, StepPhase::Skipped, Some(why.into()), now);
            continue;
        }
        match step(seen, name) {
            Step::Recorded => {}
            Step::Queued(message) => {
                mark(status, name, StepPhase::Pending, Some(message), now);
                outcome.in_progress = true;
                blocked = true;
            }
            Step::Done(message) => mark(status, name, StepPhase::Succeeded, Some(message), now),
            Step::Skipped(message) => mark(status, name, StepPhase::Skipped, Some(message), now),
            Step::Waiting(message) => {
                mark(status, name, StepPhase::Running, Some(message), now);
                outcome.in_progress = true;
                blocked = true;
            }
            Step::Act(change, message) => {
                mark(status, name, StepPhase::Running, Some(message), now);
                outcome.changes.push(change);
                outcome.in_progress = true;
                blocked = true;
            }
            Step::Failed(reason, message) => {
                mark(status, name, StepPhase::Failed, Some(message.clone()), now);
                outcome.failed = Some((reason, format!("{name}: {message}")));
                blocked = true;
            }
        }
    }
    deadlines(status, &mut outcome, now);
    let safety_taken = status
        .steps
        .iter()
        .any(|s| s.name == SAFETY_SNAPSHOT && s.phase == StepPhase::Succeeded);
    if safety_taken {
        status.safety_snapshot = Some(safety_identifier(&seen.uid));
    }
    // Once its Job exists, the live entries may be moved aside, whatever the step's end:
    // a rollback puts back whatever is there.
    let documents_started = status
        .steps
        .iter()
        .any(|s| s.name == RESTORE_DOCUMENTS && s.start_time.is_some());
    if let (true, Some(token)) = (
        documents_started,
        seen.documents_run
            .as_ref()
            .and_then(|r| r.swap_token.as_ref()),
    ) {
        status.previous_documents = Some(crate::documents::swap::previous_name(token));
    }
    if let Some(db) = &seen.instance {
        status.restored_db_instance = Some(db.identifier.clone());
        status.restored_endpoint = db.endpoint.as_ref().map(|(h, p)| format!("{h}:{p}"));
    }
    let done = status
        .steps
        .iter()
        .filter(|s| matches!(s.phase, StepPhase::Succeeded | StepPhase::Skipped))
        .count();
    status.progress = Some(format!("{done}/{}", names.len()));
    if let Some(findings) = &seen.database_checks {
        status.verification = results(seen, findings)
            .into_iter()
            .map(|mut r| {
                r.time = Some(Time(now));
                r
            })
            .collect();
    }
    if !blocked && let Some(requested) = seen.requested {
        status.completion_time.get_or_insert(Time(now));
        status.rto_seconds = Some(now.as_second() - requested.as_second());
        status.rpo_seconds = seen
            .source
            .data_time
            .map(|d| (requested.as_second() - d.as_second()).max(0));
    }
    status.phase = Some(if outcome.failed.is_some() {
        RestorePhase::Failed
    } else if !blocked {
        RestorePhase::Succeeded
    } else if status
        .steps
        .iter()
        .any(|s| s.name == VERIFY && s.phase == StepPhase::Running)
    {
        RestorePhase::Verifying
    } else {
        RestorePhase::Running
    });
    outcome
}

/// How long a clinic has to take the instance it was switched to. It does at its next look
/// (seconds); one that has not by then is not going to (its `DatabaseReady` says why), and
/// it is stopped meanwhile.
pub const SWITCH_DEADLINE_SECONDS: i64 = 15 * 60;

/// How long the checks wait for the target clinic to be Ready (seconds): its setup Job
/// attaching to the restored database and its workers starting take minutes, image pulls
/// included; a clinic not Ready by then is stuck (its conditions say on what).
pub const VERIFY_DEADLINE_SECONDS: i64 = 30 * 60;

/// Steps that wait on something outside AWS and the request's own Jobs, and so could wait
/// forever: past its deadline such a step fails, so that a request ends (`Failed`, the
/// target kept) and, in place, the rollback puts the clinic back rather than leave it
/// stopped or serving unverified data for good.
const DEADLINES: [(&str, i64, &str, &str); 2] = [
    (
        SWITCH_DATABASE,
        SWITCH_DEADLINE_SECONDS,
        "SwitchNotTaken",
        "the clinic did not take the restored instance within {minutes} minutes of the switch (see its DatabaseReady condition)",
    ),
    (
        VERIFY,
        VERIFY_DEADLINE_SECONDS,
        "VerificationTimedOut",
        "the checks did not finish within {minutes} minutes (see the clinic's Ready condition)",
    ),
];

/// Fails the step under way that has run past its [`DEADLINES`] entry.
fn deadlines(status: &mut RestoreRequestStatus, outcome: &mut Outcome, now: Timestamp) {
    if outcome.failed.is_some() {
        return;
    }
    for (step, seconds, reason, message) in DEADLINES {
        let Some(current) = status
            .steps
            .iter()
            .find(|s| s.name == step && s.phase == StepPhase::Running)
        else {
            continue;
        };
        let Some(started) = current.start_time.as_ref().map(|t| t.0) else {
            continue;
        };
        if now.duration_since(started).as_secs() < seconds {
            continue;
        }
        let waiting = current.message.clone().unwrap_or_default();
        let mut message = message.replace("{minutes}", &(seconds / 60).to_string());
        if !waiting.is_empty() {
            message = format!("{message}; it was waiting for {waiting}");
        }
        mark(status, step, StepPhase::Failed, Some(message.clone()), now);
        outcome.changes.clear();
        outcome.failed = Some((reason, format!("{step}: {message}")));
        return;
    }
}

/// A request deleted while it runs (kept by its finalizer until its clinic is settled)
/// stops: `Failed` with reason `Deleted`, the step under way failed with it, nothing more
/// asked of AWS or the cluster. In place, the rollback then puts the clinic back. The
/// documents Job exchanging the clinic's site is waited for first: a rollback must not
/// move the same entries while it runs.
pub fn stop_for_deletion(
    seen: &Seen,
    status: &mut RestoreRequestStatus,
    outcome: &mut Outcome,
    now: Timestamp,
) {
    if outcome.failed.is_some() || status.phase == Some(RestorePhase::Succeeded) {
        return;
    }
    let exchanging = seen
        .documents_run
        .as_ref()
        .is_some_and(|r| r.swap_token.is_some() && r.job == JobSeen::Running);
    if exchanging {
        return;
    }
    outcome.changes.clear();
    outcome.in_progress = false;
    let running = status
        .steps
        .iter()
        .find(|s| s.phase == StepPhase::Running)
        .map(|s| s.name.clone());
    let message = match &running {
        Some(step) => format!("the request was deleted during {step}"),
        None => "the request was deleted".to_string(),
    };
    if let Some(step) = running {
        mark(status, &step, StepPhase::Failed, Some(message.clone()), now);
    }
    status.phase = Some(RestorePhase::Failed);
    outcome.failed = Some(("Deleted", message));
}

/// The steps of `after` that ended since `before` (the Events and durations the driver
/// publishes for them).
pub fn ended(before: &[RestoreStep], after: &[RestoreStep]) -> Vec<crate::controller::StepEnded> {
    after
        .iter()
        .filter_map(|step| {
            let outcome = match step.phase {
                StepPhase::Succeeded => "Succeeded",
                StepPhase::Skipped => "Skipped",
                StepPhase::Failed => "Failed",
                _ => return None,
            };
            let was = before.iter().find(|b| b.name == step.name).map(|b| b.phase);
            if was == Some(step.phase) {
                return None;
            }
            let seconds = match (&step.start_time, &step.completion_time) {
                (Some(start), Some(end)) => {
                    Some(end.0.duration_since(start.0).as_secs_f64().max(0.0))
                }
                _ => None,
            };
            Some(crate::controller::StepEnded {
                step: step.name.clone(),
                outcome,
                message: step.message.clone().unwrap_or_default(),
                seconds,
            })
        })
        .collect()
}

/// Records `name` as `phase`, keeping when it started and ended.
pub(super) fn mark(
    status: &mut RestoreRequestStatus,
    name: &str,
    phase: StepPhase,
    message: Option<String>,
    now: Timestamp,
) {
    let at = match status.steps.iter().position(|s| s.name == name) {
        Some(at) => at,
        None => {
            status.steps.push(RestoreStep {
                name: name.to_string(),
                ..RestoreStep::default()
            });
            status.steps.len() - 1
        }
    };
    let step = &mut status.steps[at];
    let finished = matches!(
        step.phase,
        StepPhase::Succeeded | StepPhase::Skipped | StepPhase::Failed
    );
    if finished && phase == step.phase {
        // Its times and words stand as they were when it ended.
        return;
    }
    if phase != StepPhase::Pending && step.start_time.is_none() {
        step.start_time = Some(Time(now));
    }
    if matches!(
        phase,
        StepPhase::Succeeded | StepPhase::Skipped | StepPhase::Failed
    ) {
        step.completion_time = Some(Time(now));
    }
    step.phase = phase;
    step.message = message;
}

fn step(seen: &Seen, name: &str) -> Step {
    let Some(target) = &seen.target else {
        if seen.in_place {
            return Step::Failed(
                "TargetDeleted",
                format!(
                    "clinic {} is gone: there is nothing to restore into in place; what was made for it stays (the snapshot copy, the restored instance)",
                    seen.target_name
                ),
            );
        }
        if seen.done.iter().any(|d| d == CREATE_TARGET) {
            // Made, then deleted by someone: taken as giving up, never made again (a new
            // clinic of that name would not be the one the copy and instance were made
            // for).
            return Step::Failed(
                "TargetDeleted",
                format!(
                    "clinic {} was deleted while it was restored into; what was made for it stays (the snapshot copy, the instance)",
                    seen.target_name
                ),
            );
        }
        if name != CREATE_TARGET {
            return Step::Waiting("the target clinic".into());
        }
        return match &seen.target_spec {
            Some(clinic) => Step::Act(
                Change::CreateTarget(Box::new(clinic.clone())),
                format!("creating clinic {}", seen.target_name),
            ),
            None => Step::Failed(
                "NoTargetSpec",
                "the source clinic is gone and spec.target.sideBySide.deploymentSpec is unset: there is no spec to make the target clinic from".into(),
            ),
        };
    };
    if !target.ours && target.in_place.is_none() {
        return Step::Failed(
            "TargetExists",
            format!(
                "clinic {} exists and was not made by this request; a side-by-side restore never overwrites a clinic",
                seen.target_name
            ),
        );
    }
    if seen.done.iter().any(|d| d == name) {
        return Step::Recorded;
    }
    match name {
        CREATE_TARGET if !target.held => Step::Act(
            Change::PlaceHold {
                clinic: seen.target_name.clone(),
                clinic_uid: target.uid.clone(),
            },
            "holding the target clinic's web tier until its site is restored".into(),
        ),
        CREATE_TARGET => Step::Done(format!(
            "clinic {} made and held (Lease {})",
            seen.target_name,
            crate::controller::deployment::web::holds::lease_name(
                &seen.target_name,
                &holder(&seen.request)
            )
        )),
        RESTORE_POINT_IN_TIME => point_in_time_step(seen, target),
        SNAPSHOT_POINT_IN_TIME => staging_snapshot_step(seen, target),
        COPY_SNAPSHOT => copy_step(seen, target),
        RESTORE_DATABASE => restore_step(seen, target),
        REMOVE_STAGING => remove_staging_step(seen),
        MANAGE_MASTER_PASSWORD => match &seen.instance {
            Some(db) if own_secret(db, target) && db.status == "available" => Step::Done(
                "the instance has its own managed master secret, under the target's key".into(),
            ),
            Some(db) if own_secret(db, target) => Step::Waiting(format!(
                "RDS is applying the managed master password (instance {})",
                db.status
            )),
            Some(db) if db.status == "available" => match &target.kms_key {
                Some(key) => Step::Act(
                    Change::ManageMasterPassword {
                        identifier: db.identifier.clone(),
                        kms_key: key.clone(),
                    },
                    "turning on the master password RDS manages, under the target's key".into(),
                ),
                None => Step::Waiting("the target's key".into()),
            },
            Some(db) => Step::Waiting(format!("instance {}", db.status)),
            None => Step::Waiting("the restored instance".into()),
        },
        RESET_DATABASE_USER => reset_step(seen, target),
        RESTORE_DOCUMENTS => documents_step(seen, target, false),
        STAGE_DOCUMENTS => documents_step(seen, target, true),
        QUIESCE => quiesce_step(seen, target),
        SAFETY_SNAPSHOT => safety_step(seen, target),
        SWITCH_DATABASE => switch_step(seen, target),
        RELEASE_HOLD if target.held => Step::Act(
            Change::ReleaseHold {
                clinic: seen.target_name.clone(),
            },
            if target.in_place.is_some() {
                "releasing the hold: the clinic's workers start on the restored database and site"
            } else {
                "releasing the hold: the target's setup Job attaches to the restored database"
            }
            .into(),
        ),
        RELEASE_HOLD => Step::Done("the target's web tier may start".into()),
        VERIFY => verify_step(seen, target),
        _ => Step::Waiting("the steps before".into()),
    }
}

/// In place: the clinic's web tier held, and nothing of it left running.
fn quiesce_step(seen: &Seen, target: &TargetSeen) -> Step {
    let quiet = target.in_place.as_ref().is_some_and(|p| p.quiet);
    let reading = target
        .in_place
        .as_ref()
        .map(|p| p.sets_reading.as_slice())
        .unwrap_or_default();
    // Looked at before the hold (the clinic serves while the set finishes; the step has not
    // begun) and again once it is in effect: a set that started as the hold went on shows
    // by then.
    if !reading.is_empty() && !target.held {
        return Step::Queued(sets_reading_message(&seen.target_name, reading));
    }
    if !reading.is_empty() && quiet {
        return Step::Waiting(sets_reading_message(&seen.target_name, reading));
    }
    if !target.held {
        return Step::Act(
            Change::PlaceHold {
                clinic: seen.target_name.clone(),
                clinic_uid: target.uid.clone(),
            },
            format!(
                "holding clinic {}'s web tier: its workers and Jobs stop before its data is replaced",
                seen.target_name
            ),
        );
    }
    if quiet {
        Step::Done(format!(
            "clinic {} is quiesced (Lease {}): no worker or Job of it runs",
            seen.target_name,
            crate::controller::deployment::web::holds::lease_name(
                &seen.target_name,
                &holder(&seen.request)
            )
        ))
    } else {
        Step::Waiting(format!(
            "clinic {}'s workers and Jobs to stop",
            seen.target_name
        ))
    }
}

/// Why the clinic is not stopped yet: backup sets still read its live data.
pub fn sets_reading_message(clinic: &str, sets: &[String]) -> String {
    format!(
        "backup set(s) {} of clinic {clinic} to take their parts: a set taken while its data is replaced would pair the database before with the documents after",
        sets.join(", ")
    )
}

/// Whether an in-place restore with `status` is at its `Quiesce` step (every step before
/// it done, it not yet), or its rollback at `RollbackQuiesce`: a set of the clinic not yet
/// begun then waits, or sets taken back to back could keep the restore from ever finding
/// the clinic free to stop. From the hold on, the clinic is not Ready and sets wait for
/// that.
pub fn at_quiesce(status: &RestoreRequestStatus) -> bool {
    if let Some(rollback) = status
        .steps
        .iter()
        .find(|s| s.name == super::kept::ROLLBACK_QUIESCE)
    {
        return matches!(rollback.phase, StepPhase::Pending | StepPhase::Running);
    }
    if matches!(
        status.phase,
        Some(RestorePhase::Succeeded | RestorePhase::Failed)
    ) {
        return false;
    }
    let Some(at) = status.steps.iter().position(|s| s.name == QUIESCE) else {
        return false;
    };
    status.steps[..at]
        .iter()
        .all(|s| matches!(s.phase, StepPhase::Succeeded | StepPhase::Skipped))
        && status.steps[at].phase != StepPhase::Succeeded
}

/// In place, quiesced: a snapshot of the database about to be replaced, as it stands.
fn safety_step(seen: &Seen, target: &TargetSeen) -> Step {
    let Some(in_place) = &target.in_place else {
        return Step::Skipped("side by side: nothing is replaced".into());
    };
    let identifier = safety_identifier(&seen.uid);
    match &in_place.safety {
        Some(snapshot) if !ours(&snapshot.tags, &seen.uid) => Step::Failed(
            "SafetySnapshotExists",
            format!("DB snapshot {identifier} exists and was not made by this request"),
        ),
        Some(snapshot) if snapshot.status == "available" => Step::Done(format!(
            "DB snapshot {identifier} of {}",
            in_place.previous_identifier
        )),
        Some(snapshot) if snapshot.status == "failed" => Step::Failed(
            "SnapshotFailed",
            format!("RDS reports the safety snapshot {identifier} failed"),
        ),
        Some(snapshot) => Step::Waiting(format!("snapshot {identifier} is {}", snapshot.status)),
        None => match &in_place.previous {
            Some(db) if db.status == "available" => {
                let mut tags = target.tags.clone();
                tags.insert(RESTORED_BY.to_string(), seen.uid.clone());
                Step::Act(
                    Change::SafetySnapshot {
                        instance: db.identifier.clone(),
                        identifier: identifier.clone(),
                        tags,
                    },
                    format!(
                        "taking snapshot {identifier} of {} before it is replaced",
                        db.identifier
                    ),
                )
            }
            Some(db) => Step::Waiting(format!("DB instance {} is {}", db.identifier, db.status)),
            None => Step::Failed(
                "DatabaseNotFound",
                format!(
                    "clinic {}'s DB instance {} does not exist: there is nothing to keep a snapshot of",
                    seen.target_name, in_place.previous_identifier
                ),
            ),
        },
    }
}

/// In place: the clinic told to run on the restored instance, and seen doing so.
fn switch_step(seen: &Seen, target: &TargetSeen) -> Step {
    let Some(in_place) = &target.in_place else {
        return Step::Skipped("side by side: the clinic was made on its database".into());
    };
    let identifier = &target.restore_identifier;
    if in_place.switched && in_place.serving_restored {
        Step::Done(format!(
            "clinic {} runs on DB instance {identifier} (was {})",
            seen.target_name, in_place.previous_identifier
        ))
    } else if in_place.switched {
        Step::Waiting(format!(
            "clinic {} to take DB instance {identifier}",
            seen.target_name
        ))
    } else {
        Step::Act(
            Change::SwitchDatabase {
                clinic: seen.target_name.clone(),
                identifier: identifier.clone(),
                previous: in_place.previous_identifier.clone(),
            },
            format!(
                "switching clinic {} from DB instance {} to {identifier}",
                seen.target_name, in_place.previous_identifier
            ),
        )
    }
}

/// The documents Job. Side by side: restores the set into the target's volume. In place,
/// two Jobs of the same command: `stage` restores beside the live site while the clinic
/// still serves; the second, once it is quiesced, finds that tree complete and only
/// exchanges it for the live entries (renames), so the clinic is down for the exchange,
/// not the download.
fn documents_step(seen: &Seen, target: &TargetSeen, stage: bool) -> Step {
    let (Some(documents), Some(run)) = (&seen.source.documents, &seen.documents_run) else {
        return Step::Skipped(
            "the source has no documents (a database-only set): the target's sites/ stays empty, and its setup Job waits for a configured site copied onto its volume".into(),
        );
    };
    let token = run.swap_token.as_deref();
    let (name, job) = match (stage, token) {
        (true, None) => return Step::Skipped("side by side: nothing to stage beside".into()),
        (true, Some(_)) => (stage_job_name(&seen.uid), &run.stage_job),
        (false, _) => (documents_job_name(&seen.uid), &run.job),
    };
    match job {
        JobSeen::Absent => {
            let Some(image) = &run.image else {
                return Step::Waiting(
                    "a documents image: start the operator with --documents-image".into(),
                );
            };
            let Some((host, port)) = seen.instance.as_ref().and_then(|d| d.endpoint.clone()) else {
                return Step::Waiting("the restored instance's endpoint".into());
            };
            let Some(secret) = &target.credentials_secret else {
                return Step::Waiting("the target's credentials Secret".into());
            };
            let job = DocumentsJob {
                name: &name,
                namespace: &run.namespace,
                set: &seen.request,
                set_uid: &seen.uid,
                clinic: &seen.target_name,
                task: Task::Restore {
                    claim: &target.claim,
                    manifest: &documents.manifest,
                    site: SiteDatabase {
                        host: &host,
                        port: u16::try_from(port).unwrap_or(3306),
                        login: &target.database.username,
                        database: &target.database.database_name,
                        password_secret: secret,
                    },
                    swap_token: token,
                    stage_only: stage,
                },
                image,
                service_account: &run.service_account,
                region: &run.region,
                bucket: &documents.bucket,
                kms_key: None,
                backoff_limit: run.backoff_limit,
                deadline_seconds: run.deadline_seconds,
            };
            let what = match token {
                Some(token) if stage => format!(
                    "restores s3://{}/{} beside the live site (sites/_restoring-{token}) while the clinic serves",
                    documents.bucket, documents.manifest
                ),
                Some(token) => format!(
                    "exchanges the restored entries for the live ones (kept in {})",
                    crate::documents::swap::previous_name(token)
                ),
                None => format!(
                    "restores s3://{}/{} into the target's volume",
                    documents.bucket, documents.manifest
                ),
            };
            Step::Act(
                Change::CreateDocumentsJob {
                    name: name.clone(),
                    body: job.render(),
                    network_policy: job.network_policy(),
                },
                format!("Job {name} {what}"),
            )
        }
        JobSeen::Running if stage => Step::Waiting(format!(
            "Job {name} is restoring the documents beside the live site"
        )),
        JobSeen::Running => Step::Waiting(format!("Job {name} is restoring the documents")),
        JobSeen::Succeeded(summary) => match documents_present(summary, run.expected_files) {
            Ok(message) if stage => Step::Done(format!(
                "{message}; staged in sites/_restoring-{}",
                token.unwrap_or_default()
            )),
            Ok(message) => Step::Done(message),
            Err(message) => Step::Failed("DocumentsIncomplete", message),
        },
        JobSeen::Failed(words) => Step::Failed(
            "DocumentsRestoreFailed",
            format!("the documents Job {name} failed: {words}"),
        ),
        JobSeen::Foreign => Step::Failed(
            "DocumentsJobTaken",
            format!("Job {name} belongs to another object"),
        ),
    }
}

/// What the documents Job's summary says: the files restored (as many as the set holds,
/// when it says) and the site pointed at the restored database; or what is missing.
pub fn documents_present(summary: &str, expected: Option<i64>) -> Result<String, String> {
    let line: serde_json::Value = serde_json::from_str(summary.trim())
        .map_err(|_| format!("the documents Job's summary is not JSON: {summary:?}"))?;
    let files = line["files"].as_i64().unwrap_or_default();
    let host = line["siteConfig"]["host"].as_str().unwrap_or_default();
    if host.is_empty() {
        return Err("the documents Job did not point sqlconf.php at the restored database".into());
    }
    match expected {
        Some(want) if want != files => Err(format!(
            "the documents Job restored {files} files; the set holds {want}"
        )),
        _ if files == 0 => Err("the documents Job restored no files".into()),
        _ => Ok(format!(
            "{files} files ({} bytes) restored; sqlconf.php points at {host}",
            line["bytes"].as_i64().unwrap_or_default()
        )),
    }
}

/// The checks, once the target is Ready (its setup Job attached to the restored database
/// and its workers serve) and the database was checked as the OpenEMR user.
fn verify_step(seen: &Seen, target: &TargetSeen) -> Step {
    if !target.ready {
        return Step::Waiting(format!(
            "clinic {} to be Ready (its setup Job attaches to the restored database, then its workers start)",
            seen.target_name
        ));
    }
    let Some(findings) = &seen.database_checks else {
        return Step::Waiting("the database checks".into());
    };
    let failed: Vec<String> = findings
        .iter()
        .filter(|f| !f.passed)
        .map(|f| format!("{:?}: {}", f.check, f.message))
        .collect();
    if failed.is_empty() {
        let not_run = if seen.source.documents.is_none()
            && seen.checks.contains(&VerificationCheck::DocumentsPresent)
        {
            "; DocumentsPresent not run: the source has no documents"
        } else {
            ""
        };
        Step::Done(format!(
            "{} checks passed{not_run}",
            results(seen, findings).len()
        ))
    } else {
        Step::Failed("VerificationFailed", failed.join("; "))
    }
}

/// The results of the checks the request asked for, as far as they ran.
pub fn results(seen: &Seen, findings: &[Finding]) -> Vec<CheckResult> {
    let mut results: Vec<CheckResult> = findings
        .iter()
        .filter(|f| seen.checks.contains(&f.check))
        .map(|f| CheckResult {
            check: f.check,
            passed: f.passed,
            time: None,
            message: Some(f.message.clone()),
        })
        .collect();
    let restored = seen.documents_run.as_ref().and_then(|run| match &run.job {
        JobSeen::Succeeded(summary) => Some(documents_present(summary, run.expected_files)),
        _ => None,
    });
    if let (true, Some(restored)) = (
        seen.checks.contains(&VerificationCheck::DocumentsPresent),
        restored,
    ) {
        results.push(CheckResult {
            check: VerificationCheck::DocumentsPresent,
            passed: restored.is_ok(),
            time: None,
            message: Some(restored.unwrap_or_else(|e| e)),
        });
    }
    if seen.checks.contains(&VerificationCheck::WebReady) {
        let ready = seen.target.as_ref().is_some_and(|t| t.ready);
        results.push(CheckResult {
            check: VerificationCheck::WebReady,
            passed: ready,
            time: None,
            message: Some(format!(
                "clinic {} is {}",
                seen.target_name,
                if ready { "Ready" } else { "not Ready" }
            )),
        });
    }
    results
}

/// Whether a staging instance or snapshot is this request's (marked with its uid).
fn ours(tags: &BTreeMap<String, String>, uid: &str) -> bool {
    tags.get(RESTORED_BY).map(String::as_str) == Some(uid)
}

/// RDS states of an instance that will never become available.
fn broken(status: &str) -> bool {
    matches!(
        status,
        "failed" | "incompatible-restore" | "incompatible-parameters" | "incompatible-network"
    )
}

fn point_in_time_step(seen: &Seen, target: &TargetSeen) -> Step {
    let identifier = staging_identifier(&seen.uid);
    let staging = seen.staging.clone().unwrap_or(StagingSeen {
        source: None,
        instance: None,
        snapshot: None,
    });
    let Some((clinic, time)) = &seen.source.point_in_time else {
        return Step::Failed(
            "SourceIncomplete",
            "the source names no point in time".into(),
        );
    };
    let at = time.to_string();
    match (&staging.instance, &staging.snapshot) {
        (Some(db), _) if !ours(&db.tags, &seen.uid) => Step::Failed(
            "StagingExists",
            format!("DB instance {identifier} exists and was not made by this request"),
        ),
        (Some(db), _) if db.status == "available" => Step::Done(format!(
            "DB instance {identifier}: the source's database at {at}"
        )),
        (Some(db), _) if broken(&db.status) => Step::Failed(
            "RestoreFailed",
            format!("RDS reports DB instance {identifier} {}", db.status),
        ),
        (Some(db), _) => Step::Waiting(format!(
            "RDS restores {at} into {identifier} (instance {})",
            db.status
        )),
        // Taken already: the instance may be gone.
        (None, Some(_)) => Step::Done(format!("restored {at} into {identifier}")),
        (None, None) => {
            let Some(source) = &staging.source else {
                return Step::Failed(
                    "SourceNotFound",
                    format!(
                        "clinic {clinic}'s DB instance does not exist: nothing to restore a point in time of"
                    ),
                );
            };
            let mut tags = target.tags.clone();
            tags.insert(RESTORED_BY.to_string(), seen.uid.clone());
            Step::Act(
                Change::RestorePointInTime(Box::new(PointInTimeDb {
                    source: source.identifier.clone(),
                    identifier: identifier.clone(),
                    time: std::time::SystemTime::from(*time),
                    instance_class: source.instance_class.clone(),
                    subnet_group: source.subnet_group.clone(),
                    security_groups: source.security_groups.clone(),
                    parameter_group: source.parameter_groups.first().cloned(),
                    tags,
                })),
                format!(
                    "restoring {}'s database at {at} into the staging instance {identifier} (it keeps the source's key; its snapshot is copied under the target's)",
                    source.identifier
                ),
            )
        }
    }
}

fn staging_snapshot_step(seen: &Seen, target: &TargetSeen) -> Step {
    let identifier = staging_identifier(&seen.uid);
    let staging = seen.staging.as_ref();
    match staging.and_then(|s| s.snapshot.as_ref()) {
        Some(snapshot) if !ours(&snapshot.tags, &seen.uid) => Step::Failed(
            "StagingExists",
            format!("DB snapshot {identifier} exists and was not made by this request"),
        ),
        Some(snapshot) if snapshot.status == "available" => {
            Step::Done(format!("DB snapshot {identifier}"))
        }
        Some(snapshot) if snapshot.status == "failed" => Step::Failed(
            "SnapshotFailed",
            format!("RDS reports the snapshot {identifier} failed"),
        ),
        Some(snapshot) => Step::Waiting(format!("snapshot {identifier} is {}", snapshot.status)),
        None => match staging.and_then(|s| s.instance.as_ref()) {
            Some(db) if db.status == "available" => {
                let mut tags = target.tags.clone();
                tags.insert(RESTORED_BY.to_string(), seen.uid.clone());
                Step::Act(
                    Change::SnapshotStaging {
                        instance: db.identifier.clone(),
                        identifier: identifier.clone(),
                        tags,
                    },
                    format!("taking snapshot {identifier} of the staging instance"),
                )
            }
            Some(db) => Step::Waiting(format!("staging instance {}", db.status)),
            None => Step::Waiting("the staging instance".into()),
        },
    }
}

/// Once the target's instance is restored, the staging pieces go: only those marked as
/// this request's.
fn remove_staging_step(seen: &Seen) -> Step {
    let Some(staging) = seen.staging.as_ref() else {
        return Step::Skipped(format!(
            "the source clinic is gone, and the staging instance and snapshot {} (if there) with it from this request's view: delete them by hand in its region",
            staging_identifier(&seen.uid)
        ));
    };
    let staging = Some(staging);
    if let Some(db) = staging.and_then(|s| s.instance.as_ref())
        && ours(&db.tags, &seen.uid)
        && db.status != "deleting"
    {
        if db.deletion_protection {
            return match db.status.as_str() {
                "available" => Step::Act(
                    Change::UnprotectStaging {
                        identifier: db.identifier.clone(),
                    },
                    format!(
                        "turning off the deletion protection the staging instance {} came with",
                        db.identifier
                    ),
                ),
                status => Step::Waiting(format!("staging instance {status}")),
            };
        }
        return Step::Act(
            Change::DeleteStagingInstance {
                identifier: db.identifier.clone(),
            },
            format!("deleting the staging instance {}", db.identifier),
        );
    }
    if let Some(snapshot) = staging.and_then(|s| s.snapshot.as_ref())
        && ours(&snapshot.tags, &seen.uid)
        && snapshot.status != "deleting"
    {
        return Step::Act(
            Change::DeleteStagingSnapshot {
                identifier: snapshot.identifier.clone(),
            },
            format!("deleting the staging snapshot {}", snapshot.identifier),
        );
    }
    Step::Done(format!(
        "the staging instance and snapshot {} are deleted",
        staging_identifier(&seen.uid)
    ))
}

/// Whether the instance's managed master secret is the target's own: one under the
/// target's key. A restored instance may come with its snapshot's secret (the source's,
/// which the source may delete), never to be used.
fn own_secret(db: &DbInstance, target: &TargetSeen) -> bool {
    db.master_user_secret_arn.is_some()
        && target.kms_key.is_some()
        && db.master_user_secret_kms_key == target.kms_key
}

fn copy_step(seen: &Seen, target: &TargetSeen) -> Step {
    let staged = seen
        .staging
        .as_ref()
        .and_then(|s| s.snapshot.as_ref()?.arn.clone());
    let Some(source_arn) = seen.source.snapshot_arn.as_ref().or(staged.as_ref()) else {
        return Step::Failed(
            "SourceIncomplete",
            "the source names no snapshot ARN".into(),
        );
    };
    if seen.instance.is_some() {
        // Restored already: the copy may be gone (deleted once restored, by hand).
        return Step::Done("restored from the copy".into());
    }
    let Some(kms_key) = &target.kms_key else {
        return Step::Waiting("the target clinic's stack (its key)".into());
    };
    let identifier = target.copy_identifier.clone();
    match &seen.copy {
        None => {
            let mut tags = target.tags.clone();
            tags.insert(RESTORED_BY.to_string(), seen.uid.clone());
            Step::Act(
                Change::CopySnapshot {
                    source_arn: source_arn.clone(),
                    identifier: identifier.clone(),
                    kms_key: kms_key.clone(),
                    tags,
                },
                format!("copying {source_arn} as {identifier} under the target's key"),
            )
        }
        Some(copy) if copy.status == "available" => {
            Step::Done(format!("{identifier} (under the target's key)"))
        }
        Some(copy) if copy.status == "failed" => Step::Failed(
            "SnapshotCopyFailed",
            format!("RDS reports the copy {identifier} failed"),
        ),
        Some(copy) => Step::Waiting(format!("copy {identifier} is {}", copy.status)),
    }
}

fn restore_step(seen: &Seen, target: &TargetSeen) -> Step {
    match &seen.instance {
        Some(db) if !ours(&db.tags, &seen.uid) => Step::Failed(
            "TargetDatabaseExists",
            format!(
                "DB instance {} exists and was not restored by this request",
                db.identifier
            ),
        ),
        Some(db) if db.status == "available" || own_secret(db, target) => {
            Step::Done(format!("DB instance {}", db.identifier))
        }
        Some(db) if broken(&db.status) => Step::Failed(
            "RestoreFailed",
            format!("RDS reports DB instance {} {}", db.identifier, db.status),
        ),
        Some(db) => Step::Waiting(format!("DB instance {} is {}", db.identifier, db.status)),
        None => {
            let Some(placement) = &target.placement else {
                return Step::Waiting(
                    "the target clinic's stack (subnet group, security group, parameter group)"
                        .into(),
                );
            };
            let mut tags = target.tags.clone();
            tags.insert(RESTORED_BY.to_string(), seen.uid.clone());
            let spec = &target.database;
            let request = RestoreDb {
                identifier: target.restore_identifier.clone(),
                snapshot: target.copy_identifier.clone(),
                instance_class: spec.instance_class.clone(),
                multi_az: spec.multi_az,
                backup_retention: spec.backup_retention_days,
                backup_window: spec.backup_window.clone(),
                deletion_protection: spec.deletion_protection,
                subnet_group: placement.subnet_group.clone(),
                security_group: placement.security_group.clone(),
                parameter_group: placement.parameter_group.clone(),
                tags,
            };
            Step::Act(
                Change::RestoreDatabase(Box::new(request)),
                format!("restoring DB instance {}", target.restore_identifier),
            )
        }
    }
}

fn reset_step(seen: &Seen, target: &TargetSeen) -> Step {
    let Some(db) = &seen.instance else {
        return Step::Waiting("the restored instance".into());
    };
    let Some(secret) = &target.credentials_secret else {
        return Step::Waiting(format!(
            "the target clinic's credentials Secret {}-db-credentials",
            seen.target_name
        ));
    };
    let admin_done = seen
        .admin
        .as_ref()
        .is_none_or(|a| a.matches == Some(Ok(())));
    let admin_said = seen
        .admin
        .as_ref()
        .map(|a| {
            format!(
                "; the first administrator's, the one in Secret {}",
                a.account.secret
            )
        })
        .unwrap_or_default();
    match &seen.user_opens {
        Some(Ok(())) if admin_done => Step::Done(format!(
            "{}'s password is the one in Secret {secret}{admin_said}",
            target.database.username
        )),
        _ => {
            let (Some((host, port)), Some(arn)) = (&db.endpoint, &db.master_user_secret_arn) else {
                return Step::Waiting("the instance's endpoint and master secret".into());
            };
            Step::Act(
                Change::ResetDatabaseUser {
                    endpoint: Endpoint {
                        host: host.clone(),
                        port: u16::try_from(*port).unwrap_or(3306),
                    },
                    master_secret_arn: arn.clone(),
                    master_user: db.master_username.clone().unwrap_or_else(|| {
                        crate::controller::deployment::infra::database::MASTER_USERNAME.to_string()
                    }),
                    user: target.database.username.clone(),
                    database: target.database.database_name.clone(),
                    secret: secret.clone(),
                    admin: seen.admin.as_ref().map(|a| a.account.clone()),
                },
                format!(
                    "setting {}'s password to the one in Secret {secret}{admin_said}",
                    target.database.username
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::restore::source::Documents;

    const KEY: &str = "arn:aws:kms:us-east-1:1:key/target";

    fn now() -> Timestamp {
        "2026-12-01T10:00:00Z".parse().unwrap()
    }

    fn target() -> TargetSeen {
        TargetSeen {
            uid: "clinic-uid".into(),
            ours: true,
            held: false,
            ready: false,
            region: "us-east-1".into(),
            restore_identifier: "copy-db".into(),
            copy_identifier: copy_identifier("copy-db", "req-uid"),
            in_place: None,
            kms_key: None,
            placement: None,
            tags: BTreeMap::from([("openemr.io/cluster".to_string(), "c1".to_string())]),
            credentials_secret: None,
            database: DatabaseSpec::default(),
            claim: "copy-a-sites".into(),
        }
    }

    fn seen() -> Seen {
        Seen {
            request: "restore-a".into(),
            uid: "req-uid".into(),
            target_name: "copy-a".into(),
            source: Resolved {
                set: Some("set-1".into()),
                snapshot_arn: Some("arn:aws:rds:us-east-1:1:snapshot:set-1".into()),
                point_in_time: None,
                data_time: Some("2026-12-01T02:00:00Z".parse().unwrap()),
                documents: None,
                documents_behind_seconds: None,
                region: None,
                engine_version: None,
                image: None,
            },
            target_spec: Some(OpenEMRDeployment::new(
                "copy-a",
                serde_json::from_value(serde_json::json!({
                    "aws": {"region": "us-east-1"},
                    "network": {"vpcId": "vpc-1", "subnetIds": ["subnet-1", "subnet-2"]},
                }))
                .unwrap(),
            )),
            target: None,
            copy: None,
            instance: None,
            user_opens: None,
            admin: None,
            done: Vec::new(),
            checks: VerificationCheck::all(),
            requested: Some("2026-12-01T09:00:00Z".parse().unwrap()),
            database_checks: None,
            documents_run: None,
            staging: None,
            in_place: false,
        }
    }

    fn instance(status: &str) -> DbInstance {
        DbInstance {
            identifier: "copy-db".into(),
            status: status.into(),
            endpoint: Some(("copy-db.example".into(), 3306)),
            master_username: Some("openemr_admin".into()),
            tags: BTreeMap::from([(RESTORED_BY.to_string(), "req-uid".to_string())]),
            ..DbInstance::default()
        }
    }

    /// Plans `seen` over `status`, keeping the steps' memory as the controller does.
    fn step_once(seen: &mut Seen, status: &mut RestoreRequestStatus) -> Outcome {
        let outcome = plan(seen, status, now());
        seen.done = status
            .steps
            .iter()
            .filter(|s| matches!(s.phase, StepPhase::Succeeded | StepPhase::Skipped))
            .map(|s| s.name.clone())
            .collect();
        outcome
    }

    fn action(outcome: &Outcome) -> String {
        outcome
            .changes
            .iter()
            .map(|c| c.intent().0)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A step that reaches an end once is told once, with how long it took; steps under
    /// way or already told are not.
    #[test]
    fn each_step_that_ends_is_told_once_with_its_duration() {
        let mut seen = seen();
        let mut status = RestoreRequestStatus::default();
        step_once(&mut seen, &mut status);
        let before = status.steps.clone();
        seen.target = Some(TargetSeen {
            held: true,
            ..target()
        });
        let later: Timestamp = "2026-12-01T10:02:00Z".parse().unwrap();
        let mut after = status.clone();
        plan(&seen, &mut after, later);
        let told = ended(&before, &after.steps);
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!(
            (told[0].step.as_str(), told[0].outcome),
            (CREATE_TARGET, "Succeeded")
        );
        assert_eq!(told[0].seconds, Some(120.0));
        assert!(ended(&after.steps, &after.steps).is_empty());
    }

    /// A point in time goes through a staging instance beside the source (the restore
    /// call takes no key), whose snapshot is copied under the target's key; the staging
    /// pieces, and only they, are deleted once the target's instance is restored.
    #[test]
    fn a_point_in_time_is_staged_snapshotted_copied_and_its_staging_removed() {
        let at: Timestamp = "2026-12-01T08:30:00Z".parse().unwrap();
        let mut seen = seen();
        seen.source = Resolved {
            set: None,
            snapshot_arn: None,
            point_in_time: Some(("clinic-a".into(), at)),
            data_time: Some(at),
            documents: None,
            documents_behind_seconds: None,
            region: None,
            engine_version: None,
            image: None,
        };
        let mut target = target();
        target.held = true;
        target.kms_key = Some(KEY.into());
        seen.target = Some(target);
        let staging = staging_identifier("req-uid");
        let mut source = instance("available");
        source.identifier = "clinic-a-db".into();
        source.instance_class = "db.t4g.small".into();
        source.subnet_group = Some("source-subnets".into());
        source.security_groups = vec!["sg-source".into()];
        source.parameter_groups = vec!["source-params".into()];
        source.tags = BTreeMap::new();
        seen.staging = Some(StagingSeen {
            source: Some(source),
            instance: None,
            snapshot: None,
        });
        let mut status = RestoreRequestStatus::default();
        let o = step_once(&mut seen, &mut status);
        let Change::RestorePointInTime(r) = &o.changes[0] else {
            panic!("{o:?}")
        };
        assert_eq!(
            (
                r.source.as_str(),
                r.identifier.as_str(),
                r.subnet_group.as_deref(),
                r.parameter_group.as_deref()
            ),
            (
                "clinic-a-db",
                staging.as_str(),
                Some("source-subnets"),
                Some("source-params")
            )
        );
        assert_eq!(r.security_groups, ["sg-source"]);
        assert_eq!(r.time, std::time::SystemTime::from(at));
        assert_eq!(r.tags[RESTORED_BY], "req-uid");
        assert_eq!(status.progress.as_deref(), Some("1/11"));
        // An instance of that name not made by this request is never used.
        let mut foreign = instance("available");
        foreign.identifier = staging.clone();
        foreign.tags = BTreeMap::new();
        seen.staging.as_mut().unwrap().instance = Some(foreign);
        let o = plan(&seen, &mut status.clone(), now());
        assert_eq!(o.failed.as_ref().map(|f| f.0), Some("StagingExists"));
        let mut db = instance("creating");
        db.identifier = staging.clone();
        seen.staging.as_mut().unwrap().instance = Some(db.clone());
        assert_eq!(action(&step_once(&mut seen, &mut status)), "");
        db.status = "available".into();
        seen.staging.as_mut().unwrap().instance = Some(db.clone());
        let o = step_once(&mut seen, &mut status);
        let Change::SnapshotStaging {
            instance: of,
            identifier,
            ..
        } = &o.changes[0]
        else {
            panic!("{o:?}")
        };
        assert_eq!((of, identifier), (&staging, &staging));
        let snapshot = DbSnapshot {
            identifier: staging.clone(),
            arn: Some(format!("arn:aws:rds:us-east-1:1:snapshot:{staging}")),
            status: "available".into(),
            tags: BTreeMap::from([(RESTORED_BY.to_string(), "req-uid".to_string())]),
        };
        seen.staging.as_mut().unwrap().snapshot = Some(snapshot.clone());
        // The staging snapshot is what is copied under the target's key.
        let o = step_once(&mut seen, &mut status);
        let Change::CopySnapshot {
            source_arn,
            kms_key,
            ..
        } = &o.changes[0]
        else {
            panic!("{o:?}")
        };
        assert_eq!(source_arn, snapshot.arn.as_ref().unwrap());
        assert_eq!(kms_key, KEY);
        seen.copy = Some(DbSnapshot {
            status: "available".into(),
            ..snapshot.clone()
        });
        seen.target.as_mut().unwrap().placement = Some(Placement {
            kms_key_id: KEY.into(),
            subnet_group: "target-subnets".into(),
            security_group: "sg-target".into(),
            parameter_group: "target-params".into(),
        });
        assert_eq!(
            action(&step_once(&mut seen, &mut status)),
            "RestoreDBInstanceFromDBSnapshot"
        );
        seen.instance = Some(instance("available"));
        // Restored: the staging instance goes (its protection off first, if it came with
        // it), then its snapshot.
        db.deletion_protection = true;
        seen.staging.as_mut().unwrap().instance = Some(db.clone());
        let o = step_once(&mut seen, &mut status);
        assert!(
            matches!(&o.changes[..], [Change::UnprotectStaging { identifier }] if *identifier == staging),
            "{o:?}"
        );
        db.deletion_protection = false;
        seen.staging.as_mut().unwrap().instance = Some(db.clone());
        assert_eq!(
            action(&step_once(&mut seen, &mut status)),
            "DeleteDBInstance"
        );
        db.status = "deleting".into();
        seen.staging.as_mut().unwrap().instance = Some(db);
        assert_eq!(
            action(&step_once(&mut seen, &mut status)),
            "DeleteDBSnapshot"
        );
        let staged = seen.staging.as_mut().unwrap();
        staged.instance = None;
        staged.snapshot = None;
        assert_eq!(
            action(&step_once(&mut seen, &mut status)),
            "ModifyDBInstance"
        );
        let removed = status.steps.iter().find(|s| s.name == REMOVE_STAGING);
        assert_eq!(removed.map(|s| s.phase), Some(StepPhase::Succeeded));
        assert_eq!(status.progress.as_deref(), Some("6/11"));
    }

    #[test]
    fn a_side_by_side_restore_walks_its_steps_in_order_and_resumes_from_what_it_finds() {
        let mut seen = seen();
        let mut status = RestoreRequestStatus::default();
        assert_eq!(action(&step_once(&mut seen, &mut status)), "CreateTarget");
        seen.target = Some(target());
        assert_eq!(action(&step_once(&mut seen, &mut status)), "PlaceHold");
        seen.target.as_mut().unwrap().held = true;
        // The stack has not made the key yet: nothing is copied.
        let o = step_once(&mut seen, &mut status);
        assert_eq!(action(&o), "");
        assert!(o.in_progress);
        let t = seen.target.as_mut().unwrap();
        t.kms_key = Some(KEY.into());
        let o = step_once(&mut seen, &mut status);
        let Change::CopySnapshot {
            identifier,
            kms_key,
            tags,
            ..
        } = &o.changes[0]
        else {
            panic!("{o:?}")
        };
        assert_eq!(identifier, &copy_identifier("copy-db", "req-uid"));
        assert_eq!(kms_key, KEY);
        assert_eq!(tags[RESTORED_BY], "req-uid");
        assert_eq!(tags["openemr.io/cluster"], "c1");
        seen.copy = Some(DbSnapshot {
            identifier: identifier.clone(),
            arn: None,
            status: "available".into(),
            tags: BTreeMap::new(),
        });
        // Copied, but the stack's subnet group and the rest are not there: no restore.
        assert_eq!(action(&step_once(&mut seen, &mut status)), "");
        seen.target.as_mut().unwrap().placement = Some(Placement {
            kms_key_id: KEY.into(),
            subnet_group: "sg-group".into(),
            security_group: "sg-1".into(),
            parameter_group: "pg".into(),
        });
        let o = step_once(&mut seen, &mut status);
        let Change::RestoreDatabase(r) = &o.changes[0] else {
            panic!("{o:?}")
        };
        assert_eq!(
            (
                r.subnet_group.as_str(),
                r.security_group.as_str(),
                r.parameter_group.as_str()
            ),
            ("sg-group", "sg-1", "pg")
        );
        assert_eq!(r.snapshot, copy_identifier("copy-db", "req-uid"));
        assert_eq!(r.tags[RESTORED_BY], "req-uid");
        // Restored with the snapshot's (the source's) secret: not the target's own.
        let mut db = instance("available");
        db.master_user_secret_arn = Some("arn:secret:source".into());
        db.master_user_secret_kms_key = Some("arn:aws:kms:us-east-1:1:key/source".into());
        seen.instance = Some(db.clone());
        assert_eq!(
            action(&step_once(&mut seen, &mut status)),
            "ModifyDBInstance"
        );
        db.master_user_secret_arn = Some("arn:secret:own".into());
        db.master_user_secret_kms_key = Some(KEY.into());
        db.status = "resetting-master-credentials".into();
        seen.instance = Some(db.clone());
        assert_eq!(action(&step_once(&mut seen, &mut status)), "");
        db.status = "available".into();
        seen.instance = Some(db);
        // The target's credentials Secret is not there yet.
        assert_eq!(action(&step_once(&mut seen, &mut status)), "");
        seen.target.as_mut().unwrap().credentials_secret = Some("copy-a-db-credentials".into());
        let account = AdminAccount {
            secret: "copy-a-admin".into(),
            generated: true,
        };
        seen.admin = Some(AdminSeen {
            account: account.clone(),
            matches: None,
        });
        let o = step_once(&mut seen, &mut status);
        let Change::ResetDatabaseUser {
            master_secret_arn,
            master_user,
            secret,
            admin,
            ..
        } = &o.changes[0]
        else {
            panic!("{o:?}")
        };
        assert_eq!(
            (
                master_secret_arn.as_str(),
                master_user.as_str(),
                secret.as_str()
            ),
            ("arn:secret:own", "openemr_admin", "copy-a-db-credentials")
        );
        assert_eq!(admin.as_ref(), Some(&account), "the administrator too");
        // Refused (e.g. the master password not applied yet): asked again.
        seen.user_opens = Some(Err("DatabaseLoginRefused".into()));
        assert_eq!(
            action(&step_once(&mut seen, &mut status)),
            "ResetDatabaseUser"
        );
        // The user opens the database, but the administrator's hash is still the
        // source's: asked again, not done.
        seen.user_opens = Some(Ok(()));
        seen.admin.as_mut().unwrap().matches = Some(Err("not the one in Secret".into()));
        assert_eq!(
            action(&step_once(&mut seen, &mut status)),
            "ResetDatabaseUser"
        );
        seen.admin.as_mut().unwrap().matches = Some(Ok(()));
        // No documents in the source: skipped, saying so; the hold goes.
        assert_eq!(action(&step_once(&mut seen, &mut status)), "ReleaseHold");
        let reset = status
            .steps
            .iter()
            .find(|s| s.name == RESET_DATABASE_USER)
            .unwrap();
        assert_eq!(reset.phase, StepPhase::Succeeded);
        assert!(
            reset
                .message
                .as_deref()
                .unwrap()
                .contains("Secret copy-a-admin"),
            "{reset:?}"
        );
        let documents = status
            .steps
            .iter()
            .find(|s| s.name == RESTORE_DOCUMENTS)
            .unwrap();
        assert_eq!(documents.phase, StepPhase::Skipped);
        seen.target.as_mut().unwrap().held = false;
        // Released: never held again by the first step.
        let o = step_once(&mut seen, &mut status);
        assert_eq!(action(&o), "");
        assert_eq!(status.phase, Some(RestorePhase::Verifying));
        seen.target.as_mut().unwrap().ready = true;
        seen.database_checks = Some(vec![Finding {
            check: VerificationCheck::DatabaseReachable,
            passed: true,
            message: "TLSv1.3".into(),
        }]);
        let o = step_once(&mut seen, &mut status);
        assert!(o.changes.is_empty() && o.failed.is_none() && !o.in_progress);
        assert_eq!(status.phase, Some(RestorePhase::Succeeded));
        assert_eq!(status.progress.as_deref(), Some("8/8"));
        assert_eq!(status.rto_seconds, Some(3600));
        assert_eq!(status.rpo_seconds, Some(7 * 3600));
        let checks: Vec<_> = status
            .verification
            .iter()
            .map(|c| (c.check, c.passed))
            .collect();
        assert_eq!(
            checks,
            [
                (VerificationCheck::DatabaseReachable, true),
                (VerificationCheck::WebReady, true)
            ]
        );
        // What earlier looks recorded stands: skipped stays skipped.
        let phases: Vec<StepPhase> = status.steps.iter().map(|s| s.phase).collect();
        assert_eq!(phases[5], StepPhase::Skipped);
        assert!(
            phases
                .iter()
                .enumerate()
                .all(|(i, p)| i == 5 || *p == StepPhase::Succeeded),
            "{phases:?}"
        );
        let verify = status.steps.iter().find(|s| s.name == VERIFY).unwrap();
        assert!(
            verify
                .message
                .as_deref()
                .unwrap()
                .contains("DocumentsPresent not run"),
            "{verify:?}"
        );
    }

    #[test]
    fn a_failed_check_fails_the_restore_naming_it() {
        let mut seen = seen();
        seen.target = Some(TargetSeen {
            held: false,
            ready: true,
            ..target()
        });
        seen.done = SIDE_BY_SIDE[..7].iter().map(|s| s.to_string()).collect();
        seen.database_checks = Some(vec![Finding {
            check: VerificationCheck::TablesNonEmpty,
            passed: false,
            message: "patient_data has no rows".into(),
        }]);
        let mut status = RestoreRequestStatus::default();
        let o = plan(&seen, &mut status, now());
        assert_eq!(o.failed.as_ref().unwrap().0, "VerificationFailed");
        assert!(o.failed.unwrap().1.contains("patient_data has no rows"));
        assert_eq!(status.phase, Some(RestorePhase::Failed));
    }

    /// Sets wait for an in-place restore only while it is at `Quiesce`: not before (the
    /// clinic serves, a set of it is a good one), not once it stopped the clinic or ended.
    #[test]
    fn a_restore_is_at_quiesce_from_its_last_step_before_to_the_hold_in_effect() {
        let step = |name: &str, phase: StepPhase| RestoreStep {
            name: name.into(),
            phase,
            ..RestoreStep::default()
        };
        let mut status = RestoreRequestStatus {
            phase: Some(RestorePhase::Running),
            steps: IN_PLACE
                .iter()
                .map(|n| step(n, StepPhase::Pending))
                .collect(),
            ..RestoreRequestStatus::default()
        };
        let quiesce = IN_PLACE.iter().position(|n| *n == QUIESCE).unwrap();
        assert!(!at_quiesce(&status));
        for s in &mut status.steps[..quiesce - 1] {
            s.phase = StepPhase::Succeeded;
        }
        status.steps[quiesce - 1].phase = StepPhase::Running;
        assert!(!at_quiesce(&status), "still staging");
        status.steps[quiesce - 1].phase = StepPhase::Skipped;
        assert!(at_quiesce(&status), "queued behind sets");
        status.steps[quiesce].phase = StepPhase::Running;
        assert!(at_quiesce(&status), "holding");
        status.steps[quiesce].phase = StepPhase::Succeeded;
        assert!(!at_quiesce(&status), "the clinic is stopped: not Ready");
        status.steps[quiesce].phase = StepPhase::Pending;
        status.phase = Some(RestorePhase::Failed);
        assert!(!at_quiesce(&status), "ended");
        // Rolled back: again while the rollback waits to stop the clinic.
        status.steps.push(step(
            super::super::kept::ROLLBACK_QUIESCE,
            StepPhase::Pending,
        ));
        assert!(at_quiesce(&status), "the rollback queued behind sets");
        status.steps.last_mut().unwrap().phase = StepPhase::Succeeded;
        assert!(!at_quiesce(&status));
        status.steps.last_mut().unwrap().phase = StepPhase::Skipped;
        assert!(!at_quiesce(&status), "nothing to roll back");
        assert!(!at_quiesce(&RestoreRequestStatus::default()));
    }

    /// A target clinic that never gets Ready does not keep the request Verifying for
    /// good: past the deadline the restore fails, saying what it waited for, and the
    /// target is kept (no change is asked for).
    #[test]
    fn checks_waiting_past_their_deadline_fail_the_restore() {
        let mut seen = seen();
        seen.target = Some(target());
        seen.done = SIDE_BY_SIDE[..7].iter().map(|s| s.to_string()).collect();
        let mut status = RestoreRequestStatus::default();
        let o = plan(&seen, &mut status, now());
        assert!(o.failed.is_none() && o.in_progress);
        assert_eq!(status.phase, Some(RestorePhase::Verifying));
        let almost =
            Timestamp::from_second(now().as_second() + VERIFY_DEADLINE_SECONDS - 1).unwrap();
        let o = plan(&seen, &mut status.clone(), almost);
        assert!(o.failed.is_none(), "{o:?}");
        let late = Timestamp::from_second(now().as_second() + VERIFY_DEADLINE_SECONDS).unwrap();
        let o = plan(&seen, &mut status, late);
        let (reason, message) = o.failed.unwrap();
        assert_eq!(reason, "VerificationTimedOut");
        assert!(
            message.contains("30 minutes") && message.contains("copy-a to be Ready"),
            "{message}"
        );
        assert!(o.changes.is_empty());
        assert_eq!(status.phase, Some(RestorePhase::Failed));
        let verify = status.steps.iter().find(|s| s.name == VERIFY).unwrap();
        assert_eq!(verify.phase, StepPhase::Failed);
    }

    #[test]
    fn a_target_or_instance_this_request_did_not_make_is_never_used() {
        let mut seen = seen();
        seen.target = Some(TargetSeen {
            ours: false,
            ..target()
        });
        let mut status = RestoreRequestStatus::default();
        let o = plan(&seen, &mut status, now());
        assert_eq!(o.failed.unwrap().0, "TargetExists");
        assert!(o.changes.is_empty());

        let mut seen = self::seen();
        seen.target = Some(TargetSeen {
            held: true,
            kms_key: Some(KEY.into()),
            ..target()
        });
        let mut foreign = instance("available");
        foreign.tags.clear();
        seen.instance = Some(foreign);
        let o = plan(&seen, &mut RestoreRequestStatus::default(), now());
        assert_eq!(o.failed.unwrap().0, "TargetDatabaseExists");
    }

    #[test]
    fn a_target_deleted_mid_restore_is_never_made_again() {
        let mut seen = seen();
        seen.done = vec![CREATE_TARGET.to_string()];
        let o = plan(&seen, &mut RestoreRequestStatus::default(), now());
        assert!(o.changes.is_empty());
        assert_eq!(o.failed.unwrap().0, "TargetDeleted");
    }

    #[test]
    fn a_copy_rds_fails_fails_the_restore() {
        let mut seen = seen();
        seen.target = Some(TargetSeen {
            held: true,
            kms_key: Some(KEY.into()),
            ..target()
        });
        seen.copy = Some(DbSnapshot {
            identifier: "x".into(),
            arn: None,
            status: "failed".into(),
            tags: BTreeMap::new(),
        });
        let o = plan(&seen, &mut RestoreRequestStatus::default(), now());
        assert_eq!(o.failed.unwrap().0, "SnapshotCopyFailed");
    }

    fn with_documents(job: JobSeen) -> Seen {
        let mut seen = seen();
        seen.source.documents = Some(Documents {
            bucket: "oe-source".into(),
            manifest: "backups/documents/set-1.jsonl.gz".into(),
        });
        seen.documents_run = Some(DocumentsRun {
            namespace: "clinics".into(),
            image: Some("registry.example.org/openemr-operator:1".into()),
            service_account: "openemr-documents".into(),
            backoff_limit: 2,
            deadline_seconds: 3600,
            region: "us-east-1".into(),
            expected_files: Some(3),
            job,
            swap_token: None,
            stage_job: JobSeen::Absent,
        });
        seen.target = Some(TargetSeen {
            held: true,
            claim: "copy-a-sites".into(),
            credentials_secret: Some("copy-a-db-credentials".into()),
            ..target()
        });
        seen.instance = Some(instance("available"));
        seen.done = SIDE_BY_SIDE[..5].iter().map(|s| s.to_string()).collect();
        seen
    }

    #[test]
    fn the_documents_job_restores_into_the_targets_volume_and_points_the_site_at_its_database() {
        let seen = with_documents(JobSeen::Absent);
        let o = plan(&seen, &mut RestoreRequestStatus::default(), now());
        let Change::CreateDocumentsJob { name, body, .. } = &o.changes[0] else {
            panic!("{o:?}")
        };
        assert_eq!(name, &documents_job_name("req-uid"));
        let container = &body["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            args[..8],
            [
                "documents",
                "restore",
                "--manifest",
                "backups/documents/set-1.jsonl.gz",
                "--into",
                "/sites",
                "--owners",
                "--overwrite"
            ]
        );
        let site = args.iter().position(|a| *a == "--site-host").unwrap();
        assert_eq!(args[site + 1], "copy-db.example");
        let env = serde_json::to_string(&container["env"]).unwrap();
        assert!(
            env.contains(r#""secretKeyRef":{"key":"password","name":"copy-a-db-credentials"}"#),
            "{env}"
        );
        assert!(env.contains(r#""value":"oe-source""#), "{env}");
        assert_eq!(
            body["metadata"]["ownerReferences"][0]["kind"],
            "RestoreRequest"
        );
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "req-uid");
        let volumes = serde_json::to_string(&body["spec"]["template"]["spec"]["volumes"]).unwrap();
        assert!(
            volumes.contains(r#""claimName":"copy-a-sites""#),
            "{volumes}"
        );
        assert!(!volumes.contains("readOnly"), "{volumes}");

        let summary = r#"{"files":3,"bytes":40,"dirs":4,"symlinks":0,"durationMs":9,"siteConfig":{"host":"copy-db.example"}}"#;
        let mut status = RestoreRequestStatus::default();
        let o = plan(
            &with_documents(JobSeen::Succeeded(summary.into())),
            &mut status,
            now(),
        );
        assert_eq!(action(&o), "ReleaseHold");
        let step = status
            .steps
            .iter()
            .find(|s| s.name == RESTORE_DOCUMENTS)
            .unwrap();
        assert_eq!(step.phase, StepPhase::Succeeded);
        assert!(
            step.message
                .as_deref()
                .unwrap()
                .starts_with("3 files (40 bytes) restored")
        );

        let short = summary.replace(r#""files":3"#, r#""files":2"#);
        let o = plan(
            &with_documents(JobSeen::Succeeded(short)),
            &mut RestoreRequestStatus::default(),
            now(),
        );
        assert_eq!(o.failed.unwrap().0, "DocumentsIncomplete");
        let no_site = r#"{"files":3,"bytes":40}"#;
        let o = plan(
            &with_documents(JobSeen::Succeeded(no_site.into())),
            &mut RestoreRequestStatus::default(),
            now(),
        );
        assert_eq!(o.failed.unwrap().0, "DocumentsIncomplete");
        let o = plan(
            &with_documents(JobSeen::Failed("BackoffLimitExceeded".into())),
            &mut RestoreRequestStatus::default(),
            now(),
        );
        let (reason, message) = o.failed.unwrap();
        assert_eq!(reason, "DocumentsRestoreFailed");
        assert!(message.contains("BackoffLimitExceeded"), "{message}");
    }

    #[test]
    fn documents_to_restore_keep_the_target_held() {
        let seen = with_documents(JobSeen::Running);
        let mut status = RestoreRequestStatus::default();
        let o = plan(&seen, &mut status, now());
        assert!(o.changes.is_empty() && o.in_progress);
        assert_eq!(status.phase, Some(RestorePhase::Running));
        let seen = Seen {
            documents_run: Some(DocumentsRun {
                image: None,
                ..seen.documents_run.clone().unwrap()
            }),
            ..with_documents(JobSeen::Absent)
        };
        let o = plan(&seen, &mut status, now());
        assert!(o.changes.is_empty() && o.in_progress && o.failed.is_none());
    }

    /// A request deleted mid-restore stops at once, failed `Deleted`, asking nothing more;
    /// but a documents Job exchanging a clinic's site is let finish first.
    #[test]
    fn a_deleted_request_stops_but_lets_an_exchange_finish() {
        let mut seen = with_documents(JobSeen::Running);
        let mut status = RestoreRequestStatus::default();
        let mut out = plan(&seen, &mut status, now());
        stop_for_deletion(&seen, &mut status, &mut out, now());
        let (reason, message) = out.failed.clone().unwrap();
        assert_eq!(reason, "Deleted");
        assert!(message.contains(RESTORE_DOCUMENTS), "{message}");
        assert!(out.changes.is_empty());
        assert_eq!(status.phase, Some(RestorePhase::Failed));
        let documents = status
            .steps
            .iter()
            .find(|s| s.name == RESTORE_DOCUMENTS)
            .unwrap();
        assert_eq!(documents.phase, StepPhase::Failed);

        seen.documents_run.as_mut().unwrap().swap_token = Some(swap_token(&seen.uid));
        let mut status = RestoreRequestStatus::default();
        let mut out = plan(&seen, &mut status, now());
        stop_for_deletion(&seen, &mut status, &mut out, now());
        assert!(out.failed.is_none(), "the exchange runs on");
        assert_eq!(status.phase, Some(RestorePhase::Running));
    }

    /// In place: the new instance is restored and given its credentials, and the documents
    /// downloaded beside the live site, while the clinic still serves; then the clinic is
    /// quiesced, its database snapshotted, its documents exchanged for the staged ones, and
    /// only then is it switched and let go.
    #[test]
    fn in_place_restores_and_stages_beside_the_clinic_then_quiesces_snapshots_exchanges_and_switches()
     {
        let mut seen = with_documents(JobSeen::Absent);
        seen.done.clear();
        seen.user_opens = None;
        seen.instance = None;
        seen.copy = None;
        seen.in_place = true;
        seen.target_name = "clinic-a".into();
        seen.target_spec = None;
        let uid = seen.uid.clone();
        seen.documents_run.as_mut().unwrap().swap_token = Some(swap_token(&uid));
        let previous = DbInstance {
            identifier: "clinic-a-db".into(),
            status: "available".into(),
            ..DbInstance::default()
        };
        let mut target = TargetSeen {
            held: false,
            ours: false,
            kms_key: Some(KEY.into()),
            placement: Some(Placement {
                kms_key_id: KEY.into(),
                subnet_group: "sg-clinic-a".into(),
                security_group: "sec-clinic-a".into(),
                parameter_group: "pg-clinic-a".into(),
            }),
            credentials_secret: Some("clinic-a-db-credentials".into()),
            restore_identifier: in_place_identifier(&uid),
            copy_identifier: in_place_copy_identifier(&uid),
            in_place: Some(InPlaceSeen {
                previous_identifier: "clinic-a-db".into(),
                previous: Some(previous.clone()),
                ..InPlaceSeen::default()
            }),
            ..seen.target.clone().unwrap()
        };
        seen.target = Some(target.clone());
        let mut status = RestoreRequestStatus::default();

        let out = step_once(&mut seen, &mut status);
        assert_eq!(action(&out), "CopyDBSnapshot", "{:#?}", status.steps);
        assert_eq!(status.progress.as_deref(), Some("0/11"));
        assert_eq!(status.previous_db_instance.as_deref(), Some("clinic-a-db"));
        let Change::CopySnapshot { identifier, .. } = &out.changes[0] else {
            unreachable!()
        };
        assert_eq!(identifier, &in_place_copy_identifier(&uid));

        seen.copy = Some(DbSnapshot {
            identifier: in_place_copy_identifier(&uid),
            status: "available".into(),
            ..DbSnapshot::default()
        });
        let out = step_once(&mut seen, &mut status);
        let Change::RestoreDatabase(request) = &out.changes[0] else {
            panic!("{out:?}")
        };
        assert_eq!(request.identifier, in_place_identifier(&uid));
        assert_ne!(
            request.identifier, "clinic-a-db",
            "never the clinic's instance"
        );
        assert_eq!(request.subnet_group, "sg-clinic-a");
        assert_eq!(request.tags[RESTORED_BY], uid);

        let mut restored = instance("available");
        restored.identifier = in_place_identifier(&uid);
        restored.master_user_secret_arn = Some("arn:secret".into());
        restored.master_user_secret_kms_key = Some(KEY.into());
        seen.instance = Some(restored);
        seen.user_opens = Some(Ok(()));
        // The documents are downloaded beside the live site while the clinic serves.
        let out = step_once(&mut seen, &mut status);
        let Change::CreateDocumentsJob { name, body, .. } = &out.changes[0] else {
            panic!("{out:?}")
        };
        assert_eq!(name, &stage_job_name(&uid));
        let args = body["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert!(
            args.contains("--swap-token") && args.contains("--stage-only"),
            "{args}"
        );
        assert!(!target.held, "the clinic still serves");
        assert!(seen.done.contains(&RESET_DATABASE_USER.to_string()));
        seen.documents_run.as_mut().unwrap().stage_job = JobSeen::Running;
        let out = step_once(&mut seen, &mut status);
        assert!(out.changes.is_empty(), "{out:?}");
        seen.documents_run.as_mut().unwrap().stage_job = JobSeen::Succeeded(
            r#"{"files":3,"bytes":10,"siteConfig":{"host":"restore.example"},"staged":true}"#
                .into(),
        );
        // A backup set reading the clinic's live data finishes first, the clinic serving.
        target.in_place.as_mut().unwrap().sets_reading = vec!["nightly-1".into()];
        seen.target = Some(target.clone());
        let out = step_once(&mut seen, &mut status);
        assert!(out.changes.is_empty(), "{out:?}");
        let quiesce = status.steps.iter().find(|s| s.name == QUIESCE).unwrap();
        assert!(
            quiesce.message.as_deref().unwrap().contains("nightly-1"),
            "{quiesce:?}"
        );
        assert_eq!(
            (quiesce.phase, &quiesce.start_time),
            (StepPhase::Pending, &None),
            "not begun: the clinic was not stopped"
        );
        target.in_place.as_mut().unwrap().sets_reading.clear();
        seen.target = Some(target.clone());
        let out = step_once(&mut seen, &mut status);
        assert_eq!(action(&out), "PlaceHold", "{:?}", status.steps);
        assert!(status.previous_documents.is_none(), "nothing exchanged yet");

        target.held = true;
        seen.target = Some(target.clone());
        let out = step_once(&mut seen, &mut status);
        assert!(out.changes.is_empty(), "waits for the hold to take effect");
        let quiesce = status.steps.iter().find(|s| s.name == QUIESCE).unwrap();
        assert_eq!(quiesce.phase, StepPhase::Running);

        // A set that started as the hold went on: seen once it is in effect, and waited for.
        target.in_place.as_mut().unwrap().quiet = true;
        target.in_place.as_mut().unwrap().sets_reading = vec!["nightly-2".into()];
        seen.target = Some(target.clone());
        let out = step_once(&mut seen, &mut status);
        assert!(out.changes.is_empty(), "{out:?}");
        target.in_place.as_mut().unwrap().sets_reading.clear();
        seen.target = Some(target.clone());
        let out = step_once(&mut seen, &mut status);
        let Change::SafetySnapshot {
            instance,
            identifier,
            tags,
        } = &out.changes[0]
        else {
            panic!("{out:?}")
        };
        assert_eq!(
            (instance.as_str(), identifier.as_str()),
            ("clinic-a-db", safety_identifier(&uid).as_str())
        );
        assert_eq!(tags[RESTORED_BY], uid);

        target.in_place.as_mut().unwrap().safety = Some(DbSnapshot {
            identifier: safety_identifier(&uid),
            status: "available".into(),
            tags: BTreeMap::from([(RESTORED_BY.to_string(), uid.clone())]),
            ..DbSnapshot::default()
        });
        seen.target = Some(target.clone());
        let out = step_once(&mut seen, &mut status);
        let Change::CreateDocumentsJob { name, body, .. } = &out.changes[0] else {
            panic!("{out:?}")
        };
        assert_eq!(name, &documents_job_name(&uid));
        let args = body["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert!(args.contains("--swap-token"), "{args}");
        assert!(
            !args.contains("--overwrite") && !args.contains("--stage-only"),
            "{args}"
        );
        assert_eq!(status.safety_snapshot, Some(safety_identifier(&uid)));

        seen.documents_run.as_mut().unwrap().job = JobSeen::Succeeded(
            r#"{"files":3,"bytes":10,"siteConfig":{"host":"restore.example"},"previousDocuments":"_previous-x"}"#.into(),
        );
        let out = step_once(&mut seen, &mut status);
        let Change::SwitchDatabase {
            clinic,
            identifier,
            previous,
        } = &out.changes[0]
        else {
            panic!("{out:?}")
        };
        assert_eq!(
            (clinic.as_str(), identifier.as_str(), previous.as_str()),
            (
                "clinic-a",
                in_place_identifier(&uid).as_str(),
                "clinic-a-db"
            )
        );
        assert_eq!(
            status.previous_documents,
            Some(crate::documents::swap::previous_name(&swap_token(&uid)))
        );

        target.in_place.as_mut().unwrap().switched = true;
        seen.target = Some(target.clone());
        let out = step_once(&mut seen, &mut status);
        assert!(out.changes.is_empty(), "waits for the clinic to take it");
        // Not forever: past the deadline, failed (the rollback puts the clinic back).
        let (mut late, late_seen) = (status.clone(), seen.clone());
        let deadline = Timestamp::from_second(now().as_second() + SWITCH_DEADLINE_SECONDS).unwrap();
        let out = plan(&late_seen, &mut late, deadline);
        assert_eq!(out.failed.map(|f| f.0), Some("SwitchNotTaken"));
        assert_eq!(late.phase, Some(RestorePhase::Failed));
        target.in_place.as_mut().unwrap().serving_restored = true;
        seen.target = Some(target.clone());
        let out = step_once(&mut seen, &mut status);
        assert_eq!(action(&out), "ReleaseHold");

        target.held = false;
        target.ready = true;
        seen.target = Some(target.clone());
        seen.database_checks = Some(Vec::new());
        let out = step_once(&mut seen, &mut status);
        assert!(out.failed.is_none() && out.changes.is_empty(), "{out:?}");
        assert_eq!(status.phase, Some(RestorePhase::Succeeded));
        assert_eq!(status.progress.as_deref(), Some("11/11"));
        let names: Vec<&str> = status.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, IN_PLACE);
    }
}
