//! The batched inventory: one paged `DescribeDBInstances` (100 per page) and one paged
//! `DescribeStacks` per account and region, shared by every clinic there, instead of a
//! describe per clinic per look.
//!
//! A clinic at rest reads its DB instance and stack from the latest snapshot; only a clinic
//! with work in progress (or one whose resource is missing from the snapshot) describes its
//! own. A refresh is single-flight per account and region, so an operator restart with
//! thousands of clinics re-confirms them with one page per 100 instances. A background
//! loop refreshes each known account and region every interval and wakes the clinics whose
//! instance or stack changed, so drift made outside the operator is seen within one
//! interval with no per-clinic call.
//!
//! Each account is listed with the operator's own identity there
//! ([`AwsPool::account_clients`]: its base credentials, or the role `--account-role` names),
//! never with a clinic's role. An account without one is left out: its clinics read their
//! own resources on every look, and drift there is seen at the resync.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::AwsClients;
use super::accounts::AwsPool;
use super::cloudformation::{StackInfo, Stacks};
use super::error::AwsError;
use super::rds::{Databases, DbInstance};

/// What one account and region held at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub taken: Option<Instant>,
    /// When the stacks were listed: less often than the instances (see
    /// [`STACK_REFRESH_INTERVALS`]).
    pub stacks_taken: Option<Instant>,
    /// By DB instance identifier.
    pub databases: HashMap<String, DbInstance>,
    /// By stack name.
    pub stacks: HashMap<String, StackInfo>,
}

impl Snapshot {
    fn age(&self) -> Option<Duration> {
        self.taken.map(|t| t.elapsed())
    }
}

/// Stacks are listed every this many inventory intervals (30 minutes at the default 5):
/// they change only when the operator changes them (and a clinic with a change in flight
/// reads its own stack), and listing them costs as many pages as the instances.
pub const STACK_REFRESH_INTERVALS: u32 = 6;

/// The clinic a resource belongs to, from the operator's tags on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub namespace: String,
    pub name: String,
}

/// The session name of the operator's own identity while it lists an account.
pub const SESSION_NAME: &str = "openemr-operator-inventory";

/// Instances the operator did not tag (adopted), by identifier, with their clinic.
type Claims = HashMap<String, Owner>;

struct Region {
    /// The operator's own, never a clinic's.
    clients: Arc<AwsClients>,
    /// Held across a refresh: callers that find the snapshot stale wait for the one
    /// refresh in flight instead of starting their own.
    snapshot: tokio::sync::Mutex<Arc<Snapshot>>,
    /// What clinics read of their own resources, and when: newer than a listing, it is
    /// the view at rest. Without it a clinic whose stack was just updated would read the
    /// listing from before (stacks are listed every sixth interval) and update it again.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    stacks: HashMap<String, (Instant, StackInfo)>,
    databases: HashMap<String, (Instant, DbInstance)>,
}

/// The newer of a listing's `listed` entry (listed at `listed_at`) and a clinic's own
/// `read` one.
fn newer<T: Clone>(
    listed: Option<&T>,
    listed_at: Option<Instant>,
    read: Option<&(Instant, T)>,
) -> Option<T> {
    match read {
        Some((at, value)) if listed_at.is_none_or(|l| *at > l) => Some(value.clone()),
        _ => listed.cloned(),
    }
}

/// The inventories of every account and region a clinic was seen in.
pub struct Inventory {
    interval: Duration,
    cluster: String,
    pool: Arc<AwsPool>,
    /// Listed accounts and regions.
    regions: Mutex<HashMap<(String, String), Arc<Region>>>,
    /// Kept for every account, listed or not: they decide which clinic adopted an instance.
    claims: Mutex<HashMap<(String, String), Claims>>,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Tag keys read to match resources to clinics (set by the clinic controller).
const TAG_CLUSTER: &str = "openemr.io/cluster";
const TAG_NAMESPACE: &str = "openemr.io/namespace";
const TAG_NAME: &str = "openemr.io/name";

fn owner(tags: &std::collections::BTreeMap<String, String>, cluster: &str) -> Option<Owner> {
    (tags.get(TAG_CLUSTER)? == cluster).then(|| Owner {
        namespace: tags.get(TAG_NAMESPACE).cloned().unwrap_or_default(),
        name: tags.get(TAG_NAME).cloned().unwrap_or_default(),
    })
}

/// An instance as compared for change: the restorable time moves on its own every few
/// minutes and is not a change anyone acts on.
fn comparable(db: &DbInstance) -> DbInstance {
    DbInstance {
        latest_restorable_time: None,
        ..db.clone()
    }
}

/// The clinics whose instance or stack differs between two snapshots (appeared, changed or
/// went), found by the operator's tags on them, or for instances without them (adopted
/// ones) by `claimed` (identifier → clinic).
pub fn changed_owners(
    before: &Snapshot,
    after: &Snapshot,
    cluster: &str,
    claimed: &HashMap<String, Owner>,
) -> Vec<Owner> {
    let db_owner =
        |db: &DbInstance| owner(&db.tags, cluster).or_else(|| claimed.get(&db.identifier).cloned());
    let mut owners = Vec::new();
    let mut note = |o: Option<Owner>| {
        if let Some(o) = o
            && !owners.contains(&o)
        {
            owners.push(o);
        }
    };
    for (id, db) in &after.databases {
        if before.databases.get(id).map(comparable) != Some(comparable(db)) {
            note(db_owner(db));
        }
    }
    for (id, db) in &before.databases {
        if !after.databases.contains_key(id) {
            note(db_owner(db));
        }
    }
    for (name, stack) in &after.stacks {
        if before.stacks.get(name) != Some(stack) {
            note(owner(&stack.tags, cluster));
        }
    }
    for (name, stack) in &before.stacks {
        if !after.stacks.contains_key(name) {
            note(owner(&stack.tags, cluster));
        }
    }
    owners
}

impl Inventory {
    /// Snapshots older than `interval` are refreshed; the loop refreshes at that pace. Each
    /// account is listed with the operator's identity there, from `pool`.
    pub fn new(interval: Duration, cluster: &str, pool: Arc<AwsPool>) -> Inventory {
        Inventory {
            interval,
            cluster: cluster.to_string(),
            pool,
            regions: Mutex::new(HashMap::new()),
            claims: Mutex::new(HashMap::new()),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn stack_max_age(&self) -> Duration {
        self.interval * STACK_REFRESH_INTERVALS
    }

    /// The inventory of the account and region of a clinic's `clients`; `None` when the
    /// operator has no identity of its own in that account.
    fn region(&self, clients: &AwsClients) -> Option<Arc<Region>> {
        let key = (clients.account.clone(), clients.region.clone());
        if let Some(found) = self.lock_regions().get(&key) {
            return Some(found.clone());
        }
        let own = self
            .pool
            .account_clients(&clients.account, SESSION_NAME, &clients.region)?;
        Some(
            self.lock_regions()
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(Region {
                        clients: own,
                        snapshot: tokio::sync::Mutex::new(Arc::new(Snapshot::default())),
                        seen: Mutex::new(Seen::default()),
                    })
                })
                .clone(),
        )
    }

    fn lock_regions(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Region>>> {
        self.regions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_claims(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Claims>> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the account and region of `clients` is listed: the loop keeps refreshing
    /// it (a clinic there exists). Nothing is read now.
    pub fn watch(&self, clients: &AwsClients) -> bool {
        self.region(clients).is_some()
    }

    /// Who claimed `identifier` in the account and region of `clients`, if anyone.
    pub fn claimant(&self, clients: &AwsClients, identifier: &str) -> Option<Owner> {
        self.lock_claims()
            .get(&(clients.account.clone(), clients.region.clone()))?
            .get(identifier)
            .cloned()
    }

    /// Names the clinic of an instance that may not carry the operator's tags yet (an
    /// adopted one), so that its drift wakes the clinic too.
    pub fn claim(&self, clients: &AwsClients, identifier: &str, owner: Owner) {
        self.lock_claims()
            .entry((clients.account.clone(), clients.region.clone()))
            .or_default()
            .insert(identifier.to_string(), owner);
    }

    /// The snapshot of the account and region of `clients`, refreshed first when it is
    /// older than the interval (or was never taken); `None` when that account is not
    /// listed.
    pub async fn current(&self, clients: &AwsClients) -> Result<Option<Arc<Snapshot>>, AwsError> {
        let Some(region) = self.region(clients) else {
            return Ok(None);
        };
        let mut held = region.snapshot.lock().await;
        if held.age().is_none_or(|age| age >= self.interval) {
            *held = Arc::new(take(&region.clients, &held, self.stack_max_age()).await?);
        }
        Ok(Some(held.clone()))
    }

    /// A clinic at rest's stack and DB instance: from the snapshot (refreshed first when
    /// stale), unless the clinic's own last read of one is newer than its listing.
    pub async fn view(
        &self,
        clients: &AwsClients,
        stack: &str,
        database: &str,
    ) -> Result<(Option<StackInfo>, Option<DbInstance>), AwsError> {
        let Some(snapshot) = self.current(clients).await? else {
            return Ok((None, None));
        };
        let Some(region) = self.region(clients) else {
            return Ok((None, None));
        };
        let seen = region.seen.lock().unwrap_or_else(|e| e.into_inner());
        Ok((
            newer(
                snapshot.stacks.get(stack),
                snapshot.stacks_taken,
                seen.stacks.get(stack),
            ),
            newer(
                snapshot.databases.get(database),
                snapshot.taken,
                seen.databases.get(database),
            ),
        ))
    }

    /// Remembers what a clinic just read of its own stack and DB instance.
    pub fn saw(
        &self,
        clients: &AwsClients,
        stack: Option<&StackInfo>,
        database: Option<&DbInstance>,
    ) {
        let Some(region) = self.region(clients) else {
            return;
        };
        let mut seen = region.seen.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(s) = stack {
            seen.stacks.insert(s.name.clone(), (now, s.clone()));
        }
        if let Some(db) = database {
            seen.databases
                .insert(db.identifier.clone(), (now, db.clone()));
        }
    }

    /// Refreshes every known account and region each interval and hands the clinics whose
    /// resources changed to `wake`.
    pub async fn run(&self, wake: impl Fn(Owner), shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                () = shutdown.cancelled() => return,
            }
            let regions: Vec<((String, String), Arc<Region>)> = self
                .lock_regions()
                .iter()
                .map(|(key, region)| (key.clone(), region.clone()))
                .collect();
            for (key, region) in regions {
                let mut held = region.snapshot.lock().await;
                // A clinic may have refreshed it a moment ago.
                if held.age().is_some_and(|age| age < self.interval / 2) {
                    continue;
                }
                match take(&region.clients, &held, self.stack_max_age()).await {
                    Ok(fresh) => {
                        let claims = self.lock_claims().get(&key).cloned().unwrap_or_default();
                        let owners = changed_owners(&held, &fresh, &self.cluster, &claims);
                        forget_older(&region, &fresh);
                        debug!(account = %region.clients.account, region = %region.clients.region, changed = owners.len(), "inventory refreshed");
                        *held = Arc::new(fresh);
                        drop(held);
                        owners.into_iter().for_each(&wake);
                    }
                    Err(e) => {
                        warn!(account = %region.clients.account, region = %region.clients.region, error = %e, "inventory refresh failed; the next interval tries again");
                    }
                }
            }
        }
    }
}

/// Drops the clinics' own reads that `fresh` lists anew.
fn forget_older(region: &Region, fresh: &Snapshot) {
    let mut seen = region.seen.lock().unwrap_or_else(|e| e.into_inner());
    let older = |listed: Option<Instant>, at: &Instant| listed.is_some_and(|l| *at <= l);
    seen.stacks
        .retain(|_, (at, _)| !older(fresh.stacks_taken, at));
    seen.databases.retain(|_, (at, _)| !older(fresh.taken, at));
}

/// Reads every DB instance of one account and region, page by page, and every stack unless
/// `previous` listed them less than `stack_max_age` ago.
async fn take(
    clients: &AwsClients,
    previous: &Snapshot,
    stack_max_age: Duration,
) -> Result<Snapshot, AwsError> {
    let mut databases = HashMap::new();
    let mut marker = None;
    loop {
        let (page, next) = clients.list_instances(marker).await?;
        databases.extend(page.into_iter().map(|db| (db.identifier.clone(), db)));
        match next {
            Some(m) => marker = Some(m),
            None => break,
        }
    }
    let stacks_fresh = previous
        .stacks_taken
        .is_some_and(|t| t.elapsed() < stack_max_age);
    let (stacks, stacks_taken) = if stacks_fresh {
        (previous.stacks.clone(), previous.stacks_taken)
    } else {
        let mut stacks = HashMap::new();
        let mut token = None;
        loop {
            let (page, next) = clients.list_stacks(token).await?;
            stacks.extend(page.into_iter().map(|s| (s.name.clone(), s)));
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        (stacks, Some(Instant::now()))
    };
    Ok(Snapshot {
        taken: Some(Instant::now()),
        stacks_taken,
        databases,
        stacks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn tags(cluster: &str, name: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (TAG_CLUSTER.to_string(), cluster.to_string()),
            (TAG_NAMESPACE.to_string(), "ns".to_string()),
            (TAG_NAME.to_string(), name.to_string()),
        ])
    }

    fn db(id: &str, cluster: &str, retention: i32) -> DbInstance {
        DbInstance {
            identifier: id.into(),
            backup_retention: retention,
            tags: tags(cluster, id),
            ..DbInstance::default()
        }
    }

    fn snapshot(dbs: Vec<DbInstance>) -> Snapshot {
        Snapshot {
            taken: Some(Instant::now()),
            stacks_taken: Some(Instant::now()),
            databases: dbs.into_iter().map(|d| (d.identifier.clone(), d)).collect(),
            stacks: HashMap::new(),
        }
    }

    #[test]
    fn a_clinics_own_read_wins_over_an_older_listing_only() {
        let listed_at = Instant::now();
        let read_later = (listed_at + Duration::from_secs(1), db("a", "prod", 14));
        let listed = db("a", "prod", 7);
        let pick = |read: &(Instant, DbInstance)| {
            newer(Some(&listed), Some(listed_at), Some(read)).map(|d| d.backup_retention)
        };
        assert_eq!(pick(&read_later), Some(14), "read after the listing");
        let read_before = (listed_at - Duration::from_secs(1), db("a", "prod", 14));
        assert_eq!(pick(&read_before), Some(7), "the listing is newer");
        assert_eq!(
            newer(None, None, Some(&read_before)).map(|d| d.backup_retention),
            Some(14),
            "never listed"
        );
        assert_eq!(newer::<DbInstance>(None, Some(listed_at), None), None);
    }

    #[test]
    fn only_clinics_of_this_cluster_whose_resources_changed_are_woken() {
        let before = snapshot(vec![
            db("a", "prod", 7),
            db("b", "prod", 7),
            db("c", "prod", 7),
            db("x", "other", 7),
        ]);
        let mut moved = db("b", "prod", 7);
        moved.latest_restorable_time = Some(std::time::SystemTime::now());
        let after = snapshot(vec![
            db("a", "prod", 3),
            moved,
            db("x", "other", 1),
            db("n", "prod", 7),
        ]);
        let names: Vec<_> = {
            let mut owners = changed_owners(&before, &after, "prod", &HashMap::new());
            owners.sort_by(|a, b| a.name.cmp(&b.name));
            owners.into_iter().map(|o| o.name).collect()
        };
        // a drifted, c went, n appeared; b's restorable time alone and another cluster's x
        // are nobody's business here.
        assert_eq!(names, ["a", "c", "n"]);
    }

    #[test]
    fn stacks_changing_status_wake_their_clinic() {
        let stack = |status: &str| StackInfo {
            name: "s".into(),
            status: status.into(),
            tags: tags("prod", "clinic-s"),
            ..StackInfo::default()
        };
        let mut before = snapshot(vec![]);
        before.stacks.insert("s".into(), stack("CREATE_COMPLETE"));
        let mut after = snapshot(vec![]);
        after
            .stacks
            .insert("s".into(), stack("UPDATE_ROLLBACK_FAILED"));
        let none = HashMap::new();
        assert_eq!(
            changed_owners(&before, &after, "prod", &none),
            [Owner {
                namespace: "ns".into(),
                name: "clinic-s".into()
            }]
        );
        assert_eq!(changed_owners(&before, &before, "prod", &none), []);
    }

    #[test]
    fn an_untagged_adopted_instance_wakes_the_clinic_that_claimed_it() {
        let mut legacy = db("legacy", "prod", 7);
        legacy.tags.clear();
        let before = snapshot(vec![legacy.clone()]);
        legacy.backup_retention = 1;
        let after = snapshot(vec![legacy]);
        assert_eq!(changed_owners(&before, &after, "prod", &HashMap::new()), []);
        let adopter = Owner {
            namespace: "ns".into(),
            name: "adopter".into(),
        };
        let claims = HashMap::from([("legacy".to_string(), adopter.clone())]);
        assert_eq!(changed_owners(&before, &after, "prod", &claims), [adopter]);
    }
}
