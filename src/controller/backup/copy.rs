//! A completed set's copy to its policy's disaster-recovery region, planned from what was
//! observed (pure):
//!
//! 1. `Queued` while that region already has [`MAX_COPIES_IN_FLIGHT`] snapshot copies of
//!    this operator in flight (RDS's limit per destination region), or while its manual
//!    snapshots are at `--manual-snapshot-quota` (a copy counts there, not here);
//! 2. the snapshot is copied with `CopyDBSnapshot` called in that region, with its key
//!    (the same every time, so RDS copies incrementally), under the set's own snapshot
//!    identifier; at the same time a Job copies the documents into the bucket there
//!    (`documents copy`, which copies only what the previous copy there lacks);
//! 3. once the copied snapshot is `available` and the Job has succeeded, the copy's
//!    manifest is written there: the set's manifest with that region's snapshot ARN, key,
//!    bucket and documents manifest, so that region alone restores the set. Seen there, the
//!    copy is `Completed`.
//!
//! Every step finds what an earlier run did (the snapshot by its identifier, the Job by
//! its name, the manifest by its key) before doing it again. A copy that fails leaves the
//! set `Completed` in its own region, with `Copied=False` naming why.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::job::{DocumentsJob, Task};
use super::plan::{Change, JobSeen, Outcome, SNAPSHOT_FAILED};
use super::set::{self, SetManifest};
use crate::api::backup::{CopyPhase, DocumentsLocation, RegionCopy, SnapshotRef};
use crate::aws::rds::DbSnapshot;
use crate::conditions::Verdict;

/// The condition saying where the set's copy to another region is.
pub const COPIED: &str = "Copied";

/// RDS copies at most this many snapshots into one region at once (per account).
pub const MAX_COPIES_IN_FLIGHT: usize = 20;

/// Tag on a copied snapshot: the snapshot it is a copy of.
pub const COPY_OF_TAG: &str = "openemr.io/copy-of";

/// What a copy is planned from.
#[derive(Debug, Clone)]
pub struct CopySteps {
    pub set: String,
    pub set_uid: String,
    pub namespace: String,
    pub clinic: String,
    /// The clinic's region and bucket: the set's own.
    pub source_region: String,
    pub source_bucket: String,
    /// The set's snapshot, as its region lists it (its ARN and tags).
    pub source_snapshot: Option<DbSnapshot>,
    /// The set's documents manifest, when it has documents.
    pub source_documents: Option<String>,
    /// The copied snapshot, as the other region lists it.
    pub snapshot: Option<DbSnapshot>,
    /// The copy's request is recorded as in flight: it may not have reached RDS.
    pub snapshot_in_flight: bool,
    /// Manual snapshots the other region holds (`None`: not counted).
    pub manual_snapshots: Option<usize>,
    pub snapshot_quota: u32,
    /// Whether this copy may start now: fewer than [`MAX_COPIES_IN_FLIGHT`] copies are in
    /// flight to that region, this one included once admitted; and how many there are.
    pub admitted: bool,
    pub in_flight: usize,
    pub job: JobSeen,
    /// The previous set's copy's documents manifest there: what it holds is not copied.
    pub previous_documents: Option<String>,
    /// The set's own manifest, read once both parts are copied (to write the copy's).
    pub source_manifest: Option<Result<SetManifest, String>>,
    /// The copy's manifest is in the bucket there.
    pub manifest_written: bool,
    pub documents_image: String,
    pub service_account: String,
    pub job_backoff_limit: i32,
    pub job_deadline_seconds: i64,
}

/// Plans the next step of `copy`, updated in place.
pub fn next(steps: &CopySteps, copy: &mut RegionCopy, now: Timestamp) -> Outcome {
    let mut out = Outcome {
        verdicts: Vec::new(),
        changes: Vec::new(),
        busy: true,
    };
    let region = copy.region.clone();
    let identifier = copy
        .database
        .as_ref()
        .map(|d| d.identifier.clone())
        .or_else(|| steps.source_snapshot.as_ref().map(|s| s.identifier.clone()))
        .unwrap_or_default();
    let mut database = copy.database.clone().unwrap_or(SnapshotRef {
        identifier: identifier.clone(),
        ..SnapshotRef::default()
    });
    let requested = database.status.is_some();
    if region == steps.source_region {
        return failed(
            copy,
            out,
            format!(
                "spec.crossRegionCopy.region of policy is {region}, the clinic's own region: a copy must be in another region"
            ),
        );
    }
    if !requested {
        if let Some(count) = steps.manual_snapshots
            && count + 1 > steps.snapshot_quota as usize
        {
            // Nothing is pruned early to make room: it waits for room, and says so.
            return queued(
                copy,
                out,
                "SnapshotQuotaExceeded",
                format!(
                    "{region} holds {count} manual DB snapshots and the quota is {} (--manual-snapshot-quota): the copy waits until there is room. Delete snapshots no set needs there, or raise the quota (Service Quotas, RDS \"Manual DB instance snapshots\") and the flag with it",
                    steps.snapshot_quota
                ),
            );
        }
        if !steps.admitted {
            return queued(
                copy,
                out,
                "CopyQueued",
                format!(
                    "{} snapshot copies are in flight to {region}, RDS's most at once: this one waits its turn",
                    steps.in_flight
                ),
            );
        }
    }
    copy.phase = Some(CopyPhase::Copying);
    copy.message = None;
    match &steps.snapshot {
        None if database.arn.is_some() => {
            copy.database = Some(database);
            return failed(
                copy,
                out,
                format!("the copied snapshot {identifier} in {region} was deleted"),
            );
        }
        None if requested && !steps.snapshot_in_flight => {}
        None => {
            let Some(source) = &steps.source_snapshot else {
                return failed(
                    copy,
                    out,
                    format!("the set's snapshot {identifier} is gone: there is nothing to copy"),
                );
            };
            let Some(source_arn) = source.arn.clone() else {
                return out;
            };
            let mut tags: BTreeMap<String, String> = source
                .tags
                .iter()
                .filter(|(k, _)| k.starts_with("openemr.io/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            tags.insert(COPY_OF_TAG.into(), source_arn.chars().take(256).collect());
            database.status = Some("requested".into());
            copy.start_time.get_or_insert(Time(now));
            out.changes.push(Change::CopySnapshot {
                region: region.clone(),
                source_arn,
                identifier: identifier.clone(),
                kms_key: copy.kms_key_arn.clone(),
                tags,
            });
        }
        Some(snapshot) if let Some(other) = set::other_sets_uid(snapshot, &steps.set_uid) => {
            return failed(
                copy,
                out,
                format!(
                    "snapshot {identifier} in {region} belongs to an earlier set of this name (uid {other}): delete it there, or name this set otherwise"
                ),
            );
        }
        Some(snapshot) => {
            database.arn = snapshot.arn.clone();
            database.status = Some(snapshot.status.clone());
            if SNAPSHOT_FAILED.contains(&snapshot.status.as_str()) {
                copy.database = Some(database);
                return failed(
                    copy,
                    out,
                    format!(
                        "RDS reports the copy {identifier} in {region} {}",
                        snapshot.status
                    ),
                );
            }
        }
    }
    copy.database = Some(database);
    let snapshot_available = steps
        .snapshot
        .as_ref()
        .is_some_and(|s| s.status == "available");

    let documents_done = match &steps.source_documents {
        None => true,
        Some(_) if copy.documents.is_some() => true,
        Some(manifest) => {
            let job_name = set::copy_job_name(&steps.set);
            match &steps.job {
                JobSeen::Absent => {
                    let job = DocumentsJob {
                        name: &job_name,
                        namespace: &steps.namespace,
                        set: &steps.set,
                        set_uid: &steps.set_uid,
                        clinic: &steps.clinic,
                        task: Task::Copy {
                            manifest,
                            to_region: &region,
                            to_bucket: &copy.bucket,
                            to_kms_key: &copy.kms_key_arn,
                            previous: steps.previous_documents.as_deref(),
                        },
                        image: &steps.documents_image,
                        service_account: &steps.service_account,
                        region: &steps.source_region,
                        bucket: &steps.source_bucket,
                        kms_key: None,
                        backoff_limit: steps.job_backoff_limit,
                        deadline_seconds: steps.job_deadline_seconds,
                    };
                    out.changes.push(Change::create_job(&job));
                    copy.documents_job = Some(job_name.clone());
                    copy.start_time.get_or_insert(Time(now));
                    false
                }
                JobSeen::Running => false,
                JobSeen::Foreign => {
                    return failed(
                        copy,
                        out,
                        format!(
                            "Job {job_name} belongs to another object (an earlier set of this name): delete it"
                        ),
                    );
                }
                JobSeen::Failed(words) => {
                    return failed(
                        copy,
                        out,
                        format!("the documents copy Job {job_name} failed: {words}"),
                    );
                }
                JobSeen::Succeeded(said) => {
                    let Ok(summary) = serde_json::from_str::<serde_json::Value>(said.trim()) else {
                        return failed(
                            copy,
                            out,
                            format!(
                                "the documents copy Job {job_name} succeeded without its summary: {said:?}"
                            ),
                        );
                    };
                    let count = |field: &str| summary[field].as_i64();
                    copy.documents = Some(DocumentsLocation {
                        bucket: copy.bucket.clone(),
                        manifest: summary["manifestKey"]
                            .as_str()
                            .unwrap_or(manifest)
                            .to_string(),
                        file_count: count("files"),
                        size_bytes: count("bytes"),
                        files_uploaded: count("filesCopied"),
                        bytes_uploaded: count("bytesCopied"),
                    });
                    true
                }
            }
        }
    };
    if !(snapshot_available && documents_done) {
        return progress(
            out,
            "Copying",
            format!("the set is being copied to {region}"),
        );
    }
    let key = set::set_manifest_key(&steps.set);
    if steps.manifest_written {
        copy.manifest = Some(format!("s3://{}/{key}", copy.bucket));
        copy.phase = Some(CopyPhase::Completed);
        copy.completion_time.get_or_insert(Time(now));
        out.busy = false;
        out.verdicts.push(Verdict::truthy(
            COPIED,
            "Copied",
            format!(
                "copied to {region}: snapshot {identifier}, manifest s3://{}/{key}",
                copy.bucket
            ),
        ));
        return out;
    }
    let manifest = match &steps.source_manifest {
        None => return out,
        Some(Err(why)) => {
            return failed(
                copy,
                out,
                format!("the set's manifest could not be read: {why}"),
            );
        }
        Some(Ok(manifest)) => manifest,
    };
    let completed_at = copy.completion_time.get_or_insert(Time(now)).0;
    out.changes.push(Change::WriteManifest {
        region: Some(region.clone()),
        bucket: copy.bucket.clone(),
        key,
        kms_key: Some(copy.kms_key_arn.clone()),
        body: copy_manifest(manifest, copy, completed_at).to_bytes(),
    });
    progress(
        out,
        "Copying",
        format!("writing the copy's manifest in {region}"),
    )
}

/// The copy's manifest: the set's, naming this region's snapshot, key and documents, and
/// the set it copies.
pub fn copy_manifest(source: &SetManifest, copy: &RegionCopy, copied_at: Timestamp) -> SetManifest {
    let mut manifest = source.clone();
    manifest.copy_of = Some(set::CopyOf {
        region: source.database.region.clone(),
        bucket: source
            .documents
            .as_ref()
            .map(|d| d.bucket.clone())
            .unwrap_or_default(),
        snapshot_arn: source.database.snapshot_arn.clone(),
        copied_at: copied_at.to_string(),
    });
    manifest.database.region = copy.region.clone();
    manifest.database.snapshot_arn = copy.database.as_ref().and_then(|d| d.arn.clone());
    manifest.database.kms_key_arn = Some(copy.kms_key_arn.clone());
    if let (Some(part), Some(copied)) = (manifest.documents.as_mut(), &copy.documents) {
        part.bucket = copied.bucket.clone();
        part.manifest = copied.manifest.clone();
    }
    manifest
}

fn progress(mut out: Outcome, reason: &'static str, message: String) -> Outcome {
    out.verdicts.push(Verdict::falsy(COPIED, reason, message));
    out
}

fn queued(copy: &mut RegionCopy, out: Outcome, reason: &'static str, message: String) -> Outcome {
    copy.phase = Some(CopyPhase::Queued);
    copy.message = Some(message.clone());
    progress(out, reason, message)
}

fn failed(copy: &mut RegionCopy, mut out: Outcome, message: String) -> Outcome {
    copy.phase = Some(CopyPhase::Failed);
    copy.message = Some(message.clone());
    out.changes.clear();
    out.busy = false;
    out.verdicts
        .push(Verdict::falsy(COPIED, "CopyFailed", message));
    out
}

/// Copies admitted to each region whose request the caches may not show yet: with the
/// copies the caches show in flight, never more than [`MAX_COPIES_IN_FLIGHT`] at once,
/// whichever sets are looked at together.
static ADMITTED: std::sync::Mutex<BTreeMap<String, std::collections::BTreeSet<String>>> =
    std::sync::Mutex::new(BTreeMap::new());

/// Whether set `key` (`namespace/name`) may start its copy to `region`, given the sets the
/// caches show copying there (`busy`) and every set still there (`present`); and how many
/// copies are in flight there.
pub fn admit(
    region: &str,
    key: &str,
    busy: &std::collections::BTreeSet<String>,
    present: &std::collections::BTreeSet<String>,
) -> (bool, usize) {
    let mut admitted = ADMITTED.lock().unwrap_or_else(|e| e.into_inner());
    let mine = admitted.entry(region.to_string()).or_default();
    // Those the caches show now are counted from them; those gone free their turn.
    mine.retain(|k| present.contains(k) && !busy.contains(k));
    let in_flight: std::collections::BTreeSet<&String> = busy.iter().chain(mine.iter()).collect();
    if in_flight.iter().any(|k| *k == key) {
        return (true, in_flight.len());
    }
    if in_flight.len() < MAX_COPIES_IN_FLIGHT {
        let count = in_flight.len() + 1;
        mine.insert(key.to_string());
        return (true, count);
    }
    (false, in_flight.len())
}

/// Whether a copy holds one of RDS's turns in its region: asked for, not yet finished.
pub fn in_flight(copy: &RegionCopy) -> bool {
    copy.phase == Some(CopyPhase::Copying)
        && copy
            .database
            .as_ref()
            .and_then(|d| d.status.as_deref())
            .is_some_and(|s| s != "available" && !SNAPSHOT_FAILED.contains(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const SOURCE_ARN: &str = "arn:aws:rds:us-east-1:123456789012:snapshot:openemr-uid-set-1";

    fn snapshot(status: &str, arn: &str) -> DbSnapshot {
        DbSnapshot {
            identifier: "openemr-uid-set-1".into(),
            arn: Some(arn.into()),
            status: status.into(),
            tags: BTreeMap::from([
                (set::SET_UID_TAG.to_string(), "set-uid".to_string()),
                ("openemr.io/set".to_string(), "set-1".to_string()),
                ("cost-centre".to_string(), "records".to_string()),
            ]),
        }
    }

    fn steps() -> CopySteps {
        CopySteps {
            set: "set-1".into(),
            set_uid: "set-uid".into(),
            namespace: "clinics".into(),
            clinic: "clinic-a".into(),
            source_region: "us-east-1".into(),
            source_bucket: "bucket-a".into(),
            source_snapshot: Some(snapshot("available", SOURCE_ARN)),
            source_documents: Some("backups/documents/set-1.jsonl.gz".into()),
            snapshot: None,
            snapshot_in_flight: false,
            manual_snapshots: Some(3),
            snapshot_quota: 100,
            admitted: true,
            in_flight: 1,
            job: JobSeen::Absent,
            previous_documents: Some("backups/documents/set-0.jsonl.gz".into()),
            source_manifest: None,
            manifest_written: false,
            documents_image: "operator:1".into(),
            service_account: "openemr-documents".into(),
            job_backoff_limit: 2,
            job_deadline_seconds: 3600,
        }
    }

    fn target() -> RegionCopy {
        RegionCopy {
            region: "eu-west-1".into(),
            kms_key_arn: "arn:aws:kms:eu-west-1:123456789012:key/dr".into(),
            bucket: "bucket-dr".into(),
            ..RegionCopy::default()
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(NOW).unwrap()
    }

    fn reason(out: &Outcome) -> &str {
        out.verdicts
            .iter()
            .find(|v| v.type_ == COPIED)
            .map(|v| v.reason)
            .unwrap()
    }

    #[test]
    fn a_copy_waits_its_turn_and_for_room_under_the_quota() {
        let mut s = steps();
        s.admitted = false;
        s.in_flight = 20;
        let mut copy = target();
        let out = next(&s, &mut copy, now());
        assert_eq!(reason(&out), "CopyQueued");
        assert!(out.changes.is_empty() && out.busy);
        assert_eq!(copy.phase, Some(CopyPhase::Queued));
        assert!(
            copy.message
                .as_deref()
                .unwrap()
                .contains("20 snapshot copies")
        );

        let mut s = steps();
        s.manual_snapshots = Some(100);
        let out = next(&s, &mut copy, now());
        assert_eq!(reason(&out), "SnapshotQuotaExceeded");
        assert!(out.changes.is_empty());
        assert!(
            copy.message
                .as_deref()
                .unwrap()
                .contains("eu-west-1 holds 100")
        );
    }

    #[test]
    fn a_copy_asks_rds_in_the_other_region_and_starts_the_documents_job_together() {
        let mut copy = target();
        let out = next(&steps(), &mut copy, now());
        assert_eq!(reason(&out), "Copying");
        let [
            Change::CopySnapshot {
                region,
                source_arn,
                identifier,
                kms_key,
                tags,
            },
            Change::CreateJob { name, body, .. },
        ] = &out.changes[..]
        else {
            panic!("{:?}", out.changes);
        };
        assert_eq!(region, "eu-west-1");
        assert_eq!(source_arn, SOURCE_ARN);
        assert_eq!(identifier, "openemr-uid-set-1");
        assert_eq!(kms_key, &copy.kms_key_arn);
        assert_eq!(tags[COPY_OF_TAG], SOURCE_ARN);
        assert_eq!(tags[set::SET_UID_TAG], "set-uid");
        assert!(
            !tags.contains_key("cost-centre"),
            "only the set's own tags: {tags:?}"
        );
        assert_eq!(name, "set-1-copy");
        let args = body["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        for expected in [
            "\"copy\"",
            "\"--to-region\",\"eu-west-1\"",
            "\"--to-bucket\",\"bucket-dr\"",
            "\"--previous\",\"backups/documents/set-0.jsonl.gz\"",
        ] {
            assert!(args.contains(expected), "{expected} in {args}");
        }
        assert_eq!(copy.phase, Some(CopyPhase::Copying));
        assert_eq!(
            copy.database.as_ref().unwrap().status.as_deref(),
            Some("requested")
        );

        // Asked, and the listing does not show it yet: nothing is asked again.
        let mut s = steps();
        s.job = JobSeen::Running;
        let out = next(&s, &mut copy, now());
        assert!(out.changes.is_empty(), "{:?}", out.changes);
        // Unless the request may never have gone out.
        s.snapshot_in_flight = true;
        let out = next(&s, &mut copy, now());
        assert!(matches!(out.changes[..], [Change::CopySnapshot { .. }]));
    }

    #[test]
    fn both_parts_there_the_copys_own_manifest_is_written_there_then_it_is_complete() {
        let dr_arn = "arn:aws:rds:eu-west-1:123456789012:snapshot:openemr-uid-set-1";
        let mut copy = target();
        let mut s = steps();
        s.snapshot = Some(snapshot("available", dr_arn));
        s.job = JobSeen::Succeeded(
            r#"{"files":3,"bytes":30,"filesCopied":1,"bytesCopied":10,"manifestKey":"backups/documents/set-1.jsonl.gz"}"#.into(),
        );
        let source: SetManifest = serde_json::from_value(serde_json::json!({
            "format": set::FORMAT, "version": set::VERSION, "set": "set-1",
            "clinic": {"cluster": "c1", "namespace": "clinics", "name": "clinic-a", "uid": "uid"},
            "policy": "nightly", "consistency": "CrashConsistent",
            "database": {"region": "us-east-1", "instanceIdentifier": "db", "snapshotIdentifier": "openemr-uid-set-1",
                "snapshotArn": SOURCE_ARN, "engineVersion": "8.0.40", "kmsKeyArn": "arn:aws:kms:us-east-1:1:key/k",
                "requestedAt": "2027-01-15T03:00:00Z"},
            "documents": {"bucket": "bucket-a", "manifest": "backups/documents/set-1.jsonl.gz", "files": 3, "bytes": 30,
                "startedAt": "2027-01-15T03:00:01Z", "completedAt": "2027-01-15T03:00:09Z"},
            "image": "openemr/openemr:7.0.3", "clinicSpec": {}, "completedAt": "2027-01-15T03:00:10Z",
            "operatorVersion": "0.1.0"
        }))
        .unwrap();
        // The set's manifest not read yet: nothing to write.
        let out = next(&s, &mut copy, now());
        assert!(out.changes.is_empty());
        assert_eq!(copy.documents.as_ref().unwrap().files_uploaded, Some(1));
        s.source_manifest = Some(Ok(source.clone()));
        let out = next(&s, &mut copy, now());
        let [
            Change::WriteManifest {
                region,
                bucket,
                key,
                kms_key,
                body,
            },
        ] = &out.changes[..]
        else {
            panic!("{:?}", out.changes);
        };
        assert_eq!(region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            (bucket.as_str(), key.as_str()),
            ("bucket-dr", "backups/set-1/manifest.json")
        );
        assert_eq!(kms_key.as_deref(), Some(copy.kms_key_arn.as_str()));
        let written = SetManifest::from_bytes(body).unwrap();
        assert_eq!(written.database.region, "eu-west-1");
        assert_eq!(written.database.snapshot_arn.as_deref(), Some(dr_arn));
        assert_eq!(
            written.database.kms_key_arn.as_deref(),
            Some(copy.kms_key_arn.as_str())
        );
        assert_eq!(written.documents.as_ref().unwrap().bucket, "bucket-dr");
        let of = written.copy_of.unwrap();
        assert_eq!(
            (of.region.as_str(), of.bucket.as_str()),
            ("us-east-1", "bucket-a")
        );
        assert_eq!(of.snapshot_arn.as_deref(), Some(SOURCE_ARN));
        assert_eq!(written.clinic, source.clinic);

        s.manifest_written = true;
        let out = next(&s, &mut copy, now());
        assert_eq!(reason(&out), "Copied");
        assert!(!out.busy && out.changes.is_empty());
        assert_eq!(copy.phase, Some(CopyPhase::Completed));
        assert_eq!(
            copy.manifest.as_deref(),
            Some("s3://bucket-dr/backups/set-1/manifest.json")
        );
    }

    #[test]
    fn a_copy_that_fails_says_why_and_leaves_the_set_alone() {
        let mut s = steps();
        s.snapshot = Some(snapshot("failed", "arn:dr"));
        let mut copy = target();
        let out = next(&s, &mut copy, now());
        assert_eq!(reason(&out), "CopyFailed");
        assert!(!out.busy && out.changes.is_empty());
        assert_eq!(copy.phase, Some(CopyPhase::Failed));

        let mut s = steps();
        s.job = JobSeen::Failed("DeadlineExceeded; its last words: AccessDenied".into());
        let mut copy = target();
        let out = next(&s, &mut copy, now());
        assert_eq!(reason(&out), "CopyFailed");
        assert!(copy.message.unwrap().contains("AccessDenied"));

        let mut copy = target();
        copy.region = "us-east-1".into();
        let out = next(&steps(), &mut copy, now());
        assert_eq!(reason(&out), "CopyFailed");
        assert!(out.changes.is_empty());
        assert!(
            copy.message
                .unwrap()
                .contains("spec.crossRegionCopy.region")
        );
    }

    #[test]
    fn at_most_twenty_copies_are_admitted_to_a_region_at_once() {
        let region = "test-admit-1";
        let none = std::collections::BTreeSet::new();
        let present: std::collections::BTreeSet<String> =
            (0..30).map(|i| format!("ns/set-{i}")).collect();
        for i in 0..MAX_COPIES_IN_FLIGHT {
            assert!(admit(region, &format!("ns/set-{i}"), &none, &present).0);
        }
        assert_eq!(admit(region, "ns/set-20", &none, &present), (false, 20));
        // Admitted again while its request is not shown yet: still its turn.
        assert!(admit(region, "ns/set-3", &none, &present).0);
        // Another region is counted on its own.
        assert!(admit("test-admit-2", "ns/set-20", &none, &present).0);
        // Once the caches show the first ten copied (not busy) and ten gone, room is made.
        let fewer: std::collections::BTreeSet<String> =
            (10..30).map(|i| format!("ns/set-{i}")).collect();
        let busy: std::collections::BTreeSet<String> =
            (10..15).map(|i| format!("ns/set-{i}")).collect();
        assert_eq!(admit(region, "ns/set-20", &busy, &fewer), (true, 11));
    }
}
