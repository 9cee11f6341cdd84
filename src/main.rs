//! The `openemr-operator` binary: `run` (the controllers) and `crd` (the CRD YAML).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::jiff::Timestamp;
use openemr_operator::aws::accounts::parse_account_role;
use openemr_operator::aws::budget::BudgetFlags;
use openemr_operator::clock::Clock;
use openemr_operator::controller::audit::AuditMode;
use openemr_operator::controller::audit::template::DEFAULT_RETENTION_DAYS;
use openemr_operator::controller::deployment::clinic::ClusterId;
use openemr_operator::controller::deployment::web::WorkloadConfig;
use openemr_operator::controller::{CaFiles, DriverConfig};
use openemr_operator::documents;
use openemr_operator::{api, run};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "openemr-operator",
    version,
    about = "Runs OpenEMR clinics on AWS and keeps their data safe"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at start; the size of the flags does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the controllers against the cluster of the current kubeconfig or service account.
    Run {
        /// Address for /healthz, /readyz and /metrics.
        #[arg(long, env = "PROBE_ADDR", default_value = "0.0.0.0:8080")]
        probe_addr: SocketAddr,
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// Log format.
        #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Reconciles running at once, per controller.
        #[arg(long, env = "MAX_CONCURRENT_RECONCILES", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
        max_concurrent_reconciles: u16,
        /// How often an object is looked at again when nothing changes (spread by up to 10%
        /// per object), e.g. 10m.
        #[arg(long, env = "RESYNC_INTERVAL", default_value = "10m", value_parser = parse_duration)]
        resync_interval: Duration,
        /// First retry after a failed reconcile; doubled on each further failure.
        #[arg(long, env = "RETRY_INITIAL", default_value = "15s", value_parser = parse_duration)]
        retry_initial: Duration,
        /// Longest wait between retries of a failing object.
        #[arg(long, env = "RETRY_MAX", default_value = "10m", value_parser = parse_duration)]
        retry_max: Duration,
        /// This cluster's id, part of every AWS resource name (1–16 lowercase letters,
        /// digits, hyphens). Two clusters sharing an AWS account must use different ids;
        /// changing it makes the operator lose track of what it created.
        #[arg(long, env = "CLUSTER_ID", value_parser = ClusterId::parse)]
        cluster_id: ClusterId,
        /// How soon a clinic is looked at again while AWS works on it (stack or database
        /// being created or modified).
        #[arg(long, env = "PROGRESS_INTERVAL", default_value = "30s", value_parser = parse_duration)]
        progress_interval: Duration,
        /// How often the DB instances and stacks of each account and region are read in
        /// pages (one DescribeDBInstances per 100 instances) to see drift and state for
        /// every clinic at rest; drift made outside the operator is seen within this.
        #[arg(long, env = "INVENTORY_INTERVAL", default_value = "5m", value_parser = parse_duration)]
        inventory_interval: Duration,
        /// The operator's own role in another AWS account, as `<account id>=<role ARN>`
        /// (repeat per account; comma-separated in the environment). That account's
        /// inventory and shared audit trail use it, never a clinic's role. Without one, the
        /// inventory leaves the account out (its clinics read their own stack and instance,
        /// and drift made outside the operator is seen at the resync) and its audit trail
        /// is kept with the role of the clinic that needs it.
        #[arg(long = "account-role", env = "ACCOUNT_ROLES", value_delimiter = ',', value_parser = parse_account_role)]
        account_roles: Vec<(String, String)>,
        #[command(flatten)]
        budgets: BudgetFlags,
        #[command(flatten)]
        web: WebFlags,
        #[command(flatten)]
        clock: ClockFlags,
        #[command(flatten)]
        audit: AuditFlags,
    },
    /// Copy a clinic's documents (`sites/`) into its bucket and back (run by the backup and
    /// restore Jobs; usable by hand).
    Documents {
        #[command(subcommand)]
        command: DocumentsCommand,
    },
    /// Run a restore's database checks (DatabaseReachable, SchemaPresent, TablesNonEmpty)
    /// against a clinic's database, as the operator does after a restore: TLS verified
    /// against the CA bundle and the endpoint's name. For a restore or drill made by hand.
    /// The password is read from MYSQL_PASSWORD only, so it never shows in a process list.
    /// Prints one JSON line per check; exit 0: all passed, 1: one failed, 2: bad usage.
    CheckDatabase {
        /// The endpoint as RDS reports it, `HOST:PORT` (3306 if no port).
        #[arg(long)]
        endpoint: String,
        /// The user to log in as (the master user, or OpenEMR's).
        #[arg(long, env = "MYSQL_USER")]
        user: String,
        /// OpenEMR's schema.
        #[arg(long, default_value = "openemr")]
        database: String,
        /// The PEM bundle the server's certificate must chain to (AWS's RDS bundle).
        #[arg(long, env = "MYSQL_CA_FILE", default_value = DEFAULT_MYSQL_CA_FILE)]
        mysql_ca_file: PathBuf,
        /// Dial an endpoint elsewhere, `NAME=HOST:PORT` with NAME a host name or `*.domain`
        /// (repeatable); the certificate is still checked against the endpoint's name.
        #[arg(
            long = "database-address",
            env = "DATABASE_ADDRESSES",
            value_delimiter = ','
        )]
        database_addresses: Vec<String>,
        /// Give up connecting after this long.
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Point a restored site's `sqlconf.php` at the database it now uses (a restore step,
    /// run in the restore's Job): its host, port, login, password and schema are replaced,
    /// every other line kept. The password is read from OPENEMR_DATABASE_PASSWORD only.
    /// Prints one JSON line (no password); exit 0: rewritten, 1: refused or failed, the
    /// file untouched, 2: bad usage.
    SiteConfig {
        /// The site's directory (the volume's `default/`).
        #[arg(long)]
        site_dir: PathBuf,
        /// The database endpoint's host name.
        #[arg(long)]
        host: String,
        #[arg(long, default_value_t = 3306)]
        port: u16,
        /// OpenEMR's MySQL user.
        #[arg(long)]
        login: String,
        /// OpenEMR's schema.
        #[arg(long, default_value = "openemr")]
        database: String,
    },
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD into a directory.
    Crd {
        /// Write `<group>_<plural>.yaml` files here instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Where the documents are in S3.
#[derive(clap::Args, Debug, Clone)]
struct BucketFlags {
    /// The clinic's bucket (versioned).
    #[arg(long, env = "DOCUMENTS_BUCKET")]
    bucket: String,
    /// Path-style addressing (S3-compatible stores, emulators).
    #[arg(long, env = "S3_PATH_STYLE")]
    path_style: bool,
    /// Most files read, hashed and sent (or fetched) at once.
    #[arg(long, default_value_t = documents::backup::DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..=256).map(usize::from))]
    concurrency: usize,
    /// Where manifests are written and read while a run lasts.
    #[arg(long, env = "DOCUMENTS_WORK_DIR", default_value_os_t = std::env::temp_dir())]
    work_dir: PathBuf,
    /// Also write the JSON summary here (a Job's `/dev/termination-log`).
    #[arg(long)]
    summary_file: Option<PathBuf>,
}

impl BucketFlags {
    async fn store(&self, kms_key: Option<String>) -> documents::store::Store {
        documents::store::Store {
            client: documents::s3_client(self.path_style).await,
            bucket: self.bucket.clone(),
            kms_key,
        }
    }
}

#[derive(Subcommand)]
enum DocumentsCommand {
    /// Store the tree under the mirror prefix and write the set's manifest. Exit 0: done;
    /// 2: done, with unreadable paths named in the summary and the manifest; 1: failed,
    /// no manifest.
    Backup {
        #[command(flatten)]
        bucket: BucketFlags,
        /// The tree (the clinic's `sites/`).
        #[arg(long)]
        dir: PathBuf,
        /// The mirror's key prefix.
        #[arg(long, default_value = "documents/")]
        prefix: String,
        /// The key of this set's manifest (never written over).
        #[arg(long)]
        manifest: String,
        /// The previous set's manifest: what is unchanged since is not sent again.
        #[arg(long)]
        previous: Option<String>,
        /// The clinic's KMS key (ARN or id) every object is encrypted with.
        #[arg(long, env = "DOCUMENTS_KMS_KEY")]
        kms_key: Option<String>,
        /// Files above this many MiB go in parts.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(5..=5120))]
        multipart_threshold_mib: u64,
        /// Size of each part, in MiB (S3's least is 5).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(5..=512))]
        part_size_mib: u64,
        /// How long the mirror's lock lasts unless renewed (every third of it); a run
        /// killed holding it blocks the next for at most this.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        lock_lease: Duration,
        /// How long to wait for a lock held by another run whose lease ends that soon (a
        /// Job's pod that was killed: its next pod waits the lease out, then takes over);
        /// a lock held longer refuses the run at once.
        #[arg(long, default_value = "11m", value_parser = parse_duration)]
        lock_wait: Duration,
        /// Stored files per journal chunk: after a killed run, the next run of the same set
        /// sends again at most these (and those that were in flight).
        #[arg(long, default_value_t = documents::journal::DEFAULT_EVERY, value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
        journal_every: usize,
    },
    /// Check a set against the bucket without downloading it (and against a directory).
    /// Exit 0: sound; 3: problems, named in the summary; 1: could not check.
    Verify {
        #[command(flatten)]
        bucket: BucketFlags,
        /// The set's manifest key.
        #[arg(long)]
        manifest: String,
        /// Also compare with this directory: contents, and nothing more or less.
        #[arg(long)]
        against: Option<PathBuf>,
    },
    /// Drop sets: delete the versions only they reference, then their manifests. Every
    /// manifest under --manifests-prefix must be named, kept or dropped.
    Prune {
        #[command(flatten)]
        bucket: BucketFlags,
        /// A set that stays (repeat).
        #[arg(long)]
        keep: Vec<String>,
        /// Every set present but the dropped ones stays, instead of naming each.
        #[arg(long, conflicts_with = "keep")]
        keep_others: bool,
        /// A set that goes (repeat).
        #[arg(long, required = true)]
        drop: Vec<String>,
        /// Where the manifests are.
        #[arg(long, default_value = "backups/documents/")]
        manifests_prefix: String,
        /// The mirror's key prefix.
        #[arg(long, default_value = "documents/")]
        prefix: String,
        /// How long the mirror's lock lasts unless renewed.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        lock_lease: Duration,
        /// Versions per DeleteObjects request.
        #[arg(long, default_value_t = documents::prune::MAX_BATCH, value_parser = clap::value_parser!(u16).range(1..=1000).map(usize::from))]
        batch: usize,
    },
    /// Delete the mirror's versions no set references (left by killed runs), older than
    /// the grace period; never a key's latest version, nor what an unfinished set's live
    /// journal names.
    Sweep {
        #[command(flatten)]
        bucket: BucketFlags,
        /// Where the manifests are: every one there counts.
        #[arg(long, default_value = "backups/documents/")]
        manifests_prefix: String,
        /// The mirror's key prefix.
        #[arg(long, default_value = "documents/")]
        prefix: String,
        /// Nothing stored more recently is deleted (at least twice --lock-lease).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        grace: Duration,
        /// How long the mirror's lock lasts unless renewed.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        lock_lease: Duration,
        /// Versions per DeleteObjects request.
        #[arg(long, default_value_t = documents::prune::MAX_BATCH, value_parser = clap::value_parser!(u16).range(1..=1000).map(usize::from))]
        batch: usize,
    },
    /// Copy a set into another bucket (the disaster-recovery region's), server-side:
    /// files the previous copy there holds are not copied again; the copy's manifest, with
    /// that bucket's version ids, is written last. Exit 0: done; 1: failed, no manifest.
    Copy {
        #[command(flatten)]
        bucket: BucketFlags,
        /// The set's manifest key in --bucket.
        #[arg(long)]
        manifest: String,
        /// The destination bucket (versioned).
        #[arg(long)]
        to_bucket: String,
        /// The destination bucket's region (--bucket's is the environment's).
        #[arg(long)]
        to_region: String,
        /// The KMS key (ARN, in --to-region) every copied object is encrypted with.
        #[arg(long)]
        to_kms_key: Option<String>,
        /// The copy's manifest key in --to-bucket (--manifest's when unset).
        #[arg(long)]
        to_manifest: Option<String>,
        /// The previous set's copy's manifest in --to-bucket.
        #[arg(long)]
        previous: Option<String>,
        /// The mirror's key prefix in --to-bucket.
        #[arg(long, default_value = "documents/")]
        prefix: String,
        /// Files above this many MiB are copied in parts (one copy stops at 5 GiB).
        #[arg(long, default_value_t = 5120, value_parser = clap::value_parser!(u64).range(5..=5120))]
        multipart_threshold_mib: u64,
        /// Size of each copied part, in MiB.
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(5..=5120))]
        part_size_mib: u64,
        /// How long the destination mirror's lock lasts unless renewed.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        lock_lease: Duration,
        /// How long to wait for a lock whose lease ends that soon.
        #[arg(long, default_value = "11m", value_parser = parse_duration)]
        lock_wait: Duration,
    },
    /// An in-place restore's directories beside the site (`--swap-token`): put the kept
    /// entries back (`--undo`, the restored ones moved into `_rolled-back-<token>`), or
    /// delete the kept ones once they are no longer wanted (`--discard`). The bucket is
    /// not read.
    SiteDirs {
        #[command(flatten)]
        bucket: BucketFlags,
        /// The site root (the clinic's `sites/`).
        #[arg(long)]
        into: PathBuf,
        #[arg(long)]
        swap_token: String,
        #[arg(long, required_unless_present = "discard", conflicts_with = "discard")]
        undo: bool,
        #[arg(long)]
        discard: bool,
    },
    /// Restore a set by its manifest into a directory (empty unless --overwrite).
    Restore {
        #[command(flatten)]
        bucket: BucketFlags,
        /// The set's manifest key.
        #[arg(long)]
        manifest: String,
        /// Where the tree is made.
        #[arg(long)]
        into: PathBuf,
        /// Give everything its recorded owner (needs the right to).
        #[arg(long)]
        owners: bool,
        /// Restore into a directory that is not empty, replacing what is in the way.
        #[arg(long)]
        overwrite: bool,
        /// Then point the restored site (`<into>/default/sqlconf.php`) at this database
        /// host, as `site-config` does (password from `OPENEMR_DATABASE_PASSWORD`): a
        /// restored site names the source's database otherwise.
        #[arg(long, requires = "site_login")]
        site_host: Option<String>,
        #[arg(long, default_value_t = 3306)]
        site_port: u16,
        /// OpenEMR's MySQL user, for `--site-host`.
        #[arg(long, requires = "site_host")]
        site_login: Option<String>,
        /// OpenEMR's schema, for `--site-host`.
        #[arg(long, default_value = "openemr")]
        site_database: String,
        /// In place: restore beside the live site (`<into>/_restoring-<token>`), then
        /// exchange its entries for the live ones, which are kept in
        /// `<into>/_previous-<token>`; a run after the exchange only reports it.
        #[arg(long, conflicts_with = "overwrite")]
        swap_token: Option<String>,
        /// With `--swap-token`: stop once the set is complete beside the live site (run
        /// while the clinic still serves); a later run without it only exchanges.
        #[arg(long, requires = "swap_token")]
        stage_only: bool,
    },
}

/// Who runs, as the mirror's lock says: the pod (or host) and the process.
fn holder() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .map(|h| format!("{h}/{}", std::process::id()))
        .unwrap_or_else(|_| format!("pid {}", std::process::id()))
}

/// Runs a documents subcommand; prints its summary as one JSON line.
/// A password from the environment only (a flag would show in a process list); exit 2
/// naming the variable when it is not set.
fn password_from_env(
    variable: &str,
    what: &str,
) -> Result<openemr_operator::aws::secrets::SecretValue, ExitCode> {
    std::env::var(variable)
        .map(openemr_operator::aws::secrets::SecretValue)
        .map_err(|_| {
            eprintln!("error: set {variable} to {what}");
            ExitCode::from(2)
        })
}

/// The `check-database` command: one JSON line per database check.
fn check_database(
    endpoint: &str,
    login: &openemr_operator::mysql::Login,
    ca_file: &std::path::Path,
    addresses: &[String],
    timeout: Duration,
) -> ExitCode {
    use openemr_operator::mysql::{self, checks};
    let usage = |e: String| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    };
    let (host, port) = match endpoint.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(p) if p > 0 => (h, p),
            _ => {
                return usage(format!(
                    "--endpoint {endpoint:?}: the port must be 1 to 65535"
                ));
            }
        },
        None => (endpoint, 3306),
    };
    let endpoint = mysql::Endpoint {
        host: host.to_string(),
        port,
    };
    let addresses = match mysql::AddressMap::parse(addresses) {
        Ok(a) => a,
        Err(e) => return usage(e),
    };
    let ca = match std::fs::read(ca_file) {
        Ok(ca) => ca,
        Err(e) => return usage(format!("--mysql-ca-file {}: {e}", ca_file.display())),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return usage(e.to_string()),
    };
    let verdict = runtime.block_on(async {
        let mut session = mysql::connect(&endpoint, login, &ca, &addresses, timeout).await;
        let verdict =
            checks::run(&checks::DATABASE_CHECKS, session.as_mut().map_err(|e| &*e)).await;
        if let Ok(s) = session {
            s.close().await;
        }
        verdict
    });
    for f in &verdict.findings {
        println!(
            "{}",
            serde_json::json!({"check": f.check, "passed": f.passed, "message": f.message})
        );
    }
    if verdict.findings.iter().all(|f| f.passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn run_documents(command: DocumentsCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (flags, result) = match command {
            DocumentsCommand::Backup {
                bucket,
                dir,
                prefix,
                manifest,
                previous,
                kms_key,
                multipart_threshold_mib,
                part_size_mib,
                lock_lease,
                lock_wait,
                journal_every,
            } => {
                let store = bucket.store(kms_key).await;
                let options = documents::backup::BackupOptions {
                    root: dir,
                    prefix: prefix.clone(),
                    manifest_key: manifest,
                    previous,
                    concurrency: bucket.concurrency,
                    multipart_threshold: multipart_threshold_mib * 1024 * 1024,
                    part_size: part_size_mib * 1024 * 1024,
                    work_dir: bucket.work_dir.clone(),
                    lock_key: documents::backup::lock_key(&prefix),
                    lock_lease,
                    lock_wait,
                    holder: holder(),
                    journal_every,
                };
                let result = documents::backup::backup(&store, &options).await.map(|s| {
                    let code = if s.unreadable_count > 0 { 2 } else { 0 };
                    (serde_json::to_string(&s), code)
                });
                (bucket, result)
            }
            DocumentsCommand::Verify {
                bucket,
                manifest,
                against,
            } => {
                let store = bucket.store(None).await;
                let options = documents::verify::VerifyOptions {
                    manifest_key: manifest,
                    against,
                    concurrency: bucket.concurrency,
                    work_dir: bucket.work_dir.clone(),
                };
                let result = documents::verify::verify(&store, &options).await.map(|s| {
                    let code = if s.problem_count > 0 { 3 } else { 0 };
                    (serde_json::to_string(&s), code)
                });
                (bucket, result)
            }
            DocumentsCommand::Prune {
                bucket,
                keep,
                keep_others,
                drop,
                manifests_prefix,
                prefix,
                lock_lease,
                batch,
            } => {
                let store = bucket.store(None).await;
                let options = documents::prune::PruneOptions {
                    keep,
                    keep_others,
                    drop,
                    manifests_prefix,
                    batch,
                    work_dir: bucket.work_dir.clone(),
                    prefix,
                    lock_lease,
                    holder: holder(),
                };
                let result = documents::prune::prune(&store, &options)
                    .await
                    .map(|s| (serde_json::to_string(&s), 0));
                (bucket, result)
            }
            DocumentsCommand::Sweep {
                bucket,
                manifests_prefix,
                prefix,
                grace,
                lock_lease,
                batch,
            } => {
                let store = bucket.store(None).await;
                let options = documents::sweep::SweepOptions {
                    manifests_prefix,
                    prefix,
                    grace,
                    lock_lease,
                    holder: holder(),
                    batch,
                    work_dir: bucket.work_dir.clone(),
                };
                let result = documents::sweep::sweep(&store, &options)
                    .await
                    .map(|s| (serde_json::to_string(&s), 0));
                (bucket, result)
            }
            DocumentsCommand::Copy {
                bucket,
                manifest,
                to_bucket,
                to_region,
                to_kms_key,
                to_manifest,
                previous,
                prefix,
                multipart_threshold_mib,
                part_size_mib,
                lock_lease,
                lock_wait,
            } => {
                let from = bucket.store(None).await;
                let to = documents::store::Store {
                    client: documents::s3_client_in(bucket.path_style, &to_region).await,
                    bucket: to_bucket,
                    kms_key: to_kms_key,
                };
                let options = documents::copy::CopyOptions {
                    to_manifest_key: to_manifest.unwrap_or_else(|| manifest.clone()),
                    manifest_key: manifest,
                    previous,
                    prefix,
                    concurrency: bucket.concurrency,
                    multipart_threshold: multipart_threshold_mib * 1024 * 1024,
                    part_size: part_size_mib * 1024 * 1024,
                    work_dir: bucket.work_dir.clone(),
                    lock_lease,
                    lock_wait,
                    holder: holder(),
                };
                let result = documents::copy::copy(&from, &to, &options)
                    .await
                    .map(|s| (serde_json::to_string(&s), 0));
                (bucket, result)
            }
            DocumentsCommand::SiteDirs {
                bucket,
                into,
                swap_token,
                undo,
                discard: _,
            } => {
                use documents::swap;
                let result = if undo {
                    swap::swap_back(&into, &swap_token).map(|moved| {
                        serde_json::json!({
                            "undone": moved,
                            "rolledBack": format!("_rolled-back-{swap_token}"),
                        })
                    })
                } else {
                    swap::discard_previous(&into, &swap_token).map(|deleted| {
                        serde_json::json!({
                            "discarded": deleted,
                            "previousDocuments": swap::previous_name(&swap_token),
                        })
                    })
                };
                (bucket, result.map(|line| (serde_json::to_string(&line), 0)))
            }
            DocumentsCommand::Restore {
                bucket,
                manifest,
                into,
                owners,
                overwrite,
                site_host,
                site_port,
                site_login,
                site_database,
                swap_token,
                stage_only,
            } => {
                // Read before anything is written: a missing password fails at once.
                let site = match (site_host, site_login) {
                    (Some(host), Some(login)) => Some(documents::sqlconf::DatabaseSettings {
                        host,
                        port: site_port,
                        login,
                        password: match password_from_env(
                            "OPENEMR_DATABASE_PASSWORD",
                            "OpenEMR's database password (for --site-host)",
                        ) {
                            Ok(p) => p,
                            Err(code) => return Ok(code),
                        },
                        database: site_database,
                    }),
                    _ => None,
                };
                use documents::swap;
                let root = into.clone();
                let swapped = swap_token
                    .as_ref()
                    .and_then(|token| swap::already_swapped(&root, token));
                if let Some(done) = swapped {
                    // Exchanged by an earlier run: only reported.
                    (bucket, Ok((Ok(done.trim().to_string()), 0)))
                } else {
                    let store = bucket.store(None).await;
                    let options = documents::restore::RestoreOptions {
                        manifest_key: manifest,
                        into: match &swap_token {
                            Some(token) => swap::restoring_dir(&root, token),
                            None => into,
                        },
                        concurrency: bucket.concurrency,
                        owners,
                        // A retried pod finds the first one's files beside the site: replaced.
                        overwrite: overwrite || swap_token.is_some(),
                        work_dir: bucket.work_dir.clone(),
                    };
                    let restored = match swap_token
                        .as_ref()
                        .and_then(|token| swap::restored_complete(&root, token))
                    {
                        Some(summary) => serde_json::from_str::<serde_json::Value>(&summary)
                            .map_err(|e| format!("the restored tree's record: {e}"))
                            .map(Err),
                        None => documents::restore::restore(&store, &options).await.map(Ok),
                    };
                    let result = match restored {
                        // Complete beside the site by an earlier run: only the exchange is left.
                        Ok(Err(line)) => Ok((line, 0)),
                        Ok(Ok(summary)) => match &site {
                            None => Ok((serde_json::to_value(&summary)?, 0)),
                            Some(to) => {
                                let site_dir = options.into.join("default");
                                match documents::sqlconf::rewrite_file(&site_dir, to) {
                                    Ok(file) => {
                                        let mut line = serde_json::to_value(&summary)?;
                                        line["siteConfig"] = serde_json::json!({
                                            "file": file, "host": to.host, "port": to.port,
                                            "login": to.login, "database": to.database,
                                        });
                                        Ok((line, 0))
                                    }
                                    Err(e) => Err(format!(
                                        "restored {} files, then {}: {e}",
                                        summary.files,
                                        e.reason()
                                    )),
                                }
                            }
                        },
                        Err(e) => Err(e),
                    };
                    let result = match (result, &swap_token) {
                        (Ok((mut line, code)), Some(token)) => {
                            line["previousDocuments"] = swap::previous_name(token).into();
                            let text = line.to_string();
                            let marked = swap::mark_complete(&root, token, &text);
                            if stage_only {
                                // Reported as staged; the record stays as the exchange's.
                                line["staged"] = true.into();
                                marked.map(|()| (Ok(line.to_string()), code))
                            } else {
                                marked
                                    .and_then(|()| swap::swap(&root, token, &text))
                                    .map(|()| (Ok(text), code))
                            }
                        }
                        (Ok((line, code)), None) => Ok((serde_json::to_string(&line), code)),
                        (Err(e), _) => Err(e),
                    };
                    (bucket, result)
                }
            }
        };
        let (line, code) = match result {
            Ok((line, code)) => (line?, code),
            Err(e) => (serde_json::json!({"error": e}).to_string(), 1),
        };
        println!("{line}");
        if let Some(path) = &flags.summary_file {
            std::fs::write(path, &line)?;
        }
        Ok(ExitCode::from(code))
    })
}

/// Where the operator's image mounts AWS's RDS CA bundle.
const DEFAULT_MYSQL_CA_FILE: &str = "/etc/openemr-operator/ca/rds-ca.pem";

/// The web tier's CA bundles and setup Job limits.
#[derive(clap::Args, Debug, Clone)]
struct WebFlags {
    /// PEM bundle the web tier trusts for MySQL: AWS's RDS bundle (global, or the
    /// region's). Read on every look at a clinic, so replacing the file (a mounted
    /// ConfigMap) reaches every clinic; the workers roll when it changes.
    #[arg(long, env = "MYSQL_CA_FILE", default_value = DEFAULT_MYSQL_CA_FILE)]
    mysql_ca_file: PathBuf,
    /// PEM bundle the web tier trusts for Redis: Amazon Root CA 1, where ElastiCache's
    /// chain ends.
    #[arg(
        long,
        env = "REDIS_CA_FILE",
        default_value = "/etc/openemr-operator/ca/redis-ca.pem"
    )]
    redis_ca_file: PathBuf,
    /// Failed pods of a setup Job before the Job counts as failed (the Job controller
    /// retries them with its own growing delay).
    #[arg(long, env = "SETUP_BACKOFF_LIMIT", default_value_t = 4, value_parser = clap::value_parser!(i32).range(0..=20))]
    setup_backoff_limit: i32,
    /// Longest run of one setup Job (the image retries an unreachable database forever).
    #[arg(long, env = "SETUP_DEADLINE", default_value = "30m", value_parser = parse_duration)]
    setup_deadline: Duration,
    /// Wait before a failed setup Job is followed by a new one; doubles per attempt, at
    /// most an hour.
    #[arg(long, env = "SETUP_RETRY_AFTER", default_value = "5m", value_parser = parse_duration)]
    setup_retry_after: Duration,
    /// DB snapshots of image upgrades kept per clinic: once an upgrade succeeds, its
    /// incarnation's older ones beyond this many go (its own always stays).
    #[arg(long, env = "UPGRADE_SNAPSHOTS_KEPT", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    upgrade_snapshots_kept: u16,
    /// The image backup sets' documents Jobs run: this operator's own (its `documents`
    /// subcommand). A policy's `documents.image` overrides it.
    #[arg(long, env = "DOCUMENTS_IMAGE")]
    documents_image: Option<String>,
    /// The service account documents Jobs run as, in each clinic's namespace; its IAM role
    /// (IRSA or Pod Identity) reaches the clinic's bucket and key.
    #[arg(
        long,
        env = "DOCUMENTS_SERVICE_ACCOUNT",
        default_value = "openemr-documents"
    )]
    documents_service_account: String,
    /// Pods a documents Job tries before the set fails.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i32).range(0..=10))]
    documents_backoff_limit: i32,
    /// Longest a documents Job may take, retries included.
    #[arg(long, default_value = "6h", value_parser = parse_duration)]
    documents_deadline: Duration,
    /// Lifetime of a `Quiesced` set's hold on its clinic: renewed at every look while the
    /// set runs, so an operator away longer than this cannot keep a clinic down; the set
    /// then fails (`HoldLapsed`) rather than pass off a copy taken while the clinic ran.
    /// At least three progress intervals.
    #[arg(long, env = "QUIESCE_HOLD_LIFETIME", default_value = "15m", value_parser = parse_duration)]
    quiesce_hold_lifetime: Duration,
    /// RDS's quota of manual DB snapshots per account and region (100 unless raised in
    /// Service Quotas): a set that would go beyond it fails at once
    /// (`SnapshotQuotaExceeded`) instead of an AWS error mid-set. Every tool's manual
    /// snapshots count, upgrade snapshots included.
    #[arg(long, env = "MANUAL_SNAPSHOT_QUOTA", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    manual_snapshot_quota: u32,
    /// Dial a database endpoint elsewhere in the operator's own sessions (a restore's),
    /// `NAME=HOST:PORT` with NAME a host name or `*.domain` (repeatable): a tunnel or a
    /// proxy. The certificate is still checked against the endpoint's name.
    #[arg(
        long = "database-address",
        env = "DATABASE_ADDRESSES",
        value_delimiter = ','
    )]
    database_addresses: Vec<String>,
}

/// Who records the clinics' AWS activity (for clinics with `spec.audit.cloudTrail`).
#[derive(clap::Args, Debug, Clone)]
struct AuditFlags {
    /// Region of the shared audit trail's stack (`openemr-audit`), one per AWS account,
    /// shared by every clinic and cluster there. Every cluster using an account must give
    /// the same region: the audit bucket's name (`<account>-openemr-audit-logs`) is one
    /// per account.
    #[arg(long, env = "AUDIT_REGION", default_value = "us-east-1", value_parser = parse_region)]
    audit_region: String,
    /// Days the shared trail's log files are kept (HIPAA asks six years).
    #[arg(long, env = "AUDIT_LOG_RETENTION_DAYS", default_value_t = DEFAULT_RETENTION_DAYS, value_parser = clap::value_parser!(u32).range(1..=36500))]
    audit_log_retention_days: u32,
    /// ARN of an organisation trail that already records every account: the operator then
    /// makes no trail of its own, and each clinic's status names this one.
    #[arg(long, env = "ORGANIZATION_TRAIL", value_parser = parse_trail_arn)]
    organization_trail: Option<String>,
    /// How often each account's shared trail is read once it is ready: a trail someone
    /// stopped is started again, or a deleted one reported, within this.
    #[arg(long, env = "AUDIT_REFRESH_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    audit_refresh_interval: Duration,
}

impl AuditFlags {
    fn mode(&self) -> AuditMode {
        match &self.organization_trail {
            Some(trail_arn) => AuditMode::Organization {
                trail_arn: trail_arn.clone(),
            },
            None => AuditMode::Shared {
                region: self.audit_region.clone(),
                retention_days: self.audit_log_retention_days,
            },
        }
    }
}

fn parse_region(text: &str) -> Result<String, String> {
    let ok = text.split('-').count() >= 3
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!("{text:?} is not an AWS region such as us-east-1"))
    }
}

fn parse_trail_arn(text: &str) -> Result<String, String> {
    let parts: Vec<&str> = text.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[2] == "cloudtrail"
        && parts[5].starts_with("trail/")
        && parts[5].len() > "trail/".len();
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a trail ARN such as arn:aws:cloudtrail:us-east-1:111122223333:trail/org-trail"
        ))
    }
}

/// The operator's clock, for tests and rehearsals: it decides when holds lapse, setups
/// retry, upgrades time out and schedules fire. Leave unset in production.
#[derive(clap::Args, Debug, Clone)]
struct ClockFlags {
    /// What the operator's clock shows at `--clock-anchor` (RFC 3339, e.g.
    /// 2027-03-14T06:59:00Z). Unset: the system clock.
    #[arg(long, env = "CLOCK_START")]
    clock_start: Option<Timestamp>,
    /// The real instant at which the clock shows `--clock-start` (RFC 3339); default: when
    /// the operator starts. Lets a test and the operator agree on the clock exactly.
    #[arg(long, env = "CLOCK_ANCHOR", requires = "clock_start")]
    clock_anchor: Option<Timestamp>,
    /// How many times faster than real time the clock runs (e.g. 60: an hour a minute).
    /// Poll intervals, retries of failed calls and AWS call budgets stay real.
    #[arg(long, env = "CLOCK_SPEED", default_value_t = 1.0)]
    clock_speed: f64,
}

impl ClockFlags {
    fn clock(&self) -> Result<Clock, String> {
        let anchor = self.clock_anchor.unwrap_or_else(Timestamp::now);
        Clock::new(anchor, self.clock_start.unwrap_or(anchor), self.clock_speed)
    }
}

/// Longest timing a flag takes: a day is far beyond any useful resync or retry, and the
/// reconcile scheduler cannot hold delays of years.
const MAX_FLAG_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A duration such as `500ms`, `15s`, `10m` or `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} lacks a unit (ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use ms, s, m or h"
            ));
        }
    };
    if duration.is_zero() {
        return Err(format!("{text:?} must be longer than zero"));
    }
    if duration > MAX_FLAG_DURATION {
        return Err(format!("{text:?} is longer than 24h"));
    }
    Ok(duration)
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn write_crds(dir: Option<PathBuf>) -> anyhow::Result<()> {
    match dir {
        None => print!("{}", api::all_crds_yaml()?),
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for crd in api::crds() {
                std::fs::write(dir.join(api::crd_file_name(&crd)), api::crd_yaml(&crd)?)?;
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd { dir } => write_crds(dir),
        Command::SiteConfig {
            site_dir,
            host,
            port,
            login,
            database,
        } => {
            use openemr_operator::documents::sqlconf;
            let password =
                match password_from_env("OPENEMR_DATABASE_PASSWORD", "OpenEMR's database password")
                {
                    Ok(p) => p,
                    Err(code) => return code,
                };
            let to = sqlconf::DatabaseSettings {
                host,
                port,
                login,
                password,
                database,
            };
            let (line, code) = match sqlconf::rewrite_file(&site_dir, &to) {
                Ok(file) => (
                    serde_json::json!({"file": file, "host": to.host, "port": to.port, "login": to.login, "database": to.database}),
                    ExitCode::SUCCESS,
                ),
                Err(e) => (
                    serde_json::json!({"error": e.to_string(), "reason": e.reason()}),
                    ExitCode::from(1),
                ),
            };
            println!("{line}");
            return code;
        }
        Command::CheckDatabase {
            endpoint,
            user,
            database,
            mysql_ca_file,
            database_addresses,
            timeout,
        } => {
            let password = match password_from_env("MYSQL_PASSWORD", "the user's password") {
                Ok(p) => p,
                Err(code) => return code,
            };
            let login = openemr_operator::mysql::Login {
                user,
                password,
                database: Some(database),
            };
            return check_database(
                &endpoint,
                &login,
                &mysql_ca_file,
                &database_addresses,
                timeout,
            );
        }
        Command::Documents { command } => match run_documents(command) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Run {
            probe_addr,
            namespace,
            log_format,
            max_concurrent_reconciles,
            resync_interval,
            retry_initial,
            retry_max,
            cluster_id,
            progress_interval,
            inventory_interval,
            account_roles,
            budgets,
            web,
            clock,
            audit,
        } => {
            init_logging(log_format);
            match clock.clock().and_then(openemr_operator::clock::install) {
                Ok(()) => {
                    let clock = openemr_operator::clock::current();
                    if !clock.is_system() {
                        tracing::warn!(
                            now = %openemr_operator::clock::now(),
                            speed = clock.speed(),
                            "the operator's clock is not the system clock (--clock-start, --clock-speed)"
                        );
                    }
                }
                Err(e) => {
                    eprintln!("error: --clock-speed / --clock-start: {e}");
                    return ExitCode::from(2);
                }
            }
            let database_addresses =
                match openemr_operator::mysql::AddressMap::parse(&web.database_addresses) {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("error: --database-address: {e}");
                        return ExitCode::from(2);
                    }
                };
            // The hold is renewed at every look of its set: a lifetime shorter than a few looks
            // would lapse under a set that is alive.
            let lifetime = openemr_operator::clock::current().real(web.quiesce_hold_lifetime);
            if lifetime < progress_interval * 3 {
                eprintln!(
                    "error: --quiesce-hold-lifetime {:?} must be at least three --progress-interval ({:?})",
                    web.quiesce_hold_lifetime, progress_interval
                );
                return ExitCode::from(2);
            }
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(run::run(run::RunOptions {
                        probe_addr,
                        namespace,
                        driver: DriverConfig {
                            concurrency: max_concurrent_reconciles,
                            resync: resync_interval,
                            retry_initial,
                            retry_max: retry_max.max(retry_initial),
                            ..DriverConfig::default()
                        },
                        aws: run::AwsOptions {
                            cluster_id,
                            progress_interval,
                            inventory_interval,
                            account_roles: account_roles.into_iter().collect(),
                            budgets: budgets.config(),
                            ca_files: CaFiles {
                                mysql: web.mysql_ca_file,
                                redis: web.redis_ca_file,
                            },
                            database_addresses,
                            workload: WorkloadConfig {
                                setup_backoff_limit: web.setup_backoff_limit,
                                setup_deadline: web.setup_deadline,
                                setup_retry_after: web.setup_retry_after,
                                upgrade_snapshots_kept: usize::from(web.upgrade_snapshots_kept),
                                master_copy_recheck: progress_interval,
                                documents_image: web.documents_image.clone(),
                                documents_service_account: web.documents_service_account.clone(),
                                documents_backoff_limit: web.documents_backoff_limit,
                                documents_deadline: web.documents_deadline,
                                quiesce_hold_lifetime: web.quiesce_hold_lifetime,
                                manual_snapshot_quota: web.manual_snapshot_quota,
                            },
                            audit: audit.mode(),
                            audit_refresh: audit.audit_refresh_interval,
                        },
                    }))
                })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openemr-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
