//! Reading a clinic's infrastructure: its stack and DB instance (from the shared inventory
//! while the clinic is at rest, else from AWS), why a failed stack failed, its own
//! credentials Secret and an adopted bucket's settings.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::leftovers::Leftover;
use super::ownership::{Owner, owner_of};
use super::{AdoptedBucket, AuditView, Infra};
use crate::api::OpenEMRDeployment;
use crate::aws::accounts::account_key;
use crate::aws::cloudformation::{StackState, Stacks};
use crate::aws::rds::Databases;
use crate::aws::s3::Buckets;
use crate::aws::teardown::{RetainedKind, Teardown};
use crate::controller::audit::AuditMode;
use crate::controller::deployment::clinic::{
    ClinicNames, announce, aws_error, clients, clinic_tags, db_identifier,
};
use crate::controller::{ClinicAws, Context, Error, lookup};

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

/// Where the clinic's activity is recorded. A failure to read the shared trail is reported
/// in `AuditReady` and never stops the rest of the clinic (only a new stack waits).
async fn observe_audit(d: &OpenEMRDeployment, aws: &ClinicAws, ctx: &Context) -> AuditView {
    if !d.spec.audit.cloud_trail {
        return AuditView::Off;
    }
    let region = match aws.audit.mode() {
        AuditMode::Organization { trail_arn } => return AuditView::Organization(trail_arn.clone()),
        AuditMode::Shared { region, .. } => region,
    };
    // The operator's own identity in the clinic's account; only where it has none, the
    // clinic's role (the trail is made in that account, and nothing else can reach it).
    let role = d.spec.aws.role_arn.as_deref();
    let session = crate::controller::audit::SESSION_NAME;
    let clients = match aws.pool.account_clients(account_key(role), session, region) {
        Some(own) => own,
        None => aws.pool.clients(role, session, region).await,
    };
    let seen = aws.audit.view(&clients).await;
    if let Some(note) = &seen.corrected {
        announce(ctx, d, true, "AuditTrailRestarted", note).await;
    }
    AuditView::Shared(seen.view)
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
    let mut claimed_by = None;
    if d.spec
        .adopt
        .as_ref()
        .is_some_and(|a| a.db_instance_identifier.is_some())
    {
        let me = crate::aws::inventory::Owner {
            namespace: ns.clone(),
            name: name.clone(),
        };
        // The first clinic to adopt an instance keeps it while it exists; a claim left by
        // a clinic since deleted is taken over.
        match aws.inventory.claimant(&clients, &identifier) {
            Some(other)
                if other != me
                    && lookup(&ctx.caches.deployments, &other.namespace, &other.name).is_some() =>
            {
                claimed_by = Some((other.namespace, other.name));
            }
            _ => aws.inventory.claim(&clients, &identifier, me),
        }
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
    // The instance's tags outweigh a claim made in memory (after a restart, whichever
    // clinic looked first claimed it).
    if claimed_by.is_some()
        && database
            .as_ref()
            .is_some_and(|db| owner_of(&db.tags, &tags) == Owner::This)
    {
        claimed_by = None;
        aws.inventory.claim(
            &clients,
            &identifier,
            crate::aws::inventory::Owner {
                namespace: ns.clone(),
                name: name.clone(),
            },
        );
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
    let leftovers = match (&stack, &stack_failure) {
        (Some(s), Some(failure)) if s.state() == StackState::RolledBack => {
            read_leftovers(&clients, &failure.retained).await?
        }
        _ => Vec::new(),
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
    let audit = observe_audit(d, aws, ctx).await;
    let refused = aws.refusals.of(
        d.metadata.uid.as_deref().unwrap_or_default(),
        d.metadata.generation.unwrap_or_default(),
    );
    Ok(Infra {
        audit,
        refused,
        adopted_bucket,
        names,
        tags,
        stack,
        stack_failure,
        leftovers,
        database,
        credentials_secret,
        user_master_password,
        progress_interval: aws.progress_interval,
        claimed_by,
    })
}

/// Each resource a rolled-back creation retained, as it is now (a few reads, only while a
/// stack is `ROLLBACK_COMPLETE`).
async fn read_leftovers(
    clients: &crate::aws::AwsClients,
    retained: &[crate::aws::cloudformation::RetainedResource],
) -> Result<Vec<Leftover>, Error> {
    let mut leftovers = Vec::new();
    for resource in retained {
        let facts = match (
            RetainedKind::of(&resource.resource_type),
            &resource.physical_id,
        ) {
            (Some(kind), Some(id)) => clients
                .retained_facts(kind, id)
                .await
                .map_err(aws_error("reading what the failed creation retained"))?,
            // Never made, or of a kind the operator leaves alone (said as kept).
            (None, Some(_)) => Some(Default::default()),
            (_, None) => None,
        };
        leftovers.push(Leftover {
            resource: resource.clone(),
            facts,
        });
    }
    Ok(leftovers)
}
