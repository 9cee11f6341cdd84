//! The reconcile driver: runs one kind's watch, its triggers and its pipeline.
//!
//! - **Watch**: one per kind, guarded against objects that do not deserialize, with
//!   `managedFields` stripped, filling the kind's cache in [`Context::caches`]. Each event
//!   updates the fingerprints, the reference index and the per-object state, and wakes
//!   the object only when people or the world changed it ([`triggers`]); a change that
//!   matters to objects naming it is published on the hub.
//! - **Reconcile**: wrapped in the kind's finalizer if it has one; observe → plan → for
//!   each change: record the intent in status, then act → status, written by server-side
//!   apply under this controller's own field manager, with the resourceVersion it planned
//!   from as a precondition, without forcing over fields another manager owns.
//! - **Failures**: backoff per object (doubling, jittered); `Synced=False` is written only
//!   from the second consecutive failure, so one blip costs nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::state::{Current, ObjectStates};
use super::triggers::{Fingerprints, ReferenceIndex, Target, jittered};
use super::{
    Context, Error, FIELD_MANAGER, ObjectStatus, READY, Reconcile, Requeue, SYNCED, merged,
};
use crate::api::ChangeIntent;
use crate::conditions::{self, Verdict};
use crate::metrics::ControllerLabel;

/// The API's limit on an Event's note.
/// How far requeue delays are spread (a fraction of the delay, added).
const JITTER: f64 = 0.1;
/// How soon an object whose cache was stale is planned again.
const STALE_RETRY: Duration = Duration::from_secs(1);

type Guarded<K> = DeserializeGuard<K>;

/// One controller's own state, shared by its watch and its reconciles.
pub struct Driver<K: Reconcile> {
    pub ctx: Arc<Context>,
    /// The kind's cache, filled by its watch.
    reader: Store<Guarded<K>>,
    states: ObjectStates,
    /// What each object names; shared with the reconciles when the kind's objects are
    /// looked up by what they name ([`Caches::backup_refs`](super::Caches::backup_refs)).
    index: Arc<ReferenceIndex<ObjectRef<Guarded<K>>>>,
    prints: Fingerprints,
    field_manager: String,
}

impl<K: Reconcile> Driver<K> {
    pub fn new(ctx: Arc<Context>, reader: Store<Guarded<K>>) -> Self {
        Self::sharing_index(ctx, reader, Arc::default())
    }

    /// A driver that keeps its reference index in `index`, which others read.
    pub fn sharing_index(
        ctx: Arc<Context>,
        reader: Store<Guarded<K>>,
        index: Arc<ReferenceIndex<ObjectRef<Guarded<K>>>>,
    ) -> Self {
        Driver {
            ctx,
            reader,
            states: ObjectStates::default(),
            index,
            prints: Fingerprints::default(),
            field_manager: field_manager(K::CONTROLLER),
        }
    }

    /// The resourceVersion of `obj` in the cache.
    fn cached_version(&self, obj: &K) -> Option<String> {
        let reference =
            ObjectRef::new(&obj.name_any()).within(&obj.namespace().unwrap_or_default());
        self.reader.get(&reference)?.meta().resource_version.clone()
    }

    /// Objects with per-object state held (failing, or written ahead of the cache).
    pub fn tracked_objects(&self) -> usize {
        self.states.len()
    }

    fn label(&self) -> ControllerLabel {
        ControllerLabel::new(K::CONTROLLER)
    }

    fn update_gauges(&self) {
        let label = self.label();
        let metrics = &self.ctx.metrics;
        metrics
            .tracked_objects
            .get_or_create(&label)
            .set(self.states.len() as i64);
        metrics
            .watched_objects
            .get_or_create(&label)
            .set(self.prints.len() as i64);
    }
}

/// The field manager of one controller's status writes.
pub fn field_manager(controller: &str) -> String {
    format!("{FIELD_MANAGER}/{controller}")
}

/// Runs the watch and the controller of kind `K` until `shutdown` is cancelled, then lets
/// running reconciles finish. One message goes to `synced` once the kind's cache holds its
/// first full list; reconciles start once [`Context::mark_caches_synced`] was called.
pub async fn run_controller<K: Reconcile>(
    driver: Arc<Driver<K>>,
    writer: Writer<Guarded<K>>,
    shutdown: CancellationToken,
    synced: mpsc::Sender<()>,
) {
    let ctx = driver.ctx.clone();
    let (own_tx, own_rx) = mpsc::unbounded_channel::<ObjectRef<Guarded<K>>>();
    let watch = watch_kind(driver.clone(), writer, own_tx, synced, shutdown.clone());
    let controller = async {
        if !ctx.wait_caches_synced(&shutdown).await {
            info!(
                controller = K::CONTROLLER,
                "stopped before the caches synced"
            );
            return;
        }
        info!(controller = K::CONTROLLER, "starting");
        let own = receiver_stream(own_rx);
        let index_driver = driver.clone();
        let referred = receiver_stream(ctx.hub.subscribe())
            .flat_map(move |target| stream::iter(index_driver.index.referrers(&target)));
        let no_watch = stream::pending::<Result<Guarded<K>, watcher::Error>>();
        Controller::for_stream(no_watch, driver.reader.clone())
            .with_config(controller::Config::default().concurrency(ctx.config.concurrency))
            .reconcile_on(own)
            .reconcile_on(referred)
            .graceful_shutdown_on(shutdown.clone().cancelled_owned())
            .run(reconcile::<K>, error_policy::<K>, driver.clone())
            .for_each(|result| async move {
                if let Err(e) = result {
                    debug!(controller = K::CONTROLLER, error = %e, "reconcile failed");
                }
            })
            .await;
        info!(controller = K::CONTROLLER, "stopped");
    };
    tokio::join!(watch, controller);
}

fn receiver_stream<T: Send + 'static>(
    rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) })
}

/// The kind's watch: fills the cache and turns events into triggers.
async fn watch_kind<K: Reconcile>(
    driver: Arc<Driver<K>>,
    writer: Writer<Guarded<K>>,
    own: mpsc::UnboundedSender<ObjectRef<Guarded<K>>>,
    synced: mpsc::Sender<()>,
    shutdown: CancellationToken,
) {
    let ctx = driver.ctx.clone();
    let initialized = AtomicBool::new(false);
    let mut listing: Option<HashSet<String>> = None;
    let events = watcher(
        ctx.scoped::<Guarded<K>>(),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(|obj| {
        // managedFields is most of an object's size and never read here.
        obj.managed_fields_mut().clear();
    })
    .reflect(writer);
    let mut events = std::pin::pin!(events.take_until(shutdown.cancelled_owned()));
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listing = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(obj)) => {
                if let Some(live) = listing.as_mut() {
                    live.insert(obj.meta().uid.clone().unwrap_or_default());
                }
                seen(&driver, &obj, &own, initialized.load(Ordering::SeqCst));
            }
            Ok(watcher::Event::Apply(obj)) => seen(&driver, &obj, &own, true),
            Ok(watcher::Event::Delete(obj)) => gone(&driver, obj.meta()),
            Ok(watcher::Event::InitDone) => {
                if let Some(live) = listing.take() {
                    relisted(&driver, &live);
                }
                if !initialized.swap(true, Ordering::SeqCst) {
                    // The channel has room for every controller's one message.
                    let _ = synced.try_send(());
                }
            }
            Err(e) => warn!(controller = K::CONTROLLER, error = %e, "watch error; retrying"),
        }
        driver.update_gauges();
    }
}

/// An object appeared or changed.
fn seen<K: Reconcile>(
    driver: &Driver<K>,
    obj: &Guarded<K>,
    own: &mpsc::UnboundedSender<ObjectRef<Guarded<K>>>,
    publish: bool,
) {
    let meta = obj.meta();
    let uid = meta.uid.clone().unwrap_or_default();
    let reference = ObjectRef::from_obj(obj);
    driver
        .states
        .cache_saw(&uid, meta.resource_version.as_deref());
    let namespace = meta.namespace.clone().unwrap_or_default();
    let announced = match &obj.0 {
        Ok(valid) => valid.announced(),
        Err(_) => None,
    };
    let digest = announced.as_ref().map_or(0, |(digest, _)| *digest);
    let changed = driver.prints.observe(meta, digest);
    if changed.own {
        // What an object names comes from its spec, which the own fingerprint covers: a
        // status-only event leaves the index as it is.
        let targets = match &obj.0 {
            Ok(valid) => valid
                .references()
                .into_iter()
                .map(|(kind, name)| Target::new(kind, &namespace, &name))
                .collect(),
            Err(_) => Vec::new(),
        };
        driver.index.set(reference.clone(), targets);
        let _ = own.send(reference);
    }
    if changed.referred
        && publish
        && let Some(kind) = K::REF_KIND
    {
        let name = meta.name.clone().unwrap_or_default();
        driver.ctx.hub.publish(Target::new(kind, &namespace, &name));
    }
    // Read from the cache, which the watch updated before this event: whoever is told
    // judges the object as it is now.
    if changed.announced && publish {
        for (kind, name) in announced.map(|(_, told)| told).unwrap_or_default() {
            driver.ctx.hub.publish(Target::new(kind, &namespace, &name));
        }
    }
}

/// An object is gone: forget it, and tell whoever names it.
fn gone<K: Reconcile>(
    driver: &Driver<K>,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) {
    let uid = meta.uid.clone().unwrap_or_default();
    let namespace = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    forget(driver, &uid, &namespace, &name);
}

fn forget<K: Reconcile>(driver: &Driver<K>, uid: &str, namespace: &str, name: &str) {
    driver.states.forget(uid);
    driver.prints.forget(uid);
    driver.index.remove(&ObjectRef::new(name).within(namespace));
    if let Some(kind) = K::REF_KIND {
        driver.ctx.hub.publish(Target::new(kind, namespace, name));
    }
}

/// A fresh list reports no deletions: whatever it lacks is gone.
fn relisted<K: Reconcile>(driver: &Driver<K>, live: &HashSet<String>) {
    for (uid, namespace, name) in driver.prints.retain(live) {
        forget(driver, &uid, &namespace, &name);
    }
    driver.states.retain(live);
}

/// Watches Secrets' metadata (no cache, no values) so that a clinic naming a Secret hears
/// of it appearing or changing at once.
pub async fn watch_secrets(ctx: Arc<Context>, shutdown: CancellationToken) {
    use super::triggers::RefKind;
    let events = watcher(
        ctx.scoped::<PartialObjectMeta<Secret>>(),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff();
    let mut events = std::pin::pin!(events.take_until(shutdown.cancelled_owned()));
    while let Some(event) = events.next().await {
        // Lists are published too: a Secret created while the watch was down (or not yet
        // allowed) shows up only there. Only Secrets some clinic names wake anything.
        let meta = match &event {
            Ok(
                watcher::Event::Apply(m) | watcher::Event::InitApply(m) | watcher::Event::Delete(m),
            ) => &m.metadata,
            Ok(watcher::Event::Init | watcher::Event::InitDone) => continue,
            Err(e) => {
                warn!(error = %e, "Secret watch error; retrying");
                continue;
            }
        };
        ctx.hub.publish(Target::new(
            RefKind::Secret,
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        ));
    }
}

async fn reconcile<K: Reconcile>(
    guarded: Arc<Guarded<K>>,
    driver: Arc<Driver<K>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = match &guarded.0 {
        Ok(obj) => with_finalizer(obj, &driver).await,
        Err(invalid) => {
            report_invalid::<K>(invalid, &driver.ctx).await;
            Err(Error::InvalidObject(invalid.error.clone()))
        }
    };
    if let (Err(e), Ok(obj)) = (&result, &guarded.0) {
        record_failure(obj, e, &driver).await;
    }
    driver.ctx.metrics.observe_reconcile(
        K::CONTROLLER,
        started.elapsed(),
        result.as_ref().err().map(Error::reason),
    );
    driver.update_gauges();
    result
}

async fn with_finalizer<K: Reconcile>(obj: &K, driver: &Driver<K>) -> Result<Action, Error> {
    let Some(name) = K::FINALIZER else {
        return apply(obj, driver).await;
    };
    if obj.meta().deletion_timestamp.is_some() && obj.finalizers().iter().any(|f| f == name) {
        let uid = obj.uid().unwrap_or_default();
        let current = driver
            .states
            .current(&uid, obj.resource_version().as_deref(), || {
                obj.status().cloned().unwrap_or_default()
            });
        if obj.finishes_before_cleanup(&current.status, &driver.ctx) {
            return Box::pin(apply(obj, driver)).await;
        }
    }
    let api: Api<K> = Api::namespaced(
        driver.ctx.client.clone(),
        obj.namespace().as_deref().unwrap_or_default(),
    );
    finalizer(&api, name, Arc::new(obj.clone()), |event| async move {
        match event {
            finalizer::Event::Apply(obj) => Box::pin(apply(obj.as_ref(), driver)).await,
            finalizer::Event::Cleanup(obj) => {
                Box::pin(obj.cleanup(&driver.ctx)).await?;
                info!(controller = K::CONTROLLER, namespace = ?obj.namespace(), name = %obj.name_any(), "cleaned up");
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => {
            Error::Finalizer(e)
        }
        other => Error::InvalidObject(other.to_string()),
    })
}

/// The pipeline for one object that exists and is not being deleted.
async fn apply<K: Reconcile>(cached: &K, driver: &Driver<K>) -> Result<Action, Error> {
    let ctx = &driver.ctx;
    let uid = cached.uid().unwrap_or_default();
    // Plan from the status as it really is, which may be newer than the cache's.
    let current = driver
        .states
        .current(&uid, cached.resource_version().as_deref(), || {
            cached.status().cloned().unwrap_or_default()
        });
    let mut obj = cached.clone();
    *obj.status_mut() = Some(current.status.clone());
    // Boxed, as the changes below: a kind's observe and act are large futures, and a
    // reconcile nested in them (the finalizer's) overflowed a worker's stack in debug
    // builds.
    let observed = Box::pin(obj.observe(ctx)).await?;
    // After observing: what was observed (a Lease's renewal) is judged against a now no
    // earlier than itself.
    let now = crate::clock::now();
    let plan = obj.plan(&observed, now);
    let synced = Verdict::truthy(SYNCED, "Reconciled", "the last reconcile succeeded");
    // A plan that carries a failure leaves `Synced` as the object had it: the failure is
    // reported (after the configured count) by `record_failure`.
    let verdicts: &[Verdict] = if plan.failure.is_some() {
        &[]
    } else {
        std::slice::from_ref(&synced)
    };
    let mut status = merged(&obj, plan.status, verdicts, now);
    let mut written = current;
    for change in &plan.changes {
        if !K::recorded(change) {
            Box::pin(obj.act(change, ctx)).await?;
            continue;
        }
        let (action, token) = K::intent(change);
        // A repeat of the intent left by an earlier attempt keeps its start time.
        let started_at = written
            .status
            .in_flight()
            .filter(|i| i.action == action && i.token == token)
            .map_or(Time(now), |i| i.started_at.clone());
        status.set_in_flight(Some(ChangeIntent {
            action,
            token,
            started_at,
        }));
        // The intent is stored before the call goes out: a crash after the call leaves a
        // trace the next plan sees. The conditions stay as they were until the changes are
        // made: `Ready` must not speak for a generation whose changes may still fail.
        let mut intent = status.clone();
        *intent.conditions_mut() = written.status.conditions().to_vec();
        written = update_status(&obj, &written, &intent, driver).await?;
        *obj.status_mut() = Some(written.status.clone());
        Box::pin(obj.act(change, ctx)).await?;
        status.set_in_flight(None);
    }
    if let Some(failure) = plan.failure {
        // What could be done is done and said; then the object backs off.
        update_status(&obj, &written, &status, driver).await?;
        return Err(failure.into());
    }
    if plan.changes.iter().all(|c| !K::recorded(c)) {
        // The plan saw the world and wants nothing: an intent left over is settled.
        status.set_in_flight(None);
    }
    update_status(&obj, &written, &status, driver).await?;
    driver.states.succeeded(&uid);
    Ok(match plan.requeue {
        Requeue::Resync => Action::requeue(jittered(ctx.config.resync, &uid, JITTER)),
        // A delay from user input (a point in time years ahead) is capped: the resync
        // looks again anyway, and the scheduler refuses delays of years.
        Requeue::After(delay) => {
            Action::requeue(jittered(delay.min(ctx.config.resync), &uid, JITTER))
        }
        Requeue::Exactly(delay) => Action::requeue(delay.min(ctx.config.resync)),
        Requeue::OnChange => Action::await_change(),
    })
}

/// Counts a failure; from the configured consecutive count on, says so in status.
async fn record_failure<K: Reconcile>(obj: &K, error: &Error, driver: &Driver<K>) {
    if !error.is_failure() {
        return;
    }
    let uid = obj.uid().unwrap_or_default();
    let failures = driver.states.failed(&uid);
    if failures < driver.ctx.config.report_after_failures {
        debug!(controller = K::CONTROLLER, name = %obj.name_any(), error = %error, "reconcile failed; retrying before reporting it");
        return;
    }
    warn!(controller = K::CONTROLLER, namespace = ?obj.namespace(), name = %obj.name_any(), failures, error = %error, "reconcile failed");
    if matches!(error, Error::StatusConflict { .. }) {
        // Writing status is what fails; the Event below says it instead.
        let reference = obj.object_ref(&());
        let event = Event {
            type_: EventType::Warning,
            reason: error.reason().into(),
            note: Some(error.condition_message()),
            action: SYNCED.into(),
            secondary: None,
        };
        if failures == driver.ctx.config.report_after_failures {
            driver.ctx.publish::<K>(&event, &reference).await;
        }
        return;
    }
    let current = driver
        .states
        .current(&uid, obj.resource_version().as_deref(), || {
            obj.status().cloned().unwrap_or_default()
        });
    let synced = Verdict::falsy(SYNCED, error.reason(), error.condition_message());
    let mut verdicts = vec![synced];
    // `Ready` said for an earlier generation is not said for this one, which failed.
    let generation = obj.meta().generation;
    let stale_ready = conditions::find(current.status.conditions(), READY)
        .filter(|c| c.status == "True" && c.observed_generation != generation);
    if stale_ready.is_some() {
        verdicts.push(Verdict::falsy(
            READY,
            "ReconcileFailed",
            format!(
                "generation {} is not in effect: {}",
                generation.unwrap_or_default(),
                error.condition_message()
            ),
        ));
    }
    let failed = merged(obj, current.status.clone(), &verdicts, crate::clock::now());
    if let Err(write) = update_status(obj, &current, &failed, driver).await {
        warn!(controller = K::CONTROLLER, error = %write, "cannot record the failure in status");
    }
}

/// Writes `status` if it differs from what `current` holds, and announces condition
/// transitions. Returns what is stored now.
async fn update_status<K: Reconcile>(
    obj: &K,
    current: &Current<K::Status>,
    status: &K::Status,
    driver: &Driver<K>,
) -> Result<Current<K::Status>, Error> {
    if *status == current.status {
        return Ok(current.clone());
    }
    let produced = write_status(obj, status, current.resource_version.as_deref(), driver).await?;
    let uid = obj.uid().unwrap_or_default();
    let seen = || produced.is_some() && driver.cached_version(obj) == produced;
    driver
        .states
        .wrote(&uid, obj.resource_version(), produced.clone(), status, seen);
    publish_transitions(
        obj,
        current.status.conditions(),
        status.conditions(),
        &driver.ctx,
    )
    .await;
    publish_steps(obj, K::steps_ended(&current.status, status), &driver.ctx).await;
    Ok(Current {
        status: status.clone(),
        resource_version: produced,
    })
}

/// Server-side apply of `status` under this controller's field manager, on condition that
/// the object is still at `resource_version`. Returns the new resourceVersion.
async fn write_status<K: Reconcile>(
    obj: &K,
    status: &K::Status,
    resource_version: Option<&str>,
    driver: &Driver<K>,
) -> Result<Option<String>, Error> {
    let namespace = obj.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(driver.ctx.client.clone(), &namespace);
    let name = obj.name_any();
    let written =
        apply_status(&api, &name, &driver.field_manager, status, resource_version).await?;
    driver
        .ctx
        .metrics
        .status_writes
        .get_or_create(&driver.label())
        .inc();
    let summary: Vec<String> = status
        .conditions()
        .iter()
        .map(|c| format!("{}={} ({})", c.type_, c.status, c.reason))
        .collect();
    info!(
        controller = K::CONTROLLER,
        namespace = %namespace,
        name = %name,
        conditions = %summary.join(", "),
        "status written"
    );
    Ok(written.resource_version())
}

/// Server-side applies `status` to object `name` as `manager`, on condition that the object
/// is still at `resource_version`, without forcing over another manager's fields (fields
/// an earlier manager of this operator left are taken over). Returns the object written.
pub async fn apply_status<K: Reconcile>(
    api: &Api<K>,
    name: &str,
    manager: &str,
    status: &K::Status,
    resource_version: Option<&str>,
) -> Result<K, Error> {
    let mut body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if let Some(version) = resource_version {
        body["metadata"] = serde_json::json!({ "resourceVersion": version });
    }
    let params = PatchParams::apply(manager);
    let result = match api.patch_status(name, &params, &Patch::Apply(&body)).await {
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let managers = conflicting_managers(&status);
            if managers.is_empty() {
                return Err(Error::StaleCache);
            }
            if !managers.iter().all(|m| is_ours(m)) {
                return Err(Error::StatusConflict { managers });
            }
            info!(controller = K::CONTROLLER, %name, ?managers, "taking over status fields from an earlier manager of this operator");
            api.patch_status(name, &params.force(), &Patch::Apply(&body))
                .await
        }
        other => other,
    };
    result.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 409 => Error::StaleCache,
        e => Error::WriteStatus(e),
    })
}

/// The field managers named by a server-side apply conflict.
fn conflicting_managers(status: &kube::core::Status) -> Vec<String> {
    let mut managers: Vec<String> = status
        .details
        .iter()
        .flat_map(|d| &d.causes)
        .filter(|c| c.reason == "FieldManagerConflict")
        .filter_map(|c| c.message.split('"').nth(1).map(str::to_string))
        .collect();
    managers.sort();
    managers.dedup();
    managers
}

fn is_ours(manager: &str) -> bool {
    manager == FIELD_MANAGER || manager.starts_with(&format!("{FIELD_MANAGER}/"))
}

async fn publish_transitions<K: Reconcile>(
    obj: &K,
    before: &[crate::api::Condition],
    after: &[crate::api::Condition],
    ctx: &Context,
) {
    let reference = obj.object_ref(&());
    for (c, warning) in notable(before, after, K::warns) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: c.reason.clone(),
            note: Some(format!("{} is {}: {}", c.type_, c.status, c.message)),
            action: c.type_.clone(),
            secondary: None,
        };
        ctx.publish::<K>(&event, &reference).await;
    }
}

/// An Event per step that ended (a Warning for a failed one), and its duration.
async fn publish_steps<K: Reconcile>(obj: &K, ended: Vec<super::StepEnded>, ctx: &Context) {
    let reference = obj.object_ref(&());
    for step in ended {
        if let Some(seconds) = step.seconds {
            ctx.metrics
                .step_duration
                .get_or_create(&crate::metrics::StepLabels {
                    controller: K::CONTROLLER.to_string(),
                    step: step.step.clone(),
                    outcome: step.outcome.to_string(),
                })
                .observe(seconds);
        }
        let event = Event {
            type_: if step.outcome == "Failed" {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: step.step.clone(),
            note: Some(format!("{} {}: {}", step.step, step.outcome, step.message)),
            action: "Step".into(),
            secondary: None,
        };
        ctx.publish::<K>(&event, &reference).await;
    }
}

/// The conditions worth an Event between `before` and `after`, and whether each is a
/// Warning: every change of status (a new reason alone for the same status is no news),
/// and a change of reason where the kind says the condition now warns (`warns`: a
/// restore's `Succeeded=False` going from `InProgress` to why it failed).
fn notable<'a>(
    before: &[crate::api::Condition],
    after: &'a [crate::api::Condition],
    warns: fn(&crate::api::Condition) -> bool,
) -> Vec<(&'a crate::api::Condition, bool)> {
    after
        .iter()
        .filter_map(|c| {
            let previous = conditions::find(before, &c.type_);
            // Every object starts Synced; only losing it, or getting it back, is news.
            if c.type_ == SYNCED && c.status == "True" && previous.is_none() {
                return None;
            }
            // Refused input, failing reconciles and failures the kind names are what a
            // person must act on; progress is informational.
            let warning =
                ((c.type_ == "Accepted" || c.type_ == SYNCED) && c.status != "True") || warns(c);
            let changed = match previous {
                None => true,
                Some(p) => p.status != c.status || (warns(c) && p.reason != c.reason),
            };
            changed.then_some((c, warning))
        })
        .collect()
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
    ctx.publish::<K>(&event, &reference).await;
}

fn error_policy<K: Reconcile>(
    obj: Arc<Guarded<K>>,
    error: &Error,
    driver: Arc<Driver<K>>,
) -> Action {
    let uid = obj.meta().uid.clone().unwrap_or_default();
    match error {
        // A malformed object stays malformed until someone edits it, which triggers anew.
        Error::InvalidObject(_) => Action::await_change(),
        Error::StaleCache => Action::requeue(STALE_RETRY),
        Error::Waiting { after, .. } => Action::requeue(jittered(*after, &uid, JITTER)),
        _ => {
            let failures = driver.states.failures(&uid);
            Action::requeue(jittered(driver.ctx.config.backoff(failures), &uid, JITTER))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conditions(verdicts: &[Verdict]) -> Vec<crate::api::Condition> {
        conditions::merge(
            &[],
            verdicts,
            Some(1),
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        )
    }

    #[test]
    fn events_come_from_changes_of_status_and_from_failures_the_kind_names() {
        let failed = |c: &crate::api::Condition| c.type_ == "Succeeded" && c.reason == "Failed";
        let summary = |found: Vec<(&crate::api::Condition, bool)>| {
            found
                .into_iter()
                .map(|(c, warning)| (c.type_.clone(), c.reason.clone(), warning))
                .collect::<Vec<_>>()
        };
        let running = conditions(&[
            Verdict::truthy(SYNCED, "Reconciled", ""),
            Verdict::falsy("Succeeded", "InProgress", "step 1"),
            Verdict::falsy("Accepted", "SourceNotFound", ""),
        ]);
        // A first Synced=True is no news; a refusal warns; progress informs.
        assert_eq!(
            summary(notable(&[], &running, failed)),
            [
                ("Accepted".to_string(), "SourceNotFound".to_string(), true),
                ("Succeeded".to_string(), "InProgress".to_string(), false)
            ]
        );
        // A new reason for the same status is no news, unless the kind says it warns.
        let later = conditions(&[
            Verdict::truthy(SYNCED, "Reconciled", ""),
            Verdict::falsy("Succeeded", "InProgress", "step 2"),
            Verdict::falsy("Accepted", "SourceNotCompleted", ""),
        ]);
        assert!(notable(&running, &later, failed).is_empty());
        let failure = conditions(&[
            Verdict::truthy(SYNCED, "Reconciled", ""),
            Verdict::falsy("Succeeded", "Failed", "it failed"),
            Verdict::falsy("Accepted", "SourceNotCompleted", ""),
        ]);
        assert_eq!(
            summary(notable(&later, &failure, failed)),
            [("Succeeded".to_string(), "Failed".to_string(), true)]
        );
        // Getting Accepted back is informational.
        let valid = conditions(&[Verdict::truthy("Accepted", "Valid", "")]);
        assert_eq!(
            summary(notable(&failure, &valid, failed)),
            [("Accepted".to_string(), "Valid".to_string(), false)]
        );
    }
    use kube::core::response::{StatusCause, StatusDetails};

    #[test]
    fn conflicts_name_their_managers() {
        let status = kube::core::Status {
            code: 409,
            details: Some(StatusDetails {
                causes: vec![
                    StatusCause {
                        reason: "FieldManagerConflict".into(),
                        message: r#"conflict with "openemr-operator" using openemr.io/v1alpha1"#
                            .into(),
                        field: ".status.phase".into(),
                    },
                    StatusCause {
                        reason: "FieldManagerConflict".into(),
                        message: r#"conflict with "openemr-operator""#.into(),
                        field: ".status.conditions".into(),
                    },
                ],
                name: "clinic-a".into(),
                group: "openemr.io".into(),
                kind: "openemrdeployments".into(),
                uid: String::new(),
                retry_after_seconds: 0,
            }),
            ..Default::default()
        };
        assert_eq!(conflicting_managers(&status), ["openemr-operator"]);
        assert!(is_ours("openemr-operator"));
        assert!(is_ours(&field_manager("backuppolicy")));
        assert!(!is_ours("kubectl-edit"));
        assert!(!is_ours("openemr-operator-impostor"));
        let stale = kube::core::Status {
            code: 409,
            ..Default::default()
        };
        assert!(conflicting_managers(&stale).is_empty());
    }
}
