//! Secrets Manager: the master password RDS manages for a clinic's database, read for the
//! first setup of OpenEMR (which creates its schema and user as the master user), and the
//! Redis AUTH token the clinic's stack generates, copied once for the workers.

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
    /// With the version it was read from (RDS rotates the secret, every 7 days by default).
    fn master_password(
        &self,
        secret_arn: &str,
    ) -> impl Future<Output = Result<(SecretValue, String), AwsError>> + Send;

    /// The Redis AUTH token the clinic's stack generated: letters and digits, which the
    /// image can put in a URL and an ini value unquoted.
    fn redis_auth_token(
        &self,
        secret_arn: &str,
    ) -> impl Future<Output = Result<SecretValue, AwsError>> + Send;
}

impl AwsClients {
    async fn secret_string(&self, secret_arn: &str) -> Result<String, AwsError> {
        Ok(self.versioned_secret_string(secret_arn).await?.0)
    }

    /// The current value and its version id.
    async fn versioned_secret_string(
        &self,
        secret_arn: &str,
    ) -> Result<(String, String), AwsError> {
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
        Ok((
            out.secret_string().unwrap_or_default().to_string(),
            out.version_id().unwrap_or_default().to_string(),
        ))
    }
}

fn unusable(what: &str) -> AwsError {
    AwsError::invalid_request("secretsmanager", "GetSecretValue", what.into())
}

impl ManagedSecrets for AwsClients {
    async fn master_password(&self, secret_arn: &str) -> Result<(SecretValue, String), AwsError> {
        let (text, version) = self.versioned_secret_string(secret_arn).await?;
        // RDS stores {"username": …, "password": …}.
        let password = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("password")
                    .and_then(|p| p.as_str())
                    .map(str::to_string)
            })
            .filter(|p| !p.is_empty());
        password
            .map(|p| (SecretValue(p), version))
            .ok_or_else(|| unusable("the master user secret has no \"password\" field"))
    }

    async fn redis_auth_token(&self, secret_arn: &str) -> Result<SecretValue, AwsError> {
        let token = self.secret_string(secret_arn).await?;
        if redis_token_usable(&token) {
            Ok(SecretValue(token))
        } else {
            // Changed by hand: said by its rule, never by its value.
            Err(unusable(
                "the Redis AUTH token must be 16 to 128 letters and digits",
            ))
        }
    }
}

/// What ElastiCache takes and the image can carry: 16 to 128 ASCII letters and digits.
pub fn redis_token_usable(token: &str) -> bool {
    (16..=128).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tokens_the_image_and_elasticache_can_carry_are_usable() {
        assert!(redis_token_usable(&"aB3".repeat(20)));
        assert!(!redis_token_usable("short1234"));
        assert!(!redis_token_usable(&"a".repeat(129)));
        assert!(!redis_token_usable(&format!("{}&x=y", "a".repeat(20))));
        assert!(!redis_token_usable(&format!("{}\"", "a".repeat(20))));
    }
}
