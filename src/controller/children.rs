//! Caches of the clinics' web-tier children (and of holds), filled by watches that select
//! only what this operator labels, and the triggers they raise: any change to a child, its
//! status included (a Job completing, a replica turning ready), or its deletion wakes the
//! clinic it belongs to. Plans read these caches; no reconcile lists children itself.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret, Service,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Context;
use super::deployment::web::CLINIC_LABEL;
use super::deployment::web::holds::HOLD_ON_LABEL;
use super::triggers::{RefKind, Target};

/// Selects what the operator made for a clinic.
const CHILD_SELECTOR: &str = "app.kubernetes.io/managed-by=openemr-operator,openemr.io/clinic";

/// The caches.
#[derive(Clone)]
pub struct ChildCaches {
    /// Every watch has listed once. Until then a clinic is not planned (a hold not yet
    /// seen must never let workers start), but the operator is ready: a kind it may not
    /// watch shows in its log, not as a process that never becomes ready.
    pub synced: Arc<AtomicBool>,
    pub secrets: Store<Secret>,
    pub config_maps: Store<ConfigMap>,
    pub volumes: Store<PersistentVolume>,
    pub claims: Store<PersistentVolumeClaim>,
    pub services: Store<Service>,
    pub jobs: Store<Job>,
    pub deployments: Store<Deployment>,
    pub budgets: Store<PodDisruptionBudget>,
    pub ingresses: Store<Ingress>,
    pub network_policies: Store<NetworkPolicy>,
    pub holds: Store<Lease>,
}

/// Their writing halves, for [`run`].
pub struct ChildWriters {
    secrets: Writer<Secret>,
    config_maps: Writer<ConfigMap>,
    volumes: Writer<PersistentVolume>,
    claims: Writer<PersistentVolumeClaim>,
    services: Writer<Service>,
    jobs: Writer<Job>,
    deployments: Writer<Deployment>,
    budgets: Writer<PodDisruptionBudget>,
    ingresses: Writer<Ingress>,
    network_policies: Writer<NetworkPolicy>,
    holds: Writer<Lease>,
}

impl ChildCaches {
    pub fn new() -> (ChildCaches, ChildWriters) {
        let (secrets, secrets_w) = reflector::store();
        let (config_maps, config_maps_w) = reflector::store();
        let (volumes, volumes_w) = reflector::store();
        let (claims, claims_w) = reflector::store();
        let (services, services_w) = reflector::store();
        let (jobs, jobs_w) = reflector::store();
        let (deployments, deployments_w) = reflector::store();
        let (budgets, budgets_w) = reflector::store();
        let (ingresses, ingresses_w) = reflector::store();
        let (network_policies, network_policies_w) = reflector::store();
        let (holds, holds_w) = reflector::store();
        (
            ChildCaches {
                synced: Arc::new(AtomicBool::new(false)),
                secrets,
                config_maps,
                volumes,
                claims,
                services,
                jobs,
                deployments,
                budgets,
                ingresses,
                network_policies,
                holds,
            },
            ChildWriters {
                secrets: secrets_w,
                config_maps: config_maps_w,
                volumes: volumes_w,
                claims: claims_w,
                services: services_w,
                jobs: jobs_w,
                deployments: deployments_w,
                budgets: budgets_w,
                ingresses: ingresses_w,
                network_policies: network_policies_w,
                holds: holds_w,
            },
        )
    }
}

/// A namespaced object from a cache.
pub fn cached<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(name).within(namespace))
}

/// Runs every watch until `shutdown`; [`ChildCaches::synced`] is set once all of them hold
/// their first full list.
pub async fn run(ctx: Arc<Context>, writers: ChildWriters, shutdown: CancellationToken) {
    let (listed, mut listed_rx) = mpsc::channel::<()>(WATCHES);
    let w = Watches {
        ctx: &ctx,
        listed: &listed,
        shutdown: &shutdown,
    };
    let children = |selector| (selector, CLINIC_LABEL);
    let all = futures::future::join(
        async {
            tokio::join!(
                w.scoped(writers.secrets, children(CHILD_SELECTOR)),
                w.scoped(writers.config_maps, children(CHILD_SELECTOR)),
                // Cluster-scoped; theirs carry the clinic's namespace as a label.
                w.follow(
                    Api::<PersistentVolume>::all(ctx.client.clone()),
                    writers.volumes,
                    children(CHILD_SELECTOR)
                ),
                w.scoped(writers.claims, children(CHILD_SELECTOR)),
                w.scoped(writers.services, children(CHILD_SELECTOR)),
                w.scoped(writers.jobs, children(CHILD_SELECTOR)),
                w.scoped(writers.deployments, children(CHILD_SELECTOR)),
                w.scoped(writers.budgets, children(CHILD_SELECTOR)),
                w.scoped(writers.ingresses, children(CHILD_SELECTOR)),
                w.scoped(writers.network_policies, children(CHILD_SELECTOR)),
                w.scoped(writers.holds, (HOLD_ON_LABEL, HOLD_ON_LABEL)),
            )
        },
        async {
            for _ in 0..WATCHES {
                if listed_rx.recv().await.is_none() {
                    return;
                }
            }
            ctx.children.synced.store(true, Ordering::SeqCst);
            tracing::info!("the watches of the clinics' children have listed");
        },
    );
    all.await;
}

/// The watches [`run`] starts.
const WATCHES: usize = 11;

/// What every watch shares.
struct Watches<'a> {
    ctx: &'a Context,
    listed: &'a mpsc::Sender<()>,
    shutdown: &'a CancellationToken,
}

impl Watches<'_> {
    /// A watch over the operator's scope (its namespace, or every namespace).
    async fn scoped<K>(&self, writer: Writer<K>, labels: (&'static str, &'static str))
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let api: Api<K> = match &self.ctx.namespace {
            Some(ns) => Api::namespaced(self.ctx.client.clone(), ns),
            None => Api::all(self.ctx.client.clone()),
        };
        self.follow(api, writer, labels).await;
    }

    /// Fills the cache from objects matching `selector`, waking the clinic named by their
    /// `owner_label` on every change.
    async fn follow<K>(
        &self,
        api: Api<K>,
        writer: Writer<K>,
        (selector, owner_label): (&'static str, &'static str),
    ) where
        K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    {
        let (ctx, listed, shutdown) = (self.ctx, self.listed, self.shutdown);
        let events = watcher(
            api,
            watcher::Config::default().labels(selector).any_semantic(),
        )
        .default_backoff()
        .modify(|obj| obj.managed_fields_mut().clear())
        .reflect(writer);
        let mut events = std::pin::pin!(events.take_until(shutdown.clone().cancelled_owned()));
        let mut first = true;
        while let Some(event) = events.next().await {
            let obj = match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => o,
                // A relist wakes no one: the clinics' own resync looks again.
                Ok(watcher::Event::InitApply(_) | watcher::Event::Init) => continue,
                Ok(watcher::Event::InitDone) => {
                    if std::mem::take(&mut first) {
                        let _ = listed.try_send(());
                    }
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "watch of the clinics' children failed; retrying");
                    continue;
                }
            };
            let Some(clinic) = obj.labels().get(owner_label) else {
                continue;
            };
            let namespace = obj
                .namespace()
                .or_else(|| obj.labels().get("openemr.io/namespace").cloned())
                .unwrap_or_default();
            ctx.hub
                .publish(Target::new(RefKind::Workload, &namespace, clinic));
        }
    }
}
