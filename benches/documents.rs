//! The documents benchmark: the engine (`openemr-operator documents`) beside restic, rclone
//! and `aws s3 sync`, on one generated tree of OpenEMR's shape, against one moto, each
//! request counted by the fault proxy (passing everything).
//!
//! ```sh
//! make bench-documents            # installs the peers, then runs:
//! cargo bench --bench documents -- --files 5000
//! ```
//!
//! For every tool, three phases: the full run (an empty bucket), the run after 1 % of the
//! files changed, and the restore of the newest state into an empty directory (checked
//! file for file against the tree). Each phase's wall time, S3 requests by method, the
//! tool's own CPU time (user + system, its process and children, from `getrusage`) and
//! moto's (from `/proc`). moto costs milliseconds of CPU per request on these machines,
//! so wall time mostly measures moto: compare by requests and by the tools' own CPU. The
//! figures go to `bench/documents.json` and `bench/documents.md`, and the markdown is
//! printed.
//!
//! `cargo test --all-targets` runs this target too, without `--bench`: it then only says
//! how to run it and exits 0.

#[path = "../tests/support/content.rs"]
mod content;
#[path = "../tests/support/faults.rs"]
#[allow(dead_code)]
mod faults;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use content::{content, large_size, make_tree};
use faults::FaultProxy;
use serde_json::{Value, json};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const ENGINE: &str = env!("CARGO_BIN_EXE_openemr-operator");
const METHODS: [&str; 5] = ["GET", "HEAD", "PUT", "POST", "DELETE"];

#[derive(Parser, Debug)]
#[command(
    name = "documents",
    about = "The documents engine beside restic, rclone and aws s3 sync, against moto"
)]
struct Args {
    /// Small files (1–64 KiB, mostly small) in patients' directories.
    #[arg(long, default_value_t = 5000)]
    files: usize,
    /// Large files (5–20 MiB: scans, images).
    #[arg(long, default_value_t = 6)]
    large: usize,
    /// Share of the small files changed before the second run, in percent.
    #[arg(long, default_value_t = 1.0)]
    changed_percent: f64,
    /// Uploads (transfers) in flight, for every tool that has such a setting.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Only these tools (repeat): engine, restic, rclone, aws.
    #[arg(long)]
    tool: Vec<String>,
    /// Rounds, each from empty buckets and a new tree; the table gives medians (a shared
    /// machine's noise is large beside a second of CPU).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Render bench/documents.md again from this JSON (a former run's), running nothing.
    #[arg(long)]
    from_json: Option<PathBuf>,
    /// Where the scratch trees go.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    scratch: PathBuf,
    /// `cargo bench` passes it; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Requests the engine's full run needs beyond one per file, by its defaults: a file above
/// the multipart threshold (16 MiB) goes in 8 MiB parts between a create and a complete;
/// every 256 stored files make a journal chunk, and the chunks go in one DeleteObjects.
fn engine_overhead(files: usize, large: usize) -> u64 {
    const MIB: usize = 1024 * 1024;
    let parts: usize = (0..large)
        .map(large_size)
        .filter(|len| *len > 16 * MIB)
        .map(|len| len.div_ceil(8 * MIB) + 1)
        .sum();
    (parts + files / 256 + 1) as u64
}

/// Rewrites `percent` of the small files with new contents; how many.
fn change_tree(root: &Path, files: usize, percent: f64) -> usize {
    let step = (100.0 / percent).round().max(1.0) as usize;
    let mut changed = 0;
    for n in (0..files).step_by(step) {
        let patient = n / 20;
        let category = ["lab", "imaging", "consent", "referral"][n % 4];
        let path = root.join(format!(
            "default/documents/{patient}/{category}/doc-{n}.pdf"
        ));
        std::fs::write(&path, content(9_000_000 + n as u64, 3000)).unwrap();
        changed += 1;
    }
    changed
}

/// Every file's path and SHA-256: what each tool must give back (not every tool keeps
/// modes, mtimes or empty directories).
fn digest_tree(root: &Path) -> BTreeMap<Vec<u8>, String> {
    content::listing(root)
        .into_iter()
        .filter(|(_, (kind, ..))| *kind == 'f')
        .map(|(path, (_, _, _, sha256))| (path, sha256))
        .collect()
}

/// moto, started on a free port for this run; stopped when dropped.
struct Moto {
    child: std::process::Child,
    url: String,
}

impl Moto {
    fn start() -> Moto {
        let out = Command::new("bash")
            .arg(Path::new(REPO).join("hack/install-moto.sh"))
            .output()
            .expect("hack/install-moto.sh");
        assert!(out.status.success(), "installing moto failed");
        let python = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python)
            .arg("-B")
            .arg(Path::new(REPO).join("hack/moto_server.py"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        Moto { child, url }
    }

    /// moto's CPU time so far (user + system), seconds.
    fn cpu(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // The fields after the command's `)`: utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / clock_ticks()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// CPU time (user + system) of this process's waited-for children so far, seconds.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// A tool's command for a phase (`full`, `changed`, `restore`) and the proxy's URL.
type MakeCommand<'a> = dyn Fn(&str, &str) -> Command + 'a;

/// One phase of one tool.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Phase {
    tool: String,
    phase: String,
    round: usize,
    wall_s: f64,
    tool_cpu_s: f64,
    moto_cpu_s: f64,
    requests: u64,
    by_method: BTreeMap<String, u64>,
}

/// Runs `command` (made for the proxy's URL) through a fresh counting proxy.
fn measure(
    moto: &Moto,
    (tool, phase, round): (&str, &str, usize),
    command: impl FnOnce(&str) -> Command,
) -> Phase {
    let proxy = FaultProxy::start(&moto.url);
    let mut command = command(&proxy.url());
    let (cpu, moto_cpu, started) = (children_cpu(), moto.cpu(), Instant::now());
    let out = command
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        // moto is plain HTTP; a machine-wide bundle only trips rclone's S3 client.
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{tool} {phase}: {e}"));
    let wall_s = started.elapsed().as_secs_f64();
    let (tool_cpu_s, moto_cpu_s) = (children_cpu() - cpu, moto.cpu() - moto_cpu);
    assert!(
        out.status.success(),
        "{tool} {phase} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let by_method: BTreeMap<String, u64> = METHODS
        .iter()
        .map(|m| (m.to_string(), proxy.counts(&format!("s3:{m}")).seen))
        .filter(|(_, n)| *n > 0)
        .collect();
    Phase {
        tool: tool.into(),
        phase: phase.into(),
        round,
        wall_s,
        tool_cpu_s,
        moto_cpu_s,
        requests: proxy.total().seen,
        by_method,
    }
}

/// The peers' commands, from `hack/install-bench-tools.sh`.
struct Peers {
    restic: PathBuf,
    rclone: PathBuf,
    aws: PathBuf,
}

fn peers() -> Peers {
    let out = Command::new("bash")
        .arg(Path::new(REPO).join("hack/install-bench-tools.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("hack/install-bench-tools.sh");
    assert!(out.status.success(), "installing the peers failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let path = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no {name} from hack/install-bench-tools.sh"))
    };
    Peers {
        restic: path("restic"),
        rclone: path("rclone"),
        aws: path("aws"),
    }
}

fn version(tool: &Path, arg: &str) -> String {
    Command::new(tool)
        .arg(arg)
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().unwrap_or_default().trim().to_string()
        })
        .unwrap_or_default()
}

/// A versioned bucket (the engine needs versioning; the peers do not mind it).
fn create_bucket(moto: &Moto, aws: &Path, name: &str) {
    for call in [
        vec!["create-bucket", "--bucket", name],
        vec![
            "put-bucket-versioning",
            "--bucket",
            name,
            "--versioning-configuration",
            "Status=Enabled",
        ],
    ] {
        let status = Command::new(aws)
            .args(["--endpoint-url", &moto.url, "s3api"])
            .args(call)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .stdout(Stdio::null())
            .status()
            .expect("aws s3api");
        assert!(status.success(), "creating bucket {name}");
    }
}

const USAGE: &str = "the documents benchmark runs only under `cargo bench`: \
    make bench-documents   (or `cargo bench --bench documents -- --help`)";

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.bench {
        // `cargo test --all-targets` runs every bench target without `--bench`.
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if let Some(json) = &args.from_json {
        let results: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
        let phases: Vec<Phase> = serde_json::from_value(results["phases"].clone()).unwrap();
        let markdown = render(&results, &phases);
        std::fs::write(Path::new(REPO).join("bench/documents.md"), &markdown).unwrap();
        println!("{markdown}");
        return ExitCode::SUCCESS;
    }
    let pid = std::process::id();
    let tree = args.scratch.join(format!("oe-bench-documents-{pid}"));
    let peers = peers();
    let moto = Moto::start();
    let wanted = |tool: &str| args.tool.is_empty() || args.tool.iter().any(|t| t == tool);
    let restored = |tool: &str| {
        args.scratch
            .join(format!("oe-bench-documents-{pid}-{tool}"))
    };
    let restic_cache = |round: usize| args.scratch.join(format!("oe-bench-restic-{pid}-{round}"));
    let concurrency = args.concurrency.to_string();
    let tree_s = tree.display().to_string();
    let versions = json!({
        "engine": version(Path::new(ENGINE), "--version"),
        "restic": version(&peers.restic, "version"),
        "rclone": version(&peers.rclone, "version"),
        "aws": version(&peers.aws, "--version"),
    });
    // Every name of a round's buckets carries the round.
    let round = std::cell::Cell::new(0usize);
    let bucket = |tool: &str| format!("bench-{tool}-{}", round.get());
    let restic = |url: &str| {
        let mut c = Command::new(&peers.restic);
        c.env(
            "RESTIC_REPOSITORY",
            format!("s3:{url}/{}", bucket("restic")),
        )
        .env("RESTIC_PASSWORD", "bench")
        .env("RESTIC_CACHE_DIR", restic_cache(round.get()))
        .args(["-o", "s3.bucket-lookup=path", "-o", "s3.region=us-east-1"])
        .args(["-o", &format!("s3.connections={concurrency}")])
        .arg("--quiet");
        c
    };
    let tools: Vec<(&str, Box<MakeCommand>)> = vec![
        (
            "engine",
            Box::new(|phase: &str, url: &str| {
                let mut c = Command::new(ENGINE);
                c.arg("documents").env("AWS_ENDPOINT_URL", url);
                let name = bucket("engine");
                let common = [
                    "--bucket",
                    &name,
                    "--path-style",
                    "--concurrency",
                    &concurrency,
                ];
                match phase {
                    "full" => c
                        .arg("backup")
                        .args(common)
                        .args(["--dir", &tree_s])
                        .args(["--manifest", "backups/documents/1.jsonl.gz"]),
                    "changed" => c
                        .arg("backup")
                        .args(common)
                        .args(["--dir", &tree_s])
                        .args(["--manifest", "backups/documents/2.jsonl.gz"])
                        .args(["--previous", "backups/documents/1.jsonl.gz"]),
                    _ => c
                        .arg("restore")
                        .args(common)
                        .args(["--manifest", "backups/documents/2.jsonl.gz"])
                        .arg("--into")
                        .arg(restored("engine")),
                };
                c
            }),
        ),
        (
            "restic",
            Box::new(|phase: &str, url: &str| {
                let mut c = restic(url);
                match phase {
                    "full" | "changed" => c.args(["backup", &tree_s]),
                    _ => c
                        .args(["restore", "latest", "--target"])
                        .arg(restored("restic")),
                };
                c
            }),
        ),
        (
            "rclone",
            Box::new(|phase: &str, url: &str| {
                let mut c = Command::new(&peers.rclone);
                c.env("RCLONE_CONFIG_MOTO_TYPE", "s3")
                    .env("RCLONE_CONFIG_MOTO_PROVIDER", "Other")
                    .env("RCLONE_CONFIG_MOTO_ENDPOINT", url)
                    .env("RCLONE_CONFIG_MOTO_ACCESS_KEY_ID", "testing")
                    .env("RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY", "testing")
                    .env("RCLONE_CONFIG_MOTO_REGION", "us-east-1")
                    .env("RCLONE_CONFIG_MOTO_FORCE_PATH_STYLE", "true")
                    .args(["--transfers", &concurrency, "--checkers", &concurrency]);
                let remote = format!("moto:{}/documents", bucket("rclone"));
                match phase {
                    "full" | "changed" => c.args(["sync", &tree_s, &remote]),
                    _ => c.args(["copy", &remote]).arg(restored("rclone")),
                };
                c
            }),
        ),
        (
            "aws",
            Box::new(|phase: &str, url: &str| {
                let mut c = Command::new(&peers.aws);
                c.args(["--endpoint-url", url, "s3", "sync", "--only-show-errors"])
                    .env("AWS_MAX_CONCURRENT_REQUESTS", &concurrency);
                let remote = format!("s3://{}/documents/", bucket("aws"));
                match phase {
                    "full" | "changed" => c.args([&tree_s, &remote]),
                    _ => c.arg(&remote).arg(restored("aws")),
                };
                c
            }),
        ),
    ];

    let mut phases = Vec::new();
    let (mut files, mut bytes, mut changed) = (0, 0, 0);
    for r in 0..args.rounds.max(1) {
        round.set(r);
        (files, bytes) = make_tree(&tree, args.files, args.large);
        for (tool, _) in &tools {
            if wanted(tool) {
                create_bucket(&moto, &peers.aws, &bucket(tool));
            }
        }
        // restic's repository is made before its first run, as a user would.
        if wanted("restic") {
            measure(&moto, ("restic", "init", r), |url| {
                let mut c = restic(url);
                c.arg("init");
                c
            });
        }
        let mut run = |tool: &str, phase: &str, make: &MakeCommand| {
            let measured = measure(&moto, (tool, phase, r), |url| make(phase, url));
            eprintln!(
                "round {r}, {tool} {phase}: {:.1} s, {} requests, {:.2} s CPU, moto {:.2} s",
                measured.wall_s, measured.requests, measured.tool_cpu_s, measured.moto_cpu_s
            );
            phases.push(measured);
        };
        let first = digest_tree(&tree);
        for (tool, make) in &tools {
            if wanted(tool) {
                run(tool, "full", make.as_ref());
            }
        }
        // File systems keep mtimes to the tick: a change in the tick of the first write
        // would look unchanged to every tool that compares mtimes.
        std::thread::sleep(Duration::from_millis(50));
        changed = change_tree(&tree, args.files, args.changed_percent);
        let expected = digest_tree(&tree);
        assert_ne!(expected, first);
        for (tool, make) in &tools {
            if !wanted(tool) {
                continue;
            }
            run(tool, "changed", make.as_ref());
            run(tool, "restore", make.as_ref());
            // restic restores the absolute path under the target.
            let root = match *tool {
                "restic" => restored(tool).join(tree.strip_prefix("/").unwrap()),
                _ => restored(tool),
            };
            let got = digest_tree(&root);
            assert!(
                got == expected,
                "{tool}'s restore differs from the tree ({} files, {} expected)",
                got.len(),
                expected.len()
            );
            let _ = std::fs::remove_dir_all(restored(tool));
        }
        let _ = std::fs::remove_dir_all(restic_cache(r));
    }
    let _ = std::fs::remove_dir_all(&tree);

    let results = json!({
        "tree": {
            "files": files, "bytes": bytes, "changed": changed, "large": args.large,
            "engine_overhead": engine_overhead(files, args.large),
        },
        "concurrency": args.concurrency,
        "rounds": args.rounds.max(1),
        "versions": versions,
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "phases": phases,
    });
    let markdown = render(&results, &phases);
    let dir = Path::new(REPO).join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("documents.json"),
        serde_json::to_string_pretty(&results).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("documents.md"), &markdown).unwrap();
    println!("{markdown}");
    ExitCode::SUCCESS
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// One tool's phase over the rounds: medians, and the range of the tool's CPU.
struct Summary {
    tool: String,
    phase: String,
    wall_s: f64,
    requests: f64,
    by_method: BTreeMap<String, u64>,
    tool_cpu_s: f64,
    tool_cpu_range: (f64, f64),
    moto_cpu_s: f64,
}

fn summarize(phases: &[Phase]) -> Vec<Summary> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for p in phases.iter().filter(|p| p.phase != "init") {
        let key = (p.tool.clone(), p.phase.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    // Full runs first, then changed runs, then restores, each in the tools' order.
    keys.sort_by_key(|(_, phase)| {
        ["full", "changed", "restore"]
            .iter()
            .position(|p| p == phase)
    });
    keys.into_iter()
        .map(|(tool, phase)| {
            let of: Vec<&Phase> = phases
                .iter()
                .filter(|p| p.tool == tool && p.phase == phase)
                .collect();
            let values = |f: fn(&Phase) -> f64| median(of.iter().map(|p| f(p)).collect());
            let cpu: Vec<f64> = of.iter().map(|p| p.tool_cpu_s).collect();
            Summary {
                by_method: of[0].by_method.clone(),
                wall_s: values(|p| p.wall_s),
                requests: values(|p| p.requests as f64),
                tool_cpu_s: values(|p| p.tool_cpu_s),
                tool_cpu_range: (
                    cpu.iter().copied().fold(f64::INFINITY, f64::min),
                    cpu.iter().copied().fold(0.0, f64::max),
                ),
                moto_cpu_s: values(|p| p.moto_cpu_s),
                tool,
                phase,
            }
        })
        .collect()
}

fn render(results: &Value, phases: &[Phase]) -> String {
    let tree = &results["tree"];
    let files = tree["files"].as_f64().unwrap_or(1.0).max(1.0);
    let changed = tree["changed"].as_f64().unwrap_or(1.0).max(1.0);
    let rows = summarize(phases);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# The documents engine beside restic, rclone and `aws s3 sync`\n"
    );
    let _ = writeln!(
        md,
        "Made by `make bench-documents` (`benches/documents.rs`). One tree of OpenEMR's shape: {} files, {:.1} MiB ({} large files of 5–20 MiB, the rest 1–64 KiB in patients' directories); {} files changed for the second run. One moto, each tool its own versioned bucket, every request counted by the fault proxy; {} transfers in flight for every tool that has the setting; a machine of {} CPUs; {} rounds, each from empty buckets, medians shown. Every restore was checked file for file against the tree.\n",
        tree["files"],
        tree["bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        tree["large"],
        tree["changed"],
        results["concurrency"],
        results["machine"]["cpus"],
        results["rounds"],
    );
    let _ = writeln!(md, "Versions: {}\n", results["versions"]);
    let _ = writeln!(
        md,
        "| phase | tool | wall s | requests | by method (first round) | tool CPU s (range) | tool CPU ms per file | moto CPU s | moto share of CPU |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---|---:|---:|---:|---:|");
    let per_file =
        |r: &Summary| r.tool_cpu_s * 1000.0 / if r.phase == "changed" { changed } else { files };
    for r in &rows {
        let methods: Vec<String> = r
            .by_method
            .iter()
            .map(|(m, n)| format!("{m} {n}"))
            .collect();
        let share = r.moto_cpu_s / (r.moto_cpu_s + r.tool_cpu_s).max(1e-9) * 100.0;
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {} | {} | {:.2} ({:.2}–{:.2}) | {:.3} | {:.2} | {:.0} % |",
            r.phase,
            r.tool,
            r.wall_s,
            r.requests,
            methods.join(", "),
            r.tool_cpu_s,
            r.tool_cpu_range.0,
            r.tool_cpu_range.1,
            per_file(r),
            r.moto_cpu_s,
            share
        );
    }
    let _ = writeln!(
        md,
        "\nTool CPU ms per file: the tool's CPU (its process and children) over the tree's files; for the changed run, over the changed files. The moto share is moto's CPU over moto's and the tool's together: how much of a run's wall time is the emulator.\n"
    );
    // The goals the engine was built to, judged from the figures above.
    let find = |tool: &str, phase: &str| rows.iter().find(|r| r.tool == tool && r.phase == phase);
    let mut goals = Vec::new();
    if let Some(engine) = find("engine", "changed") {
        goals.push((
            format!(
                "the changed run needs at most the changed files plus a handful (10) of requests: {} for {changed} changed",
                engine.requests
            ),
            engine.requests <= changed + 10.0,
        ));
    }
    for phase in ["full", "restore"] {
        if let Some(engine) = find("engine", phase) {
            // The full run's parts of large files and journal chunks (`engine_overhead`).
            let overhead = tree["engine_overhead"].as_f64().unwrap_or(0.0);
            let allowance = if phase == "full" {
                overhead + 10.0
            } else {
                10.0
            };
            goals.push((
                format!(
                    "the {phase} run makes one request per file plus a handful{}: {} for {files} files",
                    if phase == "full" {
                        format!(
                            ", beyond the {} requests of large files' parts and journal chunks",
                            tree["engine_overhead"]
                        )
                    } else {
                        String::new()
                    },
                    engine.requests
                ),
                engine.requests <= files + allowance,
            ));
        }
    }
    for phase in ["full", "changed", "restore"] {
        let Some(engine) = find("engine", phase) else {
            continue;
        };
        let peers: Vec<&Summary> = rows
            .iter()
            .filter(|r| r.phase == phase && r.tool != "engine")
            .collect();
        if peers.is_empty() {
            continue;
        }
        let best = peers
            .iter()
            .min_by(|a, b| a.tool_cpu_s.total_cmp(&b.tool_cpu_s))
            .unwrap();
        goals.push((
            format!(
                "the {phase} run uses less CPU than every peer: {:.2} s, the least of the peers {:.2} s ({})",
                engine.tool_cpu_s, best.tool_cpu_s, best.tool
            ),
            engine.tool_cpu_s < best.tool_cpu_s,
        ));
    }
    let _ = writeln!(md, "## Goals\n");
    for (goal, met) in goals {
        let _ = writeln!(md, "- {} — {goal}", if met { "met" } else { "**not met**" });
    }
    md
}
