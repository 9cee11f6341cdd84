//! The `openemr.io/v1alpha1` API: every kind the operator serves, the pieces they share,
//! and the generated CustomResourceDefinitions.
//!
//! Everything that can be judged from one object alone is judged by the API server through
//! schema constraints and CEL rules declared here, so `kubectl apply` answers at once and
//! names the field. What needs the outside world (a time zone's existence, AWS) is judged by
//! the controllers and reported as a condition.

pub mod backup;
pub mod backup_policy;
pub mod deployment;
pub mod patterns;
pub mod restore;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use backup::{OpenEMRBackup, OpenEMRBackupSpec, OpenEMRBackupStatus};
pub use backup_policy::{BackupPolicy, BackupPolicySpec, BackupPolicyStatus};
pub use deployment::{OpenEMRDeployment, OpenEMRDeploymentSpec, OpenEMRDeploymentStatus};
pub use restore::{RestoreRequest, RestoreRequestSpec, RestoreRequestStatus};

/// The API group of every kind here.
pub const GROUP: &str = "openemr.io";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";

/// A condition as Kubernetes API conventions define it (`type`, `status`, `reason`,
/// `message`, `lastTransitionTime`, `observedGeneration`).
pub type Condition = k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// A reference to another object of a known kind in the same namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct LocalRef {
    /// Name of the object, in this object's namespace.
    #[schemars(length(min = 1, max = 253), pattern(patterns::DNS_SUBDOMAIN))]
    pub name: String,
}

/// A mutating call the operator is about to make (or made, if it crashed before recording
/// the outcome): written to status before the call is sent.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChangeIntent {
    /// What is being done, e.g. `CreateStack`.
    pub action: String,
    /// The deterministic name or idempotency token the call carries, derived from the
    /// object (uid, generation, set id), so that sending it again cannot make a duplicate.
    pub token: String,
    /// When the intent was recorded.
    pub started_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

/// What the operator does with a clinic's data in AWS when its OpenEMRDeployment is deleted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    /// Leave the database, bucket, key and file system in AWS (the default). Deleting the
    /// object or its namespace never deletes patient data.
    #[default]
    Retain,
    /// Take a final DB snapshot, wait until it is `available`, then delete the database;
    /// bucket, key and file system are kept.
    Snapshot,
    /// Delete everything, after a final DB snapshot unless `skipFinalSnapshot` is set.
    Delete,
}

/// How the two halves of a backup set (DB snapshot, documents copy) are made consistent.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConsistencyMode {
    /// Both parts start within seconds of each other while the clinic keeps serving.
    #[default]
    CrashConsistent,
    /// The web tier is scaled to zero while the snapshot starts and the documents are
    /// copied, then restored exactly as it was.
    Quiesced,
}

/// A check run against a restored clinic before a restore (or drill) counts as verified.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VerificationCheck {
    /// The database accepts a TLS connection with the clinic's credentials, its certificate
    /// verified against the CA bundle and the endpoint's name.
    DatabaseReachable,
    /// OpenEMR's schema is present: its key tables exist and `version` has one row.
    SchemaPresent,
    /// OpenEMR's accounts, patients and settings (`users`, `patient_data`, `globals`) are
    /// not empty.
    TablesNonEmpty,
    /// The restored documents are present in the shared volume.
    DocumentsPresent,
    /// The web tier of the restored clinic is Ready.
    WebReady,
}

impl VerificationCheck {
    /// Every check, in the order they run.
    pub fn all() -> Vec<VerificationCheck> {
        use VerificationCheck::*;
        vec![
            DatabaseReachable,
            SchemaPresent,
            TablesNonEmpty,
            DocumentsPresent,
            WebReady,
        ]
    }
}

/// Every CustomResourceDefinition this operator serves, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        OpenEMRDeployment::crd(),
        BackupPolicy::crd(),
        OpenEMRBackup::crd(),
        RestoreRequest::crd(),
    ]
}

/// The file name under `crds/` for a CRD, e.g. `openemr.io_openemrdeployments.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// One CRD rendered as the YAML committed under `crds/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml_ng::Error> {
    let body = serde_yaml_ng::to_string(crd)?;
    Ok(format!(
        "# Generated by `openemr-operator crd`; do not edit. `make crds` regenerates it.\n{body}"
    ))
}

/// All CRDs as one multi-document YAML stream.
pub fn all_crds_yaml() -> Result<String, serde_yaml_ng::Error> {
    let docs = crds().iter().map(crd_yaml).collect::<Result<Vec<_>, _>>()?;
    Ok(docs.join("---\n"))
}
