//! `BackupPolicy`: "back this clinic up on this schedule, keep this much, copy it to that
//! region, and drill a restore every month".
//!
//! Each run makes one backup set (an `OpenEMRBackup`): a DB snapshot and a documents copy
//! taken together, plus a manifest in S3. Retention is grandfather-father-son with an
//! optional age limit; the newest completed set, sets in use by a restore and held sets are
//! never pruned.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, ConsistencyMode, LocalRef, VerificationCheck, patterns};

/// The desired backup behaviour for one clinic.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "openemr.io",
    version = "v1alpha1",
    kind = "BackupPolicy",
    plural = "backuppolicies",
    singular = "backuppolicy",
    shortname = "obp",
    category = "openemr",
    namespaced,
    status = "BackupPolicyStatus",
    doc = "Scheduled, consistent backups of one OpenEMR clinic, with retention, cross-region copies and restore drills.",
    printcolumn(
        name = "Deployment",
        type_ = "string",
        json_path = ".spec.deploymentRef.name"
    ),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Suspended", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(
        name = "Last Backup",
        type_ = "date",
        json_path = ".status.lastSuccessfulTime"
    ),
    printcolumn(
        name = "Next",
        type_ = "date",
        json_path = ".status.nextScheduleTime",
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
    validation = Rule::new("self.deploymentRef == oldSelf.deploymentRef")
        .message("spec.deploymentRef is immutable: create a new BackupPolicy for another clinic")
        .field_path(".deploymentRef"),
)]
pub struct BackupPolicySpec {
    /// The clinic (OpenEMRDeployment in this namespace) this policy backs up. Immutable.
    pub deployment_ref: LocalRef,

    /// When to take a backup set: five-field cron (`30 2 * * *`) or a macro (`@daily`).
    #[schemars(length(max = 128))]
    #[x_kube(validation = patterns::cron())]
    pub schedule: String,

    /// IANA time zone the schedule is read in, e.g. `Europe/Berlin`. Daylight-saving
    /// changes are honoured.
    #[serde(default = "default_time_zone")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = patterns::time_zone())]
    pub time_zone: String,

    /// A run missed (operator down) is still started if no more than this many seconds
    /// late; otherwise it is skipped. Never more than one catch-up run.
    #[serde(default = "default_starting_deadline")]
    #[schemars(range(min = 10, max = 86400))]
    pub starting_deadline_seconds: i64,

    /// Stop starting new runs. Existing sets, pruning and drills are not affected.
    #[serde(default)]
    pub suspend: bool,

    /// How the database snapshot and the documents copy are made consistent.
    #[serde(default)]
    pub consistency: ConsistencyMode,

    /// What goes into each set besides the database snapshot.
    #[serde(default)]
    pub documents: BackupDocuments,

    /// How long sets are kept.
    #[serde(default)]
    pub retention: Retention,

    /// Copy each completed set to a second region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_region_copy: Option<CrossRegionCopy>,

    /// Restore drills: scheduled side-by-side restores that prove the sets can be used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillSpec>,
}

fn default_time_zone() -> String {
    "UTC".into()
}
fn default_starting_deadline() -> i64 {
    3600
}

/// The documents half of a backup set.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupDocuments {
    /// Copy the clinic's `sites/` directory into the bucket with every set.
    #[serde(default = "default_true")]
    pub include: bool,

    /// Image of the Job that copies the documents: the operator's own image (its binary's
    /// `documents` subcommand), `--documents-image` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::IMAGE), length(max = 512))]
    pub image: Option<String>,
}

impl Default for BackupDocuments {
    fn default() -> Self {
        BackupDocuments {
            include: true,
            image: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// Grandfather-father-son retention: the newest set of each of the last `keepDaily` days,
/// `keepWeekly` ISO weeks, `keepMonthly` months and `keepYearly` years is kept; with
/// `maxAgeDays`, nothing older than that is kept, whatever the counts say.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.keepDaily + self.keepWeekly + self.keepMonthly + self.keepYearly > 0")
        .message("spec.retention keeps nothing: set at least one of keepDaily, keepWeekly, keepMonthly or keepYearly above 0"),
)]
pub struct Retention {
    /// Daily sets to keep.
    #[serde(default = "default_keep_daily")]
    #[schemars(range(min = 0, max = 3660))]
    pub keep_daily: i32,

    /// Weekly sets to keep.
    #[serde(default = "default_keep_weekly")]
    #[schemars(range(min = 0, max = 520))]
    pub keep_weekly: i32,

    /// Monthly sets to keep.
    #[serde(default = "default_keep_monthly")]
    #[schemars(range(min = 0, max = 120))]
    pub keep_monthly: i32,

    /// Yearly sets to keep.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub keep_yearly: i32,

    /// Delete sets older than this many days even if a count would keep them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 36500))]
    pub max_age_days: Option<i32>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_daily: default_keep_daily(),
            keep_weekly: default_keep_weekly(),
            keep_monthly: default_keep_monthly(),
            keep_yearly: 0,
            max_age_days: None,
        }
    }
}

fn default_keep_daily() -> i32 {
    7
}
fn default_keep_weekly() -> i32 {
    4
}
fn default_keep_monthly() -> i32 {
    12
}

/// A second region every completed set is copied to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("size(self.kmsKeyArn.split(':')) < 4 || self.kmsKeyArn.split(':')[3] == self.region")
        .message("spec.crossRegionCopy.kmsKeyArn must be a key in spec.crossRegionCopy.region")
        .field_path(".kmsKeyArn"),
)]
pub struct CrossRegionCopy {
    /// The disaster-recovery region.
    #[schemars(length(max = 32))]
    #[x_kube(validation = patterns::region())]
    pub region: String,

    /// KMS key in that region the copied snapshot is re-encrypted with.
    #[schemars(length(max = 300))]
    #[x_kube(validation = patterns::kms_key_arn())]
    pub kms_key_arn: String,

    /// Bucket in that region the documents are copied to.
    #[schemars(length(max = 63))]
    #[x_kube(validation = patterns::s3_bucket())]
    pub bucket_name: String,
}

/// How a drill picks the set it restores.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DrillSource {
    /// The newest completed set.
    #[default]
    Latest,
    /// A random completed set from the last `randomWithinDays` days.
    RandomRecent,
}

/// Scheduled restore drills.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.source == 'RandomRecent' || !has(self.randomWithinDays)")
        .message("spec.drill.randomWithinDays only applies with source: RandomRecent")
        .field_path(".randomWithinDays"),
    validation = Rule::new("!self.keepTargetFor.matches(r'^([0-9]{1,6}(h|m|s))+$') || (duration(self.keepTargetFor) >= duration('10m') && duration(self.keepTargetFor) <= duration('720h'))")
        .message("spec.drill.keepTargetFor must be between 10m and 720h")
        .field_path(".keepTargetFor"),
)]
pub struct DrillSpec {
    /// When to drill: five-field cron or a macro, e.g. `0 6 1 * *` (monthly).
    #[schemars(length(max = 128))]
    #[x_kube(validation = patterns::cron())]
    pub schedule: String,

    /// IANA time zone the drill schedule is read in.
    #[serde(default = "default_time_zone")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = patterns::time_zone())]
    pub time_zone: String,

    /// Stop scheduling drills.
    #[serde(default)]
    pub suspend: bool,

    /// Which set to restore.
    #[serde(default)]
    pub source: DrillSource,

    /// With `source: RandomRecent`, how far back to pick from (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 365))]
    pub random_within_days: Option<i32>,

    /// Checks the restored clinic must pass.
    #[serde(default = "VerificationCheck::all")]
    #[schemars(length(min = 1, max = 8), extend("x-kubernetes-list-type" = "set"))]
    pub checks: Vec<VerificationCheck>,

    /// How long a drill's restored clinic is kept after verification before it is torn down
    /// (Go duration, e.g. `4h`). A failed drill's target is kept for inspection.
    #[serde(default = "default_keep_target_for")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = patterns::duration())]
    pub keep_target_for: String,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn default_keep_target_for() -> String {
    "2h".into()
}

/// Observed state of a backup policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicyStatus {
    /// `Accepted`, `Ready`, `DrillSucceeded`, …
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

    /// The latest slot of the schedule that has passed: its set was made, or the slot was
    /// missed or skipped. The next look starts after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,

    /// The newest set the schedule made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scheduled_backup: Option<String>,

    /// Slots that passed without a set since the policy was made: the operator was down
    /// past `startingDeadlineSeconds`, or the slot's predecessor was still waiting to start.
    /// Each is also an Event (`MissedSchedule`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub missed_runs: i64,

    /// When the operator last found slots that passed without a set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_missed_time: Option<Time>,

    /// When the schedule next fires (absent while suspended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,

    /// The newest completed set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup: Option<String>,

    /// When the newest completed set completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,

    /// Failed runs since the last success.
    #[serde(default)]
    pub consecutive_failures: i32,

    /// Completed sets currently kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_sets: Option<i32>,

    /// The newest drill's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill: Option<DrillResult>,

    /// When the drill schedule next fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_drill_time: Option<Time>,
}

/// Outcome of one drill.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DrillResult {
    /// The RestoreRequest the drill created.
    pub restore_request: String,
    /// The set that was restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// Whether every check passed.
    pub succeeded: bool,
    /// When the drill started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it was verified (or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Measured recovery time: request to verified, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<i64>,
    /// Age of the restored data at the start of the drill, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_seconds: Option<i64>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
