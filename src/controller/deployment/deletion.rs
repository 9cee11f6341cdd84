//! What deleting a clinic does to its AWS resources, step by step: a pure function of the
//! policy and what AWS shows now, so each pass of the cleanup does the next step and a
//! crash at any point resumes where it was.
//!
//! Rules: the database goes only after a final snapshot with a deterministic name was seen
//! `available` (unless `Delete` with `skipFinalSnapshot`); deleting the namespace never
//! deletes data, whatever the policy says; the bucket, key and file system are never
//! deleted by the operator (the stack marks them `Retain`, and they are listed in the
//! Event so people know where the data is).

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
}

/// The next step of a clinic's deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    CreateFinalSnapshot,
    /// The final snapshot exists and is not `available` yet.
    WaitForSnapshot(String),
    DisableDeletionProtection,
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
    if let Some(db) = &seen.database {
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
    if policy == DeletionPolicy::Delete {
        match &seen.stack {
            Some(stack) if stack.state() == StackState::InProgress => {
                return Step::WaitForStack(stack.status.clone());
            }
            Some(stack) if stack.state() != StackState::Deleted => return Step::DeleteStack,
            _ => {}
        }
        if seen.bucket_exists {
            return Step::DeleteBucket;
        }
        if seen.file_system_exists {
            return Step::DeleteFileSystem;
        }
        let key_alive = seen
            .key_state
            .as_deref()
            .is_some_and(|s| !matches!(s, "PendingDeletion" | "PendingReplicaDeletion"));
        if !snapshot_first && key_alive {
            return Step::ScheduleKeyDeletion;
        }
        if seen.credentials_secret {
            return Step::DeleteCredentialsSecret;
        }
    }
    Step::Done
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
}
