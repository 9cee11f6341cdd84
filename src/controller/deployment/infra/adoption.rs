//! What adopting a DB instance or a bucket the operator did not make means: the database's
//! origin (which decides whether OpenEMR's installer may ever run on it), how an adopted
//! bucket differs from the clinic's own, and the `Adopted` condition that reports every
//! difference in a pass that changes nothing, before later passes correct them.

use super::database::Difference;
use crate::api::deployment::AdoptedChange;
use crate::api::{OpenEMRDeployment, OpenEMRDeploymentStatus};
use crate::aws::rds::DbInstance;
use crate::aws::s3::BucketSettings;
use crate::conditions::Verdict;
use crate::controller::deployment::clinic::{
    RESTORED_BY, TAG_NAME, TAG_NAMESPACE, TAG_UID, restored_by,
};
use crate::controller::deployment::site::DatabaseOrigin;

/// Condition type reporting how an adopted DB instance differed from the spec.
pub const ADOPTED: &str = "Adopted";

/// Whether the differences of what was adopted were reported already (`Adopted=True`).
pub fn adoption_reported(previous: &OpenEMRDeploymentStatus) -> bool {
    crate::conditions::find(&previous.conditions, ADOPTED).is_some_and(|c| c.status == "True")
}

/// How an adopted bucket differs from what the clinic's own bucket would be.
pub fn bucket_differences(settings: &BucketSettings, kms_key_arn: Option<&str>) -> Vec<Difference> {
    let mut out = Vec::new();
    if settings.versioning.as_deref() != Some("Enabled") {
        out.push(Difference {
            field: "bucketVersioning",
            from: settings.versioning.clone().unwrap_or_else(|| "off".into()),
            to: "Enabled".into(),
            disruptive: false,
        });
    }
    let key_id = |arn: &str| arn.rsplit('/').next().unwrap_or(arn).to_string();
    let with_clinic_key = match (&settings.encryption, kms_key_arn) {
        (Some((algorithm, Some(key))), Some(wanted)) => {
            algorithm == "aws:kms" && key_id(key) == key_id(wanted)
        }
        _ => false,
    };
    if !with_clinic_key {
        out.push(Difference {
            field: "bucketEncryption",
            from: match &settings.encryption {
                Some((algorithm, Some(key))) => format!("{algorithm} with {key}"),
                Some((algorithm, None)) => algorithm.clone(),
                None => "none".into(),
            },
            to: format!("aws:kms with {}", kms_key_arn.unwrap_or("the clinic's key")),
            disruptive: false,
        });
    }
    if settings.public_access_block != [true; 4] {
        out.push(Difference {
            field: "bucketPublicAccessBlock",
            from: format!("{:?}", settings.public_access_block),
            to: "[true, true, true, true]".into(),
            disruptive: false,
        });
    }
    out
}

/// The differences of an adopted instance split into those later passes correct and those
/// RDS applies with an outage that `approved` does not name yet (turning backups on from 0
/// days among them), which the instance keeps until approved.
pub fn awaiting_approval(
    differences: Vec<Difference>,
    db: &DbInstance,
    approved: &[AdoptedChange],
) -> (Vec<Difference>, Vec<Difference>) {
    differences
        .into_iter()
        .map(|mut d| {
            // Turning backups on takes an outage: once approved it waits for
            // `applyChanges` like the other changes that do.
            if d.field == "backupRetentionDays" && db.backup_retention == 0 {
                d.disruptive = true;
            }
            d
        })
        .partition(|d| !d.disruptive || approved.iter().any(|a| a.field() == d.field))
}

/// `Adopted=True ChangesAwaitingApproval` while an adopted instance keeps settings that wait
/// for `spec.adopt.approvedChanges`; `ChangesApproved` once none does after some did.
pub fn approval_verdict(
    identifier: &str,
    awaiting: &[Difference],
    previous: &OpenEMRDeploymentStatus,
) -> Option<Verdict> {
    if !awaiting.is_empty() {
        let list: Vec<_> = awaiting.iter().map(ToString::to_string).collect();
        return Some(Verdict::truthy(
            ADOPTED,
            AWAITING_APPROVAL,
            format!(
                "adopted: DB instance {identifier} keeps, until spec.adopt.approvedChanges names them (RDS applies them with an outage): {}",
                list.join("; ")
            ),
        ));
    }
    let awaited = crate::conditions::find(&previous.conditions, ADOPTED)
        .is_some_and(|c| c.reason == AWAITING_APPROVAL);
    awaited.then(|| {
        Verdict::truthy(
            ADOPTED,
            "ChangesApproved",
            format!(
                "adopted: DB instance {identifier}: every change that awaited approval is approved"
            ),
        )
    })
}

/// Reason of `Adopted` while changes await approval.
pub const AWAITING_APPROVAL: &str = "ChangesAwaitingApproval";

/// The clinic's claim on an adopted bucket, as a difference to correct: its
/// `openemr.io/*` tags, written (merged with the bucket's own) so that no other clinic adopts
/// it after this one, across restarts. `None` once they are this clinic's.
pub fn bucket_claim(
    settings: &BucketSettings,
    mine: &std::collections::BTreeMap<String, String>,
) -> Option<Difference> {
    use super::ownership::{Owner, owner_of};
    let owner = owner_of(&settings.tags, mine);
    (owner != Owner::This).then(|| Difference {
        field: "bucketTags",
        from: match owner {
            Owner::Untagged => "none".to_string(),
            other => other.describe(),
        },
        to: format!(
            "clinic {}/{}",
            mine.get(TAG_NAMESPACE).map_or("", String::as_str),
            mine.get(TAG_NAME).map_or("", String::as_str)
        ),
        disruptive: false,
    })
}

/// `Adopted=True`, listing each difference later passes correct, each one that waits for
/// an approval, and each one RDS cannot change on an existing instance.
pub fn adoption_verdict(
    notes: &[String],
    database: Option<&str>,
    fixable: &[Difference],
    awaiting: &[Difference],
    unchangeable: &[Difference],
    bucket: Option<(&str, &[Difference])>,
) -> Verdict {
    let list = |d: &[Difference]| {
        d.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut parts: Vec<String> = notes.to_vec();
    if let Some(identifier) = database {
        if fixable.is_empty() && awaiting.is_empty() && unchangeable.is_empty() {
            parts.push(format!("DB instance {identifier} matches the spec"));
        }
        if !fixable.is_empty() {
            parts.push(format!(
                "DB instance {identifier} is changed to the spec: {}",
                list(fixable)
            ));
        }
        if !awaiting.is_empty() {
            parts.push(format!(
                "DB instance {identifier} keeps, until spec.adopt.approvedChanges names them (RDS applies them with an outage): {}",
                list(awaiting)
            ));
        }
        if !unchangeable.is_empty() {
            parts.push(format!(
                "DB instance {identifier} differs where RDS cannot change an existing instance (restore it into a new clinic to fix): {}",
                list(unchangeable)
            ));
        }
    }
    let mut any_difference =
        !fixable.is_empty() || !awaiting.is_empty() || !unchangeable.is_empty();
    if let Some((name, diffs)) = bucket {
        any_difference |= !diffs.is_empty();
        parts.push(if diffs.is_empty() {
            format!("bucket {name} matches the spec")
        } else {
            format!("bucket {name} is changed to the spec: {}", list(diffs))
        });
    }
    let reason = if any_difference {
        "DifferencesReported"
    } else {
        "MatchesSpec"
    };
    Verdict::truthy(ADOPTED, reason, format!("adopted: {}", parts.join("; ")))
}

/// Where the clinic's database came from, from the spec and the instance's tags.
pub fn database_origin(d: &OpenEMRDeployment, db: &DbInstance) -> DatabaseOrigin {
    let adopted = d
        .spec
        .adopt
        .as_ref()
        .is_some_and(|a| a.db_instance_identifier.is_some());
    let uid = d.metadata.uid.as_deref().unwrap_or_default();
    // A restored instance carries the clinic's uid like one it created empty: the restore's
    // mark, on the instance or on the clinic, must win over it.
    let restored = db
        .tags
        .get(RESTORED_BY)
        .map(|request_uid| format!("by the RestoreRequest of uid {request_uid}"))
        .or_else(|| restored_by(d).map(|name| format!("by RestoreRequest {name}")));
    if adopted {
        return DatabaseOrigin::Adopted;
    }
    if let Some(by) = restored {
        return DatabaseOrigin::Restored { by };
    }
    match db.tags.get(TAG_UID) {
        Some(tagged) if tagged == uid => DatabaseOrigin::CreatedEmpty,
        other => DatabaseOrigin::Foreign {
            uid: other.cloned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::controller::deployment::infra::plan::tests::clinic;

    #[test]
    fn the_database_origin_comes_from_adoption_then_the_uid_on_the_instance() {
        let d = clinic();
        let uid = d.metadata.uid.clone().unwrap();
        let tagged = |uid: Option<&str>| DbInstance {
            tags: uid
                .map(|u| BTreeMap::from([(TAG_UID.to_string(), u.to_string())]))
                .unwrap_or_default(),
            ..DbInstance::default()
        };
        assert_eq!(
            database_origin(&d, &tagged(Some(&uid))),
            DatabaseOrigin::CreatedEmpty
        );
        assert_eq!(
            database_origin(&d, &tagged(Some("older"))),
            DatabaseOrigin::Foreign {
                uid: Some("older".into())
            }
        );
        assert_eq!(
            database_origin(&d, &tagged(None)),
            DatabaseOrigin::Foreign { uid: None }
        );
        let mut adopted = d.clone();
        adopted.spec.adopt = serde_json::from_value(serde_json::json!({
            "dbInstanceIdentifier": "legacy-db"
        }))
        .unwrap();
        // Even once tagged with this clinic's uid (as adoption will tag it).
        assert_eq!(
            database_origin(&adopted, &tagged(Some(&uid))),
            DatabaseOrigin::Adopted
        );

        // A restored instance carries this clinic's uid too: the restore's mark wins, on
        // the instance (whatever the clinic says) or on the clinic.
        let mut restored = tagged(Some(&uid));
        restored
            .tags
            .insert(RESTORED_BY.into(), "9a9a-request-uid".into());
        assert_eq!(
            database_origin(&d, &restored),
            DatabaseOrigin::Restored {
                by: "by the RestoreRequest of uid 9a9a-request-uid".into()
            }
        );
        let mut waiting = d.clone();
        waiting
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(RESTORED_BY.into(), "copy-a".into());
        assert_eq!(
            database_origin(&waiting, &tagged(Some(&uid))),
            DatabaseOrigin::Restored {
                by: "by RestoreRequest copy-a".into()
            }
        );
    }

    #[test]
    fn an_adopted_bucket_is_claimed_by_its_tags_until_they_are_the_clinics() {
        let mine = BTreeMap::from([
            (TAG_NAMESPACE.to_string(), "clinics".to_string()),
            (TAG_NAME.to_string(), "clinic-a".to_string()),
            (TAG_UID.to_string(), "uid-1".to_string()),
        ]);
        let bare = BucketSettings::default();
        let claim = bucket_claim(&bare, &mine).unwrap();
        assert_eq!(
            claim.to_string(),
            "bucketTags: none → clinic clinics/clinic-a"
        );
        let claimed = BucketSettings {
            tags: mine.clone(),
            ..BucketSettings::default()
        };
        assert_eq!(bucket_claim(&claimed, &mine), None);
    }

    #[test]
    fn turning_backups_on_waits_for_approval_and_then_for_apply_changes() {
        let db = DbInstance {
            backup_retention: 0,
            ..DbInstance::default()
        };
        let on = Difference {
            field: "backupRetentionDays",
            from: "0".into(),
            to: "7".into(),
            disruptive: false,
        };
        let (now, waiting) = awaiting_approval(vec![on.clone()], &db, &[]);
        assert!(now.is_empty());
        assert_eq!(waiting.len(), 1);
        let (now, _) = awaiting_approval(vec![on], &db, &[AdoptedChange::BackupRetention]);
        assert_eq!(now.len(), 1);
        assert!(now[0].disruptive, "sent per applyChanges, not at once");
    }

    #[test]
    fn an_adopted_bucket_is_compared_with_the_clinics_own() {
        let key = "arn:aws:kms:us-east-1:123456789012:key/k-1";
        let good = BucketSettings {
            versioning: Some("Enabled".into()),
            encryption: Some(("aws:kms".into(), Some("k-1".into()))),
            public_access_block: [true; 4],
            ..BucketSettings::default()
        };
        assert_eq!(bucket_differences(&good, Some(key)), []);
        let bare = BucketSettings {
            versioning: Some("Suspended".into()),
            encryption: Some(("AES256".into(), None)),
            public_access_block: [true, false, true, true],
            ..BucketSettings::default()
        };
        let fields: Vec<_> = bucket_differences(&bare, Some(key))
            .into_iter()
            .map(|d| format!("{d}"))
            .collect();
        assert_eq!(
            fields,
            [
                "bucketVersioning: Suspended → Enabled".to_string(),
                format!("bucketEncryption: AES256 → aws:kms with {key}"),
                "bucketPublicAccessBlock: [true, false, true, true] → [true, true, true, true]"
                    .to_string(),
            ]
        );
        // Another key is a difference too.
        let other = BucketSettings {
            encryption: Some(("aws:kms".into(), Some("k-2".into()))),
            ..good.clone()
        };
        assert_eq!(
            bucket_differences(&other, Some(key))[0].field,
            "bucketEncryption"
        );
    }
}
