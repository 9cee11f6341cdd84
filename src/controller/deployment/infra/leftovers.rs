//! What a rolled-back first creation of the clinic's stack left behind, and what becomes of
//! it before the stack is made anew. `DeletionPolicy: Retain` keeps the bucket, the file
//! system and the key out of the rollback: they are no longer the stack's, deleting the
//! stack does not remove them, and the bucket keeps the clinic's fixed name, so while it
//! stands every new creation fails on it (and each failed try leaves one more key).
//!
//! A leftover is removed only when it is this clinic's and holds nothing: CloudFormation's
//! own events name it as retained by this clinic's stack, its `openemr.io/*` tags (when it
//! has any) do not name another clinic or incarnation, a bucket holds no object version, a
//! file system meters no more than an empty one and has no mount target (the rollback
//! deleted the stack's own), and a key encrypts nothing that stays (no
//! kept bucket or file system of the same creation, no DB instance of the clinic). Anything
//! else is kept and said; a kept bucket blocks the new creation until a person empties it
//! or adopts it. Pure: [`Leftover`]s come from observe.

use std::collections::BTreeMap;
use std::fmt;

use super::ownership::{Owner, owner_of};
use crate::aws::cloudformation::RetainedResource;
use crate::aws::teardown::{KEY_DELETION_WINDOW_DAYS, RetainedFacts, RetainedKind};

/// A resource the rollback retained, as read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub resource: RetainedResource,
    /// `None`: gone (or never made, or a key already pending deletion).
    pub facts: Option<RetainedFacts>,
}

/// A leftover to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Bucket(String),
    FileSystem(String),
    /// Scheduled for deletion after [`KEY_DELETION_WINDOW_DAYS`].
    Key(String),
}

impl fmt::Display for Removal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Removal::Bucket(b) => write!(f, "empty bucket {b} (deleted)"),
            Removal::FileSystem(fs) => write!(f, "empty file system {fs} (deleted)"),
            Removal::Key(k) => write!(
                f,
                "KMS key {k} (deletion scheduled in {KEY_DELETION_WINDOW_DAYS} days)"
            ),
        }
    }
}

/// What to do with the leftovers of one rolled-back creation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Buckets and file systems first, keys last: a key goes only after what it encrypts.
    pub remove: Vec<Removal>,
    /// What stays, each with why.
    pub kept: Vec<String>,
    /// Why the stack cannot be made anew yet (a bucket that keeps the clinic's name).
    pub blocking: Option<String>,
}

/// Decides for the clinic whose tags are `mine`; `database` is its DB instance, when one
/// exists (it may be encrypted with a retained key).
pub fn decide(
    leftovers: &[Leftover],
    mine: &BTreeMap<String, String>,
    database: Option<&str>,
) -> Decision {
    let mut decision = Decision::default();
    let mut keys = Vec::new();
    let mut data_kept = Vec::new();
    for leftover in leftovers {
        let (Some(id), Some(facts)) = (&leftover.resource.physical_id, &leftover.facts) else {
            continue;
        };
        let resource = &leftover.resource;
        let kind = RetainedKind::of(&resource.resource_type);
        let owner = owner_of(&facts.tags, mine);
        let keep = |why: String| format!("{resource}: {why}");
        let why_kept = match (kind, &owner) {
            (_, Owner::Former { .. } | Owner::Other { .. }) => Some(keep(format!(
                "its tags name {}, not this clinic",
                owner.describe()
            ))),
            (None, _) => Some(keep(format!(
                "the operator removes no {}",
                resource.resource_type
            ))),
            (Some(RetainedKind::Bucket), _) if facts.holds_data => {
                Some(keep("it holds objects".into()))
            }
            (Some(RetainedKind::FileSystem), _) if facts.holds_data => {
                Some(keep("it holds files or is mounted".into()))
            }
            _ => None,
        };
        match (kind, why_kept) {
            (Some(RetainedKind::Bucket), Some(why)) => {
                decision.blocking = Some(format!(
                    "bucket {id}, which the failed creation retained, stays ({why}); the \
                     stack cannot be created while a bucket has the clinic's bucket name: \
                     empty and delete it, or adopt it with spec.adopt.bucketName"
                ));
                data_kept.push(format!("bucket {id}"));
                decision.kept.push(why);
            }
            (Some(RetainedKind::FileSystem), Some(why)) => {
                data_kept.push(format!("file system {id}"));
                decision.kept.push(why);
            }
            (_, Some(why)) => decision.kept.push(why),
            (Some(RetainedKind::Bucket), None) => decision.remove.push(Removal::Bucket(id.clone())),
            (Some(RetainedKind::FileSystem), None) => {
                decision.remove.push(Removal::FileSystem(id.clone()));
            }
            (Some(RetainedKind::Key), None) => keys.push((resource, id.clone())),
            (None, None) => unreachable!("an unknown type is always kept"),
        }
    }
    for (resource, key) in keys {
        let holders: Vec<String> = data_kept
            .iter()
            .cloned()
            .chain(database.map(|db| format!("DB instance {db}")))
            .collect();
        if holders.is_empty() {
            decision.remove.push(Removal::Key(key));
        } else {
            decision
                .kept
                .push(format!("{resource}: it may encrypt {}", holders.join(", ")));
        }
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::deployment::clinic::{TAG_CLUSTER, TAG_NAME, TAG_NAMESPACE, TAG_UID};

    fn mine() -> BTreeMap<String, String> {
        tags("u-1")
    }

    fn tags(uid: &str) -> BTreeMap<String, String> {
        [
            (TAG_CLUSTER, "c1"),
            (TAG_NAMESPACE, "clinics"),
            (TAG_NAME, "north"),
            (TAG_UID, uid),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn leftover(
        logical: &str,
        kind: &str,
        id: Option<&str>,
        facts: Option<RetainedFacts>,
    ) -> Leftover {
        Leftover {
            resource: RetainedResource {
                logical_id: logical.into(),
                resource_type: kind.into(),
                physical_id: id.map(str::to_string),
            },
            facts,
        }
    }

    fn present(tags: BTreeMap<String, String>, holds_data: bool) -> Option<RetainedFacts> {
        Some(RetainedFacts { tags, holds_data })
    }

    fn creation(bucket_data: bool, fs_data: bool) -> Vec<Leftover> {
        vec![
            leftover(
                "Key",
                "AWS::KMS::Key",
                Some("key-1"),
                present(mine(), false),
            ),
            leftover(
                "Bucket",
                "AWS::S3::Bucket",
                Some("oe-c1-north"),
                present(mine(), bucket_data),
            ),
            leftover(
                "FileSystem",
                "AWS::EFS::FileSystem",
                Some("fs-1"),
                present(BTreeMap::new(), fs_data),
            ),
        ]
    }

    #[test]
    fn empty_leftovers_of_this_clinic_are_removed_the_key_last() {
        let decision = decide(&creation(false, false), &mine(), None);
        assert_eq!(
            decision.remove,
            [
                Removal::Bucket("oe-c1-north".into()),
                Removal::FileSystem("fs-1".into()),
                Removal::Key("key-1".into()),
            ]
        );
        assert!(decision.kept.is_empty());
        assert_eq!(decision.blocking, None);
    }

    #[test]
    fn a_bucket_holding_objects_is_kept_with_the_key_and_blocks_the_new_creation() {
        let decision = decide(&creation(true, false), &mine(), None);
        assert_eq!(decision.remove, [Removal::FileSystem("fs-1".into())]);
        assert_eq!(
            decision.kept,
            [
                "Bucket (oe-c1-north): it holds objects",
                "Key (key-1): it may encrypt bucket oe-c1-north",
            ]
        );
        let blocking = decision.blocking.unwrap();
        assert!(blocking.contains("spec.adopt.bucketName"), "{blocking}");
    }

    #[test]
    fn a_file_system_holding_files_keeps_the_key_but_does_not_block() {
        let decision = decide(&creation(false, true), &mine(), None);
        assert_eq!(decision.remove, [Removal::Bucket("oe-c1-north".into())]);
        assert_eq!(decision.kept.len(), 2, "{:?}", decision.kept);
        assert_eq!(decision.blocking, None);
    }

    #[test]
    fn a_db_instance_of_the_clinic_keeps_the_key() {
        let decision = decide(&creation(false, false), &mine(), Some("oe-db"));
        assert_eq!(decision.remove.len(), 2);
        assert_eq!(
            decision.kept,
            ["Key (key-1): it may encrypt DB instance oe-db"]
        );
    }

    #[test]
    fn what_another_clinic_or_incarnation_is_tagged_with_is_kept() {
        let mut other = tags("u-1");
        other.insert(TAG_NAME.into(), "south".into());
        let leftovers = [
            leftover(
                "Bucket",
                "AWS::S3::Bucket",
                Some("oe-c1-north"),
                present(tags("u-0"), false),
            ),
            leftover("Key", "AWS::KMS::Key", Some("key-2"), present(other, false)),
        ];
        let decision = decide(&leftovers, &mine(), None);
        assert!(decision.remove.is_empty(), "{:?}", decision.remove);
        assert!(
            decision.kept[0].contains("earlier clinic"),
            "{:?}",
            decision.kept
        );
        assert!(decision.kept[1].contains("south"), "{:?}", decision.kept);
        assert!(decision.blocking.is_some());
    }

    #[test]
    fn gone_never_made_and_unknown_leftovers() {
        let leftovers = [
            leftover("Bucket", "AWS::S3::Bucket", Some("oe-c1-north"), None),
            leftover("Key", "AWS::KMS::Key", None, None),
            leftover(
                "Queue",
                "AWS::SQS::Queue",
                Some("q-1"),
                present(mine(), false),
            ),
        ];
        let decision = decide(&leftovers, &mine(), None);
        assert!(decision.remove.is_empty());
        assert_eq!(
            decision.kept,
            ["Queue (q-1): the operator removes no AWS::SQS::Queue"]
        );
        assert_eq!(decision.blocking, None);
    }
}
