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
