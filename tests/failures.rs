//! A reconcile that cannot do its work retries with a doubling backoff, says so on the
//! object (`Synced=False` with the reason) from the second consecutive failure on, and
//! recovers once the cause is gone; a blip that one retry fixes costs no status write and
//! no Event. Runs on a control plane of its own, since it takes permissions away from the
//! operator; the tests here take turns, as they change the same ClusterRole.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use openemr_operator::api::OpenEMRDeployment;
use support::operator::Operator;
use support::{
    TestEnv, TestNamespace, apply, aws_calls, condition, documents, eventually,
    private_env_without_crds, warning_event,
};

/// The ClusterRole is shared by every test here.
static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env() -> &'static TestEnv {
    static CRDS: std::sync::Once = std::sync::Once::new();
    let env = private_env_without_crds();
    CRDS.call_once(|| {
        env.install_crds();
        env.ensure_shared_audit_trail();
    });
    env
}

/// Takes the operator's permission to read Secrets away.
fn forbid_secrets(env: &TestEnv) {
    let role = env.kubectl(&["get", "clusterrole", "openemr-operator", "-o", "json"]);
    let mut role: serde_json::Value = serde_json::from_str(&role).unwrap();
    let rules = role["rules"].as_array_mut().unwrap();
    rules.retain(|r| {
        !r["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == "secrets")
    });
    role["metadata"] = serde_json::json!({"name": "openemr-operator"});
    env.kubectl_stdin(&["replace", "-f", "-"], &role.to_string());
}

/// Gives back exactly what deploy/rbac.yaml grants.
fn restore_rbac(env: &TestEnv) {
    let deploy = std::path::Path::new(support::REPO).join("deploy/rbac.yaml");
    env.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        deploy.to_str().unwrap(),
    ]);
}

fn clinic(name: &str) -> serde_json::Value {
    let network = env().cluster_network("us-east-1");
    documents(&format!(
        "
apiVersion: openemr.io/v1alpha1
kind: OpenEMRDeployment
metadata: {{name: {name}}}
spec:
  aws: {{region: us-east-1}}
  network: {network}
  database: {{credentialsSecretRef: {{name: clinic-db}}}}
  # The web tier stopped: this file is about the reconcile driver and the AWS side.
  web: {{replicas: 0}}
"
    ))
    .remove(0)
}

/// The Secret every clinic here names, with the key it must have.
async fn create_secret(client: &kube::Client, namespace: &str) {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "clinic-db"},
        "stringData": {"password": "p"},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&Default::default(), &secret)
        .await
        .unwrap();
}

const FAILED: &str =
    "openemr_reconciliations_total{controller=\"openemrdeployment\",result=\"ObserveFailed\"}";

#[tokio::test]
async fn a_failing_read_is_retried_with_a_doubling_backoff_and_reported() {
    let _turn = TURNS.lock().await;
    let env = env();
    let client = env.admin().await;
    let ns = TestNamespace::new(env, "failures").await;
    forbid_secrets(env);
    apply(&client, &ns.name, &clinic("clinic-a")).await.unwrap();

    // Short timings, so that several retries fit in the test: 1 s, 2 s, 4 s, 4 s, …
    let operator = Operator::start_with(
        env,
        Some(&ns.name),
        &["--retry-initial", "1s", "--retry-max", "4s"],
    );
    operator.wait_for("/readyz", 200).await;
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let synced = eventually(Duration::from_secs(60), "Synced=False", || async {
        condition(&clinics, "clinic-a", "Synced")
            .await
            .filter(|c| c.status == "False")
    })
    .await;
    assert_eq!(synced.reason, "ObserveFailed");
    assert!(synced.message.contains("forbidden"), "{}", synced.message);
    warning_event(&client, &ns.name, "clinic-a", "ObserveFailed").await;
    // Written at the second consecutive failure, not the first.
    let at_report = operator.metric(FAILED).await;
    assert!(
        at_report >= 2,
        "{at_report} failures when Synced=False appeared"
    );
    assert_eq!(
        operator
            .metric("openemr_tracked_objects{controller=\"openemrdeployment\"}")
            .await,
        1,
        "the failing clinic's state is held"
    );

    // Attempts over 12 s: with retries after 2 s, 4 s, 4 s, … there are 2 to 4 more; a
    // fixed 1 s retry would make 12, a hot loop hundreds, no retry none.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let attempts = operator.metric(FAILED).await - at_report;
    assert!(
        (2..=4).contains(&attempts),
        "{attempts} failed attempts in 12 s; operator log:\n{}",
        operator.log()
    );
    // The status is not rewritten by the repeats: same message, no echo.
    let writes = operator
        .metric("openemr_status_writes_total{controller=\"openemrdeployment\"}")
        .await;
    assert_eq!(writes, 1, "only the failure report was written");

    // Permission back: the next retry succeeds and the real verdict appears, without any
    // edit to the clinic.
    restore_rbac(env);
    let recovered = eventually(Duration::from_secs(30), "Synced=True", || async {
        condition(&clinics, "clinic-a", "Synced")
            .await
            .filter(|c| c.status == "True")
    })
    .await;
    assert_eq!(recovered.reason, "Reconciled");
    let accepted = condition(&clinics, "clinic-a", "Accepted").await.unwrap();
    assert_eq!(accepted.reason, "CredentialsSecretNotFound");
    let tracked = "openemr_tracked_objects{controller=\"openemrdeployment\"}";
    eventually(
        Duration::from_secs(10),
        "no state held once it succeeds",
        || async { (operator.metric(tracked).await == 0).then_some(()) },
    )
    .await;

    // The Secret appearing is noticed through the Secret watch, not a poll (a refused
    // clinic is not polled).
    create_secret(&client, &ns.name).await;
    eventually(
        Duration::from_secs(10),
        "Accepted once the Secret exists",
        || async {
            condition(&clinics, "clinic-a", "Accepted")
                .await
                .filter(|c| c.reason == "Valid")
        },
    )
    .await;
    assert_eq!(operator.terminate().code(), Some(0));
}

/// A clinic stored with `spec.network.newVpc` before new VPCs were refused (made here under
/// the CRD without that rule) stays readable and updatable; a new one is refused with a
/// message that says why and what to use instead.
#[tokio::test]
async fn a_clinic_stored_with_a_new_vpc_stays_updatable_and_new_ones_are_refused() {
    const RULE: &str = "oldSelf.hasValue() || !has(self.newVpc)";
    let _turn = TURNS.lock().await;
    let env = env();
    let client = env.admin().await;
    let ns = TestNamespace::new(env, "old-vpc").await;
    let crds = openemr_operator::api::all_crds_yaml().unwrap();
    assert!(crds.contains(RULE), "the CRD refuses new VPCs");
    let mut before: Vec<serde_json::Value> = documents(&crds);
    for crd in &mut before {
        drop_rule(crd, RULE);
    }
    let before: Vec<String> = before.iter().map(|c| c.to_string()).collect();
    env.kubectl_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        &before.join("\n---\n"),
    );
    let clinic = |name: &str| {
        documents(&format!(
            "
apiVersion: openemr.io/v1alpha1
kind: OpenEMRDeployment
metadata: {{name: {name}}}
spec:
  aws: {{region: us-east-1}}
  network: {{newVpc: {{}}}}
  web: {{replicas: 0}}
"
        ))
        .remove(0)
    };
    // The API server may take a moment to serve the changed schema.
    eventually(
        Duration::from_secs(30),
        "the older CRD in force",
        || async { apply(&client, &ns.name, &clinic("old")).await.ok() },
    )
    .await;
    env.install_crds();
    // The rule is back (the API server may serve the older schema for a moment).
    let refused = eventually(
        Duration::from_secs(30),
        "new VPCs refused again",
        || async {
            match apply(&client, &ns.name, &clinic("new")).await {
                Err(kube::Error::Api(status)) => Some(status.message),
                _ => None,
            }
        },
    )
    .await;
    assert!(
        refused.contains("spec.network.newVpc is no longer accepted for new clinics")
            && refused.contains("spec.network.existing"),
        "{refused}"
    );
    // The stored clinic is still updated (its network unchanged) and read.
    let mut changed = clinic("old");
    changed["spec"]["web"]["replicas"] = 1.into();
    apply(&client, &ns.name, &changed).await.unwrap();
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let stored = clinics.get("old").await.unwrap();
    assert!(stored.spec.network.new_vpc.is_some());
    assert_eq!(stored.spec.web.replicas, 1);
}

/// Removes every CEL rule `rule` from a CRD's schemas.
fn drop_rule(value: &mut serde_json::Value, rule: &str) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Array(rules)) = map.get_mut("x-kubernetes-validations") {
                rules.retain(|r| r["rule"] != rule);
            }
            for v in map.values_mut() {
                drop_rule(v, rule);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| drop_rule(v, rule)),
        _ => {}
    }
}

/// A transient API error across 100 clinics: each one's first reconcile fails, the retry
/// succeeds and provisions the clinic. The failure costs no status write and no Event
/// beyond what provisioning costs anyway.
#[tokio::test]
async fn a_blip_across_100_clinics_costs_no_status_write_and_no_event() {
    const CLINICS: usize = 100;
    let _turn = TURNS.lock().await;
    let env = env();
    let client = env.admin().await;
    let ns = TestNamespace::new(env, "blip").await;
    create_secret(&client, &ns.name).await;
    for i in 0..CLINICS {
        apply(&client, &ns.name, &clinic(&format!("clinic-{i}")))
            .await
            .unwrap();
    }
    forbid_secrets(env);
    // Budgets wide open: this test is about the driver, and moto answers at once.
    let operator = Operator::start_with(env, Some(&ns.name), &support::WIDE_BUDGETS);
    operator.wait_for("/readyz", 200).await;
    eventually(
        Duration::from_secs(30),
        "every clinic's first reconcile to fail",
        || async { (operator.metric(FAILED).await >= CLINICS as u64).then_some(()) },
    )
    .await;
    restore_rbac(env);

    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    eventually(
        Duration::from_secs(180),
        "every clinic provisioned after its retry",
        || async {
            let list = clinics.list(&Default::default()).await.ok()?;
            let ready = list
                .items
                .iter()
                .filter(|c| {
                    let conditions = c.status.as_ref().map(|s| &s.conditions[..]);
                    openemr_operator::conditions::find(conditions.unwrap_or_default(), "Ready")
                        .is_some_and(|a| a.reason == "Ready")
                })
                .count();
            (ready == CLINICS).then_some(())
        },
    )
    .await;
    let writes = operator
        .metric("openemr_status_writes_total{controller=\"openemrdeployment\"}")
        .await;
    let published = operator
        .metric("openemr_events_total{controller=\"openemrdeployment\"}")
        .await;
    let failed = operator.metric(FAILED).await;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let stored = events.list(&Default::default()).await.unwrap().items;
    // The operator's own Warnings: the controller-manager may warn about the clinics'
    // volume claims while it binds them, which is not what this test measures.
    let warnings = stored
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter(|e| e.reporting_controller.as_deref() == Some("openemr-operator"))
        .count();
    for e in stored
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
    {
        println!(
            "Warning from {:?}: {:?} {:?}",
            e.reporting_controller, e.reason, e.note
        );
    }
    println!(
        "blip across {CLINICS} clinics: {failed} failed reconciles, {writes} status writes, \
         {published} Events published ({} stored, {warnings} Warnings)",
        stored.len()
    );
    assert_eq!(failed, CLINICS as u64, "one failure each, then success");
    // What a clinic costs without any failure, in three passes: the stack's intent and the
    // status; the database's intent and the status; the status saying Ready (5 writes).
    // Events: Accepted, StackReady, DatabaseReady, AuditReady, WorkloadReady and Ready
    // appearing, the stack started; StackReady true, the database started; DatabaseReady,
    // WorkloadReady (stopped: these clinics want 0 replicas) and Ready true (12).
    assert_eq!(writes, 5 * CLINICS as u64);
    assert_eq!(published, 12 * CLINICS as u64);
    assert_eq!(warnings, 0);
    assert_eq!(operator.terminate().code(), Some(0));

    // A restart re-confirms every clinic from one page of DB instances (100 per page) and
    // the stacks' pages, with no call per clinic and no change.
    let restarted = Operator::start(env, Some(&ns.name));
    restarted.wait_for("/readyz", 200).await;
    let ok = "openemr_reconciliations_total{controller=\"openemrdeployment\",result=\"ok\"}";
    eventually(
        Duration::from_secs(60),
        "every clinic reconciled after the restart",
        || async { (restarted.metric(ok).await >= CLINICS as u64).then_some(()) },
    )
    .await;
    let calls = aws_calls(&restarted).await;
    println!("restart with {CLINICS} clinics at rest: {calls:?}");
    // This binary's other test may have left a clinic of its own in moto: count what the
    // inventory had to list.
    let rds = aws_sdk_rds::Client::new(&env.aws(Some("us-east-1")).await);
    let mut instances = 0;
    let mut marker = None;
    loop {
        let page = rds
            .describe_db_instances()
            .set_marker(marker)
            .send()
            .await
            .unwrap();
        instances += page.db_instances().len();
        marker = page.marker().map(str::to_string);
        if marker.is_none() {
            break;
        }
    }
    assert_eq!(
        calls.get("DescribeDBInstances").copied(),
        Some(instances.div_ceil(100) as u64),
        "one page per 100 of {instances} instances: {calls:?}"
    );
    let cfn = aws_sdk_cloudformation::Client::new(&env.aws(Some("us-east-1")).await);
    let (mut stacks, mut pages, mut token) = (0, 0u64, None);
    loop {
        let page = cfn
            .describe_stacks()
            .set_next_token(token)
            .send()
            .await
            .unwrap();
        stacks += page.stacks().len();
        pages += 1;
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    // And the account's shared audit trail, once for all the clinics: its stack and
    // whether it logs.
    assert_eq!(
        calls.get("DescribeStacks").copied(),
        Some(pages + 1),
        "every page of {stacks} stacks, once, and the audit trail's stack: {calls:?}"
    );
    assert_eq!(calls.get("GetTrailStatus").copied(), Some(1), "{calls:?}");
    assert_eq!(
        calls.len(),
        3,
        "nothing but the two inventories and the audit trail: {calls:?}"
    );
    assert_eq!(
        restarted
            .metric("openemr_status_writes_total{controller=\"openemrdeployment\"}")
            .await,
        0
    );
    assert_eq!(restarted.terminate().code(), Some(0));
}
