//! The controllers: one per kind, each a pipeline `observe` (read the caches, Kubernetes,
//! later AWS) → `plan` (a pure function of the object, what was observed and the time) →
//! `act` (the mutating calls the plan asks for, each recorded in status before it is sent)
//! → `status` (server-side apply of `status` only, and only when it changed).
//!
//! This module owns what the four share: the [`Reconcile`] trait, the shared [`Context`]
//! (client, metrics, the caches of every kind, the trigger hub), [`Plan`] and the reconcile
//! [`Error`]. [`driver`] runs a kind's pipeline; [`triggers`] decides what wakes an object;
//! [`state`] is the per-object memory.

pub mod audit;
pub mod backup;
pub mod backup_policy;
pub mod children;
pub mod deployment;
pub mod driver;
pub mod redact;
pub mod restore;
pub mod state;
pub mod triggers;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::core::object::HasStatus;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::{
    BackupPolicy, ChangeIntent, Condition, OpenEMRBackup, OpenEMRDeployment, RestoreRequest,
};
use crate::conditions::{self, Verdict};
use crate::metrics::Metrics;

pub use driver::run_controller;
pub use triggers::RefKind;

/// Longest Event note, in bytes (the API server refuses more than 1 KiB).
pub const MAX_EVENT_NOTE: usize = 1024;

/// Prefix of every field manager and the Event reporter of this operator.
pub const FIELD_MANAGER: &str = "openemr-operator";

/// Condition type saying whether the last reconcile could do its work.
pub const SYNCED: &str = "Synced";
/// The condition saying an object is fully in effect, for kinds that have one.
pub const READY: &str = "Ready";

/// Timings and limits of the reconcile driver (flags of `run`).
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Reconciles running at once, per controller.
    pub concurrency: u16,
    /// How often an object is looked at again when nothing happens.
    pub resync: Duration,
    /// First retry after a failed reconcile; doubled on each further failure.
    pub retry_initial: Duration,
    /// Longest wait between retries of a failing object.
    pub retry_max: Duration,
    /// Consecutive failures before `Synced=False` is written (and announced): one failed
    /// attempt that the retry fixes costs no status write and no Event.
    pub report_after_failures: u32,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            concurrency: 8,
            resync: Duration::from_secs(600),
            retry_initial: Duration::from_secs(15),
            retry_max: Duration::from_secs(600),
            report_after_failures: 2,
        }
    }
}

impl DriverConfig {
    /// `retry_initial` after the first failure, doubling up to `retry_max`.
    pub fn backoff(&self, consecutive_failures: u32) -> Duration {
        let exponent = consecutive_failures.saturating_sub(1).min(20);
        self.retry_initial
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.retry_max)
    }
}

/// The caches of this operator's kinds, shared by every controller: what an object names is
/// looked up here, not fetched from the API server on every pass.
#[derive(Clone)]
pub struct Caches {
    pub deployments: Store<DeserializeGuard<OpenEMRDeployment>>,
    pub policies: Store<DeserializeGuard<BackupPolicy>>,
    pub backups: Store<DeserializeGuard<OpenEMRBackup>>,
    pub restores: Store<DeserializeGuard<RestoreRequest>>,
    /// The sets by what they name (their clinic, their policy, themselves), kept by the
    /// sets' watch: a set finds its clinic's or its policy's sets without scanning every
    /// set of the cluster.
    pub backup_refs: Arc<triggers::ReferenceIndex<ObjectRef<DeserializeGuard<OpenEMRBackup>>>>,
}

impl Caches {
    /// The sets (in `namespace`) that name the object `kind`/`name`.
    pub fn sets_naming(
        &self,
        kind: RefKind,
        namespace: &str,
        name: &str,
    ) -> Vec<Arc<DeserializeGuard<OpenEMRBackup>>> {
        self.backup_refs
            .referrers(&triggers::Target::new(kind, namespace, name))
            .iter()
            .filter_map(|r| self.backups.get(r))
            .collect()
    }
}

impl crate::metrics::BackupView for Caches {
    fn policies(&self) -> Vec<BackupPolicy> {
        self.policies
            .state()
            .iter()
            .filter_map(|p| p.0.as_ref().ok().cloned())
            .collect()
    }

    fn sets(&self) -> Vec<OpenEMRBackup> {
        self.backups
            .state()
            .iter()
            .filter_map(|b| b.0.as_ref().ok().cloned())
            .collect()
    }
}

/// The writing halves of [`Caches`], one per kind, handed to that kind's watch.
pub struct CacheWriters {
    pub deployments: Writer<DeserializeGuard<OpenEMRDeployment>>,
    pub policies: Writer<DeserializeGuard<BackupPolicy>>,
    pub backups: Writer<DeserializeGuard<OpenEMRBackup>>,
    pub restores: Writer<DeserializeGuard<RestoreRequest>>,
    pub children: children::ChildWriters,
}

/// An object found in a cache: readable as this API, or present but malformed.
pub fn lookup<K>(
    store: &Store<DeserializeGuard<K>>,
    namespace: &str,
    name: &str,
) -> Option<Arc<DeserializeGuard<K>>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(name).within(namespace))
}

/// A step of an object that ended ([`Reconcile::steps_ended`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StepEnded {
    pub step: String,
    /// `Succeeded`, `Skipped` or `Failed`.
    pub outcome: &'static str,
    pub message: String,
    pub seconds: Option<f64>,
}

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Watch only this namespace (the whole cluster when `None`).
    pub namespace: Option<String>,
    pub config: DriverConfig,
    pub caches: Caches,
    /// Changes of named objects, for the controllers of the objects that name them.
    pub hub: triggers::TriggerHub,
    /// AWS access for the clinic controller; without it, clinics are validated only.
    pub aws: Option<ClinicAws>,
    /// The clinics' web-tier children and holds.
    pub children: children::ChildCaches,
    caches_synced: watch::Sender<bool>,
}

/// What the clinic controller needs to reach AWS.
pub struct ClinicAws {
    /// Clients per account (assumed role), session and region, with their budgets.
    pub pool: Arc<crate::aws::accounts::AwsPool>,
    /// Part of every AWS name (`--cluster-id`).
    pub cluster: deployment::clinic::ClusterId,
    /// How soon a clinic is looked at again while AWS works on it.
    pub progress_interval: Duration,
    /// DB instances and stacks per account and region, read in pages and shared.
    pub inventory: Arc<crate::aws::inventory::Inventory>,
    /// Manual DB snapshots per account and region, read in pages and shared by the sets.
    pub snapshots: Arc<crate::aws::snapshots::SnapshotInventory>,
    /// The shared audit trail of each account.
    pub audit: Arc<audit::AuditTrails>,
    /// RDS's refusals of the clinics' database changes, per clinic and generation.
    pub refusals: Arc<deployment::infra::refusals::Refusals>,
    /// Setup Job limits and retries.
    pub workload: deployment::web::WorkloadConfig,
    /// Files with the CA bundles the web tier trusts: RDS's, ElastiCache's.
    pub ca_files: CaFiles,
    /// Where the operator's own database sessions (a restore's) dial an endpoint
    /// (`--database-address`).
    pub database_addresses: crate::mysql::AddressMap,
}

/// Where the CA bundles are read from (on every look, so a replaced file reaches every
/// clinic without a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    pub mysql: std::path::PathBuf,
    pub redis: std::path::PathBuf,
}

impl Context {
    /// A context and the writers of its caches (each kind's watch fills one).
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        namespace: Option<String>,
        config: DriverConfig,
    ) -> (Self, CacheWriters) {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let (deployments, deployments_w) = reflector::store();
        let (policies, policies_w) = reflector::store();
        let (backups, backups_w) = reflector::store();
        let (restores, restores_w) = reflector::store();
        let (children, children_w) = children::ChildCaches::new();
        let ctx = Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            namespace,
            config,
            caches: Caches {
                deployments,
                policies,
                backups,
                restores,
                backup_refs: Arc::default(),
            },
            hub: triggers::TriggerHub::default(),
            aws: None,
            children,
            caches_synced: watch::Sender::new(false),
        };
        let writers = CacheWriters {
            deployments: deployments_w,
            policies: policies_w,
            backups: backups_w,
            restores: restores_w,
            children: children_w,
        };
        (ctx, writers)
    }

    /// Every cache holds its first full list: controllers may judge references now.
    pub fn mark_caches_synced(&self) {
        self.caches_synced.send_replace(true);
    }

    /// Waits until [`Self::mark_caches_synced`]; false if `shutdown` came first.
    pub async fn wait_caches_synced(&self, shutdown: &CancellationToken) -> bool {
        let mut rx = self.caches_synced.subscribe();
        tokio::select! {
            synced = rx.wait_for(|s| *s) => synced.is_ok(),
            () = shutdown.cancelled() => false,
        }
    }

    /// Publishes an Event on an object of kind `K`, its note cut to [`MAX_EVENT_NOTE`]
    /// bytes. One that cannot be written must not fail the reconcile around it.
    pub async fn publish<K: Reconcile>(
        &self,
        event: &kube::runtime::events::Event,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
    ) {
        let note = event.note.as_deref().map(|n| truncated(n, MAX_EVENT_NOTE));
        // kube's recorder counts an Event with the same type, action and reason on the same
        // object as a repeat of the last one and keeps that one's note: a second
        // `DatabaseModified` would show the first's settings. The note's digest in the
        // action makes only a true repeat (the same note) a repeat.
        let action = match &note {
            Some(n) => format!(
                "{}-{}",
                event.action,
                &deployment::clinic::short_hash(&[n])[..6]
            ),
            None => event.action.clone(),
        };
        let event = &kube::runtime::events::Event {
            type_: event.type_,
            reason: event.reason.clone(),
            note,
            action,
            secondary: event.secondary.clone(),
        };
        self.metrics
            .events
            .get_or_create(&crate::metrics::ControllerLabel::new(K::CONTROLLER))
            .inc();
        if let Err(e) = self.recorder.publish(event, reference).await {
            tracing::warn!(controller = K::CONTROLLER, error = %e, "publishing event failed");
        }
    }

    /// An API handle over the watched scope.
    pub fn scoped<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }
}

/// The object's current status with `verdicts` merged into its conditions and
/// `observedGeneration` set: the starting point of every plan.
pub fn status_with<K: Reconcile>(obj: &K, verdicts: &[Verdict], now: Timestamp) -> K::Status {
    status_from(
        obj,
        obj.status().cloned().unwrap_or_default(),
        verdicts,
        now,
    )
}

/// Like [`status_with`], for a `status` the plan already changed from `obj`'s.
pub fn status_from<K: Reconcile>(
    obj: &K,
    status: K::Status,
    verdicts: &[Verdict],
    now: Timestamp,
) -> K::Status {
    let mut status = merged(obj, status, verdicts, now);
    status.set_observed_generation(obj.meta().generation);
    status
}

/// `status` with `verdicts` merged into its conditions.
fn merged<K: Reconcile>(
    obj: &K,
    mut status: K::Status,
    verdicts: &[Verdict],
    now: Timestamp,
) -> K::Status {
    let conditions = conditions::merge(status.conditions(), verdicts, obj.meta().generation, now);
    *status.conditions_mut() = conditions;
    status
}

/// Longest condition message written; AWS and API errors can be long, and status is read
/// by people.
const MAX_CONDITION_MESSAGE: usize = 512;

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
pub fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let marker = "…";
    let mut end = max.saturating_sub(marker.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &text[..end])
}

/// Errors of a reconcile, one variant per step; `reason()` is stable (conditions, Events,
/// metric labels).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {what}: {source}")]
    Observe {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{action}: {message}")]
    Act {
        action: String,
        reason: &'static str,
        message: String,
    },
    /// An AWS call failed; the reason is its error class (`AwsThrottled`, …).
    #[error("{action}: {source}")]
    Aws {
        action: &'static str,
        #[source]
        source: crate::aws::error::AwsError,
    },
    #[error("cleaning up: {0}")]
    Cleanup(String),
    /// AWS is working on something this step needs finished (a final snapshot, a
    /// deletion); looked at again after `after`. Not a failure.
    #[error("waiting for {what}")]
    Waiting { what: String, after: Duration },
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
    /// The status was written by someone else since the cache saw it; the next look
    /// plans from the newer object. Not a failure.
    #[error("the cached object is older than the stored one; planning again")]
    StaleCache,
    #[error(
        "status fields are managed by {managers:?}, not by this operator; it does not overwrite them"
    )]
    StatusConflict { managers: Vec<String> },
    #[error("updating the finalizer: {0}")]
    Finalizer(#[source] kube::Error),
    #[error("object cannot be read as this operator's API: {0}")]
    InvalidObject(String),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Observe { .. } => "ObserveFailed",
            Error::Act { reason, .. } => reason,
            Error::Aws { source, .. } => source.reason(),
            Error::Cleanup(_) => "CleanupFailed",
            Error::Waiting { .. } => "Waiting",
            Error::WriteStatus(_) => "StatusWriteFailed",
            Error::StaleCache => "StaleCache",
            Error::StatusConflict { .. } => "StatusConflict",
            Error::Finalizer(_) => "FinalizerFailed",
            Error::InvalidObject(_) => "InvalidObject",
        }
    }

    /// Whether this counts towards backoff and `Synced=False`.
    pub fn is_failure(&self) -> bool {
        !matches!(self, Error::StaleCache | Error::Waiting { .. })
    }

    /// The message for a condition: the error, cut to a length people read. Callers keep
    /// per-call noise (request IDs, timestamps) out of their errors so that a repeated
    /// failure writes nothing new.
    pub fn condition_message(&self) -> String {
        truncated(&self.to_string(), MAX_CONDITION_MESSAGE)
    }

    pub(crate) fn observe(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Observe { what, source }
    }
}

/// When to look at an object again, absent any change to it or to what it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// The slow resync (jittered per object).
    Resync,
    /// After this long (jittered per object, never sooner).
    After(Duration),
    /// After this long and no later (capped at the resync): a time someone asked for, such
    /// as a schedule's next slot, which jitter would make late.
    Exactly(Duration),
    /// Only when the object or something it names changes: nothing else can alter the
    /// verdict (e.g. a schedule that does not parse).
    OnChange,
}

/// The outcome of planning: the status to have, the changes to make, when to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan<S, C> {
    pub status: S,
    /// Mutating calls to make, in order. Each is recorded in `status.inFlight` before it is
    /// sent; a plan that sees an intent left by a crash checks the world before asking for
    /// the same change again (its token makes a repeat harmless).
    pub changes: Vec<C>,
    pub requeue: Requeue,
    /// A read that failed while the rest could still be planned (the web tier while AWS
    /// cannot be read): the changes are made and the status written, then the reconcile
    /// fails with this, backing off and reporting it as any failure.
    pub failure: Option<AwsFailure>,
}

/// An AWS call that failed during `observe`, kept so that what needs no AWS still happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsFailure {
    pub action: &'static str,
    pub source: crate::aws::error::AwsError,
}

impl From<AwsFailure> for Error {
    fn from(f: AwsFailure) -> Error {
        Error::Aws {
            action: f.action,
            source: f.source,
        }
    }
}

impl Error {
    /// The AWS failure this is, or the error itself when it is something else.
    pub fn into_aws_failure(self) -> Result<AwsFailure, Error> {
        match self {
            Error::Aws { action, source } => Ok(AwsFailure { action, source }),
            other => Err(other),
        }
    }
}

impl<S, C> Plan<S, C> {
    /// A plan that only reports: accepted objects are looked at again on the resync,
    /// refused ones when something changes (their own spec, or what they name, which is
    /// watched).
    pub fn after_validation(status: S, accepted: bool) -> Self {
        let requeue = if accepted {
            Requeue::Resync
        } else {
            Requeue::OnChange
        };
        Plan {
            status,
            changes: Vec::new(),
            requeue,
            failure: None,
        }
    }
}

/// A kind that makes no changes to the world (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoChange {}

/// What every status of this API carries: conditions, the generation they describe, and
/// the change in flight.
pub trait ObjectStatus:
    Serialize + DeserializeOwned + Clone + PartialEq + Debug + Default + Send + Sync
{
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    fn set_observed_generation(&mut self, generation: Option<i64>);
    fn in_flight(&self) -> Option<&ChangeIntent>;
    fn set_in_flight(&mut self, intent: Option<ChangeIntent>);
}

/// Implements [`ObjectStatus`] for status structs with the usual field names.
#[macro_export]
macro_rules! object_status {
    ($($status:ty),*) => {$(
        impl $crate::controller::ObjectStatus for $status {
            fn conditions(&self) -> &[$crate::api::Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut Vec<$crate::api::Condition> {
                &mut self.conditions
            }
            fn set_observed_generation(&mut self, generation: Option<i64>) {
                self.observed_generation = generation;
            }
            fn in_flight(&self) -> Option<&$crate::api::ChangeIntent> {
                self.in_flight.as_ref()
            }
            fn set_in_flight(&mut self, intent: Option<$crate::api::ChangeIntent>) {
                self.in_flight = intent;
            }
        }
    )*};
}

object_status!(
    crate::api::OpenEMRDeploymentStatus,
    crate::api::BackupPolicyStatus,
    crate::api::OpenEMRBackupStatus,
    crate::api::RestoreRequestStatus
);

/// One kind's pipeline. The [`driver`] runs observe → plan → act → status for it.
pub trait Reconcile:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + HasStatus<Status: ObjectStatus>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// What `observe` reads.
    type Observed: Send;
    /// A mutating call `plan` can ask for.
    type Change: Debug + Send + Sync;

    /// Name used in logs, metric labels and the field manager.
    const CONTROLLER: &'static str;

    /// What objects of this kind are when other objects name them (`None`: never named).
    const REF_KIND: Option<RefKind> = None;

    /// A finalizer, for kinds whose deletion must clean up outside the cluster first.
    const FINALIZER: Option<&'static str> = None;

    /// The objects this one names (in its own namespace): a change to any of them
    /// reconciles this one.
    fn references(&self) -> Vec<(RefKind, String)> {
        Vec::new()
    }

    /// What this object's status tells other objects, as a digest, and which objects (by
    /// kind and name, in its namespace) to wake when the digest changes: a set that
    /// completes wakes its policy's other sets, which retention judges against it. `None`:
    /// nothing. A status write alone triggers nothing else.
    fn announced(&self) -> Option<(u64, Vec<(RefKind, String)>)> {
        None
    }

    /// Whether `condition`, as it now stands, is a failure a person must act on beyond
    /// `Accepted` and `Synced` being false: its Event is a Warning, published also when
    /// only its reason changed.
    fn warns(_condition: &crate::api::Condition) -> bool {
        false
    }

    /// Steps that ended between two statuses the driver wrote, in order: each gets an
    /// Event (a Warning for a failed one) and its duration in
    /// `openemr_step_duration_seconds`. None by default.
    fn steps_ended(
        _before: &<Self as HasStatus>::Status,
        _after: &<Self as HasStatus>::Status,
    ) -> Vec<StepEnded> {
        Vec::new()
    }

    /// Reads what the plan needs. No writes.
    fn observe(&self, ctx: &Context) -> impl Future<Output = Result<Self::Observed, Error>> + Send;

    /// Pure: the status to have, the changes to make, and when to look again.
    fn plan(
        &self,
        observed: &Self::Observed,
        now: Timestamp,
    ) -> Plan<<Self as HasStatus>::Status, Self::Change>;

    /// The action name and the deterministic token (from uid, generation, set id) of a
    /// change, recorded in status before it is sent.
    fn intent(change: &Self::Change) -> (String, String);

    /// Whether the intent of `change` is stored before it is made. Changes that are
    /// idempotent and leave nothing to recognise after a crash (a server-side apply) skip
    /// the status write.
    fn recorded(_change: &Self::Change) -> bool {
        true
    }

    /// Makes one change.
    fn act(
        &self,
        change: &Self::Change,
        ctx: &Context,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Whether a deleted object has work to finish through its usual pipeline (observe →
    /// plan → act) before [`Reconcile::cleanup`] and the removal of its finalizer: an
    /// in-place restore that stopped its clinic puts it back first. Judged on its current
    /// status; while true, `plan` sees `metadata.deletionTimestamp` and the finalizer stays.
    fn finishes_before_cleanup(
        &self,
        _status: &<Self as HasStatus>::Status,
        _ctx: &Context,
    ) -> bool {
        false
    }

    /// Undoes what the object made, before its finalizer is removed. Must work even if no
    /// reconcile ever ran for it.
    fn cleanup(&self, _ctx: &Context) -> impl Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_ceiling() {
        let config = DriverConfig::default();
        let secs: Vec<u64> = (1..=9).map(|n| config.backoff(n).as_secs()).collect();
        assert_eq!(secs, [15, 30, 60, 120, 240, 480, 600, 600, 600]);
        assert_eq!(config.backoff(u32::MAX), config.retry_max);
        assert_eq!(config.backoff(0), config.retry_initial);
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(truncated("short", 10), "short");
        let long = "é".repeat(600);
        let cut = truncated(&long, 1024);
        assert!(cut.len() <= 1024, "{}", cut.len());
        assert!(cut.ends_with('…'));
        let cut = truncated(&"x".repeat(2000), 1024);
        assert_eq!(cut.len(), 1024);
    }

    #[test]
    fn only_a_stale_cache_is_not_a_failure() {
        assert!(!Error::StaleCache.is_failure());
        assert!(Error::Cleanup("x".into()).is_failure());
        let long = Error::Act {
            action: "CreateStack".into(),
            reason: "Invalid",
            message: "y".repeat(5000),
        };
        assert_eq!(long.reason(), "Invalid");
        assert!(long.condition_message().len() <= MAX_CONDITION_MESSAGE);
    }
}
