//! `documents copy`: one set's documents copied into another bucket (the disaster-recovery
//! region's), server-side, so that bucket alone can restore the set.
//!
//! - Each file version the set's manifest names is copied to the same key under the
//!   destination's mirror prefix, encrypted with the destination's key (`CopyObject`; above
//!   `multipart_threshold`, `UploadPartCopy` in ranges: one `CopyObject` stops at 5 GiB).
//! - A file the previous copy (`previous`, a manifest in the destination) holds with the
//!   same SHA-256 and size is not copied again: its destination version is reused, so copies
//!   stay incremental as backups are. Files the previous copy had and this set has not get
//!   a delete marker, so the destination's mirror is the set's tree for `aws s3 sync`.
//! - The destination manifest is the source's with the destination's version ids (and
//!   bucket), written last under `to_manifest_key`, never over an existing one: a rerun after
//!   a crash that wrote it returns at once. It holds the destination mirror's lock, as a
//!   backup does, so a prune there never deletes a version the copy is reusing.

use std::cmp::Ordering;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use serde::Serialize;

use super::backup::{lock_key, lock_lost, mirror_key, store_manifest, with_lock};
use super::manifest::{self, Entry, Header, Kind, path_order};
use super::store::Store;

/// One `CopyObject` copies at most this (5 GiB).
pub const MAX_SINGLE_COPY: u64 = 5 * 1024 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// The set's manifest in the source bucket.
    pub manifest_key: String,
    /// Where the copy's manifest goes in the destination bucket.
    pub to_manifest_key: String,
    /// The previous set's copy's manifest in the destination: what it holds unchanged is
    /// not copied again.
    pub previous: Option<String>,
    /// The mirror's prefix in the destination (the source's is its manifest's).
    pub prefix: String,
    pub concurrency: usize,
    /// Files above this are copied in parts (at most [`MAX_SINGLE_COPY`]).
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub work_dir: std::path::PathBuf,
    pub lock_lease: std::time::Duration,
    pub lock_wait: std::time::Duration,
    pub holder: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CopySummary {
    pub files: u64,
    pub bytes: u64,
    pub files_copied: u64,
    pub bytes_copied: u64,
    /// Files the previous copy already held: their version there is reused.
    pub files_unchanged: u64,
    pub files_deleted: u64,
    pub manifest_key: String,
    pub manifest_version: String,
    /// The copy's manifest was already there (a rerun after a crash): nothing was copied.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub already_copied: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_missing: Option<String>,
    pub duration_ms: u64,
}

/// Copies the set whose manifest is `options.manifest_key` in `from` into `to`.
pub async fn copy(from: &Store, to: &Store, options: &CopyOptions) -> Result<CopySummary, String> {
    let started = Instant::now();
    let manifests = options
        .to_manifest_key
        .rfind('/')
        .map_or("", |at| &options.to_manifest_key[..=at]);
    if let Some(why) = super::fitness::check(to, &[&options.prefix, manifests])
        .await
        .map_err(|e| e.to_string())?
    {
        return Err(format!("the destination bucket cannot hold sets: {why}"));
    }
    std::fs::create_dir_all(&options.work_dir)
        .map_err(|e| format!("{}: {e}", options.work_dir.display()))?;
    if let Some(done) = to
        .fetch_manifest_if_present(&options.to_manifest_key, &options.work_dir)
        .await?
    {
        let (_, _, totals) = manifest::read_all(done)
            .map_err(|e| format!("the copy's manifest {}: {e}", options.to_manifest_key))?;
        return Ok(CopySummary {
            files: totals.files,
            bytes: totals.bytes,
            manifest_key: options.to_manifest_key.clone(),
            already_copied: true,
            duration_ms: started.elapsed().as_millis() as u64,
            ..CopySummary::default()
        });
    }
    with_lock(
        to,
        &lock_key(&options.prefix),
        &options.holder,
        (options.lock_lease, options.lock_wait),
        async |still_held: &(dyn Fn() -> bool + Sync)| {
            copy_holding(from, to, options, still_held, started).await
        },
    )
    .await
}

/// What one entry became in the destination.
enum Done {
    Entry(Entry, bool),
    Deleted,
}

async fn copy_holding(
    from: &Store,
    to: &Store,
    options: &CopyOptions,
    still_held: &(dyn Fn() -> bool + Sync),
    started: Instant,
) -> Result<CopySummary, String> {
    let source = from
        .fetch_manifest(&options.manifest_key, &options.work_dir)
        .await?;
    let source = manifest::Reader::new(source)
        .map_err(|e| format!("the set's manifest {}: {e}", options.manifest_key))?;
    let source_prefix = source.header.prefix.clone();
    let mut summary = CopySummary::default();
    let mut previous = match &options.previous {
        Some(key) => match to.fetch_manifest_if_present(key, &options.work_dir).await? {
            Some(file) => Some(
                manifest::Reader::new(file)
                    .map_err(|e| format!("the previous copy's manifest {key}: {e}"))?
                    .peekable(),
            ),
            None => {
                summary.previous_missing = Some(key.clone());
                None
            }
        },
        None => None,
    };

    let run = format!("{}-{}", std::process::id(), started.elapsed().as_nanos());
    let manifest_path = options.work_dir.join(format!("copy-{run}.gz"));
    let file = std::fs::File::create(&manifest_path).map_err(|e| e.to_string())?;
    let header = Header {
        format: manifest::FORMAT.into(),
        version: manifest::VERSION,
        created: crate::clock::now().to_string(),
        bucket: to.bucket.clone(),
        prefix: options.prefix.clone(),
    };
    let mut writer =
        manifest::Writer::new(std::io::BufWriter::new(file), &header).map_err(|e| e.to_string())?;
    let mut inflight = FuturesOrdered::new();
    let mut take = |done: Done, summary: &mut CopySummary| -> Result<(), String> {
        match done {
            Done::Entry(entry, copied) => {
                if entry.kind == Kind::File {
                    summary.files += 1;
                    summary.bytes += entry.size;
                    if copied {
                        summary.files_copied += 1;
                        summary.bytes_copied += entry.size;
                    } else {
                        summary.files_unchanged += 1;
                    }
                }
                writer.push(&entry).map_err(|e| e.to_string())
            }
            Done::Deleted => {
                summary.files_deleted += 1;
                Ok(())
            }
        }
    };
    let mut unreadable = Vec::new();
    let mut source = source;
    for entry in source.by_ref() {
        let entry = entry.map_err(|e| format!("the set's manifest: {e}"))?;
        let mut before = None;
        if let Some(prev) = previous.as_mut() {
            while let Some(p) = prev.peek() {
                let p = p
                    .as_ref()
                    .map_err(|e| format!("the previous copy's manifest: {e}"))?;
                match path_order(&p.path, &entry.path) {
                    Ordering::Less => {
                        let gone = prev.next().expect("peeked").expect("checked");
                        if gone.kind == Kind::File {
                            inflight.push_back(futures::future::Either::Left(mark_gone(
                                to.clone(),
                                options.prefix.clone(),
                                gone,
                            )));
                        }
                    }
                    Ordering::Equal => {
                        before = Some(prev.next().expect("peeked").expect("checked"));
                        break;
                    }
                    Ordering::Greater => break,
                }
            }
        }
        inflight.push_back(futures::future::Either::Right(copy_entry(
            (from.clone(), source_prefix.clone()),
            (to.clone(), options.clone()),
            entry,
            before,
        )));
        while inflight.len() >= options.concurrency.max(1) {
            take(inflight.next().await.expect("not empty")?, &mut summary)?;
        }
        if !still_held() {
            return Err(lock_lost(&lock_key(&options.prefix)));
        }
    }
    if let Some(totals) = &source.totals {
        unreadable = totals.unreadable.clone();
    }
    if let Some(prev) = previous.as_mut() {
        for p in prev {
            let gone = p.map_err(|e| format!("the previous copy's manifest: {e}"))?;
            if gone.kind == Kind::File {
                inflight.push_back(futures::future::Either::Left(mark_gone(
                    to.clone(),
                    options.prefix.clone(),
                    gone,
                )));
            }
        }
    }
    while let Some(done) = inflight.next().await {
        take(done?, &mut summary)?;
    }
    let version = store_manifest(
        writer,
        unreadable,
        (&manifest_path, to, &options.to_manifest_key),
        still_held,
        &lock_key(&options.prefix),
    )
    .await?;
    summary.manifest_key = options.to_manifest_key.clone();
    summary.manifest_version = version;
    summary.duration_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

/// A file the previous copy had and this set has not: a delete marker, so the mirror's
/// newest state is this set's tree (every version stays for the sets that name it).
async fn mark_gone(to: Store, prefix: String, gone: Entry) -> Result<Done, String> {
    to.mark_deleted(&mirror_key(&prefix, &gone.path))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Done::Deleted)
}

/// One entry of the set, in the destination: a file copied (or its previous copy reused),
/// anything else as it is.
async fn copy_entry(
    (from, from_prefix): (Store, String),
    (to, options): (Store, CopyOptions),
    entry: Entry,
    before: Option<Entry>,
) -> Result<Done, String> {
    if entry.kind != Kind::File {
        return Ok(Done::Entry(entry, false));
    }
    if let Some(before) = before
        && before.kind == Kind::File
        && before.sha256 == entry.sha256
        && before.size == entry.size
    {
        return Ok(Done::Entry(
            Entry {
                version: before.version,
                s3_checksum: before.s3_checksum,
                ..entry
            },
            false,
        ));
    }
    let version = entry.version.clone().unwrap_or_default();
    let source_key = mirror_key(&from_prefix, &entry.path);
    let key = mirror_key(&options.prefix, &entry.path);
    let threshold = options.multipart_threshold.min(MAX_SINGLE_COPY);
    let (copied, s3_checksum) = if entry.size <= threshold {
        // Copied whole, S3 keeps the whole file's SHA-256: `sha256` says it.
        let copied = to
            .copy_version((&from, &source_key, &version), &key)
            .await
            .map_err(|e| e.to_string())?;
        (copied, None)
    } else {
        copy_in_parts(
            &from,
            &to,
            (&source_key, &key, &version),
            (entry.size, entry.sha256.as_deref()),
            &options,
        )
        .await?
    };
    Ok(Done::Entry(
        Entry {
            version: Some(copied),
            s3_checksum,
            ..entry
        },
        true,
    ))
}

/// A file above the threshold, copied in ranges of `part_size`; the upload is abandoned
/// if a part fails.
async fn copy_in_parts(
    from: &Store,
    to: &Store,
    (source_key, key, version): (&str, &str, &str),
    (size, sha256): (u64, Option<&str>),
    options: &CopyOptions,
) -> Result<(String, Option<String>), String> {
    let upload = to.start_multipart(key).await.map_err(|e| e.to_string())?;
    let part = options.part_size.max(5 * 1024 * 1024);
    let ranges: Vec<(i32, (u64, u64))> = (0..size.div_ceil(part))
        .map(|i| {
            let start = i * part;
            ((i + 1) as i32, (start, (start + part).min(size) - 1))
        })
        .collect();
    let parts = futures::stream::iter(ranges)
        .map(|(number, range)| {
            to.copy_part((from, source_key, version), key, &upload, number, range)
        })
        .buffered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>();
    let parts = match parts {
        Ok(parts) => parts,
        Err(e) => {
            to.abort_multipart(key, &upload).await;
            return Err(e.to_string());
        }
    };
    let every_part_summed = parts.iter().all(|p| p.checksum_sha256().is_some());
    let (copied, composite) = to
        .complete_multipart(key, &upload, parts)
        .await
        .map_err(|e| e.to_string())?;
    if every_part_summed {
        return Ok((copied, Some(composite)));
    }
    // A store that does not say each copied part's checksum (S3 does; emulators may not):
    // the checksum it keeps for the object is read back, and is the file's own SHA-256 when
    // it kept that.
    let stored = to
        .attributes(key, Some(&copied))
        .await
        .map_err(|e| e.to_string())?
        .and_then(|(_, checksum)| checksum)
        .ok_or_else(|| format!("{key}: the copy keeps no SHA-256 checksum"))?;
    use base64::Engine as _;
    let stored_hex = base64::engine::general_purpose::STANDARD
        .decode(&stored)
        .map(|raw| raw.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .unwrap_or_default();
    Ok((
        copied,
        (Some(stored_hex.as_str()) != sha256).then_some(stored),
    ))
}
