//! S3: the settings of a bucket the operator adopts rather than creates (its own bucket is
//! part of the clinic's stack), read to report how they differ and written to correct them.

use std::future::Future;

use aws_sdk_s3::types::{
    BucketVersioningStatus, PublicAccessBlockConfiguration, ServerSideEncryption,
    ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration, ServerSideEncryptionRule,
    Tag, Tagging, VersioningConfiguration,
};

use super::AwsClients;
use super::budget::Service;
use super::error::AwsError;

/// What the operator checks on a bucket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BucketSettings {
    /// `Enabled`, `Suspended`, or `None` when versioning was never turned on.
    pub versioning: Option<String>,
    /// Default encryption: algorithm and KMS key, when set.
    pub encryption: Option<(String, Option<String>)>,
    /// The four public access block switches (all false when there is no block).
    pub public_access_block: [bool; 4],
    /// The bucket's tags (whose bucket it is: a clinic's stack tags its own).
    pub tags: std::collections::BTreeMap<String, String>,
}

impl AwsClients {
    /// A bucket's tags (none when it has no tag set).
    pub(crate) async fn bucket_tags(
        &self,
        bucket: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, AwsError> {
        match self
            .call(
                Service::S3,
                "GetBucketTagging",
                self.s3.get_bucket_tagging().bucket(bucket).send(),
            )
            .await
        {
            Ok(out) => Ok(out
                .tag_set()
                .iter()
                .map(|t| (t.key().to_string(), t.value().to_string()))
                .collect()),
            // NoSuchTagSet: no tags at all.
            Err(e) if e.is_not_found() => Ok(Default::default()),
            Err(e) => Err(e),
        }
    }
}

/// What the clinic controller asks of S3.
pub trait Buckets {
    /// The settings of `bucket`, or `None` when it does not exist.
    fn bucket_settings(
        &self,
        bucket: &str,
    ) -> impl Future<Output = Result<Option<BucketSettings>, AwsError>> + Send;
    fn enable_versioning(&self, bucket: &str) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// SSE-KMS with `kms_key_arn` and bucket keys by default.
    fn encrypt_with(
        &self,
        bucket: &str,
        kms_key_arn: &str,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    fn block_public_access(
        &self,
        bucket: &str,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// Puts `tags` on `bucket`, keeping its other tags (S3 replaces the whole set).
    fn tag_with(
        &self,
        bucket: &str,
        tags: &std::collections::BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
}

impl Buckets for AwsClients {
    async fn bucket_settings(&self, bucket: &str) -> Result<Option<BucketSettings>, AwsError> {
        let versioning = match self
            .call(
                Service::S3,
                "GetBucketVersioning",
                self.s3.get_bucket_versioning().bucket(bucket).send(),
            )
            .await
        {
            Ok(out) => out.status().map(|s| s.as_str().to_string()),
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let encryption = match self
            .call(
                Service::S3,
                "GetBucketEncryption",
                self.s3.get_bucket_encryption().bucket(bucket).send(),
            )
            .await
        {
            Ok(out) => out
                .server_side_encryption_configuration()
                .and_then(|c| c.rules().first())
                .and_then(|r| r.apply_server_side_encryption_by_default())
                .map(|d| {
                    (
                        d.sse_algorithm().as_str().to_string(),
                        d.kms_master_key_id().map(str::to_string),
                    )
                }),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let public_access_block = match self
            .call(
                Service::S3,
                "GetPublicAccessBlock",
                self.s3.get_public_access_block().bucket(bucket).send(),
            )
            .await
        {
            Ok(out) => out
                .public_access_block_configuration()
                .map(|b| {
                    [
                        b.block_public_acls().unwrap_or_default(),
                        b.ignore_public_acls().unwrap_or_default(),
                        b.block_public_policy().unwrap_or_default(),
                        b.restrict_public_buckets().unwrap_or_default(),
                    ]
                })
                .unwrap_or_default(),
            // No block configured at all: everything is allowed.
            Err(e) if e.is_not_found() => [false; 4],
            Err(e) => return Err(e),
        };
        let tags = self.bucket_tags(bucket).await?;
        Ok(Some(BucketSettings {
            versioning,
            encryption,
            public_access_block,
            tags,
        }))
    }

    async fn enable_versioning(&self, bucket: &str) -> Result<(), AwsError> {
        let request = self
            .s3
            .put_bucket_versioning()
            .bucket(bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send();
        self.call(Service::S3, "PutBucketVersioning", request)
            .await
            .map(|_| ())
    }

    async fn encrypt_with(&self, bucket: &str, kms_key_arn: &str) -> Result<(), AwsError> {
        let default = ServerSideEncryptionByDefault::builder()
            .sse_algorithm(ServerSideEncryption::AwsKms)
            .kms_master_key_id(kms_key_arn)
            .build()
            .map_err(|e| AwsError::invalid_request("s3", "PutBucketEncryption", e.to_string()))?;
        let configuration = ServerSideEncryptionConfiguration::builder()
            .rules(
                ServerSideEncryptionRule::builder()
                    .apply_server_side_encryption_by_default(default)
                    .bucket_key_enabled(true)
                    .build(),
            )
            .build()
            .map_err(|e| AwsError::invalid_request("s3", "PutBucketEncryption", e.to_string()))?;
        let request = self
            .s3
            .put_bucket_encryption()
            .bucket(bucket)
            .server_side_encryption_configuration(configuration)
            .send();
        self.call(Service::S3, "PutBucketEncryption", request)
            .await
            .map(|_| ())
    }

    async fn block_public_access(&self, bucket: &str) -> Result<(), AwsError> {
        let request = self
            .s3
            .put_public_access_block()
            .bucket(bucket)
            .public_access_block_configuration(
                PublicAccessBlockConfiguration::builder()
                    .block_public_acls(true)
                    .ignore_public_acls(true)
                    .block_public_policy(true)
                    .restrict_public_buckets(true)
                    .build(),
            )
            .send();
        self.call(Service::S3, "PutPublicAccessBlock", request)
            .await
            .map(|_| ())
    }

    async fn tag_with(
        &self,
        bucket: &str,
        tags: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), AwsError> {
        let mut merged = self.bucket_tags(bucket).await?;
        merged.extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        let tag_set = merged
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AwsError::invalid_request("s3", "PutBucketTagging", e.to_string()))?;
        let tagging = Tagging::builder()
            .set_tag_set(Some(tag_set))
            .build()
            .map_err(|e| AwsError::invalid_request("s3", "PutBucketTagging", e.to_string()))?;
        let request = self
            .s3
            .put_bucket_tagging()
            .bucket(bucket)
            .tagging(tagging)
            .send();
        self.call(Service::S3, "PutBucketTagging", request)
            .await
            .map(|_| ())
    }
}
