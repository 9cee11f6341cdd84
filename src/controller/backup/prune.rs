//! Deleting a set's data. A record is a view of its set, not its owner: deleting it deletes
//! the data only when it carries `openemr.io/delete-data: "true"`, set before the deletion
//! (retention sets it on a set it expires). Otherwise the record goes and the snapshot,
//! the documents and the manifests stay, to be restored or rebuilt from; so a GitOps tool
//! pruning a set, a namespace deleted, or a policy deleted never destroys a backup.
//!
//! With the request, the record's finalizer holds it until, in this order (each step found
//! done or not from the world, so a crash anywhere resumes where it was):
//!
//! 1. the set's documents Job, if it still runs, is stopped (it would write on);
//! 2. its snapshot is deleted, if it is this set's (its `openemr.io/set-uid` tag), and
//!    gone (`deleting` is waited out);
//! 3. its documents go through the engine's `prune --keep-others` in a Job: the versions no
//!    other set references, then its documents manifest (a version another set needs is
//!    never deleted: the engine reads every other manifest under the mirror's lock);
//! 4. every version of its set manifest is deleted.
//!
//! The same four steps run first in each region the set was copied to (the copy Job, the
//! copied snapshot, the copy's documents through a prune Job there, the copy's manifest),
//! then in the clinic's own region.
//!
//! A set deleted while it holds its clinic (`Quiesced`) releases the hold first, asked or
//! not. A set of a clinic that no longer exists keeps its data (the bucket and key stay with a
//! retained clinic): the record goes, and a Warning Event says so.

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::runtime::events::{Event, EventType};

use super::job::{DocumentsJob, Task};
use super::set;
use crate::api::OpenEMRBackup;
use crate::api::backup::{BackupPhase, CopyPhase};
use crate::aws::rds::{Databases, DbSnapshot};
use crate::controller::children::cached;
use crate::controller::deployment::clinic::{self, aws_error};
use crate::controller::deployment::web::observe::{job_state, last_words};
use crate::controller::deployment::web::{JobState, holds};
use crate::controller::redact::redact;
use crate::controller::{Context, Error, lookup};

/// The annotation asking that deleting the record delete the set's data too.
pub const DELETE_DATA_ANNOTATION: &str = "openemr.io/delete-data";
/// The finalizer that holds a record until its data is deleted (when asked).
pub const FINALIZER: &str = "openemr.io/backup-data";

/// A Job of the set, as the cache shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobLeft {
    Absent,
    Running,
    Succeeded,
    /// With the Job's reason and its pod's last words.
    Failed(String),
}

/// What is left of a set's data.
#[derive(Debug, Clone, PartialEq)]
pub struct Left {
    pub documents_job: JobLeft,
    /// The set's snapshot, when one of its name is this set's.
    pub snapshot: Option<DbSnapshot>,
    pub documents_manifest: bool,
    pub prune_job: JobLeft,
    pub set_manifest: bool,
}

/// The next step of deleting a set's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    StopDocumentsJob,
    DeleteSnapshot(String),
    /// RDS is deleting it.
    WaitForSnapshot(String),
    StartPrune,
    WaitForPrune,
    /// The prune Job failed: it is deleted (the next look starts another), and the failure
    /// reported.
    RetryPrune(String),
    DeleteSetManifest,
    Done,
}

/// The next step, from what is left (pure).
pub fn next_step(left: &Left) -> Step {
    if left.documents_job == JobLeft::Running {
        return Step::StopDocumentsJob;
    }
    if let Some(snapshot) = &left.snapshot {
        return if snapshot.status == "deleting" {
            Step::WaitForSnapshot(snapshot.identifier.clone())
        } else {
            Step::DeleteSnapshot(snapshot.identifier.clone())
        };
    }
    if left.documents_manifest {
        return match &left.prune_job {
            JobLeft::Absent => Step::StartPrune,
            // Succeeded with the manifest still there: a stale look; the next shows it gone.
            JobLeft::Running | JobLeft::Succeeded => Step::WaitForPrune,
            JobLeft::Failed(words) => Step::RetryPrune(words.clone()),
        };
    }
    if left.set_manifest {
        return Step::DeleteSetManifest;
    }
    Step::Done
}

/// Whether deleting `set`'s record is to delete its data.
pub fn deletes_data(set: &OpenEMRBackup) -> bool {
    set.annotations()
        .get(DELETE_DATA_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// Runs the finalizer: `Ok` once the record may go; `Waiting` while a step is under way.
pub async fn cleanup(set: &OpenEMRBackup, ctx: &Context) -> Result<(), Error> {
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let clinic_name = &set.spec.deployment_ref.name;
    super::children_listed(ctx)?;
    // A quiesced set deleted while it held its clinic lets it go at once, whatever else.
    let holder = set::quiesce_holder(clinic_name, &name);
    if cached(
        &ctx.children.holds,
        &ns,
        &holds::lease_name(clinic_name, &holder),
    )
    .is_some()
    {
        holds::release(&ctx.client, &ns, clinic_name, &holder)
            .await
            .map_err(|e| Error::Cleanup(format!("releasing the set's hold: {e}")))?;
    }
    if !deletes_data(set) {
        return Ok(());
    }
    let Some(aws) = &ctx.aws else {
        return Err(Error::Cleanup(format!(
            "{DELETE_DATA_ANNOTATION} asks for the set's data to be deleted, which this operator cannot do without AWS access: run it with AWS access, or remove the annotation to keep the data"
        )));
    };
    let clinic = lookup(&ctx.caches.deployments, &ns, clinic_name).and_then(|f| f.0.clone().ok());
    let Some(d) = clinic else {
        let event = Event {
            type_: EventType::Warning,
            reason: "DataKept".into(),
            note: Some(format!(
                "clinic {clinic_name:?} is gone: set {name:?}'s snapshot, documents and manifest stay with its bucket and key; delete them by hand if they must go"
            )),
            action: "DeleteData".into(),
            secondary: None,
        };
        ctx.publish::<OpenEMRBackup>(&event, &kube::Resource::object_ref(set, &()))
            .await;
        return Ok(());
    };
    let status = d.status.clone().unwrap_or_default();
    let (Some(bucket), Some(clinic_uid)) = (status.bucket_name.clone(), d.uid()) else {
        return Err(Error::Cleanup(format!(
            "clinic {clinic_name:?} does not report its bucket yet"
        )));
    };
    let clients = clinic::clients(&d, aws).await;
    // What the set recorded (a set of a former incarnation of the clinic, rebuilt from the
    // bucket, names another clinic uid), else its name now.
    let recorded = set.status.as_ref().and_then(|s| s.database.clone());
    let identifier = recorded.as_ref().map_or_else(
        || set::snapshot_identifier(&clinic_uid, &name),
        |d| d.identifier.clone(),
    );
    // Its copies in other regions first: the set's own data goes last, so a set is never
    // left as copies without their original.
    for copy in set.status.iter().flat_map(|s| &s.copies) {
        let place = Place {
            clients: clinic::clients_in(&d, aws, &copy.region).await,
            region: copy.region.clone(),
            bucket: copy.bucket.clone(),
            identifier: copy
                .database
                .as_ref()
                .map_or_else(|| identifier.clone(), |d| d.identifier.clone()),
            recorded_arn: copy.database.as_ref().and_then(|d| d.arn.clone()),
            writer_job: set::copy_job_name(&name),
            prune_job: set::copy_prune_job_name(&name),
            kms_key: None,
            completed: copy.phase == Some(CopyPhase::Completed),
        };
        clean(ctx, set, (&d, aws), &place).await?;
    }
    let home = Place {
        clients,
        region: d.spec.aws.region.clone(),
        bucket,
        identifier,
        recorded_arn: recorded.and_then(|d| d.arn),
        writer_job: set::documents_job_name(&name),
        prune_job: set::prune_job_name(&name),
        kms_key: status.kms_key_arn.clone(),
        completed: set.status.as_ref().and_then(|s| s.phase) == Some(BackupPhase::Completed),
    };
    clean(ctx, set, (&d, aws), &home).await
}

/// Where a set's data is: its clinic's region, or a copy's.
struct Place {
    clients: std::sync::Arc<crate::aws::AwsClients>,
    region: String,
    bucket: String,
    /// The snapshot there, and its ARN as recorded.
    identifier: String,
    recorded_arn: Option<String>,
    /// The Job that writes the documents there, and the one that prunes them.
    writer_job: String,
    prune_job: String,
    kms_key: Option<String>,
    /// Whether the part there completed: its snapshot was then seen in a listing, so every
    /// later listing shows it until it is deleted, and the shared listing can be read
    /// instead of a describe of its own.
    completed: bool,
}

/// Deletes the set's data in `place`, a step per look: `Ok` once nothing is left there.
async fn clean(
    ctx: &Context,
    set: &OpenEMRBackup,
    (d, aws): (
        &crate::api::OpenEMRDeployment,
        &crate::controller::ClinicAws,
    ),
    place: &Place,
) -> Result<(), Error> {
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let set_uid = set.uid().unwrap_or_default();
    let (clients, bucket) = (&place.clients, &place.bucket);
    // Deleted by this process: RDS finishes what it accepted. A completed set's snapshot
    // is read from a fresh listing when there is one (sets in flight keep one), else
    // described.
    let snapshot = if aws
        .snapshots
        .was_deleted(clients, &place.identifier, &set_uid)
    {
        None
    } else {
        let listed = if place.completed {
            aws.snapshots
                .peek(clients, &place.identifier, aws.progress_interval)
                .await
        } else {
            None
        };
        match listed {
            Some(listed) => listed,
            None => clients
                .describe_snapshot(&place.identifier)
                .await
                .map_err(aws_error("reading the set's snapshot"))?,
        }
    }
    // A snapshot of this name made for an earlier set of the name is not this one's; a
    // rebuilt record knows its own by the ARN its manifest gave.
    .filter(|s| {
        s.tags
            .get(set::SET_UID_TAG)
            .is_none_or(|uid| *uid == set_uid)
            || (s.arn.is_some() && place.recorded_arn.as_ref() == s.arn.as_ref())
    });
    let documents_manifest = set::documents_manifest_key(&name);
    // A set that started database-only and recorded no documents never wrote any.
    let no_documents = set.status.as_ref().is_some_and(|s| {
        s.include_documents == Some(false) && s.documents.is_none() && s.documents_job.is_none()
    });
    let documents_job = job_left(ctx, &ns, &place.writer_job, &set_uid).await?;
    // The bucket is read only once the steps before it are done: the next step does not
    // depend on it until then (what is unread counts as there).
    let earlier_steps_left = documents_job == JobLeft::Running || snapshot.is_some();
    let documents_manifest_left = !no_documents
        && (earlier_steps_left
            || super::object_exists(&clients.s3, bucket, &documents_manifest)
                .await
                .map_err(aws_error("reading the documents manifest"))?);
    let left = Left {
        documents_job,
        snapshot,
        documents_manifest: documents_manifest_left,
        prune_job: if documents_manifest_left {
            job_left(ctx, &ns, &place.prune_job, &set_uid).await?
        } else {
            JobLeft::Absent
        },
        set_manifest: earlier_steps_left
            || documents_manifest_left
            || super::object_exists(&clients.s3, bucket, &set::set_manifest_key(&name))
                .await
                .map_err(aws_error("reading the set manifest"))?,
    };
    let step = next_step(&left);
    let region = &place.region;
    tracing::info!(namespace = %ns, set = %name, %region, ?step, "deleting the set's data");
    let waiting = |what: String| Error::Waiting {
        what: format!("{what} ({region})"),
        after: aws.progress_interval,
    };
    match step {
        Step::Done => Ok(()),
        Step::StopDocumentsJob => {
            super::stop_job(ctx, &ns, &place.writer_job).await?;
            Err(waiting(format!("Job {} to stop", place.writer_job)))
        }
        Step::DeleteSnapshot(id) => {
            clients
                .delete_snapshot(&id)
                .await
                .map_err(aws_error("deleting the set's snapshot"))?;
            aws.snapshots.deleted(clients, &id, &set_uid);
            Err(waiting(format!("snapshot {id} to be deleted")))
        }
        Step::WaitForSnapshot(id) => Err(waiting(format!("snapshot {id} to be deleted"))),
        Step::StartPrune => {
            let job_name = &place.prune_job;
            let image = aws.workload.documents_image.clone().ok_or_else(|| {
                Error::Cleanup(
                    "no image for the prune Job: start the operator with --documents-image (its own image)"
                        .into(),
                )
            })?;
            let job = DocumentsJob {
                name: job_name,
                namespace: &ns,
                set: &name,
                set_uid: &set_uid,
                clinic: &d.name_any(),
                task: Task::Prune {
                    manifest: &documents_manifest,
                },
                image: &image,
                service_account: &aws.workload.documents_service_account,
                region,
                bucket,
                kms_key: place.kms_key.as_deref(),
                backoff_limit: aws.workload.documents_backoff_limit,
                deadline_seconds: aws.workload.documents_deadline.as_secs() as i64,
            };
            super::create_new::<k8s_openapi::api::networking::v1::NetworkPolicy>(
                ctx,
                &ns,
                job_name,
                &job.network_policy(),
            )
            .await?;
            super::create_new::<Job>(ctx, &ns, job_name, &job.render()).await?;
            Err(waiting(format!("the prune Job {job_name}")))
        }
        Step::WaitForPrune => Err(waiting(format!("the prune Job {}", place.prune_job))),
        Step::RetryPrune(words) => {
            super::stop_job(ctx, &ns, &place.prune_job).await?;
            Err(Error::Cleanup(format!(
                "the prune Job {} failed in {region} (another is started): {words}",
                place.prune_job
            )))
        }
        Step::DeleteSetManifest => {
            let store = crate::documents::store::Store {
                client: clients.s3.clone(),
                bucket: bucket.clone(),
                kms_key: None,
            };
            store
                .delete_every_version(&set::set_manifest_key(&name))
                .await
                .map_err(|e| Error::Cleanup(format!("deleting the set manifest: {e}")))?;
            // S3 lists and reads what it deleted as gone at once: nothing is left here.
            Ok(())
        }
    }
}

/// The set's Job `name`, if the set owns it.
async fn job_left(ctx: &Context, ns: &str, name: &str, set_uid: &str) -> Result<JobLeft, Error> {
    let Some(job) = cached(&ctx.children.jobs, ns, name) else {
        return Ok(JobLeft::Absent);
    };
    if !job.owner_references().iter().any(|o| o.uid == set_uid)
        || job.metadata.deletion_timestamp.is_some()
    {
        return Ok(JobLeft::Absent);
    }
    Ok(match job_state(&job) {
        JobState::Running => JobLeft::Running,
        JobState::Complete => JobLeft::Succeeded,
        JobState::Failed { reason, .. } => {
            let words = last_words(ctx, ns, name).await?;
            JobLeft::Failed(redact(&format!("{reason}; its last words: {words}"), &[]))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn everything() -> Left {
        Left {
            documents_job: JobLeft::Running,
            snapshot: Some(DbSnapshot {
                identifier: "openemr-uid-set-1".into(),
                arn: None,
                status: "available".into(),
                tags: BTreeMap::new(),
            }),
            documents_manifest: true,
            prune_job: JobLeft::Absent,
            set_manifest: true,
        }
    }

    #[test]
    fn the_job_stops_then_the_snapshot_then_the_documents_then_the_manifest_go() {
        let mut left = everything();
        assert_eq!(next_step(&left), Step::StopDocumentsJob);
        left.documents_job = JobLeft::Absent;
        assert_eq!(
            next_step(&left),
            Step::DeleteSnapshot("openemr-uid-set-1".into())
        );
        left.snapshot.as_mut().unwrap().status = "deleting".into();
        assert_eq!(
            next_step(&left),
            Step::WaitForSnapshot("openemr-uid-set-1".into())
        );
        left.snapshot = None;
        assert_eq!(next_step(&left), Step::StartPrune);
        left.prune_job = JobLeft::Running;
        assert_eq!(next_step(&left), Step::WaitForPrune);
        left.prune_job = JobLeft::Failed("BackoffLimitExceeded; its last words: locked".into());
        assert!(matches!(next_step(&left), Step::RetryPrune(w) if w.contains("locked")));
        left.prune_job = JobLeft::Succeeded;
        assert_eq!(next_step(&left), Step::WaitForPrune);
        left.documents_manifest = false;
        assert_eq!(next_step(&left), Step::DeleteSetManifest);
        left.set_manifest = false;
        assert_eq!(next_step(&left), Step::Done);
    }

    #[test]
    fn only_an_explicit_request_deletes_data() {
        let mut set = OpenEMRBackup::new(
            "set-1",
            serde_json::from_value(serde_json::json!({"deploymentRef": {"name": "c"}})).unwrap(),
        );
        assert!(!deletes_data(&set));
        set.annotations_mut()
            .insert(DELETE_DATA_ANNOTATION.into(), "yes".into());
        assert!(!deletes_data(&set), "only \"true\" asks");
        set.annotations_mut()
            .insert(DELETE_DATA_ANNOTATION.into(), "true".into());
        assert!(deletes_data(&set));
    }
}
