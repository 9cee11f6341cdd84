//! The shared audit trail of each AWS account: made and kept by the operator, never by a
//! clinic, never deleted with one.
//!
//! A clinic with `spec.audit.cloudTrail` asks [`AuditTrails::view`] where its activity is
//! recorded. The first clinic of an account to ask makes the account's trail stack
//! ([`template`]) in the audit region; the others share what it found. The account's state
//! is read again at most every refresh interval (`--audit-refresh-interval`, default
//! [`REFRESH`]) once the trail is ready (every progress interval while it is being made), single-flight per account, so a thousand clinics cost a
//! `DescribeStacks` and a `GetTrailStatus` per account and refresh. A trail someone stopped
//! is started again, and the clinic that found it says so in an Event.
//!
//! With `--organization-trail`, the organisation's trail records every account and the
//! operator makes none.

pub mod template;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::aws::AwsClients;
use crate::aws::cloudformation::{StackState, Stacks};
use crate::aws::cloudtrail::Trails;
use crate::aws::error::AwsError;
use template::{AUDIT_STACK, TRAIL_NAME, TrailStep, TrailView};

/// How often a ready trail is read again by default: a stopped or deleted trail is seen
/// within this.
pub const REFRESH: Duration = Duration::from_secs(10 * 60);

/// Who records the clinics' AWS activity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditMode {
    /// The operator's trail per account, made in `region`, keeping logs `retention_days`.
    Shared { region: String, retention_days: u32 },
    /// The organisation's trail (its ARN): the operator makes none.
    Organization { trail_arn: String },
}

/// The shared trails of every account the operator has seen a clinic in.
pub struct AuditTrails {
    mode: AuditMode,
    progress_interval: Duration,
    refresh: Duration,
    accounts: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Account>>>>,
}

impl std::fmt::Debug for AuditTrails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditTrails")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Account {
    read_at: Option<Instant>,
    view: Option<TrailView>,
    /// The token of the last update sent, to recognise its rollback.
    sent_update: Option<String>,
}

/// What a clinic learns of its account's trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub view: TrailView,
    /// What this look corrected, for an Event on the clinic that looked.
    pub corrected: Option<String>,
}

/// The session name under which the operator works on an account's shared trail with a
/// clinic's role: one session per role, shared by its clinics, and named for what it does
/// in the account's own CloudTrail.
pub const SESSION_NAME: &str = "openemr-operator-audit";

impl AuditTrails {
    /// Trails read every `refresh` once ready, every `progress_interval` before.
    pub fn new(mode: AuditMode, progress_interval: Duration, refresh: Duration) -> AuditTrails {
        AuditTrails {
            mode,
            progress_interval,
            refresh,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    pub fn mode(&self) -> &AuditMode {
        &self.mode
    }

    /// The shared trail of the account of `clients` (which must be clients of the audit
    /// region of [`AuditMode::Shared`]): read (and made, updated or restarted as it needs)
    /// when the last look is older than its refresh (the refresh interval once ready, the
    /// progress interval before), else as last seen. A failed call is a view too, shared
    /// like any other until the next look: a thousand clinics of an account whose role may
    /// not read CloudFormation cost one refused call per interval, not one each.
    pub async fn view(&self, clients: &AwsClients) -> Seen {
        let AuditMode::Shared {
            region,
            retention_days,
        } = &self.mode
        else {
            return Seen {
                view: TrailView::Failed(
                    "the operator makes no trail: --organization-trail is set".into(),
                ),
                corrected: None,
            };
        };
        let account = {
            let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
            accounts.entry(clients.account.clone()).or_default().clone()
        };
        // Held across the look: the other clinics of the account wait for it and share it.
        let mut account = account.lock().await;
        let fresh_for = match &account.view {
            Some(TrailView::Ready { .. }) => self.refresh,
            _ => self.progress_interval,
        };
        if let (Some(at), Some(view)) = (account.read_at, &account.view)
            && at.elapsed() < fresh_for
        {
            return Seen {
                view: view.clone(),
                corrected: None,
            };
        }
        let seen = match look(clients, &mut account, region, *retention_days).await {
            Ok(seen) => seen,
            Err(e) => {
                let message = format!(
                    "reading or making the account's shared audit trail in {region} failed: {e}"
                );
                Seen {
                    view: if e.is_transient() {
                        TrailView::Pending(message)
                    } else {
                        TrailView::Failed(message)
                    },
                    corrected: None,
                }
            }
        };
        if let TrailView::Failed(message) | TrailView::Pending(message) = &seen.view {
            warn!(account = %clients.account, "{message}");
        }
        account.read_at = Some(Instant::now());
        account.view = Some(seen.view.clone());
        seen
    }
}

/// One look at an account's trail: observe, plan, act.
async fn look(
    clients: &AwsClients,
    account: &mut Account,
    region: &str,
    retention_days: u32,
) -> Result<Seen, AwsError> {
    let rendered = template::render(retention_days);
    let stack = clients.describe_stack(AUDIT_STACK).await?;
    let failure = match &stack {
        Some(s) if matches!(s.state(), StackState::RolledBack | StackState::Failed) => {
            clients.first_failure(AUDIT_STACK).await?
        }
        _ => None,
    };
    let logging = match &stack {
        Some(s) if s.state() == StackState::Stable => clients.trail_logging(TRAIL_NAME).await?,
        _ => None,
    };
    let (view, step) = template::plan(
        stack.as_ref(),
        failure.as_ref(),
        logging,
        &rendered,
        account.sent_update.as_deref(),
        region,
    );
    let mut corrected = None;
    match step {
        None => {}
        Some(TrailStep::Create(request)) => match clients.create_stack(&request).await {
            // A repeat (another operator sharing the account made it first).
            Err(e) if e.already_exists() => {}
            other => other?,
        },
        Some(TrailStep::Update(request)) => {
            clients.update_stack(&request).await?;
            account.sent_update = Some(request.token);
        }
        Some(TrailStep::StartLogging) => {
            clients.start_logging(TRAIL_NAME).await?;
            let note = format!(
                "trail {TRAIL_NAME} (stack {AUDIT_STACK} in {region}) had been stopped; logging started again"
            );
            warn!(account = %clients.account, "{note}");
            corrected = Some(note);
        }
    }
    Ok(Seen { view, corrected })
}
