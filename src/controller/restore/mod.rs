//! RestoreRequest controller.
//!
//! It checks, in the shared caches, what the API server cannot: that the named source
//! (set, policy, clinic) exists and [`source`] resolves it (completed, inside the
//! restorable window), that a point in time is not in the future (looking again when it has
//! passed), that an in-place target exists, and that a side-by-side target name is not
//! taken by a clinic this request did not make (`Accepted`). An accepted restore then runs
//! its [`steps`]: side by side into the clinic [`target`] makes, or in place into a new
//! instance beside the clinic, which is switched to it; [`kept`] owns what an in-place
//! restore keeps afterwards (rollback, the end of `keepPreviousFor`).
//!
//! Requests carry the finalizer [`FINALIZER`]: an in-place request deleted after it
//! stopped its clinic fails (`Deleted`) and puts the clinic back as it was (the rollback)
//! before it goes; one deleted before leaves the clinic untouched.

pub mod kept;
pub mod lineage;
pub mod source;
pub mod steps;
pub mod target;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Resource, ResourceExt};

use super::children::cached;
use super::deployment::clinic::{self, ClinicNames, aws_error};
use super::deployment::infra::database::Placement;
use super::deployment::secrets::{PASSWORD_KEY, USERNAME_KEY, get_secret, secret_value};
use super::deployment::web::holds;
use super::{
    ClinicAws, Context, Error, Plan, Reconcile, RefKind, Requeue, lookup, status_from, status_with,
};
use crate::api::restore::RestorePhase;
use crate::api::{LocalRef, OpenEMRDeployment, RestoreRequest, RestoreRequestStatus};
use crate::aws::rds::Databases;
use crate::aws::secrets::{ManagedSecrets, SecretValue};
use crate::conditions::Verdict;
use steps::Change;

/// The condition saying whether the restore's steps have started, and if not why.
pub const STARTED: &str = "Started";
/// The condition saying whether the restore succeeded (verified), failed, or is under way.
pub const SUCCEEDED: &str = "Succeeded";

/// Whether each object the request names was found.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The source object (set, policy or clinic), when the source names one.
    pub source_exists: Option<bool>,
    /// The in-place target clinic, when the target is in place.
    pub in_place_target_exists: Option<bool>,
    /// For a side-by-side target: a clinic of that name exists and this request did not
    /// make it.
    pub side_by_side_name_taken: bool,
    /// What the source resolves to now, or why it cannot be restored.
    pub resolved: Option<Result<source::Resolved, source::Refusal>>,
    /// Why the target cannot run the source's data (its MySQL or OpenEMR older, or a
    /// snapshot and documents of two clinics), judged before the restore starts.
    pub incompatible: Option<source::Refusal>,
    /// A `snapshot` source's halves as found to be one clinic's, or why not checked.
    pub source_check: Option<String>,
    /// A succeeded side-by-side request with `keepTargetFor`: its target as the cache
    /// shows it.
    pub kept_target: Option<KeptTarget>,
    /// The steps' view, when the operator reaches AWS and the restore runs.
    pub steps: Option<steps::Seen>,
    /// Another active RestoreRequest into the same clinic, ahead of this one.
    pub waiting_for: Option<String>,
    /// A finished in-place request: what it kept, and the clinic as it runs now.
    pub kept: Option<kept::KeptSeen>,
    /// How soon to look again while a step is under way.
    pub progress: Duration,
}

/// The target of a succeeded side-by-side restore that is kept for a while.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeptTarget {
    pub exists: bool,
    pub uid: String,
    /// Made by this request (its mark and uid): only such a clinic is ever removed.
    pub ours: bool,
    pub deleting: bool,
}

/// On every RestoreRequest: an in-place one deleted mid-restore puts its clinic back first.
pub const FINALIZER: &str = "openemr.io/restore";

/// The condition saying whether a side-by-side target kept for `keepTargetFor` was removed.
pub const TARGET_REMOVED: &str = "TargetRemoved";

impl Reconcile for RestoreRequest {
    type Observed = Observed;
    type Change = Change;
    const CONTROLLER: &'static str = "restorerequest";
    const FINALIZER: Option<&'static str> = Some(FINALIZER);

    /// An in-place request deleted after it stopped its clinic finishes putting it back
    /// (its rollback) first, unless the clinic itself is going.
    fn finishes_before_cleanup(&self, status: &RestoreRequestStatus, ctx: &Context) -> bool {
        let Some(t) = &self.spec.target.in_place else {
            return false;
        };
        let ns = self.namespace().unwrap_or_default();
        let clinic_stays = lookup(&ctx.caches.deployments, &ns, &t.deployment_name)
            .is_some_and(|c| c.meta().deletion_timestamp.is_none());
        clinic_stays && !kept::clinic_settled(status)
    }

    /// Nothing of the clinic is left stopped by a request that is gone: its hold (placed by
    /// an in-place restore or its rollback) is released, if any is left. A side-by-side
    /// target stays held: its site may be half restored.
    async fn cleanup(&self, ctx: &Context) -> Result<(), Error> {
        let Some(t) = &self.spec.target.in_place else {
            return Ok(());
        };
        let ns = self.namespace().unwrap_or_default();
        holds::release(
            &ctx.client,
            &ns,
            &t.deployment_name,
            &steps::holder(&self.name_any()),
        )
        .await
        .map_err(|e| Error::Act {
            action: format!("releasing the hold on clinic {}", t.deployment_name),
            reason: "HoldReleaseFailed",
            message: e.to_string(),
        })
    }

    async fn observe(&self, ctx: &Context) -> Result<Observed, Error> {
        // A Job the cache does not show yet must not read as absent: the rollback waits
        // on the exchange Job, and a second Job on the same directories would race it.
        super::backup::children_listed(ctx)?;
        let ns = self.namespace().unwrap_or_default();
        let caches = &ctx.caches;
        let source = &self.spec.source;
        let source_exists = if let Some(r) = &source.backup_ref {
            Some(lookup(&caches.backups, &ns, &r.name).is_some())
        } else if let Some(r) = &source.latest_from_policy {
            Some(lookup(&caches.policies, &ns, &r.name).is_some())
        } else {
            source
                .point_in_time
                .as_ref()
                .map(|p| lookup(&caches.deployments, &ns, &p.deployment_ref.name).is_some())
        };
        let sets: Vec<_> = caches
            .backups
            .state()
            .into_iter()
            .filter(|s| s.meta().namespace.as_deref() == Some(ns.as_str()))
            .collect();
        let sets: Vec<&crate::api::OpenEMRBackup> =
            sets.iter().filter_map(|s| s.0.as_ref().ok()).collect();
        let clinic = source
            .point_in_time
            .as_ref()
            .and_then(|p| lookup(&caches.deployments, &ns, &p.deployment_ref.name))
            .and_then(|c| c.0.as_ref().ok().cloned());
        // The window is read from AWS only to judge an instant not yet pinned.
        let clinic = match (clinic, &ctx.aws) {
            (Some(c), Some(aws)) if !self.started() => Some(with_fresh_window(c, aws).await?),
            (c, _) => c,
        };
        let clinic = clinic.as_ref();
        // Once started, the source is the one recorded then: a policy's newer set made
        // meanwhile changes nothing.
        // A point in time is pinned to the instant resolved then (the latest restorable time
        // moves on), which also fixes the set its documents come from.
        let pinned;
        let status = self.status.as_ref().filter(|_| self.started());
        let source = match (status, &source.point_in_time) {
            (Some(status), Some(p)) if status.data_time.is_some() => {
                pinned = crate::api::restore::RestoreSource {
                    point_in_time: Some(crate::api::restore::PointInTimeSource {
                        time: status.data_time.clone(),
                        latest_restorable: false,
                        ..p.clone()
                    }),
                    ..Default::default()
                };
                &pinned
            }
            (Some(status), None) if status.source_backup.is_some() => {
                pinned = crate::api::restore::RestoreSource {
                    backup_ref: status.source_backup.clone().map(|name| LocalRef { name }),
                    ..Default::default()
                };
                &pinned
            }
            _ => source,
        };
        let resolve = match status {
            Some(_) => source::resolve_pinned,
            None => source::resolve,
        };
        let mut observed = Observed {
            source_exists,
            resolved: Some(resolve(source, &sets, clinic)),
            progress: Duration::from_secs(30),
            ..Observed::default()
        };
        let uid = self.uid().unwrap_or_default();
        if let Some(t) = &self.spec.target.in_place {
            observed.in_place_target_exists =
                Some(lookup(&caches.deployments, &ns, &t.deployment_name).is_some());
        } else if let Some(found) = lookup(&caches.deployments, &ns, &self.side_by_side_name()) {
            observed.side_by_side_name_taken = match &found.0 {
                Ok(c) => !target::made_by(c, &uid),
                Err(_) => true,
            };
        }
        // The clinic the source's data is of: a point in time's, or the set's.
        let source_clinic = match &observed.resolved {
            Some(Ok(resolved)) => match &resolved.point_in_time {
                Some((clinic, _)) => Some(clinic.clone()),
                None => sets
                    .iter()
                    .find(|s| Some(s.name_any()) == resolved.set)
                    .map(|s| s.spec.deployment_ref.name.clone()),
            },
            _ => None,
        };
        if let (Some(Ok(resolved)), false) = (&observed.resolved, self.started()) {
            // Judged before anything is made: what the target would run, against what the
            // source's data was made with.
            let source_clinic = source_clinic
                .as_ref()
                .and_then(|name| lookup(&caches.deployments, &ns, name))
                .and_then(|c| c.0.as_ref().ok().cloned());
            let given = self
                .spec
                .target
                .side_by_side
                .as_ref()
                .is_some_and(|t| t.deployment_spec.is_some());
            let copied_from = source_clinic
                .as_ref()
                .filter(|_| !given)
                .map(|c| (c.name_any(), c.spec.clone()));
            let target = match &self.spec.target.in_place {
                Some(t) => lookup(&caches.deployments, &ns, &t.deployment_name)
                    .and_then(|c| c.0.as_ref().ok().cloned()),
                None => self.target_clinic(&ns, source_clinic.as_ref()),
            };
            let copied_from = copied_from.filter(|_| self.spec.target.in_place.is_none());
            observed.incompatible = target.as_ref().and_then(|t| {
                source::incompatibility(
                    resolved,
                    &t.spec,
                    copied_from.as_ref().map(|(n, s)| (n.as_str(), s)),
                )
            });
            if observed.incompatible.is_none()
                && let (Some(snapshot), Some(aws), Some(target)) =
                    (&self.spec.source.snapshot, &ctx.aws, &target)
                && snapshot.documents.is_some()
            {
                let seen = lineage_seen(target, aws, snapshot).await;
                match lineage::judge(snapshot, &seen) {
                    Err(refusal) => observed.incompatible = Some(refusal),
                    Ok(found) => observed.source_check = found,
                }
            }
        }
        if self.spec.keep_target_for.is_some()
            && self.spec.target.side_by_side.is_some()
            && self.status.as_ref().and_then(|s| s.phase) == Some(RestorePhase::Succeeded)
        {
            let found = lookup(&caches.deployments, &ns, &self.side_by_side_name());
            observed.kept_target = Some(match found.as_ref().map(|f| &f.0) {
                Some(Ok(c)) => KeptTarget {
                    exists: true,
                    uid: c.uid().unwrap_or_default(),
                    ours: target::made_by(c, &uid),
                    deleting: c.metadata.deletion_timestamp.is_some(),
                },
                Some(Err(_)) => KeptTarget {
                    exists: true,
                    ..KeptTarget::default()
                },
                None => KeptTarget::default(),
            });
        }
        let finished = matches!(
            self.status.as_ref().and_then(|s| s.phase),
            Some(RestorePhase::Succeeded | RestorePhase::Failed)
        );
        if let (true, Some(_), Some(aws)) = (finished, &self.spec.target.in_place, &ctx.aws) {
            observed.progress = aws.progress_interval;
            observed.kept = self.kept_seen(ctx, aws, &ns).await?;
        }
        observed.waiting_for = self.waiting_for(caches, &ns);
        let runnable = observed.waiting_for.is_none()
            && !matches!(
                self.status.as_ref().and_then(|s| s.phase),
                Some(RestorePhase::Succeeded | RestorePhase::Failed)
            );
        if let (Some(aws), Some(Ok(resolved)), true) = (&ctx.aws, &observed.resolved, runnable)
            && !observed.side_by_side_name_taken
            && observed.incompatible.is_none()
        {
            observed.progress = aws.progress_interval;
            let resolved = resolved.clone();
            observed.steps = Some(
                self.steps_seen(ctx, aws, &ns, resolved, source_clinic)
                    .await?,
            );
        }
        Ok(observed)
    }

    /// Each step that reached an end: Succeeded, Skipped or Failed.
    fn steps_ended(
        before: &RestoreRequestStatus,
        after: &RestoreRequestStatus,
    ) -> Vec<super::StepEnded> {
        steps::ended(&before.steps, &after.steps)
    }

    /// A restore that failed (`Succeeded=False` for a reason other than being under way)
    /// warns, naming the reason.
    fn warns(condition: &crate::api::Condition) -> bool {
        condition.type_ == SUCCEEDED
            && condition.status == "False"
            && condition.reason != "InProgress"
    }

    /// The set it restores from is judged by retention again when the request stops
    /// pinning it (it succeeded), not at the set's next resync.
    fn announced(&self) -> Option<(u64, Vec<(RefKind, String)>)> {
        let set = self
            .spec
            .source
            .backup_ref
            .as_ref()
            .map(|b| b.name.clone())
            .or_else(|| self.status.as_ref()?.source_backup.clone())?;
        let digest = u64::from(self.uses_set(&set)) + 1;
        Some((digest, vec![(RefKind::Retention, set)]))
    }

    fn references(&self) -> Vec<(RefKind, String)> {
        let spec = &self.spec;
        let source = &spec.source;
        let mut refs = Vec::new();
        if let Some(r) = &source.backup_ref {
            refs.push((RefKind::Backup, r.name.clone()));
        }
        if let Some(r) = &source.latest_from_policy {
            refs.push((RefKind::Policy, r.name.clone()));
            // Its sets completing: the newest may be the one to restore.
            refs.push((RefKind::Completions, r.name.clone()));
        }
        if let Some(p) = &source.point_in_time {
            refs.push((RefKind::Deployment, p.deployment_ref.name.clone()));
        }
        let target = self.target_name();
        refs.push((RefKind::Deployment, target.clone()));
        // The target's children: the hold's Lease among them.
        refs.push((RefKind::Workload, target.clone()));
        // Its AWS resources, as the inventory sees them change (the restored instance).
        refs.push((RefKind::Infrastructure, target));
        refs
    }

    fn plan(&self, observed: &Observed, now: Timestamp) -> Plan<RestoreRequestStatus, Change> {
        if let Some(finished) = self.status.clone().filter(|s| {
            matches!(
                s.phase,
                Some(RestorePhase::Succeeded | RestorePhase::Failed)
            )
        }) {
            // A finished request is a record: its source may since have been pruned, or its
            // instant left the restorable window, and it says what was true when it ran.
            // Only what it kept is still to come: a side-by-side target's removal, an
            // in-place restore's rollback and the removal of what it replaced.
            if let Some(seen) = &observed.kept {
                return self.keep_previous(finished, seen, observed, now);
            }
            return self.keep_target(finished, observed, now);
        }
        let accepted = self.validate(observed, now);
        let is_accepted = accepted.status;
        let mut status = status_with(self, std::slice::from_ref(&accepted), now);
        status.phase.get_or_insert(RestorePhase::Pending);
        if let (Some(ahead), false, true) = (&observed.waiting_for, self.started(), is_accepted) {
            status.phase = Some(RestorePhase::Waiting);
            status.waiting_for = Some(ahead.clone());
            let started = Verdict::falsy(
                STARTED,
                "Waiting",
                format!(
                    "RestoreRequest {ahead} restores into clinic {} and started first: one restore at a time per clinic; this one starts once it has ended",
                    self.target_name()
                ),
            );
            let mut plan = Plan::after_validation(status_from(self, status, &[started], now), true);
            plan.requeue = Requeue::After(observed.progress);
            return plan;
        }
        status.waiting_for = None;
        let (Some(seen), true) = (&observed.steps, is_accepted) else {
            let mut plan = Plan::after_validation(status, is_accepted);
            if let Some(wait) = self.until_point_in_time(now) {
                // Time alone fixes this refusal.
                plan.requeue = Requeue::After(wait);
            }
            return plan;
        };
        if !self.started() {
            status.start_time = Some(Time(now));
            status.source_backup = seen.source.set.clone();
            status.source_snapshot_arn = seen.source.snapshot_arn.clone();
            status.source_check = observed.source_check.clone();
            status.data_time = seen.source.data_time.map(Time);
        }
        let mut outcome = steps::plan(seen, &mut status, now);
        if self.metadata.deletion_timestamp.is_some() {
            steps::stop_for_deletion(seen, &mut status, &mut outcome, now);
        }
        let started = Verdict::truthy(STARTED, "Started", "the restore's steps run");
        let result = match (&outcome.failed, status.phase) {
            (Some((reason, message)), _) => {
                status.completion_time = Some(Time(now));
                // Nothing is torn down on failure: say what that keeps and how it goes. A
                // clinic quiesced in place is put back as it was (see `kept`).
                let quiesced = status
                    .steps
                    .iter()
                    .any(|s| s.name == steps::QUIESCE && s.start_time.is_some());
                let kept = match (&seen.target, *reason) {
                    (Some(t), _) if t.in_place.is_some() && quiesced => format!(
                        "; clinic {} is rolled back to what it ran on before (see the RolledBack condition)",
                        seen.target_name
                    ),
                    (Some(t), r) if t.ours && r != "TargetDeleted" => format!(
                        "; clinic {} and what was made for it are kept for inspection and cost what a running clinic does (its DB instance, file system, cache): to remove them, set its spec.deletionPolicy: Delete and skipFinalSnapshot: true, then delete it",
                        seen.target_name
                    ),
                    _ => String::new(),
                };
                Verdict::falsy(SUCCEEDED, reason, format!("{message}{kept}"))
            }
            (None, Some(RestorePhase::Succeeded)) => {
                Verdict::truthy(SUCCEEDED, "Verified", "restored and verified")
            }
            _ => {
                let step = status
                    .steps
                    .iter()
                    .find(|s| s.phase == crate::api::restore::StepPhase::Running);
                let message = step.map_or_else(String::new, |s| {
                    format!("{}: {}", s.name, s.message.clone().unwrap_or_default())
                });
                Verdict::falsy(SUCCEEDED, "InProgress", message)
            }
        };
        let in_place = self.spec.target.in_place.as_ref();
        if let (Some(t), Some(done)) = (in_place, status.completion_time.as_ref()) {
            let keep = crate::api::patterns::duration_of(&t.keep_previous_for)
                .unwrap_or(Duration::from_secs(72 * 3600));
            status.previous_expires_at = Some(kept::expires_at(done.0, keep));
        }
        let status = status_from(self, status, &[started, result], now);
        Plan {
            status,
            changes: outcome.changes,
            // Verified with a target to keep for a while, or what an in-place restore
            // replaced (or a rollback to come): the next look says until when.
            requeue: if outcome.in_progress
                || self.spec.keep_target_for.is_some()
                || in_place.is_some()
            {
                Requeue::After(observed.progress)
            } else {
                Requeue::Resync
            },
            failure: None,
        }
    }

    fn intent(change: &Change) -> (String, String) {
        change.intent()
    }

    async fn act(&self, change: &Change, ctx: &Context) -> Result<(), Error> {
        let ns = self.namespace().unwrap_or_default();
        let Some(aws) = &ctx.aws else {
            return Ok(());
        };
        match change {
            Change::CreateTarget(clinic) => {
                let api: Api<OpenEMRDeployment> = Api::namespaced(ctx.client.clone(), &ns);
                match api.create(&PostParams::default(), clinic).await {
                    // Made by an earlier attempt (or someone else: the next look tells).
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                    other => other.map(|_| ()).map_err(|e| Error::Act {
                        action: format!("creating clinic {}", self.side_by_side_name()),
                        reason: "TargetCreateFailed",
                        message: e.to_string(),
                    }),
                }
            }
            Change::PlaceHold { clinic, clinic_uid } => {
                let owner = OwnerReference {
                    api_version: "openemr.io/v1alpha1".into(),
                    kind: "OpenEMRDeployment".into(),
                    name: clinic.clone(),
                    uid: clinic_uid.clone(),
                    ..OwnerReference::default()
                };
                holds::place(
                    &ctx.client,
                    &ns,
                    clinic,
                    &steps::holder(&self.name_any()),
                    &if self.spec.target.in_place.is_some() {
                        format!(
                            "restoring in place: RestoreRequest {} replaces this clinic's data",
                            self.name_any()
                        )
                    } else {
                        format!(
                            "restoring: RestoreRequest {} fills this clinic",
                            self.name_any()
                        )
                    },
                    None,
                    Some(&owner),
                )
                .await
                .map_err(|e| Error::Act {
                    action: format!("holding clinic {clinic}"),
                    reason: "HoldFailed",
                    message: e.to_string(),
                })
            }
            Change::CopySnapshot {
                source_arn,
                identifier,
                kms_key,
                tags,
            } => {
                let clients = self.target_clients(ctx, aws, &ns).await?;
                match clients
                    .copy_snapshot(source_arn, identifier, kms_key, tags)
                    .await
                {
                    Err(e) if e.already_exists() => Ok(()),
                    other => other.map_err(aws_error("copying the source snapshot")),
                }
            }
            Change::RestoreDatabase(request) => {
                let clients = self.target_clients(ctx, aws, &ns).await?;
                match clients.restore_instance(request).await {
                    Err(e) if e.already_exists() => Ok(()),
                    other => other.map_err(aws_error("restoring the DB instance")),
                }
            }
            Change::RestorePointInTime(request) => {
                let clients = self.source_clients(ctx, aws, &ns).await?;
                match clients.restore_to_point_in_time(request).await {
                    Err(e) if e.already_exists() => Ok(()),
                    other => other.map_err(aws_error("restoring the point in time")),
                }
            }
            Change::SnapshotStaging {
                instance,
                identifier,
                tags,
            } => {
                let clients = self.source_clients(ctx, aws, &ns).await?;
                match clients.create_snapshot(instance, identifier, tags).await {
                    Err(e) if e.already_exists() => Ok(()),
                    other => other.map_err(aws_error("taking the staging instance's snapshot")),
                }
            }
            Change::UnprotectStaging { identifier } => {
                let clients = self.source_clients(ctx, aws, &ns).await?;
                unprotect(&clients, identifier).await.map_err(aws_error(
                    "turning off the staging instance's deletion protection",
                ))
            }
            Change::DeleteStagingInstance { identifier } => {
                let clients = self.source_clients(ctx, aws, &ns).await?;
                clients
                    .delete_instance(identifier)
                    .await
                    .map_err(aws_error("deleting the staging instance"))
            }
            Change::DeleteStagingSnapshot { identifier } => {
                let clients = self.source_clients(ctx, aws, &ns).await?;
                clients
                    .delete_snapshot(identifier)
                    .await
                    .map_err(aws_error("deleting the staging snapshot"))
            }
            Change::ManageMasterPassword {
                identifier,
                kms_key,
            } => {
                let clients = self.target_clients(ctx, aws, &ns).await?;
                clients
                    .manage_master_password(identifier, kms_key)
                    .await
                    .map_err(aws_error("turning on the managed master password"))
            }
            Change::ResetDatabaseUser {
                endpoint,
                master_secret_arn,
                master_user,
                user,
                database,
                secret,
                admin,
            } => {
                let clients = self.target_clients(ctx, aws, &ns).await?;
                let (master_password, _) = clients
                    .master_password(master_secret_arn)
                    .await
                    .map_err(aws_error("reading the restored instance's master secret"))?;
                let password =
                    read_password(ctx, &ns, secret)
                        .await?
                        .ok_or_else(|| Error::Act {
                            action: format!("reading Secret {secret}"),
                            reason: "CredentialsSecretInvalid",
                            message: format!("Secret {secret:?} does not exist"),
                        })?;
                let login = crate::mysql::Login {
                    user: master_user.clone(),
                    password: master_password,
                    database: Some(database.clone()),
                };
                let sql = |e: crate::mysql::SqlError| Error::Act {
                    action: format!("setting {user}'s password in the restored database"),
                    reason: e.reason(),
                    message: e.to_string(),
                };
                let mut session = connect(aws, endpoint, &login).await.map_err(sql)?;
                let mut result = session.set_password(user, &password).await.map_err(sql);
                if let (Ok(()), Some(account)) = (&result, admin) {
                    let clinic = self.side_by_side_name();
                    result = set_administrator(ctx, &ns, &clinic, account, &mut session).await;
                }
                session.close().await;
                result
            }
            Change::CreateDocumentsJob {
                name,
                body,
                network_policy,
            } => {
                use crate::controller::backup::create_new;
                create_new::<k8s_openapi::api::networking::v1::NetworkPolicy>(
                    ctx,
                    &ns,
                    name,
                    network_policy,
                )
                .await?;
                create_new::<k8s_openapi::api::batch::v1::Job>(ctx, &ns, name, body).await
            }
            Change::RemoveTarget {
                clinic,
                clinic_uid,
                copy_snapshot,
            } => {
                if let Some(copy) = copy_snapshot {
                    let clients = self.target_clients(ctx, aws, &ns).await?;
                    clients
                        .delete_snapshot(copy)
                        .await
                        .map_err(aws_error("deleting the restore's snapshot copy"))?;
                }
                let api: Api<OpenEMRDeployment> = Api::namespaced(ctx.client.clone(), &ns);
                let failed = |doing: &str, e: kube::Error| Error::Act {
                    action: format!("{doing} clinic {clinic}"),
                    reason: "TargetRemoveFailed",
                    message: e.to_string(),
                };
                // Everything goes with it: it holds only what was copied for this restore.
                // The uid in the patch is immutable: a clinic made again under the name since
                // is refused, not changed.
                let delete_all = serde_json::json!({
                    "metadata": {"uid": clinic_uid},
                    "spec": {"deletionPolicy": "Delete", "skipFinalSnapshot": true},
                });
                match api
                    .patch(
                        clinic,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&delete_all),
                    )
                    .await
                {
                    Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
                    other => other.map_err(|e| failed("setting deletionPolicy Delete on", e))?,
                };
                let only_that_one = DeleteParams {
                    preconditions: Some(kube::api::Preconditions {
                        uid: Some(clinic_uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match api.delete(clinic, &only_that_one).await {
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    other => other.map(|_| ()).map_err(|e| failed("deleting", e)),
                }
            }
            Change::UnprotectKept { identifier } => {
                let clients = self.target_clients(ctx, aws, &ns).await?;
                unprotect(&clients, identifier).await.map_err(aws_error(
                    "turning off the kept instance's deletion protection",
                ))
            }
            Change::DeleteKept { identifier } => {
                let clients = self.target_clients(ctx, aws, &ns).await?;
                clients
                    .delete_instance(identifier)
                    .await
                    .map_err(aws_error("deleting the kept instance"))
            }
            Change::SafetySnapshot {
                instance,
                identifier,
                tags,
            } => {
                let clients = self.target_clients(ctx, aws, &ns).await?;
                match clients.create_snapshot(instance, identifier, tags).await {
                    Err(e) if e.already_exists() => Ok(()),
                    other => other.map_err(aws_error("taking the safety snapshot")),
                }
            }
            Change::SwitchDatabase {
                clinic,
                identifier,
                previous,
            } => {
                let api: Api<OpenEMRDeployment> = Api::namespaced(ctx.client.clone(), &ns);
                let status = crate::api::OpenEMRDeploymentStatus {
                    database_switch: Some(crate::api::deployment::DatabaseSwitch {
                        identifier: identifier.clone(),
                        previous: previous.clone(),
                        restore_request: self.name_any(),
                        time: Some(Time(crate::clock::now())),
                    }),
                    ..Default::default()
                };
                super::driver::apply_status(
                    &api,
                    clinic,
                    &super::driver::field_manager(Self::CONTROLLER),
                    &status,
                    None,
                )
                .await
                .map(|_| ())
            }
            Change::ReleaseHold { clinic } => {
                holds::release(&ctx.client, &ns, clinic, &steps::holder(&self.name_any()))
                    .await
                    .map_err(|e| Error::Act {
                        action: format!("releasing the hold on clinic {clinic}"),
                        reason: "HoldReleaseFailed",
                        message: e.to_string(),
                    })
            }
        }
    }
}

/// Turns off an instance's deletion protection, at once (a restore's own instance, about
/// to be deleted).
async fn unprotect(
    clients: &crate::aws::AwsClients,
    identifier: &str,
) -> Result<(), crate::aws::error::AwsError> {
    let request = crate::aws::rds::ModifyDb {
        identifier: identifier.to_string(),
        apply_immediately: true,
        deletion_protection: Some(false),
        ..Default::default()
    };
    clients.modify_instance(&request).await
}

/// The clinic with its restorable window as AWS reports it now: its end as the shared
/// inventory read it last (every few seconds), not as its status has it (the status writes
/// a moving restorable time alone only hourly, and a restore to the latest time must not
/// lose that hour); its start from the automated backups.
async fn with_fresh_window(
    mut clinic: OpenEMRDeployment,
    aws: &ClinicAws,
) -> Result<OpenEMRDeployment, Error> {
    let clients = clinic::clients(&clinic, aws).await;
    let Some(instance) = listed_instance(&clinic, aws, &clients).await? else {
        return Ok(clinic);
    };
    // The window's start is reported only with the automated backups (a call of its own);
    // its end there too, but the instance's is fresher.
    let window = clients
        .restore_window(&instance.identifier)
        .await
        .map_err(aws_error("reading the database's restorable window"))?
        .unwrap_or_default();
    let time =
        |t: Option<std::time::SystemTime>| t.and_then(|t| Timestamp::try_from(t).ok()).map(Time);
    if let Some(database) = clinic.status.as_mut().and_then(|s| s.database.as_mut()) {
        if let Some(latest) = time(instance.latest_restorable_time.or(window.latest)) {
            database.latest_restorable_time = Some(latest);
        }
        if let Some(earliest) = time(window.earliest) {
            database.earliest_restorable_time = Some(earliest);
        }
    }
    Ok(clinic)
}

/// What the snapshot's tags and the documents' set manifest say of their clinics, read
/// in the snapshot's region with the target's identity. What cannot be read (another
/// account's snapshot, a bucket the operator may not read) is said, not an error.
async fn lineage_seen(
    target: &OpenEMRDeployment,
    aws: &ClinicAws,
    snapshot: &crate::api::restore::SnapshotSource,
) -> lineage::LineageSeen {
    let arn = &snapshot.snapshot_arn;
    let region = lineage::arn_region(arn).unwrap_or(&target.spec.aws.region);
    let clients = clinic::clients_in(target, aws, region).await;
    let found = clients
        .describe_snapshot(lineage::arn_name(arn).unwrap_or_default())
        .await;
    // Found by name in this account: another account's snapshot of the same name is not it.
    let snapshot_clinic = match &found {
        Ok(found) => lineage::snapshot_clinic(
            arn,
            found
                .as_ref()
                .filter(|s| s.arn.as_deref() == Some(arn.as_str()))
                .map(|s| &s.tags),
        ),
        Err(e) => Err(format!("snapshot {arn} could not be read: {e}")),
    };
    let documents = match snapshot.documents.as_ref() {
        None => Err("no documents".to_string()),
        Some(d) => match lineage::set_manifest_beside(&d.manifest) {
            None => Err(format!(
                "the documents manifest {} is not named as a set's, so no set manifest says its clinic",
                d.manifest
            )),
            Some(key) => crate::controller::backup::get_set_manifest(&clients.s3, &d.bucket, &key)
                .await
                .map(|m| m.clinic),
        },
    };
    lineage::LineageSeen {
        snapshot: snapshot_clinic,
        documents,
    }
}

/// The backup sets of clinic `clinic` still reading its live data
/// ([`crate::controller::backup::set::reads_live_data`]), by name.
fn sets_reading(caches: &super::Caches, ns: &str, clinic: &str) -> Vec<String> {
    let mut names: Vec<String> = caches
        .backups
        .state()
        .iter()
        .filter_map(|s| s.0.as_ref().ok())
        .filter(|s| s.namespace().as_deref() == Some(ns) && s.spec.deployment_ref.name == clinic)
        .filter(|s| crate::controller::backup::set::reads_live_data(s))
        .map(|s| s.name_any())
        .collect();
    names.sort();
    names
}

/// The clients of clinic `name`'s account and region, once the cache holds it.
async fn clients_of(
    ctx: &Context,
    aws: &ClinicAws,
    ns: &str,
    name: &str,
) -> Result<std::sync::Arc<crate::aws::AwsClients>, Error> {
    match lookup(&ctx.caches.deployments, ns, name)
        .as_ref()
        .map(|f| &f.0)
    {
        Some(Ok(d)) => Ok(clinic::clients(d, aws).await),
        _ => Err(Error::Waiting {
            what: format!("clinic {name} in the cache"),
            after: Duration::from_secs(1),
        }),
    }
}

/// A clinic's instance as the shared inventory last listed it (no call of its own);
/// `None` before its status names its stack and instance.
async fn listed_instance(
    clinic: &OpenEMRDeployment,
    aws: &ClinicAws,
    clients: &crate::aws::AwsClients,
) -> Result<Option<crate::aws::rds::DbInstance>, Error> {
    let status = clinic.status.as_ref();
    let (Some(stack), Some(identifier)) = (
        status.and_then(|s| s.stack.as_ref()),
        status.and_then(|s| s.database.as_ref()),
    ) else {
        return Ok(None);
    };
    aws.inventory.watch(clients);
    let (_, db) = aws
        .inventory
        .view(clients, &stack.name, &identifier.identifier)
        .await
        .map_err(aws_error("reading the clinic's instance"))?;
    Ok(db)
}

/// A point in time's staging pieces, in the source clinic's account and region.
async fn staging_seen(
    aws: &ClinicAws,
    clinic: &OpenEMRDeployment,
    uid: &str,
) -> Result<steps::StagingSeen, Error> {
    let clients = clinic::clients(clinic, aws).await;
    let staging = steps::staging_identifier(uid);
    let read = |what: &'static str| aws_error(what);
    Ok(steps::StagingSeen {
        source: listed_instance(clinic, aws, &clients).await?,
        instance: clients
            .describe_instance(&staging)
            .await
            .map_err(read("reading the staging instance"))?,
        snapshot: clients
            .describe_snapshot(&staging)
            .await
            .map_err(read("reading the staging snapshot"))?,
    })
}

/// The `password` of Secret `name`, read when it is used and never kept; `None` when the
/// Secret does not exist (yet), an error when it has no usable password.
async fn read_password(ctx: &Context, ns: &str, name: &str) -> Result<Option<SecretValue>, Error> {
    let Some(secret) = get_secret(ctx, ns, name).await? else {
        return Ok(None);
    };
    match secret_value(&secret, PASSWORD_KEY) {
        Some(password) => Ok(Some(SecretValue(password))),
        None => Err(Error::Act {
            action: format!("reading Secret {name}"),
            reason: "CredentialsSecretInvalid",
            message: format!("Secret {name:?} has no usable {PASSWORD_KEY:?}"),
        }),
    }
}

/// The user name and password in the admin Secret `name`, or why there are none (a
/// reason and a message).
async fn admin_login(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Result<(String, SecretValue), (&'static str, String)>, Error> {
    let Some(secret) = get_secret(ctx, ns, name).await? else {
        return Ok(Err((
            "AdminCredentialsSecretNotFound",
            format!("Secret {name:?} does not exist"),
        )));
    };
    Ok(
        match (
            secret_value(&secret, USERNAME_KEY),
            secret_value(&secret, PASSWORD_KEY),
        ) {
            (Some(user), Some(password)) => Ok((user, SecretValue(password))),
            _ => Err((
                "AdminCredentialsSecretInvalid",
                format!("Secret {name:?} lacks {USERNAME_KEY:?} or {PASSWORD_KEY:?}"),
            )),
        },
    )
}

/// Whether the restored database's hash for the administrator in `account`'s Secret is of
/// that Secret's password, or why not.
async fn admin_matches(
    ctx: &Context,
    ns: &str,
    account: &steps::AdminAccount,
    session: &mut crate::mysql::Session,
) -> Result<Result<(), String>, Error> {
    use crate::mysql::admin;
    let name = &account.secret;
    let (user, password) = match admin_login(ctx, ns, name).await? {
        Ok(login) => login,
        Err((_, why)) => return Ok(Err(why)),
    };
    Ok(match admin::stored_hash(session, &user).await {
        Ok(Some(hash)) if admin::matches(&password, &hash) => Ok(()),
        Ok(Some(_)) => Err(format!(
            "{user}'s password in the restored database is not the one in Secret {name}"
        )),
        Ok(None) => Err(format!(
            "the restored database has no OpenEMR user {user:?}"
        )),
        Err(e) => Err(format!("{}: {e}", e.reason())),
    })
}

/// Gives the target's first administrator (`account`) the password in its Secret, in the
/// restored database `session` is open on as the master user. A Secret the operator
/// generates is made here when missing, for the user the database names its first
/// administrator; one it made earlier for another name is made to name that user.
async fn set_administrator(
    ctx: &Context,
    ns: &str,
    clinic: &str,
    account: &steps::AdminAccount,
    session: &mut crate::mysql::Session,
) -> Result<(), Error> {
    use crate::mysql::admin;
    let name = &account.secret;
    let act = |reason: &'static str, message: String| Error::Act {
        action: format!("setting the first administrator's password from Secret {name}"),
        reason,
        message,
    };
    let sql = |e: crate::mysql::SqlError| act(e.reason(), e.to_string());
    let first = if account.generated {
        let first = admin::first_administrator(session)
            .await
            .map_err(sql)?
            .ok_or_else(|| {
                act(
                    "AdministratorNotFound",
                    format!(
                        "the restored database has no first administrator (users_secure id {})",
                        admin::FIRST_ADMINISTRATOR_ID
                    ),
                )
            })?;
        super::deployment::secrets::create_admin_secret(
            ctx,
            ns,
            name,
            &first,
            super::deployment::web::act::generated_labels(clinic),
        )
        .await?;
        Some(first)
    } else {
        None
    };
    let (mut user, password) = admin_login(ctx, ns, name)
        .await?
        .map_err(|(reason, why)| act(reason, why))?;
    if let Some(first) = first.filter(|f| *f != user) {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        let rename = serde_json::json!({"stringData": {USERNAME_KEY: first}});
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&rename),
        )
        .await
        .map_err(|e| act("SecretWriteFailed", e.to_string()))?;
        user = first;
    }
    if admin::set_password(session, &user, &password)
        .await
        .map_err(sql)?
    {
        Ok(())
    } else {
        Err(act(
            "AdministratorNotFound",
            format!(
                "the restored database has no OpenEMR user {user:?} (the username in Secret {name})"
            ),
        ))
    }
}

/// A session with the restored instance `db` as the target's OpenEMR user, with its
/// `password`.
async fn open_as_openemr(
    aws: &ClinicAws,
    db: &crate::aws::rds::DbInstance,
    target: &steps::TargetSeen,
    password: &SecretValue,
) -> Result<crate::mysql::Session, crate::mysql::SqlError> {
    let (host, port) = db.endpoint.clone().unwrap_or_default();
    let login = crate::mysql::Login {
        user: target.database.username.clone(),
        password: SecretValue(password.0.clone()),
        database: Some(target.database.database_name.clone()),
    };
    let endpoint = crate::mysql::Endpoint {
        host,
        port: u16::try_from(port).unwrap_or(3306),
    };
    connect(aws, &endpoint, &login).await
}

/// A session with the restored database, through the operator's address map and CA bundle.
async fn connect(
    aws: &ClinicAws,
    endpoint: &crate::mysql::Endpoint,
    login: &crate::mysql::Login,
) -> Result<crate::mysql::Session, crate::mysql::SqlError> {
    let ca = std::fs::read(&aws.ca_files.mysql).unwrap_or_default();
    crate::mysql::connect(
        endpoint,
        login,
        &ca,
        &aws.database_addresses,
        Duration::from_secs(20),
    )
    .await
}

impl RestoreRequest {
    /// Whether this request keeps set `set` from being pruned: one it names or restores,
    /// until it has succeeded (its data is then in the target, which needs the set no
    /// more). A failed request keeps it, for a retry of the same set.
    pub fn uses_set(&self, set: &str) -> bool {
        let status = self.status.as_ref();
        if status.and_then(|s| s.phase) == Some(RestorePhase::Succeeded) {
            return false;
        }
        let named = self
            .spec
            .source
            .backup_ref
            .as_ref()
            .is_some_and(|b| b.name == set);
        named || status.and_then(|s| s.source_backup.as_deref()) == Some(set)
    }

    /// A finished in-place request's plan: its rollback (asked, or after a failure once the
    /// clinic was quiesced), then the removal of what it kept once the window has ended.
    fn keep_previous(
        &self,
        mut status: RestoreRequestStatus,
        seen: &kept::KeptSeen,
        observed: &Observed,
        now: Timestamp,
    ) -> Plan<RestoreRequestStatus, Change> {
        let outcome = kept::plan(seen, &mut status, now);
        // Deleted: once the rollback is through, the next look lets the request go (a status
        // write alone wakes nothing).
        let deleting = self.metadata.deletion_timestamp.is_some();
        let requeue = if outcome.in_progress || deleting {
            Requeue::After(observed.progress)
        } else if let Some(wait) = outcome
            .until
            .and_then(|until| crate::clock::real_wait_until(until, now))
        {
            Requeue::Exactly(wait)
        } else {
            Requeue::OnChange
        };
        Plan {
            status: status_from(self, status, &outcome.verdicts, now),
            changes: outcome.changes,
            requeue,
            failure: None,
        }
    }

    /// What a finished in-place request kept, and the clinic as it runs now; `None` once
    /// everything kept was removed.
    async fn kept_seen(
        &self,
        ctx: &Context,
        aws: &ClinicAws,
        ns: &str,
    ) -> Result<Option<kept::KeptSeen>, Error> {
        let Some(status) = self.status.as_ref() else {
            return Ok(None);
        };
        let removed = crate::conditions::find(&status.conditions, kept::PREVIOUS_REMOVED)
            .is_some_and(|c| c.status == "True");
        let (Some(previous), Some(restored), false) = (
            status.previous_db_instance.clone(),
            status.restored_db_instance.clone(),
            removed,
        ) else {
            return Ok(None);
        };
        let uid = self.uid().unwrap_or_default();
        let name = self.target_name();
        let found = lookup(&ctx.caches.deployments, ns, &name);
        let clinic = found.as_ref().and_then(|f| f.0.as_ref().ok());
        let keeps_restored = kept::keeps_restored(status);
        let expired = status
            .previous_expires_at
            .as_ref()
            .is_some_and(|t| crate::clock::now() >= t.0);
        let mut seen = kept::KeptSeen {
            request: self.name_any(),
            uid: uid.clone(),
            clinic: name.clone(),
            target: None,
            previous: previous.clone(),
            restored: restored.clone(),
            rollback_asked: kept::rollback_asked(self),
            superseded: None,
            leftover: None,
            final_snapshot: None,
            rollback_job: crate::controller::backup::job_seen(
                ctx,
                ns,
                &kept::rollback_job_name(&uid),
                &uid,
            )
            .await?,
            // From the cache alone: only whether it still runs matters here.
            exchange_running: cached(&ctx.children.jobs, ns, &steps::documents_job_name(&uid))
                .is_some_and(|job| {
                    matches!(
                        super::deployment::web::observe::job_state(&job),
                        super::deployment::web::JobState::Running
                    )
                }),
            discard_job: crate::controller::backup::job_seen(
                ctx,
                ns,
                &kept::discard_job_name(&uid),
                &uid,
            )
            .await?,
            jobs: kept::SiteJobs {
                namespace: ns.to_string(),
                image: aws.workload.documents_image.clone(),
                service_account: aws.workload.documents_service_account.clone(),
                backoff_limit: aws.workload.documents_backoff_limit,
                deadline_seconds: aws.workload.documents_deadline.as_secs() as i64,
                region: String::new(),
                bucket: String::new(),
            },
            tags: BTreeMap::new(),
        };
        let Some(clinic) = clinic else {
            return Ok(Some(seen));
        };
        let clinic_status = clinic.status.clone().unwrap_or_default();
        let web = clinic_status.web.clone().unwrap_or_default();
        let lease = kept::lease(&name, &self.name_any());
        seen.target = Some(kept::ClinicNow {
            uid: clinic.uid().unwrap_or_default(),
            held: cached(&ctx.children.holds, ns, &lease).is_some(),
            quiet: web.holds.iter().any(|h| h.lease == lease && h.effective),
            serving: clinic_status
                .database
                .as_ref()
                .map(|d| d.identifier.clone()),
            switched_to: clinic_status
                .database_switch
                .as_ref()
                .map(|s| s.identifier.clone()),
            claim: super::deployment::web::WebNames::new(ns, &name).claim,
            sets_reading: sets_reading(&ctx.caches, ns, &name),
        });
        // A later restore's switch, or another restore into the clinic under way.
        let started = status.start_time.as_ref().map(|t| t.0);
        let later_switch = clinic_status
            .database_switch
            .as_ref()
            .filter(|s| s.restore_request != self.name_any())
            .filter(|s| s.time.as_ref().map(|t| t.0) > started)
            .map(|s| s.restore_request.clone());
        let all = ctx.caches.restores.state();
        let running = all
            .iter()
            .filter_map(|r| r.0.as_ref().ok())
            .filter(|r| r.namespace().as_deref() == Some(ns) && r.name_any() != self.name_any())
            .find(|r| r.target_name() == name && r.active())
            .map(|r| r.name_any());
        seen.superseded = later_switch.or(running);
        seen.jobs.region = clinic.spec.aws.region.clone();
        seen.jobs.bucket = clinic_status.bucket_name.clone().unwrap_or_default();
        seen.tags = clinic::clinic_tags(clinic, aws);
        if expired {
            let clients = clinic::clients(clinic, aws).await;
            let leftover = if keeps_restored { &restored } else { &previous };
            seen.leftover = clients
                .describe_instance(leftover)
                .await
                .map_err(aws_error("reading the kept instance"))?;
            seen.final_snapshot = clients
                .describe_snapshot(&kept::final_identifier(&uid))
                .await
                .map_err(aws_error("reading the kept instance's final snapshot"))?;
        }
        Ok(Some(seen))
    }

    /// A finished request's plan: its record as it is, and for a succeeded side-by-side
    /// restore with `keepTargetFor`, the target's removal once that has passed since it
    /// was verified (a drill's target, or a check that needs no more than a look). Only a
    /// clinic this request made is removed; the source is never touched.
    fn keep_target(
        &self,
        mut status: RestoreRequestStatus,
        observed: &Observed,
        now: Timestamp,
    ) -> Plan<RestoreRequestStatus, Change> {
        let mut plan = Plan {
            status: status.clone(),
            changes: Vec::new(),
            requeue: Requeue::OnChange,
            failure: None,
        };
        let (Some(kept), Some(keep), Some(done)) = (
            &observed.kept_target,
            self.spec.keep_target_for.as_deref(),
            status.completion_time.as_ref().map(|t| t.0),
        ) else {
            return plan;
        };
        let Some(period) = crate::api::patterns::duration_of(keep) else {
            return plan;
        };
        let clinic = self.side_by_side_name();
        let until =
            Timestamp::from_second(done.as_second().saturating_add(period.as_secs() as i64))
                .unwrap_or(done);
        let verdict = if !kept.exists {
            Verdict::truthy(
                TARGET_REMOVED,
                "Removed",
                format!("clinic {clinic} was removed after spec.keepTargetFor ({keep})"),
            )
        } else if !kept.ours {
            Verdict::falsy(
                TARGET_REMOVED,
                "NotMadeByThisRequest",
                format!(
                    "clinic {clinic} is not the one this request made: it is never removed by it"
                ),
            )
        } else if kept.deleting {
            plan.requeue = Requeue::After(observed.progress);
            Verdict::falsy(
                TARGET_REMOVED,
                "Removing",
                format!("clinic {clinic} is being deleted with everything it made"),
            )
        } else if now >= until {
            plan.changes.push(Change::RemoveTarget {
                clinic: clinic.clone(),
                clinic_uid: kept.uid.clone(),
                copy_snapshot: status
                    .restored_db_instance
                    .as_ref()
                    .map(|db| steps::copy_identifier(db, &self.uid().unwrap_or_default())),
            });
            plan.requeue = Requeue::After(observed.progress);
            Verdict::falsy(
                TARGET_REMOVED,
                "Removing",
                format!(
                    "spec.keepTargetFor ({keep}) has passed: removing clinic {clinic}, its snapshot copy and everything the clinic made (no final snapshot: it holds only copied data)"
                ),
            )
        } else {
            if let Some(wait) = crate::clock::real_wait_until(until, now) {
                plan.requeue = Requeue::Exactly(wait);
            }
            Verdict::falsy(
                TARGET_REMOVED,
                "Kept",
                format!("clinic {clinic} is kept until {until} (spec.keepTargetFor {keep})"),
            )
        };
        status = status_from(self, status, &[verdict], now);
        plan.status = status;
        plan
    }

    /// Whether the steps have started (the source is fixed then).
    fn started(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.start_time.is_some())
    }

    /// The clinic restored into: the in-place one, or the side-by-side one made.
    pub fn target_name(&self) -> String {
        match &self.spec.target.in_place {
            Some(t) => t.deployment_name.clone(),
            None => self.side_by_side_name(),
        }
    }

    /// The clients of the point in time's clinic's account and region.
    async fn source_clients(
        &self,
        ctx: &Context,
        aws: &ClinicAws,
        ns: &str,
    ) -> Result<std::sync::Arc<crate::aws::AwsClients>, Error> {
        let name = self.spec.source.point_in_time.as_ref();
        let name = name.map_or("", |p| p.deployment_ref.name.as_str());
        clients_of(ctx, aws, ns, name).await
    }

    /// The clients of the target clinic's account and region.
    async fn target_clients(
        &self,
        ctx: &Context,
        aws: &ClinicAws,
        ns: &str,
    ) -> Result<std::sync::Arc<crate::aws::AwsClients>, Error> {
        clients_of(ctx, aws, ns, &self.target_name()).await
    }

    /// The clinic the target is made as: the request's spec, or a copy of the source
    /// clinic's ([`target::copied_spec`]), in the requested region.
    fn target_clinic(
        &self,
        ns: &str,
        source_clinic: Option<&OpenEMRDeployment>,
    ) -> Option<OpenEMRDeployment> {
        let side = self.spec.target.side_by_side.clone().unwrap_or_default();
        let mut spec = match (side.deployment_spec, source_clinic) {
            (Some(spec), _) => *spec,
            (None, Some(c)) => target::copied_spec(&c.spec),
            (None, None) => return None,
        };
        if let Some(region) = side.region {
            spec.aws.region = region;
        }
        Some(target::clinic(
            ns,
            &self.side_by_side_name(),
            &self.name_any(),
            &self.uid().unwrap_or_default(),
            source_clinic.map(|c| c.name_any()).as_deref(),
            spec,
        ))
    }

    /// What a restore's steps are planned from.
    async fn steps_seen(
        &self,
        ctx: &Context,
        aws: &ClinicAws,
        ns: &str,
        resolved: source::Resolved,
        source_clinic: Option<String>,
    ) -> Result<steps::Seen, Error> {
        let uid = self.uid().unwrap_or_default();
        let target_name = self.target_name();
        let in_place = self.spec.target.in_place.is_some();
        let source_clinic = source_clinic
            .and_then(|name| lookup(&ctx.caches.deployments, ns, &name))
            .and_then(|c| c.0.as_ref().ok().cloned());
        let found = lookup(&ctx.caches.deployments, ns, &target_name);
        let found = found.as_ref().and_then(|f| f.0.as_ref().ok());
        let target_spec = match found {
            Some(clinic) if in_place => Some(clinic.clone()),
            _ => self.target_clinic(ns, source_clinic.as_ref()),
        };
        // Into another region: from the set's copy there, when it has one.
        let source_set = resolved
            .set
            .as_ref()
            .and_then(|name| lookup(&ctx.caches.backups, ns, name))
            .and_then(|s| s.0.as_ref().ok().cloned());
        let target_region = target_spec.as_ref().map(|t| t.spec.aws.region.clone());
        let source_region = source_clinic.as_ref().map(|c| c.spec.aws.region.clone());
        let resolved = match (&source_set, &target_region) {
            (Some(set), Some(region))
                if self.spec.source.snapshot.is_none()
                    && resolved.point_in_time.is_none()
                    && source_region.as_ref() != Some(region) =>
            {
                source::from_copy_in(&resolved, set, region).unwrap_or(resolved)
            }
            _ => resolved,
        };
        let mut seen = steps::Seen {
            request: self.name_any(),
            uid: uid.clone(),
            target_name: target_name.clone(),
            source: resolved,
            target_spec,
            target: None,
            copy: None,
            instance: None,
            user_opens: None,
            admin: None,
            done: self
                .status
                .as_ref()
                .map(|s| {
                    s.steps
                        .iter()
                        .filter(|st| {
                            matches!(
                                st.phase,
                                crate::api::restore::StepPhase::Succeeded
                                    | crate::api::restore::StepPhase::Skipped
                            )
                        })
                        .map(|st| st.name.clone())
                        .collect()
                })
                .unwrap_or_default(),
            checks: self.spec.checks.clone(),
            requested: self.metadata.creation_timestamp.as_ref().map(|t| t.0),
            database_checks: None,
            documents_run: None,
            staging: None,
            in_place,
        };
        let Some(d) = found else {
            return Ok(seen);
        };
        let names = ClinicNames::new(&aws.cluster, ns, &target_name);
        let db_identifier = clinic::db_identifier(d, &names);
        let status = d.status.clone().unwrap_or_default();
        let holder = steps::holder(&self.name_any());
        let lease = holds::lease_name(&target_name, &holder);
        let held = cached(&ctx.children.holds, ns, &lease).is_some();
        let (restore_identifier, copy_identifier) = if in_place {
            (
                steps::in_place_identifier(&uid),
                steps::in_place_copy_identifier(&uid),
            )
        } else {
            let copy = steps::copy_identifier(&db_identifier, &uid);
            (db_identifier.clone(), copy)
        };
        let mut target = steps::TargetSeen {
            uid: d.uid().unwrap_or_default(),
            ours: target::made_by(d, &uid),
            held,
            ready: crate::conditions::find(&status.conditions, super::READY)
                .is_some_and(|c| c.status == "True"),
            region: d.spec.aws.region.clone(),
            kms_key: status.kms_key_arn.clone(),
            placement: None,
            tags: clinic::clinic_tags(d, aws),
            credentials_secret: None,
            database: d.spec.database.clone(),
            claim: super::deployment::web::WebNames::new(ns, &target_name).claim,
            restore_identifier: restore_identifier.clone(),
            copy_identifier: copy_identifier.clone(),
            in_place: None,
        };
        let made = held || seen.done.iter().any(|d| d == steps::CREATE_TARGET);
        if !in_place && (!target.ours || !made) {
            seen.target = Some(target);
            return Ok(seen);
        }
        let clients = clinic::clients(d, aws).await;
        if let Some(stack) = status.stack.as_ref().map(|s| s.name.clone()) {
            aws.inventory.watch(&clients);
            let (stack, _) = aws
                .inventory
                .view(&clients, &stack, &db_identifier)
                .await
                .map_err(aws_error("reading the target's stack"))?;
            target.placement = stack
                .as_ref()
                .and_then(|s| Placement::from_outputs(&s.outputs));
        }
        seen.instance = clients
            .describe_instance(&restore_identifier)
            .await
            .map_err(aws_error("reading the restored instance"))?;
        if seen.instance.is_none() && target.kms_key.is_some() {
            seen.copy = clients
                .describe_snapshot(&copy_identifier)
                .await
                .map_err(aws_error("reading the snapshot copy"))?;
        }
        if in_place {
            let mut in_place_seen = self
                .in_place_seen(&seen, &clients, d, &db_identifier, &lease)
                .await?;
            in_place_seen.sets_reading = sets_reading(&ctx.caches, ns, &seen.target_name);
            target.in_place = Some(in_place_seen);
        }
        if seen.source.point_in_time.is_some()
            && !seen.done.iter().any(|d| d == steps::REMOVE_STAGING)
            && let Some(clinic) = &source_clinic
        {
            seen.staging = Some(staging_seen(aws, clinic, &uid).await?);
        }
        let secret_name = status
            .credentials_secret_name
            .clone()
            .unwrap_or_else(|| names.credentials_secret.clone());
        // Read once per look: whether it exists, and the password the logins below use.
        let password = match seen.instance {
            Some(_) => read_password(ctx, ns, &secret_name).await?,
            None => None,
        };
        target.credentials_secret = password.as_ref().map(|_| secret_name.clone());
        let reset_done = seen.done.iter().any(|d| d == steps::RESET_DATABASE_USER);
        if !in_place && !reset_done {
            let named = seen
                .target_spec
                .as_ref()
                .and_then(|d| d.spec.web.admin_credentials_secret_ref.as_ref())
                .map(|r| r.name.clone());
            let account = steps::AdminAccount {
                generated: named.is_none(),
                secret: named.unwrap_or_else(|| {
                    super::deployment::web::WebNames::new(ns, &seen.target_name).admin_secret
                }),
            };
            seen.admin = Some(steps::AdminSeen {
                account,
                matches: None,
            });
        }
        let hold_released = seen.done.iter().any(|d| d == steps::RELEASE_HOLD);
        let instance = seen.instance.clone().filter(|db| {
            db.status == "available" && db.master_user_secret_arn.is_some() && db.endpoint.is_some()
        });
        if let (Some(db), Some(password)) = (&instance, &password) {
            if hold_released && target.ready {
                // The checks, as OpenEMR's user with the target's own password.
                let mut session = open_as_openemr(aws, db, &target, password).await;
                let verdict =
                    crate::mysql::checks::run(&self.spec.checks, session.as_mut().map_err(|e| &*e))
                        .await;
                if let Ok(s) = session {
                    s.close().await;
                }
                seen.database_checks = Some(verdict.findings);
            }
            if !reset_done {
                match open_as_openemr(aws, db, &target, password).await {
                    Ok(mut session) => {
                        seen.user_opens = Some(Ok(()));
                        if let Some(admin) = seen.admin.as_mut() {
                            admin.matches =
                                Some(admin_matches(ctx, ns, &admin.account, &mut session).await?);
                        }
                        session.close().await;
                    }
                    Err(e) => seen.user_opens = Some(Err(format!("{}: {e}", e.reason()))),
                }
            }
        }
        if reset_done {
            seen.user_opens = Some(Ok(()));
        }
        if seen.source.documents.is_some() {
            // The set the documents come from: how many files it holds, and its clinic's
            // region, where its bucket is.
            let set = seen
                .source
                .set
                .as_ref()
                .and_then(|name| lookup(&ctx.caches.backups, ns, name))
                .and_then(|s| s.0.as_ref().ok().cloned());
            let region = seen
                .source
                .region
                .clone()
                .or_else(|| {
                    let clinic = &set.as_ref()?.spec.deployment_ref.name;
                    let found = lookup(&ctx.caches.deployments, ns, clinic)?;
                    found.0.as_ref().ok().map(|c| c.spec.aws.region.clone())
                })
                .unwrap_or_else(|| target.region.clone());
            let uid = uid.as_str();
            let job_seen = move |name: String| async move {
                if reset_done {
                    crate::controller::backup::job_seen(ctx, ns, &name, uid).await
                } else {
                    Ok(crate::controller::backup::plan::JobSeen::Absent)
                }
            };
            let job = job_seen(steps::documents_job_name(uid)).await?;
            // Its summary is read only until the step is recorded done.
            let staged = seen.done.iter().any(|d| d == steps::STAGE_DOCUMENTS);
            let stage_job = if in_place && !staged {
                job_seen(steps::stage_job_name(uid)).await?
            } else {
                crate::controller::backup::plan::JobSeen::Absent
            };
            seen.documents_run = Some(steps::DocumentsRun {
                namespace: ns.to_string(),
                image: aws.workload.documents_image.clone(),
                service_account: aws.workload.documents_service_account.clone(),
                backoff_limit: aws.workload.documents_backoff_limit,
                deadline_seconds: aws.workload.documents_deadline.as_secs() as i64,
                region,
                expected_files: set.and_then(|s| s.status?.documents?.file_count),
                job,
                swap_token: in_place.then(|| steps::swap_token(uid)),
                stage_job,
            });
        }
        seen.target = Some(target);
        Ok(seen)
    }

    /// An in-place target as it runs: the instance it ran on when the restore started
    /// (recorded then), the hold's effect, the safety snapshot and the switch.
    async fn in_place_seen(
        &self,
        seen: &steps::Seen,
        clients: &crate::aws::AwsClients,
        clinic: &OpenEMRDeployment,
        db_identifier: &str,
        lease: &str,
    ) -> Result<steps::InPlaceSeen, Error> {
        let uid = self.uid().unwrap_or_default();
        let status = clinic.status.clone().unwrap_or_default();
        let previous_identifier = self
            .status
            .as_ref()
            .and_then(|s| s.previous_db_instance.clone())
            .unwrap_or_else(|| db_identifier.to_string());
        let restored = steps::in_place_identifier(&uid);
        let safety_taken = seen.done.iter().any(|d| d == steps::SAFETY_SNAPSHOT);
        let (previous, safety) = if safety_taken {
            (None, None)
        } else {
            (
                clients
                    .describe_instance(&previous_identifier)
                    .await
                    .map_err(aws_error("reading the clinic's DB instance"))?,
                clients
                    .describe_snapshot(&steps::safety_identifier(&uid))
                    .await
                    .map_err(aws_error("reading the safety snapshot"))?,
            )
        };
        let web = status.web.unwrap_or_default();
        Ok(steps::InPlaceSeen {
            previous_identifier,
            previous,
            quiet: web.holds.iter().any(|h| h.lease == lease && h.effective),
            safety,
            switched: status
                .database_switch
                .as_ref()
                .is_some_and(|s| s.identifier == restored && s.restore_request == self.name_any()),
            serving_restored: status
                .database
                .as_ref()
                .is_some_and(|db| db.identifier == restored),
            sets_reading: Vec::new(),
        })
    }

    /// The active RestoreRequest into the same clinic that goes first, if any: one started
    /// already, else the one made earliest (by name on a tie).
    fn waiting_for(&self, caches: &super::Caches, ns: &str) -> Option<String> {
        let all = caches.restores.state();
        let others = all
            .iter()
            .filter_map(|r| r.0.as_ref().ok())
            .filter(|r| r.namespace().as_deref() == Some(ns));
        self.ahead_of_me(others)
    }

    /// Of `others` (in this namespace), the active one into the same clinic that goes
    /// before this one.
    fn ahead_of_me<'a>(&self, others: impl Iterator<Item = &'a RestoreRequest>) -> Option<String> {
        if self.started() {
            return None;
        }
        let target = self.target_name();
        let me = (
            self.metadata.creation_timestamp.as_ref().map(|t| t.0),
            self.name_any(),
        );
        others
            .filter(|r| r.name_any() != me.1)
            .filter(|r| r.target_name() == target)
            .filter(|r| r.active())
            .filter(|r| {
                let started = r.started();
                let theirs = (
                    r.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    r.name_any(),
                );
                // One made later, or refused, does not hold this one back; one not judged
                // yet does (it is about to be, and this one looks again).
                started || (!r.refused() && theirs < me)
            })
            .map(|r| r.name_any())
            .min()
    }

    /// Whether it still works on its clinic: not ended, or an in-place restore whose
    /// rollback is to come or under way.
    fn active(&self) -> bool {
        let Some(status) = self.status.as_ref() else {
            return true;
        };
        let rolled_back = crate::conditions::find(&status.conditions, kept::ROLLED_BACK);
        match status.phase {
            Some(RestorePhase::Succeeded) => rolled_back.is_some_and(|c| c.reason == "RollingBack"),
            Some(RestorePhase::Failed) => {
                let quiesced = status
                    .steps
                    .iter()
                    .any(|s| s.name == steps::QUIESCE && s.start_time.is_some());
                self.spec.target.in_place.is_some()
                    && quiesced
                    && rolled_back.is_none_or(|c| c.status != "True")
            }
            _ => true,
        }
    }

    /// Whether its `Accepted` condition is false.
    fn refused(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|s| crate::conditions::find(&s.conditions, "Accepted"))
            .is_some_and(|c| c.status == "False")
    }

    /// Name of the side-by-side clinic this request creates.
    pub fn side_by_side_name(&self) -> String {
        self.spec
            .target
            .side_by_side
            .as_ref()
            .and_then(|t| t.deployment_name.clone())
            .unwrap_or_else(|| self.name_any())
    }

    /// How long until a requested point in time that is still in the future has passed.
    fn until_point_in_time(&self, now: Timestamp) -> Option<Duration> {
        let time = self.spec.source.point_in_time.as_ref()?.time.as_ref()?;
        crate::clock::real_wait_until(time.0, now)
    }

    fn validate(&self, observed: &Observed, now: Timestamp) -> Verdict {
        let source = &self.spec.source;
        if observed.source_exists == Some(false) {
            let (field, kind, name) = if let Some(r) = &source.backup_ref {
                ("spec.source.backupRef", "OpenEMRBackup", r.name.as_str())
            } else if let Some(r) = &source.latest_from_policy {
                (
                    "spec.source.latestFromPolicy",
                    "BackupPolicy",
                    r.name.as_str(),
                )
            } else {
                let name = source
                    .point_in_time
                    .as_ref()
                    .map(|p| p.deployment_ref.name.as_str());
                (
                    "spec.source.pointInTime.deploymentRef",
                    "OpenEMRDeployment",
                    name.unwrap_or_default(),
                )
            };
            return Verdict::falsy(
                "Accepted",
                "SourceNotFound",
                format!("{field}: {kind} {name:?} does not exist in this namespace"),
            );
        }
        if let Some(t) = source.point_in_time.as_ref().and_then(|p| p.time.as_ref())
            && t.0 > now
        {
            return Verdict::falsy(
                "Accepted",
                "PointInTimeInFuture",
                format!("spec.source.pointInTime.time {} is in the future", t.0),
            );
        }
        // What only the sets and the clinic can say (not completed, outside the window);
        // a missing source was said above, naming the field.
        if let Some(Err(refusal)) = &observed.resolved
            && refusal.reason != "SourceNotFound"
        {
            return Verdict::falsy("Accepted", refusal.reason, refusal.message.clone());
        }
        if let Some(refusal) = &observed.incompatible {
            return Verdict::falsy("Accepted", refusal.reason, refusal.message.clone());
        }
        if let (Some(Ok(resolved)), Some(t), false) = (
            &observed.resolved,
            &self.spec.target.in_place,
            self.started(),
        ) && resolved.documents.is_none()
        {
            // Its documents would stay, pointing at the replaced database, with no set of
            // their own to roll forward to.
            return Verdict::falsy(
                "Accepted",
                "InPlaceWithoutDocuments",
                format!(
                    "spec.target.inPlace: the source has no documents (a database-only set); an in-place restore replaces clinic {}'s database and documents together. Restore it side by side instead",
                    t.deployment_name
                ),
            );
        }
        if observed.in_place_target_exists == Some(false) {
            let name = self
                .spec
                .target
                .in_place
                .as_ref()
                .map(|t| t.deployment_name.as_str());
            return Verdict::falsy(
                "Accepted",
                "TargetNotFound",
                format!(
                    "spec.target.inPlace.deploymentName: OpenEMRDeployment {:?} does not exist in this namespace",
                    name.unwrap_or_default()
                ),
            );
        }
        if observed.side_by_side_name_taken {
            return Verdict::falsy(
                "Accepted",
                "TargetExists",
                format!(
                    "spec.target.sideBySide.deploymentName: OpenEMRDeployment {:?} already exists; a side-by-side restore never overwrites a clinic (use inPlace for that)",
                    self.side_by_side_name()
                ),
            );
        }
        Verdict::truthy("Accepted", "Valid", "spec is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Condition;
    use crate::conditions;

    fn request(spec: serde_json::Value) -> RestoreRequest {
        RestoreRequest::new("restore-1", serde_json::from_value(spec).unwrap())
    }

    fn now() -> Timestamp {
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    fn accepted(r: &RestoreRequest, observed: Observed) -> Condition {
        let plan = r.plan(&observed, now());
        assert_eq!(plan.status.phase, Some(RestorePhase::Pending));
        conditions::find(&plan.status.conditions, "Accepted")
            .unwrap()
            .clone()
    }

    #[test]
    fn missing_backup_names_the_field() {
        let r = request(serde_json::json!({"source": {"backupRef": {"name": "set-9"}}}));
        let c = accepted(
            &r,
            Observed {
                source_exists: Some(false),
                ..Default::default()
            },
        );
        assert_eq!(c.reason, "SourceNotFound");
        assert!(c.message.contains("spec.source.backupRef"), "{}", c.message);
    }

    /// A finished request stands as it ran: its instant leaving the window (or its set
    /// being pruned) later does not turn it into a refusal.
    #[test]
    fn a_finished_request_is_not_judged_again() {
        let mut r = request(serde_json::json!({"source": {"pointInTime": {
            "deploymentRef": {"name": "clinic-a"}, "time": "2026-11-23T11:00:00Z"}}}));
        let ran = Verdict::truthy("Accepted", "Valid", "spec is valid");
        for phase in [RestorePhase::Succeeded, RestorePhase::Failed] {
            let mut status = RestoreRequestStatus {
                phase: Some(phase),
                ..Default::default()
            };
            status.conditions = conditions::merge(&[], std::slice::from_ref(&ran), None, now());
            r.status = Some(status.clone());
            let outside = Observed {
                source_exists: Some(true),
                resolved: Some(Err(source::Refusal {
                    reason: "PointInTimeOutsideWindow",
                    message: "outside the window".into(),
                })),
                ..Default::default()
            };
            let plan = r.plan(&outside, now());
            assert_eq!(plan.status, status);
            assert!(plan.changes.is_empty());
            assert_eq!(plan.requeue, Requeue::OnChange);
        }
    }

    #[test]
    fn a_failed_restore_warns_one_under_way_does_not() {
        let succeeded = |status: bool, reason: &'static str| {
            let v = Verdict {
                type_: SUCCEEDED,
                status,
                reason,
                message: String::new(),
            };
            conditions::merge(&[], &[v], None, now()).remove(0)
        };
        assert!(RestoreRequest::warns(&succeeded(
            false,
            "VerificationFailed"
        )));
        assert!(!RestoreRequest::warns(&succeeded(false, "InProgress")));
        assert!(!RestoreRequest::warns(&succeeded(true, "Verified")));
    }

    #[test]
    fn a_target_that_cannot_run_the_source_is_refused_before_anything_is_made() {
        let r = request(serde_json::json!({"source": {"backupRef": {"name": "set-9"}}}));
        let c = accepted(
            &r,
            Observed {
                source_exists: Some(true),
                incompatible: Some(source::Refusal {
                    reason: "EngineVersionTooNew",
                    message: "the source's database runs MySQL 8.4.3".into(),
                }),
                ..Default::default()
            },
        );
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "EngineVersionTooNew")
        );
    }

    /// A succeeded side-by-side target with `keepTargetFor` is kept until then, then
    /// removed with its copy; only a clinic this request made, and never before its time.
    #[test]
    fn a_kept_target_is_removed_once_its_time_has_passed() {
        let mut r = request(serde_json::json!({
            "source": {"backupRef": {"name": "set-9"}},
            "target": {"sideBySide": {"deploymentName": "copy-a"}},
            "keepTargetFor": "1h",
        }));
        r.metadata.uid = Some("req-uid".into());
        let verified = |ago: i64| RestoreRequestStatus {
            phase: Some(RestorePhase::Succeeded),
            completion_time: Some(Time(
                Timestamp::from_second(now().as_second() - ago).unwrap(),
            )),
            restored_db_instance: Some("copy-db".into()),
            ..Default::default()
        };
        let ours = KeptTarget {
            exists: true,
            uid: "clinic-uid".into(),
            ours: true,
            deleting: false,
        };
        let seen = |kept: KeptTarget| Observed {
            kept_target: Some(kept),
            progress: Duration::from_secs(30),
            ..Default::default()
        };
        let removed = |plan: &Plan<RestoreRequestStatus, Change>| {
            let c = conditions::find(&plan.status.conditions, TARGET_REMOVED).unwrap();
            (c.status.clone(), c.reason.clone())
        };
        // Verified half an hour ago: kept, looked at again when the hour is up.
        r.status = Some(verified(1800));
        let plan = r.plan(&seen(ours.clone()), now());
        assert!(plan.changes.is_empty());
        assert_eq!(removed(&plan), ("False".into(), "Kept".into()));
        assert_eq!(plan.requeue, Requeue::Exactly(Duration::from_secs(1800)));
        // Two hours ago: removed, with the copy, on condition it is still that clinic.
        r.status = Some(verified(7200));
        let plan = r.plan(&seen(ours.clone()), now());
        match &plan.changes[..] {
            [
                Change::RemoveTarget {
                    clinic,
                    clinic_uid,
                    copy_snapshot,
                },
            ] => {
                assert_eq!(
                    (clinic.as_str(), clinic_uid.as_str()),
                    ("copy-a", "clinic-uid")
                );
                assert_eq!(
                    copy_snapshot.as_deref(),
                    Some(steps::copy_identifier("copy-db", "req-uid").as_str())
                );
            }
            other => panic!("{other:?}"),
        }
        // A clinic of that name this request did not make is never removed.
        let plan = r.plan(
            &seen(KeptTarget {
                ours: false,
                ..ours.clone()
            }),
            now(),
        );
        assert!(plan.changes.is_empty());
        assert_eq!(removed(&plan).1, "NotMadeByThisRequest");
        let plan = r.plan(&seen(KeptTarget::default()), now());
        assert_eq!(removed(&plan), ("True".into(), "Removed".into()));
        // Without keepTargetFor, the target stays.
        r.spec.keep_target_for = None;
        let plan = r.plan(&seen(ours), now());
        assert!(plan.changes.is_empty());
        assert!(conditions::find(&plan.status.conditions, TARGET_REMOVED).is_none());
    }

    #[test]
    fn future_point_in_time_is_refused() {
        let r = request(serde_json::json!({"source": {"pointInTime": {
            "deploymentRef": {"name": "clinic-a"}, "time": "2027-01-01T00:00:00Z"}}}));
        let c = accepted(
            &r,
            Observed {
                source_exists: Some(true),
                ..Default::default()
            },
        );
        assert_eq!(c.reason, "PointInTimeInFuture");
        // Looked at again once the time has passed, not polled meanwhile.
        let plan = r.plan(
            &Observed {
                source_exists: Some(true),
                ..Default::default()
            },
            now(),
        );
        let wait = Duration::from_secs(3600 * (24 * 38 + 12));
        assert_eq!(plan.requeue, Requeue::After(wait));
    }

    #[test]
    fn a_request_names_its_source_and_target() {
        let r = request(serde_json::json!({"source": {"backupRef": {"name": "set-9"}}}));
        assert_eq!(
            r.references(),
            [
                (RefKind::Backup, "set-9".to_string()),
                (RefKind::Deployment, "restore-1".to_string()),
                (RefKind::Workload, "restore-1".to_string()),
                (RefKind::Infrastructure, "restore-1".to_string())
            ]
        );
        let r = request(serde_json::json!({"source": {"pointInTime": {
            "deploymentRef": {"name": "clinic-a"}, "latestRestorable": true}},
            "target": {"inPlace": {"deploymentName": "clinic-a", "confirm": "clinic-a"}}}));
        assert_eq!(
            r.references(),
            [
                (RefKind::Deployment, "clinic-a".to_string()),
                (RefKind::Deployment, "clinic-a".to_string()),
                (RefKind::Workload, "clinic-a".to_string()),
                (RefKind::Infrastructure, "clinic-a".to_string())
            ]
        );
    }

    #[test]
    fn past_point_in_time_is_accepted() {
        let r = request(serde_json::json!({"source": {"pointInTime": {
            "deploymentRef": {"name": "clinic-a"}, "time": "2026-11-23T11:00:00Z"}}}));
        let c = accepted(
            &r,
            Observed {
                source_exists: Some(true),
                ..Default::default()
            },
        );
        assert_eq!(c.status, "True");
    }

    #[test]
    fn taken_side_by_side_name_is_refused() {
        let r = request(
            serde_json::json!({"source": {"latestFromPolicy": {"name": "nightly"}},
            "target": {"sideBySide": {"deploymentName": "clinic-a"}}}),
        );
        assert_eq!(r.side_by_side_name(), "clinic-a");
        let c = accepted(
            &r,
            Observed {
                source_exists: Some(true),
                side_by_side_name_taken: true,
                ..Default::default()
            },
        );
        assert_eq!(c.reason, "TargetExists");
    }

    #[test]
    fn a_source_the_sets_or_the_clinic_refuse_is_not_accepted() {
        let r = request(serde_json::json!({"source": {"pointInTime": {
            "deploymentRef": {"name": "clinic-a"}, "time": "2026-11-23T11:00:00Z"}}}));
        let c = accepted(
            &r,
            Observed {
                source_exists: Some(true),
                resolved: Some(Err(source::Refusal {
                    reason: "PointInTimeOutsideWindow",
                    message: "outside the window".into(),
                })),
                ..Default::default()
            },
        );
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            ("False", "PointInTimeOutsideWindow", "outside the window")
        );
    }

    #[test]
    fn a_set_is_kept_for_a_restore_until_the_restore_succeeded() {
        let mut r =
            request(serde_json::json!({"source": {"latestFromPolicy": {"name": "nightly"}}}));
        assert!(!r.uses_set("set-1"), "not resolved yet");
        r.status = Some(RestoreRequestStatus {
            phase: Some(RestorePhase::Running),
            source_backup: Some("set-1".into()),
            ..Default::default()
        });
        assert!(r.uses_set("set-1"));
        assert!(!r.uses_set("set-2"));
        r.status.as_mut().unwrap().phase = Some(RestorePhase::Failed);
        assert!(r.uses_set("set-1"), "a failed restore may be tried again");
        r.status.as_mut().unwrap().phase = Some(RestorePhase::Succeeded);
        assert!(
            !r.uses_set("set-1"),
            "restored: the set is retention's again"
        );
        let named = request(serde_json::json!({"source": {"backupRef": {"name": "set-3"}}}));
        assert!(named.uses_set("set-3"), "named, before it starts");
    }

    #[test]
    fn an_in_place_restore_of_a_database_only_set_is_refused() {
        let r = request(
            serde_json::json!({"source": {"backupRef": {"name": "set-1"}},
            "target": {"inPlace": {"deploymentName": "clinic-a", "confirm": "clinic-a"}}}),
        );
        let resolved = source::Resolved {
            set: Some("set-1".into()),
            snapshot_arn: Some("arn:aws:rds:us-east-1:1:snapshot:set-1".into()),
            point_in_time: None,
            data_time: None,
            documents: None,
            documents_behind_seconds: None,
            region: None,
            engine_version: None,
            image: None,
        };
        let c = accepted(
            &r,
            Observed {
                source_exists: Some(true),
                in_place_target_exists: Some(true),
                resolved: Some(Ok(resolved)),
                ..Default::default()
            },
        );
        assert_eq!(c.reason, "InPlaceWithoutDocuments");
        assert!(c.message.contains("spec.target.inPlace"), "{}", c.message);
    }

    /// One restore at a time per clinic: the one started goes on, else the one made
    /// first; the others wait, saying behind which, and look again.
    #[test]
    fn a_second_restore_into_the_same_clinic_waits_for_the_first() {
        let in_place = |name: &str, created: &str| {
            let mut r = request(
                serde_json::json!({"source": {"latestFromPolicy": {"name": "nightly"}},
                "target": {"inPlace": {"deploymentName": "clinic-a", "confirm": "clinic-a"}}}),
            );
            r.metadata.name = Some(name.into());
            r.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
            r.status = Some(RestoreRequestStatus {
                conditions: vec![Condition {
                    type_: "Accepted".into(),
                    status: "True".into(),
                    reason: "Valid".into(),
                    message: String::new(),
                    last_transition_time: Time(now()),
                    observed_generation: None,
                }],
                ..Default::default()
            });
            r
        };
        let first = in_place("first", "2026-11-23T10:00:00Z");
        let second = in_place("second", "2026-11-23T11:00:00Z");
        let mut side = request(serde_json::json!({"source": {"backupRef": {"name": "s"}},
            "target": {"sideBySide": {"deploymentName": "clinic-a"}}}));
        side.metadata.name = Some("copy".into());
        assert_eq!(
            second.ahead_of_me([&first].into_iter()),
            Some("first".into())
        );
        assert_eq!(first.ahead_of_me([&second].into_iter()), None);
        // A side-by-side restore whose new clinic would have that name is one too.
        side.metadata.creation_timestamp = Some(Time("2026-11-23T12:00:00Z".parse().unwrap()));
        assert_eq!(side.ahead_of_me([&first].into_iter()), Some("first".into()));

        // Started first: it goes on whatever the age of the others.
        let mut late = in_place("late", "2026-11-23T12:00:00Z");
        late.status.as_mut().unwrap().start_time = Some(Time(now()));
        assert_eq!(first.ahead_of_me([&late].into_iter()), Some("late".into()));
        assert_eq!(late.ahead_of_me([&first].into_iter()), None);
        // Ended: nothing to wait for.
        late.status.as_mut().unwrap().phase = Some(RestorePhase::Failed);
        assert_eq!(first.ahead_of_me([&late].into_iter()), None);
        // Older but refused: nothing to wait for; older and not judged yet: waited for.
        let mut refused = in_place("refused", "2026-11-23T09:00:00Z");
        refused.status.as_mut().unwrap().conditions[0].status = "False".into();
        assert_eq!(first.ahead_of_me([&refused].into_iter()), None);
        refused.status = None;
        assert_eq!(
            first.ahead_of_me([&refused].into_iter()),
            Some("refused".into())
        );

        let plan = second.plan(
            &Observed {
                source_exists: Some(true),
                in_place_target_exists: Some(true),
                waiting_for: Some("first".into()),
                progress: Duration::from_secs(30),
                ..Default::default()
            },
            now(),
        );
        assert_eq!(plan.status.phase, Some(RestorePhase::Waiting));
        assert_eq!(plan.status.waiting_for.as_deref(), Some("first"));
        let started = conditions::find(&plan.status.conditions, STARTED).unwrap();
        assert_eq!(
            (started.status.as_str(), started.reason.as_str()),
            ("False", "Waiting")
        );
        assert!(
            started.message.contains("RestoreRequest first"),
            "{}",
            started.message
        );
        assert!(plan.changes.is_empty());
        assert!(matches!(plan.requeue, Requeue::After(d) if d == Duration::from_secs(30)));
    }

    #[test]
    fn missing_in_place_target_is_refused() {
        let r = request(
            serde_json::json!({"source": {"latestFromPolicy": {"name": "nightly"}},
            "target": {"inPlace": {"deploymentName": "clinic-a", "confirm": "clinic-a"}}}),
        );
        let c = accepted(
            &r,
            Observed {
                source_exists: Some(true),
                in_place_target_exists: Some(false),
                ..Default::default()
            },
        );
        assert_eq!(c.reason, "TargetNotFound");
    }
}
