//! `documents restore`: one set, by its manifest, into a directory.
//!
//! Into an empty (or absent) directory unless told to overwrite. Every path is checked to
//! stay under the directory (a manifest may come from another cluster). Files are fetched
//! many at once, each version by its id, written beside its final name, checked against
//! the manifest's SHA-256, given its mode, owner (with `--owners`, which needs the right to
//! change them: OpenEMR's image expects its web server's user on `sites/`) and mtime, then
//! renamed into place. Directories get their modes, owners and mtimes last, deepest first,
//! once nothing is written into them any more. Symlinks are made as recorded (their own
//! mtime is not set: Rust's standard library has no `lutimes`).

use std::fs::{File, FileTimes, Permissions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, chown, lchown, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;

use super::backup::{hex, mirror_key};
use super::manifest::{self, Entry, Kind, check_path};
use super::store::Store;
use super::walk::local;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub manifest_key: String,
    pub into: PathBuf,
    pub concurrency: usize,
    /// Give files, directories and symlinks their recorded owners.
    pub owners: bool,
    /// Write into a directory that is not empty, replacing what is in the way.
    pub overwrite: bool,
    pub work_dir: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSummary {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub duration_ms: u64,
}

fn when(mtime: (i64, u32)) -> SystemTime {
    if mtime.0 >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(mtime.0 as u64, mtime.1)
    } else {
        SystemTime::UNIX_EPOCH - Duration::new(mtime.0.unsigned_abs(), 0)
            + Duration::new(0, mtime.1)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// Restores the set of `options.manifest_key`.
pub async fn restore(store: &Store, options: &RestoreOptions) -> Result<RestoreSummary, String> {
    let started = Instant::now();
    let into = &options.into;
    if into.exists() {
        let occupied = std::fs::read_dir(into).map_err(io(into))?.next().is_some();
        if occupied && !options.overwrite {
            return Err(format!(
                "{} is not empty: restore into an empty directory, or pass --overwrite",
                into.display()
            ));
        }
    } else {
        std::fs::create_dir_all(into).map_err(io(into))?;
    }
    let file = store
        .fetch_manifest(&options.manifest_key, &options.work_dir)
        .await?;
    let mut reader = manifest::Reader::new(file)?;
    let prefix = reader.header.prefix.clone();

    let mut summary = RestoreSummary::default();
    let mut dirs: Vec<Entry> = Vec::new();
    let mut fetching = FuturesUnordered::new();
    for entry in reader.by_ref() {
        let entry = entry?;
        check_path(&entry.path)?;
        let path = local(into, &entry.path);
        match entry.kind {
            Kind::Dir => {
                match std::fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => {
                        std::fs::remove_file(&path).map_err(io(&path))?;
                        std::fs::create_dir(&path).map_err(io(&path))?;
                    }
                    Err(_) => std::fs::create_dir(&path).map_err(io(&path))?,
                }
                summary.dirs += 1;
                dirs.push(entry);
            }
            Kind::Symlink => {
                if std::fs::symlink_metadata(&path).is_ok() {
                    std::fs::remove_file(&path).map_err(io(&path))?;
                }
                let target =
                    std::ffi::OsStr::from_bytes(entry.target.as_deref().unwrap_or_default());
                symlink(target, &path).map_err(io(&path))?;
                if options.owners {
                    lchown(&path, Some(entry.uid), Some(entry.gid)).map_err(io(&path))?;
                }
                summary.symlinks += 1;
            }
            Kind::File => {
                summary.files += 1;
                summary.bytes += entry.size;
                fetching.push(fetch(
                    store.clone(),
                    prefix.clone(),
                    entry,
                    path,
                    options.owners,
                ));
                while fetching.len() >= options.concurrency {
                    fetching.next().await.expect("not empty")?;
                }
            }
        }
    }
    while let Some(done) = fetching.next().await {
        done?;
    }
    if reader.totals.is_none() {
        return Err("the manifest is truncated (no trailer)".into());
    }
    // Deepest first: setting a directory's mtime after its contents keeps it.
    for dir in dirs.iter().rev() {
        let path = local(into, &dir.path);
        std::fs::set_permissions(&path, Permissions::from_mode(dir.mode)).map_err(io(&path))?;
        if options.owners {
            chown(&path, Some(dir.uid), Some(dir.gid)).map_err(io(&path))?;
        }
        File::open(&path)
            .and_then(|f| f.set_times(FileTimes::new().set_modified(when(dir.mtime))))
            .map_err(io(&path))?;
    }
    summary.duration_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

/// One file: fetched beside its place, checked, given its metadata, moved into place.
async fn fetch(
    store: Store,
    prefix: String,
    entry: Entry,
    path: PathBuf,
    owners: bool,
) -> Result<(), String> {
    let name = path
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_default();
    let mut partial = b".".to_vec();
    partial.extend_from_slice(&name);
    partial.extend_from_slice(b".oe-restore");
    let partial = path.with_file_name(std::ffi::OsStr::from_bytes(&partial));
    let key = mirror_key(&prefix, &entry.path);
    let sha256 = store
        .get_to(&key, entry.version.as_deref(), &partial)
        .await
        .map_err(|e| e.to_string())?;
    let expected = entry.sha256.as_deref().unwrap_or_default();
    if hex(&sha256) != expected {
        let _ = std::fs::remove_file(&partial);
        return Err(format!(
            "{}: version {} of {key} does not match the manifest's SHA-256",
            String::from_utf8_lossy(&entry.path),
            entry.version.as_deref().unwrap_or("?")
        ));
    }
    // The times first: a read-only mode would refuse the handle that sets them.
    File::options()
        .write(true)
        .open(&partial)
        .and_then(|f| f.set_times(FileTimes::new().set_modified(when(entry.mtime))))
        .map_err(io(&partial))?;
    if owners {
        chown(&partial, Some(entry.uid), Some(entry.gid)).map_err(io(&partial))?;
    }
    std::fs::set_permissions(&partial, Permissions::from_mode(entry.mode)).map_err(io(&partial))?;
    std::fs::rename(&partial, &path).map_err(io(&path))
}
