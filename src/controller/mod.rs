//! The controllers: one per kind, each a pipeline `observe` (read Kubernetes, later AWS) →
//! `plan` (a pure function of the object, what was observed and the time) → `act` →
//! `status` (server-side apply of `status` only, and only when it changed).
//!
//! This module owns what the four share: the shared [`Context`], the watch streams (guarded
//! against objects that do not deserialize, with `managedFields` stripped from the cache),
//! the generic reconcile driver, status writes and Events on condition transitions.

pub mod backup;
pub mod backup_policy;
pub mod deployment;
pub mod restore;

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::core::object::HasStatus;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{Condition, OpenEMRDeployment};
use crate::conditions::{self, Verdict};
use crate::metrics::Metrics;

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "openemr-operator";

/// How often an accepted object is looked at again when nothing happens.
const RESYNC: Duration = Duration::from_secs(600);
/// How soon a refused object is looked at again (its references may appear).
const RETRY_REFUSED: Duration = Duration::from_secs(30);
/// First retry after a failed reconcile; doubled on each further failure.
const RETRY_FAILED: Duration = Duration::from_secs(15);
/// Longest wait between retries of a failing object.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Watch only this namespace (the whole cluster when `None`).
    pub namespace: Option<String>,
    written: WrittenStatuses,
    failures: Failures,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, namespace: Option<String>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            namespace,
            written: WrittenStatuses::default(),
            failures: Failures::default(),
        }
    }

    /// An API handle over the watched scope.
    fn scoped<K>(&self) -> Api<K>
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
    let mut status = merged(
        obj,
        obj.status().cloned().unwrap_or_default(),
        verdicts,
        now,
    );
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

/// The metadata of `name` in `api`'s namespace, if it exists.
pub(crate) async fn get_meta<K>(
    api: &Api<K>,
    name: &str,
) -> Result<Option<PartialObjectMeta<K>>, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    api.get_metadata_opt(name)
        .await
        .map_err(Error::observe(format!("{} {name}", K::kind(&()))))
}

/// Whether `name` exists in `api`'s namespace (a metadata-only read).
pub(crate) async fn exists<K>(api: &Api<K>, name: &str) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    Ok(get_meta(api, name).await?.is_some())
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
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
    #[error("object cannot be read as this operator's API: {0}")]
    InvalidObject(String),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Observe { .. } => "ObserveFailed",
            Error::WriteStatus(_) => "StatusWriteFailed",
            Error::InvalidObject(_) => "InvalidObject",
        }
    }

    pub(crate) fn observe(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Observe { what, source }
    }
}

/// The outcome of planning: the status to have, and when to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan<S> {
    pub status: S,
    pub requeue: Duration,
}

impl<S> Plan<S> {
    /// Accepted objects are looked at again on the slow resync; refused ones sooner.
    pub fn after_validation(status: S, accepted: bool) -> Self {
        let requeue = if accepted { RESYNC } else { RETRY_REFUSED };
        Plan { status, requeue }
    }
}

/// What every status of this API carries: conditions and the generation they describe.
pub trait ObjectStatus:
    Serialize + DeserializeOwned + Clone + PartialEq + Debug + Default + Send + Sync
{
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    fn set_observed_generation(&mut self, generation: Option<i64>);
}

macro_rules! object_status {
    ($($status:ty),*) => {$(
        impl ObjectStatus for $status {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut Vec<Condition> {
                &mut self.conditions
            }
            fn set_observed_generation(&mut self, generation: Option<i64>) {
                self.observed_generation = generation;
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

/// One kind's pipeline. The driver in this module runs observe → plan → status for it.
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

    /// Name used in logs and metric labels.
    const CONTROLLER: &'static str;

    /// Reads what the plan needs. No writes.
    fn observe(&self, ctx: &Context) -> impl Future<Output = Result<Self::Observed, Error>> + Send;

    /// Pure: the status to have and when to look again.
    fn plan(&self, observed: &Self::Observed, now: Timestamp) -> Plan<<Self as HasStatus>::Status>;

    /// Whether objects of this kind name OpenEMRDeployments; if so the controller watches
    /// clinics (metadata only) so that one appearing or going away is noticed at once
    /// rather than on a retry.
    const NAMES_DEPLOYMENTS: bool = false;

    /// Whether this object names the OpenEMRDeployment `name` (in its own namespace).
    fn refers_to_deployment(&self, _name: &str) -> bool {
        false
    }
}

async fn reconcile<K: Reconcile>(
    guarded: Arc<DeserializeGuard<K>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = match &guarded.0 {
        Ok(obj) => reconcile_valid(obj, &ctx).await,
        Err(invalid) => {
            report_invalid::<K>(invalid, &ctx).await;
            Err(Error::InvalidObject(invalid.error.clone()))
        }
    };
    ctx.metrics.observe_reconcile(
        K::CONTROLLER,
        started.elapsed(),
        result.as_ref().err().map(Error::reason),
    );
    result
}

async fn reconcile_valid<K: Reconcile>(cached: &K, ctx: &Context) -> Result<Action, Error> {
    let now = Timestamp::now();
    // Plan from the status as it really is, which may be newer than the cache's.
    let mut obj = cached.clone();
    let current = ctx.written.current_status(cached);
    *obj.status_mut() = Some(current.clone());
    let observed = match obj.observe(ctx).await {
        Ok(observed) => observed,
        Err(e) => {
            // Say so on the object, not only in the log; the error policy backs off.
            let synced = Verdict::falsy(SYNCED, e.reason(), e.to_string());
            let failed = merged(&obj, current.clone(), &[synced], now);
            if let Err(write) = update_status(&obj, &current, &failed, ctx).await {
                warn!(controller = K::CONTROLLER, error = %write, "cannot record the failure in status");
            }
            return Err(e);
        }
    };
    let plan = obj.plan(&observed, now);
    let synced = Verdict::truthy(SYNCED, "Reconciled", "the last reconcile succeeded");
    let status = merged(&obj, plan.status, &[synced], now);
    update_status(&obj, &current, &status, ctx).await?;
    ctx.failures.forget(&obj);
    Ok(Action::requeue(plan.requeue))
}

/// Condition type saying whether the last reconcile could do its work.
pub const SYNCED: &str = "Synced";

/// Writes `status` if it differs from `current`, and announces condition transitions.
async fn update_status<K: Reconcile>(
    obj: &K,
    current: &K::Status,
    status: &K::Status,
    ctx: &Context,
) -> Result<(), Error> {
    if status != current {
        write_status(obj, status, ctx).await?;
        ctx.written.remember(obj, status);
        publish_transitions(obj, current.conditions(), status.conditions(), ctx).await;
    }
    Ok(())
}

/// Consecutive failed reconciles per object (by uid), for exponential backoff.
#[derive(Default)]
pub struct Failures(Mutex<HashMap<String, u32>>);

impl Failures {
    /// Counts one more failure of `obj` and returns how long to wait before the next try.
    fn next_delay<K: Resource>(&self, obj: &K) -> Duration {
        let uid = obj.meta().uid.clone().unwrap_or_default();
        let mut failures = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(uid).or_default();
        *count = count.saturating_add(1);
        backoff(*count)
    }

    fn forget<K: Resource>(&self, obj: &K) {
        if let Some(uid) = &obj.meta().uid {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
        }
    }
}

/// 15 s after the first failure, doubling up to 10 minutes.
pub fn backoff(consecutive_failures: u32) -> Duration {
    let exponent = consecutive_failures.saturating_sub(1).min(6);
    (RETRY_FAILED * 2u32.pow(exponent)).min(MAX_BACKOFF)
}

/// Statuses this process wrote whose watch event has not reached the cache yet.
///
/// A reconcile queued while the previous one was writing sees the object as it was before
/// that write; judged by the cache alone it would write (and announce) the same status
/// again. Keyed by uid, holding the resourceVersion written over and the status written;
/// an entry lives only until the cache shows a newer version.
#[derive(Default)]
pub struct WrittenStatuses(Mutex<HashMap<String, (Option<String>, serde_json::Value)>>);

impl WrittenStatuses {
    /// The status to compare a plan with: the one written, while the cache still holds the
    /// version that write replaced; else the cached one.
    fn current_status<K: Reconcile>(&self, obj: &K) -> K::Status {
        let cached = || obj.status().cloned().unwrap_or_default();
        let Some(uid) = obj.uid() else {
            return cached();
        };
        let mut written = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match written.get(&uid) {
            Some((over, status)) if *over == obj.resource_version() => {
                serde_json::from_value(status.clone()).unwrap_or_else(|_| cached())
            }
            Some(_) => {
                written.remove(&uid);
                cached()
            }
            None => cached(),
        }
    }

    fn remember<K: Reconcile>(&self, obj: &K, status: &K::Status) {
        let (Some(uid), Ok(value)) = (obj.uid(), serde_json::to_value(status)) else {
            return;
        };
        let mut written = self.0.lock().unwrap_or_else(|e| e.into_inner());
        written.insert(uid, (obj.resource_version(), value));
    }
}

async fn write_status<K: Reconcile>(
    obj: &K,
    status: &K::Status,
    ctx: &Context,
) -> Result<(), Error> {
    let namespace = obj.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(Error::WriteStatus)?;
    ctx.metrics
        .status_writes
        .get_or_create(&crate::metrics::ControllerLabel::new(K::CONTROLLER))
        .inc();
    let summary: Vec<String> = status
        .conditions()
        .iter()
        .map(|c| format!("{}={} ({})", c.type_, c.status, c.reason))
        .collect();
    info!(
        controller = K::CONTROLLER,
        namespace = %namespace,
        name = %obj.name_any(),
        conditions = %summary.join(", "),
        "status written"
    );
    Ok(())
}

async fn publish_transitions<K: Reconcile>(
    obj: &K,
    before: &[Condition],
    after: &[Condition],
    ctx: &Context,
) {
    let reference = obj.object_ref(&());
    for c in conditions::transitions(before, after) {
        let first = conditions::find(before, &c.type_).is_none();
        // Every object starts Synced; only losing it, or getting it back, is news.
        if c.type_ == SYNCED && c.status == "True" && first {
            continue;
        }
        let event = Event {
            // Refused input and failing reconciles are what a person must act on; progress
            // is informational.
            type_: if (c.type_ == "Accepted" || c.type_ == SYNCED) && c.status != "True" {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: c.reason.clone(),
            note: Some(format!("{} is {}: {}", c.type_, c.status, c.message)),
            action: c.type_.clone(),
            secondary: None,
        };
        publish::<K>(&event, &reference, ctx).await;
    }
}

/// Publishes an Event. One that cannot be written must not fail the reconcile around it.
async fn publish<K: Reconcile>(event: &Event, reference: &ObjectReference, ctx: &Context) {
    if let Err(e) = ctx.recorder.publish(event, reference).await {
        warn!(controller = K::CONTROLLER, error = %e, "publishing event failed");
    }
}

async fn report_invalid<K: Reconcile>(
    invalid: &kube::core::error_boundary::InvalidObject,
    ctx: &Context,
) {
    warn!(
        controller = K::CONTROLLER,
        namespace = invalid.metadata.namespace.as_deref().unwrap_or_default(),
        name = invalid.metadata.name.as_deref().unwrap_or_default(),
        error = %invalid.error,
        "object does not match this operator's API; ignoring it until it changes"
    );
    let reference = ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: invalid.metadata.name.clone(),
        namespace: invalid.metadata.namespace.clone(),
        uid: invalid.metadata.uid.clone(),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: "InvalidObject".into(),
        note: Some(format!(
            "cannot be read as {}: {}",
            K::kind(&()),
            invalid.error
        )),
        action: "Decode".into(),
        secondary: None,
    };
    publish::<K>(&event, &reference, ctx).await;
}

fn error_policy<K: Reconcile>(
    obj: Arc<DeserializeGuard<K>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    match error {
        // A malformed object stays malformed until someone edits it, which triggers anew.
        Error::InvalidObject(_) => Action::await_change(),
        _ => Action::requeue(ctx.failures.next_delay(&*obj)),
    }
}

/// Runs the controller of kind `K` until `shutdown` is cancelled, then lets running
/// reconciles finish. One message goes to `synced` once its cache holds the first full
/// list of objects.
pub async fn run_controller<K: Reconcile>(
    ctx: Arc<Context>,
    shutdown: CancellationToken,
    synced: tokio::sync::mpsc::Sender<()>,
) {
    let (reader, writer) = reflector::store();
    // Signalled from the stream itself: `Store::wait_until_ready` wakes only one waiter,
    // and the controller already waits on it.
    let cache_synced = Arc::new(AtomicBool::new(false));
    let mark_synced = cache_synced.clone();
    let stream = watcher(
        ctx.scoped::<DeserializeGuard<K>>(),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(|obj| {
        // managedFields is most of an object's size and never read here.
        obj.managed_fields_mut().clear();
    })
    .reflect(writer)
    .inspect(move |event| {
        if matches!(event, Ok(watcher::Event::InitDone))
            && !mark_synced.swap(true, Ordering::SeqCst)
        {
            // The channel has room for every controller's one message.
            let _ = synced.try_send(());
        }
    })
    .applied_objects();
    info!(controller = K::CONTROLLER, "starting");
    let mut controller = Controller::for_stream(stream, reader.clone());
    if K::NAMES_DEPLOYMENTS {
        let deployments = watcher(
            ctx.scoped::<PartialObjectMeta<OpenEMRDeployment>>(),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .touched_objects();
        let referrers = move |deployment: PartialObjectMeta<OpenEMRDeployment>| {
            let namespace = deployment.namespace();
            let name = deployment.name_any();
            reader
                .state()
                .into_iter()
                .filter(|guarded| {
                    guarded.0.as_ref().is_ok_and(|obj| {
                        obj.namespace() == namespace && obj.refers_to_deployment(&name)
                    })
                })
                .map(|guarded| ObjectRef::from_obj(&*guarded))
                .collect::<Vec<_>>()
        };
        controller = controller.watches_stream(deployments, referrers);
    }
    let controller = controller
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(controller = K::CONTROLLER, error = %e, "reconcile failed");
            }
        });
    // Before the first full list the controller has started no reconcile, and it would
    // wait for a list that graceful shutdown no longer reads: leave at once instead.
    let unsynced_at_shutdown = async {
        shutdown.cancelled().await;
        if cache_synced.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = controller => info!(controller = K::CONTROLLER, "stopped"),
        () = unsynced_at_shutdown => info!(controller = K::CONTROLLER, "stopped before its cache synced"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::OpenEMRBackup;
    use crate::api::backup::BackupPhase;

    fn set(resource_version: &str, phase: Option<BackupPhase>) -> OpenEMRBackup {
        let spec =
            serde_json::from_value(serde_json::json!({"deploymentRef": {"name": "clinic-a"}}))
                .unwrap();
        let mut obj = OpenEMRBackup::new("set-1", spec);
        obj.metadata.uid = Some("uid-1".into());
        obj.metadata.resource_version = Some(resource_version.into());
        obj.status = phase.map(|p| crate::api::OpenEMRBackupStatus {
            phase: Some(p),
            ..Default::default()
        });
        obj
    }

    #[test]
    fn backoff_doubles_to_a_ceiling() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [15, 30, 60, 120, 240, 480, 600, 600, 600]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn failures_count_per_object_and_reset() {
        let failures = Failures::default();
        let obj = set("1", None);
        assert_eq!(failures.next_delay(&obj).as_secs(), 15);
        assert_eq!(failures.next_delay(&obj).as_secs(), 30);
        failures.forget(&obj);
        assert_eq!(failures.next_delay(&obj).as_secs(), 15);
    }

    #[test]
    fn a_stale_cache_is_judged_by_the_status_just_written() {
        let written = WrittenStatuses::default();
        let before = set("5", None);
        let status = crate::api::OpenEMRBackupStatus {
            phase: Some(BackupPhase::Pending),
            ..Default::default()
        };
        written.remember(&before, &status);
        // The cache still shows version 5: what was written counts.
        assert_eq!(written.current_status(&set("5", None)), status);
        // The cache moved on: it counts again, and the entry is gone.
        let newer = set("6", Some(BackupPhase::Running));
        assert_eq!(
            written.current_status(&newer).phase,
            Some(BackupPhase::Running)
        );
        assert_eq!(written.current_status(&set("5", None)).phase, None);
    }
}
