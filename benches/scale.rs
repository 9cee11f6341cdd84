//! The scale benchmark: N clinics on the local control plane + moto, one operator.
//!
//! ```sh
//! cargo bench --bench scale -- --clinics 100     # or: make bench CLINICS=100
//! cargo bench --bench scale -- --clinics 1000
//! cargo bench --bench scale -- --clinics 10000 --timeout 4h
//! ```
//!
//! Phases, each measured from the operator's own `/metrics` and `/proc/<pid>/status`:
//! a baseline (the operator with no clinic), the cold start (N clinics created at once,
//! then one operator started; time until every clinic is `Ready=True` (their web tier stopped: `replicas: 0`)),
//! steady state (K inventory intervals at a short interval, scaled to calls per clinic per
//! hour), drift (one database changed in moto behind the operator's back; time until it is
//! put back) and a restart (SIGTERM, a new process; time until every clinic is reconciled
//! again and still Ready). The figures go to `bench/scale-<N>.json` (raw) and
//! `bench/scale-<N>.md` (tables, beside ACK's rds-controller measured on the same moto),
//! and the markdown is printed.
//!
//! `cargo test --all-targets` runs this target too, without `--bench`: it then only says
//! how to run it and exits 0.

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use common::*;
use kube::Api;
use openemr_operator::api::OpenEMRDeployment;
use serde_json::{Value, json};
use support::operator::Operator;
use support::{TestEnv, TestNamespace, documents};

const USAGE: &str = "the scale benchmark runs only under `cargo bench`: \
    cargo bench --bench scale -- --clinics 100   (or `make bench CLINICS=100`)";

/// The peer, measured on this kind of machine against the same moto: ACK's rds-controller
/// built from its sources, 1,000 DB instances.
const ACK: &str = "ACK rds-controller (1,000 DB instances, same moto, this kind of machine)";

#[derive(Parser, Debug)]
#[command(
    name = "scale",
    about = "N clinics on the local control plane + moto: cold start, steady state, drift, restart"
)]
struct Args {
    /// Clinics to create (all at once, before the operator starts).
    #[arg(long, default_value_t = 100)]
    clinics: usize,
    /// The operator's `--inventory-interval` (short, so that several fit the steady window).
    #[arg(long, default_value = "20s", value_parser = duration)]
    inventory_interval: Duration,
    /// The operator's `--resync-interval` (short, so that every clinic resyncs in the window).
    #[arg(long, default_value = "60s", value_parser = duration)]
    resync_interval: Duration,
    /// Length of the steady-state window, in inventory intervals (default: the inventory's
    /// stack cycle, as it lists stacks only every so many refreshes, so that the window
    /// holds whole cycles).
    #[arg(long, default_value_t = openemr_operator::aws::inventory::STACK_REFRESH_INTERVALS)]
    steady_intervals: u32,
    /// Server-side applies in flight while the clinics are created.
    #[arg(long, default_value_t = 32)]
    apply_concurrency: usize,
    /// How often the clinics are listed while waiting for them.
    #[arg(long, default_value = "1s", value_parser = duration)]
    poll_interval: Duration,
    /// Longest wait for the cold start and for the restart (default: 10 min + 3 s per clinic).
    #[arg(long, value_parser = duration)]
    timeout: Option<Duration>,
    /// Where the results go (default: bench/ in the repository).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Extra argument for `openemr-operator run` (repeat it), e.g. `--operator-arg=--rds-burst=20`.
    #[arg(long = "operator-arg", allow_hyphen_values = true)]
    operator_args: Vec<String>,
    /// Only render `scale-<N>.md` again from a `scale-<N>.json` of an earlier run.
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
        return match render(json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("scale: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.clinics == 0 {
        eprintln!("--clinics must be at least 1");
        return ExitCode::FAILURE;
    }
    // Starts (or finds) the environment before the runtime: it blocks while it builds.
    eprintln!("scale: starting the environment (control plane + moto)");
    let env = support::env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(env, args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clinics
// ---------------------------------------------------------------------------------------

fn clinic_name(i: usize) -> String {
    format!("clinic-{i:05}")
}

/// The smallest clinic: the cluster's network, defaults for everything else.
fn clinic(name: &str) -> Value {
    let network = support::env().cluster_network(REGION);
    documents(&format!(
        "
apiVersion: openemr.io/v1alpha1
kind: OpenEMRDeployment
metadata: {{name: {name}}}
spec:
  aws: {{region: {REGION}}}
  network: {network}
  web: {{replicas: 0}}
"
    ))
    .remove(0)
}

const REGION: &str = "us-east-1";

/// Creates clinic-00001 … clinic-N with `concurrency` server-side applies in flight.
async fn create_clinics(client: &kube::Client, ns: &str, n: usize, concurrency: usize) {
    let docs = (1..=n).map(|i| clinic(&clinic_name(i))).collect();
    apply_all(client, ns, docs, concurrency).await;
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

async fn run(env: &'static TestEnv, args: Args) -> anyhow::Result<()> {
    let n = args.clinics;
    let timeout = args
        .timeout
        .unwrap_or(Duration::from_secs(600 + 3 * n as u64));
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new(support::REPO).join("bench"));
    // Taken first: the tree may change while the benchmark runs.
    let machine = machine();
    let has_inventory = operator_knows(env, "--inventory-interval");
    let mut flags = vec!["--resync-interval".to_string(), flag(args.resync_interval)];
    if has_inventory {
        flags.extend([
            "--inventory-interval".to_string(),
            flag(args.inventory_interval),
        ]);
    } else {
        eprintln!("scale: this operator has no --inventory-interval; running without it");
    }
    flags.extend(args.operator_args.iter().cloned());
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();

    let client = env.admin().await;
    let ns = TestNamespace::new(env, "scale").await;
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);

    // Baseline: the operator with nothing to do.
    eprintln!("scale: baseline (no clinics)");
    let baseline = {
        let operator = Operator::start_with(env, Some(&ns.name), &flag_refs);
        operator.wait_for("/readyz", 200).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let memory = memory_json(operator.pid());
        operator.terminate();
        memory
    };

    // The clinics, all at once.
    eprintln!("scale: creating {n} clinics in {}", ns.name);
    let started = Instant::now();
    create_clinics(&client, &ns.name, n, args.apply_concurrency).await;
    let create_seconds = secs(started.elapsed());

    // Cold start.
    eprintln!("scale: cold start");
    let started = Instant::now();
    let operator = Operator::start_with(env, Some(&ns.name), &flag_refs);
    let pid = operator.pid();
    let mut timeline = vec![(0.0, 0)];
    let mut readyz = None;
    loop {
        if readyz.is_none() && matches!(operator.get("/readyz").await, Some((200, _))) {
            readyz = Some(secs(started.elapsed()));
        }
        if let Some(ready) = count_ready(&clinics).await {
            if timeline.last().is_none_or(|(_, r)| *r != ready) {
                timeline.push((secs(started.elapsed()), ready));
                eprintln!(
                    "scale:   {:>7.1} s  {ready}/{n} Ready",
                    started.elapsed().as_secs_f64()
                );
            }
            if ready == n {
                break;
            }
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "cold start: not every clinic Ready within {timeout:?}; operator log:\n{}",
            tail(&operator.log(), 40)
        );
        tokio::time::sleep(args.poll_interval).await;
    }
    let cold_seconds = secs(started.elapsed());
    let cold_metrics = Metrics::of(&operator).await;
    let cold_memory = memory_json(pid);
    let moto_memory = moto_pid().map(memory_json).unwrap_or(Value::Null);

    // Steady state: let what is in flight settle for one interval, then a window of K.
    let interval = args.inventory_interval;
    eprintln!("scale: settling for {interval:?}");
    tokio::time::sleep(interval).await;
    let window = interval * args.steady_intervals;
    eprintln!("scale: steady state for {window:?}");
    let before = Metrics::of(&operator).await;
    let window_start = Instant::now();
    tokio::time::sleep(window).await;
    let after = Metrics::of(&operator).await;
    let window_seconds = window_start.elapsed().as_secs_f64();
    let steady = after.since(&before);
    let steady_ready = count_ready(&clinics).await.unwrap_or(0);

    // Drift: one database changed in moto behind the operator's back.
    eprintln!("scale: drift");
    let drifted = clinic_name(n.div_ceil(2));
    let identifier = clinics
        .get(&drifted)
        .await?
        .status
        .and_then(|s| s.database)
        .map(|d| d.identifier)
        .ok_or_else(|| anyhow::anyhow!("{drifted} has no status.database"))?;
    let rds = aws_sdk_rds::Client::new(&env.aws(Some(REGION)).await);
    let retention = |rds: aws_sdk_rds::Client, id: String| async move {
        rds.describe_db_instances()
            .db_instance_identifier(id)
            .send()
            .await
            .ok()?
            .db_instances()
            .first()?
            .backup_retention_period()
    };
    let wanted = retention(rds.clone(), identifier.clone())
        .await
        .ok_or_else(|| anyhow::anyhow!("{identifier} not in moto"))?;
    let drifted_to = if wanted > 1 { 1 } else { 2 };
    let before_drift = Metrics::of(&operator).await;
    rds.modify_db_instance()
        .db_instance_identifier(&identifier)
        .backup_retention_period(drifted_to)
        .apply_immediately(true)
        .send()
        .await?;
    let drift_start = Instant::now();
    let drift_limit = interval * 3 + Duration::from_secs(60);
    let drift_seconds = loop {
        if retention(rds.clone(), identifier.clone()).await == Some(wanted) {
            break Some(secs(drift_start.elapsed()));
        }
        if drift_start.elapsed() > drift_limit {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let drift = Metrics::of(&operator).await.since(&before_drift);
    let first_memory = memory_json(pid);
    let first_total = Metrics::of(&operator).await;
    let (status, _) = operator.terminate_with_log();
    eprintln!("scale: the first operator exited with {status}");

    // Restart: every clinic re-confirmed by a fresh process.
    eprintln!("scale: restart");
    let started = Instant::now();
    let operator = Operator::start_with(env, Some(&ns.name), &flag_refs);
    let pid = operator.pid();
    let ok = [CLINIC, ("result", "ok")];
    let restart_seconds = loop {
        let m = Metrics::of(&operator).await;
        if m.sum(RECONCILES, &ok) >= n as f64 && count_ready(&clinics).await == Some(n) {
            break secs(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "restart: not every clinic reconciled within {timeout:?}; operator log:\n{}",
            tail(&operator.log(), 40)
        );
        tokio::time::sleep(args.poll_interval).await;
    };
    let restart = Metrics::of(&operator).await;
    let restart_memory = memory_json(pid);
    operator.terminate();

    let results = json!({
        "clinics": n,
        "machine": machine,
        "settings": {
            "inventory_interval_seconds": secs(interval),
            "inventory_flag_supported": has_inventory,
            "resync_interval_seconds": secs(args.resync_interval),
            "steady_intervals": args.steady_intervals,
            "operator_args": flags,
            "budgets": "defaults unless operator_args say otherwise",
            // Set by the test harness's Operator (moto finishes everything at once).
            "progress_interval_seconds": 1,
            "clinic": format!("aws.region {REGION}, network.existing (one VPC in moto), web.replicas 0 (the web tier stopped: no kubelet here)"),
        },
        "baseline": {"memory": baseline},
        "create_seconds": create_seconds,
        "cold_start": {
            "seconds_to_all_ready": cold_seconds,
            "seconds_to_readyz": readyz,
            "ready_milestones_seconds": milestones(&timeline, n),
            "timeline": timeline.iter().map(|(t, r)| json!([t, r])).collect::<Vec<_>>(),
            "figures": phase_figures(&cold_metrics, CLINIC.1),
            "memory": cold_memory,
            "moto_memory": moto_memory,
        },
        "steady_state": {
            "window_seconds": (window_seconds * 1000.0).round() / 1000.0,
            "inventory_intervals": args.steady_intervals,
            "ready_at_end": steady_ready,
            "figures": phase_figures(&steady, CLINIC.1),
        },
        "drift": {
            "clinic": drifted,
            "db_instance": identifier,
            "backup_retention": {"wanted": wanted, "drifted_to": drifted_to},
            "seconds_to_corrected": drift_seconds,
            "figures": phase_figures(&drift, CLINIC.1),
        },
        "first_operator": {
            "exit": status.code(),
            "memory": first_memory,
            "figures": phase_figures(&first_total, CLINIC.1),
        },
        "restart": {
            "seconds_to_all_reconciled": restart_seconds,
            "figures": phase_figures(&restart, CLINIC.1),
            "memory": restart_memory,
        },
    });
    let markdown = report(&results);
    std::fs::create_dir_all(&out_dir)?;
    let json_path = out_dir.join(format!("scale-{n}.json"));
    let md_path = out_dir.join(format!("scale-{n}.md"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)? + "\n")?;
    std::fs::write(&md_path, &markdown)?;
    println!("{markdown}");
    eprintln!(
        "scale: wrote {} and {}",
        json_path.display(),
        md_path.display()
    );
    Ok(())
}

/// Writes the markdown of an earlier run's JSON beside it, and prints it.
fn render(json: &Path) -> anyhow::Result<()> {
    let results: Value = serde_json::from_str(&std::fs::read_to_string(json)?)?;
    let markdown = report(&results);
    std::fs::write(json.with_extension("md"), &markdown)?;
    println!("{markdown}");
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0) + 0.0
}

fn mib(kib: &Value) -> String {
    match kib.as_f64() {
        Some(k) => format!("{:.1} MB", k / 1024.0),
        None => "n/a".into(),
    }
}

/// A number with at most `digits` decimals, trailing zeros dropped.
fn num(v: f64, digits: usize) -> String {
    let v = v + 0.0;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Calls of one phase by (service, operation), all outcomes together.
fn calls_by_operation(figures: &Value) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for c in figures["aws_calls"].as_array().into_iter().flatten() {
        let key = (
            c["service"].as_str().unwrap_or_default().to_string(),
            c["operation"].as_str().unwrap_or_default().to_string(),
        );
        *out.entry(key).or_insert(0.0) += f(&c["calls"]);
    }
    out
}

fn report(r: &Value) -> String {
    let n = f(&r["clinics"]);
    let nu = n as usize;
    let m = &r["machine"];
    let s = &r["settings"];
    let interval = f(&s["inventory_interval_seconds"]);
    let cold = &r["cold_start"];
    let steady = &r["steady_state"];
    let window = f(&steady["window_seconds"]);
    let drift = &r["drift"];
    let restart = &r["restart"];
    let per_hour = |calls: f64| calls / n * 3600.0 / window;
    // The inventory at its default interval (5 min) instead of the bench's short one.
    let at_default = |calls: f64| per_hour(calls) * interval / 300.0;

    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Scale: {nu} clinics, one operator, local control plane + moto\n"
    );
    let _ = writeln!(
        o,
        "Rerun: `cargo bench --bench scale -- --clinics {nu}` (or `make bench CLINICS={nu}`); \
         raw figures in `bench/scale-{nu}.json`.\n"
    );
    let _ = writeln!(
        o,
        "Machine: {} cores ({}), {} GiB, kernel {}; {}; commit {}{}; operator built {}; moto {}.  ",
        m["nproc"],
        m["cpu"].as_str().unwrap_or("?"),
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or("?"),
        m["date"].as_str().unwrap_or("?"),
        m["git_commit"].as_str().unwrap_or("?"),
        if m["src_modified_since_commit"].as_bool() == Some(true) {
            " + uncommitted src/ changes"
        } else {
            ""
        },
        m["operator_profile"].as_str().unwrap_or("?"),
        m["moto"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        o,
        "Operator: `{}` (default AWS budgets otherwise: RDS 10/s burst 5, CloudFormation 2/s \
         burst 5; progress interval 1 s, as the tests run it). Clinics: `{}`, created at once ({} s for the {nu} server-side applies) \
         before the operator starts.\n",
        s["operator_args"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "))
            .unwrap_or_default(),
        s["clinic"].as_str().unwrap_or_default(),
        r["create_seconds"],
    );

    // Summary beside the peer.
    let cold_f = &cold["figures"];
    let steady_f = &steady["figures"];
    let restart_f = &restart["figures"];
    let cold_calls = f(&cold_f["aws_calls_total"]);
    let rds_cold: f64 = calls_by_operation(cold_f)
        .iter()
        .filter(|((svc, _), _)| svc == "rds")
        .map(|(_, v)| v)
        .sum();
    let steady_calls = f(&steady_f["aws_calls_total"]);
    let restart_calls = f(&restart_f["aws_calls_total"]);
    let restart_rds: f64 = calls_by_operation(restart_f)
        .iter()
        .filter(|((svc, _), _)| svc == "rds")
        .map(|(_, v)| v)
        .sum();
    let base = &r["baseline"]["memory"]["rss_kib"];
    let peak_first = &r["first_operator"]["memory"]["peak_rss_kib"];
    let per_clinic_kib = match (peak_first.as_f64(), base.as_f64()) {
        (Some(p), Some(b)) => format!("{:.1} KB", (p - b) / n),
        _ => "n/a".into(),
    };
    let drift_s = drift["seconds_to_corrected"]
        .as_f64()
        .map_or("not corrected".to_string(), |d| format!("{} s", num(d, 1)));

    let _ = writeln!(o, "## Summary, beside the peer\n");
    let _ = writeln!(o, "| | this operator, {nu} clinics | {ACK} | target |");
    let _ = writeln!(o, "|---|---|---|---|");
    let _ = writeln!(
        o,
        "| cold start: all Ready (web tier stopped) | {} s (half at {} s, 90% at {} s) | 81 s to synced | |",
        num(f(&cold["seconds_to_all_ready"]), 1),
        num(f(&cold["ready_milestones_seconds"]["p50"]), 1),
        num(f(&cold["ready_milestones_seconds"]["p90"]), 1),
    );
    let _ = writeln!(
        o,
        "| cold start: AWS calls per clinic | {} (RDS {}; the rest CloudFormation, whose stack ACK does not make) | 10 (1 create, 5 describes, 4 tag listings), RDS only | |",
        num(cold_calls / n, 2),
        num(rds_cold / n, 2),
    );
    let _ = writeln!(
        o,
        "| cold start: throttled attempts; budget wait | {}; {} s in total | | no throttling storm |",
        f(&cold_f["aws_throttled_attempts"]),
        num(f(&cold_f["budget_wait_seconds_total"]), 1),
    );
    let _ = writeln!(
        o,
        "| steady state: AWS reads per clinic per hour | {} measured at a {} s inventory / {} s resync ({} calls per inventory refresh); {} at the default 5 min inventory | 0.4 (4 per instance per 10 h resync) | ≤ 0.2 |",
        num(per_hour(steady_calls), 3),
        num(interval, 0),
        num(f(&s["resync_interval_seconds"]), 0),
        num(steady_calls * interval / window, 1),
        num(at_default(steady_calls), 3),
    );
    let _ = writeln!(
        o,
        "| steady state: mutating calls | {} | | 0 |",
        f(&steady_f["aws_mutating_calls"])
    );
    let _ = writeln!(
        o,
        "| steady state: status writes | {} | | |",
        f(&steady_f["status_writes"])
    );
    let _ = writeln!(
        o,
        "| drift seen and corrected | {drift_s} (inventory interval {} s; default 5 min) | every 10 h by default | within 5 min |",
        num(interval, 0)
    );
    let _ = writeln!(
        o,
        "| restart: every clinic re-confirmed | {} s, {} AWS calls ({} RDS = {} per 100 clinics) | 4 calls per instance (4,000) | ~1 RDS call per 100 clinics |",
        num(f(&restart["seconds_to_all_reconciled"]), 1),
        restart_calls,
        restart_rds,
        num(restart_rds / n * 100.0, 2),
    );
    let _ = writeln!(
        o,
        "| peak RSS | {} (baseline {}; (peak − baseline) ÷ clinics = {per_clinic_kib}) | 89 MB (~65 MB base + 25 KB per instance) | |",
        mib(peak_first),
        mib(base),
    );
    let _ = writeln!(
        o,
        "| RSS after the restart | {} (peak {}) | | |\n",
        mib(&restart["memory"]["rss_kib"]),
        mib(&restart["memory"]["peak_rss_kib"]),
    );

    // Calls by operation, per phase.
    let phases = [
        ("cold start", cold_f),
        ("steady window", steady_f),
        ("drift", &drift["figures"]),
        ("restart", restart_f),
    ];
    let tables: Vec<BTreeMap<(String, String), f64>> =
        phases.iter().map(|(_, p)| calls_by_operation(p)).collect();
    let mut ops: Vec<&(String, String)> = tables.iter().flat_map(|t| t.keys()).collect();
    ops.sort();
    ops.dedup();
    let _ = writeln!(o, "## AWS calls by service and operation\n");
    let _ = writeln!(
        o,
        "Steady state: a {} s window ({} inventory intervals of {} s, resync {} s), scaled to \
         calls per clinic per hour: calls ÷ {nu} clinics × 3600 ÷ {} s; the last column \
         assumes every steady-state call comes from the inventory and scales it to the \
         default 5 min interval (right when the window holds whole inventory cycles: \
         stacks are listed every few refreshes, `STACK_REFRESH_INTERVALS`). Outcomes other than success are listed below the table.\n",
        num(window, 1),
        steady["inventory_intervals"],
        num(interval, 0),
        num(f(&s["resync_interval_seconds"]), 0),
        num(window, 1),
    );
    let _ = writeln!(
        o,
        "| service | operation | cold start | per clinic | steady window | per clinic per hour | … at 5 min inventory | drift | restart |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for op in &ops {
        let get = |i: usize| tables[i].get(*op).copied().unwrap_or(0.0);
        let _ = writeln!(
            o,
            "| {} | {}{} | {} | {} | {} | {} | {} | {} | {} |",
            op.0,
            op.1,
            if mutating(&op.1) { " ✎" } else { "" },
            get(0),
            num(get(0) / n, 3),
            get(1),
            num(per_hour(get(1)), 3),
            num(at_default(get(1)), 3),
            get(2),
            get(3),
        );
    }
    let _ = writeln!(
        o,
        "| **all** | | **{}** | **{}** | **{}** | **{}** | **{}** | **{}** | **{}** |\n",
        cold_calls,
        num(cold_calls / n, 3),
        steady_calls,
        num(per_hour(steady_calls), 3),
        num(at_default(steady_calls), 3),
        f(&drift["figures"]["aws_calls_total"]),
        restart_calls,
    );
    let _ = writeln!(o, "✎ mutating (not Describe*/List*/Get*).\n");
    for (name, p) in phases {
        let odd: Vec<String> = p["aws_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["outcome"] != "success")
            .map(|c| {
                format!(
                    "{} {} {} × {}",
                    c["service"].as_str().unwrap_or(""),
                    c["operation"].as_str().unwrap_or(""),
                    c["outcome"].as_str().unwrap_or(""),
                    num(f(&c["calls"]), 0)
                )
            })
            .collect();
        if !odd.is_empty() {
            let _ = writeln!(o, "- {name}, not success: {}", odd.join("; "));
        }
    }

    // The rest of each phase.
    let _ = writeln!(o, "\n## Per phase\n");
    let _ = writeln!(
        o,
        "| phase | seconds | AWS calls | attempts | throttled attempts | budget waits (s) | reconciles (ok / failed) | status writes | Events | operator RSS | peak RSS |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|");
    let budget = |p: &Value| {
        let b = p["budget"].as_object().cloned().unwrap_or_default();
        if b.is_empty() {
            return "none".to_string();
        }
        b.iter()
            .map(|(svc, v)| {
                format!(
                    "{svc} {} ({})",
                    num(f(&v["wait_seconds"]), 1),
                    num(f(&v["waits"]), 0)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let reconciles = |p: &Value| {
        let r = p["reconciles"].as_object().cloned().unwrap_or_default();
        let ok = r.get("ok").map(f).unwrap_or(0.0);
        let failed: Vec<String> = r
            .iter()
            .filter(|(k, v)| *k != "ok" && f(v) > 0.0)
            .map(|(k, v)| format!("{k} {}", num(f(v), 0)))
            .collect();
        if failed.is_empty() {
            format!("{} / 0", num(ok, 0))
        } else {
            format!("{} / {}", num(ok, 0), failed.join(", "))
        }
    };
    let row = |o: &mut String, name: &str, seconds: &Value, p: &Value, mem: &Value| {
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            seconds.as_f64().map_or("—".into(), |v| num(v, 1)),
            f(&p["aws_calls_total"]),
            f(&p["aws_attempts_total"]),
            f(&p["aws_throttled_attempts"]),
            budget(p),
            reconciles(p),
            f(&p["status_writes"]),
            f(&p["events"]),
            mib(&mem["rss_kib"]),
            mib(&mem["peak_rss_kib"]),
        );
    };
    row(
        &mut o,
        "cold start",
        &cold["seconds_to_all_ready"],
        cold_f,
        &cold["memory"],
    );
    row(
        &mut o,
        "steady window",
        &steady["window_seconds"],
        steady_f,
        &Value::Null,
    );
    row(
        &mut o,
        "drift",
        &drift["seconds_to_corrected"],
        &drift["figures"],
        &Value::Null,
    );
    row(
        &mut o,
        "first operator, whole life",
        &Value::Null,
        &r["first_operator"]["figures"],
        &r["first_operator"]["memory"],
    );
    row(
        &mut o,
        "restart",
        &restart["seconds_to_all_reconciled"],
        restart_f,
        &restart["memory"],
    );
    let _ = writeln!(
        o,
        "\nBudget waits: seconds calls spent waiting for a token of the per-account/region \
         budget (calls that waited). Baseline (operator with no clinic): RSS {}. moto after \
         the cold start: RSS {}. Drift: backup retention of `{}` set from {} to {} in moto; \
         the operator put it back in {drift_s}.",
        mib(base),
        mib(&cold["moto_memory"]["rss_kib"]),
        drift["clinic"].as_str().unwrap_or_default(),
        drift["backup_retention"]["wanted"],
        drift["backup_retention"]["drifted_to"],
    );
    o
}
