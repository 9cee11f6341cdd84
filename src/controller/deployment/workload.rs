//! Plans the web tier, purely: from the spec, what the infrastructure provides, the
//! children the caches hold, the holds and the previous status, to the children to apply,
//! `WorkloadReady`, `status.web` and `status.upgrade`.
//!
//! Order of a clinic's life: infrastructure ready → Secrets, CA, volume, Service → one setup
//! Job (`K8S=admin`) → once it completed, the workers (`K8S=worker`). A failed setup Job is
//! reported and retried with a new Job after a delay that doubles; nothing on the volume is
//! ever removed. An image change on a set-up clinic is an upgrade: snapshot (if asked) seen
//! `available` → a Job with the new image migrates → the workers roll → done, or, past the
//! timeout, the workers go back to the previous image (`RolledBack`). A failed upgrade is
//! tried again only after the spec named another image in between (`superseded`); one
//! whose image no worker runs yet is cancelled when the spec names another.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::Value;

use super::holds;
use super::plan::Change;
use super::web::{
    self, Child, ChildKind, SecretKey, SetupCredentials, SetupMode, WebInputs, WebNames,
};
use crate::api::OpenEMRDeployment;
use crate::api::deployment::{UpgradePhase, UpgradeStatus, WebHold, WebStatus};
use crate::clock;
use crate::conditions::Verdict;

/// Condition type of the web tier.
pub const WORKLOAD_READY: &str = "WorkloadReady";

/// Where the infrastructure is, once it is ready.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub database_host: String,
    pub database_port: i32,
    pub database_identifier: String,
    pub redis_host: String,
    pub file_system_id: String,
    /// The Secret and key with OpenEMR's own database password.
    pub database_password: SecretKey,
    /// The user's Secret with `root-password`, if given; else RDS manages the master
    /// password in Secrets Manager ([`Site::master_secret_arn`]).
    pub user_master_password: Option<SecretKey>,
    pub master_secret_arn: Option<String>,
    /// The master user's name, as the instance reports it.
    pub master_username: String,
    /// What the first setup may do to the database.
    pub database_origin: DatabaseOrigin,
}

/// Where the clinic's database came from. OpenEMR's installer, given an empty `sites/`
/// and a database that already holds OpenEMR, drops and recreates its tables: it runs only
/// on a database this clinic created empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseOrigin {
    /// Created by this clinic (its uid is on the instance's tags).
    CreatedEmpty,
    /// Named by `spec.adopt.dbInstanceIdentifier`.
    Adopted,
    /// Found under the clinic's name but made by another incarnation of it (the uid on
    /// its tags) or by someone else (no uid).
    Foreign { uid: Option<String> },
}

impl DatabaseOrigin {
    fn describe(&self) -> String {
        match self {
            DatabaseOrigin::CreatedEmpty => "created empty by this clinic".into(),
            DatabaseOrigin::Adopted => "adopted (spec.adopt.dbInstanceIdentifier)".into(),
            DatabaseOrigin::Foreign { uid: Some(uid) } => {
                format!("made by an earlier clinic of this name (uid {uid})")
            }
            DatabaseOrigin::Foreign { uid: None } => "not made by this operator".into(),
        }
    }
}

/// A setup Job as the cache shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SetupJob {
    pub name: String,
    pub image: String,
    pub attempt: u32,
    pub state: JobState,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Running,
    Complete,
    Failed {
        /// The Job's own reason and message (`BackoffLimitExceeded`, `DeadlineExceeded`).
        reason: String,
        /// What its last pod said when it terminated (its termination message or log tail).
        detail: String,
        at: Option<Timestamp>,
    },
}

/// The workers' Deployment as the cache shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkersSeen {
    pub image: String,
    pub replicas: i32,
    pub ready: i32,
    pub updated: i32,
    /// Pods of every revision (old ones linger while a rollout is under way).
    pub total: i32,
    /// Pods being deleted, as the Deployment reports them (0 where it does not).
    pub terminating: i32,
    /// The Deployment controller has seen the latest spec.
    pub current: bool,
}

impl WorkersSeen {
    /// Every replica runs the latest template and is ready, and no older one is left.
    pub fn rolled_out(&self, wanted: i32) -> bool {
        self.current
            && self.replicas == wanted
            && self.updated >= wanted
            && self.total == self.updated
            && self.ready >= wanted
    }
}

/// Timings and limits of the web tier (flags of `run`).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadConfig {
    pub setup_backoff_limit: i32,
    pub setup_deadline: Duration,
    /// First wait before a failed setup Job is followed by a new one; doubles per attempt.
    pub setup_retry_after: Duration,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            setup_backoff_limit: 4,
            setup_deadline: Duration::from_secs(1800),
            setup_retry_after: Duration::from_secs(300),
        }
    }
}

/// What `observe` found of the web tier.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkloadSeen {
    /// Every child the caches hold, as JSON (without status).
    pub children: BTreeMap<(ChildKind, String), Value>,
    pub setup_jobs: Vec<SetupJob>,
    pub workers: Option<WorkersSeen>,
    pub holds: Vec<WebHold>,
    /// The workers' pods that exist, terminating ones included: counted while a hold is
    /// placed, so that a hold is effective only once none is left.
    pub worker_pods: Option<usize>,
    pub admin_secret: bool,
    pub master_copy: bool,
    /// The volume is `Released`: its claim was deleted.
    pub volume_released: bool,
    /// The CA bundles (MySQL, Redis), or why they could not be read.
    pub ca: Option<Result<(String, String), String>>,
    /// The pre-upgrade snapshot's state (`available`, `creating`…), when one is awaited.
    pub upgrade_snapshot: Option<String>,
    pub config: WorkloadConfig,
}

/// The outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadPlan {
    pub verdict: Verdict,
    pub web: WebStatus,
    pub upgrade: Option<UpgradeStatus>,
    pub changes: Vec<Change>,
    /// AWS works on something the web tier waits for (the pre-upgrade snapshot): look
    /// again at the progress interval. Everything else wakes the clinic through a watch.
    pub in_progress: bool,
    /// A timer: a failed setup's next attempt, an upgrade's timeout.
    pub wake_after: Option<Duration>,
    /// The web tier is being set up or upgraded.
    pub busy: bool,
}

const SETUP_RETRY_MAX: Duration = Duration::from_secs(3600);
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
        file_system_id: &site.file_system_id,
        mysql_ca: &mysql_ca,
        redis_ca: &redis_ca,
        setup_backoff_limit: seen.config.setup_backoff_limit,
        setup_deadline_seconds: seen.config.setup_deadline.as_secs() as i64,
    };
    web.url = Some(inputs.url());

    let mut wanted = inputs.standing_children();
    let mut changes = Vec::new();
    if seen.volume_released {
        // The claim was deleted (and is made anew above): without this the volume, kept
        // by `Retain`, would stay `Released` and the new claim would never bind.
        changes.push(Change::RebindVolume {
            name: names.volume.clone(),
        });
        changes.push(Change::Announce {
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
        changes.push(Change::DeleteChild {
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
            .then(|| super::names::upgrade_snapshot(&site.database_identifier, &uid, generation));
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
        changes.push(Change::Announce {
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
    let wanted: Vec<Child> = wanted.into_iter().map(web::stamped).collect();
    let changes = &mut plan.changes;
    let differing: Vec<Child> = wanted
        .iter()
        .filter(|c| match seen.children.get(&(c.kind, c.name.clone())) {
            None => true,
            Some(_) if c.kind.create_only() => false,
            Some(observed) => !web::carries(observed, &c.body),
        })
        .cloned()
        .collect();
    // Optional children the spec no longer wants.
    for (kind, name) in seen.children.keys() {
        let optional = matches!(kind, ChildKind::Ingress | ChildKind::PodDisruptionBudget);
        if optional && !wanted.iter().any(|c| c.kind == *kind && &c.name == name) {
            changes.push(Change::DeleteChild {
                kind: *kind,
                name: name.clone(),
            });
        }
    }
    if !differing.is_empty() {
        changes.insert(0, Change::ApplyChildren(differing));
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

struct Step {
    changes: Vec<Change>,
    wake_after: Option<Duration>,
    verdict: Verdict,
    /// A setup Job runs or is about to.
    busy: bool,
}

/// The first setup: credentials in place, then one Job at a time, retried after failures.
fn setup_step(
    inputs: &WebInputs,
    names: &WebNames,
    site: &Site,
    seen: &WorkloadSeen,
    jobs: &[&SetupJob],
    held: bool,
    now: Timestamp,
) -> Step {
    let replicas = if held { 0 } else { inputs.web.replicas };
    let mut changes = Vec::new();
    if replicas == 0 && jobs.is_empty() {
        let (reason, what) = if !held {
            ("Stopped", "spec.web.replicas is 0")
        } else {
            ("Held", "the web tier is held")
        };
        let verdict = if !held {
            Verdict::truthy(
                WORKLOAD_READY,
                reason,
                format!("{what}: setup waits until replicas are wanted"),
            )
        } else {
            Verdict::falsy(
                WORKLOAD_READY,
                reason,
                format!("{what}: setup waits until the hold is released"),
            )
        };
        return Step {
            changes,
            wake_after: None,
            verdict,
            busy: false,
        };
    }
    let web = inputs.web;
    let mode = match &site.database_origin {
        DatabaseOrigin::CreatedEmpty => {
            match install_credentials(names, web, site, seen, &mut changes) {
                Ok(credentials) => SetupMode::Install(credentials),
                Err(verdict) => {
                    return Step {
                        changes,
                        wake_after: None,
                        busy: false,
                        verdict,
                    };
                }
            }
        }
        DatabaseOrigin::Adopted | DatabaseOrigin::Foreign { .. } => SetupMode::Attach,
    };
    // Said wherever the setup of an existing database is reported.
    let attaching = match mode {
        SetupMode::Attach => format!(
            "; the database is {}, so OpenEMR's installer never runs on it: the site on claim {} must be the one made with it",
            site.database_origin.describe(),
            names.claim
        ),
        _ => String::new(),
    };
    let latest = jobs.iter().max_by_key(|j| j.attempt);
    let (verdict, wake_after) = match latest.map(|j| (&j.state, j)) {
        None => {
            let name = names.setup_job(&web.image, 1);
            changes.push(Change::ApplyChildren(vec![
                inputs.setup_job(&name, 1, &mode),
            ]));
            (
                Verdict::falsy(
                    WORKLOAD_READY,
                    "SetupRunning",
                    format!(
                        "setup Job {name} started; the workers start once it completes{attaching}"
                    ),
                ),
                None,
            )
        }
        Some((JobState::Running, j)) => (
            Verdict::falsy(
                WORKLOAD_READY,
                "SetupRunning",
                format!(
                    "setup Job {} (attempt {}) is running; the workers start once it completes{attaching}",
                    j.name, j.attempt
                ),
            ),
            None,
        ),
        // Seen as setup complete before this step runs; kept for completeness.
        Some((JobState::Complete, j)) => (
            Verdict::falsy(
                WORKLOAD_READY,
                "SetupRunning",
                format!("setup Job {} completed", j.name),
            ),
            None,
        ),
        Some((JobState::Failed { reason, detail, at }, j)) => {
            let delay = retry_delay(seen.config.setup_retry_after, j.attempt);
            let due = at.map_or(now, |t| t + delay);
            let next = j.attempt + 1;
            let wait = clock::real_wait_until(due, now).map(|w| w.max(Duration::from_secs(1)));
            let retry = if held {
                format!("attempt {next} waits until the hold is released")
            } else if due <= now {
                let name = names.setup_job(&web.image, next);
                changes.push(Change::ApplyChildren(vec![
                    inputs.setup_job(&name, next, &mode),
                ]));
                format!("attempt {next} started as Job {name}")
            } else {
                format!("attempt {next} starts at {due}")
            };
            let detail = if detail.is_empty() {
                String::new()
            } else {
                format!("; its pod said: {detail}")
            };
            let why = match mode {
                SetupMode::Attach => "SiteNotConfigured",
                _ => "SetupFailed",
            };
            (
                Verdict::falsy(
                    WORKLOAD_READY,
                    why,
                    format!(
                        "setup Job {} (attempt {}) failed: {reason}{detail}; {retry}; nothing on the volume was removed{attaching}",
                        j.name, j.attempt
                    ),
                ),
                wait,
            )
        }
    };
    // The master password's copy exists only while a setup Job runs or starts now (its pods
    // read it as they start): a Job that failed and waits for its retry, a held clinic,
    // an existing database set up by attaching, leave none behind.
    let starts_job = changes.iter().any(|c| {
        matches!(c, Change::ApplyChildren(children) if children.iter().any(|ch| ch.kind == ChildKind::Job))
    });
    let running = matches!(latest.map(|j| &j.state), Some(JobState::Running));
    if !starts_job && !running {
        changes.retain(|c| !matches!(c, Change::CopyMasterPassword { .. }));
        if seen.master_copy {
            changes.push(Change::DeleteChild {
                kind: ChildKind::Secret,
                name: names.master_copy.clone(),
            });
        }
    }
    Step {
        changes,
        wake_after,
        verdict,
        busy: true,
    }
}

/// The first setup's credentials, with the changes that put them in place, or why there
/// are none.
fn install_credentials(
    names: &WebNames,
    web: &crate::api::deployment::WebSpec,
    site: &Site,
    seen: &WorkloadSeen,
    changes: &mut Vec<Change>,
) -> Result<SetupCredentials, Verdict> {
    let admin = match &web.admin_credentials_secret_ref {
        Some(r) => r.name.clone(),
        None => {
            if !seen.admin_secret {
                changes.push(Change::CreateAdminSecret {
                    name: names.admin_secret.clone(),
                });
            }
            names.admin_secret.clone()
        }
    };
    let master = match (&site.user_master_password, &site.master_secret_arn) {
        (Some(key), _) => key.clone(),
        (None, Some(arn)) => {
            if !seen.master_copy {
                changes.push(Change::CopyMasterPassword {
                    name: names.master_copy.clone(),
                    secret_arn: arn.clone(),
                });
            }
            SecretKey::new(&names.master_copy, web::PASSWORD_KEY)
        }
        (None, None) => {
            return Err(Verdict::falsy(
                WORKLOAD_READY,
                "MasterPasswordUnavailable",
                "the database has no master password secret in Secrets Manager and spec.database.credentialsSecretRef has no root-password",
            ));
        }
    };
    Ok(SetupCredentials {
        master_username: site.master_username.clone(),
        master_password: master,
        admin_username: SecretKey::new(&admin, "username"),
        admin_password: SecretKey::new(&admin, "password"),
    })
}

/// The wait before attempt `attempt + 1`: `first`, doubling, at most an hour.
pub fn retry_delay(first: Duration, attempt: u32) -> Duration {
    first
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)))
        .min(SETUP_RETRY_MAX)
}

/// Whether an upgrade has ended, well or not.
fn ended(u: &UpgradeStatus) -> bool {
    matches!(
        u.phase,
        Some(
            UpgradePhase::Succeeded
                | UpgradePhase::RolledBack
                | UpgradePhase::Failed
                | UpgradePhase::Cancelled
        )
    )
}

/// The spec names another image than `u`'s: an upgrade under way whose image no worker
/// runs yet is cancelled, and one that failed or was cancelled may be tried again later.
/// (Once the workers run the new image, naming another is an upgrade of its own.)
fn leave_upgrade(u: &mut UpgradeStatus, current: &str, now: Timestamp, changes: &mut Vec<Change>) {
    if !ended(u) && current == u.from_image {
        u.phase = Some(UpgradePhase::Cancelled);
        u.completion_time = Some(Time(now));
        let migrated = u
            .migration_job
            .as_ref()
            .map(|j| format!("; Job {j} may have migrated the schema already"))
            .unwrap_or_default();
        changes.push(Change::Announce {
            reason: "UpgradeCancelled",
            note: format!(
                "the spec no longer names {}: the workers stay on {}{migrated}",
                u.to_image, u.from_image
            ),
            warning: true,
        });
    }
    if matches!(
        u.phase,
        Some(UpgradePhase::RolledBack | UpgradePhase::Failed | UpgradePhase::Cancelled)
    ) {
        u.superseded = true;
    }
}

/// Why the workers do not run the image the spec names, after `u` ended without it.
fn unmet(u: &UpgradeStatus) -> String {
    let how = match u.phase {
        Some(UpgradePhase::Failed) => "failed",
        _ => "rolled back",
    };
    let snapshot = u
        .snapshot
        .as_ref()
        .map(|s| format!(" (snapshot {s} holds the database from before)"))
        .unwrap_or_default();
    format!(
        "spec.web.image {} does not run: its upgrade from {} {how}{snapshot}; to try again, \
         name another image, then this one",
        u.to_image, u.from_image
    )
}

struct UpgradeStep {
    changes: Vec<Change>,
    in_progress: bool,
    wake_after: Option<Duration>,
    busy: bool,
    /// The image the workers are to run.
    image: String,
}

/// One look at an upgrade in progress (or finished: then only the image it left).
fn upgrade_step(
    u: &mut UpgradeStatus,
    inputs: &WebInputs,
    names: &WebNames,
    seen: &WorkloadSeen,
    current: &str,
    held: bool,
    now: Timestamp,
) -> UpgradeStep {
    let mut step = UpgradeStep {
        changes: Vec::new(),
        in_progress: false,
        wake_after: None,
        busy: true,
        image: u.from_image.clone(),
    };
    let announce = |reason: &'static str, note: String, warning: bool| Change::Announce {
        reason,
        note,
        warning,
    };
    match u.phase {
        Some(UpgradePhase::Succeeded) => {
            step.image = u.to_image.clone();
            step.busy = false;
            return step;
        }
        Some(UpgradePhase::RolledBack) | Some(UpgradePhase::Cancelled) => {
            step.busy = false;
            return step;
        }
        Some(UpgradePhase::Failed) => {
            // rollbackOnFailure is off: the workers stay where the upgrade left them.
            step.image = current.to_string();
            step.busy = false;
            return step;
        }
        _ => {}
    }
    if held {
        // A hold (a backup, a restore), or infrastructure that is busy or unreadable,
        // pauses the upgrade where it is.
        step.image = current.to_string();
        return step;
    }
    if u.phase == Some(UpgradePhase::SnapshotPending) {
        let snapshot = u.snapshot.clone().unwrap_or_default();
        match seen.upgrade_snapshot.as_deref() {
            Some("available") => {
                u.phase = Some(UpgradePhase::Rolling);
                step.changes.push(announce(
                    "UpgradeSnapshotAvailable",
                    format!(
                        "snapshot {snapshot} is available; migrating to {}",
                        u.to_image
                    ),
                    false,
                ));
            }
            None => {
                step.changes.push(Change::CreateUpgradeSnapshot {
                    snapshot: snapshot.clone(),
                });
                step.in_progress = true;
                return step;
            }
            Some(_) => {
                step.in_progress = true;
                return step;
            }
        }
    }
    // Rolling: the migration Job, then the workers.
    let mut upgraded = inputs.web.clone();
    upgraded.image = u.to_image.clone();
    let job_inputs = WebInputs {
        web: &upgraded,
        ..inputs.clone()
    };
    // Upgrades recorded before the Job was named used the first setup's naming.
    let job_name = u
        .migration_job
        .get_or_insert_with(|| names.setup_job(&u.to_image, 1))
        .clone();
    let job = seen.setup_jobs.iter().find(|j| j.name == job_name);
    let started = u.start_time.as_ref().map_or(now, |t| t.0);
    let timeout = Duration::from_secs(inputs.web.upgrade.timeout_seconds.max(0) as u64);
    let timed_out = now.duration_since(started).unsigned_abs() >= timeout;
    // A Job of a cancelled upgrade may still run: two at once would migrate the same
    // database concurrently. Its end wakes the clinic through the Jobs' watch.
    let other_running = seen
        .setup_jobs
        .iter()
        .any(|j| j.name != job_name && j.state == JobState::Running);
    let failure = match job.map(|j| &j.state) {
        None if other_running => None,
        None => {
            // Numbered after the Jobs that ran this image before (an earlier upgrade to
            // it that failed), so the newest is the one whose failure is read.
            let attempt = 1 + seen
                .setup_jobs
                .iter()
                .filter(|j| j.image == u.to_image)
                .map(|j| j.attempt)
                .max()
                .unwrap_or(0);
            step.changes
                .push(Change::ApplyChildren(vec![job_inputs.setup_job(
                    &job_name,
                    attempt,
                    &SetupMode::Migrate,
                )]));
            step.changes.push(announce(
                "UpgradeMigrating",
                format!("Job {job_name} migrates the site to {}", u.to_image),
                false,
            ));
            None
        }
        Some(JobState::Running) => None,
        Some(JobState::Failed { reason, detail, .. }) => {
            Some(format!("the migration Job failed: {reason} {detail}"))
        }
        Some(JobState::Complete) => {
            step.image = u.to_image.clone();
            let rolled = seen
                .workers
                .as_ref()
                .is_some_and(|w| w.image == u.to_image && w.rolled_out(inputs.web.replicas));
            if rolled {
                step.busy = false;
                u.phase = Some(UpgradePhase::Succeeded);
                u.completion_time = Some(Time(now));
                step.changes.push(announce(
                    "UpgradeSucceeded",
                    format!("every replica runs {} and is ready", u.to_image),
                    false,
                ));
                return step;
            }
            None
        }
    };
    let failure = failure.or_else(|| {
        timed_out.then(|| {
            format!(
                "{} was not ready within spec.web.upgrade.timeoutSeconds ({}s)",
                u.to_image, inputs.web.upgrade.timeout_seconds
            )
        })
    });
    let Some(why) = failure else {
        let left = clock::current()
            .real(timeout.saturating_sub(now.duration_since(started).unsigned_abs()));
        step.wake_after = Some(left.max(Duration::from_secs(1)));
        return step;
    };
    step.busy = false;
    u.completion_time = Some(Time(now));
    let restore_from = u
        .snapshot
        .as_ref()
        .map(|s| format!("; snapshot {s} holds the database from before the upgrade, for a person to restore from"))
        .unwrap_or_default();
    if inputs.web.upgrade.rollback_on_failure {
        u.phase = Some(UpgradePhase::RolledBack);
        step.image = u.from_image.clone();
        // The old image on a schema the new one migrated may not work well: said plainly.
        let migrated = match job.map(|j| &j.state) {
            Some(JobState::Complete) => {
                format!(" on the schema Job {job_name} migrated to {}", u.to_image)
            }
            _ => String::new(),
        };
        step.changes.push(announce(
            "UpgradeRolledBack",
            format!(
                "{why}: the workers run {} again{migrated}{restore_from}",
                u.from_image
            ),
            true,
        ));
    } else {
        u.phase = Some(UpgradePhase::Failed);
        step.changes.push(announce(
            "UpgradeFailed",
            format!(
                "{why}; rollbackOnFailure is off, so the workers stay on {}{restore_from}",
                step.image
            ),
            true,
        ));
    }
    step
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::OpenEMRDeploymentSpec;
    use crate::api::deployment::OpenEMRDeploymentStatus;

    fn clinic(web: serde_json::Value) -> OpenEMRDeployment {
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

    fn site() -> Site {
        Site {
            database_host: "db.example".into(),
            database_port: 3306,
            database_identifier: "db-1".into(),
            redis_host: "redis.example".into(),
            file_system_id: "fs-1".into(),
            database_password: SecretKey::new("clinic-a-db-credentials", "password"),
            user_master_password: None,
            master_secret_arn: Some("arn:aws:secretsmanager:x".into()),
            master_username: "openemr_admin".into(),
            database_origin: DatabaseOrigin::CreatedEmpty,
        }
    }

    fn seen() -> WorkloadSeen {
        WorkloadSeen {
            ca: Some(Ok(("MYSQL".into(), "REDIS".into()))),
            ..WorkloadSeen::default()
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn applied(plan: &WorkloadPlan) -> Vec<(ChildKind, String)> {
        plan.changes
            .iter()
            .filter_map(|c| match c {
                Change::ApplyChildren(children) => Some(children),
                _ => None,
            })
            .flatten()
            .map(|c| (c.kind, c.name.clone()))
            .collect()
    }

    fn child(plan: &WorkloadPlan, kind: ChildKind) -> Option<&Child> {
        plan.changes
            .iter()
            .filter_map(|c| match c {
                Change::ApplyChildren(children) => Some(children),
                _ => None,
            })
            .flatten()
            .find(|c| c.kind == kind)
    }

    fn set_up(d: &mut OpenEMRDeployment, image: &str) {
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
    fn carry(d: &mut OpenEMRDeployment, plan: &WorkloadPlan) {
        let status = d.status.get_or_insert_with(Default::default);
        status.web = Some(plan.web.clone());
        status.upgrade = plan.upgrade.clone();
    }

    fn setup_job(name: &str, image: &str, attempt: u32, state: JobState) -> SetupJob {
        SetupJob {
            name: name.into(),
            image: image.into(),
            attempt,
            state,
        }
    }

    /// A hold in force until released.
    fn hold_by(holder: &str, reason: Option<&str>, lease: &str) -> WebHold {
        WebHold {
            holder: holder.into(),
            reason: reason.map(str::to_string),
            since: None,
            lease: lease.into(),
            expires: None,
            effective: false,
        }
    }

    fn workers(image: &str, ready: i32) -> WorkersSeen {
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
    fn setup_comes_first_with_its_credentials_and_no_worker() {
        let d = clinic(serde_json::json!({"replicas": 2}));
        let plan = plan_workload(&d, Some(&site()), true, &seen(), now());
        let kinds: Vec<ChildKind> = applied(&plan).into_iter().map(|(k, _)| k).collect();
        assert!(kinds.contains(&ChildKind::Job));
        assert!(!kinds.contains(&ChildKind::Deployment));
        assert!(kinds.contains(&ChildKind::PersistentVolume));
        let actions: Vec<String> = plan.changes.iter().map(|c| c.intent().0).collect();
        assert!(actions.contains(&"CreateAdminSecret".to_string()));
        assert!(actions.contains(&"CopyMasterPassword".to_string()));
        assert_eq!(plan.verdict.reason, "SetupRunning");
        assert!(plan.busy);
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
        assert!(plan.changes.contains(&Change::DeleteChild {
            kind: ChildKind::Secret,
            name: "clinic-a-db-master".into()
        }));
        assert_eq!(plan.verdict.reason, "ReplicasNotReady");
        assert!(!plan.in_progress, "the Deployment's watch wakes the clinic");
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
    fn a_failed_setup_is_not_retried_while_held() {
        let d = clinic(serde_json::json!({"replicas": 1}));
        let mut s = seen();
        s.admin_secret = true;
        s.master_copy = true;
        s.setup_jobs = vec![SetupJob {
            name: "j-1".into(),
            image: d.spec.web.image.clone(),
            attempt: 1,
            state: JobState::Failed {
                reason: "BackoffLimitExceeded".into(),
                detail: String::new(),
                at: Some(now() - std::time::Duration::from_secs(7200)),
            },
        }];
        s.holds = vec![hold_by("restore/r", None, "clinic-a-hold-r")];
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert!(child(&plan, ChildKind::Job).is_none());
        assert!(
            plan.verdict
                .message
                .contains("waits until the hold is released")
        );
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
            Change::ApplyChildren(children) => Some(children),
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
                .any(|c| matches!(c, Change::RebindVolume { .. }))
        );
        s.volume_released = true;
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert!(plan.changes.contains(&Change::RebindVolume {
            name: "openemr-clinics-clinic-a-sites".into()
        }));
        assert!(
            applied(&plan).contains(&(ChildKind::PersistentVolumeClaim, "clinic-a-sites".into()))
        );
        assert!(!plan.changes.iter().any(|c| matches!(
            c,
            Change::DeleteChild {
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

    #[test]
    fn a_database_the_clinic_did_not_create_empty_never_meets_the_installer() {
        let d = clinic(serde_json::json!({"replicas": 1}));
        for origin in [
            DatabaseOrigin::Adopted,
            DatabaseOrigin::Foreign {
                uid: Some("uid-0".into()),
            },
            DatabaseOrigin::Foreign { uid: None },
        ] {
            let site = Site {
                database_origin: origin.clone(),
                ..site()
            };
            let plan = plan_workload(&d, Some(&site), true, &seen(), now());
            let job = child(&plan, ChildKind::Job).unwrap();
            let main = &job.body["spec"]["template"]["spec"]["containers"][0];
            let env: Vec<&str> = main["env"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["name"].as_str().unwrap())
                .collect();
            assert_eq!(
                env,
                ["K8S", "OPENEMR_SETUP_MODE", "MYSQL_PASS"],
                "{origin:?}"
            );
            assert_eq!(main["env"][1]["value"], "attach");
            // Nothing is made for an installer that will not run.
            assert!(
                !plan.changes.iter().any(|c| matches!(
                    c,
                    Change::CopyMasterPassword { .. } | Change::CreateAdminSecret { .. }
                )),
                "{origin:?}"
            );
            assert!(plan.verdict.message.contains(&origin.describe()));

            // The site on the volume is not the database's: said, with what to do.
            let mut s = seen();
            s.setup_jobs = vec![SetupJob {
                name: "j-1".into(),
                image: d.spec.web.image.clone(),
                attempt: 1,
                state: JobState::Failed {
                    reason: "PodFailurePolicy".into(),
                    detail: "sites/ holds no configured site".into(),
                    at: Some(now()),
                },
            }];
            let plan = plan_workload(&d, Some(&site), true, &s, now());
            assert_eq!(plan.verdict.reason, "SiteNotConfigured");
            assert!(plan.verdict.message.contains("clinic-a-sites"));
            assert!(
                plan.verdict
                    .message
                    .contains("sites/ holds no configured site")
            );
        }
        // Created empty by this clinic: the installer's credentials.
        let plan = plan_workload(&d, Some(&site()), true, &seen(), now());
        let job = child(&plan, ChildKind::Job).unwrap();
        assert_eq!(
            job.body["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"],
            "install"
        );
    }

    #[test]
    fn a_failed_setup_is_retried_after_a_doubling_delay() {
        let d = clinic(serde_json::json!({"replicas": 1}));
        let mut s = seen();
        s.admin_secret = true;
        s.master_copy = true;
        let failed_at = now() - std::time::Duration::from_secs(60);
        s.setup_jobs = vec![SetupJob {
            name: "j-1".into(),
            image: d.spec.web.image.clone(),
            attempt: 1,
            state: JobState::Failed {
                reason: "BackoffLimitExceeded: Job has reached the specified backoff limit".into(),
                detail: "Couldn't set up".into(),
                at: Some(failed_at),
            },
        }];
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert_eq!(plan.verdict.reason, "SetupFailed");
        assert!(plan.verdict.message.contains("Couldn't set up"));
        assert!(
            child(&plan, ChildKind::Job).is_none(),
            "not before the delay"
        );
        // Meanwhile no copy of the master password waits in the namespace.
        assert!(plan.changes.iter().any(|c| matches!(
            c,
            Change::DeleteChild { kind: ChildKind::Secret, name } if name == "clinic-a-db-master"
        )));
        let mut gone = s.clone();
        gone.master_copy = false;
        let plan_gone = plan_workload(&d, Some(&site()), true, &gone, now());
        assert!(!plan_gone.changes.iter().any(|c| matches!(
            c,
            Change::CopyMasterPassword { .. } | Change::DeleteChild { .. }
        )));
        // At the retry it is copied again, before the Job.
        let retry = plan_workload(
            &d,
            Some(&site()),
            true,
            &gone,
            now() + std::time::Duration::from_secs(300),
        );
        let copy = retry
            .changes
            .iter()
            .position(|c| matches!(c, Change::CopyMasterPassword { .. }))
            .expect("copied for the retry");
        let job = retry
            .changes
            .iter()
            .position(|c| matches!(c, Change::ApplyChildren(ch) if ch.iter().any(|c| c.kind == ChildKind::Job)))
            .unwrap();
        assert!(copy < job);
        assert_eq!(plan.wake_after, Some(std::time::Duration::from_secs(240)));
        let later = now() + std::time::Duration::from_secs(300);
        let plan = plan_workload(&d, Some(&site()), true, &s, later);
        let job = child(&plan, ChildKind::Job).unwrap();
        assert_eq!(
            job.body["metadata"]["annotations"][web::ATTEMPT_ANNOTATION],
            "2"
        );
        assert!(!plan.changes.iter().any(|c| matches!(
            c,
            Change::DeleteChild {
                kind: ChildKind::PersistentVolume | ChildKind::PersistentVolumeClaim,
                ..
            }
        )));
        let first = std::time::Duration::from_secs(300);
        assert_eq!(retry_delay(first, 1), first);
        assert_eq!(retry_delay(first, 3), first * 4);
        assert_eq!(retry_delay(first, 40), SETUP_RETRY_MAX);
    }

    #[test]
    fn an_upgrade_waits_for_its_snapshot_then_migrates_then_rolls() {
        let mut d = clinic(serde_json::json!({"replicas": 2, "image": "openemr/openemr:8.0.1"}));
        set_up(&mut d, "openemr/openemr:8.0.0");
        let mut s = seen();
        s.workers = Some(workers("openemr/openemr:8.0.0", 2));
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        let u = plan.upgrade.clone().unwrap();
        assert_eq!(u.phase, Some(UpgradePhase::SnapshotPending));
        assert_eq!(u.snapshot.as_deref(), Some("db-1-upgrade-uid-1-g3"));
        assert!(plan.changes.contains(&Change::CreateUpgradeSnapshot {
            snapshot: "db-1-upgrade-uid-1-g3".into()
        }));
        // The new image is nowhere yet.
        let workers_child = child(&plan, ChildKind::Deployment).unwrap();
        assert!(!workers_child.body.to_string().contains("8.0.1"));
        assert!(child(&plan, ChildKind::Job).is_none());

        // The snapshot is available: the migration Job runs the new image, without the
        // setup credentials.
        carry(&mut d, &plan);
        s.upgrade_snapshot = Some("available".into());
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert_eq!(
            plan.upgrade.as_ref().unwrap().phase,
            Some(UpgradePhase::Rolling)
        );
        let job = child(&plan, ChildKind::Job).unwrap();
        assert!(job.body.to_string().contains("openemr/openemr:8.0.1"));
        let env = job.body["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
        assert!(env.contains("\"migrate\""));
        assert!(
            !env.contains("OPENEMR_MASTER_PASS")
                && !env
                    .contains("secretKeyRef\":{\"key\":\"password\",\"name\":\"clinic-a-db-master")
        );
        assert!(
            !child(&plan, ChildKind::Deployment)
                .unwrap()
                .body
                .to_string()
                .contains("8.0.1")
        );

        // Migrated: the workers roll.
        carry(&mut d, &plan);
        let migration = job.name.clone();
        assert_eq!(
            plan.upgrade.as_ref().unwrap().migration_job.as_ref(),
            Some(&migration)
        );
        assert!(migration.starts_with("clinic-a-migrate-"), "{migration}");
        s.setup_jobs = vec![SetupJob {
            name: migration,
            image: "openemr/openemr:8.0.1".into(),
            attempt: 1,
            state: JobState::Complete,
        }];
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert!(
            child(&plan, ChildKind::Deployment)
                .unwrap()
                .body
                .to_string()
                .contains("8.0.1")
        );

        // Not ready within the timeout: back to the previous image, the snapshot named.
        let late = now() + std::time::Duration::from_secs(1801);
        // The old replicas still serve (ready counts them); the new ones never become ready.
        s.workers = Some(WorkersSeen {
            ready: 2,
            updated: 1,
            total: 3,
            ..workers("openemr/openemr:8.0.1", 0)
        });
        assert!(!s.workers.as_ref().unwrap().rolled_out(2));
        let plan = plan_workload(&d, Some(&site()), true, &s, late);
        assert_eq!(
            plan.upgrade.as_ref().unwrap().phase,
            Some(UpgradePhase::RolledBack)
        );
        let workers_child = child(&plan, ChildKind::Deployment).unwrap();
        assert!(
            workers_child
                .body
                .to_string()
                .contains("openemr/openemr:8.0.0")
        );
        let Some(Change::Announce {
            note,
            warning: true,
            ..
        }) = plan
            .changes
            .iter()
            .find(|c| matches!(c, Change::Announce { .. }))
        else {
            panic!("no warning Event: {:?}", plan.changes)
        };
        assert!(note.contains("db-1-upgrade-uid-1-g3"), "{note}");
        assert!(
            note.contains("on the schema Job clinic-a-migrate-"),
            "{note}"
        );

        // Rolled back stays rolled back: no second upgrade, no second snapshot.
        carry(&mut d, &plan);
        s.workers = Some(workers("openemr/openemr:8.0.0", 2));
        let plan = plan_workload(&d, Some(&site()), true, &s, late);
        assert!(
            !plan
                .changes
                .iter()
                .any(|c| matches!(c, Change::CreateUpgradeSnapshot { .. }))
        );
        assert_eq!(
            plan.upgrade.as_ref().unwrap().phase,
            Some(UpgradePhase::RolledBack)
        );
        assert_eq!(plan.verdict.reason, "UpgradeNotApplied");
        assert!(plan.verdict.status);
        assert!(
            plan.verdict.message.contains("db-1-upgrade-uid-1-g3"),
            "{}",
            plan.verdict.message
        );

        // The spec goes back to the running image: nothing to do, the record kept.
        carry(&mut d, &plan);
        d.spec.web.image = "openemr/openemr:8.0.0".into();
        d.metadata.generation = Some(4);
        let plan = plan_workload(&d, Some(&site()), true, &s, late);
        let u = plan.upgrade.clone().unwrap();
        assert_eq!(u.phase, Some(UpgradePhase::RolledBack));
        assert!(u.superseded);
        assert!(plan.changes.iter().all(|c| !matches!(
            c,
            Change::CreateUpgradeSnapshot { .. } | Change::Announce { .. }
        )));
        assert_eq!(plan.verdict.reason, "ReplicasReady");

        // And names the failed image again: a new upgrade, its own snapshot and Job.
        carry(&mut d, &plan);
        d.spec.web.image = "openemr/openemr:8.0.1".into();
        d.metadata.generation = Some(5);
        s.upgrade_snapshot = None; // db-1-upgrade-uid-1-g5 is not there yet
        let plan = plan_workload(&d, Some(&site()), true, &s, late);
        let again = plan.upgrade.clone().unwrap();
        assert_eq!(again.phase, Some(UpgradePhase::SnapshotPending));
        assert_eq!(again.snapshot.as_deref(), Some("db-1-upgrade-uid-1-g5"));
        assert!(!again.superseded);
        assert_ne!(again.migration_job, u.migration_job);
        assert!(plan.changes.contains(&Change::CreateUpgradeSnapshot {
            snapshot: "db-1-upgrade-uid-1-g5".into()
        }));

        // Its migration Job is numbered after the first one, and the first one's state
        // (completed) does not count for it.
        carry(&mut d, &plan);
        s.upgrade_snapshot = Some("available".into());
        let plan = plan_workload(&d, Some(&site()), true, &s, late);
        let job = child(&plan, ChildKind::Job).unwrap();
        assert_eq!(Some(&job.name), again.migration_job.as_ref());
        assert_eq!(
            job.body["metadata"]["annotations"][web::ATTEMPT_ANNOTATION],
            "2"
        );
        assert!(
            !child(&plan, ChildKind::Deployment)
                .unwrap()
                .body
                .to_string()
                .contains("8.0.1"),
            "the workers wait for this upgrade's own migration"
        );
    }

    #[test]
    fn an_image_edited_into_the_workers_by_hand_is_put_back_not_upgraded_from() {
        let mut d = clinic(serde_json::json!({"replicas": 2}));
        let image = d.spec.web.image.clone();
        set_up(&mut d, &image);
        let mut s = seen();
        s.workers = Some(workers("openemr/openemr:7.0.3", 2));
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert!(plan.upgrade.is_none(), "{:?}", plan.upgrade);
        assert!(
            plan.changes
                .iter()
                .all(|c| !matches!(c, Change::CreateUpgradeSnapshot { .. }))
        );
        let workers = child(&plan, ChildKind::Deployment).unwrap();
        assert!(
            workers
                .body
                .to_string()
                .contains(&format!("\"{}\"", d.spec.web.image))
        );
    }

    #[test]
    fn naming_another_image_before_the_workers_moved_cancels_the_upgrade() {
        let mut d = clinic(serde_json::json!({"replicas": 2, "image": "openemr/openemr:8.0.1"}));
        set_up(&mut d, "openemr/openemr:8.0.0");
        let mut s = seen();
        s.workers = Some(workers("openemr/openemr:8.0.0", 2));
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        carry(&mut d, &plan);
        d.spec.web.image = "openemr/openemr:8.0.0".into();
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        let u = plan.upgrade.clone().unwrap();
        assert_eq!(u.phase, Some(UpgradePhase::Cancelled));
        assert!(u.superseded && u.completion_time.is_some());
        assert!(plan.changes.iter().any(|c| matches!(
            c,
            Change::Announce {
                reason: "UpgradeCancelled",
                warning: true,
                ..
            }
        )));
        assert!(!plan.busy);
        assert!(
            !child(&plan, ChildKind::Deployment)
                .unwrap()
                .body
                .to_string()
                .contains("8.0.1")
        );

        // Named again while the cancelled upgrade's Job still migrates: the new upgrade's
        // Job waits for it to end.
        carry(&mut d, &plan);
        d.spec.web.image = "openemr/openemr:8.0.1".into();
        d.metadata.generation = Some(5);
        s.setup_jobs = vec![SetupJob {
            name: u.migration_job.clone().unwrap(),
            image: "openemr/openemr:8.0.1".into(),
            attempt: 1,
            state: JobState::Running,
        }];
        s.upgrade_snapshot = Some("available".into());
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        carry(&mut d, &plan);
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        let again = plan.upgrade.clone().unwrap();
        assert_eq!(again.phase, Some(UpgradePhase::Rolling));
        assert_ne!(again.migration_job, u.migration_job);
        assert!(child(&plan, ChildKind::Job).is_none(), "{:?}", plan.changes);
        assert!(plan.busy);
        // It ended: now the new one starts.
        s.setup_jobs[0].state = JobState::Complete;
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert_eq!(
            child(&plan, ChildKind::Job).map(|j| j.name.clone()),
            again.migration_job
        );
    }

    #[test]
    fn a_failed_upgrade_without_rollback_leaves_the_workers_where_they_are() {
        let mut d = clinic(serde_json::json!({
            "replicas": 2,
            "image": "openemr/openemr:8.0.1",
            "upgrade": {"rollbackOnFailure": false, "snapshotBeforeUpgrade": false},
        }));
        set_up(&mut d, "openemr/openemr:8.0.0");
        let mut s = seen();
        s.workers = Some(workers("openemr/openemr:8.0.0", 2));
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        let u = plan.upgrade.clone().unwrap();
        assert_eq!(u.phase, Some(UpgradePhase::Rolling));
        carry(&mut d, &plan);
        s.setup_jobs = vec![SetupJob {
            name: u.migration_job.clone().unwrap(),
            image: "openemr/openemr:8.0.1".into(),
            attempt: 1,
            state: JobState::Complete,
        }];
        s.workers = Some(WorkersSeen {
            ready: 2,
            updated: 1,
            total: 3,
            ..workers("openemr/openemr:8.0.1", 0)
        });
        let late = now() + std::time::Duration::from_secs(1801);
        let plan = plan_workload(&d, Some(&site()), true, &s, late);
        assert_eq!(
            plan.upgrade.as_ref().unwrap().phase,
            Some(UpgradePhase::Failed)
        );
        // Looked at again later: still the new image, never rolled back behind the spec.
        carry(&mut d, &plan);
        let plan = plan_workload(&d, Some(&site()), true, &s, late);
        assert!(
            child(&plan, ChildKind::Deployment)
                .is_none_or(|w| w.body.to_string().contains("openemr/openemr:8.0.1")),
            "{:?}",
            plan.changes
        );
        assert_eq!(plan.web.image.as_deref(), Some("openemr/openemr:8.0.1"));
    }
}
