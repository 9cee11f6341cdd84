//! Carrying out the infrastructure's changes, each idempotent (deterministic names, request
//! tokens, create-only Secrets), so a repeat after a crash does nothing twice; each step
//! taken is announced as an Event on the clinic.

use kube::ResourceExt;

use super::leftovers::Removal;
use super::{InfraChange, MasterSource};
use crate::api::OpenEMRDeployment;
use crate::aws::cloudformation::{Stacks, UpdateOutcome};
use crate::aws::rds::{Databases, MasterPassword};
use crate::aws::s3::Buckets;
use crate::aws::teardown::Teardown;
use crate::aws::{AwsClients, ErrorClass};
use std::collections::BTreeMap;

use crate::controller::deployment::clinic::{announce, aws_error, clients, clinic_tags};
use crate::controller::deployment::secrets::{create_credentials_secret, read_root_password};
use crate::controller::{ClinicAws, Context, Error};

/// Carries out one change of the infrastructure.
pub async fn act(
    d: &OpenEMRDeployment,
    change: &InfraChange,
    aws: &ClinicAws,
    ctx: &Context,
) -> Result<(), Error> {
    let ns = d.namespace().unwrap_or_default();
    match change {
        InfraChange::CreateCredentialsSecret {
            name,
            username,
            database,
        } => create_credentials_secret(d, ctx, &ns, name, username, database).await,
        InfraChange::CreateStack(request) => {
            match clients(d, aws).await.create_stack(request).await {
                // A repeat after a crash: the stack exists; the next look reads it. Any
                // other conflict (a token used for something else) is an error.
                Err(e) if e.already_exists() => Ok(()),
                other => other.map_err(aws_error("creating the stack")),
            }?;
            announce(
                ctx,
                d,
                false,
                "StackCreateStarted",
                &format!("creating stack {}", request.name),
            )
            .await;
            Ok(())
        }
        InfraChange::UpdateStack(request) => {
            let outcome = clients(d, aws)
                .await
                .update_stack(request)
                .await
                .map_err(aws_error("updating the stack"))?;
            if outcome == UpdateOutcome::Started {
                announce(
                    ctx,
                    d,
                    false,
                    "StackUpdateStarted",
                    &format!("updating stack {} to the current template", request.name),
                )
                .await;
            }
            Ok(())
        }
        InfraChange::DeleteFailedStack {
            name,
            token,
            remove,
            kept,
        } => {
            let clients = clients(d, aws).await;
            // What the rollback retained goes before the stack: a crash in between leaves
            // the stack, and with it the events that name the rest.
            for removal in remove {
                remove_leftover(&clients, removal).await?;
            }
            clients
                .delete_stack(name, token)
                .await
                .map_err(aws_error("deleting the rolled-back stack"))?;
            let mut said = format!("deleting rolled-back stack {name} to create it anew");
            if remove.is_empty() && kept.is_empty() {
                said.push_str("; its creation retained nothing");
            }
            if !remove.is_empty() {
                let removed: Vec<String> = remove.iter().map(ToString::to_string).collect();
                said.push_str(&format!(
                    "; removed what its creation retained: {}",
                    removed.join(", ")
                ));
            }
            if !kept.is_empty() {
                said.push_str(&format!("; kept in AWS: {}", kept.join("; ")));
            }
            announce(ctx, d, true, "StackReplaced", &said).await;
            Ok(())
        }
        InfraChange::RebootDatabase { identifier, why } => {
            clients(d, aws)
                .await
                .reboot_instance(identifier)
                .await
                .map_err(aws_error("rebooting the DB instance"))?;
            announce(
                ctx,
                d,
                false,
                "DatabaseRebooted",
                &format!(
                    "rebooting DB instance {identifier} so that its parameter group change takes effect ({why})"
                ),
            )
            .await;
            Ok(())
        }
        InfraChange::CreateDatabase { request, master } => {
            let mut request = (**request).clone();
            if let MasterSource::UserSecret(secret) = master {
                request.master_password =
                    MasterPassword::Given(read_root_password(ctx, &ns, secret).await?);
            }
            match clients(d, aws).await.create_instance(&request).await {
                Err(e) if e.already_exists() => Ok(()),
                other => other.map_err(aws_error("creating the DB instance")),
            }?;
            announce(
                ctx,
                d,
                false,
                "DatabaseCreateStarted",
                &format!("creating DB instance {}", request.identifier),
            )
            .await;
            Ok(())
        }
        InfraChange::SecureAdoptedBucket {
            bucket,
            kms_key_arn,
            differences,
        } => {
            let clients = clients(d, aws).await;
            for difference in differences {
                match difference.field {
                    "bucketVersioning" => clients.enable_versioning(bucket).await,
                    "bucketEncryption" => clients.encrypt_with(bucket, kms_key_arn).await,
                    "bucketPublicAccessBlock" => clients.block_public_access(bucket).await,
                    // Only the claim: spec.tags stay the stack's business.
                    "bucketTags" => {
                        let claim: BTreeMap<String, String> = clinic_tags(d, aws)
                            .into_iter()
                            .filter(|(k, _)| k.starts_with("openemr.io/"))
                            .collect();
                        clients.tag_with(bucket, &claim).await
                    }
                    _ => Ok(()),
                }
                .map_err(aws_error("securing the adopted bucket"))?;
            }
            let list: Vec<_> = differences.iter().map(ToString::to_string).collect();
            announce(
                ctx,
                d,
                false,
                "BucketSecured",
                &format!("adopted bucket {bucket}: {}", list.join("; ")),
            )
            .await;
            Ok(())
        }
        InfraChange::TagDatabase {
            identifier,
            arn,
            add,
            remove,
        } => {
            clients(d, aws)
                .await
                .retag(arn, add, remove)
                .await
                .map_err(aws_error("tagging the DB instance"))?;
            let mut what: Vec<String> = add.iter().map(|(k, v)| format!("{k}={v}")).collect();
            what.extend(remove.iter().map(|k| format!("{k} removed")));
            announce(
                ctx,
                d,
                false,
                "DatabaseTagged",
                &format!("DB instance {identifier}: {}", what.join(", ")),
            )
            .await;
            Ok(())
        }
        InfraChange::ModifyDatabase {
            request,
            differences,
        } => {
            let list: Vec<_> = differences.iter().map(ToString::to_string).collect();
            match clients(d, aws).await.modify_instance(request).await {
                // Refused as asked: remembered for this generation (not sent again, and the
                // clinic's other changes go on), and said.
                Err(e) if e.class == ErrorClass::Invalid => {
                    let fields: Vec<&str> = differences.iter().map(|d| d.field).collect();
                    aws.refusals.record(
                        d.metadata.uid.as_deref().unwrap_or_default(),
                        d.metadata.generation.unwrap_or_default(),
                        &fields,
                        &e.to_string(),
                    );
                    announce(
                        ctx,
                        d,
                        true,
                        "DatabaseChangeRefused",
                        &format!(
                            "RDS refused the change of DB instance {}: {}: {e}; it is not sent again until the spec changes",
                            request.identifier,
                            list.join("; ")
                        ),
                    )
                    .await;
                    return Ok(());
                }
                other => other.map_err(aws_error("modifying the DB instance"))?,
            }
            let when = if request.apply_immediately {
                "applied now"
            } else {
                "applied in the maintenance window"
            };
            announce(
                ctx,
                d,
                false,
                "DatabaseModified",
                &format!(
                    "DB instance {}: {} ({when})",
                    request.identifier,
                    list.join("; ")
                ),
            )
            .await;
            Ok(())
        }
    }
}

/// Removes one leftover of a rolled-back creation; gone already counts as done.
async fn remove_leftover(clients: &AwsClients, removal: &Removal) -> Result<(), Error> {
    let removed = match removal {
        Removal::Bucket(bucket) => clients.empty_and_delete_bucket(bucket).await,
        // It has no mount target (else it was kept as in use).
        Removal::FileSystem(file_system) => clients.delete_file_system(file_system).await,
        Removal::Key(key) => match clients.key_state(key).await {
            Ok(Some(state)) if state != "PendingDeletion" => {
                clients.schedule_key_deletion(key).await
            }
            other => other.map(|_| ()),
        },
    };
    removed.map_err(aws_error("removing what the failed creation retained"))
}
