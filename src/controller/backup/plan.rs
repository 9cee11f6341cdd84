//! The steps of one set, planned from what was observed (pure):
//!
//! 1. `Pending` until the clinic is `Ready` and no other set of it runs (the older one
//!    goes first);
//! 2. the snapshot is asked for (crash-consistent: its instant is the database's);
//! 3. once RDS knows the snapshot, the documents Job starts (the documents' instants are
//!    its start and end);
//! 4. when the snapshot is `available` and the Job has succeeded, the set manifest is
//!    written; once it is seen in the bucket, the set is `Completed`.
//!
//! A `Quiesced` set first places a hold on its clinic (a Lease with a lifetime, renewed at
//! every look) and takes both parts only once the hold is in effect (no worker or Job
//! left); it releases the hold as soon as the snapshot is known to RDS and the documents
//! are copied, and records how long the clinic was down. A hold that lapsed after the
//! parts were started (the operator was away longer than its lifetime, and the clinic came
//! back) fails the set: its copy would not be quiesced.
//!
//! A snapshot RDS reports failed, or a Job that failed all its tries, fails the set with
//! the part and the reason; a failed set releases its hold. Every step finds what an earlier run did (the snapshot and the
//! Job by their names, the manifest by its key) before doing it again.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::job::{DocumentsJob, Task};
use super::set::{self, DatabasePart, DocumentsPart, SetManifest};
use crate::api::backup::{BackupPhase, DocumentsLocation, SnapshotRef};
use crate::api::{ConsistencyMode, OpenEMRBackupStatus};
use crate::aws::rds::DbSnapshot;
use crate::conditions::Verdict;

/// The condition saying whether the set's work has started, and if not why.
pub const STARTED: &str = "Started";

/// What the set needs of its clinic.
#[derive(Debug, Clone, PartialEq)]
pub struct ClinicSeen {
    pub cluster: String,
    pub name: String,
    pub uid: String,
    pub ready: bool,
    /// The clinic's `Ready` reason and message when it is not.
    pub not_ready: String,
    pub region: String,
    pub instance: Option<String>,
    pub engine_version: Option<String>,
    pub bucket: Option<String>,
    pub kms_key: Option<String>,
    pub image: Option<String>,
    pub claim: String,
    pub tags: BTreeMap<String, String>,
    pub spec: serde_json::Value,
}

/// The condition saying where a `Quiesced` set's stop of the clinic is.
pub const QUIESCED: &str = "Quiesced";

/// A `Quiesced` set's hold on the clinic, as the caches show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldSeen {
    Absent,
    Placed {
        /// When it lapses unless renewed.
        expires: Option<Timestamp>,
        /// The clinic reports its holds in effect: no worker or Job runs.
        effective: bool,
    },
}

/// The documents Job, as the cache and its pods show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobSeen {
    Absent,
    Running,
    /// With its pod's termination message: the engine's summary.
    Succeeded(String),
    /// With the Job's reason and its last pod's words (redacted).
    Failed(String),
    /// A Job of that name that another object owns (an earlier set of the same name).
    Foreign,
}

/// What the steps are planned from.
#[derive(Debug, Clone)]
pub struct Steps {
    pub set: String,
    pub set_uid: String,
    pub namespace: String,
    pub policy: Option<String>,
    pub consistency: ConsistencyMode,
    pub include_documents: bool,
    pub clinic: ClinicSeen,
    /// Older sets of the clinic still running: this one waits for them.
    pub running_before: Vec<String>,
    /// An in-place restore of the clinic waiting for the sets under way to stop the
    /// clinic: a set not begun waits for it ([`crate::controller::restore::steps::at_quiesce`]).
    pub restore_quiescing: Option<String>,
    pub snapshot: Option<DbSnapshot>,
    pub job: JobSeen,
    /// Whether the set manifest is in the bucket (looked at once both parts are done).
    pub manifest_written: bool,
    /// The newest completed set's documents manifest: unchanged files are not sent again.
    pub previous_documents: Option<String>,
    pub documents_image: String,
    pub service_account: String,
    /// Whether that service account exists in the set's namespace (looked at only before
    /// the Job is made): without it the Job could make no pod.
    pub service_account_exists: bool,
    pub job_backoff_limit: i32,
    pub job_deadline_seconds: i64,
    pub operator_version: String,
    /// The set's hold, for a `Quiesced` set.
    pub hold: HoldSeen,
    /// Who holds the clinic for this set (the Lease is `<clinic>-hold-<holder>`).
    pub holder: String,
    pub hold_lifetime: std::time::Duration,
    /// Manual snapshots the clinic's account and region hold (counted when the set is
    /// about to start; `None` where the operator cannot list them).
    pub manual_snapshots: Option<usize>,
    /// `--manual-snapshot-quota`.
    pub snapshot_quota: u32,
    /// The account and region, for the quota's message.
    pub snapshot_place: String,
    /// The snapshot's request is recorded as in flight: it may not have reached RDS.
    pub snapshot_in_flight: bool,
    /// The policy's copy to another region, fixed on the set when it starts.
    pub copy_to: Option<crate::api::backup_policy::CrossRegionCopy>,
}

/// A mutating call the steps ask for.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    CreateSnapshot {
        instance: String,
        identifier: String,
        tags: BTreeMap<String, String>,
    },
    /// The Job and, first, the NetworkPolicy of its pods.
    CreateJob {
        name: String,
        body: serde_json::Value,
        network_policy: serde_json::Value,
    },
    /// Writes a set manifest: the set's in its clinic's bucket (`region` unset), or a
    /// copy's in another region's.
    WriteManifest {
        region: Option<String>,
        bucket: String,
        key: String,
        kms_key: Option<String>,
        body: Vec<u8>,
    },
    /// Copies the set's snapshot into another region (called there).
    CopySnapshot {
        region: String,
        source_arn: String,
        identifier: String,
        kms_key: String,
        tags: BTreeMap<String, String>,
    },
    /// Places (or puts in force again) the set's hold on its clinic.
    PlaceHold {
        clinic: String,
        holder: String,
        lifetime: std::time::Duration,
    },
    RenewHold {
        clinic: String,
        holder: String,
    },
    ReleaseHold {
        clinic: String,
        holder: String,
    },
    /// Deletes the set's documents Job (and its pods).
    StopJob {
        name: String,
    },
    /// Retention let the set go: its record is deleted with its data, if it is still as
    /// it was at `resource_version`.
    Expire {
        resource_version: String,
    },
    /// Other sets of the policy whose recorded retention verdict is out of date: they are
    /// judged again now rather than at their next resync.
    Wake {
        sets: Vec<String>,
    },
}

impl Change {
    /// Creating `job` (and its pods' NetworkPolicy).
    pub fn create_job(job: &DocumentsJob) -> Change {
        Change::CreateJob {
            name: job.name.to_string(),
            body: job.render(),
            network_policy: job.network_policy(),
        }
    }
}

/// Where the steps leave the set: what to say, what to do, whether to look again soon.
pub struct Outcome {
    pub verdicts: Vec<Verdict>,
    pub changes: Vec<Change>,
    /// Work is under way: look again at the progress interval.
    pub busy: bool,
}

/// RDS statuses of a snapshot that will never become `available`.
pub(super) const SNAPSHOT_FAILED: &[&str] = &["failed", "deleted", "incompatible-restore"];

/// Plans the next step of a set that is `Pending` or `Running`; `status` is the one to
/// write, updated in place. A set that fails lets its clinic go at once.
pub fn next(steps: &Steps, status: &mut OpenEMRBackupStatus, now: Timestamp) -> Outcome {
    let mut out = take(steps, status, now);
    if status.phase == Some(BackupPhase::Failed) {
        if release(steps, status, &mut out, now) {
            out.verdicts.push(Verdict::falsy(
                QUIESCED,
                "NotQuiesced",
                "the set failed: its hold is released and the clinic runs again",
            ));
        }
        if steps.job == JobSeen::Running {
            // Its copy could never complete the set: it stops writing to the bucket.
            out.changes.push(Change::StopJob {
                name: set::documents_job_name(&steps.set),
            });
        }
    }
    out
}

/// Releases the set's hold if it placed one and has not let it go yet; records how long the
/// clinic was down. Whether it did.
fn release(
    steps: &Steps,
    status: &mut OpenEMRBackupStatus,
    out: &mut Outcome,
    now: Timestamp,
) -> bool {
    let Some(record) = status.quiesce.as_mut() else {
        return false;
    };
    if record.held_time.is_none() || record.released_time.is_some() {
        return false;
    }
    record.released_time = Some(Time(now));
    record.down_seconds = record
        .held_time
        .as_ref()
        .map(|held| now.duration_since(held.0).as_secs().max(0));
    out.changes.push(Change::ReleaseHold {
        clinic: steps.clinic.name.clone(),
        holder: steps.holder.clone(),
    });
    true
}

/// Where a `Quiesced` set's stop of the clinic leaves the set.
enum Stop {
    /// The clinic is stopped: the parts may be taken.
    InEffect,
    /// Not yet: look again.
    Waiting,
    Lost(&'static str, String),
}

/// Places, renews or waits for the set's hold; the set takes nothing until it is in effect.
fn quiesce(
    steps: &Steps,
    status: &mut OpenEMRBackupStatus,
    out: &mut Outcome,
    now: Timestamp,
) -> Stop {
    let clinic = &steps.clinic.name;
    let lease = crate::controller::deployment::web::holds::lease_name(clinic, &steps.holder);
    let record = status
        .quiesce
        .get_or_insert_with(|| crate::api::backup::QuiesceRecord {
            lease: lease.clone(),
            ..Default::default()
        });
    let place = Change::PlaceHold {
        clinic: clinic.clone(),
        holder: steps.holder.clone(),
        lifetime: steps.hold_lifetime,
    };
    let stopping = |out: &mut Outcome, why: String| {
        out.verdicts.push(Verdict::falsy(QUIESCED, "Stopping", why));
        Stop::Waiting
    };
    let taken = record.effective_time.is_some();
    let lapsed_at = match steps.hold {
        HoldSeen::Placed {
            expires: Some(expires),
            ..
        } if expires <= now => Some(expires),
        _ => None,
    };
    match (&steps.hold, lapsed_at) {
        (HoldSeen::Absent, _) if taken => Stop::Lost(
            "HoldLost",
            format!(
                "the set's hold {lease} was deleted while the set was taken: the clinic may have run meanwhile, so the set is not quiesced; take another"
            ),
        ),
        (_, Some(expires)) if taken => Stop::Lost(
            "HoldLapsed",
            format!(
                "the set's hold {lease} lapsed at {expires} (not renewed within {}s: the operator was away), so the clinic ran again while the set was taken; take another",
                steps.hold_lifetime.as_secs()
            ),
        ),
        // Nothing is taken yet: placing (again) is harmless, and a Lease the cache does not
        // show yet is placed once more rather than taken for lost.
        (HoldSeen::Absent, _) | (_, Some(_)) => {
            record.held_time.get_or_insert(Time(now));
            out.changes.push(place);
            stopping(
                out,
                format!("the clinic's workers are stopping: hold {lease} placed"),
            )
        }
        (HoldSeen::Placed { effective, .. }, None) => {
            record.held_time.get_or_insert(Time(now));
            out.changes.push(Change::RenewHold {
                clinic: clinic.clone(),
                holder: steps.holder.clone(),
            });
            if !effective {
                return stopping(
                    out,
                    format!(
                        "waits for hold {lease} to take effect: no worker pod and no setup or migration Job left"
                    ),
                );
            }
            record.effective_time.get_or_insert(Time(now));
            out.verdicts.push(Verdict::truthy(
                QUIESCED,
                "InEffect",
                format!("the clinic is stopped (hold {lease}) while the set is taken"),
            ));
            Stop::InEffect
        }
    }
}

fn take(steps: &Steps, status: &mut OpenEMRBackupStatus, now: Timestamp) -> Outcome {
    let mut out = Outcome {
        verdicts: Vec::new(),
        changes: Vec::new(),
        busy: true,
    };
    let clinic = &steps.clinic;
    let phase = status.phase.unwrap_or_default();
    if phase == BackupPhase::Pending {
        let wait = if !clinic.ready {
            Some((
                "ClinicNotReady",
                format!("waits for the clinic to be Ready ({})", clinic.not_ready),
            ))
        } else if let Some(restore) = &steps.restore_quiescing {
            // Said before an older set: it is what this one waits for longest.
            Some((
                "RestoreInPlace",
                format!(
                    "waits for in-place restore {restore:?}, which is stopping the clinic to replace its data"
                ),
            ))
        } else if let Some(other) = steps.running_before.first() {
            Some((
                "AnotherSetRunning",
                format!("waits for set {other:?} of the same clinic to finish"),
            ))
        } else if clinic.instance.is_none() || clinic.bucket.is_none() {
            Some((
                "ClinicNotReady",
                "waits for the clinic's database and bucket to be known".to_string(),
            ))
        } else {
            None
        };
        if let Some((reason, message)) = wait {
            out.verdicts.push(Verdict::falsy(STARTED, reason, message));
            return out;
        }
        if let Some(count) = steps.manual_snapshots
            && count + 1 > steps.snapshot_quota as usize
        {
            // Failed at once, nothing asked of RDS, rather than an AWS error mid-set. Nothing
            // is pruned early to make room.
            return failed(
                status,
                out,
                "SnapshotQuotaExceeded",
                format!(
                    "{} holds {count} manual DB snapshots and the quota is {} (--manual-snapshot-quota): this set's would exceed it. Delete snapshots no set needs, or raise the quota (Service Quotas, RDS \"Manual DB instance snapshots\") and the flag with it",
                    steps.snapshot_place, steps.snapshot_quota
                ),
            );
        }
        status.phase = Some(BackupPhase::Running);
        status.start_time = Some(Time(now));
        status.set_id = Some(steps.set.clone());
        status.consistency = Some(steps.consistency);
        status.include_documents = Some(steps.include_documents);
        status.copies = steps
            .copy_to
            .iter()
            .map(|to| crate::api::backup::RegionCopy {
                region: to.region.clone(),
                kms_key_arn: to.kms_key_arn.clone(),
                bucket: to.bucket_name.clone(),
                ..Default::default()
            })
            .collect();
    }
    out.verdicts.push(Verdict::truthy(
        STARTED,
        "Started",
        "the set is being taken",
    ));
    let quiesced = steps.consistency == ConsistencyMode::Quiesced;
    let released = status
        .quiesce
        .as_ref()
        .is_some_and(|q| q.released_time.is_some());
    if quiesced && !released {
        match quiesce(steps, status, &mut out, now) {
            Stop::InEffect => {}
            Stop::Waiting => return out,
            Stop::Lost(reason, message) => return failed(status, out, reason, message),
        }
    }
    let instance = clinic.instance.clone().unwrap_or_default();
    let bucket = clinic.bucket.clone().unwrap_or_default();
    let identifier = set::snapshot_identifier(&clinic.uid, &steps.set);

    // The database: asked for once; RDS's view of it from then on.
    let mut database = status.database.clone().unwrap_or(SnapshotRef {
        identifier: identifier.clone(),
        ..SnapshotRef::default()
    });
    match &steps.snapshot {
        // RDS had it and it is gone: deleted by someone. Asking again would take another
        // instant than the one recorded, silently.
        None if database.arn.is_some() => {
            let seen = database.status.clone().unwrap_or_default();
            status.database = Some(database);
            return failed(
                status,
                out,
                "DatabaseSnapshotLost",
                format!(
                    "snapshot {identifier} was deleted after RDS had it ({seen}): the set's database instant is gone; take another set"
                ),
            );
        }
        // Asked for, and the request went through: the shared listing shows it at its next
        // taking. Only a request that may not have gone out is sent again.
        None if database.status.as_deref() == Some("requested") && !steps.snapshot_in_flight => {}
        None => {
            status.snapshot_requested_time.get_or_insert(Time(now));
            database.status = Some("requested".into());
            // What a restore checks compatibility from, as the snapshot's tags and the
            // manifest say it too.
            database.engine_version = clinic.engine_version.clone();
            status.image = clinic.image.clone();
            out.changes.push(Change::CreateSnapshot {
                instance: instance.clone(),
                identifier: identifier.clone(),
                tags: set::snapshot_tags(
                    &clinic.tags,
                    (&steps.set, &steps.set_uid),
                    steps.policy.as_deref(),
                    clinic.engine_version.as_deref(),
                    clinic.image.as_deref(),
                ),
            });
        }
        Some(snapshot) if let Some(other) = set::other_sets_uid(snapshot, &steps.set_uid) => {
            return failed(
                status,
                out,
                "SetNameTaken",
                format!(
                    "snapshot {identifier} belongs to an earlier set of this name (uid {other}): delete that snapshot, or name this set otherwise"
                ),
            );
        }
        Some(snapshot) => {
            database.arn = snapshot.arn.clone();
            database.status = Some(snapshot.status.clone());
            if SNAPSHOT_FAILED.contains(&snapshot.status.as_str()) {
                status.database = Some(database);
                return failed(
                    status,
                    out,
                    "DatabaseSnapshotFailed",
                    format!("RDS reports snapshot {identifier} {}", snapshot.status),
                );
            }
        }
    }
    status.database = Some(database);
    let snapshot_available = steps
        .snapshot
        .as_ref()
        .is_some_and(|s| s.status == "available");

    // The documents: after the snapshot is known to RDS, so the database's instant comes
    // first and the documents' copy spans a known window after it.
    // Recorded once: the Job (and its pod's words) need not be read again.
    let documents_done = if !steps.include_documents || status.documents_completion_time.is_some() {
        true
    } else {
        let job_name = set::documents_job_name(&steps.set);
        let manifest = set::documents_manifest_key(&steps.set);
        match &steps.job {
            JobSeen::Absent if steps.snapshot.is_some() && !steps.service_account_exists => {
                out.verdicts.push(Verdict::falsy(
                    "DocumentsCopied",
                    "ServiceAccountNotFound",
                    format!(
                        "the documents Job runs as service account {:?}, which does not exist in namespace {:?}: create it, with an IAM role (IRSA or Pod Identity) that reaches bucket {bucket:?} and the clinic's key",
                        steps.service_account, steps.namespace
                    ),
                ));
                false
            }
            JobSeen::Absent => {
                if steps.snapshot.is_some() {
                    let job = DocumentsJob {
                        name: &job_name,
                        namespace: &steps.namespace,
                        set: &steps.set,
                        set_uid: &steps.set_uid,
                        clinic: &clinic.name,
                        task: Task::Backup {
                            claim: &clinic.claim,
                            manifest: &manifest,
                            previous: steps.previous_documents.as_deref(),
                        },
                        image: &steps.documents_image,
                        service_account: &steps.service_account,
                        region: &clinic.region,
                        bucket: &bucket,
                        kms_key: clinic.kms_key.as_deref(),
                        backoff_limit: steps.job_backoff_limit,
                        deadline_seconds: steps.job_deadline_seconds,
                    };
                    out.changes.push(Change::create_job(&job));
                    status.documents_job = Some(job_name.clone());
                    status.documents_start_time.get_or_insert(Time(now));
                }
                false
            }
            JobSeen::Running => false,
            JobSeen::Foreign => {
                return failed(
                    status,
                    out,
                    "SetNameTaken",
                    format!(
                        "Job {job_name} belongs to another object (an earlier set of this name): delete it, or name this set otherwise"
                    ),
                );
            }
            JobSeen::Failed(words) => {
                return failed(
                    status,
                    out,
                    "DocumentsCopyFailed",
                    format!("the documents Job {job_name} failed: {words}"),
                );
            }
            JobSeen::Succeeded(said) => {
                let summary: serde_json::Value = match serde_json::from_str(said.trim()) {
                    Ok(summary) => summary,
                    Err(_) => {
                        return failed(
                            status,
                            out,
                            "DocumentsCopyFailed",
                            format!(
                                "the documents Job {job_name} succeeded without its summary: {said:?}"
                            ),
                        );
                    }
                };
                let count = |field: &str| summary[field].as_i64();
                status.documents = Some(DocumentsLocation {
                    bucket: bucket.clone(),
                    manifest: summary["manifestKey"]
                        .as_str()
                        .unwrap_or(&manifest)
                        .to_string(),
                    file_count: count("filesScanned"),
                    size_bytes: count("bytesScanned"),
                    files_uploaded: count("filesUploaded"),
                    bytes_uploaded: count("bytesUploaded"),
                });
                status.documents_completion_time.get_or_insert(Time(now));
                true
            }
        }
    };

    if quiesced && steps.snapshot.is_some() && documents_done && !released {
        // Both parts are taken (RDS fixed the snapshot's instant when it accepted it): the
        // clinic need not wait for the snapshot to be available.
        let _ = release(steps, status, &mut out, now);
        let down = status
            .quiesce
            .as_ref()
            .and_then(|q| q.down_seconds)
            .unwrap_or_default();
        out.verdicts.push(Verdict::truthy(
            QUIESCED,
            "Released",
            format!("the clinic was stopped for {down}s while the set was taken, and runs again"),
        ));
    }
    if !(snapshot_available && documents_done) {
        return out;
    }
    let key = set::set_manifest_key(&steps.set);
    if steps.manifest_written {
        let files = status
            .documents
            .as_ref()
            .and_then(|d| d.file_count)
            .map_or("no documents".to_string(), |n| format!("{n} files"));
        out.verdicts.push(Verdict::truthy(
            "Completed",
            "Completed",
            format!("snapshot {identifier}, {files}, manifest s3://{bucket}/{key}"),
        ));
        status.manifest = Some(format!("s3://{bucket}/{key}"));
        status.phase = Some(BackupPhase::Completed);
        status.completion_time.get_or_insert(Time(now));
        status.message = None;
        out.busy = false;
        return out;
    }
    // The instant the manifest says, kept in status from its first writing on, so that a
    // record rebuilt from it later says the same.
    let completed_at = status.completion_time.get_or_insert(Time(now)).0;
    let time = |t: &Option<Time>| t.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
    let manifest = SetManifest {
        format: set::FORMAT.into(),
        version: set::VERSION,
        set: steps.set.clone(),
        clinic: set::ClinicIdentity {
            cluster: clinic.cluster.clone(),
            namespace: steps.namespace.clone(),
            name: clinic.name.clone(),
            uid: clinic.uid.clone(),
        },
        policy: steps.policy.clone(),
        consistency: match steps.consistency {
            ConsistencyMode::CrashConsistent => "CrashConsistent",
            ConsistencyMode::Quiesced => "Quiesced",
        }
        .into(),
        database: DatabasePart {
            region: clinic.region.clone(),
            instance_identifier: instance,
            snapshot_identifier: identifier,
            snapshot_arn: steps.snapshot.as_ref().and_then(|s| s.arn.clone()),
            engine_version: status
                .database
                .as_ref()
                .and_then(|d| d.engine_version.clone())
                .or_else(|| clinic.engine_version.clone()),
            kms_key_arn: clinic.kms_key.clone(),
            requested_at: time(&status.snapshot_requested_time),
        },
        quiesce: status.quiesce.as_ref().map(|q| set::QuiescePart {
            held_at: time(&q.held_time),
            effective_at: time(&q.effective_time),
            released_at: time(&q.released_time),
        }),
        documents: status.documents.as_ref().map(|d| DocumentsPart {
            bucket: d.bucket.clone(),
            manifest: d.manifest.clone(),
            files: d.file_count.unwrap_or_default().max(0) as u64,
            bytes: d.size_bytes.unwrap_or_default().max(0) as u64,
            started_at: time(&status.documents_start_time),
            completed_at: time(&status.documents_completion_time),
        }),
        image: status.image.clone().or_else(|| clinic.image.clone()),
        clinic_spec: clinic.spec.clone(),
        completed_at: completed_at.to_string(),
        operator_version: steps.operator_version.clone(),
        copy_of: None,
    };
    out.changes.push(Change::WriteManifest {
        region: None,
        bucket,
        key,
        kms_key: clinic.kms_key.clone(),
        body: manifest.to_bytes(),
    });
    out
}

fn failed(
    status: &mut OpenEMRBackupStatus,
    mut out: Outcome,
    reason: &'static str,
    message: String,
) -> Outcome {
    status.phase = Some(BackupPhase::Failed);
    status.message = Some(message.clone());
    out.verdicts
        .push(Verdict::falsy("Completed", reason, message));
    out.changes.clear();
    out.busy = false;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn steps() -> Steps {
        Steps {
            set: "set-1".into(),
            set_uid: "set-uid".into(),
            namespace: "clinics".into(),
            policy: None,
            consistency: ConsistencyMode::CrashConsistent,
            include_documents: true,
            clinic: ClinicSeen {
                cluster: "c1".into(),
                name: "clinic-a".into(),
                uid: "clinic-uid".into(),
                ready: true,
                not_ready: String::new(),
                region: "us-east-1".into(),
                instance: Some("db-1".into()),
                engine_version: Some("8.0.40".into()),
                bucket: Some("bucket-1".into()),
                kms_key: Some("arn:aws:kms:us-east-1:1:key/k".into()),
                image: Some("openemr/openemr:7.0.3".into()),
                claim: "clinic-a-sites".into(),
                tags: BTreeMap::new(),
                spec: serde_json::json!({}),
            },
            running_before: Vec::new(),
            restore_quiescing: None,
            snapshot: None,
            job: JobSeen::Absent,
            manifest_written: false,
            previous_documents: Some("backups/documents/set-0.jsonl.gz".into()),
            documents_image: "operator:1".into(),
            service_account: "openemr-documents".into(),
            service_account_exists: true,
            job_backoff_limit: 2,
            job_deadline_seconds: 3600,
            operator_version: "0.1.0".into(),
            hold: HoldSeen::Absent,
            holder: "backup-set-1".into(),
            hold_lifetime: std::time::Duration::from_secs(600),
            manual_snapshots: Some(3),
            snapshot_quota: 100,
            copy_to: None,
            snapshot_place: "account 1 in us-east-1".into(),
            snapshot_in_flight: false,
        }
    }

    fn held(expires: i64, effective: bool) -> HoldSeen {
        HoldSeen::Placed {
            expires: Some(at(expires)),
            effective,
        }
    }

    fn kinds(out: &Outcome) -> Vec<&'static str> {
        out.changes
            .iter()
            .map(|c| match c {
                Change::CreateSnapshot { .. } => "snapshot",
                Change::CreateJob { .. } => "job",
                Change::WriteManifest { .. } => "manifest",
                Change::PlaceHold { .. } => "place",
                Change::RenewHold { .. } => "renew",
                Change::ReleaseHold { .. } => "release",
                Change::StopJob { .. } => "stop-job",
                Change::Expire { .. } => "expire",
                Change::CopySnapshot { .. } => "copy",
                Change::Wake { .. } => "wake",
            })
            .collect()
    }

    #[test]
    fn a_quiesced_set_takes_both_parts_only_while_its_hold_is_in_effect_then_lets_go() {
        let mut s = steps();
        s.consistency = ConsistencyMode::Quiesced;
        let mut status = OpenEMRBackupStatus::default();
        // The hold first; nothing is taken.
        let out = next(&s, &mut status, at(0));
        assert_eq!(kinds(&out), ["place"]);
        let Change::PlaceHold {
            lifetime, holder, ..
        } = &out.changes[0]
        else {
            unreachable!()
        };
        assert_eq!((lifetime.as_secs(), holder.as_str()), (600, "backup-set-1"));
        assert!(out.busy);
        assert_eq!(
            status.quiesce.as_ref().unwrap().lease,
            "clinic-a-hold-backup-set-1"
        );
        // Placed, the workers still stopping (or a migration Job finishing): renewed, waits.
        s.hold = held(600, false);
        let out = next(&s, &mut status, at(5));
        assert_eq!(kinds(&out), ["renew"]);
        assert!(reasons(&out).contains(&"Stopping"));
        assert!(status.snapshot_requested_time.is_none());
        // In effect: the snapshot, under a renewed hold.
        s.hold = held(605, true);
        let out = next(&s, &mut status, at(20));
        assert_eq!(kinds(&out), ["renew", "snapshot"]);
        let record = status.quiesce.clone().unwrap();
        assert_eq!(record.held_time, Some(Time(at(0))));
        assert_eq!(record.effective_time, Some(Time(at(20))));
        // RDS knows the snapshot: the documents Job, still held.
        s.snapshot = snapshot("creating");
        let out = next(&s, &mut status, at(25));
        assert_eq!(kinds(&out), ["renew", "job"]);
        s.job = JobSeen::Running;
        assert_eq!(kinds(&next(&s, &mut status, at(30))), ["renew"]);
        // The documents are copied: the hold goes at once, before the snapshot is available.
        s.job = JobSeen::Succeeded(
            r#"{"manifestKey":"backups/documents/set-1.jsonl.gz","filesScanned":3}"#.into(),
        );
        let out = next(&s, &mut status, at(90));
        assert_eq!(kinds(&out), ["renew", "release"]);
        let record = status.quiesce.clone().unwrap();
        assert_eq!(record.released_time, Some(Time(at(90))));
        assert_eq!(record.down_seconds, Some(90));
        // Released: no more renewals, whatever the cache still shows; the manifest says how
        // the clinic was stopped.
        s.snapshot = snapshot("available");
        let out = next(&s, &mut status, at(120));
        assert_eq!(kinds(&out), ["manifest"]);
        let Change::WriteManifest { body, .. } = &out.changes[0] else {
            unreachable!()
        };
        let manifest = SetManifest::from_bytes(body).unwrap();
        assert_eq!(manifest.consistency, "Quiesced");
        let quiesce = manifest.quiesce.unwrap();
        assert_eq!(
            (quiesce.held_at, quiesce.released_at),
            (at(0).to_string(), at(90).to_string())
        );
    }

    #[test]
    fn a_hold_that_lapsed_after_the_parts_were_started_fails_the_set_and_is_released() {
        let mut s = steps();
        s.consistency = ConsistencyMode::Quiesced;
        let mut status = OpenEMRBackupStatus::default();
        // Lapsed before anything was taken (the operator was away while the workers
        // stopped): placed again, nothing lost.
        next(&s, &mut status, at(0));
        s.hold = held(600, false);
        let out = next(&s, &mut status, at(700));
        assert_eq!(kinds(&out), ["place"]);
        assert_eq!(status.phase, Some(BackupPhase::Running));
        // In effect, the snapshot asked for; then the operator is away past the lifetime.
        s.hold = held(1300, true);
        next(&s, &mut status, at(710));
        s.snapshot = snapshot("creating");
        s.job = JobSeen::Running;
        s.hold = held(1310, true);
        let out = next(&s, &mut status, at(2000));
        assert_eq!(status.phase, Some(BackupPhase::Failed));
        assert_eq!(kinds(&out), ["release", "stop-job"]);
        assert!(reasons(&out).contains(&"HoldLapsed"));
        assert!(
            status.message.as_deref().unwrap().contains("lapsed"),
            "{:?}",
            status.message
        );
        // A hold deleted by someone while the parts were taken: the same.
        let mut status = OpenEMRBackupStatus::default();
        let mut s = steps();
        s.consistency = ConsistencyMode::Quiesced;
        next(&s, &mut status, at(0));
        s.hold = held(600, true);
        next(&s, &mut status, at(5));
        s.hold = HoldSeen::Absent;
        let out = next(&s, &mut status, at(10));
        assert!(reasons(&out).contains(&"HoldLost"));
        assert!(reasons(&out).contains(&"NotQuiesced"));
        assert_eq!(kinds(&out), ["release"]);
    }

    #[test]
    fn a_snapshot_deleted_after_rds_had_it_fails_the_set_rather_than_be_taken_again() {
        let mut s = steps();
        let mut status = OpenEMRBackupStatus::default();
        next(&s, &mut status, at(0));
        // Asked for, not yet in the listing: waited for, unless the request may not have
        // gone out (its intent still in flight), then asked again.
        assert!(kinds(&next(&s, &mut status, at(5))).is_empty());
        s.snapshot_in_flight = true;
        assert_eq!(kinds(&next(&s, &mut status, at(6))), ["snapshot"]);
        s.snapshot_in_flight = false;
        s.snapshot = snapshot("available");
        next(&s, &mut status, at(10));
        s.snapshot = None;
        let out = next(&s, &mut status, at(20));
        assert!(reasons(&out).contains(&"DatabaseSnapshotLost"));
        assert!(!kinds(&out).contains(&"snapshot"));
        assert_eq!(status.phase, Some(BackupPhase::Failed));
    }

    #[test]
    fn a_set_that_would_exceed_the_snapshot_quota_fails_at_once_naming_it() {
        let mut s = steps();
        s.manual_snapshots = Some(100);
        let mut status = OpenEMRBackupStatus::default();
        let out = next(&s, &mut status, at(0));
        assert!(out.changes.is_empty(), "nothing asked of RDS");
        assert_eq!(status.phase, Some(BackupPhase::Failed));
        let message = status.message.unwrap();
        assert!(
            message.contains("holds 100 manual DB snapshots")
                && message.contains("quota is 100")
                && message.contains("account 1 in us-east-1")
                && message.contains("Service Quotas"),
            "{message}"
        );
        // One below: it starts.
        s.manual_snapshots = Some(99);
        let mut status = OpenEMRBackupStatus::default();
        next(&s, &mut status, at(0));
        assert_eq!(status.phase, Some(BackupPhase::Running));
    }

    #[test]
    fn a_quiesced_set_that_fails_lets_its_clinic_go() {
        let mut s = steps();
        s.consistency = ConsistencyMode::Quiesced;
        s.hold = held(600, true);
        let mut status = OpenEMRBackupStatus::default();
        next(&s, &mut status, at(0));
        s.snapshot = snapshot("failed");
        let out = next(&s, &mut status, at(30));
        assert_eq!(status.phase, Some(BackupPhase::Failed));
        assert_eq!(kinds(&out), ["release"]);
        assert_eq!(status.quiesce.unwrap().down_seconds, Some(30));
        // A crash-consistent set has no hold to release.
        let mut s = steps();
        s.snapshot = snapshot("failed");
        let mut status = OpenEMRBackupStatus::default();
        next(&s, &mut status, at(0));
        let out = next(&s, &mut status, at(30));
        assert!(out.changes.is_empty());
    }

    fn snapshot(status: &str) -> Option<DbSnapshot> {
        Some(DbSnapshot {
            identifier: set::snapshot_identifier("clinic-uid", "set-1"),
            arn: Some("arn:aws:rds:us-east-1:1:snapshot:s".into()),
            status: status.into(),
            tags: BTreeMap::new(),
        })
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(NOW + seconds).unwrap()
    }

    fn reasons(out: &Outcome) -> Vec<&'static str> {
        out.verdicts.iter().map(|v| v.reason).collect()
    }

    #[test]
    fn a_set_waits_for_its_clinic_and_for_older_sets() {
        let mut s = steps();
        s.clinic.ready = false;
        s.clinic.not_ready = "NotReady: waiting for: web tier".into();
        let mut status = OpenEMRBackupStatus::default();
        let out = next(&s, &mut status, at(0));
        assert_eq!(reasons(&out), ["ClinicNotReady"]);
        assert!(out.verdicts[0].message.contains("waiting for: web tier"));
        assert!(out.changes.is_empty() && status.phase.is_none());
        let mut s = steps();
        s.running_before = vec!["set-0".into()];
        let out = next(&s, &mut status, at(0));
        assert_eq!(reasons(&out), ["AnotherSetRunning"]);
        assert!(out.changes.is_empty());
        // Behind an in-place restore about to stop the clinic: not begun, saying which.
        let mut s = steps();
        s.restore_quiescing = Some("restore-a".into());
        let out = next(&s, &mut status, at(0));
        assert_eq!(reasons(&out), ["RestoreInPlace"]);
        assert!(out.verdicts[0].message.contains("\"restore-a\""));
        assert!(out.changes.is_empty() && status.phase.is_none());
    }

    #[test]
    fn the_snapshot_comes_first_then_the_documents_job_then_the_manifest() {
        let mut s = steps();
        let mut status = OpenEMRBackupStatus::default();
        // Started: the snapshot only, tagged with the set.
        let out = next(&s, &mut status, at(0));
        assert_eq!(status.phase, Some(BackupPhase::Running));
        // What it is taken with is fixed from now on.
        assert_eq!(
            (status.consistency, status.include_documents),
            (Some(ConsistencyMode::CrashConsistent), Some(true))
        );
        let [
            Change::CreateSnapshot {
                instance,
                identifier,
                tags,
            },
        ] = &out.changes[..]
        else {
            panic!("{:?}", out.changes)
        };
        assert_eq!(instance, "db-1");
        assert_eq!(identifier, "openemr-clinic-uid-set-1");
        assert_eq!(tags["openemr.io/set"], "set-1");
        assert_eq!(status.snapshot_requested_time, Some(Time(at(0))));
        // RDS knows it: the Job starts, from the previous set.
        s.snapshot = snapshot("creating");
        let out = next(&s, &mut status, at(30));
        let [Change::CreateJob { name, body, .. }] = &out.changes[..] else {
            panic!("{:?}", out.changes)
        };
        assert_eq!(name, "set-1-documents");
        let args = body["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert!(args.contains("backups/documents/set-0.jsonl.gz"), "{args}");
        assert_eq!(status.documents_start_time, Some(Time(at(30))));
        assert_eq!(status.snapshot_requested_time, Some(Time(at(0))));
        // The Job runs; the snapshot is still being made: nothing to do.
        s.job = JobSeen::Running;
        let out = next(&s, &mut status, at(60));
        assert!(out.changes.is_empty() && out.busy);
        // The Job is done, with its summary: the documents are recorded, and once the
        // snapshot is available the manifest is written.
        s.job = JobSeen::Succeeded(
            r#"{"filesScanned":10,"bytesScanned":1000,"filesUploaded":3,"bytesUploaded":300,"manifestKey":"backups/documents/set-1.jsonl.gz"}"#.into(),
        );
        let out = next(&s, &mut status, at(90));
        assert!(out.changes.is_empty(), "{:?}", out.changes);
        let documents = status.documents.clone().unwrap();
        assert_eq!(
            (documents.file_count, documents.files_uploaded),
            (Some(10), Some(3))
        );
        s.snapshot = snapshot("available");
        let out = next(&s, &mut status, at(120));
        let [
            Change::WriteManifest {
                region: None,
                bucket,
                key,
                kms_key,
                body,
            },
        ] = &out.changes[..]
        else {
            panic!("{:?}", out.changes)
        };
        assert_eq!(
            (bucket.as_str(), key.as_str()),
            ("bucket-1", "backups/set-1/manifest.json")
        );
        assert!(kms_key.is_some());
        let manifest = SetManifest::from_bytes(body).unwrap();
        assert_eq!(
            manifest.database.snapshot_identifier,
            "openemr-clinic-uid-set-1"
        );
        assert_eq!(manifest.documents.unwrap().files, 10);
        assert_ne!(status.phase, Some(BackupPhase::Completed));
        // Seen in the bucket: Completed.
        s.manifest_written = true;
        let out = next(&s, &mut status, at(150));
        assert!(out.changes.is_empty() && !out.busy);
        assert_eq!(status.phase, Some(BackupPhase::Completed));
        assert_eq!(
            status.manifest.as_deref(),
            Some("s3://bucket-1/backups/set-1/manifest.json")
        );
        let completed = out
            .verdicts
            .iter()
            .find(|v| v.type_ == "Completed")
            .unwrap();
        assert!(completed.status && completed.message.contains("10 files"));
    }

    #[test]
    fn no_job_is_made_without_its_service_account() {
        let mut s = steps();
        s.snapshot = snapshot("available");
        s.service_account_exists = false;
        let mut status = OpenEMRBackupStatus {
            phase: Some(BackupPhase::Running),
            ..Default::default()
        };
        let out = next(&s, &mut status, at(0));
        assert!(out.changes.is_empty() && out.busy, "{:?}", out.changes);
        assert!(reasons(&out).contains(&"ServiceAccountNotFound"));
        assert_eq!(status.phase, Some(BackupPhase::Running));
    }

    #[test]
    fn an_earlier_sets_snapshot_or_job_of_the_same_name_is_not_taken_for_this_ones() {
        let mut s = steps();
        s.snapshot = snapshot("available");
        if let Some(snap) = s.snapshot.as_mut() {
            snap.tags
                .insert(set::SET_UID_TAG.into(), "an-earlier-uid".into());
        }
        let mut status = OpenEMRBackupStatus {
            phase: Some(BackupPhase::Running),
            ..Default::default()
        };
        let out = next(&s, &mut status, at(0));
        assert_eq!(status.phase, Some(BackupPhase::Failed));
        assert!(reasons(&out).contains(&"SetNameTaken"));
        let mut s = steps();
        s.snapshot = snapshot("available");
        s.job = JobSeen::Foreign;
        let mut status = OpenEMRBackupStatus {
            phase: Some(BackupPhase::Running),
            ..Default::default()
        };
        next(&s, &mut status, at(0));
        assert_eq!(status.phase, Some(BackupPhase::Failed));
    }

    #[test]
    fn a_database_only_set_needs_no_job() {
        let mut s = steps();
        s.include_documents = false;
        s.snapshot = snapshot("available");
        let mut status = OpenEMRBackupStatus {
            phase: Some(BackupPhase::Running),
            ..Default::default()
        };
        let out = next(&s, &mut status, at(0));
        let [Change::WriteManifest { body, .. }] = &out.changes[..] else {
            panic!("{:?}", out.changes)
        };
        assert!(SetManifest::from_bytes(body).unwrap().documents.is_none());
    }

    #[test]
    fn a_failed_part_fails_the_set_naming_it() {
        let mut s = steps();
        s.snapshot = snapshot("failed");
        let mut status = OpenEMRBackupStatus {
            phase: Some(BackupPhase::Running),
            ..Default::default()
        };
        let out = next(&s, &mut status, at(0));
        assert_eq!(status.phase, Some(BackupPhase::Failed));
        assert!(reasons(&out).contains(&"DatabaseSnapshotFailed"));
        let mut s = steps();
        s.snapshot = snapshot("available");
        s.job = JobSeen::Failed("BackoffLimitExceeded: ...; its last words: AccessDenied".into());
        let mut status = OpenEMRBackupStatus {
            phase: Some(BackupPhase::Running),
            ..Default::default()
        };
        let out = next(&s, &mut status, at(0));
        assert_eq!(status.phase, Some(BackupPhase::Failed));
        assert!(reasons(&out).contains(&"DocumentsCopyFailed"));
        assert!(status.message.unwrap().contains("AccessDenied"));
        assert!(out.changes.is_empty());
    }
}
