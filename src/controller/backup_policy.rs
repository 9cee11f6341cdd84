//! BackupPolicy controller.
//!
//! Today it judges what the API server cannot: that the schedules parse (numbers in range)
//! and fire at all (`0 3 31 2 *` never does), that the time zones exist in the tz
//! database, and that the clinic it covers exists (looked up in the shared clinic cache).
//! It reports `Accepted` with a reason naming the field. Taking, pruning and copying sets
//! plug in here.

use chrono::{DateTime, Utc};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::{Context, Error, NoChange, Plan, Reconcile, RefKind, lookup, status_with};
use crate::api::{BackupPolicy, BackupPolicyStatus};
use crate::conditions::Verdict;
use crate::schedule::{Schedule, ScheduleError};

#[derive(Debug, Clone)]
pub struct Observed {
    pub deployment_exists: bool,
}

impl Reconcile for BackupPolicy {
    type Observed = Observed;
    type Change = NoChange;
    const CONTROLLER: &'static str = "backuppolicy";
    const REF_KIND: Option<RefKind> = Some(RefKind::Policy);

    async fn observe(&self, ctx: &Context) -> Result<Observed, Error> {
        let ns = self.namespace().unwrap_or_default();
        let found = lookup(&ctx.caches.deployments, &ns, &self.spec.deployment_ref.name);
        Ok(Observed {
            deployment_exists: found.is_some(),
        })
    }

    fn references(&self) -> Vec<(RefKind, String)> {
        vec![(RefKind::Deployment, self.spec.deployment_ref.name.clone())]
    }

    fn plan(&self, observed: &Observed, now: Timestamp) -> Plan<BackupPolicyStatus, NoChange> {
        let accepted = self.validate(observed, now);
        let is_accepted = accepted.status;
        Plan::after_validation(status_with(self, &[accepted], now), is_accepted)
    }

    fn intent(change: &NoChange) -> (String, String) {
        match *change {}
    }

    async fn act(&self, change: &NoChange, _ctx: &Context) -> Result<(), Error> {
        match *change {}
    }
}

/// A schedule that parses and fires at least once after `now`.
fn check_schedule(expr: &str, zone: &str, now: DateTime<Utc>) -> Result<(), ScheduleError> {
    let schedule = Schedule::parse(expr, zone)?;
    match schedule.next_after(now) {
        Some(_) => Ok(()),
        None => Err(ScheduleError::NeverFires(expr.to_string())),
    }
}

impl BackupPolicy {
    fn validate(&self, observed: &Observed, now: Timestamp) -> Verdict {
        let spec = &self.spec;
        let now = crate::clock::to_utc(now);
        if let Err(e) = check_schedule(&spec.schedule, &spec.time_zone, now) {
            return Verdict::falsy(
                "Accepted",
                e.reason(),
                format!("spec.schedule / spec.timeZone: {e}"),
            );
        }
        if let Some(drill) = &spec.drill
            && let Err(e) = check_schedule(&drill.schedule, &drill.time_zone, now)
        {
            return Verdict::falsy(
                "Accepted",
                e.reason(),
                format!("spec.drill.schedule / spec.drill.timeZone: {e}"),
            );
        }
        if !observed.deployment_exists {
            return Verdict::falsy(
                "Accepted",
                "DeploymentNotFound",
                format!(
                    "spec.deploymentRef: OpenEMRDeployment {:?} does not exist in this namespace",
                    spec.deployment_ref.name
                ),
            );
        }
        Verdict::truthy("Accepted", "Valid", "spec is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Condition;
    use crate::conditions;
    use crate::controller::Requeue;

    fn policy(schedule: &str, tz: &str) -> BackupPolicy {
        let spec = serde_json::from_value(serde_json::json!({
            "deploymentRef": {"name": "clinic-a"},
            "schedule": schedule,
            "timeZone": tz,
        }))
        .unwrap();
        BackupPolicy::new("nightly", spec)
    }

    fn accepted(p: &BackupPolicy, exists: bool) -> Condition {
        let plan = p.plan(
            &Observed {
                deployment_exists: exists,
            },
            Timestamp::from_second(1_800_000_000).unwrap(),
        );
        conditions::find(&plan.status.conditions, "Accepted")
            .unwrap()
            .clone()
    }

    #[test]
    fn valid_policy_is_accepted() {
        let c = accepted(&policy("30 2 * * *", "Europe/Berlin"), true);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Valid"));
    }

    #[test]
    fn unknown_time_zone_names_the_field() {
        let c = accepted(&policy("30 2 * * *", "Europe/Atlantis"), true);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "UnknownTimeZone")
        );
        assert!(c.message.contains("spec.timeZone"), "{}", c.message);
    }

    #[test]
    fn out_of_range_cron_names_the_field() {
        let c = accepted(&policy("0 24 * * *", "UTC"), true);
        assert_eq!(c.reason, "InvalidSchedule");
        assert!(c.message.contains("spec.schedule"));
    }

    #[test]
    fn bad_drill_schedule_names_the_drill_field() {
        let mut p = policy("@daily", "UTC");
        p.spec.drill = Some(
            serde_json::from_value(
                serde_json::json!({"schedule": "0 6 31 2 8", "timeZone": "UTC"}),
            )
            .unwrap(),
        );
        let c = accepted(&p, true);
        assert_eq!(c.reason, "InvalidSchedule");
        assert!(c.message.contains("spec.drill.schedule"), "{}", c.message);
    }

    #[test]
    fn a_schedule_that_never_fires_is_refused_until_the_spec_changes() {
        let p = policy("0 3 31 2 *", "Europe/Berlin");
        let c = accepted(&p, true);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ScheduleNeverFires")
        );
        assert!(
            c.message.contains("spec.schedule") && c.message.contains("0 3 31 2 *"),
            "{}",
            c.message
        );
        let plan = p.plan(
            &Observed {
                deployment_exists: true,
            },
            Timestamp::from_second(1_800_000_000).unwrap(),
        );
        assert_eq!(plan.requeue, Requeue::OnChange);
        let mut drill = policy("@daily", "UTC");
        drill.spec.drill = Some(
            serde_json::from_value(
                serde_json::json!({"schedule": "0 6 30 2 *", "timeZone": "UTC"}),
            )
            .unwrap(),
        );
        let c = accepted(&drill, true);
        assert_eq!(c.reason, "ScheduleNeverFires");
        assert!(c.message.contains("spec.drill.schedule"), "{}", c.message);
    }

    #[test]
    fn a_valid_policy_is_resynced_and_names_its_clinic() {
        let p = policy("@daily", "UTC");
        assert_eq!(
            p.references(),
            [(RefKind::Deployment, "clinic-a".to_string())]
        );
        let plan = p.plan(
            &Observed {
                deployment_exists: true,
            },
            Timestamp::from_second(1_800_000_000).unwrap(),
        );
        assert_eq!(plan.requeue, Requeue::Resync);
    }

    #[test]
    fn missing_deployment_is_refused() {
        let c = accepted(&policy("@daily", "UTC"), false);
        assert_eq!(c.reason, "DeploymentNotFound");
        assert!(c.message.contains("clinic-a"));
    }
}
