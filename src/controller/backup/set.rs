//! What a backup set is made of outside the cluster, and their names: the manual RDS
//! snapshot, the documents manifest, the set manifest, the documents Job. Every name is
//! a function of the clinic's uid and the set's name, so a restarted operator (or a
//! second one) finds what an earlier run made instead of making it twice.
//!
//! The set manifest, `backups/<set>/manifest.json` in the clinic's bucket, is written last
//! and never over (`If-None-Match: *`): its presence means the set is complete, and it
//! holds all a restore in another cluster needs (the clinic's spec, the snapshot, the
//! documents manifest, the instants the parts were taken).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::controller::deployment::clinic::{BACKUPS_PREFIX, short_hash};

/// What the set manifest says it is.
pub const FORMAT: &str = "openemr-backup-set";
/// Its version; a reader refuses one it does not know.
pub const VERSION: u32 = 1;

/// A set name the bucket's layout keeps for itself: `backups/documents/` holds the
/// documents manifests of every set.
pub const RESERVED_NAMES: &[&str] = &["documents"];

/// The tag naming the uid of the set a snapshot was taken for: a later set of the same name
/// does not take it for its own.
pub const SET_UID_TAG: &str = "openemr.io/set-uid";

/// RDS's longest snapshot identifier.
const MAX_SNAPSHOT_ID: usize = 255;
/// Kubernetes' longest label value (a Job's name becomes its pods' `job-name` label).
const MAX_JOB_NAME: usize = 63;

/// The set manifest's key.
pub fn set_manifest_key(set: &str) -> String {
    format!("{BACKUPS_PREFIX}{set}/manifest.json")
}

/// Where the documents manifests are (the engine's `--manifests-prefix`).
pub fn documents_manifests_prefix() -> String {
    format!("{BACKUPS_PREFIX}documents/")
}

/// The set's documents manifest's key.
pub fn documents_manifest_key(set: &str) -> String {
    format!("{}{set}.jsonl.gz", documents_manifests_prefix())
}

/// The manual snapshot of set `set` of the clinic whose uid is `clinic_uid`:
/// `openemr-<uid>-<set>`. A set name RDS would refuse (dots, two hyphens in a row, too
/// long) is made fit and given a hash of the original, so two sets never share one.
pub fn snapshot_identifier(clinic_uid: &str, set: &str) -> String {
    let plain = format!("openemr-{clinic_uid}-{set}");
    let fits = plain.len() <= MAX_SNAPSHOT_ID
        && !plain.contains("--")
        && !plain.ends_with('-')
        && plain.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if fits {
        return plain;
    }
    let mut cleaned = String::new();
    for c in plain.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if !(c == '-' && cleaned.ends_with('-')) {
            cleaned.push(c);
        }
    }
    let hash = short_hash(&[set]);
    cleaned.truncate(MAX_SNAPSHOT_ID - hash.len() - 1);
    format!("{}-{hash}", cleaned.trim_end_matches('-'))
}

/// The name of the set policy `policy` takes for the slot `slot`: `<policy>-<YYYYMMDD>-<HHMM>`
/// (UTC), so a restart or a second operator finds the slot's set instead of making another.
/// A policy name too long for that is cut and given a hash of itself.
pub fn scheduled_set_name(policy: &str, slot: chrono::DateTime<chrono::Utc>) -> String {
    const MAX_NAME: usize = 253;
    let stamp = slot.format("%Y%m%d-%H%M").to_string();
    let plain = format!("{policy}-{stamp}");
    if plain.len() <= MAX_NAME {
        return plain;
    }
    let hash = short_hash(&[policy]);
    let keep = MAX_NAME - stamp.len() - hash.len() - 2;
    format!(
        "{}-{hash}-{stamp}",
        policy[..keep].trim_end_matches(['-', '.'])
    )
}

/// The documents Job of set `set`: `<set>-documents`, cut and hashed to fit a label.
pub fn documents_job_name(set: &str) -> String {
    job_name(set, "documents")
}

/// The Job pruning set `set`'s documents: `<set>-prune`, cut and hashed to fit a label.
pub fn prune_job_name(set: &str) -> String {
    job_name(set, "prune")
}

/// The Job copying set `set`'s documents to another region: `<set>-copy`.
pub fn copy_job_name(set: &str) -> String {
    job_name(set, "copy")
}

/// The Job pruning set `set`'s documents in the other region: `<set>-prune-copy`.
pub fn copy_prune_job_name(set: &str) -> String {
    job_name(set, "prune-copy")
}

fn job_name(set: &str, what: &str) -> String {
    let plain = format!("{set}-{what}");
    if plain.len() <= MAX_JOB_NAME {
        return plain;
    }
    let hash = short_hash(&[set]);
    let keep = MAX_JOB_NAME - hash.len() - what.len() - 2;
    format!("{}-{hash}-{what}", set[..keep].trim_end_matches(['-', '.']))
}

/// Who holds the clinic for a `Quiesced` set: `backup-<set>`, or a hash of the set when the
/// hold's Lease name would not fit.
pub fn quiesce_holder(clinic: &str, set: &str) -> String {
    let plain = format!("backup-{set}");
    if crate::controller::deployment::web::holds::lease_name(clinic, &plain).len() <= 253 {
        return plain;
    }
    format!("backup-{}", short_hash(&[set]))
}

/// Who a set belongs to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClinicIdentity {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// The database half, as a restore needs it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DatabasePart {
    pub region: String,
    pub instance_identifier: String,
    pub snapshot_identifier: String,
    pub snapshot_arn: Option<String>,
    pub engine_version: Option<String>,
    pub kms_key_arn: Option<String>,
    /// When the snapshot was asked for: the database's instant in the set.
    pub requested_at: String,
}

/// The documents half.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DocumentsPart {
    pub bucket: String,
    /// The documents manifest (docs/documents.md): what the set's files are.
    pub manifest: String,
    pub files: u64,
    pub bytes: u64,
    /// When the copy started: files are as they were between this and `completedAt`.
    pub started_at: String,
    pub completed_at: String,
}

/// How a `Quiesced` set stopped the clinic: the database and the documents are both as
/// they were while nothing ran.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QuiescePart {
    /// When the hold was placed, in effect (nothing ran), released.
    pub held_at: String,
    pub effective_at: String,
    pub released_at: String,
}

/// `backups/<set>/manifest.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SetManifest {
    pub format: String,
    pub version: u32,
    pub set: String,
    pub clinic: ClinicIdentity,
    /// The policy that made it; none for an on-demand set.
    pub policy: Option<String>,
    /// `CrashConsistent` or `Quiesced`.
    pub consistency: String,
    pub database: DatabasePart,
    /// None for a database-only set: a restore of it keeps or leaves the documents as
    /// the restore asks, and says so.
    pub documents: Option<DocumentsPart>,
    /// A `Quiesced` set's stop (an optional field: a version 1 reader without it still
    /// reads the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesce: Option<QuiescePart>,
    /// The OpenEMR image the clinic ran.
    pub image: Option<String>,
    /// The clinic's spec when the set was taken, so another cluster can rebuild it.
    pub clinic_spec: serde_json::Value,
    pub completed_at: String,
    pub operator_version: String,
    /// In a copy's manifest (in another region's bucket): the set it copies. The rest of
    /// such a manifest names that region's snapshot, bucket and versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_of: Option<CopyOf>,
}

/// The set a copy was made from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CopyOf {
    pub region: String,
    pub bucket: String,
    pub snapshot_arn: Option<String>,
    /// The copy's completion on the operator's clock.
    pub copied_at: String,
}

impl SetManifest {
    /// The bytes written to the bucket.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a manifest serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Reads one, refusing a format or version this operator does not know.
    pub fn from_bytes(bytes: &[u8]) -> Result<SetManifest, String> {
        let manifest: SetManifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not a set manifest: {e}"))?;
        if manifest.format != FORMAT || manifest.version != VERSION {
            return Err(format!(
                "a set manifest of format {:?} version {}, not {FORMAT:?} version {VERSION}",
                manifest.format, manifest.version
            ));
        }
        Ok(manifest)
    }
}

/// The uid of the earlier set of this name `snapshot` was taken for, when its set-uid tag
/// names another set than `set_uid`.
pub fn other_sets_uid<'a>(
    snapshot: &'a crate::aws::rds::DbSnapshot,
    set_uid: &str,
) -> Option<&'a str> {
    snapshot
        .tags
        .get(SET_UID_TAG)
        .map(String::as_str)
        .filter(|uid| *uid != set_uid)
}

/// Tags of a set's snapshot, beside the clinic's own: which set, which policy, and what
/// a restore must be compatible with.
pub fn snapshot_tags(
    clinic_tags: &BTreeMap<String, String>,
    (set, set_uid): (&str, &str),
    policy: Option<&str>,
    engine_version: Option<&str>,
    image: Option<&str>,
) -> BTreeMap<String, String> {
    let mut tags = clinic_tags.clone();
    tags.insert("openemr.io/set".into(), set.into());
    tags.insert(SET_UID_TAG.into(), set_uid.into());
    if let Some(policy) = policy {
        tags.insert("openemr.io/policy".into(), policy.into());
    }
    if let Some(version) = engine_version {
        tags.insert("openemr.io/engine-version".into(), version.into());
    }
    if let Some(image) = image {
        // A tag value holds 256 characters; an image reference may hold more.
        tags.insert("openemr.io/image".into(), image.chars().take(256).collect());
    }
    tags
}

/// Whether `set` is still reading its clinic's live data: started, and its snapshot not
/// yet asked for or its documents not yet copied. An in-place restore (or its rollback)
/// stops the clinic only once no set is: a set taken across the exchange of the clinic's
/// data would pair the database before it with the documents after it.
pub fn reads_live_data(set: &crate::api::OpenEMRBackup) -> bool {
    let Some(status) = set.status.as_ref() else {
        return false;
    };
    status.phase == Some(crate::api::backup::BackupPhase::Running)
        && (status.snapshot_requested_time.is_none()
            || (status.include_documents != Some(false)
                && status.documents_completion_time.is_none()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b6c3f0e-8a61-4d0c-9d1e-1f2a3b4c5d6e";

    /// A set reads the clinic's live data from its start until its snapshot is asked for
    /// and its documents are copied (the documents only if it holds them).
    #[test]
    fn a_set_reads_the_live_data_until_it_has_its_parts() {
        use crate::api::backup::{BackupPhase, OpenEMRBackupStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let at = Time("2026-12-02T10:00:00Z".parse().unwrap());
        let set = |status: OpenEMRBackupStatus| {
            let mut set: crate::api::OpenEMRBackup = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "nightly-1"},
                "spec": {"deploymentRef": {"name": "clinic-a"}},
            }))
            .unwrap();
            set.status = Some(status);
            reads_live_data(&set)
        };
        let running = OpenEMRBackupStatus {
            phase: Some(BackupPhase::Running),
            include_documents: Some(true),
            ..Default::default()
        };
        assert!(set(running.clone()));
        let asked = OpenEMRBackupStatus {
            snapshot_requested_time: Some(at.clone()),
            ..running.clone()
        };
        assert!(set(asked.clone()), "the documents are still being copied");
        assert!(!set(OpenEMRBackupStatus {
            documents_completion_time: Some(at.clone()),
            ..asked.clone()
        }));
        assert!(!set(OpenEMRBackupStatus {
            include_documents: Some(false),
            ..asked.clone()
        }));
        assert!(!set(OpenEMRBackupStatus {
            phase: Some(BackupPhase::Completed),
            ..running
        }));
    }

    #[test]
    fn a_plain_set_name_is_the_snapshots_as_is() {
        assert_eq!(
            snapshot_identifier(UID, "nightly-20261201-0300"),
            format!("openemr-{UID}-nightly-20261201-0300")
        );
    }

    #[test]
    fn names_rds_would_refuse_are_made_fit_and_stay_distinct() {
        let dotted = snapshot_identifier(UID, "before.upgrade");
        let hyphens = snapshot_identifier(UID, "before--upgrade");
        let plain = snapshot_identifier(UID, "before-upgrade");
        for id in [&dotted, &hyphens] {
            assert!(
                id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !id.contains("--")
                    && !id.ends_with('-'),
                "{id}"
            );
        }
        assert_ne!(dotted, hyphens);
        assert_ne!(dotted, plain);
        let long = "a".repeat(253);
        let id = snapshot_identifier(UID, &long);
        assert!(id.len() <= 255, "{}", id.len());
        assert_ne!(id, snapshot_identifier(UID, &"a".repeat(252)));
    }

    #[test]
    fn a_slot_names_its_set_and_the_name_fits_rds_with_the_clinics_uid() {
        use chrono::TimeZone;
        let slot = chrono::Utc.with_ymd_and_hms(2026, 12, 1, 3, 0, 0).unwrap();
        let name = scheduled_set_name("nightly", slot);
        assert_eq!(name, "nightly-20261201-0300");
        assert_eq!(
            snapshot_identifier(UID, &name),
            format!("openemr-{UID}-nightly-20261201-0300")
        );
        let long = scheduled_set_name(&"p".repeat(250), slot);
        assert!(
            long.len() <= 253 && long.ends_with("-20261201-0300"),
            "{long}"
        );
        assert_ne!(long, scheduled_set_name(&"p".repeat(249), slot));
    }

    #[test]
    fn job_names_fit_a_label_and_stay_distinct() {
        assert_eq!(documents_job_name("set-1"), "set-1-documents");
        assert_eq!(prune_job_name("set-1"), "set-1-prune");
        let long = prune_job_name(&"x".repeat(80));
        assert!(long.len() <= 63 && long.ends_with("-prune"), "{long}");
        let a = documents_job_name(&format!("{}-a", "x".repeat(60)));
        let b = documents_job_name(&format!("{}-b", "x".repeat(60)));
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b);
    }

    #[test]
    fn the_keys_of_a_set() {
        assert_eq!(set_manifest_key("s"), "backups/s/manifest.json");
        assert_eq!(documents_manifest_key("s"), "backups/documents/s.jsonl.gz");
    }

    #[test]
    fn a_manifest_round_trips_and_an_unknown_version_is_refused() {
        let manifest = SetManifest {
            format: FORMAT.into(),
            version: VERSION,
            set: "s".into(),
            clinic: ClinicIdentity {
                cluster: "c".into(),
                namespace: "ns".into(),
                name: "clinic".into(),
                uid: UID.into(),
            },
            policy: None,
            consistency: "CrashConsistent".into(),
            database: DatabasePart {
                region: "us-east-1".into(),
                instance_identifier: "db".into(),
                snapshot_identifier: "snap".into(),
                snapshot_arn: None,
                engine_version: Some("8.0.40".into()),
                kms_key_arn: None,
                requested_at: "2026-12-01T03:00:00Z".into(),
            },
            documents: None,
            quiesce: None,
            image: Some("openemr/openemr:7.0.3".into()),
            clinic_spec: serde_json::json!({"aws": {"region": "us-east-1"}}),
            completed_at: "2026-12-01T03:10:00Z".into(),
            operator_version: "0.1.0".into(),
            copy_of: None,
        };
        assert_eq!(
            SetManifest::from_bytes(&manifest.to_bytes()).unwrap(),
            manifest
        );
        // Written without the optional quiesce part: it reads as none.
        let mut bytes: serde_json::Value = serde_json::from_slice(&manifest.to_bytes()).unwrap();
        assert!(bytes.get("quiesce").is_none());
        bytes["quiesce"] = serde_json::json!({
            "heldAt": "2026-12-01T03:00:00Z",
            "effectiveAt": "2026-12-01T03:00:20Z",
            "releasedAt": "2026-12-01T03:02:00Z",
        });
        let quiesced = SetManifest::from_bytes(&serde_json::to_vec(&bytes).unwrap()).unwrap();
        assert_eq!(
            quiesced.quiesce.unwrap().released_at,
            "2026-12-01T03:02:00Z"
        );
        let mut later = manifest.clone();
        later.version = VERSION + 1;
        assert!(
            SetManifest::from_bytes(&later.to_bytes())
                .unwrap_err()
                .contains("version 2")
        );
    }
}
