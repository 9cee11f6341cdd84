//! The clinic's AWS infrastructure: its CloudFormation stack ([`template`]), its RDS
//! instance ([`database`]), an adopted instance or bucket ([`adoption`]), and the calls that
//! make them so. [`observe`] reads them, [`plan`] decides purely what to create or correct,
//! [`act`] makes the calls. What the web tier needs of them is a [`Site`], built here; this
//! module never imports the web tier.

pub mod act;
pub mod adoption;
pub mod audit;
pub mod database;
pub mod leftovers;
pub mod observe;
pub mod ownership;
pub mod plan;
pub mod rds_states;
pub mod refusals;
pub mod template;

use std::collections::BTreeMap;
use std::time::Duration;

use super::clinic::ClinicNames;
use super::secrets::{PASSWORD_KEY, ROOT_PASSWORD_KEY, SecretKey};
use super::site::{DatabaseOrigin, Site};
use crate::api::deployment::DeploymentPhase;
use crate::api::{OpenEMRDeployment, OpenEMRDeploymentStatus};
use crate::aws::cloudformation::{StackFailure, StackInfo, StackRequest};
use crate::aws::rds::{CreateDb, DbInstance, ModifyDb};
use crate::aws::s3::BucketSettings;
use crate::conditions::Verdict;
use adoption::database_origin;
use database::Difference;

/// What AWS and the cluster showed about one clinic's infrastructure.
#[derive(Debug, Clone)]
pub struct Infra {
    pub names: ClinicNames,
    pub tags: BTreeMap<String, String>,
    pub stack: Option<StackInfo>,
    /// The failing resource of a stack that failed or rolled back.
    pub stack_failure: Option<StackFailure>,
    /// What a rolled-back creation retained, as read now (only for `ROLLBACK_COMPLETE`).
    pub leftovers: Vec<leftovers::Leftover>,
    pub database: Option<DbInstance>,
    /// Whether the Secret with OpenEMR's database credentials exists (the operator's own,
    /// or the user's named in `spec.database.credentialsSecretRef`).
    pub credentials_secret: bool,
    /// The user's Secret carries `root-password` for the master user.
    pub user_master_password: bool,
    /// How soon to look again while AWS is working.
    pub progress_interval: Duration,
    /// The bucket named in `spec.adopt.bucketName`, as read (only while the clinic is not
    /// at rest).
    pub adopted_bucket: AdoptedBucket,
    /// Another clinic of this cluster, still there, that adopted the same DB instance
    /// first (namespace, name).
    pub claimed_by: Option<(String, String)>,
    /// Where the clinic's AWS activity is recorded.
    pub audit: AuditView,
    /// What RDS refused of this generation's database changes.
    pub refused: Option<refusals::Refusal>,
}

/// Where a clinic's AWS activity is recorded, as seen this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditView {
    /// `spec.audit.cloudTrail` is false.
    Off,
    /// The organisation's trail (its ARN): the operator makes none.
    Organization(String),
    /// The account's shared trail.
    Shared(crate::controller::audit::template::TrailView),
}

/// What was read of an adopted bucket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AdoptedBucket {
    /// Not read this time (none adopted, or the clinic is at rest).
    #[default]
    NotRead,
    Missing,
    Seen(BucketSettings),
}

/// Where the master password comes from; resolved only in `act`, so no password is ever
/// part of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterSource {
    ManagedByRds,
    /// `root-password` of this Secret.
    UserSecret(String),
}

/// A mutating call in AWS the infrastructure's plan asks for.
#[derive(Clone, PartialEq)]
pub enum InfraChange {
    /// OpenEMR's database user password, generated once into a Secret that is never
    /// overwritten.
    CreateCredentialsSecret {
        name: String,
        username: String,
        database: String,
    },
    CreateStack(StackRequest),
    UpdateStack(StackRequest),
    /// Removes a stack whose creation rolled back, so the next pass creates it anew: first
    /// what the rollback retained and holds nothing, then the stack. What stays is named in
    /// the Event.
    DeleteFailedStack {
        name: String,
        token: String,
        remove: Vec<leftovers::Removal>,
        kept: Vec<String>,
    },
    CreateDatabase {
        request: Box<CreateDb>,
        master: MasterSource,
    },
    /// Brings an adopted bucket to the clinic's settings (after they were reported).
    SecureAdoptedBucket {
        bucket: String,
        kms_key_arn: String,
        differences: Vec<Difference>,
    },
    ModifyDatabase {
        request: ModifyDb,
        differences: Vec<Difference>,
    },
    /// Restarts the DB instance so a parameter change waiting for it takes effect.
    RebootDatabase {
        identifier: String,
        why: String,
    },
    /// Puts the clinic's tags on its DB instance (an adopted one is claimed so: the claim
    /// outlives the operator's memory) and removes the `spec.tags` keys the spec dropped.
    TagDatabase {
        identifier: String,
        arn: String,
        add: BTreeMap<String, String>,
        remove: Vec<String>,
    },
}

impl std::fmt::Debug for InfraChange {
    // Compact: a template body does not belong in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InfraChange::CreateCredentialsSecret { name, .. } => {
                write!(f, "CreateCredentialsSecret({name})")
            }
            InfraChange::CreateStack(r) => write!(f, "CreateStack({}, token {})", r.name, r.token),
            InfraChange::UpdateStack(r) => write!(f, "UpdateStack({}, token {})", r.name, r.token),
            InfraChange::SecureAdoptedBucket { bucket, .. } => {
                write!(f, "SecureAdoptedBucket({bucket})")
            }
            InfraChange::DeleteFailedStack { name, .. } => write!(f, "DeleteFailedStack({name})"),
            InfraChange::CreateDatabase { request, master } => {
                write!(
                    f,
                    "CreateDatabase({}, master {master:?})",
                    request.identifier
                )
            }
            InfraChange::ModifyDatabase {
                request,
                differences,
            } => {
                let list: Vec<_> = differences.iter().map(|d| d.to_string()).collect();
                write!(
                    f,
                    "ModifyDatabase({}, {})",
                    request.identifier,
                    list.join("; ")
                )
            }
            InfraChange::RebootDatabase { identifier, .. } => {
                write!(f, "RebootDatabase({identifier})")
            }
            InfraChange::TagDatabase {
                identifier,
                add,
                remove,
                ..
            } => {
                let keys: Vec<_> = add.keys().map(String::as_str).collect();
                write!(
                    f,
                    "TagDatabase({identifier}, +{}, -{})",
                    keys.join(","),
                    remove.join(",")
                )
            }
        }
    }
}

impl InfraChange {
    /// The action and token recorded in `status.inFlight` before the call.
    pub fn intent(&self) -> (String, String) {
        match self {
            InfraChange::SecureAdoptedBucket {
                bucket,
                differences,
                ..
            } => {
                let fields: Vec<_> = differences.iter().map(|d| d.field).collect();
                (
                    "SecureAdoptedBucket".into(),
                    format!("{bucket}:{}", fields.join(",")),
                )
            }
            InfraChange::CreateCredentialsSecret { name, .. } => {
                ("CreateCredentialsSecret".into(), name.clone())
            }
            InfraChange::CreateStack(r) => ("CreateStack".into(), r.token.clone()),
            InfraChange::UpdateStack(r) => ("UpdateStack".into(), r.token.clone()),
            InfraChange::DeleteFailedStack { token, .. } => ("DeleteStack".into(), token.clone()),
            InfraChange::CreateDatabase { request, .. } => {
                ("CreateDBInstance".into(), request.identifier.clone())
            }
            InfraChange::ModifyDatabase {
                request,
                differences,
            } => {
                let fields: Vec<_> = differences.iter().map(|d| d.field).collect();
                (
                    "ModifyDBInstance".into(),
                    format!("{}:{}", request.identifier, fields.join(",")),
                )
            }
            InfraChange::TagDatabase { identifier, .. } => {
                ("AddTagsToResource".into(), identifier.clone())
            }
            InfraChange::RebootDatabase { identifier, .. } => {
                ("RebootDBInstance".into(), identifier.clone())
            }
        }
    }

    /// Whether the intent is stored in status before the call: for AWS calls whose
    /// repetition after a crash must be recognised (all but tagging).
    pub fn recorded(&self) -> bool {
        // Tagging is idempotent: a repeat after a crash changes nothing. A reboot is planned
        // only for an instance that serves, so a rebooting one is never rebooted again.
        !matches!(
            self,
            InfraChange::TagDatabase { .. } | InfraChange::RebootDatabase { .. }
        )
    }
}

/// The infrastructure part of a clinic's plan.
#[derive(Debug, Clone, PartialEq)]
pub struct InfraPlan {
    pub verdicts: Vec<Verdict>,
    pub status: OpenEMRDeploymentStatus,
    pub changes: Vec<InfraChange>,
    /// AWS is still working on something: look again soon.
    pub in_progress: bool,
    /// What is not ready yet ("stack", "database"); empty when both are.
    pub waiting: Vec<&'static str>,
    /// The stack failed and needs a change to the spec or to AWS.
    pub failed: bool,
    /// Nothing is being changed, but a state outside the clinic it waits for (the account's
    /// shared audit trail) may change: look again after this.
    pub recheck_after: Option<Duration>,
}

/// The `Ready` condition and the phase from the parts' readiness: `waiting` names the
/// parts not ready, `busy` says whether anything is being changed.
pub fn overall(
    waiting: &[&str],
    failed: bool,
    busy: bool,
    previous: Option<DeploymentPhase>,
) -> (Verdict, DeploymentPhase) {
    let ready = if waiting.is_empty() {
        Verdict::truthy(
            "Ready",
            "Ready",
            "the stack, the database and the web tier are ready",
        )
    } else {
        Verdict::falsy(
            "Ready",
            "NotReady",
            format!("waiting for: {}", waiting.join(", ")),
        )
    };
    let was_ready = matches!(
        previous,
        Some(DeploymentPhase::Ready | DeploymentPhase::Updating | DeploymentPhase::Degraded)
    );
    let phase = if failed {
        DeploymentPhase::Failed
    } else if ready.status && !busy {
        DeploymentPhase::Ready
    } else if was_ready && busy {
        DeploymentPhase::Updating
    } else if was_ready {
        DeploymentPhase::Degraded
    } else {
        DeploymentPhase::Provisioning
    };
    (ready, phase)
}

/// Where the web tier finds the infrastructure, once the stack and the database serve.
pub fn site(d: &OpenEMRDeployment, infra: &Infra) -> Option<Site> {
    let db = infra.database.as_ref()?;
    let (host, port) = db.endpoint.clone()?;
    let outputs = &infra.stack.as_ref()?.outputs;
    let output = |key: &str| outputs.get(key).filter(|v| !v.is_empty()).cloned();
    let user_secret = d.spec.database.credentials_secret_ref.as_ref();
    let credentials = user_secret
        .map(|r| r.name.clone())
        .unwrap_or_else(|| infra.names.credentials_secret.clone());
    Some(Site {
        database_host: host,
        database_port: port,
        database_identifier: db.identifier.clone(),
        redis_host: output(template::OUT_REDIS_ADDRESS)?,
        file_system_id: output(template::OUT_FILE_SYSTEM_ID)?,
        database_password: SecretKey::new(&credentials, PASSWORD_KEY),
        user_master_password: user_secret
            .filter(|_| infra.user_master_password)
            .map(|r| SecretKey::new(&r.name, ROOT_PASSWORD_KEY)),
        master_secret_arn: db.master_user_secret_arn.clone(),
        redis_auth_secret_arn: output(template::OUT_REDIS_AUTH_SECRET),
        master_username: db
            .master_username
            .clone()
            .unwrap_or_else(|| database::MASTER_USERNAME.to_string()),
        database_origin: database_origin(d, db),
    })
}

/// Where the web tier found the infrastructure last, from the status: what it uses while
/// AWS cannot be read. `None` before the infrastructure was first ready. Only a set-up
/// clinic's web tier runs on it (no setup starts then), so what only a first setup needs
/// (the master password, the database's origin) is left at its least.
pub fn site_from_status(d: &OpenEMRDeployment, status: &OpenEMRDeploymentStatus) -> Option<Site> {
    let database = status.database.as_ref()?;
    let (host, port) = database.endpoint.as_deref()?.rsplit_once(':')?;
    let (redis_host, _) = status.redis_endpoint.as_deref()?.rsplit_once(':')?;
    let credentials = d
        .spec
        .database
        .credentials_secret_ref
        .as_ref()
        .map(|r| r.name.clone())
        .or_else(|| status.credentials_secret_name.clone())?;
    Some(Site {
        database_host: host.to_string(),
        database_port: port.parse().ok()?,
        database_identifier: database.identifier.clone(),
        redis_host: redis_host.to_string(),
        file_system_id: status.file_system_id.clone()?,
        database_password: SecretKey::new(&credentials, PASSWORD_KEY),
        user_master_password: None,
        master_secret_arn: None,
        // The copy the workers read stays as it is while AWS cannot be read.
        redis_auth_secret_arn: None,
        master_username: database::MASTER_USERNAME.to_string(),
        database_origin: DatabaseOrigin::Foreign { uid: None },
    })
}
