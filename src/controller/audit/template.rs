//! The shared audit trail's CloudFormation stack, rendered by a pure function, and the pure
//! plan that tells from the stack (and the trail's logging state) what to do next.
//!
//! One stack per AWS account ([`AUDIT_STACK`], in the audit region), shared by every clinic
//! and every cluster using the account: AWS allows five trails per region and account, and
//! a multi-region trail counts in every region, so a trail per clinic stops at the sixth.
//! It holds the audit key, the audit bucket (versioned, SSE-KMS, TLS only, public access
//! blocked, its log files undeletable through the API and expired after the retention)
//! and one multi-region trail: every management event of the account, and the object-level
//! (data) events of every bucket whose name starts with [`CLINIC_BUCKET_PREFIX`], which is
//! every clinic bucket of every cluster. The key and bucket are retained if the stack goes.

use serde_json::{Value, json};

use crate::aws::cloudformation::{StackFailure, StackInfo, StackRequest, StackState};
use crate::controller::deployment::infra::template::{
    self as clinic_template, RenderedStack, cloudtrail_bucket_statements,
    cloudtrail_key_statements, key_administration, private_bucket, retained, sub, tls_only,
};

/// The stack's name: the same in every cluster, so clusters sharing an account share it.
pub const AUDIT_STACK: &str = "openemr-audit";
/// The trail's name.
pub const TRAIL_NAME: &str = "openemr-audit";
/// The start of every clinic bucket's name ([`ClinicNames::bucket`]); the trail selects
/// object events by it, so a new clinic needs no change to the trail.
///
/// [`ClinicNames::bucket`]: crate::controller::deployment::clinic::ClinicNames::bucket
pub const CLINIC_BUCKET_PREFIX: &str = "oe-";
/// Default retention of the log files: six years (with their leap days), as HIPAA asks of
/// documentation of security activity.
pub const DEFAULT_RETENTION_DAYS: u32 = 2192;

/// Output: the trail's ARN.
pub const OUT_TRAIL_ARN: &str = "TrailArn";
/// Output: the audit bucket's name.
pub const OUT_BUCKET: &str = "BucketName";
/// Output: the audit key's ARN.
pub const OUT_KMS_KEY_ARN: &str = "KmsKeyArn";

const KEY: &str = "AuditKey";
const KEY_ALIAS: &str = "AuditKeyAlias";
const BUCKET: &str = "AuditBucket";
const BUCKET_POLICY: &str = "AuditBucketPolicy";
const TRAIL: &str = "Trail";

/// Tags of the stack (and so of its resources). No cluster tag: the stack is the account's.
pub fn stack_tags() -> std::collections::BTreeMap<String, String> {
    [
        ("openemr.io/managed-by", "openemr-operator"),
        ("openemr.io/purpose", "audit"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn trail_arn() -> Value {
    sub(&format!(
        "arn:${{AWS::Partition}}:cloudtrail:${{AWS::Region}}:${{AWS::AccountId}}:trail/{TRAIL_NAME}"
    ))
}

/// Renders the audit stack, keeping log files `retention_days` days. Same input,
/// byte-identical output.
pub fn render(retention_days: u32) -> RenderedStack {
    clinic_template::hashed(template(retention_days))
}

fn template(retention_days: u32) -> Value {
    let root = sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root");
    let trail = trail_arn();
    let any_trail_of_the_account =
        sub("arn:${AWS::Partition}:cloudtrail:*:${AWS::AccountId}:trail/*");
    let [encrypt, describe] = cloudtrail_key_statements(&trail, "CloudTrailEncryptsTheLogs");
    let key = retained(json!({
        "Type": "AWS::KMS::Key",
        "Properties": {
            "Description": "Encrypts the audit logs of the OpenEMR clinics of this account (trail openemr-audit)",
            "EnableKeyRotation": true,
            "KeyPolicy": {"Version": "2012-10-17", "Statement": [
                key_administration(),
                encrypt,
                describe,
                {
                    // Reading the logs: only log files of this account's trails, only by
                    // principals of this account that IAM lets.
                    "Sid": "AccountReadsTheLogs",
                    "Effect": "Allow",
                    "Principal": {"AWS": root},
                    "Action": ["kms:Decrypt", "kms:ReEncryptFrom"],
                    "Resource": "*",
                    "Condition": {
                        "StringEquals": {"kms:CallerAccount": {"Ref": "AWS::AccountId"}},
                        "StringLike": {"kms:EncryptionContext:aws:cloudtrail:arn": any_trail_of_the_account},
                    },
                },
            ]},
        },
    }));
    let mut bucket = private_bucket(sub("${AWS::AccountId}-openemr-audit-logs"), KEY);
    bucket["Properties"]["LifecycleConfiguration"] = json!({"Rules": [{
        "Id": "KeepAuditLogsForTheRetention",
        "Status": "Enabled",
        "ExpirationInDays": retention_days,
        "NoncurrentVersionExpiration": {"NoncurrentDays": retention_days},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
    }]});
    let objects = sub(&format!("${{{BUCKET}.Arn}}/*"));
    let mut statements = tls_only(BUCKET);
    statements.push(json!({
        // Logs leave by the lifecycle's expiry only: deleting one takes a change to this
        // policy first, which CloudTrail itself records.
        "Sid": "DenyDeletingLogs",
        "Effect": "Deny",
        "Principal": "*",
        "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion"],
        "Resource": objects,
    }));
    statements.extend(cloudtrail_bucket_statements(
        BUCKET,
        &trail,
        "CloudTrailWritesTheLogs",
    ));
    let policy = json!({
        "Type": "AWS::S3::BucketPolicy",
        "Properties": {
            "Bucket": {"Ref": BUCKET},
            "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
        },
    });
    let trail_resource = json!({
        "Type": "AWS::CloudTrail::Trail",
        // CloudTrail checks at creation that the bucket policy lets it write.
        "DependsOn": [BUCKET_POLICY],
        "Properties": {
            "TrailName": TRAIL_NAME,
            "S3BucketName": {"Ref": BUCKET},
            "KMSKeyId": {"Fn::GetAtt": [KEY, "Arn"]},
            "EnableLogFileValidation": true,
            "IsLogging": true,
            // Clinics run in any region, and copy backups to others.
            "IsMultiRegionTrail": true,
            "IncludeGlobalServiceEvents": true,
            "AdvancedEventSelectors": [
                {
                    "Name": "Every management event of the account",
                    "FieldSelectors": [{"Field": "eventCategory", "Equals": ["Management"]}],
                },
                {
                    "Name": "Object reads and writes in the OpenEMR clinic buckets",
                    "FieldSelectors": [
                        {"Field": "eventCategory", "Equals": ["Data"]},
                        {"Field": "resources.type", "Equals": ["AWS::S3::Object"]},
                        {"Field": "resources.ARN", "StartsWith": [
                            sub(&format!("arn:${{AWS::Partition}}:s3:::{CLINIC_BUCKET_PREFIX}")),
                        ]},
                    ],
                },
            ],
        },
    });
    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "Audit trail of the OpenEMR clinics of this account, shared by every cluster, managed by openemr-operator: never deleted with a clinic",
        "Resources": {
            KEY: key,
            KEY_ALIAS: {
                "Type": "AWS::KMS::Alias",
                "Properties": {"AliasName": "alias/openemr-audit", "TargetKeyId": {"Ref": KEY}},
            },
            BUCKET: bucket,
            BUCKET_POLICY: policy,
            TRAIL: trail_resource,
        },
        "Outputs": {
            OUT_TRAIL_ARN: {"Description": "The shared audit trail", "Value": {"Fn::GetAtt": [TRAIL, "Arn"]}},
            OUT_BUCKET: {"Description": "Where the trail writes, under AWSLogs/<account>/", "Value": {"Ref": BUCKET}},
            OUT_KMS_KEY_ARN: {"Description": "Key of the log files", "Value": {"Fn::GetAtt": [KEY, "Arn"]}},
        },
    })
}

/// The shared trail as a clinic sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrailView {
    /// Created and logging.
    Ready { trail_arn: String, bucket: String },
    /// Being created or changed: look again soon.
    Pending(String),
    /// Needs a person; the message says what happened and what to do.
    Failed(String),
}

impl TrailView {
    /// Where the log files are: `s3://<bucket>/AWSLogs/<account>/`.
    pub fn logs(&self) -> Option<String> {
        match self {
            TrailView::Ready { trail_arn, bucket } => {
                let account = trail_arn.split(':').nth(4).filter(|a| !a.is_empty())?;
                Some(format!("s3://{bucket}/AWSLogs/{account}/"))
            }
            _ => None,
        }
    }
}

/// A call the shared trail needs.
#[derive(Debug, Clone, PartialEq)]
pub enum TrailStep {
    Create(StackRequest),
    Update(StackRequest),
    /// The trail exists but someone stopped it.
    StartLogging,
}

/// What the trail's stack, its latest failure, and whether its trail logs (read only once
/// the stack is stable: `None` when the trail is missing) call for. `sent_update` is the
/// token of the last update this operator sent, to tell a rolled-back update of this very
/// template (not sent again) from an older one.
pub fn plan(
    stack: Option<&StackInfo>,
    failure: Option<&StackFailure>,
    logging: Option<bool>,
    rendered: &RenderedStack,
    sent_update: Option<&str>,
    region: &str,
) -> (TrailView, Option<TrailStep>) {
    let token = |kind: &str| format!("oe-audit-{kind}-{}", &rendered.hash[..12]);
    let request = |kind: &str| StackRequest {
        name: AUDIT_STACK.to_string(),
        body: rendered.body.clone(),
        token: token(kind),
        tags: stack_tags(),
    };
    let cause = || {
        failure.map_or_else(
            || String::from("no failed resource was reported"),
            |f| format!("{} ({}): {}", f.logical_id, f.resource_type, f.reason),
        )
    };
    let Some(stack) = stack.filter(|s| s.state() != StackState::Deleted) else {
        return (
            TrailView::Pending(format!(
                "creating the shared audit trail: stack {AUDIT_STACK} in {region}"
            )),
            Some(TrailStep::Create(request("create"))),
        );
    };
    match stack.state() {
        StackState::InProgress | StackState::Deleted => (
            TrailView::Pending(format!(
                "stack {AUDIT_STACK} in {region} is {}",
                stack.status
            )),
            None,
        ),
        StackState::RolledBack | StackState::Failed => (
            TrailView::Failed(format!(
                "stack {AUDIT_STACK} in {region} is {}: {}. Fix the cause, then delete the stack (and its retained bucket <account>-openemr-audit-logs if it is empty) so the operator creates it again",
                stack.status,
                cause()
            )),
            None,
        ),
        StackState::Stable => {
            let current =
                stack.outputs.get(clinic_template::OUT_TEMPLATE_HASH) == Some(&rendered.hash);
            let trail_arn = stack.outputs.get(OUT_TRAIL_ARN).cloned();
            let bucket = stack.outputs.get(OUT_BUCKET).cloned();
            let ready = |trail_arn: String, bucket: String| TrailView::Ready { trail_arn, bucket };
            if !current {
                let rolled_back = stack.status == "UPDATE_ROLLBACK_COMPLETE"
                    && sent_update == Some(token("update").as_str());
                if !rolled_back {
                    // The old template's trail logs on while the update runs.
                    let view = match (trail_arn, bucket) {
                        (Some(t), Some(b)) => ready(t, b),
                        _ => {
                            TrailView::Pending(format!("updating stack {AUDIT_STACK} in {region}"))
                        }
                    };
                    return (view, Some(TrailStep::Update(request("update"))));
                }
            }
            match (trail_arn, bucket, logging) {
                (Some(t), Some(b), Some(true)) => (ready(t, b), None),
                (Some(t), Some(b), Some(false)) => (ready(t, b), Some(TrailStep::StartLogging)),
                (_, _, None) => (
                    TrailView::Failed(format!(
                        "trail {TRAIL_NAME} of stack {AUDIT_STACK} in {region} is gone: delete the stack (its key and bucket are retained; delete the bucket too if it is empty) so the operator creates it again"
                    )),
                    None,
                ),
                _ => (
                    TrailView::Failed(format!(
                        "stack {AUDIT_STACK} in {region} lacks the outputs {OUT_TRAIL_ARN} and {OUT_BUCKET}: it was not made by this operator; delete or rename it"
                    )),
                    None,
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(status: &str, hash: &str) -> StackInfo {
        StackInfo {
            name: AUDIT_STACK.into(),
            id: "arn:aws:cloudformation:us-east-1:123456789012:stack/openemr-audit/1".into(),
            status: status.into(),
            outputs: [
                (clinic_template::OUT_TEMPLATE_HASH, hash),
                (
                    OUT_TRAIL_ARN,
                    "arn:aws:cloudtrail:us-east-1:123456789012:trail/openemr-audit",
                ),
                (OUT_BUCKET, "123456789012-openemr-audit-logs"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..Default::default()
        }
    }

    fn ready() -> TrailView {
        TrailView::Ready {
            trail_arn: "arn:aws:cloudtrail:us-east-1:123456789012:trail/openemr-audit".into(),
            bucket: "123456789012-openemr-audit-logs".into(),
        }
    }

    #[test]
    fn the_trail_logs_management_events_and_clinic_bucket_objects_for_six_years() {
        let t: Value = serde_json::from_str(&render(DEFAULT_RETENTION_DAYS).body).unwrap();
        let trail = &t["Resources"][TRAIL]["Properties"];
        assert_eq!(trail["TrailName"], TRAIL_NAME);
        assert_eq!(trail["IsMultiRegionTrail"], true);
        assert_eq!(trail["EnableLogFileValidation"], true);
        assert_eq!(trail["IsLogging"], true);
        let selectors = trail["AdvancedEventSelectors"].as_array().unwrap();
        assert_eq!(selectors.len(), 2);
        assert_eq!(
            selectors[0]["FieldSelectors"],
            json!([{"Field": "eventCategory", "Equals": ["Management"]}])
        );
        let data = &selectors[1]["FieldSelectors"];
        assert_eq!(data[1]["Equals"], json!(["AWS::S3::Object"]));
        assert_eq!(
            data[2]["StartsWith"][0]["Fn::Sub"],
            "arn:${AWS::Partition}:s3:::oe-"
        );
        let rules = &t["Resources"][BUCKET]["Properties"]["LifecycleConfiguration"]["Rules"][0];
        assert_eq!(rules["ExpirationInDays"], 2192);
        assert_eq!(rules["NoncurrentVersionExpiration"]["NoncurrentDays"], 2192);
        assert_eq!(t["Resources"][BUCKET]["DeletionPolicy"], "Retain");
        assert_eq!(t["Resources"][KEY]["DeletionPolicy"], "Retain");
        // The retention is part of the template, so changing it updates the stack.
        assert_ne!(render(365).hash, render(DEFAULT_RETENTION_DAYS).hash);
        assert_eq!(render(365), render(365));
    }

    #[test]
    fn every_clinic_bucket_name_starts_with_the_selected_prefix() {
        use crate::controller::deployment::clinic::{ClinicNames, ClusterId};
        for (cluster, ns, name) in [("prod", "clinics", "north"), ("a", "b", "c")] {
            let names = ClinicNames::new(&ClusterId::parse(cluster).unwrap(), ns, name);
            assert!(
                names.bucket.starts_with(CLINIC_BUCKET_PREFIX),
                "{}",
                names.bucket
            );
        }
    }

    #[test]
    fn plan_creates_waits_updates_and_restarts_logging() {
        let r = render(DEFAULT_RETENTION_DAYS);
        let region = "us-east-1";
        let (view, step) = plan(None, None, None, &r, None, region);
        assert!(matches!(view, TrailView::Pending(_)));
        let Some(TrailStep::Create(req)) = step else {
            panic!("{step:?}")
        };
        assert_eq!(req.name, AUDIT_STACK);
        assert_eq!(req.token, format!("oe-audit-create-{}", &r.hash[..12]));
        assert!(!req.tags.contains_key("openemr.io/cluster"));

        let creating = stack("CREATE_IN_PROGRESS", "");
        let (view, step) = plan(Some(&creating), None, None, &r, None, region);
        assert!(matches!(view, TrailView::Pending(m) if m.contains("CREATE_IN_PROGRESS")));
        assert_eq!(step, None);

        let done = stack("CREATE_COMPLETE", &r.hash);
        assert_eq!(
            plan(Some(&done), None, Some(true), &r, None, region),
            (ready(), None)
        );
        assert_eq!(
            plan(Some(&done), None, Some(false), &r, None, region),
            (ready(), Some(TrailStep::StartLogging))
        );
        let (view, step) = plan(Some(&done), None, None, &r, None, region);
        assert!(matches!(view, TrailView::Failed(m) if m.contains("is gone")));
        assert_eq!(step, None);

        // An older template: updated, and the old trail still counts as ready meanwhile.
        let old = stack("UPDATE_COMPLETE", "0123456789abcdef");
        let (view, step) = plan(Some(&old), None, Some(true), &r, None, region);
        assert_eq!(view, ready());
        assert!(matches!(step, Some(TrailStep::Update(_))));
        // That update rolled back: not sent again; the old trail serves.
        let rolled = stack("UPDATE_ROLLBACK_COMPLETE", "0123456789abcdef");
        let sent = format!("oe-audit-update-{}", &r.hash[..12]);
        assert_eq!(
            plan(Some(&rolled), None, Some(true), &r, Some(&sent), region),
            (ready(), None)
        );
    }

    #[test]
    fn a_failed_creation_needs_a_person_and_says_why() {
        let r = render(DEFAULT_RETENTION_DAYS);
        let failure = StackFailure {
            logical_id: "AuditBucket".into(),
            resource_type: "AWS::S3::Bucket".into(),
            reason: "123456789012-openemr-audit-logs already exists".into(),
            retained: vec![],
        };
        let (view, step) = plan(
            Some(&stack("ROLLBACK_COMPLETE", "")),
            Some(&failure),
            None,
            &r,
            None,
            "us-east-1",
        );
        let TrailView::Failed(message) = view else {
            panic!("{view:?}")
        };
        assert!(
            message.contains(
                "AuditBucket (AWS::S3::Bucket): 123456789012-openemr-audit-logs already exists"
            ),
            "{message}"
        );
        assert_eq!(step, None);
    }

    #[test]
    fn logs_are_under_the_accounts_prefix() {
        assert_eq!(
            ready().logs().as_deref(),
            Some("s3://123456789012-openemr-audit-logs/AWSLogs/123456789012/")
        );
        assert_eq!(TrailView::Pending(String::new()).logs(), None);
    }
}
