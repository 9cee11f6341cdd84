//! OpenEMRBackup controller: one backup set per object, taken together (a manual RDS
//! snapshot, then the documents copied by a Job running the documents engine), described
//! by a set manifest in the clinic's bucket, written last.
//!
//! It checks, in the shared caches, that the clinic exists and that a named policy covers
//! it (`Accepted`); then [`plan`] takes the set step by step (a `Quiesced` set behind a
//! hold on its clinic), [`set`] names every part and holds the set manifest's format,
//! [`job`] renders the documents Job, [`retention`] decides which completed sets stay (not
//! applied yet). Without AWS access (validation-only mode) sets are checked and stay
//! `Pending`. Schedules make sets in the policy controller.
//!
//! A set's snapshot is read from the shared listing of its region's manual snapshots
//! ([`crate::aws::snapshots`]), which also holds sets to RDS's manual-snapshot quota.
//! Completed sets are judged by their policy's [`retention`]; an expired one, or a record
//! deleted asking for it, has its data deleted ([`prune`]). Records lost are rebuilt from
//! the bucket by the policy controller. A completed set of a policy with `crossRegionCopy`
//! is then copied to that region ([`copy`]).

pub mod copy;
pub mod job;
pub mod plan;
pub mod prune;
pub mod retention;
pub mod set;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};

use super::children::cached;
use super::deployment::clinic::{self, aws_error};
use super::deployment::web::observe::{job_state, last_words};
use super::deployment::web::{WebNames, holds};
use super::{Context, Error, Plan, Reconcile, RefKind, Requeue, lookup, status_from, status_with};
use crate::api::backup::{BackupPhase, CopyPhase};
use crate::api::{
    BackupPolicy, ConsistencyMode, OpenEMRBackup, OpenEMRBackupStatus, OpenEMRDeployment,
};
use crate::aws::rds::Databases;
use crate::conditions::Verdict;
use crate::controller::deployment::web::JobState;
use crate::controller::redact::redact;
use plan::{Change, ClinicSeen, HoldSeen, JobSeen, Steps};

/// The condition saying whether retention keeps a completed set of a policy, and until when.
pub use retention::RETAINED;

/// The policy named by a set, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyRef {
    NotSet,
    Missing,
    /// Present but not readable as a BackupPolicy of this API.
    Unreadable,
    /// Found; it covers this deployment.
    Covers(String),
}

#[derive(Debug, Clone)]
pub struct Observed {
    pub deployment_exists: bool,
    pub policy: PolicyRef,
    /// The set's steps, when the operator reaches AWS and the set is under way or may
    /// start.
    pub steps: Option<Steps>,
    /// A documents image is known (the policy's or the operator's).
    pub documents_image_known: bool,
    /// The set's consistency mode: its own, else its policy's.
    pub consistency: ConsistencyMode,
    /// How soon to look again while the set is under way.
    pub progress: std::time::Duration,
    /// A finished `Quiesced` set's hold is still there (the release was cut short): it is
    /// released.
    pub leftover_hold: bool,
    /// A completed set of a policy: its policy's completed sets, as retention judges them.
    pub retention: Option<RetentionSeen>,
    /// A record rebuilt from the bucket, not yet described: its set manifest as read (or why
    /// it could not be).
    pub rebuilt: Option<Result<set::SetManifest, String>>,
    /// A completed set whose copy to another region is not finished: what it is planned from.
    pub copy: Option<copy::CopySteps>,
}

/// What retention judges a completed set by.
#[derive(Debug, Clone)]
pub struct RetentionSeen {
    /// The policy's completed sets, this one among them.
    pub candidates: Vec<retention::Candidate>,
    /// The policy's other finished sets (completed or failed), as their status records
    /// retention's verdict.
    pub others: Vec<retention::Recorded>,
    pub rules: crate::api::backup_policy::Retention,
    pub zone: chrono_tz::Tz,
    /// When this set was made, on the operator's clock.
    pub created: chrono::DateTime<chrono::Utc>,
}

impl Reconcile for OpenEMRBackup {
    type Observed = Observed;
    type Change = Change;
    const CONTROLLER: &'static str = "openemrbackup";
    const REF_KIND: Option<RefKind> = Some(RefKind::Backup);
    const FINALIZER: Option<&'static str> = Some(prune::FINALIZER);

    /// Deleting a record deletes the set's data only when asked to ([`prune`]).
    async fn cleanup(&self, ctx: &Context) -> Result<(), Error> {
        prune::cleanup(self, ctx).await
    }

    async fn observe(&self, ctx: &Context) -> Result<Observed, Error> {
        let ns = self.namespace().unwrap_or_default();
        let caches = &ctx.caches;
        let clinic_name = &self.spec.deployment_ref.name;
        let found = lookup(&caches.deployments, &ns, clinic_name);
        let deployment_exists = found.is_some();
        let mut found_policy: Option<BackupPolicy> = None;
        let policy = match &self.spec.policy_ref {
            None => PolicyRef::NotSet,
            Some(r) => match lookup(&caches.policies, &ns, &r.name) {
                None => PolicyRef::Missing,
                Some(found) => match &found.0 {
                    Ok(p) => {
                        found_policy = Some(p.clone());
                        PolicyRef::Covers(p.spec.deployment_ref.name.clone())
                    }
                    Err(_) => PolicyRef::Unreadable,
                },
            },
        };
        // What the set started with stands: a later change to its policy alters no set
        // under way.
        let taken = self.status.clone().unwrap_or_default();
        let consistency = taken
            .consistency
            .or(self.spec.consistency)
            .or(found_policy.as_ref().map(|p| p.spec.consistency))
            .unwrap_or_default();
        let mut observed = Observed {
            deployment_exists,
            policy,
            steps: None,
            documents_image_known: false,
            consistency,
            progress: std::time::Duration::from_secs(30),
            leftover_hold: false,
            retention: None,
            rebuilt: None,
            copy: None,
        };
        if matches!(self.phase(), BackupPhase::Completed | BackupPhase::Failed)
            && let Some(policy) = &found_policy
        {
            observed.retention = self.retention_seen(ctx, &ns, policy);
        }
        let (Some(aws), Some(found)) = (&ctx.aws, found) else {
            return Ok(observed);
        };
        let Ok(d) = &found.0 else {
            return Ok(observed);
        };
        children_listed(ctx)?;
        observed.progress = aws.progress_interval;
        if let Some(from) = self.rebuilt_from()
            && self.status.as_ref().and_then(|s| s.phase).is_none()
        {
            let clients = clinic::clients(d, aws).await;
            let own = d.status.as_ref().and_then(|s| s.bucket_name.clone());
            observed.rebuilt =
                Some(read_rebuilt(&clients.s3, &from, own.as_deref(), &self.name_any()).await);
            return Ok(observed);
        }
        let holder = set::quiesce_holder(clinic_name, &self.name_any());
        let lease = cached(
            &ctx.children.holds,
            &ns,
            &holds::lease_name(clinic_name, &holder),
        );
        let phase = self.phase();
        let documents_image = found_policy
            .as_ref()
            .and_then(|p| p.spec.documents.image.clone())
            .or_else(|| aws.workload.documents_image.clone());
        if matches!(phase, BackupPhase::Completed | BackupPhase::Failed) {
            observed.leftover_hold = consistency == ConsistencyMode::Quiesced && lease.is_some();
            if phase == BackupPhase::Completed
                && let Some(at) = taken.copies.iter().position(|c| {
                    !matches!(c.phase, Some(CopyPhase::Completed | CopyPhase::Failed))
                })
            {
                observed.copy = Some(
                    self.copy_steps(ctx, (aws, d), &ns, at, documents_image)
                        .await?,
                );
            }
            return Ok(observed);
        }
        let hold = match lease
            .as_deref()
            .and_then(|l| holds::hold_of(l, clinic_name))
        {
            None => HoldSeen::Absent,
            Some(hold) => HoldSeen::Placed {
                expires: hold.expires.map(|t| t.0),
                effective: d
                    .status
                    .as_ref()
                    .and_then(|s| s.web.as_ref())
                    .is_some_and(|w| w.holds.iter().any(|h| h.lease == hold.lease && h.effective)),
            },
        };
        observed.documents_image_known = documents_image.is_some();
        let include_documents = taken
            .include_documents
            .or(self.spec.include_documents)
            .or(found_policy.as_ref().map(|p| p.spec.documents.include))
            .unwrap_or(true);
        let clinic = clinic_seen(d, aws, &ns);
        let (running_before, previous_documents) = self.siblings(ctx, &ns);
        let mut steps = Steps {
            set: self.name_any(),
            set_uid: self.uid().unwrap_or_default(),
            namespace: ns.clone(),
            policy: self.spec.policy_ref.as_ref().map(|p| p.name.clone()),
            consistency,
            include_documents,
            clinic,
            running_before,
            restore_quiescing: restore_quiescing(ctx, &ns, &self.spec.deployment_ref.name),
            snapshot: None,
            job: JobSeen::Absent,
            manifest_written: false,
            previous_documents,
            documents_image: documents_image.unwrap_or_default(),
            service_account: aws.workload.documents_service_account.clone(),
            service_account_exists: true,
            job_backoff_limit: aws.workload.documents_backoff_limit,
            job_deadline_seconds: aws.workload.documents_deadline.as_secs() as i64,
            operator_version: env!("CARGO_PKG_VERSION").to_string(),
            hold,
            holder,
            hold_lifetime: aws.workload.quiesce_hold_lifetime,
            manual_snapshots: None,
            snapshot_quota: aws.workload.manual_snapshot_quota,
            snapshot_place: String::new(),
            snapshot_in_flight: false,
            copy_to: found_policy
                .as_ref()
                .and_then(|p| p.spec.cross_region_copy.clone()),
        };
        if phase == BackupPhase::Pending && steps.clinic.ready && steps.running_before.is_empty() {
            // About to start: how many manual snapshots the region holds (RDS's quota).
            let clients = clinic::clients(d, aws).await;
            let listing = aws
                .snapshots
                .listing(&clients, aws.progress_interval)
                .await
                .map_err(aws_error("listing the region's manual snapshots"))?;
            steps.manual_snapshots = listing.map(|l| l.manual.len());
            steps.snapshot_place = format!("account {} in {}", clients.account, clients.region);
        }
        if phase == BackupPhase::Running {
            let clients = clinic::clients(d, aws).await;
            let identifier = set::snapshot_identifier(&steps.clinic.uid, &steps.set);
            // From the region's shared listing (one per progress interval for every set in
            // flight there); described alone where the operator cannot list.
            let listing = aws
                .snapshots
                .listing(&clients, aws.progress_interval)
                .await
                .map_err(aws_error("listing the region's manual snapshots"))?;
            steps.snapshot = match listing {
                Some(listing) => listing.manual.get(&identifier).cloned(),
                None => clients
                    .describe_snapshot(&identifier)
                    .await
                    .map_err(aws_error("reading the set's snapshot"))?,
            };
            steps.snapshot_in_flight = self
                .status
                .as_ref()
                .and_then(|s| s.in_flight.as_ref())
                .is_some_and(|i| i.action == "CreateDBSnapshot");
            let job_name = set::documents_job_name(&steps.set);
            let uid = self.uid().unwrap_or_default();
            let recorded = self
                .status
                .as_ref()
                .is_some_and(|s| s.documents_completion_time.is_some());
            // Once the documents are recorded, neither the Job nor its pods are read again.
            if include_documents && !recorded {
                steps.job = job_seen(ctx, &ns, &job_name, &uid).await?;
            }
            if steps.job == JobSeen::Absent
                && steps.snapshot.is_some()
                && include_documents
                && !recorded
            {
                let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns);
                steps.service_account_exists = accounts
                    .get_opt(&steps.service_account)
                    .await
                    .map_err(Error::observe(format!(
                        "ServiceAccount {ns}/{}",
                        steps.service_account
                    )))?
                    .is_some();
            }
            let parts_done = self.status.as_ref().is_some_and(|s| {
                s.database.as_ref().and_then(|d| d.status.as_deref()) == Some("available")
                    && (!include_documents || s.documents.is_some())
            });
            if parts_done && let Some(bucket) = &steps.clinic.bucket {
                steps.manifest_written =
                    object_exists(&clients.s3, bucket, &set::set_manifest_key(&steps.set))
                        .await
                        .map_err(aws_error("reading the set manifest"))?;
            }
        }
        observed.steps = Some(steps);
        Ok(observed)
    }

    /// A completed set tells whoever waits on its policy's newest set. Its policy's other
    /// sets are not all woken: judging itself, it wakes those whose verdict it changed
    /// ([`Change::Wake`]), so a policy's year of sets costs a few looks per completion, not
    /// one per set.
    fn announced(&self) -> Option<(u64, Vec<(RefKind, String)>)> {
        let policy = self.spec.policy_ref.as_ref()?;
        let completed = self.phase() == BackupPhase::Completed;
        Some((
            u64::from(completed),
            vec![(RefKind::Completions, policy.name.clone())],
        ))
    }

    fn references(&self) -> Vec<(RefKind, String)> {
        let clinic = self.spec.deployment_ref.name.clone();
        let mut refs = vec![
            (RefKind::Deployment, clinic.clone()),
            // The clinic's children: the set's documents Job among them.
            (RefKind::Workload, clinic),
            // Itself, for whoever finds its retention verdict out of date.
            (RefKind::Retention, self.name_any()),
        ];
        refs.extend(
            self.spec
                .policy_ref
                .iter()
                .map(|r| (RefKind::Policy, r.name.clone())),
        );
        refs
    }

    fn plan(&self, observed: &Observed, now: Timestamp) -> Plan<OpenEMRBackupStatus, Change> {
        let accepted = self.validate(observed);
        let is_accepted = accepted.status;
        let mut status = status_with(self, std::slice::from_ref(&accepted), now);
        if !observed.deployment_exists && status.phase == Some(BackupPhase::Running) {
            // Its clinic went while it was taken: it can never complete. What it took stays
            // (the snapshot, the documents sent), with the clinic's bucket and key.
            let message = format!(
                "clinic {:?} was deleted while the set was taken: it will not complete; what it took stays",
                self.spec.deployment_ref.name
            );
            status.phase = Some(BackupPhase::Failed);
            status.message = Some(message.clone());
            let verdict = Verdict::falsy("Completed", "DeploymentDeleted", message);
            return Plan::after_validation(
                status_from(self, status, &[accepted, verdict], now),
                false,
            );
        }
        if self.rebuilt_from().is_some() && status.phase.is_none() {
            // A record of a set already taken: described from its manifest, never taken.
            let verdict = match observed.rebuilt.as_ref().filter(|_| is_accepted) {
                Some(Ok(manifest)) => {
                    rebuilt_status(
                        &mut status,
                        manifest,
                        &self.rebuilt_from().unwrap_or_default(),
                    );
                    Verdict::truthy(
                        "Completed",
                        "Rebuilt",
                        format!(
                            "rebuilt from {}: a set completed {}",
                            self.rebuilt_from().unwrap_or_default(),
                            manifest.completed_at
                        ),
                    )
                }
                Some(Err(why)) => Verdict::falsy("Completed", "ManifestUnreadable", why.clone()),
                None => return Plan::after_validation(status, is_accepted),
            };
            let described = status.phase.is_some();
            let mut plan = Plan::after_validation(
                status_from(self, status, &[accepted, verdict], now),
                is_accepted,
            );
            if described {
                // Judged by its policy's retention at the next look, not the next resync.
                plan.requeue = Requeue::After(observed.progress);
            }
            return plan;
        }
        status.phase.get_or_insert(BackupPhase::Pending);
        let phase = status.phase.unwrap_or_default();
        if matches!(phase, BackupPhase::Completed | BackupPhase::Failed) {
            let mut retained = None;
            let mut expire = None;
            let mut wake = None;
            // Judged again at every look; without a policy to judge by, it is kept.
            status.expires_at = None;
            if let Some(seen) = observed.retention.as_ref().filter(|_| is_accepted) {
                let now_utc = crate::clock::to_utc(now);
                let judgement = if phase == BackupPhase::Failed {
                    retention::judge_failed(&seen.candidates, seen.created, now_utc)
                } else {
                    let judged = retention::plan(&seen.candidates, &seen.rules, seen.zone, now_utc);
                    // Judging itself, it judges its policy's other sets too: those whose
                    // status says otherwise are told to look again.
                    let stale =
                        retention::out_of_date(&seen.others, &seen.candidates, &judged, now_utc);
                    wake = (!stale.is_empty()).then_some(Change::Wake { sets: stale });
                    retention::judge_completed(&judged, &self.name_any(), now_utc)
                };
                if let Some(judgement) = judgement {
                    status.expires_at = judgement.expires_at.map(|t| {
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                            crate::clock::from_utc(t),
                        )
                    });
                    if judgement.expire {
                        expire = Some(Change::Expire {
                            resource_version: self.resource_version().unwrap_or_default(),
                        });
                    }
                    retained = Some(judgement.verdict);
                }
            }
            let mut requeue = match status
                .expires_at
                .as_ref()
                .and_then(|t| crate::clock::real_wait_until(t.0, now))
            {
                Some(wait) => Requeue::Exactly(wait),
                None if is_accepted => Requeue::Resync,
                None => Requeue::OnChange,
            };
            let mut verdicts = vec![accepted];
            verdicts.extend(retained);
            let mut copying = Vec::new();
            // A set that goes is not copied further: its copies go with it.
            if let (Some(steps), true, None) = (&observed.copy, is_accepted, &expire)
                && let Some(at) = status.copies.iter().position(|c| {
                    !matches!(c.phase, Some(CopyPhase::Completed | CopyPhase::Failed))
                })
            {
                let outcome = copy::next(steps, &mut status.copies[at], now);
                verdicts.extend(outcome.verdicts);
                copying = outcome.changes;
                if outcome.busy {
                    requeue = Requeue::After(observed.progress);
                }
            }
            if verdicts.len() > 1 {
                status = status_from(self, status, &verdicts, now);
            }
            let mut plan = Plan::after_validation(status, is_accepted);
            plan.requeue = requeue;
            plan.changes.extend(wake);
            plan.changes.extend(expire);
            plan.changes.extend(copying);
            if observed.leftover_hold {
                let clinic = self.spec.deployment_ref.name.clone();
                plan.changes.push(Change::ReleaseHold {
                    holder: set::quiesce_holder(&clinic, &self.name_any()),
                    clinic,
                });
            }
            return plan;
        }
        let (true, Some(steps)) = (is_accepted, &observed.steps) else {
            return Plan::after_validation(status, is_accepted);
        };
        if steps.include_documents && !observed.documents_image_known {
            let waiting = Verdict::falsy(
                plan::STARTED,
                "NoDocumentsImage",
                "no image for the documents Job: start the operator with --documents-image (its own image), or set the policy's documents.image",
            );
            return Plan {
                status: status_with(self, &[accepted, waiting], now),
                changes: Vec::new(),
                requeue: Requeue::Resync,
                failure: None,
            };
        }
        let outcome = plan::next(steps, &mut status, now);
        // A set just completed is judged by retention (and its copy started) at the next
        // look, not the next resync.
        let just_completed = status.phase == Some(BackupPhase::Completed);
        let mut verdicts = vec![accepted];
        verdicts.extend(outcome.verdicts);
        let merged = status_from(self, status, &verdicts, now);
        Plan {
            status: merged,
            changes: outcome.changes,
            requeue: if outcome.busy || just_completed {
                Requeue::After(observed.progress)
            } else {
                Requeue::Resync
            },
            failure: None,
        }
    }

    fn intent(change: &Change) -> (String, String) {
        match change {
            Change::CreateSnapshot { identifier, .. } => {
                ("CreateDBSnapshot".into(), identifier.clone())
            }
            Change::CreateJob { name, .. } => ("CreateDocumentsJob".into(), name.clone()),
            Change::WriteManifest { key, region, .. } => (
                "WriteSetManifest".into(),
                match region {
                    Some(region) => format!("{region}/{key}"),
                    None => key.clone(),
                },
            ),
            Change::CopySnapshot { identifier, .. } => {
                ("CopyDBSnapshot".into(), identifier.clone())
            }
            Change::PlaceHold { holder, .. } => ("PlaceHold".into(), holder.clone()),
            Change::RenewHold { holder, .. } => ("RenewHold".into(), holder.clone()),
            Change::ReleaseHold { holder, .. } => ("ReleaseHold".into(), holder.clone()),
            Change::StopJob { name } => ("StopDocumentsJob".into(), name.clone()),
            Change::Expire { resource_version } => ("Expire".into(), resource_version.clone()),
            Change::Wake { sets } => ("Wake".into(), sets.join(",")),
        }
    }

    /// Holds are placed, renewed and released, a Job stopped and a set expired by name,
    /// leaving nothing to recognise: repeating one is harmless. Waking touches nothing.
    fn recorded(change: &Change) -> bool {
        !matches!(
            change,
            Change::PlaceHold { .. }
                | Change::RenewHold { .. }
                | Change::ReleaseHold { .. }
                | Change::StopJob { .. }
                | Change::Expire { .. }
                | Change::Wake { .. }
        )
    }

    async fn act(&self, change: &Change, ctx: &Context) -> Result<(), Error> {
        let ns = self.namespace().unwrap_or_default();
        if let Change::Wake { sets } = change {
            for set in sets {
                ctx.hub
                    .publish(super::triggers::Target::new(RefKind::Retention, &ns, set));
            }
            return Ok(());
        }
        let (Some(aws), Some(found)) = (
            &ctx.aws,
            lookup(&ctx.caches.deployments, &ns, &self.spec.deployment_ref.name),
        ) else {
            return Ok(());
        };
        let Ok(d) = &found.0 else { return Ok(()) };
        let clients = clinic::clients(d, aws).await;
        match change {
            Change::CreateSnapshot {
                instance,
                identifier,
                tags,
            } => match clients.create_snapshot(instance, identifier, tags).await {
                // An earlier run's request went through: the snapshot is this set's.
                Err(e) if e.code == "DBSnapshotAlreadyExists" => Ok(()),
                other => other.map_err(aws_error("asking RDS for the set's snapshot")),
            },
            Change::CreateJob {
                name,
                body,
                network_policy,
            } => {
                create_new::<NetworkPolicy>(ctx, &ns, name, network_policy).await?;
                create_new::<Job>(ctx, &ns, name, body).await
            }
            Change::WriteManifest {
                region,
                bucket,
                key,
                kms_key,
                body,
            } => {
                let s3 = match region {
                    Some(region) => clinic::clients_in(d, aws, region).await.s3.clone(),
                    None => clients.s3.clone(),
                };
                write_set_manifest(&s3, bucket, key, kms_key.as_deref(), body).await
            }
            Change::CopySnapshot {
                region,
                source_arn,
                identifier,
                kms_key,
                tags,
            } => {
                let there = clinic::clients_in(d, aws, region).await;
                match there
                    .copy_snapshot(source_arn, identifier, kms_key, tags)
                    .await
                {
                    // An earlier run's request went through: the copy is this set's.
                    Err(e) if e.code == "DBSnapshotAlreadyExists" => Ok(()),
                    other => {
                        other.map_err(aws_error("copying the set's snapshot to another region"))
                    }
                }
            }
            Change::PlaceHold {
                clinic,
                holder,
                lifetime,
            } => {
                let reason = format!("quiesced backup set {}", self.name_any());
                let owner = kube::Resource::controller_owner_ref(self, &());
                holds::place(
                    &ctx.client,
                    &ns,
                    clinic,
                    holder,
                    &reason,
                    Some(*lifetime),
                    owner.as_ref(),
                )
                .await
                .map_err(hold_error("placing", clinic))
            }
            Change::RenewHold { clinic, holder } => holds::renew(&ctx.client, &ns, clinic, holder)
                .await
                .map_err(hold_error("renewing", clinic)),
            Change::ReleaseHold { clinic, holder } => {
                holds::release(&ctx.client, &ns, clinic, holder)
                    .await
                    .map_err(hold_error("releasing", clinic))
            }
            Change::StopJob { name } => stop_job(ctx, &ns, name).await,
            Change::Expire { resource_version } => self.expire(ctx, resource_version).await,
            // Made above, with or without AWS.
            Change::Wake { .. } => Ok(()),
        }
    }
}

/// The set manifest at `from` (`s3://bucket/key`), which must be set `set`'s, in the
/// clinic's own bucket (`own`) at the set's own key: a record cannot make itself a view of
/// another clinic's set, whose snapshot its deletion would then delete.
async fn read_rebuilt(
    s3: &aws_sdk_s3::Client,
    from: &str,
    own: Option<&str>,
    set: &str,
) -> Result<set::SetManifest, String> {
    let (bucket, key) = from
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .ok_or_else(|| {
            format!(
                "{}: {from:?} is no s3://bucket/key",
                crate::api::backup::REBUILT_FROM_ANNOTATION
            )
        })?;
    if Some(bucket) != own || key != set::set_manifest_key(set) {
        return Err(format!(
            "{}: {from:?} is not s3://{}/{}, this set's manifest in its clinic's bucket",
            crate::api::backup::REBUILT_FROM_ANNOTATION,
            own.unwrap_or("<the clinic's bucket>"),
            set::set_manifest_key(set)
        ));
    }
    let manifest = get_set_manifest(s3, bucket, key).await?;
    if manifest.set != set {
        return Err(format!(
            "{from} describes set {:?}, not {set:?}",
            manifest.set
        ));
    }
    Ok(manifest)
}

/// A Job of the set's, as the cache and its pods show it.
pub(crate) async fn job_seen(
    ctx: &Context,
    ns: &str,
    name: &str,
    set_uid: &str,
) -> Result<JobSeen, Error> {
    Ok(match cached(&ctx.children.jobs, ns, name) {
        None => JobSeen::Absent,
        Some(job) if !job.owner_references().iter().any(|o| o.uid == set_uid) => JobSeen::Foreign,
        Some(job) => match job_state(&job) {
            JobState::Running => JobSeen::Running,
            JobState::Complete => JobSeen::Succeeded(last_words(ctx, ns, name).await?),
            JobState::Failed { reason, .. } => {
                let words = last_words(ctx, ns, name).await?;
                JobSeen::Failed(redact(&format!("{reason}; its last words: {words}"), &[]))
            }
        },
    })
}

/// The set manifest at `key` in `bucket`.
pub(crate) async fn get_set_manifest(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<set::SetManifest, String> {
    let from = format!("s3://{bucket}/{key}");
    let object = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| crate::aws::error::AwsError::from_sdk("s3", "GetObject", e).to_string())?;
    let bytes = object
        .body
        .collect()
        .await
        .map_err(|e| format!("reading {from}: {e}"))?
        .into_bytes();
    set::SetManifest::from_bytes(&bytes).map_err(|e| format!("{from}: {e}"))
}

/// A completed set's status, as its manifest describes it.
fn rebuilt_status(status: &mut OpenEMRBackupStatus, m: &set::SetManifest, from: &str) {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let time = |t: &str| t.parse::<Timestamp>().ok().map(Time);
    status.phase = Some(BackupPhase::Completed);
    status.set_id = Some(m.set.clone());
    status.consistency = Some(if m.consistency == "Quiesced" {
        ConsistencyMode::Quiesced
    } else {
        ConsistencyMode::CrashConsistent
    });
    status.include_documents = Some(m.documents.is_some());
    status.start_time = time(&m.database.requested_at);
    status.snapshot_requested_time = time(&m.database.requested_at);
    status.completion_time = time(&m.completed_at);
    status.image = m.image.clone();
    status.database = Some(crate::api::backup::SnapshotRef {
        identifier: m.database.snapshot_identifier.clone(),
        arn: m.database.snapshot_arn.clone(),
        status: Some("available".into()),
        allocated_storage_gi_b: None,
        engine_version: m.database.engine_version.clone(),
    });
    if let Some(d) = &m.documents {
        status.documents_start_time = time(&d.started_at);
        status.documents_completion_time = time(&d.completed_at);
        status.documents = Some(crate::api::backup::DocumentsLocation {
            bucket: d.bucket.clone(),
            manifest: d.manifest.clone(),
            file_count: i64::try_from(d.files).ok(),
            size_bytes: i64::try_from(d.bytes).ok(),
            files_uploaded: None,
            bytes_uploaded: None,
        });
    }
    status.quiesce = m
        .quiesce
        .as_ref()
        .map(|q| crate::api::backup::QuiesceRecord {
            lease: String::new(),
            held_time: time(&q.held_at),
            effective_time: time(&q.effective_at),
            released_time: time(&q.released_at),
            down_seconds: time(&q.released_at)
                .zip(time(&q.held_at))
                .map(|(r, h)| r.0.duration_since(h.0).as_secs()),
        });
    status.manifest = Some(from.to_string());
}

/// A set's Jobs and hold are read from the caches of the clinics' children: before they
/// have listed, "absent" would be a guess (and a hold taken for lost).
pub(crate) fn children_listed(ctx: &Context) -> Result<(), Error> {
    if ctx
        .children
        .synced
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return Ok(());
    }
    Err(Error::Waiting {
        what: "the watches of the clinics' children to list".into(),
        after: std::time::Duration::from_secs(1),
    })
}

/// Deletes the set's Job `name` and its pods (gone already: done).
async fn stop_job(ctx: &Context, ns: &str, name: &str) -> Result<(), Error> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    match jobs.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::Act {
            action: format!("stopping Job {ns}/{name}"),
            reason: "DeleteFailed",
            message: e.to_string(),
        }),
    }
}

/// A failed write of the set's hold on `clinic`.
fn hold_error(doing: &'static str, clinic: &str) -> impl FnOnce(kube::Error) -> Error {
    let action = format!("{doing} the set's hold on clinic {clinic}");
    move |e| Error::Act {
        action,
        reason: "HoldFailed",
        message: e.to_string(),
    }
}

/// Creates `body` unless an object of that name is there already (made by an earlier run).
pub(crate) async fn create_new<K>(
    ctx: &Context,
    ns: &str,
    name: &str,
    body: &serde_json::Value,
) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
{
    let kind = K::kind(&());
    let object: K = serde_json::from_value(body.clone()).map_err(|e| Error::Act {
        action: format!("rendering {kind} {name}"),
        reason: "InvalidObject",
        message: e.to_string(),
    })?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(Error::Act {
            action: format!("creating {kind} {ns}/{name}"),
            reason: "CreateFailed",
            message: e.to_string(),
        }),
    }
}

/// What a set needs of its clinic, read from the clinic's spec and status.
fn clinic_seen(d: &OpenEMRDeployment, aws: &super::ClinicAws, ns: &str) -> ClinicSeen {
    let status = d.status.clone().unwrap_or_default();
    let ready = crate::conditions::find(&status.conditions, super::READY);
    ClinicSeen {
        cluster: aws.cluster.as_str().to_string(),
        name: d.name_any(),
        uid: d.uid().unwrap_or_default(),
        ready: ready.is_some_and(|c| c.status == "True"),
        not_ready: ready.map_or_else(
            || "not yet reported".to_string(),
            |c| format!("{}: {}", c.reason, c.message),
        ),
        region: d.spec.aws.region.clone(),
        instance: status.database.as_ref().map(|db| db.identifier.clone()),
        engine_version: Some(d.spec.database.engine_version.clone()),
        bucket: status.bucket_name.clone(),
        kms_key: status.kms_key_arn.clone(),
        image: status
            .web
            .as_ref()
            .and_then(|w| w.image.clone())
            .or_else(|| Some(d.spec.web.image.clone())),
        claim: WebNames::new(ns, &d.name_any()).claim,
        tags: clinic::clinic_tags(d, aws),
        spec: serde_json::to_value(&d.spec).unwrap_or_default(),
    }
}

/// Whether `key` is in the bucket (its latest version, not a delete marker).
async fn object_exists(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<bool, crate::aws::error::AwsError> {
    match s3.head_object().bucket(bucket).key(key).send().await {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
        Err(e) => Err(crate::aws::error::AwsError::from_sdk("s3", "HeadObject", e)),
    }
}

/// Writes the set manifest, never over another (`If-None-Match: *`), encrypted with the
/// clinic's key. One already there is this set's when it names this set and clinic: an
/// earlier run wrote it and stopped before seeing it.
async fn write_set_manifest(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    kms_key: Option<&str>,
    body: &[u8],
) -> Result<(), Error> {
    use aws_sdk_s3::types::ServerSideEncryption;
    let mut put = s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .if_none_match("*")
        .content_type("application/json")
        .body(body.to_vec().into());
    if let Some(kms_key) = kms_key {
        put = put
            .server_side_encryption(ServerSideEncryption::AwsKms)
            .ssekms_key_id(kms_key)
            .bucket_key_enabled(true);
    }
    let refused = match put.send().await {
        Ok(_) => return Ok(()),
        Err(e) => crate::aws::error::AwsError::from_sdk("s3", "PutObject", e),
    };
    if refused.code != "PreconditionFailed" {
        return Err(Error::Aws {
            action: "writing the set manifest",
            source: refused,
        });
    }
    let ours = set::SetManifest::from_bytes(body).map_err(|message| Error::Act {
        action: format!("writing {key}"),
        reason: "InvalidManifest",
        message,
    })?;
    let there = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| Error::Aws {
            action: "reading the set manifest already there",
            source: crate::aws::error::AwsError::from_sdk("s3", "GetObject", e),
        })?;
    let bytes = there
        .body
        .collect()
        .await
        .map(|b| b.into_bytes())
        .map_err(|e| Error::Act {
            action: format!("reading s3://{bucket}/{key}, already there"),
            reason: "ReadFailed",
            message: e.to_string(),
        })?;
    match set::SetManifest::from_bytes(&bytes) {
        Ok(found) if found.set == ours.set && found.clinic.uid == ours.clinic.uid => Ok(()),
        Ok(found) => Err(Error::Act {
            action: format!("writing {key}"),
            reason: "SetNameTaken",
            message: format!(
                "s3://{bucket}/{key} already holds set {:?} of clinic {}/{} (uid {}): name this set otherwise",
                found.set, found.clinic.namespace, found.clinic.name, found.clinic.uid
            ),
        }),
        Err(why) => Err(Error::Act {
            action: format!("writing {key}"),
            reason: "SetNameTaken",
            message: format!("s3://{bucket}/{key} already holds something else: {why}"),
        }),
    }
}

/// When `set` was made, on the operator's clock.
fn created_at(set: &OpenEMRBackup) -> chrono::DateTime<chrono::Utc> {
    crate::clock::to_utc(
        set.creation_timestamp()
            .map_or_else(crate::clock::now, |t| crate::clock::seen_at(t.0)),
    )
}

impl OpenEMRBackup {
    /// The set manifest this record was rebuilt from, if it was.
    pub fn rebuilt_from(&self) -> Option<String> {
        self.annotations()
            .get(crate::api::backup::REBUILT_FROM_ANNOTATION)
            .cloned()
    }

    /// The policy's completed sets, as retention judges them; `None` when the policy's
    /// zone cannot be read (the policy is refused for it).
    fn retention_seen(
        &self,
        ctx: &Context,
        ns: &str,
        policy: &BackupPolicy,
    ) -> Option<RetentionSeen> {
        let zone: chrono_tz::Tz = policy.spec.time_zone.parse().ok()?;
        let policy_name = policy.name_any();
        let restores = ctx.caches.restores.state();
        let in_use = |set: &str| {
            restores
                .iter()
                .filter_map(|r| r.0.as_ref().ok())
                .any(|r| r.metadata.namespace.as_deref() == Some(ns) && r.uses_set(set))
        };
        let me = self.name_any();
        let (mut candidates, mut others) = (Vec::new(), Vec::new());
        for found in ctx.caches.sets_naming(RefKind::Policy, ns, &policy_name) {
            let Ok(b) = &found.0 else { continue };
            if b.metadata.deletion_timestamp.is_some()
                || b.spec.deployment_ref != self.spec.deployment_ref
            {
                continue;
            }
            let Some(status) = b.status.as_ref() else {
                continue;
            };
            let name = b.name_any();
            let phase = status.phase.unwrap_or_default();
            if phase == BackupPhase::Completed
                && let Some(done) = &status.completion_time
            {
                candidates.push(retention::Candidate {
                    completed: crate::clock::to_utc(done.0),
                    held: b
                        .labels()
                        .get(crate::api::backup::HOLD_LABEL)
                        .is_some_and(|v| v == "true"),
                    in_use: in_use(&name),
                    name: name.clone(),
                });
            }
            if name != me && matches!(phase, BackupPhase::Completed | BackupPhase::Failed) {
                others.push(retention::Recorded {
                    created: created_at(b),
                    failed: phase == BackupPhase::Failed,
                    verdict: crate::conditions::find(&status.conditions, RETAINED).map(|c| {
                        retention::RecordedVerdict {
                            status: c.status == "True",
                            reason: c.reason.clone(),
                            message: c.message.clone(),
                        }
                    }),
                    expires_at: status
                        .expires_at
                        .as_ref()
                        .map(|t| crate::clock::to_utc(t.0)),
                    name,
                });
            }
        }
        Some(RetentionSeen {
            candidates,
            others,
            rules: policy.spec.retention.clone(),
            zone,
            created: created_at(self),
        })
    }

    /// Retention let the set go: its record is deleted asking for its data to go too
    /// ([`prune`]), unless it changed since it was judged (a hold label added meanwhile).
    async fn expire(&self, ctx: &Context, judged_at: &str) -> Result<(), Error> {
        let ns = self.namespace().unwrap_or_default();
        let name = self.name_any();
        let api: Api<OpenEMRBackup> = Api::namespaced(ctx.client.clone(), &ns);
        let failed = |doing: &str, e: kube::Error| Error::Act {
            action: format!("{doing} expired set {ns}/{name}"),
            reason: "ExpireFailed",
            message: e.to_string(),
        };
        let ask = serde_json::json!({"metadata": {
            "resourceVersion": judged_at,
            "annotations": {prune::DELETE_DATA_ANNOTATION: "true"},
        }});
        let asked = match api
            .patch(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&ask),
            )
            .await
        {
            Ok(asked) => asked,
            // Changed since judged: the next look judges it again.
            Err(kube::Error::Api(e)) if e.code == 409 => return Err(Error::StaleCache),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(failed("marking", e)),
        };
        let delete = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                resource_version: asked.resource_version(),
                uid: asked.uid(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &delete).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => return Err(Error::StaleCache),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(failed("deleting", e)),
        }
        let event = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Normal,
            reason: "Expired".into(),
            note: Some(format!(
                "retention no longer keeps set {name}: its record is deleted, and its snapshot, documents and manifest with it"
            )),
            action: "Retention".into(),
            secondary: None,
        };
        ctx.publish::<OpenEMRBackup>(&event, &kube::Resource::object_ref(self, &()))
            .await;
        Ok(())
    }

    /// What copy `at` of this completed set is planned from: both regions' shared
    /// snapshot listings, the copies in flight to its region, its Job, and (once both parts
    /// are there) the set's manifest and whether the copy's is written.
    async fn copy_steps(
        &self,
        ctx: &Context,
        (aws, d): (&super::ClinicAws, &OpenEMRDeployment),
        ns: &str,
        at: usize,
        documents_image: Option<String>,
    ) -> Result<copy::CopySteps, Error> {
        let status = self.status.clone().unwrap_or_default();
        let target = &status.copies[at];
        let here = clinic::clients(d, aws).await;
        let there = clinic::clients_in(d, aws, &target.region).await;
        let set_name = self.name_any();
        let identifier = status
            .database
            .as_ref()
            .map(|d| d.identifier.clone())
            .unwrap_or_else(|| set::snapshot_identifier(&d.uid().unwrap_or_default(), &set_name));
        let identifier = &identifier;
        let listed = |clients: std::sync::Arc<crate::aws::AwsClients>| async move {
            let listing = aws
                .snapshots
                .listing(&clients, aws.progress_interval)
                .await
                .map_err(aws_error("listing a region's manual snapshots"))?;
            Ok::<_, Error>(match listing {
                Some(listing) => (
                    listing.manual.get(identifier).cloned(),
                    Some(listing.manual.len()),
                ),
                None => (
                    clients
                        .describe_snapshot(identifier)
                        .await
                        .map_err(aws_error("reading a set's snapshot"))?,
                    None,
                ),
            })
        };
        let (source_snapshot, _) = listed(here.clone()).await?;
        let (snapshot, manual_snapshots) = listed(there.clone()).await?;
        let requested = target.database.as_ref().is_some_and(|d| d.status.is_some());
        let key = format!("{ns}/{set_name}");
        let (mut admitted, mut in_flight) = (true, 0);
        // A copy waiting for room under the quota there takes no turn meanwhile.
        let room = manual_snapshots
            .is_none_or(|count| count < aws.workload.manual_snapshot_quota as usize);
        if !requested && room {
            let mut busy = std::collections::BTreeSet::new();
            let mut present = std::collections::BTreeSet::new();
            for other in ctx.caches.backups.state() {
                let Ok(other) = &other.0 else { continue };
                let other_key = format!(
                    "{}/{}",
                    other.namespace().unwrap_or_default(),
                    other.name_any()
                );
                let copies = other.status.as_ref().map(|s| s.copies.as_slice());
                if copies
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.region == target.region && copy::in_flight(c))
                {
                    busy.insert(other_key.clone());
                }
                present.insert(other_key);
            }
            (admitted, in_flight) = copy::admit(&target.region, &key, &busy, &present);
        }
        let uid = self.uid().unwrap_or_default();
        let source_documents = status.documents.as_ref().map(|d| d.manifest.clone());
        let job = if source_documents.is_some() && target.documents.is_none() {
            job_seen(ctx, ns, &set::copy_job_name(&set_name), &uid).await?
        } else {
            JobSeen::Absent
        };
        let parts_done = snapshot.as_ref().is_some_and(|s| s.status == "available")
            && (source_documents.is_none() || target.documents.is_some());
        let manifest_key = set::set_manifest_key(&set_name);
        let manifest_written = parts_done
            && object_exists(&there.s3, &target.bucket, &manifest_key)
                .await
                .map_err(aws_error("reading the copy's manifest"))?;
        let source_manifest = match (&status.documents, d.status.as_ref()) {
            _ if !parts_done || manifest_written => None,
            (_, Some(clinic)) if clinic.bucket_name.is_some() => Some(
                get_set_manifest(
                    &here.s3,
                    clinic.bucket_name.as_deref().unwrap_or_default(),
                    &manifest_key,
                )
                .await,
            ),
            _ => Some(Err("the clinic's bucket is not known".to_string())),
        };
        Ok(copy::CopySteps {
            set: set_name.clone(),
            set_uid: uid,
            namespace: ns.to_string(),
            clinic: d.name_any(),
            source_region: d.spec.aws.region.clone(),
            source_bucket: status
                .documents
                .as_ref()
                .map(|d| d.bucket.clone())
                .unwrap_or_default(),
            source_snapshot,
            source_documents,
            snapshot,
            snapshot_in_flight: status
                .in_flight
                .as_ref()
                .is_some_and(|i| i.action == "CopyDBSnapshot"),
            manual_snapshots,
            snapshot_quota: aws.workload.manual_snapshot_quota,
            admitted,
            in_flight,
            job,
            previous_documents: self.previous_copy(ctx, ns, target),
            source_manifest,
            manifest_written,
            documents_image: documents_image.unwrap_or_default(),
            service_account: aws.workload.documents_service_account.clone(),
            job_backoff_limit: aws.workload.documents_backoff_limit,
            job_deadline_seconds: aws.workload.documents_deadline.as_secs() as i64,
        })
    }

    /// The documents manifest of the newest completed copy of another set of this clinic
    /// into the same bucket: what it holds is not copied again.
    fn previous_copy(
        &self,
        ctx: &Context,
        ns: &str,
        target: &crate::api::backup::RegionCopy,
    ) -> Option<String> {
        let mut newest: Option<(Timestamp, String)> = None;
        let clinic = &self.spec.deployment_ref.name;
        for other in ctx.caches.sets_naming(RefKind::Deployment, ns, clinic) {
            let Ok(other) = &other.0 else { continue };
            if other.metadata.name == self.metadata.name {
                continue;
            }
            for c in other.status.iter().flat_map(|s| &s.copies) {
                if let (Some(CopyPhase::Completed), Some(done), Some(documents)) =
                    (c.phase, &c.completion_time, &c.documents)
                    && c.region == target.region
                    && c.bucket == target.bucket
                    && newest.as_ref().is_none_or(|(t, _)| done.0 > *t)
                {
                    newest = Some((done.0, documents.manifest.clone()));
                }
            }
        }
        newest.map(|(_, manifest)| manifest)
    }

    fn phase(&self) -> BackupPhase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or_default()
    }

    /// The older sets of the same clinic that run or will run first, and the newest
    /// completed set's documents manifest.
    fn siblings(&self, ctx: &Context, ns: &str) -> (Vec<String>, Option<String>) {
        let clinic = &self.spec.deployment_ref.name;
        let me = (self.creation_timestamp().map(|t| t.0), self.name_any());
        let mut running = Vec::new();
        let mut newest: Option<(Timestamp, String)> = None;
        for other in ctx.caches.sets_naming(RefKind::Deployment, ns, clinic) {
            let Ok(other) = &other.0 else { continue };
            if other.metadata.name.as_deref() == Some(me.1.as_str()) {
                continue;
            }
            let status = other.status.clone().unwrap_or_default();
            match status.phase.unwrap_or_default() {
                BackupPhase::Running => running.push(other.name_any()),
                BackupPhase::Pending => {
                    // An older set goes first, unless it was refused.
                    let refused = crate::conditions::find(&status.conditions, "Accepted")
                        .is_some_and(|c| c.status == "False");
                    if !refused && (other.creation_timestamp().map(|t| t.0), other.name_any()) < me
                    {
                        running.push(other.name_any());
                    }
                }
                BackupPhase::Completed => {
                    if let (Some(done), Some(documents)) =
                        (status.completion_time, status.documents)
                        && newest.as_ref().is_none_or(|(t, _)| done.0 > *t)
                    {
                        newest = Some((done.0, documents.manifest));
                    }
                }
                _ => {}
            }
        }
        running.sort();
        (running, newest.map(|(_, manifest)| manifest))
    }

    fn validate(&self, observed: &Observed) -> Verdict {
        let deployment = &self.spec.deployment_ref.name;
        if !observed.deployment_exists {
            return Verdict::falsy(
                "Accepted",
                "DeploymentNotFound",
                format!(
                    "spec.deploymentRef: OpenEMRDeployment {deployment:?} does not exist in this namespace"
                ),
            );
        }
        let policy = self
            .spec
            .policy_ref
            .as_ref()
            .map(|r| r.name.as_str())
            .unwrap_or_default();
        match &observed.policy {
            PolicyRef::Missing => Verdict::falsy(
                "Accepted",
                "PolicyNotFound",
                format!("spec.policyRef: BackupPolicy {policy:?} does not exist in this namespace"),
            ),
            PolicyRef::Unreadable => Verdict::falsy(
                "Accepted",
                "PolicyInvalid",
                format!(
                    "spec.policyRef: BackupPolicy {policy:?} cannot be read as this operator's API; see its Events"
                ),
            ),
            PolicyRef::Covers(other) if other != deployment => Verdict::falsy(
                "Accepted",
                "PolicyMismatch",
                format!(
                    "spec.policyRef: BackupPolicy {policy:?} covers OpenEMRDeployment {other:?}, not spec.deploymentRef {deployment:?}"
                ),
            ),
            _ if set::RESERVED_NAMES.contains(&self.name_any().as_str()) => Verdict::falsy(
                "Accepted",
                "ReservedName",
                format!(
                    "metadata.name: {:?} is kept for the bucket's layout (backups/documents/ holds every set's documents manifest): name the set otherwise",
                    self.name_any()
                ),
            ),
            _ => Verdict::truthy("Accepted", "Valid", "spec is valid"),
        }
    }
}

/// An in-place restore of clinic `clinic` at its `Quiesce` step, by name (the first, if
/// several are: only one runs per clinic).
fn restore_quiescing(ctx: &Context, ns: &str, clinic: &str) -> Option<String> {
    let mut names: Vec<String> = ctx
        .caches
        .restores
        .state()
        .iter()
        .filter_map(|r| r.0.as_ref().ok())
        .filter(|r| r.namespace().as_deref() == Some(ns))
        .filter(|r| {
            r.spec
                .target
                .in_place
                .as_ref()
                .is_some_and(|t| t.deployment_name == clinic)
        })
        .filter(|r| {
            r.status
                .as_ref()
                .is_some_and(crate::controller::restore::steps::at_quiesce)
        })
        .map(|r| r.name_any())
        .collect();
    names.sort();
    names.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Condition;
    use crate::conditions;

    fn set(policy: Option<&str>) -> OpenEMRBackup {
        let mut spec = serde_json::json!({"deploymentRef": {"name": "clinic-a"}});
        if let Some(p) = policy {
            spec["policyRef"] = serde_json::json!({ "name": p });
        }
        OpenEMRBackup::new("set-1", serde_json::from_value(spec).unwrap())
    }

    fn observed(deployment_exists: bool, policy: PolicyRef) -> Observed {
        Observed {
            deployment_exists,
            policy,
            steps: None,
            documents_image_known: true,
            consistency: ConsistencyMode::CrashConsistent,
            progress: std::time::Duration::from_secs(30),
            leftover_hold: false,
            retention: None,
            rebuilt: None,
            copy: None,
        }
    }

    fn accepted(b: &OpenEMRBackup, observed: Observed) -> Condition {
        let plan = b.plan(&observed, Timestamp::from_second(1_800_000_000).unwrap());
        assert_eq!(plan.status.phase, Some(BackupPhase::Pending));
        conditions::find(&plan.status.conditions, "Accepted")
            .unwrap()
            .clone()
    }

    #[test]
    fn on_demand_set_is_accepted() {
        let c = accepted(&set(None), observed(true, PolicyRef::NotSet));
        assert_eq!(c.status, "True");
    }

    #[test]
    fn policy_of_another_clinic_is_refused() {
        let c = accepted(
            &set(Some("nightly")),
            observed(true, PolicyRef::Covers("clinic-b".into())),
        );
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "PolicyMismatch")
        );
        assert!(c.message.contains("spec.policyRef"));
    }

    #[test]
    fn a_set_names_its_clinic_its_clinics_children_and_its_policy() {
        assert_eq!(
            set(Some("nightly")).references(),
            [
                (RefKind::Deployment, "clinic-a".to_string()),
                // Its documents Job is one of the clinic's children: its end wakes the set.
                (RefKind::Workload, "clinic-a".to_string()),
                // Itself: another set that finds its retention verdict out of date wakes it.
                (RefKind::Retention, "set-1".to_string()),
                (RefKind::Policy, "nightly".to_string())
            ]
        );
        assert_eq!(set(None).references().len(), 3);
    }

    #[test]
    fn a_reserved_name_is_refused_naming_why() {
        let mut reserved = set(None);
        reserved.metadata.name = Some("documents".into());
        let c = accepted(&reserved, observed(true, PolicyRef::NotSet));
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ReservedName")
        );
        assert!(c.message.contains("metadata.name"), "{}", c.message);
        let mut quiesced = observed(true, PolicyRef::NotSet);
        quiesced.consistency = ConsistencyMode::Quiesced;
        assert_eq!(accepted(&set(None), quiesced).status, "True");
    }

    #[test]
    fn a_finished_quiesced_set_releases_a_hold_left_behind() {
        let mut done = set(None);
        done.status = Some(OpenEMRBackupStatus {
            phase: Some(BackupPhase::Completed),
            ..Default::default()
        });
        let mut seen = observed(true, PolicyRef::NotSet);
        seen.leftover_hold = true;
        let plan = done.plan(&seen, Timestamp::from_second(1_800_000_000).unwrap());
        assert_eq!(
            plan.changes,
            [Change::ReleaseHold {
                clinic: "clinic-a".into(),
                holder: "backup-set-1".into()
            }]
        );
        seen.leftover_hold = false;
        assert!(
            done.plan(&seen, Timestamp::from_second(1_800_000_000).unwrap())
                .changes
                .is_empty()
        );
    }

    #[test]
    fn a_completed_set_is_kept_until_its_rules_release_it_then_expired() {
        use chrono::TimeZone;
        let candidate = |name: &str, day: u32| retention::Candidate {
            name: name.into(),
            completed: chrono::Utc
                .with_ymd_and_hms(2027, 1, day, 12, 30, 0)
                .unwrap(),
            held: false,
            in_use: false,
        };
        let mut old = set(Some("daily"));
        old.metadata.name = Some("daily-20270104-1200".into());
        old.metadata.resource_version = Some("42".into());
        old.status = Some(OpenEMRBackupStatus {
            phase: Some(BackupPhase::Completed),
            ..Default::default()
        });
        let mut seen = observed(true, PolicyRef::Covers("clinic-a".into()));
        seen.retention = Some(RetentionSeen {
            candidates: vec![
                candidate("daily-20270104-1200", 4),
                candidate("daily-20270105-1200", 5),
                candidate("daily-20270106-1200", 6),
            ],
            others: Vec::new(),
            rules: serde_json::from_value(serde_json::json!({
                "keepDaily": 2, "keepWeekly": 0, "keepMonthly": 0
            }))
            .unwrap(),
            zone: chrono_tz::UTC,
            created: chrono::Utc.with_ymd_and_hms(2027, 1, 4, 12, 0, 0).unwrap(),
        });
        // At 13:00 on the 5th, it is the newest of yesterday: kept until the 6th begins.
        let on_5th = Timestamp::from_second(1_799_193_600 - 11 * 3600).unwrap();
        let mut day5 = seen.clone();
        day5.retention.as_mut().unwrap().candidates.pop();
        let plan = old.plan(&day5, on_5th);
        assert!(plan.changes.is_empty(), "{:?}", plan.changes);
        assert_eq!(
            plan.status.expires_at.as_ref().unwrap().0.to_string(),
            "2027-01-06T00:00:00Z"
        );
        let retained = conditions::find(&plan.status.conditions, RETAINED).unwrap();
        assert_eq!(
            (retained.status.as_str(), retained.reason.as_str()),
            ("True", "Kept")
        );
        assert!(retained.message.contains("daily"), "{}", retained.message);
        assert_eq!(
            plan.requeue,
            Requeue::Exactly(std::time::Duration::from_secs(11 * 3600))
        );
        // On the 6th, two newer days' sets keep it no more: its record goes with its data,
        // if it is still as judged.
        let on_6th = Timestamp::from_second(1_799_193_600 + 13 * 3600).unwrap();
        let plan = old.plan(&seen, on_6th);
        assert_eq!(
            plan.changes,
            [Change::Expire {
                resource_version: "42".into()
            }]
        );
        let retained = conditions::find(&plan.status.conditions, RETAINED).unwrap();
        assert_eq!(retained.reason, "Expired");
        // Held, it stays whatever the rules say.
        seen.retention.as_mut().unwrap().candidates[0].held = true;
        let plan = old.plan(&seen, on_6th);
        assert!(plan.changes.is_empty());
        assert_eq!(plan.status.expires_at, None);

        // A failed set stays for inspection until a later set of its policy completes.
        let mut failed = old.clone();
        failed.status.as_mut().unwrap().phase = Some(BackupPhase::Failed);
        let made_at = |hour: u32| {
            let mut seen = seen.clone();
            seen.retention.as_mut().unwrap().created = chrono::Utc
                .with_ymd_and_hms(2027, 1, 6, hour, 0, 0)
                .unwrap();
            seen
        };
        // Made before the 6th's set completed (12:30): it goes.
        assert_eq!(failed.plan(&made_at(0), on_6th).changes.len(), 1);
        // Made after: it stays.
        let plan = failed.plan(&made_at(13), on_6th);
        assert!(plan.changes.is_empty(), "{:?}", plan.changes);
        assert_eq!(plan.status.expires_at, None);
    }

    /// A completed set judging itself wakes only the sets of its policy whose recorded
    /// verdict is not what retention now says: here the set it superseded as the newest.
    #[test]
    fn a_completed_set_wakes_only_the_sets_whose_verdict_it_changed() {
        use chrono::TimeZone;
        let day = |d: u32| chrono::Utc.with_ymd_and_hms(2027, 1, d, 12, 30, 0).unwrap();
        let candidate = |name: &str, d: u32| retention::Candidate {
            name: name.into(),
            completed: day(d),
            held: false,
            in_use: false,
        };
        let recorded =
            |name: &str, d: u32, message: &str, expires: Option<u32>| retention::Recorded {
                name: name.into(),
                created: day(d),
                failed: false,
                verdict: Some(retention::RecordedVerdict {
                    status: true,
                    reason: "Kept".into(),
                    message: message.into(),
                }),
                expires_at: expires
                    .map(|d| chrono::Utc.with_ymd_and_hms(2027, 1, d, 0, 0, 0).unwrap()),
            };
        let mut newest = set(Some("daily"));
        newest.metadata.name = Some("daily-6".into());
        newest.status = Some(OpenEMRBackupStatus {
            phase: Some(BackupPhase::Completed),
            ..Default::default()
        });
        let mut seen = observed(true, PolicyRef::Covers("clinic-a".into()));
        seen.retention = Some(RetentionSeen {
            candidates: vec![
                candidate("daily-4", 4),
                candidate("daily-5", 5),
                candidate("daily-6", 6),
            ],
            others: vec![
                // Still says what it was told when it was the newest.
                recorded("daily-5", 5, "kept (daily, newest) while it is so", None),
                // Up to date.
                recorded(
                    "daily-4",
                    4,
                    "kept (daily) until 2027-01-07T00:00:00Z",
                    Some(7),
                ),
                // A failed set made before the newest set completed: it goes now.
                retention::Recorded {
                    failed: true,
                    verdict: None,
                    expires_at: None,
                    ..recorded("daily-6-failed", 5, "", None)
                },
            ],
            rules: serde_json::from_value(serde_json::json!({
                "keepDaily": 3, "keepWeekly": 0, "keepMonthly": 0
            }))
            .unwrap(),
            zone: chrono_tz::UTC,
            created: day(6),
        });
        let on_6th = Timestamp::from_second(1_799_193_600 + 13 * 3600).unwrap();
        let plan = newest.plan(&seen, on_6th);
        let woken = plan.changes.iter().find_map(|c| match c {
            Change::Wake { sets } => Some(sets.clone()),
            _ => None,
        });
        assert_eq!(
            woken,
            Some(vec!["daily-5".to_string(), "daily-6-failed".to_string()])
        );
        // Once their status says what retention says, nobody is woken.
        let others = &mut seen.retention.as_mut().unwrap().others;
        others[0] = recorded(
            "daily-5",
            5,
            "kept (daily) until 2027-01-08T00:00:00Z",
            Some(8),
        );
        others[2].verdict = Some(retention::RecordedVerdict {
            status: false,
            reason: "Expired".into(),
            message: "a later set of its policy completed: a failed set is kept only until then"
                .into(),
        });
        let plan = newest.plan(&seen, on_6th);
        assert!(plan.changes.is_empty(), "{:?}", plan.changes);
        let retained = conditions::find(&plan.status.conditions, RETAINED).unwrap();
        assert_eq!(retained.message, "kept (daily, newest) while it is so");
    }

    #[test]
    fn a_set_whose_clinic_went_while_it_ran_fails_rather_than_run_for_ever() {
        let mut running = set(None);
        running.status = Some(OpenEMRBackupStatus {
            phase: Some(BackupPhase::Running),
            ..Default::default()
        });
        let plan = running.plan(
            &observed(false, PolicyRef::NotSet),
            Timestamp::from_second(1_800_000_000).unwrap(),
        );
        assert_eq!(plan.status.phase, Some(BackupPhase::Failed));
        let completed = conditions::find(&plan.status.conditions, "Completed").unwrap();
        assert_eq!(completed.reason, "DeploymentDeleted");
        assert!(plan.changes.is_empty());
    }

    #[tokio::test]
    async fn a_record_is_rebuilt_only_from_its_own_manifest_in_its_clinics_bucket() {
        // No request is sent: the location is judged first.
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .build(),
        );
        for from in [
            "s3://another-clinic/backups/set-1/manifest.json",
            "s3://own/backups/set-2/manifest.json",
            "s3://own/elsewhere.json",
            "own/backups/set-1/manifest.json",
        ] {
            let refused = read_rebuilt(&s3, from, Some("own"), "set-1")
                .await
                .unwrap_err();
            assert!(
                refused.contains("openemr.io/rebuilt-from"),
                "{from}: {refused}"
            );
        }
    }

    #[test]
    fn missing_deployment_is_refused_first() {
        let c = accepted(&set(Some("nightly")), observed(false, PolicyRef::Missing));
        assert_eq!(c.reason, "DeploymentNotFound");
    }
}
