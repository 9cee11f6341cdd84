//! `OpenEMRDeployment`: "this clinic exists, with these settings".
//!
//! One object is one clinic: its AWS placement, the RDS MySQL database (driven through the
//! RDS API, never a stack, so no stack update can replace it), the supporting stack (KMS key,
//! bucket, network pieces, EFS for `sites/`, Redis for PHP sessions) and the web tier in the
//! cluster. Defaults are HIPAA-grade: encrypted with a per-clinic key, private, deletion
//! protected, at least seven days of automated backups, data retained on delete.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, DeletionPolicy, patterns};

/// The desired state of one OpenEMR clinic.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "openemr.io",
    version = "v1alpha1",
    kind = "OpenEMRDeployment",
    plural = "openemrdeployments",
    singular = "openemrdeployment",
    shortname = "oemr",
    shortname = "emr",
    category = "openemr",
    namespaced,
    status = "OpenEMRDeploymentStatus",
    doc = "An OpenEMR clinic on AWS: database, documents, sessions and web tier, kept as declared.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.aws.region"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.web.url"),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.database.endpoint",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$')")
        .message("metadata.name must be a DNS label of at most 40 characters starting with a letter, because it names the clinic's AWS resources")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.adopt) == has(oldSelf.adopt) && (!has(self.adopt) || (has(self.adopt.dbInstanceIdentifier) == has(oldSelf.adopt.dbInstanceIdentifier) && (!has(self.adopt.dbInstanceIdentifier) || self.adopt.dbInstanceIdentifier == oldSelf.adopt.dbInstanceIdentifier) && has(self.adopt.bucketName) == has(oldSelf.adopt.bucketName) && (!has(self.adopt.bucketName) || self.adopt.bucketName == oldSelf.adopt.bucketName)))")
        .message("spec.adopt is immutable but for approvedChanges: what is adopted is decided when the clinic is created")
        .field_path(".adopt"),
    validation = Rule::new("self.deletionPolicy == 'Delete' || !self.skipFinalSnapshot")
        .message("spec.skipFinalSnapshot may only be true with spec.deletionPolicy: Delete")
        .field_path(".skipFinalSnapshot"),
)]
pub struct OpenEMRDeploymentSpec {
    /// Where the clinic lives in AWS.
    pub aws: AwsPlacement,

    /// The VPC pieces the database, file system and cache use.
    pub network: NetworkSpec,

    /// The RDS MySQL instance.
    #[serde(default)]
    pub database: DatabaseSpec,

    /// The shared EFS file system mounted at OpenEMR's `sites/` directory.
    #[serde(default)]
    pub documents: DocumentsSpec,

    /// The Redis (ElastiCache) cluster that keeps PHP sessions, so any replica can serve any user.
    #[serde(default)]
    pub sessions: SessionsSpec,

    /// The OpenEMR web tier in this cluster.
    #[serde(default)]
    pub web: WebSpec,

    /// What happens to the clinic's data in AWS when this object is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// With `deletionPolicy: Delete`, skip the final DB snapshot. Data is lost for good.
    #[serde(default)]
    pub skip_final_snapshot: bool,

    /// Audit logging of the clinic's AWS activity.
    #[serde(default)]
    pub audit: AuditSpec,

    /// Existing AWS resources to take over instead of creating new ones. Never recreated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt: Option<AdoptSpec>,

    /// Tags added to every AWS resource of the clinic (and copied to its snapshots).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 40))]
    #[x_kube(
        validation = Rule::new("self.all(k, !k.lowerAscii().startsWith('aws:') && !k.startsWith('openemr.io/'))")
            .message("spec.tags keys must not start with 'aws:' in any letter case (reserved by AWS) or 'openemr.io/' (reserved by the operator)"),
        validation = Rule::new("self.all(k, size(k) <= 128 && size(self[k]) <= 256)")
            .message("spec.tags keys may have at most 128 characters and values at most 256"),
    )]
    pub tags: BTreeMap<String, String>,
}

/// AWS account and region of a clinic.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.region == oldSelf.region")
        .message("spec.aws.region is immutable: to move a clinic to another region, restore it there with a RestoreRequest")
        .field_path(".region")
)]
pub struct AwsPlacement {
    /// AWS region, e.g. `us-east-1`. Immutable.
    #[schemars(length(max = 32))]
    #[x_kube(validation = patterns::region())]
    pub region: String,

    /// IAM role to assume for this clinic's AWS calls (for clinics in other accounts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 600))]
    #[x_kube(validation = patterns::iam_role_arn())]
    pub role_arn: Option<String>,
}

/// The network a clinic uses: exactly one of an existing VPC or a new one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.existing) != has(self.newVpc)")
        .message("spec.network must set exactly one of existing or newVpc"),
    validation = Rule::new("self == oldSelf")
        .message("spec.network is immutable: a clinic's data cannot move between VPCs in place; restore it side by side instead"),
    validation = Rule::new("oldSelf.hasValue() || !has(self.newVpc)")
        .optional_old_self(true)
        .message("spec.network.newVpc is no longer accepted for new clinics: nothing in the cluster could reach the new VPC's database, file system or cache (no peering or routes are made); use spec.network.existing with the cluster's VPC, private subnets and security group"),
)]
pub struct NetworkSpec {
    /// Use the cluster's VPC: the database and file system go into these subnets and admit
    /// traffic only from the cluster's security group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing: Option<ExistingNetwork>,

    /// A dedicated VPC for the clinic. Refused for new clinics: the operator makes no
    /// peering or routes, so the cluster could not reach it. Kept for clinics made with it
    /// before, which the operator still manages (peering them is up to you).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_vpc: Option<NewVpc>,
}

/// An existing VPC, subnets and the cluster's security group.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExistingNetwork {
    /// The VPC, e.g. `vpc-0a1b2c3d4e5f60718`.
    #[schemars(pattern(patterns::VPC_ID))]
    pub vpc_id: String,

    /// Private subnets in at least two availability zones (an RDS subnet group needs two).
    #[schemars(length(min = 2, max = 16), inner(pattern(patterns::SUBNET_ID)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub subnet_ids: Vec<String>,

    /// The security group of the cluster's nodes or pods; the only source admitted to MySQL,
    /// NFS and Redis.
    #[schemars(pattern(patterns::SECURITY_GROUP_ID))]
    pub cluster_security_group_id: String,
}

/// A VPC created for the clinic.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NewVpc {
    /// The VPC's IPv4 CIDR block, /16 to /24.
    #[serde(default = "default_vpc_cidr")]
    #[schemars(pattern(patterns::IPV4_CIDR))]
    pub cidr: String,

    /// How many availability zones to spread subnets across.
    #[serde(default = "default_availability_zones")]
    #[schemars(range(min = 2, max = 3))]
    pub availability_zones: i32,
}

impl Default for NewVpc {
    fn default() -> Self {
        NewVpc {
            cidr: default_vpc_cidr(),
            availability_zones: default_availability_zones(),
        }
    }
}

fn default_vpc_cidr() -> String {
    "10.0.0.0/16".into()
}
fn default_availability_zones() -> i32 {
    2
}

/// Audit logging for the clinic.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuditSpec {
    /// Record the clinic's AWS activity with CloudTrail: the operator's shared trail of
    /// the account (management events, and every object read and write in the clinic
    /// buckets) or the organisation's trail; `status.audit` says where the logs are.
    #[serde(default = "default_true")]
    pub cloud_trail: bool,
}

/// Where a clinic's AWS activity is recorded.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuditStatus {
    /// Which trail records it.
    pub scope: AuditScope,
    /// ARN of that trail, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trail_arn: Option<String>,
    /// Where its log files are, e.g. `s3://123456789012-openemr-audit-logs/AWSLogs/123456789012/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
}

/// Which trail records a clinic's AWS activity.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditScope {
    /// The operator's one trail of the account (stack `openemr-audit`), shared by every
    /// clinic and cluster there.
    Shared,
    /// The organisation's trail (`--organization-trail`): the operator makes none.
    Organization,
    /// The clinic's own trail into its bucket, as operators before the shared trail made
    /// it: kept until the shared trail is ready, then removed.
    Clinic,
    /// Waiting for the shared trail: a new clinic's stack is created once it is ready, so
    /// its activity is recorded from its first call.
    Pending,
    /// `spec.audit.cloudTrail` is false.
    Off,
}

impl Default for AuditSpec {
    fn default() -> Self {
        AuditSpec { cloud_trail: true }
    }
}

/// When RDS applies a change to the database's settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ApplyChanges {
    /// At the next maintenance window (no unplanned restart).
    #[default]
    InMaintenanceWindow,
    /// Now, which may restart the database.
    Immediately,
}

/// The daily backup window and the weekly maintenance window, as minutes of the week, do not
/// overlap on any day. Two intervals `[a, a+la)` and `[b, b+lb)` on a circle of `N` minutes
/// overlap exactly when `(b-a) mod N < la` or `(a-b) mod N < lb`; `+ N` keeps CEL's `%`
/// away from negative operands.
const WINDOWS_DO_NOT_OVERLAP: &str = concat!(
    "!self.backupWindow.matches(r'^[0-9]{2}:[0-9]{2}-[0-9]{2}:[0-9]{2}$') ",
    "|| !self.maintenanceWindow.matches(r'^[a-z]{3}:[0-9]{2}:[0-9]{2}-[a-z]{3}:[0-9]{2}:[0-9]{2}$') ",
    "|| [0, 1, 2, 3, 4, 5, 6].all(d, ",
    // (maintenance start - backup start) mod week >= backup length
    "((('montuewedthufrisatsun'.indexOf(self.maintenanceWindow.substring(0, 3)) / 3) * 1440 ",
    "+ int(self.maintenanceWindow.substring(4, 6)) * 60 + int(self.maintenanceWindow.substring(7, 9)) ",
    "- (d * 1440 + int(self.backupWindow.substring(0, 2)) * 60 + int(self.backupWindow.substring(3, 5))) + 10080) % 10080 ",
    ">= (int(self.backupWindow.substring(6, 8)) * 60 + int(self.backupWindow.substring(9, 11)) ",
    "- int(self.backupWindow.substring(0, 2)) * 60 - int(self.backupWindow.substring(3, 5)) + 1440) % 1440) ",
    // && (backup start - maintenance start) mod week >= maintenance length
    "&& ((d * 1440 + int(self.backupWindow.substring(0, 2)) * 60 + int(self.backupWindow.substring(3, 5)) ",
    "- (('montuewedthufrisatsun'.indexOf(self.maintenanceWindow.substring(0, 3)) / 3) * 1440 ",
    "+ int(self.maintenanceWindow.substring(4, 6)) * 60 + int(self.maintenanceWindow.substring(7, 9))) + 10080) % 10080 ",
    ">= ((('montuewedthufrisatsun'.indexOf(self.maintenanceWindow.substring(10, 13)) / 3) * 1440 ",
    "+ int(self.maintenanceWindow.substring(14, 16)) * 60 + int(self.maintenanceWindow.substring(17, 19))) ",
    "- (('montuewedthufrisatsun'.indexOf(self.maintenanceWindow.substring(0, 3)) / 3) * 1440 ",
    "+ int(self.maintenanceWindow.substring(4, 6)) * 60 + int(self.maintenanceWindow.substring(7, 9))) + 10080) % 10080)",
    ")"
);

/// The RDS MySQL instance of a clinic.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.maxAllocatedStorageGiB) || self.maxAllocatedStorageGiB > self.allocatedStorageGiB")
        .message("spec.database.maxAllocatedStorageGiB (the storage autoscaling limit) must be greater than spec.database.allocatedStorageGiB")
        .field_path(".maxAllocatedStorageGiB"),
    validation = Rule::new("self.allocatedStorageGiB >= oldSelf.allocatedStorageGiB")
        .message("spec.database.allocatedStorageGiB cannot shrink: RDS storage can only grow")
        .field_path(".allocatedStorageGiB"),
    validation = Rule::new("size(self.engineVersion) < 3 || size(oldSelf.engineVersion) < 3 || self.engineVersion.substring(0, 3) >= oldSelf.engineVersion.substring(0, 3)")
        .message("spec.database.engineVersion cannot be downgraded to an older major version")
        .field_path(".engineVersion"),
    validation = Rule::new("self.databaseName == oldSelf.databaseName && self.username == oldSelf.username")
        .message("spec.database.databaseName and spec.database.username are immutable")
        .field_path(".databaseName"),
    validation = Rule::new(WINDOWS_DO_NOT_OVERLAP)
        .message("spec.database.backupWindow must not overlap spec.database.maintenanceWindow (RDS refuses it)")
        .field_path(".backupWindow"),
    validation = Rule::new("!self.backupWindow.matches(r'^[0-9]{2}:[0-9]{2}-[0-9]{2}:[0-9]{2}$') || ((int(self.backupWindow.substring(6, 8)) * 60 + int(self.backupWindow.substring(9, 11))) - (int(self.backupWindow.substring(0, 2)) * 60 + int(self.backupWindow.substring(3, 5))) + 1440) % 1440 >= 30")
        .message("spec.database.backupWindow must be at least 30 minutes long")
        .field_path(".backupWindow"),
)]
pub struct DatabaseSpec {
    /// MySQL engine version: `8.0` or `8.4`, optionally with a patch level (`8.0.40`).
    #[serde(default = "default_engine_version")]
    #[schemars(length(max = 10))]
    #[x_kube(validation = patterns::mysql_version())]
    pub engine_version: String,

    /// RDS instance class.
    #[serde(default = "default_instance_class")]
    #[schemars(pattern(patterns::DB_INSTANCE_CLASS), length(max = 32))]
    pub instance_class: String,

    /// Allocated storage in GiB (20–65536). Can grow, never shrink.
    #[serde(default = "default_allocated_storage")]
    #[schemars(range(min = 20, max = 65536))]
    pub allocated_storage_gi_b: i32,

    /// Upper limit for RDS storage autoscaling in GiB; unset turns autoscaling off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 21, max = 65536))]
    pub max_allocated_storage_gi_b: Option<i32>,

    /// Run a standby in a second availability zone.
    #[serde(default, rename = "multiAZ")]
    pub multi_az: bool,

    /// Days RDS keeps automated backups (point-in-time restore window): 7 to 35.
    #[serde(default = "default_backup_retention_days")]
    #[schemars(range(min = 7, max = 35))]
    pub backup_retention_days: i32,

    /// Daily automated backup window, `hh:mm-hh:mm` in UTC, at least 30 minutes.
    #[serde(default = "default_backup_window")]
    #[schemars(length(max = 11))]
    #[x_kube(validation = patterns::backup_window())]
    pub backup_window: String,

    /// Weekly maintenance window, `ddd:hh:mm-ddd:hh:mm` in UTC.
    #[serde(default = "default_maintenance_window")]
    #[schemars(length(max = 19))]
    #[x_kube(validation = patterns::maintenance_window())]
    pub maintenance_window: String,

    /// When changes to these settings take effect.
    #[serde(default)]
    pub apply_changes: ApplyChanges,

    /// RDS deletion protection. The operator turns it off only to carry out `deletionPolicy`.
    #[serde(default = "default_true")]
    pub deletion_protection: bool,

    /// Name of OpenEMR's schema. Immutable.
    #[serde(default = "default_database_name")]
    #[schemars(pattern(patterns::MYSQL_IDENTIFIER))]
    pub database_name: String,

    /// MySQL user OpenEMR connects as. Immutable.
    #[serde(default = "default_username")]
    #[schemars(pattern(patterns::MYSQL_IDENTIFIER))]
    pub username: String,

    /// A Secret in this namespace holding `password` (and optionally `root-password`) to use
    /// instead of generated ones. The passwords never leave Kubernetes Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<super::LocalRef>,
}

impl Default for DatabaseSpec {
    fn default() -> Self {
        DatabaseSpec {
            engine_version: default_engine_version(),
            instance_class: default_instance_class(),
            allocated_storage_gi_b: default_allocated_storage(),
            max_allocated_storage_gi_b: None,
            multi_az: false,
            backup_retention_days: default_backup_retention_days(),
            backup_window: default_backup_window(),
            maintenance_window: default_maintenance_window(),
            apply_changes: ApplyChanges::default(),
            deletion_protection: true,
            database_name: default_database_name(),
            username: default_username(),
            credentials_secret_ref: None,
        }
    }
}

fn default_engine_version() -> String {
    "8.0".into()
}
fn default_instance_class() -> String {
    "db.t4g.medium".into()
}
fn default_allocated_storage() -> i32 {
    20
}
fn default_backup_retention_days() -> i32 {
    7
}
fn default_backup_window() -> String {
    "03:00-04:00".into()
}
fn default_maintenance_window() -> String {
    "sun:05:00-sun:06:00".into()
}
fn default_database_name() -> String {
    "openemr".into()
}
fn default_username() -> String {
    "openemr".into()
}
fn default_true() -> bool {
    true
}

/// EFS throughput mode.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ThroughputMode {
    /// Throughput scales with use (the AWS default for new file systems).
    #[default]
    Elastic,
    /// Throughput scales with the amount stored.
    Bursting,
    /// A fixed throughput, set in `provisionedThroughputMiBps`.
    Provisioned,
}

/// The clinic's documents: EFS for the shared `sites/` directory.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(self.throughputMode == 'Provisioned') == has(self.provisionedThroughputMiBps)")
        .message("spec.documents.provisionedThroughputMiBps is required with throughputMode: Provisioned and not allowed otherwise")
        .field_path(".provisionedThroughputMiBps"),
)]
pub struct DocumentsSpec {
    /// EFS throughput mode.
    #[serde(default)]
    pub throughput_mode: ThroughputMode,

    /// Throughput in MiB/s for `throughputMode: Provisioned` (1–3414).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3414))]
    pub provisioned_throughput_mi_bps: Option<i32>,

    /// Size of the PersistentVolume the operator declares for `sites/` (EFS is elastic;
    /// Kubernetes still wants a number).
    #[serde(default = "default_documents_size")]
    #[schemars(pattern(r"^[1-9][0-9]{0,5}(Gi|Ti)$"))]
    pub size: String,
}

impl Default for DocumentsSpec {
    fn default() -> Self {
        DocumentsSpec {
            throughput_mode: ThroughputMode::default(),
            provisioned_throughput_mi_bps: None,
            size: default_documents_size(),
        }
    }
}

fn default_documents_size() -> String {
    "100Gi".into()
}

/// Redis (ElastiCache) for PHP sessions.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionsSpec {
    /// ElastiCache node type.
    #[serde(default = "default_cache_node_type")]
    #[schemars(pattern(patterns::CACHE_NODE_TYPE), length(max = 32))]
    pub node_type: String,

    /// Read replicas beside the primary (0–5); one or more enables automatic failover.
    #[serde(default)]
    #[schemars(range(min = 0, max = 5))]
    pub replicas: i32,
}

impl Default for SessionsSpec {
    fn default() -> Self {
        SessionsSpec {
            node_type: default_cache_node_type(),
            replicas: 0,
        }
    }
}

fn default_cache_node_type() -> String {
    "cache.t4g.micro".into()
}

/// How the web tier is exposed inside the cluster.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ServiceType {
    /// Reachable inside the cluster (put an Ingress in front).
    #[default]
    ClusterIP,
    /// A cloud load balancer.
    LoadBalancer,
    /// A port on every node.
    NodePort,
}

/// The OpenEMR web tier.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebSpec {
    /// OpenEMR container image.
    #[serde(default = "default_image")]
    #[schemars(pattern(patterns::IMAGE), length(max = 512))]
    pub image: String,

    /// Number of OpenEMR replicas (0 stops the web tier without touching data).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,

    /// CPU and memory for each replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<WebResources>,

    /// The Service in front of the replicas.
    #[serde(default)]
    pub service: ServiceSpec,

    /// An Ingress for the clinic, if wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,

    /// A Secret in this namespace with `username` and `password` for OpenEMR's first
    /// administrator (set up once, by the setup Job); generated when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_credentials_secret_ref: Option<super::LocalRef>,

    /// How a change of `image` is rolled out.
    #[serde(default)]
    pub upgrade: UpgradeSpec,
}

impl Default for WebSpec {
    fn default() -> Self {
        WebSpec {
            image: default_image(),
            replicas: default_replicas(),
            resources: None,
            service: ServiceSpec::default(),
            ingress: None,
            admin_credentials_secret_ref: None,
            upgrade: UpgradeSpec::default(),
        }
    }
}

/// OpenEMR upgrades migrate the database schema, so an image change is guarded.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeSpec {
    /// Take a DB snapshot (and wait until it is `available`) before the new image starts.
    #[serde(default = "default_true")]
    pub snapshot_before_upgrade: bool,

    /// If the new image does not become ready, go back to the previous image. The
    /// pre-upgrade snapshot is named in `status.upgrade` and a Warning Event for a person
    /// to restore from (never restored in place without a RestoreRequest).
    #[serde(default = "default_true")]
    pub rollback_on_failure: bool,

    /// How long the new image has to become ready before the upgrade counts as failed.
    #[serde(default = "default_upgrade_timeout_seconds")]
    #[schemars(range(min = 60, max = 86400))]
    pub timeout_seconds: i32,
}

impl Default for UpgradeSpec {
    fn default() -> Self {
        UpgradeSpec {
            snapshot_before_upgrade: true,
            rollback_on_failure: true,
            timeout_seconds: default_upgrade_timeout_seconds(),
        }
    }
}

fn default_upgrade_timeout_seconds() -> i32 {
    1800
}

/// The current production line (openemr-devops marks 7.0.3 obsolete). A patch-level tag
/// is not used: the image's automatic upgrade works between releases only.
pub const DEFAULT_IMAGE: &str = "openemr/openemr:8.0.0";

fn default_image() -> String {
    DEFAULT_IMAGE.into()
}
fn default_replicas() -> i32 {
    2
}

/// Requests and limits of each replica, checked as the API server checks a container's:
/// refused at admission rather than when the workers are applied.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    validation = Rule::new("!has(self.requests) || !has(self.limits) || ((!has(self.requests.cpu) || !has(self.limits.cpu) || !isQuantity(string(self.requests.cpu)) || !isQuantity(string(self.limits.cpu)) || quantity(string(self.requests.cpu)).compareTo(quantity(string(self.limits.cpu))) <= 0) && (!has(self.requests.memory) || !has(self.limits.memory) || !isQuantity(string(self.requests.memory)) || !isQuantity(string(self.limits.memory)) || quantity(string(self.requests.memory)).compareTo(quantity(string(self.limits.memory))) <= 0))")
        .message("spec.web.resources: a request must not exceed its limit")
        .field_path(".requests"),
)]
pub struct WebResources {
    /// The least each replica gets, e.g. `{cpu: 500m, memory: 1Gi}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceAmounts>,

    /// The most each replica may use, e.g. `{cpu: "2", memory: 2Gi}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceAmounts>,
}

/// CPU, memory and scratch space, each a non-negative quantity.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    validation = Rule::new(non_negative_quantity("cpu"))
        .message("cpu must be a non-negative quantity, e.g. 500m or 2")
        .field_path(".cpu"),
    validation = Rule::new(non_negative_quantity("memory"))
        .message("memory must be a non-negative quantity, e.g. 512Mi or 2Gi")
        .field_path(".memory"),
    validation = Rule::new(non_negative_quantity("ephemeral-storage"))
        .message("ephemeral-storage must be a non-negative quantity, e.g. 1Gi")
        .field_path(".ephemeral-storage"),
)]
pub struct ResourceAmounts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    #[serde(
        default,
        rename = "ephemeral-storage",
        skip_serializing_if = "Option::is_none"
    )]
    pub ephemeral_storage: Option<Quantity>,
}

/// A CEL rule: `field` of `self`, when set, is a quantity of at least zero.
fn non_negative_quantity(field: &str) -> String {
    // CEL reaches a property with a dash through its escaped name.
    let cel_field = format!("self.{}", field.replace('-', "__dash__"));
    format!(
        "!has({cel_field}) || (isQuantity(string({cel_field})) && !quantity(string({cel_field})).isLessThan(quantity('0')))"
    )
}

/// A CEL test that every key of the map `self` is a valid annotation key (a qualified name
/// with an optional DNS-subdomain prefix), as the API server requires.
const ANNOTATION_KEYS: &str = "self.all(k, k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))";

/// The web tier's Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,

    /// Port the Service listens on.
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Annotations on the Service, e.g. a load balancer's settings
    /// (`service.beta.kubernetes.io/aws-load-balancer-*`) for `type: LoadBalancer`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(
        validation = Rule::new("self.all(k, !k.startsWith('openemr.io/'))")
            .message("spec.web.service.annotations keys must not start with 'openemr.io/' (reserved by the operator)"),
        validation = Rule::new(ANNOTATION_KEYS)
            .message("spec.web.service.annotations keys must be qualified names, e.g. service.beta.kubernetes.io/aws-load-balancer-scheme"),
    )]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            type_: ServiceType::default(),
            port: default_service_port(),
            annotations: BTreeMap::new(),
        }
    }
}

fn default_service_port() -> i32 {
    80
}

/// An Ingress for the web tier.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Host name users reach the clinic at.
    #[schemars(pattern(patterns::DNS_SUBDOMAIN), length(max = 253))]
    pub host: String,

    /// IngressClass to use (a DNS subdomain, e.g. `alb`); the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::DNS_SUBDOMAIN), length(min = 1, max = 253))]
    pub class_name: Option<String>,

    /// Secret with the TLS certificate for `host`; HTTPS only when set. (The AWS Load
    /// Balancer Controller finds the certificate for `host` in ACM instead.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::DNS_SUBDOMAIN), length(max = 253))]
    pub tls_secret_name: Option<String>,

    /// Annotations for the ingress controller, over the operator's own. With
    /// `className: alb` those are `alb.ingress.kubernetes.io/target-type: ip` (the Service
    /// is a ClusterIP) and `healthcheck-path` on the login page (`/` only redirects);
    /// `scheme` stays the controller's default, `internal`, unless set here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(
        validation = Rule::new("self.all(k, !k.startsWith('openemr.io/'))")
            .message("spec.web.ingress.annotations keys must not start with 'openemr.io/' (reserved by the operator)"),
        validation = Rule::new(ANNOTATION_KEYS)
            .message("spec.web.ingress.annotations keys must be qualified names, e.g. alb.ingress.kubernetes.io/scheme"),
    )]
    pub annotations: BTreeMap<String, String>,
}

/// Existing AWS resources to adopt. Differences from the spec are reported before anything
/// is changed; adopted resources are never recreated.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.dbInstanceIdentifier) || has(self.bucketName)")
        .message("spec.adopt must name dbInstanceIdentifier, bucketName or both")
)]
pub struct AdoptSpec {
    /// An existing RDS DB instance to manage as this clinic's database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::DB_INSTANCE_IDENTIFIER), length(max = 63))]
    pub db_instance_identifier: Option<String>,

    /// An existing S3 bucket to use as this clinic's bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = patterns::s3_bucket())]
    pub bucket_name: Option<String>,

    /// Changes to the adopted DB instance that RDS applies with an outage, approved: each
    /// is sent (per `database.applyChanges`) only once named here. Until then each is
    /// reported in the `Adopted` condition and the instance keeps its setting, so adopting
    /// a production database never resizes or restarts it on the spec's defaults. The only
    /// field of `adopt` that may change after creation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7))]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, y == x))").message("spec.adopt.approvedChanges must not repeat a change"))]
    pub approved_changes: Vec<AdoptedChange>,
}

/// A change to an adopted DB instance that RDS applies with an outage.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum AdoptedChange {
    /// `database.instanceClass` (a restart; a smaller class can starve the database).
    #[serde(rename = "instanceClass")]
    InstanceClass,
    /// `database.engineVersion` (an upgrade with downtime).
    #[serde(rename = "engineVersion")]
    EngineVersion,
    /// `database.allocatedStorageGiB` (storage optimization; growth only).
    #[serde(rename = "allocatedStorageGiB")]
    AllocatedStorage,
    /// Storage type to gp3, the clinics' own (from io1/io2, provisioned IOPS given up;
    /// hours of storage optimization).
    #[serde(rename = "storageType")]
    StorageType,
    /// `database.multiAZ` (a standby created or removed).
    #[serde(rename = "multiAZ")]
    MultiAz,
    /// The clinic's parameter group (`require_secure_transport`; a reboot).
    #[serde(rename = "parameterGroup")]
    ParameterGroup,
    /// The clinic's security group (connections from elsewhere end).
    #[serde(rename = "securityGroups")]
    SecurityGroups,
    /// `database.backupRetentionDays` on an instance with backups off (turning them on
    /// takes an outage and a first snapshot).
    #[serde(rename = "backupRetentionDays")]
    BackupRetention,
}

impl AdoptedChange {
    /// The name of the difference it approves, as the `Adopted` condition and Events say.
    pub fn field(self) -> &'static str {
        match self {
            AdoptedChange::InstanceClass => "instanceClass",
            AdoptedChange::EngineVersion => "engineVersion",
            AdoptedChange::AllocatedStorage => "allocatedStorageGiB",
            AdoptedChange::StorageType => "storageType",
            AdoptedChange::MultiAz => "multiAZ",
            AdoptedChange::ParameterGroup => "parameterGroup",
            AdoptedChange::SecurityGroups => "securityGroups",
            AdoptedChange::BackupRetention => "backupRetentionDays",
        }
    }
}

/// Lifecycle phase of a clinic (for people; automation should read conditions).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeploymentPhase {
    /// Accepted, nothing created yet.
    #[default]
    Pending,
    /// AWS resources or the web tier are being created.
    Provisioning,
    /// Everything declared exists and is healthy.
    Ready,
    /// A spec change is being applied.
    Updating,
    /// It was ready, and something is now unhealthy.
    Degraded,
    /// It cannot proceed without a change to the spec or to AWS; see the conditions.
    Failed,
    /// Being deleted according to `deletionPolicy`.
    Deleting,
}

/// The observed state of a clinic.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OpenEMRDeploymentStatus {
    /// Summary of the conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DeploymentPhase>,

    /// `Ready`, `Accepted`, `StackReady`, `DatabaseReady`, `WorkloadReady`.
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

    /// The CloudFormation stack of supporting infrastructure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<StackStatus>,

    /// The RDS instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseStatus>,

    /// The DB instance an in-place restore switched this clinic to, in place of the one
    /// its name (or `spec.adopt`) gives: written by the RestoreRequest, read by the clinic,
    /// so the spec a GitOps tool applied never changes and shows no drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_switch: Option<DatabaseSwitch>,

    /// The clinic's S3 bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_name: Option<String>,

    /// ARN of the clinic's customer-managed KMS key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_arn: Option<String>,

    /// The EFS file system holding `sites/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_system_id: Option<String>,

    /// Redis primary endpoint, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_endpoint: Option<String>,

    /// The Secret holding the database credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_name: Option<String>,

    /// When AWS state was last read for this clinic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_aws_sync_time: Option<Time>,

    /// The web tier as it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebStatus>,

    /// The newest image upgrade, in progress or done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeStatus>,

    /// Where the clinic's AWS activity is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditStatus>,
}

/// The web tier as observed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WebStatus {
    /// Image the replicas run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Replicas that are ready (serving the login page).
    #[serde(default)]
    pub ready_replicas: i32,
    /// Whether OpenEMR's one-time setup has completed.
    #[serde(default)]
    pub setup_complete: bool,
    /// URL users reach the clinic at: the Ingress's when one is declared, else the
    /// Service's inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Holds on the web tier (a quiesced backup, an in-place restore): while any is
    /// present the workers run at 0 and `spec.web.replicas` comes back when the last goes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<WebHold>,
}

/// One hold on a clinic's web tier: a Lease labelled `openemr.io/hold-on: <clinic>`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WebHold {
    /// Who holds it (the Lease's `holderIdentity`, else its name).
    pub holder: String,
    /// Why (the Lease's `openemr.io/hold-reason` annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Since when (the Lease's `acquireTime`, else its creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// The Lease, to find and release it.
    pub lease: String,
    /// When the hold lapses unless its holder renews the Lease (`renewTime`, else
    /// `acquireTime`, plus `leaseDurationSeconds`); none: it lasts until released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Time>,
    /// The hold has taken effect: no worker pod is left (none terminating either) and no
    /// setup or migration Job runs, so nothing of the web tier writes to the database or
    /// the documents. A holder that needs quiet (a quiesced backup, an in-place restore)
    /// waits for this.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub effective: bool,
}

/// Where an image upgrade is.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradePhase {
    /// Waiting for the pre-upgrade snapshot to be `available`.
    SnapshotPending,
    /// The new image is rolling out.
    Rolling,
    /// Every replica runs the new image and is ready.
    Succeeded,
    /// The new image failed; the previous one runs again.
    RolledBack,
    /// The new image failed and `rollbackOnFailure` is off: the workers stay where the
    /// upgrade left them; see the conditions.
    Failed,
    /// The spec named another image before the workers moved to the new one.
    Cancelled,
}

/// An image upgrade.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStatus {
    /// The image before.
    pub from_image: String,
    /// The image after.
    pub to_image: String,
    /// The snapshot taken before the new image started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Where the upgrade is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<UpgradePhase>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The Job that migrates the site to the new image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_job: Option<String>,
    /// The spec named another image after this upgrade failed or was cancelled: naming
    /// its new image again starts a new upgrade, with a new snapshot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub superseded: bool,
}

/// Identifiers of the supporting stack.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StackStatus {
    /// Stack name.
    pub name: String,
    /// Stack ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Last CloudFormation status seen, e.g. `UPDATE_COMPLETE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The request token of the last update sent (it names the generation and the
    /// template): an update that rolled back is not sent again for the same ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<String>,
}

/// A clinic's database switched by an in-place restore (or back, by its rollback).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSwitch {
    /// The DB instance the clinic runs on.
    pub identifier: String,
    /// The instance it ran on before the switch.
    pub previous: String,
    /// The RestoreRequest that made the switch.
    pub restore_request: String,
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// Identifiers and observed state of the RDS instance.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    /// DB instance identifier.
    pub identifier: String,
    /// DB instance ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// Endpoint `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Last RDS status seen, e.g. `available`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Latest time the database can be restored to (point-in-time restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_restorable_time: Option<Time>,
    /// Earliest time the database can be restored to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_restorable_time: Option<Time>,
    /// Keys of `spec.tags` the operator put on the instance: the ones it removes when the
    /// spec stops naming them (tags others put there are left alone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tag_keys: Vec<String>,
}
