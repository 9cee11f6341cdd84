//! The cleanup's I/O: each pass reads what is left of the clinic in AWS, asks the pure
//! planner ([`next_step`]) for the next step and takes it, until nothing is left to do; the
//! `CleanedUp` Event then says what was removed and what is left, and why.

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{Api, ResourceExt};

use super::{
    Seen, Step, adopted_instance_kept, backups_left, bucket_kept, effective_policy, key_holders,
    next_step,
};
use crate::api::{DeletionPolicy, OpenEMRDeployment};
use crate::aws::AwsClients;
use crate::aws::cloudformation::{StackInfo, StackState, Stacks};
use crate::aws::error::AwsError;
use crate::aws::rds::{Databases, DbInstance};
use crate::aws::teardown::{KEY_DELETION_WINDOW_DAYS, Teardown};
use crate::controller::deployment::clinic::{
    BACKUP_PREFIXES, ClinicNames, announce, aws_error, clients, clinic_tags, db_identifier,
};
use crate::controller::deployment::infra::ownership::{Owner, owner_of};
use crate::controller::deployment::web::act::delete_child;
use crate::controller::deployment::web::{ChildKind, WebNames};
use crate::controller::{Context, Error};

/// The stack and DB instance under the clinic's names that its tags say another clinic made
/// (an earlier incarnation, or another clinic), described for an Event. An adopted
/// instance is the adoption's business, not this.
fn foreign_leftovers(
    d: &OpenEMRDeployment,
    stack: Option<&StackInfo>,
    database: Option<&DbInstance>,
    tags: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(stack) = stack.filter(|s| !matches!(s.state(), StackState::Deleted))
        && let owner @ (Owner::Former { .. } | Owner::Other { .. }) = owner_of(&stack.tags, tags)
    {
        found.push(format!(
            "stack {} (made by {})",
            stack.name,
            owner.describe()
        ));
    }
    let adopted = d
        .spec
        .adopt
        .as_ref()
        .is_some_and(|a| a.db_instance_identifier.is_some());
    if !adopted
        && let Some(db) = database
        && let owner @ (Owner::Former { .. } | Owner::Other { .. }) = owner_of(&db.tags, tags)
    {
        found.push(format!(
            "DB instance {} (made by {})",
            db.identifier,
            owner.describe()
        ));
    }
    found
}

/// Most deletion steps one pass takes before looking again (each step is one AWS call).
const STEPS_PER_PASS: usize = 8;

/// Carries out `spec.deletionPolicy`, one step per look at AWS, until nothing is left to
/// do. Works from names alone, so a clinic whose provisioning never ran is cleaned up too.
pub async fn cleanup(d: &OpenEMRDeployment, ctx: &Context) -> Result<(), Error> {
    let Some(aws) = &ctx.aws else {
        return Ok(());
    };
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    aws.refusals.forget(&uid);
    let names = ClinicNames::new(&aws.cluster, &ns, &name);
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let terminating = namespaces
        .get_opt(&ns)
        .await
        .map_err(Error::observe(format!("Namespace {ns}")))?
        .is_none_or(|n| n.metadata.deletion_timestamp.is_some());
    let mut policy = effective_policy(d.spec.deletion_policy, terminating);
    let clients = clients(d, aws).await;
    let identifier = db_identifier(d, &names);
    let tags = clinic_tags(d, aws);
    // What another clinic made, found under this one's names (a clinic refused as
    // `FormerIncarnationFound` being deleted): never this clinic's to delete.
    // Read once here; the first step below works from these reads too.
    let mut stack_read = Some(
        clients
            .describe_stack(&names.stack)
            .await
            .map_err(aws_error("reading the stack"))?,
    );
    let mut database_read = Some(
        clients
            .describe_instance(&identifier)
            .await
            .map_err(aws_error("reading the DB instance"))?,
    );
    let foreign = foreign_leftovers(
        d,
        stack_read.as_ref().and_then(Option::as_ref),
        database_read.as_ref().and_then(Option::as_ref),
        &tags,
    );
    if !foreign.is_empty() {
        if policy != DeletionPolicy::Retain {
            announce(
                ctx,
                d,
                true,
                "LeftoversKept",
                &format!(
                    "{} made by another clinic, kept whatever spec.deletionPolicy says; nothing of this clinic's is in AWS",
                    foreign.join("; ")
                ),
            )
            .await;
        }
        policy = DeletionPolicy::Retain;
    }
    let final_snapshot = names.final_snapshot(&uid);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let own_secret = d.spec.database.credentials_secret_ref.is_none();
    // What the stack retained, as status last saw it (nothing is known of a stack that
    // never finished).
    let status = d.status.clone().unwrap_or_default();
    let (bucket, file_system, key) = (
        status.bucket_name,
        status.file_system_id,
        status.kms_key_arn,
    );
    let delete_all = policy == DeletionPolicy::Delete;
    let adopt = d.spec.adopt.as_ref();
    let adopted_database = adopt.is_some_and(|a| a.db_instance_identifier.is_some());
    let adopted_bucket = adopt
        .and_then(|a| a.bucket_name.as_ref())
        .is_some_and(|b| bucket.as_ref() == Some(b));

    for _ in 0..STEPS_PER_PASS {
        let database = match database_read.take() {
            Some(read) => read,
            None => clients
                .describe_instance(&identifier)
                .await
                .map_err(aws_error("reading the DB instance"))?,
        };
        // The key's deletion is weighed only once the instance is gone (or adopted and
        // kept): only then are its other snapshots and retained backups read.
        let weigh_key = delete_all && key.is_some() && (database.is_none() || adopted_database);
        let seen = Seen {
            database,
            final_snapshot: if policy == DeletionPolicy::Retain {
                None
            } else {
                clients
                    .describe_snapshot(&final_snapshot)
                    .await
                    .map_err(aws_error("reading the final snapshot"))?
            },
            stack: match (policy, stack_read.take()) {
                (DeletionPolicy::Delete, Some(read)) => read,
                (DeletionPolicy::Delete, None) => clients
                    .describe_stack(&names.stack)
                    .await
                    .map_err(aws_error("reading the stack"))?,
                _ => None,
            },
            bucket_exists: match (&delete_all, &bucket) {
                (true, Some(b)) => clients
                    .bucket_exists(b)
                    .await
                    .map_err(aws_error("reading the bucket"))?,
                _ => false,
            },
            file_system_exists: match (&delete_all, &file_system) {
                (true, Some(f)) => clients
                    .file_system_exists(f)
                    .await
                    .map_err(aws_error("reading the file system"))?,
                _ => false,
            },
            key_state: match (&delete_all, &key) {
                (true, Some(k)) => clients
                    .key_state(k)
                    .await
                    .map_err(aws_error("reading the KMS key"))?,
                _ => None,
            },
            adopted_database,
            adopted_bucket,
            bucket_holds_backups: match (&delete_all, &bucket) {
                (true, Some(b)) if !adopted_bucket => clients
                    .holds_objects(b, BACKUP_PREFIXES)
                    .await
                    .map_err(aws_error("looking for backups in the bucket"))?,
                _ => false,
            },
            // What else the key encrypts, weighed only when its deletion could be next.
            snapshots: if weigh_key {
                let final_name = final_snapshot.as_str();
                clients
                    .instance_snapshots(&identifier)
                    .await
                    .map_err(aws_error("listing the DB instance's snapshots"))?
                    .into_iter()
                    .map(|s| s.identifier)
                    .filter(|s| s != final_name)
                    .collect()
            } else {
                Vec::new()
            },
            automated_backups: if weigh_key {
                clients
                    .retained_automated_backups(&identifier)
                    .await
                    .map_err(aws_error("reading the retained automated backups"))?
            } else {
                0
            },
            credentials_secret: own_secret
                && policy == DeletionPolicy::Delete
                && secrets
                    .get_metadata_opt(&names.credentials_secret)
                    .await
                    .map_err(Error::observe(format!(
                        "Secret {ns}/{}",
                        names.credentials_secret
                    )))?
                    .is_some(),
        };
        let waiting = |what: String| Error::Waiting {
            what,
            after: aws.progress_interval,
        };
        match next_step(policy, d.spec.skip_final_snapshot, &seen) {
            Step::Done => {
                // The volume object is cluster-scoped, so no owner takes it along; removing
                // it (reclaim Retain) leaves the file system, which followed the policy.
                let web = WebNames::new(&ns, &name);
                delete_child(ctx, &ns, ChildKind::PersistentVolume, &web.volume).await?;
                if delete_all
                    && !adopted_database
                    && d.spec.web.admin_credentials_secret_ref.is_none()
                {
                    delete_child(ctx, &ns, ChildKind::Secret, &web.admin_secret).await?;
                }
                let note = left_behind(
                    d,
                    policy,
                    terminating,
                    &names,
                    &identifier,
                    &final_snapshot,
                    &seen,
                );
                announce(ctx, d, false, "CleanedUp", &note).await;
                return Ok(());
            }
            Step::CreateFinalSnapshot => {
                match clients
                    .create_snapshot(&identifier, &final_snapshot, &tags)
                    .await
                {
                    Err(e) if e.already_exists() => Ok(()),
                    other => other.map_err(aws_error("taking the final snapshot")),
                }?;
                announce(
                    ctx,
                    d,
                    false,
                    "FinalSnapshotStarted",
                    &format!("taking final snapshot {final_snapshot} of DB instance {identifier}"),
                )
                .await;
            }
            Step::WaitForSnapshot(status) => {
                return Err(waiting(format!(
                    "final snapshot {final_snapshot} to be available (it is {status})"
                )));
            }
            Step::DisableDeletionProtection => {
                set_deletion_protection(&clients, &identifier, false)
                    .await
                    .map_err(aws_error("turning deletion protection off"))?;
            }
            Step::EnableDeletionProtection => {
                set_deletion_protection(&clients, &identifier, true)
                    .await
                    .map_err(aws_error("turning deletion protection back on"))?;
                announce(
                    ctx,
                    d,
                    true,
                    "DeletionProtectionRestored",
                    &format!("adopted DB instance {identifier} is kept: deletion protection, turned off by an earlier cleanup, is on again"),
                )
                .await;
            }
            Step::DeleteDatabase => {
                clients
                    .delete_instance(&identifier)
                    .await
                    .map_err(aws_error("deleting the DB instance"))?;
                let after = if seen.final_snapshot.is_some() {
                    format!("its final snapshot {final_snapshot} is available")
                } else {
                    "without a final snapshot (spec.skipFinalSnapshot)".to_string()
                };
                announce(
                    ctx,
                    d,
                    true,
                    "DatabaseDeleted",
                    &format!("deleting DB instance {identifier}; {after}"),
                )
                .await;
            }
            Step::WaitForDatabase(status) => {
                return Err(waiting(format!(
                    "DB instance {identifier} to be gone (it is {status})"
                )));
            }
            Step::DeleteStack => {
                let token = format!("oe-delete-{}", uid.replace('-', ""));
                clients
                    .delete_stack(&names.stack, &token)
                    .await
                    .map_err(aws_error("deleting the stack"))?;
            }
            Step::WaitForStack(status) => {
                return Err(waiting(format!(
                    "stack {} to be deleted (it is {status})",
                    names.stack
                )));
            }
            Step::DeleteBucket => {
                let bucket = bucket.as_deref().unwrap_or_default();
                clients
                    .empty_and_delete_bucket(bucket)
                    .await
                    .map_err(aws_error("deleting the bucket"))?;
                announce(
                    ctx,
                    d,
                    true,
                    "BucketDeleted",
                    &format!("deleted bucket {bucket} and every object version in it"),
                )
                .await;
            }
            Step::DeleteFileSystem => {
                let file_system = file_system.as_deref().unwrap_or_default();
                match clients.delete_file_system(file_system).await {
                    // Its mount targets are still going.
                    Err(e) if e.is_conflict() => {
                        return Err(waiting(format!(
                            "file system {file_system}'s mount targets to be deleted"
                        )));
                    }
                    other => other.map_err(aws_error("deleting the file system"))?,
                }
                announce(
                    ctx,
                    d,
                    true,
                    "FileSystemDeleted",
                    &format!("deleted file system {file_system}"),
                )
                .await;
            }
            Step::ScheduleKeyDeletion => {
                let key = key.as_deref().unwrap_or_default();
                clients
                    .schedule_key_deletion(key)
                    .await
                    .map_err(aws_error("scheduling the key's deletion"))?;
                announce(ctx, d, true, "KeyDeletionScheduled", &format!("KMS key {key} is deleted in {KEY_DELETION_WINDOW_DAYS} days unless a person cancels it")).await;
            }
            Step::DeleteCredentialsSecret => {
                match secrets
                    .delete(&names.credentials_secret, &Default::default())
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        return Err(Error::Cleanup(format!(
                            "deleting Secret {ns}/{}: {e}",
                            names.credentials_secret
                        )));
                    }
                }
            }
        }
    }
    Err(Error::Waiting {
        what: "the next deletion step".into(),
        after: std::time::Duration::from_secs(1),
    })
}

/// Turns the instance's deletion protection on or off, at once.
async fn set_deletion_protection(
    clients: &AwsClients,
    identifier: &str,
    on: bool,
) -> Result<(), AwsError> {
    let request = crate::aws::rds::ModifyDb {
        identifier: identifier.to_string(),
        apply_immediately: true,
        deletion_protection: Some(on),
        ..Default::default()
    };
    clients.modify_instance(&request).await
}

/// The Event text of a finished cleanup: what was removed, and what is left and where.
/// Where AWS Backup keeps the automatic backups of EFS file systems.
const EFS_BACKUP_VAULT: &str = "aws/efs/automatic-backup-vault";

fn left_behind(
    d: &OpenEMRDeployment,
    policy: DeletionPolicy,
    terminating: bool,
    names: &ClinicNames,
    identifier: &str,
    final_snapshot: &str,
    seen: &Seen,
) -> String {
    let status = d.status.clone().unwrap_or_default();
    let mut kept = Vec::new();
    if let Some(db) = &seen.database {
        let adopted = if seen.adopted_database {
            ", adopted: never deleted by the operator"
        } else {
            ""
        };
        kept.push(format!(
            "DB instance {} ({}{adopted})",
            identifier, db.status
        ));
    }
    if let Some(s) = &seen.final_snapshot {
        kept.push(format!("final snapshot {}", s.identifier));
    } else if policy != DeletionPolicy::Retain
        && !d.spec.skip_final_snapshot
        && !seen.adopted_database
    {
        kept.push(format!("final snapshot {final_snapshot}"));
    }
    // What the stack made is named as status last saw it: nothing is listed that was
    // never created.
    // Under `Delete` with an adopted instance kept, everything stays with it.
    let all_kept = policy != DeletionPolicy::Delete || adopted_instance_kept(seen);
    if all_kept && status.stack.as_ref().is_some_and(|s| s.id.is_some()) {
        kept.push(format!("stack {}", names.stack));
    }
    kept.extend(backups_left(seen));
    if !all_kept {
        // The file system went; the bucket stays if adopted or holding backups, the key
        // while anything encrypted with it remains.
        if let (Some(b), Some(why)) = (&status.bucket_name, bucket_kept(seen)) {
            kept.push(format!("bucket {b} ({why})"));
        }
        let holders = key_holders(seen);
        if !holders.is_empty() {
            kept.extend(
                status
                    .kms_key_arn
                    .map(|k| format!("KMS key {k} (still encrypting: {})", holders.join(", "))),
            );
        }
        // The stack turns EFS automatic backups on: AWS Backup's recovery points outlive
        // the file system (they are AWS Backup's, not the stack's).
        kept.extend(status.file_system_id.as_ref().map(|f| {
            format!(
                "AWS Backup's daily recovery points of file system {f} in vault \
                 {EFS_BACKUP_VAULT}, until AWS Backup expires them (35 days unless its \
                 plan was changed)"
            )
        }));
    } else {
        kept.extend(status.bucket_name.map(|b| format!("bucket {b}")));
        kept.extend(status.kms_key_arn.map(|k| format!("KMS key {k}")));
        kept.extend(status.file_system_id.map(|f| format!("file system {f}")));
    }
    if all_kept && d.spec.database.credentials_secret_ref.is_none() {
        kept.push(format!("Secret {}", names.credentials_secret));
    }
    let why = if terminating && d.spec.deletion_policy != DeletionPolicy::Retain {
        format!(
            "the namespace is being deleted, so deletionPolicy {:?} was not carried out and the data is kept; the Secrets in the namespace (the database's and the first administrator's credentials) go with it, so keep a copy of them to reach the data",
            d.spec.deletion_policy
        )
    } else if policy == DeletionPolicy::Delete && adopted_instance_kept(seen) {
        "deletionPolicy Delete carried out as far as the adopted DB instance allows: the operator did not make it, so it is kept, and with it the stack (its groups), the file system (the drive keys its data pairs with), the key and the Secrets".to_string()
    } else {
        format!("deletionPolicy {policy:?} carried out")
    };
    if kept.is_empty() {
        format!(
            "{why}; nothing of this clinic is left in AWS ({})",
            d.spec.aws.region
        )
    } else {
        format!(
            "{why}; left in AWS ({}): {}",
            d.spec.aws.region,
            kept.join(", ")
        )
    }
}
