//! Which data a restore brings back: the request's source resolved, purely, against the
//! sets and the clinic the caches hold, or refused with a reason a person can act on.
//!
//! - `backupRef`: that set, which must be `Completed` (its manifest written, both halves
//!   there).
//! - `latestFromPolicy`: the policy's newest completed set (by completion time).
//! - `pointInTime`: the clinic's database at that instant, which must lie in the clinic's
//!   restorable window as its status reports it (the operator's own check: moto accepts any
//!   time), or at the latest restorable time; the documents come from the clinic's newest
//!   set completed at or before that instant, so database and documents are of one clinic
//!   (the encryption keys in the `keys` table and the drive key files under
//!   `sites/default/documents/logs_and_misc/methods/` are made once, at install, and stay
//!   a pair), and the resolution says how far apart the two are.
//! - `snapshot`: the ARN, key and documents given.

use k8s_openapi::jiff::Timestamp;

use crate::api::backup::BackupPhase;
use crate::api::restore::{PointInTimeSource, RestoreSource};
use crate::api::{OpenEMRBackup, OpenEMRDeployment};

/// Where a set's documents are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Documents {
    pub bucket: String,
    /// The documents manifest's key.
    pub manifest: String,
}

/// What a restore brings back.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The set restored (`backupRef`, `latestFromPolicy`), or whose documents go with a
    /// point in time.
    pub set: Option<String>,
    /// The snapshot restored, when the source is one (not a point in time).
    pub snapshot_arn: Option<String>,
    /// For a point in time: the clinic and the instant (for `latestRestorable`, the latest
    /// restorable time its status reports, so the instant restored is known and said).
    pub point_in_time: Option<(String, Timestamp)>,
    /// The instant the restored database reflects.
    pub data_time: Option<Timestamp>,
    /// The documents restored with it; `None` restores the database alone (a
    /// database-only set, or a point in time before the clinic's first set with documents).
    pub documents: Option<Documents>,
    /// How much older the documents are than the database, in seconds (a point in time).
    pub documents_behind_seconds: Option<i64>,
    /// The region the snapshot and the documents' bucket are in, when it is not the source
    /// clinic's: a set's copy in another region ([`from_copy_in`]).
    pub region: Option<String>,
    /// The MySQL engine version and the OpenEMR image the source's data was made with,
    /// when known ([`incompatibility`] judges a target by them).
    pub engine_version: Option<String>,
    pub image: Option<String>,
}

/// Why the source cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

fn refuse(reason: &'static str, message: String) -> Refusal {
    Refusal { reason, message }
}

fn completed(set: &OpenEMRBackup) -> Option<Timestamp> {
    let status = set.status.as_ref()?;
    (status.phase == Some(BackupPhase::Completed))
        .then(|| status.completion_time.as_ref().map(|t| t.0))
        .flatten()
}

fn documents_of(set: &OpenEMRBackup) -> Option<Documents> {
    let d = set.status.as_ref()?.documents.as_ref()?;
    Some(Documents {
        bucket: d.bucket.clone(),
        manifest: d.manifest.clone(),
    })
}

fn name(set: &OpenEMRBackup) -> String {
    set.metadata.name.clone().unwrap_or_default()
}

/// A completed set, as a restore source.
fn from_set(set: &OpenEMRBackup) -> Result<Resolved, Refusal> {
    let status = set.status.as_ref();
    let arn = status
        .and_then(|s| s.database.as_ref())
        .and_then(|d| d.arn.clone());
    let Some(arn) = arn else {
        return Err(refuse(
            "SourceIncomplete",
            format!("set {} is completed but records no snapshot ARN", name(set)),
        ));
    };
    Ok(Resolved {
        engine_version: status
            .and_then(|s| s.database.as_ref())
            .and_then(|d| d.engine_version.clone()),
        image: status.and_then(|s| s.image.clone()),
        set: Some(name(set)),
        snapshot_arn: Some(arn),
        point_in_time: None,
        data_time: status.and_then(|s| s.snapshot_requested_time.as_ref().map(|t| t.0)),
        documents: documents_of(set),
        documents_behind_seconds: None,
        region: None,
    })
}

/// `resolved` (a set) as its completed copy in `region`, when it has one: the snapshot
/// there (under that region's key) and the documents in that region's bucket. A restore
/// into that region then needs nothing of the source's region, which may be the one that
/// is down; and RDS copies a snapshot within a region faster than across. `None` when the
/// set has no completed copy there (the source region's snapshot is copied across then).
pub fn from_copy_in(resolved: &Resolved, set: &OpenEMRBackup, region: &str) -> Option<Resolved> {
    use crate::api::backup::CopyPhase;
    let copy = set
        .status
        .as_ref()?
        .copies
        .iter()
        .find(|c| c.region == region && c.phase == Some(CopyPhase::Completed))?;
    let arn = copy.database.as_ref()?.arn.clone()?;
    let documents = match (&resolved.documents, &copy.documents) {
        (None, _) => None,
        (Some(_), Some(d)) => Some(Documents {
            bucket: d.bucket.clone(),
            manifest: d.manifest.clone(),
        }),
        // A copy whose documents are not recorded is no copy of the whole set.
        (Some(_), None) => return None,
    };
    Some(Resolved {
        snapshot_arn: Some(arn),
        documents,
        region: Some(region.to_string()),
        ..resolved.clone()
    })
}

/// Resolves `source` (a request in `namespace`) against the namespace's `sets` and, for a
/// point in time, the `clinic` it names, whose restorable window must hold its instant.
pub fn resolve(
    source: &RestoreSource,
    sets: &[&OpenEMRBackup],
    clinic: Option<&OpenEMRDeployment>,
) -> Result<Resolved, Refusal> {
    resolve_in(source, sets, clinic, true)
}

/// [`resolve`] for a started restore, whose source is pinned to what it resolved to then:
/// its instant was in the window when RDS was asked for it, and is not judged again as
/// the window's start moves past it during a long restore.
pub fn resolve_pinned(
    source: &RestoreSource,
    sets: &[&OpenEMRBackup],
    clinic: Option<&OpenEMRDeployment>,
) -> Result<Resolved, Refusal> {
    resolve_in(source, sets, clinic, false)
}

fn resolve_in(
    source: &RestoreSource,
    sets: &[&OpenEMRBackup],
    clinic: Option<&OpenEMRDeployment>,
    judge_window: bool,
) -> Result<Resolved, Refusal> {
    if let Some(r) = &source.backup_ref {
        let Some(set) = sets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(&r.name))
        else {
            return Err(refuse(
                "SourceNotFound",
                format!(
                    "spec.source.backupRef names set {}, which does not exist",
                    r.name
                ),
            ));
        };
        if completed(set).is_none() {
            let phase = set
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .unwrap_or_default();
            return Err(refuse(
                "SourceNotCompleted",
                format!(
                    "set {} is {phase:?}, not Completed: only a set whose manifest is written is restored",
                    r.name
                ),
            ));
        }
        return from_set(set);
    }
    if let Some(p) = &source.latest_from_policy {
        let newest = sets
            .iter()
            .filter(|s| s.spec.policy_ref.as_ref().is_some_and(|r| r.name == p.name))
            .filter_map(|s| completed(s).map(|t| (t, *s)))
            .max_by_key(|(t, s)| (*t, name(s)));
        return match newest {
            Some((_, set)) => from_set(set),
            None => Err(refuse(
                "NoCompletedSet",
                format!("BackupPolicy {} has no completed set to restore", p.name),
            )),
        };
    }
    if let Some(p) = &source.point_in_time {
        let clinic_name = &p.deployment_ref.name;
        let Some(clinic) = clinic else {
            return Err(refuse(
                "SourceNotFound",
                format!(
                    "spec.source.pointInTime.deploymentRef names clinic {clinic_name}, which does not exist"
                ),
            ));
        };
        let at = match (judge_window, p.time.as_ref()) {
            (false, Some(t)) => t.0,
            _ => in_window(clinic, p)?,
        };
        // The newest of the clinic's sets completed by then whose documents are there.
        let documents_set = sets
            .iter()
            .filter(|s| &s.spec.deployment_ref.name == clinic_name)
            .filter_map(|s| completed(s).map(|t| (t, *s)))
            .filter(|(t, s)| *t <= at && documents_of(s).is_some())
            .max_by_key(|(t, s)| (*t, name(s)));
        let documents_time = documents_set.and_then(|(_, s)| {
            let status = s.status.as_ref()?;
            status
                .documents_start_time
                .as_ref()
                .or(status.completion_time.as_ref())
                .map(|t| t.0)
        });
        return Ok(Resolved {
            engine_version: Some(clinic.spec.database.engine_version.clone()),
            image: clinic
                .status
                .as_ref()
                .and_then(|s| s.web.as_ref()?.image.clone())
                .or_else(|| Some(clinic.spec.web.image.clone())),
            set: documents_set.map(|(_, s)| name(s)),
            snapshot_arn: None,
            point_in_time: Some((clinic_name.clone(), at)),
            data_time: Some(at),
            documents: documents_set.and_then(|(_, s)| documents_of(s)),
            documents_behind_seconds: documents_time.map(|d| at.as_second() - d.as_second()),
            region: None,
        });
    }
    if let Some(s) = &source.snapshot {
        return Ok(Resolved {
            engine_version: None,
            image: None,
            set: None,
            snapshot_arn: Some(s.snapshot_arn.clone()),
            point_in_time: None,
            data_time: None,
            documents: s.documents.as_ref().map(|d| Documents {
                bucket: d.bucket.clone(),
                manifest: d.manifest.clone(),
            }),
            documents_behind_seconds: None,
            region: None,
        });
    }
    Err(refuse(
        "SourceMissing",
        "spec.source sets none of backupRef, latestFromPolicy, pointInTime or snapshot".into(),
    ))
}

/// The instant `p` asks for (its time, or the latest restorable time), which must lie in
/// `clinic`'s restorable window.
fn in_window(clinic: &OpenEMRDeployment, p: &PointInTimeSource) -> Result<Timestamp, Refusal> {
    let clinic_name = &p.deployment_ref.name;
    let db = clinic.status.as_ref().and_then(|s| s.database.as_ref());
    let earliest = db.and_then(|d| d.earliest_restorable_time.as_ref().map(|t| t.0));
    let latest = db.and_then(|d| d.latest_restorable_time.as_ref().map(|t| t.0));
    // RDS reports the window's start only through the automated backups; until that is
    // read, it is the latest restorable time less the retention period, and said so.
    let retention = i64::from(clinic.spec.database.backup_retention_days);
    let estimated = earliest.is_none();
    let earliest = earliest.or_else(|| {
        latest.and_then(|l| Timestamp::from_second(l.as_second() - retention * 86_400).ok())
    });
    let (Some(earliest), Some(latest)) = (earliest, latest) else {
        return Err(refuse(
            "NoRestorableWindow",
            format!(
                "clinic {clinic_name} reports no restorable window (its database keeps no automated backups, or is not read yet): no point in time can be restored"
            ),
        ));
    };
    match p.time.as_ref().map(|t| t.0) {
        None => Ok(latest),
        Some(t) if t < earliest || t > latest => Err(refuse(
            "PointInTimeOutsideWindow",
            format!(
                "spec.source.pointInTime.time {t} is outside clinic {clinic_name}'s restorable window, {earliest} to {latest}{}",
                if estimated {
                    " (its start estimated as the latest restorable time less spec.database.backupRetentionDays)"
                } else {
                    ""
                }
            ),
        )),
        Some(t) => Ok(t),
    }
}

/// The leading dotted numbers of `v` (`8.0.40` → 8, 0, 40; `7.0.3-1` → 7, 0, 3); `None`
/// when it starts with none.
fn numbers(v: &str) -> Option<Vec<u64>> {
    let mut out: Vec<u64> = Vec::new();
    for part in v.split('.') {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        let Ok(n) = digits.parse() else { break };
        out.push(n);
        if digits.len() != part.len() {
            break;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Whether release `a` is after `b`, a missing number being 0 (`7.0` is `7.0.0`).
fn after(a: &[u64], b: &[u64]) -> bool {
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    (0..a.len().max(b.len()))
        .map(|i| at(a, i).cmp(&at(b, i)))
        .find(|o| o.is_ne())
        == Some(std::cmp::Ordering::Greater)
}

/// The release an image reference names by its tag (`openemr/openemr:7.0.3` → 7.0.3); none
/// for a digest, `latest` or no tag.
fn image_release(image: &str) -> Option<Vec<u64>> {
    let image = image.split('@').next()?;
    let (_, tag) = image.rsplit_once(':')?;
    if tag.contains('/') {
        // A registry's port, not a tag.
        return None;
    }
    numbers(tag)
}

/// Why the source cannot be restored into a clinic of spec `target`, a copy of clinic
/// `copied_from`'s spec or the request's own `deploymentSpec` (`None`): a copy moved to
/// another region (it keeps the source's network, which is of its region only); a MySQL of
/// a newer major.minor than the target's (RDS restores a snapshot at its own engine
/// version, and MySQL cannot go back a major version); an OpenEMR release newer than the
/// target's image (the restored schema, `v_database`, would be newer than the code serving
/// it). Nothing is refused on a guess: an unknown or unreadable version passes.
pub fn incompatibility(
    source: &Resolved,
    target: &crate::api::OpenEMRDeploymentSpec,
    copied_from: Option<(&str, &crate::api::OpenEMRDeploymentSpec)>,
) -> Option<Refusal> {
    if let Some((clinic, copied)) = copied_from
        && copied.aws.region != target.aws.region
    {
        let vpc = copied
            .network
            .existing
            .as_ref()
            .map_or(String::new(), |n| format!(" (VPC {})", n.vpc_id));
        return Some(refuse(
            "NetworkNotInRegion",
            format!(
                "spec.target.sideBySide.region is {}, but a copy of clinic {clinic}'s spec would keep its network{vpc}, which is in {}: give spec.target.sideBySide.deploymentSpec with a network in {}",
                target.aws.region, copied.aws.region, target.aws.region
            ),
        ));
    }
    let field = if copied_from.is_some() {
        "the source clinic's spec, which the target copies"
    } else {
        "spec.target.sideBySide.deploymentSpec"
    };
    let major_minor = |v: &str| numbers(v).map(|n| n.into_iter().take(2).collect::<Vec<_>>());
    if let Some(from) = &source.engine_version
        && let (Some(have), Some(want)) = (
            major_minor(from),
            major_minor(&target.database.engine_version),
        )
        && after(&have, &want)
    {
        return Some(refuse(
            "EngineVersionTooNew",
            format!(
                "the source's database runs MySQL {from}; the target's database.engineVersion ({field}) is {}: RDS restores a snapshot at its own engine version and MySQL cannot go back a major version; give the target {from} or later",
                target.database.engine_version
            ),
        ));
    }
    if let Some(from) = &source.image
        && let (Some(have), Some(want)) = (image_release(from), image_release(&target.web.image))
        && after(&have, &want)
    {
        return Some(refuse(
            "SchemaNewerThanImage",
            format!(
                "the source was made by OpenEMR {from}; the target's web.image ({field}) is {}, an older release: the restored schema (v_database) would be newer than the code serving it; give the target {from} or later",
                target.web.image
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn set(
        name: &str,
        clinic: &str,
        policy: Option<&str>,
        phase: BackupPhase,
        done: &str,
        docs: bool,
    ) -> OpenEMRBackup {
        let mut spec = serde_json::json!({"deploymentRef": {"name": clinic}});
        if let Some(p) = policy {
            spec["policyRef"] = serde_json::json!({"name": p});
        }
        let mut b = OpenEMRBackup::new(name, serde_json::from_value(spec).unwrap());
        let mut status = serde_json::json!({
            "phase": phase,
            "completionTime": done,
            "snapshotRequestedTime": done,
            "database": {"identifier": format!("openemr-uid-{name}"), "arn": format!("arn:aws:rds:us-east-1:123456789012:snapshot:openemr-uid-{name}")},
        });
        if docs {
            status["documents"] = serde_json::json!({"bucket": "b", "manifest": format!("backups/documents/{name}.jsonl.gz")});
            status["documentsStartTime"] = serde_json::json!(done);
        }
        b.status = Some(serde_json::from_value(status).unwrap());
        b
    }

    #[test]
    fn into_another_region_a_completed_copy_there_is_the_source() {
        use BackupPhase::*;
        let mut with_copy = set(
            "a-9",
            "clinic-a",
            None,
            Completed,
            "2026-11-09T03:05:00Z",
            true,
        );
        let copy = |phase: &str, documents: bool| {
            let mut c = serde_json::json!({
                "region": "us-west-2", "kmsKeyArn": "arn:aws:kms:us-west-2:1:key/dr", "bucket": "dr-b",
                "phase": phase,
                "database": {"identifier": "copy-a-9", "arn": "arn:aws:rds:us-west-2:1:snapshot:copy-a-9"},
            });
            if documents {
                c["documents"] = serde_json::json!({"bucket": "dr-b", "manifest": "backups/documents/a-9.jsonl.gz"});
            }
            c
        };
        let resolved = from_set(&with_copy).unwrap();
        assert_eq!(
            from_copy_in(&resolved, &with_copy, "us-west-2"),
            None,
            "no copy"
        );
        let status = with_copy.status.as_mut().unwrap();
        status.copies = vec![serde_json::from_value(copy("Copying", true)).unwrap()];
        assert_eq!(
            from_copy_in(&resolved, &with_copy, "us-west-2"),
            None,
            "not completed"
        );
        let status = with_copy.status.as_mut().unwrap();
        status.copies = vec![serde_json::from_value(copy("Completed", false)).unwrap()];
        assert_eq!(
            from_copy_in(&resolved, &with_copy, "us-west-2"),
            None,
            "documents missing"
        );
        let status = with_copy.status.as_mut().unwrap();
        status.copies = vec![serde_json::from_value(copy("Completed", true)).unwrap()];
        let there = from_copy_in(&resolved, &with_copy, "us-west-2").unwrap();
        assert_eq!(
            there.snapshot_arn.as_deref(),
            Some("arn:aws:rds:us-west-2:1:snapshot:copy-a-9")
        );
        assert_eq!(there.documents.unwrap().bucket, "dr-b");
        assert_eq!(there.region.as_deref(), Some("us-west-2"));
        assert_eq!(
            (there.set, there.data_time),
            (resolved.set.clone(), resolved.data_time)
        );
        assert_eq!(
            from_copy_in(&resolved, &with_copy, "eu-west-1"),
            None,
            "another region"
        );
    }

    fn source(v: serde_json::Value) -> RestoreSource {
        serde_json::from_value(v).unwrap()
    }

    fn clinic_with_window(earliest: Option<&str>, latest: Option<&str>) -> OpenEMRDeployment {
        let spec = serde_json::from_value(serde_json::json!({
            "aws": {"region": "us-east-1"},
            "network": {"newVpc": {}},
        }))
        .unwrap();
        let mut d = OpenEMRDeployment::new("clinic-a", spec);
        let mut db = serde_json::json!({"identifier": "db"});
        if let Some(e) = earliest {
            db["earliestRestorableTime"] = serde_json::json!(e);
        }
        if let Some(l) = latest {
            db["latestRestorableTime"] = serde_json::json!(l);
        }
        d.status = Some(serde_json::from_value(serde_json::json!({"database": db})).unwrap());
        d
    }

    fn sets() -> Vec<OpenEMRBackup> {
        use BackupPhase::*;
        vec![
            set(
                "a-1",
                "clinic-a",
                Some("daily"),
                Completed,
                "2026-11-01T03:05:00Z",
                true,
            ),
            set(
                "a-2",
                "clinic-a",
                Some("daily"),
                Completed,
                "2026-11-02T03:05:00Z",
                true,
            ),
            set(
                "a-3",
                "clinic-a",
                Some("daily"),
                Failed,
                "2026-11-03T03:05:00Z",
                true,
            ),
            set(
                "a-db",
                "clinic-a",
                None,
                Completed,
                "2026-11-02T12:00:00Z",
                false,
            ),
            set(
                "b-1",
                "clinic-b",
                Some("other"),
                Completed,
                "2026-11-04T03:05:00Z",
                true,
            ),
            set(
                "a-4",
                "clinic-a",
                Some("daily"),
                Running,
                "2026-11-04T03:05:00Z",
                false,
            ),
        ]
    }

    #[test]
    fn a_named_set_restores_only_when_completed() {
        let all = sets();
        let refs: Vec<&OpenEMRBackup> = all.iter().collect();
        let ok = resolve(
            &source(serde_json::json!({"backupRef": {"name": "a-2"}})),
            &refs,
            None,
        )
        .unwrap();
        assert_eq!(ok.set.as_deref(), Some("a-2"));
        assert_eq!(
            ok.snapshot_arn.as_deref(),
            Some("arn:aws:rds:us-east-1:123456789012:snapshot:openemr-uid-a-2")
        );
        assert_eq!(ok.data_time, Some(at("2026-11-02T03:05:00Z")));
        assert_eq!(
            ok.documents.unwrap().manifest,
            "backups/documents/a-2.jsonl.gz"
        );
        let failed = resolve(
            &source(serde_json::json!({"backupRef": {"name": "a-3"}})),
            &refs,
            None,
        )
        .unwrap_err();
        assert_eq!(failed.reason, "SourceNotCompleted");
        assert!(
            failed.message.contains("set a-3 is Failed"),
            "{}",
            failed.message
        );
        let gone = resolve(
            &source(serde_json::json!({"backupRef": {"name": "zz"}})),
            &refs,
            None,
        )
        .unwrap_err();
        assert_eq!(gone.reason, "SourceNotFound");
        // A database-only set restores the database alone.
        let db_only = resolve(
            &source(serde_json::json!({"backupRef": {"name": "a-db"}})),
            &refs,
            None,
        )
        .unwrap();
        assert_eq!(db_only.documents, None);
    }

    #[test]
    fn a_policys_latest_is_its_newest_completed_set() {
        let all = sets();
        let refs: Vec<&OpenEMRBackup> = all.iter().collect();
        let latest = resolve(
            &source(serde_json::json!({"latestFromPolicy": {"name": "daily"}})),
            &refs,
            None,
        )
        .unwrap();
        // a-3 failed and a-4 still runs; a-db is no set of the policy.
        assert_eq!(latest.set.as_deref(), Some("a-2"));
        let none = resolve(
            &source(serde_json::json!({"latestFromPolicy": {"name": "weekly"}})),
            &refs,
            None,
        )
        .unwrap_err();
        assert_eq!(none.reason, "NoCompletedSet");
    }

    #[test]
    fn a_point_in_time_must_lie_in_the_window_and_takes_the_clinics_documents_from_before_it() {
        let all = sets();
        let refs: Vec<&OpenEMRBackup> = all.iter().collect();
        let clinic = clinic_with_window(Some("2026-10-28T00:00:00Z"), Some("2026-11-04T10:00:00Z"));
        let pit = |time: &str| {
            source(
                serde_json::json!({"pointInTime": {"deploymentRef": {"name": "clinic-a"}, "time": time}}),
            )
        };

        let r = resolve(&pit("2026-11-02T15:00:00Z"), &refs, Some(&clinic)).unwrap();
        assert_eq!(r.data_time, Some(at("2026-11-02T15:00:00Z")));
        // a-db is newer but holds no documents; b-1 is another clinic's.
        assert_eq!(r.set.as_deref(), Some("a-2"));
        assert_eq!(r.documents_behind_seconds, Some(11 * 3600 + 55 * 60));
        assert_eq!(r.snapshot_arn, None);

        let outside = resolve(&pit("2026-11-05T00:00:00Z"), &refs, Some(&clinic)).unwrap_err();
        assert_eq!(outside.reason, "PointInTimeOutsideWindow");
        assert_eq!(
            outside.message,
            "spec.source.pointInTime.time 2026-11-05T00:00:00Z is outside clinic clinic-a's restorable window, 2026-10-28T00:00:00Z to 2026-11-04T10:00:00Z"
        );
        assert_eq!(
            resolve(&pit("2026-10-27T23:59:59Z"), &refs, Some(&clinic))
                .unwrap_err()
                .reason,
            "PointInTimeOutsideWindow"
        );
        // Before the clinic's first set: the database alone, said so by no documents.
        let early = resolve(&pit("2026-10-30T00:00:00Z"), &refs, Some(&clinic)).unwrap();
        assert_eq!((early.set, early.documents), (None, None));

        let latest = source(
            serde_json::json!({"pointInTime": {"deploymentRef": {"name": "clinic-a"}, "latestRestorable": true}}),
        );
        let r = resolve(&latest, &refs, Some(&clinic)).unwrap();
        assert_eq!(r.data_time, Some(at("2026-11-04T10:00:00Z")));
        assert_eq!(
            r.point_in_time,
            Some(("clinic-a".into(), r.data_time.unwrap()))
        );
        assert_eq!(r.set.as_deref(), Some("a-2"));

        // A started restore's pinned instant is not judged again, whatever the start's
        // estimate says later.
        let later = clinic_with_window(None, Some("2026-11-20T10:00:00Z"));
        let pinned = pit("2026-11-05T00:00:00Z");
        assert_eq!(
            resolve(&pinned, &refs, Some(&later)).unwrap_err().reason,
            "PointInTimeOutsideWindow"
        );
        let r = resolve_pinned(&pinned, &refs, Some(&later)).unwrap();
        assert_eq!(r.data_time, Some(at("2026-11-05T00:00:00Z")));
        // Without the window's start, it is the latest time less the retention period.
        let mut estimated = clinic_with_window(None, None);
        estimated.spec.database.backup_retention_days = 3;
        estimated
            .status
            .as_mut()
            .unwrap()
            .database
            .as_mut()
            .unwrap()
            .latest_restorable_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            at("2026-11-04T10:00:00Z"),
        ));
        assert!(resolve(&pit("2026-11-01T10:00:00Z"), &refs, Some(&estimated)).is_ok());
        let before = resolve(&pit("2026-11-01T09:59:59Z"), &refs, Some(&estimated)).unwrap_err();
        assert_eq!(before.reason, "PointInTimeOutsideWindow");
        assert!(before.message.ends_with("2026-11-01T10:00:00Z to 2026-11-04T10:00:00Z (its start estimated as the latest restorable time less spec.database.backupRetentionDays)"), "{}", before.message);

        let no_window = clinic_with_window(None, None);
        assert_eq!(
            resolve(&latest, &refs, Some(&no_window))
                .unwrap_err()
                .reason,
            "NoRestorableWindow"
        );
        assert_eq!(
            resolve(&latest, &refs, None).unwrap_err().reason,
            "SourceNotFound"
        );
    }

    #[test]
    fn a_snapshot_source_is_taken_as_given() {
        let r = resolve(
            &source(serde_json::json!({"snapshot": {
                "snapshotArn": "arn:aws:rds:us-east-1:123456789012:snapshot:elsewhere",
                "documents": {"bucket": "other-bucket", "manifest": "backups/documents/x.jsonl.gz"}}})),
            &[],
            None,
        )
        .unwrap();
        assert_eq!(
            r.snapshot_arn.as_deref(),
            Some("arn:aws:rds:us-east-1:123456789012:snapshot:elsewhere")
        );
        assert_eq!(r.documents.unwrap().bucket, "other-bucket");
    }

    #[test]
    fn a_target_older_than_the_sources_data_is_refused_naming_both() {
        let spec = |engine: &str, image: &str| -> crate::api::OpenEMRDeploymentSpec {
            serde_json::from_value(serde_json::json!({
                "aws": {"region": "us-east-1"},
                "network": {"existing": {"vpcId": "vpc-0a1b2c3d4e5f60718",
                    "subnetIds": ["subnet-0a1b2c3d4e5f60718", "subnet-1a1b2c3d4e5f60718"],
                    "clusterSecurityGroupId": "sg-0a1b2c3d4e5f60718"}},
                "database": {"engineVersion": engine},
                "web": {"image": image},
            }))
            .unwrap()
        };
        let source = |engine: Option<&str>, image: Option<&str>| Resolved {
            set: Some("set-1".into()),
            snapshot_arn: None,
            point_in_time: None,
            data_time: None,
            documents: None,
            documents_behind_seconds: None,
            region: None,
            engine_version: engine.map(str::to_string),
            image: image.map(str::to_string),
        };
        let field = "spec.target.sideBySide.deploymentSpec";
        let judged = |s: &Resolved, t: &crate::api::OpenEMRDeploymentSpec| {
            incompatibility(s, t, None).map(|r| r.reason)
        };
        let current = source(Some("8.4.3"), Some("openemr/openemr:7.0.3"));
        // MySQL 8.4 into 8.0: refused, naming both versions and the field.
        let refused =
            incompatibility(&current, &spec("8.0", "openemr/openemr:7.0.3"), None).unwrap();
        assert_eq!(refused.reason, "EngineVersionTooNew");
        assert!(
            refused.message.contains("8.4.3")
                && refused.message.contains("is 8.0")
                && refused.message.contains(field),
            "{}",
            refused.message
        );
        // A patch level apart is the same major.minor: RDS restores it.
        assert_eq!(
            judged(&current, &spec("8.4", "openemr/openemr:7.0.3")),
            None
        );
        assert_eq!(
            judged(&current, &spec("8.4.1", "openemr/openemr:7.0.3")),
            None
        );
        // OpenEMR 7.0.3's schema under 7.0.2's code: refused.
        let refused =
            incompatibility(&current, &spec("8.4", "openemr/openemr:7.0.2"), None).unwrap();
        assert_eq!(refused.reason, "SchemaNewerThanImage");
        assert!(
            refused.message.contains("openemr/openemr:7.0.2"),
            "{}",
            refused.message
        );
        // Newer targets, equal releases written otherwise, and what cannot be read pass.
        for image in [
            "openemr/openemr:7.0.4",
            "openemr/openemr:7.0.3",
            "registry.example:5000/openemr/openemr:7.0.3-1",
            "openemr/openemr:latest",
            "openemr/openemr@sha256:0123",
            "registry.example:5000/openemr",
        ] {
            assert_eq!(judged(&current, &spec("8.4", image)), None, "{image}");
        }
        assert_eq!(
            judged(&source(None, None), &spec("8.0", "openemr/openemr:7.0.2")),
            None
        );
        assert_eq!(
            judged(
                &source(Some("8.0.40"), Some("openemr/openemr:7.0")),
                &spec("8.0", "openemr/openemr:7.0.0")
            ),
            None
        );
        // A copy of the source's spec keeps its network: not into another region.
        let source_spec = spec("8.4", "openemr/openemr:7.0.3");
        let mut moved = source_spec.clone();
        moved.aws.region = "eu-west-1".into();
        let refused = incompatibility(&current, &moved, Some(("clinic-a", &source_spec))).unwrap();
        assert_eq!(refused.reason, "NetworkNotInRegion");
        assert!(
            refused.message.contains("vpc-0a1b2c3d4e5f60718")
                && refused.message.contains("eu-west-1"),
            "{}",
            refused.message
        );
        let copied = incompatibility(&current, &source_spec, Some(("clinic-a", &source_spec)));
        assert!(copied.is_none());
        // The request's own spec in another region names its own network.
        assert!(incompatibility(&current, &moved, None).is_none());
    }
}
