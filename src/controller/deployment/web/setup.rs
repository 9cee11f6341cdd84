//! The first setup of a clinic's site: the credentials OpenEMR's installer needs put in
//! place (generated or copied, never carried by the plan), then one setup Job at a time in
//! the mode the database's origin allows, a failed one reported and retried after a delay
//! that doubles; nothing on the volume is ever removed.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::render::WebInputs;
use super::scripts::{SetupCredentials, SetupMode};
use super::{ChildKind, JobState, SetupJob, WORKLOAD_READY, WebChange, WebNames, WorkloadSeen};
use crate::api::deployment::WebSpec;
use crate::clock;
use crate::conditions::Verdict;
use crate::controller::deployment::secrets::{PASSWORD_KEY, SecretKey};
use crate::controller::deployment::site::{DatabaseOrigin, Site};

/// The longest wait between two setup attempts.
const SETUP_RETRY_MAX: Duration = Duration::from_secs(3600);

/// What one look at the first setup asks for and says.
pub struct Step {
    pub changes: Vec<WebChange>,
    pub wake_after: Option<Duration>,
    pub verdict: Verdict,
    /// A setup Job runs or is about to.
    pub busy: bool,
}

/// The first setup: credentials in place, then one Job at a time, retried after failures.
pub fn setup_step(
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
        DatabaseOrigin::Adopted
        | DatabaseOrigin::Foreign { .. }
        | DatabaseOrigin::Restored { .. } => SetupMode::Attach,
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
            changes.push(WebChange::ApplyChildren(vec![
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
                changes.push(WebChange::ApplyChildren(vec![
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
        matches!(c, WebChange::ApplyChildren(children) if children.iter().any(|ch| ch.kind == ChildKind::Job))
    });
    let running = matches!(latest.map(|j| &j.state), Some(JobState::Running));
    let mut wake_after = wake_after;
    if !starts_job && !running {
        changes.retain(|c| !matches!(c, WebChange::CopyMasterPassword { .. }));
        if seen.master_copy {
            changes.push(WebChange::DeleteChild {
                kind: ChildKind::Secret,
                name: names.master_copy.clone(),
            });
        }
    } else if changes
        .iter()
        .any(|c| matches!(c, WebChange::CopyMasterPassword { .. }))
    {
        // Looked at again while the Job runs, so a rotation reaches its next pod.
        let recheck = seen.config.master_copy_recheck;
        wake_after = Some(wake_after.map_or(recheck, |w| w.min(recheck)));
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
    web: &WebSpec,
    site: &Site,
    seen: &WorkloadSeen,
    changes: &mut Vec<WebChange>,
) -> Result<SetupCredentials, Verdict> {
    let admin = match &web.admin_credentials_secret_ref {
        Some(r) => r.name.clone(),
        None => {
            if !seen.admin_secret {
                changes.push(WebChange::CreateAdminSecret {
                    name: names.admin_secret.clone(),
                });
            }
            names.admin_secret.clone()
        }
    };
    let master = match (&site.user_master_password, &site.master_secret_arn) {
        (Some(key), _) => key.clone(),
        (None, Some(arn)) => {
            // Also when the copy exists: it is checked against the secret's current
            // version (kept only while a Job runs or starts, below).
            changes.push(WebChange::CopyMasterPassword {
                name: names.master_copy.clone(),
                secret_arn: arn.clone(),
            });
            SecretKey::new(&names.master_copy, PASSWORD_KEY)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::deployment::web::ATTEMPT_ANNOTATION;
    use crate::controller::deployment::web::plan::plan_workload;
    use crate::controller::deployment::web::plan::tests::{
        applied, child, clinic, hold_by, now, seen, site,
    };

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

    /// What was seen after a first Job (attempt 1, the clinic's image) reached `state`,
    /// with the admin Secret and the master password's copy in place.
    fn after_first_job(d: &crate::api::OpenEMRDeployment, state: JobState) -> WorkloadSeen {
        let mut s = seen();
        s.admin_secret = true;
        s.master_copy = true;
        s.setup_jobs = vec![SetupJob {
            name: "j-1".into(),
            image: d.spec.web.image.clone(),
            attempt: 1,
            state,
        }];
        s
    }

    #[test]
    fn a_failed_setup_is_not_retried_while_held() {
        let d = clinic(serde_json::json!({"replicas": 1}));
        let mut s = after_first_job(
            &d,
            JobState::Failed {
                reason: "BackoffLimitExceeded".into(),
                detail: String::new(),
                at: Some(now() - std::time::Duration::from_secs(7200)),
            },
        );
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
    fn a_database_the_clinic_did_not_create_empty_never_meets_the_installer() {
        let d = clinic(serde_json::json!({"replicas": 1}));
        for origin in [
            DatabaseOrigin::Adopted,
            DatabaseOrigin::Foreign {
                uid: Some("uid-0".into()),
            },
            DatabaseOrigin::Foreign { uid: None },
            DatabaseOrigin::Restored {
                by: "RestoreRequest copy-a".into(),
            },
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
                    WebChange::CopyMasterPassword { .. } | WebChange::CreateAdminSecret { .. }
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
    fn a_running_setups_master_copy_is_checked_against_rotation_until_it_ends() {
        let d = clinic(serde_json::json!({"replicas": 1}));
        let s = after_first_job(&d, JobState::Running);
        let plan = plan_workload(&d, Some(&site()), true, &s, now());
        assert!(
            plan.changes
                .iter()
                .any(|c| matches!(c, WebChange::CopyMasterPassword { .. })),
            "{:?}",
            plan.changes
        );
        assert_eq!(plan.wake_after, Some(s.config.master_copy_recheck));
    }

    #[test]
    fn a_failed_setup_is_retried_after_a_doubling_delay() {
        let d = clinic(serde_json::json!({"replicas": 1}));
        let failed_at = now() - std::time::Duration::from_secs(60);
        let s = after_first_job(
            &d,
            JobState::Failed {
                reason: "BackoffLimitExceeded: Job has reached the specified backoff limit".into(),
                detail: "Couldn't set up".into(),
                at: Some(failed_at),
            },
        );
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
            WebChange::DeleteChild { kind: ChildKind::Secret, name } if name == "clinic-a-db-master"
        )));
        let mut gone = s.clone();
        gone.master_copy = false;
        let plan_gone = plan_workload(&d, Some(&site()), true, &gone, now());
        assert!(!plan_gone.changes.iter().any(|c| matches!(
            c,
            WebChange::CopyMasterPassword { .. } | WebChange::DeleteChild { .. }
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
            .position(|c| matches!(c, WebChange::CopyMasterPassword { .. }))
            .expect("copied for the retry");
        let job = retry
            .changes
            .iter()
            .position(|c| matches!(c, WebChange::ApplyChildren(ch) if ch.iter().any(|c| c.kind == ChildKind::Job)))
            .unwrap();
        assert!(copy < job);
        assert_eq!(plan.wake_after, Some(std::time::Duration::from_secs(240)));
        let later = now() + std::time::Duration::from_secs(300);
        let plan = plan_workload(&d, Some(&site()), true, &s, later);
        let job = child(&plan, ChildKind::Job).unwrap();
        assert_eq!(job.body["metadata"]["annotations"][ATTEMPT_ANNOTATION], "2");
        assert!(!plan.changes.iter().any(|c| matches!(
            c,
            WebChange::DeleteChild {
                kind: ChildKind::PersistentVolume | ChildKind::PersistentVolumeClaim,
                ..
            }
        )));
        let first = std::time::Duration::from_secs(300);
        assert_eq!(retry_delay(first, 1), first);
        assert_eq!(retry_delay(first, 3), first * 4);
        assert_eq!(retry_delay(first, 40), SETUP_RETRY_MAX);
    }
}
