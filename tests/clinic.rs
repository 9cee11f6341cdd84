//! A clinic becomes its AWS infrastructure: the operator binary against the real control
//! plane (under the RBAC of `deploy/`) and moto over HTTP, checked in moto afterwards.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use openemr_operator::api::OpenEMRDeployment;
use support::faults::{AwsFault, FaultProxy, Rule};
use support::operator::Operator;
use support::{
    TestNamespace, apply, aws_calls, condition, documents, env, eventually, is_mutating,
    wait_for_reason, warning_event,
};

/// Clients of one region against the test environment's moto.
async fn moto(region: &str) -> aws_config::SdkConfig {
    env().aws(Some(region)).await
}

const REGION: &str = "us-west-2";

/// The inventory interval of the tests here.
const INVENTORY: Duration = Duration::from_secs(3);

fn clinic() -> serde_json::Value {
    let network = env().cluster_network(REGION);
    documents(&format!(
        "
apiVersion: openemr.io/v1alpha1
kind: OpenEMRDeployment
metadata: {{name: clinic-p}}
spec:
  aws: {{region: {REGION}}}
  network: {network}
  # The web tier stopped: this file is about the AWS side (tests/web.rs runs it).
  web: {{replicas: 0}}
  database:
    backupRetentionDays: 10
    backupWindow: '02:00-02:30'
    maintenanceWindow: 'mon:04:00-mon:05:00'
    applyChanges: Immediately
  tags: {{team: records}}
"
    ))
    .remove(0)
}

async fn events_of(client: &Client, ns: &str, name: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

#[tokio::test]
async fn a_clinic_becomes_its_infrastructure_and_is_kept_so() {
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "clinic").await;
    apply(&client, &ns.name, &clinic()).await.unwrap();
    // The resync stays at its default (10 minutes): only the inventory can see drift in
    // time for this test.
    let operator = Operator::start_with(
        env(),
        Some(&ns.name),
        &["--inventory-interval", &format!("{}s", INVENTORY.as_secs())],
    );
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);

    let ready = wait_for_reason(&clinics, "clinic-p", "Ready", "Ready").await;
    assert_eq!(ready.status, "True");
    let status = clinics.get("clinic-p").await.unwrap().status.unwrap();
    for t in ["StackReady", "DatabaseReady"] {
        let c = status.conditions.iter().find(|c| c.type_ == t).unwrap();
        assert_eq!(c.status, "True", "{t}: {}", c.message);
    }
    let db_status = status.database.clone().expect("status.database");
    assert!(db_status.endpoint.is_some(), "{db_status:?}");
    let kms_key_arn = status.kms_key_arn.clone().expect("status.kmsKeyArn");
    let bucket = status.bucket_name.clone().expect("status.bucketName");
    assert!(status.file_system_id.is_some());
    assert!(status.last_aws_sync_time.is_some());
    let stack = status.stack.clone().unwrap();
    assert!(
        stack
            .name
            .starts_with(&format!("openemr-t{}", std::process::id()))
            || stack.name.starts_with("openemr-")
    );

    // The database in moto is as the spec and the rules say.
    let aws = moto(REGION).await;
    let rds = aws_sdk_rds::Client::new(&aws);
    let db = rds
        .describe_db_instances()
        .db_instance_identifier(&db_status.identifier)
        .send()
        .await
        .unwrap()
        .db_instances()[0]
        .clone();
    assert_eq!(db.storage_encrypted(), Some(true));
    let key_id = kms_key_arn.rsplit('/').next().unwrap();
    assert!(
        db.kms_key_id().unwrap_or_default().contains(key_id),
        "{:?} vs {kms_key_arn}",
        db.kms_key_id()
    );
    assert_eq!(db.publicly_accessible(), Some(false));
    assert_eq!(db.deletion_protection(), Some(true));
    assert_eq!(db.backup_retention_period(), Some(10));
    assert_eq!(db.preferred_backup_window(), Some("02:00-02:30"));
    assert_eq!(db.copy_tags_to_snapshot(), Some(true));
    assert!(
        db.master_user_secret().is_some(),
        "the master password is managed by RDS"
    );
    let group = db.db_parameter_groups()[0]
        .db_parameter_group_name()
        .unwrap()
        .to_string();
    let params = rds
        .describe_db_parameters()
        .db_parameter_group_name(&group)
        .send()
        .await
        .unwrap();
    assert!(
        params
            .parameters()
            .iter()
            .any(|p| p.parameter_name() == Some("require_secure_transport")
                && p.parameter_value() == Some("1")),
        "require_secure_transport=1 in {group}"
    );
    assert!(db.db_subnet_group().is_some());
    assert_eq!(db.vpc_security_groups().len(), 1);
    let tags: Vec<_> = db
        .tag_list()
        .iter()
        .map(|t| (t.key().unwrap_or_default(), t.value().unwrap_or_default()))
        .collect();
    assert!(
        tags.contains(&("team", "records"))
            && tags.contains(&("openemr.io/namespace", ns.name.as_str())),
        "{tags:?}"
    );

    // The bucket and the key.
    let s3 = support::TestEnv::s3(&aws);
    assert_eq!(
        support::bucket_protection(&s3, &bucket).await,
        (Some("Enabled".to_string()), [Some(true); 4])
    );
    assert_eq!(support::bucket_encryption(&s3, &bucket).await.0, "aws:kms");
    let kms = aws_sdk_kms::Client::new(&aws);
    let rotation = kms
        .get_key_rotation_status()
        .key_id(key_id)
        .send()
        .await
        .unwrap();
    assert!(rotation.key_rotation_enabled());

    // OpenEMR's credentials: a Secret, and its password nowhere else.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let name = status.credentials_secret_name.clone().unwrap();
    let secret = secrets.get(&name).await.unwrap();
    assert!(
        secret.metadata.owner_references.is_none(),
        "kept with the data, not garbage-collected"
    );
    let password = String::from_utf8(secret.data.unwrap()["password"].0.clone()).unwrap();
    assert_eq!(password.len(), 32);

    // Drift made outside the operator is put back, with an Event naming from and to.
    rds.modify_db_instance()
        .db_instance_identifier(&db_status.identifier)
        .backup_retention_period(3)
        .deletion_protection(false)
        .apply_immediately(true)
        .send()
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "drift corrected", || async {
        let db = rds
            .describe_db_instances()
            .db_instance_identifier(&db_status.identifier)
            .send()
            .await
            .ok()?
            .db_instances()[0]
            .clone();
        (db.backup_retention_period() == Some(10) && db.deletion_protection() == Some(true))
            .then_some(())
    })
    .await;
    let modified = eventually(
        Duration::from_secs(10),
        "a DatabaseModified Event",
        || async {
            events_of(&client, &ns.name, "clinic-p")
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("DatabaseModified"))
        },
    )
    .await;
    let note = modified.note.unwrap_or_default();
    assert!(
        note.contains("backupRetentionDays: 3 → 10")
            && note.contains("deletionProtection: false → true"),
        "{note}"
    );

    // Spec changes reach RDS (applyChanges: Immediately): class, storage growth, Multi-AZ,
    // retention.
    clinics
        .patch(
            "clinic-p",
            &PatchParams::apply("openemr-tests"),
            &Patch::Merge(serde_json::json!({"spec": {"database": {
                "instanceClass": "db.r6g.large",
                "allocatedStorageGiB": 40,
                "multiAZ": true,
                "backupRetentionDays": 14,
            }}})),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the spec changes in RDS",
        || async {
            let out = rds
                .describe_db_instances()
                .db_instance_identifier(&db_status.identifier)
                .send()
                .await
                .ok()?;
            let db = &out.db_instances()[0];
            (db.db_instance_class() == Some("db.r6g.large")
                && db.allocated_storage() == Some(40)
                && db.multi_az() == Some(true)
                && db.backup_retention_period() == Some(14))
            .then_some(())
        },
    )
    .await;

    // Steady state: over several inventory intervals nothing is changed, and the clinic
    // costs no call of its own: one page of instances per interval, stacks every sixth.
    eventually(Duration::from_secs(30), "the clinic at rest", || async {
        let status = clinics.get("clinic-p").await.ok()?.status?;
        (status.phase == Some(openemr_operator::api::deployment::DeploymentPhase::Ready)
            && status.in_flight.is_none())
        .then_some(())
    })
    .await;
    tokio::time::sleep(INVENTORY).await;
    let before = aws_calls(&operator).await;
    let intervals = 4;
    tokio::time::sleep(INVENTORY * intervals).await;
    let after = aws_calls(&operator).await;
    let delta: std::collections::BTreeMap<_, _> = after
        .iter()
        .map(|(op, n)| (op.clone(), n - before.get(op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    println!("steady state over {intervals} inventory intervals: {delta:?}");
    assert!(
        !delta.keys().any(|op| is_mutating(op)),
        "no mutating call at rest: {delta:?}"
    );
    let pages = |op: &str| delta.get(op).copied().unwrap_or(0);
    assert!(
        (intervals as u64 - 1..=intervals as u64 + 1).contains(&pages("DescribeDBInstances")),
        "one page of instances per interval, got {delta:?}"
    );
    // Stacks are listed every sixth interval only.
    assert!(pages("DescribeStacks") <= 1, "{delta:?}");
    assert_eq!(
        delta
            .keys()
            .filter(|op| !["DescribeDBInstances", "DescribeStacks"].contains(&op.as_str()))
            .count(),
        0,
        "nothing else: {delta:?}"
    );

    // Exactly one of each create, however many passes it took.
    for op in ["CreateStack", "CreateDBInstance"] {
        let sample = format!(
            "openemr_aws_api_calls_total{{service=\"{}\",operation=\"{op}\",outcome=\"success\"}}",
            if op == "CreateStack" {
                "cloudformation"
            } else {
                "rds"
            }
        );
        assert_eq!(operator.metric(&sample).await, 1, "{sample}");
    }

    // No password in the log, the status or any Event.
    let status_json =
        serde_json::to_string(&clinics.get("clinic-p").await.unwrap().status).unwrap();
    assert!(!status_json.contains(&password));
    for e in events_of(&client, &ns.name, "clinic-p").await {
        assert!(!e.note.unwrap_or_default().contains(&password));
    }
    let (code, log) = operator.terminate_with_log();
    assert_eq!(code.code(), Some(0));
    assert!(!log.contains(&password));
}

/// A minimal clinic manifest with a deletion policy.
fn clinic_with(name: &str, region: &str, policy: &str, extra: &str) -> serde_json::Value {
    support::clinic_manifest(
        name,
        region,
        &format!("  deletionPolicy: {policy}\n{extra}"),
    )
}

/// The mutating operations among `calls`, with their counts.
fn mutations(calls: &std::collections::BTreeMap<String, u64>) -> Vec<(String, u64)> {
    calls
        .iter()
        .filter(|(op, _)| is_mutating(op))
        .map(|(op, n)| (op.clone(), *n))
        .collect()
}

async fn instance_tags(
    rds: &aws_sdk_rds::Client,
    id: &str,
) -> std::collections::BTreeMap<String, String> {
    let out = rds
        .describe_db_instances()
        .db_instance_identifier(id)
        .send()
        .await
        .unwrap();
    out.db_instances()[0]
        .tag_list()
        .iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .collect()
}

async fn db_exists(rds: &aws_sdk_rds::Client, id: &str) -> bool {
    match rds
        .describe_db_instances()
        .db_instance_identifier(id)
        .send()
        .await
    {
        Ok(out) => !out.db_instances().is_empty(),
        Err(e) => {
            let text = format!("{e:?}");
            assert!(text.contains("DBInstanceNotFound"), "{text}");
            false
        }
    }
}

async fn snapshot_status(rds: &aws_sdk_rds::Client, id: &str) -> Option<String> {
    let out = rds
        .describe_db_snapshots()
        .db_snapshot_identifier(id)
        .send()
        .await
        .ok()?;
    out.db_snapshots()
        .first()
        .and_then(|s| s.status().map(str::to_string))
}

async fn stack_alive(cfn: &aws_sdk_cloudformation::Client, name: &str) -> bool {
    match cfn.describe_stacks().stack_name(name).send().await {
        Ok(out) => out
            .stacks()
            .first()
            .and_then(|s| s.stack_status())
            .is_some_and(|s| s.as_str() != "DELETE_COMPLETE"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn deletion_does_what_each_policy_promises_and_a_namespace_never_takes_data() {
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "deletion").await;
    let doomed_ns = TestNamespace::new(env(), "doomed").await;
    let region = "us-east-1";
    let clinics = [
        ("keep", "Retain", ""),
        ("snap", "Snapshot", ""),
        ("gone", "Delete", ""),
        ("gone-now", "Delete", "  skipFinalSnapshot: true"),
    ];
    for (name, policy, extra) in clinics {
        apply(&client, &ns.name, &clinic_with(name, region, policy, extra))
            .await
            .unwrap();
    }
    apply(
        &client,
        &doomed_ns.name,
        &clinic_with("in-doomed-ns", region, "Delete", ""),
    )
    .await
    .unwrap();
    // One operator per namespace: the other tests of this binary run beside this one.
    let operator = Operator::start(env(), Some(&ns.name));
    let doomed_operator = Operator::start(env(), Some(&doomed_ns.name));
    let api: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let doomed_api: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &doomed_ns.name);
    let mut ids = std::collections::BTreeMap::new();
    for (name, _, _) in clinics {
        wait_for_reason(&api, name, "Ready", "Ready").await;
        let status = api.get(name).await.unwrap().status.unwrap();
        ids.insert(name, status);
    }
    wait_for_reason(&doomed_api, "in-doomed-ns", "Ready", "Ready").await;
    let doomed = doomed_api.get("in-doomed-ns").await.unwrap();

    for (name, _, _) in clinics {
        api.delete(name, &Default::default()).await.unwrap();
    }
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .delete(&doomed_ns.name, &Default::default())
        .await
        .unwrap();
    for (name, _, _) in clinics {
        eventually(Duration::from_secs(60), &format!("{name} gone"), || async {
            api.get_opt(name).await.unwrap().is_none().then_some(())
        })
        .await;
    }
    eventually(
        Duration::from_secs(60),
        "the doomed clinic gone",
        || async {
            doomed_api
                .get_opt("in-doomed-ns")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;

    let aws = moto(region).await;
    let rds = aws_sdk_rds::Client::new(&aws);
    let cfn = aws_sdk_cloudformation::Client::new(&aws);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let uid_of = |status: &openemr_operator::api::OpenEMRDeploymentStatus| {
        status.database.clone().unwrap().identifier
    };
    let final_of = |db: &str, uid: &str| format!("{db}-final-{}", &uid[..8]);

    // Retain: everything stays, still protected, and the credentials with it.
    let keep = &ids["keep"];
    let keep_db = uid_of(keep);
    assert!(db_exists(&rds, &keep_db).await);
    let described = rds
        .describe_db_instances()
        .db_instance_identifier(&keep_db)
        .send()
        .await
        .unwrap();
    assert_eq!(
        described.db_instances()[0].deletion_protection(),
        Some(true)
    );
    assert!(stack_alive(&cfn, &keep.stack.clone().unwrap().name).await);
    assert!(
        secrets
            .get_opt(keep.credentials_secret_name.as_deref().unwrap())
            .await
            .unwrap()
            .is_some()
    );

    // Snapshot / Delete: the database went only after its final snapshot was available.
    let created = |name: &str| {
        let status = &ids[name];
        (
            uid_of(status),
            status.stack.clone().unwrap().name,
            status.credentials_secret_name.clone().unwrap(),
        )
    };
    let all_events: Vec<Event> = Api::<Event>::namespaced(client.clone(), &ns.name)
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    let uid = |name: &str| {
        all_events
            .iter()
            .find(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .and_then(|e| e.regarding.as_ref().and_then(|r| r.uid.clone()))
            .unwrap()
    };
    for name in ["snap", "gone"] {
        let (db, stack, secret) = created(name);
        assert!(!db_exists(&rds, &db).await, "{name}: DB deleted");
        assert_eq!(
            snapshot_status(&rds, &final_of(&db, &uid(name)))
                .await
                .as_deref(),
            Some("available"),
            "{name}"
        );
        let kept = name == "snap";
        assert_eq!(stack_alive(&cfn, &stack).await, kept, "{name}: stack");
        assert_eq!(
            secrets.get_opt(&secret).await.unwrap().is_some(),
            kept,
            "{name}: Secret"
        );
    }
    let (db, _, _) = created("gone-now");
    assert!(!db_exists(&rds, &db).await);
    assert_eq!(
        snapshot_status(&rds, &final_of(&db, &uid("gone-now"))).await,
        None
    );

    // What the stacks retained: kept for Retain and Snapshot; for Delete the bucket and
    // file system are gone, and the key stays while the final snapshot needs it.
    let s3 = support::TestEnv::s3(&aws);
    let efs = aws_sdk_efs::Client::new(&aws);
    let kms = aws_sdk_kms::Client::new(&aws);
    for (name, kept, key_state) in [
        ("keep", true, "Enabled"),
        ("snap", true, "Enabled"),
        ("gone", false, "Enabled"),
        // No final snapshot, but RDS retains the automated backups (the operator deletes
        // the instance with DeleteAutomatedBackups=false), encrypted with the key.
        ("gone-now", false, "Enabled"),
    ] {
        let status = &ids[name];
        let bucket = status.bucket_name.clone().unwrap();
        let file_system = status.file_system_id.clone().unwrap();
        let key = status.kms_key_arn.clone().unwrap();
        assert_eq!(
            s3.head_bucket().bucket(&bucket).send().await.is_ok(),
            kept,
            "{name}: bucket"
        );
        let fs_alive = efs
            .describe_file_systems()
            .file_system_id(&file_system)
            .send()
            .await
            .map(|out| !out.file_systems().is_empty())
            .unwrap_or(false);
        assert_eq!(fs_alive, kept, "{name}: file system");
        let state = kms.describe_key().key_id(&key).send().await.unwrap();
        assert_eq!(
            state.key_metadata().unwrap().key_state().unwrap().as_str(),
            key_state,
            "{name}: key"
        );
    }

    // What keeps the key is said.
    let cleaned = events_of(&client, &ns.name, "gone-now")
        .await
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("CleanedUp"))
        .and_then(|e| e.note)
        .expect("a CleanedUp Event");
    assert!(
        cleaned.contains("still encrypting") && cleaned.contains("retained automated backup"),
        "{cleaned}"
    );
    let file_system = ids["gone-now"].file_system_id.clone().unwrap();
    assert!(
        cleaned.contains(&format!(
            "AWS Backup's daily recovery points of file system {file_system}"
        )),
        "{cleaned}"
    );

    // The namespace went, with deletionPolicy Delete: the data did not.
    let doomed_db = doomed.status.unwrap().database.unwrap().identifier;
    assert!(
        db_exists(&rds, &doomed_db).await,
        "a namespace deletion never deletes data"
    );
    drop((operator, doomed_operator));
}

#[tokio::test]
async fn adopted_resources_are_never_recreated_and_differences_are_reported_before_changes() {
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "adopt").await;
    let region = "us-east-2";
    let aws = moto(region).await;
    let rds = aws_sdk_rds::Client::new(&aws);
    let s3 = support::TestEnv::s3(&aws);
    let db_id = format!("legacy-{}", std::process::id());
    let bucket = format!("legacy-docs-{}", std::process::id());
    // What a clinic run by hand looks like: short retention, unprotected, an unversioned
    // bucket with no public access block.
    rds.create_db_instance()
        .db_instance_identifier(&db_id)
        .engine("mysql")
        .engine_version("8.0.40")
        .db_instance_class("db.t4g.medium")
        .allocated_storage(20)
        .master_username("admin")
        .manage_master_user_password(true)
        .storage_encrypted(true)
        .backup_retention_period(3)
        .deletion_protection(false)
        .send()
        .await
        .unwrap();
    s3.create_bucket()
        .bucket(&bucket)
        .create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::UsEast2)
                .build(),
        )
        .send()
        .await
        .unwrap();

    s3.put_bucket_tagging()
        .bucket(&bucket)
        .tagging(
            aws_sdk_s3::types::Tagging::builder()
                .tag_set(
                    aws_sdk_s3::types::Tag::builder()
                        .key("cost-centre")
                        .value("records")
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let manifest = clinic_with(
        "adopter",
        region,
        "Retain",
        &format!("  adopt: {{dbInstanceIdentifier: {db_id}, bucketName: {bucket}}}"),
    );
    apply(&client, &ns.name, &manifest).await.unwrap();
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    // The report lasts until the first change is made, a second or so: watched, not polled.
    let trail = support::ConditionTrail::watch(&clinics, "adopter");
    // The resync stays at 10 minutes: only the inventory can see the later drift.
    let operator = Operator::start_with(env(), Some(&ns.name), &["--inventory-interval", "3s"]);

    let adopted = trail.wait_for("Adopted", "DifferencesReported").await;
    for expected in [
        "backupRetentionDays: 3 → 7",
        "deletionProtection: false → true",
        "bucketVersioning: off → Enabled",
        "bucketPublicAccessBlock",
        "subnetGroup",
    ] {
        assert!(
            adopted.message.contains(expected),
            "{expected} in {}",
            adopted.message
        );
    }
    wait_for_reason(&clinics, "adopter", "Ready", "Ready").await;

    // Corrected after the report, and never recreated.
    eventually(
        Duration::from_secs(30),
        "the adopted resources corrected",
        || async {
            let db = rds
                .describe_db_instances()
                .db_instance_identifier(&db_id)
                .send()
                .await
                .ok()?
                .db_instances()[0]
                .clone();
            let bucket_ok = support::bucket_protection(&s3, &bucket).await
                == (Some("Enabled".to_string()), [Some(true); 4]);
            (db.backup_retention_period() == Some(7)
                && db.deletion_protection() == Some(true)
                && bucket_ok)
                .then_some(())
        },
    )
    .await;
    let status = clinics.get("adopter").await.unwrap().status.unwrap();
    assert_eq!(status.bucket_name.as_deref(), Some(bucket.as_str()));
    assert_eq!(status.database.unwrap().identifier, db_id);
    let creates = "openemr_aws_api_calls_total{service=\"rds\",operation=\"CreateDBInstance\",outcome=\"success\"}";
    assert_eq!(operator.metric(creates).await, 0);

    // The report's Event came before the first change's. The changes are seen in AWS a
    // moment before their Events are written: wait for those.
    let events = eventually(Duration::from_secs(30), "the changes' Events", || async {
        let events = events_of(&client, &ns.name, "adopter").await;
        let has = |reason: &str| events.iter().any(|e| e.reason.as_deref() == Some(reason));
        (has("DifferencesReported") && has("DatabaseModified") && has("BucketSecured"))
            .then_some(events)
    })
    .await;
    let time_of = |reason: &str| {
        events
            .iter()
            .find(|e| e.reason.as_deref() == Some(reason))
            .and_then(|e| e.event_time.clone())
            .unwrap_or_else(|| panic!("an Event {reason}"))
            .0
    };
    let reported = time_of("DifferencesReported");
    assert!(reported <= time_of("DatabaseModified"));
    assert!(reported <= time_of("BucketSecured"));

    // Claimed by the clinic's tags, once reported: the claim outlives the operator's memory.
    let uid = clinics.get("adopter").await.unwrap().metadata.uid.unwrap();
    eventually(
        Duration::from_secs(30),
        "the adopted instance tagged as the clinic's",
        || async {
            let tags = instance_tags(&rds, &db_id).await;
            (tags.get("openemr.io/name").map(String::as_str) == Some("adopter")
                && tags.get("openemr.io/uid") == Some(&uid))
            .then_some(())
        },
    )
    .await;

    // The adopted bucket too, its own tags kept.
    let bucket_tags = eventually(
        Duration::from_secs(30),
        "the adopted bucket tagged as the clinic's",
        || async {
            let out = s3.get_bucket_tagging().bucket(&bucket).send().await.ok()?;
            let tags: std::collections::BTreeMap<String, String> = out
                .tag_set()
                .iter()
                .map(|t| (t.key().to_string(), t.value().to_string()))
                .collect();
            (tags.get("openemr.io/uid") == Some(&uid)).then_some(tags)
        },
    )
    .await;
    assert_eq!(
        bucket_tags.get("openemr.io/name").map(String::as_str),
        Some("adopter")
    );
    assert_eq!(
        bucket_tags.get("cost-centre").map(String::as_str),
        Some("records")
    );

    // Another clinic naming the same instance is refused at once and changes nothing. The
    // adopter settles first: no mutating call for two inventory intervals.
    let mutating = |calls: std::collections::BTreeMap<String, u64>| -> u64 {
        mutations(&calls).iter().map(|(_, n)| n).sum()
    };
    let mut settled = mutating(aws_calls(&operator).await);
    loop {
        tokio::time::sleep(2 * INVENTORY).await;
        let now = mutating(aws_calls(&operator).await);
        if now == settled {
            break;
        }
        settled = now;
    }
    let before = support::aws_calls(&operator).await;
    let intruder = clinic_with(
        "intruder",
        region,
        "Retain",
        &format!("  adopt: {{dbInstanceIdentifier: {db_id}}}"),
    );
    apply(&client, &ns.name, &intruder).await.unwrap();
    let refused = wait_for_reason(&clinics, "intruder", "Accepted", "AdoptionConflict").await;
    assert_eq!(refused.status, "False");
    assert!(
        refused
            .message
            .contains(&format!("clinic {}/adopter", ns.name)),
        "{}",
        refused.message
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = support::aws_calls(&operator).await;
    assert_eq!(
        mutating(after.clone()),
        mutating(before.clone()),
        "{before:?} → {after:?}"
    );
    warning_event(&client, &ns.name, "intruder", "AdoptionConflict").await;
    clinics
        .delete("intruder", &Default::default())
        .await
        .unwrap();

    // The adopted instance's drift wakes the clinic that claimed it, once the clinic is at
    // rest (no pass of its own is due).
    eventually(Duration::from_secs(30), "the adopter at rest", || async {
        let status = clinics.get("adopter").await.ok()?.status?;
        (status.phase == Some(openemr_operator::api::deployment::DeploymentPhase::Ready)
            && status.in_flight.is_none())
        .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    rds.modify_db_instance()
        .db_instance_identifier(&db_id)
        .backup_retention_period(2)
        .apply_immediately(true)
        .send()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the adopted instance's drift corrected",
        || async {
            let out = rds
                .describe_db_instances()
                .db_instance_identifier(&db_id)
                .send()
                .await
                .ok()?;
            (out.db_instances()[0].backup_retention_period() == Some(7)).then_some(())
        },
    )
    .await;

    // Deleted with `Delete`: what was adopted is left as it was, objects, versions and all.
    for body in ["first", "second"] {
        s3.put_object()
            .bucket(&bucket)
            .key("documents/patient-1/scan.pdf")
            .body(aws_sdk_s3::primitives::ByteStream::from_static(
                body.as_bytes(),
            ))
            .send()
            .await
            .unwrap();
    }
    clinics
        .patch(
            "adopter",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"deletionPolicy": "Delete"}})),
        )
        .await
        .unwrap();
    clinics
        .delete("adopter", &Default::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "the adopter gone", || async {
        clinics
            .get_opt("adopter")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let versions = s3
        .list_object_versions()
        .bucket(&bucket)
        .send()
        .await
        .expect("the adopted bucket is still there");
    assert_eq!(versions.versions().len(), 2, "{versions:?}");
    let db = rds
        .describe_db_instances()
        .db_instance_identifier(&db_id)
        .send()
        .await
        .expect("the adopted instance is still there");
    assert_eq!(db.db_instances()[0].db_instance_status(), Some("available"));
    let deletes = "openemr_aws_api_calls_total{service=\"rds\",operation=\"DeleteDBInstance\",outcome=\"success\"}";
    assert_eq!(operator.metric(deletes).await, 0);
    let events = events_of(&client, &ns.name, "adopter").await;
    let cleaned = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("CleanedUp"))
        .and_then(|e| e.note.clone())
        .expect("a CleanedUp Event");
    assert!(
        cleaned.contains(&format!("DB instance {db_id}")),
        "{cleaned}"
    );
    assert!(cleaned.contains("adopted"), "{cleaned}");
    assert!(cleaned.contains(&format!("bucket {bucket}")), "{cleaned}");
    assert!(cleaned.contains("file system"), "{cleaned}");
    drop(operator);
}

/// moto's view of `account`: the credentials of a role there, assumed as the operator does.
async fn in_account(account: &str, region: &str) -> aws_config::SdkConfig {
    env().aws_in_account(account, region).await
}

/// `spec.network` of a clinic in `account`: the cluster's network there.
fn network_in(account: &str, region: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(&env().cluster_network_in(Some(account), region)).unwrap()
}

/// A clinic in another account lands there, and is the first of its account: the account's
/// shared audit trail is made there first (the clinic's stack waits for it), logs every
/// clinic bucket's objects, and is started again when someone stops it.
#[tokio::test]
async fn a_clinic_with_a_role_lands_in_the_roles_account() {
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "role").await;
    let account = "111122223333";
    let mut manifest = clinic_with("elsewhere", "eu-west-1", "Retain", "");
    manifest["spec"]["aws"]["roleArn"] =
        format!("arn:aws:iam::{account}:role/openemr-clinic").into();
    manifest["spec"]["network"] = network_in(account, "eu-west-1");
    apply(&client, &ns.name, &manifest).await.unwrap();
    let operator = Operator::start_with(
        env(),
        Some(&ns.name),
        &["--audit-refresh-interval", "1s", "--resync-interval", "2s"],
    );
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    wait_for_reason(&clinics, "elsewhere", "Ready", "Ready").await;
    let status = clinics.get("elsewhere").await.unwrap().status.unwrap();
    let db_arn = status.database.unwrap().arn.unwrap();
    assert!(db_arn.contains(&format!(":{account}:")), "{db_arn}");
    assert!(
        status
            .kms_key_arn
            .unwrap()
            .contains(&format!(":{account}:"))
    );
    let stack_id = status.stack.unwrap().id.unwrap();
    assert!(stack_id.contains(&format!(":{account}:")), "{stack_id}");
    // Invisible to the operator's own account.
    let rds = aws_sdk_rds::Client::new(&moto("eu-west-1").await);
    let own = rds.describe_db_instances().send().await.unwrap();
    assert!(
        own.db_instances()
            .iter()
            .all(|db| !db.db_instance_arn().unwrap_or_default().contains(account))
    );

    // The account's shared trail, in the audit region, made before the clinic's stack.
    let audit = status.audit.expect("status.audit");
    assert_eq!(
        audit.scope,
        openemr_operator::api::deployment::AuditScope::Shared
    );
    assert_eq!(
        audit.trail_arn.as_deref(),
        Some(format!("arn:aws:cloudtrail:us-east-1:{account}:trail/openemr-audit").as_str())
    );
    assert_eq!(
        audit.logs.as_deref(),
        Some(format!("s3://{account}-openemr-audit-logs/AWSLogs/{account}/").as_str())
    );
    assert_eq!(
        condition(&clinics, "elsewhere", "AuditReady")
            .await
            .unwrap()
            .reason,
        "SharedTrail"
    );
    let home = in_account(account, support::AUDIT_REGION).await;
    let created =
        |stacks: aws_sdk_cloudformation::operation::describe_stacks::DescribeStacksOutput| {
            stacks.stacks()[0].creation_time().copied().unwrap()
        };
    let audit_stack = aws_sdk_cloudformation::Client::new(&home)
        .describe_stacks()
        .stack_name("openemr-audit")
        .send()
        .await
        .unwrap();
    let clinic_stack = aws_sdk_cloudformation::Client::new(&in_account(account, "eu-west-1").await)
        .describe_stacks()
        .stack_name(&stack_id)
        .send()
        .await
        .unwrap();
    assert!(created(audit_stack) <= created(clinic_stack));
    let trails = aws_sdk_cloudtrail::Client::new(&home);
    let selectors = trails
        .get_event_selectors()
        .trail_name("openemr-audit")
        .send()
        .await
        .unwrap();
    let data = selectors
        .advanced_event_selectors()
        .iter()
        .flat_map(|s| s.field_selectors())
        .find(|f| f.field() == "resources.ARN")
        .expect("a selector of the clinic buckets' objects");
    assert_eq!(data.starts_with(), ["arn:aws:s3:::oe-"]);
    let bucket = clinics
        .get("elsewhere")
        .await
        .unwrap()
        .status
        .unwrap()
        .bucket_name
        .unwrap();
    assert!(bucket.starts_with("oe-"), "{bucket}");

    // Someone stops the trail: the operator starts it again and says so on the clinic.
    trails
        .stop_logging()
        .name("openemr-audit")
        .send()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the trail logging again",
        || async {
            let s = trails
                .get_trail_status()
                .name("openemr-audit")
                .send()
                .await
                .ok()?;
            s.is_logging().unwrap_or(false).then_some(())
        },
    )
    .await;
    let restarted = warning_event(&client, &ns.name, "elsewhere", "AuditTrailRestarted")
        .await
        .note
        .unwrap_or_default();
    assert!(restarted.contains("logging started again"), "{restarted}");

    // One AssumeRole for the clinic's own session and one for the account's audit
    // session, each cached and reused.
    let assumed =
        "openemr_aws_api_calls_total{service=\"sts\",operation=\"AssumeRole\",outcome=\"success\"}";
    assert_eq!(
        operator.metric(assumed).await,
        2,
        "credentials cached and reused"
    );
    drop(operator);
}

/// A clinic made by an operator before the shared audit trail has a trail of its own in its
/// stack: it keeps it until the account's shared trail is made and confirmed logging (held
/// here by a refused GetTrailStatus), so its logs have no gap, and then its stack loses it.
#[tokio::test]
async fn an_older_clinics_own_trail_goes_once_the_shared_trail_logs() {
    use aws_sdk_cloudformation::types::Tag;
    use openemr_operator::controller::deployment::clinic::{self, ClusterId};
    use openemr_operator::controller::deployment::infra::template::{self, StackInputs};
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "legacy").await;
    let (account, region, name) = ("222233334444", "eu-west-1", "veteran");
    let mut manifest = clinic_with(name, region, "Retain", "");
    manifest["spec"]["aws"]["roleArn"] =
        format!("arn:aws:iam::{account}:role/openemr-clinic").into();
    manifest["spec"]["network"] = network_in(account, region);
    apply(&client, &ns.name, &manifest).await.unwrap();
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let stored = clinics.get(name).await.unwrap();

    // Its stack as an older operator made it: with the clinic's own trail.
    let cluster = ClusterId::parse(&support::cluster_id()).unwrap();
    let names = support::clinic_names(&ns.name, name);
    let uid = stored.metadata.uid.clone().unwrap();
    let tags = clinic::tags(&cluster, &ns.name, name, &uid, &stored.spec.tags);
    let older = template::render(&StackInputs {
        names: &names,
        tags: &tags,
        spec: &stored.spec,
        clinic_trail: true,
    });
    let there = in_account(account, region).await;
    let cfn = aws_sdk_cloudformation::Client::new(&there);
    cfn.create_stack()
        .stack_name(&names.stack)
        .template_body(&older.body)
        .set_tags(Some(
            tags.iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect(),
        ))
        .send()
        .await
        .unwrap();
    let trails_there = aws_sdk_cloudtrail::Client::new(&there);
    let own_trail_logs = || async {
        trails_there
            .get_trail_status()
            .name(&names.trail)
            .send()
            .await
            .ok()
            .and_then(|s| s.is_logging())
    };
    eventually(
        Duration::from_secs(30),
        "the clinic's own trail",
        || async { (own_trail_logs().await == Some(true)).then_some(()) },
    )
    .await;

    // The shared trail cannot be confirmed yet (its status may not be read): the clinic
    // is made ready on its own trail, and its stack is not touched.
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    proxy.set(
        "GetTrailStatus",
        Rule::default().error(AwsFault::access_denied("cloudtrail:GetTrailStatus")),
    );
    let url = proxy.url();
    let operator = Operator::start_with_env(
        env(),
        Some(&ns.name),
        &[],
        &[("AWS_ENDPOINT_URL", url.as_str())],
    );
    wait_for_reason(&clinics, name, "Ready", "Ready").await;
    let audit = wait_for_reason(&clinics, name, "AuditReady", "ClinicTrail").await;
    assert!(
        audit.message.contains("GetTrailStatus"),
        "{}",
        audit.message
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        clinics
            .get(name)
            .await
            .unwrap()
            .status
            .unwrap()
            .audit
            .unwrap()
            .scope,
        openemr_operator::api::deployment::AuditScope::Clinic
    );
    assert_eq!(own_trail_logs().await, Some(true));
    assert!(
        !events_of(&client, &ns.name, name)
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("StackUpdateStarted")),
        "the stack is not updated while the shared trail is unconfirmed"
    );

    // Confirmed: the clinic's trail goes.
    proxy.clear("GetTrailStatus");
    eventually(
        Duration::from_secs(60),
        "the clinic on the shared trail",
        || async {
            let audit = clinics.get(name).await.ok()?.status?.audit?;
            (audit.scope == openemr_operator::api::deployment::AuditScope::Shared).then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "the clinic's own trail gone with the stack update",
        || async { own_trail_logs().await.is_none().then_some(()) },
    )
    .await;
    // The shared trail was made before the update that removed the clinic's own.
    let home = in_account(account, support::AUDIT_REGION).await;
    let audit_stack = aws_sdk_cloudformation::Client::new(&home)
        .describe_stacks()
        .stack_name("openemr-audit")
        .send()
        .await
        .unwrap();
    let shared_made = audit_stack.stacks()[0].creation_time().copied().unwrap();
    // moto applies the update before UpdateStack answers; the Event follows the answer.
    let update_started = eventually(
        Duration::from_secs(10),
        "the Event of the clinic's stack update",
        || async {
            events_of(&client, &ns.name, name)
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("StackUpdateStarted"))
                .and_then(|e| e.event_time)
        },
    )
    .await
    .0;
    let updated = aws_smithy_types::DateTime::from_nanos(update_started.as_nanosecond()).unwrap();
    assert!(shared_made <= updated, "{shared_made:?} > {updated:?}");
    let logging = aws_sdk_cloudtrail::Client::new(&home)
        .get_trail_status()
        .name("openemr-audit")
        .send()
        .await
        .unwrap();
    assert_eq!(logging.is_logging(), Some(true));
    // What the clinic's trail wrote stays where it was: the bucket is kept.
    let status = clinics.get(name).await.unwrap().status.unwrap();
    assert_eq!(status.bucket_name.as_deref(), Some(names.bucket.as_str()));
    drop(operator);
}

#[tokio::test]
async fn a_stack_update_is_made_once_and_a_stale_inventory_never_repeats_it() {
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "stack-up").await;
    let name = "clinic-t";
    let manifest = |team: &str| {
        clinic_with(
            name,
            REGION,
            "Delete",
            &format!("  tags: {{team: {team}}}\n"),
        )
    };
    apply(&client, &ns.name, &manifest("records"))
        .await
        .unwrap();
    // Stacks are listed every sixth inventory interval: 18 s here, long enough for a stale
    // listing to be read after the update.
    let operator = Operator::start_with(
        env(),
        Some(&ns.name),
        &["--inventory-interval", &format!("{}s", INVENTORY.as_secs())],
    );
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    wait_for_reason(&clinics, name, "Ready", "Ready").await;
    // At rest long enough for the inventory to hold the stack as it is now.
    tokio::time::sleep(INVENTORY * 2).await;

    // The tags change: the stack is updated once and the clinic is Ready again.
    apply(&client, &ns.name, &manifest("billing"))
        .await
        .unwrap();
    let generation = clinics.get(name).await.unwrap().metadata.generation;
    eventually(
        Duration::from_secs(60),
        "the stack updated and the clinic ready",
        || async {
            let s = clinics.get(name).await.ok()?.status?;
            let stack = s.conditions.iter().find(|c| c.type_ == "StackReady")?;
            (s.phase == Some(openemr_operator::api::deployment::DeploymentPhase::Ready)
                && stack.status == "True"
                && stack.observed_generation == generation
                && s.in_flight.is_none())
            .then_some(())
        },
    )
    .await;
    let before = aws_calls(&operator).await;
    // Wakes of the clinic at rest (its Service deleted and made anew), while the inventory's
    // stack listing is still the one from before the update.
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), &ns.name);
    let service = format!("{name}-openemr");
    for _ in 0..3 {
        services
            .delete(&service, &Default::default())
            .await
            .unwrap();
        eventually(Duration::from_secs(30), "the Service made anew", || async {
            services.get_opt(&service).await.ok()?
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let after = aws_calls(&operator).await;
    let delta =
        |op: &str| after.get(op).copied().unwrap_or(0) - before.get(op).copied().unwrap_or(0);
    assert_eq!(delta("UpdateStack"), 0, "no second update: {after:?}");
    let status = clinics.get(name).await.unwrap().status.unwrap();
    assert_eq!(
        status.phase,
        Some(openemr_operator::api::deployment::DeploymentPhase::Ready)
    );
}

/// A clinic deleted under `Retain` and created again under its name finds what its earlier
/// incarnation left (the stack and the DB instance, tagged with the earlier uid): it is
/// reported, and nothing in AWS is changed; only a clinic created with `spec.adopt` naming
/// that instance takes it over, its stack with it, and says so.
#[tokio::test]
async fn an_earlier_incarnations_leftovers_are_reported_and_taken_over_only_through_adopt() {
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "phoenix").await;
    let region = "eu-west-2";
    let aws = moto(region).await;
    let rds = aws_sdk_rds::Client::new(&aws);
    let operator = Operator::start_with(env(), Some(&ns.name), &["--inventory-interval", "3s"]);
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let gone = || async {
        eventually(Duration::from_secs(60), "the clinic gone", || async {
            clinics
                .get_opt("phoenix")
                .await
                .ok()?
                .is_none()
                .then_some(())
        })
        .await
    };

    apply(
        &client,
        &ns.name,
        &clinic_with("phoenix", region, "Retain", ""),
    )
    .await
    .unwrap();
    wait_for_reason(&clinics, "phoenix", "Ready", "Ready").await;
    let first = clinics.get("phoenix").await.unwrap();
    let old_uid = first.metadata.uid.clone().unwrap();
    let db_id = first.status.unwrap().database.unwrap().identifier;
    clinics
        .delete("phoenix", &Default::default())
        .await
        .unwrap();
    gone().await;

    // Created again, under `Delete` without a final snapshot: reported, and nothing in AWS
    // is changed, not even when it is deleted.
    let before = aws_calls(&operator).await;
    apply(
        &client,
        &ns.name,
        &clinic_with("phoenix", region, "Delete", "  skipFinalSnapshot: true"),
    )
    .await
    .unwrap();
    let found = wait_for_reason(&clinics, "phoenix", "Accepted", "FormerIncarnationFound").await;
    for expected in [
        format!("uid {old_uid}"),
        format!("DB instance {db_id}"),
        "stack ".to_string(),
        "spec.adopt".to_string(),
    ] {
        assert!(
            found.message.contains(&expected),
            "{expected} in {}",
            found.message
        );
    }
    warning_event(&client, &ns.name, "phoenix", "FormerIncarnationFound").await;
    let refused = clinics.get("phoenix").await.unwrap().status.unwrap();
    assert_eq!(
        refused.phase,
        Some(openemr_operator::api::deployment::DeploymentPhase::Failed)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = aws_calls(&operator).await;
    assert_eq!(mutations(&after), mutations(&before));
    assert_eq!(
        instance_tags(&rds, &db_id).await.get("openemr.io/uid"),
        Some(&old_uid)
    );
    clinics
        .delete("phoenix", &Default::default())
        .await
        .unwrap();
    gone().await;
    let kept = warning_event(&client, &ns.name, "phoenix", "LeftoversKept").await;
    let note = kept.note.unwrap_or_default();
    assert!(note.contains(&format!("DB instance {db_id}")), "{note}");
    assert!(note.contains(&format!("uid {old_uid}")), "{note}");
    let deleted = aws_calls(&operator).await;
    assert_eq!(
        mutations(&deleted),
        mutations(&before),
        "the deletion changed nothing"
    );
    assert!(db_exists(&rds, &db_id).await);

    // Created with spec.adopt naming the earlier instance: taken over with its stack.
    apply(
        &client,
        &ns.name,
        &clinic_with(
            "phoenix",
            region,
            "Retain",
            &format!("  adopt: {{dbInstanceIdentifier: {db_id}}}"),
        ),
    )
    .await
    .unwrap();
    let adopted = eventually(Duration::from_secs(60), "the adoption reported", || async {
        let c = condition(&clinics, "phoenix", "Adopted").await?;
        (c.status == "True").then_some(c)
    })
    .await;
    assert!(
        adopted.message.contains(&format!(
            "made by an earlier clinic of this name (uid {old_uid}"
        )),
        "{}",
        adopted.message
    );
    assert!(
        adopted.message.contains("is taken over"),
        "{}",
        adopted.message
    );
    wait_for_reason(&clinics, "phoenix", "Ready", "Ready").await;
    let uid = clinics.get("phoenix").await.unwrap().metadata.uid.unwrap();
    eventually(
        Duration::from_secs(30),
        "the instance tagged as the new clinic's",
        || async {
            (instance_tags(&rds, &db_id).await.get("openemr.io/uid") == Some(&uid)).then_some(())
        },
    )
    .await;
    let calls = aws_calls(&operator).await;
    assert_eq!(calls.get("CreateDBInstance"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("CreateStack"), Some(&1), "{calls:?}");
    drop(operator);
}

/// Adopting a production database never resizes or restarts it on the spec's defaults: a
/// larger class, Multi-AZ and backups off are reported and kept, nothing that takes an
/// outage is sent, and once the manifest approves one change exactly that one is sent.
#[tokio::test]
async fn an_adopted_instances_outages_are_sent_only_as_approved() {
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "approve").await;
    let region = "ca-central-1";
    let aws = moto(region).await;
    let rds = aws_sdk_rds::Client::new(&aws);
    let db_id = format!("production-{}", std::process::id());
    rds.create_db_instance()
        .db_instance_identifier(&db_id)
        .engine("mysql")
        .engine_version("8.0.40")
        .db_instance_class("db.r6g.xlarge")
        .multi_az(true)
        .allocated_storage(20)
        .master_username("admin")
        .manage_master_user_password(true)
        .storage_encrypted(true)
        .backup_retention_period(0)
        .deletion_protection(true)
        .send()
        .await
        .unwrap();
    let instance = || async {
        rds.describe_db_instances()
            .db_instance_identifier(&db_id)
            .send()
            .await
            .unwrap()
            .db_instances()[0]
            .clone()
    };
    let manifest = |approved: &str| {
        clinic_with(
            "adopter",
            region,
            "Retain",
            &format!(
                "  database: {{applyChanges: Immediately}}\n  adopt: {{dbInstanceIdentifier: {db_id}, approvedChanges: [{approved}]}}"
            ),
        )
    };
    apply(&client, &ns.name, &manifest("")).await.unwrap();
    let operator = Operator::start_with(env(), Some(&ns.name), &["--inventory-interval", "3s"]);
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);

    // The report (its condition is soon followed by the one saying what waits; its Event
    // stays), then what waits.
    let waiting = wait_for_reason(&clinics, "adopter", "Adopted", "ChangesAwaitingApproval").await;
    let report = events_of(&client, &ns.name, "adopter")
        .await
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("DifferencesReported"))
        .and_then(|e| e.note)
        .expect("the report's Event");
    for text in [&report, &waiting.message] {
        let (_, kept) = text
            .split_once("keeps, until spec.adopt.approvedChanges names them")
            .unwrap_or_else(|| panic!("{text}"));
        for field in [
            "instanceClass: db.r6g.xlarge",
            "multiAZ: true → false",
            "backupRetentionDays: 0 → 7",
            // moto's default storage for an instance made without a type, as gp2 was.
            "storageType: gp2 → gp3",
        ] {
            assert!(kept.contains(field), "{field} in {text}");
        }
    }
    wait_for_reason(&clinics, "adopter", "Ready", "Ready").await;
    tokio::time::sleep(2 * INVENTORY).await;
    // What takes no outage (windows, snapshot tags, protection) is corrected; nothing else.
    let outages = [
        "instanceClass",
        "multiAZ",
        "backupRetentionDays",
        "engineVersion",
        "allocatedStorageGiB",
        "storageType",
    ];
    let modified = || async {
        events_of(&client, &ns.name, "adopter")
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("DatabaseModified"))
            .filter_map(|e| e.note)
            .collect::<Vec<String>>()
    };
    let before = modified().await;
    for note in &before {
        for field in outages {
            assert!(!note.contains(field), "{field} sent unapproved: {note}");
        }
    }
    let modifies = aws_calls(&operator).await.get("ModifyDBInstance").copied();
    assert_eq!(modifies.unwrap_or(0) as usize, before.len());
    let db = instance().await;
    assert_eq!(db.db_instance_class(), Some("db.r6g.xlarge"));
    assert_eq!(db.multi_az(), Some(true));
    assert_eq!(db.backup_retention_period(), Some(0));

    // Multi-AZ approved: exactly that is sent, in one more call.
    apply(&client, &ns.name, &manifest("multiAZ"))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "Multi-AZ off", || async {
        (instance().await.multi_az() == Some(false)).then_some(())
    })
    .await;
    tokio::time::sleep(2 * INVENTORY).await;
    let calls = aws_calls(&operator).await;
    assert_eq!(
        calls.get("ModifyDBInstance").copied(),
        Some(modifies.unwrap_or(0) + 1),
        "{calls:?}"
    );
    let db = instance().await;
    assert_eq!(db.db_instance_class(), Some("db.r6g.xlarge"));
    assert_eq!(db.backup_retention_period(), Some(0));
    assert_eq!(db.storage_type(), Some("gp2"));
    let after: Vec<String> = modified()
        .await
        .into_iter()
        .filter(|n| !before.contains(n))
        .collect();
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0].contains("multiAZ: true → false"), "{after:?}");
    for kept in ["instanceClass", "backupRetentionDays", "storageType"] {
        assert!(!after[0].contains(kept), "{after:?}");
    }
    drop(operator);
}

/// The seam a restore fills a clinic through (`openemr.io/restored-by`): the clinic builds
/// its stack but creates no database and says whose it waits for; the instance the restore
/// makes under the clinic's identifier, tagged as restored, becomes its database, and the
/// setup Job attaches to it: OpenEMR's installer never runs over restored data.
#[tokio::test]
async fn a_clinic_a_restore_fills_creates_no_database_and_never_installs() {
    use k8s_openapi::api::batch::v1::Job;
    use openemr_operator::controller::deployment::clinic::RESTORED_BY;
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "filled").await;
    let region = "ap-southeast-2";
    let aws = moto(region).await;
    let rds = aws_sdk_rds::Client::new(&aws);
    let cfn = aws_sdk_cloudformation::Client::new(&aws);
    let operator = Operator::start_with(env(), Some(&ns.name), &["--inventory-interval", "3s"]);
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let mut manifest = support::clinic_manifest("copy-a", region, "  deletionPolicy: Retain\n");
    manifest["metadata"]["annotations"] = serde_json::json!({RESTORED_BY: "restore-a"});
    manifest["spec"]["web"]["replicas"] = serde_json::json!(1);
    apply(&client, &ns.name, &manifest).await.unwrap();

    let waiting = wait_for_reason(&clinics, "copy-a", "DatabaseReady", "WaitingForRestore").await;
    let names = support::clinic_names(&ns.name, "copy-a");
    assert!(
        waiting.message.contains("RestoreRequest restore-a")
            && waiting.message.contains(&names.db_instance),
        "{}",
        waiting.message
    );
    let clinic = clinics.get("copy-a").await.unwrap();
    let stack = clinic.status.as_ref().unwrap().stack.clone().unwrap().name;
    tokio::time::sleep(INVENTORY * 2).await;
    let calls = aws_calls(&operator).await;
    assert_eq!(calls.get("CreateDBInstance"), None, "{calls:?}");
    assert!(!db_exists(&rds, &names.db_instance).await);

    // The restore's part, played here: an instance under the clinic's identifier with the
    // clinic's tags (the stack's) and the restore's mark.
    let tags = cfn
        .describe_stacks()
        .stack_name(&stack)
        .send()
        .await
        .unwrap()
        .stacks()[0]
        .tags()
        .iter()
        .map(|t| {
            aws_sdk_rds::types::Tag::builder()
                .key(t.key().unwrap_or_default())
                .value(t.value().unwrap_or_default())
                .build()
        })
        .chain([aws_sdk_rds::types::Tag::builder()
            .key(RESTORED_BY)
            .value("uid-of-restore-a")
            .build()])
        .collect::<Vec<_>>();
    rds.create_db_instance()
        .db_instance_identifier(&names.db_instance)
        .engine("mysql")
        .db_instance_class("db.t4g.small")
        .allocated_storage(20)
        .master_username("openemr_admin")
        .manage_master_user_password(true)
        .db_name("openemr")
        .set_tags(Some(tags))
        .send()
        .await
        .unwrap();

    wait_for_reason(&clinics, "copy-a", "DatabaseReady", "DatabaseAvailable").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let setup = eventually(Duration::from_secs(60), "the setup Job", || async {
        jobs.list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|j| {
                j.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.contains("setup"))
            })
    })
    .await;
    let env_of =
        serde_json::to_value(&setup.spec.unwrap().template.spec.unwrap().containers[0].env)
            .unwrap();
    assert_eq!(env_of[1]["value"], "attach", "{env_of}");
    let calls = aws_calls(&operator).await;
    assert_eq!(calls.get("CreateDBInstance"), None, "{calls:?}");
    drop(operator);
}

/// A point-in-time restore is judged against the clinic's restorable window by the
/// operator itself (moto would restore any instant): a time before the window is refused
/// naming the window, one inside it is accepted.
#[tokio::test]
async fn a_point_in_time_outside_the_clinics_window_is_refused_naming_the_window() {
    use k8s_openapi::jiff::Timestamp;
    use openemr_operator::api::RestoreRequest;
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "window").await;
    let region = "ap-northeast-2";
    let operator = Operator::start_with(env(), Some(&ns.name), &["--inventory-interval", "3s"]);
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let requests: Api<RestoreRequest> = Api::namespaced(client.clone(), &ns.name);
    apply(
        &client,
        &ns.name,
        &support::clinic_manifest("clinic-w", region, "  database: {backupRetentionDays: 7}\n"),
    )
    .await
    .unwrap();
    let latest = eventually(
        Duration::from_secs(90),
        "the clinic's restorable window",
        || async {
            clinics
                .get("clinic-w")
                .await
                .ok()?
                .status?
                .database?
                .latest_restorable_time
                .map(|t| t.0)
        },
    )
    .await;
    let request = |name: &str, time: Timestamp| {
        documents(&format!(
            "
apiVersion: openemr.io/v1alpha1
kind: RestoreRequest
metadata: {{name: {name}}}
spec:
  source: {{pointInTime: {{deploymentRef: {{name: clinic-w}}, time: '{time}'}}}}
"
        ))
        .remove(0)
    };
    let too_old = Timestamp::from_second(latest.as_second() - 8 * 86_400).unwrap();
    apply(&client, &ns.name, &request("too-old", too_old))
        .await
        .unwrap();
    let refused =
        wait_for_reason(&requests, "too-old", "Accepted", "PointInTimeOutsideWindow").await;
    assert!(
        refused
            .message
            .contains("outside clinic clinic-w's restorable window")
            && refused.message.contains("backupRetentionDays"),
        "{}",
        refused.message
    );
    let recent = Timestamp::from_second(latest.as_second() - 3600).unwrap();
    apply(&client, &ns.name, &request("recent", recent))
        .await
        .unwrap();
    wait_for_reason(&requests, "recent", "Accepted", "Valid").await;
    drop(operator);
}
