//! BackupPolicy controller.
//!
//! Today it judges what the API server cannot: that the schedules parse (numbers in range),
//! that the time zones exist in the tz database, and that the clinic it covers exists. It
//! reports `Accepted` with a reason naming the field. Taking, pruning and copying sets plug
//! in here.

use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};

use super::{Context, Error, Plan, Reconcile, exists, status_with};
use crate::api::{BackupPolicy, BackupPolicyStatus, OpenEMRDeployment};
use crate::conditions::Verdict;
use crate::schedule::Schedule;

#[derive(Debug, Clone)]
pub struct Observed {
    pub deployment_exists: bool,
}

impl Reconcile for BackupPolicy {
    type Observed = Observed;
    const CONTROLLER: &'static str = "backuppolicy";

    async fn observe(&self, ctx: &Context) -> Result<Observed, Error> {
        let ns = self.namespace().unwrap_or_default();
        let api: Api<OpenEMRDeployment> = Api::namespaced(ctx.client.clone(), &ns);
        Ok(Observed {
            deployment_exists: exists(&api, &self.spec.deployment_ref.name).await?,
        })
    }

    const NAMES_DEPLOYMENTS: bool = true;

    fn refers_to_deployment(&self, name: &str) -> bool {
        self.spec.deployment_ref.name == name
    }

    fn plan(&self, observed: &Observed, now: Timestamp) -> Plan<BackupPolicyStatus> {
        let accepted = self.validate(observed);
        let is_accepted = accepted.status;
        Plan::after_validation(status_with(self, &[accepted], now), is_accepted)
    }
}

impl BackupPolicy {
    fn validate(&self, observed: &Observed) -> Verdict {
        let spec = &self.spec;
        if let Err(e) = Schedule::parse(&spec.schedule, &spec.time_zone) {
            return Verdict::falsy(
                "Accepted",
                e.reason(),
                format!("spec.schedule / spec.timeZone: {e}"),
            );
        }
        if let Some(drill) = &spec.drill
            && let Err(e) = Schedule::parse(&drill.schedule, &drill.time_zone)
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
    fn missing_deployment_is_refused() {
        let c = accepted(&policy("@daily", "UTC"), false);
        assert_eq!(c.reason, "DeploymentNotFound");
        assert!(c.message.contains("clinic-a"));
    }
}
