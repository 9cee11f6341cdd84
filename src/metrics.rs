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
    pub ready: Gauge,
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
        let ready = Gauge::default();
        registry.register(
            "openemr_operator_ready",
            "1 once the CRDs are established and the controllers run",
            ready.clone(),
        );
        Metrics {
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
