//! AWS misbehaving between the operator and moto, through the fault proxy of
//! `tests/support/faults.rs`: the proxy answers as AWS would; clinics converge through
//! throttling and 5xx at about twice the requests; a permanent `AccessDenied` is reported
//! and backed off, and heals by itself once lifted; an operator killed (SIGKILL) around its
//! creates leaves exactly one of each thing once a restarted operator converges.
//!
//! Every operator here watches its own namespace only: the tests of this binary run at once.

mod support;

use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use openemr_operator::api::OpenEMRDeployment;
use openemr_operator::aws::{AwsError, ErrorClass};
use openemr_operator::controller::deployment::clinic::ClinicNames;
use support::faults::{AwsFault, FaultProxy, Outcome, Rule};
use support::operator::Operator;
use support::{TestNamespace, apply, condition, env, eventually, wait_for_reason, warning_event};

/// Retries after 1, 2, 4, 4 s instead of 15 s doubling to 10 min, so a test sees several.
const FAST_RETRIES: [&str; 4] = ["--retry-initial", "1s", "--retry-max", "4s"];

fn clinic(name: &str, region: &str) -> serde_json::Value {
    support::clinic_manifest(name, region, "")
}

/// An operator for namespace `ns` whose AWS is the proxy.
fn operator_through(proxy: &FaultProxy, ns: &str, args: &[&str]) -> Operator {
    let url = proxy.url();
    Operator::start_with_env(env(), Some(ns), args, &[("AWS_ENDPOINT_URL", &url)])
}

/// An SDK configuration in `region` whose endpoint is `endpoint`, with the environment's
/// credentials, retrying as the SDK does by default unless `retries` is false.
async fn sdk_config(endpoint: &str, region: &str, retries: bool) -> SdkConfig {
    let mut loader = env()
        .aws_loader(endpoint)
        .region(aws_config::Region::new(region.to_string()));
    if !retries {
        loader = loader.retry_config(aws_config::retry::RetryConfig::disabled());
    }
    loader.load().await
}

/// The names the operators of this test process give a clinic's AWS resources.
fn names_of(ns: &str, name: &str) -> ClinicNames {
    support::clinic_names(ns, name)
}

async fn is_ready(api: &Api<OpenEMRDeployment>, name: &str) -> bool {
    condition(api, name, "Ready")
        .await
        .is_some_and(|c| c.reason == "Ready" && c.status == "True")
}

#[tokio::test]
async fn the_proxy_answers_as_aws_does_and_the_operator_reads_it_so() {
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let region = "ap-southeast-2";
    let config = sdk_config(&proxy.url(), region, true).await;
    let cfn = aws_sdk_cloudformation::Client::new(&config);
    let rds = aws_sdk_rds::Client::new(&config);
    let secrets = aws_sdk_secretsmanager::Client::new(&config);
    let s3 = support::TestEnv::s3(&config);

    // Nothing set: everything passes, named by its operation.
    cfn.describe_stacks().send().await.unwrap();
    secrets.list_secrets().send().await.unwrap();
    s3.list_buckets().send().await.unwrap();
    for op in ["DescribeStacks", "ListSecrets", "s3:GET"] {
        let c = proxy.counts(op);
        assert_eq!((c.seen, c.forwarded, c.answered), (1, 1, 1), "{op}: {c:?}");
    }

    // Throttling, in each protocol as AWS words it; the SDK retries it (3 attempts).
    proxy.set("*", Rule::default().throttle(1.0));
    let e = cfn.describe_stacks().send().await.unwrap_err();
    let e = AwsError::from_sdk("cloudformation", "DescribeStacks", e);
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Throttled, "Throttling")
    );
    assert_eq!(proxy.counts("DescribeStacks").throttled, 3);
    let e = secrets.list_secrets().send().await.unwrap_err();
    let e = AwsError::from_sdk("secretsmanager", "ListSecrets", e);
    assert_eq!(
        (e.class, e.code.as_str(), e.message.as_str()),
        (
            ErrorClass::Throttled,
            "ThrottlingException",
            "Rate exceeded"
        )
    );
    let e = s3.list_buckets().send().await.unwrap_err();
    let e = AwsError::from_sdk("s3", "ListBuckets", e);
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Throttled, "SlowDown")
    );

    // 5xx: retried by the SDK, then a retryable error.
    proxy.set("*", Rule::default().server_error(1.0));
    let e = cfn.describe_stacks().send().await.unwrap_err();
    let e = AwsError::from_sdk("cloudformation", "DescribeStacks", e);
    assert_eq!(e.class, ErrorClass::Retryable, "{e}");
    assert!(
        ["InternalFailure", "ServiceUnavailable"].contains(&e.code.as_str()),
        "{e}"
    );
    assert_eq!(proxy.counts("DescribeStacks").server_errors, 3);

    // A reset: the connection closes without an answer, nothing reaches moto.
    proxy.set("*", Rule::default().reset(1.0));
    let forwarded = proxy.counts("DescribeStacks").forwarded;
    let e = cfn.describe_stacks().send().await.unwrap_err();
    let e = AwsError::from_sdk("cloudformation", "DescribeStacks", e);
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Retryable, "DispatchFailure"),
        "{e}"
    );
    let c = proxy.counts("DescribeStacks");
    assert_eq!((c.resets, c.forwarded), (3, forwarded), "{c:?}");

    // A fixed error, not retried by the SDK; the create never reaches moto.
    proxy.clear_all();
    proxy.set(
        "CreateDBInstance",
        Rule::default().error(AwsFault::access_denied("rds:CreateDBInstance")),
    );
    let e = rds
        .create_db_instance()
        .db_instance_identifier("denied-db")
        .db_instance_class("db.t3.micro")
        .engine("mysql")
        .allocated_storage(20)
        .master_username("admin")
        .master_user_password("password123")
        .send()
        .await
        .unwrap_err();
    let e = AwsError::from_sdk("rds", "CreateDBInstance", e);
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::AccessDenied, "AccessDenied")
    );
    assert!(e.message.contains("rds:CreateDBInstance"), "{e}");
    let c = proxy.counts("CreateDBInstance");
    assert_eq!((c.seen, c.errors, c.forwarded), (1, 1, 0), "{c:?}");
    let direct = aws_sdk_rds::Client::new(&env().aws(Some(region)).await);
    assert!(
        direct
            .describe_db_instances()
            .db_instance_identifier("denied-db")
            .send()
            .await
            .is_err(),
        "the denied create did not happen"
    );

    // Latency: the call waits, then succeeds; it is in flight meanwhile.
    proxy.set("*", Rule::default().latency(Duration::from_millis(800)));
    let started = Instant::now();
    let call = tokio::spawn({
        let cfn = cfn.clone();
        async move { cfn.describe_stacks().send().await }
    });
    proxy
        .wait_until("DescribeStacks", Duration::from_secs(5), "in flight", |c| {
            c.in_flight == 1
        })
        .await;
    call.await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(proxy.counts("DescribeStacks").in_flight, 0);

    // A rule for the next request only: the SDK's retry gets through.
    proxy.set("DescribeStacks", Rule::default().throttle(1.0).times(1));
    let before = proxy.counts("DescribeStacks");
    cfn.describe_stacks().send().await.unwrap();
    let after = proxy.counts("DescribeStacks");
    assert_eq!(
        (
            after.throttled - before.throttled,
            after.forwarded - before.forwarded
        ),
        (1, 1)
    );

    // The same seed draws the same faults for the same requests; another seed others.
    let outcomes = |seed: u64| async move {
        let proxy = FaultProxy::start_seeded(env().var("AWS_ENDPOINT_URL"), seed);
        proxy.set("*", Rule::default().throttle(0.3).server_error(0.05));
        let cfn =
            aws_sdk_cloudformation::Client::new(&sdk_config(&proxy.url(), region, false).await);
        for _ in 0..40 {
            let _ = cfn.describe_stacks().send().await;
        }
        let history: Vec<Outcome> = proxy
            .history("DescribeStacks")
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        history
    };
    let first = outcomes(42).await;
    let faults = first.iter().filter(|o| o.is_fault()).count();
    assert!(
        (5..=25).contains(&faults),
        "{faults} faults of 40: {first:?}"
    );
    assert_eq!(first, outcomes(42).await);
    assert_ne!(first, outcomes(43).await);
    println!("{}", proxy.report());
}

/// Ten clinics through 30% throttling and 5% 5xx on every operation become ready, at no
/// more than about twice the requests ten clinics cost without faults.
#[tokio::test]
async fn ten_clinics_converge_through_throttling_and_5xx_at_about_twice_the_requests() {
    const CLINICS: usize = 10;
    let client = env().admin().await;
    let region = "us-east-2";
    let clean_ns = TestNamespace::new(env(), "faults-clean").await;
    let faulty_ns = TestNamespace::new(env(), "faults-faulty").await;
    let clean = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let faulty = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    faulty.set("*", Rule::default().throttle(0.3).server_error(0.05));
    for ns in [&clean_ns, &faulty_ns] {
        for i in 0..CLINICS {
            apply(&client, &ns.name, &clinic(&format!("clinic-{i}"), region))
                .await
                .unwrap();
        }
    }
    let args: Vec<&str> = FAST_RETRIES
        .iter()
        .chain(&support::WIDE_BUDGETS)
        .copied()
        .collect();
    let started = Instant::now();
    let _clean_operator = operator_through(&clean, &clean_ns.name, &args);
    let faulty_operator = operator_through(&faulty, &faulty_ns.name, &args);

    let mut took = Vec::new();
    for (ns, proxy) in [(&clean_ns, &clean), (&faulty_ns, &faulty)] {
        let api: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
        eventually(
            Duration::from_secs(100),
            &format!("{CLINICS} clinics ready in {}", ns.name),
            || async {
                for i in 0..CLINICS {
                    if !is_ready(&api, &format!("clinic-{i}")).await {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
        took.push((started.elapsed(), proxy.total()));
        for i in 0..CLINICS {
            let synced = condition(&api, &format!("clinic-{i}"), "Synced")
                .await
                .unwrap();
            assert_eq!(synced.status, "True", "clinic-{i}: {synced:?}");
        }
    }
    let (clean_took, clean_total) = took[0];
    let (faulty_took, faulty_total) = took[1];
    println!(
        "without faults: {} requests, ready after {clean_took:?}\n{}",
        clean_total.seen,
        clean.report()
    );
    println!(
        "with 30% throttling + 5% 5xx (seed {:#x}): {} requests ({} faulted, {} forwarded), \
         ready after {faulty_took:?}, {:.2}× the requests\n{}",
        faulty.seed(),
        faulty_total.seen,
        faulty_total.faulted(),
        faulty_total.forwarded,
        faulty_total.seen as f64 / clean_total.seen as f64,
        faulty.report()
    );
    let retried = faulty_operator
        .metric("openemr_reconciliations_total{controller=\"openemrdeployment\",result=\"AwsThrottled\"}")
        .await;
    println!("reconciles that failed on throttling after the SDK's retries: {retried}");
    assert!(faulty_total.throttled > 0 && faulty_total.server_errors > 0);
    assert!(
        faulty_total.seen as f64 <= 2.5 * clean_total.seen as f64,
        "{} requests with faults, {} without",
        faulty_total.seen,
        clean_total.seen
    );
    // Faults come before moto: each create that reached it is the one it needed.
    for op in ["CreateStack", "CreateDBInstance"] {
        assert_eq!(
            clean.counts(op).forwarded,
            CLINICS as u64,
            "{op} without faults"
        );
        assert_eq!(
            faulty.counts(op).forwarded,
            CLINICS as u64,
            "{op} with faults"
        );
    }
}

/// A create AWS refuses is reported with the operation named, retried with backoff (no
/// hot loop), and goes through by itself once allowed.
#[tokio::test]
async fn access_denied_is_reported_backed_off_and_heals_once_lifted() {
    let client = env().admin().await;
    let region = "eu-west-1";
    let ns = TestNamespace::new(env(), "faults-denied").await;
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    proxy.set(
        "CreateDBInstance",
        Rule::default().error(AwsFault::access_denied("rds:CreateDBInstance")),
    );
    apply(&client, &ns.name, &clinic("denied", region))
        .await
        .unwrap();
    let operator = operator_through(&proxy, &ns.name, &FAST_RETRIES);
    let api: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);

    let synced = wait_for_reason(&api, "denied", "Synced", "AwsAccessDenied").await;
    assert_eq!(synced.status, "False");
    for part in [
        "CreateDBInstance",
        "AccessDenied",
        "not authorized to perform: rds:CreateDBInstance",
    ] {
        assert!(synced.message.contains(part), "{part}: {}", synced.message);
    }
    let first = proxy.history("CreateDBInstance")[0].0;
    let window = Duration::from_secs(15);
    tokio::time::sleep_until((first + window).into()).await;
    let attempts: Vec<_> = proxy
        .history("CreateDBInstance")
        .into_iter()
        .filter(|(at, _)| *at < first + window)
        .collect();
    let gaps: Vec<String> = attempts
        .windows(2)
        .map(|w| format!("{:.1}s", (w[1].0 - w[0].0).as_secs_f64()))
        .collect();
    println!(
        "CreateDBInstance denied {} times in the {window:?} after the first denial; gaps {gaps:?}",
        attempts.len()
    );
    assert!(
        attempts.iter().all(|(_, o)| matches!(o, Outcome::Error(_))),
        "{attempts:?}"
    );
    // 1, 2, 4, 4, 4 s apart (jittered up to 10%): 5 in 15 s; a hot loop makes hundreds.
    assert!(
        (2..=6).contains(&attempts.len()),
        "{} CreateDBInstance requests in {window:?}; log:\n{}",
        attempts.len(),
        operator.log()
    );
    assert_eq!(proxy.counts("CreateDBInstance").forwarded, 0);

    // Allowed again: the next retry creates it, and the clinic becomes ready by itself.
    proxy.clear("CreateDBInstance");
    let lifted = Instant::now();
    wait_for_reason(&api, "denied", "Ready", "Ready").await;
    println!("ready {:?} after the denial was lifted", lifted.elapsed());
    eventually(Duration::from_secs(10), "Synced=True", || async {
        condition(&api, "denied", "Synced")
            .await
            .filter(|c| c.status == "True")
    })
    .await;
    assert_eq!(proxy.counts("CreateDBInstance").forwarded, 1);
    assert_eq!(operator.terminate().code(), Some(0));
}

/// AWS creates the stack and the database but their answers are lost (a 503 instead):
/// the SDK's retry meets the resource already there, which the operator takes as done.
#[tokio::test]
async fn a_create_whose_answer_is_lost_is_not_made_twice() {
    let client = env().admin().await;
    let region = "ca-central-1";
    let name = "lost";
    let ns = TestNamespace::new(env(), "faults-lost").await;
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    for op in ["CreateStack", "CreateDBInstance"] {
        proxy.set(op, Rule::default().lose_answer(1.0).times(1));
    }
    apply(&client, &ns.name, &clinic(name, region))
        .await
        .unwrap();
    let operator = operator_through(&proxy, &ns.name, &FAST_RETRIES);
    let api: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    wait_for_reason(&api, name, "Ready", "Ready").await;
    println!("{}", proxy.report());
    let moto = env().aws(Some(region)).await;
    let left = left_behind(
        &aws_sdk_cloudformation::Client::new(&moto),
        &aws_sdk_rds::Client::new(&moto),
        &Api::namespaced(client.clone(), &ns.name),
        &names_of(&ns.name, name),
    )
    .await;
    assert_eq!((left.stacks, left.databases), (1, 1));
    assert_eq!(left.secrets, [format!("{name}-db-credentials")]);
    for op in ["CreateStack", "CreateDBInstance"] {
        let c = proxy.counts(op);
        assert_eq!(c.answers_lost, 1, "{op}: {c:?}");
        // The lost one and the SDK's retry, which found it done.
        assert_eq!(c.forwarded, 2, "{op}: {c:?}");
    }
    assert_eq!(operator.terminate().code(), Some(0));
}

/// What a killed operator may have left in AWS and the cluster for one clinic, counted.
struct Left {
    stacks: usize,
    databases: usize,
    secrets: Vec<String>,
}

async fn left_behind(
    cfn: &aws_sdk_cloudformation::Client,
    rds: &aws_sdk_rds::Client,
    secrets: &Api<Secret>,
    names: &ClinicNames,
) -> Left {
    let mut stacks = 0;
    let mut token = None;
    loop {
        let page = cfn
            .list_stacks()
            .set_next_token(token)
            .send()
            .await
            .unwrap();
        stacks += page
            .stack_summaries()
            .iter()
            .filter(|s| s.stack_name() == Some(names.stack.as_str()))
            .count();
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    let databases = match rds
        .describe_db_instances()
        .db_instance_identifier(&names.db_instance)
        .send()
        .await
    {
        Ok(out) => out.db_instances().len(),
        Err(e) => {
            let text = format!("{e:?}");
            assert!(text.contains("DBInstanceNotFound"), "{text}");
            0
        }
    };
    let secrets = secrets
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .filter(|n| n.ends_with("-db-credentials"))
        .collect();
    Left {
        stacks,
        databases,
        secrets,
    }
}

/// Polls (every 5 ms, up to 60 s) until the clinic's recorded intent is `action`, then
/// kills the operator. Meanwhile the proxy answers `action` 503 without forwarding it, so
/// moto never sees it. Returns whether nothing of it reached moto.
async fn kill_at_intent(
    operator: Operator,
    api: &Api<OpenEMRDeployment>,
    name: &str,
    action: &str,
    proxy: &FaultProxy,
) -> bool {
    // A call that beats the kill (a loaded machine) is answered 503 and never reaches moto:
    // what the next operator finds is what this point means, whatever the timing.
    proxy.set(action, Rule::default().server_error(1.0));
    let before = proxy.counts(action).forwarded;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let intent = api
            .get(name)
            .await
            .ok()
            .and_then(|d| d.status)
            .and_then(|s| s.in_flight)
            .map(|i| i.action);
        if intent.as_deref() == Some(action) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no intent {action} within 60 s; log:\n{}",
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    operator.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.clear(action);
    proxy.counts(action).forwarded == before
}

/// Kills the operator while a call of `action`, held by the proxy for 3 s before it goes
/// on to moto, is in flight; returns once moto has answered it.
async fn kill_in_flight(operator: Operator, action: &str, proxy: &FaultProxy) {
    proxy.set(action, Rule::default().latency(Duration::from_secs(3)));
    proxy
        .wait_until(
            action,
            Duration::from_secs(60),
            "a request in flight",
            |c| c.in_flight > 0,
        )
        .await;
    operator.kill();
    proxy.clear(action);
    proxy
        .wait_until(action, Duration::from_secs(10), "moto's answer", |c| {
            c.in_flight == 0 && c.answered > 0
        })
        .await;
}

/// SIGKILL at four points around the two creates: after the stack's intent is recorded and
/// before the call; with the call in flight; the same for the database. Each restart
/// finds what the last one left; in the end there is exactly one stack, one DB instance
/// and one credentials Secret, each create reached AWS once, and the clinic is ready.
#[tokio::test]
async fn sigkill_around_the_creates_leaves_exactly_one_of_each() {
    let client = env().admin().await;
    let region = "eu-central-1";
    let name = "killed";
    let ns = TestNamespace::new(env(), "faults-kill").await;
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    apply(&client, &ns.name, &clinic(name, region))
        .await
        .unwrap();
    let api: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let moto = env().aws(Some(region)).await;
    let cfn = aws_sdk_cloudformation::Client::new(&moto);
    let rds = aws_sdk_rds::Client::new(&moto);
    let names = names_of(&ns.name, name);
    // A budget of one request per second and service: the create waits for its token
    // after the describe before it took the last one, so the intent stands in status
    // about a second before the call goes out.
    let paced: Vec<&str> = FAST_RETRIES
        .iter()
        .copied()
        .chain([
            "--cloudformation-requests-per-second",
            "1",
            "--cloudformation-burst",
            "1",
            "--rds-requests-per-second",
            "1",
            "--rds-burst",
            "1",
        ])
        .collect();
    let start = || operator_through(&proxy, &ns.name, &paced);
    let mut points = Vec::new();

    // 1. The stack's intent recorded, the call not made.
    let hit = kill_at_intent(start(), &api, name, "CreateStack", &proxy).await;
    let left = left_behind(&cfn, &rds, &secrets, &names).await;
    assert_eq!((left.stacks, left.databases), (0, 0));
    assert!(left.secrets.len() <= 1, "{:?}", left.secrets);
    points.push(("CreateStack intent recorded, call not sent", hit));

    // 2. CreateStack in flight: moto creates the stack after the operator died.
    kill_in_flight(start(), "CreateStack", &proxy).await;
    let left = left_behind(&cfn, &rds, &secrets, &names).await;
    assert_eq!((left.stacks, left.databases), (1, 0));
    assert_eq!(left.secrets, [format!("{name}-db-credentials")]);
    points.push(("CreateStack in flight (done by moto after the kill)", true));

    // 3. The database's intent recorded, the call not made.
    let hit = kill_at_intent(start(), &api, name, "CreateDBInstance", &proxy).await;
    let left = left_behind(&cfn, &rds, &secrets, &names).await;
    assert_eq!((left.stacks, left.databases), (1, 0));
    points.push(("CreateDBInstance intent recorded, call not sent", hit));

    // 4. CreateDBInstance in flight.
    kill_in_flight(start(), "CreateDBInstance", &proxy).await;
    let left = left_behind(&cfn, &rds, &secrets, &names).await;
    assert_eq!((left.stacks, left.databases), (1, 1));
    points.push((
        "CreateDBInstance in flight (done by moto after the kill)",
        true,
    ));

    // 5. A last restart converges.
    let operator = start();
    let ready = wait_for_reason(&api, name, "Ready", "Ready").await;
    assert_eq!(ready.status, "True");
    let left = left_behind(&cfn, &rds, &secrets, &names).await;
    assert_eq!((left.stacks, left.databases), (1, 1));
    assert_eq!(left.secrets, [format!("{name}-db-credentials")]);
    let status = api.get(name).await.unwrap().status.unwrap();
    assert_eq!(status.stack.unwrap().name, names.stack);
    assert_eq!(status.database.unwrap().identifier, names.db_instance);
    assert!(status.in_flight.is_none(), "{:?}", status.in_flight);
    for (point, hit) in &points {
        println!(
            "{point}: {}",
            if *hit {
                "hit"
            } else {
                "missed (the call reached moto)"
            }
        );
    }
    println!("{}", proxy.report());
    for op in ["CreateStack", "CreateDBInstance"] {
        assert_eq!(proxy.counts(op).forwarded, 1, "{op} reached AWS once");
    }
    assert!(
        points.iter().all(|(_, hit)| *hit),
        "a kill point was missed: {points:?}"
    );
    assert_eq!(operator.terminate().code(), Some(0));
}

/// moto makes a snapshot `available` at once, so an end state cannot show the order of
/// deletion; here the proxy holds the final snapshot at `creating` and the instance must
/// stay until the snapshot reads `available`.
#[tokio::test]
async fn the_database_goes_only_after_its_final_snapshot_reads_available() {
    let client = env().admin().await;
    let region = "eu-central-1";
    let ns = TestNamespace::new(env(), "faults-final").await;
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let manifest = support::clinic_manifest("final", region, "  deletionPolicy: Snapshot\n");
    apply(&client, &ns.name, &manifest).await.unwrap();
    let operator = operator_through(&proxy, &ns.name, &[]);
    let api: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    eventually(Duration::from_secs(90), "the clinic ready", || async {
        is_ready(&api, "final").await.then_some(())
    })
    .await;

    // Every snapshot reads `creating` until the rule is cleared.
    proxy.set(
        "DescribeDBSnapshots",
        Rule::default().rewrite("<Status>available</Status>", "<Status>creating</Status>"),
    );
    api.delete("final", &Default::default()).await.unwrap();
    eventually(
        Duration::from_secs(60),
        "the final snapshot polled",
        || async {
            let created = proxy.counts("CreateDBSnapshot").forwarded >= 1;
            (created && proxy.counts("DescribeDBSnapshots").rewritten >= 3).then_some(())
        },
    )
    .await;
    assert_eq!(
        proxy.counts("DeleteDBInstance").seen,
        0,
        "the instance was deleted while its final snapshot read creating: {}",
        proxy.report()
    );
    assert!(api.get_opt("final").await.unwrap().is_some());

    let released = Instant::now();
    proxy.clear("DescribeDBSnapshots");
    eventually(Duration::from_secs(60), "the clinic gone", || async {
        api.get_opt("final").await.ok()?.is_none().then_some(())
    })
    .await;
    let deletes = proxy.history("DeleteDBInstance");
    assert!(!deletes.is_empty(), "{}", proxy.report());
    assert!(
        deletes.iter().all(|(at, _)| *at > released),
        "DeleteDBInstance before the snapshot read available"
    );
    drop(operator);
}

/// moto never rolls an update back; the proxy makes the stack read `UPDATE_ROLLBACK_COMPLETE`
/// with the previous template's hash. The update is reported and not sent again until
/// the spec changes.
#[tokio::test]
async fn a_rolled_back_stack_update_is_reported_and_not_repeated_until_the_spec_changes() {
    let client = env().admin().await;
    let region = "eu-west-3";
    let ns = TestNamespace::new(env(), "faults-rollback").await;
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    apply(&client, &ns.name, &clinic("rollback", region))
        .await
        .unwrap();
    let operator = operator_through(&proxy, &ns.name, &["--inventory-interval", "2s"]);
    let api: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    eventually(Duration::from_secs(90), "the clinic ready", || async {
        is_ready(&api, "rollback").await.then_some(())
    })
    .await;
    assert_eq!(proxy.counts("UpdateStack").seen, 0);

    // Every answer now says the last update rolled back, to an older template.
    proxy.set(
        "DescribeStacks",
        Rule::default()
            .rewrite(
                "<StackStatus>CREATE_COMPLETE<",
                "<StackStatus>UPDATE_ROLLBACK_COMPLETE<",
            )
            .rewrite(
                "<StackStatus>UPDATE_COMPLETE<",
                "<StackStatus>UPDATE_ROLLBACK_COMPLETE<",
            )
            .rewrite(
                "<OutputKey>TemplateHash</OutputKey><OutputValue>",
                "<OutputKey>TemplateHash</OutputKey><OutputValue>older-",
            ),
    );
    let failed = wait_for_reason(&api, "rollback", "StackReady", "StackUpdateFailed").await;
    assert_eq!(failed.status, "False");
    assert!(failed.message.contains("rolled back"), "{}", failed.message);
    let sent = proxy.counts("UpdateStack").seen;
    assert_eq!(sent, 1, "the update sent once: {}", proxy.report());
    // Looked at again and again (each annotation wakes it; 14 s spans an inventory pass
    // that lists the stacks anew): never sent again.
    for n in 0..3 {
        api.patch(
            "rollback",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"test/poke": n.to_string()}}}),
            ),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert_eq!(proxy.counts("UpdateStack").seen, 1, "{}", proxy.report());
    let still = condition(&api, "rollback", "StackReady").await.unwrap();
    assert_eq!(still.reason, "StackUpdateFailed");

    // A new generation tries again, and the stack is ready once it answers truly.
    proxy.clear("DescribeStacks");
    let mut changed = clinic("rollback", region);
    changed["spec"]["tags"] = serde_json::json!({"cost-center": "clinic-42"});
    apply(&client, &ns.name, &changed).await.unwrap();
    eventually(Duration::from_secs(90), "ready again", || async {
        (is_ready(&api, "rollback").await && proxy.counts("UpdateStack").seen == 2).then_some(())
    })
    .await;
    drop(operator);
}

/// `CreateStack` takes only "already exists" for a repeat of its own; another conflict is an
/// error, reported, and the create is tried again.
#[tokio::test]
async fn a_create_stack_conflict_other_than_already_exists_is_an_error() {
    let client = env().admin().await;
    let region = "ap-southeast-2";
    let ns = TestNamespace::new(env(), "faults-conflict").await;
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    proxy.set(
        "CreateStack",
        Rule::default().error(AwsFault::new(
            400,
            "TokenAlreadyExistsException",
            "the token was used for another request",
        )),
    );
    apply(&client, &ns.name, &clinic("conflict", region))
        .await
        .unwrap();
    let operator = operator_through(&proxy, &ns.name, &FAST_RETRIES);
    let api: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let synced = wait_for_reason(&api, "conflict", "Synced", "AwsConflict").await;
    assert_eq!(synced.status, "False");
    assert!(
        synced.message.contains("TokenAlreadyExists"),
        "{}",
        synced.message
    );
    proxy.clear("CreateStack");
    eventually(
        Duration::from_secs(90),
        "ready once CreateStack is answered",
        || async { is_ready(&api, "conflict").await.then_some(()) },
    )
    .await;
    drop(operator);
}

/// One `DescribeStackEvents` member of `stack` (id `stack_id`), as CloudFormation writes it.
fn stack_event(
    stack: &str,
    stack_id: &str,
    logical: &str,
    physical: &str,
    kind: &str,
    status: &str,
    reason: &str,
) -> String {
    format!(
        "<member><StackId>{stack_id}</StackId><EventId>{logical}-{status}</EventId>\
         <StackName>{stack}</StackName><LogicalResourceId>{logical}</LogicalResourceId>\
         <PhysicalResourceId>{physical}</PhysicalResourceId><ResourceType>{kind}</ResourceType>\
         <Timestamp>2026-01-01T00:00:00Z</Timestamp><ResourceStatus>{status}</ResourceStatus>\
         <ResourceStatusReason>{reason}</ResourceStatusReason></member>"
    )
}

/// moto never rolls a creation back. The proxy makes the clinic's first stack read
/// `ROLLBACK_COMPLETE` and its events name what the rollback retained; moto, like AWS,
/// keeps `DeletionPolicy: Retain` resources when the stack is deleted, so they are real
/// leftovers. A retained bucket holding an object blocks the replacement until a person
/// empties it; then the empty bucket, file system and key go, another clinic's key stays,
/// and the stack is made anew under the same bucket name.
#[tokio::test]
async fn a_rolled_back_creation_is_replaced_after_its_empty_leftovers_are_removed() {
    let client = env().admin().await;
    let region = "eu-north-1";
    let ns = TestNamespace::new(env(), "faults-leftovers").await;
    let names = names_of(&ns.name, "phoenix");
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    proxy.set(
        "DescribeStacks",
        Rule::default().rewrite_pattern(
            &format!(
                "(<StackName>{}</StackName>.*?<StackStatus>)CREATE_COMPLETE<",
                regex::escape(&names.stack)
            ),
            "${1}ROLLBACK_COMPLETE<",
        ),
    );
    apply(&client, &ns.name, &clinic("phoenix", region))
        .await
        .unwrap();
    let operator = operator_through(&proxy, &ns.name, &FAST_RETRIES);
    let api: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let failed = wait_for_reason(&api, "phoenix", "StackReady", "StackFailed").await;
    assert!(
        failed.message.contains("ROLLBACK_COMPLETE"),
        "{}",
        failed.message
    );
    assert_eq!(
        proxy.counts("CreateDBInstance").seen,
        0,
        "no database on it"
    );

    // What the stack made, read from moto itself.
    let aws = env().aws(Some(region)).await;
    let cfn = aws_sdk_cloudformation::Client::new(&aws);
    let resources = cfn
        .describe_stack_resources()
        .stack_name(&names.stack)
        .send()
        .await
        .unwrap();
    let physical = |logical: &str| {
        resources
            .stack_resources()
            .iter()
            .find(|r| r.logical_resource_id() == Some(logical))
            .and_then(|r| r.physical_resource_id())
            .unwrap_or_else(|| panic!("{logical} in {resources:?}"))
            .to_string()
    };
    let (bucket, file_system, key) = (physical("Bucket"), physical("FileSystem"), physical("Key"));
    assert_eq!(bucket, names.bucket);
    let stack_id = resources.stack_resources()[0]
        .stack_id()
        .unwrap()
        .to_string();
    // Another clinic's key, which a (mistaken) event also names: never removed.
    let kms = aws_sdk_kms::Client::new(&aws);
    let tag = |k: &str, v: &str| {
        aws_sdk_kms::types::Tag::builder()
            .tag_key(k)
            .tag_value(v)
            .build()
            .unwrap()
    };
    let foreign = kms
        .create_key()
        .tags(tag("openemr.io/namespace", &ns.name))
        .tags(tag("openemr.io/name", "someone-else"))
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_string();
    let event = |logical: &str, physical: &str, kind: &str, status: &str, reason: &str| {
        stack_event(
            &names.stack,
            &stack_id,
            logical,
            physical,
            kind,
            status,
            reason,
        )
    };
    let rollback = [
        event(
            &names.stack,
            &stack_id,
            "AWS::CloudFormation::Stack",
            "ROLLBACK_COMPLETE",
            "",
        ),
        event("Bucket", &bucket, "AWS::S3::Bucket", "DELETE_SKIPPED", ""),
        event(
            "FileSystem",
            &file_system,
            "AWS::EFS::FileSystem",
            "DELETE_SKIPPED",
            "",
        ),
        event("Key", &key, "AWS::KMS::Key", "DELETE_SKIPPED", ""),
        event("OldKey", &foreign, "AWS::KMS::Key", "DELETE_SKIPPED", ""),
        event(
            "Cache",
            "",
            "AWS::ElastiCache::ReplicationGroup",
            "CREATE_FAILED",
            "The maximum number of cache nodes was reached",
        ),
    ]
    .concat();
    proxy.set(
        "DescribeStackEvents",
        Rule::default().rewrite("<StackEvents>", &format!("<StackEvents>{rollback}")),
    );
    // From here on only this stack rolled back: the next one reads as moto has it.
    proxy.set(
        "DescribeStacks",
        Rule::default().rewrite_pattern(
            &format!(
                "(<StackId>{}</StackId>.*?<StackStatus>)CREATE_COMPLETE<",
                regex::escape(&stack_id)
            ),
            "${1}ROLLBACK_COMPLETE<",
        ),
    );
    // A rollback deletes what it does not retain: here, the file system's mount targets.
    let efs = aws_sdk_efs::Client::new(&aws);
    let targets = efs
        .describe_mount_targets()
        .file_system_id(&file_system)
        .send()
        .await
        .unwrap();
    for target in targets.mount_targets() {
        efs.delete_mount_target()
            .mount_target_id(target.mount_target_id())
            .send()
            .await
            .unwrap();
    }
    let s3 = support::TestEnv::s3(&aws);
    let put = s3
        .put_object()
        .bucket(&bucket)
        .key("stray.txt")
        .body(b"someone's file".to_vec().into())
        .send()
        .await
        .unwrap();

    // A new generation: the bucket holding an object keeps the clinic's bucket name, so
    // nothing is removed and no stack deleted; the condition says what to do.
    let mut changed = clinic("phoenix", region);
    changed["spec"]["tags"] = serde_json::json!({"cost-center": "clinic-7"});
    apply(&client, &ns.name, &changed).await.unwrap();
    let blocked = wait_for_reason(&api, "phoenix", "StackReady", "StackReplacementBlocked").await;
    assert!(
        blocked.message.contains("holds objects") && blocked.message.contains(&bucket),
        "{}",
        blocked.message
    );
    assert_eq!(proxy.counts("DeleteStack").seen, 0);
    for op in ["ScheduleKeyDeletion", "DeleteFileSystem", "s3:DELETE"] {
        assert_eq!(proxy.counts(op).seen, 0, "{op}: {}", proxy.report());
    }

    // A person removes the object: the replacement goes on without another edit (a poke
    // stands in for the five-minute look).
    s3.delete_object()
        .bucket(&bucket)
        .key("stray.txt")
        .set_version_id(put.version_id().map(str::to_string))
        .send()
        .await
        .unwrap();
    api.patch(
        "phoenix",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            serde_json::json!({"metadata": {"annotations": {"test/poke": "1"}}}),
        ),
    )
    .await
    .unwrap();
    let replaced = events_named(&client, &ns.name, "phoenix", "StackReplaced").await;
    for said in [
        format!("empty bucket {bucket} (deleted)"),
        format!("empty file system {file_system} (deleted)"),
        format!("KMS key {key} (deletion scheduled in 30 days)"),
        format!(
            "OldKey ({foreign}): its tags name clinic {}/someone-else",
            ns.name
        ),
    ] {
        assert!(replaced.contains(&said), "{said} in: {replaced}");
    }
    proxy.clear("DescribeStackEvents");
    eventually(
        Duration::from_secs(120),
        "the clinic ready on a new stack",
        || async { is_ready(&api, "phoenix").await.then_some(()) },
    )
    .await;
    assert_eq!(proxy.counts("DeleteStack").seen, 1, "{}", proxy.report());
    assert_eq!(proxy.counts("CreateStack").seen, 2, "{}", proxy.report());

    // In AWS: the new stack has the bucket name; the old file system is gone; the old key
    // waits for its deletion; the other clinic's key is as it was.
    let key_state = |id: String| {
        let kms = kms.clone();
        async move {
            kms.describe_key()
                .key_id(id)
                .send()
                .await
                .unwrap()
                .key_metadata()
                .unwrap()
                .key_state()
                .unwrap()
                .as_str()
                .to_string()
        }
    };
    assert_eq!(key_state(key.clone()).await, "PendingDeletion");
    assert_eq!(key_state(foreign.clone()).await, "Enabled");
    let gone = efs
        .describe_file_systems()
        .file_system_id(&file_system)
        .send()
        .await
        .map(|out| out.file_systems().is_empty())
        .unwrap_or(true);
    assert!(gone, "file system {file_system} removed");
    let status = api.get("phoenix").await.unwrap().status.unwrap();
    assert_eq!(status.bucket_name.as_deref(), Some(bucket.as_str()));
    assert_ne!(
        status.kms_key_arn.as_deref().map(|k| k.ends_with(&key)),
        Some(true)
    );
    drop(operator);
}

/// Whose credentials signed each recorded request of `operation`, as (role, session) of the
/// AssumeRole that handed them out (the proxy recorded both).
fn signers(proxy: &FaultProxy, operation: &str) -> Vec<(String, String, String)> {
    let assumed: Vec<(String, String, String)> = proxy
        .exchanges("AssumeRole")
        .iter()
        .filter_map(|e| {
            let key = e.answer.split("<AccessKeyId>").nth(1)?.split('<').next()?;
            Some((
                key.to_string(),
                e.param("RoleArn")?,
                e.param("RoleSessionName")?,
            ))
        })
        .collect();
    proxy
        .exchanges(operation)
        .iter()
        .map(|e| {
            let (role, session) = assumed
                .iter()
                .find(|(key, ..)| *key == e.access_key)
                .map(|(_, role, session)| (role.clone(), session.clone()))
                .unwrap_or_else(|| ("(the operator's own credentials)".into(), String::new()));
            (e.request.clone(), role, session)
        })
        .collect()
}

/// What is the account's, not one clinic's, is done with the operator's own identity in
/// that account. With `--account-role`, the inventory lists the clinic's account and the
/// shared audit trail is read with that role, each under a session of its own, never with
/// the clinic's role. Without it, the account is not listed at all: the clinic reads its
/// own instance, and the trail falls back to the clinic's role under the audit session.
#[tokio::test]
async fn an_accounts_inventory_and_trail_use_the_operators_role_there_never_a_clinics() {
    let client = env().admin().await;
    let (account, region) = ("555566667777", "eu-west-1");
    let clinic_role = format!("arn:aws:iam::{account}:role/openemr-clinic");
    let operator_role = format!("arn:aws:iam::{account}:role/openemr-operator");
    let ns = TestNamespace::new(env(), "faults-identity").await;
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    for op in ["AssumeRole", "DescribeDBInstances", "GetTrailStatus"] {
        proxy.record(op);
    }
    let mut manifest = clinic("ledger", region);
    manifest["spec"]["aws"]["roleArn"] = clinic_role.clone().into();
    manifest["spec"]["network"] =
        serde_yaml_ng::from_str(&env().cluster_network_in(Some(account), region)).unwrap();
    apply(&client, &ns.name, &manifest).await.unwrap();
    let account_role = format!("{account}={operator_role}");
    let operator = operator_through(
        &proxy,
        &ns.name,
        &[
            "--account-role",
            &account_role,
            "--inventory-interval",
            "1s",
        ],
    );
    let api: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    eventually(Duration::from_secs(120), "the clinic ready", || async {
        is_ready(&api, "ledger").await.then_some(())
    })
    .await;
    let is_listing = |request: &str| !request.contains("DBInstanceIdentifier=");
    eventually(
        Duration::from_secs(30),
        "two inventory listings",
        || async {
            let listings = signers(&proxy, "DescribeDBInstances")
                .into_iter()
                .filter(|(request, ..)| is_listing(request))
                .count();
            (listings >= 2).then_some(())
        },
    )
    .await;
    let listings: Vec<_> = signers(&proxy, "DescribeDBInstances")
        .into_iter()
        .filter(|(request, ..)| is_listing(request))
        .collect();
    for (_, role, session) in &listings {
        assert_eq!(
            (role.as_str(), session.as_str()),
            (operator_role.as_str(), "openemr-operator-inventory"),
            "the inventory lists with the operator's role there"
        );
    }
    let trail_reads = signers(&proxy, "GetTrailStatus");
    assert!(!trail_reads.is_empty());
    for (_, role, session) in &trail_reads {
        assert_eq!(
            (role.as_str(), session.as_str()),
            (operator_role.as_str(), "openemr-operator-audit")
        );
    }
    // The clinic's role did the clinic's own work only.
    for exchange in proxy.exchanges("AssumeRole") {
        if exchange.param("RoleArn").as_deref() == Some(clinic_role.as_str()) {
            let session = exchange.param("RoleSessionName").unwrap_or_default();
            assert!(
                !session.starts_with("openemr-operator-"),
                "the clinic's role assumed as {session}"
            );
        }
    }
    drop(operator);

    // No role of the operator's own there: the account is never listed; the clinic reads
    // its own instance and stays ready.
    let before = proxy.exchanges("DescribeDBInstances").len();
    let operator = operator_through(
        &proxy,
        &ns.name,
        &[
            "--inventory-interval",
            "1s",
            "--audit-refresh-interval",
            "1s",
        ],
    );
    for n in 0..4 {
        api.patch(
            "ledger",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"test/poke": n.to_string()}}}),
            ),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let after: Vec<_> = signers(&proxy, "DescribeDBInstances")
        .into_iter()
        .skip(before)
        .collect();
    assert!(
        after.iter().all(|(request, ..)| !is_listing(request)),
        "no listing without an identity of the operator's own: {after:?}"
    );
    assert!(
        after.iter().any(|(_, role, _)| *role == clinic_role),
        "the clinic read its own instance"
    );
    assert!(is_ready(&api, "ledger").await);
    let trail_reads = signers(&proxy, "GetTrailStatus");
    let (_, role, session) = trail_reads.last().unwrap();
    assert_eq!(
        (role.as_str(), session.as_str()),
        (clinic_role.as_str(), "openemr-operator-audit")
    );
    drop(operator);
}

/// RDS states that moto never shows, made by the proxy: a `storage-full` instance gets room
/// at once (RDS's least step, +10 %), and a parameter change waiting for a reboot gets one
/// (here `applyChanges: Immediately`), once.
#[tokio::test]
async fn a_full_instance_gets_room_and_a_pending_reboot_gets_one() {
    let client = env().admin().await;
    let region = "ca-central-1";
    let ns = TestNamespace::new(env(), "faults-rds-states").await;
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let manifest = support::clinic_manifest(
        "full",
        region,
        "  database: {allocatedStorageGiB: 20, applyChanges: Immediately}\n",
    );
    apply(&client, &ns.name, &manifest).await.unwrap();
    let (operator, api, identifier) = ready_through(&proxy, &client, &ns.name, "full").await;
    let storage = || async {
        db_instance(region, &identifier)
            .await
            .allocated_storage()
            .unwrap()
    };
    assert_eq!(storage().await, 20);
    assert_eq!(proxy.counts("ModifyDBInstance").seen, 0);

    // The disk is full (the inventory's next page says so; the answers after are true).
    proxy.set(
        "DescribeDBInstances",
        Rule::default()
            .rewrite(
                "<DBInstanceStatus>available</DBInstanceStatus>",
                "<DBInstanceStatus>storage-full</DBInstanceStatus>",
            )
            .times(1),
    );
    eventually(
        Duration::from_secs(30),
        "the storage grown in RDS",
        || async { (storage().await == 22).then_some(()) },
    )
    .await;
    let grown = events_named(&client, &ns.name, "full", "DatabaseModified").await;
    assert!(
        grown.contains("allocatedStorageGiB: 20 → 22 (the instance is storage-full)"),
        "{grown}"
    );
    eventually(Duration::from_secs(60), "ready again", || async {
        is_ready(&api, "full").await.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        proxy.counts("ModifyDBInstance").seen,
        1,
        "one growth: {}",
        proxy.report()
    );

    // A parameter change waits for a reboot: one reboot, then RDS says in-sync.
    proxy.set(
        "DescribeDBInstances",
        Rule::default()
            .rewrite(
                "<ParameterApplyStatus>in-sync</ParameterApplyStatus>",
                "<ParameterApplyStatus>pending-reboot</ParameterApplyStatus>",
            )
            .times(1),
    );
    eventually(Duration::from_secs(30), "a reboot", || async {
        (proxy.counts("RebootDBInstance").seen >= 1).then_some(())
    })
    .await;
    let rebooted = events_named(&client, &ns.name, "full", "DatabaseRebooted").await;
    assert!(rebooted.contains("Immediately"), "{rebooted}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        proxy.counts("RebootDBInstance").seen,
        1,
        "{}",
        proxy.report()
    );
    drop(operator);
}

/// The clinic `name` (applied in `ns`) made ready by an operator whose AWS is `proxy`: the
/// operator, the clinics' Api and the clinic's DB instance identifier.
async fn ready_through(
    proxy: &FaultProxy,
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> (Operator, Api<OpenEMRDeployment>, String) {
    let operator = operator_through(proxy, ns, &["--inventory-interval", "2s"]);
    let api: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), ns);
    eventually(Duration::from_secs(90), "the clinic ready", || async {
        is_ready(&api, name).await.then_some(())
    })
    .await;
    let identifier = api
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap()
        .database
        .unwrap()
        .identifier;
    (operator, api, identifier)
}

/// The DB instance `identifier` of `region`, as moto has it (not through any proxy).
async fn db_instance(region: &str, identifier: &str) -> aws_sdk_rds::types::DbInstance {
    aws_sdk_rds::Client::new(&env().aws(Some(region)).await)
        .describe_db_instances()
        .db_instance_identifier(identifier)
        .send()
        .await
        .unwrap()
        .db_instances()[0]
        .clone()
}

/// The note of the first Event `reason` on `name`.
async fn events_named(client: &kube::Client, ns: &str, name: &str, reason: &str) -> String {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    eventually(Duration::from_secs(30), reason, || async {
        events
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
            .and_then(|e| e.note)
    })
    .await
}

/// RDS refusing a change (a class, as when the zone does not offer it) is said once and not
/// sent again for this generation, and holds nothing else back: a drift correction after it
/// is sent and takes. A new generation tries the change again.
#[tokio::test]
async fn a_refused_change_is_not_sent_again_and_holds_nothing_else_back() {
    let client = env().admin().await;
    let region = "sa-east-1";
    let ns = TestNamespace::new(env(), "faults-refused").await;
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let manifest = |class: &str, extra: &str| {
        support::clinic_manifest(
            "refused",
            region,
            &format!("  database: {{instanceClass: {class}, applyChanges: Immediately}}\n{extra}"),
        )
    };
    apply(&client, &ns.name, &manifest("db.t4g.micro", ""))
        .await
        .unwrap();
    let (operator, api, identifier) = ready_through(&proxy, &client, &ns.name, "refused").await;
    let rds = aws_sdk_rds::Client::new(&env().aws(Some(region)).await);
    let instance = || db_instance(region, &identifier);

    proxy.set(
        "ModifyDBInstance",
        Rule::default().error(AwsFault::new(
            400,
            "InvalidParameterCombination",
            "RDS does not support creating a DB instance with the following combination: DBInstanceClass=db.r6g.large, Engine=mysql",
        )),
    );
    apply(&client, &ns.name, &manifest("db.r6g.large", ""))
        .await
        .unwrap();
    let refused = warning_event(&client, &ns.name, "refused", "DatabaseChangeRefused")
        .await
        .note
        .unwrap_or_default();
    assert!(
        refused.contains("instanceClass") && refused.contains("InvalidParameterCombination"),
        "{refused}"
    );
    let said = wait_for_reason(&api, "refused", "DatabaseReady", "DatabaseChangeRefused").await;
    assert_eq!(said.status, "True");
    assert_eq!(proxy.counts("ModifyDBInstance").seen, 1);
    proxy.clear("ModifyDBInstance");

    // Deletion protection turned off behind the operator's back: corrected, while the
    // refused class is not sent again.
    rds.modify_db_instance()
        .db_instance_identifier(&identifier)
        .deletion_protection(false)
        .apply_immediately(true)
        .send()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "deletion protection back",
        || async { (instance().await.deletion_protection() == Some(true)).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(instance().await.db_instance_class(), Some("db.t4g.micro"));
    assert_eq!(
        proxy.counts("ModifyDBInstance").seen,
        2,
        "the refused change once, the correction once: {}",
        proxy.report()
    );

    // A new generation tries again, and RDS takes it now.
    apply(
        &client,
        &ns.name,
        &manifest("db.r6g.large", "  tags: {team: records}\n"),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(30), "the class changed", || async {
        (instance().await.db_instance_class() == Some("db.r6g.large")).then_some(())
    })
    .await;
    drop(operator);
}
