//! The cluster lost, the sets are not: a policy finds in its clinic's bucket the set
//! manifests (`backups/<set>/manifest.json`) no record stands for (a new cluster; records
//! deleted without asking for their data to go), and makes their records again, annotated
//! `openemr.io/rebuilt-from`. Such a record never takes a set: the set controller describes
//! it from its manifest (`Completed`, its snapshot, its documents, its instants), and
//! retention and pruning treat it as any set of the policy. Sets of a former incarnation
//! of the clinic (another uid or cluster) are the clinic's own: the bucket is the clinic's.
//!
//! The bucket is read at the policy's first look after the operator starts and then at
//! most once a resync: one `ListObjectsV2` page per 1,000 sets (the set directories, by
//! delimiter), and one GET per set manifest without a record.

use std::collections::{BTreeSet, HashMap};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::api::ConsistencyMode;
use crate::api::backup::REBUILT_FROM_ANNOTATION;
use crate::aws::error::AwsError;
use crate::controller::backup::set::{self, SetManifest};
use crate::controller::deployment::clinic::BACKUPS_PREFIX;

/// When each policy (by uid) last read its bucket, in this process: a restarted operator
/// reads again at once.
static LAST_READ: LazyLock<Mutex<HashMap<String, Instant>>> = LazyLock::new(Default::default);

/// Whether policy `uid` is due to read its bucket (and, if so, the read is counted as done
/// now: a failed read waits for the next period too, and says so).
pub fn due(uid: &str, every: Duration) -> bool {
    let mut last = LAST_READ.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    match last.get(uid) {
        Some(at) if now.duration_since(*at) < every => false,
        _ => {
            last.insert(uid.to_string(), now);
            true
        }
    }
}

/// Whether policy `uid` has not read its bucket yet in this process.
pub fn pending(uid: &str) -> bool {
    !LAST_READ
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(uid)
}

/// A set the bucket holds and no record stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct Unrecorded {
    pub manifest: SetManifest,
    /// `s3://bucket/backups/<set>/manifest.json`.
    pub from: String,
}

/// The sets in `bucket` without a record among `records`: their manifests, read.
pub async fn unrecorded(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    records: &BTreeSet<String>,
) -> Result<Vec<Unrecorded>, AwsError> {
    let mut found = Vec::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(BACKUPS_PREFIX)
            .delimiter("/")
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("s3", "ListObjectsV2", e))?;
        for dir in page.common_prefixes() {
            let Some(set) = dir
                .prefix()
                .and_then(|p| p.strip_prefix(BACKUPS_PREFIX))
                .and_then(|p| p.strip_suffix('/'))
            else {
                continue;
            };
            if set::RESERVED_NAMES.contains(&set) || records.contains(set) {
                continue;
            }
            let key = set::set_manifest_key(set);
            let object = match s3.get_object().bucket(bucket).key(&key).send().await {
                Ok(object) => object,
                // A set under way has no manifest yet: nothing to rebuild.
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => continue,
                Err(e) => return Err(AwsError::from_sdk("s3", "GetObject", e)),
            };
            let Ok(bytes) = object.body.collect().await.map(|b| b.into_bytes()) else {
                continue;
            };
            // Not a manifest this operator reads (another format, a newer version): left
            // alone, as anything else in the bucket.
            let Ok(manifest) = SetManifest::from_bytes(&bytes) else {
                continue;
            };
            if manifest.set == set {
                found.push(Unrecorded {
                    manifest,
                    from: format!("s3://{bucket}/{key}"),
                });
            }
        }
        match page.next_continuation_token() {
            Some(next) => token = Some(next.to_string()),
            None => return Ok(found),
        }
    }
}

/// The record of set `u` for `policy` of `clinic`, if it is one of the policy's own (made
/// by it) or an on-demand set of the clinic: any policy of the clinic brings those back.
pub fn record(
    namespace: &str,
    clinic: &str,
    policy: &str,
    u: &Unrecorded,
) -> Option<serde_json::Value> {
    let m = &u.manifest;
    if m.clinic.name != clinic || m.policy.as_deref().is_some_and(|p| p != policy) {
        return None;
    }
    let consistency = if m.consistency == "Quiesced" {
        ConsistencyMode::Quiesced
    } else {
        ConsistencyMode::CrashConsistent
    };
    let mut spec = serde_json::json!({
        "deploymentRef": {"name": clinic},
        "consistency": consistency,
        "includeDocuments": m.documents.is_some(),
    });
    if let Some(policy) = &m.policy {
        spec["policyRef"] = serde_json::json!({ "name": policy });
    }
    Some(serde_json::json!({
        "apiVersion": "openemr.io/v1alpha1",
        "kind": "OpenEMRBackup",
        "metadata": {
            "name": m.set,
            "namespace": namespace,
            "annotations": {REBUILT_FROM_ANNOTATION: u.from},
        },
        "spec": spec,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(set: &str, clinic: &str, policy: Option<&str>) -> Unrecorded {
        let manifest: SetManifest = serde_json::from_value(serde_json::json!({
            "format": set::FORMAT, "version": set::VERSION, "set": set,
            "clinic": {"cluster": "old", "namespace": "gone", "name": clinic, "uid": "u-old"},
            "policy": policy, "consistency": "CrashConsistent",
            "database": {"region": "us-east-1", "instanceIdentifier": "db",
                "snapshotIdentifier": "s", "snapshotArn": null, "engineVersion": null,
                "kmsKeyArn": null, "requestedAt": "2027-01-05T00:00:00Z"},
            "documents": null, "image": null, "clinicSpec": {},
            "completedAt": "2027-01-05T00:10:00Z", "operatorVersion": "0.1.0",
        }))
        .unwrap();
        Unrecorded {
            manifest,
            from: format!("s3://b/backups/{set}/manifest.json"),
        }
    }

    #[test]
    fn a_policy_brings_back_its_own_sets_and_the_clinics_on_demand_ones() {
        let own = record(
            "ns",
            "clinic-a",
            "nightly",
            &found("nightly-1", "clinic-a", Some("nightly")),
        )
        .unwrap();
        assert_eq!(own["spec"]["policyRef"]["name"], "nightly");
        assert_eq!(own["spec"]["includeDocuments"], false);
        assert_eq!(
            own["metadata"]["annotations"][REBUILT_FROM_ANNOTATION],
            "s3://b/backups/nightly-1/manifest.json"
        );
        let by_hand = record(
            "ns",
            "clinic-a",
            "nightly",
            &found("before-upgrade", "clinic-a", None),
        )
        .unwrap();
        assert!(by_hand["spec"].get("policyRef").is_none());
        assert!(
            record(
                "ns",
                "clinic-a",
                "nightly",
                &found("weekly-1", "clinic-a", Some("weekly"))
            )
            .is_none()
        );
        assert!(record("ns", "clinic-a", "nightly", &found("x", "clinic-b", None)).is_none());
    }

    #[test]
    fn the_bucket_is_read_at_the_first_look_then_once_a_period() {
        let uid = format!("policy-{}", std::process::id());
        assert!(due(&uid, Duration::from_secs(600)));
        assert!(!due(&uid, Duration::from_secs(600)));
        assert!(due(&uid, Duration::ZERO));
    }
}
