//! `RestoreRequest`: "restore this set, or this instant, here — and prove it worked".
//!
//! Sources are the three inputs of OpenEMR's recovery stack (a snapshot ARN plus where the
//! documents are) and their friendlier forms: a backup record, a policy's latest set, a
//! point in time of a clinic. The default target is a new clinic side by side (maybe in
//! another region); in place needs the target's name typed again in `confirm`, takes a safety
//! snapshot first and keeps the previous database for a rollback window. The spec is fixed
//! once created: a restore is a request, not a desired state that drifts.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::deployment::OpenEMRDeploymentSpec;
use super::{Condition, LocalRef, VerificationCheck, patterns};

/// A request to restore a clinic's data.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "openemr.io",
    version = "v1alpha1",
    kind = "RestoreRequest",
    plural = "restorerequests",
    singular = "restorerequest",
    shortname = "ors",
    category = "openemr",
    namespaced,
    status = "RestoreRequestStatus",
    doc = "Restore an OpenEMR clinic from a backup set, a policy's latest set, a point in time or a snapshot ARN, side by side or in place, and verify it.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".status.targetDeployment"
    ),
    printcolumn(
        name = "RTO",
        type_ = "integer",
        json_path = ".status.rtoSeconds",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new("has(self.spec.target.inPlace) || (has(self.spec.target.sideBySide) && has(self.spec.target.sideBySide.deploymentName)) || self.metadata.name.matches('^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$')")
        .message("metadata.name names the side-by-side clinic when spec.target.sideBySide.deploymentName is unset, so it must be a DNS label of at most 40 characters starting with a letter; set deploymentName or shorten the name")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self == oldSelf")
        .message("spec of a RestoreRequest is immutable (source, target and checks): create a new RestoreRequest instead"),
    validation = Rule::new("!has(self.source.snapshot) || has(self.target.inPlace) || (has(self.target.sideBySide) && has(self.target.sideBySide.deploymentSpec))")
        .message("spec.target.sideBySide.deploymentSpec is required when restoring from spec.source.snapshot, since there is no source clinic to copy settings from")
        .field_path(".target"),
    validation = Rule::new("!has(self.keepTargetFor) || has(self.target.sideBySide)")
        .message("spec.keepTargetFor only applies to a side-by-side target")
        .field_path(".keepTargetFor"),
    validation = Rule::new("!has(self.keepTargetFor) || !self.keepTargetFor.matches(r'^([0-9]{1,6}(h|m|s))+$') || (duration(self.keepTargetFor) >= duration('10m') && duration(self.keepTargetFor) <= duration('8760h'))")
        .message("spec.keepTargetFor must be between 10m and 8760h")
        .field_path(".keepTargetFor"),
)]
pub struct RestoreRequestSpec {
    /// What to restore: exactly one of backupRef, latestFromPolicy, pointInTime, snapshot.
    pub source: RestoreSource,

    /// Where to restore to: a new clinic side by side (default) or in place.
    #[serde(default)]
    pub target: RestoreTarget,

    /// Checks the restored clinic must pass before the restore counts as Succeeded.
    #[serde(default = "VerificationCheck::all")]
    #[schemars(length(min = 1, max = 8), extend("x-kubernetes-list-type" = "set"))]
    pub checks: Vec<VerificationCheck>,

    /// Tear a side-by-side target down this long after it is verified (Go duration, e.g.
    /// `4h`), without a final snapshot since it holds only copied data. Kept when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = patterns::duration())]
    pub keep_target_for: Option<String>,
}

/// The data to restore. Exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("[has(self.backupRef), has(self.latestFromPolicy), has(self.pointInTime), has(self.snapshot)].filter(x, x).size() == 1")
        .message("spec.source must set exactly one of backupRef, latestFromPolicy, pointInTime or snapshot"),
)]
pub struct RestoreSource {
    /// A backup set (OpenEMRBackup) in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_ref: Option<LocalRef>,

    /// The newest completed set of a BackupPolicy in this namespace, resolved when the
    /// restore starts and recorded in status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_from_policy: Option<LocalRef>,

    /// A point in time of a clinic's database (RDS point-in-time restore). Documents come
    /// from the newest set completed at or before that time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_in_time: Option<PointInTimeSource>,

    /// An explicit snapshot and documents location, e.g. from another cluster (the inputs
    /// of OpenEMR's recovery stack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotSource>,
}

/// A point in time of a clinic.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.time) != self.latestRestorable")
        .message("spec.source.pointInTime must set exactly one of time or latestRestorable: true"),
)]
pub struct PointInTimeSource {
    /// The clinic whose database to restore.
    pub deployment_ref: LocalRef,

    /// The instant to restore to (RFC 3339). Must lie in the clinic's restorable window,
    /// which the status of the clinic shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,

    /// Restore to the latest restorable time instead of a given instant.
    #[serde(default)]
    pub latest_restorable: bool,
}

/// An RDS snapshot ARN plus the documents that go with it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSource {
    /// ARN of the DB snapshot (not its name), e.g.
    /// `arn:aws:rds:us-east-1:123456789012:snapshot:clinic-a-20260101`.
    #[schemars(length(max = 600))]
    #[x_kube(validation = patterns::rds_snapshot_arn())]
    pub snapshot_arn: String,

    /// KMS key the snapshot is encrypted with, when it is not the target clinic's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 300))]
    #[x_kube(validation = patterns::kms_key_arn())]
    pub kms_key_arn: Option<String>,

    /// Where the documents are; the database alone is restored when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents: Option<DocumentsSource>,
}

/// A documents set in S3: a bucket name (not an ARN) and the key of the set's documents
/// manifest, which names every file's version (docs/documents.md).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DocumentsSource {
    /// Bucket name.
    #[schemars(length(max = 63))]
    #[x_kube(validation = patterns::s3_bucket())]
    pub bucket: String,

    /// Key of the documents manifest, e.g. `backups/documents/clinic-a-20261122-0230.jsonl.gz`.
    #[schemars(pattern(patterns::S3_KEY), length(min = 1, max = 1024))]
    pub manifest: String,
}

/// Where to restore to. At most one field is set; side by side when neither is.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.sideBySide) && has(self.inPlace))")
        .message("spec.target must set only one of sideBySide or inPlace"),
)]
pub struct RestoreTarget {
    /// A new clinic next to the original, which is left untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side_by_side: Option<SideBySideTarget>,

    /// Replace an existing clinic's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_place: Option<InPlaceTarget>,
}

impl Default for RestoreTarget {
    fn default() -> Self {
        RestoreTarget {
            side_by_side: Some(SideBySideTarget::default()),
            in_place: None,
        }
    }
}

/// A new clinic built from the restored data.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.region) || !has(self.deploymentSpec) || self.deploymentSpec.aws.region == self.region")
        .message("spec.target.sideBySide.region and spec.target.sideBySide.deploymentSpec.aws.region disagree; set one")
        .field_path(".region"),
)]
pub struct SideBySideTarget {
    /// Name of the new OpenEMRDeployment; `<restore name>` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::DNS_LABEL))]
    pub deployment_name: Option<String>,

    /// Region of the new clinic (the snapshot is copied there first); the source's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = patterns::region())]
    pub region: Option<String>,

    /// Settings of the new clinic; a copy of the source clinic's spec when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_spec: Option<Box<OpenEMRDeploymentSpec>>,
}

/// An existing clinic whose data is replaced.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.confirm == self.deploymentName")
        .message("spec.target.inPlace.confirm must equal spec.target.inPlace.deploymentName: an in-place restore overwrites that clinic's data")
        .field_path(".confirm"),
    validation = Rule::new("!self.keepPreviousFor.matches(r'^([0-9]{1,6}(h|m|s))+$') || (duration(self.keepPreviousFor) >= duration('1h') && duration(self.keepPreviousFor) <= duration('8760h'))")
        .message("spec.target.inPlace.keepPreviousFor must be between 1h and 8760h")
        .field_path(".keepPreviousFor"),
)]
pub struct InPlaceTarget {
    /// The OpenEMRDeployment in this namespace to restore into.
    #[schemars(pattern(patterns::DNS_LABEL))]
    pub deployment_name: String,

    /// Must repeat `deploymentName` exactly.
    #[schemars(length(max = 63))]
    pub confirm: String,

    /// How long the replaced database is kept for rollback before it is deleted (after a
    /// final snapshot). Go duration, e.g. `72h`.
    #[serde(default = "default_keep_previous_for")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = patterns::duration())]
    pub keep_previous_for: String,
}

fn default_keep_previous_for() -> String {
    "72h".into()
}

/// Where a restore is.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RestorePhase {
    /// Accepted, not started.
    #[default]
    Pending,
    /// Another restore into the same target is active; this one starts after it.
    Waiting,
    /// Restoring.
    Running,
    /// Running the checks.
    Verifying,
    /// Restored and verified.
    Succeeded,
    /// A step or check failed; nothing was torn down.
    Failed,
}

/// State of one step.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StepPhase {
    /// Not started.
    #[default]
    Pending,
    /// Under way.
    Running,
    /// Done.
    Succeeded,
    /// Failed; see `message`.
    Failed,
    /// Not needed for this request.
    Skipped,
}

/// One ordered step of a restore.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStep {
    /// Step name, e.g. `SafetySnapshot`, `RestoreDatabase`, `RestoreDocuments`, `Verify`.
    pub name: String,
    /// State.
    pub phase: StepPhase,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Detail, e.g. the AWS identifier it made or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Result of one verification check.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// The check.
    pub check: VerificationCheck,
    /// Whether it passed.
    pub passed: bool,
    /// When it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// What it found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Observed state of a restore.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RestoreRequestStatus {
    /// Where the restore is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RestorePhase>,

    /// `Accepted`, `Succeeded`, …
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// A change to the outside world this operator decided on and may have sent, recorded
    /// before the request went out; cleared once a later look at the world shows it done.
    /// After a crash it tells the next reconcile to check before acting again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<super::ChangeIntent>,

    /// Steps done out of steps planned, e.g. `3/7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,

    /// The ordered steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub steps: Vec<RestoreStep>,

    /// The resolved source: the set restored (for backupRef and latestFromPolicy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_backup: Option<String>,

    /// The resolved source snapshot ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_snapshot_arn: Option<String>,

    /// For a `snapshot` source with documents: whether the snapshot and the documents
    /// were found to be one clinic's (its tag, their set manifest), or why that could not
    /// be checked. Two clinics' halves are refused (`SourceMismatch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_check: Option<String>,

    /// The instant the restored data reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_time: Option<Time>,

    /// The OpenEMRDeployment that serves the restored data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_deployment: Option<String>,

    /// The restored DB instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_db_instance: Option<String>,

    /// The restored database endpoint `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_endpoint: Option<String>,

    /// For in place: the snapshot taken of the replaced database before anything changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_snapshot: Option<String>,

    /// For in place: the DB instance the clinic ran on before; kept until
    /// `previousExpiresAt` for a rollback, then deleted after a final snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_db_instance: Option<String>,

    /// For in place: where the replaced `sites/` entries were moved on the clinic's
    /// volume (a directory beside `default/`), kept as long as the previous instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_documents: Option<String>,

    /// For in place: when the previous instance and documents go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_expires_at: Option<Time>,

    /// In `Waiting`: the active RestoreRequest into the same clinic this one waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,

    /// Results of the checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub verification: Vec<CheckResult>,

    /// When the restore started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When it was verified or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// Measured recovery time: request created to verified, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<i64>,

    /// Age of the restored data when the request was made (the RPO achieved), in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_seconds: Option<i64>,

    /// When a side-by-side target will be torn down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_expires_at: Option<Time>,
}
