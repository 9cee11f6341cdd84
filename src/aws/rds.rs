//! RDS: the clinic's DB instance (read, create, modify, snapshot, delete), the SDK's shapes
//! turned into plain values the planners compare, and every call through the budget.
//!
//! The database is driven through this API, never through the stack, so no stack update
//! can ever replace it.

use std::collections::BTreeMap;
use std::future::Future;

use aws_sdk_rds::types::Tag;

use super::AwsClients;
use super::budget::Service;
use super::error::AwsError;

/// A DB instance as the operator compares it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DbInstance {
    pub identifier: String,
    pub arn: Option<String>,
    pub status: String,
    /// `host`, `port`.
    pub endpoint: Option<(String, i32)>,
    pub engine_version: String,
    pub instance_class: String,
    pub allocated_storage: i32,
    pub max_allocated_storage: Option<i32>,
    pub storage_type: Option<String>,
    pub multi_az: bool,
    pub backup_retention: i32,
    pub backup_window: Option<String>,
    pub maintenance_window: Option<String>,
    pub deletion_protection: bool,
    pub publicly_accessible: bool,
    pub storage_encrypted: bool,
    pub kms_key_id: Option<String>,
    pub parameter_groups: Vec<String>,
    /// `ParameterApplyStatus` of the parameter groups that are not `in-sync` (e.g.
    /// `pending-reboot`: a change that takes effect only when the instance restarts).
    pub parameter_apply_status: Option<String>,
    pub subnet_group: Option<String>,
    pub security_groups: Vec<String>,
    pub copy_tags_to_snapshot: bool,
    pub auto_minor_version_upgrade: bool,
    /// Changes RDS has accepted and will apply in the maintenance window.
    pub pending: Pending,
    pub latest_restorable_time: Option<std::time::SystemTime>,
    pub master_user_secret_arn: Option<String>,
    /// The key that secret is encrypted with: a restored instance may carry its snapshot's
    /// (the source's) secret, which is not the target's own.
    pub master_user_secret_kms_key: Option<String>,
    /// `MasterUsername`: read, never assumed (an adopted instance has its own).
    pub master_username: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// `PendingModifiedValues`, the fields the operator may have asked for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pending {
    pub instance_class: Option<String>,
    pub allocated_storage: Option<i32>,
    pub multi_az: Option<bool>,
    pub backup_retention: Option<i32>,
    pub engine_version: Option<String>,
    pub storage_type: Option<String>,
}

/// A new DB instance. The master password is either managed by RDS in Secrets Manager
/// (never seen by the operator) or taken from the user's Secret.
#[derive(Clone, PartialEq)]
pub struct CreateDb {
    pub identifier: String,
    pub engine_version: String,
    pub instance_class: String,
    pub allocated_storage: i32,
    pub max_allocated_storage: Option<i32>,
    pub multi_az: bool,
    pub backup_retention: i32,
    pub backup_window: String,
    pub maintenance_window: String,
    pub deletion_protection: bool,
    pub kms_key_id: String,
    pub subnet_group: String,
    pub security_group: String,
    pub parameter_group: String,
    pub db_name: String,
    pub master_username: String,
    pub master_password: MasterPassword,
    pub tags: BTreeMap<String, String>,
}

/// Who holds the master password.
#[derive(Clone, PartialEq)]
pub enum MasterPassword {
    /// RDS keeps it in Secrets Manager, encrypted with the clinic's key.
    ManagedByRds,
    /// From the user's Secret.
    Given(String),
}

impl std::fmt::Debug for CreateDb {
    // Hand-written so that no password can reach a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateDb")
            .field("identifier", &self.identifier)
            .field("engine_version", &self.engine_version)
            .field("instance_class", &self.instance_class)
            .field(
                "master_password",
                &match self.master_password {
                    MasterPassword::ManagedByRds => "managed by RDS",
                    MasterPassword::Given(_) => "from the user's Secret (redacted)",
                },
            )
            .finish_non_exhaustive()
    }
}

/// A DB instance restored from a snapshot into a target clinic: every setting a new
/// clinic database gets is given, since RDS otherwise applies its defaults (the default
/// VPC's subnet group and security group, the default parameter group, no deletion
/// protection). There is no key: a restored instance keeps its snapshot's, so a restore
/// that must change keys copies the snapshot with the target's key first. There is no
/// master password either: RDS restores the snapshot's, and ignores
/// `ManageMasterUserPassword` on a MySQL restore (its API reference: "Applies to RDS for
/// Oracle only"), so [`Databases::manage_master_password`] follows the restore.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreDb {
    pub identifier: String,
    /// The snapshot's identifier (this account and region) or ARN.
    pub snapshot: String,
    pub instance_class: String,
    pub multi_az: bool,
    pub backup_retention: i32,
    pub backup_window: String,
    pub deletion_protection: bool,
    pub subnet_group: String,
    pub security_group: String,
    pub parameter_group: String,
    pub tags: BTreeMap<String, String>,
}

/// A `RestoreDBInstanceToPointInTime` into a staging instance: it keeps the source's
/// storage key (the call takes none), so it is only a step towards a snapshot that is
/// copied under the target's key. No automated backups, no deletion protection: it is
/// deleted once that snapshot is taken.
#[derive(Debug, Clone, PartialEq)]
pub struct PointInTimeDb {
    pub source: String,
    pub identifier: String,
    pub time: std::time::SystemTime,
    pub instance_class: String,
    pub subnet_group: Option<String>,
    pub security_groups: Vec<String>,
    pub parameter_group: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// The fields of a `ModifyDBInstance`; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModifyDb {
    pub identifier: String,
    pub apply_immediately: bool,
    pub instance_class: Option<String>,
    pub engine_version: Option<String>,
    pub allow_major_version_upgrade: bool,
    pub allocated_storage: Option<i32>,
    pub max_allocated_storage: Option<i32>,
    pub storage_type: Option<String>,
    pub multi_az: Option<bool>,
    pub backup_retention: Option<i32>,
    pub backup_window: Option<String>,
    pub maintenance_window: Option<String>,
    pub deletion_protection: Option<bool>,
    pub publicly_accessible: Option<bool>,
    pub parameter_group: Option<String>,
    pub security_groups: Option<Vec<String>>,
    pub copy_tags_to_snapshot: Option<bool>,
    pub auto_minor_version_upgrade: Option<bool>,
}

/// A DB snapshot's identity and state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DbSnapshot {
    pub identifier: String,
    pub arn: Option<String>,
    pub status: String,
    pub tags: BTreeMap<String, String>,
}

/// The span a point-in-time restore of an instance can reach, as its automated backups
/// report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreWindow {
    pub earliest: Option<std::time::SystemTime>,
    pub latest: Option<std::time::SystemTime>,
}

/// The storage every clinic's instance is made with: General Purpose SSD, whose baseline
/// (3,000 IOPS) does not grow with size as gp2's does.
pub const STORAGE_TYPE: &str = "gp3";

/// What the clinic controller asks of RDS.
pub trait Databases {
    /// The instance, or `None` when it does not exist.
    fn describe_instance(
        &self,
        identifier: &str,
    ) -> impl Future<Output = Result<Option<DbInstance>, AwsError>> + Send;
    /// One page of every instance in this account and region (100 per page) and the marker
    /// of the next page.
    fn list_instances(
        &self,
        marker: Option<String>,
    ) -> impl Future<Output = Result<(Vec<DbInstance>, Option<String>), AwsError>> + Send;
    fn create_instance(
        &self,
        request: &CreateDb,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// `RestoreDBInstanceFromDBSnapshot` ([`RestoreDb`]).
    fn restore_instance(
        &self,
        request: &RestoreDb,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// `RestoreDBInstanceToPointInTime` ([`PointInTimeDb`]).
    fn restore_to_point_in_time(
        &self,
        request: &PointInTimeDb,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// Turns on the master password RDS manages in Secrets Manager, encrypted with
    /// `kms_key_id`, applied at once: how a restored instance gets a secret of its own
    /// without anyone knowing the password its snapshot carried.
    fn manage_master_password(
        &self,
        identifier: &str,
        kms_key_id: &str,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    fn modify_instance(
        &self,
        request: &ModifyDb,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// Restarts the instance (a parameter change that waits for a reboot takes effect).
    fn reboot_instance(
        &self,
        identifier: &str,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// The span instance `identifier` can be restored to a point in, from its active
    /// automated backups (RDS reports the window's start nowhere else); `None` when it
    /// keeps none.
    fn restore_window(
        &self,
        identifier: &str,
    ) -> impl Future<Output = Result<Option<RestoreWindow>, AwsError>> + Send;
    fn describe_snapshot(
        &self,
        identifier: &str,
    ) -> impl Future<Output = Result<Option<DbSnapshot>, AwsError>> + Send;
    fn create_snapshot(
        &self,
        instance: &str,
        snapshot: &str,
        tags: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// Copies `source_arn` (a snapshot in another region) into this region as `snapshot`,
    /// encrypted with `kms_key` (a key of this region), tagged with `tags` only.
    fn copy_snapshot(
        &self,
        source_arn: &str,
        snapshot: &str,
        kms_key: &str,
        tags: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// Every manual snapshot of the account and region, in pages of 100.
    fn list_manual_snapshots(
        &self,
    ) -> impl Future<Output = Result<Vec<DbSnapshot>, AwsError>> + Send;
    /// Deletes the instance without a final snapshot of RDS's own: the operator takes its
    /// own (deterministically named) first and sees it `available`.
    fn delete_instance(
        &self,
        identifier: &str,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// Deletes a manual snapshot (gone already is done).
    fn delete_snapshot(
        &self,
        identifier: &str,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// Adds or overwrites `add` and removes `remove` on the resource `arn` (each call only
    /// when it has something to do).
    fn retag(
        &self,
        arn: &str,
        add: &BTreeMap<String, String>,
        remove: &[String],
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// An RDS snapshot as the controllers see it.
pub fn snapshot(s: &aws_sdk_rds::types::DbSnapshot) -> DbSnapshot {
    DbSnapshot {
        identifier: s.db_snapshot_identifier().unwrap_or_default().to_string(),
        arn: s.db_snapshot_arn().map(str::to_string),
        status: s.status().unwrap_or_default().to_string(),
        tags: s
            .tag_list()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect(),
    }
}

fn rds_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

fn instance(db: &aws_sdk_rds::types::DbInstance) -> DbInstance {
    let pending = db.pending_modified_values().map(|p| Pending {
        instance_class: p.db_instance_class().map(str::to_string),
        allocated_storage: p.allocated_storage(),
        multi_az: p.multi_az(),
        backup_retention: p.backup_retention_period(),
        engine_version: p.engine_version().map(str::to_string),
        storage_type: p.storage_type().map(str::to_string),
    });
    DbInstance {
        identifier: db.db_instance_identifier().unwrap_or_default().to_string(),
        arn: db.db_instance_arn().map(str::to_string),
        status: db.db_instance_status().unwrap_or_default().to_string(),
        endpoint: db.endpoint().and_then(|e| {
            e.address()
                .map(|a| (a.to_string(), e.port().unwrap_or(3306)))
        }),
        engine_version: db.engine_version().unwrap_or_default().to_string(),
        instance_class: db.db_instance_class().unwrap_or_default().to_string(),
        allocated_storage: db.allocated_storage().unwrap_or_default(),
        max_allocated_storage: db.max_allocated_storage(),
        storage_type: db.storage_type().map(str::to_string),
        multi_az: db.multi_az().unwrap_or_default(),
        backup_retention: db.backup_retention_period().unwrap_or_default(),
        backup_window: db.preferred_backup_window().map(str::to_string),
        maintenance_window: db.preferred_maintenance_window().map(str::to_string),
        deletion_protection: db.deletion_protection().unwrap_or_default(),
        publicly_accessible: db.publicly_accessible().unwrap_or_default(),
        storage_encrypted: db.storage_encrypted().unwrap_or_default(),
        kms_key_id: db.kms_key_id().map(str::to_string),
        parameter_groups: db
            .db_parameter_groups()
            .iter()
            .filter_map(|g| g.db_parameter_group_name().map(str::to_string))
            .collect(),
        parameter_apply_status: db
            .db_parameter_groups()
            .iter()
            .filter_map(|g| g.parameter_apply_status())
            .find(|s| *s != "in-sync")
            .map(str::to_string),
        subnet_group: db
            .db_subnet_group()
            .and_then(|g| g.db_subnet_group_name())
            .map(str::to_string),
        security_groups: db
            .vpc_security_groups()
            .iter()
            .filter_map(|g| g.vpc_security_group_id().map(str::to_string))
            .collect(),
        copy_tags_to_snapshot: db.copy_tags_to_snapshot().unwrap_or_default(),
        auto_minor_version_upgrade: db.auto_minor_version_upgrade().unwrap_or_default(),
        pending: pending.unwrap_or_default(),
        latest_restorable_time: db
            .latest_restorable_time()
            .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
        master_user_secret_arn: db
            .master_user_secret()
            .and_then(|s| s.secret_arn())
            .map(str::to_string),
        master_user_secret_kms_key: db
            .master_user_secret()
            .and_then(|s| s.kms_key_id())
            .map(str::to_string),
        master_username: db.master_username().map(str::to_string),
        tags: db
            .tag_list()
            .iter()
            .filter_map(|t| {
                Some((
                    t.key()?.to_string(),
                    t.value().unwrap_or_default().to_string(),
                ))
            })
            .collect(),
    }
}

/// Page size of the inventory: the most `DescribeDBInstances` returns.
pub const PAGE_SIZE: i32 = 100;

impl Databases for AwsClients {
    async fn describe_instance(&self, identifier: &str) -> Result<Option<DbInstance>, AwsError> {
        let request = self
            .rds
            .describe_db_instances()
            .db_instance_identifier(identifier)
            .send();
        match self
            .call(Service::Rds, "DescribeDBInstances", request)
            .await
        {
            Ok(out) => Ok(out.db_instances().first().map(instance)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list_instances(
        &self,
        marker: Option<String>,
    ) -> Result<(Vec<DbInstance>, Option<String>), AwsError> {
        let request = self
            .rds
            .describe_db_instances()
            .max_records(PAGE_SIZE)
            .set_marker(marker)
            .send();
        let out = self
            .call(Service::Rds, "DescribeDBInstances", request)
            .await?;
        let next = out.marker().filter(|m| !m.is_empty()).map(str::to_string);
        Ok((out.db_instances().iter().map(instance).collect(), next))
    }

    async fn create_instance(&self, r: &CreateDb) -> Result<(), AwsError> {
        let mut request = self
            .rds
            .create_db_instance()
            .db_instance_identifier(&r.identifier)
            .engine("mysql")
            .engine_version(&r.engine_version)
            .db_instance_class(&r.instance_class)
            .storage_type(STORAGE_TYPE)
            .allocated_storage(r.allocated_storage)
            .set_max_allocated_storage(r.max_allocated_storage)
            .storage_encrypted(true)
            .kms_key_id(&r.kms_key_id)
            .publicly_accessible(false)
            .db_subnet_group_name(&r.subnet_group)
            .vpc_security_group_ids(&r.security_group)
            .db_parameter_group_name(&r.parameter_group)
            .multi_az(r.multi_az)
            .backup_retention_period(r.backup_retention)
            .preferred_backup_window(&r.backup_window)
            .preferred_maintenance_window(&r.maintenance_window)
            .deletion_protection(r.deletion_protection)
            .copy_tags_to_snapshot(true)
            .auto_minor_version_upgrade(true)
            .db_name(&r.db_name)
            .master_username(&r.master_username)
            .set_tags(Some(rds_tags(&r.tags)));
        request = match &r.master_password {
            MasterPassword::ManagedByRds => request
                .manage_master_user_password(true)
                .master_user_secret_kms_key_id(&r.kms_key_id),
            MasterPassword::Given(password) => request.master_user_password(password),
        };
        self.call(Service::Rds, "CreateDBInstance", request.send())
            .await
            .map(|_| ())
    }

    async fn restore_instance(&self, r: &RestoreDb) -> Result<(), AwsError> {
        let request = self
            .rds
            .restore_db_instance_from_db_snapshot()
            .db_instance_identifier(&r.identifier)
            .db_snapshot_identifier(&r.snapshot)
            .engine("mysql")
            .db_instance_class(&r.instance_class)
            .storage_type(STORAGE_TYPE)
            .publicly_accessible(false)
            .db_subnet_group_name(&r.subnet_group)
            .vpc_security_group_ids(&r.security_group)
            .db_parameter_group_name(&r.parameter_group)
            .multi_az(r.multi_az)
            .backup_retention_period(r.backup_retention)
            .preferred_backup_window(&r.backup_window)
            .deletion_protection(r.deletion_protection)
            .copy_tags_to_snapshot(true)
            .auto_minor_version_upgrade(true)
            .set_tags(Some(rds_tags(&r.tags)))
            .send();
        self.call(Service::Rds, "RestoreDBInstanceFromDBSnapshot", request)
            .await
            .map(|_| ())
    }

    async fn restore_to_point_in_time(&self, r: &PointInTimeDb) -> Result<(), AwsError> {
        let request = self
            .rds
            .restore_db_instance_to_point_in_time()
            .source_db_instance_identifier(&r.source)
            .target_db_instance_identifier(&r.identifier)
            .restore_time(aws_smithy_types::DateTime::from(r.time))
            .db_instance_class(&r.instance_class)
            .storage_type(STORAGE_TYPE)
            .publicly_accessible(false)
            .set_db_subnet_group_name(r.subnet_group.clone())
            .set_vpc_security_group_ids(Some(r.security_groups.clone()))
            .set_db_parameter_group_name(r.parameter_group.clone())
            .multi_az(false)
            .backup_retention_period(0)
            .deletion_protection(false)
            .copy_tags_to_snapshot(true)
            .set_tags(Some(rds_tags(&r.tags)))
            .send();
        self.call(Service::Rds, "RestoreDBInstanceToPointInTime", request)
            .await
            .map(|_| ())
    }

    async fn manage_master_password(
        &self,
        identifier: &str,
        kms_key_id: &str,
    ) -> Result<(), AwsError> {
        let request = self
            .rds
            .modify_db_instance()
            .db_instance_identifier(identifier)
            .manage_master_user_password(true)
            .master_user_secret_kms_key_id(kms_key_id)
            .apply_immediately(true)
            .send();
        self.call(Service::Rds, "ModifyDBInstance", request)
            .await
            .map(|_| ())
    }

    async fn delete_snapshot(&self, identifier: &str) -> Result<(), AwsError> {
        let request = self
            .rds
            .delete_db_snapshot()
            .db_snapshot_identifier(identifier)
            .send();
        match self.call(Service::Rds, "DeleteDBSnapshot", request).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    async fn retag(
        &self,
        arn: &str,
        add: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(), AwsError> {
        if !add.is_empty() {
            let request = self
                .rds
                .add_tags_to_resource()
                .resource_name(arn)
                .set_tags(Some(rds_tags(add)))
                .send();
            self.call(Service::Rds, "AddTagsToResource", request)
                .await?;
        }
        if !remove.is_empty() {
            let request = self
                .rds
                .remove_tags_from_resource()
                .resource_name(arn)
                .set_tag_keys(Some(remove.to_vec()))
                .send();
            self.call(Service::Rds, "RemoveTagsFromResource", request)
                .await?;
        }
        Ok(())
    }

    async fn modify_instance(&self, m: &ModifyDb) -> Result<(), AwsError> {
        let request = self
            .rds
            .modify_db_instance()
            .db_instance_identifier(&m.identifier)
            .apply_immediately(m.apply_immediately)
            .set_db_instance_class(m.instance_class.clone())
            .set_engine_version(m.engine_version.clone())
            .set_allow_major_version_upgrade(m.allow_major_version_upgrade.then_some(true))
            .set_allocated_storage(m.allocated_storage)
            .set_max_allocated_storage(m.max_allocated_storage)
            .set_storage_type(m.storage_type.clone())
            .set_multi_az(m.multi_az)
            .set_backup_retention_period(m.backup_retention)
            .set_preferred_backup_window(m.backup_window.clone())
            .set_preferred_maintenance_window(m.maintenance_window.clone())
            .set_deletion_protection(m.deletion_protection)
            .set_publicly_accessible(m.publicly_accessible)
            .set_db_parameter_group_name(m.parameter_group.clone())
            .set_vpc_security_group_ids(m.security_groups.clone())
            .set_copy_tags_to_snapshot(m.copy_tags_to_snapshot)
            .set_auto_minor_version_upgrade(m.auto_minor_version_upgrade)
            .send();
        self.call(Service::Rds, "ModifyDBInstance", request)
            .await
            .map(|_| ())
    }

    async fn reboot_instance(&self, identifier: &str) -> Result<(), AwsError> {
        let request = self
            .rds
            .reboot_db_instance()
            .db_instance_identifier(identifier)
            .send();
        self.call(Service::Rds, "RebootDBInstance", request)
            .await
            .map(|_| ())
    }

    async fn restore_window(&self, identifier: &str) -> Result<Option<RestoreWindow>, AwsError> {
        let request = self
            .rds
            .describe_db_instance_automated_backups()
            .db_instance_identifier(identifier)
            .send();
        let out = match self
            .call(Service::Rds, "DescribeDBInstanceAutomatedBackups", request)
            .await
        {
            Ok(out) => out,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let time = |t: Option<&aws_smithy_types::DateTime>| {
            t.and_then(|t| std::time::SystemTime::try_from(*t).ok())
        };
        // A deleted instance of the same name leaves `retained` backups: not this one's.
        Ok(out
            .db_instance_automated_backups()
            .iter()
            .filter(|b| b.status() == Some("active"))
            .find_map(|b| b.restore_window())
            .map(|w| RestoreWindow {
                earliest: time(w.earliest_time()),
                latest: time(w.latest_time()),
            }))
    }

    async fn describe_snapshot(&self, identifier: &str) -> Result<Option<DbSnapshot>, AwsError> {
        let request = self
            .rds
            .describe_db_snapshots()
            .db_snapshot_identifier(identifier)
            .send();
        match self
            .call(Service::Rds, "DescribeDBSnapshots", request)
            .await
        {
            Ok(out) => Ok(out.db_snapshots().first().map(snapshot)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list_manual_snapshots(&self) -> Result<Vec<DbSnapshot>, AwsError> {
        let mut found = Vec::new();
        let mut marker = None;
        loop {
            let request = self
                .rds
                .describe_db_snapshots()
                .snapshot_type("manual")
                .max_records(100)
                .set_marker(marker)
                .send();
            let page = self
                .call(Service::Rds, "DescribeDBSnapshots", request)
                .await?;
            found.extend(page.db_snapshots().iter().map(snapshot));
            match page.marker() {
                Some(next) if !next.is_empty() => marker = Some(next.to_string()),
                _ => return Ok(found),
            }
        }
    }

    async fn create_snapshot(
        &self,
        instance: &str,
        snapshot: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), AwsError> {
        let request = self
            .rds
            .create_db_snapshot()
            .db_instance_identifier(instance)
            .db_snapshot_identifier(snapshot)
            .set_tags(Some(rds_tags(tags)))
            .send();
        self.call(Service::Rds, "CreateDBSnapshot", request)
            .await
            .map(|_| ())
    }

    async fn copy_snapshot(
        &self,
        source_arn: &str,
        snapshot: &str,
        kms_key: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), AwsError> {
        // Called in the destination region. Outside GovCloud RDS needs no presigned URL of
        // the source region for an encrypted copy (PreSignedUrl is ignored there); the
        // source is named by its ARN. Tags are given, not copied: the copy says it is one.
        let request = self
            .rds
            .copy_db_snapshot()
            .source_db_snapshot_identifier(source_arn)
            .target_db_snapshot_identifier(snapshot)
            .kms_key_id(kms_key)
            .copy_tags(false)
            .set_tags(Some(rds_tags(tags)))
            .send();
        self.call(Service::Rds, "CopyDBSnapshot", request)
            .await
            .map(|_| ())
    }

    async fn delete_instance(&self, identifier: &str) -> Result<(), AwsError> {
        let request = self
            .rds
            .delete_db_instance()
            .db_instance_identifier(identifier)
            .skip_final_snapshot(true)
            .delete_automated_backups(false)
            .send();
        self.call(Service::Rds, "DeleteDBInstance", request)
            .await
            .map(|_| ())
    }
}
