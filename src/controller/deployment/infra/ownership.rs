//! Whose an AWS resource is, read from the `openemr.io/{cluster,namespace,name,uid}` tags
//! every resource of a clinic carries, and what a clinic may do with one it finds: a
//! resource of another clinic is never adopted (two clinics would manage one database);
//! one left by an earlier clinic of the same name (deleted under `Retain` and created
//! again, or a cluster rebuilt after a loss) is never taken over silently, only through
//! `spec.adopt`, and is reported as such. Pure: the tags come from observe.

use std::collections::BTreeMap;

use super::{AdoptedBucket, Infra};
use crate::api::OpenEMRDeployment;
use crate::conditions::Verdict;
use crate::controller::deployment::clinic::{TAG_CLUSTER, TAG_NAME, TAG_NAMESPACE, TAG_UID};

/// Who a resource belongs to, as its tags say, seen from one clinic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// No `openemr.io/namespace` and `name` tags: made by hand or by another tool.
    Untagged,
    /// This clinic.
    This,
    /// A clinic of the same namespace and name with another uid or cluster id: an earlier
    /// incarnation of this one.
    Former {
        uid: Option<String>,
        cluster: Option<String>,
    },
    /// Another clinic.
    Other {
        cluster: Option<String>,
        namespace: String,
        name: String,
    },
}

/// Whose a resource with `tags` is, for the clinic whose own tags are `mine`.
pub fn owner_of(tags: &BTreeMap<String, String>, mine: &BTreeMap<String, String>) -> Owner {
    let (Some(namespace), Some(name)) = (tags.get(TAG_NAMESPACE), tags.get(TAG_NAME)) else {
        return Owner::Untagged;
    };
    if Some(namespace) != mine.get(TAG_NAMESPACE) || Some(name) != mine.get(TAG_NAME) {
        return Owner::Other {
            cluster: tags.get(TAG_CLUSTER).cloned(),
            namespace: namespace.clone(),
            name: name.clone(),
        };
    }
    if tags.get(TAG_UID) == mine.get(TAG_UID) && tags.get(TAG_CLUSTER) == mine.get(TAG_CLUSTER) {
        Owner::This
    } else {
        Owner::Former {
            uid: tags.get(TAG_UID).cloned(),
            cluster: tags.get(TAG_CLUSTER).cloned(),
        }
    }
}

impl Owner {
    /// Who, in words: "an earlier clinic of this name (uid …, cluster …)".
    pub fn describe(&self) -> String {
        match self {
            Owner::Untagged | Owner::This => String::new(),
            Owner::Former { uid, cluster } => format!(
                "an earlier clinic of this name (uid {}, cluster {})",
                uid.as_deref().unwrap_or("unknown"),
                cluster.as_deref().unwrap_or("unknown")
            ),
            Owner::Other {
                cluster,
                namespace,
                name,
            } => format!(
                "clinic {namespace}/{name} of cluster {}",
                cluster.as_deref().unwrap_or("unknown")
            ),
        }
    }
}

/// What the clinic may do with what it found under its names or in `spec.adopt`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ownership {
    /// `Accepted=False`: nothing may be changed.
    pub refusal: Option<Verdict>,
    /// What was found of an earlier incarnation and taken over through `spec.adopt`, for
    /// the `Adopted` condition.
    pub notes: Vec<String>,
}

/// Judges the stack and instance found under the clinic's names and what `spec.adopt`
/// names, with [`Infra::claimed_by`]: another clinic that adopted the same instance first
/// (the inventory's claims, before its tags say so).
pub fn judge(d: &OpenEMRDeployment, infra: &Infra) -> Ownership {
    let claimed_by = &infra.claimed_by;
    let mine = &infra.tags;
    let adopt = d.spec.adopt.as_ref();
    let adopted_db = adopt.and_then(|a| a.db_instance_identifier.as_deref());
    let adopted_bucket = adopt.and_then(|a| a.bucket_name.as_deref());
    let mut out = Ownership::default();
    let mut conflicts = Vec::new();
    let mut former_adopted = None;

    if let (Some(identifier), Some(db)) = (adopted_db, &infra.database) {
        match (owner_of(&db.tags, mine), claimed_by) {
            // Its tags say it is this clinic's: whoever claimed it in memory first is wrong.
            (Owner::This, _) => {}
            (owner @ Owner::Other { .. }, _) => conflicts.push(format!(
                "spec.adopt.dbInstanceIdentifier: DB instance {identifier} belongs to {} (its openemr.io tags)",
                owner.describe()
            )),
            (_, Some((namespace, name))) => conflicts.push(format!(
                "spec.adopt.dbInstanceIdentifier: DB instance {identifier} is adopted by clinic {namespace}/{name} already"
            )),
            (owner @ Owner::Former { .. }, None) => {
                out.notes.push(format!(
                    "DB instance {identifier} was made by {}",
                    owner.describe()
                ));
                former_adopted = Some(owner);
            }
            _ => {}
        }
    }
    if let (Some(bucket), AdoptedBucket::Seen(settings)) = (adopted_bucket, &infra.adopted_bucket) {
        match owner_of(&settings.tags, mine) {
            owner @ Owner::Other { .. } => conflicts.push(format!(
                "spec.adopt.bucketName: bucket {bucket} belongs to {} (its openemr.io tags)",
                owner.describe()
            )),
            owner @ Owner::Former { .. } => {
                out.notes
                    .push(format!("bucket {bucket} was made by {}", owner.describe()));
                former_adopted.get_or_insert(owner);
            }
            _ => {}
        }
    }
    if !conflicts.is_empty() {
        out.refusal = Some(Verdict::falsy(
            "Accepted",
            "AdoptionConflict",
            format!(
                "{}; a resource is managed by one clinic only, so nothing is changed. If that clinic is gone, remove the resource's openemr.io/* tags first",
                conflicts.join("; ")
            ),
        ));
        return out;
    }

    // Under the clinic's own names: what an earlier incarnation left, taken over only when
    // the clinic adopts what that incarnation made.
    let mut found = Vec::new();
    if let Some(stack) = &infra.stack {
        match owner_of(&stack.tags, mine) {
            owner @ Owner::Former { .. } if Some(&owner) == former_adopted.as_ref() => out
                .notes
                .push(format!("its stack {} is taken over", stack.name)),
            owner @ (Owner::Former { .. } | Owner::Other { .. }) => {
                found.push(format!("stack {} ({})", stack.name, owner.describe()))
            }
            _ => {}
        }
    }
    if let (None, Some(db)) = (adopted_db, &infra.database)
        && let owner @ (Owner::Former { .. } | Owner::Other { .. }) = owner_of(&db.tags, mine)
    {
        found.push(format!(
            "DB instance {} ({})",
            db.identifier,
            owner.describe()
        ));
    }
    if !found.is_empty() {
        out.refusal = Some(Verdict::falsy(
            "Accepted",
            "FormerIncarnationFound",
            format!(
                "found under this clinic's names, made by another clinic: {}. Nothing is changed: it may hold an earlier clinic's data. To take it over with its data, create this clinic with spec.adopt naming that clinic's DB instance or bucket; to start afresh, delete what was found (after a final snapshot if its data matters)",
                found.join("; ")
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::cloudformation::StackInfo;
    use crate::aws::rds::DbInstance;
    use crate::aws::s3::BucketSettings;
    use crate::controller::deployment::clinic::{ClinicNames, ClusterId};

    fn tags(cluster: &str, namespace: &str, name: &str, uid: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (TAG_CLUSTER.to_string(), cluster.to_string()),
            (TAG_NAMESPACE.to_string(), namespace.to_string()),
            (TAG_NAME.to_string(), name.to_string()),
            (TAG_UID.to_string(), uid.to_string()),
        ])
    }

    fn mine() -> BTreeMap<String, String> {
        tags("prod", "clinics", "clinic-a", "uid-now")
    }

    #[test]
    fn tags_tell_this_clinic_an_earlier_one_another_one_or_none() {
        assert_eq!(owner_of(&mine(), &mine()), Owner::This);
        assert_eq!(owner_of(&BTreeMap::new(), &mine()), Owner::Untagged);
        assert_eq!(
            owner_of(&tags("prod", "clinics", "clinic-a", "uid-old"), &mine()),
            Owner::Former {
                uid: Some("uid-old".into()),
                cluster: Some("prod".into())
            }
        );
        // A cluster rebuilt after a loss under another id: an earlier incarnation too.
        assert!(matches!(
            owner_of(&tags("prod-2", "clinics", "clinic-a", "uid-now"), &mine()),
            Owner::Former { .. }
        ));
        assert!(matches!(
            owner_of(&tags("prod", "clinics", "clinic-b", "uid-b"), &mine()),
            Owner::Other { .. }
        ));
        assert!(matches!(
            owner_of(&tags("prod", "other", "clinic-a", "uid-x"), &mine()),
            Owner::Other { .. }
        ));
    }

    fn clinic(adopt: serde_json::Value) -> OpenEMRDeployment {
        let mut spec = serde_json::json!({
            "aws": {"region": "us-east-1"},
            "network": {"existing": {"vpcId": "vpc-0a1b2c3d4e5f60718",
                "subnetIds": ["subnet-0a1b2c3d4e5f60718", "subnet-1a2b3c4d5e6f70819"],
                "clusterSecurityGroupId": "sg-0a1b2c3d4e5f60718"}},
        });
        if !adopt.is_null() {
            spec["adopt"] = adopt;
        }
        let mut d = OpenEMRDeployment::new("clinic-a", serde_json::from_value(spec).unwrap());
        d.metadata.namespace = Some("clinics".into());
        d.metadata.uid = Some("uid-now".into());
        d
    }

    fn infra(
        stack: Option<BTreeMap<String, String>>,
        db: Option<BTreeMap<String, String>>,
        bucket: Option<BTreeMap<String, String>>,
    ) -> Infra {
        let names = ClinicNames::new(&ClusterId::parse("prod").unwrap(), "clinics", "clinic-a");
        Infra {
            tags: mine(),
            stack: stack.map(|tags| StackInfo {
                name: names.stack.clone(),
                id: "id".into(),
                status: "CREATE_COMPLETE".into(),
                status_reason: None,
                outputs: BTreeMap::new(),
                tags,
            }),
            stack_failure: None,
            leftovers: Vec::new(),
            database: db.map(|tags| DbInstance {
                identifier: "legacy-db".into(),
                status: "available".into(),
                tags,
                ..DbInstance::default()
            }),
            credentials_secret: true,
            user_master_password: false,
            progress_interval: std::time::Duration::from_secs(1),
            adopted_bucket: match bucket {
                Some(tags) => AdoptedBucket::Seen(BucketSettings {
                    tags,
                    ..BucketSettings::default()
                }),
                None => AdoptedBucket::NotRead,
            },
            claimed_by: None,
            refused: None,
            audit: crate::controller::deployment::infra::AuditView::Off,
            names,
        }
    }

    fn reason(o: &Ownership) -> Option<&str> {
        o.refusal.as_ref().map(|v| v.reason)
    }

    #[test]
    fn what_this_clinic_made_or_nobody_tagged_is_its_own() {
        let d = clinic(serde_json::Value::Null);
        let o = judge(&d, &infra(Some(mine()), Some(mine()), None));
        assert_eq!(o, Ownership::default());
        let adopting = clinic(serde_json::json!({"dbInstanceIdentifier": "legacy-db"}));
        let o = judge(&adopting, &infra(None, Some(BTreeMap::new()), None));
        assert_eq!(o, Ownership::default());
    }

    #[test]
    fn another_clinics_instance_or_bucket_is_never_adopted() {
        let other = tags("prod", "clinics", "clinic-b", "uid-b");
        let d = clinic(serde_json::json!({"dbInstanceIdentifier": "legacy-db"}));
        let o = judge(&d, &infra(None, Some(other.clone()), None));
        assert_eq!(reason(&o), Some("AdoptionConflict"));
        let message = &o.refusal.unwrap().message;
        assert!(
            message.contains("clinic clinics/clinic-b of cluster prod"),
            "{message}"
        );
        assert!(
            message.starts_with("spec.adopt.dbInstanceIdentifier"),
            "{message}"
        );

        let d = clinic(serde_json::json!({"bucketName": "records"}));
        let o = judge(&d, &infra(None, None, Some(other)));
        assert_eq!(reason(&o), Some("AdoptionConflict"));
        assert!(
            o.refusal
                .unwrap()
                .message
                .starts_with("spec.adopt.bucketName")
        );
    }

    #[test]
    fn an_instance_another_clinic_adopted_first_is_refused_before_its_tags_say_so() {
        let d = clinic(serde_json::json!({"dbInstanceIdentifier": "legacy-db"}));
        let mut found = infra(None, Some(BTreeMap::new()), None);
        found.claimed_by = Some(("clinics".into(), "clinic-z".into()));
        let o = judge(&d, &found);
        assert_eq!(reason(&o), Some("AdoptionConflict"));
        assert!(o.refusal.unwrap().message.contains("clinics/clinic-z"));
    }

    #[test]
    fn an_instance_tagged_as_this_clinics_is_its_own_whoever_claimed_it_first() {
        // After a restart an intruder may have claimed it in memory first.
        let d = clinic(serde_json::json!({"dbInstanceIdentifier": "legacy-db"}));
        let mut found = infra(None, Some(mine()), None);
        found.claimed_by = Some(("clinics".into(), "intruder".into()));
        assert_eq!(judge(&d, &found), Ownership::default());
    }

    #[test]
    fn an_earlier_incarnations_leftovers_are_reported_not_taken_over() {
        let old = tags("prod", "clinics", "clinic-a", "uid-old");
        let d = clinic(serde_json::Value::Null);
        for found in [
            infra(Some(old.clone()), None, None),
            infra(None, Some(old.clone()), None),
            infra(Some(old.clone()), Some(old.clone()), None),
        ] {
            let o = judge(&d, &found);
            assert_eq!(reason(&o), Some("FormerIncarnationFound"));
            let message = o.refusal.unwrap().message;
            assert!(message.contains("uid uid-old"), "{message}");
        }
    }

    #[test]
    fn adopting_an_earlier_incarnations_instance_takes_its_stack_over_and_says_so() {
        let old = tags("prod", "clinics", "clinic-a", "uid-old");
        let d = clinic(serde_json::json!({"dbInstanceIdentifier": "legacy-db"}));
        let o = judge(&d, &infra(Some(old.clone()), Some(old.clone()), None));
        assert_eq!(o.refusal, None);
        assert_eq!(o.notes.len(), 2, "{:?}", o.notes);
        assert!(o.notes[0].contains("an earlier clinic of this name (uid uid-old"));
        assert!(o.notes[1].contains("is taken over"));
        // A stack of yet another incarnation is not taken over with it.
        let older = tags("prod", "clinics", "clinic-a", "uid-older");
        let o = judge(&d, &infra(Some(older), Some(old), None));
        assert_eq!(reason(&o), Some("FormerIncarnationFound"));
    }
}
