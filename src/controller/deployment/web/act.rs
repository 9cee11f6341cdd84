//! The web tier's changes: server-side applies under the field manager
//! [`WEB_MANAGER`], forced so hand edits are put back, deletions, the generated Secrets of
//! the first setup, the upgrade's snapshot, and Events.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret, Service,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{CLINIC_LABEL, Child, ChildKind, REDIS_AUTH_SOURCE_ANNOTATION, WebChange};
use crate::api::OpenEMRDeployment;
use crate::aws::rds::Databases;
use crate::aws::secrets::ManagedSecrets;
use crate::aws::teardown::Teardown;
use crate::controller::deployment::clinic::{
    ClinicNames, TAG_NAME, TAG_UID, announce, aws_error, clients, clinic_tags, db_identifier,
    upgrade_snapshot_prefix, upgrade_snapshots_to_prune,
};
use crate::controller::deployment::secrets;
use crate::controller::{ClinicAws, Context, Error};

/// Field manager of the web tier's applies.
pub const WEB_MANAGER: &str = "openemr-operator/web";

/// Carries out one change of the web tier.
pub async fn act(
    d: &OpenEMRDeployment,
    change: &WebChange,
    aws: &ClinicAws,
    ctx: &Context,
) -> Result<(), Error> {
    let ns = d.namespace().unwrap_or_default();
    match change {
        WebChange::ApplyChildren(children) => apply_children(ctx, &ns, children).await,
        WebChange::DeleteChild { kind, name } => delete_child(ctx, &ns, *kind, name).await,
        WebChange::RebindVolume { name } => rebind_volume(ctx, name).await,
        WebChange::CreateAdminSecret { name } => {
            secrets::create_admin_secret(
                ctx,
                &ns,
                name,
                secrets::FIRST_ADMINISTRATOR,
                generated_labels(&d.name_any()),
            )
            .await
        }
        WebChange::CopyMasterPassword { name, secret_arn } => {
            let labels = generated_labels(&d.name_any());
            secrets::copy_master_password(d, aws, ctx, &ns, name, secret_arn, labels).await
        }
        WebChange::CopyRedisAuthToken { name, secret_arn } => {
            copy_redis_auth_token(d, aws, ctx, &ns, name, secret_arn).await
        }
        WebChange::CreateUpgradeSnapshot { snapshot } => {
            let identifier = instance_of(d, aws, &ns);
            let tags = clinic_tags(d, aws);
            let clients = clients(d, aws).await;
            match clients.create_snapshot(&identifier, snapshot, &tags).await {
                // A repeat after a crash: the one snapshot exists already, if its tags say
                // it is this clinic's. Any other conflict (the instance busy) is an error,
                // retried with backoff.
                Err(e) if e.already_exists() => {
                    let found = clients
                        .describe_snapshot(snapshot)
                        .await
                        .map_err(aws_error("reading the pre-upgrade snapshot"))?;
                    let uid = d.metadata.uid.as_deref().unwrap_or_default();
                    if found.is_some_and(|s| s.tags.get(TAG_UID).map(String::as_str) != Some(uid)) {
                        return Err(Error::Act {
                            action: "taking the pre-upgrade snapshot".into(),
                            reason: "AwsConflict",
                            message: format!(
                                "DB snapshot {snapshot} exists and is not this clinic's (its openemr.io/uid tag differs); rename or delete it"
                            ),
                        });
                    }
                    Ok(())
                }
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
        WebChange::PruneUpgradeSnapshots { current, keep } => {
            let identifier = instance_of(d, aws, &ns);
            let uid = d.metadata.uid.clone().unwrap_or_default();
            let clients = clients(d, aws).await;
            let snapshots: Vec<_> = clients
                .instance_snapshots(&identifier)
                .await
                .map_err(aws_error("listing the DB instance's snapshots"))?
                .into_iter()
                .map(|s| (s.identifier, s.tags))
                .collect();
            let prefix = upgrade_snapshot_prefix(&identifier, &uid);
            let old = upgrade_snapshots_to_prune(&snapshots, &prefix, &uid, current, *keep);
            for snapshot in &old {
                clients
                    .delete_snapshot(snapshot)
                    .await
                    .map_err(aws_error("deleting an older upgrade snapshot"))?;
            }
            if !old.is_empty() {
                announce(
                    ctx,
                    d,
                    false,
                    "UpgradeSnapshotsPruned",
                    &format!(
                        "kept the newest {keep} upgrade snapshots (--upgrade-snapshots-kept), {current} among them; deleted {}",
                        old.join(", ")
                    ),
                )
                .await;
            }
            Ok(())
        }
        WebChange::Announce {
            reason,
            note,
            warning,
        } => {
            announce(ctx, d, *warning, reason, note).await;
            Ok(())
        }
    }
}

async fn apply<K>(ctx: &Context, ns: &str, child: &Child) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    send(api, child).await
}

/// The clinic's DB instance (its own or the adopted one), whose snapshots an upgrade takes.
fn instance_of(d: &OpenEMRDeployment, aws: &ClinicAws, ns: &str) -> String {
    db_identifier(d, &ClinicNames::new(&aws.cluster, ns, &d.name_any()))
}

/// Copies the Redis AUTH token into the clinic's Secret `name`, annotated with the secret
/// it came from; a copy from another secret is replaced. The clinic owns the copy: the
/// token itself stays in Secrets Manager with the stack.
async fn copy_redis_auth_token(
    d: &OpenEMRDeployment,
    aws: &ClinicAws,
    ctx: &Context,
    ns: &str,
    name: &str,
    secret_arn: &str,
) -> Result<(), Error> {
    let token = clients(d, aws)
        .await
        .redis_auth_token(secret_arn)
        .await
        .map_err(aws_error("reading the Redis AUTH token"))?;
    let copy = secrets::secret(
        ns,
        name,
        generated_labels(&d.name_any()),
        Some(BTreeMap::from([(
            REDIS_AUTH_SOURCE_ANNOTATION.to_string(),
            secret_arn.to_string(),
        )])),
        d.controller_owner_ref(&()),
        BTreeMap::from([(secrets::PASSWORD_KEY.to_string(), token.0)]),
    );
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    api.patch(
        name,
        &PatchParams::apply(WEB_MANAGER).force(),
        &Patch::Apply(&copy),
    )
    .await
    .map_err(|e| Error::Act {
        action: format!("writing Secret {ns}/{name}"),
        reason: "SecretWriteFailed",
        message: e.to_string(),
    })?;
    count(ctx, ChildKind::Secret);
    Ok(())
}

async fn send<K>(api: Api<K>, child: &Child) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let result = if child.kind.create_only() {
        let obj: K = serde_json::from_value(child.body.clone()).map_err(|e| Error::Act {
            action: format!("rendering {} {}", child.kind, child.name),
            reason: "RenderFailed",
            message: e.to_string(),
        })?;
        match api.create(&PostParams::default(), &obj).await {
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            other => other.map(|_| ()),
        }
    } else {
        api.patch(
            &child.name,
            &PatchParams::apply(WEB_MANAGER).force(),
            &Patch::Apply(&child.body),
        )
        .await
        .map(|_| ())
    };
    result.map_err(|e| Error::Act {
        action: format!("applying {} {}", child.kind, child.name),
        reason: "ChildApplyFailed",
        message: e.to_string(),
    })
}

fn count(ctx: &Context, kind: ChildKind) {
    ctx.metrics
        .child_writes
        .get_or_create(&crate::metrics::ChildKindLabel {
            kind: kind.to_string(),
        })
        .inc();
}

/// Applies children in order.
pub async fn apply_children(ctx: &Context, ns: &str, children: &[Child]) -> Result<(), Error> {
    for child in children {
        count(ctx, child.kind);
        match child.kind {
            ChildKind::Secret => apply::<Secret>(ctx, ns, child).await,
            ChildKind::ConfigMap => apply::<ConfigMap>(ctx, ns, child).await,
            ChildKind::PersistentVolume => {
                send(Api::<PersistentVolume>::all(ctx.client.clone()), child).await
            }
            ChildKind::PersistentVolumeClaim => {
                apply::<PersistentVolumeClaim>(ctx, ns, child).await
            }
            ChildKind::Service => apply::<Service>(ctx, ns, child).await,
            ChildKind::Job => apply::<Job>(ctx, ns, child).await,
            ChildKind::Deployment => apply::<Deployment>(ctx, ns, child).await,
            ChildKind::PodDisruptionBudget => apply::<PodDisruptionBudget>(ctx, ns, child).await,
            ChildKind::Ingress => apply::<Ingress>(ctx, ns, child).await,
            ChildKind::NetworkPolicy => apply::<NetworkPolicy>(ctx, ns, child).await,
        }?;
    }
    Ok(())
}

/// Drops the uid of the deleted claim from the volume's `claimRef`: the volume turns
/// `Available`, still pre-bound by name, and binds to the claim of that name made anew.
pub async fn rebind_volume(ctx: &Context, name: &str) -> Result<(), Error> {
    count(ctx, ChildKind::PersistentVolume);
    let patch = serde_json::json!({"spec": {"claimRef": {"uid": null, "resourceVersion": null}}});
    match Api::<PersistentVolume>::all(ctx.client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::Act {
            action: format!("binding PersistentVolume {name} to its claim again"),
            reason: "ChildWriteFailed",
            message: e.to_string(),
        }),
    }
}

/// Deletes a child (gone already is fine).
pub async fn delete_child(
    ctx: &Context,
    ns: &str,
    kind: ChildKind,
    name: &str,
) -> Result<(), Error> {
    count(ctx, kind);
    let params = DeleteParams::background();
    let client = ctx.client.clone();
    let result = match kind {
        ChildKind::Secret => Api::<Secret>::namespaced(client, ns)
            .delete(name, &params)
            .await
            .map(|_| ()),
        ChildKind::Ingress => Api::<Ingress>::namespaced(client, ns)
            .delete(name, &params)
            .await
            .map(|_| ()),
        ChildKind::PodDisruptionBudget => Api::<PodDisruptionBudget>::namespaced(client, ns)
            .delete(name, &params)
            .await
            .map(|_| ()),
        ChildKind::PersistentVolume => Api::<PersistentVolume>::all(client)
            .delete(name, &params)
            .await
            .map(|_| ()),
        other => {
            return Err(Error::Act {
                action: format!("deleting {other} {name}"),
                reason: "NotDeletable",
                message: "the operator never deletes this kind of child".into(),
            });
        }
    };
    match result {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::Act {
            action: format!("deleting {kind} {name}"),
            reason: "ChildDeleteFailed",
            message: e.to_string(),
        }),
    }
}

/// Labels of a Secret the operator generates for a clinic (so the child cache holds it).
pub fn generated_labels(clinic: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            "openemr-operator".to_string(),
        ),
        (CLINIC_LABEL.to_string(), clinic.to_string()),
        (TAG_NAME.to_string(), clinic.to_string()),
    ])
}
