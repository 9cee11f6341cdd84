//! What deleting a clinic does to its AWS resources, step by step: a pure function of the
//! policy and what AWS shows now, so each pass of the cleanup ([`act`]) does the next step
//! and a crash at any point resumes where it was.
//!
//! Rules: the database goes only after a final snapshot with a deterministic name was seen
//! `available` (unless `Delete` with `skipFinalSnapshot`); deleting the namespace never
//! deletes data, whatever the policy says; only `Delete` removes what the stack retained
//! (bucket, file system, key), and even then:
//! - nothing the operator did not make: an adopted DB instance or bucket is left as it
//!   was, under every policy (deletion protection is turned back on if an earlier cleanup
//!   turned it off); with an adopted instance kept, `Delete` keeps the rest too (the
//!   stack's groups serve the instance, the file system's `sites/` holds the drive keys
//!   its encrypted data pairs with, the Secrets its passwords);
//! - no backup: a bucket holding anything under
//!   [`BACKUP_PREFIXES`](super::clinic::BACKUP_PREFIXES) is kept;
//! - the KMS key is never scheduled for deletion while anything encrypted with it remains
//!   ([`key_holders`]: the final snapshot, other manual snapshots of the instance such as
//!   upgrade snapshots and backup sets', retained automated backups, a kept bucket, an
//!   adopted instance).
//!
//! Whatever is kept is listed in the `CleanedUp` Event, with why.

pub mod act;

use crate::api::DeletionPolicy;
use crate::aws::cloudformation::{StackInfo, StackState};
use crate::aws::rds::{DbInstance, DbSnapshot};

/// What the cleanup saw.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub database: Option<DbInstance>,
    pub final_snapshot: Option<DbSnapshot>,
    pub stack: Option<StackInfo>,
    /// The operator's own credentials Secret exists.
    pub credentials_secret: bool,
    /// What the stack retained (read for `Delete` only).
    pub bucket_exists: bool,
    pub file_system_exists: bool,
    /// The key's state, `None` when unknown or gone.
    pub key_state: Option<String>,
    /// `spec.adopt` names the DB instance / the bucket: the operator did not make them.
    pub adopted_database: bool,
    pub adopted_bucket: bool,
    /// The bucket holds objects under [`BACKUP_PREFIXES`](super::clinic::BACKUP_PREFIXES)
    /// (read for `Delete` only).
    pub bucket_holds_backups: bool,
    /// Manual snapshots of the instance besides the final one (upgrade snapshots, backup
    /// sets'), by name (read when the key's deletion is weighed).
    pub snapshots: Vec<String>,
    /// Automated backups of the instance RDS retains after its deletion (read likewise).
    pub automated_backups: usize,
}

/// The next step of a clinic's deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    CreateFinalSnapshot,
    /// The final snapshot exists and is not `available` yet.
    WaitForSnapshot(String),
    DisableDeletionProtection,
    /// An adopted instance left unprotected by an earlier cleanup: protected again.
    EnableDeletionProtection,
    DeleteDatabase,
    /// RDS is deleting the instance.
    WaitForDatabase(String),
    DeleteStack,
    WaitForStack(String),
    /// Empties (every version) and deletes the bucket the stack retained.
    DeleteBucket,
    DeleteFileSystem,
    /// Only without a final snapshot: the snapshot and retained automated backups are
    /// encrypted with the key, and deleting it would make them unreadable.
    ScheduleKeyDeletion,
    DeleteCredentialsSecret,
    /// Nothing left to do: the finalizer may go.
    Done,
}

/// The effective policy: `Retain` when the namespace is being deleted.
pub fn effective_policy(policy: DeletionPolicy, namespace_terminating: bool) -> DeletionPolicy {
    if namespace_terminating {
        DeletionPolicy::Retain
    } else {
        policy
    }
}

/// The next step for `policy`, given what AWS shows.
pub fn next_step(policy: DeletionPolicy, skip_final_snapshot: bool, seen: &Seen) -> Step {
    if policy == DeletionPolicy::Retain {
        return Step::Done;
    }
    let snapshot_first = !(policy == DeletionPolicy::Delete && skip_final_snapshot);
    if let (Some(db), true) = (&seen.database, seen.adopted_database) {
        // Ours only to borrow. An earlier cleanup gets past the final snapshot before it
        // turns protection off: both seen, it did, and protection goes back on.
        if !db.deletion_protection && seen.final_snapshot.is_some() {
            return Step::EnableDeletionProtection;
        }
    } else if let Some(db) = &seen.database {
        if db.status == "deleting" {
            return Step::WaitForDatabase(db.status.clone());
        }
        if snapshot_first {
            match &seen.final_snapshot {
                None => return Step::CreateFinalSnapshot,
                Some(s) if s.status != "available" => {
                    return Step::WaitForSnapshot(s.status.clone());
                }
                Some(_) => {}
            }
        }
        if db.deletion_protection {
            return Step::DisableDeletionProtection;
        }
        return Step::DeleteDatabase;
    }
    if policy == DeletionPolicy::Delete && adopted_instance_kept(seen) {
        // The kept instance lives in the stack's subnet group, security group and
        // parameter group, and its encrypted data pairs with the drive keys in `sites/` on
        // the file system: all of it stays with it.
        return Step::Done;
    }
    if policy == DeletionPolicy::Delete {
        match &seen.stack {
            Some(stack) if stack.state() == StackState::InProgress => {
                return Step::WaitForStack(stack.status.clone());
            }
            Some(stack) if stack.state() != StackState::Deleted => return Step::DeleteStack,
            _ => {}
        }
        if seen.bucket_exists && bucket_kept(seen).is_none() {
            return Step::DeleteBucket;
        }
        if seen.file_system_exists {
            return Step::DeleteFileSystem;
        }
        let key_alive = seen
            .key_state
            .as_deref()
            .is_some_and(|s| !matches!(s, "PendingDeletion" | "PendingReplicaDeletion"));
        // With a final snapshot meant to exist, the key stays even if it is not seen.
        if !snapshot_first && key_alive && key_holders(seen).is_empty() {
            return Step::ScheduleKeyDeletion;
        }
        if seen.credentials_secret && !seen.adopted_database {
            return Step::DeleteCredentialsSecret;
        }
    }
    Step::Done
}

/// An adopted instance is there and stays: under `Delete`, so does everything of the clinic.
pub fn adopted_instance_kept(seen: &Seen) -> bool {
    seen.adopted_database && seen.database.is_some()
}

/// Why the bucket stays under `Delete`, if it does.
pub fn bucket_kept(seen: &Seen) -> Option<&'static str> {
    if seen.adopted_bucket {
        Some("adopted (spec.adopt.bucketName): the operator did not make it")
    } else if seen.bucket_holds_backups {
        Some(
            "it holds backup sets (documents/, backups/): delete the sets first, then the bucket by hand",
        )
    } else {
        None
    }
}

/// The instance's snapshots (besides the final one) and retained automated backups.
pub fn backups_left(seen: &Seen) -> Vec<String> {
    let mut left: Vec<String> = seen
        .snapshots
        .iter()
        .map(|s| format!("snapshot {s}"))
        .collect();
    if seen.automated_backups > 0 {
        left.push(format!(
            "{} retained automated backup(s) of the DB instance, until they expire",
            seen.automated_backups
        ));
    }
    left
}

/// What is still encrypted with the clinic's KMS key, or may be: while anything is, the
/// key is not scheduled for deletion (that would make it unreadable for good).
pub fn key_holders(seen: &Seen) -> Vec<String> {
    let mut holders = Vec::new();
    if let Some(s) = &seen.final_snapshot {
        holders.push(format!("final snapshot {}", s.identifier));
    }
    holders.extend(backups_left(seen));
    if seen.bucket_exists && bucket_kept(seen).is_some() {
        holders.push("the kept bucket".to_string());
    }
    if seen.adopted_database && seen.database.is_some() {
        holders.push("the adopted DB instance".to_string());
    }
    holders
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(status: &str, protected: bool) -> Option<DbInstance> {
        Some(DbInstance {
            identifier: "db".into(),
            status: status.into(),
            deletion_protection: protected,
            ..DbInstance::default()
        })
    }

    fn snapshot(status: &str) -> Option<DbSnapshot> {
        Some(DbSnapshot {
            identifier: "db-final".into(),
            arn: None,
            status: status.into(),
            tags: Default::default(),
        })
    }

    fn stack(status: &str) -> Option<StackInfo> {
        Some(StackInfo {
            status: status.into(),
            ..StackInfo::default()
        })
    }

    #[test]
    fn retain_touches_nothing() {
        let seen = Seen {
            database: db("available", true),
            stack: stack("CREATE_COMPLETE"),
            credentials_secret: true,
            ..Seen::default()
        };
        assert_eq!(next_step(DeletionPolicy::Retain, false, &seen), Step::Done);
    }

    #[test]
    fn the_database_goes_only_after_its_final_snapshot_is_available() {
        use DeletionPolicy::*;
        let cases: [(DeletionPolicy, bool, Seen, Step); 9] = [
            (
                Snapshot,
                false,
                Seen {
                    database: db("available", true),
                    ..Seen::default()
                },
                Step::CreateFinalSnapshot,
            ),
            (
                Snapshot,
                false,
                Seen {
                    database: db("backing-up", true),
                    final_snapshot: snapshot("creating"),
                    ..Seen::default()
                },
                Step::WaitForSnapshot("creating".into()),
            ),
            (
                Snapshot,
                false,
                Seen {
                    database: db("available", true),
                    final_snapshot: snapshot("available"),
                    ..Seen::default()
                },
                Step::DisableDeletionProtection,
            ),
            (
                Snapshot,
                false,
                Seen {
                    database: db("available", false),
                    final_snapshot: snapshot("available"),
                    ..Seen::default()
                },
                Step::DeleteDatabase,
            ),
            (
                Snapshot,
                false,
                Seen {
                    database: db("deleting", false),
                    final_snapshot: snapshot("available"),
                    ..Seen::default()
                },
                Step::WaitForDatabase("deleting".into()),
            ),
            // Snapshot keeps the stack (it holds the key, bucket and file system) and the Secret.
            (
                Snapshot,
                false,
                Seen {
                    final_snapshot: snapshot("available"),
                    stack: stack("CREATE_COMPLETE"),
                    credentials_secret: true,
                    ..Seen::default()
                },
                Step::Done,
            ),
            // Delete without a final snapshot, only when the spec says so.
            (
                Delete,
                true,
                Seen {
                    database: db("available", false),
                    ..Seen::default()
                },
                Step::DeleteDatabase,
            ),
            (
                Delete,
                false,
                Seen {
                    database: db("available", false),
                    ..Seen::default()
                },
                Step::CreateFinalSnapshot,
            ),
            (
                Delete,
                false,
                Seen {
                    stack: stack("DELETE_IN_PROGRESS"),
                    credentials_secret: true,
                    ..Seen::default()
                },
                Step::WaitForStack("DELETE_IN_PROGRESS".into()),
            ),
        ];
        for (policy, skip, seen, step) in cases {
            assert_eq!(next_step(policy, skip, &seen), step, "{policy:?} {seen:?}");
        }
    }

    #[test]
    fn delete_removes_the_stack_then_the_secret() {
        let seen = Seen {
            stack: stack("CREATE_COMPLETE"),
            credentials_secret: true,
            ..Seen::default()
        };
        assert_eq!(
            next_step(DeletionPolicy::Delete, false, &seen),
            Step::DeleteStack
        );
        let seen = Seen {
            credentials_secret: true,
            ..Seen::default()
        };
        assert_eq!(
            next_step(DeletionPolicy::Delete, false, &seen),
            Step::DeleteCredentialsSecret
        );
        assert_eq!(
            next_step(DeletionPolicy::Delete, false, &Seen::default()),
            Step::Done
        );
    }

    #[test]
    fn delete_removes_what_the_stack_retained_and_keeps_the_key_a_snapshot_needs() {
        let retained = Seen {
            bucket_exists: true,
            file_system_exists: true,
            key_state: Some("Enabled".into()),
            ..Seen::default()
        };
        assert_eq!(
            next_step(DeletionPolicy::Delete, false, &retained),
            Step::DeleteBucket
        );
        let fs_and_key = Seen {
            bucket_exists: false,
            ..retained.clone()
        };
        assert_eq!(
            next_step(DeletionPolicy::Delete, false, &fs_and_key),
            Step::DeleteFileSystem
        );
        let key_only = Seen {
            file_system_exists: false,
            ..fs_and_key
        };
        // With a final snapshot the key stays: the snapshot is encrypted with it.
        assert_eq!(
            next_step(DeletionPolicy::Delete, false, &key_only),
            Step::Done
        );
        assert_eq!(
            next_step(DeletionPolicy::Delete, true, &key_only),
            Step::ScheduleKeyDeletion
        );
        let pending = Seen {
            key_state: Some("PendingDeletion".into()),
            ..key_only
        };
        assert_eq!(
            next_step(DeletionPolicy::Delete, true, &pending),
            Step::Done
        );
        // Snapshot keeps all of them.
        assert_eq!(
            next_step(DeletionPolicy::Snapshot, false, &retained),
            Step::Done
        );
    }

    #[test]
    fn deleting_the_namespace_keeps_the_data() {
        assert_eq!(
            effective_policy(DeletionPolicy::Delete, true),
            DeletionPolicy::Retain
        );
        assert_eq!(
            effective_policy(DeletionPolicy::Snapshot, false),
            DeletionPolicy::Snapshot
        );
    }

    #[test]
    fn adopted_resources_are_left_as_they_were_under_every_policy() {
        for policy in [DeletionPolicy::Snapshot, DeletionPolicy::Delete] {
            let seen = Seen {
                database: db("available", true),
                adopted_database: true,
                bucket_exists: true,
                adopted_bucket: true,
                credentials_secret: true,
                // Kept with the instance, which uses its groups and pairs with sites/.
                stack: stack("CREATE_COMPLETE"),
                file_system_exists: true,
                key_state: Some("Enabled".into()),
                ..Seen::default()
            };
            assert_eq!(next_step(policy, true, &seen), Step::Done, "{policy:?}");
            assert_eq!(next_step(policy, false, &seen), Step::Done, "{policy:?}");
            // An earlier cleanup took the final snapshot and turned protection off.
            let unprotected = Seen {
                database: db("available", false),
                final_snapshot: snapshot("available"),
                ..seen.clone()
            };
            assert_eq!(
                next_step(policy, false, &unprotected),
                Step::EnableDeletionProtection,
                "{policy:?}"
            );
        }
    }

    #[test]
    fn a_bucket_holding_backups_is_kept_with_its_key() {
        let seen = Seen {
            stack: stack("DELETE_COMPLETE"),
            bucket_exists: true,
            bucket_holds_backups: true,
            key_state: Some("Enabled".into()),
            ..Seen::default()
        };
        assert_eq!(next_step(DeletionPolicy::Delete, true, &seen), Step::Done);
        assert!(bucket_kept(&seen).unwrap().contains("backup sets"));
        assert_eq!(key_holders(&seen), ["the kept bucket"]);
        let empty = Seen {
            bucket_holds_backups: false,
            ..seen
        };
        assert_eq!(
            next_step(DeletionPolicy::Delete, true, &empty),
            Step::DeleteBucket
        );
    }

    #[test]
    fn the_key_stays_while_anything_encrypted_with_it_remains() {
        let base = Seen {
            stack: stack("DELETE_COMPLETE"),
            key_state: Some("Enabled".into()),
            ..Seen::default()
        };
        assert_eq!(
            next_step(DeletionPolicy::Delete, true, &base),
            Step::ScheduleKeyDeletion,
            "nothing holds it"
        );
        let holders = [
            Seen {
                final_snapshot: snapshot("available"),
                ..base.clone()
            },
            Seen {
                snapshots: vec!["db-upgrade-g4-uid".into()],
                ..base.clone()
            },
            Seen {
                automated_backups: 2,
                ..base.clone()
            },
            Seen {
                bucket_exists: true,
                adopted_bucket: true,
                ..base.clone()
            },
            Seen {
                bucket_exists: true,
                bucket_holds_backups: true,
                ..base.clone()
            },
            Seen {
                database: db("available", true),
                adopted_database: true,
                ..base.clone()
            },
        ];
        for seen in holders {
            assert_eq!(key_holders(&seen).len(), 1, "{seen:?}");
            assert_eq!(
                next_step(DeletionPolicy::Delete, true, &seen),
                Step::Done,
                "{seen:?}"
            );
        }
        // Already pending deletion: nothing more to do.
        let pending = Seen {
            key_state: Some("PendingDeletion".into()),
            ..base
        };
        assert_eq!(
            next_step(DeletionPolicy::Delete, true, &pending),
            Step::Done
        );
    }
}
