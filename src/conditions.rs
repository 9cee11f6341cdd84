//! Conditions as Kubernetes API conventions want them: one per `type`, `lastTransitionTime`
//! moved only when `status` changes, `observedGeneration` on each. Pure functions, so the
//! controllers' status stays identical (and is not rewritten) while nothing changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::Condition;

/// What a controller concluded about one condition type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    pub fn truthy(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Verdict {
            type_,
            status: true,
            reason,
            message: message.into(),
        }
    }

    pub fn falsy(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Verdict {
            type_,
            status: false,
            reason,
            message: message.into(),
        }
    }
}

fn status_str(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// Merges `verdicts` into `current`: a condition whose status is unchanged keeps its
/// `lastTransitionTime`; types not named in `verdicts` are kept as they are. Result is
/// sorted by type so the list (and the status) is stable.
pub fn merge(
    current: &[Condition],
    verdicts: &[Verdict],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = current
        .iter()
        .filter(|c| !verdicts.iter().any(|v| v.type_ == c.type_))
        .cloned()
        .collect();
    for v in verdicts {
        let status = status_str(v.status);
        let previous = current.iter().find(|c| c.type_ == v.type_);
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Time(now),
        };
        out.push(Condition {
            type_: v.type_.to_string(),
            status: status.to_string(),
            reason: v.reason.to_string(),
            message: v.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn new_condition_gets_now() {
        let out = merge(
            &[],
            &[Verdict::truthy("Accepted", "Valid", "ok")],
            Some(3),
            t(100),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, "True");
        assert_eq!(out[0].observed_generation, Some(3));
        assert_eq!(out[0].last_transition_time, Time(t(100)));
    }

    #[test]
    fn unchanged_status_keeps_transition_time_but_takes_new_reason() {
        let first = merge(
            &[],
            &[Verdict::falsy("Accepted", "A", "a")],
            Some(1),
            t(100),
        );
        let second = merge(
            &first,
            &[Verdict::falsy("Accepted", "B", "b")],
            Some(2),
            t(200),
        );
        assert_eq!(second[0].last_transition_time, Time(t(100)));
        assert_eq!(second[0].reason, "B");
        assert_eq!(second[0].observed_generation, Some(2));
    }

    #[test]
    fn flipped_status_moves_transition_time() {
        let first = merge(
            &[],
            &[Verdict::falsy("Accepted", "A", "a")],
            Some(1),
            t(100),
        );
        let second = merge(
            &first,
            &[Verdict::truthy("Accepted", "Valid", "")],
            Some(1),
            t(200),
        );
        assert_eq!(second[0].last_transition_time, Time(t(200)));
    }

    #[test]
    fn same_inputs_give_identical_output() {
        let v = [
            Verdict::truthy("Ready", "R", "r"),
            Verdict::truthy("Accepted", "Valid", "ok"),
        ];
        let first = merge(&[], &v, Some(1), t(100));
        let second = merge(&first, &v, Some(1), t(500));
        assert_eq!(first, second);
        assert_eq!(first[0].type_, "Accepted");
    }

    #[test]
    fn other_types_are_kept() {
        let first = merge(&[], &[Verdict::truthy("Other", "X", "")], None, t(1));
        let second = merge(
            &first,
            &[Verdict::truthy("Accepted", "Valid", "")],
            None,
            t(2),
        );
        assert_eq!(second.len(), 2);
    }
}
