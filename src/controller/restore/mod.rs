//! RestoreRequest controller.
//!
//! Today it checks, in the shared caches, what the API server cannot: that the named
//! source (set, policy, clinic) exists, that a point in time is not in the future (looking
//! again when it has passed), that an in-place target exists, and that a side-by-side
//! target name is not taken by a clinic this request does not own. It reports `Accepted`
//! and leaves the request `Pending`. The restore steps plug in here; [`source`] resolves
//! what a request restores (pure).

pub mod source;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};

use super::{Context, Error, NoChange, Plan, Reconcile, RefKind, Requeue, lookup, status_with};
use crate::api::restore::RestorePhase;
use crate::api::{RestoreRequest, RestoreRequestStatus};
use crate::conditions::Verdict;

/// Whether each object the request names was found.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The source object (set, policy or clinic), when the source names one.
    pub source_exists: Option<bool>,
    /// The in-place target clinic, when the target is in place.
    pub in_place_target_exists: Option<bool>,
    /// For a side-by-side target: a clinic of that name exists and this request does not own it.
    pub side_by_side_name_taken: bool,
    /// What the source resolves to now, or why it cannot be restored.
    pub resolved: Option<Result<source::Resolved, source::Refusal>>,
}

impl Reconcile for RestoreRequest {
    type Observed = Observed;
    type Change = NoChange;
    const CONTROLLER: &'static str = "restorerequest";

    async fn observe(&self, ctx: &Context) -> Result<Observed, Error> {
        let ns = self.namespace().unwrap_or_default();
        let caches = &ctx.caches;
        let source = &self.spec.source;
        let source_exists = if let Some(r) = &source.backup_ref {
            Some(lookup(&caches.backups, &ns, &r.name).is_some())
        } else if let Some(r) = &source.latest_from_policy {
            Some(lookup(&caches.policies, &ns, &r.name).is_some())
        } else {
            source
                .point_in_time
                .as_ref()
                .map(|p| lookup(&caches.deployments, &ns, &p.deployment_ref.name).is_some())
        };
        let sets: Vec<_> = caches
            .backups
            .state()
            .into_iter()
            .filter(|s| s.meta().namespace.as_deref() == Some(ns.as_str()))
            .collect();
        let sets: Vec<&crate::api::OpenEMRBackup> =
            sets.iter().filter_map(|s| s.0.as_ref().ok()).collect();
        let clinic = source
            .point_in_time
            .as_ref()
            .and_then(|p| lookup(&caches.deployments, &ns, &p.deployment_ref.name));
        let clinic = clinic.as_ref().and_then(|c| c.0.as_ref().ok());
        let mut observed = Observed {
            source_exists,
            resolved: Some(source::resolve(source, &sets, clinic)),
            ..Observed::default()
        };
        if let Some(t) = &self.spec.target.in_place {
            observed.in_place_target_exists =
                Some(lookup(&caches.deployments, &ns, &t.deployment_name).is_some());
        } else if let Some(found) = lookup(&caches.deployments, &ns, &self.side_by_side_name()) {
            let uid = self.uid().unwrap_or_default();
            observed.side_by_side_name_taken =
                !found.owner_references().iter().any(|o| o.uid == uid);
        }
        Ok(observed)
    }

    fn references(&self) -> Vec<(RefKind, String)> {
        let spec = &self.spec;
        let source = &spec.source;
        let mut refs = Vec::new();
        if let Some(r) = &source.backup_ref {
            refs.push((RefKind::Backup, r.name.clone()));
        }
        if let Some(r) = &source.latest_from_policy {
            refs.push((RefKind::Policy, r.name.clone()));
        }
        if let Some(p) = &source.point_in_time {
            refs.push((RefKind::Deployment, p.deployment_ref.name.clone()));
        }
        let target = match &spec.target.in_place {
            Some(t) => t.deployment_name.clone(),
            None => self.side_by_side_name(),
        };
        refs.push((RefKind::Deployment, target));
        refs
    }

    fn plan(&self, observed: &Observed, now: Timestamp) -> Plan<RestoreRequestStatus, NoChange> {
        let accepted = self.validate(observed, now);
        let is_accepted = accepted.status;
        let mut status = status_with(self, &[accepted], now);
        status.phase.get_or_insert(RestorePhase::Pending);
        let mut plan = Plan::after_validation(status, is_accepted);
        if let Some(wait) = self.until_point_in_time(now) {
            // Time alone fixes this refusal.
            plan.requeue = Requeue::After(wait);
        }
        plan
    }

    fn intent(change: &NoChange) -> (String, String) {
        match *change {}
    }

    async fn act(&self, change: &NoChange, _ctx: &Context) -> Result<(), Error> {
        match *change {}
    }
}

impl RestoreRequest {
    /// Name of the side-by-side clinic this request creates.
    pub fn side_by_side_name(&self) -> String {
        self.spec
            .target
            .side_by_side
            .as_ref()
            .and_then(|t| t.deployment_name.clone())
            .unwrap_or_else(|| self.name_any())
    }

    /// How long until a requested point in time that is still in the future has passed.
    fn until_point_in_time(&self, now: Timestamp) -> Option<Duration> {
        let time = self.spec.source.point_in_time.as_ref()?.time.as_ref()?;
        crate::clock::real_wait_until(time.0, now)
    }

    fn validate(&self, observed: &Observed, now: Timestamp) -> Verdict {
        let source = &self.spec.source;
        if observed.source_exists == Some(false) {
            let (field, kind, name) = if let Some(r) = &source.backup_ref {
                ("spec.source.backupRef", "OpenEMRBackup", r.name.as_str())
            } else if let Some(r) = &source.latest_from_policy {
                (
                    "spec.source.latestFromPolicy",
                    "BackupPolicy",
                    r.name.as_str(),
                )
            } else {
                let name = source
                    .point_in_time
                    .as_ref()
                    .map(|p| p.deployment_ref.name.as_str());
                (
                    "spec.source.pointInTime.deploymentRef",
                    "OpenEMRDeployment",
                    name.unwrap_or_default(),
                )
            };
            return Verdict::falsy(
                "Accepted",
                "SourceNotFound",
                format!("{field}: {kind} {name:?} does not exist in this namespace"),
            );
        }
        if let Some(t) = source.point_in_time.as_ref().and_then(|p| p.time.as_ref())
            && t.0 > now
        {
            return Verdict::falsy(
                "Accepted",
                "PointInTimeInFuture",
                format!("spec.source.pointInTime.time {} is in the future", t.0),
            );
        }
        // What only the sets and the clinic can say (not completed, outside the window);
        // a missing source was said above, naming the field.
        if let Some(Err(refusal)) = &observed.resolved
            && refusal.reason != "SourceNotFound"
        {
            return Verdict::falsy("Accepted", refusal.reason, refusal.message.clone());
        }
        if observed.in_place_target_exists == Some(false) {
            let name = self
                .spec
                .target
                .in_place
                .as_ref()
                .map(|t| t.deployment_name.as_str());
            return Verdict::falsy(
                "Accepted",
                "TargetNotFound",
                format!(
                    "spec.target.inPlace.deploymentName: OpenEMRDeployment {:?} does not exist in this namespace",
                    name.unwrap_or_default()
                ),
            );
        }
        if observed.side_by_side_name_taken {
            return Verdict::falsy(
                "Accepted",
                "TargetExists",
                format!(
                    "spec.target.sideBySide.deploymentName: OpenEMRDeployment {:?} already exists; a side-by-side restore never overwrites a clinic (use inPlace for that)",
                    self.side_by_side_name()
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

    fn request(spec: serde_json::Value) -> RestoreRequest {
        RestoreRequest::new("restore-1", serde_json::from_value(spec).unwrap())
    }

    fn now() -> Timestamp {
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    fn accepted(r: &RestoreRequest, observed: Observed) -> Condition {
        let plan = r.plan(&observed, now());
        assert_eq!(plan.status.phase, Some(RestorePhase::Pending));
        conditions::find(&plan.status.conditions, "Accepted")
            .unwrap()
            .clone()
    }

    #[test]
    fn missing_backup_names_the_field() {
        let r = request(serde_json::json!({"source": {"backupRef": {"name": "set-9"}}}));
        let c = accepted(
            &r,
            Observed {
                source_exists: Some(false),
                ..Default::default()
            },
        );
        assert_eq!(c.reason, "SourceNotFound");
        assert!(c.message.contains("spec.source.backupRef"), "{}", c.message);
    }

    #[test]
    fn future_point_in_time_is_refused() {
        let r = request(serde_json::json!({"source": {"pointInTime": {
            "deploymentRef": {"name": "clinic-a"}, "time": "2027-01-01T00:00:00Z"}}}));
        let c = accepted(
            &r,
            Observed {
                source_exists: Some(true),
                ..Default::default()
            },
        );
        assert_eq!(c.reason, "PointInTimeInFuture");
        // Looked at again once the time has passed, not polled meanwhile.
        let plan = r.plan(
            &Observed {
                source_exists: Some(true),
                ..Default::default()
            },
            now(),
        );
        let wait = Duration::from_secs(3600 * (24 * 38 + 12));
        assert_eq!(plan.requeue, Requeue::After(wait));
    }

    #[test]
    fn a_request_names_its_source_and_target() {
        let r = request(serde_json::json!({"source": {"backupRef": {"name": "set-9"}}}));
        assert_eq!(
            r.references(),
            [
                (RefKind::Backup, "set-9".to_string()),
                (RefKind::Deployment, "restore-1".to_string())
            ]
        );
        let r = request(serde_json::json!({"source": {"pointInTime": {
            "deploymentRef": {"name": "clinic-a"}, "latestRestorable": true}},
            "target": {"inPlace": {"deploymentName": "clinic-a", "confirm": "clinic-a"}}}));
        assert_eq!(
            r.references(),
            [
                (RefKind::Deployment, "clinic-a".to_string()),
                (RefKind::Deployment, "clinic-a".to_string())
            ]
        );
    }

    #[test]
    fn past_point_in_time_is_accepted() {
        let r = request(serde_json::json!({"source": {"pointInTime": {
            "deploymentRef": {"name": "clinic-a"}, "time": "2026-11-23T11:00:00Z"}}}));
        let c = accepted(
            &r,
            Observed {
                source_exists: Some(true),
                ..Default::default()
            },
        );
        assert_eq!(c.status, "True");
    }

    #[test]
    fn taken_side_by_side_name_is_refused() {
        let r = request(
            serde_json::json!({"source": {"latestFromPolicy": {"name": "nightly"}},
            "target": {"sideBySide": {"deploymentName": "clinic-a"}}}),
        );
        assert_eq!(r.side_by_side_name(), "clinic-a");
        let c = accepted(
            &r,
            Observed {
                source_exists: Some(true),
                side_by_side_name_taken: true,
                ..Default::default()
            },
        );
        assert_eq!(c.reason, "TargetExists");
    }

    #[test]
    fn a_source_the_sets_or_the_clinic_refuse_is_not_accepted() {
        let r = request(serde_json::json!({"source": {"pointInTime": {
            "deploymentRef": {"name": "clinic-a"}, "time": "2026-11-23T11:00:00Z"}}}));
        let c = accepted(
            &r,
            Observed {
                source_exists: Some(true),
                resolved: Some(Err(source::Refusal {
                    reason: "PointInTimeOutsideWindow",
                    message: "outside the window".into(),
                })),
                ..Default::default()
            },
        );
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            ("False", "PointInTimeOutsideWindow", "outside the window")
        );
    }

    #[test]
    fn missing_in_place_target_is_refused() {
        let r = request(
            serde_json::json!({"source": {"latestFromPolicy": {"name": "nightly"}},
            "target": {"inPlace": {"deploymentName": "clinic-a", "confirm": "clinic-a"}}}),
        );
        let c = accepted(
            &r,
            Observed {
                source_exists: Some(true),
                in_place_target_exists: Some(false),
                ..Default::default()
            },
        );
        assert_eq!(c.reason, "TargetNotFound");
    }
}
