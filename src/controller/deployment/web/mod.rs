//! The clinic's web tier: OpenEMR on Kubernetes, once the infrastructure serves. [`observe`]
//! reads what the caches hold, [`plan`] decides purely what to apply (the first setup in
//! [`setup`], image upgrades in [`upgrade`], the objects themselves rendered by
//! [`render`], the setup Job's scripts in [`scripts`]), [`act`] applies it; [`holds`] stop
//! it for a while. This module holds what those parts share: the children's names, kinds,
//! labels and annotations, what `observe` found, and the changes the plan asks for.
//!
//! The web tier runs on a [`Site`](super::site::Site) and never imports the infrastructure's
//! modules.

pub mod act;
pub mod holds;
pub mod observe;
pub mod plan;
pub mod render;
pub mod scripts;
pub mod setup;
pub mod upgrade;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::clinic::short_hash;
use crate::api::deployment::WebHold;

/// Label naming the clinic a child belongs to; the child watches wake that clinic.
pub const CLINIC_LABEL: &str = "openemr.io/clinic";
/// Label telling the part of the web tier.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Annotation on a setup Job: the image it sets up.
pub const IMAGE_ANNOTATION: &str = "openemr.io/image";
/// Annotation on a setup Job: which attempt it is (1, 2, …).
pub const ATTEMPT_ANNOTATION: &str = "openemr.io/attempt";
/// Annotation on a setup Job: its [`SetupMode`](scripts::SetupMode).
pub const SETUP_MODE_ANNOTATION: &str = "openemr.io/setup-mode";
/// Annotation on every child: the digest of what the operator last rendered for it.
pub const APPLIED_ANNOTATION: &str = "openemr.io/applied";
/// Annotation on the worker template: digest of the CA bundles, so a new bundle rolls them.
pub const CA_DIGEST_ANNOTATION: &str = "openemr.io/ca-digest";
/// Annotation on the Redis AUTH token's copy: the ARN of the secret it was copied from.
pub const REDIS_AUTH_SOURCE_ANNOTATION: &str = "openemr.io/source-secret";
/// Annotation on the worker template: digest of that ARN, so a new token rolls them (a
/// Secret's new value reaches no running container's environment).
pub const REDIS_AUTH_DIGEST_ANNOTATION: &str = "openemr.io/redis-auth";
/// Condition type of the web tier.
pub const WORKLOAD_READY: &str = "WorkloadReady";

/// The kinds of children, in the order they are applied (what a Pod mounts comes first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChildKind {
    Secret,
    ConfigMap,
    PersistentVolume,
    PersistentVolumeClaim,
    Service,
    Job,
    Deployment,
    PodDisruptionBudget,
    Ingress,
    NetworkPolicy,
}

impl ChildKind {
    /// Objects whose spec is (mostly) immutable: created when missing, never patched.
    pub fn create_only(self) -> bool {
        matches!(
            self,
            ChildKind::PersistentVolume | ChildKind::PersistentVolumeClaim | ChildKind::Job
        )
    }
}

impl std::fmt::Display for ChildKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// One object to have, as the JSON sent with server-side apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Child {
    pub kind: ChildKind,
    pub name: String,
    pub body: Value,
}

/// Names of a clinic's children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebNames {
    pub clinic: String,
    pub settings_secret: String,
    pub ca: String,
    pub volume: String,
    pub claim: String,
    pub workers: String,
    /// The generated first-administrator Secret (when the spec names none).
    pub admin_secret: String,
    /// The copy of an RDS-managed master password, present only while setup runs.
    pub master_copy: String,
    /// The copy of the Redis AUTH token the workers read.
    pub redis_auth: String,
}

impl WebNames {
    pub fn new(namespace: &str, clinic: &str) -> WebNames {
        WebNames {
            clinic: clinic.to_string(),
            settings_secret: format!("{clinic}-openemr"),
            ca: format!("{clinic}-ca"),
            // Cluster-scoped: the namespace makes it unique.
            volume: format!("openemr-{namespace}-{clinic}-sites"),
            claim: format!("{clinic}-sites"),
            workers: format!("{clinic}-openemr"),
            admin_secret: format!("{clinic}-admin"),
            master_copy: format!("{clinic}-db-master"),
            redis_auth: format!("{clinic}-redis-auth"),
        }
    }

    /// The setup Job for `image`, attempt `attempt` (1-based). At most 40 + 18 characters,
    /// within the 63 a Job's name may have for its pods' `job-name` label.
    pub fn setup_job(&self, image: &str, attempt: u32) -> String {
        format!(
            "{}-setup-{}-{attempt}",
            self.clinic,
            &short_hash(&[image])[..6]
        )
    }

    /// The Job that migrates the site to `image` for the upgrade the clinic's `generation`
    /// asked for: the same name after a restart, another one for a later retry.
    pub fn migration_job(&self, image: &str, generation: i64) -> String {
        format!(
            "{}-migrate-{}",
            self.clinic,
            &short_hash(&[image, &generation.to_string()])[..6]
        )
    }
}

/// `child` with the digest of what it sets in [`APPLIED_ANNOTATION`]. [`carries`] alone
/// cannot see a field the spec no longer sets (an Ingress's TLS removed, a limit dropped):
/// the object still has it. With the digest, any change in what is rendered is a
/// difference, and the apply drops what the operator's field manager no longer sets.
pub fn stamped(mut child: Child) -> Child {
    let digest = short_hash(&[&child.body.to_string()]);
    if let Some(meta) = child.body["metadata"].as_object_mut() {
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        annotations[APPLIED_ANNOTATION] = json!(digest);
    }
    child
}

/// Whether `observed` carries everything `desired` sets: objects key by key, lists element
/// by element (each desired element found in some observed one). What others add (server
/// defaults, a mesh's sidecar) is left alone; what they change is put back.
pub fn carries(observed: &Value, desired: &Value) -> bool {
    match (observed, desired) {
        // The API server leaves out what is empty (`env: []`), so empty is as good as absent.
        (Value::Object(o), Value::Object(d)) => d
            .iter()
            .all(|(k, dv)| is_empty(dv) || o.get(k).is_some_and(|ov| carries(ov, dv))),
        (Value::Array(o), Value::Array(d)) => {
            d.iter().all(|dv| o.iter().any(|ov| carries(ov, dv)))
                && (o.len() == d.len() || d.iter().any(Value::is_object))
        }
        (o, d) => o == d,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// A setup Job as the cache shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SetupJob {
    pub name: String,
    pub image: String,
    pub attempt: u32,
    pub state: JobState,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Running,
    Complete,
    Failed {
        /// The Job's own reason and message (`BackoffLimitExceeded`, `DeadlineExceeded`).
        reason: String,
        /// What its last pod said when it terminated (its termination message or log tail).
        detail: String,
        at: Option<Timestamp>,
    },
}

/// The workers' Deployment as the cache shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkersSeen {
    pub image: String,
    pub replicas: i32,
    pub ready: i32,
    pub updated: i32,
    /// Pods of every revision (old ones linger while a rollout is under way).
    pub total: i32,
    /// Pods being deleted, as the Deployment reports them (0 where it does not).
    pub terminating: i32,
    /// The Deployment controller has seen the latest spec.
    pub current: bool,
}

impl WorkersSeen {
    /// Every replica runs the latest template and is ready, and no older one is left.
    pub fn rolled_out(&self, wanted: i32) -> bool {
        self.current
            && self.replicas == wanted
            && self.updated >= wanted
            && self.total == self.updated
            && self.ready >= wanted
    }
}

/// Timings and limits of the web tier (flags of `run`).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadConfig {
    pub setup_backoff_limit: i32,
    pub setup_deadline: Duration,
    /// First wait before a failed setup Job is followed by a new one; doubles per attempt.
    pub setup_retry_after: Duration,
    /// Upgrade snapshots kept per clinic after an upgrade succeeds (the newest).
    pub upgrade_snapshots_kept: usize,
    /// How often a running setup Job's copy of the RDS-managed master password is checked
    /// against the secret's current version (the progress interval).
    pub master_copy_recheck: Duration,
    /// The image of backup sets' documents Jobs (the operator's own); a policy may name
    /// another. Without either, a set that copies documents waits, saying so.
    pub documents_image: Option<String>,
    /// The service account documents Jobs run as (IRSA or Pod Identity gives it S3 and KMS).
    pub documents_service_account: String,
    /// Pods a documents Job tries before it fails, and its whole time.
    pub documents_backoff_limit: i32,
    pub documents_deadline: Duration,
    /// Lifetime of a `Quiesced` set's hold, renewed at every look of the set.
    pub quiesce_hold_lifetime: Duration,
    /// Manual DB snapshots per account and region a set may bring the count to.
    pub manual_snapshot_quota: u32,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            setup_backoff_limit: 4,
            setup_deadline: Duration::from_secs(1800),
            setup_retry_after: Duration::from_secs(300),
            upgrade_snapshots_kept: 3,
            master_copy_recheck: Duration::from_secs(30),
            documents_image: None,
            documents_service_account: "openemr-documents".into(),
            documents_backoff_limit: 2,
            documents_deadline: Duration::from_secs(6 * 3600),
            quiesce_hold_lifetime: Duration::from_secs(15 * 60),
            manual_snapshot_quota: 100,
        }
    }
}

/// What `observe` found of the web tier.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkloadSeen {
    /// Every child the caches hold, as JSON (without status).
    pub children: BTreeMap<(ChildKind, String), Value>,
    pub setup_jobs: Vec<SetupJob>,
    pub workers: Option<WorkersSeen>,
    pub holds: Vec<WebHold>,
    /// The workers' pods that exist, terminating ones included: counted while a hold is
    /// placed, so that a hold is effective only once none is left.
    pub worker_pods: Option<usize>,
    pub admin_secret: bool,
    pub master_copy: bool,
    /// The Redis AUTH token's copy exists, made from this secret (its
    /// [`REDIS_AUTH_SOURCE_ANNOTATION`]).
    pub redis_auth_copy: Option<String>,
    /// The volume is `Released`: its claim was deleted.
    pub volume_released: bool,
    /// The CA bundles (MySQL, Redis), or why they could not be read.
    pub ca: Option<Result<(String, String), String>>,
    /// The pre-upgrade snapshot's state (`available`, `creating`…), when one is awaited.
    pub upgrade_snapshot: Option<String>,
    pub config: WorkloadConfig,
}

/// A change the web tier's plan asks for: Kubernetes writes, the Secrets its first setup
/// reads, the upgrade's snapshot, and Events.
#[derive(Clone, PartialEq)]
pub enum WebChange {
    /// Server-side applies these web-tier children (idempotent).
    ApplyChildren(Vec<Child>),
    /// Deletes a child the spec no longer wants (idempotent).
    DeleteChild { kind: ChildKind, name: String },
    /// Frees the clinic's volume, `Released` after its claim was deleted, to bind to the
    /// claim made anew (the file system's data is untouched; reclaim stays `Retain`).
    RebindVolume { name: String },
    /// Generates the first administrator's credentials once, into a Secret kept with the
    /// data (like the database credentials).
    CreateAdminSecret { name: String },
    /// Copies the RDS-managed master password from Secrets Manager into a Secret owned by
    /// the clinic, for the first setup only (deleted once setup completed).
    CopyMasterPassword { name: String, secret_arn: String },
    /// Deletes this incarnation's upgrade snapshots but the newest `keep` (`current`, the
    /// one the upgrade just took, among them).
    PruneUpgradeSnapshots { current: String, keep: usize },
    /// Copies the Redis AUTH token the stack generated into a Secret owned by the clinic,
    /// for the workers (replacing a copy made from another secret).
    CopyRedisAuthToken { name: String, secret_arn: String },
    /// The DB snapshot an image upgrade waits for.
    CreateUpgradeSnapshot { snapshot: String },
    /// An Event about a step of the web tier that no call marks.
    Announce {
        reason: &'static str,
        note: String,
        warning: bool,
    },
}

impl std::fmt::Debug for WebChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WebChange::ApplyChildren(children) => {
                let list: Vec<_> = children
                    .iter()
                    .map(|c| format!("{}/{}", c.kind, c.name))
                    .collect();
                write!(f, "ApplyChildren({})", list.join(", "))
            }
            WebChange::DeleteChild { kind, name } => write!(f, "DeleteChild({kind}/{name})"),
            WebChange::RebindVolume { name } => write!(f, "RebindVolume({name})"),
            WebChange::CreateAdminSecret { name } => write!(f, "CreateAdminSecret({name})"),
            WebChange::CopyMasterPassword { name, .. } => write!(f, "CopyMasterPassword({name})"),
            WebChange::CopyRedisAuthToken { name, .. } => write!(f, "CopyRedisAuthToken({name})"),
            WebChange::PruneUpgradeSnapshots { current, keep } => {
                write!(f, "PruneUpgradeSnapshots(keep {keep} with {current})")
            }
            WebChange::CreateUpgradeSnapshot { snapshot } => {
                write!(f, "CreateUpgradeSnapshot({snapshot})")
            }
            WebChange::Announce { reason, .. } => write!(f, "Announce({reason})"),
        }
    }
}

impl WebChange {
    /// The action and token recorded in `status.inFlight` before the call.
    pub fn intent(&self) -> (String, String) {
        match self {
            WebChange::ApplyChildren(children) => {
                let list: Vec<_> = children
                    .iter()
                    .map(|c| format!("{}/{}", c.kind, c.name))
                    .collect();
                ("ApplyChildren".into(), list.join(","))
            }
            WebChange::DeleteChild { kind, name } => {
                ("DeleteChild".into(), format!("{kind}/{name}"))
            }
            WebChange::RebindVolume { name } => ("RebindVolume".into(), name.clone()),
            WebChange::CreateAdminSecret { name } => ("CreateAdminSecret".into(), name.clone()),
            WebChange::CopyRedisAuthToken { name, .. } => {
                ("CopyRedisAuthToken".into(), name.clone())
            }
            WebChange::PruneUpgradeSnapshots { current, .. } => {
                ("DeleteDBSnapshot".into(), current.clone())
            }
            WebChange::CopyMasterPassword { name, .. } => {
                ("CopyMasterPassword".into(), name.clone())
            }
            WebChange::CreateUpgradeSnapshot { snapshot } => {
                ("CreateDBSnapshot".into(), snapshot.clone())
            }
            WebChange::Announce { reason, .. } => ("Announce".into(), (*reason).into()),
        }
    }

    /// Whether the intent is stored in status before the call: only for the snapshot, an
    /// AWS call whose repetition after a crash must be recognised. Kubernetes applies and
    /// Events are idempotent or harmless to repeat, and cost no status write.
    pub fn recorded(&self) -> bool {
        matches!(self, WebChange::CreateUpgradeSnapshot { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carrying_ignores_additions_and_sees_changes() {
        let desired = json!({"spec": {"replicas": 2, "list": [{"name": "a", "v": 1}]}});
        let more = json!({"spec": {"replicas": 2, "x": 1, "list": [{"name": "b"}, {"name": "a", "v": 1, "w": 2}]}});
        assert!(carries(&more, &desired));
        let changed = json!({"spec": {"replicas": 3, "list": [{"name": "a", "v": 1}]}});
        assert!(!carries(&changed, &desired));
        assert!(!carries(
            &json!({"spec": {"replicas": 2, "list": []}}),
            &desired
        ));
        assert!(!carries(&json!(["tls", "x"]), &json!(["tls"])));
        // What the server leaves out because it is empty.
        assert!(carries(
            &json!({"name": "a"}),
            &json!({"name": "a", "env": [], "x": {}})
        ));
    }
}
