//! Playing the kubelet: no kubelet runs here, so the tests report what a pod did by
//! patching its status (a setup or documents Job's pod ran to its end; workers run and are
//! ready), and bring a clinic to `Ready` that way.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use openemr_operator::api::OpenEMRDeployment;
use serde_json::json;

use super::operator::Operator;
use super::{env, eventually, wait_for_reason};

const WAIT: Duration = Duration::from_secs(90);

/// Pods of `selector` in `ns`.
pub async fn pods(client: &Client, ns: &str, selector: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
}

/// Plays the kubelet: `pod` ran to `phase` (`Succeeded` or `Failed`, with `message`).
pub async fn finish_pod(client: &Client, ns: &str, pod: &str, phase: &str, message: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let exit = if phase == "Succeeded" { 0 } else { 1 };
    let now = "2026-11-23T00:00:00Z";
    let status = json!({"status": {
        "phase": phase,
        "containerStatuses": [{
            "name": "setup", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {
                "exitCode": exit, "reason": if exit == 0 { "Completed" } else { "Error" },
                "message": message, "startedAt": now, "finishedAt": now,
            }},
        }],
    }});
    api.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// Plays the kubelet for every worker pod of `clinic`: running and ready.
pub async fn run_workers(client: &Client, ns: &str, clinic: &str) -> usize {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("app.kubernetes.io/instance={clinic},app.kubernetes.io/component=web");
    let mut n = 0;
    for pod in pods(client, ns, &selector).await {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let now = "2026-11-23T00:00:00Z";
        let status = json!({"status": {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            ],
            "containerStatuses": [{
                "name": "openemr", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
                "started": true, "state": {"running": {"startedAt": now}},
            }],
        }});
        // The ReplicaSet may remove a pod between the list and the patch
        // (a rollout or a scale-down still settling): the kubelet has no
        // pod to report on then.
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await
        {
            Ok(_) => n += 1,
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => panic!("marking {} ready: {e}", pod.name_any()),
        }
    }
    n
}

/// The setup Jobs of `clinic`, by name.
pub async fn setup_jobs(client: &Client, ns: &str, clinic: &str) -> Vec<Job> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let mut jobs = api
        .list(&ListParams::default().labels(&format!(
            "openemr.io/clinic={clinic},app.kubernetes.io/component=setup"
        )))
        .await
        .unwrap()
        .items;
    jobs.sort_by_key(|j| j.name_any());
    jobs
}

/// Waits for attempt `n`'s Job and its pod, returns the pod's name.
pub async fn setup_pod(client: &Client, ns: &str, clinic: &str, n: usize) -> (Job, String) {
    let job = eventually(WAIT, &format!("setup Job #{n} of {clinic}"), || async {
        setup_jobs(client, ns, clinic).await.into_iter().nth(n - 1)
    })
    .await;
    let name = job.name_any();
    let pod = eventually(WAIT, &format!("the pod of Job {name}"), || async {
        pods(client, ns, &format!("job-name={name}"))
            .await
            .into_iter()
            .next()
            .map(|p| p.name_any())
    })
    .await;
    (job, pod)
}

/// A clinic through setup to `Ready`, the kubelet played; returns the operator.
pub async fn ready_clinic(
    client: &Client,
    ns: &str,
    name: &str,
    operator_args: &[&str],
) -> Operator {
    ready_clinic_with_env(client, ns, name, operator_args, &[]).await
}

/// [`ready_clinic`] with an operator started with `vars` in its environment.
pub async fn ready_clinic_with_env(
    client: &Client,
    ns: &str,
    name: &str,
    operator_args: &[&str],
    vars: &[(&str, &str)],
) -> Operator {
    let operator = Operator::start_with_env(env(), Some(ns), operator_args, vars);
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), ns);
    let (_, pod) = setup_pod(client, ns, name, 1).await;
    finish_pod(client, ns, &pod, "Succeeded", "").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let workers = format!("{name}-openemr");
    eventually(WAIT, "the workers' pods", || async {
        let d = deployments.get_opt(&workers).await.ok()??;
        let want = d.spec?.replicas? as usize;
        (run_workers(client, ns, name).await >= want && want > 0).then_some(())
    })
    .await;
    wait_for_reason(&clinics, name, "Ready", "Ready").await;
    operator
}

/// Runs the documents Job's container as the kubelet would, with `/sites` as `tree` and
/// `secrets` as the values of its `secretKeyRef` variables; returns its summary (the
/// termination message).
pub fn run_documents_job(
    job: &Job,
    pod: &str,
    tree: &Path,
    scratch: &Path,
    secrets: &[(String, String)],
) -> String {
    let spec = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let container = &spec.containers[0];
    let summary = scratch.join("termination-log");
    let work = scratch.join("tmp");
    std::fs::create_dir_all(&work).unwrap();
    let args: Vec<String> = container
        .args
        .clone()
        .unwrap()
        .into_iter()
        .map(|a| match a.as_str() {
            "/sites" => tree.display().to_string(),
            "/dev/termination-log" => summary.display().to_string(),
            "/tmp" => work.display().to_string(),
            _ => a,
        })
        .collect();
    let mut command = env().command(env!("CARGO_BIN_EXE_openemr-operator"));
    command.args(&args);
    for var in container.env.clone().unwrap_or_default() {
        if let Some(value) = var.value {
            command.env(var.name, value);
        }
    }
    command.envs(secrets.iter().map(|(k, v)| (k, v)));
    let out = command
        .env("POD_NAME", pod)
        // moto answers path-style only; a Job on AWS needs neither.
        .env("S3_PATH_STYLE", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the documents command failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(summary).unwrap()
}

/// The variables of `job`'s container that come from Secrets, read as the kubelet would.
pub async fn secret_vars(client: &Client, ns: &str, job: &Job) -> Vec<(String, String)> {
    let spec = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    let mut vars = Vec::new();
    for var in spec.containers[0].env.clone().unwrap_or_default() {
        let Some(from) = var.value_from.and_then(|f| f.secret_key_ref) else {
            continue;
        };
        let secret = secrets.get(&from.name).await.unwrap();
        let value = secret.data.unwrap()[&from.key].0.clone();
        vars.push((var.name, String::from_utf8(value).unwrap()));
    }
    vars
}

/// The kubelet's part for the set's Job `name` (its documents or prune Job): runs its
/// command, with `tree` as `/sites`, and reports the pod's success with the command's
/// summary.
pub async fn play_job(client: &kube::Client, ns: &str, name: &str, tree: &Path) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let job = eventually(WAIT, &format!("Job {name}"), || async {
        jobs.get_opt(name).await.ok()?
    })
    .await;
    // Tests run side by side in one process and name their Jobs alike ("first-documents"):
    // the namespace keeps one test's termination log and work files from another's.
    let scratch = std::env::temp_dir().join(format!("oe-{ns}-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let pod = eventually(WAIT, "the Job's pod", || async {
        pods(client, ns, &format!("job-name={name}"))
            .await
            .into_iter()
            .find(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.name_any())
    })
    .await;
    let summary = run_documents_job(
        &job,
        &pod,
        tree,
        &scratch,
        &secret_vars(client, ns, &job).await,
    );
    finish_pod(client, ns, &pod, "Succeeded", &summary).await;
    std::fs::remove_dir_all(&scratch).ok();
}

/// The service account documents Jobs run as.
pub async fn documents_account(client: &Client, ns: &str) {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    accounts
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "openemr-documents"}})).unwrap(),
        )
        .await
        .unwrap();
}
