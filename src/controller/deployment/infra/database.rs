//! The clinic's RDS instance as the spec wants it, and the differences between that and
//! what RDS reports: pure functions, so drift correction and adoption reports are tested by
//! tables.
//!
//! Safety settings (deletion protection, no public access, backup retention, windows,
//! snapshot tags) are corrected at once, since changing them restarts nothing. Settings that
//! may restart the database (class, engine version, Multi-AZ, storage, parameter group,
//! security groups) follow `spec.database.applyChanges`; a change RDS already holds as
//! pending is not sent again.

use std::collections::BTreeMap;

use super::rds_states::storage_step;
use crate::api::deployment::{ApplyChanges, DatabaseSpec};
use crate::aws::rds::{CreateDb, DbInstance, MasterPassword, ModifyDb, STORAGE_TYPE};

/// Where the stack put the database's supporting pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub kms_key_id: String,
    pub subnet_group: String,
    pub security_group: String,
    pub parameter_group: String,
}

impl Placement {
    /// From the outputs of the clinic's stack; `None` until it has made every piece.
    pub fn from_outputs(outputs: &BTreeMap<String, String>) -> Option<Placement> {
        let output = |key: &str| outputs.get(key).filter(|v| !v.is_empty()).cloned();
        Some(Placement {
            kms_key_id: output(super::template::OUT_KMS_KEY_ARN)?,
            subnet_group: output(super::template::OUT_DB_SUBNET_GROUP)?,
            security_group: output(super::template::OUT_SECURITY_GROUP)?,
            parameter_group: output(super::template::OUT_DB_PARAMETER_GROUP)?,
        })
    }
}

/// The master user of every clinic database (OpenEMR connects as `spec.database.username`).
pub const MASTER_USERNAME: &str = "openemr_admin";

/// The `CreateDBInstance` request for a new clinic database.
pub fn create_request(
    identifier: &str,
    spec: &DatabaseSpec,
    placement: &Placement,
    tags: &BTreeMap<String, String>,
    master_password: MasterPassword,
) -> CreateDb {
    CreateDb {
        identifier: identifier.to_string(),
        engine_version: spec.engine_version.clone(),
        instance_class: spec.instance_class.clone(),
        allocated_storage: spec.allocated_storage_gi_b,
        max_allocated_storage: spec.max_allocated_storage_gi_b,
        multi_az: spec.multi_az,
        backup_retention: spec.backup_retention_days,
        backup_window: spec.backup_window.clone(),
        maintenance_window: spec.maintenance_window.clone(),
        deletion_protection: spec.deletion_protection,
        kms_key_id: placement.kms_key_id.clone(),
        subnet_group: placement.subnet_group.clone(),
        security_group: placement.security_group.clone(),
        parameter_group: placement.parameter_group.clone(),
        db_name: spec.database_name.clone(),
        master_username: MASTER_USERNAME.to_string(),
        master_password,
        tags: tags.clone(),
    }
}

/// One setting that differs: its spec name, what RDS has, what the spec wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub field: &'static str,
    pub from: String,
    pub to: String,
    /// Whether changing it may restart the database (so it waits for `applyChanges`).
    pub disruptive: bool,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} → {}", self.field, self.from, self.to)
    }
}

/// Whether `observed` (e.g. `8.0.40`) satisfies `wanted` (`8.0` or `8.0.40`).
pub fn version_satisfies(observed: &str, wanted: &str) -> bool {
    observed == wanted
        || observed
            .strip_prefix(wanted)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Numeric parts of a version, for ordering (`8.0.40` < `8.4`).
fn version_parts(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

fn major(v: &str) -> Vec<u32> {
    version_parts(v).into_iter().take(2).collect()
}

/// Every setting of `db` that differs from the spec and is not already pending, in a
/// stable order.
pub fn differences(spec: &DatabaseSpec, placement: &Placement, db: &DbInstance) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut differ = |field: &'static str, from: String, to: String, disruptive: bool| {
        out.push(Difference {
            field,
            from,
            to,
            disruptive,
        })
    };
    let pending = &db.pending;

    if db.instance_class != spec.instance_class
        && pending.instance_class.as_deref() != Some(spec.instance_class.as_str())
    {
        differ(
            "instanceClass",
            db.instance_class.clone(),
            spec.instance_class.clone(),
            true,
        );
    }
    // Only upgrades: RDS upgrades minor versions by itself, and nothing goes back.
    let pending_version = pending
        .engine_version
        .as_deref()
        .is_some_and(|p| version_satisfies(p, &spec.engine_version));
    if !version_satisfies(&db.engine_version, &spec.engine_version)
        && version_parts(&spec.engine_version) > version_parts(&db.engine_version)
        && !pending_version
    {
        differ(
            "engineVersion",
            db.engine_version.clone(),
            spec.engine_version.clone(),
            true,
        );
    }
    // Deferred while RDS optimises the last storage change (it refuses another until then).
    if db.allocated_storage < spec.allocated_storage_gi_b
        && pending
            .allocated_storage
            .is_none_or(|p| p < spec.allocated_storage_gi_b)
        && db.status != "storage-optimization"
    {
        let step = storage_step(db.allocated_storage, spec.allocated_storage_gi_b);
        let to = if step == spec.allocated_storage_gi_b {
            step.to_string()
        } else {
            format!(
                "{step} ({} rounded up: RDS grows storage by at least 10 %)",
                spec.allocated_storage_gi_b
            )
        };
        differ(
            "allocatedStorageGiB",
            db.allocated_storage.to_string(),
            to,
            true,
        );
    }
    let wanted_max = spec.max_allocated_storage_gi_b;
    let autoscaling_matches = match (wanted_max, db.max_allocated_storage) {
        (Some(w), Some(o)) => w == o,
        (None, None) => true,
        // RDS reports a ceiling equal to the storage as "no autoscaling".
        (None, Some(o)) => o <= db.allocated_storage,
        (Some(_), None) => false,
    };
    if !autoscaling_matches {
        differ(
            "maxAllocatedStorageGiB",
            db.max_allocated_storage
                .map_or("off".into(), |m| m.to_string()),
            wanted_max.map_or("off".into(), |m| m.to_string()),
            false,
        );
    }
    if db.multi_az != spec.multi_az && pending.multi_az != Some(spec.multi_az) {
        differ(
            "multiAZ",
            db.multi_az.to_string(),
            spec.multi_az.to_string(),
            true,
        );
    }
    if db.backup_retention != spec.backup_retention_days
        && pending.backup_retention != Some(spec.backup_retention_days)
    {
        differ(
            "backupRetentionDays",
            db.backup_retention.to_string(),
            spec.backup_retention_days.to_string(),
            false,
        );
    }
    let same = |observed: &Option<String>, wanted: &str| {
        observed
            .as_deref()
            .is_some_and(|o| o.eq_ignore_ascii_case(wanted))
    };
    if !same(&db.backup_window, &spec.backup_window) {
        differ(
            "backupWindow",
            db.backup_window.clone().unwrap_or_default(),
            spec.backup_window.clone(),
            false,
        );
    }
    if !same(&db.maintenance_window, &spec.maintenance_window) {
        differ(
            "maintenanceWindow",
            db.maintenance_window.clone().unwrap_or_default(),
            spec.maintenance_window.clone(),
            false,
        );
    }
    if db.deletion_protection != spec.deletion_protection {
        differ(
            "deletionProtection",
            db.deletion_protection.to_string(),
            spec.deletion_protection.to_string(),
            false,
        );
    }
    if db.publicly_accessible {
        differ("publiclyAccessible", "true".into(), "false".into(), false);
    }
    if !db.copy_tags_to_snapshot {
        differ("copyTagsToSnapshot", "false".into(), "true".into(), false);
    }
    if !db.auto_minor_version_upgrade {
        differ(
            "autoMinorVersionUpgrade",
            "false".into(),
            "true".into(),
            false,
        );
    }
    if db.parameter_groups != [placement.parameter_group.clone()] {
        differ(
            "parameterGroup",
            db.parameter_groups.join(","),
            placement.parameter_group.clone(),
            true,
        );
    }
    if db.security_groups != [placement.security_group.clone()] {
        differ(
            "securityGroups",
            db.security_groups.join(","),
            placement.security_group.clone(),
            true,
        );
    }
    // Only an adopted instance can differ (the clinic's own are made gp3). From io1/io2 it
    // gives up provisioned IOPS; any change starts hours of storage optimization.
    if let Some(storage_type) = db.storage_type.as_deref()
        && storage_type != STORAGE_TYPE
        && pending.storage_type.as_deref() != Some(STORAGE_TYPE)
    {
        differ(
            "storageType",
            storage_type.to_string(),
            STORAGE_TYPE.to_string(),
            true,
        );
    }
    out
}

/// Settings RDS cannot change on an existing instance: reported (adoption), never sent.
pub fn unchangeable_differences(placement: &Placement, db: &DbInstance) -> Vec<Difference> {
    let mut out = Vec::new();
    if !db.storage_encrypted {
        out.push(Difference {
            field: "storageEncrypted",
            from: "false".into(),
            to: "true".into(),
            disruptive: true,
        });
    }
    if db.subnet_group.as_deref() != Some(placement.subnet_group.as_str()) {
        out.push(Difference {
            field: "subnetGroup",
            from: db.subnet_group.clone().unwrap_or_default(),
            to: placement.subnet_group.clone(),
            disruptive: true,
        });
    }
    out
}

/// The `ModifyDBInstance` for `differences`: the safety settings alone and at once when
/// any differ (a later pass sends the rest), else the disruptive ones per `applyChanges`.
pub fn modification(
    identifier: &str,
    spec: &DatabaseSpec,
    placement: &Placement,
    db: &DbInstance,
    differences: &[Difference],
) -> Option<(ModifyDb, Vec<Difference>)> {
    let safety: Vec<_> = differences
        .iter()
        .filter(|d| !d.disruptive)
        .cloned()
        .collect();
    let (batch, apply_immediately) = if !safety.is_empty() {
        (safety, true)
    } else if !differences.is_empty() {
        (
            differences.to_vec(),
            spec.apply_changes == ApplyChanges::Immediately,
        )
    } else {
        return None;
    };
    let mut m = ModifyDb {
        identifier: identifier.to_string(),
        apply_immediately,
        ..ModifyDb::default()
    };
    for d in &batch {
        match d.field {
            "instanceClass" => m.instance_class = Some(spec.instance_class.clone()),
            "engineVersion" => {
                m.engine_version = Some(spec.engine_version.clone());
                m.allow_major_version_upgrade =
                    major(&spec.engine_version) != major(&db.engine_version);
            }
            "allocatedStorageGiB" => {
                m.allocated_storage = Some(storage_step(
                    db.allocated_storage,
                    spec.allocated_storage_gi_b,
                ))
            }
            "maxAllocatedStorageGiB" => {
                m.max_allocated_storage = Some(
                    spec.max_allocated_storage_gi_b
                        .unwrap_or(db.allocated_storage.max(spec.allocated_storage_gi_b)),
                )
            }
            "storageType" => m.storage_type = Some(STORAGE_TYPE.to_string()),
            "multiAZ" => m.multi_az = Some(spec.multi_az),
            "backupRetentionDays" => m.backup_retention = Some(spec.backup_retention_days),
            "backupWindow" => m.backup_window = Some(spec.backup_window.clone()),
            "maintenanceWindow" => m.maintenance_window = Some(spec.maintenance_window.clone()),
            "deletionProtection" => m.deletion_protection = Some(spec.deletion_protection),
            "publiclyAccessible" => m.publicly_accessible = Some(false),
            "copyTagsToSnapshot" => m.copy_tags_to_snapshot = Some(true),
            "autoMinorVersionUpgrade" => m.auto_minor_version_upgrade = Some(true),
            "parameterGroup" => m.parameter_group = Some(placement.parameter_group.clone()),
            "securityGroups" => m.security_groups = Some(vec![placement.security_group.clone()]),
            _ => {}
        }
    }
    Some((m, batch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::rds::Pending;

    fn placement() -> Placement {
        Placement {
            kms_key_id: "arn:aws:kms:us-east-1:123456789012:key/k".into(),
            subnet_group: "subnets".into(),
            security_group: "sg-1".into(),
            parameter_group: "params".into(),
        }
    }

    /// The instance exactly as the default spec wants it, as RDS reports it.
    fn matching(spec: &DatabaseSpec) -> DbInstance {
        DbInstance {
            identifier: "db".into(),
            status: "available".into(),
            engine_version: format!("{}.40", spec.engine_version),
            instance_class: spec.instance_class.clone(),
            allocated_storage: spec.allocated_storage_gi_b,
            max_allocated_storage: spec.max_allocated_storage_gi_b,
            multi_az: spec.multi_az,
            backup_retention: spec.backup_retention_days,
            backup_window: Some(spec.backup_window.clone()),
            maintenance_window: Some(spec.maintenance_window.to_uppercase()),
            deletion_protection: true,
            storage_encrypted: true,
            parameter_groups: vec!["params".into()],
            subnet_group: Some("subnets".into()),
            security_groups: vec!["sg-1".into()],
            copy_tags_to_snapshot: true,
            auto_minor_version_upgrade: true,
            ..DbInstance::default()
        }
    }

    #[test]
    fn an_instance_as_created_has_no_differences() {
        let spec = DatabaseSpec::default();
        assert_eq!(differences(&spec, &placement(), &matching(&spec)), []);
        assert_eq!(
            modification("db", &spec, &placement(), &matching(&spec), &[]),
            None
        );
    }

    #[test]
    fn another_storage_type_is_a_disruptive_difference_to_gp3_unless_pending() {
        let spec = DatabaseSpec::default();
        let mut db = matching(&spec);
        db.storage_type = Some("gp3".into());
        assert_eq!(differences(&spec, &placement(), &db), []);
        db.storage_type = Some("io1".into());
        let found = differences(&spec, &placement(), &db);
        assert_eq!(
            found,
            [Difference {
                field: "storageType",
                from: "io1".into(),
                to: "gp3".into(),
                disruptive: true,
            }]
        );
        let (m, _) = modification("db", &spec, &placement(), &db, &found).unwrap();
        assert_eq!(m.storage_type.as_deref(), Some("gp3"));
        assert!(!m.apply_immediately, "in the maintenance window by default");
        db.pending = Pending {
            storage_type: Some("gp3".into()),
            ..Pending::default()
        };
        assert_eq!(differences(&spec, &placement(), &db), []);
    }

    #[test]
    fn drift_of_each_setting_is_named_from_and_to() {
        let spec = DatabaseSpec::default();
        type Drift = fn(&mut DbInstance);
        let table: [(&str, Drift, &str, &str, bool); 10] = [
            (
                "backupRetentionDays",
                |d| d.backup_retention = 3,
                "3",
                "7",
                false,
            ),
            (
                "deletionProtection",
                |d| d.deletion_protection = false,
                "false",
                "true",
                false,
            ),
            (
                "publiclyAccessible",
                |d| d.publicly_accessible = true,
                "true",
                "false",
                false,
            ),
            (
                "instanceClass",
                |d| d.instance_class = "db.t4g.large".into(),
                "db.t4g.large",
                "db.t4g.medium",
                true,
            ),
            ("multiAZ", |d| d.multi_az = true, "true", "false", true),
            (
                "backupWindow",
                |d| d.backup_window = Some("05:00-05:30".into()),
                "05:00-05:30",
                "03:00-04:00",
                false,
            ),
            (
                "parameterGroup",
                |d| d.parameter_groups = vec!["default.mysql8.0".into()],
                "default.mysql8.0",
                "params",
                true,
            ),
            (
                "securityGroups",
                |d| d.security_groups = vec!["sg-1".into(), "sg-open".into()],
                "sg-1,sg-open",
                "sg-1",
                true,
            ),
            (
                "copyTagsToSnapshot",
                |d| d.copy_tags_to_snapshot = false,
                "false",
                "true",
                false,
            ),
            (
                "maxAllocatedStorageGiB",
                |d| d.max_allocated_storage = Some(100),
                "100",
                "off",
                false,
            ),
        ];
        for (field, drift, from, to, disruptive) in table {
            let mut db = matching(&spec);
            drift(&mut db);
            let diffs = differences(&spec, &placement(), &db);
            assert_eq!(
                diffs,
                [Difference {
                    field,
                    from: from.into(),
                    to: to.into(),
                    disruptive
                }],
                "{field}"
            );
        }
    }

    #[test]
    fn safety_settings_go_first_and_at_once() {
        let spec = DatabaseSpec::default(); // applyChanges: InMaintenanceWindow
        let mut db = matching(&spec);
        db.backup_retention = 1;
        db.instance_class = "db.t4g.large".into();
        let diffs = differences(&spec, &placement(), &db);
        let (m, batch) = modification("db", &spec, &placement(), &db, &diffs).unwrap();
        assert!(m.apply_immediately);
        assert_eq!(m.backup_retention, Some(7));
        assert_eq!(m.instance_class, None);
        assert_eq!(batch.len(), 1);
        // Once retention is right, the class change waits for the maintenance window.
        db.backup_retention = 7;
        let diffs = differences(&spec, &placement(), &db);
        let (m, _) = modification("db", &spec, &placement(), &db, &diffs).unwrap();
        assert!(!m.apply_immediately);
        assert_eq!(m.instance_class.as_deref(), Some("db.t4g.medium"));
    }

    #[test]
    fn immediately_means_immediately() {
        let spec = DatabaseSpec {
            apply_changes: ApplyChanges::Immediately,
            multi_az: true,
            ..DatabaseSpec::default()
        };
        let mut db = matching(&spec);
        db.multi_az = false;
        let diffs = differences(&spec, &placement(), &db);
        let (m, _) = modification("db", &spec, &placement(), &db, &diffs).unwrap();
        assert!(m.apply_immediately);
        assert_eq!(m.multi_az, Some(true));
    }

    #[test]
    fn pending_changes_are_not_sent_again() {
        let spec = DatabaseSpec {
            instance_class: "db.r6g.large".into(),
            allocated_storage_gi_b: 100,
            ..DatabaseSpec::default()
        };
        let mut db = matching(&DatabaseSpec::default());
        db.pending = Pending {
            instance_class: Some("db.r6g.large".into()),
            allocated_storage: Some(100),
            ..Pending::default()
        };
        assert_eq!(differences(&spec, &placement(), &db), []);
    }

    #[test]
    fn storage_only_grows_and_versions_only_go_up() {
        let spec = DatabaseSpec::default();
        let mut db = matching(&spec);
        db.allocated_storage = 500; // autoscaling grew it
        db.max_allocated_storage = None;
        assert_eq!(differences(&spec, &placement(), &db), []);
        let mut db = matching(&spec);
        db.engine_version = "8.0.41".into(); // RDS applied a minor upgrade
        assert_eq!(differences(&spec, &placement(), &db), []);
        let pinned = DatabaseSpec {
            engine_version: "8.0.39".into(),
            ..DatabaseSpec::default()
        };
        assert_eq!(differences(&pinned, &placement(), &db), []);
        let upgrade = DatabaseSpec {
            engine_version: "8.4".into(),
            ..DatabaseSpec::default()
        };
        let diffs = differences(&upgrade, &placement(), &db);
        assert_eq!(diffs[0].field, "engineVersion");
        let (m, _) = modification("db", &upgrade, &placement(), &db, &diffs).unwrap();
        assert!(m.allow_major_version_upgrade);
    }

    #[test]
    fn versions_match_by_prefix_of_whole_parts() {
        assert!(version_satisfies("8.0.40", "8.0"));
        assert!(version_satisfies("8.0.40", "8.0.40"));
        assert!(!version_satisfies("8.0.40", "8.0.4"));
        assert!(!version_satisfies("8.4.3", "8.0"));
    }

    #[test]
    fn encryption_and_subnets_are_reported_never_sent() {
        let spec = DatabaseSpec::default();
        let mut db = matching(&spec);
        db.storage_encrypted = false;
        db.subnet_group = Some("default".into());
        let fields: Vec<_> = unchangeable_differences(&placement(), &db)
            .iter()
            .map(|d| d.field)
            .collect();
        assert_eq!(fields, ["storageEncrypted", "subnetGroup"]);
        assert_eq!(differences(&spec, &placement(), &db), []);
    }

    #[test]
    fn create_request_carries_the_spec_and_placement() {
        let spec = DatabaseSpec {
            max_allocated_storage_gi_b: Some(200),
            ..DatabaseSpec::default()
        };
        let r = create_request(
            "db",
            &spec,
            &placement(),
            &BTreeMap::new(),
            MasterPassword::ManagedByRds,
        );
        assert_eq!(r.max_allocated_storage, Some(200));
        assert_eq!(r.parameter_group, "params");
        assert_eq!(r.master_username, MASTER_USERNAME);
        let shown = format!(
            "{:?}",
            create_request(
                "db",
                &spec,
                &placement(),
                &BTreeMap::new(),
                MasterPassword::Given("hunter2-secret".into())
            )
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
