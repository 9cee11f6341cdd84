//! CloudTrail: whether the shared audit trail is logging, and starting it again when someone
//! stopped it. The trail itself is made by its CloudFormation stack; `StopLogging` is not a
//! change CloudFormation sees, so the operator reads the trail's status itself.

use std::future::Future;

use super::AwsClients;
use super::budget::Service;
use super::error::AwsError;

/// What the audit code asks of CloudTrail.
pub trait Trails {
    /// Whether the trail (name or ARN) is logging; `None` when it does not exist.
    fn trail_logging(
        &self,
        trail: &str,
    ) -> impl Future<Output = Result<Option<bool>, AwsError>> + Send;
    fn start_logging(&self, trail: &str) -> impl Future<Output = Result<(), AwsError>> + Send;
}

impl Trails for AwsClients {
    async fn trail_logging(&self, trail: &str) -> Result<Option<bool>, AwsError> {
        let request = self.cloudtrail.get_trail_status().name(trail).send();
        match self
            .call(Service::CloudTrail, "GetTrailStatus", request)
            .await
        {
            Ok(out) => Ok(Some(out.is_logging().unwrap_or(false))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn start_logging(&self, trail: &str) -> Result<(), AwsError> {
        let request = self.cloudtrail.start_logging().name(trail).send();
        self.call(Service::CloudTrail, "StartLogging", request)
            .await
            .map(|_| ())
    }
}
