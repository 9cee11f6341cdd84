//! AWS clients: one shared base configuration (standard credential chain — IRSA, Pod
//! Identity, environment — and `AWS_ENDPOINT_URL`), per-region service clients, and an
//! interceptor that counts every operation in
//! `openemr_aws_api_calls_total{service,operation,outcome}` and every attempt (retries
//! included) in `openemr_aws_api_attempts_total`.
//!
//! All clients use rustls on ring, the same TLS stack as the Kubernetes client.

use std::fmt;
use std::sync::Arc;

use aws_config::{BehaviorVersion, ConfigLoader, Region, SdkConfig};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::metrics::{AwsCallLabels, Metrics};

/// Loads the base configuration from the environment. Region-independent: service clients
/// are made per clinic region with [`AwsClients::for_region`].
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

/// The service clients of one region.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub rds: aws_sdk_rds::Client,
    pub s3: aws_sdk_s3::Client,
    pub cloudformation: aws_sdk_cloudformation::Client,
}

impl AwsClients {
    /// Clients for `region`, each counting its calls into `metrics`.
    pub fn for_region(base: &SdkConfig, region: &str, metrics: Arc<Metrics>) -> AwsClients {
        let counter = CallCounter { metrics };
        let region = Region::new(region.to_string());
        let rds = aws_sdk_rds::config::Builder::from(base)
            .region(region.clone())
            .interceptor(counter.clone())
            .build();
        // An endpoint override means an emulator or a private endpoint, which serve
        // path-style bucket addresses; real S3 gets virtual-hosted addressing.
        let s3 = aws_sdk_s3::config::Builder::from(base)
            .region(region.clone())
            .force_path_style(base.endpoint_url().is_some())
            .interceptor(counter.clone())
            .build();
        let cloudformation = aws_sdk_cloudformation::config::Builder::from(base)
            .region(region)
            .interceptor(counter)
            .build();
        AwsClients {
            rds: aws_sdk_rds::Client::from_conf(rds),
            s3: aws_sdk_s3::Client::from_conf(s3),
            cloudformation: aws_sdk_cloudformation::Client::from_conf(cloudformation),
        }
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
        .map(|m| (m.service().to_ascii_lowercase(), m.name().to_string()))
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

/// Error codes AWS services use for rate limiting (query/XML and JSON protocols).
const THROTTLING_CODES: [&str; 6] = [
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "SlowDown",
    "RequestThrottled",
];

/// Classifies a response by HTTP status and, for errors, the error code in its body.
pub fn classify(status: u16, body: Option<&[u8]>) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Success;
    }
    let body = body.map(String::from_utf8_lossy).unwrap_or_default();
    let throttled = status == 429
        || THROTTLING_CODES.iter().any(|code| {
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
