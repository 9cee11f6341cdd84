//! The operator's Prometheus metrics, served at `/metrics`.
//!
//! Counters are exact, so tests assert on them (reconciles, status writes, AWS calls)
//! instead of on timings.

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

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    pub reconciliations: Family<ReconcileLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabel, Histogram>,
    pub status_writes: Family<ControllerLabel, Counter>,
    pub aws_api_calls: Family<AwsCallLabels, Counter>,
    pub ready: Gauge,
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
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
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
        let aws_api_calls = Family::<AwsCallLabels, Counter>::default();
        registry.register(
            "aws_api_calls",
            "AWS API calls made, by service, operation and outcome",
            aws_api_calls.clone(),
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
            aws_api_calls,
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
