//! Removing what a clinic's stack keeps on purpose (`DeletionPolicy: Retain`): its bucket
//! (emptied of every object version first), its EFS file system and its KMS key. Used only
//! by `deletionPolicy: Delete`, after the final snapshot; each call is safe to repeat.

use std::collections::BTreeMap;
use std::future::Future;

use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use super::AwsClients;
use super::budget::Service;
use super::error::AwsError;
use super::rds::{DbSnapshot, snapshot};

/// Days a scheduled key deletion waits (the most AWS allows), during which a person can
/// still cancel it.
pub const KEY_DELETION_WINDOW_DAYS: i32 = 30;

/// What an empty EFS file system meters (its metadata), in bytes.
pub const EMPTY_FILE_SYSTEM_BYTES: i64 = 6144;

/// The kinds of resource a clinic's stack retains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainedKind {
    Bucket,
    FileSystem,
    Key,
}

impl RetainedKind {
    /// The kind of a CloudFormation resource type, when it is one the stack retains.
    pub fn of(resource_type: &str) -> Option<RetainedKind> {
        match resource_type {
            "AWS::S3::Bucket" => Some(RetainedKind::Bucket),
            "AWS::EFS::FileSystem" => Some(RetainedKind::FileSystem),
            "AWS::KMS::Key" => Some(RetainedKind::Key),
            _ => None,
        }
    }
}

/// What was read of a retained resource that exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetainedFacts {
    pub tags: BTreeMap<String, String>,
    /// The bucket holds an object version; the file system meters more than an empty one,
    /// or has a mount target (a rollback deletes its own, so someone mounts it). Always
    /// false for a key.
    pub holds_data: bool,
}

/// What the cleanup of `deletionPolicy: Delete` asks of S3, EFS and KMS.
pub trait Teardown {
    /// A retained resource's tags and whether it holds data; `None` when it is gone (a key
    /// pending deletion counts as gone).
    fn retained_facts(
        &self,
        kind: RetainedKind,
        id: &str,
    ) -> impl Future<Output = Result<Option<RetainedFacts>, AwsError>> + Send;
    fn bucket_exists(&self, bucket: &str) -> impl Future<Output = Result<bool, AwsError>> + Send;
    /// Deletes every object version and delete marker, then the bucket.
    fn empty_and_delete_bucket(
        &self,
        bucket: &str,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    fn file_system_exists(&self, id: &str) -> impl Future<Output = Result<bool, AwsError>> + Send;
    /// Deletes the file system's mount targets, then the file system (a `Conflict` while
    /// the mount targets are still going).
    fn delete_file_system(&self, id: &str) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// The key's state (`Enabled`, `PendingDeletion`, …), `None` when it does not exist.
    fn key_state(&self, key: &str)
    -> impl Future<Output = Result<Option<String>, AwsError>> + Send;
    fn schedule_key_deletion(&self, key: &str)
    -> impl Future<Output = Result<(), AwsError>> + Send;
    /// Whether the bucket holds any object version under one of `prefixes`.
    fn holds_objects(
        &self,
        bucket: &str,
        prefixes: &[&str],
    ) -> impl Future<Output = Result<bool, AwsError>> + Send;
    /// The manual snapshots of `instance` (every page).
    fn instance_snapshots(
        &self,
        instance: &str,
    ) -> impl Future<Output = Result<Vec<DbSnapshot>, AwsError>> + Send;
    /// How many automated backups RDS keeps of `instance` (after its deletion too).
    fn retained_automated_backups(
        &self,
        instance: &str,
    ) -> impl Future<Output = Result<usize, AwsError>> + Send;
}

/// AWS takes a key's ARN or id; the id alone also suits emulators that look keys up by id
/// only (moto 5.2).
fn key_id(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

impl Teardown for AwsClients {
    async fn retained_facts(
        &self,
        kind: RetainedKind,
        id: &str,
    ) -> Result<Option<RetainedFacts>, AwsError> {
        match kind {
            RetainedKind::Bucket => {
                if !self.bucket_exists(id).await? {
                    return Ok(None);
                }
                Ok(Some(RetainedFacts {
                    tags: self.bucket_tags(id).await?,
                    holds_data: self.holds_objects(id, &[""]).await?,
                }))
            }
            RetainedKind::FileSystem => {
                let request = self.efs.describe_file_systems().file_system_id(id).send();
                let out = match self
                    .call(Service::Efs, "DescribeFileSystems", request)
                    .await
                {
                    Ok(out) => out,
                    Err(e) if e.is_not_found() => return Ok(None),
                    Err(e) => return Err(e),
                };
                Ok(out.file_systems().first().map(|fs| RetainedFacts {
                    tags: fs
                        .tags()
                        .iter()
                        .map(|t| (t.key().to_string(), t.value().to_string()))
                        .collect(),
                    holds_data: fs.number_of_mount_targets() > 0
                        || fs
                            .size_in_bytes()
                            .is_some_and(|size| size.value() > EMPTY_FILE_SYSTEM_BYTES),
                }))
            }
            RetainedKind::Key => {
                match self.key_state(id).await?.as_deref() {
                    None | Some("PendingDeletion") => return Ok(None),
                    Some(_) => {}
                }
                let request = self.kms.list_resource_tags().key_id(key_id(id)).send();
                let out = self.call(Service::Kms, "ListResourceTags", request).await?;
                Ok(Some(RetainedFacts {
                    tags: out
                        .tags()
                        .iter()
                        .map(|t| (t.tag_key().to_string(), t.tag_value().to_string()))
                        .collect(),
                    holds_data: false,
                }))
            }
        }
    }

    async fn bucket_exists(&self, bucket: &str) -> Result<bool, AwsError> {
        let request = self.s3.head_bucket().bucket(bucket).send();
        match self.call(Service::S3, "HeadBucket", request).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn empty_and_delete_bucket(&self, bucket: &str) -> Result<(), AwsError> {
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let request = self
                .s3
                .list_object_versions()
                .bucket(bucket)
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(version_marker.clone())
                .send();
            let page = self
                .call(Service::S3, "ListObjectVersions", request)
                .await?;
            let objects: Vec<ObjectIdentifier> = page
                .versions()
                .iter()
                .map(|v| (v.key(), v.version_id()))
                .chain(
                    page.delete_markers()
                        .iter()
                        .map(|m| (m.key(), m.version_id())),
                )
                .filter_map(|(key, version)| {
                    ObjectIdentifier::builder()
                        .key(key?)
                        .set_version_id(version.map(str::to_string))
                        .build()
                        .ok()
                })
                .collect();
            if !objects.is_empty() {
                let delete = Delete::builder()
                    .set_objects(Some(objects))
                    .quiet(true)
                    .build()
                    .map_err(|e| AwsError::invalid_request("s3", "DeleteObjects", e.to_string()))?;
                let request = self
                    .s3
                    .delete_objects()
                    .bucket(bucket)
                    .delete(delete)
                    .send();
                self.call(Service::S3, "DeleteObjects", request).await?;
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
        }
        let request = self.s3.delete_bucket().bucket(bucket).send();
        match self.call(Service::S3, "DeleteBucket", request).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    async fn file_system_exists(&self, id: &str) -> Result<bool, AwsError> {
        let request = self.efs.describe_file_systems().file_system_id(id).send();
        match self
            .call(Service::Efs, "DescribeFileSystems", request)
            .await
        {
            Ok(out) => Ok(!out.file_systems().is_empty()),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn delete_file_system(&self, id: &str) -> Result<(), AwsError> {
        let request = self.efs.describe_mount_targets().file_system_id(id).send();
        let targets = match self
            .call(Service::Efs, "DescribeMountTargets", request)
            .await
        {
            Ok(out) => out.mount_targets().to_vec(),
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        for target in targets {
            let request = self
                .efs
                .delete_mount_target()
                .mount_target_id(target.mount_target_id())
                .send();
            match self.call(Service::Efs, "DeleteMountTarget", request).await {
                Err(e) if !e.is_not_found() => return Err(e),
                _ => {}
            }
        }
        let request = self.efs.delete_file_system().file_system_id(id).send();
        match self.call(Service::Efs, "DeleteFileSystem", request).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    async fn key_state(&self, key: &str) -> Result<Option<String>, AwsError> {
        let request = self.kms.describe_key().key_id(key).send();
        match self.call(Service::Kms, "DescribeKey", request).await {
            Ok(out) => Ok(out
                .key_metadata()
                .and_then(|m| m.key_state())
                .map(|s| s.as_str().to_string())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn schedule_key_deletion(&self, key: &str) -> Result<(), AwsError> {
        let request = self
            .kms
            .schedule_key_deletion()
            .key_id(key_id(key))
            .pending_window_in_days(KEY_DELETION_WINDOW_DAYS)
            .send();
        self.call(Service::Kms, "ScheduleKeyDeletion", request)
            .await
            .map(|_| ())
    }

    async fn holds_objects(&self, bucket: &str, prefixes: &[&str]) -> Result<bool, AwsError> {
        for prefix in prefixes {
            // A page of versions; delete markers alone hold nothing.
            let request = self
                .s3
                .list_object_versions()
                .bucket(bucket)
                .prefix(*prefix)
                .send();
            let page = match self.call(Service::S3, "ListObjectVersions", request).await {
                Ok(page) => page,
                Err(e) if e.is_not_found() => return Ok(false),
                Err(e) => return Err(e),
            };
            if !page.versions().is_empty() || page.is_truncated() == Some(true) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn instance_snapshots(&self, instance: &str) -> Result<Vec<DbSnapshot>, AwsError> {
        let mut names = Vec::new();
        let mut marker = None;
        loop {
            let request = self
                .rds
                .describe_db_snapshots()
                .db_instance_identifier(instance)
                .snapshot_type("manual")
                .set_marker(marker)
                .send();
            let page = match self
                .call(Service::Rds, "DescribeDBSnapshots", request)
                .await
            {
                Ok(page) => page,
                Err(e) if e.is_not_found() => return Ok(names),
                Err(e) => return Err(e),
            };
            names.extend(page.db_snapshots().iter().map(snapshot));
            marker = page.marker().map(str::to_string);
            if marker.is_none() {
                return Ok(names);
            }
        }
    }

    async fn retained_automated_backups(&self, instance: &str) -> Result<usize, AwsError> {
        let request = self
            .rds
            .describe_db_instance_automated_backups()
            .db_instance_identifier(instance)
            .send();
        match self
            .call(Service::Rds, "DescribeDBInstanceAutomatedBackups", request)
            .await
        {
            Ok(out) => Ok(out.db_instance_automated_backups().len()),
            Err(e) if e.is_not_found() => Ok(0),
            Err(e) => Err(e),
        }
    }
}
