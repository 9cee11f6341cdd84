//! Secrets Manager: the master password RDS manages for a clinic's database, read once for
//! the first setup of OpenEMR (which creates its schema and user as the master user).

use std::future::Future;

use super::AwsClients;
use super::budget::Service;
use super::error::AwsError;

/// A secret's value, never printed.
pub struct SecretValue(pub String);

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// What the clinic controller asks of Secrets Manager.
pub trait ManagedSecrets {
    /// The `password` of the JSON secret RDS keeps for a master user.
    fn master_password(
        &self,
        secret_arn: &str,
    ) -> impl Future<Output = Result<SecretValue, AwsError>> + Send;
}

impl ManagedSecrets for AwsClients {
    async fn master_password(&self, secret_arn: &str) -> Result<SecretValue, AwsError> {
        let out = self
            .call(
                Service::SecretsManager,
                "GetSecretValue",
                self.secretsmanager
                    .get_secret_value()
                    .secret_id(secret_arn)
                    .send(),
            )
            .await?;
        let text = out.secret_string().unwrap_or_default();
        // RDS stores {"username": …, "password": …}.
        let password = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| {
                v.get("password")
                    .and_then(|p| p.as_str())
                    .map(str::to_string)
            })
            .filter(|p| !p.is_empty());
        password.map(SecretValue).ok_or_else(|| {
            AwsError::invalid_request(
                "secretsmanager",
                "GetSecretValue",
                "the master user secret has no \"password\" field".into(),
            )
        })
    }
}
