//! What the documents engine asks of S3: one object per file under the mirror prefix, each
//! PUT encrypted with the clinic's KMS key (Bucket Key on) and carrying the file's SHA-256
//! (`x-amz-checksum-sha256`), so S3 verifies every byte it stores; multipart above a
//! threshold; a delete marker for a removed file; versions read back by id. No call lists
//! the bucket or heads an object per file.

use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ServerSideEncryption,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

use crate::aws::{AwsError, ErrorClass};

/// An S3 failure, said with the call and the key.
#[derive(Debug, thiserror::Error)]
#[error("{call} {key}: {message}")]
pub struct StoreError {
    pub call: &'static str,
    pub key: String,
    /// AWS's code and message (`PreconditionFailed: …`), or the local error's words.
    pub message: String,
    /// How AWS's answer is classed; `None` for a local failure.
    pub class: Option<ErrorClass>,
}

/// An SDK error of `call`, classed and worded as every AWS error of the operator is.
pub(super) fn failed<E, R>(
    call: &'static str,
    key: &str,
) -> impl FnOnce(SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + 'static,
{
    let key = key.to_string();
    move |e| {
        let e = AwsError::from_sdk("s3", call, e);
        StoreError {
            call,
            key,
            message: format!("{}: {}", e.code, e.message),
            class: Some(e.class),
        }
    }
}

/// A local failure (a file, a body stream) while doing `what` to `key`.
fn local<E: std::fmt::Display>(what: &'static str, key: &str) -> impl FnOnce(E) -> StoreError {
    let key = key.to_string();
    move |e| StoreError {
        call: what,
        key,
        message: e.to_string(),
        class: None,
    }
}

/// One version (or delete marker) of a key, as `ListObjectVersions` tells it.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub key: String,
    pub version: String,
    /// The key's current version: what `aws s3 sync` of the mirror gives.
    pub latest: bool,
    /// When it was stored (Unix seconds, S3's clock).
    pub stored: i64,
    pub delete_marker: bool,
}

/// The bucket, and the key every PUT is encrypted with.
#[derive(Clone, Debug)]
pub struct Store {
    pub client: Client,
    pub bucket: String,
    /// `None`: the bucket's default encryption (tests of S3-compatible stores).
    pub kms_key: Option<String>,
}

/// `x-amz-copy-source` of one version: the bucket, the key URL-encoded (`/` kept), the
/// version id.
fn copy_source(bucket: &str, key: &str, version: &str) -> String {
    const KEY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let key = percent_encoding::utf8_percent_encode(key, KEY);
    let version =
        percent_encoding::utf8_percent_encode(version, percent_encoding::NON_ALPHANUMERIC);
    format!("{bucket}/{key}?versionId={version}")
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
        let bytes = std::fs::read(path).map_err(local("reading", key))?;
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
                class: None,
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

    /// Completes an upload; returns the version id and the checksum S3 keeps for the object
    /// (the SHA-256 of the parts' SHA-256s, `-<parts>`).
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<(String, String), StoreError> {
        let mut of_parts = Sha256::new();
        for part in &parts {
            let raw = B64
                .decode(part.checksum_sha256().unwrap_or_default())
                .map_err(local("CompleteMultipartUpload", key))?;
            of_parts.update(raw);
        }
        let composite = format!("{}-{}", checksum_header(&of_parts.finalize()), parts.len());
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
        Ok((versioned(key, out.version_id())?, composite))
    }

    /// Copies one version of `source_key` in `source` (another bucket, maybe in another
    /// region) to `key` here, server-side, encrypted with this store's key; S3 computes the copy's
    /// SHA-256 itself. Returns the copy's version id. Up to 5 GiB (S3's limit for one copy).
    pub async fn copy_version(
        &self,
        (source, source_key, version): (&Store, &str, &str),
        key: &str,
    ) -> Result<String, StoreError> {
        let out = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(key)
            .copy_source(copy_source(&source.bucket, source_key, version))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .set_server_side_encryption(self.encryption())
            .set_ssekms_key_id(self.kms_key.clone())
            .set_bucket_key_enabled(self.kms_key.as_ref().map(|_| true))
            .send()
            .await
            .map_err(failed("CopyObject", key))?;
        versioned(key, out.version_id())
    }

    /// Copies bytes `range` (inclusive) of one version of `source_key` in `source` as part
    /// `number` of an upload to `key` here; returns what completing needs.
    pub async fn copy_part(
        &self,
        (source, source_key, version): (&Store, &str, &str),
        key: &str,
        upload_id: &str,
        number: i32,
        range: (u64, u64),
    ) -> Result<CompletedPart, StoreError> {
        let out = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .copy_source(copy_source(&source.bucket, source_key, version))
            .copy_source_range(format!("bytes={}-{}", range.0, range.1))
            .send()
            .await
            .map_err(failed("UploadPartCopy", key))?;
        let result = out.copy_part_result();
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(result.and_then(|r| r.e_tag()).map(str::to_string))
            .set_checksum_sha256(result.and_then(|r| r.checksum_sha256()).map(str::to_string))
            .build())
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

    /// The size and stored SHA-256 checksum of one version, without its content; `None`
    /// when that version (or the key) is gone.
    pub async fn attributes(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<Option<(i64, Option<String>)>, StoreError> {
        use aws_sdk_s3::types::ObjectAttributes;
        let result = self
            .client
            .get_object_attributes()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .object_attributes(ObjectAttributes::Checksum)
            .object_attributes(ObjectAttributes::ObjectSize)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Some((
                out.object_size().unwrap_or(-1),
                out.checksum()
                    .and_then(|c| c.checksum_sha256())
                    .map(str::to_string),
            ))),
            Err(e) => match failed("GetObjectAttributes", key)(e) {
                gone if gone.class == Some(ErrorClass::NotFound) => Ok(None),
                other => Err(other),
            },
        }
    }

    /// The current objects under `prefix`, each with when it was stored (Unix seconds, S3's
    /// clock); one request per 1,000.
    pub async fn list_keys(
        &self,
        prefix: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        let mut keys = std::collections::BTreeMap::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(failed("ListObjectsV2", prefix))?;
            keys.extend(out.contents().iter().filter_map(|o| {
                Some((
                    o.key()?.to_string(),
                    o.last_modified().map_or(0, |t| t.secs()),
                ))
            }));
            token = out.next_continuation_token().map(str::to_string);
            if token.is_none() {
                return Ok(keys);
            }
        }
    }

    /// One page (up to 1,000) of the versions and delete markers under `prefix`, from
    /// `after` (the previous page's markers), and the markers of the next page if any.
    pub async fn versions_page(
        &self,
        prefix: &str,
        after: Option<(String, String)>,
    ) -> Result<(Vec<StoredVersion>, Option<(String, String)>), StoreError> {
        let (key_marker, version_marker) = after.unzip();
        let out = self
            .client
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_key_marker(key_marker)
            .set_version_id_marker(version_marker)
            .send()
            .await
            .map_err(failed("ListObjectVersions", prefix))?;
        let seen = |key: Option<&str>,
                    version: Option<&str>,
                    latest,
                    when: Option<&aws_sdk_s3::primitives::DateTime>,
                    marker| {
            Some(StoredVersion {
                key: key?.to_string(),
                version: version?.to_string(),
                latest,
                stored: when.map_or(0, |t| t.secs()),
                delete_marker: marker,
            })
        };
        let mut page: Vec<StoredVersion> = out
            .versions()
            .iter()
            .filter_map(|v| {
                seen(
                    v.key(),
                    v.version_id(),
                    v.is_latest() == Some(true),
                    v.last_modified(),
                    false,
                )
            })
            .collect();
        page.extend(out.delete_markers().iter().filter_map(|m| {
            seen(
                m.key(),
                m.version_id(),
                m.is_latest() == Some(true),
                m.last_modified(),
                true,
            )
        }));
        let next = match (
            out.is_truncated(),
            out.next_key_marker(),
            out.next_version_id_marker(),
        ) {
            (Some(true), Some(key), version) => {
                Some((key.to_string(), version.unwrap_or_default().to_string()))
            }
            _ => None,
        };
        Ok((page, next))
    }

    /// Deletes every version (and delete marker) of exactly `key`.
    pub async fn delete_every_version(&self, key: &str) -> Result<(), StoreError> {
        let out = self
            .client
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(key)
            .send()
            .await
            .map_err(failed("ListObjectVersions", key))?;
        let versions = out
            .versions()
            .iter()
            .filter(|v| v.key() == Some(key))
            .filter_map(|v| v.version_id())
            .chain(
                out.delete_markers()
                    .iter()
                    .filter(|m| m.key() == Some(key))
                    .filter_map(|m| m.version_id()),
            );
        for version in versions {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .version_id(version)
                .send()
                .await
                .map_err(failed("DeleteObject", key))?;
        }
        Ok(())
    }

    /// Downloads a manifest into `work_dir` and opens it; the file is unlinked at once (the
    /// handle keeps it), so nothing is left behind whatever happens next.
    pub async fn fetch_manifest(
        &self,
        key: &str,
        work_dir: &Path,
    ) -> Result<std::fs::File, String> {
        self.fetch_manifest_if_present(key, work_dir)
            .await?
            .ok_or_else(|| format!("reading the manifest {key}: it is not in the bucket"))
    }

    /// Like [`Self::fetch_manifest`], `None` when no such manifest is in the bucket.
    pub async fn fetch_manifest_if_present(
        &self,
        key: &str,
        work_dir: &Path,
    ) -> Result<Option<std::fs::File>, String> {
        std::fs::create_dir_all(work_dir).map_err(|e| format!("{}: {e}", work_dir.display()))?;
        let name = key.rsplit('/').next().unwrap_or("manifest");
        let local = work_dir.join(format!("{}-{name}", std::process::id()));
        match self.get_to(key, None, &local).await {
            Ok(_) => {}
            Err(e) if e.class == Some(ErrorClass::NotFound) => return Ok(None),
            Err(e) => return Err(format!("reading the manifest {key}: {e}")),
        }
        let file = std::fs::File::open(&local).map_err(|e| format!("{}: {e}", local.display()));
        let _ = std::fs::remove_file(&local);
        file.map(Some)
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
        let mut file = std::fs::File::create(dest).map_err(local("creating", key))?;
        let mut hasher = Sha256::new();
        while let Some(chunk) = body.try_next().await.map_err(local("GetObject", key))? {
            hasher.update(&chunk);
            std::io::Write::write_all(&mut file, &chunk).map_err(local("writing", key))?;
        }
        file.sync_all().map_err(local("writing", key))?;
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
            class: None,
        })
}

/// A lease on the mirror, so two backups never write it at once (a Job retried while its
/// old pod still runs): an object written only if absent (`If-None-Match: *`), renewed
/// and taken over only if unchanged since read (`If-Match`), deleted when the run ends.
/// One a killed run left behind lapses at `expires`.
#[derive(Debug, Clone)]
pub struct Lock {
    pub key: String,
    etag: String,
    pub holder: String,
    /// When the write that set its current lease was sent: the lease is ours until
    /// `lease` after this, whatever became of the writes since.
    pub written: std::time::Instant,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LockBody {
    holder: String,
    /// RFC 3339.
    expires: String,
}

impl Store {
    async fn write_lock(
        &self,
        key: &str,
        holder: &str,
        lease: std::time::Duration,
        condition: LockCondition<'_>,
    ) -> Result<(String, std::time::Instant), StoreError> {
        let sent = std::time::Instant::now();
        let expires = crate::clock::now()
            + k8s_openapi::jiff::SignedDuration::try_from(lease)
                .unwrap_or(k8s_openapi::jiff::SignedDuration::ZERO);
        let body = serde_json::to_vec(&LockBody {
            holder: holder.to_string(),
            expires: expires.to_string(),
        })
        .unwrap_or_default();
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .set_server_side_encryption(self.encryption())
            .set_ssekms_key_id(self.kms_key.clone());
        let request = match condition {
            LockCondition::Absent => request.if_none_match("*"),
            LockCondition::Unchanged(etag) => request.if_match(etag),
        };
        let out = request.send().await.map_err(failed("PutObject", key))?;
        Ok((out.e_tag().unwrap_or_default().to_string(), sent))
    }

    /// Takes the lock at `key` for `lease`, or says who holds it until when. A lock whose
    /// lease ran out is taken over.
    pub async fn lock(
        &self,
        key: &str,
        holder: &str,
        lease: std::time::Duration,
        wait: std::time::Duration,
    ) -> Result<Lock, String> {
        // A lock whose lease ends within `wait` is waited for: the run that holds it may
        // have been killed (a Job's next pod starts seconds after its last one died), and
        // a live holder's renewals push its end past `wait`, so two runs still never
        // overlap.
        let give_up = crate::clock::now()
            + k8s_openapi::jiff::SignedDuration::try_from(wait).unwrap_or_default();
        loop {
            match self.try_lock(key, holder, lease).await {
                Ok(lock) => return Ok(lock),
                Err((Some(until), _)) if until <= give_up => {
                    let left = until.duration_since(crate::clock::now());
                    let pause = std::time::Duration::try_from(left)
                        .unwrap_or_default()
                        .clamp(
                            std::time::Duration::from_millis(500),
                            std::time::Duration::from_secs(15),
                        );
                    tokio::time::sleep(pause).await;
                }
                Err((_, said)) => return Err(said),
            }
        }
    }

    /// One attempt at the lock; refused with when the holder's lease ends, if it is held.
    async fn try_lock(
        &self,
        key: &str,
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<Lock, (Option<k8s_openapi::jiff::Timestamp>, String)> {
        let refused = |said: String| (None, said);
        let taken = |(etag, written)| Lock {
            key: key.to_string(),
            etag,
            holder: holder.to_string(),
            written,
        };
        match self
            .write_lock(key, holder, lease, LockCondition::Absent)
            .await
        {
            Ok(etag) => return Ok(taken(etag)),
            Err(e) if e.message.starts_with("PreconditionFailed") => {}
            Err(e) => return Err(refused(format!("taking the lock: {e}"))),
        }
        let held = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| refused(format!("reading the lock: {}", failed("GetObject", key)(e))))?;
        let etag = held.e_tag().unwrap_or_default().to_string();
        let bytes = held
            .body
            .collect()
            .await
            .map_err(|e| refused(format!("reading the lock: {e}")))?
            .into_bytes();
        let body: LockBody = serde_json::from_slice(&bytes)
            .map_err(|e| refused(format!("the lock {key} is not one of ours: {e}")))?;
        let until = body.expires.parse::<k8s_openapi::jiff::Timestamp>().ok();
        let lapsed = until.is_none_or(|t| t < crate::clock::now());
        if !lapsed {
            return Err((
                until,
                format!(
                    "another run ({}) holds the lock {key} until {}",
                    body.holder, body.expires
                ),
            ));
        }
        self.write_lock(key, holder, lease, LockCondition::Unchanged(&etag))
            .await
            .map(taken)
            .map_err(|e| {
                refused(format!(
                    "taking over the lapsed lock of {}: {e}",
                    body.holder
                ))
            })
    }

    /// Extends the lease. A `PreconditionFailed` error means someone took the lock meanwhile;
    /// any other leaves the lease as it was.
    pub async fn renew(
        &self,
        lock: &mut Lock,
        lease: std::time::Duration,
    ) -> Result<(), StoreError> {
        let (etag, written) = self
            .write_lock(
                &lock.key,
                &lock.holder,
                lease,
                LockCondition::Unchanged(&lock.etag),
            )
            .await?;
        lock.etag = etag;
        lock.written = written;
        Ok(())
    }

    /// Gives the lock back (a delete marker on its key).
    pub async fn unlock(&self, lock: &Lock) {
        let _ = self.mark_deleted(&lock.key).await;
    }
}

enum LockCondition<'a> {
    Absent,
    Unchanged(&'a str),
}
