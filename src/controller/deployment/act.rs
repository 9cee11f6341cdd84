//! The clinic controller's I/O: reading its infrastructure from AWS and the cluster, and
//! carrying out the changes the plan asks for, each idempotent (deterministic names,
//! request tokens, create-only Secrets), so a repeat after a crash does nothing twice.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Secret};

use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::deletion::{
    BACKUP_PREFIXES, Seen, Step, adopted_instance_kept, backups_left, bucket_kept,
    effective_policy, key_holders, next_step,
};
use super::names::{self, ClinicNames};
use super::plan::{AdoptedBucket, Change, Infra, MasterSource};
use super::web::ChildKind;
use super::web_act;
use crate::api::{DeletionPolicy, OpenEMRDeployment};
use crate::aws::AwsClients;
use crate::aws::accounts::session_name;
use crate::aws::cloudformation::{StackState, Stacks, UpdateOutcome};
use crate::aws::error::AwsError;
use crate::aws::rds::{Databases, MasterPassword};
use crate::aws::s3::Buckets;
use crate::aws::secrets::ManagedSecrets;
use crate::aws::teardown::{KEY_DELETION_WINDOW_DAYS, Teardown};
use crate::controller::{ClinicAws, Context, Error};

/// Key of the user's Secret that may hold the master password.
pub const ROOT_PASSWORD_KEY: &str = "root-password";

pub(super) async fn clients(d: &OpenEMRDeployment, aws: &ClinicAws) -> std::sync::Arc<AwsClients> {
    let session = session_name(d.namespace().as_deref().unwrap_or_default(), &d.name_any());
    aws.pool
        .clients(d.spec.aws.role_arn.as_deref(), &session, &d.spec.aws.region)
        .await
}

/// The clinic's DB instance: the adopted one, else the one it was made with.
fn db_identifier(d: &OpenEMRDeployment, names: &ClinicNames) -> String {
    d.spec
        .adopt
        .as_ref()
        .and_then(|a| a.db_instance_identifier.clone())
        .unwrap_or_else(|| names.db_instance.clone())
}

/// The tags on everything the clinic makes in AWS.
fn clinic_tags(d: &OpenEMRDeployment, aws: &ClinicAws) -> BTreeMap<String, String> {
    names::tags(
        &aws.cluster,
        &d.namespace().unwrap_or_default(),
        &d.name_any(),
        d.metadata.uid.as_deref().unwrap_or_default(),
        &d.spec.tags,
    )
}

fn aws_error(action: &'static str) -> impl FnOnce(AwsError) -> Error {
    move |source| Error::Aws { action, source }
}

/// Whether the clinic's stack and database were ready for its current generation, with
/// nothing being changed and nothing in flight: then the inventory's view (at most one
/// interval old, and pushed when it changes) is enough. A clinic whose web tier alone is
/// unhealthy (`Degraded`, which is never a phase with changes under way) is at rest too.
fn at_rest(d: &OpenEMRDeployment) -> bool {
    use crate::api::deployment::DeploymentPhase;
    d.status.as_ref().is_some_and(|s| {
        let settled = matches!(
            s.phase,
            Some(DeploymentPhase::Ready | DeploymentPhase::Degraded)
        );
        let ready = |t: &str| {
            crate::conditions::find(&s.conditions, t).is_some_and(|c| {
                c.status == "True" && c.observed_generation == d.metadata.generation
            })
        };
        settled
            && ready("StackReady")
            && ready("DatabaseReady")
            && s.observed_generation == d.metadata.generation
            && s.in_flight.is_none()
    })
}

/// Reads the clinic's stack, its DB instance and its own credentials Secret;
/// `user_master_password` says whether the user's Secret (already read) has
/// `root-password`.
pub async fn observe_infra(
    d: &OpenEMRDeployment,
    aws: &ClinicAws,
    ctx: &Context,
    user_master_password: bool,
) -> Result<Infra, Error> {
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let names = ClinicNames::new(&aws.cluster, &ns, &name);
    let tags = clinic_tags(d, aws);
    let clients = clients(d, aws).await;
    let identifier = db_identifier(d, &names);
    // A clinic at rest is served from the shared inventory; one with work in progress, or
    // whose resource the snapshot lacks (it may be newer than the snapshot), reads its own.
    let (mut stack, mut database) = (None, None);
    aws.inventory.watch(&clients);
    if d.spec
        .adopt
        .as_ref()
        .is_some_and(|a| a.db_instance_identifier.is_some())
    {
        aws.inventory.claim(
            &clients,
            &identifier,
            crate::aws::inventory::Owner {
                namespace: ns.clone(),
                name: name.clone(),
            },
        );
    }
    if at_rest(d) {
        (stack, database) = aws
            .inventory
            .view(&clients, &names.stack, &identifier)
            .await
            .map_err(aws_error("reading the inventory"))?;
    }
    if stack.is_none() {
        stack = clients
            .describe_stack(&names.stack)
            .await
            .map_err(aws_error("reading the stack"))?;
        aws.inventory.saw(&clients, stack.as_ref(), None);
    }
    if database.is_none() {
        database = clients
            .describe_instance(&identifier)
            .await
            .map_err(aws_error("reading the DB instance"))?;
        aws.inventory.saw(&clients, None, database.as_ref());
    }
    let stack_failure = match &stack {
        Some(s)
            if matches!(s.state(), StackState::RolledBack | StackState::Failed)
                || s.status == "UPDATE_ROLLBACK_COMPLETE" =>
        {
            clients
                .first_failure(&names.stack)
                .await
                .map_err(aws_error("reading the stack's events"))?
        }
        _ => None,
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    // The user's Secret was read (and its keys checked) before AWS was; only the
    // operator's own is looked for here.
    let credentials_secret = match &d.spec.database.credentials_secret_ref {
        Some(_) => true,
        None => secrets
            .get_metadata_opt(&names.credentials_secret)
            .await
            .map_err(Error::observe(format!(
                "Secret {ns}/{}",
                names.credentials_secret
            )))?
            .is_some(),
    };
    // An adopted bucket is read while the clinic is not at rest: to report how it differs
    // before the first change, and to see that a correction took.
    let adopted_bucket = match d.spec.adopt.as_ref().and_then(|a| a.bucket_name.as_deref()) {
        Some(bucket) if !at_rest(d) => match clients
            .bucket_settings(bucket)
            .await
            .map_err(aws_error("reading the adopted bucket"))?
        {
            Some(settings) => AdoptedBucket::Seen(settings),
            None => AdoptedBucket::Missing,
        },
        _ => AdoptedBucket::NotRead,
    };
    Ok(Infra {
        adopted_bucket,
        names,
        tags,
        stack,
        stack_failure,
        database,
        credentials_secret,
        user_master_password,
        progress_interval: aws.progress_interval,
    })
}

/// Carries out one change.
pub async fn act(d: &OpenEMRDeployment, change: &Change, ctx: &Context) -> Result<(), Error> {
    let Some(aws) = &ctx.aws else {
        return Err(Error::Act {
            action: "provisioning".into(),
            reason: "NoAwsSettings",
            message: "the operator runs without AWS settings".into(),
        });
    };
    let ns = d.namespace().unwrap_or_default();
    match change {
        Change::CreateCredentialsSecret {
            name,
            username,
            database,
        } => create_credentials_secret(d, ctx, &ns, name, username, database).await,
        Change::CreateStack(request) => {
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
        Change::UpdateStack(request) => {
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
        Change::DeleteFailedStack {
            name,
            token,
            retained,
        } => {
            clients(d, aws)
                .await
                .delete_stack(name, token)
                .await
                .map_err(aws_error("deleting the rolled-back stack"))?;
            let kept = if retained.is_empty() {
                "it retained no resources".to_string()
            } else {
                format!("it retained, and AWS keeps: {}", retained.join(", "))
            };
            announce(
                ctx,
                d,
                true,
                "StackReplaced",
                &format!("deleting rolled-back stack {name} to create it anew; {kept}"),
            )
            .await;
            Ok(())
        }
        Change::CreateDatabase { request, master } => {
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
        Change::SecureAdoptedBucket {
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
        Change::ApplyChildren(children) => web_act::apply_children(ctx, &ns, children).await,
        Change::DeleteChild { kind, name } => web_act::delete_child(ctx, &ns, *kind, name).await,
        Change::RebindVolume { name } => web_act::rebind_volume(ctx, name).await,
        Change::CreateAdminSecret { name } => {
            let password = new_password("the administrator's password")?;
            let secret = web_act::secret(
                &ns,
                name,
                web_act::generated_labels(&d.name_any()),
                Some(BTreeMap::from([(
                    "openemr.io/retained-with-data".to_string(),
                    "OpenEMR's first administrator; kept when the clinic is deleted, unless its deletionPolicy is Delete".to_string(),
                )])),
                None,
                BTreeMap::from([
                    ("username".to_string(), "admin".to_string()),
                    ("password".to_string(), password),
                ]),
            );
            web_act::create_secret_once(ctx, &ns, secret).await
        }
        Change::CopyMasterPassword { name, secret_arn } => {
            let password = clients(d, aws)
                .await
                .master_password(secret_arn)
                .await
                .map_err(aws_error("reading the master password for setup"))?;
            let secret = web_act::secret(
                &ns,
                name,
                web_act::generated_labels(&d.name_any()),
                None,
                d.controller_owner_ref(&()),
                BTreeMap::from([("password".to_string(), password.0)]),
            );
            web_act::create_secret_once(ctx, &ns, secret).await
        }
        Change::CreateUpgradeSnapshot { snapshot } => {
            let name = d.name_any();
            let names = ClinicNames::new(&aws.cluster, &ns, &name);
            let identifier = db_identifier(d, &names);
            let tags = clinic_tags(d, aws);
            match clients(d, aws)
                .await
                .create_snapshot(&identifier, snapshot, &tags)
                .await
            {
                // A repeat after a crash: the one snapshot exists already. Any other
                // conflict (the instance busy) is an error, retried with backoff.
                Err(e) if e.already_exists() => Ok(()),
                other => other.map_err(aws_error("taking the pre-upgrade snapshot")),
            }?;
            announce(
                ctx,
                d,
                false,
                "UpgradeSnapshotStarted",
                &format!(
                    "DB snapshot {snapshot} of {identifier} is being taken before the upgrade"
                ),
            )
            .await;
            Ok(())
        }
        Change::Announce {
            reason,
            note,
            warning,
        } => {
            announce(ctx, d, *warning, reason, note).await;
            Ok(())
        }
        Change::ModifyDatabase {
            request,
            differences,
        } => {
            clients(d, aws)
                .await
                .modify_instance(request)
                .await
                .map_err(aws_error("modifying the DB instance"))?;
            let list: Vec<_> = differences.iter().map(ToString::to_string).collect();
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

/// The `root-password` of the user's Secret, read at the moment it is sent and never kept.
async fn read_root_password(ctx: &Context, ns: &str, secret: &str) -> Result<String, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let found = api
        .get_opt(secret)
        .await
        .map_err(Error::observe(format!("Secret {ns}/{secret}")))?;
    found
        .and_then(|s| s.data)
        .and_then(|mut d| d.remove(ROOT_PASSWORD_KEY))
        .and_then(|v| String::from_utf8(v.0).ok())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| Error::Act {
            action: "creating the DB instance".into(),
            reason: "CredentialsSecretInvalid",
            message: format!(
                "Secret {secret:?} has no usable {ROOT_PASSWORD_KEY:?} (UTF-8, not empty)"
            ),
        })
}

/// Characters of generated passwords: letters and digits, which RDS, MySQL, shells and
/// URLs all take as they are.
const PASSWORD_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const PASSWORD_LENGTH: usize = 32;

/// A password from the operating system's CSPRNG, without modulo bias.
pub fn generate_password() -> Result<String, getrandom::Error> {
    let n = PASSWORD_ALPHABET.len();
    // The largest multiple of the alphabet below 256: bytes above it are drawn again.
    let limit = (256 / n * n) as u8;
    let mut out = String::with_capacity(PASSWORD_LENGTH);
    let mut buf = [0u8; 64];
    while out.len() < PASSWORD_LENGTH {
        getrandom::fill(&mut buf)?;
        for b in buf {
            if b < limit && out.len() < PASSWORD_LENGTH {
                out.push(PASSWORD_ALPHABET[b as usize % n] as char);
            }
        }
    }
    Ok(out)
}

/// Creates the credentials Secret once. It has no owner: credentials of retained data stay
/// with the data when the clinic goes (only `deletionPolicy: Delete` removes it).
async fn create_credentials_secret(
    d: &OpenEMRDeployment,
    ctx: &Context,
    ns: &str,
    name: &str,
    username: &str,
    database: &str,
) -> Result<(), Error> {
    let password = new_password("the database password")?;
    let secret = web_act::secret(
        ns,
        name,
        BTreeMap::from([
            (
                "app.kubernetes.io/managed-by".to_string(),
                "openemr-operator".to_string(),
            ),
            (names::TAG_NAME.to_string(), d.name_any()),
        ]),
        Some(BTreeMap::from([(
            "openemr.io/retained-with-data".to_string(),
            "kept when the clinic is deleted, unless its deletionPolicy is Delete".to_string(),
        )])),
        None,
        BTreeMap::from([
            ("username".to_string(), username.to_string()),
            ("password".to_string(), password),
            ("database".to_string(), database.to_string()),
        ]),
    );
    // Created by an earlier attempt: never overwritten, the database may use it.
    web_act::create_secret_once(ctx, ns, secret).await
}

/// A generated password, or why there is none.
fn new_password(what: &str) -> Result<String, Error> {
    generate_password().map_err(|e| Error::Act {
        action: format!("generating {what}"),
        reason: "RandomUnavailable",
        message: e.to_string(),
    })
}

/// An Event on the clinic about a step taken in AWS.
pub async fn announce(
    ctx: &Context,
    d: &OpenEMRDeployment,
    warning: bool,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(note.to_string()),
        action: "Provision".into(),
        secondary: None,
    };
    ctx.publish::<OpenEMRDeployment>(&event, &d.object_ref(&()))
        .await;
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
    let names = ClinicNames::new(&aws.cluster, &ns, &name);
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let terminating = namespaces
        .get_opt(&ns)
        .await
        .map_err(Error::observe(format!("Namespace {ns}")))?
        .is_none_or(|n| n.metadata.deletion_timestamp.is_some());
    let policy = effective_policy(d.spec.deletion_policy, terminating);
    let clients = clients(d, aws).await;
    let identifier = db_identifier(d, &names);
    let final_snapshot = names.final_snapshot(&uid);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let own_secret = d.spec.database.credentials_secret_ref.is_none();
    let tags = clinic_tags(d, aws);
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
        let database = clients
            .describe_instance(&identifier)
            .await
            .map_err(aws_error("reading the DB instance"))?;
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
            stack: if policy == DeletionPolicy::Delete {
                clients
                    .describe_stack(&names.stack)
                    .await
                    .map_err(aws_error("reading the stack"))?
            } else {
                None
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
                let web = super::web::WebNames::new(&ns, &name);
                web_act::delete_child(ctx, &ns, ChildKind::PersistentVolume, &web.volume).await?;
                if delete_all
                    && !adopted_database
                    && d.spec.web.admin_credentials_secret_ref.is_none()
                {
                    web_act::delete_child(ctx, &ns, ChildKind::Secret, &web.admin_secret).await?;
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
