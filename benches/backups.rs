//! The backup benchmark, on the local control plane + moto, one operator per phase:
//!
//! ```sh
//! cargo bench --bench backups                      # or: make bench-backups
//! cargo bench --bench backups -- --clinics 1000 --prune-clinics 100
//! ```
//!
//! 1. **One set, end to end**: a clinic with one worker on the documents benchmark's tree
//!    (`tests/support/content.rs::make_tree`, its defaults); a crash-consistent set, then a
//!    `Quiesced` one after 1 % of the files changed. For each: the time from the set's
//!    creation (it is due) to `Completed`, the operator's AWS calls, what the documents Job
//!    sent, and how long the clinic was down. The Job is played as the tests play it: its
//!    command run as a process against the tree.
//! 2. **N clinics due at the same minute**: N clinics (no workers) in two regions, created
//!    at once and brought to `Ready`; then one database-only policy each, all due at the
//!    same minute. The time from that minute until every set is `Completed`, RDS calls per
//!    set (its share of the snapshot listings included), throttled attempts, the
//!    operator's RSS.
//! 3. **A year of daily sets pruned**: P clinics, each with a year of daily database-only
//!    sets already in AWS (a snapshot and a set manifest each, as a former cluster left
//!    them); a policy per clinic rebuilds the records from the bucket and its retention
//!    (7 daily, 4 weekly, 12 monthly) expires the rest, data and all. Calls per expired set.
//!
//! The figures go to `bench/backups.json` (raw) and `bench/backups.md` (tables).
//! `cargo test --all-targets` runs this target too, without `--bench`: it then only says
//! how to run it and exits 0.

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{Api, ResourceExt};
use openemr_operator::api::backup::BackupPhase;
use openemr_operator::api::{OpenEMRBackup, OpenEMRDeployment};
use openemr_operator::controller::backup::{retention, set};
use serde_json::{Value, json};
use support::kubelet::{play_job, ready_clinic};
use support::operator::Operator;
use support::{TestEnv, TestNamespace, apply};

use common::*;

const USAGE: &str = "the backup benchmark runs only under `cargo bench`: \
    cargo bench --bench backups   (or `make bench-backups`)";

/// The regions the clinics of phase 2 are spread over (RDS's manual-snapshot quota, and
/// moto's, is per region).
const REGIONS: [&str; 2] = ["us-east-1", "us-west-2"];

const DOCUMENTS_IMAGE: &str = "registry.example.org/openemr-operator:bench";

#[derive(Parser, Debug)]
#[command(
    name = "backups",
    about = "backup sets on the local control plane + moto: one set end to end, N due together, a year pruned"
)]
struct Args {
    /// Clinics whose sets fall due at the same minute (phase 2; 0 skips it).
    #[arg(long, default_value_t = 1000)]
    clinics: usize,
    /// Clinics with a year of daily sets to prune (phase 3; 0 skips it).
    #[arg(long, default_value_t = 10)]
    prune_clinics: usize,
    /// Days of daily sets each of those clinics has.
    #[arg(long, default_value_t = 365)]
    prune_days: i64,
    /// Small files of the tree of phase 1 (the documents benchmark's default; 0 skips
    /// the phase).
    #[arg(long, default_value_t = 5000)]
    files: usize,
    /// Large files of that tree.
    #[arg(long, default_value_t = 6)]
    large: usize,
    /// Server-side applies in flight while clinics, policies and records are made.
    #[arg(long, default_value_t = 32)]
    apply_concurrency: usize,
    /// Where the results go (default: bench/ in the repository).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Extra argument for `openemr-operator run` (repeat it).
    #[arg(long = "operator-arg", allow_hyphen_values = true)]
    operator_args: Vec<String>,
    /// Only render `backups.md` again from a `backups.json` of an earlier run (beside it).
    #[arg(long, value_name = "JSON")]
    render: Option<PathBuf>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = Args::parse();
    if let Some(json) = &args.render {
        let rendered = std::fs::read_to_string(json)
            .map_err(anyhow::Error::from)
            .and_then(|text| Ok(serde_json::from_str::<Value>(&text)?))
            .and_then(|results| {
                let markdown = report(&results);
                std::fs::write(json.with_extension("md"), &markdown)?;
                println!("{markdown}");
                Ok(())
            });
        return match rendered {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("backups: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // moto refuses a region's 1,001st snapshot unless told otherwise; phase 3 holds more.
    // Read by the moto this process starts (an environment already running keeps its own).
    if std::env::var_os("MOTO_RDS_SNAPSHOT_LIMIT").is_none() {
        // SAFETY: set before any thread of this process starts.
        unsafe { std::env::set_var("MOTO_RDS_SNAPSHOT_LIMIT", "1000000") };
    }
    eprintln!("backups: starting the environment (control plane + moto)");
    let env = support::env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(env, args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backups: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(env: &'static TestEnv, args: Args) -> anyhow::Result<()> {
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(support::REPO).join("bench"));
    std::fs::create_dir_all(&out_dir)?;
    let mut results = json!({
        "machine": machine(),
        "args": {
            "clinics": args.clinics, "prune_clinics": args.prune_clinics,
            "prune_days": args.prune_days, "files": args.files, "large": args.large,
            "operator_args": args.operator_args,
        },
    });
    let partial = out_dir.join("backups.partial.json");
    if args.files > 0 {
        eprintln!("backups: phase 1, one set end to end");
        results["one_set"] = one_set(env, &args).await?;
        std::fs::write(&partial, serde_json::to_string_pretty(&results)?)?;
    }
    if args.clinics > 0 {
        eprintln!("backups: phase 2, {} clinics due at once", args.clinics);
        results["due_together"] = due_together(env, &args).await?;
        std::fs::write(&partial, serde_json::to_string_pretty(&results)?)?;
    }
    if args.prune_clinics > 0 {
        eprintln!(
            "backups: phase 3, {} days of sets pruned for {} clinics",
            args.prune_days, args.prune_clinics
        );
        results["prune_year"] = prune_year(env, &args).await?;
    }
    std::fs::write(
        out_dir.join("backups.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    let markdown = report(&results);
    std::fs::write(out_dir.join("backups.md"), &markdown)?;
    let _ = std::fs::remove_file(&partial);
    println!("{markdown}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Shared steps
// ---------------------------------------------------------------------------------------

fn operator_args<'a>(args: &'a Args, own: &[&'a str]) -> Vec<&'a str> {
    let mut all: Vec<&str> = own.to_vec();
    all.extend(args.operator_args.iter().map(String::as_str));
    all
}

fn ours(kind: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "openemr.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    })
}

async fn wait_all_ready(clinics: &Api<OpenEMRDeployment>, n: usize, timeout: Duration) -> f64 {
    let started = Instant::now();
    loop {
        if count_ready(clinics).await == Some(n) {
            return secs(started.elapsed());
        }
        assert!(
            started.elapsed() < timeout,
            "{n} clinics not Ready within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The sets of `sets`' namespace by phase.
async fn phases(sets: &Api<OpenEMRBackup>) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    if let Ok(list) = sets.list(&Default::default()).await {
        for s in list.items {
            let phase = s
                .status
                .and_then(|s| s.phase)
                .map_or("none".to_string(), |p| format!("{p:?}"));
            *by.entry(phase).or_insert(0) += 1;
        }
    }
    by
}

/// The calls of `m` by service and operation, outcomes summed.
fn calls_by_operation(m: &Metrics) -> BTreeMap<String, u64> {
    m.by(CALLS, &["service", "operation"])
        .into_iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(k, v)| (format!("{} {}", k[0], k[1]), v.round() as u64))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Phase 1
// ---------------------------------------------------------------------------------------

async fn one_set(env: &'static TestEnv, args: &Args) -> anyhow::Result<Value> {
    let client = env.admin().await;
    let ns = TestNamespace::new(env, "bench-set").await;
    let name = "clinic-b";
    let mut clinic = support::clinic_manifest(name, REGIONS[1], "");
    clinic["spec"]["web"] = json!({"replicas": 1});
    apply(&client, &ns.name, &clinic).await?;
    let own = ["--documents-image", DOCUMENTS_IMAGE];
    let operator = ready_clinic(&client, &ns.name, name, &operator_args(args, &own)).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    accounts
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "openemr-documents"}}))?,
        )
        .await?;
    let tree = std::env::temp_dir()
        .join(format!("oe-bench-backups-{}", std::process::id()))
        .join("sites");
    let (files, bytes) = support::content::make_tree(&tree, args.files, args.large);
    let sets: Api<OpenEMRBackup> = Api::namespaced(client.clone(), &ns.name);
    let mut out = Vec::new();
    for (set, consistency) in [("crash", "CrashConsistent"), ("quiet", "Quiesced")] {
        if set == "quiet" {
            // 1 % of the small files changed since the first set.
            for n in (0..args.files).step_by(100) {
                let patient = n / 20;
                let category = ["lab", "imaging", "consent", "referral"][n % 4];
                let path = tree.join(format!(
                    "default/documents/{patient}/{category}/doc-{n}.pdf"
                ));
                std::fs::write(path, support::content::content(7_000_000 + n as u64, 4096))?;
            }
        }
        let before = Metrics::of(&operator).await;
        let started = Instant::now();
        let spec = json!({"deploymentRef": {"name": name}, "consistency": consistency});
        apply(&client, &ns.name, &ours("OpenEMRBackup", set, spec)).await?;
        play_job(&client, &ns.name, &format!("{set}-documents"), &tree).await;
        let status = loop {
            let status = sets.get(set).await?.status.unwrap_or_default();
            match status.phase {
                Some(BackupPhase::Completed) => break status,
                Some(BackupPhase::Failed) => {
                    anyhow::bail!("set {set} failed: {:?}", status.message)
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let seconds = secs(started.elapsed());
        let m = Metrics::of(&operator).await.since(&before);
        let documents = status.documents.clone().unwrap_or_default();
        let job_seconds = match (
            &status.documents_start_time,
            &status.documents_completion_time,
        ) {
            (Some(a), Some(b)) => (b.0.as_millisecond() - a.0.as_millisecond()) as f64 / 1000.0,
            _ => f64::NAN,
        };
        out.push(json!({
            "set": set,
            "consistency": consistency,
            "seconds_to_completed": seconds,
            "documents_job_seconds": job_seconds,
            "files": documents.file_count,
            "bytes": documents.size_bytes,
            "files_uploaded": documents.files_uploaded,
            "bytes_uploaded": documents.bytes_uploaded,
            "quiesce_down_seconds": status.quiesce.as_ref().and_then(|q| q.down_seconds),
            "operator_calls": calls_by_operation(&m),
            "figures": phase_figures(&m, "openemrbackup"),
        }));
    }
    let memory = memory_json(operator.pid());
    operator.terminate();
    std::fs::remove_dir_all(tree.parent().unwrap()).ok();
    Ok(json!({"tree": {"files": files, "bytes": bytes}, "sets": out, "operator_memory": memory}))
}

// ---------------------------------------------------------------------------------------
// Phase 2
// ---------------------------------------------------------------------------------------

async fn due_together(env: &'static TestEnv, args: &Args) -> anyhow::Result<Value> {
    let n = args.clinics;
    let client = env.admin().await;
    let ns = TestNamespace::new(env, "bench-due").await;
    let name = |i: usize| format!("clinic-{i:05}");
    let clinic_docs = (1..=n)
        .map(|i| support::clinic_manifest(&name(i), REGIONS[i % REGIONS.len()], ""))
        .collect();
    let created = Instant::now();
    apply_all(&client, &ns.name, clinic_docs, args.apply_concurrency).await;
    let apply_seconds = secs(created.elapsed());
    let quota = (n / REGIONS.len() + 100).to_string();
    let own = [
        "--manual-snapshot-quota",
        quota.as_str(),
        "--cloudformation-requests-per-second=50",
        "--cloudformation-burst=50",
    ];
    let own_args = operator_args(args, &own);
    let operator = Operator::start_with(env, Some(&ns.name), &own_args);
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let ready_seconds = wait_all_ready(&clinics, n, Duration::from_secs(600 + 3 * n as u64)).await;

    // Every policy due at the same minute, at least 45 s from now (the policies are made
    // meanwhile, and the operator has looked at each before the minute).
    let now = chrono::Utc::now();
    let due_at_secs = (now.timestamp() + 45).div_euclid(60) * 60 + 60;
    let due_at = chrono::DateTime::from_timestamp(due_at_secs, 0).context("the due minute")?;
    let schedule = format!("{} {} * * *", due_at.format("%M"), due_at.format("%H"));
    let policies = (1..=n)
        .map(|i| {
            ours(
                "BackupPolicy",
                &format!("{}-daily", name(i)),
                json!({
                    "deploymentRef": {"name": name(i)},
                    "schedule": schedule,
                    "timeZone": "UTC",
                    "startingDeadlineSeconds": 3600,
                    "documents": {"include": false},
                }),
            )
        })
        .collect();
    apply_all(&client, &ns.name, policies, args.apply_concurrency).await;
    let until_due = (due_at - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(until_due.saturating_sub(Duration::from_secs(2))).await;
    let before = Metrics::of(&operator).await;
    let sets: Api<OpenEMRBackup> = Api::namespaced(client.clone(), &ns.name);
    let mut timeline = Vec::new();
    let mut made_timeline = Vec::new();
    let limit = Duration::from_secs(600 + 2 * n as u64);
    let all = loop {
        let by = phases(&sets).await;
        let since_due = (chrono::Utc::now() - due_at).num_milliseconds() as f64 / 1000.0;
        let completed = by.get("Completed").copied().unwrap_or(0);
        let made: usize = by.values().sum();
        timeline.push((since_due, completed));
        made_timeline.push((since_due, made));
        if let Some(failed) = by.get("Failed") {
            anyhow::bail!("{failed} sets failed: {by:?}");
        }
        if completed == n {
            break since_due;
        }
        anyhow::ensure!(
            since_due < limit.as_secs_f64(),
            "not every set Completed within {limit:?}: {by:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let m = Metrics::of(&operator).await.since(&before);
    let memory = memory_json(operator.pid());
    let rds = m.sum(CALLS, &[("service", "rds")]);
    let rds_for_sets = m.sum(
        CALLS,
        &[("service", "rds"), ("operation", "CreateDBSnapshot")],
    ) + m.sum(
        CALLS,
        &[("service", "rds"), ("operation", "DescribeDBSnapshots")],
    );
    let moto_memory = moto_pid().map_or(Value::Null, memory_json);
    operator.terminate();
    Ok(json!({
        "clinics": n,
        "regions": REGIONS,
        "clinics_apply_seconds": apply_seconds,
        "clinics_ready_seconds": ready_seconds,
        "due_at": due_at.to_rfc3339(),
        "seconds_until_all_completed": all,
        "sets_made": milestones(&made_timeline, n),
        "sets_completed": milestones(&timeline, n),
        "rds_calls_per_set": rds / n as f64,
        "rds_snapshot_calls_per_set": rds_for_sets / n as f64,
        "operator_calls": calls_by_operation(&m),
        "figures": phase_figures(&m, "openemrbackup"),
        "operator_memory": memory,
        "moto_memory": moto_memory,
        "operator_args": own_args,
    }))
}

// ---------------------------------------------------------------------------------------
// Phase 3
// ---------------------------------------------------------------------------------------

async fn prune_year(env: &'static TestEnv, args: &Args) -> anyhow::Result<Value> {
    let p = args.prune_clinics;
    let days = args.prune_days;
    let region = REGIONS[0];
    let client = env.admin().await;
    let ns = TestNamespace::new(env, "bench-prune").await;
    let name = |i: usize| format!("clinic-{i:03}");
    let docs = (1..=p)
        .map(|i| support::clinic_manifest(&name(i), region, ""))
        .collect();
    apply_all(&client, &ns.name, docs, args.apply_concurrency).await;
    let quota = (p as i64 * days + 100).to_string();
    let own = ["--manual-snapshot-quota", quota.as_str()];
    let own_args = operator_args(args, &own);
    let operator = Operator::start_with(env, Some(&ns.name), &own_args);
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    wait_all_ready(&clinics, p, Duration::from_secs(600 + 3 * p as u64)).await;

    // A year of daily sets per clinic, as a former cluster left them: the snapshot and the
    // set manifest, database-only, made at 03:00 UTC each day up to yesterday.
    let aws = env.aws(Some(region)).await;
    let (rds, s3) = (aws_sdk_rds::Client::new(&aws), TestEnv::s3(&aws));
    let today = chrono::Utc::now().date_naive();
    let mut candidates: BTreeMap<String, Vec<retention::Candidate>> = BTreeMap::new();
    let mut work = Vec::new();
    let mut seeded_ids = std::collections::BTreeSet::new();
    for d in clinics.list(&Default::default()).await?.items {
        let status = d.status.clone().context("a clinic's status")?;
        let instance = status
            .database
            .clone()
            .context("a clinic's database")?
            .identifier;
        let bucket = status.bucket_name.clone().context("a clinic's bucket")?;
        for back in 1..=days {
            let day = today - chrono::Duration::days(back);
            let at = day.and_hms_opt(3, 0, 0).unwrap().and_utc();
            let set = set::scheduled_set_name(&format!("{}-daily", d.name_any()), at);
            candidates
                .entry(d.name_any())
                .or_default()
                .push(retention::Candidate {
                    name: set.clone(),
                    completed: at + chrono::Duration::minutes(5),
                    held: false,
                    in_use: false,
                });
            seeded_ids.insert(set::snapshot_identifier(&d.uid().unwrap_or_default(), &set));
            work.push((d.clone(), instance.clone(), bucket.clone(), set, at));
        }
    }
    let seeded = Instant::now();
    futures::stream::iter(work)
        .map(|(d, instance, bucket, set, at)| {
            let (rds, s3) = (rds.clone(), s3.clone());
            async move {
                let uid = d.uid().unwrap_or_default();
                let identifier = set::snapshot_identifier(&uid, &set);
                let made = rds
                    .create_db_snapshot()
                    .db_instance_identifier(&instance)
                    .db_snapshot_identifier(&identifier)
                    .send()
                    .await?;
                let arn = made
                    .db_snapshot()
                    .and_then(|s| s.db_snapshot_arn())
                    .map(str::to_string);
                let time = |m: i64| (at + chrono::Duration::minutes(m)).to_rfc3339();
                let manifest = set::SetManifest {
                    format: set::FORMAT.into(),
                    version: set::VERSION,
                    set: set.clone(),
                    clinic: set::ClinicIdentity {
                        cluster: "former".into(),
                        namespace: d.namespace().unwrap_or_default(),
                        name: d.name_any(),
                        uid,
                    },
                    policy: Some(format!("{}-daily", d.name_any())),
                    consistency: "CrashConsistent".into(),
                    database: set::DatabasePart {
                        region: region.into(),
                        instance_identifier: instance,
                        snapshot_identifier: identifier,
                        snapshot_arn: arn,
                        engine_version: None,
                        kms_key_arn: None,
                        requested_at: time(0),
                    },
                    documents: None,
                    quiesce: None,
                    image: None,
                    clinic_spec: json!({}),
                    completed_at: time(5),
                    operator_version: "former".into(),
                    copy_of: None,
                };
                s3.put_object()
                    .bucket(&bucket)
                    .key(set::set_manifest_key(&set))
                    .body(manifest.to_bytes().into())
                    .send()
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.apply_concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    let seed_seconds = secs(seeded.elapsed());

    // What retention keeps, by the planner the operator runs.
    let rules: openemr_operator::api::backup_policy::Retention = serde_json::from_value(
        json!({"keepDaily": 7, "keepWeekly": 4, "keepMonthly": 12, "keepYearly": 0}),
    )?;
    let now = chrono::Utc::now();
    let kept: usize = candidates
        .values()
        .map(|c| retention::plan(c, &rules, chrono_tz::UTC, now).kept.len())
        .sum();
    let total = p * days as usize;
    let expired = total - kept;

    let before = Metrics::of(&operator).await;
    let started = Instant::now();
    let policies = (1..=p)
        .map(|i| {
            ours(
                "BackupPolicy",
                &format!("{}-daily", name(i)),
                json!({
                    "deploymentRef": {"name": name(i)},
                    "schedule": "0 3 * * *",
                    "timeZone": "UTC",
                    "suspend": true,
                    "documents": {"include": false},
                    "retention": {"keepDaily": 7, "keepWeekly": 4, "keepMonthly": 12, "keepYearly": 0},
                }),
            )
        })
        .collect();
    apply_all(&client, &ns.name, policies, args.apply_concurrency).await;
    let sets: Api<OpenEMRBackup> = Api::namespaced(client.clone(), &ns.name);
    let limit = Duration::from_secs(900 + total as u64);
    // Done once the records have been rebuilt (more than retention keeps were seen: the
    // first expire before the last are made, so the peak need not reach every set) and
    // records and snapshots are what the planner keeps.
    // Looks are spaced with the number of sets: moto answers a snapshot listing with every
    // snapshot at once (it ignores paging), so a look at tens of thousands is itself load.
    let pause = Duration::from_millis((total as u64 / 4).clamp(1000, 15_000));
    let mut peak_records = 0;
    let mut rebuilt_seconds = None;
    loop {
        let records = sets
            .list_metadata(&Default::default())
            .await
            .map_or(usize::MAX, |l| l.items.len());
        if records != usize::MAX && records > peak_records {
            peak_records = records;
            rebuilt_seconds = Some(secs(started.elapsed()));
        }
        // Snapshots are counted only once the records say pruning is done.
        let snapshots = if peak_records > kept && records == kept {
            manual_snapshots(&rds, &seeded_ids).await
        } else {
            usize::MAX
        };
        if snapshots == kept {
            break;
        }
        if started.elapsed() >= limit {
            let by = phases(&sets).await;
            anyhow::bail!(
                "not pruned within {limit:?}: {records} records ({by:?}), {snapshots} snapshots, {kept} kept"
            );
        }
        tokio::time::sleep(pause).await;
    }
    let seconds = secs(started.elapsed());
    let m = Metrics::of(&operator).await.since(&before);
    let memory = memory_json(operator.pid());
    operator.terminate();
    let calls = calls_by_operation(&m);
    let per_expired: BTreeMap<String, f64> = calls
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (*v as f64 / expired as f64 * 1000.0).round() / 1000.0,
            )
        })
        .collect();
    Ok(json!({
        "clinics": p,
        "days": days,
        "sets": total,
        "kept": kept,
        "expired": expired,
        "seed_seconds": seed_seconds,
        "peak_records": peak_records,
        "seconds_to_peak_records": rebuilt_seconds,
        "seconds_until_pruned": seconds,
        "aws_calls_per_expired_set": m.sum(CALLS, &[]) / expired as f64,
        "calls": calls,
        "calls_per_expired_set": per_expired,
        "figures": phase_figures(&m, "openemrbackup"),
        "operator_memory": memory,
        "operator_args": own_args,
    }))
}

/// Manual snapshots in the account and region of `rds` among `ids`.
async fn manual_snapshots(
    rds: &aws_sdk_rds::Client,
    ids: &std::collections::BTreeSet<String>,
) -> usize {
    let mut count = 0;
    let mut marker = None;
    loop {
        let Ok(page) = rds
            .describe_db_snapshots()
            .snapshot_type("manual")
            .max_records(100)
            .set_marker(marker)
            .send()
            .await
        else {
            return usize::MAX;
        };
        count += page
            .db_snapshots()
            .iter()
            .filter(|s| {
                s.db_snapshot_identifier()
                    .is_some_and(|id| ids.contains(id))
            })
            .count();
        marker = page.marker().map(str::to_string);
        if marker.is_none() {
            return count;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 => format!("{f:.0}"),
        Some(f) => format!("{f:.3}"),
        None => "n/a".into(),
    }
}

fn mb(memory: &Value, field: &str) -> String {
    memory[field]
        .as_f64()
        .map_or("n/a".into(), |kib| format!("{:.1} MB", kib * 1024.0 / 1e6))
}

fn report(r: &Value) -> String {
    let m = &r["machine"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Backup sets: one end to end, many due at once, a year pruned\n"
    );
    let _ = writeln!(
        out,
        "Rerun: `make bench-backups` (`cargo bench --bench backups -- --clinics {} --prune-clinics {}`); raw figures in `bench/backups.json`.\n",
        r["args"]["clinics"], r["args"]["prune_clinics"]
    );
    let _ = writeln!(
        out,
        "Machine: {} cores ({}), {} GiB, kernel {}; {}; commit {}{}; operator built {}; moto {}.\n",
        m["nproc"],
        m["cpu"].as_str().unwrap_or_default(),
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or_default(),
        m["date"].as_str().unwrap_or_default(),
        m["git_commit"].as_str().unwrap_or_default(),
        if m["src_modified_since_commit"] == true {
            " (with uncommitted changes)"
        } else {
            ""
        },
        m["operator_profile"].as_str().unwrap_or_default(),
        m["moto"].as_str().unwrap_or_default(),
    );
    let one = &r["one_set"];
    if one.is_object() {
        let _ = writeln!(out, "## One set, end to end\n");
        let _ = writeln!(
            out,
            "The documents benchmark's tree: {} files, {} bytes, on a clinic with one worker (us-west-2). The set is created (due) and the kubelet is played for its documents Job (its command run as a process against the tree); the clock stops when the set is `Completed`. The second set is taken after 1 % of the small files changed.\n",
            one["tree"]["files"], one["tree"]["bytes"]
        );
        let _ = writeln!(
            out,
            "| set | consistency | due → Completed (s) | documents Job (s, whole seconds as the status records them) | files sent | bytes sent | clinic down (s) | operator AWS calls | of them RDS |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for s in one["sets"].as_array().into_iter().flatten() {
            let rds: u64 = s["operator_calls"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.starts_with("rds "))
                .map(|(_, v)| v.as_u64().unwrap_or(0))
                .sum();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s["set"].as_str().unwrap_or_default(),
                s["consistency"].as_str().unwrap_or_default(),
                num(&s["seconds_to_completed"]),
                num(&s["documents_job_seconds"]),
                num(&s["files_uploaded"]),
                num(&s["bytes_uploaded"]),
                if s["quiesce_down_seconds"].is_null() {
                    "—".to_string()
                } else {
                    num(&s["quiesce_down_seconds"])
                },
                num(&s["figures"]["aws_calls_total"]),
                rds,
            );
        }
        let _ = writeln!(
            out,
            "\nOperator calls by operation (the documents Job's own S3 requests are the documents benchmark's):\n"
        );
        for s in one["sets"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "- {}: {}",
                s["set"].as_str().unwrap_or_default(),
                s["operator_calls"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k} × {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let _ = writeln!(out);
    }
    let due = &r["due_together"];
    if due.is_object() {
        let _ = writeln!(
            out,
            "## {} clinics due at the same minute\n",
            due["clinics"]
        );
        let _ = writeln!(
            out,
            "{} clinics without workers, half in us-east-1 and half in us-west-2, created at once ({} s of applies) and Ready after {} s; then one database-only policy each, all due at {}. Operator: `{}`.\n",
            due["clinics"],
            num(&due["clinics_apply_seconds"]),
            num(&due["clinics_ready_seconds"]),
            due["due_at"].as_str().unwrap_or_default(),
            due["operator_args"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        );
        let _ = writeln!(out, "| | figure | goal |\n|---|---|---|");
        let _ = writeln!(
            out,
            "| due → every set `Completed` | {} s (half at {} s, 90 % at {} s) | |",
            num(&due["seconds_until_all_completed"]),
            num(&due["sets_completed"]["p50"]),
            num(&due["sets_completed"]["p90"])
        );
        let _ = writeln!(
            out,
            "| due → every set made | {} s | |",
            num(&due["sets_made"]["all"])
        );
        let _ = writeln!(
            out,
            "| RDS calls per set (snapshot requests and listings) | {} | ≤ 3 |",
            num(&due["rds_snapshot_calls_per_set"])
        );
        let _ = writeln!(
            out,
            "| RDS calls per set (all, the clinics' own inventory included) | {} | |",
            num(&due["rds_calls_per_set"])
        );
        let _ = writeln!(
            out,
            "| throttled attempts | {} | 0 |",
            num(&due["figures"]["aws_throttled_attempts"])
        );
        let _ = writeln!(
            out,
            "| budget waits | {} s in total | |",
            num(&due["figures"]["budget_wait_seconds_total"])
        );
        let _ = writeln!(
            out,
            "| operator RSS after the sets | {} (peak since start {}) | |",
            mb(&due["operator_memory"], "rss_kib"),
            mb(&due["operator_memory"], "peak_rss_kib"),
        );
        let _ = writeln!(
            out,
            "| set controller: status writes, Events | {}, {} | |",
            num(&due["figures"]["status_writes"]),
            num(&due["figures"]["events"])
        );
        let _ = writeln!(
            out,
            "\nCalls in the window, by operation (every controller):\n"
        );
        let _ = writeln!(out, "| operation | calls | per set |\n|---|---:|---:|");
        let n = due["clinics"].as_f64().unwrap_or(1.0);
        for (k, v) in due["operator_calls"].as_object().into_iter().flatten() {
            let v = v.as_f64().unwrap_or(0.0);
            let _ = writeln!(out, "| {k} | {v:.0} | {:.3} |", v / n);
        }
        let _ = writeln!(out);
    }
    // The phase as run with the rest, and a rerun of it alone with more clinics (merged in).
    for prune in [&r["prune_year"], &r["prune_many_clinics"]] {
        prune_section(&mut out, prune);
    }
    out
}

fn prune_section(out: &mut String, prune: &Value) {
    if prune.is_object() {
        let _ = writeln!(
            out,
            "## Daily sets pruned: {} clinics × {} days\n",
            prune["clinics"], prune["days"]
        );
        let _ = writeln!(
            out,
            "{} database-only sets (a snapshot and a set manifest each) left in AWS by a former cluster ({} s to make); a policy per clinic (7 daily, 4 weekly, 12 monthly) rebuilds the records from the buckets (at most {} records at once, {} s after the policies were applied: the first expire before the last are made) and expires {} of them, data and all; {} stay. Done (records and snapshots as the planner says) {} s after the policies were applied.\n",
            prune["sets"],
            num(&prune["seed_seconds"]),
            num(&prune["peak_records"]),
            num(&prune["seconds_to_peak_records"]),
            prune["expired"],
            prune["kept"],
            num(&prune["seconds_until_pruned"])
        );
        // A phase rerun on its own and merged into an earlier run's figures says when.
        let own = &prune["machine"];
        if own.is_object() {
            let _ = writeln!(
                out,
                "This phase was run on its own (`--clinics 0 --files 0 --prune-clinics {} --prune-days {}`): {}, commit {}{}, operator built {}.\n",
                prune["clinics"],
                prune["days"],
                own["date"].as_str().unwrap_or_default(),
                own["git_commit"].as_str().unwrap_or_default(),
                if own["src_modified_since_commit"] == true {
                    " (with uncommitted changes)"
                } else {
                    ""
                },
                own["operator_profile"].as_str().unwrap_or_default(),
            );
        }
        if let Some(args) = prune["operator_args"].as_array() {
            let args: Vec<&str> = args.iter().filter_map(Value::as_str).collect();
            let _ = writeln!(out, "Operator: `{}`.\n", args.join(" "));
        }
        if let Some(note) = prune["note"].as_str() {
            let _ = writeln!(out, "{note}\n");
        }
        let _ = writeln!(
            out,
            "AWS calls per expired set, rebuild included: **{}**.\n",
            num(&prune["aws_calls_per_expired_set"])
        );
        let _ = writeln!(
            out,
            "| operation | calls | per expired set |\n|---|---:|---:|"
        );
        for (k, v) in prune["calls"].as_object().into_iter().flatten() {
            let _ = writeln!(
                out,
                "| {k} | {} | {} |",
                num(v),
                num(&prune["calls_per_expired_set"][k])
            );
        }
        let _ = writeln!(
            out,
            "\nOperator RSS at the end: {} (peak {}).\n",
            mb(&prune["operator_memory"], "rss_kib"),
            mb(&prune["operator_memory"], "peak_rss_kib")
        );
    }
}
