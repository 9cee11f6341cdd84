//! `documents backup`: the tree into the mirror, and a manifest of it.
//!
//! The walk ([`walk`](super::walk)) yields paths in manifest order; each is `lstat`ed, many
//! at once; a file whose size and mtime equal the previous manifest's entry is unchanged
//! and keeps that entry's version and checksum (a change of mode or owner alone rewrites
//! the entry, not the object); any other file is read, hashed and stored under its mirror
//! key. A file that changes while it is read (its size or mtime differ after the read) is
//! read again, up to three times, then reported; an unreadable file, or one that is not a
//! regular file, directory or symlink, is reported by path in the summary and the
//! manifest's trailer, never skipped silently. A path in the previous manifest and gone
//! now gets a delete marker on its mirror key. The manifest goes last; it is never
//! written over (`If-None-Match: *`).

use std::collections::VecDeque;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::stream::{FuturesOrdered, StreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::journal::Journal;
use super::manifest::{self, Entry, Header, Kind, path_order};
use super::store::Store;
use super::walk::{self, Found};

/// Most files read, hashed or sent at once.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Files above this go in parts.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// S3's smallest part but the last is 5 MiB.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Reads of a file that keeps changing before it is reported.
const READ_ATTEMPTS: usize = 3;
/// Unreadable paths named in the summary (the manifest's trailer names them all).
const SUMMARY_PATHS: usize = 20;

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub root: PathBuf,
    /// The mirror's key prefix (`documents/`).
    pub prefix: String,
    pub manifest_key: String,
    /// The previous set's manifest: what it holds unchanged is not sent again.
    pub previous: Option<String>,
    pub concurrency: usize,
    pub multipart_threshold: u64,
    pub part_size: u64,
    /// Where the manifests are written and read (never the tree).
    pub work_dir: PathBuf,
    /// The mirror's lock, and how long a lease on it lasts (renewed every third of it).
    pub lock_key: String,
    pub lock_lease: std::time::Duration,
    /// How long to wait for a lock whose lease ends that soon (a killed run's).
    pub lock_wait: std::time::Duration,
    /// Who runs this backup, as the lock says (the pod's name).
    pub holder: String,
    /// Stored files per journal chunk ([`journal`](super::journal)).
    pub journal_every: usize,
}

/// The lock of the mirror under `prefix`: beside it, never inside it (`documents.lock`).
pub fn lock_key(prefix: &str) -> String {
    format!("{}.lock", prefix.trim_end_matches('/'))
}

/// What a run did, printed as one JSON line (it fits Kubernetes' 4 KiB termination
/// message).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub files_scanned: u64,
    pub bytes_scanned: u64,
    pub files_uploaded: u64,
    pub bytes_uploaded: u64,
    pub files_unchanged: u64,
    pub bytes_unchanged: u64,
    /// Files an earlier, killed run of this set stored, not sent again.
    pub files_resumed: u64,
    pub files_deleted: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub unreadable_count: u64,
    /// The first few, each `path: why`.
    pub unreadable: Vec<String>,
    pub manifest_key: String,
    pub manifest_version: String,
    /// The previous manifest named, when it was not in the bucket (a set pruned meanwhile):
    /// every file was sent as new.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_missing: Option<String>,
    pub duration_ms: u64,
}

/// The mirror key of a manifest path: the path under the prefix, or for a path that is
/// not UTF-8 (S3 keys are), `.non-utf8/` and its bytes in hex.
pub fn mirror_key(prefix: &str, path: &[u8]) -> String {
    match std::str::from_utf8(path) {
        Ok(text) => format!("{prefix}{text}"),
        Err(_) => {
            let hex: String = path.iter().map(|b| format!("{b:02x}")).collect();
            format!("{prefix}.non-utf8/{hex}")
        }
    }
}

/// One entry as `lstat` found it.
#[derive(Debug, Clone)]
struct Seen {
    path: Vec<u8>,
    full: PathBuf,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    size: u64,
    target: Option<Vec<u8>>,
}

fn kind_of(meta: &Metadata) -> Option<Kind> {
    let t = meta.file_type();
    if t.is_symlink() {
        Some(Kind::Symlink)
    } else if t.is_dir() {
        Some(Kind::Dir)
    } else if t.is_file() {
        Some(Kind::File)
    } else {
        None
    }
}

/// `lstat` (and `readlink`): what the manifest records of a path.
fn look(found: Found) -> Result<Seen, (Vec<u8>, String)> {
    let meta =
        std::fs::symlink_metadata(&found.full).map_err(|e| (found.path.clone(), e.to_string()))?;
    let kind = kind_of(&meta).ok_or_else(|| {
        (
            found.path.clone(),
            "not a regular file, directory or symlink: not backed up".to_string(),
        )
    })?;
    let target = match kind {
        Kind::Symlink => Some(
            std::fs::read_link(&found.full)
                .map_err(|e| (found.path.clone(), e.to_string()))?
                .into_os_string()
                .into_encoded_bytes(),
        ),
        _ => None,
    };
    Ok(Seen {
        path: found.path,
        full: found.full,
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: (meta.mtime(), meta.mtime_nsec() as u32),
        size: if kind == Kind::File { meta.len() } else { 0 },
        target,
    })
}

enum Outcome {
    Recorded(Entry, Sent),
    Deleted,
    Unreadable(String),
}

enum Sent {
    Uploaded,
    /// Stored by a killed run of this set, as its journal says.
    Resumed,
    Unchanged,
    Nothing,
}

/// Runs a backup while holding the mirror's lock; the summary says what was done
/// (unreadable paths included). An error means no manifest was written.
pub async fn backup(store: &Store, options: &BackupOptions) -> Result<Summary, String> {
    let manifests = options
        .manifest_key
        .rfind('/')
        .map_or("", |at| &options.manifest_key[..=at]);
    if let Some(why) = super::fitness::check(store, &[&options.prefix, manifests])
        .await
        .map_err(|e| e.to_string())?
    {
        return Err(format!("this bucket cannot hold sets: {why}"));
    }
    with_lock(
        store,
        &options.lock_key,
        &options.holder,
        (options.lock_lease, options.lock_wait),
        async |still_held: &(dyn Fn() -> bool + Sync)| {
            backup_holding(store, options, still_held).await
        },
    )
    .await
}

/// Runs `work` while holding the lock of the mirror under `prefix` ([`with_lock`]).
pub async fn with_mirror_lock<T>(
    store: &Store,
    prefix: &str,
    holder: &str,
    lease: std::time::Duration,
    work: impl AsyncFnOnce(&(dyn Fn() -> bool + Sync)) -> Result<T, String>,
) -> Result<T, String> {
    // Prunes and sweeps do not wait: they are refused at once while a backup runs.
    let no_wait = std::time::Duration::ZERO;
    with_lock(store, &lock_key(prefix), holder, (lease, no_wait), work).await
}

/// Runs `work` while holding the lock at `key` (waited for up to `wait` when its lease
/// ends that soon), renewed every third of `lease`; `work` asks `still_held` before its
/// last, decisive write. The lock is given back unless it was lost.
///
/// Holding is judged by time, not by the renewals' answers: the lock is held while its
/// last successful write was sent less than two thirds of a lease ago. A renewal that
/// hangs (S3 timing out and retrying) would otherwise let the lease lapse, and another
/// run take the lock, while this one still believed it held it. A renewal that fails for
/// another reason than the lock being taken is tried again until the lease runs out.
pub async fn with_lock<T>(
    store: &Store,
    key: &str,
    holder: &str,
    (lease, wait): (std::time::Duration, std::time::Duration),
    work: impl AsyncFnOnce(&(dyn Fn() -> bool + Sync)) -> Result<T, String>,
) -> Result<T, String> {
    use std::sync::atomic::{AtomicBool, Ordering as Atomic};
    use std::sync::{Arc, Mutex};
    let lock = store.lock(key, holder, lease, wait).await?;
    let lost = Arc::new(AtomicBool::new(false));
    let written = Arc::new(Mutex::new(lock.written));
    let renewer = tokio::spawn({
        let (store, mut lock) = (store.clone(), lock.clone());
        let (lost, written) = (lost.clone(), written.clone());
        async move {
            let mut pause = lease / 3;
            loop {
                tokio::time::sleep(pause).await;
                match store.renew(&mut lock, lease).await {
                    Ok(()) => {
                        *written.lock().unwrap_or_else(|e| e.into_inner()) = lock.written;
                        pause = lease / 3;
                    }
                    Err(e) if e.message.starts_with("PreconditionFailed") => break,
                    Err(_) if lock.written.elapsed() >= lease => break,
                    Err(_) => pause = (lease / 12).max(std::time::Duration::from_millis(100)),
                }
            }
            lost.store(true, Atomic::SeqCst);
        }
    });
    let still_held = || {
        let since = written.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
        !lost.load(Atomic::SeqCst) && holds(since, lease)
    };
    let result = work(&still_held).await;
    renewer.abort();
    if still_held() {
        store.unlock(&lock).await;
    }
    result
}

/// Whether a lock whose last successful write was sent `since` ago still holds for a
/// decisive write: a third of the lease is kept in hand for that write to land.
fn holds(since: std::time::Duration, lease: std::time::Duration) -> bool {
    since < lease - lease / 3
}

pub fn lock_lost(key: &str) -> String {
    format!(
        "lost the lock {key} (its renewals did not land within its lease, or another run took it): no manifest written"
    )
}

/// The backup itself; `still_held` is asked before the manifest is written.
async fn backup_holding(
    store: &Store,
    options: &BackupOptions,
    still_held: &(dyn Fn() -> bool + Sync),
) -> Result<Summary, String> {
    let started = Instant::now();
    std::fs::create_dir_all(&options.work_dir)
        .map_err(|e| format!("{}: {e}", options.work_dir.display()))?;
    let run = format!("{}-{}", std::process::id(), started.elapsed().as_nanos());
    // A previous set pruned meanwhile: this run sends everything, rather than fail (and
    // fail every retry) for want of something only saving work.
    let mut previous_missing = None;
    let mut previous = match &options.previous {
        Some(key) => match store
            .fetch_manifest_if_present(key, &options.work_dir)
            .await?
        {
            Some(file) => {
                let reader = manifest::Reader::new(file)
                    .map_err(|e| format!("the previous manifest {key}: {e}"))?;
                Some(reader.peekable())
            }
            None => {
                previous_missing = Some(key.clone());
                None
            }
        },
        None => None,
    };

    // The walk runs on a thread of its own; what it finds is looked at, many at once.
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let (root, threads) = (options.root.clone(), options.concurrency);
    let walker = std::thread::spawn(move || {
        walk::walk(&root, threads, &mut |found| tx.blocking_send(found).is_ok());
    });
    let found = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut looked = found
        .map(|found| async move {
            match found {
                Ok(found) => tokio::task::spawn_blocking(move || look(found))
                    .await
                    .unwrap_or_else(|e| Err((Vec::new(), e.to_string()))),
                Err(e) => Err((e.path, format!("cannot list: {}", e.message))),
            }
        })
        .buffered(options.concurrency);

    let manifest_path = options.work_dir.join(format!("manifest-{run}.gz"));
    let file = std::fs::File::create(&manifest_path).map_err(|e| e.to_string())?;
    let header = Header {
        format: manifest::FORMAT.into(),
        version: manifest::VERSION,
        created: crate::clock::now().to_string(),
        bucket: store.bucket.clone(),
        prefix: options.prefix.clone(),
    };
    let (journal, mut stored_before) = Journal::open(
        store,
        &options.manifest_key,
        header.clone(),
        options.journal_every,
        &options.work_dir,
    )
    .await?;
    let writer =
        manifest::Writer::new(std::io::BufWriter::new(file), &header).map_err(|e| e.to_string())?;
    let mut progress = Progress {
        writer,
        summary: Summary::default(),
        unreadable: Vec::new(),
        journal,
    };
    let mut inflight = FuturesOrdered::new();
    let mut pending_deletes: VecDeque<Entry> = VecDeque::new();
    while let Some(next) = looked.next().await {
        let seen = match next {
            Ok(seen) => seen,
            Err((path, why)) => {
                inflight.push_back(futures::future::Either::Left(async move {
                    Ok::<_, String>(Outcome::Unreadable(format!(
                        "{}: {why}",
                        String::from_utf8_lossy(&path)
                    )))
                }));
                continue;
            }
        };
        // What the previous set had before this path, and this path's own entry.
        let mut before = None;
        if let Some(prev) = previous.as_mut() {
            while let Some(p) = prev.peek() {
                let p = p
                    .as_ref()
                    .map_err(|e| format!("the previous manifest: {e}"))?;
                match path_order(&p.path, &seen.path) {
                    std::cmp::Ordering::Less => {
                        let gone = prev.next().expect("peeked").expect("checked");
                        if gone.kind == Kind::File {
                            pending_deletes.push_back(gone);
                        }
                    }
                    std::cmp::Ordering::Equal => {
                        before = Some(prev.next().expect("peeked").expect("checked"));
                        break;
                    }
                    std::cmp::Ordering::Greater => break,
                }
            }
        }
        if let Some(old) = &before
            && old.kind == Kind::File
            && seen.kind != Kind::File
        {
            pending_deletes.push_back(old.clone());
        }
        let resumed = stored_before.remove(&seen.path);
        while let Some(gone) = pending_deletes.pop_front() {
            inflight.push_back(futures::future::Either::Right(
                futures::future::Either::Left(delete(store.clone(), options.prefix.clone(), gone)),
            ));
        }
        inflight.push_back(futures::future::Either::Right(
            futures::future::Either::Right(record(
                store.clone(),
                options.clone(),
                seen,
                before,
                resumed,
            )),
        ));
        while inflight.len() >= options.concurrency {
            let outcome = inflight.next().await.expect("not empty")?;
            progress.take(outcome, store).await?;
        }
        // Another run took the mirror over: stop sending (a sweep spares what was sent
        // within its grace period, longer than a lease; see [`sweep`](super::sweep)).
        if !still_held() {
            return Err(lock_lost(&options.lock_key));
        }
    }
    // What the previous set had after the last path.
    if let Some(prev) = previous.as_mut() {
        for p in prev {
            let gone = p.map_err(|e| format!("the previous manifest: {e}"))?;
            if gone.kind == Kind::File {
                inflight.push_back(futures::future::Either::Right(
                    futures::future::Either::Left(delete(
                        store.clone(),
                        options.prefix.clone(),
                        gone,
                    )),
                ));
            }
        }
    }
    while let Some(outcome) = inflight.next().await {
        progress.take(outcome?, store).await?;
    }
    let Progress {
        writer,
        mut summary,
        unreadable,
        journal,
    } = progress;
    let _ = walker.join();

    summary.unreadable_count = unreadable.len() as u64;
    summary.unreadable = unreadable.iter().take(SUMMARY_PATHS).cloned().collect();
    let version = store_manifest(
        writer,
        unreadable,
        (&manifest_path, store, &options.manifest_key),
        still_held,
        &options.lock_key,
    )
    .await?;
    journal.close(store).await;
    summary.manifest_key = options.manifest_key.clone();
    summary.previous_missing = previous_missing;
    summary.manifest_version = version;
    summary.duration_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

/// Finishes a manifest written to `path` and stores it under `key` (never over one),
/// provided the lock at `lock` is still held; returns its version id.
pub async fn store_manifest(
    writer: manifest::Writer<std::io::BufWriter<std::fs::File>>,
    unreadable: Vec<String>,
    (path, store, key): (&std::path::Path, &Store, &str),
    still_held: &(dyn Fn() -> bool + Sync),
    lock: &str,
) -> Result<String, String> {
    let (_, out) = writer.finish(unreadable).map_err(|e| e.to_string())?;
    out.into_inner()
        .map_err(|e| e.to_string())?
        .sync_all()
        .map_err(|e| e.to_string())?;
    if !still_held() {
        return Err(lock_lost(lock));
    }
    let version = store
        .put_new_file(key, path)
        .await
        .map_err(|e| format!("writing the manifest {key}: {e}"))?;
    let _ = std::fs::remove_file(path);
    Ok(version)
}

/// What a run has recorded so far: the manifest being written, the counts, the paths
/// left out, and the journal of what it stored.
struct Progress<W: std::io::Write> {
    writer: manifest::Writer<W>,
    summary: Summary,
    unreadable: Vec<String>,
    journal: Journal,
}

impl<W: std::io::Write> Progress<W> {
    /// Counts one outcome, writes its entry, and writes a journal chunk when one is due.
    async fn take(&mut self, outcome: Outcome, store: &Store) -> Result<(), String> {
        let summary = &mut self.summary;
        match outcome {
            Outcome::Recorded(entry, sent) => {
                let due = matches!(sent, Sent::Uploaded) && self.journal.push(&entry);
                match (entry.kind, sent) {
                    (Kind::File, Sent::Uploaded) => {
                        summary.files_uploaded += 1;
                        summary.bytes_uploaded += entry.size;
                    }
                    (Kind::File, Sent::Resumed) => summary.files_resumed += 1,
                    (Kind::File, _) => {
                        summary.files_unchanged += 1;
                        summary.bytes_unchanged += entry.size;
                    }
                    (Kind::Dir, _) => summary.dirs += 1,
                    (Kind::Symlink, _) => summary.symlinks += 1,
                }
                if entry.kind == Kind::File {
                    summary.files_scanned += 1;
                    summary.bytes_scanned += entry.size;
                }
                self.writer.push(&entry).map_err(|e| e.to_string())?;
                if due {
                    self.journal.flush(store).await?;
                }
            }
            Outcome::Deleted => summary.files_deleted += 1,
            Outcome::Unreadable(said) => self.unreadable.push(said),
        }
        Ok(())
    }
}

async fn delete(store: Store, prefix: String, gone: Entry) -> Result<Outcome, String> {
    store
        .mark_deleted(&mirror_key(&prefix, &gone.path))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Outcome::Deleted)
}

/// The entry of one path: for a file, its content stored unless unchanged since `before`.
async fn record(
    store: Store,
    options: BackupOptions,
    seen: Seen,
    before: Option<Entry>,
    resumed: Option<Entry>,
) -> Result<Outcome, String> {
    let mut entry = Entry {
        path: seen.path.clone(),
        kind: seen.kind,
        mode: seen.mode,
        uid: seen.uid,
        gid: seen.gid,
        mtime: seen.mtime,
        size: seen.size,
        sha256: None,
        version: None,
        target: seen.target.clone(),
        s3_checksum: None,
    };
    if seen.kind != Kind::File {
        return Ok(Outcome::Recorded(entry, Sent::Nothing));
    }
    for (old, sent) in [(before, Sent::Unchanged), (resumed, Sent::Resumed)] {
        if let Some(old) = old
            && old.kind == Kind::File
            && old.size == seen.size
            && old.mtime == seen.mtime
        {
            entry.sha256 = old.sha256;
            entry.version = old.version;
            entry.s3_checksum = old.s3_checksum;
            return Ok(Outcome::Recorded(entry, sent));
        }
    }
    let key = mirror_key(&options.prefix, &seen.path);
    let said = |why: String| {
        Outcome::Unreadable(format!("{}: {why}", String::from_utf8_lossy(&seen.path)))
    };
    let mut expected = (seen.size, seen.mtime);
    for _ in 0..READ_ATTEMPTS {
        let stored = if expected.0 > options.multipart_threshold {
            upload_in_parts(&store, &key, &seen.full, options.part_size, expected).await
        } else {
            upload_whole(&store, &key, &seen.full, expected).await
        };
        match stored {
            Ok(Stored::Done {
                sha256,
                version,
                s3_checksum,
            }) => {
                entry.size = expected.0;
                entry.mtime = expected.1;
                entry.sha256 = Some(hex(&sha256));
                entry.version = Some(version);
                entry.s3_checksum = s3_checksum;
                return Ok(Outcome::Recorded(entry, Sent::Uploaded));
            }
            Ok(Stored::Changed(now)) => expected = now,
            Err(Failure::Unreadable(why)) => return Ok(said(why)),
            Err(Failure::Store(e)) => return Err(e),
        }
    }
    Ok(said(format!(
        "changed while being read, {READ_ATTEMPTS} times: not in this set"
    )))
}

enum Stored {
    Done {
        sha256: Vec<u8>,
        version: String,
        /// For an object in parts: what S3 keeps instead of `sha256`.
        s3_checksum: Option<String>,
    },
    /// The file's (size, mtime) after the read differ from before: read again.
    Changed((u64, (i64, u32))),
}

enum Failure {
    /// The file (not S3): reported, the run goes on.
    Unreadable(String),
    Store(String),
}

fn size_and_mtime(path: &Path) -> Result<(u64, (i64, u32)), Failure> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| Failure::Unreadable(e.to_string()))?;
    Ok((meta.len(), (meta.mtime(), meta.mtime_nsec() as u32)))
}

async fn upload_whole(
    store: &Store,
    key: &str,
    path: &Path,
    expected: (u64, (i64, u32)),
) -> Result<Stored, Failure> {
    let full = path.to_path_buf();
    let (bytes, after) = tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&full).map_err(|e| Failure::Unreadable(e.to_string()))?;
        Ok::<_, Failure>((bytes, size_and_mtime(&full)?))
    })
    .await
    .map_err(|e| Failure::Store(e.to_string()))??;
    if after != expected || bytes.len() as u64 != expected.0 {
        return Ok(Stored::Changed(after));
    }
    let sha256 = Sha256::digest(&bytes).to_vec();
    let version = store
        .put(key, bytes, &sha256)
        .await
        .map_err(|e| Failure::Store(e.to_string()))?;
    Ok(Stored::Done {
        sha256,
        version,
        s3_checksum: None,
    })
}

async fn upload_in_parts(
    store: &Store,
    key: &str,
    path: &Path,
    part_size: u64,
    expected: (u64, (i64, u32)),
) -> Result<Stored, Failure> {
    use std::io::Read;
    let upload = store
        .start_multipart(key)
        .await
        .map_err(|e| Failure::Store(e.to_string()))?;
    let result = async {
        // No further than the size it had when looked at: a file that keeps growing (a log)
        // would otherwise be read part after part without end; the size after says.
        let mut file = std::fs::File::open(path)
            .map_err(|e| Failure::Unreadable(e.to_string()))?
            .take(expected.0);
        let mut whole = Sha256::new();
        let mut parts = Vec::new();
        let mut number = 1;
        loop {
            let mut part = Vec::with_capacity(part_size as usize);
            // A part is megabytes: read off the runtime's async work.
            tokio::task::block_in_place(|| (&mut file).take(part_size).read_to_end(&mut part))
                .map_err(|e| Failure::Unreadable(e.to_string()))?;
            if part.is_empty() {
                break;
            }
            whole.update(&part);
            parts.push(
                store
                    .put_part(key, &upload, number, part)
                    .await
                    .map_err(|e| Failure::Store(e.to_string()))?,
            );
            number += 1;
        }
        let after = size_and_mtime(path)?;
        if after != expected {
            return Ok(Stored::Changed(after));
        }
        let (version, composite) = store
            .complete_multipart(key, &upload, parts)
            .await
            .map_err(|e| Failure::Store(e.to_string()))?;
        Ok(Stored::Done {
            sha256: whole.finalize().to_vec(),
            version,
            s3_checksum: Some(composite),
        })
    }
    .await;
    if !matches!(result, Ok(Stored::Done { .. })) {
        store.abort_multipart(key, &upload).await;
    }
    result
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_holds_for_two_thirds_of_a_lease_after_its_last_write_was_sent() {
        let lease = std::time::Duration::from_secs(30);
        assert!(holds(std::time::Duration::ZERO, lease));
        assert!(holds(std::time::Duration::from_secs(19), lease));
        assert!(!holds(std::time::Duration::from_secs(20), lease));
        // Renewals that hang for longer than the lease: the lease may be someone else's.
        assert!(!holds(std::time::Duration::from_secs(31), lease));
    }

    #[test]
    fn mirror_keys_are_the_paths_under_the_prefix_or_hex_when_not_utf8() {
        assert_eq!(
            mirror_key("documents/", b"default/documents/1/a.pdf"),
            "documents/default/documents/1/a.pdf"
        );
        assert_eq!(
            mirror_key("documents/", b"default/caf\xe9"),
            "documents/.non-utf8/64656661756c742f636166e9"
        );
    }
}
