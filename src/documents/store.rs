//! What the documents engine asks of S3: one object per file under the mirror prefix, each
//! PUT encrypted with the clinic's KMS key (Bucket Key on) and carrying the file's SHA-256
//! (`x-amz-checksum-sha256`), so S3 verifies every byte it stores; multipart above a
//! threshold; a delete marker for a removed file; versions read back by id. No call lists
//! the bucket or heads an object per file.

use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ServerSideEncryption,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

/// An S3 failure, said with the call and the key.
#[derive(Debug, thiserror::Error)]
#[error("{call} {key}: {message}")]
pub struct StoreError {
    pub call: &'static str,
    pub key: String,
    pub message: String,
}

fn failed<E: std::fmt::Debug>(call: &'static str, key: &str) -> impl FnOnce(E) -> StoreError {
    let key = key.to_string();
    move |e| StoreError {
        call,
        key,
        message: aws_message(&e),
    }
}

/// The service's code and message when there is one, else the SDK's words.
fn aws_message<E: std::fmt::Debug>(e: &E) -> String {
    let text = format!("{e:?}");
    // The SDK's Debug of a service error holds `code: Some("…")` and `message: Some("…")`.
    let field = |name: &str| {
        text.split(&format!("{name}: Some(\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .map(str::to_string)
    };
    match (field("code"), field("message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => text.chars().take(300).collect(),
    }
}

/// The bucket, and the key every PUT is encrypted with.
#[derive(Clone, Debug)]
pub struct Store {
    pub client: Client,
    pub bucket: String,
    /// `None`: the bucket's default encryption (tests of S3-compatible stores).
    pub kms_key: Option<String>,
}

/// The base64 of a SHA-256, as S3's checksum headers carry it.
pub fn checksum_header(sha256: &[u8]) -> String {
    B64.encode(sha256)
}

impl Store {
    /// Stores `body` (a whole file, hashed by the caller) and returns its version id.
    pub async fn put(&self, key: &str, body: Vec<u8>, sha256: &[u8]) -> Result<String, StoreError> {
        self.put_object(key, body, sha256, false).await
    }

    /// Stores a local file (a manifest) under a key that must not exist yet
    /// (`If-None-Match: *`: a set's manifest is never written over), and returns its
    /// version id.
    pub async fn put_new_file(&self, key: &str, path: &Path) -> Result<String, StoreError> {
        let bytes = std::fs::read(path).map_err(failed("reading", key))?;
        let sha256 = Sha256::digest(&bytes);
        self.put_object(key, bytes, &sha256, true).await
    }

    async fn put_object(
        &self,
        key: &str,
        body: Vec<u8>,
        sha256: &[u8],
        only_new: bool,
    ) -> Result<String, StoreError> {
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_none_match(only_new.then(|| "*".to_string()))
            .body(ByteStream::from(body))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(checksum_header(sha256))
            .set_server_side_encryption(self.encryption())
            .set_ssekms_key_id(self.kms_key.clone())
            .set_bucket_key_enabled(self.kms_key.as_ref().map(|_| true))
            .send()
            .await
            .map_err(failed("PutObject", key))?;
        versioned(key, out.version_id())
    }

    fn encryption(&self) -> Option<ServerSideEncryption> {
        self.kms_key.as_ref().map(|_| ServerSideEncryption::AwsKms)
    }

    /// Starts a multipart upload of one file.
    pub async fn start_multipart(&self, key: &str) -> Result<String, StoreError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .set_server_side_encryption(self.encryption())
            .set_ssekms_key_id(self.kms_key.clone())
            .set_bucket_key_enabled(self.kms_key.as_ref().map(|_| true))
            .send()
            .await
            .map_err(failed("CreateMultipartUpload", key))?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StoreError {
                call: "CreateMultipartUpload",
                key: key.to_string(),
                message: "no upload id".into(),
            })
    }

    /// Uploads part `number` (from 1) with its SHA-256; returns what completing needs.
    pub async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Vec<u8>,
    ) -> Result<CompletedPart, StoreError> {
        let checksum = checksum_header(&Sha256::digest(&body));
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(&checksum)
            .send()
            .await
            .map_err(failed("UploadPart", key))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .checksum_sha256(checksum)
            .build())
    }

    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<String, StoreError> {
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(failed("CompleteMultipartUpload", key))?;
        versioned(key, out.version_id())
    }

    /// Abandons an upload (its parts are not kept, nor billed).
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) {
        let _ = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
    }

    /// Puts a delete marker on `key`: the newest state lacks it; every version stays.
    pub async fn mark_deleted(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(failed("DeleteObject", key))?;
        Ok(())
    }

    /// Streams one version of `key` into `dest` (created), returning its SHA-256.
    pub async fn get_to(
        &self,
        key: &str,
        version: Option<&str>,
        dest: &Path,
    ) -> Result<Vec<u8>, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .map_err(failed("GetObject", key))?;
        let mut body = out.body;
        let mut file = std::fs::File::create(dest).map_err(failed("creating", key))?;
        let mut hasher = Sha256::new();
        while let Some(chunk) = body.try_next().await.map_err(failed("GetObject", key))? {
            hasher.update(&chunk);
            std::io::Write::write_all(&mut file, &chunk).map_err(failed("writing", key))?;
        }
        file.sync_all().map_err(failed("writing", key))?;
        Ok(hasher.finalize().to_vec())
    }
}

fn versioned(key: &str, version: Option<&str>) -> Result<String, StoreError> {
    version
        .filter(|v| !v.is_empty() && *v != "null")
        .map(str::to_string)
        .ok_or_else(|| StoreError {
            call: "PutObject",
            key: key.to_string(),
            message: "no version id: the bucket must be versioned".into(),
        })
}
