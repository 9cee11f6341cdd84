//! The AWS layer against moto, through the real SDK clients: a role per clinic lands its
//! resources in the role's account, failures come back in the class the controllers act
//! on, and the request budget paces calls without failing them.

mod support;

use std::sync::Arc;
use std::time::Instant;

use aws_config::SdkConfig;
use openemr_operator::aws::{
    AwsClients, AwsError, AwsPool, BudgetConfig, Budgets, ErrorClass, Rate, Service, session_name,
};
use openemr_operator::metrics::Metrics;
use support::env;

const ROLE: &str = "arn:aws:iam::111122223333:role/clinic-x";

async fn base() -> SdkConfig {
    env().aws(None).await
}

async fn pool(config: BudgetConfig) -> (AwsPool, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let budgets = Arc::new(Budgets::new(config, metrics.clone()));
    (
        AwsPool::new(base().await, metrics.clone(), budgets),
        metrics,
    )
}

/// A name no other test and no earlier run against the same emulator uses.
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// The value of one sample of the exposition, 0 when absent.
fn sample(metrics: &Metrics, series: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_role_per_clinic_puts_its_resources_in_the_role_account() {
    let (pool, metrics) = pool(BudgetConfig::default()).await;
    let region = "us-west-2";
    let name = unique("clinic-x");
    let session = session_name("clinics", &name);
    let aws = pool.clients(Some(ROLE), &session, region).await;
    assert_eq!(aws.account, "111122223333");
    assert_eq!(aws.region, region);

    // Three services with the role's credentials.
    let caller = aws
        .call(
            Service::Sts,
            "GetCallerIdentity",
            aws.sts.get_caller_identity().send(),
        )
        .await
        .expect("GetCallerIdentity");
    assert_eq!(caller.account(), Some("111122223333"));
    assert!(
        caller.arn().unwrap_or_default().contains(&session),
        "the session names the clinic: {caller:?}"
    );
    let group = aws
        .call(
            Service::Rds,
            "CreateDBParameterGroup",
            aws.rds
                .create_db_parameter_group()
                .db_parameter_group_name(&name)
                .db_parameter_group_family("mysql8.0")
                .description("clinic x")
                .send(),
        )
        .await
        .expect("CreateDBParameterGroup");
    let group_arn = group
        .db_parameter_group()
        .and_then(|g| g.db_parameter_group_arn())
        .unwrap_or_default();
    assert!(group_arn.contains(":111122223333:"), "{group_arn}");
    let secret = aws
        .call(
            Service::SecretsManager,
            "CreateSecret",
            aws.secretsmanager
                .create_secret()
                .name(&name)
                .secret_string("not-a-real-password")
                .send(),
        )
        .await
        .expect("CreateSecret");
    let secret_arn = secret.arn().unwrap_or_default();
    assert!(secret_arn.contains(":111122223333:"), "{secret_arn}");

    // The operator's own account sees none of it.
    let own = pool.clients(None, "", region).await;
    assert_eq!(own.account, "default");
    let groups = |aws: Arc<AwsClients>| {
        let name = name.clone();
        async move {
            aws.call(
                Service::Rds,
                "DescribeDBParameterGroups",
                aws.rds
                    .describe_db_parameter_groups()
                    .db_parameter_group_name(name)
                    .send(),
            )
            .await
        }
    };
    assert_eq!(
        groups(aws.clone())
            .await
            .expect("the role sees its group")
            .db_parameter_groups()
            .len(),
        1
    );
    // Real RDS answers DBParameterGroupNotFound; moto an empty list.
    match groups(own.clone()).await {
        Ok(out) => assert!(out.db_parameter_groups().is_empty(), "{out:?}"),
        Err(err) => assert_eq!(err.class, ErrorClass::NotFound, "{err}"),
    }
    let err = own
        .call(
            Service::SecretsManager,
            "DescribeSecret",
            own.secretsmanager.describe_secret().secret_id(&name).send(),
        )
        .await
        .expect_err("the secret is in the role's account");
    assert_eq!(err.class, ErrorClass::NotFound, "{err}");

    // The same clinic gets the same clients back, and the role was assumed once for all
    // three services.
    let again = pool.clients(Some(ROLE), &session, region).await;
    assert!(Arc::ptr_eq(&aws, &again));
    assert!(Arc::ptr_eq(
        &own,
        &pool.clients(None, "ignored", region).await
    ));
    for (series, count) in [
        (
            r#"openemr_aws_api_calls_total{service="sts",operation="AssumeRole",outcome="success"}"#,
            1.0,
        ),
        (
            r#"openemr_aws_api_calls_total{service="secretsmanager",operation="CreateSecret",outcome="success"}"#,
            1.0,
        ),
    ] {
        assert_eq!(
            sample(&metrics, series),
            count,
            "{series}\n{}",
            metrics.encode()
        );
    }

    // Another clinic with the same role is a session of its own.
    let other = pool
        .clients(Some(ROLE), &session_name("clinics", "y"), region)
        .await;
    assert!(!Arc::ptr_eq(&aws, &other));
    let caller = other
        .call(
            Service::Sts,
            "GetCallerIdentity",
            other.sts.get_caller_identity().send(),
        )
        .await
        .expect("GetCallerIdentity");
    assert!(
        caller
            .arn()
            .unwrap_or_default()
            .ends_with("/openemr-clinics.y"),
        "{caller:?}"
    );
    assert_eq!(pool.len(), 3);
    pool.forget(ROLE, &session, region);
    assert_eq!(pool.len(), 2);
}

/// The error of a call that must fail.
fn failure<T: std::fmt::Debug>(result: Result<T, AwsError>) -> AwsError {
    result.expect_err("the call must fail")
}

#[tokio::test]
async fn failures_come_back_classified() {
    let (pool, _) = pool(BudgetConfig::default()).await;
    let aws = pool.clients(None, "", "eu-central-1").await;
    let id = unique("clinic");

    // RDS: missing, existing, invalid.
    let err = failure(
        aws.call(
            Service::Rds,
            "DescribeDBInstances",
            aws.rds
                .describe_db_instances()
                .db_instance_identifier(&id)
                .send(),
        )
        .await,
    );
    assert_eq!(
        (err.class, err.code.as_str()),
        (ErrorClass::NotFound, "DBInstanceNotFound"),
        "{err}"
    );
    assert_eq!(err.reason(), "AwsNotFound");
    assert_eq!((err.service, err.operation), ("rds", "DescribeDBInstances"));

    let create = || {
        aws.rds
            .create_db_instance()
            .db_instance_identifier(&id)
            .engine("mysql")
            .db_instance_class("db.t4g.medium")
            .allocated_storage(20)
            .master_username("openemr")
            .manage_master_user_password(true)
            .send()
    };
    aws.call(Service::Rds, "CreateDBInstance", create())
        .await
        .expect("CreateDBInstance");
    let err = failure(aws.call(Service::Rds, "CreateDBInstance", create()).await);
    assert_eq!(
        (err.class, err.code.as_str()),
        (ErrorClass::Conflict, "DBInstanceAlreadyExists"),
        "{err}"
    );

    let err = failure(
        aws.call(
            Service::Rds,
            "CreateDBInstance",
            aws.rds
                .create_db_instance()
                .db_instance_identifier(format!("{id}-bad"))
                .engine("nosuchengine")
                .db_instance_class("db.t4g.medium")
                .allocated_storage(20)
                .master_username("openemr")
                .master_user_password("not-a-real-password")
                .send(),
        )
        .await,
    );
    assert_eq!(
        (err.class, err.code.as_str()),
        (ErrorClass::Invalid, "InvalidParameterValue"),
        "{err}"
    );

    // CloudFormation: a missing stack is a ValidationError that means NotFound.
    let err = failure(
        aws.call(
            Service::CloudFormation,
            "DescribeStacks",
            aws.cloudformation.describe_stacks().stack_name(&id).send(),
        )
        .await,
    );
    assert_eq!(
        (err.class, err.code.as_str()),
        (ErrorClass::NotFound, "ValidationError"),
        "{err}"
    );

    // S3: HEAD has no body; the 404 alone says NotFound.
    let err = failure(
        aws.call(
            Service::S3,
            "HeadBucket",
            aws.s3.head_bucket().bucket(&id).send(),
        )
        .await,
    );
    assert_eq!(
        (err.class, err.code.as_str()),
        (ErrorClass::NotFound, "NotFound"),
        "{err}"
    );

    // Secrets Manager: missing, then existing.
    let err = failure(
        aws.call(
            Service::SecretsManager,
            "GetSecretValue",
            aws.secretsmanager.get_secret_value().secret_id(&id).send(),
        )
        .await,
    );
    assert_eq!(
        (err.class, err.code.as_str()),
        (ErrorClass::NotFound, "ResourceNotFoundException"),
        "{err}"
    );
    let create = || {
        aws.secretsmanager
            .create_secret()
            .name(&id)
            .secret_string("not-a-real-password")
            .send()
    };
    aws.call(Service::SecretsManager, "CreateSecret", create())
        .await
        .expect("CreateSecret");
    let err = failure(
        aws.call(Service::SecretsManager, "CreateSecret", create())
            .await,
    );
    assert_eq!(
        (err.class, err.code.as_str()),
        (ErrorClass::Conflict, "ResourceExistsException"),
        "{err}"
    );
}

#[tokio::test]
async fn the_budget_paces_calls_and_none_fails() {
    let slow_rds = BudgetConfig {
        rds: Rate {
            per_second: 10,
            burst: 5,
        },
        ..BudgetConfig::default()
    };
    let (pool, metrics) = pool(slow_rds).await;
    let aws: Arc<AwsClients> = pool.clients(None, "", "sa-east-1").await;
    let started = Instant::now();
    let calls = (0..30).map(|_| {
        aws.call(
            Service::Rds,
            "DescribeDBInstances",
            aws.rds.describe_db_instances().send(),
        )
    });
    for result in futures::future::join_all(calls).await {
        result.expect("DescribeDBInstances");
    }
    let took = started.elapsed().as_secs_f64();

    let series = |name: &str| sample(&metrics, &format!(r#"{name}{{service="rds"}}"#));
    // All 30 sent at once: 5 from the burst, 25 queued for tokens at 10/s.
    assert!(
        series("openemr_aws_budget_waits_total") >= 20.0,
        "{}",
        metrics.encode()
    );
    assert!(series("openemr_aws_budget_wait_seconds_total") > 0.0);
    assert!(took >= 2.0, "25 tokens at 10/s take 2.5 s, took {took}");
    assert_eq!(
        sample(
            &metrics,
            r#"openemr_aws_api_calls_total{service="rds",operation="DescribeDBInstances",outcome="success"}"#
        ),
        30.0
    );
}

/// A restore's two RDS calls against moto, seen through the fault proxy: the restored
/// instance is given the target's subnet group, security group, parameter group, safety
/// settings and tags (never AWS's defaults) and no `ManageMasterUserPassword`, which RDS
/// ignores on MySQL restores (moto honours it, so a test relying on it would pass here and
/// fail on AWS); the managed master password then comes from `ModifyDBInstance`, with the
/// target's key.
#[tokio::test]
async fn a_restored_instance_gets_the_targets_settings_then_a_managed_secret_of_its_own() {
    use openemr_operator::aws::rds::{Databases, RestoreDb};
    use std::collections::BTreeMap;
    use support::faults::FaultProxy;
    let region = "eu-south-1";
    let direct = env().aws(Some(region)).await;
    let rds = aws_sdk_rds::Client::new(&direct);
    let template = serde_json::json!({
        "Resources": {
            "Vpc": {"Type": "AWS::EC2::VPC", "Properties": {"CidrBlock": "10.60.0.0/16"}},
            "SubnetA": {"Type": "AWS::EC2::Subnet", "Properties": {
                "VpcId": {"Ref": "Vpc"}, "CidrBlock": "10.60.0.0/20",
                "AvailabilityZone": format!("{region}a")}},
            "SubnetB": {"Type": "AWS::EC2::Subnet", "Properties": {
                "VpcId": {"Ref": "Vpc"}, "CidrBlock": "10.60.16.0/20",
                "AvailabilityZone": format!("{region}b")}},
            "Group": {"Type": "AWS::EC2::SecurityGroup", "Properties": {
                "GroupDescription": "target database", "VpcId": {"Ref": "Vpc"}}},
            "Subnets": {"Type": "AWS::RDS::DBSubnetGroup", "Properties": {
                "DBSubnetGroupDescription": "target", "SubnetIds": [{"Ref": "SubnetA"}, {"Ref": "SubnetB"}]}},
            "Params": {"Type": "AWS::RDS::DBParameterGroup", "Properties": {
                "Family": "mysql8.0", "Description": "target"}},
            "Key": {"Type": "AWS::KMS::Key", "Properties": {"KeyPolicy": {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"}]}}},
        },
        "Outputs": {
            "Group": {"Value": {"Fn::GetAtt": ["Group", "GroupId"]}},
            "Subnets": {"Value": {"Ref": "Subnets"}},
            "Params": {"Value": {"Ref": "Params"}},
            "Key": {"Value": {"Fn::GetAtt": ["Key", "Arn"]}},
        },
    });
    let cfn = aws_sdk_cloudformation::Client::new(&direct);
    let target = support::create_stack(
        &cfn,
        &unique("restore-target"),
        &template.to_string(),
        &BTreeMap::new(),
    )
    .await;
    let source = unique("restore-source");
    rds.create_db_instance()
        .db_instance_identifier(&source)
        .engine("mysql")
        .db_instance_class("db.t4g.small")
        .allocated_storage(20)
        .master_username("openemr_admin")
        .master_user_password("SourceMaster1")
        .send()
        .await
        .unwrap();
    let snapshot = rds
        .create_db_snapshot()
        .db_instance_identifier(&source)
        .db_snapshot_identifier(format!("{source}-set"))
        .send()
        .await
        .unwrap()
        .db_snapshot()
        .and_then(|s| s.db_snapshot_arn())
        .unwrap()
        .to_string();

    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    proxy.record("RestoreDBInstanceFromDBSnapshot");
    proxy.record("ModifyDBInstance");
    let through = env().aws_loader(&proxy.url()).load().await;
    let metrics = Arc::new(Metrics::new());
    let budgets = Arc::new(Budgets::new(BudgetConfig::default(), metrics.clone()));
    let aws = AwsPool::new(through, metrics, budgets)
        .clients(None, "", region)
        .await;
    let restored = unique("restored");
    let text = |k: &str| target[k].clone();
    let request = RestoreDb {
        identifier: restored.clone(),
        snapshot: snapshot.clone(),
        instance_class: "db.t4g.medium".into(),
        multi_az: false,
        backup_retention: 14,
        backup_window: "03:00-03:30".into(),
        deletion_protection: true,
        subnet_group: text("Subnets"),
        security_group: text("Group"),
        parameter_group: text("Params"),
        tags: BTreeMap::from([
            ("openemr.io/name".to_string(), "copy-a".to_string()),
            ("openemr.io/restored-by".to_string(), "uid-r".to_string()),
        ]),
    };
    aws.restore_instance(&request).await.unwrap();
    aws.manage_master_password(&restored, &text("Key"))
        .await
        .unwrap();

    let [sent] = &proxy.exchanges("RestoreDBInstanceFromDBSnapshot")[..] else {
        panic!("one restore request")
    };
    for (param, value) in [
        ("DBInstanceIdentifier", restored.as_str()),
        ("DBSnapshotIdentifier", snapshot.as_str()),
        ("DBInstanceClass", "db.t4g.medium"),
        ("DBSubnetGroupName", &text("Subnets")),
        ("VpcSecurityGroupIds.VpcSecurityGroupId.1", &text("Group")),
        ("DBParameterGroupName", &text("Params")),
        ("DeletionProtection", "true"),
        ("PubliclyAccessible", "false"),
        ("MultiAZ", "false"),
        ("BackupRetentionPeriod", "14"),
        ("CopyTagsToSnapshot", "true"),
    ] {
        assert_eq!(
            sent.param(param).as_deref(),
            Some(value),
            "{param}: {}",
            sent.request
        );
    }
    let tags: BTreeMap<String, String> = (1..=2)
        .filter_map(|i| {
            Some((
                sent.param(&format!("Tags.Tag.{i}.Key"))?,
                sent.param(&format!("Tags.Tag.{i}.Value"))?,
            ))
        })
        .collect();
    assert_eq!(tags, request.tags);
    // No key and no managed-password flag: RDS takes neither on a MySQL restore.
    assert_eq!(
        sent.param("ManageMasterUserPassword"),
        None,
        "{}",
        sent.request
    );
    assert_eq!(sent.param("KmsKeyId"), None, "{}", sent.request);
    let [modified] = &proxy.exchanges("ModifyDBInstance")[..] else {
        panic!("one modify request")
    };
    assert_eq!(
        modified.param("ManageMasterUserPassword").as_deref(),
        Some("true")
    );
    assert_eq!(
        modified.param("MasterUserSecretKmsKeyId"),
        Some(text("Key"))
    );
    assert_eq!(modified.param("ApplyImmediately").as_deref(), Some("true"));

    // In moto: the instance has the target's pieces and a secret of its own.
    let db = rds
        .describe_db_instances()
        .db_instance_identifier(&restored)
        .send()
        .await
        .unwrap()
        .db_instances()[0]
        .clone();
    assert_eq!(
        db.db_subnet_group().and_then(|g| g.db_subnet_group_name()),
        Some(text("Subnets").as_str())
    );
    assert_eq!(db.deletion_protection(), Some(true));
    let secret = db.master_user_secret().and_then(|s| s.secret_arn());
    assert!(secret.is_some(), "{db:?}");
    // The source's own secret is no part of it (the source had none: a given password).
    assert!(
        rds.describe_db_instances()
            .db_instance_identifier(&source)
            .send()
            .await
            .unwrap()
            .db_instances()[0]
            .master_user_secret()
            .is_none()
    );
}
