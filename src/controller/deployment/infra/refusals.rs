//! RDS's refusals of a clinic's database changes (a class not offered in the zone, a
//! storage step RDS will not take, a combination it rejects), remembered per clinic and
//! generation: a refused change is not sent again until the spec changes, and it never
//! holds back the clinic's other changes (drift corrections, tags, the web tier).
//!
//! Kept in memory: a restarted operator sends a refused change once more, is refused once
//! more, and remembers it again. The growth of a `storage-full` instance is the one change
//! tried again within a generation (after [`STORAGE_FULL_RETRY`]): RDS refuses a second
//! storage change for about six hours after the last, and a full instance does not serve. Transient failures (throttling, 5xx) are not refusals;
//! they fail the pass and are retried with backoff as before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long after RDS refused the growth of a full instance it is tried again.
pub const STORAGE_FULL_RETRY: Duration = Duration::from_secs(3600);

/// What RDS refused for one generation of a clinic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub generation: i64,
    /// The `spec.database` fields of the refused requests.
    pub fields: Vec<String>,
    /// What RDS said, last.
    pub message: String,
    /// How long ago the last refusal was, when read.
    pub age: Duration,
}

/// The refusals of every clinic, by uid.
#[derive(Debug, Default)]
pub struct Refusals {
    by_clinic: Mutex<HashMap<String, (Instant, Refusal)>>,
}

impl Refusals {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Refusal)>> {
        // Every change is one insert or remove: the map stays consistent after a panic.
        self.by_clinic.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// RDS refused a request changing `fields` of the clinic `uid` at `generation`.
    pub fn record(&self, uid: &str, generation: i64, fields: &[&str], message: &str) {
        let mut all = self.lock();
        let fresh = || Refusal {
            generation,
            fields: Vec::new(),
            message: String::new(),
            age: Duration::ZERO,
        };
        let (at, entry) = all
            .entry(uid.to_string())
            .and_modify(|(_, r)| {
                if r.generation != generation {
                    *r = fresh();
                }
            })
            .or_insert_with(|| (Instant::now(), fresh()));
        *at = Instant::now();
        for field in fields {
            if !entry.fields.iter().any(|f| f == field) {
                entry.fields.push(field.to_string());
            }
        }
        entry.message = message.to_string();
    }

    /// The refusals of the clinic `uid` at `generation`; those of earlier generations are
    /// forgotten (the spec changed: everything may be tried again).
    pub fn of(&self, uid: &str, generation: i64) -> Option<Refusal> {
        let mut all = self.lock();
        match all.get(uid) {
            Some((at, r)) if r.generation == generation => Some(Refusal {
                age: at.elapsed(),
                ..r.clone()
            }),
            Some(_) => {
                all.remove(uid);
                None
            }
            None => None,
        }
    }

    /// Forgets a clinic (deleted).
    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_gather_per_generation_and_a_new_generation_forgets_them() {
        let r = Refusals::default();
        assert_eq!(r.of("u", 3), None);
        r.record("u", 3, &["instanceClass"], "no such class");
        r.record("u", 3, &["instanceClass", "multiAZ"], "not in this zone");
        let got = r.of("u", 3).unwrap();
        assert_eq!(got.fields, ["instanceClass", "multiAZ"]);
        assert!(got.age < Duration::from_secs(60));
        assert_eq!(got.message, "not in this zone");
        assert_eq!(r.of("other", 3), None);
        assert_eq!(r.of("u", 4), None, "a new generation tries again");
        assert_eq!(r.of("u", 3), None, "and the old one is gone");
        r.record("u", 5, &["allocatedStorageGiB"], "x");
        r.forget("u");
        assert_eq!(r.of("u", 5), None);
    }
}
