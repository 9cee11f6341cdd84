//! What makes an object be reconciled: a change made by people or by the world, never the
//! operator's own status write.
//!
//! - [`own_fingerprint`]: generation (spec), labels, annotations, finalizers, deletion. A
//!   status-only update leaves it unchanged, so it triggers nothing and cannot bypass the
//!   backoff of a failing object.
//! - [`referred_fingerprint`]: what objects that *name* this one care about (it exists, its
//!   generation, its owners, its deletion). A change is published on the [`TriggerHub`];
//!   each controller maps it to the objects naming it through its [`ReferenceIndex`],
//!   instead of scanning its whole cache.
//! - [`jittered`]: requeue delays spread per object, so thousands of clinics created
//!   together do not come due together.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::mpsc;

/// The kinds of object this operator's objects name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefKind {
    Deployment,
    Policy,
    Backup,
    Secret,
    /// A clinic's own AWS resources, as the batched inventory saw them change.
    Infrastructure,
    /// A clinic's web-tier children or holds, as their watches saw them change.
    Workload,
    /// A policy's sets completing: whoever waits on the policy's newest set (a restore
    /// from it) hears of each. The policy's own sets do not: retention wakes only those
    /// whose verdict a completion changed ([`RefKind::Retention`]).
    Completions,
    /// One set, named by itself: retention's verdict on it, as its status records it, is
    /// out of date (found so by another set of its policy, or by a restore that stopped
    /// using it).
    Retention,
}

/// One named object: kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub kind: RefKind,
    pub namespace: String,
    pub name: String,
}

impl Target {
    pub fn new(kind: RefKind, namespace: &str, name: &str) -> Self {
        Target {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

fn digest(value: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// What an object's own controller reacts to.
pub fn own_fingerprint(meta: &ObjectMeta) -> u64 {
    digest((
        meta.generation,
        &meta.labels,
        &meta.annotations,
        &meta.finalizers,
        meta.deletion_timestamp.as_ref().map(|t| t.0.as_second()),
    ))
}

/// What the objects naming this one react to.
pub fn referred_fingerprint(meta: &ObjectMeta) -> u64 {
    let owners: Vec<&str> = meta
        .owner_references
        .iter()
        .flatten()
        .map(|o| o.uid.as_str())
        .collect();
    digest((
        &meta.uid,
        meta.generation,
        owners,
        meta.deletion_timestamp.is_some(),
    ))
}

/// `base` lengthened by up to `spread` of itself, by an amount fixed per object (`key`):
/// never shorter than `base`, and objects created together come due apart.
pub fn jittered(base: Duration, key: &str, spread: f64) -> Duration {
    let fraction = (digest(key) % 10_000) as f64 / 10_000.0;
    base.mul_f64(1.0 + spread.clamp(0.0, 1.0) * fraction)
}

/// Which objects (of one kind, `R` being their reference type) name which targets.
pub struct ReferenceIndex<R> {
    inner: Mutex<IndexMaps<R>>,
}

struct IndexMaps<R> {
    by_target: HashMap<Target, HashSet<R>>,
    by_referrer: HashMap<R, Vec<Target>>,
}

impl<R> Default for ReferenceIndex<R> {
    fn default() -> Self {
        ReferenceIndex {
            inner: Mutex::new(IndexMaps {
                by_target: HashMap::new(),
                by_referrer: HashMap::new(),
            }),
        }
    }
}

impl<R: Clone + Eq + Hash> ReferenceIndex<R> {
    fn with<T>(&self, f: impl FnOnce(&mut IndexMaps<R>) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// `referrer` now names exactly `targets`.
    pub fn set(&self, referrer: R, targets: Vec<Target>) {
        self.with(|maps| {
            maps.unlink(&referrer);
            if targets.is_empty() {
                return;
            }
            for t in &targets {
                maps.by_target
                    .entry(t.clone())
                    .or_default()
                    .insert(referrer.clone());
            }
            maps.by_referrer.insert(referrer, targets);
        });
    }

    /// `referrer` is gone.
    pub fn remove(&self, referrer: &R) {
        self.with(|maps| maps.unlink(referrer));
    }

    /// Keeps only the referrers in `live`.
    pub fn retain(&self, live: &HashSet<R>) {
        self.with(|maps| {
            let gone: Vec<R> = maps
                .by_referrer
                .keys()
                .filter(|r| !live.contains(*r))
                .cloned()
                .collect();
            for r in gone {
                maps.unlink(&r);
            }
        });
    }

    /// The objects that name `target`.
    pub fn referrers(&self, target: &Target) -> Vec<R> {
        self.with(|maps| {
            maps.by_target
                .get(target)
                .map(|set| set.iter().cloned().collect())
                .unwrap_or_default()
        })
    }

    /// Referrers indexed (for tests and the state-size metric).
    pub fn len(&self) -> usize {
        self.with(|maps| maps.by_referrer.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<R: Clone + Eq + Hash> IndexMaps<R> {
    fn unlink(&mut self, referrer: &R) {
        for t in self.by_referrer.remove(referrer).unwrap_or_default() {
            if let Some(set) = self.by_target.get_mut(&t) {
                set.remove(referrer);
                if set.is_empty() {
                    self.by_target.remove(&t);
                }
            }
        }
    }
}

/// Changes of named objects, fanned out to every controller that subscribed.
#[derive(Default)]
pub struct TriggerHub {
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Target>>>,
}

impl TriggerHub {
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Target> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }

    pub fn publish(&self, target: Target) {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|tx| tx.send(target.clone()).is_ok());
    }
}

/// The last fingerprints seen per object (by uid) of one watch, to tell changes apart from
/// echoes. Entries go with the object.
#[derive(Default)]
pub struct Fingerprints(Mutex<HashMap<String, Seen>>);

#[derive(Clone)]
struct Seen {
    own: u64,
    referred: u64,
    announced: u64,
    namespace: String,
    name: String,
}

/// What changed in one watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Changed {
    pub own: bool,
    pub referred: bool,
    /// What the object announces in its status changed (never for a new object: others
    /// judge it when they first look).
    pub announced: bool,
}

impl Fingerprints {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the object's fingerprints (and `announced`, the digest of what its status
    /// tells others); says which changed (a new object: its own and referred ones).
    pub fn observe(&self, meta: &ObjectMeta, announced: u64) -> Changed {
        let seen = Seen {
            own: own_fingerprint(meta),
            referred: referred_fingerprint(meta),
            announced,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        };
        let changed = |before: &Seen| Changed {
            own: before.own != seen.own,
            referred: before.referred != seen.referred,
            announced: before.announced != seen.announced,
        };
        let uid = meta.uid.clone().unwrap_or_default();
        match self.map().insert(uid, seen.clone()) {
            None => Changed {
                own: true,
                referred: true,
                announced: false,
            },
            Some(before) => changed(&before),
        }
    }

    pub fn forget(&self, uid: &str) {
        self.map().remove(uid);
    }

    /// Keeps the uids in `live`; returns the (uid, namespace, name) of the ones dropped.
    pub fn retain(&self, live: &HashSet<String>) -> Vec<(String, String, String)> {
        let mut map = self.map();
        let gone: Vec<String> = map.keys().filter(|u| !live.contains(*u)).cloned().collect();
        gone.into_iter()
            .filter_map(|uid| map.remove(&uid).map(|s| (uid, s.namespace, s.name)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};

    fn meta() -> ObjectMeta {
        ObjectMeta {
            name: Some("clinic-a".into()),
            uid: Some("uid-1".into()),
            generation: Some(1),
            resource_version: Some("10".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_status_write_changes_no_fingerprint() {
        let prints = Fingerprints::default();
        let before = meta();
        assert_eq!(
            prints.observe(&before, 0),
            Changed {
                own: true,
                referred: true,
                announced: false
            }
        );
        // A status write bumps only resourceVersion.
        let mut after = before.clone();
        after.resource_version = Some("11".into());
        assert_eq!(prints.observe(&after, 0), Changed::default());
        // One that changes what it announces says so, and only that.
        assert_eq!(
            prints.observe(&after, 7),
            Changed {
                announced: true,
                ..Changed::default()
            }
        );
    }

    #[test]
    fn people_and_the_world_change_fingerprints() {
        let base = meta();
        let mut spec = base.clone();
        spec.generation = Some(2);
        let mut label = base.clone();
        label.labels = Some([("openemr.io/hold".into(), "true".into())].into());
        let mut annotation = base.clone();
        annotation.annotations = Some([("a".into(), "b".into())].into());
        let mut finalizer = base.clone();
        finalizer.finalizers = Some(vec!["openemr.io/cleanup".into()]);
        let mut deleting = base.clone();
        deleting.deletion_timestamp = Some(Time("2026-11-23T10:00:00Z".parse().unwrap()));
        for changed in [&spec, &label, &annotation, &finalizer, &deleting] {
            assert_ne!(
                own_fingerprint(&base),
                own_fingerprint(changed),
                "{changed:?}"
            );
        }
        // Referrers care about spec, owners and deletion, not labels.
        assert_eq!(referred_fingerprint(&base), referred_fingerprint(&label));
        assert_ne!(referred_fingerprint(&base), referred_fingerprint(&spec));
        assert_ne!(referred_fingerprint(&base), referred_fingerprint(&deleting));
        let mut owned = base.clone();
        owned.owner_references = Some(vec![OwnerReference {
            uid: "restore-uid".into(),
            ..Default::default()
        }]);
        assert_ne!(referred_fingerprint(&base), referred_fingerprint(&owned));
    }

    #[test]
    fn fingerprints_are_forgotten_with_their_objects() {
        let prints = Fingerprints::default();
        prints.observe(&meta(), 0);
        let mut other = meta();
        other.uid = Some("uid-2".into());
        prints.observe(&other, 0);
        prints.forget("uid-1");
        assert_eq!(prints.len(), 1);
        assert_eq!(
            prints.retain(&HashSet::new()),
            vec![("uid-2".to_string(), String::new(), "clinic-a".to_string())]
        );
        assert!(prints.is_empty());
    }

    #[test]
    fn the_index_finds_referrers_and_forgets_them() {
        let index = ReferenceIndex::<&str>::default();
        let clinic_a = Target::new(RefKind::Deployment, "ns", "clinic-a");
        let policy = Target::new(RefKind::Policy, "ns", "nightly");
        index.set("backup-1", vec![clinic_a.clone(), policy.clone()]);
        index.set("backup-2", vec![clinic_a.clone()]);
        let mut found = index.referrers(&clinic_a);
        found.sort();
        assert_eq!(found, ["backup-1", "backup-2"]);
        // Same name in another namespace or of another kind is another target.
        assert!(
            index
                .referrers(&Target::new(RefKind::Deployment, "other", "clinic-a"))
                .is_empty()
        );
        assert!(
            index
                .referrers(&Target::new(RefKind::Policy, "ns", "clinic-a"))
                .is_empty()
        );
        // A re-pointed referrer leaves its old target.
        index.set(
            "backup-2",
            vec![Target::new(RefKind::Deployment, "ns", "b")],
        );
        assert_eq!(index.referrers(&clinic_a), ["backup-1"]);
        index.remove(&"backup-1");
        assert!(index.referrers(&clinic_a).is_empty());
        assert!(index.referrers(&policy).is_empty());
        index.retain(&HashSet::new());
        assert!(index.is_empty());
    }

    #[test]
    fn jitter_spreads_objects_and_never_shortens() {
        let base = Duration::from_secs(600);
        let delays: Vec<Duration> = (0..1000)
            .map(|i| jittered(base, &format!("uid-{i}"), 0.1))
            .collect();
        assert!(delays.iter().all(|d| *d >= base && *d <= base.mul_f64(1.1)));
        // Spread over the window: every tenth of it holds some objects.
        let mut buckets = [0u32; 10];
        for d in &delays {
            let i = ((d.as_secs_f64() - 600.0) / 6.0).floor() as usize;
            buckets[i.min(9)] += 1;
        }
        assert!(buckets.iter().all(|b| *b > 50), "{buckets:?}");
        // Fixed per object.
        assert_eq!(jittered(base, "uid-1", 0.1), jittered(base, "uid-1", 0.1));
    }

    #[tokio::test]
    async fn the_hub_reaches_every_subscriber() {
        let hub = TriggerHub::default();
        let mut a = hub.subscribe();
        let mut b = hub.subscribe();
        let t = Target::new(RefKind::Secret, "ns", "db");
        hub.publish(t.clone());
        assert_eq!(a.recv().await, Some(t.clone()));
        assert_eq!(b.recv().await, Some(t));
        drop(a);
        hub.publish(Target::new(RefKind::Secret, "ns", "x"));
        assert_eq!(hub.subscribers.lock().unwrap().len(), 1);
    }
}
