//! Whether a `snapshot` source's database and documents are one clinic's, judged before a
//! restore starts.
//!
//! OpenEMR's encryption keys are a pair made once, at install: the database's `keys` table
//! and the drive key files under `sites/default/documents/logs_and_misc/methods/` (each
//! encrypted with the other's keys). A database of one clinic with the documents of
//! another makes OpenEMR `die()` on every request that needs a key, and deleting the drive
//! files to get past it loses every secret already encrypted in the database. Sets,
//! policies' latest sets and points in time pair one clinic's halves by construction; a
//! snapshot ARN with a documents location is whatever the request says. So:
//! - the snapshot's `openemr.io/uid` tag (every set snapshot carries its clinic's uid) is
//!   read with `DescribeDBSnapshots` in the snapshot's region;
//! - the documents' set manifest (`backups/<set>/manifest.json`, beside the documents
//!   manifest `backups/documents/<set>.jsonl.gz`) names its clinic;
//! - both known and different: refused (`SourceMismatch`), naming both clinics. Either
//!   unknown (a snapshot the operator did not take, a manifest it cannot read): the restore
//!   goes on, and its `Accepted` condition says the pairing was not checked and why.

use crate::api::restore::SnapshotSource;
use crate::controller::backup::set::{self, ClinicIdentity};
use crate::controller::deployment::clinic::{TAG_NAME, TAG_UID};

use super::source::Refusal;

/// What was found of each half's clinic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineageSeen {
    /// The snapshot's clinic: its uid and name tags, or why they are not known.
    pub snapshot: Result<(String, Option<String>), String>,
    /// The documents' set manifest's clinic, or why it is not known.
    pub documents: Result<ClinicIdentity, String>,
}

/// The region in a snapshot ARN (`arn:aws:rds:REGION:ACCOUNT:snapshot:NAME`).
pub fn arn_region(arn: &str) -> Option<&str> {
    arn.split(':').nth(3).filter(|r| !r.is_empty())
}

/// The snapshot's name in its ARN.
pub fn arn_name(arn: &str) -> Option<&str> {
    arn.split_once(":snapshot:").map(|(_, name)| name)
}

/// The set manifest beside a documents manifest named as the operator names them; `None`
/// for a documents manifest named otherwise (not a set's).
pub fn set_manifest_beside(documents_manifest: &str) -> Option<String> {
    let name = documents_manifest
        .strip_prefix(&set::documents_manifests_prefix())?
        .strip_suffix(".jsonl.gz")?;
    (!name.is_empty() && !name.contains('/')).then(|| set::set_manifest_key(name))
}

/// The judgement: `Err` refuses the restore; `Ok` lets it go, saying what was found
/// (`status.sourceCheck`), `None` for a database alone.
pub fn judge(source: &SnapshotSource, seen: &LineageSeen) -> Result<Option<String>, Refusal> {
    let Some(documents) = &source.documents else {
        return Ok(None);
    };
    let at = format!("s3://{}/{}", documents.bucket, documents.manifest);
    match (&seen.snapshot, &seen.documents) {
        (Ok((uid, name)), Ok(clinic)) if *uid != clinic.uid => Err(Refusal {
            reason: "SourceMismatch",
            message: format!(
                "spec.source.snapshot: snapshot {} is clinic {}'s (uid {uid}) but the documents {at} are clinic {}/{}'s (uid {}); OpenEMR's encryption keys live half in the database and half in the documents, so one clinic's database cannot run with another's documents",
                source.snapshot_arn,
                name.as_deref().unwrap_or("?"),
                clinic.namespace,
                clinic.name,
                clinic.uid,
            ),
        }),
        (Ok(_), Ok(clinic)) => Ok(Some(format!(
            "the snapshot and the documents are both clinic {}/{}'s (uid {})",
            clinic.namespace, clinic.name, clinic.uid
        ))),
        (snapshot, documents) => {
            let why: Vec<&str> = [snapshot.as_ref().err(), documents.as_ref().err()]
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect();
            Ok(Some(format!(
                "the snapshot and the documents are not checked to be one clinic's: {}",
                why.join("; ")
            )))
        }
    }
}

/// The snapshot's clinic from its tags.
pub fn snapshot_clinic(
    arn: &str,
    tags: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<(String, Option<String>), String> {
    let Some(tags) = tags else {
        return Err(format!(
            "snapshot {arn} is not found in its region in this operator's account"
        ));
    };
    match tags.get(TAG_UID) {
        Some(uid) => Ok((uid.clone(), tags.get(TAG_NAME).cloned())),
        None => Err(format!(
            "snapshot {arn} has no {TAG_UID} tag (not a set's snapshot)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::restore::DocumentsSource;
    use std::collections::BTreeMap;

    const ARN: &str = "arn:aws:rds:eu-west-1:123456789012:snapshot:openemr-uid-a-set-1";

    fn source(documents: bool) -> SnapshotSource {
        SnapshotSource {
            snapshot_arn: ARN.into(),
            kms_key_arn: None,
            documents: documents.then(|| DocumentsSource {
                bucket: "bucket-a".into(),
                manifest: "backups/documents/set-1.jsonl.gz".into(),
            }),
        }
    }

    fn clinic(uid: &str) -> ClinicIdentity {
        ClinicIdentity {
            cluster: "c1".into(),
            namespace: "clinics".into(),
            name: format!("clinic-{uid}"),
            uid: uid.into(),
        }
    }

    #[test]
    fn the_arn_and_the_manifest_beside_are_read_from_names() {
        assert_eq!(arn_region(ARN), Some("eu-west-1"));
        assert_eq!(arn_name(ARN), Some("openemr-uid-a-set-1"));
        assert_eq!(
            arn_name("arn:aws:rds:us-east-1:1:snapshot:rds:db-2026-01-01-03-00"),
            Some("rds:db-2026-01-01-03-00")
        );
        assert_eq!(
            set_manifest_beside("backups/documents/set-1.jsonl.gz").as_deref(),
            Some("backups/set-1/manifest.json")
        );
        assert_eq!(set_manifest_beside("elsewhere/set-1.jsonl.gz"), None);
        assert_eq!(set_manifest_beside("backups/documents/a/b.jsonl.gz"), None);
        assert_eq!(set_manifest_beside("backups/documents/.jsonl.gz"), None);
    }

    #[test]
    fn halves_of_two_clinics_are_refused_naming_both() {
        let seen = LineageSeen {
            snapshot: Ok(("uid-a".into(), Some("clinic-a".into()))),
            documents: Ok(clinic("uid-b")),
        };
        let refused = judge(&source(true), &seen).unwrap_err();
        assert_eq!(refused.reason, "SourceMismatch");
        for said in [
            "clinic clinic-a's (uid uid-a)",
            "clinics/clinic-uid-b's (uid uid-b)",
            ARN,
        ] {
            assert!(refused.message.contains(said), "{}", refused.message);
        }
        let one = LineageSeen {
            documents: Ok(clinic("uid-a")),
            ..seen
        };
        let found = judge(&source(true), &one).unwrap().unwrap();
        assert!(
            found.contains("both clinic clinics/clinic-uid-a's"),
            "{found}"
        );
    }

    #[test]
    fn what_cannot_be_known_lets_the_restore_go_saying_so() {
        let seen = LineageSeen {
            snapshot: snapshot_clinic(ARN, Some(&BTreeMap::new())),
            documents: Err("s3://bucket-a/backups/set-1/manifest.json: AccessDenied".into()),
        };
        let note = judge(&source(true), &seen).unwrap().unwrap();
        assert!(note.contains("not checked"), "{note}");
        assert!(
            note.contains("has no openemr.io/uid tag") && note.contains("AccessDenied"),
            "{note}"
        );
        // A database alone pairs with nothing.
        assert_eq!(judge(&source(false), &seen), Ok(None));
        assert!(
            snapshot_clinic(ARN, None)
                .unwrap_err()
                .contains("not found")
        );
    }
}
