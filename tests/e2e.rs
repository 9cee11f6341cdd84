//! Tests on the real boundaries: a kube-apiserver + etcd + kube-controller-manager built
//! here, and moto over HTTP. One binary, so the environment starts once per run.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use openemr_operator::api::{self, BackupPolicy, OpenEMRBackup, OpenEMRDeployment};
use support::operator::Operator;
use support::{
    TestNamespace, apply, condition, documents, env, eventually, files, wait_for_reason,
    warning_event,
};

#[tokio::test]
async fn crds_install_with_server_side_apply_and_become_established() {
    let client = env().admin().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("openemr-tests").force();
    for crd in api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .expect("server-side apply of the CRD");
        let established = tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .expect("CRD established in time")
        .expect("watching the CRD");
        let served = established.expect("CRD exists");
        assert_eq!(served.spec.group, "openemr.io");
        assert_eq!(served.spec.scope, "Namespaced");
        let names = &served.spec.names;
        assert_eq!(
            names.categories.as_deref(),
            Some(&["openemr".to_string()][..]),
            "{name}"
        );
        assert!(
            names.short_names.as_ref().is_some_and(|s| !s.is_empty()),
            "{name} has short names"
        );
        let version = &served.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name} has a status subresource"
        );
        assert!(
            version
                .additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 3),
            "{name} has printer columns"
        );
    }
    // The category and short names work for people: `kubectl get openemr` lists all four kinds.
    let ns = TestNamespace::new(env(), "crds").await;
    // Discovery may trail the Established condition by a moment.
    eventually(
        Duration::from_secs(30),
        "`kubectl get openemr` to work",
        || async {
            let out = env()
                .command("kubectl")
                .args(["get", "openemr", "-n", &ns.name])
                .output()
                .ok()?;
            out.status.success().then_some(())
        },
    )
    .await;
    let resources = env().kubectl(&["api-resources", "--api-group=openemr.io", "--no-headers"]);
    for short in ["oemr", "obp", "obk", "ors"] {
        assert!(
            resources
                .split_whitespace()
                .any(|w| w.split(',').any(|s| s == short)),
            "short name {short} served:\n{resources}"
        );
    }
}

#[tokio::test]
async fn every_example_is_accepted_and_reapplying_it_changes_nothing() {
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "examples").await;
    let examples = files("examples", "yaml");
    let kinds: BTreeSet<String> = examples
        .iter()
        .flat_map(|f| documents(&std::fs::read_to_string(f).unwrap()))
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.len(), 4, "examples cover every kind: {kinds:?}");
    for file in &examples {
        for doc in documents(&std::fs::read_to_string(file).unwrap()) {
            let first = apply(&client, &ns.name, &doc)
                .await
                .unwrap_or_else(|e| panic!("{} rejected: {e}", file.display()));
            let again = apply(&client, &ns.name, &doc).await.unwrap();
            assert_eq!(
                first.metadata.resource_version,
                again.metadata.resource_version,
                "re-applying {} must be a no-op",
                file.display()
            );
            // What was stored is what was sent; defaults only add fields.
            assert_subset(
                &doc["spec"],
                &first.data["spec"],
                &format!("{}: spec", file.display()),
            );
        }
    }
    // Defaults are HIPAA-grade and visible in the stored object.
    let minimal: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let clinic = minimal.get("clinic-b").await.unwrap();
    let db = &clinic.spec.database;
    assert!(db.deletion_protection);
    assert!(db.backup_retention_days >= 7);
    assert_eq!(clinic.spec.deletion_policy, api::DeletionPolicy::Retain);
    assert!(!clinic.spec.skip_final_snapshot);
}

fn assert_subset(sent: &serde_json::Value, stored: &serde_json::Value, path: &str) {
    match (sent, stored) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in a {
                assert_subset(
                    v,
                    b.get(k).unwrap_or(&serde_json::Value::Null),
                    &format!("{path}.{k}"),
                );
            }
        }
        _ => assert_eq!(sent, stored, "{path}"),
    }
}

#[tokio::test]
async fn invalid_manifests_are_rejected_with_a_message_naming_the_field() {
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "invalid").await;
    let corpus = files("tests/invalid", "yaml");
    assert!(
        corpus.len() >= 30,
        "at least 30 invalid manifests, found {}",
        corpus.len()
    );
    let mut messages = Vec::new();
    let mut failures = Vec::new();
    for file in &corpus {
        let text = std::fs::read_to_string(file).unwrap();
        let expects: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expects.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let docs = documents(&text);
        let (setup, invalid) = match docs.as_slice() {
            [invalid] => (None, invalid),
            [setup, invalid] => (Some(setup), invalid),
            _ => panic!("{}: one or two documents", file.display()),
        };
        if let Some(setup) = setup {
            apply(&client, &ns.name, setup).await.unwrap_or_else(|e| {
                panic!(
                    "{}: the first document must be accepted: {e}",
                    file.display()
                )
            });
        }
        match apply(&client, &ns.name, invalid).await {
            Ok(_) => failures.push(format!("{}: accepted", file.display())),
            Err(kube::Error::Api(status)) => {
                // Server-side apply refuses a patch that does not fit the schema's list and
                // field structure before validation, as a 500 "failed to create typed patch
                // object" that still names the field; everything else is a 422 Invalid.
                let typed_patch = status.code == 500
                    && status
                        .message
                        .contains("failed to create typed patch object");
                if status.code != 422 && !typed_patch {
                    failures.push(format!(
                        "{}: HTTP {} instead of 422: {}",
                        file.display(),
                        status.code,
                        status.message
                    ));
                }
                for e in &expects {
                    if !status.message.contains(e) {
                        failures.push(format!(
                            "{}: message lacks {e:?}: {}",
                            file.display(),
                            status.message
                        ));
                    }
                }
                messages.push(status.message.clone());
            }
            Err(e) => failures.push(format!("{}: {e}", file.display())),
        }
        if setup.is_some() {
            let kind = invalid["kind"].as_str().unwrap();
            let name = invalid["metadata"]["name"].as_str().unwrap();
            env().kubectl(&[
                "delete",
                "-n",
                &ns.name,
                &format!("{}.openemr.io", kind.to_lowercase()),
                name,
                "--wait=true",
            ]);
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Every CEL rule of every CRD is exercised by at least one manifest of the corpus.
    let mut rules = BTreeSet::new();
    for crd in api::crds() {
        collect_rule_messages(&serde_json::to_value(&crd).unwrap(), &mut rules);
    }
    let uncovered: Vec<&String> = rules
        .iter()
        .filter(|m| !messages.iter().any(|got| got.contains(m.as_str())))
        .collect();
    assert!(
        uncovered.is_empty(),
        "CEL rules no invalid manifest triggers: {uncovered:#?}"
    );
}

fn collect_rule_messages(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(rules) = map
                .get("x-kubernetes-validations")
                .and_then(|r| r.as_array())
            {
                for r in rules {
                    out.insert(
                        r["message"]
                            .as_str()
                            .expect("every rule has a message")
                            .to_string(),
                    );
                }
            }
            map.values().for_each(|v| collect_rule_messages(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_rule_messages(v, out)),
        _ => {}
    }
}

fn doc(yaml: &str) -> serde_json::Value {
    documents(yaml).remove(0)
}

/// The clinic the operator test provisions, on the cluster's network in moto.
fn clinic_a() -> serde_json::Value {
    let network = env().cluster_network("us-east-1");
    doc(&format!(
        "
apiVersion: openemr.io/v1alpha1
kind: OpenEMRDeployment
metadata: {{name: clinic-a}}
spec:
  aws: {{region: us-east-1}}
  network: {network}
  web: {{replicas: 0}}
"
    ))
}

#[tokio::test]
async fn operator_runs_validates_reports_ready_and_exits_zero_on_sigterm() {
    let client: Client = env().admin().await;
    let ns = TestNamespace::new(env(), "operator").await;
    // Objects exist before the operator starts, so each is reconciled from a known state.
    let policy_bad_zone = doc("
apiVersion: openemr.io/v1alpha1
kind: BackupPolicy
metadata: {name: nightly}
spec:
  deploymentRef: {name: clinic-a}
  schedule: '30 2 * * *'
  timeZone: Europe/Atlantis
");
    let backup_of_missing_clinic = doc("
apiVersion: openemr.io/v1alpha1
kind: OpenEMRBackup
metadata: {name: on-demand}
spec:
  deploymentRef: {name: clinic-b}
");
    for d in [
        clinic_a(),
        policy_bad_zone.clone(),
        backup_of_missing_clinic.clone(),
    ] {
        apply(&client, &ns.name, &d).await.unwrap();
    }

    let operator = Operator::start(env(), Some(&ns.name));
    operator.wait_for("/readyz", 200).await;
    assert_eq!(operator.get("/healthz").await.map(|r| r.0), Some(200));

    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns.name);
    let backups: Api<OpenEMRBackup> = Api::namespaced(client.clone(), &ns.name);

    let accepted = wait_for_reason(&clinics, "clinic-a", "Accepted", "Valid").await;
    assert_eq!(accepted.status, "True");
    // The clinic (on the cluster's network) becomes its infrastructure in moto.
    let ready = wait_for_reason(&clinics, "clinic-a", "Ready", "Ready").await;
    assert_eq!(ready.status, "True");
    assert_eq!(
        clinics
            .get("clinic-a")
            .await
            .unwrap()
            .status
            .unwrap()
            .observed_generation,
        Some(1)
    );

    // What only the controller can judge comes back as a condition naming the field.
    let zone = wait_for_reason(&policies, "nightly", "Accepted", "UnknownTimeZone").await;
    assert_eq!(zone.status, "False");
    assert!(
        zone.message.contains("spec.timeZone") && zone.message.contains("Europe/Atlantis"),
        "{}",
        zone.message
    );
    let missing = wait_for_reason(&backups, "on-demand", "Accepted", "DeploymentNotFound").await;
    assert!(
        missing.message.contains("spec.deploymentRef"),
        "{}",
        missing.message
    );

    // Fixing the input fixes the condition: the policy through its own change, the backup
    // through the clinic it names appearing. A refused object is not polled at all, so only
    // the clinic's watch event can wake it.
    let mut fixed = policy_bad_zone.clone();
    fixed["spec"]["timeZone"] = "Europe/Berlin".into();
    apply(&client, &ns.name, &fixed).await.unwrap();
    wait_for_reason(&policies, "nightly", "Accepted", "Valid").await;
    let mut clinic_b = clinic_a();
    clinic_b["metadata"]["name"] = "clinic-b".into();
    apply(&client, &ns.name, &clinic_b).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the backup to be accepted once its clinic exists",
        || async {
            condition(&backups, "on-demand", "Accepted")
                .await
                .filter(|c| c.reason == "Valid")
        },
    )
    .await;
    wait_for_reason(&clinics, "clinic-b", "Accepted", "Valid").await;
    wait_for_reason(&clinics, "clinic-b", "Ready", "Ready").await;

    // Steady state: reconciling again writes no status. Each policy and backup was written
    // exactly twice so far, each clinic six times in three passes: the intents of its
    // credentials Secret and stack and the status; the intent of its database and the
    // status; the status saying Ready. Touching every object forces a reconcile of each,
    // and the status write counters must not move.
    let writes = [
        ("openemrdeployment", 12u64),
        ("backuppolicy", 2),
        ("openemrbackup", 2),
    ];
    let write_sample = |c: &str| format!("openemr_status_writes_total{{controller=\"{c}\"}}");
    let ok_sample =
        |c: &str| format!("openemr_reconciliations_total{{controller=\"{c}\",result=\"ok\"}}");
    for (controller, expected) in writes {
        let sample = write_sample(controller);
        let settled = eventually(Duration::from_secs(10), &sample, || async {
            let got = operator.metric(&sample).await;
            (got >= expected).then_some(got)
        })
        .await;
        assert_eq!(
            settled,
            expected,
            "{sample}; operator log:\n{}",
            operator.log()
        );
    }
    let touched = [
        ("openemrdeployment", "clinic-a"),
        ("openemrdeployment", "clinic-b"),
        ("backuppolicy", "nightly"),
        ("openemrbackup", "on-demand"),
    ];
    let mut reconciled_before = Vec::new();
    for (controller, _) in writes {
        reconciled_before.push(operator.metric(&ok_sample(controller)).await);
    }
    for (kind, name) in touched {
        let resource = format!("{kind}.openemr.io");
        env().kubectl(&[
            "annotate",
            "-n",
            &ns.name,
            &resource,
            name,
            "openemr.io/touched=1",
        ]);
    }
    for ((controller, expected), before) in writes.into_iter().zip(reconciled_before) {
        let touched_here = touched.iter().filter(|(k, _)| *k == controller).count() as u64;
        let sample = ok_sample(controller);
        eventually(
            Duration::from_secs(30),
            &format!("{controller} to reconcile the touched objects"),
            || async { (operator.metric(&sample).await >= before + touched_here).then_some(()) },
        )
        .await;
        assert_eq!(
            operator.metric(&write_sample(controller)).await,
            expected,
            "no status write in steady state for {controller}"
        );
    }

    // Clinics carry the cleanup finalizer; deleting one while the operator runs completes,
    // and the policy naming it hears of it through the index.
    let clinic_a = clinics.get("clinic-a").await.unwrap();
    assert!(
        clinic_a
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "openemr.io/cleanup"),
        "{:?}",
        clinic_a.metadata.finalizers
    );
    clinics
        .delete("clinic-a", &Default::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "clinic-a cleaned up and gone",
        || async {
            clinics
                .get_opt("clinic-a")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the policy to notice its clinic is gone",
        || async {
            condition(&policies, "nightly", "Accepted")
                .await
                .filter(|c| c.reason == "DeploymentNotFound")
        },
    )
    .await;

    let status = operator.terminate();
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
}

#[tokio::test]
async fn aws_sdk_clients_reach_moto_and_every_call_is_counted() {
    use aws_sdk_cloudformation::types::StackStatus;
    use openemr_operator::aws::AwsClients;
    use openemr_operator::metrics::Metrics;
    use std::sync::Arc;

    let base = env().aws(None).await;
    let metrics = Arc::new(Metrics::new());
    let aws = AwsClients::for_region(&base, "us-east-1", metrics.clone());
    let id = format!("t{}", std::process::id());

    // S3 (path-style against the emulator).
    let bucket = format!("openemr-test-{id}");
    aws.s3
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("CreateBucket");
    aws.s3
        .put_object()
        .bucket(&bucket)
        .key("backups/set-1/manifest.json")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"{}"))
        .send()
        .await
        .expect("PutObject");
    let missing = aws
        .s3
        .head_bucket()
        .bucket(format!("{bucket}-missing"))
        .send()
        .await;
    assert!(missing.is_err());

    // RDS: a MySQL instance, then a manual snapshot of it.
    let db = format!("clinic-{id}");
    aws.rds
        .create_db_instance()
        .db_instance_identifier(&db)
        .engine("mysql")
        .engine_version("8.0.40")
        .db_instance_class("db.t4g.medium")
        .allocated_storage(20)
        .master_username("openemr")
        .manage_master_user_password(true)
        .storage_encrypted(true)
        .deletion_protection(true)
        .send()
        .await
        .expect("CreateDBInstance");
    let described = aws
        .rds
        .describe_db_instances()
        .db_instance_identifier(&db)
        .send()
        .await
        .expect("DescribeDBInstances");
    let instance = &described.db_instances()[0];
    assert_eq!(instance.engine(), Some("mysql"));
    assert_eq!(instance.deletion_protection(), Some(true));

    // CloudFormation: a JSON template, as the operator will render.
    let template = serde_json::json!({
        "Resources": {"Documents": {"Type": "AWS::S3::Bucket", "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain", "Properties": {"BucketName": format!("{bucket}-stack")}}},
        "Outputs": {"Bucket": {"Value": {"Ref": "Documents"}}}
    });
    aws.cloudformation
        .create_stack()
        .stack_name(format!("openemr-{id}"))
        .template_body(template.to_string())
        .client_request_token(format!("create-{id}"))
        .send()
        .await
        .expect("CreateStack");
    let stacks = aws
        .cloudformation
        .describe_stacks()
        .stack_name(format!("openemr-{id}"))
        .send()
        .await
        .expect("DescribeStacks");
    let stack = &stacks.stacks()[0];
    assert_eq!(stack.stack_status(), Some(&StackStatus::CreateComplete));
    assert_eq!(
        stack.outputs()[0].output_value(),
        Some(format!("{bucket}-stack").as_str())
    );

    // Every attempt counted, exactly, by service, operation and outcome.
    let text = metrics.encode();
    // Operations exactly (an SDK retry against a slow emulator adds attempts, not
    // operations); attempts at least as many.
    for sample in [
        r#"openemr_aws_api_calls_total{service="s3",operation="CreateBucket",outcome="success"} 1"#,
        r#"openemr_aws_api_calls_total{service="s3",operation="PutObject",outcome="success"} 1"#,
        r#"openemr_aws_api_calls_total{service="s3",operation="HeadBucket",outcome="not_found"} 1"#,
        r#"openemr_aws_api_calls_total{service="rds",operation="CreateDBInstance",outcome="success"} 1"#,
        r#"openemr_aws_api_calls_total{service="rds",operation="DescribeDBInstances",outcome="success"} 1"#,
        r#"openemr_aws_api_calls_total{service="cloudformation",operation="CreateStack",outcome="success"} 1"#,
        r#"openemr_aws_api_calls_total{service="cloudformation",operation="DescribeStacks",outcome="success"} 1"#,
    ] {
        assert!(text.contains(sample), "missing {sample} in:\n{text}");
    }
    let sum = |prefix: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    let operations = sum("openemr_aws_api_calls_total{");
    let attempts = sum("openemr_aws_api_attempts_total{");
    assert_eq!(operations, 7, "no hidden calls:\n{text}");
    assert!(
        attempts >= operations,
        "every operation made at least one attempt:\n{text}"
    );
}

#[tokio::test]
async fn a_credentials_secret_without_password_is_refused_and_its_values_never_appear() {
    use k8s_openapi::api::core::v1::Secret;

    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "secrets").await;
    let value = format!("do-not-leak-{}", std::process::id());
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "clinic-db", "namespace": ns.name},
        "stringData": {"pass": value},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&Default::default(), &secret)
        .await
        .unwrap();
    let mut clinic = clinic_a();
    clinic["spec"]["database"] = serde_json::json!({"credentialsSecretRef": {"name": "clinic-db"}});
    apply(&client, &ns.name, &clinic).await.unwrap();

    let operator = Operator::start(env(), Some(&ns.name));
    operator.wait_for("/readyz", 200).await;
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let refused =
        wait_for_reason(&clinics, "clinic-a", "Accepted", "CredentialsSecretInvalid").await;
    assert_eq!(refused.status, "False");
    assert!(
        refused
            .message
            .contains("spec.database.credentialsSecretRef")
            && refused.message.contains("lacks the key(s) password"),
        "{}",
        refused.message
    );

    // The refusal is announced as a Warning Event on the clinic.
    let warning = warning_event(&client, &ns.name, "clinic-a", "CredentialsSecretInvalid").await;

    // The value is nowhere the operator writes: its log, the status, the Event.
    let stored = serde_json::to_string(&clinics.get("clinic-a").await.unwrap().status).unwrap();
    let event_text = serde_json::to_string(&warning).unwrap();
    let (status, log) = operator.terminate_with_log();
    assert_eq!(status.code(), Some(0));
    assert!(log.contains("caches synced"), "the log was read: {log}");
    for (place, text) in [("status", stored), ("event", event_text), ("log", log)] {
        assert!(
            !text.contains(&value),
            "the Secret's value appears in the {place}"
        );
    }
}

#[tokio::test]
async fn deploy_manifests_are_accepted_by_the_api_server() {
    let deploy = std::path::Path::new(support::REPO).join("deploy");
    let out = env().kubectl(&[
        "apply",
        "--dry-run=server",
        "--server-side",
        "-f",
        deploy.to_str().unwrap(),
    ]);
    for object in [
        "serviceaccount/openemr-operator",
        "clusterrole.rbac.authorization.k8s.io/openemr-operator",
        "deployment.apps/openemr-operator",
    ] {
        assert!(out.contains(object), "{object} in:\n{out}");
    }
    // Never two reconciling pods: one replica, replaced rather than rolled.
    let manifest = std::fs::read_to_string(deploy.join("operator.yaml")).unwrap();
    let operator = documents(&manifest)
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the operator's Deployment");
    assert_eq!(operator["spec"]["replicas"], 1);
    assert_eq!(operator["spec"]["strategy"]["type"], "Recreate");
}
