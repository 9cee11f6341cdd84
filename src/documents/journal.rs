//! The journal of a backup in progress: what it has stored so far, so that the run after a
//! killed one (a Job's next pod, same set) does not send it again. Every `--journal-every`
//! stored files, their entries go to a chunk `<manifest key>.journal/<n>` (a small
//! manifest of their own). A run starts by listing the chunks of its set (one
//! `ListObjectsV2`, nothing there after a clean run) and reuses each journaled file whose
//! size and mtime are still the same. The chunks go once the set's manifest is written. At
//! most the files stored since the last chunk, and those in flight, are sent again.

use std::collections::HashMap;
use std::path::Path;

use super::manifest::{self, Entry, Header};
use super::store::Store;

/// What follows a set's manifest key in its chunks' keys.
pub const MARK: &str = ".journal/";

/// The manifest key of the set a journal chunk is of, if `key` is a chunk's.
pub fn set_of_chunk(key: &str) -> Option<&str> {
    key.rfind(MARK).map(|at| &key[..at])
}

/// Stored files per chunk, by default.
pub const DEFAULT_EVERY: usize = 256;

pub struct Journal {
    prefix: String,
    header: Header,
    every: usize,
    next: usize,
    pending: Vec<Entry>,
    /// Every chunk of this set, earlier runs' (their versions unknown) and this one's.
    chunks: Vec<(String, Option<String>)>,
}

impl Journal {
    /// The journal of the set whose manifest is `manifest_key`, and the files an earlier,
    /// killed run of it stored (by path).
    pub async fn open(
        store: &Store,
        manifest_key: &str,
        header: Header,
        every: usize,
        work_dir: &Path,
    ) -> Result<(Journal, HashMap<Vec<u8>, Entry>), String> {
        let prefix = format!("{manifest_key}{MARK}");
        let chunks: Vec<String> = store
            .list_keys(&prefix)
            .await
            .map_err(|e| e.to_string())?
            .into_keys()
            .collect();
        let mut stored = HashMap::new();
        for key in &chunks {
            let file = store.fetch_manifest(key, work_dir).await?;
            // A chunk cut short (its run killed while writing it) is only lost work.
            if let Ok(reader) = manifest::Reader::new(file) {
                for entry in reader.flatten() {
                    stored.insert(entry.path.clone(), entry);
                }
            }
        }
        let journal = Journal {
            prefix,
            header,
            every: every.max(1),
            next: chunks.len(),
            pending: Vec::new(),
            chunks: chunks.into_iter().map(|key| (key, None)).collect(),
        };
        Ok((journal, stored))
    }

    /// Notes a stored file; true when a chunk is due.
    pub fn push(&mut self, entry: &Entry) -> bool {
        self.pending.push(entry.clone());
        self.pending.len() >= self.every
    }

    /// Writes the pending entries as one chunk.
    pub async fn flush(&mut self, store: &Store) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut writer =
            manifest::Writer::new(Vec::new(), &self.header).map_err(|e| e.to_string())?;
        for entry in self.pending.drain(..) {
            writer.push(&entry).map_err(|e| e.to_string())?;
        }
        let (_, bytes) = writer.finish(Vec::new()).map_err(|e| e.to_string())?;
        let key = format!("{}{:08}", self.prefix, self.next);
        let sha256 = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
        let version = store
            .put(&key, bytes, &sha256)
            .await
            .map_err(|e| format!("writing the journal: {e}"))?;
        self.next += 1;
        self.chunks.push((key, Some(version)));
        Ok(())
    }

    /// Removes every chunk (the set's manifest is written): this run's by their versions,
    /// up to 1,000 a request; an earlier run's, whose versions it never learnt, one by one.
    /// A chunk left behind is only clutter: the sweep removes it.
    pub async fn close(self, store: &Store) {
        let mut batch = Vec::new();
        for (key, version) in self.chunks {
            match version {
                Some(version) => {
                    batch.push((key, version));
                    if batch.len() >= super::prune::MAX_BATCH {
                        let _ = super::prune::delete_versions(store, &mut batch).await;
                    }
                }
                None => {
                    let _ = store.delete_every_version(&key).await;
                }
            }
        }
        let _ = super::prune::delete_versions(store, &mut batch).await;
    }
}
