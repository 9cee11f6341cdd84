//! `openemr-operator run`: connect, serve probes and metrics, wait for the CRDs to be
//! Established, run one controller per kind, and stop cleanly on SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{self, BackupPolicy, OpenEMRDeployment, RestoreRequest};
use crate::aws::inventory::Inventory;
use crate::aws::{self, accounts::AwsPool, budget::BudgetConfig, budget::Budgets};
use crate::controller::RefKind;
use crate::controller::audit::{AuditMode, AuditTrails};
use crate::controller::deployment::clinic::ClusterId;
use crate::controller::deployment::web::WorkloadConfig;
use crate::controller::driver::{Driver, watch_secrets};
use crate::controller::triggers::Target;
use crate::controller::{CaFiles, ClinicAws, Context, DriverConfig, Reconcile, run_controller};
use crate::metrics::Metrics;
use crate::server::{self, Health};

/// Options of `run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub probe_addr: SocketAddr,
    /// Watch only this namespace; the whole cluster when `None`.
    pub namespace: Option<String>,
    /// Concurrency, resync and retry timings of the controllers.
    pub driver: DriverConfig,
    pub aws: AwsOptions,
}

/// How the operator reaches AWS.
#[derive(Debug, Clone)]
pub struct AwsOptions {
    pub cluster_id: ClusterId,
    pub progress_interval: Duration,
    pub inventory_interval: Duration,
    /// The operator's own role in each other account (account id → role ARN).
    pub account_roles: std::collections::BTreeMap<String, String>,
    /// Request rates per account, region and service.
    pub budgets: BudgetConfig,
    pub ca_files: CaFiles,
    /// `--database-address` rules of the operator's own database sessions.
    pub database_addresses: crate::mysql::AddressMap,
    pub workload: WorkloadConfig,
    /// Who records the clinics' AWS activity.
    pub audit: AuditMode,
    /// How often each account's shared trail is read once ready.
    pub audit_refresh: Duration,
}

/// Runs until SIGTERM/SIGINT; returns Ok after a clean shutdown.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API server")?;
    let metrics = Arc::new(Metrics::new());
    let health = Health {
        ready: Arc::new(AtomicBool::new(false)),
        metrics: metrics.clone(),
    };
    let (addr, serve) = server::bind(
        opts.probe_addr,
        health.clone(),
        shutdown.clone().cancelled_owned(),
    )
    .await
    .with_context(|| format!("binding {}", opts.probe_addr))?;
    info!(%addr, "serving /healthz, /readyz and /metrics");
    let server = tokio::spawn(serve);

    tokio::select! {
        established = wait_for_crds(&client) => established?,
        () = shutdown.cancelled() => {
            info!("shutdown requested before the CRDs were established");
            server.await??;
            return Ok(());
        }
    }

    let base = aws::load_base_config().await;
    let budgets = Arc::new(Budgets::new(opts.aws.budgets, metrics.clone()));
    let (mut ctx, writers) = Context::new(client, metrics.clone(), opts.namespace, opts.driver);
    metrics.backups.watch(Box::new(ctx.caches.clone()));
    metrics
        .manual_snapshot_quota
        .set(i64::from(opts.aws.workload.manual_snapshot_quota));
    let pool = Arc::new(
        AwsPool::new(base, metrics.clone(), budgets)
            .with_account_roles(opts.aws.account_roles.clone()),
    );
    let snapshots = Arc::new(crate::aws::snapshots::SnapshotInventory::new(
        pool.clone(),
        metrics,
    ));
    let inventory = Arc::new(Inventory::new(
        opts.aws.inventory_interval,
        opts.aws.cluster_id.as_str(),
        pool.clone(),
    ));
    let audit = Arc::new(AuditTrails::new(
        opts.aws.audit.clone(),
        opts.aws.progress_interval,
        opts.aws.audit_refresh,
    ));
    ctx.aws = Some(ClinicAws {
        audit,
        refusals: Default::default(),
        pool,
        cluster: opts.aws.cluster_id.clone(),
        progress_interval: opts.aws.progress_interval,
        inventory: inventory.clone(),
        snapshots,
        workload: opts.aws.workload.clone(),
        ca_files: opts.aws.ca_files.clone(),
        database_addresses: opts.aws.database_addresses.clone(),
    });
    let ctx = Arc::new(ctx);
    info!(config = ?ctx.config, "controllers starting");
    // Each kind's watch reports once its cache holds the first full list; reconciles start
    // when every cache has, since each controller looks up the objects it names in them.
    let (synced, mut synced_rx) = mpsc::channel::<()>(CONTROLLERS);
    let controllers = async {
        tokio::join!(
            run_controller(
                driver::<OpenEMRDeployment>(&ctx, ctx.caches.deployments.clone()),
                writers.deployments,
                shutdown.clone(),
                synced.clone()
            ),
            run_controller(
                driver::<BackupPolicy>(&ctx, ctx.caches.policies.clone()),
                writers.policies,
                shutdown.clone(),
                synced.clone()
            ),
            run_controller(
                Arc::new(Driver::sharing_index(
                    ctx.clone(),
                    ctx.caches.backups.clone(),
                    ctx.caches.backup_refs.clone(),
                )),
                writers.backups,
                shutdown.clone(),
                synced.clone()
            ),
            run_controller(
                driver::<RestoreRequest>(&ctx, ctx.caches.restores.clone()),
                writers.restores,
                shutdown.clone(),
                synced.clone()
            ),
            watch_secrets(ctx.clone(), shutdown.clone()),
            crate::controller::children::run(ctx.clone(), writers.children, shutdown.clone()),
            inventory.run(
                |owner| ctx.hub.publish(Target::new(
                    RefKind::Infrastructure,
                    &owner.namespace,
                    &owner.name
                )),
                shutdown.clone()
            ),
        )
    };
    let readiness = async {
        tokio::select! {
            () = async { for _ in 0..CONTROLLERS { synced_rx.recv().await; } } => {
                ctx.mark_caches_synced();
                health.set_ready(true);
                info!("caches synced; ready");
            }
            () = shutdown.cancelled() => {}
        }
    };
    // Reconciles are idempotent and resumable, so a controller still busy after the grace
    // period may be cut off (Kubernetes would kill the pod soon after anyway).
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = async { tokio::join!(controllers, readiness) } => {}
        () = grace => warn!(grace = ?SHUTDOWN_GRACE, "controllers did not stop within the grace period; exiting"),
    }
    health.set_ready(false);
    server.await??;
    info!("stopped");
    Ok(())
}

/// The controllers `run` starts, one per kind.
const CONTROLLERS: usize = 4;

fn driver<K: Reconcile>(
    ctx: &Arc<Context>,
    reader: kube::runtime::reflector::Store<kube::core::DeserializeGuard<K>>,
) -> Arc<Driver<K>> {
    Arc::new(Driver::new(ctx.clone(), reader))
}

/// How long running reconciles get to finish after SIGTERM (below Kubernetes' default
/// 30 s termination grace period).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

async fn cancel_on_signal(token: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the operator");
            let _ = tokio::signal::ctrl_c().await;
            token.cancel();
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received, shutting down"),
    }
    token.cancel();
}

/// Waits until every CRD this operator serves is Established, logging the ones still
/// missing every 30 seconds.
async fn wait_for_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in api::crds() {
        let name = crd.metadata.name.unwrap_or_default();
        loop {
            let wait = await_condition(api.clone(), &name, conditions::is_crd_established());
            match tokio::time::timeout(Duration::from_secs(30), wait).await {
                Ok(result) => {
                    result.with_context(|| format!("watching CRD {name}"))?;
                    info!(crd = %name, "established");
                    break;
                }
                Err(_) => {
                    warn!(crd = %name, "still waiting for the CRD to be installed and Established (kubectl apply -f crds/)")
                }
            }
        }
    }
    Ok(())
}
