//! `documents sweep`: deletes the mirror's versions that no set references, left by runs
//! that were killed or lost their lock. What it never deletes:
//!
//! - a version any manifest under the manifests' prefix references (it names none: every
//!   manifest there counts, so nothing needs to be listed by hand);
//! - a version the journal of an unfinished set references while that journal is alive:
//!   its newest chunk younger than the grace period (the set's next run will reuse them);
//! - a key's latest version or delete marker: the mirror's newest state, what `aws s3 sync`
//!   of it gives;
//! - anything stored within the grace period.
//!
//! It holds the mirror's lock, as backups and prunes do, so no backup runs while it looks.
//! A backup that lost its lock (its lease lapsed while it was stalled) stops within a
//! third of a lease of waking; the grace period, at least two leases, covers what it sent
//! meanwhile. A journal that is not alive is deleted before the versions it names, so a
//! later run never resumes from a version that is gone. Reading every manifest costs their
//! size in downloads, and memory of 16 bytes per distinct referenced version.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::backup::mirror_key;
use super::journal;
use super::manifest::{self, Kind};
use super::prune::{MAX_BATCH, delete_versions};
use super::store::Store;

#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Where the manifests (and unfinished sets' journals) are.
    pub manifests_prefix: String,
    /// The mirror's prefix.
    pub prefix: String,
    /// Nothing stored more recently than this is deleted, and a journal whose newest
    /// chunk is younger is alive.
    pub grace: Duration,
    pub lock_lease: Duration,
    pub holder: String,
    pub batch: usize,
    pub work_dir: std::path::PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SweepSummary {
    pub manifests: u64,
    /// Journals of unfinished sets still alive, whose versions were spared.
    pub journals_alive: u64,
    /// Journals deleted: of sets given up on more than the grace period ago, or finished.
    pub journals_deleted: u64,
    pub versions_listed: u64,
    pub versions_referenced: u64,
    pub versions_latest: u64,
    pub versions_recent: u64,
    pub versions_deleted: u64,
    pub duration_ms: u64,
}

/// A (key, version) as the sweep remembers it: 128 bits of their SHA-256. Two distinct
/// pairs that collide only keep a version longer.
fn fingerprint(key: &str, version: &str) -> u128 {
    let digest = Sha256::new()
        .chain_update(key.as_bytes())
        .chain_update([0])
        .chain_update(version.as_bytes())
        .finalize();
    u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"))
}

/// The shortest grace period a sweep accepts for a lock lease.
pub fn least_grace(lock_lease: Duration) -> Duration {
    lock_lease * 2
}

/// Sweeps while holding the mirror's lock.
pub async fn sweep(store: &Store, options: &SweepOptions) -> Result<SweepSummary, String> {
    if options.grace < least_grace(options.lock_lease) {
        return Err(format!(
            "a grace period of {:?} is shorter than twice the lock's lease ({:?}): a backup that lost its lock could still be sending",
            options.grace, options.lock_lease
        ));
    }
    super::backup::with_mirror_lock(
        store,
        &options.prefix,
        &options.holder,
        options.lock_lease,
        async |still_held: &(dyn Fn() -> bool + Sync)| {
            sweep_holding(store, options, still_held).await
        },
    )
    .await
}

async fn sweep_holding(
    store: &Store,
    options: &SweepOptions,
    still_held: &(dyn Fn() -> bool + Sync),
) -> Result<SweepSummary, String> {
    let started = Instant::now();
    // S3 stamps versions with real time, so the operator's (test-movable) clock is not it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs() as i64;
    let horizon = now - options.grace.as_secs().max(1) as i64;
    let mut summary = SweepSummary::default();
    let listed = store
        .list_keys(&options.manifests_prefix)
        .await
        .map_err(|e| e.to_string())?;
    let mut journals: BTreeMap<&str, Vec<(&String, i64)>> = BTreeMap::new();
    let mut manifests = Vec::new();
    for (key, stored) in &listed {
        match journal::set_of_chunk(key) {
            Some(set) => journals.entry(set).or_default().push((key, *stored)),
            None => manifests.push(key),
        }
    }

    let mut referenced: HashSet<u128> = HashSet::new();
    let mut remember = |file: std::fs::File, key: &str| -> Result<(), String> {
        let reader = manifest::Reader::new(file).map_err(|e| format!("{key}: {e}"))?;
        if reader.header.prefix != options.prefix {
            return Err(format!(
                "{key} is of another mirror ({}, not {})",
                reader.header.prefix, options.prefix
            ));
        }
        for entry in reader {
            let entry = entry.map_err(|e| format!("{key}: {e}"))?;
            if entry.kind == Kind::File
                && let Some(version) = &entry.version
            {
                referenced.insert(fingerprint(
                    &mirror_key(&options.prefix, &entry.path),
                    version,
                ));
            }
        }
        Ok(())
    };
    for key in &manifests {
        let file = store.fetch_manifest(key, &options.work_dir).await?;
        remember(file, key)?;
        summary.manifests += 1;
    }
    for (set, chunks) in &journals {
        let newest = chunks.iter().map(|(_, at)| *at).max().unwrap_or(0);
        let finished = listed.contains_key(*set);
        if newest > horizon && !finished {
            for (chunk, _) in chunks {
                let file = store.fetch_manifest(chunk, &options.work_dir).await?;
                // A chunk cut short is only lost work to its set's next run; what it names
                // before the cut is spared all the same.
                let _ = remember(file, chunk);
            }
            summary.journals_alive += 1;
        } else {
            if !still_held() {
                return Err(lost());
            }
            for (chunk, _) in chunks {
                store
                    .delete_every_version(chunk)
                    .await
                    .map_err(|e| format!("deleting the journal {chunk}: {e}"))?;
            }
            summary.journals_deleted += 1;
        }
    }

    let mut batch = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = store
            .versions_page(&options.prefix, after)
            .await
            .map_err(|e| e.to_string())?;
        for version in page {
            summary.versions_listed += 1;
            if version.latest {
                summary.versions_latest += 1;
            } else if !version.delete_marker
                && referenced.contains(&fingerprint(&version.key, &version.version))
            {
                summary.versions_referenced += 1;
            } else if version.stored > horizon {
                summary.versions_recent += 1;
            } else {
                batch.push((version.key, version.version));
                if batch.len() >= options.batch.clamp(1, MAX_BATCH) {
                    if !still_held() {
                        return Err(lost());
                    }
                    summary.versions_deleted += delete_versions(store, &mut batch).await?;
                }
            }
        }
        match next {
            Some(markers) => after = Some(markers),
            None => break,
        }
    }
    if !still_held() {
        return Err(lost());
    }
    summary.versions_deleted += delete_versions(store, &mut batch).await?;
    summary.duration_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

fn lost() -> String {
    "lost the mirror's lock (its lease lapsed): stopped; run again".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_key_and_version_apart() {
        assert_ne!(fingerprint("a", "bc"), fingerprint("ab", "c"));
        assert_eq!(fingerprint("k", "v"), fingerprint("k", "v"));
        assert_eq!(
            least_grace(Duration::from_secs(600)),
            Duration::from_secs(1200)
        );
    }
}
