//! The batched snapshot inventory: one paged `DescribeDBSnapshots` of the manual snapshots
//! (100 per page) per account and region, shared by every set in flight there, instead of
//! a describe per set per look; and the count of manual snapshots RDS's quota is about.
//!
//! A listing is taken when one is asked for and the last is older than the asker allows
//! (a set under way: its progress interval), single-flight per account and region, so a
//! thousand sets due together cost one listing per interval, not a thousand describes.
//! Each account is listed with the operator's own identity there; an account without one
//! is not listed, and its sets describe their own snapshot.
//!
//! Pruning reads each snapshot about once, so it never takes a listing for it: it reads
//! one that is there and fresh ([`SnapshotInventory::peek`]), else describes. A snapshot
//! this process deleted is known gone ([`SnapshotInventory::was_deleted`]) without a read:
//! RDS finishes a deletion it accepted, and a listing taken before it still shows the
//! snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::AwsClients;
use super::accounts::AwsPool;
use super::error::AwsError;
use super::inventory::SESSION_NAME;
use super::rds::{Databases, DbSnapshot};

/// The manual snapshots of one account and region at one moment.
#[derive(Debug, Default)]
pub struct Listing {
    pub taken: Option<Instant>,
    /// By snapshot identifier.
    pub manual: HashMap<String, DbSnapshot>,
}

struct Region {
    clients: Arc<AwsClients>,
    listing: tokio::sync::Mutex<Arc<Listing>>,
}

/// The listings of every account and region a set was taken in.
pub struct SnapshotInventory {
    pool: Arc<AwsPool>,
    metrics: Arc<crate::metrics::Metrics>,
    regions: Mutex<HashMap<(String, String), Arc<Region>>>,
    /// When this process had RDS accept a snapshot's deletion, by account, region and
    /// identifier, and the uid of the set it was deleted for (another set of the same name
    /// makes a snapshot of the same identifier); kept for [`REMEMBERED`].
    deletions: Mutex<HashMap<DeletionKey, Instant>>,
}

/// How long a deletion is remembered: long enough for the looks that follow it, short
/// enough that the map stays small however many sets are pruned.
const REMEMBERED: Duration = Duration::from_secs(3600);

type DeletionKey = (String, String, String, String);

fn deletion_key(clients: &AwsClients, identifier: &str, set_uid: &str) -> DeletionKey {
    (
        clients.account.clone(),
        clients.region.clone(),
        identifier.to_string(),
        set_uid.to_string(),
    )
}

impl std::fmt::Debug for SnapshotInventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotInventory")
    }
}

impl SnapshotInventory {
    pub fn new(pool: Arc<AwsPool>, metrics: Arc<crate::metrics::Metrics>) -> SnapshotInventory {
        SnapshotInventory {
            pool,
            metrics,
            regions: Mutex::new(HashMap::new()),
            deletions: Mutex::new(HashMap::new()),
        }
    }

    /// Records that RDS accepted the deletion of snapshot `identifier` in the account and
    /// region of `clients`, for the set whose uid is `set_uid`.
    pub fn deleted(&self, clients: &AwsClients, identifier: &str, set_uid: &str) {
        let now = Instant::now();
        let mut deletions = self.deletions.lock().unwrap_or_else(|e| e.into_inner());
        deletions.retain(|_, at| now.duration_since(*at) < REMEMBERED);
        deletions.insert(deletion_key(clients, identifier, set_uid), now);
    }

    /// Whether this process had RDS accept the deletion of `identifier` there for the set
    /// whose uid is `set_uid`, lately.
    pub fn was_deleted(&self, clients: &AwsClients, identifier: &str, set_uid: &str) -> bool {
        self.deletions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&deletion_key(clients, identifier, set_uid))
            .is_some_and(|at| at.elapsed() < REMEMBERED)
    }

    /// The manual snapshot `identifier` as the listing there shows it, if one was taken
    /// within `max_age` (and is not being taken now); `None` otherwise: no listing is taken
    /// for this. Only for a snapshot that existed before any listing this process takes
    /// (a completed set's: it was seen in one, or made by an earlier process).
    pub async fn peek(
        &self,
        clients: &AwsClients,
        identifier: &str,
        max_age: Duration,
    ) -> Option<Option<DbSnapshot>> {
        let region = self.region(clients)?;
        let held = region.listing.try_lock().ok()?;
        let fresh = held.taken.is_some_and(|t| t.elapsed() < max_age);
        fresh.then(|| held.manual.get(identifier).cloned())
    }

    fn region(&self, clients: &AwsClients) -> Option<Arc<Region>> {
        let key = (clients.account.clone(), clients.region.clone());
        let mut regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = regions.get(&key) {
            return Some(found.clone());
        }
        let own = self
            .pool
            .account_clients(&clients.account, SESSION_NAME, &clients.region)?;
        Some(
            regions
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(Region {
                        clients: own,
                        listing: tokio::sync::Mutex::new(Arc::new(Listing::default())),
                    })
                })
                .clone(),
        )
    }

    /// The manual snapshots of the account and region of `clients`, listed no longer than
    /// `max_age` ago (listed now otherwise); `None` when the operator has no identity of
    /// its own in that account.
    pub async fn listing(
        &self,
        clients: &AwsClients,
        max_age: Duration,
    ) -> Result<Option<Arc<Listing>>, AwsError> {
        let Some(region) = self.region(clients) else {
            return Ok(None);
        };
        let mut held = region.listing.lock().await;
        if held.taken.is_none_or(|t| t.elapsed() >= max_age) {
            let manual = region
                .clients
                .list_manual_snapshots()
                .await?
                .into_iter()
                .map(|s| (s.identifier.clone(), s))
                .collect();
            let listing = Listing {
                taken: Some(Instant::now()),
                manual,
            };
            self.metrics
                .manual_snapshots
                .get_or_create(&crate::metrics::AccountRegionLabels {
                    account: clients.account.clone(),
                    region: clients.region.clone(),
                })
                .set(i64::try_from(listing.manual.len()).unwrap_or(i64::MAX));
            *held = Arc::new(listing);
        }
        Ok(Some(held.clone()))
    }
}
