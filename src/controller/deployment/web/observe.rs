//! What the web tier looks like: its children and holds from the caches (plus, when needed,
//! a failed setup pod's last words, its Secrets' values kept out of them, and an upgrade
//! snapshot's state from AWS). Nothing here writes.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{ListParams, ObjectMeta};
use kube::{Api, ResourceExt};
use serde::Serialize;
use serde_json::Value;

use super::holds;
use super::{
    ATTEMPT_ANNOTATION, CLINIC_LABEL, COMPONENT_LABEL, ChildKind, IMAGE_ANNOTATION, JobState,
    REDIS_AUTH_SOURCE_ANNOTATION, SetupJob, WebNames, WorkersSeen, WorkloadSeen,
};
use crate::api::OpenEMRDeployment;
use crate::api::deployment::UpgradePhase;
use crate::aws::rds::Databases;
use crate::controller::children::cached;
use crate::controller::deployment::clinic::clients;
use crate::controller::redact::redact;
use crate::controller::{AwsFailure, ClinicAws, Context, Error};

/// JSON of a cached object without what the server alone writes.
fn comparable<K: Serialize>(obj: &K) -> Value {
    let mut v = serde_json::to_value(obj).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
    }
    v
}

/// A child from its kind's cache, as JSON to compare with what the plan renders.
fn cached_child(
    c: &crate::controller::children::ChildCaches,
    kind: ChildKind,
    ns: &str,
    name: &str,
) -> Option<Value> {
    match kind {
        ChildKind::Secret => cached(&c.secrets, ns, name).map(|o| comparable(&*o)),
        ChildKind::ConfigMap => cached(&c.config_maps, ns, name).map(|o| comparable(&*o)),
        ChildKind::PersistentVolumeClaim => cached(&c.claims, ns, name).map(|o| comparable(&*o)),
        ChildKind::Service => cached(&c.services, ns, name).map(|o| comparable(&*o)),
        ChildKind::Deployment => cached(&c.deployments, ns, name).map(|o| comparable(&*o)),
        ChildKind::PodDisruptionBudget => cached(&c.budgets, ns, name).map(|o| comparable(&*o)),
        ChildKind::Ingress => cached(&c.ingresses, ns, name).map(|o| comparable(&*o)),
        ChildKind::Job => cached(&c.jobs, ns, name).map(|o| comparable(&*o)),
        ChildKind::NetworkPolicy => cached(&c.network_policies, ns, name).map(|o| comparable(&*o)),
        // Cluster-scoped.
        ChildKind::PersistentVolume => c
            .volumes
            .get(&kube::runtime::reflector::ObjectRef::new(name))
            .map(|o| comparable(&*o)),
    }
}

fn belongs(meta: &ObjectMeta, clinic: &str) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(CLINIC_LABEL))
        .is_some_and(|c| c == clinic)
}

/// Reads what the caches hold of `d`'s web tier.
/// What the web tier looks like, from the caches (and a Pod list while held); an AWS read
/// that failed comes back beside it, for the reconcile to fail with after the web tier.
pub async fn observe_workload(
    d: &OpenEMRDeployment,
    aws: &ClinicAws,
    ctx: &Context,
) -> Result<(WorkloadSeen, Option<AwsFailure>), Error> {
    let ns = d.namespace().unwrap_or_default();
    let clinic = d.name_any();
    let names = WebNames::new(&ns, &clinic);
    let caches = &ctx.children;
    let lookups = [
        (ChildKind::Secret, &names.settings_secret),
        (ChildKind::ConfigMap, &names.ca),
        (ChildKind::PersistentVolume, &names.volume),
        (ChildKind::PersistentVolumeClaim, &names.claim),
        (ChildKind::Service, &names.workers),
        (ChildKind::NetworkPolicy, &names.workers),
        (ChildKind::Deployment, &names.workers),
        (ChildKind::PodDisruptionBudget, &names.workers),
        (ChildKind::Ingress, &names.workers),
    ];
    let children = lookups
        .into_iter()
        .filter_map(|(kind, name)| {
            let found = cached_child(caches, kind, &ns, name)?;
            Some(((kind, name.clone()), found))
        })
        .collect();

    let mut setup_jobs = Vec::new();
    for job in caches.jobs.state() {
        if job.namespace().as_deref() != Some(&ns) || !belongs(&job.metadata, &clinic) {
            continue;
        }
        if job.labels().get(COMPONENT_LABEL).map(String::as_str) != Some("setup") {
            continue;
        }
        let annotations = job.annotations();
        let image = annotations
            .get(IMAGE_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        let attempt = annotations
            .get(ATTEMPT_ANNOTATION)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1);
        setup_jobs.push(SetupJob {
            name: job.name_any(),
            image,
            attempt,
            state: job_state(&job),
        });
    }
    setup_jobs.sort_by(|a, b| a.name.cmp(&b.name));
    // What a failed pod said matters only for the latest attempt of each image: the plan
    // reports and retries that one, and earlier ones stay as records without a Pod list.
    let latest: Vec<usize> = (0..setup_jobs.len())
        .filter(|&i| {
            let j = &setup_jobs[i];
            !setup_jobs
                .iter()
                .any(|o| o.image == j.image && o.attempt > j.attempt)
        })
        .collect();
    for i in latest {
        let name = setup_jobs[i].name.clone();
        if let JobState::Failed { detail, .. } = &mut setup_jobs[i].state {
            let words = last_words(ctx, &ns, &name).await?;
            if !words.is_empty() {
                // The Secrets its pod could read: their values stay out of what it said.
                let refs = cached(&caches.jobs, &ns, &name)
                    .map(|job| secret_refs(&job))
                    .unwrap_or_default();
                let known = secret_values(ctx, &ns, &refs).await;
                *detail = crate::controller::truncated(&redact(&words, &known), 200);
            }
        }
    }

    let workers = cached(&caches.deployments, &ns, &names.workers).map(|dep| workers_seen(&dep));
    let holds_of_clinic: Vec<_> = caches
        .holds
        .state()
        .iter()
        .filter(|l| l.namespace().as_deref() == Some(&ns))
        .filter_map(|l| holds::hold_of(l, &clinic))
        .collect();
    // While held, the worker pods still there, terminating ones included (a cluster
    // without `terminatingReplicas` in Deployment status shows them nowhere else).
    let worker_pods = if holds_of_clinic.is_empty() {
        None
    } else {
        Some(count_worker_pods(ctx, &ns, &clinic).await?)
    };
    let holds = holds_of_clinic;
    let secret_exists = |name: &str| cached(&caches.secrets, &ns, name).is_some();
    let admin_secret = match &d.spec.web.admin_credentials_secret_ref {
        Some(_) => true,
        // The generated one is labelled like every child, so the cache holds it.
        None => secret_exists(&names.admin_secret),
    };
    let master_copy = secret_exists(&names.master_copy);
    let redis_auth_copy = cached(&caches.secrets, &ns, &names.redis_auth).map(|s| {
        s.annotations()
            .get(REDIS_AUTH_SOURCE_ANNOTATION)
            .cloned()
            .unwrap_or_default()
    });
    // `Released`: the claim it was bound to is gone (deleted by hand, say).
    let volume_released = caches
        .volumes
        .get(&kube::runtime::reflector::ObjectRef::new(&names.volume))
        .and_then(|pv| pv.status.as_ref()?.phase.clone())
        .is_some_and(|phase| phase == "Released");
    let ca = Some(read_ca(aws).await);
    // Unread when AWS fails: the upgrade waits, everything else of the web tier goes on.
    let mut failure = None;
    let upgrade_snapshot = match d.status.as_ref().and_then(|s| s.upgrade.as_ref()) {
        Some(u) if u.phase == Some(UpgradePhase::SnapshotPending) => match &u.snapshot {
            Some(snapshot) => {
                let clients = clients(d, aws).await;
                match clients.describe_snapshot(snapshot).await {
                    Ok(found) => found.map(|s| s.status),
                    Err(source) => {
                        failure = Some(AwsFailure {
                            action: "reading the upgrade snapshot",
                            source,
                        });
                        None
                    }
                }
            }
            None => None,
        },
        _ => None,
    };
    let seen = WorkloadSeen {
        children,
        setup_jobs,
        workers,
        holds,
        worker_pods,
        admin_secret,
        master_copy,
        redis_auth_copy,
        volume_released,
        ca,
        upgrade_snapshot,
        config: aws.workload.clone(),
    };
    Ok((seen, failure))
}

async fn read_ca(aws: &ClinicAws) -> Result<(String, String), String> {
    let read = |path: std::path::PathBuf, flag: &'static str| async move {
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
        if !text.contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!(
                "{flag} {}: no PEM certificate in it",
                path.display()
            ));
        }
        Ok(text)
    };
    let mysql = read(aws.ca_files.mysql.clone(), "--mysql-ca-file").await?;
    let redis = read(aws.ca_files.redis.clone(), "--redis-ca-file").await?;
    Ok((mysql, redis))
}

pub fn job_state(job: &Job) -> JobState {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let is = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if is("Complete").is_some() {
        return JobState::Complete;
    }
    if let Some(c) = is("Failed") {
        return JobState::Failed {
            reason: format!(
                "{}: {}",
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default()
            ),
            detail: String::new(),
            // The Job controller stamps real time; the retry is timed on the operator's clock.
            at: c
                .last_transition_time
                .as_ref()
                .map(|t| crate::clock::seen_at(t.0)),
        };
    }
    JobState::Running
}

/// What the failed Job's last pod said as it terminated (its termination message, which
/// `FallbackToLogsOnError` fills from the log's tail), cut for a condition.
pub async fn last_words(ctx: &Context, ns: &str, job: &str) -> Result<String, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .map_err(Error::observe(format!("Pods of Job {ns}/{job}")))?;
    let mut words: Vec<(Option<k8s_openapi::jiff::Timestamp>, String)> = Vec::new();
    for pod in list.items {
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        for s in statuses {
            if let Some(t) = s.state.and_then(|st| st.terminated) {
                let text = t
                    .message
                    .clone()
                    .filter(|m| !m.trim().is_empty())
                    .or(t.reason.clone())
                    .unwrap_or_default();
                words.push((t.finished_at.map(|f| f.0), text.trim().to_string()));
            }
        }
    }
    words.sort();
    Ok(words.pop().map(|(_, w)| w).unwrap_or_default())
}

/// The (Secret, key) pairs a Job's containers read by `secretKeyRef`.
fn secret_refs(job: &Job) -> Vec<(String, String)> {
    let Some(pod) = job.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return Vec::new();
    };
    pod.containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
        .flat_map(|c| c.env.iter().flatten())
        .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
        .map(|r| (r.name.clone(), r.key.clone()))
        .collect()
}

/// The values behind `refs`, as far as they can be read: one that cannot is left to the
/// pattern half of [`redact`], and never stops the look.
async fn secret_values(ctx: &Context, ns: &str, refs: &[(String, String)]) -> Vec<String> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut values = Vec::new();
    for (name, key) in refs {
        let Ok(Some(secret)) = api.get_opt(name).await else {
            continue;
        };
        let bytes = secret.data.as_ref().and_then(|d| d.get(key)).map(|b| &b.0);
        if let Some(text) = bytes.and_then(|b| std::str::from_utf8(b).ok()) {
            values.push(text.to_string());
        }
    }
    values
}

/// How many pods of `clinic`'s workers exist, in any phase (terminating ones too).
async fn count_worker_pods(ctx: &Context, ns: &str, clinic: &str) -> Result<usize, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let selector = format!("app.kubernetes.io/instance={clinic},{COMPONENT_LABEL}=web");
    pods.list_metadata(&ListParams::default().labels(&selector))
        .await
        .map(|list| list.items.len())
        .map_err(Error::observe(format!("the worker pods of {ns}/{clinic}")))
}

fn workers_seen(dep: &Deployment) -> WorkersSeen {
    let spec = dep.spec.as_ref();
    let status = dep.status.as_ref();
    let image = spec
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    WorkersSeen {
        image,
        replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
        ready: status.and_then(|s| s.ready_replicas).unwrap_or(0),
        updated: status.and_then(|s| s.updated_replicas).unwrap_or(0),
        total: status.and_then(|s| s.replicas).unwrap_or(0),
        terminating: status.and_then(|s| s.terminating_replicas).unwrap_or(0),
        current: status.and_then(|s| s.observed_generation) >= dep.metadata.generation,
    }
}
