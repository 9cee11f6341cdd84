//! Plans the web tier, purely: from the spec, what the infrastructure provides, the
//! children the caches hold, the holds and the previous status, to the children to apply,
//! `WorkloadReady`, `status.web` and `status.upgrade`.
//!
//! Order of a clinic's life: infrastructure ready → Secrets, CA, volume, Service → one setup
//! Job (`K8S=admin`; [`setup`](super::setup)) → once it completed, the workers
//! (`K8S=worker`). An image change on a set-up clinic is an upgrade
//! ([`upgrade`](super::upgrade)). A hold keeps the workers at 0, whatever else goes on.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::holds;
use super::render::WebInputs;
use super::setup::setup_step;
use super::upgrade::{leave_upgrade, unmet, upgrade_step};
use super::{
    Child, ChildKind, JobState, SetupJob, WORKLOAD_READY, WebChange, WebNames, WorkloadSeen,
    carries, stamped,
};
use crate::api::OpenEMRDeployment;
use crate::api::deployment::{UpgradePhase, UpgradeStatus, WebHold, WebStatus};
use crate::clock;
use crate::conditions::Verdict;
use crate::controller::deployment::clinic::{short_hash, upgrade_snapshot};
use crate::controller::deployment::secrets::{PASSWORD_KEY, SecretKey};
use crate::controller::deployment::site::Site;

/// The web tier's part of a clinic's plan.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadPlan {
    pub verdict: Verdict,
    pub web: WebStatus,
    pub upgrade: Option<UpgradeStatus>,
    pub changes: Vec<WebChange>,
    /// AWS works on something the web tier waits for (the pre-upgrade snapshot): look
    /// again at the progress interval. Everything else wakes the clinic through a watch.
    pub in_progress: bool,
    /// A timer: a failed setup's next attempt, an upgrade's timeout.
    pub wake_after: Option<Duration>,
    /// The web tier is being set up or upgraded.
    pub busy: bool,
}

/// How soon a hold not yet in effect is looked at again.
const HOLD_CHECK: Duration = Duration::from_secs(5);

/// Plans the web tier. `site` is where the infrastructure is: `None` until the stack and
/// the database were first ready; then, while they are busy or AWS cannot be read
/// (`infra_ready` false), the last one known. The web tier follows its spec and its holds
/// whatever the infrastructure is doing; only what needs it (a first setup, an upgrade)
/// waits for it.
pub fn plan_workload(
    d: &OpenEMRDeployment,
    site: Option<&Site>,
    infra_ready: bool,
    seen: &WorkloadSeen,
    now: Timestamp,
) -> WorkloadPlan {
    let (holds, lapsed) = holds::in_force(&seen.holds, now);
    let mut plan = plan_held(d, site, infra_ready, seen, holds::sorted(holds), now);
    if !plan.web.holds.is_empty() {
        // In effect once nothing of the web tier runs: no worker pod (terminating ones
        // included) and no setup or migration Job, which a hold lets finish (stopping a
        // migration half-way would leave the schema between two versions) but never starts.
        let workers_gone = seen
            .workers
            .as_ref()
            .is_none_or(|w| w.replicas == 0 && w.current && w.total == 0 && w.terminating == 0)
            && seen.worker_pods == Some(0);
        let no_job = seen.setup_jobs.iter().all(|j| j.state != JobState::Running);
        let effective = workers_gone && no_job;
        for h in &mut plan.web.holds {
            h.effective = effective;
        }
        if !effective {
            // Pods ending and Jobs finishing do not all wake the clinic: look again soon.
            plan.wake_after = Some(plan.wake_after.map_or(HOLD_CHECK, |w| w.min(HOLD_CHECK)));
        }
    }
    // Look again when a hold lapses, should its holder not renew it.
    let lapses = plan.web.holds.iter().filter_map(|h| h.expires.as_ref());
    if let Some(first) = lapses.map(|t| t.0).min() {
        let left = clock::real_wait_until(first, now)
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        plan.wake_after = Some(plan.wake_after.map_or(left, |w| w.min(left)));
    }
    if !lapsed.is_empty() {
        let list: Vec<String> = lapsed
            .iter()
            .map(|h| {
                let at = h
                    .expires
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default();
                format!("{} (Lease {}, lapsed at {at})", h.holder, h.lease)
            })
            .collect();
        plan.verdict.message.push_str(&format!(
            "; not honoured, renewed too late: {}",
            list.join(", ")
        ));
    }
    plan
}

/// [`plan_workload`] with the holds in force.
fn plan_held(
    d: &OpenEMRDeployment,
    site: Option<&Site>,
    infra_ready: bool,
    seen: &WorkloadSeen,
    holds: Vec<WebHold>,
    now: Timestamp,
) -> WorkloadPlan {
    let previous = d.status.clone().unwrap_or_default();
    let mut web = previous.web.clone().unwrap_or_default();
    web.holds = holds;
    let mut upgrade = previous.upgrade.clone();
    let waiting = |reason: &'static str, message: String| WorkloadPlan {
        verdict: Verdict::falsy(WORKLOAD_READY, reason, message),
        web: web.clone(),
        upgrade: upgrade.clone(),
        changes: Vec::new(),
        in_progress: false,
        wake_after: None,
        busy: false,
    };
    let Some(site) = site else {
        return waiting(
            "WaitingForInfrastructure",
            "the web tier starts once the stack and the database are ready".into(),
        );
    };
    let (mysql_ca, redis_ca) = match &seen.ca {
        Some(Ok(pair)) => pair.clone(),
        Some(Err(why)) => return waiting("CABundleUnavailable", why.clone()),
        None => {
            return waiting(
                "CABundleUnavailable",
                "the operator has no CA bundles configured".into(),
            );
        }
    };
    let ns = d.namespace().unwrap_or_default();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let names = WebNames::new(&ns, &d.name_any());
    let spec = &d.spec.web;
    let inputs = WebInputs {
        namespace: &ns,
        uid: &uid,
        names: &names,
        web: spec,
        database_host: &site.database_host,
        database_port: site.database_port,
        database_name: &d.spec.database.database_name,
        database_user: &d.spec.database.username,
        database_password: site.database_password.clone(),
        redis_host: &site.redis_host,
        // Read whenever the stack has a token (its copy is made below if missing; new pods
        // wait for it), or a copy exists while AWS cannot be read: a copy deleted by hand
        // never rolls the workers onto a cache they cannot log in to.
        redis_password: site
            .redis_auth_secret_arn
            .as_ref()
            .or(seen.redis_auth_copy.as_ref())
            .map(|source| {
                (
                    SecretKey::new(&names.redis_auth, PASSWORD_KEY),
                    short_hash(&[source]),
                )
            }),
        file_system_id: &site.file_system_id,
        mysql_ca: &mysql_ca,
        redis_ca: &redis_ca,
        setup_backoff_limit: seen.config.setup_backoff_limit,
        setup_deadline_seconds: seen.config.setup_deadline.as_secs() as i64,
    };
    web.url = Some(inputs.url());

    let mut wanted = inputs.standing_children();
    let mut changes = Vec::new();
    // The Redis AUTH token, copied for the workers from the secret the stack generated,
    // and again when the stack's secret is another one (a stack made anew). Read from
    // AWS only then: a clinic at rest costs no call for it.
    if let Some(arn) = &site.redis_auth_secret_arn
        && seen.redis_auth_copy.as_deref() != Some(arn.as_str())
    {
        changes.push(WebChange::CopyRedisAuthToken {
            name: names.redis_auth.clone(),
            secret_arn: arn.clone(),
        });
    }
    if seen.volume_released {
        // The claim was deleted (and is made anew above): without this the volume, kept
        // by `Retain`, would stay `Released` and the new claim would never bind.
        changes.push(WebChange::RebindVolume {
            name: names.volume.clone(),
        });
        changes.push(WebChange::Announce {
            reason: "VolumeRebound",
            note: format!(
                "claim {} was deleted; volume {} (file system {}, untouched) binds to the claim made anew",
                names.claim, names.volume, site.file_system_id
            ),
            warning: true,
        });
    }
    let mut in_progress = false;
    let mut wake_after = None;
    let mut busy = false;
    let held = !web.holds.is_empty();
    let replicas = if held { 0 } else { spec.replicas };

    let verdict;
    if !web.setup_complete {
        // Any completed setup configured the site; if it ran another image than the spec
        // names now, the difference is an upgrade (with its snapshot), below.
        if let Some(done) = seen
            .setup_jobs
            .iter()
            .find(|j| j.state == JobState::Complete)
        {
            web.setup_complete = true;
            web.image.get_or_insert_with(|| done.image.clone());
        }
        let other_running = seen
            .setup_jobs
            .iter()
            .find(|j| j.image != spec.image && j.state == JobState::Running);
        if let (false, Some(other)) = (web.setup_complete, other_running) {
            // Two setups at once would configure the same site concurrently.
            return finish(
                wanted,
                seen,
                WorkloadPlan {
                    verdict: Verdict::falsy(
                        WORKLOAD_READY,
                        "SetupRunning",
                        format!(
                            "setup Job {} runs {}; setup with {} waits until it ends",
                            other.name, other.image, spec.image
                        ),
                    ),
                    web,
                    upgrade,
                    changes,
                    in_progress,
                    wake_after: None,
                    busy: true,
                },
            );
        }
        let jobs: Vec<&SetupJob> = seen
            .setup_jobs
            .iter()
            .filter(|j| j.image == spec.image)
            .collect();
        if !web.setup_complete && !infra_ready {
            // A running setup Job goes on; no new one starts before the infrastructure is.
            return finish(
                wanted,
                seen,
                WorkloadPlan {
                    verdict: Verdict::falsy(
                        WORKLOAD_READY,
                        "WaitingForInfrastructure",
                        "the first setup starts once the stack and the database are ready",
                    ),
                    web,
                    upgrade,
                    changes,
                    in_progress,
                    wake_after: None,
                    busy: false,
                },
            );
        }
        if !web.setup_complete {
            let step = setup_step(&inputs, &names, site, seen, &jobs, held, now);
            changes.extend(step.changes);
            verdict = step.verdict;
            web.ready_replicas = 0;
            return finish(
                wanted,
                seen,
                WorkloadPlan {
                    verdict,
                    web,
                    upgrade,
                    changes,
                    in_progress,
                    wake_after: step.wake_after,
                    busy: step.busy,
                },
            );
        }
    }
    // Set up: the master password's copy is no longer needed in the cluster.
    if seen.master_copy {
        changes.push(WebChange::DeleteChild {
            kind: ChildKind::Secret,
            name: names.master_copy.clone(),
        });
    }

    // Upgrades. The image the workers run: the one set up, then moved only by an upgrade.
    // The operator's own record comes first: an image edited into the Deployment by hand
    // is put back, never taken for the site's version. The Deployment's image serves only
    // when the status was lost (a restored manifest).
    let current = web
        .image
        .clone()
        .or_else(|| seen.workers.as_ref().map(|w| w.image.clone()))
        .unwrap_or_else(|| spec.image.clone());
    let mut image = current.clone();
    let generation = d.metadata.generation.unwrap_or_default();
    if let Some(u) = upgrade.as_mut().filter(|u| u.to_image != spec.image) {
        leave_upgrade(u, &current, now, &mut changes);
    }
    // One upgrade per (from, to): one that failed is not tried again until the spec has
    // named another image in between (`superseded`).
    let needs_upgrade = current != spec.image
        && upgrade
            .as_ref()
            .is_none_or(|u| u.to_image != spec.image || u.from_image != current || u.superseded);
    // An upgrade starts, and goes on, only while the infrastructure is ready (its
    // snapshot needs the database); meanwhile the workers stay where they are.
    let paused = held || !infra_ready;
    if needs_upgrade && !paused {
        let snapshot = spec
            .upgrade
            .snapshot_before_upgrade
            .then(|| upgrade_snapshot(&site.database_identifier, &uid, generation));
        upgrade = Some(UpgradeStatus {
            from_image: current.clone(),
            to_image: spec.image.clone(),
            phase: Some(if snapshot.is_some() {
                UpgradePhase::SnapshotPending
            } else {
                UpgradePhase::Rolling
            }),
            snapshot,
            start_time: Some(Time(now)),
            completion_time: None,
            migration_job: Some(names.migration_job(&spec.image, generation)),
            superseded: false,
        });
        changes.push(WebChange::Announce {
            reason: "UpgradeStarted",
            note: format!("upgrading {current} → {}", spec.image),
            warning: false,
        });
    }
    let mut unmet_upgrade = None;
    if let Some(u) = upgrade.as_mut().filter(|u| u.to_image == spec.image) {
        let step = upgrade_step(u, &inputs, &names, seen, &current, paused, now);
        changes.extend(step.changes);
        in_progress |= step.in_progress;
        wake_after = step.wake_after;
        busy = step.busy;
        image = step.image;
        if image != spec.image && !busy {
            unmet_upgrade = Some(unmet(u));
        }
    }

    let mut worker_inputs = inputs.clone();
    let upgraded_spec;
    if image != spec.image {
        let mut s = spec.clone();
        s.image = image.clone();
        upgraded_spec = s;
        worker_inputs.web = &upgraded_spec;
    }
    wanted.push(worker_inputs.workers(replicas));
    web.image = Some(image.clone());
    let ready = seen
        .workers
        .as_ref()
        .filter(|w| w.image == image)
        .map_or(0, |w| w.ready.min(w.updated));
    web.ready_replicas = seen.workers.as_ref().map_or(0, |w| w.ready);
    verdict = if held {
        let list: Vec<String> = web.holds.iter().map(describe_hold).collect();
        Verdict::falsy(
            WORKLOAD_READY,
            "Held",
            format!("the web tier is held at 0 replicas by {}", list.join("; ")),
        )
    } else if replicas == 0 {
        Verdict::truthy(
            WORKLOAD_READY,
            "Stopped",
            "spec.web.replicas is 0: the web tier is stopped (no data is touched)",
        )
    } else if ready >= replicas && seen.workers.as_ref().is_some_and(|w| w.current) {
        // Serving, though not the image the spec names: said where people look.
        let (reason, note) = match &unmet_upgrade {
            Some(why) => ("UpgradeNotApplied", format!("; {why}")),
            None => ("ReplicasReady", String::new()),
        };
        Verdict::truthy(
            WORKLOAD_READY,
            reason,
            format!("{ready}/{replicas} replicas ready{note}"),
        )
    } else {
        Verdict::falsy(
            WORKLOAD_READY,
            "ReplicasNotReady",
            format!("{ready}/{replicas} replicas ready"),
        )
    };
    finish(
        wanted,
        seen,
        WorkloadPlan {
            verdict,
            web,
            upgrade,
            changes,
            in_progress,
            wake_after,
            busy,
        },
    )
}

/// Adds the applies of children that differ from what the caches hold, and the deletions
/// of children no longer wanted, to the plan.
fn finish(wanted: Vec<Child>, seen: &WorkloadSeen, mut plan: WorkloadPlan) -> WorkloadPlan {
    let wanted: Vec<Child> = wanted.into_iter().map(stamped).collect();
    let changes = &mut plan.changes;
    let differing: Vec<Child> = wanted
        .iter()
        .filter(|c| match seen.children.get(&(c.kind, c.name.clone())) {
            None => true,
            Some(_) if c.kind.create_only() => false,
            Some(observed) => !carries(observed, &c.body),
        })
        .cloned()
        .collect();
    // Optional children the spec no longer wants.
    for (kind, name) in seen.children.keys() {
        let optional = matches!(kind, ChildKind::Ingress | ChildKind::PodDisruptionBudget);
        if optional && !wanted.iter().any(|c| c.kind == *kind && &c.name == name) {
            changes.push(WebChange::DeleteChild {
                kind: *kind,
                name: name.clone(),
            });
        }
    }
    if !differing.is_empty() {
        // First: a hold must not wait behind an AWS call (the Redis token's copy among
        // them; until it exists, new worker pods wait for it and the old ones serve).
        changes.insert(0, WebChange::ApplyChildren(differing));
    }
    plan
}

fn describe_hold(h: &WebHold) -> String {
    let since = h
        .since
        .as_ref()
        .map(|t| format!(" since {}", t.0))
        .unwrap_or_default();
    let why = h
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    format!("{}{since}{why}, Lease {}", h.holder, h.lease)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::OpenEMRDeploymentSpec;
    use crate::api::deployment::OpenEMRDeploymentStatus;
    use crate::controller::deployment::secrets::SecretKey;
    use crate::controller::deployment::site::DatabaseOrigin;
    use crate::controller::deployment::web::WorkersSeen;

    pub(crate) fn clinic(web: serde_json::Value) -> OpenEMRDeployment {
        let spec: OpenEMRDeploymentSpec = serde_json::from_value(serde_json::json!({
            "aws": {"region": "us-east-1"},
            "network": {"newVpc": {}},
            "web": web,
        }))
        .unwrap();
        let mut d = OpenEMRDeployment::new("clinic-a", spec);
        d.metadata.namespace = Some("clinics".into());
        d.metadata.uid = Some("uid-1".into());
        d.metadata.generation = Some(3);
        d
    }

    pub(crate) fn site() -> Site {
        Site {
            database_host: "db.example".into(),
            database_port: 3306,
            database_identifier: "db-1".into(),
            redis_host: "redis.example".into(),
            file_system_id: "fs-1".into(),
            database_password: SecretKey::new("clinic-a-db-credentials", "password"),
            user_master_password: None,
            master_secret_arn: Some("arn:aws:secretsmanager:x".into()),
            redis_auth_secret_arn: Some("arn:aws:secretsmanager:redis".into()),
            master_username: "openemr_admin".into(),
            database_origin: DatabaseOrigin::CreatedEmpty,
        }
    }

    pub(crate) fn seen() -> WorkloadSeen {
        WorkloadSeen {
            ca: Some(Ok(("MYSQL".into(), "REDIS".into()))),
            ..WorkloadSeen::default()
        }
    }

    pub(crate) fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    pub(crate) fn applied(plan: &WorkloadPlan) -> Vec<(ChildKind, String)> {
        plan.changes
            .iter()
            .filter_map(|c| match c {
                WebChange::ApplyChildren(children) => Some(children),
                _ => None,
            })
            .flatten()
            .map(|c| (c.kind, c.name.clone()))
            .collect()
    }

    pub(crate) fn child(plan: &WorkloadPlan, kind: ChildKind) -> Option<&Child> {
        plan.changes
            .iter()
            .filter_map(|c| match c {
                WebChange::ApplyChildren(children) => Some(children),
                _ => None,
            })
            .flatten()
            .find(|c| c.kind == kind)
    }

    pub(crate) fn set_up(d: &mut OpenEMRDeployment, image: &str) {
        d.status = Some(OpenEMRDeploymentStatus {
            web: Some(WebStatus {
                setup_complete: true,
                image: Some(image.into()),
                ..WebStatus::default()
            }),
            ..OpenEMRDeploymentStatus::default()
        });
    }

    /// What the driver writes to status after a look: the next look starts from it.
    pub(crate) fn carry(d: &mut OpenEMRDeployment, plan: &WorkloadPlan) {
        let status = d.status.get_or_insert_with(Default::default);
        status.web = Some(plan.web.clone());
        status.upgrade = plan.upgrade.clone();
    }

    pub(crate) fn setup_job(name: &str, image: &str, attempt: u32, state: JobState) -> SetupJob {
        SetupJob {
            name: name.into(),
            image: image.into(),
            attempt,
            state,
        }
    }

    /// A hold in force until released.
    pub(crate) fn hold_by(holder: &str, reason: Option<&str>, lease: &str) -> WebHold {
        WebHold {
            holder: holder.into(),
            reason: reason.map(str::to_string),
            since: None,
            lease: lease.into(),
            expires: None,
            effective: false,
        }
    }

    pub(crate) fn workers(image: &str, ready: i32) -> WorkersSeen {
        WorkersSeen {
            image: image.into(),
            replicas: 2,
            ready,
            updated: ready,
            total: ready,
            terminating: 0,
            current: true,
        }
    }

    #[test]
    fn nothing_starts_before_the_infrastructure() {
        let plan = plan_workload(&clinic(serde_json::json!({})), None, true, &seen(), now());
        assert_eq!(plan.verdict.reason, "WaitingForInfrastructure");
        assert!(plan.changes.is_empty());
    }

    #[test]
    fn a_completed_setup_brings_the_workers_and_removes_the_master_copy() {
        let d = clinic(serde_json::json!({"replicas": 2}));
        let mut s = seen();
        s.master_copy = true;
        s.setup_jobs = vec![setup_job(
            "clinic-a-setup-abc-1",
            &d.spec.web.image,
            1,
            JobState::Complete,
        )];
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert!(plan.web.setup_complete);
        let workers = child(&plan, ChildKind::Deployment).unwrap();
        assert_eq!(workers.body["spec"]["replicas"], 2);
        assert!(plan.changes.contains(&WebChange::DeleteChild {
            kind: ChildKind::Secret,
            name: "clinic-a-db-master".into()
        }));
        assert_eq!(plan.verdict.reason, "ReplicasNotReady");
        assert!(!plan.in_progress, "the Deployment's watch wakes the clinic");
    }

    #[test]
    fn the_redis_token_is_copied_once_per_secret_and_read_by_the_workers() {
        let d = clinic(serde_json::json!({"replicas": 2}));
        let done = |s: &mut WorkloadSeen| {
            s.setup_jobs = vec![setup_job(
                "clinic-a-setup-abc-1",
                &d.spec.web.image,
                1,
                JobState::Complete,
            )];
        };
        let copy = WebChange::CopyRedisAuthToken {
            name: "clinic-a-redis-auth".into(),
            secret_arn: "arn:aws:secretsmanager:redis".into(),
        };
        let env_of = |plan: &WorkloadPlan| {
            let workers = child(plan, ChildKind::Deployment).unwrap();
            workers.body["spec"]["template"]["spec"]["containers"][0]["env"].to_string()
        };
        // No copy yet: made, and the workers read it (their new pods wait for it; a copy
        // deleted by hand never rolls them onto a cache they cannot log in to).
        let mut s = seen();
        done(&mut s);
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert!(plan.changes.contains(&copy));
        assert!(env_of(&plan).contains("clinic-a-redis-auth"));
        // Copied from this secret: not again, and the workers read it.
        s.redis_auth_copy = Some("arn:aws:secretsmanager:redis".into());
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert!(!plan.changes.contains(&copy));
        assert!(env_of(&plan).contains("clinic-a-redis-auth"));
        // Copied from another secret (a stack made anew): copied again.
        s.redis_auth_copy = Some("arn:aws:secretsmanager:old".into());
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert!(plan.changes.contains(&copy));
        // AWS unreadable (no secret known): the copy there is still read, nothing rolls.
        let mut unread = site();
        unread.redis_auth_secret_arn = None;
        s.redis_auth_copy = Some("arn:aws:secretsmanager:redis".into());
        let plan = plan_workload(&d, Some(&unread), true, &s, now());
        assert!(env_of(&plan).contains("clinic-a-redis-auth"));
        // A cache without AUTH (a stack not yet updated): nothing to copy or read.
        s.redis_auth_copy = None;
        let plan = plan_workload(&d, Some(&unread), true, &s, now());
        assert!(
            !plan
                .changes
                .iter()
                .any(|c| matches!(c, WebChange::CopyRedisAuthToken { .. }))
        );
        assert!(!env_of(&plan).contains("REDIS_PASSWORD"));
    }

    #[test]
    fn an_image_change_during_setup_waits_and_then_becomes_an_upgrade() {
        let mut d = clinic(serde_json::json!({"replicas": 1, "image": "openemr/openemr:8.0.1"}));
        let mut s = seen();
        s.admin_secret = true;
        s.master_copy = true;
        s.setup_jobs = vec![setup_job(
            "j-old",
            "openemr/openemr:8.0.0",
            1,
            JobState::Running,
        )];
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert!(
            child(&plan, ChildKind::Job).is_none(),
            "never two setups at once"
        );
        assert!(
            plan.verdict.message.contains("waits"),
            "{}",
            plan.verdict.message
        );
        // It completed with the old image: the site is set up, the new image is an upgrade.
        s.setup_jobs[0].state = JobState::Complete;
        d.status = None;
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert!(plan.web.setup_complete);
        let u = plan.upgrade.unwrap();
        assert_eq!(
            (u.from_image.as_str(), u.to_image.as_str()),
            ("openemr/openemr:8.0.0", "openemr/openemr:8.0.1")
        );
        assert_eq!(u.phase, Some(UpgradePhase::SnapshotPending));
    }

    #[test]
    fn a_hold_is_applied_whatever_the_infrastructure_does_and_effective_once_nothing_runs() {
        let mut d = clinic(serde_json::json!({"replicas": 2}));
        set_up(&mut d, "openemr/openemr:8.0.0");
        let mut s = seen();
        s.workers = Some(workers("openemr/openemr:8.0.0", 2));
        s.holds = vec![hold_by("backup/nightly", None, "clinic-a-hold-nightly")];
        s.worker_pods = Some(2);
        // The stack updating or AWS unreadable: the workers go to 0 all the same.
        let plan = plan_workload(&d, Some(&site()), false, &s, now());
        assert_eq!(plan.verdict.reason, "Held");
        assert_eq!(
            child(&plan, ChildKind::Deployment).unwrap().body["spec"]["replicas"],
            0
        );
        assert!(!plan.web.holds[0].effective);
        assert_eq!(plan.wake_after, Some(HOLD_CHECK));

        // The Deployment at 0, but a pod still terminating: not yet.
        let mut w = workers("openemr/openemr:8.0.0", 0);
        w.replicas = 0;
        s.workers = Some(w.clone());
        s.worker_pods = Some(1);
        let plan = plan_workload(&d, Some(&site()), false, &s, now());
        assert!(!plan.web.holds[0].effective);
        // Terminating as the Deployment reports it: not yet either.
        s.worker_pods = Some(0);
        s.workers = Some(WorkersSeen {
            terminating: 1,
            ..w.clone()
        });
        let plan = plan_workload(&d, Some(&site()), false, &s, now());
        assert!(!plan.web.holds[0].effective);
        // Nothing left: in effect.
        s.workers = Some(w);
        let plan = plan_workload(&d, Some(&site()), false, &s, now());
        assert!(plan.web.holds[0].effective);
        assert_eq!(plan.wake_after, None);
        // A setup or migration Job still running: it may finish, but the hold waits for it.
        s.setup_jobs = vec![setup_job(
            "clinic-a-migrate-abc",
            "openemr/openemr:8.0.1",
            1,
            JobState::Running,
        )];
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert!(!plan.web.holds[0].effective);
    }

    #[test]
    fn while_the_infrastructure_is_busy_no_setup_or_upgrade_starts_but_the_spec_is_followed() {
        // Not set up: no setup Job before the infrastructure is ready.
        let d = clinic(serde_json::json!({"replicas": 1}));
        let plan = plan_workload(&d, Some(&site()), false, &seen(), now());
        assert_eq!(plan.verdict.reason, "WaitingForInfrastructure");
        assert!(child(&plan, ChildKind::Job).is_none());

        // Set up, and the spec names a new image and 4 replicas: the replicas follow, the
        // upgrade (and its snapshot) waits.
        let mut d = clinic(serde_json::json!({"replicas": 4, "image": "openemr/openemr:8.0.1"}));
        set_up(&mut d, "openemr/openemr:8.0.0");
        let mut s = seen();
        s.workers = Some(workers("openemr/openemr:8.0.0", 2));
        let plan = plan_workload(&d, Some(&site()), false, &s, now());
        assert!(plan.upgrade.is_none(), "{:?}", plan.upgrade);
        let workers = &child(&plan, ChildKind::Deployment).unwrap().body;
        assert_eq!(workers["spec"]["replicas"], 4);
        assert!(workers.to_string().contains("openemr/openemr:8.0.0"));
        // Ready again: the upgrade starts.
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert!(plan.upgrade.is_some());
    }

    #[test]
    fn a_hold_keeps_the_workers_at_zero_and_says_who() {
        let mut d = clinic(serde_json::json!({"replicas": 3}));
        set_up(&mut d, "openemr/openemr:8.0.0");
        let mut s = seen();
        s.workers = Some(workers("openemr/openemr:8.0.0", 3));
        s.holds = vec![hold_by(
            "backup/nightly",
            Some("quiesced backup"),
            "clinic-a-hold-nightly",
        )];
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert_eq!(plan.verdict.reason, "Held");
        assert!(plan.verdict.message.contains("backup/nightly"));
        assert_eq!(
            child(&plan, ChildKind::Deployment).unwrap().body["spec"]["replicas"],
            0
        );
        // Released: spec.web.replicas again.
        s.holds.clear();
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert_eq!(
            child(&plan, ChildKind::Deployment).unwrap().body["spec"]["replicas"],
            3
        );
    }

    #[test]
    fn a_field_the_spec_stops_setting_is_applied_away() {
        let web = |tls: bool| {
            let mut ingress = serde_json::json!({"host": "clinic-a.example.org"});
            if tls {
                ingress["tlsSecretName"] = "clinic-a-tls".into();
            }
            serde_json::json!({"replicas": 1, "ingress": ingress})
        };
        let mut d = clinic(web(true));
        set_up(&mut d, "openemr/openemr:8.0.0");
        let mut s = seen();
        s.workers = Some(workers("openemr/openemr:8.0.0", 1));
        // What the first look applies is what the caches then hold (with a server default).
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        for c in plan.changes.iter().filter_map(|c| match c {
            WebChange::ApplyChildren(children) => Some(children),
            _ => None,
        }) {
            for child in c {
                let mut observed = child.body.clone();
                observed["metadata"]["uid"] = "x".into();
                s.children
                    .insert((child.kind, child.name.clone()), observed);
            }
        }
        let at_rest = plan_workload(&d, Some(&site()), true, &s, now());
        assert_eq!(applied(&at_rest), vec![], "{:?}", at_rest.changes);
        // TLS leaves the spec: the Ingress still has it, yet is applied again.
        d.spec.web = serde_json::from_value(web(false)).unwrap();
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        let ingress = child(&plan, ChildKind::Ingress).expect("the Ingress applied again");
        assert!(ingress.body["spec"].get("tls").is_none());
    }

    #[test]
    fn a_volume_whose_claim_was_deleted_binds_to_the_new_one() {
        let mut d = clinic(serde_json::json!({"replicas": 1}));
        set_up(&mut d, "openemr/openemr:8.0.0");
        let mut s = seen();
        s.workers = Some(workers("openemr/openemr:8.0.0", 1));
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert!(
            !plan
                .changes
                .iter()
                .any(|c| matches!(c, WebChange::RebindVolume { .. }))
        );
        s.volume_released = true;
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert!(plan.changes.contains(&WebChange::RebindVolume {
            name: "openemr-clinics-clinic-a-sites".into()
        }));
        assert!(
            applied(&plan).contains(&(ChildKind::PersistentVolumeClaim, "clinic-a-sites".into()))
        );
        assert!(!plan.changes.iter().any(|c| matches!(
            c,
            WebChange::DeleteChild {
                kind: ChildKind::PersistentVolume,
                ..
            }
        )));
    }

    #[test]
    fn a_hold_its_holder_stopped_renewing_lapses() {
        let mut d = clinic(serde_json::json!({"replicas": 3}));
        set_up(&mut d, "openemr/openemr:8.0.0");
        let mut s = seen();
        s.workers = Some(workers("openemr/openemr:8.0.0", 3));
        s.workers.as_mut().unwrap().replicas = 3;
        let hold = |expires: Timestamp| WebHold {
            holder: "backup/nightly".into(),
            reason: None,
            since: None,
            lease: "clinic-a-hold-nightly".into(),
            expires: Some(Time(expires)),
            effective: false,
        };
        // In force: held, and looked at again soon until it is in effect.
        s.holds = vec![hold(now() + std::time::Duration::from_secs(90))];
        s.worker_pods = Some(3);
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert_eq!(plan.verdict.reason, "Held");
        assert_eq!(plan.wake_after, Some(HOLD_CHECK));
        // In effect: a look is due when it would lapse.
        s.workers = Some(WorkersSeen {
            replicas: 0,
            ..workers("openemr/openemr:8.0.0", 0)
        });
        s.worker_pods = Some(0);
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert!(plan.web.holds[0].effective);
        assert_eq!(plan.wake_after, Some(std::time::Duration::from_secs(90)));
        s.workers = Some(workers("openemr/openemr:8.0.0", 3));
        s.workers.as_mut().unwrap().replicas = 3;
        // Lapsed: not honoured, and said.
        s.holds = vec![hold(now() - std::time::Duration::from_secs(1))];
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert_eq!(plan.verdict.reason, "ReplicasReady");
        assert!(plan.web.holds.is_empty());
        assert!(
            plan.verdict
                .message
                .contains("backup/nightly (Lease clinic-a-hold-nightly"),
            "{}",
            plan.verdict.message
        );
        assert!(
            child(&plan, ChildKind::Deployment).is_none_or(|w| w.body["spec"]["replicas"] == 3)
        );
    }
}
