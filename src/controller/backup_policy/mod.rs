//! BackupPolicy controller.
//!
//! It judges what the API server cannot: that the schedules parse (numbers in range) and
//! fire at all (`0 3 31 2 *` never does), that the time zones exist in the tz database,
//! and that the clinic it covers exists (looked up in the shared clinic cache); it reports
//! `Accepted` with a reason naming the field. Accepted, it runs the schedule ([`runs`]):
//! one `OpenEMRBackup` per slot, named for the slot, made by the policy but not owned by
//! it; slots missed are counted and said in an Event. Its status follows its sets (the
//! newest success, failures since, sets kept, `LastBackupSucceeded`). Without AWS access
//! (validation-only mode) it shows the next slot and makes no set.
//!
//! It also makes again the records of sets its clinic's bucket holds without one
//! ([`rebuild`]). Copies and drills plug in here.

pub mod rebuild;
pub mod runs;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use super::{Context, Error, Plan, Reconcile, RefKind, Requeue, lookup, status_from, status_with};
use crate::api::{BackupPolicy, BackupPolicyStatus, OpenEMRBackup};
use crate::conditions::Verdict;
use crate::schedule::{Schedule, ScheduleError};
use runs::{Look, SetSeen};

/// The intent recorded before a scheduled set is made.
const CREATE_SET: &str = "CreateBackupSet";

#[derive(Debug, Clone)]
pub struct Observed {
    pub deployment_exists: bool,
    /// The sets that name this policy.
    pub sets: Vec<SetSeen>,
    /// Every set name in the namespace.
    pub names: BTreeSet<String>,
    /// When the policy was made, on the operator's clock.
    pub created: Timestamp,
    /// Whether sets can be taken (the operator reaches AWS): otherwise the schedule is
    /// shown and makes nothing.
    pub schedules: bool,
    /// How soon to look again while a set of the policy is under way.
    pub progress: Duration,
    /// The sets the clinic's bucket holds without a record, when it was read this look.
    pub unrecorded: Option<Result<Vec<rebuild::Unrecorded>, crate::aws::error::AwsError>>,
    /// The bucket is to be read for sets without a record, and the clinic does not report
    /// it yet (a clinic made again, still adopting it): looked at again soon.
    pub bucket_awaited: bool,
}

/// What a policy changes.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Makes the slot's set.
    CreateSet {
        name: String,
        body: serde_json::Value,
    },
    /// Says in an Event which slots passed without a set, and why.
    ReportMissed { message: String },
    /// Makes again the record of a set the bucket holds.
    RebuildSet {
        name: String,
        body: serde_json::Value,
    },
}

impl Reconcile for BackupPolicy {
    type Observed = Observed;
    type Change = Change;
    const CONTROLLER: &'static str = "backuppolicy";
    const REF_KIND: Option<RefKind> = Some(RefKind::Policy);

    async fn observe(&self, ctx: &Context) -> Result<Observed, Error> {
        let ns = self.namespace().unwrap_or_default();
        let name = self.name_any();
        let found = lookup(&ctx.caches.deployments, &ns, &self.spec.deployment_ref.name);
        let mut sets = Vec::new();
        let mut names = BTreeSet::new();
        for set in ctx.caches.backups.state() {
            let meta = set.meta();
            if meta.namespace.as_deref() != Some(ns.as_str()) {
                continue;
            }
            let set_name = meta.name.clone().unwrap_or_default();
            names.insert(set_name.clone());
            let Ok(set) = &set.0 else { continue };
            if set.spec.policy_ref.as_ref().map(|p| p.name.as_str()) != Some(name.as_str())
                || set.spec.deployment_ref != self.spec.deployment_ref
            {
                continue;
            }
            let status = set.status.clone().unwrap_or_default();
            sets.push(SetSeen {
                name: set_name,
                phase: status.phase.unwrap_or_default(),
                created: set
                    .creation_timestamp()
                    .map_or(Timestamp::UNIX_EPOCH, |t| crate::clock::seen_at(t.0)),
                completed: status.completion_time.map(|t| t.0),
                refused: crate::conditions::find(&status.conditions, "Accepted")
                    .is_some_and(|c| c.status == "False"),
                message: status.message,
            });
        }
        let mut unrecorded = None;
        let mut bucket_awaited = false;
        if let (Some(aws), Some(found)) = (&ctx.aws, &found)
            && let Ok(d) = &found.0
        {
            match d.status.as_ref().and_then(|s| s.bucket_name.clone()) {
                None => bucket_awaited = rebuild::pending(&self.uid().unwrap_or_default()),
                Some(bucket)
                    if rebuild::due(&self.uid().unwrap_or_default(), ctx.config.resync) =>
                {
                    let clients = crate::controller::deployment::clinic::clients(d, aws).await;
                    unrecorded = Some(rebuild::unrecorded(&clients.s3, &bucket, &names).await);
                }
                Some(_) => {}
            }
        }
        Ok(Observed {
            unrecorded,
            bucket_awaited,
            deployment_exists: found.is_some(),
            sets,
            names,
            created: self
                .creation_timestamp()
                .map_or_else(crate::clock::now, |t| crate::clock::seen_at(t.0)),
            schedules: ctx.aws.is_some(),
            progress: ctx
                .aws
                .as_ref()
                .map_or(Duration::from_secs(30), |aws| aws.progress_interval),
        })
    }

    fn references(&self) -> Vec<(RefKind, String)> {
        vec![(RefKind::Deployment, self.spec.deployment_ref.name.clone())]
    }

    fn plan(&self, observed: &Observed, now: Timestamp) -> Plan<BackupPolicyStatus, Change> {
        let accepted = self.validate(observed, now);
        let is_accepted = accepted.status;
        let status = status_with(self, std::slice::from_ref(&accepted), now);
        let spec = &self.spec;
        let schedule = match Schedule::parse(&spec.schedule, &spec.time_zone) {
            Ok(schedule) if is_accepted => schedule,
            _ => return Plan::after_validation(status, is_accepted),
        };
        let mut status = status;
        let mut verdicts = vec![accepted, self.not_yet_applied()];
        verdicts.extend(runs::summarize(&observed.sets, &mut status));
        let mut changes = Vec::new();
        let mut failure = None;
        if observed.schedules {
            let in_flight = self
                .status
                .as_ref()
                .and_then(|s| s.in_flight.as_ref())
                .filter(|i| i.action == CREATE_SET)
                .map(|i| i.token.as_str());
            let name = self.name_any();
            let look = Look {
                policy: &name,
                schedule: &schedule,
                created: observed.created,
                deadline_seconds: spec.starting_deadline_seconds,
                suspended: spec.suspend,
                sets: &observed.sets,
                names: &observed.names,
                in_flight,
            };
            let runs = runs::next(&look, &mut status, now);
            if let Some(new) = &runs.create {
                changes.push(Change::CreateSet {
                    name: new.name.clone(),
                    body: runs::set_body(
                        &self.namespace().unwrap_or_default(),
                        new,
                        &spec.deployment_ref.name,
                        &name,
                        spec.consistency,
                        spec.documents.include,
                    ),
                });
            }
            if let Some(message) = runs.missed {
                changes.push(Change::ReportMissed { message });
            }
            match &observed.unrecorded {
                Some(Ok(found)) => {
                    let ns = self.namespace().unwrap_or_default();
                    changes.extend(found.iter().filter_map(|u| {
                        let body = rebuild::record(&ns, &spec.deployment_ref.name, &name, u)?;
                        Some(Change::RebuildSet {
                            name: u.manifest.set.clone(),
                            body,
                        })
                    }));
                }
                Some(Err(e)) => {
                    failure = Some(super::AwsFailure {
                        action: "reading the clinic's bucket for sets without a record",
                        source: e.clone(),
                    });
                }
                None => {}
            }
        } else {
            status.next_schedule_time = (!spec.suspend)
                .then(|| schedule.next_after(crate::clock::to_utc(now)))
                .flatten()
                .map(|t| {
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(crate::clock::from_utc(t))
                });
        }
        let next_slot = status
            .next_schedule_time
            .as_ref()
            .and_then(|t| crate::clock::real_wait_until(t.0, now));
        // A set under way (or just made) is followed at the progress interval; the next
        // slot is never missed for it.
        let busy = runs::busy(&observed.sets)
            || observed.bucket_awaited
            || changes
                .iter()
                .any(|c| matches!(c, Change::CreateSet { .. }));
        let requeue = match next_slot {
            Some(wait) if !busy || wait < observed.progress => Requeue::Exactly(wait),
            _ if busy => Requeue::After(observed.progress),
            _ => Requeue::Resync,
        };
        let merged = status_from(self, status, &verdicts, now);
        Plan {
            status: merged,
            changes,
            requeue,
            failure,
        }
    }

    fn intent(change: &Change) -> (String, String) {
        match change {
            Change::CreateSet { name, .. } => (CREATE_SET.into(), name.clone()),
            Change::ReportMissed { .. } => ("ReportMissedSchedule".into(), String::new()),
            Change::RebuildSet { name, .. } => ("RebuildSet".into(), name.clone()),
        }
    }

    fn recorded(change: &Change) -> bool {
        matches!(change, Change::CreateSet { .. })
    }

    async fn act(&self, change: &Change, ctx: &Context) -> Result<(), Error> {
        let ns = self.namespace().unwrap_or_default();
        match change {
            Change::CreateSet { name, body } => {
                // Already there: made by an earlier look or another operator.
                super::backup::create_new::<OpenEMRBackup>(ctx, &ns, name, body).await
            }
            Change::RebuildSet { name, body } => {
                // Already there: made again by another look, or by another policy of the
                // clinic (an on-demand set).
                super::backup::create_new::<OpenEMRBackup>(ctx, &ns, name, body).await?;
                let event = Event {
                    type_: EventType::Normal,
                    reason: "SetRebuilt".into(),
                    note: Some(format!(
                        "set {name} is in the clinic's bucket without a record: its record is made again from its manifest"
                    )),
                    action: "Rebuild".into(),
                    secondary: None,
                };
                ctx.publish::<BackupPolicy>(&event, &self.object_ref(&()))
                    .await;
                Ok(())
            }
            Change::ReportMissed { message } => {
                let event = Event {
                    type_: EventType::Warning,
                    reason: "MissedSchedule".into(),
                    note: Some(message.clone()),
                    action: "Schedule".into(),
                    secondary: None,
                };
                ctx.publish::<BackupPolicy>(&event, &self.object_ref(&()))
                    .await;
                Ok(())
            }
        }
    }
}

/// A schedule that parses and fires at least once after `now`.
fn check_schedule(expr: &str, zone: &str, now: DateTime<Utc>) -> Result<(), ScheduleError> {
    let schedule = Schedule::parse(expr, zone)?;
    match schedule.next_after(now) {
        Some(_) => Ok(()),
        None => Err(ScheduleError::NeverFires(expr.to_string())),
    }
}

/// The condition saying which of the policy's settings this operator version does not
/// carry out yet: accepted, and never silently ignored.
const ALL_SETTINGS_APPLIED: &str = "AllSettingsApplied";

impl BackupPolicy {
    fn not_yet_applied(&self) -> Verdict {
        let mut missing = Vec::new();
        if self.spec.drill.is_some() {
            missing.push("spec.drill (no drills are run)");
        }
        if missing.is_empty() {
            return Verdict::truthy(
                ALL_SETTINGS_APPLIED,
                "Applied",
                "every setting of the policy is carried out",
            );
        }
        Verdict::falsy(
            ALL_SETTINGS_APPLIED,
            "NotYetSupported",
            format!(
                "not carried out by this operator version yet: {}",
                missing.join(", ")
            ),
        )
    }

    fn validate(&self, observed: &Observed, now: Timestamp) -> Verdict {
        let spec = &self.spec;
        let now = crate::clock::to_utc(now);
        if let Err(e) = check_schedule(&spec.schedule, &spec.time_zone, now) {
            return Verdict::falsy(
                "Accepted",
                e.reason(),
                format!("spec.schedule / spec.timeZone: {e}"),
            );
        }
        if let Some(drill) = &spec.drill
            && let Err(e) = check_schedule(&drill.schedule, &drill.time_zone, now)
        {
            return Verdict::falsy(
                "Accepted",
                e.reason(),
                format!("spec.drill.schedule / spec.drill.timeZone: {e}"),
            );
        }
        if !observed.deployment_exists {
            return Verdict::falsy(
                "Accepted",
                "DeploymentNotFound",
                format!(
                    "spec.deploymentRef: OpenEMRDeployment {:?} does not exist in this namespace",
                    spec.deployment_ref.name
                ),
            );
        }
        Verdict::truthy("Accepted", "Valid", "spec is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Condition;
    use crate::conditions;
    use crate::controller::Requeue;

    fn policy(schedule: &str, tz: &str) -> BackupPolicy {
        let spec = serde_json::from_value(serde_json::json!({
            "deploymentRef": {"name": "clinic-a"},
            "schedule": schedule,
            "timeZone": tz,
        }))
        .unwrap();
        BackupPolicy::new("nightly", spec)
    }

    fn observed(exists: bool) -> Observed {
        Observed {
            deployment_exists: exists,
            sets: Vec::new(),
            names: BTreeSet::new(),
            created: Timestamp::from_second(1_799_000_000).unwrap(),
            schedules: true,
            progress: Duration::from_secs(30),
            unrecorded: None,
            bucket_awaited: false,
        }
    }

    fn accepted(p: &BackupPolicy, exists: bool) -> Condition {
        let plan = p.plan(
            &observed(exists),
            Timestamp::from_second(1_800_000_000).unwrap(),
        );
        conditions::find(&plan.status.conditions, "Accepted")
            .unwrap()
            .clone()
    }

    #[test]
    fn valid_policy_is_accepted() {
        let c = accepted(&policy("30 2 * * *", "Europe/Berlin"), true);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Valid"));
    }

    #[test]
    fn unknown_time_zone_names_the_field() {
        let c = accepted(&policy("30 2 * * *", "Europe/Atlantis"), true);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "UnknownTimeZone")
        );
        assert!(c.message.contains("spec.timeZone"), "{}", c.message);
    }

    #[test]
    fn out_of_range_cron_names_the_field() {
        let c = accepted(&policy("0 24 * * *", "UTC"), true);
        assert_eq!(c.reason, "InvalidSchedule");
        assert!(c.message.contains("spec.schedule"));
    }

    #[test]
    fn bad_drill_schedule_names_the_drill_field() {
        let mut p = policy("@daily", "UTC");
        p.spec.drill = Some(
            serde_json::from_value(
                serde_json::json!({"schedule": "0 6 31 2 8", "timeZone": "UTC"}),
            )
            .unwrap(),
        );
        let c = accepted(&p, true);
        assert_eq!(c.reason, "InvalidSchedule");
        assert!(c.message.contains("spec.drill.schedule"), "{}", c.message);
    }

    #[test]
    fn a_schedule_that_never_fires_is_refused_until_the_spec_changes() {
        let p = policy("0 3 31 2 *", "Europe/Berlin");
        let c = accepted(&p, true);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ScheduleNeverFires")
        );
        assert!(
            c.message.contains("spec.schedule") && c.message.contains("0 3 31 2 *"),
            "{}",
            c.message
        );
        let plan = p.plan(
            &observed(true),
            Timestamp::from_second(1_800_000_000).unwrap(),
        );
        assert_eq!(plan.requeue, Requeue::OnChange);
        let mut drill = policy("@daily", "UTC");
        drill.spec.drill = Some(
            serde_json::from_value(
                serde_json::json!({"schedule": "0 6 30 2 *", "timeZone": "UTC"}),
            )
            .unwrap(),
        );
        let c = accepted(&drill, true);
        assert_eq!(c.reason, "ScheduleNeverFires");
        assert!(c.message.contains("spec.drill.schedule"), "{}", c.message);
    }

    #[test]
    fn a_valid_policy_looks_again_at_its_next_slot_and_names_its_clinic() {
        let p = policy("@daily", "UTC");
        assert_eq!(
            p.references(),
            [(RefKind::Deployment, "clinic-a".to_string())]
        );
        // Made 1_799_000_000 (2027-01-03T19:33:20Z), first looked at 2027-01-15T08:00:00Z:
        // 12 midnights passed, the latest 8 hours ago, beyond the default hour's deadline.
        let plan = p.plan(
            &observed(true),
            Timestamp::from_second(1_800_000_000).unwrap(),
        );
        assert_eq!(
            plan.requeue,
            Requeue::Exactly(Duration::from_secs(16 * 3600))
        );
        let [Change::ReportMissed { message }] = plan.changes.as_slice() else {
            panic!("{:?}", plan.changes)
        };
        assert!(message.starts_with("12 slot(s)"), "{message}");
        let status = &plan.status;
        assert_eq!(status.missed_runs, 12);
        assert_eq!(
            status.next_schedule_time.as_ref().unwrap().0.to_string(),
            "2027-01-16T00:00:00Z"
        );
        // Within the deadline, the slot's set is made, with the policy's settings.
        let plan = p.plan(
            &observed(true),
            Timestamp::from_second(1_800_000_000 - 8 * 3600 + 30).unwrap(),
        );
        let Change::CreateSet { name, body } = &plan.changes[0] else {
            panic!("{:?}", plan.changes)
        };
        assert_eq!(name, "nightly-20270115-0000");
        assert_eq!(body["spec"]["includeDocuments"], true);
        assert_eq!(
            plan.status.last_scheduled_backup.as_deref(),
            Some("nightly-20270115-0000")
        );
        let applied = conditions::find(&plan.status.conditions, ALL_SETTINGS_APPLIED).unwrap();
        assert_eq!(
            applied.status, "True",
            "a plain schedule with retention: all applied"
        );
        let mut copied = p.clone();
        copied.spec.drill =
            Some(serde_json::from_value(serde_json::json!({"schedule": "@monthly"})).unwrap());
        let plan = copied.plan(
            &observed(true),
            Timestamp::from_second(1_800_000_000 - 8 * 3600 + 30).unwrap(),
        );
        let partly = conditions::find(&plan.status.conditions, ALL_SETTINGS_APPLIED).unwrap();
        assert_eq!(
            (partly.status.as_str(), partly.reason.as_str()),
            ("False", "NotYetSupported")
        );
        assert!(partly.message.contains("spec.drill"), "{}", partly.message);
        // Without AWS, the next slot is shown and nothing is made.
        let mut blind = observed(true);
        blind.schedules = false;
        let plan = p.plan(&blind, Timestamp::from_second(1_800_000_000).unwrap());
        assert!(plan.changes.is_empty());
        assert_eq!(plan.status.missed_runs, 0);
        assert!(plan.status.next_schedule_time.is_some());
    }

    #[test]
    fn missing_deployment_is_refused() {
        let c = accepted(&policy("@daily", "UTC"), false);
        assert_eq!(c.reason, "DeploymentNotFound");
        assert!(c.message.contains("clinic-a"));
    }
}
