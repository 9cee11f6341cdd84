//! `OpenEMRBackup`: one backup set — "this set exists" or "take one now".
//!
//! A set is one manual RDS snapshot plus one copy of the clinic's documents in its bucket,
//! taken together, described by a manifest at `s3://<bucket>/backups/<set>/manifest.json`
//! so the records can be rebuilt if the cluster is lost. Schedules create these objects;
//! a person or a pipeline may create one by hand for an on-demand backup. The spec is fixed
//! once created. A set carrying the label `openemr.io/hold: "true"` is never pruned.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, ConsistencyMode, LocalRef};

/// Label that keeps a set from being pruned while it is `"true"`.
pub const HOLD_LABEL: &str = "openemr.io/hold";

/// Annotation on a record rebuilt from the bucket: the set manifest it was rebuilt from
/// (`s3://<bucket>/backups/<set>/manifest.json`). Such a record never takes a set: its
/// status is read from that manifest.
pub const REBUILT_FROM_ANNOTATION: &str = "openemr.io/rebuilt-from";

/// Annotation on a set a schedule made: the slot (RFC 3339) it was made for.
pub const SCHEDULED_FOR_ANNOTATION: &str = "openemr.io/scheduled-for";

/// A request for (and the record of) one backup set.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "openemr.io",
    version = "v1alpha1",
    kind = "OpenEMRBackup",
    plural = "openemrbackups",
    singular = "openemrbackup",
    shortname = "obk",
    category = "openemr",
    namespaced,
    status = "OpenEMRBackupStatus",
    doc = "One backup set of an OpenEMR clinic: a DB snapshot and a documents copy taken together, with a manifest in S3.",
    printcolumn(
        name = "Deployment",
        type_ = "string",
        json_path = ".spec.deploymentRef.name"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Completed",
        type_ = "date",
        json_path = ".status.completionTime"
    ),
    printcolumn(
        name = "Expires",
        type_ = "date",
        json_path = ".status.expiresAt",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self == oldSelf")
        .message("spec of an OpenEMRBackup is immutable: create a new backup instead"),
)]
pub struct OpenEMRBackupSpec {
    /// The clinic this set belongs to.
    pub deployment_ref: LocalRef,

    /// The policy that made it; unset for an on-demand set, which is kept until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_ref: Option<LocalRef>,

    /// Consistency mode for this set; the policy's (or crash-consistent) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<ConsistencyMode>,

    /// Copy the documents too; the policy's setting (or true) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_documents: Option<bool>,
}

/// Where a set is in its life.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackupPhase {
    /// Waiting to start (another set of the clinic is running, or the clinic is not ready).
    #[default]
    Pending,
    /// Snapshot and documents copy under way.
    Running,
    /// Both parts finished and the manifest is written.
    Completed,
    /// A part failed; see `message` and the conditions.
    Failed,
    /// Expired: both parts are being deleted together.
    Deleting,
}

/// Observed state of a backup set.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OpenEMRBackupStatus {
    /// Where the set is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,

    /// `Accepted`, `DatabaseSnapshotReady`, `DocumentsCopied`, `Completed`, …
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

    /// Stable id of the set, used in every AWS name and the S3 prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_id: Option<String>,

    /// The OpenEMR image the clinic ran when the set was taken: a restore refuses a target
    /// whose image is older (the set's schema, `v_database`, would be newer than its code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// The consistency mode the set is taken with, fixed when it starts (a later change
    /// to its policy does not alter a set under way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<ConsistencyMode>,

    /// Whether the set holds the documents, fixed when it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_documents: Option<bool>,

    /// When work on the set started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When both parts had finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// When the snapshot was asked for: the database's instant in the set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_requested_time: Option<Time>,

    /// The Job copying the documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents_job: Option<String>,

    /// When the documents copy started (after the snapshot was asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents_start_time: Option<Time>,

    /// When the documents copy finished: the files are as they were between its start and
    /// this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents_completion_time: Option<Time>,

    /// A `Quiesced` set's hold on the clinic: when it was placed, in effect and released,
    /// and how long the clinic was down for the set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesce: Option<QuiesceRecord>,

    /// The database half.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<SnapshotRef>,

    /// The documents half.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents: Option<DocumentsLocation>,

    /// `s3://bucket/backups/<set>/manifest.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,

    /// Snapshot storage plus documents, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,

    /// When retention will prune the set (absent while kept by a count, a hold or a restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// Copies in other regions, pruned with the set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub copies: Vec<RegionCopy>,

    /// Why the set failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How a `Quiesced` set stopped its clinic: a hold (a Lease the set renews while it runs)
/// takes the workers to 0; the snapshot is asked for and the documents copied once the
/// hold is in effect (no worker or Job left); the hold is released as soon as both parts
/// are taken.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QuiesceRecord {
    /// The hold's Lease.
    pub lease: String,
    /// When the hold was placed: the workers started stopping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_time: Option<Time>,
    /// When nothing of the web tier ran any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_time: Option<Time>,
    /// When the hold was released: the workers started again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_time: Option<Time>,
    /// Seconds from placing the hold to releasing it: how long the clinic was down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_seconds: Option<i64>,
}

/// An RDS snapshot.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRef {
    /// Snapshot identifier.
    pub identifier: String,
    /// Snapshot ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// Last RDS status seen, e.g. `available`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Allocated storage of the snapshot in GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_storage_gi_b: Option<i32>,
    /// The MySQL engine version of the instance when the snapshot was taken: a restore
    /// refuses a target that runs an older one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_version: Option<String>,
}

/// A documents copy in S3.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DocumentsLocation {
    /// Bucket name.
    pub bucket: String,
    /// Key of the set's documents manifest, which names every file's version: the set's
    /// documents are what it names, not a prefix (docs/documents.md).
    pub manifest: String,
    /// Files in the set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_count: Option<i64>,
    /// Bytes of the files in the set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// Files this set sent; the rest were unchanged since the set before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_uploaded: Option<i64>,
    /// Bytes this set sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_uploaded: Option<i64>,
}

/// A set's copy in another region.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RegionCopy {
    /// The region.
    pub region: String,
    /// The KMS key there, the copied snapshot's and documents' (the same every time, so
    /// RDS copies incrementally).
    pub kms_key_arn: String,
    /// The bucket there.
    pub bucket: String,
    /// Where the copy is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CopyPhase>,
    /// When the copy was asked of RDS (the Job's copy starts with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the copy's manifest was seen in the bucket there: the region alone restores
    /// the set from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The copied snapshot there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<SnapshotRef>,
    /// The Job copying the documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents_job: Option<String>,
    /// The copied documents there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents: Option<DocumentsLocation>,
    /// `s3://bucket/backups/<set>/manifest.json` there: self-contained (that region's
    /// snapshot ARN, bucket and version ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// Why the copy waits or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where a copy to another region is.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CopyPhase {
    /// Waiting: the region's copies in flight are at their limit, or its snapshot quota
    /// is reached.
    #[default]
    Queued,
    /// The snapshot and the documents are being copied.
    Copying,
    /// Both copied and the copy's manifest written there.
    Completed,
    /// A part failed; see `message`. The set itself stays usable in its own region.
    Failed,
}
