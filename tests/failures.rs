//! A reconcile that cannot do its work says so on the object (`Synced=False` with the
//! reason) and backs off instead of hot-looping; once the cause is gone it recovers.
//! Runs on a control plane of its own, since it takes permissions away from the operator.

mod support;

use std::time::Duration;

use kube::Api;
use openemr_operator::api::OpenEMRDeployment;
use support::operator::Operator;
use support::{
    TestNamespace, apply, condition, documents, eventually, private_env_without_crds, warning_event,
};

#[tokio::test]
async fn a_failing_read_is_reported_and_retried_with_backoff() {
    let env = private_env_without_crds();
    env.install_crds();
    let client = env.admin().await;
    let ns = TestNamespace::new(env, "failures").await;

    // The operator may no longer read Secrets.
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

    let clinic = documents(
        "
apiVersion: openemr.io/v1alpha1
kind: OpenEMRDeployment
metadata: {name: clinic-a}
spec:
  aws: {region: us-east-1}
  network: {newVpc: {}}
  database: {credentialsSecretRef: {name: clinic-db}}
",
    )
    .remove(0);
    apply(&client, &ns.name, &clinic).await.unwrap();

    let operator = Operator::start(env, Some(&ns.name));
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

    // Backoff, not a hot loop: the failed reconcile, at most one more triggered by its own
    // status write, then nothing for the first 15 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failed =
        "openemr_reconciliations_total{controller=\"openemrdeployment\",result=\"ObserveFailed\"}";
    let failures = operator.metric(failed).await;
    assert!(
        (1..=2).contains(&failures),
        "{failures} failed reconciles in the first seconds"
    );

    // Permission back: the next attempt succeeds and the real verdict appears.
    let deploy = std::path::Path::new(support::REPO).join("deploy/rbac.yaml");
    env.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        deploy.to_str().unwrap(),
    ]);
    env.kubectl(&[
        "annotate",
        "-n",
        &ns.name,
        "openemrdeployment.openemr.io",
        "clinic-a",
        "openemr.io/retry=1",
    ]);
    let recovered = eventually(Duration::from_secs(60), "Synced=True", || async {
        condition(&clinics, "clinic-a", "Synced")
            .await
            .filter(|c| c.status == "True")
    })
    .await;
    assert_eq!(recovered.reason, "Reconciled");
    let accepted = condition(&clinics, "clinic-a", "Accepted").await.unwrap();
    assert_eq!(accepted.reason, "CredentialsSecretNotFound");
    assert_eq!(operator.terminate().code(), Some(0));
}
