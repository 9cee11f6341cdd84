//! The client pool: the [`AwsClients`] of each (role, session name, region) a clinic asks
//! for, made once and reused, with the credentials of an assumed role cached and refreshed
//! before they expire.
//!
//! A clinic may name an IAM role of another account; the operator assumes it through STS
//! with its own (base) credentials, under a session name that names the clinic, so the other
//! account's CloudTrail says which clinic did what.
//!
//! What is the account's rather than one clinic's (the batched inventory, the shared audit
//! trail) is done with the operator's own identity there: its base credentials in their own
//! account, the role `--account-role` names for another. Never with a clinic's role, which
//! may be scoped to that clinic, named after it in CloudTrail, and removed with it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_config::identity::IdentityCache;
use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};
use sha2::{Digest, Sha256};

use super::{AwsClients, Budgets, Service};
use crate::metrics::Metrics;

/// The budget key of the base credentials' account, which the operator does not look up.
pub const DEFAULT_ACCOUNT: &str = "default";

/// Assumed credentials are renewed this long before they expire (plus up to half of it
/// again, at random, so that clinics do not renew in step), so that a slow or throttled
/// AssumeRole never leaves a call with expired credentials.
const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    role_arn: Option<String>,
    session_name: String,
    region: String,
}

/// Every [`AwsClients`] made so far, by role, session name and region.
pub struct AwsPool {
    base: SdkConfig,
    metrics: Arc<Metrics>,
    budgets: Arc<Budgets>,
    clients: Mutex<HashMap<PoolKey, Arc<AwsClients>>>,
    /// The operator's role in each other account, by account id (`--account-role`).
    account_roles: BTreeMap<String, String>,
}

impl std::fmt::Debug for AwsPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsPool").finish_non_exhaustive()
    }
}

impl AwsPool {
    /// A pool whose clients use `base` (credentials, endpoint override, HTTP client), count
    /// their calls into `metrics` and wait on `budgets`.
    pub fn new(base: SdkConfig, metrics: Arc<Metrics>, budgets: Arc<Budgets>) -> AwsPool {
        AwsPool {
            base,
            metrics,
            budgets,
            clients: Mutex::new(HashMap::new()),
            account_roles: BTreeMap::new(),
        }
    }

    /// The operator's role in each other account (account id → role ARN in it).
    pub fn with_account_roles(mut self, roles: BTreeMap<String, String>) -> AwsPool {
        self.account_roles = roles;
        self
    }

    /// The operator's own clients in `account` (an [`AwsClients::account`] key), for work
    /// done for the whole account under `session_name`: the base credentials for their
    /// own account, the role `--account-role` gives for another, else `None`.
    pub fn account_clients(
        &self,
        account: &str,
        session_name: &str,
        region: &str,
    ) -> Option<Arc<AwsClients>> {
        if account == DEFAULT_ACCOUNT {
            return Some(self.base_clients(region));
        }
        let role_arn = self.account_roles.get(account)?;
        let key = PoolKey {
            role_arn: Some(role_arn.clone()),
            session_name: session_name.to_string(),
            region: region.to_string(),
        };
        Some(self.get_or_make(key, || self.assumed(role_arn, session_name, region)))
    }

    pub fn budgets(&self) -> &Arc<Budgets> {
        &self.budgets
    }

    /// The clients of `region`: with the base credentials when `role_arn` is `None` (the
    /// session name is then unused), else with the credentials of `role_arn` assumed as
    /// `session_name`. Nothing is sent here: the role is assumed on the first call, and
    /// a refusal (a role that does not trust the operator) fails that call as an
    /// [`AwsError`](super::AwsError) of STS's class, usually `AccessDenied`.
    pub async fn clients(
        &self,
        role_arn: Option<&str>,
        session_name: &str,
        region: &str,
    ) -> Arc<AwsClients> {
        match role_arn {
            None => self.base_clients(region),
            Some(role_arn) => {
                let key = PoolKey {
                    role_arn: Some(role_arn.to_string()),
                    session_name: session_name.to_string(),
                    region: region.to_string(),
                };
                self.get_or_make(key, || self.assumed(role_arn, session_name, region))
            }
        }
    }

    fn base_clients(&self, region: &str) -> Arc<AwsClients> {
        let key = PoolKey {
            role_arn: None,
            session_name: String::new(),
            region: region.to_string(),
        };
        self.get_or_make(key, || {
            AwsClients::new(
                &self.base,
                DEFAULT_ACCOUNT,
                region,
                self.metrics.clone(),
                self.budgets.clone(),
            )
        })
    }

    fn get_or_make(&self, key: PoolKey, make: impl FnOnce() -> AwsClients) -> Arc<AwsClients> {
        if let Some(found) = self.lock().get(&key) {
            return found.clone();
        }
        // Made outside the lock (building clients is not free); if two callers race, the
        // first one stored wins and the other's were never used (credentials are fetched
        // on first use only).
        let made = Arc::new(make());
        self.lock().entry(key).or_insert(made).clone()
    }

    /// Drops the cached clients of a clinic with a role that is gone. The base credentials'
    /// clients are shared by every clinic of their region and stay.
    pub fn forget(&self, role_arn: &str, session_name: &str, region: &str) {
        self.lock().remove(&PoolKey {
            role_arn: Some(role_arn.to_string()),
            session_name: session_name.to_string(),
            region: region.to_string(),
        });
    }

    /// How many clients are cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Arc<AwsClients>>> {
        // The map stays consistent even if a holder panicked: every change is a single
        // insert or remove.
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn assumed(&self, role_arn: &str, session_name: &str, region: &str) -> AwsClients {
        // AssumeRole is a call of the operator's own account, through its own (counted,
        // budgeted) STS client of that region, to the same endpoint override.
        let caller = self.base_clients(region);
        let provider = AssumeRole {
            caller,
            role_arn: role_arn.to_string(),
            session_name: session_name.to_string(),
        };
        // One cache per role and region, shared by its clients: the first call of any
        // service assumes the role and the others reuse the credentials. A shared cache
        // would hold only 64 roles and evict at random beyond that.
        let cache = IdentityCache::lazy()
            .buffer_time(RENEW_BEFORE_EXPIRY)
            .build();
        let config = self
            .base
            .to_builder()
            .credentials_provider(SharedCredentialsProvider::new(provider))
            .identity_cache(cache)
            .build();
        // Not a well-formed role ARN: AssumeRole refuses it and no call is made in that
        // account, so the budget key only has to be distinct.
        AwsClients::new(
            &config,
            account_key(Some(role_arn)),
            region,
            self.metrics.clone(),
            self.budgets.clone(),
        )
    }
}

/// Credentials of a role, assumed with the base credentials. Called by the identity cache
/// only when it has none that are fresh.
#[derive(Debug)]
struct AssumeRole {
    caller: Arc<AwsClients>,
    role_arn: String,
    session_name: String,
}

impl AssumeRole {
    async fn credentials(&self) -> Result<Credentials, CredentialsError> {
        let sts = &self.caller.sts;
        let assumed = self
            .caller
            .call(
                Service::Sts,
                "AssumeRole",
                sts.assume_role()
                    .role_arn(&self.role_arn)
                    .role_session_name(&self.session_name)
                    .send(),
            )
            .await
            .map_err(CredentialsError::provider_error)?;
        let Some(c) = assumed.credentials() else {
            return Err(CredentialsError::unhandled(
                "AssumeRole answered without credentials",
            ));
        };
        let expiry = SystemTime::try_from(c.expiration).map_err(CredentialsError::unhandled)?;
        Ok(Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            Some(expiry),
            "AssumeRole",
        ))
    }
}

impl ProvideCredentials for AssumeRole {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.credentials())
    }
}

/// The key [`AwsClients::account`] has for the clients of `role_arn` (the base
/// credentials' when `None`).
pub fn account_key(role_arn: Option<&str>) -> &str {
    match role_arn {
        None => DEFAULT_ACCOUNT,
        Some(role_arn) => account_of(role_arn).unwrap_or(role_arn),
    }
}

/// `<account id>=<role ARN>` of `--account-role`: the role must be in that account.
pub fn parse_account_role(text: &str) -> Result<(String, String), String> {
    let Some((account, role_arn)) = text.split_once('=') else {
        return Err(format!(
            "{text:?} is not <account id>=<role ARN>, such as \
             111122223333=arn:aws:iam::111122223333:role/openemr-operator"
        ));
    };
    match account_of(role_arn) {
        Some(of) if of == account => Ok((account.to_string(), role_arn.to_string())),
        Some(of) => Err(format!("role {role_arn} is in account {of}, not {account}")),
        None => Err(format!(
            "{role_arn:?} is not a role ARN such as arn:aws:iam::111122223333:role/openemr-operator"
        )),
    }
}

/// The 12-digit account of a role ARN (`arn:<partition>:iam::<account>:role/<name>`).
pub fn account_of(role_arn: &str) -> Option<&str> {
    let mut parts = role_arn.splitn(6, ':');
    let (Some("arn"), Some(_partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let twelve_digits = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    (twelve_digits && resource.starts_with("role/")).then_some(account)
}

/// STS's limit on a role session name.
const MAX_SESSION_NAME: usize = 64;

/// The role session name of a clinic: `openemr-<namespace>.<name>`, or, when that is longer
/// than STS allows, its first characters and a hash of the whole, so that two clinics never
/// share a name.
pub fn session_name(namespace: &str, name: &str) -> String {
    let full: String = format!("openemr-{namespace}.{name}")
        .chars()
        .map(|c| if allowed_in_session_name(c) { c } else { '-' })
        .collect();
    let changed = full != format!("openemr-{namespace}.{name}");
    if full.len() <= MAX_SESSION_NAME && !changed {
        return full;
    }
    let digest = Sha256::new()
        .chain_update(namespace.as_bytes())
        .chain_update([0u8])
        .chain_update(name.as_bytes())
        .finalize();
    let hash: String = digest[..5].iter().map(|b| format!("{b:02x}")).collect();
    // Only ASCII is left, so any byte index is a character boundary.
    let keep = full.len().min(MAX_SESSION_NAME - hash.len() - 1);
    format!("{}-{hash}", &full[..keep])
}

/// `[\w+=,.@-]`, as STS defines `\w`: ASCII letters, digits and `_`.
fn allowed_in_session_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(s: &str) -> bool {
        (2..=MAX_SESSION_NAME).contains(&s.len()) && s.chars().all(allowed_in_session_name)
    }

    #[test]
    fn session_names_name_the_clinic() {
        assert_eq!(session_name("clinics", "north"), "openemr-clinics.north");
        assert!(valid(&session_name("a", "b")));
    }

    #[test]
    fn long_session_names_are_shortened_and_stay_distinct() {
        let ns = "n".repeat(63);
        let a = session_name(&ns, &format!("{}-a", "x".repeat(240)));
        let b = session_name(&ns, &format!("{}-b", "x".repeat(240)));
        assert!(valid(&a) && valid(&b), "{a} {b}");
        assert_eq!(a.len(), MAX_SESSION_NAME);
        assert_ne!(a, b);
        assert!(a.starts_with("openemr-nnnn"));
        // The boundary: exactly 64 characters stays as it is.
        let name = "y".repeat(MAX_SESSION_NAME - "openemr-ns.".len());
        assert_eq!(session_name("ns", &name), format!("openemr-ns.{name}"));
        let longer = format!("{name}y");
        assert_ne!(session_name("ns", &longer), format!("openemr-ns.{longer}"));
        assert!(valid(&session_name("ns", &longer)));
    }

    #[test]
    fn characters_sts_refuses_are_replaced_and_hashed() {
        // Kubernetes names cannot hold these, but a session name must never be refused.
        let a = session_name("ns", "clinic a/b");
        let b = session_name("ns", "clinic-a-b");
        assert!(valid(&a), "{a}");
        assert_ne!(a, b, "a replaced character must not make two clinics one");
    }

    /// What a role that does not trust the operator does to every call made with it.
    #[derive(Debug)]
    struct Refused;

    impl ProvideCredentials for Refused {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            future::ProvideCredentials::ready(Err(CredentialsError::provider_error(
                crate::aws::AwsError {
                    class: crate::aws::ErrorClass::AccessDenied,
                    service: "sts",
                    operation: "AssumeRole",
                    code: "AccessDenied".into(),
                    message: "not authorized to perform sts:AssumeRole".into(),
                },
            )))
        }
    }

    #[tokio::test]
    async fn a_refused_role_fails_each_call_with_the_class_sts_gave() {
        // Nothing listens there: the call must fail before it is sent.
        let config = crate::aws::base_config_loader()
            .endpoint_url("http://127.0.0.1:9")
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(Refused)
            .load()
            .await;
        let metrics = Arc::new(Metrics::new());
        let aws = AwsClients::new(
            &config,
            "111122223333",
            "us-east-1",
            metrics.clone(),
            Arc::new(Budgets::new(Default::default(), metrics)),
        );
        let err = aws
            .call(
                Service::Rds,
                "DescribeDBInstances",
                aws.rds.describe_db_instances().send(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.class, crate::aws::ErrorClass::AccessDenied, "{err}");
        assert_eq!(err.code, "AccessDenied");
        assert_eq!((err.service, err.operation), ("rds", "DescribeDBInstances"));
        assert!(err.message.contains("sts:AssumeRole"), "{err}");
    }

    #[test]
    fn accounts_of_role_arns() {
        assert_eq!(
            account_of("arn:aws:iam::111122223333:role/clinic-x"),
            Some("111122223333")
        );
        assert_eq!(
            account_of("arn:aws-us-gov:iam::111122223333:role/path/to/r"),
            Some("111122223333")
        );
        for bad in [
            "",
            "clinic-x",
            "arn:aws:iam::1111:role/x",
            "arn:aws:iam::11112222333a:role/x",
            "arn:aws:iam::111122223333:user/x",
            "arn:aws:s3:::111122223333:role/x",
            "arn:aws:iam:us-east-1:111122223333:role/x",
        ] {
            assert_eq!(account_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn account_roles_name_a_role_in_that_account() {
        let role = "arn:aws:iam::111122223333:role/openemr-operator";
        assert_eq!(
            parse_account_role(&format!("111122223333={role}")),
            Ok(("111122223333".into(), role.into()))
        );
        let other = parse_account_role(&format!("444455556666={role}")).unwrap_err();
        assert!(
            other.contains("in account 111122223333, not 444455556666"),
            "{other}"
        );
        assert!(parse_account_role(role).is_err());
        assert!(parse_account_role("111122223333=operator").is_err());
    }

    #[tokio::test]
    async fn an_account_is_worked_on_with_the_operators_identity_there_or_not_at_all() {
        let metrics = Arc::new(Metrics::new());
        let config = crate::aws::base_config_loader()
            .endpoint_url("http://127.0.0.1:9")
            .region(aws_config::Region::new("us-east-1"))
            .load()
            .await;
        let operator_role = "arn:aws:iam::111122223333:role/openemr-operator";
        let pool = AwsPool::new(
            config,
            metrics.clone(),
            Arc::new(Budgets::new(Default::default(), metrics)),
        )
        .with_account_roles(BTreeMap::from([(
            "111122223333".to_string(),
            operator_role.to_string(),
        )]));
        // A clinic's role in each of two accounts.
        let clinic = pool
            .clients(
                Some("arn:aws:iam::111122223333:role/clinic"),
                "clinic-a",
                "eu-west-1",
            )
            .await;
        let stranger = pool
            .clients(
                Some("arn:aws:iam::444455556666:role/clinic"),
                "clinic-b",
                "eu-west-1",
            )
            .await;
        let inventory = pool
            .account_clients(&clinic.account, "inventory", "eu-west-1")
            .unwrap();
        assert_eq!(inventory.account, "111122223333");
        assert!(!Arc::ptr_eq(&inventory, &clinic), "not the clinic's role");
        assert!(Arc::ptr_eq(
            &inventory,
            &pool
                .clients(Some(operator_role), "inventory", "eu-west-1")
                .await
        ));
        assert!(
            pool.account_clients(&stranger.account, "inventory", "eu-west-1")
                .is_none(),
            "no identity of the operator's own in 444455556666"
        );
        let base = pool.clients(None, "", "eu-west-1").await;
        assert!(Arc::ptr_eq(
            &pool
                .account_clients(account_key(None), "inventory", "eu-west-1")
                .unwrap(),
            &base
        ));
    }
}
