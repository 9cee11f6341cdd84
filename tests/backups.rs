//! Backup sets on a real control plane + moto. No kubelet runs here: the test plays it for
//! the documents Job by running the Job's own command (the operator's binary, the Job's
//! arguments and environment) as a process, against a directory standing in for the
//! clinic's EFS volume, then reporting the pod's end with the command's summary as its
//! termination message.

mod support;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::{Api, ResourceExt};
use openemr_operator::api::backup::{BackupPhase, CopyPhase};
use openemr_operator::api::{BackupPolicy, BackupPolicyStatus, OpenEMRBackup, OpenEMRDeployment};
use openemr_operator::controller::backup::set::{self, SetManifest};
use serde_json::json;
use support::clock::TestClock;
use support::kubelet::{
    documents_account, finish_pod, play_job, pods, ready_clinic, run_documents_job, run_workers,
};
use support::operator::Operator;
use support::{TestNamespace, apply, env, eventually};

const WAIT: Duration = Duration::from_secs(90);
const REGION: &str = "us-west-2";

/// Checks with `documents verify` that the set of documents manifest `manifest` is sound.
fn verify_documents(bucket: &str, manifest: &str) {
    let out = env()
        .command(env!("CARGO_BIN_EXE_openemr-operator"))
        .args(["documents", "verify", "--bucket", bucket, "--path-style"])
        .args(["--manifest", manifest])
        .env("AWS_REGION", REGION)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A clinic with one worker in a fresh namespace named from `prefix`.
async fn clinic_with_one_worker(prefix: &str, name: &str) -> (kube::Client, TestNamespace) {
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), prefix).await;
    let mut clinic = support::clinic_manifest(name, REGION, "");
    clinic["spec"]["web"] = json!({"replicas": 1});
    apply(&client, &ns.name, &clinic).await.unwrap();
    (client, ns)
}

/// The operator's image, for the documents Jobs it makes.
const DOCUMENTS_IMAGE: [&str; 2] = [
    "--documents-image",
    "registry.example.org/openemr-operator:test",
];

/// A clinic with one worker, `Ready`, with the documents Jobs' service account, under an
/// operator started with [`DOCUMENTS_IMAGE`] (and `extra`).
async fn documents_clinic(
    prefix: &str,
    name: &str,
    extra: &[&str],
) -> (kube::Client, TestNamespace, Operator) {
    let (client, ns) = clinic_with_one_worker(prefix, name).await;
    let args: Vec<&str> = DOCUMENTS_IMAGE.iter().chain(extra).copied().collect();
    let operator = ready_clinic(&client, &ns.name, name, &args).await;
    documents_account(&client, &ns.name).await;
    (client, ns, operator)
}

/// A clinic with one worker, `Ready`, with the documents Jobs' service account, under an
/// operator whose AWS calls go through a fault proxy (returned, to be ruled and counted).
async fn clinic_behind_proxy(
    prefix: &str,
    name: &str,
) -> (
    kube::Client,
    TestNamespace,
    support::faults::FaultProxy,
    Operator,
) {
    let (client, ns) = clinic_with_one_worker(prefix, name).await;
    let proxy = support::faults::FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let url = proxy.url();
    let vars = [("AWS_ENDPOINT_URL", url.as_str())];
    let operator =
        support::kubelet::ready_clinic_with_env(&client, &ns.name, name, &DOCUMENTS_IMAGE, &vars)
            .await;
    documents_account(&client, &ns.name).await;
    (client, ns, proxy, operator)
}

/// Another operator for namespace `ns`, its AWS calls through `proxy` (after one killed).
fn operator_behind(proxy: &support::faults::FaultProxy, ns: &str) -> Operator {
    let url = proxy.url();
    Operator::start_with_env(
        env(),
        Some(ns),
        &DOCUMENTS_IMAGE,
        &[("AWS_ENDPOINT_URL", url.as_str())],
    )
}

#[tokio::test]
async fn an_on_demand_set_takes_the_snapshot_then_the_documents_then_writes_its_manifest() {
    let name = "clinic-s";
    let (client, ns) = clinic_with_one_worker("backup", name).await;
    let operator = ready_clinic(
        &client,
        &ns.name,
        name,
        &[
            "--documents-image",
            "registry.example.org/openemr-operator:test",
            // A running set looks again this often (the SA's creation wakes nothing).
            "--progress-interval",
            "2s",
        ],
    )
    .await;
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let d = clinics.get(name).await.unwrap();
    let status = d.status.clone().unwrap();
    let (bucket, key_arn) = (status.bucket_name.unwrap(), status.kms_key_arn.unwrap());
    let instance = status.database.unwrap().identifier;

    take_set(
        &client,
        &ns.name,
        "before-upgrade",
        json!({"deploymentRef": {"name": name}}),
    )
    .await;
    let sets: Api<OpenEMRBackup> = Api::namespaced(client.clone(), &ns.name);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    // Without the service account the Job runs as, no Job: the set says what to create.
    let waiting = support::wait_for_reason(
        &sets,
        "before-upgrade",
        "DocumentsCopied",
        "ServiceAccountNotFound",
    )
    .await;
    assert!(
        waiting.message.contains("\"openemr-documents\""),
        "{}",
        waiting.message
    );
    assert!(
        jobs.get_opt("before-upgrade-documents")
            .await
            .unwrap()
            .is_none()
    );
    documents_account(&client, &ns.name).await;
    let job = eventually(WAIT, "the documents Job", || async {
        jobs.get_opt("before-upgrade-documents").await.ok()?
    })
    .await;

    // The snapshot was asked for first: RDS knows it, tagged with the set and the clinic.
    let aws = env().aws(Some(REGION)).await;
    let rds = aws_sdk_rds::Client::new(&aws);
    let identifier = set::snapshot_identifier(&d.uid().unwrap(), "before-upgrade");
    let snapshots = rds
        .describe_db_snapshots()
        .db_snapshot_identifier(&identifier)
        .send()
        .await
        .unwrap();
    let snapshot = &snapshots.db_snapshots()[0];
    assert_eq!(snapshot.db_instance_identifier(), Some(instance.as_str()));
    let tags: std::collections::BTreeMap<&str, &str> = snapshot
        .tag_list()
        .iter()
        .filter_map(|t| Some((t.key()?, t.value()?)))
        .collect();
    assert_eq!(tags.get("openemr.io/set"), Some(&"before-upgrade"));
    let set_uid = sets.get("before-upgrade").await.unwrap().uid().unwrap();
    assert_eq!(tags.get("openemr.io/set-uid"), Some(&set_uid.as_str()));
    assert_eq!(tags.get("openemr.io/uid"), Some(&d.uid().unwrap().as_str()));
    assert!(tags.contains_key("openemr.io/engine-version"), "{tags:?}");
    assert!(tags.contains_key("openemr.io/image"), "{tags:?}");
    let running = sets.get("before-upgrade").await.unwrap().status.unwrap();
    assert_eq!(running.phase, Some(BackupPhase::Running));
    assert!(running.snapshot_requested_time.unwrap().0 <= running.documents_start_time.unwrap().0);

    // Its pods reach DNS and HTTPS only.
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns.name);
    let policy = policies.get("before-upgrade-documents").await.unwrap();
    assert_eq!(
        policy.metadata.owner_references.unwrap()[0].kind,
        "OpenEMRBackup"
    );

    // The kubelet runs the Job's command over a tree standing in for sites/.
    let scratch = std::env::temp_dir().join(format!("oe-backup-{}", std::process::id()));
    let tree = scratch.join("sites");
    std::fs::create_dir_all(tree.join("default/documents/1")).unwrap();
    std::fs::write(tree.join("default/sqlconf.php"), b"<?php $host = 'db';\n").unwrap();
    std::fs::write(tree.join("default/documents/1/scan.pdf"), b"%PDF-1.7 scan").unwrap();
    let pod = eventually(WAIT, "the documents pod", || async {
        pods(&client, &ns.name, "job-name=before-upgrade-documents")
            .await
            .into_iter()
            .next()
            .map(|p| p.name_any())
    })
    .await;
    let summary = run_documents_job(&job, &pod, &tree, &scratch, &[]);
    finish_pod(&client, &ns.name, &pod, "Succeeded", &summary).await;

    let done = eventually(WAIT, "the set Completed", || async {
        let s = sets.get("before-upgrade").await.ok()?;
        let status = s.status?;
        (status.phase == Some(BackupPhase::Completed)).then_some(status)
    })
    .await;
    assert!(
        done.conditions
            .iter()
            .any(|c| c.type_ == "Completed" && c.status == "True"),
        "{:?}",
        done.conditions
    );
    let documents = done.documents.clone().unwrap();
    assert_eq!(documents.bucket, bucket);
    assert_eq!(
        documents.manifest,
        "backups/documents/before-upgrade.jsonl.gz"
    );
    assert_eq!(documents.file_count, Some(2));
    assert_eq!(documents.files_uploaded, Some(2));
    assert_eq!(done.database.as_ref().unwrap().identifier, identifier);
    assert_eq!(
        done.database.as_ref().unwrap().status.as_deref(),
        Some("available")
    );
    assert_eq!(
        done.manifest.as_deref(),
        Some(format!("s3://{bucket}/backups/before-upgrade/manifest.json").as_str())
    );

    // The set manifest: encrypted with the clinic's key, naming both parts and the clinic.
    let s3 = support::TestEnv::s3(&aws);
    let object = s3
        .get_object()
        .bucket(&bucket)
        .key("backups/before-upgrade/manifest.json")
        .send()
        .await
        .unwrap();
    assert_eq!(object.ssekms_key_id(), Some(key_arn.as_str()));
    let bytes = object.body.collect().await.unwrap().into_bytes();
    let manifest = SetManifest::from_bytes(&bytes).unwrap();
    assert_eq!(manifest.clinic.uid, d.uid().unwrap());
    assert_eq!(manifest.database.snapshot_identifier, identifier);
    assert_eq!(manifest.database.instance_identifier, instance);
    assert_eq!(manifest.consistency, "CrashConsistent");
    let part = manifest.documents.unwrap();
    assert_eq!(part.manifest, documents.manifest);
    assert!(
        part.started_at >= manifest.database.requested_at,
        "{part:?}"
    );
    assert_eq!(manifest.clinic_spec["aws"]["region"], REGION);

    // The documents restore from the set, byte for byte.
    let into = scratch.join("restored");
    let out = env()
        .command(env!("CARGO_BIN_EXE_openemr-operator"))
        .args(["documents", "restore", "--bucket", &bucket, "--path-style"])
        .args(["--manifest", &documents.manifest, "--into"])
        .arg(&into)
        .env("AWS_REGION", REGION)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        std::fs::read(into.join("default/documents/1/scan.pdf")).unwrap(),
        b"%PDF-1.7 scan"
    );
    drop(operator);
    std::fs::remove_dir_all(&scratch).unwrap();
}

/// Waits for set `name` to be `Completed`; returns its status.
async fn completed(
    sets: &Api<OpenEMRBackup>,
    name: &str,
) -> openemr_operator::api::OpenEMRBackupStatus {
    eventually(WAIT, &format!("set {name} Completed"), || async {
        let status = sets.get(name).await.ok()?.status?;
        (status.phase == Some(BackupPhase::Completed)).then_some(status)
    })
    .await
}

/// The names of the sets in `sets`' namespace.
async fn set_names(sets: &Api<OpenEMRBackup>) -> Vec<String> {
    let mut names: Vec<String> = sets
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| s.name_any())
        .collect();
    names.sort();
    names
}

/// The hourly policy's sets are only those of `slots` (HHMM on 2027-01-05), the last of
/// them among them.
async fn only_sets_made_at(sets: &Api<OpenEMRBackup>, slots: &[&str]) {
    let made: Vec<String> = slots
        .iter()
        .map(|s| format!("hourly-20270105-{s}"))
        .collect();
    let names = set_names(sets).await;
    assert!(
        names.iter().all(|n| made.contains(n)) && names.contains(made.last().unwrap()),
        "{names:?}"
    );
}

/// Waits (up to 10 s: the operator's caches follow the API server) for `sample` of the
/// operator's metrics to be `want`.
async fn gauge_is(operator: &Operator, sample: &str, want: u64) {
    eventually(Duration::from_secs(10), sample, || async {
        (operator.metric(sample).await == want).then_some(())
    })
    .await;
}

/// The policy's status once `check` holds for it.
async fn policy_when(
    policies: &Api<BackupPolicy>,
    what: &str,
    check: impl Fn(&BackupPolicyStatus) -> bool,
) -> BackupPolicyStatus {
    eventually(WAIT, what, || async {
        let status = policies.get("hourly").await.ok()?.status?;
        check(&status).then_some(status)
    })
    .await
}

/// Applies an object of this operator's API: `kind` `name` with `spec`.
async fn apply_ours(
    client: &kube::Client,
    ns: &str,
    kind: &str,
    name: &str,
    spec: serde_json::Value,
) {
    let body = json!({
        "apiVersion": "openemr.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    });
    apply(client, ns, &body).await.unwrap();
}

/// Applies OpenEMRBackup `name` with `spec`: a set asked for.
async fn take_set(client: &kube::Client, ns: &str, name: &str, spec: serde_json::Value) {
    apply_ours(client, ns, "OpenEMRBackup", name, spec).await;
}

/// Applies BackupPolicy `name` with `spec`.
async fn policy(client: &kube::Client, ns: &str, name: &str, spec: serde_json::Value) {
    apply_ours(client, ns, "BackupPolicy", name, spec).await;
}

async fn suspend(policies: &Api<BackupPolicy>, suspended: bool) {
    let patch = json!({"spec": {"suspend": suspended}});
    policies
        .patch(
            "hourly",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await
        .unwrap();
}

fn shows(t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    t.as_ref().map(|t| t.0.to_string()).unwrap_or_default()
}

/// The operator is stopped and started again on a clock that moved on in between, as an
/// operator that was down would find the world.
#[tokio::test]
async fn a_schedule_makes_one_set_per_slot_catches_up_once_within_its_deadline_and_counts_the_rest()
{
    let name = "clinic-h";
    let (client, ns) = clinic_with_one_worker("schedule", name).await;
    ready_clinic(&client, &ns.name, name, &[]).await.terminate();
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns.name);
    let sets: Api<OpenEMRBackup> = Api::namespaced(client.clone(), &ns.name);
    let on =
        |clock: &TestClock| Operator::start_with_env(env(), Some(&ns.name), &[], &clock.vars());

    // Hourly in Berlin, ten minutes' grace; database-only sets (no Job to play).
    let first = TestClock::starting("2027-01-05T02:59:50Z", 1.0);
    policy(
        &client,
        &ns.name,
        "hourly",
        json!({
            "deploymentRef": {"name": name},
            "schedule": "0 * * * *",
            "timeZone": "Europe/Berlin",
            "startingDeadlineSeconds": 600,
            "documents": {"include": false},
        }),
    )
    .await;
    let operator = on(&first);
    let status = policy_when(&policies, "the next slot shown", |s| {
        s.next_schedule_time.is_some()
    })
    .await;
    assert_eq!(shows(&status.next_schedule_time), "2027-01-05T03:00:00Z");
    assert_eq!(status.last_schedule_time, None);
    // The slot comes: its set, named for it, taken with the policy's settings.
    let done = completed(&sets, "hourly-20270105-0300").await;
    assert_eq!(done.include_documents, Some(false));
    let set = sets.get("hourly-20270105-0300").await.unwrap();
    assert!(
        set.owner_references().is_empty(),
        "a set outlives its policy"
    );
    assert_eq!(
        set.annotations()["openemr.io/scheduled-for"],
        "2027-01-05T03:00:00Z"
    );
    let status = policy_when(&policies, "the policy records the success", |s| {
        s.last_successful_backup.is_some()
    })
    .await;
    assert_eq!(shows(&status.last_schedule_time), "2027-01-05T03:00:00Z");
    assert_eq!(shows(&status.next_schedule_time), "2027-01-05T04:00:00Z");
    assert_eq!(
        status.last_scheduled_backup.as_deref(),
        Some("hourly-20270105-0300")
    );
    assert_eq!((status.missed_runs, status.retained_sets), (0, Some(1)));
    let succeeded = support::condition(&policies, "hourly", "LastBackupSucceeded")
        .await
        .unwrap();
    assert_eq!(succeeded.status, "True");
    // An alert needs no cron: the next run and the last success are gauges.
    let labels = format!(
        "{{namespace=\"{}\",clinic=\"{name}\",policy=\"hourly\"}}",
        ns.name
    );
    let gauge = |metric: &str| format!("openemr_backup_{metric}{labels}");
    gauge_is(
        &operator,
        &gauge("next_run_timestamp_seconds"),
        1_799_121_600,
    )
    .await;
    gauge_is(
        &operator,
        &gauge("last_success_timestamp_seconds"),
        status.last_successful_time.as_ref().unwrap().0.as_second() as u64,
    )
    .await;
    let completed_sets = format!(
        "openemr_backup_sets{{namespace=\"{}\",clinic=\"{name}\",phase=\"Completed\"}}",
        ns.name
    );
    gauge_is(&operator, &completed_sets, 1).await;
    operator.terminate();

    // Down over 04:00; back 5 minutes later, within the deadline: that slot runs, once.
    let operator = on(&TestClock::starting("2027-01-05T04:05:00Z", 1.0));
    completed(&sets, "hourly-20270105-0400").await;
    policy_when(&policies, "the policy records the late run", |s| {
        s.last_successful_backup.as_deref() == Some("hourly-20270105-0400")
    })
    .await;
    // (Retention keeps one set a day: the 03:00 set may be on its way out.)
    only_sets_made_at(&sets, &["0300", "0400"]).await;
    operator.terminate();

    // Down until 08:30: 05:00 to 08:00 passed, the latest half an hour ago. No run; four
    // missed, said in an Event.
    let operator = on(&TestClock::starting("2027-01-05T08:30:00Z", 1.0));
    let status = policy_when(&policies, "the missed slots counted", |s| s.missed_runs > 0).await;
    assert_eq!(status.missed_runs, 4);
    let missed = format!(
        "openemr_backup_missed_runs{{namespace=\"{}\",clinic=\"{name}\",policy=\"hourly\"}}",
        ns.name
    );
    gauge_is(&operator, &missed, 4).await;
    assert_eq!(shows(&status.last_schedule_time), "2027-01-05T08:00:00Z");
    assert_eq!(shows(&status.next_schedule_time), "2027-01-05T09:00:00Z");
    let event = support::warning_event(&client, &ns.name, "hourly", "MissedSchedule").await;
    let note = event.note.unwrap_or_default();
    assert!(note.starts_with("4 slot(s) passed"), "{note}");

    // Suspended: no next slot; the slots passed meanwhile are nobody's loss.
    suspend(&policies, true).await;
    policy_when(&policies, "no next slot while suspended", |s| {
        s.next_schedule_time.is_none()
    })
    .await;
    operator.terminate();
    let operator = on(&TestClock::starting("2027-01-05T10:05:00Z", 1.0));
    let status = policy_when(&policies, "the suspended slots passed", |s| {
        shows(&s.last_schedule_time) == "2027-01-05T10:00:00Z"
    })
    .await;
    assert_eq!(status.missed_runs, 4);
    suspend(&policies, false).await;
    let status = policy_when(&policies, "the next slot after resuming", |s| {
        s.next_schedule_time.is_some()
    })
    .await;
    assert_eq!(shows(&status.next_schedule_time), "2027-01-05T11:00:00Z");
    assert_eq!(status.missed_runs, 4);
    assert_eq!(
        status.last_scheduled_backup.as_deref(),
        Some("hourly-20270105-0400"),
        "no run for a suspended slot"
    );
    only_sets_made_at(&sets, &["0300", "0400"]).await;
    operator.terminate();
}

/// A small tree standing in for `sites/`, in a fresh scratch directory of its own.
fn small_tree(tag: &str) -> std::path::PathBuf {
    let tree = std::env::temp_dir()
        .join(format!("oe-tree-{tag}-{}", std::process::id()))
        .join("sites");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("default/documents/1")).unwrap();
    std::fs::write(tree.join("default/documents/1/note.txt"), b"seen quietly").unwrap();
    tree
}

/// Deletes set `name`'s record asking for its data to go, plays its prune Jobs `jobs` in
/// turn, and waits for the record to be gone.
async fn delete_with_data(client: &kube::Client, ns: &str, name: &str, jobs: &[&str], tree: &Path) {
    let sets: Api<OpenEMRBackup> = Api::namespaced(client.clone(), ns);
    sets.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            json!({"metadata": {"annotations": {"openemr.io/delete-data": "true"}}}),
        ),
    )
    .await
    .unwrap();
    sets.delete(name, &Default::default()).await.unwrap();
    for job in jobs {
        play_job(client, ns, job, tree).await;
    }
    eventually(
        WAIT,
        &format!("the {name} record gone with its data"),
        || async { sets.get_opt(name).await.ok()?.is_none().then_some(()) },
    )
    .await;
}

/// A `Quiesced` set stops the clinic (a hold), takes both parts only once nothing runs, lets
/// the clinic go as soon as both are taken, and survives an operator killed for less than
/// the hold's lifetime; killed for longer, the clinic comes back and the set fails rather
/// than pass off a copy taken while the clinic ran.
#[tokio::test]
async fn a_quiesced_set_stops_the_clinic_only_while_both_parts_are_taken() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::coordination::v1::Lease;

    let name = "clinic-q";
    let (client, ns) = clinic_with_one_worker("quiesce", name).await;
    let args = [
        "--documents-image",
        "registry.example.org/openemr-operator:test",
        // Renewed every second (the progress interval); lapses 6 s after the last renewal.
        "--quiesce-hold-lifetime",
        "6s",
    ];
    let operator = ready_clinic(&client, &ns.name, name, &args).await;
    documents_account(&client, &ns.name).await;
    let sets: Api<OpenEMRBackup> = Api::namespaced(client.clone(), &ns.name);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let workers: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let replicas = || async {
        workers
            .get(&format!("{name}-openemr"))
            .await
            .ok()?
            .spec?
            .replicas
    };
    let take = |set: &'static str| {
        let (client, ns) = (client.clone(), ns.name.clone());
        async move {
            let spec = json!({"deploymentRef": {"name": name}, "consistency": "Quiesced"});
            take_set(&client, &ns, set, spec).await;
        }
    };

    take("quiet-1").await;
    eventually(WAIT, "the documents Job of quiet-1", || async {
        jobs.get_opt("quiet-1-documents").await.ok()?
    })
    .await;
    // Nothing was taken before nothing ran.
    assert_eq!(replicas().await, Some(0));
    let running = sets.get("quiet-1").await.unwrap().status.unwrap();
    let quiesce = running.quiesce.clone().unwrap();
    assert_eq!(quiesce.lease, "clinic-q-hold-backup-quiet-1");
    let effective = quiesce.effective_time.unwrap().0;
    assert!(quiesce.held_time.unwrap().0 <= effective);
    assert!(effective <= running.snapshot_requested_time.unwrap().0);
    let lease = leases.get(&quiesce.lease).await.unwrap();
    assert_eq!(
        lease.owner_references()[0].name,
        "quiet-1",
        "the hold goes with its set"
    );

    // Killed mid-set and back within the hold's lifetime: still stopped, the set goes on.
    drop(operator.kill());
    let operator = Operator::start_with(env(), Some(&ns.name), &args);
    play_job(
        &client,
        &ns.name,
        "quiet-1-documents",
        &small_tree("quiet-1"),
    )
    .await;
    let done = completed(&sets, "quiet-1").await;
    let quiesce = done.quiesce.clone().unwrap();
    let released = quiesce.released_time.clone().unwrap().0;
    assert!(done.documents_completion_time.unwrap().0 <= released);
    assert!(quiesce.down_seconds.unwrap() >= 1, "{quiesce:?}");
    let clinic_labels = format!("{{namespace=\"{}\",clinic=\"{name}\"}}", ns.name);
    gauge_is(
        &operator,
        &format!("openemr_backup_last_quiesce_seconds{clinic_labels}"),
        quiesce.down_seconds.unwrap() as u64,
    )
    .await;
    gauge_is(
        &operator,
        &format!("openemr_backup_last_documents_uploaded_files{clinic_labels}"),
        1,
    )
    .await;
    eventually(WAIT, "the workers back", || async {
        (replicas().await == Some(1)).then_some(())
    })
    .await;
    assert!(leases.get_opt(&quiesce.lease).await.unwrap().is_none());
    let bucket = done.documents.unwrap().bucket;
    let s3 = support::TestEnv::s3(&env().aws(Some(REGION)).await);
    let object = s3
        .get_object()
        .bucket(&bucket)
        .key("backups/quiet-1/manifest.json")
        .send()
        .await
        .unwrap();
    let manifest =
        SetManifest::from_bytes(&object.body.collect().await.unwrap().into_bytes()).unwrap();
    assert_eq!(manifest.consistency, "Quiesced");
    // Status times are whole seconds; the manifest keeps the instant.
    let in_manifest: k8s_openapi::jiff::Timestamp =
        manifest.quiesce.unwrap().released_at.parse().unwrap();
    assert_eq!(in_manifest.as_second(), released.as_second());

    // The kubelet runs the workers again: the clinic is Ready for the next set.
    eventually(WAIT, "the workers running", || async {
        (run_workers(&client, &ns.name, name).await >= 1).then_some(())
    })
    .await;
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    support::wait_for_reason(&clinics, name, "Ready", "Ready").await;

    // Killed and away past the hold's lifetime: back, the clinic runs again and the set
    // fails, naming why.
    take("quiet-2").await;
    eventually(WAIT, "the documents Job of quiet-2", || async {
        jobs.get_opt("quiet-2-documents").await.ok()?
    })
    .await;
    assert_eq!(replicas().await, Some(0));
    drop(operator.kill());
    tokio::time::sleep(Duration::from_secs(8)).await;
    let _operator = Operator::start_with(env(), Some(&ns.name), &args);
    let failed = support::wait_for_reason(&sets, "quiet-2", "Completed", "HoldLapsed").await;
    assert!(failed.message.contains("lapsed"), "{}", failed.message);
    eventually(WAIT, "the workers back after the lapse", || async {
        (replicas().await == Some(1)).then_some(())
    })
    .await;
    let status = sets.get("quiet-2").await.unwrap().status.unwrap();
    assert_eq!(status.phase, Some(BackupPhase::Failed));
    // Its copy could never complete it: the documents Job is stopped.
    eventually(WAIT, "the documents Job of the failed set gone", || async {
        jobs.get_opt("quiet-2-documents")
            .await
            .ok()?
            .is_none_or(|j| j.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;
    assert!(status.quiesce.unwrap().released_time.is_some());
    eventually(WAIT, "the lapsed hold deleted", || async {
        leases
            .get_opt("clinic-q-hold-backup-quiet-2")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}

/// The versions the mirror holds of `path` (under `sites/`).
async fn versions_of(s3: &aws_sdk_s3::Client, bucket: &str, path: &str) -> usize {
    let key = format!("documents/{path}");
    let listed = s3
        .list_object_versions()
        .bucket(bucket)
        .prefix(&key)
        .send()
        .await
        .unwrap();
    listed
        .versions()
        .iter()
        .filter(|v| v.key() == Some(key.as_str()))
        .count()
}

/// Whether any version of `key` is in the bucket.
async fn any_version(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> bool {
    let listed = s3
        .list_object_versions()
        .bucket(bucket)
        .prefix(key)
        .send()
        .await
        .unwrap();
    listed.versions().iter().any(|v| v.key() == Some(key))
        || listed.delete_markers().iter().any(|m| m.key() == Some(key))
}

/// A record is a view of its set: deleted without the request, its data stays; with
/// `openemr.io/delete-data: "true"`, its snapshot, the documents versions only it
/// references, its documents manifest and its set manifest go, and a version another set
/// needs stays.
#[tokio::test]
async fn deleting_a_record_deletes_its_data_only_when_asked_and_never_what_another_set_needs() {
    let name = "clinic-p";
    let (client, ns, _operator) = documents_clinic("prune", name, &[]).await;
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let d = clinics.get(name).await.unwrap();
    let bucket = d.status.clone().unwrap().bucket_name.unwrap();
    let sets: Api<OpenEMRBackup> = Api::namespaced(client.clone(), &ns.name);
    let aws = env().aws(Some(REGION)).await;
    let (s3, rds) = (support::TestEnv::s3(&aws), aws_sdk_rds::Client::new(&aws));
    let snapshot_exists = |set: &str| {
        let id = set::snapshot_identifier(&d.uid().unwrap(), set);
        let rds = rds.clone();
        async move {
            rds.describe_db_snapshots()
                .db_snapshot_identifier(id)
                .send()
                .await
                .is_ok_and(|o| !o.db_snapshots().is_empty())
        }
    };

    // Two sets; the second sees `note.txt` changed and `keep.txt` as it was.
    let tree = small_tree("prune");
    std::fs::write(tree.join("default/keep.txt"), b"the same in both").unwrap();
    for set in ["first", "second"] {
        take_set(
            &client,
            &ns.name,
            set,
            json!({"deploymentRef": {"name": name}}),
        )
        .await;
        play_job(&client, &ns.name, &format!("{set}-documents"), &tree).await;
        completed(&sets, set).await;
        std::fs::write(tree.join("default/documents/1/note.txt"), b"changed").unwrap();
    }
    assert_eq!(
        versions_of(&s3, &bucket, "default/documents/1/note.txt").await,
        2
    );
    assert_eq!(versions_of(&s3, &bucket, "default/keep.txt").await, 1);
    let finalizers = sets.get("first").await.unwrap().finalizers().to_vec();
    assert_eq!(finalizers, ["openemr.io/backup-data"]);

    // Deleted as a GitOps tool would: the record goes, the data stays.
    sets.delete("second", &Default::default()).await.unwrap();
    eventually(WAIT, "the second record gone", || async {
        sets.get_opt("second").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(snapshot_exists("second").await);
    assert!(any_version(&s3, &bucket, "backups/second/manifest.json").await);
    assert!(any_version(&s3, &bucket, "backups/documents/second.jsonl.gz").await);

    // Asked to, before the deletion: its data goes, step by step, the shared version stays.
    delete_with_data(&client, &ns.name, "first", &["first-prune"], &tree).await;
    assert!(!snapshot_exists("first").await, "its snapshot is deleted");
    assert!(!any_version(&s3, &bucket, "backups/first/manifest.json").await);
    assert!(!any_version(&s3, &bucket, "backups/documents/first.jsonl.gz").await);
    assert_eq!(
        versions_of(&s3, &bucket, "default/documents/1/note.txt").await,
        1,
        "the version only the first set had is gone"
    );
    assert_eq!(
        versions_of(&s3, &bucket, "default/keep.txt").await,
        1,
        "the version the second set needs stays"
    );
    assert!(snapshot_exists("second").await);
    // What stays restores whole.
    verify_documents(&bucket, "backups/documents/second.jsonl.gz");
    std::fs::remove_dir_all(tree.parent().unwrap()).ok();
}

/// Retention end to end on the operator's clock (40 minutes a second): two
/// database-only sets a day, `keepDaily: 2`. Once the second day's noon set is complete,
/// exactly the newest set of each of the two days is left, as records and in AWS: the
/// others were expired (their records deleted asking for their data to go) and their
/// snapshots and manifests are gone.
#[tokio::test]
async fn retention_leaves_exactly_the_sets_its_rules_keep_as_records_and_in_aws() {
    let name = "clinic-r";
    let (client, ns) = clinic_with_one_worker("retention", name).await;
    ready_clinic(&client, &ns.name, name, &[]).await.terminate();
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let d = clinics.get(name).await.unwrap();
    let bucket = d.status.clone().unwrap().bucket_name.unwrap();
    let sets: Api<OpenEMRBackup> = Api::namespaced(client.clone(), &ns.name);
    let clock = TestClock::starting("2027-01-04T23:00:00Z", 2400.0);
    policy(
        &client,
        &ns.name,
        "twice",
        json!({
            "deploymentRef": {"name": name},
            "schedule": "0 0,12 * * *",
            "timeZone": "UTC",
            // The operator's start-up takes hours on this clock.
            "startingDeadlineSeconds": 14400,
            "documents": {"include": false},
            "retention": {"keepDaily": 2, "keepWeekly": 0, "keepMonthly": 0},
        }),
    )
    .await;
    // A superseded set is judged again when the set superseding it completes, not at the
    // resync (ten minutes, longer than this test waits). A quiesce hold must outlive three
    // looks (a second each) on this clock.
    let _operator = Operator::start_with_env(
        env(),
        Some(&ns.name),
        &["--resync-interval", "10m", "--quiesce-hold-lifetime", "4h"],
        &clock.vars(),
    );
    // Some 38 hours of the clock: about a minute.
    eventually(Duration::from_secs(150), "the 6th's noon set", || async {
        let status = sets.get_opt("twice-20270106-1200").await.ok()??.status?;
        (status.phase == Some(BackupPhase::Completed)).then_some(())
    })
    .await;
    let kept = ["twice-20270105-1200", "twice-20270106-1200"];
    eventually(WAIT, "only the sets retention keeps", || async {
        (set_names(&sets).await == kept).then_some(())
    })
    .await;
    let expiry = |set: &'static str| {
        let sets = sets.clone();
        async move { sets.get(set).await.unwrap().status.unwrap().expires_at }
    };
    // Kept as the newest of the 5th until the 7th begins; the newest set has no expiry.
    assert_eq!(
        shows(&expiry("twice-20270105-1200").await),
        "2027-01-07T00:00:00Z"
    );
    assert_eq!(expiry("twice-20270106-1200").await, None);

    let aws = env().aws(Some(REGION)).await;
    let (s3, rds) = (support::TestEnv::s3(&aws), aws_sdk_rds::Client::new(&aws));
    for set in [
        "twice-20270105-0000",
        "twice-20270105-1200",
        "twice-20270106-0000",
        "twice-20270106-1200",
    ] {
        let id = set::snapshot_identifier(&d.uid().unwrap(), set);
        let snapshot = rds
            .describe_db_snapshots()
            .db_snapshot_identifier(id)
            .send()
            .await
            .is_ok_and(|o| !o.db_snapshots().is_empty());
        let manifest = any_version(&s3, &bucket, &format!("backups/{set}/manifest.json")).await;
        let is_kept = kept.contains(&set);
        assert_eq!((snapshot, manifest), (is_kept, is_kept), "{set}");
    }
}

/// The records lost, the sets are not: records deleted without asking for their data to go
/// come back from the bucket at the policy's first look after the operator starts, marked
/// as rebuilt, described by their manifests (never taken again), and restorable.
#[tokio::test]
async fn records_deleted_without_their_data_are_rebuilt_from_the_bucket() {
    let name = "clinic-b";
    let (client, ns, operator) = documents_clinic("rebuild", name, &[]).await;
    // A policy whose schedule is far away: its sets here are made by hand, naming it.
    policy(
        &client,
        &ns.name,
        "yearly",
        json!({"deploymentRef": {"name": name}, "schedule": "0 0 1 1 *"}),
    )
    .await;
    let sets: Api<OpenEMRBackup> = Api::namespaced(client.clone(), &ns.name);
    for (set, spec) in [
        (
            "of-policy",
            json!({"deploymentRef": {"name": name}, "policyRef": {"name": "yearly"}}),
        ),
        (
            "by-hand",
            json!({"deploymentRef": {"name": name}, "includeDocuments": false}),
        ),
    ] {
        take_set(&client, &ns.name, set, spec).await;
    }
    play_job(
        &client,
        &ns.name,
        "of-policy-documents",
        &small_tree("rebuild"),
    )
    .await;
    let before = [
        completed(&sets, "of-policy").await,
        completed(&sets, "by-hand").await,
    ];
    for set in ["of-policy", "by-hand"] {
        sets.delete(set, &Default::default()).await.unwrap();
    }
    eventually(WAIT, "the records gone", || async {
        set_names(&sets).await.is_empty().then_some(())
    })
    .await;
    operator.terminate();

    let _operator = Operator::start_with(env(), Some(&ns.name), &DOCUMENTS_IMAGE);
    for (set, was) in ["of-policy", "by-hand"].iter().zip(&before) {
        let back = completed(&sets, set).await;
        let record = sets.get(set).await.unwrap();
        assert_eq!(
            record.annotations()["openemr.io/rebuilt-from"],
            format!("{}", was.manifest.clone().unwrap()),
            "{set}"
        );
        let rebuilt = support::condition(&sets, set, "Completed").await.unwrap();
        assert_eq!(rebuilt.reason, "Rebuilt", "{set}");
        assert_eq!(
            back.database,
            was.database.clone().map(|mut d| {
                d.allocated_storage_gi_b = None;
                d
            }),
            "{set}"
        );
        assert_eq!(
            back.completion_time.map(|t| t.0.as_second()),
            was.completion_time.clone().map(|t| t.0.as_second()),
            "{set}"
        );
        assert_eq!(
            back.snapshot_requested_time.map(|t| t.0.as_second()),
            was.snapshot_requested_time.clone().map(|t| t.0.as_second()),
            "{set}"
        );
        assert_eq!(
            back.documents
                .as_ref()
                .map(|d| (&d.bucket, &d.manifest, d.file_count)),
            was.documents
                .as_ref()
                .map(|d| (&d.bucket, &d.manifest, d.file_count)),
            "{set}"
        );
    }
    assert_eq!(
        sets.get("of-policy")
            .await
            .unwrap()
            .spec
            .policy_ref
            .unwrap()
            .name,
        "yearly"
    );
    assert!(sets.get("by-hand").await.unwrap().spec.policy_ref.is_none());
    support::eventually(WAIT, "the rebuild said", || async {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(client.clone(), &ns.name);
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("SetRebuilt"))
            .then_some(())
    })
    .await;
    // The rebuilt set restores: its documents verify sound.
    let documents = before[0].documents.clone().unwrap();
    verify_documents(&documents.bucket, &documents.manifest);
}

/// RDS's manual-snapshot quota is the operator's to keep: with `--manual-snapshot-quota` at
/// no more than the region holds, a set fails at once, naming the count and the quota, and
/// asks nothing of RDS; the count is a metric beside the quota.
#[tokio::test]
async fn a_set_beyond_the_manual_snapshot_quota_fails_at_once_naming_the_count() {
    let name = "clinic-n";
    let (client, ns) = clinic_with_one_worker("quota", name).await;
    ready_clinic(&client, &ns.name, name, &[]).await.terminate();
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let d = clinics.get(name).await.unwrap();
    let instance = d.status.clone().unwrap().database.unwrap().identifier;
    // The region holds at least this manual snapshot (moto is shared: maybe others').
    let rds = aws_sdk_rds::Client::new(&env().aws(Some(REGION)).await);
    rds.create_db_snapshot()
        .db_instance_identifier(&instance)
        .db_snapshot_identifier(format!("by-hand-{}", std::process::id()))
        .send()
        .await
        .unwrap();
    let operator = Operator::start_with(env(), Some(&ns.name), &["--manual-snapshot-quota", "1"]);
    let sets: Api<OpenEMRBackup> = Api::namespaced(client.clone(), &ns.name);
    take_set(
        &client,
        &ns.name,
        "over",
        json!({"deploymentRef": {"name": name}, "includeDocuments": false}),
    )
    .await;
    let refused =
        support::wait_for_reason(&sets, "over", "Completed", "SnapshotQuotaExceeded").await;
    assert!(
        refused.message.contains("manual DB snapshots")
            && refused.message.contains("the quota is 1")
            && refused.message.contains(REGION),
        "{}",
        refused.message
    );
    let status = sets.get("over").await.unwrap().status.unwrap();
    assert_eq!(status.phase, Some(BackupPhase::Failed));
    assert!(
        status.snapshot_requested_time.is_none(),
        "nothing asked of RDS"
    );
    let asked = rds
        .describe_db_snapshots()
        .db_snapshot_identifier(set::snapshot_identifier(&d.uid().unwrap(), "over"))
        .send()
        .await;
    assert!(asked.is_err() || asked.unwrap().db_snapshots().is_empty());
    gauge_is(&operator, "openemr_rds_manual_snapshot_quota", 1).await;
    let (_, body) = operator.get("/metrics").await.unwrap();
    let counted: u64 = body
        .lines()
        .find(|l| l.starts_with("openemr_rds_manual_snapshots{") && l.contains(REGION))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_default();
    assert!(counted >= 1, "{body}");
}

/// SIGKILL at each step of a set and of its pruning: the snapshot asked for and still
/// `creating` (moto's answers rewritten), the documents Job made, the documents copied with
/// the snapshot still creating, then the prune Job under way. One snapshot request, one
/// documents pod, one set manifest; the set completes; the prune finishes.
#[tokio::test]
async fn a_set_and_its_pruning_survive_an_operator_killed_at_each_step() {
    use support::faults::Rule;
    let name = "clinic-k";
    let (client, ns, proxy, operator) = clinic_behind_proxy("kill", name).await;
    let start = || operator_behind(&proxy, &ns.name);
    let sets: Api<OpenEMRBackup> = Api::namespaced(client.clone(), &ns.name);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    // RDS keeps saying the set's snapshot is being made.
    proxy.set(
        "DescribeDBSnapshots",
        Rule::default().rewrite("<Status>available<", "<Status>creating<"),
    );
    take_set(
        &client,
        &ns.name,
        "k",
        json!({"deploymentRef": {"name": name}}),
    )
    .await;
    eventually(WAIT, "the snapshot asked for", || async {
        (proxy.counts("CreateDBSnapshot").answered >= 1).then_some(())
    })
    .await;
    drop(operator.kill());
    let operator = start();
    eventually(WAIT, "the documents Job", || async {
        jobs.get_opt("k-documents").await.ok()?
    })
    .await;
    drop(operator.kill());
    let operator = start();
    play_job(&client, &ns.name, "k-documents", &small_tree("kill")).await;
    eventually(WAIT, "the documents recorded", || async {
        let status = sets.get("k").await.ok()?.status?;
        status.documents_completion_time.map(|_| ())
    })
    .await;
    let running = sets.get("k").await.unwrap().status.unwrap();
    assert_eq!(
        running.phase,
        Some(BackupPhase::Running),
        "the snapshot is still creating"
    );
    drop(operator.kill());
    // RDS finishes the snapshot while the operator is away.
    proxy.clear("DescribeDBSnapshots");
    let operator = start();
    let done = completed(&sets, "k").await;
    assert_eq!(
        proxy.counts("CreateDBSnapshot").forwarded,
        1,
        "{}",
        proxy.report()
    );
    assert_eq!(
        pods(&client, &ns.name, "job-name=k-documents").await.len(),
        1
    );
    let bucket = done.documents.unwrap().bucket;
    let s3 = support::TestEnv::s3(&env().aws(Some(REGION)).await);
    let versions = s3
        .list_object_versions()
        .bucket(&bucket)
        .prefix("backups/k/manifest.json")
        .send()
        .await
        .unwrap();
    assert_eq!(versions.versions().len(), 1, "one set manifest");

    // Its data asked to go with it; killed with the prune Job under way.
    sets.patch(
        "k",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            json!({"metadata": {"annotations": {"openemr.io/delete-data": "true"}}}),
        ),
    )
    .await
    .unwrap();
    sets.delete("k", &Default::default()).await.unwrap();
    eventually(WAIT, "the prune Job", || async {
        jobs.get_opt("k-prune").await.ok()?
    })
    .await;
    drop(operator.kill());
    let _operator = start();
    play_job(&client, &ns.name, "k-prune", &small_tree("kill")).await;
    eventually(WAIT, "the record gone with its data", || async {
        sets.get_opt("k").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(!any_version(&s3, &bucket, "backups/k/manifest.json").await);
    assert!(!any_version(&s3, &bucket, "backups/documents/k.jsonl.gz").await);
    assert_eq!(
        proxy.counts("DeleteDBSnapshot").answered,
        1,
        "{}",
        proxy.report()
    );
}

/// A key and a versioned bucket in `region`, and a suspended policy `nightly` of clinic
/// `name` copying its sets there with them; returns that region's AWS configuration, the
/// key's ARN and the bucket's name.
async fn copying_policy(
    client: &kube::Client,
    ns: &str,
    name: &str,
    region: &str,
) -> (aws_config::SdkConfig, String, String) {
    let there = env().aws(Some(region)).await;
    let key = aws_sdk_kms::Client::new(&there)
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .arn()
        .unwrap()
        .to_string();
    let bucket = format!("{ns}-dr");
    support::versioned_bucket(&support::TestEnv::s3(&there), &bucket, region).await;
    policy(
        client,
        ns,
        "nightly",
        json!({
            "deploymentRef": {"name": name},
            "schedule": "@daily",
            "suspend": true,
            "crossRegionCopy": {"region": region, "kmsKeyArn": key, "bucketName": bucket},
        }),
    )
    .await;
    (there, key, bucket)
}

/// Cross-region copies: each completed set of a policy with `crossRegionCopy` is copied to
/// the other region (its snapshot there, re-encrypted with that region's key; its
/// documents in the bucket there, only what changed since the previous copy; the copy's own
/// manifest naming only that region's parts), restorable from there alone, and deleted
/// with the set.
#[tokio::test]
async fn a_sets_copy_in_another_region_is_whole_there_and_goes_with_the_set() {
    const DR: &str = "eu-central-1";
    let name = "clinic-x";
    let (client, ns, _operator) = documents_clinic("copy", name, &[]).await;
    let sets: Api<OpenEMRBackup> = Api::namespaced(client.clone(), &ns.name);
    let (there, dr_key, dr_bucket) = copying_policy(&client, &ns.name, name, DR).await;
    let (rds_there, s3) = (
        aws_sdk_rds::Client::new(&there),
        support::TestEnv::s3(&there),
    );
    let copied = |set: &'static str| {
        let sets = sets.clone();
        async move {
            eventually(WAIT, &format!("set {set} copied"), || async {
                let status = sets.get(set).await.ok()?.status?;
                let copy = status.copies.first()?.clone();
                assert_ne!(copy.phase, Some(CopyPhase::Failed), "{:?}", copy.message);
                (copy.phase == Some(CopyPhase::Completed)).then_some((status, copy))
            })
            .await
        }
    };

    let tree = small_tree("copy");
    std::fs::write(tree.join("default/keep.txt"), b"the same in both").unwrap();
    for set in ["first", "second"] {
        // Held: retention would otherwise expire the first, the same day's older set.
        let body = json!({
            "apiVersion": "openemr.io/v1alpha1",
            "kind": "OpenEMRBackup",
            "metadata": {"name": set, "labels": {"openemr.io/hold": "true"}},
            "spec": {"deploymentRef": {"name": name}, "policyRef": {"name": "nightly"}},
        });
        apply(&client, &ns.name, &body).await.unwrap();
        play_job(&client, &ns.name, &format!("{set}-documents"), &tree).await;
        completed(&sets, set).await;
        play_job(&client, &ns.name, &format!("{set}-copy"), &tree).await;
        std::fs::write(tree.join("default/documents/1/note.txt"), b"changed").unwrap();
    }
    let (first, first_copy) = copied("first").await;
    let (_, second_copy) = copied("second").await;
    let copied_files = |c: &openemr_operator::api::backup::RegionCopy| {
        c.documents.as_ref().unwrap().files_uploaded.unwrap()
    };
    assert_eq!(copied_files(&first_copy), 2, "{first_copy:?}");
    let second_job: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let second_args = second_job
        .get("second-copy")
        .await
        .ok()
        .and_then(|j| j.spec?.template.spec?.containers[0].args.clone());
    assert_eq!(
        copied_files(&second_copy),
        1,
        "only the changed file: {second_copy:?}, the Job's arguments {second_args:?}"
    );
    let copied_condition = support::condition(&sets, "second", "Copied").await.unwrap();
    assert_eq!(copied_condition.reason, "Copied");

    // The snapshot there: that region's, with that region's key, saying what it copies.
    let dr_id = first_copy.database.as_ref().unwrap().identifier.clone();
    assert_eq!(dr_id, first.database.as_ref().unwrap().identifier);
    let snapshot = rds_there
        .describe_db_snapshots()
        .db_snapshot_identifier(&dr_id)
        .send()
        .await
        .unwrap()
        .db_snapshots()[0]
        .clone();
    assert!(
        snapshot
            .db_snapshot_arn()
            .unwrap()
            .contains(&format!(":{DR}:"))
    );
    assert_eq!(snapshot.kms_key_id(), Some(dr_key.as_str()));
    let tags: std::collections::BTreeMap<_, _> = snapshot
        .tag_list()
        .iter()
        .map(|t| (t.key().unwrap(), t.value().unwrap()))
        .collect();
    assert_eq!(
        tags.get("openemr.io/copy-of").copied(),
        first.database.as_ref().unwrap().arn.as_deref()
    );

    // The copy's manifest there names only that region's parts, and its documents are whole
    // there, encrypted with that region's key.
    let body = s3
        .get_object()
        .bucket(&dr_bucket)
        .key("backups/first/manifest.json")
        .send()
        .await
        .unwrap();
    assert_eq!(body.ssekms_key_id(), Some(dr_key.as_str()));
    let manifest: serde_json::Value =
        serde_json::from_slice(&body.body.collect().await.unwrap().into_bytes()).unwrap();
    assert_eq!(manifest["database"]["region"], DR);
    assert_eq!(
        manifest["database"]["snapshotArn"],
        snapshot.db_snapshot_arn().unwrap()
    );
    assert_eq!(manifest["database"]["kmsKeyArn"], dr_key.as_str());
    assert_eq!(manifest["documents"]["bucket"], dr_bucket.as_str());
    assert_eq!(manifest["copyOf"]["region"], REGION);
    assert_eq!(
        first_copy.manifest.as_deref(),
        Some(format!("s3://{dr_bucket}/backups/first/manifest.json").as_str())
    );
    verify_documents(&dr_bucket, "backups/documents/first.jsonl.gz");
    verify_documents(&dr_bucket, "backups/documents/second.jsonl.gz");
    let head = s3
        .head_object()
        .bucket(&dr_bucket)
        .key("documents/default/keep.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(head.ssekms_key_id(), Some(dr_key.as_str()));

    // Deleted asking for its data: the copy goes first, there, then the set here; the
    // version the second set's copy needs stays there.
    let jobs = ["first-prune-copy", "first-prune"];
    delete_with_data(&client, &ns.name, "first", &jobs, &tree).await;
    let gone_there = rds_there
        .describe_db_snapshots()
        .db_snapshot_identifier(&dr_id)
        .send()
        .await
        .map_or(true, |o| o.db_snapshots().is_empty());
    assert!(gone_there, "the copied snapshot is deleted");
    for key in [
        "backups/first/manifest.json",
        "backups/documents/first.jsonl.gz",
    ] {
        assert!(!any_version(&s3, &dr_bucket, key).await, "{key} there");
    }
    assert!(any_version(&s3, &dr_bucket, "backups/second/manifest.json").await);
    verify_documents(&dr_bucket, "backups/documents/second.jsonl.gz");
    std::fs::remove_dir_all(tree.parent().unwrap()).ok();
}

/// A copy survives the operator killed at each of its steps (the copied snapshot asked for
/// and still `creating` there, through the proxy's rewrite; the copy Job created; the
/// copy's documents done while its snapshot is not): one `CopyDBSnapshot`, one copy Job
/// run, one copy manifest, and the copy completes.
#[tokio::test]
async fn a_copy_survives_an_operator_killed_at_each_step() {
    use support::faults::Rule;
    const DR: &str = "eu-central-1";
    let name = "clinic-kc";
    let (client, ns, proxy, operator) = clinic_behind_proxy("kill-copy", name).await;
    let start = || operator_behind(&proxy, &ns.name);
    let (there, dr_key, dr_bucket) = copying_policy(&client, &ns.name, name, DR).await;
    let sets: Api<OpenEMRBackup> = Api::namespaced(client.clone(), &ns.name);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    // RDS keeps saying the copy there is being made: only that region's snapshots are
    // encrypted with its key.
    proxy.set(
        "DescribeDBSnapshots",
        Rule::default().rewrite_pattern(
            &format!(
                "(?s)<Status>available</Status>(.*?<KmsKeyId>{}</KmsKeyId>)",
                regex::escape(&dr_key)
            ),
            "<Status>creating</Status>$1",
        ),
    );
    let tree = small_tree("kill-copy");
    take_set(
        &client,
        &ns.name,
        "k",
        json!({"deploymentRef": {"name": name}, "policyRef": {"name": "nightly"}}),
    )
    .await;
    play_job(&client, &ns.name, "k-documents", &tree).await;
    completed(&sets, "k").await;
    eventually(WAIT, "the copy asked for", || async {
        (proxy.counts("CopyDBSnapshot").answered >= 1).then_some(())
    })
    .await;
    drop(operator.kill());
    let operator = start();
    eventually(WAIT, "the copy Job", || async {
        jobs.get_opt("k-copy").await.ok()?
    })
    .await;
    drop(operator.kill());
    let operator = start();
    play_job(&client, &ns.name, "k-copy", &tree).await;
    eventually(WAIT, "the copy's documents recorded", || async {
        let status = sets.get("k").await.ok()?.status?;
        status.copies.first()?.documents.as_ref().map(|_| ())
    })
    .await;
    let copy = sets.get("k").await.unwrap().status.unwrap().copies[0].clone();
    assert_eq!(
        copy.phase,
        Some(CopyPhase::Copying),
        "the snapshot there is still creating: {copy:?}"
    );
    drop(operator.kill());
    // RDS finishes the copy while the operator is away.
    proxy.clear("DescribeDBSnapshots");
    let _operator = start();
    let copy = eventually(WAIT, "the copy completed", || async {
        let copy = sets.get("k").await.ok()?.status?.copies.first()?.clone();
        assert_ne!(copy.phase, Some(CopyPhase::Failed), "{:?}", copy.message);
        (copy.phase == Some(CopyPhase::Completed)).then_some(copy)
    })
    .await;
    assert_eq!(
        proxy.counts("CopyDBSnapshot").forwarded,
        1,
        "{}",
        proxy.report()
    );
    assert_eq!(pods(&client, &ns.name, "job-name=k-copy").await.len(), 1);
    let s3 = support::TestEnv::s3(&there);
    let manifests = s3
        .list_object_versions()
        .bucket(&dr_bucket)
        .prefix("backups/k/manifest.json")
        .send()
        .await
        .unwrap();
    assert_eq!(manifests.versions().len(), 1, "one copy manifest");
    assert_eq!(
        copy.manifest.as_deref(),
        Some(format!("s3://{dr_bucket}/backups/k/manifest.json").as_str())
    );
    verify_documents(&dr_bucket, "backups/documents/k.jsonl.gz");
    std::fs::remove_dir_all(tree.parent().unwrap()).ok();
}

/// The records lost with their namespace (the clinic with them, its `Retain` keeping its
/// AWS resources): the namespace and the clinic made again, adopting its database and
/// bucket, and its policy find every set again from the bucket, restorable (each snapshot
/// there, the documents sound).
#[tokio::test]
async fn sets_lost_with_their_namespace_come_back_to_the_clinic_made_again() {
    use k8s_openapi::api::core::v1::Namespace;
    let name = "clinic-l";
    let (client, ns, operator) = documents_clinic("lost", name, &[]).await;
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let status = clinics.get(name).await.unwrap().status.unwrap();
    let bucket = status.bucket_name.clone().unwrap();
    let db_id = status.database.clone().unwrap().identifier;
    let yearly = json!({"deploymentRef": {"name": name}, "schedule": "0 0 1 1 *"});
    policy(&client, &ns.name, "yearly", yearly.clone()).await;
    let sets: Api<OpenEMRBackup> = Api::namespaced(client.clone(), &ns.name);
    for (set, spec) in [
        (
            "of-policy",
            json!({"deploymentRef": {"name": name}, "policyRef": {"name": "yearly"}}),
        ),
        (
            "by-hand",
            json!({"deploymentRef": {"name": name}, "includeDocuments": false}),
        ),
    ] {
        take_set(&client, &ns.name, set, spec).await;
    }
    let tree = small_tree("lost");
    play_job(&client, &ns.name, "of-policy-documents", &tree).await;
    let before = [
        completed(&sets, "of-policy").await,
        completed(&sets, "by-hand").await,
    ];

    // The namespace goes, and everything in it.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&ns.name, &Default::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(180), "the namespace gone", || async {
        namespaces
            .get_opt(&ns.name)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    operator.terminate();

    // The namespace and the clinic made again (a clinic is known by its namespace and
    // name: one of the same names is a later incarnation of it), adopting what its
    // `Retain` kept.
    let again: Namespace = serde_json::from_value(json!({"metadata": {"name": ns.name}})).unwrap();
    namespaces
        .create(&Default::default(), &again)
        .await
        .unwrap();
    let again = &ns;
    let adopt = format!("  adopt: {{dbInstanceIdentifier: {db_id}, bucketName: {bucket}}}");
    apply(
        &client,
        &again.name,
        &support::clinic_manifest(name, REGION, &adopt),
    )
    .await
    .unwrap();
    policy(&client, &again.name, "yearly", yearly).await;
    let _operator = Operator::start_with(env(), Some(&again.name), &DOCUMENTS_IMAGE);
    let sets: Api<OpenEMRBackup> = Api::namespaced(client.clone(), &again.name);
    let rds = aws_sdk_rds::Client::new(&env().aws(Some(REGION)).await);
    for (set, was) in ["of-policy", "by-hand"].iter().zip(&before) {
        let back = completed(&sets, set).await;
        let rebuilt = support::condition(&sets, set, "Completed").await.unwrap();
        assert_eq!(rebuilt.reason, "Rebuilt", "{set}");
        let snapshot = back.database.clone().unwrap();
        assert_eq!(
            snapshot.identifier,
            was.database.as_ref().unwrap().identifier,
            "{set}"
        );
        let there = rds
            .describe_db_snapshots()
            .db_snapshot_identifier(&snapshot.identifier)
            .send()
            .await
            .unwrap();
        assert_eq!(there.db_snapshots()[0].status(), Some("available"), "{set}");
        assert_eq!(
            back.documents.as_ref().map(|d| &d.manifest),
            was.documents.as_ref().map(|d| &d.manifest),
            "{set}"
        );
    }
    let documents = before[0].documents.clone().unwrap();
    verify_documents(&documents.bucket, &documents.manifest);
    std::fs::remove_dir_all(tree.parent().unwrap()).ok();
}

/// Retention over weeks of the operator's clock (10,000 times as fast: a day in under 9 s):
/// a twice-daily database-only policy (3 daily, 2 weekly) makes 20 sets over ten days,
/// across two ISO weeks; once it is suspended,
/// the records and the snapshots in RDS are exactly the sets the planner keeps at that
/// moment, every other one expired with its data.
#[tokio::test]
async fn weeks_of_daily_sets_leave_exactly_what_retention_keeps() {
    use openemr_operator::controller::backup::retention;
    let name = "clinic-w";
    let (client, ns) = clinic_with_one_worker("weeks", name).await;
    ready_clinic(&client, &ns.name, name, &[]).await.terminate();
    let d: OpenEMRDeployment = Api::namespaced(client.clone(), &ns.name)
        .get(name)
        .await
        .unwrap();
    let sets: Api<OpenEMRBackup> = Api::namespaced(client.clone(), &ns.name);
    let clock = TestClock::starting("2027-01-04T23:00:00Z", 10000.0);
    let rules = json!({"keepDaily": 3, "keepWeekly": 2, "keepMonthly": 0});
    policy(
        &client,
        &ns.name,
        "daily",
        json!({
            "deploymentRef": {"name": name},
            "schedule": "0 0,12 * * *",
            "timeZone": "UTC",
            // The operator's start-up takes hours on this clock.
            "startingDeadlineSeconds": 21600,
            "documents": {"include": false},
            "retention": rules,
        }),
    )
    .await;
    let _operator = Operator::start_with_env(
        env(),
        Some(&ns.name),
        &["--resync-interval", "1s", "--quiesce-hold-lifetime", "24h"],
        &clock.vars(),
    );
    let last = "daily-20270114-1200";
    eventually(Duration::from_secs(240), "the 20th set", || async {
        let status = sets.get_opt(last).await.ok()??.status?;
        (status.phase == Some(BackupPhase::Completed)).then_some(())
    })
    .await;
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), &ns.name);
    policies
        .patch(
            "daily",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .unwrap();

    // Every set made, as the planner judges them now (each completed on its slot's day).
    let made: Vec<String> = (5..=14)
        .flat_map(|day| ["0000", "1200"].map(|at| format!("daily-202701{day:02}-{at}")))
        .collect();
    let rules: openemr_operator::api::backup_policy::Retention =
        serde_json::from_value(rules).unwrap();
    let rds = aws_sdk_rds::Client::new(&env().aws(Some(REGION)).await);
    let snapshots = |set: &str| set::snapshot_identifier(&d.uid().unwrap(), set);
    let last_seen = std::sync::Mutex::new(String::new());
    eventually(
        Duration::from_secs(60),
        "exactly what retention keeps",
        || async {
            let now = openemr_operator::clock::to_utc(clock.now());
            let candidates: Vec<retention::Candidate> = made
                .iter()
                .map(|set| retention::Candidate {
                    name: set.clone(),
                    completed: chrono::DateTime::parse_from_str(
                        &format!("{}+0000", &set[6..19]),
                        "%Y%m%d-%H%M%z",
                    )
                    .unwrap()
                    .to_utc()
                        + chrono::Duration::hours(1),
                    held: false,
                    in_use: false,
                })
                .collect();
            let plan = retention::plan(&candidates, &rules, chrono_tz::UTC, now);
            let kept: Vec<String> = plan.kept.keys().cloned().collect();
            let names = set_names(&sets).await;
            let seen = format!("records {names:?}, the planner keeps {kept:?}");
            if *last_seen.lock().unwrap() != seen {
                // Shown if the wait times out.
                println!("at {now}: {seen}");
                *last_seen.lock().unwrap() = seen;
            }
            if names != kept {
                return None;
            }
            let mut in_rds = Vec::new();
            for set in &made {
                let there = rds
                    .describe_db_snapshots()
                    .db_snapshot_identifier(snapshots(set))
                    .send()
                    .await
                    .is_ok_and(|o| !o.db_snapshots().is_empty());
                if there {
                    in_rds.push(set.clone());
                }
            }
            if in_rds != kept {
                println!("at {now}: in RDS {in_rds:?}");
            }
            (in_rds == kept && kept.len() >= 3).then_some(kept)
        },
    )
    .await;
    assert!(sets.get_opt("daily-20270105-0000").await.unwrap().is_none());
}
