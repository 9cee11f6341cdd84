//! The operator's Prometheus metrics, served at `/metrics`.
//!
//! Every name starts with `openemr_`. Counters are exact, so tests assert on them
//! (reconciles, status writes, Events, AWS calls) instead of on timings.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: String,
}

impl ControllerLabel {
    pub fn new(controller: &str) -> Self {
        ControllerLabel {
            controller: controller.to_string(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: String,
    /// `ok` or the error's stable reason.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsCallLabels {
    pub service: String,
    pub operation: String,
    /// `success`, `throttled`, `not_found`, `client_error`, `server_error` or `transport_error`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsServiceLabel {
    /// As in [`AwsCallLabels::service`].
    pub service: String,
}

/// An AWS account and region.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountRegionLabels {
    pub account: String,
    pub region: String,
}

/// Labels of a policy's backup gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub namespace: String,
    pub clinic: String,
    pub policy: String,
}

/// Labels of a clinic's set counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SetPhaseLabels {
    pub namespace: String,
    pub clinic: String,
    /// `Pending`, `Running`, `Completed`, `Failed`.
    pub phase: String,
}

/// Labels of a clinic's newest completed set's figures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClinicLabels {
    pub namespace: String,
    pub clinic: String,
}

/// Where the backup gauges are read from at each scrape: the operator's caches of policies
/// and sets (their status is the truth; nothing is counted twice after a restart).
pub trait BackupView: Send + Sync + 'static {
    fn policies(&self) -> Vec<crate::api::BackupPolicy>;
    fn sets(&self) -> Vec<crate::api::OpenEMRBackup>;
}

/// The backup gauges, computed from a [`BackupView`] once one is given.
#[derive(Default)]
pub struct BackupCollector {
    view: std::sync::OnceLock<Box<dyn BackupView>>,
}

impl std::fmt::Debug for BackupCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupCollector")
    }
}

impl BackupCollector {
    /// Reads the gauges from `view` from now on (the first view given stays).
    pub fn watch(&self, view: Box<dyn BackupView>) {
        let _ = self.view.set(view);
    }
}

/// One gauge family: its name, help, and a value per label set.
fn encode_gauges<L: EncodeLabelSet>(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(L, i64)],
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric;
    use prometheus_client::metrics::gauge::ConstGauge;
    if values.is_empty() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, value) in values {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn seconds(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    t.0.as_second()
}

impl prometheus_client::collector::Collector for BackupCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use kube::ResourceExt;
        let Some(view) = self.view.get() else {
            return Ok(());
        };
        let (mut last_success, mut next_run, mut missed, mut failures) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for p in view.policies() {
            let labels = PolicyLabels {
                namespace: p.namespace().unwrap_or_default(),
                clinic: p.spec.deployment_ref.name.clone(),
                policy: p.name_any(),
            };
            let status = p.status.clone().unwrap_or_default();
            if let Some(t) = &status.last_successful_time {
                last_success.push((labels.clone(), seconds(t)));
            }
            if let Some(t) = &status.next_schedule_time {
                next_run.push((labels.clone(), seconds(t)));
            }
            missed.push((labels.clone(), status.missed_runs));
            failures.push((labels, i64::from(status.consecutive_failures)));
        }
        let mut phases: std::collections::BTreeMap<(String, String, String), i64> =
            Default::default();
        let mut newest: std::collections::BTreeMap<
            (String, String),
            crate::api::OpenEMRBackupStatus,
        > = Default::default();
        for set in view.sets() {
            let (ns, clinic) = (
                set.namespace().unwrap_or_default(),
                set.spec.deployment_ref.name.clone(),
            );
            let status = set.status.clone().unwrap_or_default();
            let phase = format!("{:?}", status.phase.unwrap_or_default());
            *phases
                .entry((ns.clone(), clinic.clone(), phase))
                .or_default() += 1;
            if status.phase == Some(crate::api::backup::BackupPhase::Completed)
                && set
                    .annotations()
                    .get(crate::api::backup::REBUILT_FROM_ANNOTATION)
                    .is_none()
            {
                let key = (ns, clinic);
                let newer = newest.get(&key).is_none_or(|n| {
                    n.completion_time.as_ref().map(|t| t.0)
                        < status.completion_time.as_ref().map(|t| t.0)
                });
                if newer {
                    newest.insert(key, status);
                }
            }
        }
        let phases: Vec<(SetPhaseLabels, i64)> = phases
            .into_iter()
            .map(|((namespace, clinic, phase), n)| {
                (
                    SetPhaseLabels {
                        namespace,
                        clinic,
                        phase,
                    },
                    n,
                )
            })
            .collect();
        let (mut duration, mut bytes, mut files, mut down) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((namespace, clinic), s) in newest {
            let labels = ClinicLabels { namespace, clinic };
            if let (Some(start), Some(end)) = (&s.start_time, &s.completion_time) {
                duration.push((labels.clone(), seconds(end) - seconds(start)));
            }
            if let Some(d) = &s.documents {
                bytes.push((labels.clone(), d.bytes_uploaded.unwrap_or_default()));
                files.push((labels.clone(), d.files_uploaded.unwrap_or_default()));
            }
            if let Some(q) = s.quiesce.as_ref().and_then(|q| q.down_seconds) {
                down.push((labels, q));
            }
        }
        let e = &mut encoder;
        encode_gauges(
            e,
            "openemr_backup_last_success_timestamp_seconds",
            "When the policy's newest completed set completed (Unix time): alert when it is too old",
            &last_success,
        )?;
        encode_gauges(
            e,
            "openemr_backup_next_run_timestamp_seconds",
            "When the policy's schedule next makes a set (Unix time; absent while suspended): a backup is late when now is past it by more than a set takes",
            &next_run,
        )?;
        encode_gauges(
            e,
            "openemr_backup_missed_runs",
            "Slots of the policy's schedule that passed without a set since the policy was made",
            &missed,
        )?;
        encode_gauges(
            e,
            "openemr_backup_consecutive_failures",
            "Failed sets of the policy since its newest completed one",
            &failures,
        )?;
        encode_gauges(
            e,
            "openemr_backup_sets",
            "Backup set records of a clinic, by phase",
            &phases,
        )?;
        encode_gauges(
            e,
            "openemr_backup_last_duration_seconds",
            "How long the clinic's newest completed set took, start to completion",
            &duration,
        )?;
        encode_gauges(
            e,
            "openemr_backup_last_documents_uploaded_bytes",
            "Bytes the clinic's newest completed set sent (the rest were unchanged)",
            &bytes,
        )?;
        encode_gauges(
            e,
            "openemr_backup_last_documents_uploaded_files",
            "Files the clinic's newest completed set sent",
            &files,
        )?;
        encode_gauges(
            e,
            "openemr_backup_last_quiesce_seconds",
            "How long the clinic was down for its newest completed Quiesced set",
            &down,
        )?;
        Ok(())
    }
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    pub reconciliations: Family<ReconcileLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabel, Histogram>,
    pub status_writes: Family<ControllerLabel, Counter>,
    pub events: Family<ControllerLabel, Counter>,
    pub tracked_objects: Family<ControllerLabel, Gauge>,
    pub watched_objects: Family<ControllerLabel, Gauge>,
    pub aws_api_calls: Family<AwsCallLabels, Counter>,
    pub aws_api_attempts: Family<AwsCallLabels, Counter>,
    /// Seconds AWS calls waited for a token of the request budget, in total.
    pub aws_budget_wait_seconds: Family<AwsServiceLabel, Counter<f64, AtomicU64>>,
    /// AWS calls that had to wait for a token.
    pub aws_budget_waits: Family<AwsServiceLabel, Counter>,
    /// Writes to the clinics' web-tier children (applies, creates, deletions), by kind.
    pub child_writes: Family<ChildKindLabel, Counter>,
    /// How long each step of a multi-step object took, by step and outcome.
    pub step_duration: Family<StepLabels, Histogram>,
    pub ready: Gauge,
    /// Manual DB snapshots per account and region, as the snapshot inventory last listed
    /// them, and the quota the operator holds sets to.
    pub manual_snapshots: Family<AccountRegionLabels, Gauge>,
    pub manual_snapshot_quota: Gauge,
    /// The backup gauges, read from the caches at each scrape.
    pub backups: std::sync::Arc<BackupCollector>,
}

/// One step of a multi-step object (a restore's `CopySnapshot`), as it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub controller: String,
    pub step: String,
    /// `Succeeded`, `Skipped` or `Failed`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChildKindLabel {
    /// `Deployment`, `Secret`, …
    pub kind: String,
}

/// Reconcile duration buckets: 10 ms to about 11 minutes (AWS work is slow).
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.01, 2.0, 17)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciliations = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "openemr_reconciliations",
            "Reconciles run, by controller and result (ok or the error reason)",
            reconciliations.clone(),
        );
        let reconcile_duration = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(duration_buckets())
        });
        registry.register(
            "openemr_reconcile_duration_seconds",
            "Time spent in one reconcile",
            reconcile_duration.clone(),
        );
        let status_writes = Family::<ControllerLabel, Counter>::default();
        registry.register(
            "openemr_status_writes",
            "Status subresource writes (made only when the status changed)",
            status_writes.clone(),
        );
        let events = Family::<ControllerLabel, Counter>::default();
        registry.register(
            "openemr_events",
            "Kubernetes Events published (condition transitions, unreadable objects)",
            events.clone(),
        );
        let tracked_objects = Family::<ControllerLabel, Gauge>::default();
        registry.register(
            "openemr_tracked_objects",
            "Objects a controller holds per-object state for (failing, or written ahead of its cache)",
            tracked_objects.clone(),
        );
        let watched_objects = Family::<ControllerLabel, Gauge>::default();
        registry.register(
            "openemr_watched_objects",
            "Objects a controller's watch knows",
            watched_objects.clone(),
        );
        let aws_api_calls = Family::<AwsCallLabels, Counter>::default();
        registry.register(
            "openemr_aws_api_calls",
            "AWS API operations, by service, operation and final outcome (retries inside one operation count once)",
            aws_api_calls.clone(),
        );
        let aws_api_attempts = Family::<AwsCallLabels, Counter>::default();
        registry.register(
            "openemr_aws_api_attempts",
            "AWS API attempts, retries included (each spends rate limit), by service, operation and outcome",
            aws_api_attempts.clone(),
        );
        let aws_budget_wait_seconds = Family::<AwsServiceLabel, Counter<f64, AtomicU64>>::default();
        registry.register(
            "openemr_aws_budget_wait_seconds",
            "Time AWS calls waited for the request budget (token bucket per account, region and service), by service",
            aws_budget_wait_seconds.clone(),
        );
        let aws_budget_waits = Family::<AwsServiceLabel, Counter>::default();
        registry.register(
            "openemr_aws_budget_waits",
            "AWS calls that had to wait for the request budget, by service",
            aws_budget_waits.clone(),
        );
        let child_writes = Family::<ChildKindLabel, Counter>::default();
        registry.register(
            "openemr_child_writes",
            "Writes to the clinics' web-tier children (server-side applies, creates, deletions), by kind",
            child_writes.clone(),
        );
        let step_duration = Family::<StepLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(duration_buckets())
        });
        registry.register(
            "openemr_step_duration_seconds",
            "Time from a step's start to its end (a restore's steps), by controller, step and outcome",
            step_duration.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "openemr_operator_ready",
            "1 once the CRDs are established and the controllers run",
            ready.clone(),
        );
        let manual_snapshots = Family::<AccountRegionLabels, Gauge>::default();
        registry.register(
            "openemr_rds_manual_snapshots",
            "Manual DB snapshots in an account and region (every tool's: RDS's quota counts them all), as last listed",
            manual_snapshots.clone(),
        );
        let manual_snapshot_quota = Gauge::default();
        registry.register(
            "openemr_rds_manual_snapshot_quota",
            "The manual snapshots per account and region a set may bring the count to (--manual-snapshot-quota)",
            manual_snapshot_quota.clone(),
        );
        let backups = std::sync::Arc::new(BackupCollector::default());
        registry.register_collector(Box::new(backups.clone()));
        Metrics {
            manual_snapshots,
            manual_snapshot_quota,
            backups,
            registry,
            reconciliations,
            reconcile_duration,
            status_writes,
            events,
            tracked_objects,
            watched_objects,
            aws_api_calls,
            aws_api_attempts,
            aws_budget_wait_seconds,
            aws_budget_waits,
            child_writes,
            step_duration,
            ready,
        }
    }

    pub fn observe_reconcile(&self, controller: &str, took: Duration, error_reason: Option<&str>) {
        self.reconciliations
            .get_or_create(&ReconcileLabels {
                controller: controller.to_string(),
                result: error_reason.unwrap_or("ok").to_string(),
            })
            .inc();
        self.reconcile_duration
            .get_or_create(&ControllerLabel::new(controller))
            .observe(took.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_under_one_prefix() {
        let m = Metrics::new();
        m.observe_reconcile("backuppolicy", Duration::from_millis(3), None);
        for line in m.encode().lines() {
            let name = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
                .unwrap_or(line);
            if name.starts_with("# EOF") || name.is_empty() {
                continue;
            }
            assert!(name.starts_with("openemr_"), "{line}");
        }
    }

    #[test]
    fn duration_buckets_reach_minutes() {
        let buckets: Vec<f64> = duration_buckets().collect();
        assert_eq!(buckets[0], 0.01);
        assert!(*buckets.last().unwrap() >= 600.0, "{buckets:?}");
    }

    #[test]
    fn counters_appear_in_the_exposition() {
        let m = Metrics::new();
        m.observe_reconcile("backuppolicy", Duration::from_millis(3), None);
        m.observe_reconcile(
            "backuppolicy",
            Duration::from_millis(3),
            Some("ObserveFailed"),
        );
        let text = m.encode();
        assert!(
            text.contains(
                r#"openemr_reconciliations_total{controller="backuppolicy",result="ok"} 1"#
            )
        );
        assert!(text.contains(
            r#"openemr_reconciliations_total{controller="backuppolicy",result="ObserveFailed"} 1"#
        ));
    }
}
