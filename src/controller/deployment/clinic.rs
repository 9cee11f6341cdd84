//! Everything that names a clinic: the deterministic names of its AWS resources, the tags
//! they all carry, the snapshots and bucket prefixes it owns, the identifier of its DB
//! instance (its own or an adopted one), and the handles every part of its controller
//! reaches it by (its AWS clients, its Events). Backup and restore import this, so a name is
//! computed in one place only.
//!
//! Names come from the operator-wide cluster id plus the clinic's namespace and name, so two
//! clusters sharing an account never collide and a restarted operator finds what it made
//! without remembering anything. Each name ends in a hash of the three parts: shortening a
//! long namespace or name to fit an AWS limit can never make two clinics share a name, and
//! `a-b/c` never meets `a/b-c`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::api::OpenEMRDeployment;
use crate::aws::AwsClients;
use crate::aws::accounts::session_name;
use crate::aws::error::AwsError;
use crate::controller::{ClinicAws, Context, Error};

/// The operator-wide id of this cluster, part of every AWS name (`--cluster-id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterId(String);

/// Longest cluster id: AWS names have little room and the clinic needs most of it.
pub const CLUSTER_ID_MAX: usize = 16;

impl ClusterId {
    /// A lowercase letter, then lowercase letters, digits and single hyphens, at most
    /// [`CLUSTER_ID_MAX`] characters, not ending in a hyphen.
    pub fn parse(text: &str) -> Result<ClusterId, String> {
        let valid = !text.is_empty()
            && text.len() <= CLUSTER_ID_MAX
            && text.starts_with(|c: char| c.is_ascii_lowercase())
            && !text.ends_with('-')
            && !text.contains("--")
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if valid {
            Ok(ClusterId(text.to_string()))
        } else {
            Err(format!(
                "{text:?} is not a valid cluster id: use 1–{CLUSTER_ID_MAX} lowercase letters, digits and single hyphens, starting with a letter and not ending in a hyphen"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The names of one clinic's AWS resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClinicNames {
    /// CloudFormation stack of the supporting infrastructure (≤ 128 characters).
    pub stack: String,
    /// RDS DB instance identifier (≤ 63).
    pub db_instance: String,
    /// S3 bucket (≤ 63; global across AWS, hence the cluster id and hash).
    pub bucket: String,
    /// KMS alias of the clinic's key (`alias/…`).
    pub kms_alias: String,
    /// CloudTrail trail (≤ 128).
    pub trail: String,
    /// The Kubernetes Secret with OpenEMR's database credentials (in the clinic's namespace).
    pub credentials_secret: String,
}

/// Length of the hash suffix, in hex digits (32 bits: collisions need ~65,000 clinics
/// whose names were shortened to the same prefix).
const HASH_LEN: usize = 8;

impl ClinicNames {
    pub fn new(cluster: &ClusterId, namespace: &str, name: &str) -> ClinicNames {
        let hash = short_hash(&[cluster.as_str(), namespace, name]);
        let parts = [cluster.as_str(), namespace, name];
        ClinicNames {
            stack: fitted("openemr", &parts, &hash, 128),
            db_instance: fitted("oe", &parts, &hash, 63),
            bucket: fitted("oe", &parts, &hash, 63),
            kms_alias: format!(
                "alias/openemr/{}/{}",
                cluster,
                fitted("", &[namespace, name], &hash, 200)
            ),
            trail: fitted("openemr", &parts, &hash, 128),
            credentials_secret: format!("{name}-db-credentials"),
        }
    }

    /// The final snapshot taken before the database is deleted; the object's uid keeps a
    /// later clinic of the same name from meeting an older clinic's final snapshot.
    pub fn final_snapshot(&self, uid: &str) -> String {
        format!("{}-final-{}", self.db_instance, sanitized(&first(uid, 8)))
    }
}

/// The snapshot an image upgrade takes of `db_identifier` (the clinic's own instance or an
/// adopted one) for the clinic's `generation`. The uid keeps a clinic re-created under the
/// same name from taking an older incarnation's snapshot for its own.
pub fn upgrade_snapshot(db_identifier: &str, uid: &str, generation: i64) -> String {
    format!(
        "{}{generation}",
        upgrade_snapshot_prefix(db_identifier, uid)
    )
}

/// What every upgrade snapshot of this clinic's incarnation starts with; the generation
/// follows.
pub fn upgrade_snapshot_prefix(db_identifier: &str, uid: &str) -> String {
    format!(
        "{}-upgrade-{}-g",
        db_identifier.trim_end_matches('-'),
        sanitized(&first(uid, 8))
    )
}

/// The upgrade snapshots to delete so that the newest `keep` of this incarnation's stay
/// (`current`, the one just taken, always among them): those named with `prefix` and
/// tagged with `uid`, the oldest generations first. Anything else (another incarnation's,
/// a backup set's, one renamed by hand) is never a candidate.
pub fn upgrade_snapshots_to_prune(
    snapshots: &[(String, BTreeMap<String, String>)],
    prefix: &str,
    uid: &str,
    current: &str,
    keep: usize,
) -> Vec<String> {
    let mut ours: Vec<(i64, &str)> = snapshots
        .iter()
        .filter(|(_, tags)| tags.get(TAG_UID).map(String::as_str) == Some(uid))
        .filter_map(|(name, _)| {
            let generation = name.strip_prefix(prefix)?.parse::<i64>().ok()?;
            Some((generation, name.as_str()))
        })
        .collect();
    ours.sort_unstable_by(|a, b| b.cmp(a));
    ours.into_iter()
        .filter(|(_, name)| *name != current)
        .skip(keep.saturating_sub(1))
        .map(|(_, name)| name.to_string())
        .collect()
}

fn first(text: &str, n: usize) -> String {
    text.chars().take(n).collect()
}

/// First [`HASH_LEN`] hex digits of SHA-256 over the parts, separated so that `["ab", "c"]`
/// and `["a", "bc"]` differ.
pub fn short_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex(&hasher.finalize())[..HASH_LEN].to_string()
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase letters, digits and single hyphens only; no hyphen at either end.
fn sanitized(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    out.trim_end_matches('-').to_string()
}

/// `prefix-part-part-…-hash`, the parts shortened so the whole fits in `max` characters.
fn fitted(prefix: &str, parts: &[&str], hash: &str, max: usize) -> String {
    let mut body = String::from(prefix);
    for part in parts {
        if !body.is_empty() {
            body.push('-');
        }
        body.push_str(part);
    }
    let body = sanitized(&body);
    let room = max - HASH_LEN - 1;
    let body = sanitized(&first(&body, room));
    if body.is_empty() {
        hash.to_string()
    } else {
        format!("{body}-{hash}")
    }
}

/// Where backups live in a clinic's bucket, for the cleanup and the backup code alike: the
/// documents mirror, and the sets' manifests.
pub const DOCUMENTS_PREFIX: &str = "documents/";
pub const BACKUPS_PREFIX: &str = "backups/";
pub const BACKUP_PREFIXES: &[&str] = &[DOCUMENTS_PREFIX, BACKUPS_PREFIX];

/// Tag keys the operator sets on every resource of a clinic.
pub const TAG_CLUSTER: &str = "openemr.io/cluster";
pub const TAG_NAMESPACE: &str = "openemr.io/namespace";
pub const TAG_NAME: &str = "openemr.io/name";
pub const TAG_UID: &str = "openemr.io/uid";

/// The seam between a restore and the clinic it fills: on a clinic, the annotation names
/// the RestoreRequest that brings its database (and its `sites/`); the clinic then never
/// creates a database of its own nor runs OpenEMR's installer, and waits for the instance
/// the restore makes under the clinic's identifier. On that instance, the tag (value: the
/// request's uid) says the same to whoever reads it later, so the installer never runs on
/// it even if the annotation is taken off. Removing the annotation before any instance
/// exists is how a person gives up on the restore: the clinic then creates an empty one.
pub const RESTORED_BY: &str = "openemr.io/restored-by";

/// The RestoreRequest a clinic waits for, if any ([`RESTORED_BY`]).
pub fn restored_by(d: &crate::api::OpenEMRDeployment) -> Option<&str> {
    d.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RESTORED_BY))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// The tags of every AWS resource of a clinic: the user's `spec.tags` plus the operator's
/// own, which win (admission refuses user keys under `openemr.io/`).
pub fn tags(
    cluster: &ClusterId,
    namespace: &str,
    name: &str,
    uid: &str,
    user: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut tags = user.clone();
    tags.insert(TAG_CLUSTER.into(), cluster.to_string());
    tags.insert(TAG_NAMESPACE.into(), namespace.into());
    tags.insert(TAG_NAME.into(), name.into());
    tags.insert(TAG_UID.into(), uid.into());
    tags
}

/// The clinic's DB instance: the one an in-place restore switched it to, else the adopted
/// one, else the one it was made with.
pub fn db_identifier(d: &OpenEMRDeployment, names: &ClinicNames) -> String {
    switched_to(d)
        .map(str::to_string)
        .unwrap_or_else(|| own_db_identifier(d, names))
}

/// The clinic's DB instance before any switch: the adopted one, else the one it was made
/// with.
pub fn own_db_identifier(d: &OpenEMRDeployment, names: &ClinicNames) -> String {
    d.spec
        .adopt
        .as_ref()
        .and_then(|a| a.db_instance_identifier.clone())
        .unwrap_or_else(|| names.db_instance.clone())
}

/// The instance an in-place restore switched the clinic to (`status.databaseSwitch`).
pub fn switched_to(d: &OpenEMRDeployment) -> Option<&str> {
    d.status
        .as_ref()
        .and_then(|s| s.database_switch.as_ref())
        .map(|s| s.identifier.as_str())
        .filter(|i| !i.is_empty())
}

/// The tags on everything the clinic makes in AWS.
pub fn clinic_tags(d: &OpenEMRDeployment, aws: &ClinicAws) -> BTreeMap<String, String> {
    tags(
        &aws.cluster,
        &d.namespace().unwrap_or_default(),
        &d.name_any(),
        d.metadata.uid.as_deref().unwrap_or_default(),
        &d.spec.tags,
    )
}

/// The clients of the clinic's account (its role, if any) and region, under a session named
/// after it.
pub async fn clients(d: &OpenEMRDeployment, aws: &ClinicAws) -> Arc<AwsClients> {
    clients_in(d, aws, &d.spec.aws.region).await
}

/// The clinic's clients in another region (its sets' copies), with the same identity.
pub async fn clients_in(d: &OpenEMRDeployment, aws: &ClinicAws, region: &str) -> Arc<AwsClients> {
    let session = session_name(d.namespace().as_deref().unwrap_or_default(), &d.name_any());
    aws.pool
        .clients(d.spec.aws.role_arn.as_deref(), &session, region)
        .await
}

/// An AWS error as the reconcile's error, naming what was being done.
pub fn aws_error(action: &'static str) -> impl FnOnce(AwsError) -> Error {
    move |source| Error::Aws { action, source }
}

/// An Event on the clinic about a step taken in AWS.
pub async fn announce(
    ctx: &Context,
    d: &OpenEMRDeployment,
    warning: bool,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(note.to_string()),
        action: "Provision".into(),
        secondary: None,
    };
    ctx.publish::<OpenEMRDeployment>(&event, &d.object_ref(&()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_incarnations_oldest_upgrade_snapshots_are_pruned() {
        let prefix = upgrade_snapshot_prefix("db-1", "0f8e2a1c-aaaa");
        let ours = |g: i64| {
            (
                upgrade_snapshot("db-1", "0f8e2a1c-aaaa", g),
                BTreeMap::from([(TAG_UID.to_string(), "0f8e2a1c-aaaa".to_string())]),
            )
        };
        let mut snapshots: Vec<_> = [3, 10, 7, 2].into_iter().map(ours).collect();
        // An earlier incarnation's (another uid prefix and tag), a final snapshot, one
        // with our name but another uid's tag: never candidates.
        snapshots.push((
            upgrade_snapshot("db-1", "11111111-bbbb", 1),
            BTreeMap::from([(TAG_UID.to_string(), "11111111-bbbb".to_string())]),
        ));
        snapshots.push(("db-1-final-0f8e2a1c".into(), ours(0).1));
        snapshots.push((
            upgrade_snapshot("db-1", "0f8e2a1c-aaaa", 1),
            BTreeMap::new(),
        ));
        let current = upgrade_snapshot("db-1", "0f8e2a1c-aaaa", 10);
        let prune =
            |keep| upgrade_snapshots_to_prune(&snapshots, &prefix, "0f8e2a1c-aaaa", &current, keep);
        assert_eq!(
            prune(2),
            [
                upgrade_snapshot("db-1", "0f8e2a1c-aaaa", 3),
                upgrade_snapshot("db-1", "0f8e2a1c-aaaa", 2)
            ]
        );
        assert_eq!(prune(4), Vec::<String>::new());
        // The current one stays even when keep says less.
        assert_eq!(prune(0).len(), 3);
        assert!(!prune(0).contains(&current));
    }

    fn cluster(id: &str) -> ClusterId {
        ClusterId::parse(id).unwrap()
    }

    fn is_db_identifier(s: &str) -> bool {
        is_rds_name(s, 63)
    }

    fn is_rds_name(s: &str, max: usize) -> bool {
        s.len() <= max
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && !s.contains("--")
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }

    #[test]
    fn cluster_ids_are_short_lowercase_labels() {
        for good in ["prod", "eu-1", "a", "abcdefghijklmnop"] {
            assert!(ClusterId::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Prod",
            "1abc",
            "a--b",
            "abc-",
            "abcdefghijklmnopq",
            "a_b",
            "a.b",
        ] {
            let err = ClusterId::parse(bad).unwrap_err();
            assert!(err.contains("cluster id"), "{bad}: {err}");
        }
    }

    #[test]
    fn short_names_are_readable_and_stable() {
        let n = ClinicNames::new(&cluster("prod"), "clinics", "clinic-a");
        let hash = short_hash(&["prod", "clinics", "clinic-a"]);
        assert_eq!(n.db_instance, format!("oe-prod-clinics-clinic-a-{hash}"));
        assert_eq!(n.bucket, n.db_instance);
        assert_eq!(n.stack, format!("openemr-prod-clinics-clinic-a-{hash}"));
        assert_eq!(
            n.kms_alias,
            format!("alias/openemr/prod/clinics-clinic-a-{hash}")
        );
        assert_eq!(n.credentials_secret, "clinic-a-db-credentials");
        assert_eq!(n, ClinicNames::new(&cluster("prod"), "clinics", "clinic-a"));
        assert_eq!(
            n.final_snapshot("0f8e2a1c-1111-2222-3333-444455556666"),
            format!("oe-prod-clinics-clinic-a-{hash}-final-0f8e2a1c")
        );
    }

    #[test]
    fn long_names_fit_every_aws_limit() {
        let ns = "a".repeat(63);
        let name = format!("x{}", "-y".repeat(19));
        let n = ClinicNames::new(&cluster("abcdefghijklmnop"), &ns, &name);
        assert!(is_db_identifier(&n.db_instance), "{}", n.db_instance);
        assert!(is_db_identifier(&n.bucket), "{}", n.bucket);
        assert!(n.stack.len() <= 128 && n.trail.len() <= 128);
        assert!(n.kms_alias.len() <= 256);
        assert!(is_rds_name(&n.final_snapshot("uid"), 255));
        assert!(is_rds_name(
            &upgrade_snapshot(&n.db_instance, "0f8e2a1c-1111", i64::MAX),
            255
        ));
    }

    #[test]
    fn shortened_names_of_different_clinics_differ() {
        let ns = "n".repeat(63);
        let a = ClinicNames::new(&cluster("prod"), &ns, "clinic-a");
        let b = ClinicNames::new(&cluster("prod"), &ns, "clinic-b");
        assert_ne!(a.db_instance, b.db_instance);
        // Moving a hyphen between namespace and name gives another clinic, another name.
        let c = ClinicNames::new(&cluster("prod"), "a-b", "c");
        let d = ClinicNames::new(&cluster("prod"), "a", "b-c");
        assert_ne!(c.db_instance, d.db_instance);
        // Another cluster in the same account never meets this one's names.
        let other = ClinicNames::new(&cluster("staging"), &ns, "clinic-a");
        assert_ne!(a.bucket, other.bucket);
    }

    #[test]
    fn double_hyphens_in_namespaces_are_folded() {
        let n = ClinicNames::new(&cluster("prod"), "team--x", "c");
        assert!(is_db_identifier(&n.db_instance), "{}", n.db_instance);
    }

    #[test]
    fn operator_tags_win_over_user_tags() {
        let user = BTreeMap::from([("team".to_string(), "x".to_string())]);
        let t = tags(&cluster("prod"), "ns", "c", "uid-1", &user);
        assert_eq!(t["team"], "x");
        assert_eq!(t[TAG_CLUSTER], "prod");
        assert_eq!(t[TAG_UID], "uid-1");
        assert_eq!(t.len(), 5);
    }
}
