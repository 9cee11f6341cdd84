//! AWS clients: one shared base configuration (standard credential chain — IRSA, Pod
//! Identity, environment — and `AWS_ENDPOINT_URL`), the service clients of one account and
//! region ([`AwsClients`], made and cached by [`AwsPool`]), and an interceptor that counts
//! every operation in `openemr_aws_api_calls_total{service,operation,outcome}` and every
//! attempt (retries included) in `openemr_aws_api_attempts_total`.
//!
//! Every call goes through [`AwsClients::call`]: it waits for the request budget of its
//! account, region and service ([`budget`]) and turns any failure into an [`AwsError`]
//! ([`error`]). The service modules ([`cloudformation`], [`rds`]) are made of such calls.
//!
//! All clients use rustls on ring, the same TLS stack as the Kubernetes client.

pub mod accounts;
pub mod budget;
pub mod cloudformation;
pub mod cloudtrail;
pub mod error;
pub mod inventory;
pub mod rds;
pub mod s3;
pub mod secrets;
pub mod snapshots;
pub mod teardown;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use aws_config::{BehaviorVersion, ConfigLoader, Region, SdkConfig};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

pub use accounts::{AwsPool, DEFAULT_ACCOUNT, session_name};
pub use budget::{BudgetConfig, BudgetFlags, Budgets, Rate, Service};
pub use error::{AwsError, ErrorClass};

use crate::metrics::{AwsCallLabels, Metrics};

/// Loads the base configuration from the environment. Region-independent: service clients
/// are made per clinic region by [`AwsPool::clients`].
pub async fn load_base_config() -> SdkConfig {
    base_config_loader().load().await
}

/// The loader behind [`load_base_config`], for callers that set parts explicitly.
pub fn base_config_loader() -> ConfigLoader {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest()).http_client(http)
}

/// The service clients of one account (the base credentials' or an assumed role's) in one
/// region, and the budget their calls wait on.
#[derive(Clone, Debug)]
pub struct AwsClients {
    /// The budget key of the account: the role's 12-digit account, or [`DEFAULT_ACCOUNT`].
    pub account: String,
    pub region: String,
    pub rds: aws_sdk_rds::Client,
    pub s3: aws_sdk_s3::Client,
    pub cloudformation: aws_sdk_cloudformation::Client,
    pub secretsmanager: aws_sdk_secretsmanager::Client,
    pub sts: aws_sdk_sts::Client,
    pub kms: aws_sdk_kms::Client,
    pub efs: aws_sdk_efs::Client,
    pub cloudtrail: aws_sdk_cloudtrail::Client,
    pub budgets: Arc<Budgets>,
}

impl AwsClients {
    /// Clients for `region` with the base credentials, each counting its calls into
    /// `metrics`, with a budget of their own at the default rates.
    pub fn for_region(base: &SdkConfig, region: &str, metrics: Arc<Metrics>) -> AwsClients {
        let budgets = Arc::new(Budgets::new(BudgetConfig::default(), metrics.clone()));
        AwsClients::new(base, DEFAULT_ACCOUNT, region, metrics, budgets)
    }

    /// Clients for `region` with the credentials of `config`, their calls counted into
    /// `metrics` and paced by `budgets` under the key `account`.
    pub fn new(
        config: &SdkConfig,
        account: &str,
        region: &str,
        metrics: Arc<Metrics>,
        budgets: Arc<Budgets>,
    ) -> AwsClients {
        let counter = CallCounter { metrics };
        let aws_region = Region::new(region.to_string());
        let rds = aws_sdk_rds::config::Builder::from(config)
            .region(aws_region.clone())
            .interceptor(counter.clone())
            .build();
        // An endpoint override means an emulator or a private endpoint, which serve
        // path-style bucket addresses; real S3 gets virtual-hosted addressing.
        let s3 = aws_sdk_s3::config::Builder::from(config)
            .region(aws_region.clone())
            .force_path_style(config.endpoint_url().is_some())
            .interceptor(counter.clone())
            .build();
        let cloudformation = aws_sdk_cloudformation::config::Builder::from(config)
            .region(aws_region.clone())
            .interceptor(counter.clone())
            .build();
        let secretsmanager = aws_sdk_secretsmanager::config::Builder::from(config)
            .region(aws_region.clone())
            .interceptor(counter.clone())
            .build();
        let sts = aws_sdk_sts::config::Builder::from(config)
            .region(aws_region.clone())
            .interceptor(counter.clone())
            .build();
        let kms = aws_sdk_kms::config::Builder::from(config)
            .region(aws_region.clone())
            .interceptor(counter.clone())
            .build();
        let efs = aws_sdk_efs::config::Builder::from(config)
            .region(aws_region.clone())
            .interceptor(counter.clone())
            .build();
        let cloudtrail = aws_sdk_cloudtrail::config::Builder::from(config)
            .region(aws_region)
            .interceptor(counter)
            .build();
        AwsClients {
            account: account.to_string(),
            region: region.to_string(),
            rds: aws_sdk_rds::Client::from_conf(rds),
            s3: aws_sdk_s3::Client::from_conf(s3),
            cloudformation: aws_sdk_cloudformation::Client::from_conf(cloudformation),
            secretsmanager: aws_sdk_secretsmanager::Client::from_conf(secretsmanager),
            sts: aws_sdk_sts::Client::from_conf(sts),
            kms: aws_sdk_kms::Client::from_conf(kms),
            efs: aws_sdk_efs::Client::from_conf(efs),
            cloudtrail: aws_sdk_cloudtrail::Client::from_conf(cloudtrail),
            budgets,
        }
    }

    /// Waits for a token of this account/region/service, then awaits the call, classifying
    /// any failure:
    ///
    /// ```ignore
    /// aws.call(Service::Rds, "DescribeDBInstances",
    ///     aws.rds.describe_db_instances().db_instance_identifier(id).send()).await
    /// ```
    ///
    /// The SDK's `send()` does nothing until awaited, so the request leaves only after the
    /// token is taken. The SDK's own retries inside one call do not take tokens again.
    pub async fn call<T, E, R>(
        &self,
        service: Service,
        operation: &'static str,
        request: impl Future<Output = Result<T, SdkError<E, R>>>,
    ) -> Result<T, AwsError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: fmt::Debug + 'static,
    {
        self.budgets
            .acquire(&self.account, &self.region, service)
            .await;
        request
            .await
            .map_err(|e| AwsError::from_sdk(service.as_str(), operation, e))
    }
}

/// Counts every operation once, and every attempt (retries spend rate limit too).
#[derive(Clone)]
struct CallCounter {
    metrics: Arc<Metrics>,
}

impl fmt::Debug for CallCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallCounter")
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "CallCounter"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.metrics
            .aws_api_attempts
            .get_or_create(&labels(context, cfg))
            .inc();
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.metrics
            .aws_api_calls
            .get_or_create(&labels(context, cfg))
            .inc();
        Ok(())
    }
}

/// Service, operation and the outcome of the response at hand.
fn labels(context: &FinalizerInterceptorContextRef<'_>, cfg: &ConfigBag) -> AwsCallLabels {
    let (service, operation) = cfg
        .load::<Metadata>()
        // "Secrets Manager" is the one SDK service name with a space.
        .map(|m| {
            (
                m.service().to_ascii_lowercase().replace(' ', ""),
                m.name().to_string(),
            )
        })
        .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
    let outcome = match context.response() {
        None => Outcome::TransportError,
        Some(resp) => classify(resp.status().as_u16(), resp.body().bytes()),
    };
    AwsCallLabels {
        service,
        operation,
        outcome: outcome.as_str().into(),
    }
}

/// How an AWS call ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Throttled,
    NotFound,
    ClientError,
    ServerError,
    TransportError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Throttled => "throttled",
            Outcome::NotFound => "not_found",
            Outcome::ClientError => "client_error",
            Outcome::ServerError => "server_error",
            Outcome::TransportError => "transport_error",
        }
    }
}

/// Classifies a response by HTTP status and, for errors, the error code in its body.
pub fn classify(status: u16, body: Option<&[u8]>) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Success;
    }
    let body = body.map(String::from_utf8_lossy).unwrap_or_default();
    let throttled = status == 429
        || error::THROTTLING_CODES.iter().any(|code| {
            body.contains(&format!("<Code>{code}</Code>")) || body.contains(&format!("\"{code}\""))
        });
    if throttled {
        Outcome::Throttled
    } else if status == 404 {
        Outcome::NotFound
    } else if status >= 500 {
        Outcome::ServerError
    } else {
        Outcome::ClientError
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_status_and_code() {
        assert_eq!(classify(200, None), Outcome::Success);
        assert_eq!(
            classify(404, Some(b"<Code>NoSuchBucket</Code>")),
            Outcome::NotFound
        );
        assert_eq!(
            classify(
                400,
                Some(b"<ErrorResponse><Error><Code>Throttling</Code></Error></ErrorResponse>")
            ),
            Outcome::Throttled
        );
        assert_eq!(
            classify(503, Some(b"<Code>SlowDown</Code>")),
            Outcome::Throttled
        );
        assert_eq!(classify(429, None), Outcome::Throttled);
        assert_eq!(
            classify(400, Some(b"<Code>DBInstanceNotFound</Code>")),
            Outcome::ClientError
        );
        assert_eq!(classify(500, None), Outcome::ServerError);
    }
}
