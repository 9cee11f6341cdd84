//! Where a clinic's AWS activity is recorded, decided purely from what was seen of the
//! account's shared trail ([`crate::controller::audit`]) and what the clinic's stack holds.
//!
//! A clinic made before the shared trail has a trail of its own in its stack. It keeps it
//! until the shared trail is ready and logging, so its logs have no gap, and then its stack
//! is updated without it (the log files it wrote stay in the clinic's bucket under
//! `AWSLogs/`). A new clinic's stack is made once the shared trail is ready, so its
//! activity is recorded from its first call; an existing clinic never waits for it.

use super::AuditView;
use crate::api::OpenEMRDeploymentStatus;
use crate::api::deployment::{AuditScope, AuditStatus};
use crate::conditions::Verdict;
use crate::controller::audit::template::TrailView;

/// The condition this module sets.
pub const AUDIT_READY: &str = "AuditReady";

/// What the plan does about audit.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditDecision {
    /// Render the clinic's own trail into its stack.
    pub clinic_trail: bool,
    /// The stack is not created yet: the shared trail is not ready.
    pub hold_creation: bool,
    pub status: AuditStatus,
    pub verdict: Verdict,
    /// The shared trail is not confirmed yet: the clinic waits for it to change (to drop
    /// its own trail, or to report it ready), though nothing of its own is under way.
    pub waits_for_shared_trail: bool,
}

/// `stack_exists`: the clinic's stack is there (in any state but deleted); `clinic_bucket`:
/// its bucket, when known; `previous`: the status before this pass.
pub fn decide(
    view: &AuditView,
    stack_exists: bool,
    clinic_bucket: Option<&str>,
    previous: &OpenEMRDeploymentStatus,
) -> AuditDecision {
    let status = |scope, trail_arn: Option<String>, logs: Option<String>| AuditStatus {
        scope,
        trail_arn,
        logs,
    };
    let waits_for_shared_trail = matches!(
        view,
        AuditView::Shared(TrailView::Pending(_) | TrailView::Failed(_))
    );
    let decision = |clinic_trail, hold_creation, status, verdict| AuditDecision {
        clinic_trail,
        hold_creation,
        status,
        verdict,
        waits_for_shared_trail,
    };
    match view {
        AuditView::Off => decision(
            false,
            false,
            status(AuditScope::Off, None, None),
            Verdict::falsy(
                AUDIT_READY,
                "AuditDisabled",
                "spec.audit.cloudTrail is false: the operator records none of this clinic's AWS activity",
            ),
        ),
        AuditView::Organization(arn) => decision(
            false,
            false,
            status(AuditScope::Organization, Some(arn.clone()), None),
            Verdict::truthy(
                AUDIT_READY,
                "OrganizationTrail",
                format!("the organisation's trail {arn} records this clinic's AWS activity"),
            ),
        ),
        AuditView::Shared(ready @ TrailView::Ready { trail_arn, .. }) => {
            let logs = ready.logs();
            let message = format!(
                "the account's shared trail {trail_arn} records this clinic's AWS activity and every object read and write in its bucket, into {}",
                logs.as_deref().unwrap_or_default()
            );
            decision(
                false,
                false,
                status(AuditScope::Shared, Some(trail_arn.clone()), logs),
                Verdict::truthy(AUDIT_READY, "SharedTrail", message),
            )
        }
        AuditView::Shared(TrailView::Pending(why) | TrailView::Failed(why)) => {
            let failed = matches!(view, AuditView::Shared(TrailView::Failed(_)));
            let reason = if failed {
                "SharedTrailFailed"
            } else {
                "SharedTrailPending"
            };
            // Made by an operator before the shared trail (no audit status then) or kept
            // since: the clinic's own trail records it meanwhile.
            let own_trail = stack_exists
                && previous
                    .audit
                    .as_ref()
                    .is_none_or(|a| a.scope == AuditScope::Clinic);
            if own_trail {
                let logs = clinic_bucket.map(|b| format!("s3://{b}/AWSLogs/"));
                return decision(
                    true,
                    false,
                    status(AuditScope::Clinic, None, logs),
                    Verdict::truthy(
                        AUDIT_READY,
                        "ClinicTrail",
                        format!(
                            "the clinic's own trail records its AWS activity until the account's shared trail is ready: {why}"
                        ),
                    ),
                );
            }
            let scope = if stack_exists {
                AuditScope::Shared
            } else {
                AuditScope::Pending
            };
            let waits = if stack_exists {
                String::new()
            } else {
                "; the clinic's stack is created once it is ready".to_string()
            };
            decision(
                false,
                !stack_exists,
                status(scope, None, None),
                Verdict::falsy(AUDIT_READY, reason, format!("{why}{waits}")),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> AuditView {
        AuditView::Shared(TrailView::Ready {
            trail_arn: "arn:aws:cloudtrail:us-east-1:123456789012:trail/openemr-audit".into(),
            bucket: "123456789012-openemr-audit-logs".into(),
        })
    }

    fn pending() -> AuditView {
        AuditView::Shared(TrailView::Pending(
            "stack openemr-audit is CREATE_IN_PROGRESS".into(),
        ))
    }

    fn previously(scope: Option<AuditScope>) -> OpenEMRDeploymentStatus {
        OpenEMRDeploymentStatus {
            audit: scope.map(|scope| AuditStatus {
                scope,
                trail_arn: None,
                logs: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_clinic_waits_for_the_shared_trail_and_never_gets_its_own() {
        let d = decide(&pending(), false, None, &previously(None));
        assert!(d.hold_creation && !d.clinic_trail && d.waits_for_shared_trail);
        assert_eq!(d.status.scope, AuditScope::Pending);
        assert_eq!(d.verdict.reason, "SharedTrailPending");
        assert!(d.verdict.message.contains("created once it is ready"));
        // Once created, it never adds a trail of its own while the shared one is down.
        let d = decide(
            &pending(),
            true,
            None,
            &previously(Some(AuditScope::Shared)),
        );
        assert!(!d.hold_creation && !d.clinic_trail);
        assert_eq!(d.status.scope, AuditScope::Shared);
        let d = decide(
            &pending(),
            true,
            None,
            &previously(Some(AuditScope::Pending)),
        );
        assert!(!d.clinic_trail);
    }

    #[test]
    fn an_older_clinic_keeps_its_trail_until_the_shared_one_is_ready() {
        for before in [None, Some(AuditScope::Clinic)] {
            let d = decide(&pending(), true, Some("oe-b"), &previously(before));
            assert!(d.clinic_trail && !d.hold_creation, "{before:?}");
            assert_eq!(d.status.scope, AuditScope::Clinic);
            assert_eq!(d.status.logs.as_deref(), Some("s3://oe-b/AWSLogs/"));
            assert!(d.verdict.status);
            let failed = AuditView::Shared(TrailView::Failed("x".into()));
            assert!(decide(&failed, true, None, &previously(before)).clinic_trail);
        }
        // Ready: the clinic's trail goes.
        let d = decide(
            &ready(),
            true,
            Some("oe-b"),
            &previously(Some(AuditScope::Clinic)),
        );
        assert!(!d.clinic_trail);
        assert_eq!(d.status.scope, AuditScope::Shared);
        assert_eq!(
            d.status.logs.as_deref(),
            Some("s3://123456789012-openemr-audit-logs/AWSLogs/123456789012/")
        );
        assert_eq!(d.verdict.reason, "SharedTrail");
    }

    #[test]
    fn an_organisation_trail_or_audit_off_means_no_trail_and_no_wait() {
        let org = AuditView::Organization("arn:aws:cloudtrail:us-east-1:111:trail/org".into());
        for (view, scope, truthy) in [
            (org, AuditScope::Organization, true),
            (AuditView::Off, AuditScope::Off, false),
        ] {
            for before in [None, Some(AuditScope::Clinic)] {
                let d = decide(&view, true, None, &previously(before));
                assert!(!d.clinic_trail && !d.hold_creation && !d.waits_for_shared_trail);
                assert_eq!(d.status.scope, scope);
                assert_eq!(d.verdict.status, truthy);
            }
            assert!(!decide(&view, false, None, &previously(None)).hold_creation);
        }
    }
}
