//! What the benchmarks share: the operator's metrics read and compared, its memory and
//! moto's, the machine, durations as the operator's flags take them, clinics' readiness.
//! Each bench includes it with `#[path = "common/mod.rs"] mod common;` beside `mod support`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::Api;
use openemr_operator::api::OpenEMRDeployment;
use serde_json::{Value, json};

use crate::support::operator::Operator;
use crate::support::{self, TestEnv};

/// A duration such as `500ms`, `20s`, `5m` or `4h` (the operator's own syntax).
pub fn duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} lacks a unit (ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?}: no number"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        other => Err(format!("unknown unit {other:?} in {text:?}")),
    }
}

/// A duration as the operator's flags take it.
pub fn flag(d: Duration) -> String {
    if d.subsec_millis() != 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

/// One sample of the exposition: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of an OpenMetrics text exposition (comments skipped).
pub fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_sample)
        .collect()
}

pub fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.trim().rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `a="x",b="y \"q\""` → {a: x, b: y "q"}.
pub fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => value.push(chars.next()?.1),
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

/// The operator's metrics at one moment.
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub Vec<Sample>);

impl Metrics {
    pub async fn of(operator: &Operator) -> Metrics {
        for _ in 0..50 {
            if let Some((200, body)) = operator.get("/metrics").await {
                return Metrics(parse_samples(&body));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the operator's /metrics did not answer");
    }

    /// The sum of the samples of `name` whose labels include `with`.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                with.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
            })
            .map(|s| s.value)
            // An empty float sum is -0.
            .sum::<f64>()
            + 0.0
    }

    /// Sums of `name` by the values of `keys`.
    pub fn by(&self, name: &str, keys: &[&str]) -> BTreeMap<Vec<String>, f64> {
        let mut out = BTreeMap::new();
        for s in self.0.iter().filter(|s| s.name == name) {
            let key = keys
                .iter()
                .map(|k| s.labels.get(*k).cloned().unwrap_or_default())
                .collect();
            *out.entry(key).or_insert(0.0) += s.value;
        }
        out
    }

    /// What happened between `before` and `self` (counters only grow within one process).
    pub fn since(&self, before: &Metrics) -> Metrics {
        Metrics(
            self.0
                .iter()
                .map(|s| {
                    let earlier = before
                        .0
                        .iter()
                        .find(|b| b.name == s.name && b.labels == s.labels)
                        .map_or(0.0, |b| b.value);
                    Sample {
                        value: s.value - earlier,
                        ..s.clone()
                    }
                })
                .collect(),
        )
    }
}

pub const CALLS: &str = "openemr_aws_api_calls_total";
pub const ATTEMPTS: &str = "openemr_aws_api_attempts_total";
pub const WAIT_SECONDS: &str = "openemr_aws_budget_wait_seconds_total";
pub const WAITS: &str = "openemr_aws_budget_waits_total";
pub const RECONCILES: &str = "openemr_reconciliations_total";
pub const STATUS_WRITES: &str = "openemr_status_writes_total";
pub const EVENTS: &str = "openemr_events_total";
pub const CLINIC: (&str, &str) = ("controller", "openemrdeployment");

/// Reads are Describe*, List* and Get*; everything else changes something.
pub fn mutating(operation: &str) -> bool {
    !["Describe", "List", "Get"]
        .iter()
        .any(|p| operation.starts_with(p))
}

/// The figures of one phase: AWS calls, attempts, budget waits, reconciles, writes.
pub fn phase_figures(m: &Metrics, controller: &str) -> Value {
    let calls: Vec<Value> = m
        .by(CALLS, &["service", "operation", "outcome"])
        .into_iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(k, v)| json!({"service": k[0], "operation": k[1], "outcome": k[2], "calls": count(v)}))
        .collect();
    let attempts: Vec<Value> = m
        .by(ATTEMPTS, &["service", "operation", "outcome"])
        .into_iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(k, v)| json!({"service": k[0], "operation": k[1], "outcome": k[2], "attempts": count(v)}))
        .collect();
    let budget: BTreeMap<String, Value> = m
        .by(WAITS, &["service"])
        .into_iter()
        .map(|(k, waits)| {
            let seconds = m.sum(WAIT_SECONDS, &[("service", &k[0])]);
            (
                k[0].clone(),
                json!({"waits": count(waits), "wait_seconds": seconds_of(seconds)}),
            )
        })
        .collect();
    let total: f64 = m.sum(CALLS, &[]);
    let mutating_calls: f64 = m
        .by(CALLS, &["operation"])
        .into_iter()
        .filter(|(k, _)| mutating(&k[0]))
        .map(|(_, v)| v)
        .sum::<f64>()
        + 0.0;
    let reconciles: BTreeMap<String, Value> = m
        .by(RECONCILES, &["controller", "result"])
        .into_iter()
        .filter(|(k, v)| k[0] == controller && *v > 0.0)
        .map(|(k, v)| (k[1].clone(), count(v)))
        .collect();
    json!({
        "aws_calls_total": count(total),
        "aws_attempts_total": count(m.sum(ATTEMPTS, &[])),
        "aws_mutating_calls": count(mutating_calls),
        "aws_throttled_attempts": count(m.sum(ATTEMPTS, &[("outcome", "throttled")])),
        "aws_calls": calls,
        "aws_attempts": attempts,
        "budget": budget,
        "budget_wait_seconds_total": seconds_of(m.sum(WAIT_SECONDS, &[])),
        "reconciles": reconciles,
        "status_writes": count(m.sum(STATUS_WRITES, &[("controller", controller)])),
        "events": count(m.sum(EVENTS, &[("controller", controller)])),
    })
}

/// A counter's value as a whole number.
pub fn count(v: f64) -> Value {
    json!(v.round().max(0.0) as u64)
}

/// Seconds to the millisecond.
pub fn seconds_of(v: f64) -> Value {
    json!((v * 1000.0).round() / 1000.0 + 0.0)
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/// `VmRSS` and `VmHWM` (peak) of a process, in KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| {
            l.strip_prefix(name)?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

pub fn memory_json(pid: u32) -> Value {
    match memory_kib(pid) {
        Some((rss, hwm)) => json!({"rss_kib": rss, "peak_rss_kib": hwm}),
        None => Value::Null,
    }
}

/// The environment's moto process, for its memory (it holds every clinic's resources).
pub fn moto_pid() -> Option<u32> {
    let dir = match std::env::var("OPENEMR_TEST_ENV") {
        Ok(file) => Path::new(&file).parent()?.to_path_buf(),
        Err(_) => std::env::temp_dir().join(format!("openemr-test-env-{}", std::process::id())),
    };
    std::fs::read_to_string(dir.join("pids/moto"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .current_dir(support::REPO)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn machine() -> Value {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let moto = std::fs::read_to_string(Path::new(support::REPO).join("hack/install-moto.sh"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("moto_version=").map(str::to_string))
        .unwrap_or_default();
    let dirty = !command_output(
        "git",
        &[
            "status",
            "--porcelain",
            "--",
            "src",
            "Cargo.toml",
            "Cargo.lock",
        ],
    )
    .is_empty();
    json!({
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": command_output("uname", &["-r"]),
        "git_commit": command_output("git", &["rev-parse", "--short", "HEAD"]),
        "src_modified_since_commit": dirty,
        "moto": moto,
        "operator_profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

pub fn is_ready(c: &OpenEMRDeployment) -> bool {
    let conditions = c.status.as_ref().map(|s| &s.conditions[..]);
    openemr_operator::conditions::find(conditions.unwrap_or_default(), "Ready")
        .is_some_and(|r| r.status == "True" && r.reason == "Ready")
}

pub async fn count_ready(clinics: &Api<OpenEMRDeployment>) -> Option<usize> {
    let list = clinics.list(&Default::default()).await.ok()?;
    Some(list.items.iter().filter(|c| is_ready(c)).count())
}

/// Does this build of the operator know `flag`?
pub fn operator_knows(env: &TestEnv, flag: &str) -> bool {
    env.command(env!("CARGO_BIN_EXE_openemr-operator"))
        .args(["run", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
        .unwrap_or(false)
}

pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Moments at which a share of the clinics was Ready, from a list of (seconds, ready).
pub fn milestones(timeline: &[(f64, usize)], n: usize) -> Value {
    let first = |share: f64| {
        let need = ((n as f64) * share).ceil().max(1.0) as usize;
        timeline.iter().find(|(_, r)| *r >= need).map(|(t, _)| *t)
    };
    json!({"first": first(0.0), "p50": first(0.5), "p90": first(0.9), "all": first(1.0)})
}

/// Applies `docs` with `concurrency` server-side applies in flight, retrying the API
/// server's turn-aways.
pub async fn apply_all(client: &kube::Client, ns: &str, docs: Vec<Value>, concurrency: usize) {
    futures::stream::iter(docs)
        .map(|doc| async move {
            let mut tries = 0;
            loop {
                match support::apply(client, ns, &doc).await {
                    Ok(_) => return Ok::<(), kube::Error>(()),
                    Err(_) if tries < 10 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await
        .expect("applying");
}
