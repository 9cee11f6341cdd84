//! What a controller remembers about each object between reconciles, in memory only:
//! consecutive failures (for backoff and for when a failure is worth reporting) and the
//! status it wrote last while the cache has not caught up with that write.
//!
//! Nothing here is needed for correctness after a restart (progress lives in status and in
//! AWS); it is forgotten when the object is deleted, or missing from a fresh list of the
//! watch, so the maps never outgrow the objects that exist.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The status this process wrote, keyed to the versions before and after the write.
#[derive(Debug, Clone)]
struct Written {
    /// The resourceVersion the write replaced: while the cache still shows it, the cache
    /// is behind and this status is the truth.
    over: Option<String>,
    /// The resourceVersion the write produced: the precondition of the next write.
    produced: Option<String>,
    status: serde_json::Value,
}

#[derive(Debug, Default, Clone)]
struct ObjectState {
    failures: u32,
    written: Option<Written>,
}

impl ObjectState {
    fn is_empty(&self) -> bool {
        self.failures == 0 && self.written.is_none()
    }
}

/// The status to plan from and the resourceVersion to write over.
#[derive(Debug, Clone, PartialEq)]
pub struct Current<S> {
    pub status: S,
    pub resource_version: Option<String>,
}

/// Per-object state of one controller, keyed by uid.
#[derive(Default)]
pub struct ObjectStates(Mutex<HashMap<String, ObjectState>>);

impl ObjectStates {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, ObjectState>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The status as it really is: the one this process wrote while the cache (at
    /// `cached_version`) still holds the version that write replaced; else the cached one.
    pub fn current<S: DeserializeOwned>(
        &self,
        uid: &str,
        cached_version: Option<&str>,
        cached: impl FnOnce() -> S,
    ) -> Current<S> {
        let from_cache = |cached: S| Current {
            status: cached,
            resource_version: cached_version.map(str::to_string),
        };
        let written = self.with(|states| {
            let state = states.get_mut(uid)?;
            let written = state.written.as_ref()?;
            if written.over.as_deref() == cached_version {
                return Some(written.clone());
            }
            // The cache has moved past the write: it is the truth again.
            state.written = None;
            if state.is_empty() {
                states.remove(uid);
            }
            None
        });
        match written {
            Some(w) => match serde_json::from_value(w.status) {
                Ok(status) => Current {
                    status,
                    resource_version: w.produced,
                },
                Err(_) => from_cache(cached()),
            },
            None => from_cache(cached()),
        }
    }

    /// Records a status written over `over`, producing `produced`, unless the cache already
    /// shows it (`cached`, asked under the lock [`Self::cache_saw`] takes, so the watch
    /// event of the write is either seen here or clears the memo after it).
    pub fn wrote<S: Serialize>(
        &self,
        uid: &str,
        over: Option<String>,
        produced: Option<String>,
        status: &S,
        cached: impl FnOnce() -> bool,
    ) {
        let Ok(status) = serde_json::to_value(status) else {
            return;
        };
        self.with(|states| {
            if cached() {
                return;
            }
            states.entry(uid.to_string()).or_default().written = Some(Written {
                over,
                produced,
                status,
            });
        });
    }

    /// The cache now shows `version` of the object: a memo of a write that produced it
    /// is no longer needed.
    pub fn cache_saw(&self, uid: &str, version: Option<&str>) {
        self.with(|states| {
            if let Some(state) = states.get_mut(uid)
                && state
                    .written
                    .as_ref()
                    .is_some_and(|w| w.produced.as_deref() == version)
            {
                state.written = None;
                if state.is_empty() {
                    states.remove(uid);
                }
            }
        });
    }

    /// Counts one more consecutive failure and returns the count.
    pub fn failed(&self, uid: &str) -> u32 {
        self.with(|states| {
            let state = states.entry(uid.to_string()).or_default();
            state.failures = state.failures.saturating_add(1);
            state.failures
        })
    }

    /// Consecutive failures so far.
    pub fn failures(&self, uid: &str) -> u32 {
        self.with(|states| states.get(uid).map_or(0, |s| s.failures))
    }

    /// A reconcile succeeded: the failure count starts again.
    pub fn succeeded(&self, uid: &str) {
        self.with(|states| {
            if let Some(state) = states.get_mut(uid) {
                state.failures = 0;
                if state.is_empty() {
                    states.remove(uid);
                }
            }
        });
    }

    /// The object is gone.
    pub fn forget(&self, uid: &str) {
        self.with(|states| states.remove(uid));
    }

    /// Keeps only the objects in `live` (after a fresh list, which reports no deletions).
    pub fn retain(&self, live: &HashSet<String>) {
        self.with(|states| states.retain(|uid, _| live.contains(uid)));
    }

    /// Objects with state held.
    pub fn len(&self) -> usize {
        self.with(|states| states.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, Default)]
    struct S {
        phase: Option<String>,
    }

    fn s(phase: &str) -> S {
        S {
            phase: Some(phase.into()),
        }
    }

    #[test]
    fn a_stale_cache_is_judged_by_the_status_just_written() {
        let states = ObjectStates::default();
        states.wrote(
            "u",
            Some("5".into()),
            Some("6".into()),
            &s("written"),
            || false,
        );
        // The cache still shows version 5: what was written counts, over version 6.
        let current = states.current("u", Some("5"), S::default);
        assert_eq!(current.status, s("written"));
        assert_eq!(current.resource_version.as_deref(), Some("6"));
        // The cache moved on: it counts again, and the memo is gone.
        let current = states.current("u", Some("7"), || s("cached"));
        assert_eq!(current.status, s("cached"));
        assert_eq!(current.resource_version.as_deref(), Some("7"));
        assert!(states.is_empty());
    }

    #[test]
    fn the_memo_goes_once_the_cache_shows_the_write() {
        let states = ObjectStates::default();
        states.wrote("u", Some("5".into()), Some("6".into()), &s("x"), || false);
        states.cache_saw("u", Some("5"));
        assert_eq!(states.len(), 1);
        states.cache_saw("u", Some("6"));
        assert!(states.is_empty());
        // The watch event of the write came first: nothing to remember.
        states.wrote("u", Some("6".into()), Some("7".into()), &s("y"), || true);
        assert!(states.is_empty());
    }

    #[test]
    fn failures_count_until_success() {
        let states = ObjectStates::default();
        assert_eq!(states.failed("u"), 1);
        assert_eq!(states.failed("u"), 2);
        assert_eq!(states.failures("u"), 2);
        states.succeeded("u");
        assert_eq!(states.failures("u"), 0);
        assert!(states.is_empty());
    }

    #[test]
    fn deleted_and_unlisted_objects_are_forgotten() {
        let states = ObjectStates::default();
        for uid in ["a", "b", "c"] {
            states.failed(uid);
        }
        states.wrote("d", None, Some("1".into()), &s("x"), || false);
        states.forget("a");
        assert_eq!(states.len(), 3);
        states.retain(&HashSet::from(["b".to_string()]));
        assert_eq!(states.len(), 1);
        assert_eq!(states.failures("b"), 1);
    }
}
