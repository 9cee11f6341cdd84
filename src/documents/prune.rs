//! `documents prune`: drops sets. Given every set to keep and the ones to drop, it deletes
//! the object versions that only dropped sets reference (`DeleteObjects` with version ids,
//! up to 1,000 a request), then the dropped manifests themselves.
//!
//! - Every manifest under the manifests' prefix must be named, kept or dropped (one
//!   `ListObjectsV2` per 1,000 manifests): a set nobody named could reference a version,
//!   so the run refuses, naming it. `--keep-others` keeps every manifest present but the
//!   dropped ones, as listed under the lock (the operator's way).
//! - All manifests are read side by side, each in manifest order, so memory does not grow
//!   with the number of files.
//! - It holds the mirror's lock, as a backup does: a backup that started from a dropped
//!   set could otherwise reference versions being deleted.
//! - Resumable: the dropped manifests go last, so a run that stopped midway is run again
//!   with the same lists and finishes. A version already gone is no error.
//! - A version any kept set references is never deleted, whoever else references it.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::time::Instant;

use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use serde::Serialize;

use super::backup::mirror_key;
use super::manifest::{self, Entry, Kind, path_order};
use super::store::Store;

/// S3's most keys per `DeleteObjects`.
pub const MAX_BATCH: usize = 1000;

#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub keep: Vec<String>,
    /// Every manifest present but the dropped ones stays (what the operator runs: a set
    /// that goes never takes what any other set references), instead of naming them.
    pub keep_others: bool,
    pub drop: Vec<String>,
    /// Where the manifests are (`backups/documents/`): every one there must be named.
    pub manifests_prefix: String,
    pub batch: usize,
    pub work_dir: std::path::PathBuf,
    /// The mirror's prefix (every manifest must be of it), its lock's lease, and who runs.
    pub prefix: String,
    pub lock_lease: std::time::Duration,
    pub holder: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PruneSummary {
    /// Versions only dropped sets referenced, now deleted.
    pub versions_deleted: u64,
    /// Versions a dropped set referenced that a kept set references too: kept.
    pub versions_kept: u64,
    pub manifests_deleted: u64,
    pub duration_ms: u64,
}

/// One manifest being read, with its next entry.
struct Cursor {
    reader: manifest::Reader<std::fs::File>,
    next: Option<Entry>,
    kept: bool,
}

impl Cursor {
    fn advance(&mut self) -> Result<(), String> {
        self.next = self.reader.next().transpose()?;
        Ok(())
    }
}

/// Prunes while holding the mirror's lock; an error leaves the dropped manifests in place,
/// to be run again.
pub async fn prune(store: &Store, options: &PruneOptions) -> Result<PruneSummary, String> {
    super::backup::with_mirror_lock(
        store,
        &options.prefix,
        &options.holder,
        options.lock_lease,
        async |still_held: &(dyn Fn() -> bool + Sync)| {
            prune_holding(store, options, still_held).await
        },
    )
    .await
}

async fn prune_holding(
    store: &Store,
    options: &PruneOptions,
    still_held: &(dyn Fn() -> bool + Sync),
) -> Result<PruneSummary, String> {
    let started = Instant::now();
    if options.drop.is_empty() {
        return Err("nothing to drop".into());
    }
    if let Some(both) = options.keep.iter().find(|k| options.drop.contains(k)) {
        return Err(format!("{both} is both kept and dropped"));
    }
    // The journals of unfinished sets are there too; they are the sweep's.
    let present: BTreeSet<String> = store
        .list_keys(&options.manifests_prefix)
        .await
        .map_err(|e| e.to_string())?
        .into_keys()
        .filter(|k| super::journal::set_of_chunk(k).is_none())
        .collect();
    let keep: Vec<String> = if options.keep_others {
        present
            .iter()
            .filter(|k| !options.drop.contains(k))
            .cloned()
            .collect()
    } else {
        options.keep.clone()
    };
    let named: BTreeSet<&String> = keep.iter().chain(&options.drop).collect();
    let unnamed: Vec<&String> = present.iter().filter(|k| !named.contains(k)).collect();
    if !unnamed.is_empty() {
        return Err(format!(
            "manifests neither kept nor dropped: {}; every set must be named, since any of them may reference what the dropped ones do",
            unnamed
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // A dropped manifest already gone: a rerun after the run that deleted it.
    let dropped: Vec<&String> = options
        .drop
        .iter()
        .filter(|k| present.contains(*k))
        .collect();
    let mut cursors = Vec::new();
    for (key, kept) in keep
        .iter()
        .map(|k| (k, true))
        .chain(dropped.iter().map(|k| (*k, false)))
    {
        let file = store.fetch_manifest(key, &options.work_dir).await?;
        let reader = manifest::Reader::new(file).map_err(|e| format!("{key}: {e}"))?;
        if reader.header.prefix != options.prefix {
            return Err(format!(
                "{key} is of another mirror ({}, not {})",
                reader.header.prefix, options.prefix
            ));
        }
        let mut cursor = Cursor {
            reader,
            next: None,
            kept,
        };
        cursor.advance().map_err(|e| format!("{key}: {e}"))?;
        cursors.push(cursor);
    }
    let prefix = &options.prefix;

    let mut summary = PruneSummary::default();
    let mut batch: Vec<(String, String)> = Vec::new();
    // The least path any manifest is at, and who holds which version of it.
    while let Some(least) = cursors
        .iter()
        .filter_map(|c| c.next.as_ref().map(|e| e.path.clone()))
        .min_by(|a, b| path_order(a, b))
    {
        let mut kept_versions = BTreeSet::new();
        let mut dropped_versions = BTreeSet::new();
        for cursor in cursors.iter_mut() {
            let at_least = cursor
                .next
                .as_ref()
                .is_some_and(|e| path_order(&e.path, &least) == Ordering::Equal);
            if !at_least {
                continue;
            }
            let entry = cursor.next.take().expect("checked");
            if entry.kind == Kind::File
                && let Some(version) = entry.version
            {
                if cursor.kept {
                    kept_versions.insert(version);
                } else {
                    dropped_versions.insert(version);
                }
            }
            cursor.advance()?;
        }
        for version in dropped_versions {
            if kept_versions.contains(&version) {
                summary.versions_kept += 1;
            } else {
                batch.push((mirror_key(prefix, &least), version));
                if batch.len() >= options.batch {
                    delete_batch(store, &mut batch, &mut summary).await?;
                }
            }
        }
    }
    delete_batch(store, &mut batch, &mut summary).await?;
    if !still_held() {
        return Err("lost the mirror's lock: the dropped manifests stay; run again".into());
    }
    for key in dropped {
        store
            .delete_every_version(key)
            .await
            .map_err(|e| format!("deleting the manifest {key}: {e}"))?;
        summary.manifests_deleted += 1;
    }
    summary.duration_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

async fn delete_batch(
    store: &Store,
    batch: &mut Vec<(String, String)>,
    summary: &mut PruneSummary,
) -> Result<(), String> {
    summary.versions_deleted += delete_versions(store, batch).await?;
    Ok(())
}

/// Deletes the (key, version) pairs of `batch` in one `DeleteObjects` and empties it; how
/// many. A version already gone (a rerun) is no error.
pub(super) async fn delete_versions(
    store: &Store,
    batch: &mut Vec<(String, String)>,
) -> Result<u64, String> {
    if batch.is_empty() {
        return Ok(0);
    }
    let objects = batch
        .iter()
        .map(|(key, version)| {
            ObjectIdentifier::builder()
                .key(key)
                .version_id(version)
                .build()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let delete = Delete::builder()
        .set_objects(Some(objects))
        .quiet(true)
        .build()
        .map_err(|e| e.to_string())?;
    let out = store
        .client
        .delete_objects()
        .bucket(&store.bucket)
        .delete(delete)
        .send()
        .await
        .map_err(|e| super::store::failed("DeleteObjects", &store.bucket)(e).to_string())?;
    // A version already gone (a rerun) is no error; anything else is.
    let refused = out
        .errors()
        .iter()
        .find(|e| !matches!(e.code(), Some("NoSuchVersion" | "NoSuchKey")));
    if let Some(e) = refused {
        return Err(format!(
            "DeleteObjects refused {} version {}: {} {}",
            e.key().unwrap_or_default(),
            e.version_id().unwrap_or_default(),
            e.code().unwrap_or_default(),
            e.message().unwrap_or_default()
        ));
    }
    let deleted = batch.len() as u64;
    batch.clear();
    Ok(deleted)
}
