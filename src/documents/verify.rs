//! `documents verify`: one set against the bucket, without downloading: every version the
//! manifest names must still exist, with the manifest's size and the checksum S3 keeps for
//! it (`GetObjectAttributes`, one request per file, many at once). With `--against DIR`,
//! also against a directory: every file's content hashed and compared, every directory and
//! symlink present, and nothing there that the set lacks.

use std::cmp::Ordering;
use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::backup::{hex, mirror_key};
use super::manifest::{self, Entry, Kind, path_order};
use super::store::{Store, checksum_header};
use super::walk;

/// Problems named in the summary (all are counted).
const SUMMARY_PROBLEMS: usize = 20;

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub manifest_key: String,
    pub against: Option<PathBuf>,
    pub concurrency: usize,
    pub work_dir: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VerifySummary {
    pub files: u64,
    pub bytes: u64,
    pub problem_count: u64,
    /// The first few, each `path: what is wrong`.
    pub problems: Vec<String>,
    pub duration_ms: u64,
}

impl VerifySummary {
    fn problem(&mut self, path: &[u8], what: impl std::fmt::Display) {
        self.problem_count += 1;
        if self.problems.len() < SUMMARY_PROBLEMS {
            self.problems
                .push(format!("{}: {what}", String::from_utf8_lossy(path)));
        }
    }
}

/// S3 writes an object-in-parts checksum with `-<parts>` after it; emulators may not.
fn bare(checksum: &str) -> &str {
    checksum.split('-').next().unwrap_or(checksum)
}

/// What is wrong with one stored version, if anything.
async fn check_stored(store: Store, prefix: String, entry: Entry) -> Option<(Vec<u8>, String)> {
    let key = mirror_key(&prefix, &entry.path);
    let version = entry.version.as_deref();
    let found = match store.attributes(&key, version).await {
        Ok(found) => found,
        Err(e) => return Some((entry.path, format!("cannot be checked: {e}"))),
    };
    let Some((size, checksum)) = found else {
        return Some((
            entry.path,
            format!("version {} of {key} is gone", version.unwrap_or("(none)")),
        ));
    };
    if size != entry.size as i64 {
        return Some((
            entry.path,
            format!("stored size {size}, the manifest says {}", entry.size),
        ));
    }
    let expected = match &entry.s3_checksum {
        Some(composite) => composite.clone(),
        None => {
            let sha = entry.sha256.as_deref().unwrap_or_default();
            let raw: Vec<u8> = (0..sha.len() / 2)
                .filter_map(|i| u8::from_str_radix(&sha[2 * i..2 * i + 2], 16).ok())
                .collect();
            checksum_header(&raw)
        }
    };
    match checksum {
        Some(stored) if bare(&stored) == bare(&expected) => None,
        Some(stored) => Some((
            entry.path,
            format!("stored checksum {stored}, the manifest says {expected}"),
        )),
        None => Some((entry.path, "stored without a SHA-256 checksum".into())),
    }
}

/// Verifies the set of `options.manifest_key`; the summary names what is wrong.
pub async fn verify(store: &Store, options: &VerifyOptions) -> Result<VerifySummary, String> {
    let started = Instant::now();
    let file = store
        .fetch_manifest(&options.manifest_key, &options.work_dir)
        .await?;
    // For a second read (against the directory): the same file, rewound then.
    let rewind = file.try_clone().map_err(|e| e.to_string())?;
    let mut summary = VerifySummary::default();
    let mut reader = manifest::Reader::new(file)?;
    let prefix = reader.header.prefix.clone();
    let mut checking = FuturesUnordered::new();
    for entry in reader.by_ref() {
        let entry = entry?;
        if entry.kind != Kind::File {
            continue;
        }
        summary.files += 1;
        summary.bytes += entry.size;
        checking.push(check_stored(store.clone(), prefix.clone(), entry));
        while checking.len() >= options.concurrency {
            if let Some((path, what)) = checking.next().await.expect("not empty") {
                summary.problem(&path, what);
            }
        }
    }
    while let Some(found) = checking.next().await {
        if let Some((path, what)) = found {
            summary.problem(&path, what);
        }
    }
    if reader.totals.is_none() {
        return Err("the manifest is truncated (no trailer)".into());
    }
    if let Some(dir) = &options.against {
        use std::io::{Seek, SeekFrom};
        let mut rewind = rewind;
        rewind.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
        let reader = manifest::Reader::new(rewind)?;
        // Reads and hashes every file: off the runtime's async work.
        tokio::task::block_in_place(|| against(reader, dir, options.concurrency, &mut summary))?;
    }
    summary.duration_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

/// The set against a directory, both in manifest order, side by side.
fn against(
    reader: manifest::Reader<File>,
    dir: &std::path::Path,
    concurrency: usize,
    summary: &mut VerifySummary,
) -> Result<(), String> {
    // The walk streams beside the manifest: neither list is held whole.
    let (tx, rx) = std::sync::mpsc::sync_channel(4096);
    let root = dir.to_path_buf();
    let walker =
        std::thread::spawn(move || walk::walk(&root, concurrency, &mut |f| tx.send(f).is_ok()));
    let mut local = rx.into_iter().peekable();
    for entry in reader {
        let entry = entry?;
        // What the directory holds before this entry, the set does not.
        while let Some(Ok(f)) = local.peek() {
            if path_order(&f.path, &entry.path) != Ordering::Less {
                break;
            }
            let extra = local.next().expect("peeked").expect("checked");
            summary.problem(&extra.path, "in the directory, not in the set");
        }
        let here = match local.peek() {
            Some(Ok(f)) if f.path == entry.path => local.next().expect("peeked").ok(),
            Some(Err(_)) => {
                let e = local.next().expect("peeked").expect_err("checked");
                summary.problem(&e.path, format!("cannot list: {}", e.message));
                None
            }
            _ => None,
        };
        let Some(here) = here else {
            summary.problem(&entry.path, "in the set, not in the directory");
            continue;
        };
        let meta = std::fs::symlink_metadata(&here.full).map_err(|e| e.to_string())?;
        match entry.kind {
            Kind::Dir if !meta.is_dir() => summary.problem(&entry.path, "not a directory"),
            Kind::Symlink => {
                let target = std::fs::read_link(&here.full)
                    .map(|t| t.into_os_string().into_encoded_bytes())
                    .ok();
                if target != entry.target {
                    summary.problem(&entry.path, "a different symlink");
                }
            }
            Kind::File => match std::fs::read(&here.full) {
                Ok(bytes) if Some(hex(&Sha256::digest(&bytes))) == entry.sha256 => {}
                Ok(_) => summary.problem(&entry.path, "its content differs from the set's"),
                Err(e) => summary.problem(&entry.path, format!("unreadable: {e}")),
            },
            Kind::Dir => {}
        }
    }
    for rest in local {
        match rest {
            Ok(extra) => summary.problem(&extra.path, "in the directory, not in the set"),
            Err(e) => summary.problem(&e.path, format!("cannot list: {}", e.message)),
        }
    }
    let _ = walker.join();
    Ok(())
}
