//! OpenEMRDeployment controller.
//!
//! Today it judges what the API server cannot: that a referenced credentials Secret exists
//! and carries a `password` key. It reports `Accepted`, and `Ready=False` with reason
//! `NotProvisioned`, because this version does not create AWS resources or the web tier yet;
//! the provisioning steps (stack, RDS, web tier) plug into `observe` and `plan` here.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};

use super::{Context, Error, Plan, Reconcile, status_with};
use crate::api::deployment::DeploymentPhase;
use crate::api::{OpenEMRDeployment, OpenEMRDeploymentStatus};
use crate::conditions::Verdict;

/// Keys a user-provided credentials Secret must have.
pub const PASSWORD_KEY: &str = "password";

/// What a referenced credentials Secret looks like (never its values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialsSecret {
    /// The spec names none; the operator will generate one.
    NotReferenced,
    Missing(String),
    MissingKey(String),
    Present,
}

#[derive(Debug, Clone)]
pub struct Observed {
    pub credentials: CredentialsSecret,
}

impl Reconcile for OpenEMRDeployment {
    type Observed = Observed;
    const CONTROLLER: &'static str = "openemrdeployment";

    async fn observe(&self, ctx: &Context) -> Result<Observed, Error> {
        let credentials = match &self.spec.database.credentials_secret_ref {
            None => CredentialsSecret::NotReferenced,
            Some(r) => {
                let ns = self.namespace().unwrap_or_default();
                let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
                match secrets
                    .get_opt(&r.name)
                    .await
                    .map_err(Error::observe(format!("Secret {ns}/{}", r.name)))?
                {
                    None => CredentialsSecret::Missing(r.name.clone()),
                    Some(s) if has_key(&s, PASSWORD_KEY) => CredentialsSecret::Present,
                    Some(_) => CredentialsSecret::MissingKey(r.name.clone()),
                }
            }
        };
        Ok(Observed { credentials })
    }

    fn plan(&self, observed: &Observed, now: Timestamp) -> Plan<OpenEMRDeploymentStatus> {
        let accepted = match &observed.credentials {
            CredentialsSecret::NotReferenced | CredentialsSecret::Present => {
                Verdict::truthy("Accepted", "Valid", "spec is valid")
            }
            CredentialsSecret::Missing(name) => Verdict::falsy(
                "Accepted",
                "CredentialsSecretNotFound",
                format!(
                    "spec.database.credentialsSecretRef names Secret {name:?}, which does not exist in this namespace"
                ),
            ),
            CredentialsSecret::MissingKey(name) => Verdict::falsy(
                "Accepted",
                "CredentialsSecretInvalid",
                format!(
                    "spec.database.credentialsSecretRef: Secret {name:?} has no {PASSWORD_KEY:?} key"
                ),
            ),
        };
        let is_accepted = accepted.status;
        let ready = if is_accepted {
            Verdict::falsy(
                "Ready",
                "NotProvisioned",
                "accepted; this operator version does not provision AWS resources or the web tier yet",
            )
        } else {
            Verdict::falsy(
                "Ready",
                "NotAccepted",
                "the spec was not accepted; see the Accepted condition",
            )
        };
        let mut status = status_with(self, &[accepted, ready], now);
        status.phase = Some(DeploymentPhase::Pending);
        Plan::after_validation(status, is_accepted)
    }
}

fn has_key(secret: &Secret, key: &str) -> bool {
    secret.data.as_ref().is_some_and(|d| d.contains_key(key))
        || secret
            .string_data
            .as_ref()
            .is_some_and(|d| d.contains_key(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::OpenEMRDeploymentSpec;
    use crate::conditions;

    fn clinic() -> OpenEMRDeployment {
        let spec: OpenEMRDeploymentSpec = serde_json::from_value(serde_json::json!({
            "aws": {"region": "us-east-1"},
            "network": {"newVpc": {}},
        }))
        .unwrap();
        let mut d = OpenEMRDeployment::new("clinic-a", spec);
        d.metadata.generation = Some(4);
        d
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn generated_credentials_are_accepted() {
        let plan = clinic().plan(
            &Observed {
                credentials: CredentialsSecret::NotReferenced,
            },
            now(),
        );
        let accepted = conditions::find(&plan.status.conditions, "Accepted").unwrap();
        assert_eq!(accepted.status, "True");
        let ready = conditions::find(&plan.status.conditions, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "NotProvisioned")
        );
        assert_eq!(plan.status.observed_generation, Some(4));
    }

    #[test]
    fn missing_secret_is_refused_naming_the_field() {
        let plan = clinic().plan(
            &Observed {
                credentials: CredentialsSecret::Missing("db-creds".into()),
            },
            now(),
        );
        let accepted = conditions::find(&plan.status.conditions, "Accepted").unwrap();
        assert_eq!(accepted.status, "False");
        assert_eq!(accepted.reason, "CredentialsSecretNotFound");
        assert!(
            accepted
                .message
                .contains("spec.database.credentialsSecretRef")
        );
        assert!(plan.requeue < super::super::RESYNC);
    }

    #[test]
    fn replanning_an_unchanged_object_changes_nothing() {
        let mut d = clinic();
        let observed = Observed {
            credentials: CredentialsSecret::Present,
        };
        d.status = Some(d.plan(&observed, now()).status);
        let later = Timestamp::from_second(1_800_000_600).unwrap();
        assert_eq!(Some(d.plan(&observed, later).status), d.status);
    }
}
