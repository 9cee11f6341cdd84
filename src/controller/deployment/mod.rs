//! OpenEMRDeployment controller: one clinic's AWS infrastructure and web tier, kept as
//! declared.
//!
//! This module is the glue: `observe` checks the Secrets the spec names ([`secrets`]; read
//! when the clinic or one of them changes, watched by metadata only and never cached), then
//! reads the infrastructure ([`infra`]) and the web tier ([`web`]); `plan` asks each part
//! for its plan, purely, and merges them into one status and one list of [`Change`]s;
//! `act` hands each change to the part it belongs to. Names come from [`clinic`]. Clinics
//! carry the finalizer [`FINALIZER`] so that `deletionPolicy` is carried out ([`cleanup`])
//! before they go.
//!
//! Dependencies go one way: `infra` and `web` never import each other; what the web tier
//! needs of the infrastructure is a [`site::Site`], which `infra` builds and `web` runs on.
//! `cleanup` uses `web`'s writes (the volume, the generated administrator Secret). They
//! share [`clinic`], [`secrets`] and [`site`], which import none of them.

pub mod cleanup;
pub mod clinic;
pub mod infra;
pub mod secrets;
pub mod site;
pub mod web;

use std::sync::atomic::Ordering;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::{AwsFailure, Context, Error, Plan, Reconcile, RefKind, Requeue, status_with};
use crate::api::deployment::DeploymentPhase;
use crate::api::{OpenEMRDeployment, OpenEMRDeploymentStatus};
use crate::conditions::Verdict;
use infra::InfraChange;
use secrets::{SecretCheck, SecretSeen};
use web::WebChange;

/// What `observe` found.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Each Secret the spec names, with what was found.
    pub secrets: Vec<SecretSeen>,
    /// The clinic's AWS infrastructure; not read while a named Secret is missing (nothing is
    /// created for a spec that is not accepted), nor without AWS settings.
    pub infra: Option<infra::Infra>,
    /// The web tier's children and holds, read with the infrastructure (and without it
    /// when AWS cannot be read).
    pub workload: Option<web::WorkloadSeen>,
    /// An AWS read that failed: the web tier is planned without it, then the reconcile
    /// fails with it.
    pub aws_failure: Option<AwsFailure>,
}

/// The finalizer on every clinic: its AWS resources are dealt with before it goes.
pub const FINALIZER: &str = "openemr.io/cleanup";

/// A mutating call a clinic's plan asks for: in AWS for its infrastructure, or for its web
/// tier.
#[derive(Clone, PartialEq)]
pub enum Change {
    Infra(InfraChange),
    Web(WebChange),
}

impl std::fmt::Debug for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Infra(c) => c.fmt(f),
            Change::Web(c) => c.fmt(f),
        }
    }
}

impl Change {
    /// The action and token recorded in `status.inFlight` before the call.
    pub fn intent(&self) -> (String, String) {
        match self {
            Change::Infra(c) => c.intent(),
            Change::Web(c) => c.intent(),
        }
    }

    /// Whether the intent is stored in status before the call: for AWS calls, whose
    /// repetition after a crash must be recognised. Kubernetes applies and Events are
    /// idempotent or harmless to repeat, and cost no status write.
    pub fn recorded(&self) -> bool {
        match self {
            Change::Infra(c) => c.recorded(),
            Change::Web(c) => c.recorded(),
        }
    }
}

impl Reconcile for OpenEMRDeployment {
    type Observed = Observed;
    type Change = Change;
    const CONTROLLER: &'static str = "openemrdeployment";
    const REF_KIND: Option<RefKind> = Some(RefKind::Deployment);
    const FINALIZER: Option<&'static str> = Some(FINALIZER);

    fn references(&self) -> Vec<(RefKind, String)> {
        // Its own AWS resources (the inventory names the clinic when they change) and its
        // web tier's children and holds (their watches do).
        let own = [
            (RefKind::Infrastructure, self.name_any()),
            (RefKind::Workload, self.name_any()),
        ];
        self.referenced_secrets()
            .into_iter()
            .map(|(_, r)| (RefKind::Secret, r.name.clone()))
            .chain(own)
            .collect()
    }

    /// A switch of its database (an in-place restore's or its rollback's, written by the
    /// RestoreRequest) changes only its status, which by itself wakes nothing: the clinic
    /// tells itself (its own AWS resources' reference), so it takes the new instance at once
    /// rather than at its next resync.
    fn announced(&self) -> Option<(u64, Vec<(RefKind, String)>)> {
        use std::hash::{Hash, Hasher};
        let switch = self.status.as_ref()?.database_switch.as_ref()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&switch.identifier, &switch.restore_request).hash(&mut hasher);
        Some((
            hasher.finish(),
            vec![(RefKind::Infrastructure, self.name_any())],
        ))
    }

    fn intent(change: &Change) -> (String, String) {
        change.intent()
    }

    fn recorded(change: &Change) -> bool {
        change.recorded()
    }

    async fn act(&self, change: &Change, ctx: &Context) -> Result<(), Error> {
        let Some(aws) = &ctx.aws else {
            return Err(Error::Act {
                action: "provisioning".into(),
                reason: "NoAwsSettings",
                message: "the operator runs without AWS settings".into(),
            });
        };
        match change {
            Change::Infra(change) => infra::act::act(self, change, aws, ctx).await,
            Change::Web(change) => web::act::act(self, change, aws, ctx).await,
        }
    }

    async fn cleanup(&self, ctx: &Context) -> Result<(), Error> {
        cleanup::act::cleanup(self, ctx).await
    }

    async fn observe(&self, ctx: &Context) -> Result<Observed, Error> {
        let (secrets, user_master_password) = secrets::observe(self, ctx).await?;
        let accepted = secrets.iter().all(|(_, _, c)| *c == SecretCheck::Present);
        let (infra, workload, aws_failure) = match &ctx.aws {
            Some(_) if accepted && !ctx.children.synced.load(Ordering::SeqCst) => {
                return Err(Error::Waiting {
                    what: "the watches of the web tier's children to list".into(),
                    after: std::time::Duration::from_secs(1),
                });
            }
            Some(aws) if accepted => {
                // AWS failing must not stop the web tier (a hold above all): its failure is
                // kept for after. A failure to read Kubernetes stops everything, as before.
                let (infra, infra_failure) =
                    match infra::observe::observe_infra(self, aws, ctx, user_master_password).await
                    {
                        Ok(infra) => (Some(infra), None),
                        Err(e) => (None, Some(e.into_aws_failure()?)),
                    };
                let (workload, workload_failure) =
                    web::observe::observe_workload(self, aws, ctx).await?;
                (infra, Some(workload), infra_failure.or(workload_failure))
            }
            _ => (None, None, None),
        };
        Ok(Observed {
            secrets,
            infra,
            workload,
            aws_failure,
        })
    }

    fn plan(&self, observed: &Observed, now: Timestamp) -> Plan<OpenEMRDeploymentStatus, Change> {
        let refusal = secrets::refusal(&observed.secrets);
        let is_accepted = refusal.is_none();
        let accepted =
            refusal.unwrap_or_else(|| Verdict::truthy("Accepted", "Valid", "spec is valid"));
        let infra = observed.infra.as_ref().filter(|_| is_accepted);
        if let (None, true, Some(failure), Some(seen)) = (
            infra,
            is_accepted,
            &observed.aws_failure,
            &observed.workload,
        ) {
            return self.plan_web_only(accepted, seen, Some(failure), now);
        }
        let Some(infra) = infra else {
            let ready = if is_accepted {
                Verdict::falsy(
                    "Ready",
                    "NotProvisioned",
                    "accepted; this operator runs without AWS settings and provisions nothing",
                )
            } else {
                Verdict::falsy(
                    "Ready",
                    "NotAccepted",
                    "the spec was not accepted; see the Accepted condition",
                )
            };
            let mut status = status_with(self, &[accepted, ready], now);
            status.phase = Some(
                status
                    .phase
                    .filter(|_| is_accepted)
                    .unwrap_or(DeploymentPhase::Pending),
            );
            return Plan::after_validation(status, is_accepted);
        };
        // Another clinic's resource, or an earlier incarnation's found under this clinic's
        // names: nothing in AWS is touched; the web tier goes on as last known.
        let ownership = infra::ownership::judge(self, infra);
        if let Some(refusal) = ownership.refusal {
            let seen = observed.workload.clone().unwrap_or_default();
            return self.plan_web_only(refusal, &seen, observed.aws_failure.as_ref(), now);
        }
        let previous = self.status.clone().unwrap_or_default();
        let infra_plan =
            infra::plan::plan_infrastructure(self, infra, &previous, &ownership.notes, now);
        // The web tier runs on the last site known while the stack or the database is busy.
        let infra_ready = infra_plan.waiting.is_empty();
        let site = infra::site(self, infra).or_else(|| infra::site_from_status(self, &previous));
        let seen = observed.workload.clone().unwrap_or_default();
        let web = web::plan::plan_workload(self, site.as_ref(), infra_ready, &seen, now);
        let mut waiting = infra_plan.waiting.clone();
        if !web.verdict.status {
            waiting.push("web tier");
        }
        let aws_busy = infra_plan.in_progress || !infra_plan.changes.is_empty();
        let infra_plan_recheck = infra_plan.recheck_after;
        let (ready, phase) = infra::overall(
            &waiting,
            infra_plan.failed,
            aws_busy || web.busy || web.in_progress,
            previous.phase,
        );
        let mut verdicts = vec![accepted];
        verdicts.extend(infra_plan.verdicts);
        verdicts.push(web.verdict);
        verdicts.push(ready);
        let mut status = status_with(self, &verdicts, now);
        let conditions = std::mem::take(&mut status.conditions);
        let observed_generation = status.observed_generation;
        let in_flight = status.in_flight.take();
        status = infra_plan.status;
        status.conditions = conditions;
        status.observed_generation = observed_generation;
        status.in_flight = in_flight;
        status.phase = Some(phase);
        status.web = Some(web.web);
        status.upgrade = web.upgrade;
        let requeue = if aws_busy || web.in_progress {
            Requeue::After(infra.progress_interval)
        } else {
            match web.wake_after.into_iter().chain(infra_plan_recheck).min() {
                Some(after) => Requeue::After(after),
                None => Requeue::Resync,
            }
        };
        // The web tier's changes first: a hold must not wait behind an AWS call.
        let changes = (web.changes.into_iter().map(Change::Web))
            .chain(infra_plan.changes.into_iter().map(Change::Infra))
            .collect();
        Plan {
            status,
            requeue,
            changes,
            failure: observed.aws_failure.clone(),
        }
    }
}

impl OpenEMRDeployment {
    /// The plan while AWS cannot be read, or may not be changed (`accepted` false): the web
    /// tier follows its spec and holds on the site last known; what the infrastructure's
    /// conditions said stays as it was.
    fn plan_web_only(
        &self,
        accepted: Verdict,
        seen: &web::WorkloadSeen,
        failure: Option<&AwsFailure>,
        now: Timestamp,
    ) -> Plan<OpenEMRDeploymentStatus, Change> {
        let previous = self.status.clone().unwrap_or_default();
        let site = infra::site_from_status(self, &previous);
        let web = web::plan::plan_workload(self, site.as_ref(), false, seen, now);
        let refused = !accepted.status;
        let mut verdicts = vec![accepted, web.verdict.clone()];
        if refused {
            verdicts.push(Verdict::falsy(
                "Ready",
                "NotAccepted",
                "the spec was not accepted; see the Accepted condition",
            ));
        } else if !web.verdict.status {
            verdicts.push(Verdict::falsy("Ready", "NotReady", "waiting for: web tier"));
        }
        let mut status = status_with(self, &verdicts, now);
        status.web = Some(web.web);
        status.upgrade = web.upgrade;
        if refused {
            // Not `Ready` (nor whatever it was): it cannot go on until someone acts.
            status.phase = Some(DeploymentPhase::Failed);
        }
        let requeue = web.wake_after.map_or(Requeue::Resync, Requeue::After);
        Plan {
            status,
            requeue,
            changes: web.changes.into_iter().map(Change::Web).collect(),
            failure: failure.cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::OpenEMRDeploymentSpec;
    use crate::conditions;
    use k8s_openapi::api::core::v1::Secret;
    use secrets::{ADMIN_CREDENTIALS, DATABASE_CREDENTIALS, check_secret};

    fn clinic() -> OpenEMRDeployment {
        let spec: OpenEMRDeploymentSpec = serde_json::from_value(serde_json::json!({
            "aws": {"region": "us-east-1"},
            "network": {"newVpc": {}},
            "database": {"credentialsSecretRef": {"name": "db-creds"}},
            "web": {"adminCredentialsSecretRef": {"name": "admin"}},
        }))
        .unwrap();
        let mut d = OpenEMRDeployment::new("clinic-a", spec);
        d.metadata.generation = Some(4);
        d
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn with_aws_unreadable_a_hold_still_takes_the_workers_to_zero_and_the_failure_is_kept() {
        use crate::api::deployment::{DatabaseStatus, WebHold, WebStatus};
        let mut d = clinic();
        d.metadata.namespace = Some("clinics".into());
        d.metadata.uid = Some("uid-1".into());
        d.status = Some(OpenEMRDeploymentStatus {
            database: Some(DatabaseStatus {
                identifier: "db-1".into(),
                endpoint: Some("db.example:3306".into()),
                ..DatabaseStatus::default()
            }),
            redis_endpoint: Some("redis.example:6379".into()),
            file_system_id: Some("fs-1".into()),
            credentials_secret_name: Some("clinic-a-db-credentials".into()),
            web: Some(WebStatus {
                setup_complete: true,
                image: Some(d.spec.web.image.clone()),
                ..WebStatus::default()
            }),
            ..OpenEMRDeploymentStatus::default()
        });
        let seen = web::WorkloadSeen {
            ca: Some(Ok(("MYSQL".into(), "REDIS".into()))),
            holds: vec![WebHold {
                holder: "restore/in-place".into(),
                reason: None,
                since: None,
                lease: "clinic-a-hold-in-place".into(),
                expires: None,
                effective: false,
            }],
            worker_pods: Some(2),
            ..web::WorkloadSeen::default()
        };
        let failure = AwsFailure {
            action: "reading the DB instance",
            source: crate::aws::error::AwsError {
                class: crate::aws::error::ErrorClass::Retryable,
                service: "rds",
                operation: "DescribeDBInstances",
                code: "ServiceUnavailable".into(),
                message: "try again".into(),
            },
        };
        let observed = Observed {
            secrets: vec![
                (
                    &DATABASE_CREDENTIALS,
                    "db-creds".into(),
                    SecretCheck::Present,
                ),
                (&ADMIN_CREDENTIALS, "admin".into(), SecretCheck::Present),
            ],
            infra: None,
            workload: Some(seen),
            aws_failure: Some(failure),
        };
        let plan = d.plan(&observed, now());
        let workers = plan
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::Web(WebChange::ApplyChildren(children)) => Some(children),
                _ => None,
            })
            .flatten()
            .find(|c| c.kind == web::ChildKind::Deployment)
            .expect("the workers applied");
        assert_eq!(workers.body["spec"]["replicas"], 0);
        let failure = plan.failure.expect("the reconcile still fails");
        assert_eq!(failure.source.operation, "DescribeDBInstances");
        let status = plan.status;
        let held = conditions::find(&status.conditions, "WorkloadReady").unwrap();
        assert_eq!(held.reason, "Held");
        assert!(!status.web.unwrap().holds[0].effective);
    }

    #[test]
    fn a_secret_value_the_installer_cannot_carry_is_refused_by_name_never_by_value() {
        let secret = |password: &[u8]| Secret {
            data: Some(std::collections::BTreeMap::from([
                (
                    "username".to_string(),
                    k8s_openapi::ByteString(b"admin".to_vec()),
                ),
                (
                    "password".to_string(),
                    k8s_openapi::ByteString(password.to_vec()),
                ),
            ])),
            ..Secret::default()
        };
        let good = secret(b"p@ss#w0rd!");
        assert_eq!(
            check_secret(&ADMIN_CREDENTIALS, &good, true),
            SecretCheck::Present
        );
        let bad = secret(b"abc=def");
        let check = check_secret(&ADMIN_CREDENTIALS, &bad, true);
        assert!(matches!(check, SecretCheck::Unusable("password", _)));
        // Once set up (or for an adopted database) the installer reads it no more.
        assert_eq!(
            check_secret(&ADMIN_CREDENTIALS, &bad, false),
            SecretCheck::Present
        );
        assert!(matches!(
            check_secret(&ADMIN_CREDENTIALS, &secret(&[0xff, 0xfe]), true),
            SecretCheck::Unusable("password", "is not UTF-8 text")
        ));
        let plan = clinic().plan(&observed(SecretCheck::Present, check), now());
        let accepted = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Accepted")
            .unwrap();
        assert_eq!(accepted.status, "False");
        assert_eq!(accepted.reason, "AdminCredentialsSecretInvalid");
        assert!(accepted.message.contains("key password"));
        assert!(!accepted.message.contains("abc=def"));
    }

    fn observed(database: SecretCheck, admin: SecretCheck) -> Observed {
        Observed {
            secrets: vec![
                (&DATABASE_CREDENTIALS, "db-creds".into(), database),
                (&ADMIN_CREDENTIALS, "admin".into(), admin),
            ],
            infra: None,
            workload: None,
            aws_failure: None,
        }
    }

    #[test]
    fn both_secrets_are_looked_up() {
        let both = clinic();
        assert_eq!(both.referenced_secrets().len(), 2);
        assert_eq!(
            both.references(),
            [
                (RefKind::Secret, "db-creds".to_string()),
                (RefKind::Secret, "admin".to_string()),
                (RefKind::Infrastructure, "clinic-a".to_string()),
                (RefKind::Workload, "clinic-a".to_string())
            ]
        );
        let mut bare = clinic();
        bare.spec.database.credentials_secret_ref = None;
        bare.spec.web.admin_credentials_secret_ref = None;
        assert!(bare.referenced_secrets().is_empty());
    }

    #[test]
    fn present_secrets_are_accepted_and_not_provisioned() {
        let plan = clinic().plan(&observed(SecretCheck::Present, SecretCheck::Present), now());
        let accepted = conditions::find(&plan.status.conditions, "Accepted").unwrap();
        assert_eq!(accepted.status, "True");
        let ready = conditions::find(&plan.status.conditions, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "NotProvisioned")
        );
        assert_eq!(plan.status.observed_generation, Some(4));
    }

    #[test]
    fn missing_secret_is_refused_naming_the_field() {
        let plan = clinic().plan(&observed(SecretCheck::Missing, SecretCheck::Present), now());
        let accepted = conditions::find(&plan.status.conditions, "Accepted").unwrap();
        assert_eq!(accepted.status, "False");
        assert_eq!(accepted.reason, "CredentialsSecretNotFound");
        assert!(
            accepted
                .message
                .contains("spec.database.credentialsSecretRef")
        );
        // The Secret is watched: no polling while it is missing.
        assert_eq!(plan.requeue, super::super::Requeue::OnChange);
    }

    #[test]
    fn admin_secret_without_username_names_the_key() {
        let plan = clinic().plan(
            &observed(
                SecretCheck::Present,
                SecretCheck::MissingKeys(vec!["username"]),
            ),
            now(),
        );
        let accepted = conditions::find(&plan.status.conditions, "Accepted").unwrap();
        assert_eq!(accepted.reason, "AdminCredentialsSecretInvalid");
        assert!(
            accepted
                .message
                .contains("spec.web.adminCredentialsSecretRef"),
            "{}",
            accepted.message
        );
        assert!(
            accepted.message.contains("username"),
            "{}",
            accepted.message
        );
    }

    #[test]
    fn replanning_an_unchanged_object_changes_nothing() {
        let mut d = clinic();
        let seen = observed(SecretCheck::Present, SecretCheck::Present);
        d.status = Some(d.plan(&seen, now()).status);
        let later = Timestamp::from_second(1_800_000_600).unwrap();
        assert_eq!(Some(d.plan(&seen, later).status), d.status);
    }
}
