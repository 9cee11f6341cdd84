//! OpenEMRBackup controller (one backup set per object).
//!
//! Today it checks, in the shared caches, that the clinic exists and that a named policy
//! exists and covers that clinic, reports `Accepted`, and leaves the set `Pending`. Taking
//! the snapshot and the documents copy, and writing the manifest, plug in here.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::{Context, Error, NoChange, Plan, Reconcile, RefKind, lookup, status_with};
use crate::api::backup::BackupPhase;
use crate::api::{OpenEMRBackup, OpenEMRBackupStatus};
use crate::conditions::Verdict;

/// The policy named by a set, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyRef {
    NotSet,
    Missing,
    /// Present but not readable as a BackupPolicy of this API.
    Unreadable,
    /// Found; it covers this deployment.
    Covers(String),
}

#[derive(Debug, Clone)]
pub struct Observed {
    pub deployment_exists: bool,
    pub policy: PolicyRef,
}

impl Reconcile for OpenEMRBackup {
    type Observed = Observed;
    type Change = NoChange;
    const CONTROLLER: &'static str = "openemrbackup";
    const REF_KIND: Option<RefKind> = Some(RefKind::Backup);

    async fn observe(&self, ctx: &Context) -> Result<Observed, Error> {
        let ns = self.namespace().unwrap_or_default();
        let caches = &ctx.caches;
        let deployment_exists =
            lookup(&caches.deployments, &ns, &self.spec.deployment_ref.name).is_some();
        let policy = match &self.spec.policy_ref {
            None => PolicyRef::NotSet,
            Some(r) => match lookup(&caches.policies, &ns, &r.name) {
                None => PolicyRef::Missing,
                Some(found) => match &found.0 {
                    Ok(p) => PolicyRef::Covers(p.spec.deployment_ref.name.clone()),
                    Err(_) => PolicyRef::Unreadable,
                },
            },
        };
        Ok(Observed {
            deployment_exists,
            policy,
        })
    }

    fn references(&self) -> Vec<(RefKind, String)> {
        let mut refs = vec![(RefKind::Deployment, self.spec.deployment_ref.name.clone())];
        refs.extend(
            self.spec
                .policy_ref
                .iter()
                .map(|r| (RefKind::Policy, r.name.clone())),
        );
        refs
    }

    fn plan(&self, observed: &Observed, now: Timestamp) -> Plan<OpenEMRBackupStatus, NoChange> {
        let accepted = self.validate(observed);
        let is_accepted = accepted.status;
        let mut status = status_with(self, &[accepted], now);
        status.phase.get_or_insert(BackupPhase::Pending);
        Plan::after_validation(status, is_accepted)
    }

    fn intent(change: &NoChange) -> (String, String) {
        match *change {}
    }

    async fn act(&self, change: &NoChange, _ctx: &Context) -> Result<(), Error> {
        match *change {}
    }
}

impl OpenEMRBackup {
    fn validate(&self, observed: &Observed) -> Verdict {
        let deployment = &self.spec.deployment_ref.name;
        if !observed.deployment_exists {
            return Verdict::falsy(
                "Accepted",
                "DeploymentNotFound",
                format!(
                    "spec.deploymentRef: OpenEMRDeployment {deployment:?} does not exist in this namespace"
                ),
            );
        }
        let policy = self
            .spec
            .policy_ref
            .as_ref()
            .map(|r| r.name.as_str())
            .unwrap_or_default();
        match &observed.policy {
            PolicyRef::Missing => Verdict::falsy(
                "Accepted",
                "PolicyNotFound",
                format!("spec.policyRef: BackupPolicy {policy:?} does not exist in this namespace"),
            ),
            PolicyRef::Unreadable => Verdict::falsy(
                "Accepted",
                "PolicyInvalid",
                format!(
                    "spec.policyRef: BackupPolicy {policy:?} cannot be read as this operator's API; see its Events"
                ),
            ),
            PolicyRef::Covers(other) if other != deployment => Verdict::falsy(
                "Accepted",
                "PolicyMismatch",
                format!(
                    "spec.policyRef: BackupPolicy {policy:?} covers OpenEMRDeployment {other:?}, not spec.deploymentRef {deployment:?}"
                ),
            ),
            _ => Verdict::truthy("Accepted", "Valid", "spec is valid"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Condition;
    use crate::conditions;

    fn set(policy: Option<&str>) -> OpenEMRBackup {
        let mut spec = serde_json::json!({"deploymentRef": {"name": "clinic-a"}});
        if let Some(p) = policy {
            spec["policyRef"] = serde_json::json!({ "name": p });
        }
        OpenEMRBackup::new("set-1", serde_json::from_value(spec).unwrap())
    }

    fn accepted(b: &OpenEMRBackup, observed: Observed) -> Condition {
        let plan = b.plan(&observed, Timestamp::from_second(1_800_000_000).unwrap());
        assert_eq!(plan.status.phase, Some(BackupPhase::Pending));
        conditions::find(&plan.status.conditions, "Accepted")
            .unwrap()
            .clone()
    }

    #[test]
    fn on_demand_set_is_accepted() {
        let c = accepted(
            &set(None),
            Observed {
                deployment_exists: true,
                policy: PolicyRef::NotSet,
            },
        );
        assert_eq!(c.status, "True");
    }

    #[test]
    fn policy_of_another_clinic_is_refused() {
        let c = accepted(
            &set(Some("nightly")),
            Observed {
                deployment_exists: true,
                policy: PolicyRef::Covers("clinic-b".into()),
            },
        );
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "PolicyMismatch")
        );
        assert!(c.message.contains("spec.policyRef"));
    }

    #[test]
    fn a_set_names_its_clinic_and_policy() {
        assert_eq!(
            set(Some("nightly")).references(),
            [
                (RefKind::Deployment, "clinic-a".to_string()),
                (RefKind::Policy, "nightly".to_string())
            ]
        );
        assert_eq!(set(None).references().len(), 1);
    }

    #[test]
    fn missing_deployment_is_refused_first() {
        let c = accepted(
            &set(Some("nightly")),
            Observed {
                deployment_exists: false,
                policy: PolicyRef::Missing,
            },
        );
        assert_eq!(c.reason, "DeploymentNotFound");
    }
}
