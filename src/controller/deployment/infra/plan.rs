//! The clinic's infrastructure plan: a pure function of the spec, what AWS and the cluster
//! showed, and the time, giving the conditions and status fields to write and the changes
//! to make. No I/O; the tables in the tests are the specification.
//!
//! Order: the credentials Secret and the stack first (the stack's outputs — key, subnet
//! group, security group, parameter group — are what the database is created with), then
//! the database. Nothing here ever deletes: replacing a rolled-back stack and deletion
//! belong to explicit paths.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::adoption::{
    ADOPTED, adoption_reported, adoption_verdict, approval_verdict, awaiting_approval,
    bucket_claim, bucket_differences,
};
use super::database::{self, Difference, Placement};
use super::rds_states::{self, Reboot, StorageFull};
use super::template::{self, RenderedStack, StackInputs};
use super::{AdoptedBucket, Infra, InfraChange, InfraPlan, MasterSource};
use crate::api::deployment::{DatabaseStatus, StackStatus};
use crate::api::{OpenEMRDeployment, OpenEMRDeploymentStatus};
use crate::aws::cloudformation::{StackFailure, StackInfo, StackRequest, StackState};
use crate::aws::rds::{DbInstance, ModifyDb};
use crate::conditions::Verdict;
use crate::controller::deployment::clinic::{RESTORED_BY, db_identifier, restored_by, switched_to};

/// The tags to put on the DB instance (the clinic's, `spec.tags` among them, where the
/// instance lacks them or has other values) and the keys to remove: those of `spec.tags`
/// the operator put there (`applied`) that the spec no longer names. Tags others put on the
/// instance are never removed.
fn retag(
    wanted: &BTreeMap<String, String>,
    spec_tags: &BTreeMap<String, String>,
    actual: &BTreeMap<String, String>,
    applied: &[String],
) -> (BTreeMap<String, String>, Vec<String>) {
    let add = wanted
        .iter()
        .filter(|(k, v)| actual.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let remove = applied
        .iter()
        .filter(|k| !spec_tags.contains_key(*k) && !wanted.contains_key(*k))
        .filter(|k| actual.contains_key(*k))
        .cloned()
        .collect();
    (add, remove)
}

/// RDS states in which the database serves.
fn serving(status: &str) -> bool {
    matches!(
        status,
        "available"
            | "backing-up"
            | "modifying"
            | "storage-optimization"
            | "configuring-enhanced-monitoring"
            | "configuring-log-exports"
            | "upgrading"
            | "maintenance"
            | "renaming"
            | "resetting-master-credentials"
    )
}

/// How long `lastAwsSyncTime` may stand still while nothing else in the status changes:
/// refreshing it on every look would rewrite every clinic's status on every resync.
const SYNC_TIME_REFRESH: Duration = Duration::from_secs(3600);

/// A CloudFormation idempotency token: the object, its generation and the template, so a
/// repeat of the same request is one operation, and a new template is a new request.
fn stack_token(kind: &str, uid: &str, generation: i64, hash: &str) -> String {
    let uid: String = uid.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    format!(
        "oe-{kind}-{uid}-g{generation}-{}",
        &hash[..hash.len().min(12)]
    )
}

/// Plans the clinic's AWS infrastructure from what was observed.
pub fn plan_infrastructure(
    d: &OpenEMRDeployment,
    infra: &Infra,
    previous: &OpenEMRDeploymentStatus,
    ownership_notes: &[String],
    now: Timestamp,
) -> InfraPlan {
    let spec = &d.spec;
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or_default();
    let names = &infra.names;
    let mut changes = Vec::new();
    let mut in_progress = false;
    let mut leftovers_recheck = None;
    let mut status = previous.clone();

    // Credentials: the user's Secret, or one generated once.
    let user_secret = spec
        .database
        .credentials_secret_ref
        .as_ref()
        .map(|r| r.name.clone());
    status.credentials_secret_name = Some(
        user_secret
            .clone()
            .unwrap_or_else(|| names.credentials_secret.clone()),
    );
    // Made once, before the database: once the database exists, a new random password
    // would name a user that already has another one. A lost Secret is reported instead.
    // (An adopted instance came with its own users: the generated Secret is made for it as
    // before, since OpenEMR's installer never runs on it.)
    let adopted = spec
        .adopt
        .as_ref()
        .is_some_and(|a| a.db_instance_identifier.is_some());
    let missing = user_secret.is_none() && !infra.credentials_secret;
    let credentials_lost = missing && infra.database.is_some() && !adopted;
    if missing && !credentials_lost {
        changes.push(InfraChange::CreateCredentialsSecret {
            name: names.credentials_secret.clone(),
            username: spec.database.username.clone(),
            database: spec.database.database_name.clone(),
        });
    }

    // Audit: decides whether the stack keeps a trail of its own, and whether a new stack
    // waits for the account's shared trail.
    let stack_exists = infra
        .stack
        .as_ref()
        .is_some_and(|s| s.state() != StackState::Deleted);
    let audit = super::audit::decide(
        &infra.audit,
        stack_exists,
        infra
            .stack
            .as_ref()
            .and_then(|s| s.outputs.get(template::OUT_BUCKET))
            .map(String::as_str),
        previous,
    );
    status.audit = Some(audit.status.clone());

    // The stack.
    let RenderedStack { body, hash } = template::render(&StackInputs {
        names,
        tags: &infra.tags,
        spec,
        clinic_trail: audit.clinic_trail,
    });
    let request = |kind: &str| StackRequest {
        name: names.stack.clone(),
        body: body.clone(),
        token: stack_token(kind, &uid, generation, &hash),
        tags: infra.tags.clone(),
    };
    // The last update sent (its token names the generation and template), to tell a
    // rolled-back update of this template from one of an earlier.
    let previous_update = previous.stack.as_ref().and_then(|s| s.last_update.clone());
    let update_token = stack_token("update", &uid, generation, &hash);
    let mut sent_update = None;
    let stack_verdict = match &infra.stack {
        _ if audit.hold_creation => {
            in_progress = true;
            Verdict::falsy(
                "StackReady",
                "WaitingForAuditTrail",
                format!(
                    "stack {} is created once the account's shared audit trail is ready: {}",
                    names.stack, audit.verdict.message
                ),
            )
        }
        None => {
            changes.push(InfraChange::CreateStack(request("create")));
            in_progress = true;
            Verdict::falsy(
                "StackReady",
                "StackCreating",
                format!("creating stack {}", names.stack),
            )
        }
        Some(stack) => match stack.state() {
            StackState::Deleted => {
                changes.push(InfraChange::CreateStack(request("create")));
                in_progress = true;
                Verdict::falsy(
                    "StackReady",
                    "StackCreating",
                    format!("creating stack {}", names.stack),
                )
            }
            StackState::InProgress => {
                in_progress = true;
                Verdict::falsy(
                    "StackReady",
                    if stack.status.starts_with("CREATE") {
                        "StackCreating"
                    } else {
                        "StackUpdating"
                    },
                    format!("stack {} is {}", names.stack, stack.status),
                )
            }
            StackState::RolledBack => {
                let leftovers = super::leftovers::decide(
                    &infra.leftovers,
                    &infra.tags,
                    infra.database.as_ref().map(|db| db.identifier.as_str()),
                );
                let replace = failed_in_an_earlier_generation(previous, generation)
                    || replacement_blocked(previous);
                match leftovers.blocking {
                    Some(blocking) if replace => {
                        leftovers_recheck = Some(LEFTOVERS_RECHECK);
                        Verdict::falsy("StackReady", STACK_REPLACEMENT_BLOCKED, blocking)
                    }
                    _ if replace => {
                        changes.push(InfraChange::DeleteFailedStack {
                            name: names.stack.clone(),
                            token: stack_token("delete", &uid, generation, &hash),
                            remove: leftovers.remove,
                            kept: leftovers.kept,
                        });
                        in_progress = true;
                        Verdict::falsy(
                            "StackReady",
                            "StackReplacing",
                            format!(
                                "stack {} rolled back in an earlier generation; replacing it",
                                names.stack
                            ),
                        )
                    }
                    blocking => {
                        let mut message =
                            failure_message(&names.stack, stack, infra.stack_failure.as_ref());
                        if let Some(blocking) = blocking {
                            message = format!("{message}; {blocking}");
                        }
                        Verdict::falsy("StackReady", STACK_FAILED, message)
                    }
                }
            }
            StackState::Failed => Verdict::falsy(
                "StackReady",
                STACK_FAILED,
                failure_message(&names.stack, stack, infra.stack_failure.as_ref()),
            ),
            StackState::Stable => {
                if stack.outputs.get(template::OUT_TEMPLATE_HASH) == Some(&hash) {
                    Verdict::truthy(
                        "StackReady",
                        "StackReady",
                        format!("stack {} is {}", names.stack, stack.status),
                    )
                } else if stack.status == "UPDATE_ROLLBACK_COMPLETE"
                    && previous_update.as_deref() == Some(update_token.as_str())
                {
                    // This very template was sent and rolled back: sending it again would
                    // fail again, every progress interval. A new generation tries anew.
                    let cause = failure_cause(stack, infra.stack_failure.as_ref());
                    Verdict::falsy(
                        "StackReady",
                        STACK_UPDATE_FAILED,
                        format!(
                            "the update of stack {} to generation {generation}'s template rolled back: {cause}; the stack serves the previous template; fix the cause and change the spec to try again",
                            names.stack
                        ),
                    )
                } else {
                    changes.push(InfraChange::UpdateStack(request("update")));
                    sent_update = Some(update_token.clone());
                    in_progress = true;
                    Verdict::falsy(
                        "StackReady",
                        "StackUpdating",
                        format!("updating stack {} to the current template", names.stack),
                    )
                }
            }
        },
    };
    status.stack = Some(StackStatus {
        name: names.stack.clone(),
        id: infra.stack.as_ref().map(|s| s.id.clone()),
        status: infra.stack.as_ref().map(|s| s.status.clone()),
        last_update: sent_update.or(previous_update),
    });
    // Outputs of a stack whose creation never completed name what its rollback deleted or
    // retained: nothing is built on them (no database on a retained key).
    let outputs = infra
        .stack
        .as_ref()
        .filter(|s| {
            !matches!(s.state(), StackState::RolledBack | StackState::Deleted)
                && !matches!(s.status.as_str(), "CREATE_IN_PROGRESS" | "CREATE_FAILED")
                && !s.status.starts_with("ROLLBACK_")
        })
        .map(|s| &s.outputs);
    let output = |key: &str| {
        outputs
            .and_then(|o| o.get(key))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    status.bucket_name = output(template::OUT_BUCKET);
    status.kms_key_arn = output(template::OUT_KMS_KEY_ARN);
    status.file_system_id = output(template::OUT_FILE_SYSTEM_ID);
    status.redis_endpoint = match (
        output(template::OUT_REDIS_ADDRESS),
        output(template::OUT_REDIS_PORT),
    ) {
        (Some(host), Some(port)) => Some(format!("{host}:{port}")),
        _ => None,
    };
    let placement = outputs.and_then(Placement::from_outputs);

    // The database.
    // Adopted resources: their differences are reported (condition and Event) in a pass
    // that changes neither of them; later passes correct them.
    let reporting = spec.adopt.is_some() && !adoption_reported(previous);
    let mut db_report = None;
    let mut approval = None;
    let approved = spec
        .adopt
        .as_ref()
        .map(|a| a.approved_changes.clone())
        .unwrap_or_default();
    let adopted = spec
        .adopt
        .as_ref()
        .and_then(|a| a.db_instance_identifier.clone());
    let identifier = db_identifier(d, names);
    let previous_tag_keys = previous
        .database
        .as_ref()
        .map(|db| db.tag_keys.clone())
        .unwrap_or_default();
    let mut tag_keys = previous_tag_keys.clone();
    let mut reboot_note: Option<String> = None;
    let mut reboot_recheck: Option<Duration> = None;
    let awaiting_restore = restored_by(d);
    let database_verdict = match (&infra.database, &placement) {
        _ if credentials_lost => Verdict::falsy(
            "DatabaseReady",
            "CredentialsSecretMissing",
            format!(
                "Secret {} with the database's credentials is gone, and the database exists: \
                 a new password would not match the one its OpenEMR user has, so none is made. \
                 Recreate the Secret (keys username, password, database) from a backup of it, \
                 or name a Secret holding the current password in \
                 spec.database.credentialsSecretRef",
                names.credentials_secret
            ),
        ),
        (None, _) if adopted.is_some() => Verdict::falsy(
            "DatabaseReady",
            "AdoptedDatabaseNotFound",
            format!(
                "spec.adopt.dbInstanceIdentifier names {identifier:?}, which does not exist in {}; it is never created in its place",
                spec.aws.region
            ),
        ),
        (None, _) if switched_to(d).is_some() => Verdict::falsy(
            "DatabaseReady",
            "SwitchedDatabaseNotFound",
            format!(
                "status.databaseSwitch names DB instance {identifier:?} (switched to by RestoreRequest {}), which does not exist in {}; it is never created in its place",
                previous
                    .database_switch
                    .as_ref()
                    .map_or("", |s| s.restore_request.as_str()),
                spec.aws.region
            ),
        ),
        (None, _) if previously_created(previous) => Verdict::falsy(
            "DatabaseReady",
            "DatabaseMissing",
            format!(
                "DB instance {identifier} existed and is gone; the operator does not create an empty database in its place: restore it with a RestoreRequest, or delete and recreate this clinic for a new one"
            ),
        ),
        (None, Some(_)) if awaiting_restore.is_some() => {
            in_progress = true;
            Verdict::falsy(
                "DatabaseReady",
                "WaitingForRestore",
                format!(
                    "the database comes from RestoreRequest {}, which restores it as DB instance {identifier}; this clinic creates none (remove the annotation {RESTORED_BY} to give up on the restore and create an empty one)",
                    awaiting_restore.unwrap_or_default()
                ),
            )
        }
        (None, None) => Verdict::falsy(
            "DatabaseReady",
            "WaitingForStack",
            "the database is created once the stack's key, subnet group, security group and parameter group exist",
        ),
        (None, Some(placement)) => {
            let master = match &user_secret {
                Some(name) if infra.user_master_password => MasterSource::UserSecret(name.clone()),
                _ => MasterSource::ManagedByRds,
            };
            let request = database::create_request(
                &identifier,
                &spec.database,
                placement,
                &infra.tags,
                crate::aws::rds::MasterPassword::ManagedByRds,
            );
            changes.push(InfraChange::CreateDatabase {
                request: Box::new(request),
                master,
            });
            in_progress = true;
            Verdict::falsy(
                "DatabaseReady",
                "DatabaseCreating",
                format!("creating DB instance {identifier}"),
            )
        }
        (Some(db), placement) => {
            // States that need the operator, not time.
            let state_verdict = if reporting {
                None
            } else {
                act_on_state(
                    &identifier,
                    spec,
                    db,
                    placement.as_ref(),
                    adopted.is_some(),
                    infra.refused.as_ref(),
                    &mut changes,
                )
            };
            if state_verdict.is_some() {
                in_progress = true;
            }
            if let Some(placement) = placement.as_ref().filter(|_| serving(&db.status)) {
                let mut diffs = database::differences(&spec.database, placement, db);
                // What RDS refused for this generation is not sent again; the rest is.
                if let Some(refused) = &infra.refused {
                    diffs.retain(|d| !refused.fields.iter().any(|f| f == d.field));
                }
                // An adopted instance keeps what RDS changes with an outage until the
                // manifest approves it.
                let (diffs, awaiting) = if adopted.is_some() {
                    awaiting_approval(diffs, db, &approved)
                } else {
                    (diffs, Vec::new())
                };
                // An adopted instance's differences are reported (condition and Event)
                // in a pass that changes nothing; the next pass corrects them.
                if reporting {
                    if adopted.is_some() {
                        let unchangeable = database::unchangeable_differences(placement, db);
                        db_report = Some((diffs, awaiting, unchangeable));
                    }
                } else {
                    if adopted.is_some() {
                        approval = approval_verdict(&identifier, &awaiting, previous);
                    }
                    if let Some((request, differences)) =
                        database::modification(&identifier, &spec.database, placement, db, &diffs)
                    {
                        changes.push(InfraChange::ModifyDatabase {
                            request,
                            differences,
                        });
                        in_progress = true;
                    } else {
                        // A parameter change waiting for a restart; an adopted instance is
                        // never restarted by the operator, only told about.
                        match rds_states::reboot(&spec.database, db, now) {
                            Reboot::Now { why } if adopted.is_none() => {
                                changes.push(InfraChange::RebootDatabase {
                                    identifier: identifier.clone(),
                                    why,
                                });
                                in_progress = true;
                            }
                            Reboot::Now { .. } => {
                                reboot_note = Some(
                                    "; a parameter change waits for a reboot, which the operator never makes on an adopted instance".to_string(),
                                );
                            }
                            Reboot::InWindow { window, opens_in } => {
                                reboot_note = Some(format!(
                                    "; a parameter change waits for a reboot, made in the maintenance window {window}"
                                ));
                                reboot_recheck = Some(opens_in.max(Duration::from_secs(1)));
                            }
                            Reboot::NotNeeded => {}
                        }
                    }
                }
            }
            if serving(&db.status) && !reporting {
                let (add, remove) = retag(&infra.tags, &spec.tags, &db.tags, &previous_tag_keys);
                // The keys of spec.tags the operator put there: those it added before and
                // still wants, and those it adds now. A key the instance already had with
                // the spec's value was someone else's and stays theirs.
                tag_keys = previous_tag_keys
                    .iter()
                    .filter(|k| spec.tags.contains_key(*k))
                    .chain(add.keys().filter(|k| spec.tags.contains_key(*k)))
                    .cloned()
                    .collect();
                if let (Some(arn), false) = (&db.arn, add.is_empty() && remove.is_empty()) {
                    // Until the instance shows them gone, the dropped keys are still to remove.
                    tag_keys.extend(remove.iter().cloned());
                    changes.push(InfraChange::TagDatabase {
                        identifier: identifier.clone(),
                        arn: arn.clone(),
                        add,
                        remove,
                    });
                    // Read again, not from the inventory, to see the tags took.
                    in_progress = true;
                }
                tag_keys.sort();
                tag_keys.dedup();
            }
            if serving(&db.status) {
                let refused = infra.refused.as_ref().map(|r| {
                    format!(
                        "; RDS refused the change of {}: {}; it is not sent again until the spec changes",
                        r.fields.join(", "),
                        r.message
                    )
                });
                Verdict::truthy(
                    "DatabaseReady",
                    if refused.is_some() {
                        "DatabaseChangeRefused"
                    } else {
                        "DatabaseAvailable"
                    },
                    format!(
                        "DB instance {identifier} is {}{}{}",
                        db.status,
                        reboot_note.as_deref().unwrap_or_default(),
                        refused.as_deref().unwrap_or_default()
                    ),
                )
            } else if let Some(verdict) = state_verdict {
                verdict
            } else {
                in_progress = true;
                Verdict::falsy(
                    "DatabaseReady",
                    if db.status == "creating" {
                        "DatabaseCreating"
                    } else {
                        "DatabaseNotAvailable"
                    },
                    format!("DB instance {identifier} is {}", db.status),
                )
            }
        }
    };
    status.database = Some(match &infra.database {
        Some(db) => DatabaseStatus {
            identifier: identifier.clone(),
            arn: db.arn.clone(),
            endpoint: db
                .endpoint
                .as_ref()
                .map(|(host, port)| format!("{host}:{port}")),
            status: Some(db.status.clone()),
            latest_restorable_time: db
                .latest_restorable_time
                .and_then(|t| Timestamp::try_from(t).ok())
                .map(Time),
            earliest_restorable_time: previous
                .database
                .as_ref()
                .and_then(|p| p.earliest_restorable_time.clone()),
            tag_keys,
        },
        None => DatabaseStatus {
            identifier: identifier.clone(),
            tag_keys,
            ..DatabaseStatus::default()
        },
    });

    let mut adoption = None;
    let bucket_diffs = match &infra.adopted_bucket {
        AdoptedBucket::Seen(settings) => {
            let mut diffs = bucket_differences(settings, status.kms_key_arn.as_deref());
            diffs.extend(bucket_claim(settings, &infra.tags));
            diffs
        }
        _ => Vec::new(),
    };
    let adopted_bucket = spec.adopt.as_ref().and_then(|a| a.bucket_name.clone());
    if let Some(bucket) = &adopted_bucket
        && infra.adopted_bucket == AdoptedBucket::Missing
    {
        adoption = Some(Verdict::falsy(
            ADOPTED,
            "AdoptedBucketNotFound",
            format!(
                "spec.adopt.bucketName names {bucket:?}, which does not exist or is not this account's; it is never created in its place"
            ),
        ));
    }
    if reporting && adoption.is_none() {
        let db_ready = adopted.is_none() || db_report.is_some();
        let bucket_ready = adopted_bucket.is_none()
            || (matches!(infra.adopted_bucket, AdoptedBucket::Seen(_))
                && status.kms_key_arn.is_some());
        in_progress = true;
        if db_ready && bucket_ready {
            let (fixable, awaiting, unchangeable) = db_report.unwrap_or_default();
            adoption = Some(adoption_verdict(
                ownership_notes,
                adopted.as_deref(),
                &fixable,
                &awaiting,
                &unchangeable,
                adopted_bucket.as_deref().map(|b| (b, &bucket_diffs[..])),
            ));
        }
    } else if let (Some(bucket), Some(key), false) = (
        &adopted_bucket,
        &status.kms_key_arn,
        bucket_diffs.is_empty(),
    ) {
        changes.push(InfraChange::SecureAdoptedBucket {
            bucket: bucket.clone(),
            kms_key_arn: key.clone(),
            differences: bucket_diffs.clone(),
        });
        in_progress = true;
    }

    let waiting: Vec<&'static str> = [
        (stack_verdict.status, "stack"),
        (database_verdict.status, "database"),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, what)| what)
    .collect();
    let failed = [STACK_FAILED, STACK_REPLACEMENT_BLOCKED].contains(&stack_verdict.reason);

    // The latest restorable time moves every few minutes on its own; alone, it is written
    // with the sync time, not on every look.
    let restorable_only = match (&mut status.database, &previous.database) {
        (Some(now_db), Some(before)) => {
            let mut same = now_db.clone();
            same.latest_restorable_time = before.latest_restorable_time.clone();
            same == *before
        }
        _ => false,
    };
    // The sync time moves with what AWS told, or after an hour of the same answer.
    let aws_changed = status.stack != previous.stack
        || (status.database != previous.database && !restorable_only)
        || status.bucket_name != previous.bucket_name
        || status.kms_key_arn != previous.kms_key_arn
        || status.file_system_id != previous.file_system_id
        || status.redis_endpoint != previous.redis_endpoint;
    let stale = previous
        .last_aws_sync_time
        .as_ref()
        .is_none_or(|t| now.duration_since(t.0).unsigned_abs() >= SYNC_TIME_REFRESH);
    if aws_changed || stale {
        status.last_aws_sync_time = Some(Time(now));
    } else if restorable_only {
        status.database = previous.database.clone();
    }

    let mut verdicts = vec![stack_verdict, database_verdict];
    verdicts.extend(adoption.or(approval));
    let recheck_after = audit
        .waits_for_shared_trail
        .then_some(infra.progress_interval)
        .into_iter()
        .chain(reboot_recheck)
        .chain(leftovers_recheck)
        .min();
    verdicts.push(audit.verdict);
    InfraPlan {
        verdicts,
        status,
        changes,
        in_progress,
        waiting,
        failed,
        recheck_after,
    }
}

/// A `storage-full` or `incompatible-parameters` instance: the change that gets it serving
/// again (pushed to `changes`) and the condition that says so; `None` for other states.
fn act_on_state(
    identifier: &str,
    spec: &crate::api::OpenEMRDeploymentSpec,
    db: &DbInstance,
    placement: Option<&Placement>,
    adopted: bool,
    refused: Option<&super::refusals::Refusal>,
    changes: &mut Vec<InfraChange>,
) -> Option<Verdict> {
    // What RDS refused: not sent again, except a full instance's growth after a while.
    let held = |field: &str, retry_after: Option<Duration>| {
        refused.filter(|r| {
            r.fields.iter().any(|f| f == field) && retry_after.is_none_or(|after| r.age < after)
        })
    };
    let modify = |request: ModifyDb, field: &'static str, from: String, to: String| {
        InfraChange::ModifyDatabase {
            request,
            differences: vec![Difference {
                field,
                from,
                to,
                disruptive: false,
            }],
        }
    };
    match db.status.as_str() {
        "storage-full" => {
            let current = db.allocated_storage;
            let message = match rds_states::storage_full(&spec.database, db) {
                StorageFull::Grow(to) => match held(
                    "allocatedStorageGiB",
                    Some(super::refusals::STORAGE_FULL_RETRY),
                ) {
                    Some(r) => format!(
                        "DB instance {identifier} is storage-full: RDS refused growing it to {to} GiB ({}); tried again within the hour",
                        r.message
                    ),
                    None => {
                        changes.push(modify(
                            ModifyDb {
                                identifier: identifier.to_string(),
                                apply_immediately: true,
                                allocated_storage: Some(to),
                                ..ModifyDb::default()
                            },
                            "allocatedStorageGiB",
                            current.to_string(),
                            format!("{to} (the instance is storage-full)"),
                        ));
                        format!(
                            "DB instance {identifier} is storage-full: growing its storage from {current} to {to} GiB now"
                        )
                    }
                },
                StorageFull::Pending(to) => format!(
                    "DB instance {identifier} is storage-full: its storage is growing from {current} to {to} GiB"
                ),
                StorageFull::AtCeiling(ceiling) => format!(
                    "DB instance {identifier} is storage-full at {current} GiB, and the ceiling of {ceiling} GiB (spec.database.maxAllocatedStorageGiB, or RDS's limit) leaves no room for RDS's least step (+10 %): raise spec.database.maxAllocatedStorageGiB, or free space"
                ),
            };
            Some(Verdict::falsy(
                "DatabaseReady",
                "DatabaseStorageFull",
                message,
            ))
        }
        "incompatible-parameters" => {
            let message = match placement {
                Some(p)
                    if !adopted
                        && db.parameter_groups != [p.parameter_group.clone()]
                        && held("parameterGroup", None).is_none() =>
                {
                    changes.push(modify(
                        ModifyDb {
                            identifier: identifier.to_string(),
                            apply_immediately: true,
                            parameter_group: Some(p.parameter_group.clone()),
                            ..ModifyDb::default()
                        },
                        "parameterGroup",
                        db.parameter_groups.join(","),
                        p.parameter_group.clone(),
                    ));
                    format!(
                        "DB instance {identifier} is incompatible-parameters: switching it to the clinic's parameter group {}",
                        p.parameter_group
                    )
                }
                _ => format!(
                    "DB instance {identifier} is incompatible-parameters with its parameter group {}: its values do not fit the instance (e.g. memory settings for its class); correct them, or choose a class they fit",
                    db.parameter_groups.join(",")
                ),
            };
            Some(Verdict::falsy(
                "DatabaseReady",
                "DatabaseIncompatibleParameters",
                message,
            ))
        }
        _ => None,
    }
}

const STACK_FAILED: &str = "StackFailed";
/// `StackReady` reason: this generation's stack update rolled back.
pub const STACK_UPDATE_FAILED: &str = "StackUpdateFailed";
/// `StackReady` reason: a rolled-back stack waits to be replaced until what its creation
/// retained and holds data is cleared by a person.
pub const STACK_REPLACEMENT_BLOCKED: &str = "StackReplacementBlocked";
/// How soon a blocked replacement looks at the leftovers again.
const LEFTOVERS_RECHECK: std::time::Duration = std::time::Duration::from_secs(300);

/// The database was seen (status holds its ARN): if it is gone now, someone deleted it.
fn previously_created(previous: &OpenEMRDeploymentStatus) -> bool {
    previous
        .database
        .as_ref()
        .is_some_and(|db| db.arn.is_some())
}

/// A rolled-back stack is replaced only once the spec changed after the failure was
/// reported: the same spec would fail the same way.
fn failed_in_an_earlier_generation(previous: &OpenEMRDeploymentStatus, generation: i64) -> bool {
    crate::conditions::find(&previous.conditions, "StackReady").is_some_and(|c| {
        c.reason == STACK_FAILED && c.observed_generation.is_some_and(|g| g < generation)
    })
}

/// A replacement waited for a person to clear what the failed creation retained: looked at
/// again without a new generation.
fn replacement_blocked(previous: &OpenEMRDeploymentStatus) -> bool {
    crate::conditions::find(&previous.conditions, "StackReady")
        .is_some_and(|c| c.reason == STACK_REPLACEMENT_BLOCKED)
}

/// What failed in the stack: the first failed resource from its events, else its reason.
fn failure_cause(stack: &StackInfo, failure: Option<&StackFailure>) -> String {
    match failure {
        Some(f) => format!(
            "{} ({}) failed: {}",
            f.logical_id, f.resource_type, f.reason
        ),
        None => stack
            .status_reason
            .clone()
            .unwrap_or_else(|| "no reason given".into()),
    }
}

fn failure_message(stack_name: &str, stack: &StackInfo, failure: Option<&StackFailure>) -> String {
    let cause = failure_cause(stack, failure);
    let next = if stack.state() == StackState::RolledBack {
        "fix the cause; the stack is replaced on the next change of the spec"
    } else {
        "it needs a person (see the stack's events in CloudFormation)"
    };
    format!("stack {stack_name} is {}: {cause}; {next}", stack.status)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::OpenEMRDeploymentSpec;
    use crate::api::deployment::DeploymentPhase;
    use crate::aws::cloudformation::RetainedResource;
    use crate::aws::rds::DbInstance;
    use crate::aws::teardown::RetainedFacts;
    use crate::controller::deployment::clinic::{self, ClinicNames, ClusterId};
    use crate::controller::deployment::infra::leftovers::{Leftover, Removal};
    use crate::controller::deployment::infra::{AuditView, overall};

    pub(crate) fn clinic() -> OpenEMRDeployment {
        let spec: OpenEMRDeploymentSpec = serde_json::from_value(serde_json::json!({
            "aws": {"region": "us-east-1"},
            "network": {"newVpc": {}},
        }))
        .unwrap();
        let mut d = OpenEMRDeployment::new("clinic-a", spec);
        d.metadata.namespace = Some("ns".into());
        d.metadata.uid = Some("0f8e2a1c-1111-2222-3333-444455556666".into());
        d.metadata.generation = Some(3);
        d
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn infra(d: &OpenEMRDeployment) -> Infra {
        let cluster = ClusterId::parse("prod").unwrap();
        Infra {
            names: ClinicNames::new(&cluster, "ns", "clinic-a"),
            tags: clinic::tags(&cluster, "ns", "clinic-a", "uid", &d.spec.tags),
            stack: None,
            stack_failure: None,
            leftovers: Vec::new(),
            database: None,
            credentials_secret: true,
            user_master_password: false,
            progress_interval: Duration::from_secs(30),
            adopted_bucket: AdoptedBucket::NotRead,
            claimed_by: None,
            refused: None,
            audit: crate::controller::deployment::infra::AuditView::Shared(
                crate::controller::audit::template::TrailView::Ready {
                    trail_arn: "arn:aws:cloudtrail:us-east-1:123456789012:trail/openemr-audit"
                        .into(),
                    bucket: "123456789012-openemr-audit-logs".into(),
                },
            ),
        }
    }

    /// A finished stack with every output, built from the template `d` renders to now.
    fn stable_stack(d: &OpenEMRDeployment, infra: &Infra) -> StackInfo {
        stable_stack_with(d, infra, false)
    }

    /// Like [`stable_stack`], with or without the clinic's own trail.
    fn stable_stack_with(d: &OpenEMRDeployment, infra: &Infra, clinic_trail: bool) -> StackInfo {
        let rendered = template::render(&StackInputs {
            names: &infra.names,
            tags: &infra.tags,
            spec: &d.spec,
            clinic_trail,
        });
        let outputs = [
            (
                template::OUT_KMS_KEY_ARN,
                "arn:aws:kms:us-east-1:123456789012:key/k",
            ),
            (template::OUT_BUCKET, infra.names.bucket.as_str()),
            (template::OUT_FILE_SYSTEM_ID, "fs-1"),
            (template::OUT_REDIS_ADDRESS, "redis.example"),
            (template::OUT_REDIS_PORT, "6379"),
            (template::OUT_DB_SUBNET_GROUP, "subnets"),
            (template::OUT_SECURITY_GROUP, "sg-1"),
            (template::OUT_DB_PARAMETER_GROUP, "params"),
            (template::OUT_TEMPLATE_HASH, rendered.hash.as_str()),
        ];
        StackInfo {
            name: infra.names.stack.clone(),
            id: "arn:stack".into(),
            status: "CREATE_COMPLETE".into(),
            status_reason: None,
            outputs: outputs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            tags: infra.tags.clone(),
        }
    }

    fn available_db(d: &OpenEMRDeployment, infra: &Infra) -> DbInstance {
        let placement = Placement {
            kms_key_id: "arn:aws:kms:us-east-1:123456789012:key/k".into(),
            subnet_group: "subnets".into(),
            security_group: "sg-1".into(),
            parameter_group: "params".into(),
        };
        let spec = &d.spec.database;
        DbInstance {
            identifier: infra.names.db_instance.clone(),
            status: "available".into(),
            endpoint: Some(("db.example".into(), 3306)),
            engine_version: "8.0.40".into(),
            instance_class: spec.instance_class.clone(),
            allocated_storage: spec.allocated_storage_gi_b,
            backup_retention: spec.backup_retention_days,
            backup_window: Some(spec.backup_window.clone()),
            maintenance_window: Some(spec.maintenance_window.clone()),
            deletion_protection: true,
            storage_encrypted: true,
            parameter_groups: vec![placement.parameter_group],
            subnet_group: Some(placement.subnet_group),
            security_groups: vec![placement.security_group],
            copy_tags_to_snapshot: true,
            auto_minor_version_upgrade: true,
            ..DbInstance::default()
        }
    }

    /// A clinic adopting `legacy-db`, its finished stack, and that instance available.
    fn adopting_legacy_db() -> (OpenEMRDeployment, Infra, DbInstance) {
        let mut d = clinic();
        d.spec.adopt = Some(
            serde_json::from_value(serde_json::json!({"dbInstanceIdentifier": "legacy-db"}))
                .unwrap(),
        );
        let mut seen = infra(&d);
        seen.stack = Some(stable_stack(&d, &seen));
        let mut db = available_db(&d, &seen);
        db.identifier = "legacy-db".into();
        (d, seen, db)
    }

    fn reasons(plan: &InfraPlan) -> Vec<(&'static str, bool, &'static str)> {
        plan.verdicts
            .iter()
            .map(|v| (v.type_, v.status, v.reason))
            .collect()
    }

    fn actions(plan: &InfraPlan) -> Vec<String> {
        plan.changes.iter().map(|c| c.intent().0).collect()
    }

    #[test]
    fn a_new_clinics_stack_waits_for_the_shared_audit_trail() {
        use crate::controller::audit::template::TrailView;
        let d = clinic();
        let mut seen = infra(&d);
        seen.credentials_secret = false;
        seen.audit = AuditView::Shared(TrailView::Pending(
            "stack openemr-audit is CREATE_IN_PROGRESS".into(),
        ));
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        assert_eq!(actions(&plan), ["CreateCredentialsSecret"]);
        assert_eq!(
            reasons(&plan),
            [
                ("StackReady", false, "WaitingForAuditTrail"),
                ("DatabaseReady", false, "WaitingForStack"),
                ("AuditReady", false, "SharedTrailPending"),
            ]
        );
        assert!(plan.in_progress, "looked at again soon");
        assert_eq!(plan.recheck_after, Some(Duration::from_secs(30)));
        // Without audit, nothing waits.
        let mut d = clinic();
        d.spec.audit.cloud_trail = false;
        seen.audit = AuditView::Off;
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        assert_eq!(actions(&plan), ["CreateCredentialsSecret", "CreateStack"]);
    }

    #[test]
    fn an_older_clinics_trail_stays_until_the_shared_trail_is_ready_then_goes() {
        use crate::controller::audit::template::TrailView;
        let d = clinic();
        let mut seen = infra(&d);
        // Made by an operator before the shared trail: its stack has the clinic's trail
        // and its status says nothing of audit.
        seen.stack = Some(stable_stack_with(&d, &seen, true));
        let previous = OpenEMRDeploymentStatus::default();
        seen.audit = AuditView::Shared(TrailView::Pending("creating".into()));
        let plan = plan_infrastructure(&d, &seen, &previous, &[], now());
        assert!(
            !actions(&plan).contains(&"UpdateStack".to_string()),
            "{:?}",
            actions(&plan)
        );
        let audit = plan.status.audit.clone().unwrap();
        assert_eq!(audit.scope, crate::api::deployment::AuditScope::Clinic);
        // On its own trail, it is looked at again until the shared one is ready.
        assert_eq!(plan.recheck_after, Some(Duration::from_secs(30)));
        // The shared trail is ready: the stack is updated without the clinic's trail.
        seen.audit = infra(&d).audit;
        let plan = plan_infrastructure(&d, &seen, &plan.status, &[], now());
        assert!(
            actions(&plan).contains(&"UpdateStack".to_string()),
            "{:?}",
            actions(&plan)
        );
        let InfraChange::UpdateStack(request) = plan
            .changes
            .iter()
            .find(|c| matches!(c, InfraChange::UpdateStack(_)))
            .unwrap()
        else {
            unreachable!()
        };
        assert!(!request.body.contains("AWS::CloudTrail::Trail"));
        assert_eq!(
            plan.status.audit.unwrap().scope,
            crate::api::deployment::AuditScope::Shared
        );
    }

    #[test]
    fn a_new_clinic_gets_its_secret_and_stack_first() {
        let d = clinic();
        let mut seen = infra(&d);
        seen.credentials_secret = false;
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        assert_eq!(actions(&plan), ["CreateCredentialsSecret", "CreateStack"]);
        assert_eq!(
            reasons(&plan),
            [
                ("StackReady", false, "StackCreating"),
                ("DatabaseReady", false, "WaitingForStack"),
                ("AuditReady", true, "SharedTrail"),
            ]
        );
        assert!(plan.in_progress);
        assert_eq!(plan.waiting, ["stack", "database"]);
        let (ready, phase) = overall(&plan.waiting, plan.failed, true, None);
        assert_eq!((ready.status, ready.reason), (false, "NotReady"));
        assert_eq!(ready.message, "waiting for: stack, database");
        assert_eq!(phase, DeploymentPhase::Provisioning);
        assert_eq!(
            plan.status.credentials_secret_name.as_deref(),
            Some("clinic-a-db-credentials")
        );
        // The token ties the request to this object, generation and template.
        let InfraChange::CreateStack(request) = &plan.changes[1] else {
            unreachable!()
        };
        assert!(
            request
                .token
                .starts_with("oe-create-0f8e2a1c111122223333444455556666-g3-"),
            "{}",
            request.token
        );
        assert!(request.token.len() <= 128);
        assert_eq!(request.tags, seen.tags);
    }

    /// A clinic switched by an in-place restore runs on the instance its status names;
    /// that instance gone, none is ever created in its place (nor under its own name).
    #[test]
    fn a_switched_clinic_uses_the_instance_its_status_names_and_never_creates_one() {
        let mut d = clinic();
        d.status = Some(OpenEMRDeploymentStatus {
            database_switch: Some(crate::api::deployment::DatabaseSwitch {
                identifier: "restore-0123456789".into(),
                previous: "clinic-a-db".into(),
                restore_request: "undo-tuesday".into(),
                time: None,
            }),
            ..Default::default()
        });
        let mut seen = infra(&d);
        seen.stack = Some(stable_stack(&d, &seen));
        let previous = d.status.clone().unwrap();
        let plan = plan_infrastructure(&d, &seen, &previous, &[], now());
        assert!(actions(&plan).is_empty(), "{:?}", actions(&plan));
        let ready = plan
            .verdicts
            .iter()
            .find(|v| v.type_ == "DatabaseReady")
            .unwrap();
        assert_eq!(
            (ready.status, ready.reason),
            (false, "SwitchedDatabaseNotFound")
        );
        assert!(
            ready.message.contains("restore-0123456789") && ready.message.contains("undo-tuesday"),
            "{}",
            ready.message
        );

        let mut db = available_db(&d, &seen);
        db.identifier = "restore-0123456789".into();
        seen.database = Some(db);
        let plan = plan_infrastructure(&d, &seen, &previous, &[], now());
        assert!(!actions(&plan).iter().any(|a| a == "CreateDBInstance"));
        assert_eq!(
            plan.status
                .database
                .as_ref()
                .map(|db| db.identifier.as_str()),
            Some("restore-0123456789")
        );
        assert_eq!(
            plan.status.database_switch, previous.database_switch,
            "the switch is carried, never dropped"
        );
    }

    #[test]
    fn a_clinic_a_restore_fills_waits_for_its_database_and_creates_none() {
        let mut d = clinic();
        d.metadata
            .annotations
            .get_or_insert_default()
            .insert(RESTORED_BY.into(), "copy-a".into());
        let mut seen = infra(&d);
        seen.stack = Some(stable_stack(&d, &seen));
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        assert!(actions(&plan).is_empty(), "{:?}", actions(&plan));
        let ready = plan
            .verdicts
            .iter()
            .find(|v| v.type_ == "DatabaseReady")
            .unwrap();
        assert_eq!((ready.status, ready.reason), (false, "WaitingForRestore"));
        assert!(
            ready.message.contains("RestoreRequest copy-a")
                && ready.message.contains(&seen.names.db_instance),
            "{}",
            ready.message
        );
        assert!(plan.in_progress, "looked at again at the progress interval");

        // Once the restored instance is there, it is the clinic's database like any other.
        seen.database = Some(available_db(&d, &seen));
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        assert!(!actions(&plan).iter().any(|a| a == "CreateDBInstance"));
        let ready = plan
            .verdicts
            .iter()
            .find(|v| v.type_ == "DatabaseReady")
            .unwrap();
        assert_ne!(ready.reason, "WaitingForRestore");

        // Taking the annotation off gives up on the restore: an empty one is created.
        d.metadata.annotations = None;
        seen.database = None;
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        assert_eq!(actions(&plan), ["CreateDBInstance"]);
    }

    #[test]
    fn the_database_is_created_with_the_stacks_pieces() {
        let d = clinic();
        let mut seen = infra(&d);
        seen.stack = Some(stable_stack(&d, &seen));
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        assert_eq!(actions(&plan), ["CreateDBInstance"]);
        let InfraChange::CreateDatabase { request, master } = &plan.changes[0] else {
            unreachable!()
        };
        assert_eq!(*master, MasterSource::ManagedByRds);
        assert_eq!(request.identifier, seen.names.db_instance);
        assert_eq!(
            (
                request.subnet_group.as_str(),
                request.security_group.as_str(),
                request.parameter_group.as_str()
            ),
            ("subnets", "sg-1", "params")
        );
        assert_eq!(
            request.kms_key_id,
            "arn:aws:kms:us-east-1:123456789012:key/k"
        );
        assert_eq!(
            plan.status.redis_endpoint.as_deref(),
            Some("redis.example:6379")
        );
        assert_eq!(plan.verdicts[0].reason, "StackReady");
    }

    #[test]
    fn a_rolled_back_update_is_reported_and_sent_again_only_for_a_new_generation() {
        let d = clinic();
        let mut seen = infra(&d);
        let mut stack = stable_stack(&d, &seen);
        let hash = stack.outputs[template::OUT_TEMPLATE_HASH].clone();
        stack
            .outputs
            .insert(template::OUT_TEMPLATE_HASH.into(), "older".into());
        stack.status = "UPDATE_ROLLBACK_COMPLETE".into();
        seen.stack = Some(stack);
        seen.database = Some(available_db(&d, &seen));
        seen.stack_failure = Some(StackFailure {
            logical_id: "Sessions".into(),
            resource_type: "AWS::ElastiCache::ReplicationGroup".into(),
            reason: "cache.t9.micro is not a node type".into(),
            retained: Vec::new(),
        });
        // An earlier generation's update rolled back: this generation's is sent.
        let mut previous = OpenEMRDeploymentStatus::default();
        let uid = d.metadata.uid.clone().unwrap();
        previous.stack = Some(StackStatus {
            last_update: Some(stack_token("update", &uid, 2, "earlier")),
            ..StackStatus::default()
        });
        let plan = plan_infrastructure(&d, &seen, &previous, &[], now());
        assert_eq!(actions(&plan), ["UpdateStack"]);
        let sent = plan.status.stack.as_ref().unwrap().last_update.clone();
        assert_eq!(sent, Some(stack_token("update", &uid, 3, &hash)));
        // This generation's own update rolled back: reported, not sent again.
        let plan = plan_infrastructure(&d, &seen, &plan.status, &[], now());
        assert_eq!(actions(&plan), Vec::<String>::new());
        let verdict = plan
            .verdicts
            .iter()
            .find(|v| v.type_ == "StackReady")
            .unwrap();
        assert_eq!(
            (verdict.status, verdict.reason),
            (false, STACK_UPDATE_FAILED)
        );
        assert!(verdict.message.contains("Sessions"), "{}", verdict.message);
        assert!(
            verdict.message.contains("not a node type"),
            "{}",
            verdict.message
        );
        assert_eq!(plan.status.stack.unwrap().last_update, sent);
    }

    #[test]
    fn a_lost_credentials_secret_is_reported_never_made_anew_once_the_database_exists() {
        let d = clinic();
        let mut seen = infra(&d);
        seen.stack = Some(stable_stack(&d, &seen));
        seen.database = Some(available_db(&d, &seen));
        seen.credentials_secret = false;
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        assert!(
            !actions(&plan).contains(&"CreateCredentialsSecret".to_string()),
            "{:?}",
            actions(&plan)
        );
        let database = plan
            .verdicts
            .iter()
            .find(|v| v.type_ == "DatabaseReady")
            .unwrap();
        assert_eq!(
            (database.status, database.reason),
            (false, "CredentialsSecretMissing")
        );
        assert!(database.message.contains(&seen.names.credentials_secret));
        assert_eq!(plan.waiting, ["database"]);
    }

    #[test]
    fn a_ready_clinic_plans_nothing_and_rewrites_nothing() {
        let d = clinic();
        let mut seen = infra(&d);
        seen.stack = Some(stable_stack(&d, &seen));
        seen.database = Some(available_db(&d, &seen));
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        assert_eq!(actions(&plan), Vec::<String>::new());
        assert!(!plan.in_progress);
        assert!(plan.waiting.is_empty());
        let (ready, phase) = overall(&plan.waiting, plan.failed, false, None);
        assert_eq!((ready.status, ready.reason), (true, "Ready"));
        assert_eq!(phase, DeploymentPhase::Ready);
        assert_eq!(
            plan.status
                .database
                .as_ref()
                .and_then(|db| db.endpoint.as_deref()),
            Some("db.example:3306")
        );
        // Ten minutes later the same answer leaves the status as it was, even though the
        // latest restorable time moved.
        let later = Timestamp::from_second(1_800_000_600).unwrap();
        let mut moved = seen.clone();
        if let Some(db) = moved.database.as_mut() {
            db.latest_restorable_time =
                Some(std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_500));
        }
        let again = plan_infrastructure(&d, &moved, &plan.status, &[], later);
        assert_eq!(again.status, plan.status);
        // After an hour the sync time moves.
        let hour = Timestamp::from_second(1_800_003_600).unwrap();
        let refreshed = plan_infrastructure(&d, &moved, &plan.status, &[], hour);
        assert_eq!(refreshed.status.last_aws_sync_time, Some(Time(hour)));
        assert!(
            refreshed
                .status
                .database
                .unwrap()
                .latest_restorable_time
                .is_some()
        );
    }

    #[test]
    fn a_full_instance_grows_at_once_and_within_its_ceiling() {
        let d = clinic();
        let mut seen = infra(&d);
        seen.stack = Some(stable_stack(&d, &seen));
        let mut db = available_db(&d, &seen);
        db.status = "storage-full".into();
        db.allocated_storage = 100;
        seen.database = Some(db.clone());
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        assert_eq!(actions(&plan), ["ModifyDBInstance"]);
        let InfraChange::ModifyDatabase { request, .. } = &plan.changes[0] else {
            unreachable!()
        };
        assert_eq!(request.allocated_storage, Some(110));
        assert!(request.apply_immediately);
        assert_eq!(request.instance_class, None, "nothing else rides along");
        assert_eq!(plan.verdicts[1].reason, "DatabaseStorageFull");
        assert!(plan.in_progress);
        // RDS refused the growth (its six-hour rule): held for an hour, then tried again.
        let mut refused = seen.clone();
        let refusal = |age| super::super::refusals::Refusal {
            generation: 3,
            fields: vec!["allocatedStorageGiB".into()],
            message: "InvalidParameterCombination: storage optimization in progress".into(),
            age,
        };
        refused.refused = Some(refusal(Duration::from_secs(600)));
        let plan = plan_infrastructure(&d, &refused, &Default::default(), &[], now());
        assert_eq!(actions(&plan), Vec::<String>::new());
        assert!(plan.verdicts[1].message.contains("RDS refused growing it"));
        refused.refused = Some(refusal(Duration::from_secs(3700)));
        let plan = plan_infrastructure(&d, &refused, &Default::default(), &[], now());
        assert_eq!(actions(&plan), ["ModifyDBInstance"]);
        // At the autoscaling ceiling: said, nothing sent.
        let mut capped = clinic();
        capped.spec.database.max_allocated_storage_gi_b = Some(105);
        let plan = plan_infrastructure(&capped, &seen, &Default::default(), &[], now());
        assert_eq!(actions(&plan), Vec::<String>::new());
        assert!(
            plan.verdicts[1].message.contains("maxAllocatedStorageGiB"),
            "{}",
            plan.verdicts[1].message
        );
    }

    #[test]
    fn a_pending_reboot_is_made_in_the_window_or_at_once() {
        let mut d = clinic();
        d.spec.database.apply_changes = crate::api::deployment::ApplyChanges::InMaintenanceWindow;
        d.spec.database.maintenance_window = "sun:05:00-sun:06:00".into();
        let mut seen = infra(&d);
        seen.stack = Some(stable_stack(&d, &seen));
        let mut db = available_db(&d, &seen);
        db.parameter_apply_status = Some("pending-reboot".into());
        seen.database = Some(db);
        // 2027-01-14T08:00:00Z is a Thursday: the window opens in 2 days 21 hours.
        let thursday: Timestamp = "2027-01-14T08:00:00Z".parse().unwrap();
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], thursday);
        assert_eq!(actions(&plan), Vec::<String>::new());
        assert!(
            plan.verdicts[1]
                .message
                .contains("maintenance window sun:05:00-sun:06:00")
        );
        assert_eq!(
            plan.recheck_after,
            Some(Duration::from_secs((2 * 24 + 21) * 3600))
        );
        let sunday: Timestamp = "2027-01-17T05:20:00Z".parse().unwrap();
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], sunday);
        assert_eq!(actions(&plan), ["RebootDBInstance"]);
        d.spec.database.apply_changes = crate::api::deployment::ApplyChanges::Immediately;
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], thursday);
        assert_eq!(actions(&plan), ["RebootDBInstance"]);
    }

    /// A clinic applying changes at once, its finished stack, and its instance as it wants
    /// it (for the test to change).
    fn applying_immediately() -> (OpenEMRDeployment, Infra, DbInstance) {
        let mut d = clinic();
        d.spec.database.apply_changes = crate::api::deployment::ApplyChanges::Immediately;
        let mut seen = infra(&d);
        seen.stack = Some(stable_stack(&d, &seen));
        let db = available_db(&d, &seen);
        (d, seen, db)
    }

    #[test]
    fn a_refused_change_is_not_planned_again_and_holds_nothing_else_back() {
        let (mut d, mut seen, mut db) = applying_immediately();
        db.instance_class = "db.t4g.micro".into();
        db.deletion_protection = false;
        seen.database = Some(db);
        d.spec.database.instance_class = "db.r6g.large".into();
        seen.refused = Some(super::super::refusals::Refusal {
            generation: 3,
            fields: vec!["instanceClass".into()],
            message: "InvalidParameterCombination: no such class here".into(),
            age: Duration::from_secs(5),
        });
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        let modified: Vec<Vec<&str>> = plan
            .changes
            .iter()
            .filter_map(|c| match c {
                InfraChange::ModifyDatabase { differences, .. } => {
                    Some(differences.iter().map(|d| d.field).collect())
                }
                _ => None,
            })
            .collect();
        assert_eq!(modified, [["deletionProtection"]]);
        assert_eq!(plan.verdicts[1].reason, "DatabaseChangeRefused");
        assert!(plan.verdicts[1].message.contains("no such class here"));
        // Without the refusal, the class goes in the next batch as before.
        seen.refused = None;
        seen.database.as_mut().unwrap().deletion_protection = true;
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        assert_eq!(actions(&plan), ["ModifyDBInstance"]);
    }

    #[test]
    fn storage_growth_is_rounded_up_to_rds_least_step() {
        let (mut d, mut seen, mut db) = applying_immediately();
        db.allocated_storage = d.spec.database.allocated_storage_gi_b;
        seen.database = Some(db.clone());
        d.spec.database.allocated_storage_gi_b = db.allocated_storage + 1;
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        let InfraChange::ModifyDatabase {
            request,
            differences,
        } = &plan.changes[0]
        else {
            panic!("{:?}", plan.changes)
        };
        let step = db.allocated_storage + (db.allocated_storage + 9) / 10;
        assert_eq!(request.allocated_storage, Some(step));
        assert!(
            differences[0].to.contains("rounded up"),
            "{}",
            differences[0].to
        );
        // While RDS optimises the last change, the growth waits.
        seen.database.as_mut().unwrap().status = "storage-optimization".into();
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        assert_eq!(actions(&plan), Vec::<String>::new());
    }

    #[test]
    fn a_template_change_updates_the_stack() {
        let mut d = clinic();
        let mut seen = infra(&d);
        seen.stack = Some(stable_stack(&d, &seen));
        seen.database = Some(available_db(&d, &seen));
        d.spec.sessions.replicas = 1;
        d.metadata.generation = Some(4);
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        assert_eq!(actions(&plan), ["UpdateStack"]);
        let InfraChange::UpdateStack(request) = &plan.changes[0] else {
            unreachable!()
        };
        assert!(request.token.starts_with("oe-update-") && request.token.contains("-g4-"));
        assert_eq!(plan.verdicts[0].reason, "StackUpdating");
    }

    #[test]
    fn drift_becomes_one_modification_naming_it() {
        let d = clinic();
        let mut seen = infra(&d);
        seen.stack = Some(stable_stack(&d, &seen));
        let mut db = available_db(&d, &seen);
        db.backup_retention = 1;
        db.publicly_accessible = true;
        seen.database = Some(db);
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        let InfraChange::ModifyDatabase {
            request,
            differences,
        } = &plan.changes[0]
        else {
            unreachable!()
        };
        assert!(request.apply_immediately);
        assert_eq!(request.backup_retention, Some(7));
        assert_eq!(request.publicly_accessible, Some(false));
        let fields: Vec<_> = differences.iter().map(|d| d.field).collect();
        assert_eq!(fields, ["backupRetentionDays", "publiclyAccessible"]);
        // Still serving: the database is ready while it is corrected.
        assert_eq!(plan.verdicts[1].reason, "DatabaseAvailable");
    }

    #[test]
    fn a_rolled_back_stack_is_reported_then_replaced_only_on_a_new_generation() {
        let d = clinic();
        let mut seen = infra(&d);
        seen.stack = Some(StackInfo {
            id: "arn:stack".into(),
            status: "ROLLBACK_COMPLETE".into(),
            ..StackInfo::default()
        });
        let key = RetainedResource {
            logical_id: "Key".into(),
            resource_type: "AWS::KMS::Key".into(),
            physical_id: Some("key-1".into()),
        };
        let bucket = RetainedResource {
            logical_id: "Bucket".into(),
            resource_type: "AWS::S3::Bucket".into(),
            physical_id: Some(seen.names.bucket.clone()),
        };
        seen.stack_failure = Some(StackFailure {
            logical_id: "Files".into(),
            resource_type: "AWS::EFS::FileSystem".into(),
            reason: "quota reached".into(),
            retained: vec![key.clone(), bucket.clone()],
        });
        let holding = |data: bool| {
            vec![
                Leftover {
                    resource: key.clone(),
                    facts: Some(RetainedFacts::default()),
                },
                Leftover {
                    resource: bucket.clone(),
                    facts: Some(RetainedFacts {
                        holds_data: data,
                        ..Default::default()
                    }),
                },
            ]
        };
        seen.leftovers = holding(false);
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        assert_eq!(actions(&plan), Vec::<String>::new());
        let failed = &plan.verdicts[0];
        assert_eq!(failed.reason, "StackFailed");
        assert!(
            failed
                .message
                .contains("Files (AWS::EFS::FileSystem) failed: quota reached"),
            "{}",
            failed.message
        );
        assert!(plan.failed);
        assert_eq!(
            overall(&plan.waiting, plan.failed, false, None).1,
            DeploymentPhase::Failed
        );

        // The same generation fails the same way: nothing is retried.
        let mut previous = plan.status.clone();
        previous.conditions = crate::conditions::merge(&[], &plan.verdicts, Some(3), now());
        assert_eq!(
            actions(&plan_infrastructure(&d, &seen, &previous, &[], now())),
            Vec::<String>::new()
        );
        // A new generation replaces it, removing first what the creation retained empty,
        // the key after the bucket it encrypted.
        let mut edited = d.clone();
        edited.metadata.generation = Some(4);
        let plan = plan_infrastructure(&edited, &seen, &previous, &[], now());
        let InfraChange::DeleteFailedStack { remove, kept, .. } = &plan.changes[0] else {
            unreachable!()
        };
        assert_eq!(
            remove,
            &[
                Removal::Bucket(seen.names.bucket.clone()),
                Removal::Key("key-1".into())
            ]
        );
        assert!(kept.is_empty());

        // A retained bucket that holds objects keeps the clinic's bucket name: the
        // replacement waits for a person, says what to do, and looks again without a new
        // generation.
        seen.leftovers = holding(true);
        let blocked = plan_infrastructure(&edited, &seen, &previous, &[], now());
        assert_eq!(actions(&blocked), Vec::<String>::new());
        assert_eq!(blocked.verdicts[0].reason, STACK_REPLACEMENT_BLOCKED);
        assert!(
            blocked.verdicts[0].message.contains("holds objects"),
            "{}",
            blocked.verdicts[0].message
        );
        assert_eq!(blocked.recheck_after, Some(LEFTOVERS_RECHECK));
        let mut waited = blocked.status.clone();
        waited.conditions = crate::conditions::merge(&[], &blocked.verdicts, Some(4), now());
        seen.leftovers = holding(false);
        let cleared = plan_infrastructure(&edited, &seen, &waited, &[], now());
        assert!(
            matches!(&cleared.changes[0], InfraChange::DeleteFailedStack { .. }),
            "{:?}",
            cleared.changes
        );
    }

    #[test]
    fn a_database_deleted_behind_the_operators_back_is_not_replaced_by_an_empty_one() {
        let d = clinic();
        let mut seen = infra(&d);
        seen.stack = Some(stable_stack(&d, &seen));
        let mut db = available_db(&d, &seen);
        db.arn = Some("arn:aws:rds:us-east-1:123456789012:db:x".into());
        seen.database = Some(db);
        let ready = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        seen.database = None;
        let plan = plan_infrastructure(&d, &seen, &ready.status, &[], now());
        assert_eq!(actions(&plan), Vec::<String>::new());
        assert_eq!(plan.verdicts[1].reason, "DatabaseMissing");
        assert_eq!(plan.waiting, ["database"]);
        let was = Some(DeploymentPhase::Ready);
        assert_eq!(
            overall(&plan.waiting, plan.failed, false, was).1,
            DeploymentPhase::Degraded
        );
    }

    #[test]
    fn an_adopted_databases_differences_are_reported_before_anything_changes() {
        let (d, mut seen, mut db) = adopting_legacy_db();
        db.backup_retention = 1;
        db.storage_encrypted = false;
        seen.database = Some(db);
        let first = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        assert_eq!(actions(&first), Vec::<String>::new());
        let adopted = first.verdicts.iter().find(|v| v.type_ == ADOPTED).unwrap();
        assert_eq!(adopted.reason, "DifferencesReported");
        assert!(
            adopted.message.contains("backupRetentionDays: 1 → 7"),
            "{}",
            adopted.message
        );
        assert!(
            adopted.message.contains("storageEncrypted: false → true"),
            "{}",
            adopted.message
        );
        assert!(first.in_progress);
        // Once reported, the next pass corrects what RDS can change, and reports no more.
        let mut previous = first.status.clone();
        previous.conditions = crate::conditions::merge(&[], &first.verdicts, Some(3), now());
        let second = plan_infrastructure(&d, &seen, &previous, &[], now());
        assert_eq!(actions(&second), ["ModifyDBInstance"]);
        assert!(second.verdicts.iter().all(|v| v.type_ != ADOPTED));
    }

    #[test]
    fn an_adopted_database_is_never_created() {
        let (d, seen, _) = adopting_legacy_db();
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        assert_eq!(actions(&plan), Vec::<String>::new());
        assert_eq!(plan.verdicts[1].reason, "AdoptedDatabaseNotFound");
        assert!(plan.verdicts[1].message.contains("legacy-db"));
    }

    #[test]
    fn a_users_root_password_is_named_never_carried() {
        let mut d = clinic();
        d.spec.database.credentials_secret_ref = Some(crate::api::LocalRef {
            name: "db-creds".into(),
        });
        let mut seen = infra(&d);
        seen.stack = Some(stable_stack(&d, &seen));
        seen.user_master_password = true;
        let plan = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        let InfraChange::CreateDatabase { master, .. } = &plan.changes[0] else {
            unreachable!()
        };
        assert_eq!(*master, MasterSource::UserSecret("db-creds".into()));
        assert_eq!(
            plan.status.credentials_secret_name.as_deref(),
            Some("db-creds")
        );
    }

    #[test]
    fn the_instance_carries_the_clinics_tags_and_loses_only_the_spec_tags_dropped() {
        let mut d = clinic();
        d.spec.tags = BTreeMap::from([
            ("team".to_string(), "a".to_string()),
            ("cost".to_string(), "1".to_string()),
        ]);
        let mut seen = infra(&d);
        seen.stack = Some(stable_stack(&d, &seen));
        let mut db = available_db(&d, &seen);
        db.arn = Some("arn:aws:rds:us-east-1:123456789012:db:x".into());
        db.tags = seen.tags.clone();
        db.tags.insert("team".into(), "old".into());
        db.tags.remove("cost");
        // Put there by someone else: never removed.
        db.tags.insert("backup-plan".into(), "gold".into());
        // Put there by the operator for a spec that no longer names it.
        db.tags.insert("project".into(), "x".into());
        seen.database = Some(db.clone());
        let previous = OpenEMRDeploymentStatus {
            database: Some(DatabaseStatus {
                identifier: db.identifier.clone(),
                tag_keys: vec!["project".into(), "team".into()],
                ..DatabaseStatus::default()
            }),
            ..OpenEMRDeploymentStatus::default()
        };
        let plan = plan_infrastructure(&d, &seen, &previous, &[], now());
        let tagging: Vec<_> = plan
            .changes
            .iter()
            .filter_map(|c| match c {
                InfraChange::TagDatabase { add, remove, .. } => Some((add, remove)),
                _ => None,
            })
            .collect();
        assert_eq!(tagging.len(), 1, "{:?}", plan.changes);
        let (add, remove) = tagging[0];
        assert_eq!(
            add.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
            ["cost=1", "team=a"]
        );
        assert_eq!(remove, &["project".to_string()]);
        assert!(plan.in_progress, "read again to see the tags took");
        // Remembered until the instance shows it gone.
        assert_eq!(
            plan.status.database.as_ref().unwrap().tag_keys,
            ["cost", "project", "team"]
        );

        // Applied: nothing more to do, and only the spec's keys are remembered.
        db.tags.extend(add.clone());
        db.tags.remove("project");
        seen.database = Some(db);
        let again = plan_infrastructure(&d, &seen, &plan.status, &[], now());
        assert!(
            !actions(&again).contains(&"AddTagsToResource".to_string()),
            "{:?}",
            again.changes
        );
        assert_eq!(
            again.status.database.as_ref().unwrap().tag_keys,
            ["cost", "team"]
        );
    }

    #[test]
    fn an_adopted_instance_is_tagged_as_the_clinics_only_after_the_report() {
        let (d, mut seen, mut db) = adopting_legacy_db();
        db.arn = Some("arn:aws:rds:us-east-1:123456789012:db:legacy-db".into());
        seen.database = Some(db);
        let first = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        assert!(
            !actions(&first).contains(&"AddTagsToResource".to_string()),
            "the first pass only reports: {:?}",
            first.changes
        );
        let mut previous = first.status.clone();
        previous.conditions = crate::conditions::merge(&[], &first.verdicts, Some(3), now());
        let second = plan_infrastructure(&d, &seen, &previous, &[], now());
        let add = second
            .changes
            .iter()
            .find_map(|c| match c {
                InfraChange::TagDatabase { add, .. } => Some(add.clone()),
                _ => None,
            })
            .expect("tagged once reported");
        assert_eq!(add.get(clinic::TAG_UID), seen.tags.get(clinic::TAG_UID));
        assert_eq!(
            add.get(clinic::TAG_NAME).map(String::as_str),
            Some("clinic-a")
        );
    }

    #[test]
    fn an_adopted_instances_outages_wait_for_approval_and_only_the_approved_are_sent() {
        use crate::api::deployment::AdoptedChange;
        let (mut d, mut seen, mut db) = adopting_legacy_db();
        db.instance_class = "db.r6g.xlarge".into();
        db.multi_az = true;
        db.backup_retention = 0;
        seen.database = Some(db.clone());
        let first = plan_infrastructure(&d, &seen, &Default::default(), &[], now());
        assert_eq!(actions(&first), Vec::<String>::new());
        let report = first.verdicts.iter().find(|v| v.type_ == ADOPTED).unwrap();
        let (_, awaiting) = report.message.split_once("keeps, until").unwrap();
        for field in ["instanceClass", "multiAZ", "backupRetentionDays: 0"] {
            assert!(awaiting.contains(field), "{field} in {}", report.message);
        }
        let mut previous = first.status.clone();
        let mut conditions = crate::conditions::merge(&[], &first.verdicts, Some(3), now());
        previous.conditions = conditions.clone();

        // Not approved: nothing is sent, and the condition says what waits.
        let held = plan_infrastructure(&d, &seen, &previous, &[], now());
        assert_eq!(actions(&held), Vec::<String>::new());
        let waiting = held.verdicts.iter().find(|v| v.type_ == ADOPTED).unwrap();
        assert_eq!(waiting.reason, "ChangesAwaitingApproval");
        conditions = crate::conditions::merge(&conditions, &held.verdicts, Some(3), now());
        previous.conditions = conditions.clone();

        // One approved: exactly that one is sent.
        let approve = |d: &mut OpenEMRDeployment, changes: &[AdoptedChange]| {
            d.spec.adopt.as_mut().unwrap().approved_changes = changes.to_vec();
        };
        approve(&mut d, &[AdoptedChange::MultiAz]);
        let one = plan_infrastructure(&d, &seen, &previous, &[], now());
        let sent: Vec<_> = one
            .changes
            .iter()
            .filter_map(|c| match c {
                InfraChange::ModifyDatabase { differences, .. } => {
                    Some(differences.iter().map(|d| d.field).collect::<Vec<_>>())
                }
                _ => None,
            })
            .collect();
        assert_eq!(sent, [["multiAZ"]]);
        assert_eq!(
            one.verdicts
                .iter()
                .find(|v| v.type_ == ADOPTED)
                .unwrap()
                .reason,
            "ChangesAwaitingApproval"
        );

        // All approved and applied: the condition says so once.
        approve(
            &mut d,
            &[
                AdoptedChange::MultiAz,
                AdoptedChange::InstanceClass,
                AdoptedChange::BackupRetention,
            ],
        );
        db.instance_class = d.spec.database.instance_class.clone();
        db.multi_az = false;
        db.backup_retention = d.spec.database.backup_retention_days;
        seen.database = Some(db);
        let done = plan_infrastructure(&d, &seen, &previous, &[], now());
        assert_eq!(
            done.verdicts
                .iter()
                .find(|v| v.type_ == ADOPTED)
                .unwrap()
                .reason,
            "ChangesApproved"
        );
        previous.conditions = crate::conditions::merge(&conditions, &done.verdicts, Some(3), now());
        let after = plan_infrastructure(&d, &seen, &previous, &[], now());
        assert!(after.verdicts.iter().all(|v| v.type_ != ADOPTED));
    }
}
