//! CloudFormation: the clinic's supporting stack (read with its outputs, create, update,
//! delete) and the first failure of its latest operation, read from the stack events.

use std::collections::BTreeMap;
use std::future::Future;

use aws_sdk_cloudformation::types::{OnFailure, StackEvent, Tag};

use super::AwsClients;
use super::budget::Service;
use super::error::AwsError;

/// A stack as the operator sees it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StackInfo {
    pub name: String,
    pub id: String,
    /// E.g. `CREATE_COMPLETE`.
    pub status: String,
    pub status_reason: Option<String>,
    pub outputs: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
}

/// What state a stack is in, for planning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackState {
    /// An operation is running; look again later.
    InProgress,
    /// The last operation succeeded (or an update failed and was rolled back to the last
    /// good template, which still serves).
    Stable,
    /// Creation failed and was rolled back: nothing usable is left. Replaced on a new
    /// generation.
    RolledBack,
    /// A state that needs a person (e.g. `UPDATE_ROLLBACK_FAILED`, `DELETE_FAILED`).
    Failed,
    /// Deleted (DescribeStacks by id still shows it).
    Deleted,
}

impl StackInfo {
    pub fn state(&self) -> StackState {
        stack_state(&self.status)
    }
}

/// Classifies a CloudFormation stack status.
pub fn stack_state(status: &str) -> StackState {
    match status {
        "CREATE_COMPLETE"
        | "UPDATE_COMPLETE"
        | "UPDATE_ROLLBACK_COMPLETE"
        | "IMPORT_COMPLETE"
        | "IMPORT_ROLLBACK_COMPLETE" => StackState::Stable,
        "ROLLBACK_COMPLETE" => StackState::RolledBack,
        "DELETE_COMPLETE" => StackState::Deleted,
        s if s.ends_with("_IN_PROGRESS") => StackState::InProgress,
        _ => StackState::Failed,
    }
}

/// The resource whose failure started a stack's rollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackFailure {
    pub logical_id: String,
    pub resource_type: String,
    pub reason: String,
    /// Resources the rollback left in place (`DeletionPolicy: Retain`): no longer part of
    /// the stack, so deleting the stack does not remove them.
    pub retained: Vec<RetainedResource>,
}

/// A resource a stack's rollback kept (`DELETE_SKIPPED`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedResource {
    pub logical_id: String,
    pub resource_type: String,
    /// `None` when the resource was never made (its creation was cancelled).
    pub physical_id: Option<String>,
}

impl std::fmt::Display for RetainedResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let physical = self.physical_id.as_deref().unwrap_or("not created");
        write!(f, "{} ({physical})", self.logical_id)
    }
}

/// A create or update of the stack.
#[derive(Debug, Clone, PartialEq)]
pub struct StackRequest {
    pub name: String,
    pub body: String,
    /// Idempotency token: the same request sent twice starts one operation.
    pub token: String,
    pub tags: BTreeMap<String, String>,
}

/// Whether an update started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    Started,
    /// CloudFormation found nothing to change: success.
    NothingToDo,
}

/// What the clinic controller asks of CloudFormation.
pub trait Stacks {
    fn describe_stack(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<StackInfo>, AwsError>> + Send;
    /// One page of every live stack in this account and region, and the token of the next.
    fn list_stacks(
        &self,
        next_token: Option<String>,
    ) -> impl Future<Output = Result<(Vec<StackInfo>, Option<String>), AwsError>> + Send;
    /// The first resource that failed in the stack's latest operation, from its events.
    fn first_failure(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<StackFailure>, AwsError>> + Send;
    fn create_stack(
        &self,
        request: &StackRequest,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    fn update_stack(
        &self,
        request: &StackRequest,
    ) -> impl Future<Output = Result<UpdateOutcome, AwsError>> + Send;
    fn delete_stack(
        &self,
        name: &str,
        token: &str,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
}

fn stack_info(s: &aws_sdk_cloudformation::types::Stack) -> StackInfo {
    StackInfo {
        name: s.stack_name().unwrap_or_default().to_string(),
        id: s.stack_id().unwrap_or_default().to_string(),
        status: s
            .stack_status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        status_reason: s.stack_status_reason().map(str::to_string),
        outputs: s
            .outputs()
            .iter()
            .filter_map(|o| {
                Some((
                    o.output_key()?.to_string(),
                    o.output_value().unwrap_or_default().to_string(),
                ))
            })
            .collect(),
        tags: s
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect(),
    }
}

fn cfn_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// Events of the latest operation are those after the stack's own `*_IN_PROGRESS` event
/// that started it (events come newest first).
fn first_failed_event(events: &[StackEvent]) -> Option<StackFailure> {
    let mut latest_operation = Vec::new();
    for event in events {
        let status = event
            .resource_status()
            .map(|s| s.as_str())
            .unwrap_or_default();
        let is_stack = event.resource_type() == Some("AWS::CloudFormation::Stack");
        if is_stack
            && matches!(
                status,
                "CREATE_IN_PROGRESS" | "UPDATE_IN_PROGRESS" | "IMPORT_IN_PROGRESS"
            )
        {
            break;
        }
        latest_operation.push(event);
    }
    let retained = latest_operation
        .iter()
        .rev()
        .filter(|e| e.resource_status().map(|s| s.as_str()) == Some("DELETE_SKIPPED"))
        .map(|e| RetainedResource {
            logical_id: e.logical_resource_id().unwrap_or_default().to_string(),
            resource_type: e.resource_type().unwrap_or_default().to_string(),
            physical_id: e
                .physical_resource_id()
                .filter(|id| !id.is_empty())
                .map(str::to_string),
        })
        .collect::<Vec<_>>();
    let is_stack = |e: &&StackEvent| e.resource_type() == Some("AWS::CloudFormation::Stack");
    let failed_resource = latest_operation.iter().rev().find(|e| {
        let status = e.resource_status().map(|s| s.as_str()).unwrap_or_default();
        let reason = e.resource_status_reason().unwrap_or_default();
        !is_stack(e) && status.ends_with("_FAILED") && !reason.contains("cancelled")
    });
    // No resource failed (a timeout, a cancelled creation): the stack's own rollback
    // event says why, and what it retained must still be known.
    let rollback = || {
        latest_operation.iter().rev().find(|e| {
            let status = e.resource_status().map(|s| s.as_str()).unwrap_or_default();
            is_stack(e)
                && status.contains("ROLLBACK_IN_PROGRESS")
                && e.resource_status_reason().is_some_and(|r| !r.is_empty())
        })
    };
    failed_resource.or_else(rollback).map(|e| StackFailure {
        logical_id: e.logical_resource_id().unwrap_or_default().to_string(),
        resource_type: e.resource_type().unwrap_or_default().to_string(),
        reason: e.resource_status_reason().unwrap_or_default().to_string(),
        retained,
    })
}

impl Stacks for AwsClients {
    async fn describe_stack(&self, name: &str) -> Result<Option<StackInfo>, AwsError> {
        let request = self
            .cloudformation
            .describe_stacks()
            .stack_name(name)
            .send();
        let out = match self
            .call(Service::CloudFormation, "DescribeStacks", request)
            .await
        {
            Ok(out) => out,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(out.stacks().first().map(stack_info))
    }

    async fn list_stacks(
        &self,
        next_token: Option<String>,
    ) -> Result<(Vec<StackInfo>, Option<String>), AwsError> {
        let request = self
            .cloudformation
            .describe_stacks()
            .set_next_token(next_token)
            .send();
        let out = self
            .call(Service::CloudFormation, "DescribeStacks", request)
            .await?;
        let next = out
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        Ok((out.stacks().iter().map(stack_info).collect(), next))
    }

    async fn first_failure(&self, name: &str) -> Result<Option<StackFailure>, AwsError> {
        let request = self
            .cloudformation
            .describe_stack_events()
            .stack_name(name)
            .send();
        let out = self
            .call(Service::CloudFormation, "DescribeStackEvents", request)
            .await?;
        Ok(first_failed_event(out.stack_events()))
    }

    async fn create_stack(&self, r: &StackRequest) -> Result<(), AwsError> {
        let request = self
            .cloudformation
            .create_stack()
            .stack_name(&r.name)
            .template_body(&r.body)
            .client_request_token(&r.token)
            .on_failure(OnFailure::Rollback)
            .set_tags(Some(cfn_tags(&r.tags)))
            .send();
        self.call(Service::CloudFormation, "CreateStack", request)
            .await
            .map(|_| ())
    }

    async fn update_stack(&self, r: &StackRequest) -> Result<UpdateOutcome, AwsError> {
        let request = self
            .cloudformation
            .update_stack()
            .stack_name(&r.name)
            .template_body(&r.body)
            .client_request_token(&r.token)
            .set_tags(Some(cfn_tags(&r.tags)))
            .send();
        match self
            .call(Service::CloudFormation, "UpdateStack", request)
            .await
        {
            Ok(_) => Ok(UpdateOutcome::Started),
            Err(e) if e.is_no_updates() => Ok(UpdateOutcome::NothingToDo),
            Err(e) => Err(e),
        }
    }

    async fn delete_stack(&self, name: &str, token: &str) -> Result<(), AwsError> {
        let request = self
            .cloudformation
            .delete_stack()
            .stack_name(name)
            .client_request_token(token)
            .send();
        match self
            .call(Service::CloudFormation, "DeleteStack", request)
            .await
        {
            // Gone already is done. AWS answers success for a stack it does not have; moto
            // answers 404 when a resource the stack still lists was deleted by other means
            // (having dropped the stack all the same).
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_cloudformation::types::ResourceStatus;

    fn event(logical: &str, kind: &str, status: &str, reason: &str) -> StackEvent {
        StackEvent::builder()
            .logical_resource_id(logical)
            .resource_type(kind)
            .resource_status(ResourceStatus::from(status))
            .resource_status_reason(reason)
            .build()
    }

    #[test]
    fn states_of_stack_statuses() {
        assert_eq!(stack_state("CREATE_COMPLETE"), StackState::Stable);
        assert_eq!(stack_state("UPDATE_ROLLBACK_COMPLETE"), StackState::Stable);
        assert_eq!(stack_state("CREATE_IN_PROGRESS"), StackState::InProgress);
        assert_eq!(
            stack_state("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"),
            StackState::InProgress
        );
        assert_eq!(stack_state("ROLLBACK_COMPLETE"), StackState::RolledBack);
        assert_eq!(stack_state("UPDATE_ROLLBACK_FAILED"), StackState::Failed);
        assert_eq!(stack_state("DELETE_FAILED"), StackState::Failed);
        assert_eq!(stack_state("DELETE_COMPLETE"), StackState::Deleted);
    }

    #[test]
    fn the_first_failure_of_the_latest_operation_is_named() {
        const STACK: &str = "AWS::CloudFormation::Stack";
        // Newest first, as DescribeStackEvents returns them.
        let events = [
            event("s", STACK, "ROLLBACK_COMPLETE", ""),
            event("Key", "AWS::KMS::Key", "DELETE_SKIPPED", ""),
            event(
                "Cache",
                "AWS::ElastiCache::ReplicationGroup",
                "CREATE_FAILED",
                "Resource creation cancelled",
            ),
            event(
                "Files",
                "AWS::EFS::FileSystem",
                "CREATE_FAILED",
                "KMS key is disabled",
            ),
            event("Key", "AWS::KMS::Key", "CREATE_COMPLETE", ""),
            event("s", STACK, "CREATE_IN_PROGRESS", "User Initiated"),
            // An older operation's failure is not this one's.
            event("Old", "AWS::S3::Bucket", "UPDATE_FAILED", "old"),
        ];
        let failure = first_failed_event(&events).unwrap();
        assert_eq!(failure.logical_id, "Files");
        assert_eq!(failure.reason, "KMS key is disabled");
        assert_eq!(
            failure.retained,
            [RetainedResource {
                logical_id: "Key".into(),
                resource_type: "AWS::KMS::Key".into(),
                physical_id: None,
            }]
        );
        assert_eq!(failure.retained[0].to_string(), "Key (not created)");
        assert_eq!(first_failed_event(&events[4..5]), None);
    }

    #[test]
    fn a_rollback_without_a_failed_resource_still_names_why_and_what_it_kept() {
        const STACK: &str = "AWS::CloudFormation::Stack";
        let events = [
            event("s", STACK, "ROLLBACK_COMPLETE", ""),
            StackEvent::builder()
                .logical_resource_id("Bucket")
                .physical_resource_id("oe-c1-north")
                .resource_type("AWS::S3::Bucket")
                .resource_status(ResourceStatus::DeleteSkipped)
                .build(),
            event(
                "s",
                STACK,
                "ROLLBACK_IN_PROGRESS",
                "Stack creation time exceeded the specified timeout",
            ),
            event("s", STACK, "CREATE_IN_PROGRESS", "User Initiated"),
        ];
        let failure = first_failed_event(&events).unwrap();
        assert_eq!(failure.logical_id, "s");
        assert!(failure.reason.contains("timeout"), "{}", failure.reason);
        assert_eq!(failure.retained[0].to_string(), "Bucket (oe-c1-north)");
    }
}
