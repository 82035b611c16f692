//! What the request path and every flight read and fill ([`Core`]): the stores, the keys'
//! versions, the ring, the feed's state; and the one way a value gets into a store
//! ([`Core::fill`]), which closes the race with an invalidation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::hot::HotPolicy;
use super::store::{Entry, Store};
use super::versions::Versions;
use super::{LoadResult, Loaded};
use crate::clock;
use crate::error::LoadError;
use crate::group::{Group, Groups};
use crate::ring::Cluster;
use crate::telemetry::metrics::Counters;

/// What a node knows about its feed, shared with the read path.
#[derive(Debug, Default)]
pub struct FeedState {
    /// Whether any group is feed-backed and the node follows the feed.
    enabled: AtomicBool,
    /// When the last successful poll was sent (`clock::now_ms`): every change committed before
    /// then has been applied.
    fresh_as_of_ms: AtomicU64,
    /// Every transaction below it has been applied (the last poll's `xmin`); 0: not following.
    applied_xmin: AtomicU64,
    /// Every change of a transaction from this one on has been (or will be) applied here:
    /// the first poll's `xmax`, moved forward when the groups were dropped for a gap. A copy
    /// from an owner at a position at least this far can be checked against `last_xid`.
    complete_since: AtomicU64,
    /// Values of feed-backed groups are not answered as fresh past this long without a poll.
    max_staleness_ms: AtomicU64,
}

impl FeedState {
    /// The moment after which values of feed-backed groups count as expired; `u64::MAX`
    /// while the feed is followed (or not used).
    pub fn deadline_ms(&self) -> u64 {
        if !self.enabled.load(Ordering::Relaxed) {
            return u64::MAX;
        }
        let fresh = self.fresh_as_of_ms.load(Ordering::Acquire);
        let max = self.max_staleness_ms.load(Ordering::Relaxed);
        if clock::now_ms() < fresh.saturating_add(max) {
            u64::MAX
        } else {
            fresh.saturating_add(max)
        }
    }

    pub fn applied_xmin(&self) -> u64 {
        self.applied_xmin.load(Ordering::Acquire)
    }

    pub fn complete_since(&self) -> u64 {
        self.complete_since.load(Ordering::Acquire)
    }

    /// Whether the node follows the feed (some group is feed-backed).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Follows the feed from `now_ms`: values of feed-backed groups are fresh until
    /// `max_staleness` passes without a poll.
    pub fn enable(&self, now_ms: u64) {
        self.fresh_as_of_ms.store(now_ms, Ordering::Release);
        self.enabled.store(true, Ordering::Release);
    }

    /// A poll sent at `sent_ms` has been applied: every transaction below `xmin` with it.
    pub fn polled(&self, sent_ms: u64, xmin: u64) {
        self.applied_xmin.store(xmin, Ordering::Release);
        self.fresh_as_of_ms.store(sent_ms, Ordering::Release);
    }

    /// When the last poll that was applied was sent.
    pub fn fresh_as_of_ms(&self) -> u64 {
        self.fresh_as_of_ms.load(Ordering::Acquire)
    }

    /// Every change from transaction `xmax` on is (or will be) applied here.
    pub fn complete_from(&self, xmax: u64) {
        self.complete_since.store(xmax, Ordering::Release);
    }

    pub fn max_staleness_ms(&self) -> u64 {
        self.max_staleness_ms.load(Ordering::Relaxed)
    }

    pub fn set_max_staleness(&self, max: Duration) {
        self.max_staleness_ms
            .store(clock::ms(max), Ordering::Relaxed);
    }
}

/// The stores: the node's shared pair, and a pair of its own for each group with a budget;
/// and the entries handed to this node by neighbours that left.
pub struct Stores {
    main: Store,
    hot: Store,
    own: Vec<Option<(Store, Store)>>,
    handoff: Store,
}

impl Stores {
    /// `cache_bytes` for the shared pair (1/8 of it hot, all of it on a frontend, which owns
    /// no keys) and each group's own budget split the same way. The handoff store, on top:
    /// up to 1/2 of `cache_bytes` for `handoff_ttl` after a neighbour left (see
    /// [`super::handoff::receive`]), empty otherwise.
    pub fn new(
        groups: Groups,
        cache_bytes: u64,
        frontend: bool,
        hot_ttl: Duration,
        handoff_ttl: Duration,
    ) -> Stores {
        let pair = |bytes: u64, owner: Option<Group>| {
            let hot = if frontend { bytes } else { bytes / 8 };
            let main = Store::new("main", (bytes - hot).max(1024), None, groups, owner);
            (
                main,
                Store::new("hot", hot.max(1024), Some(hot_ttl), groups, owner),
            )
        };
        let (main, hot) = pair(cache_bytes, None);
        let own = groups
            .all()
            .map(|g| g.def().cache_bytes.map(|b| pair(b, Some(g))))
            .collect();
        // As large as a node's whole cache: a leaving node sends each new owner up to its
        // --cache-bytes, and one successor can own most of its keys (crc32's vnode points
        // are unevenly spaced: in a 3-node restart one successor took 82 % of what the
        // leaving node sent). At half of it, moka evicted a quarter of a restarted node's
        // entries before they could go back. It holds entries only for --handoff-grace.
        let handoff_bytes = if frontend {
            1024
        } else {
            cache_bytes.max(1024)
        };
        let handoff_ttl = handoff_ttl.max(Duration::from_secs(1));
        let handoff = Store::new("handoff", handoff_bytes, Some(handoff_ttl), groups, None);
        Stores {
            main,
            hot,
            own,
            handoff,
        }
    }

    /// What neighbours that left handed to this node, every group.
    pub fn handoff(&self) -> &Store {
        &self.handoff
    }

    pub fn main(&self, group: Group) -> &Store {
        self.own[group.index()]
            .as_ref()
            .map_or(&self.main, |p| &p.0)
    }

    pub fn hot(&self, group: Group) -> &Store {
        self.own[group.index()].as_ref().map_or(&self.hot, |p| &p.1)
    }

    /// Every store, for their maintenance.
    pub fn all(&self) -> Vec<Store> {
        let own = self
            .own
            .iter()
            .flatten()
            .flat_map(|(m, h)| [m.clone(), h.clone()]);
        [self.main.clone(), self.hot.clone(), self.handoff.clone()]
            .into_iter()
            .chain(own)
            .collect()
    }
}

/// What a store holds for a key, as the read path sees it.
pub(crate) enum Found {
    Fresh(Entry),
    /// Past its ttl, within the group's stale windows (values only).
    Stale(Entry),
    Absent,
}

/// What the request path and every flight read and fill.
pub struct Core {
    pub(super) groups: Groups,
    pub(super) stores: Stores,
    pub(super) policy: HotPolicy,
    pub(super) cluster: Arc<Cluster>,
    pub(super) counters: Counters,
    pub(super) versions: Versions,
    /// Longest life of a copy of a key owned elsewhere.
    pub(super) hot_ttl: Duration,
    /// The change feed, as far as this node has followed it.
    pub(super) feed: FeedState,
    /// Per group: how many times this node dropped the group's entries (the feed lost track),
    /// and when last; entries filled before then are misses, loads begun before are not cached.
    pub(super) drops: Vec<AtomicU64>,
    pub(super) dropped_at_ms: Vec<AtomicU64>,
    /// For how long after a ring change a new owner asks a moved key's previous owner before
    /// the source (0: never).
    pub(super) handoff_grace_ms: AtomicU64,
    /// Peeks this node answered (a leaving node drains while they come).
    pub(super) peeks_served: AtomicU64,
    /// Previous owners whose last peek failed, not asked again for a while.
    pub(super) peek_backoff: crate::cache::handoff::PeekBackoff,
    /// Per group: its triggers are missing from the database, so the feed would not tell of
    /// its changes; it caches nothing meanwhile (`feed::Follower::check_triggers`).
    unfed: Vec<AtomicBool>,
}

impl Core {
    /// The read path's view of cores built for tests and tools: the given stores and ring.
    pub fn new(
        groups: Groups,
        stores: Stores,
        policy: HotPolicy,
        cluster: Arc<Cluster>,
        hot_ttl: Duration,
    ) -> Core {
        let per_group = || groups.all().map(|_| AtomicU64::new(0)).collect();
        Core {
            groups,
            stores,
            policy,
            cluster,
            counters: Counters::new(groups),
            versions: Versions::default(),
            hot_ttl,
            feed: FeedState::default(),
            drops: per_group(),
            dropped_at_ms: per_group(),
            handoff_grace_ms: AtomicU64::new(0),
            peeks_served: AtomicU64::new(0),
            peek_backoff: Default::default(),
            unfed: groups.all().map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Whether the group's triggers were found missing (see [`Core::set_unfed`]).
    pub fn unfed(&self, group: Group) -> bool {
        self.unfed[group.index()].load(Ordering::Acquire)
    }

    /// Marks the group's triggers missing (nothing of it is cached; drop its entries too) or
    /// back.
    pub fn set_unfed(&self, group: Group, unfed: bool) {
        self.unfed[group.index()].store(unfed, Ordering::Release);
    }

    /// The groups this node serves.
    pub fn groups(&self) -> Groups {
        self.groups
    }

    /// The ring and purge generations, as membership publishes them.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// What this node knows of the change feed.
    pub fn feed(&self) -> &FeedState {
        &self.feed
    }

    /// A group's counters (gets, hits, loads, ...).
    pub fn counters(&self, group: Group) -> &crate::telemetry::metrics::GroupCounters {
        self.counters.group(group)
    }

    /// The stores, for their upkeep (`ShardActor`) and for tests.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// How long after a ring change a new owner asks a moved key's previous owner first.
    pub fn set_handoff_grace(&self, grace: Duration) {
        self.handoff_grace_ms
            .store(clock::ms(grace), Ordering::Relaxed);
    }

    /// Until when an entry counts as fresh: its own ttl, and for a feed-backed group no later
    /// than the moment the node lost the feed for longer than `max_staleness`.
    fn fresh_until(&self, group: Group, entry: &Entry) -> u64 {
        if self.follows_feed(group) {
            entry.fresh_until_ms.min(self.feed.deadline_ms())
        } else {
            entry.fresh_until_ms
        }
    }

    pub(crate) fn find(&self, store: &Store, group: Group, key: &str, now: u64) -> Found {
        let Some(entry) = store.get(group, key) else {
            return Found::Absent;
        };
        let dropped = entry.filled_ms < self.dropped_at_ms[group.index()].load(Ordering::Acquire);
        if dropped || entry.generation != self.cluster.generation(group) {
            store.remove(group, key); // purged or dropped since it was filled
            return Found::Absent;
        }
        let fresh_until = self.fresh_until(group, &entry);
        if now < fresh_until {
            return Found::Fresh(entry);
        }
        let f = group.def().freshness;
        let window = clock::ms(f.stale_while_revalidate.max(f.stale_if_error));
        match entry.value {
            Some(_) if now < fresh_until.saturating_add(window) => Found::Stale(entry),
            _ => Found::Absent,
        }
    }

    /// Whether changes to the group reach this node through the change feed: it has
    /// `invalidate` entries, and the node follows the feed (a PostgreSQL source).
    pub fn follows_feed(&self, group: Group) -> bool {
        group.feed_backed() && self.feed.enabled.load(Ordering::Relaxed)
    }

    /// Drops a key for a change the feed read (transaction `xid`): as [`Core::invalidate`],
    /// and copies from owners that have not applied `xid` yet are not kept.
    pub fn invalidate_from_feed(&self, group: Group, key: &str, xid: u64) {
        self.versions.bump_at(group, key, xid);
        std::sync::atomic::fence(Ordering::SeqCst); // the bump before the removal: Core::fill
        self.remove_everywhere(group, key);
        self.counters.group(group).invalidations.increment(1);
    }

    fn remove_everywhere(&self, group: Group, key: &str) {
        self.stores.main(group).remove(group, key);
        self.stores.hot(group).remove(group, key);
        self.stores.handoff().remove(group, key);
    }

    /// Whether a value from an owner that has applied the feed up to `owner_xmin` may be kept
    /// here: for a feed-backed group, every change the owner may not have applied (from
    /// `owner_xmin` on) must be one this node records (its record is complete from
    /// `complete_since`: not a change committed before it began to follow, or in a gap it
    /// dropped the groups for), and none of those it applied may be the key's. An owner
    /// behind this node is fine when the changes between are not the key's: a value sent
    /// as a node leaves was read a few milliseconds before a writer's next commit moves this
    /// node on, and requiring the owner to be as far as this node refused all of them.
    pub fn caught_up(&self, group: Group, key: &str, owner_xmin: u64) -> bool {
        !self.follows_feed(group)
            || (owner_xmin > self.versions.last_xid(group, key)
                && owner_xmin >= self.feed.complete_since())
    }

    /// The feed's first read: from now on the group may cache (loads begun before may not).
    pub fn mark_followed(&self, group: Group) {
        self.drops[group.index()].fetch_add(1, Ordering::AcqRel);
    }

    /// Drops every entry of a group on this node (O(1): entries filled before now are misses,
    /// loads begun before now are not cached).
    pub fn drop_group(&self, group: Group) {
        self.dropped_at_ms[group.index()].store(clock::now_ms() + 1, Ordering::Release);
        self.drops[group.index()].fetch_add(1, Ordering::AcqRel);
    }

    /// A fresh answer in either store, for a key that was just missed (the recheck inside
    /// singleflight): between a request's miss and its `Load` reaching the loader, an earlier
    /// flight for the same key may have landed and filled the cache (groupcache's `load()`
    /// comment spells out this interleaving).
    pub fn recheck(&self, group: Group, key: &str) -> Option<LoadResult> {
        let (current, now) = (self.cluster.generation(group), clock::now_ms());
        let dropped = self.dropped_at_ms[group.index()].load(Ordering::Acquire);
        [self.stores.main(group), self.stores.hot(group)]
            .into_iter()
            .filter_map(|s| s.recheck(group, key))
            .find(|e| {
                e.generation == current
                    && e.filled_ms >= dropped
                    && now < self.fresh_until(group, e)
            })
            .map(|e| {
                let age_ms = e.age_ms(now);
                let fresh_ms = fresh_left(&e, now);
                e.value.ok_or(LoadError::NotFound).map(|value| Loaded {
                    value,
                    age_ms,
                    fresh_ms,
                    stale: false,
                })
            })
    }

    /// Drops the key's entries (values and "no such row") from this node's stores, and moves
    /// its version forward first, so that no load that began before lands in them after.
    pub fn invalidate(&self, group: Group, key: &str) {
        self.versions.bump(group, key);
        std::sync::atomic::fence(Ordering::SeqCst); // the bump before the removal: Core::fill
        self.remove_everywhere(group, key);
        self.counters.group(group).invalidations.increment(1);
    }

    /// Whether a value this node's previous owner read `age_ms` before `asked_ms` (here) was
    /// read after this node's last invalidation of the key. `asked_ms` must be no later than
    /// when the other node counted the age, so that the fill time it gives is no later than
    /// the real one: this errs towards "no".
    pub(crate) fn read_after_invalidation(
        &self,
        group: Group,
        key: &str,
        asked_ms: u64,
        age_ms: u64,
    ) -> bool {
        let bumped = self.versions.bumped_ms(group, key);
        bumped == 0
            || asked_ms
                .checked_sub(age_ms)
                .is_some_and(|filled| filled > bumped)
    }
}

pub(crate) fn fresh_left(entry: &Entry, now: u64) -> Option<u64> {
    (entry.fresh_until_ms != u64::MAX).then(|| entry.fresh_until_ms.saturating_sub(now))
}

/// Where a flight began: the group's generation, the key's version and the group's drop count
/// then. A fill is kept only if all are still current when the load lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub generation: u64,
    pub version: u64,
    pub drops: u64,
}

impl Core {
    /// The key's lease now.
    pub fn lease(&self, group: Group, key: &str) -> Lease {
        Lease {
            generation: self.cluster.generation(group),
            version: self.versions.current(group, key),
            drops: self.drops[group.index()].load(Ordering::Acquire),
        }
    }

    /// Caches `entry` if `lease` is still the key's (see [`super::versions`]); whether it did.
    pub fn fill(&self, store: &Store, group: Group, key: &str, entry: Entry, lease: Lease) -> bool {
        self.fill_racing(store, group, key, entry, lease, || {})
    }

    /// [`Core::fill`], with `between` run after the insert and before the check: the test's
    /// seam for an invalidation that lands there.
    ///
    /// A fill and an invalidation race; each writes, then reads what the other wrote:
    ///
    /// ```text
    /// invalidate:  bump the key's version  ->  remove the entry
    /// fill:        insert the entry        ->  check the version (changed: remove it)
    /// ```
    ///
    /// If the bump comes before the check, the check sees it and the fill takes its entry
    /// back out; if after, the removal comes after the insert and takes it out. Checking first
    /// and inserting after (as this did before) left `check -> bump -> remove -> insert`: a
    /// value cached past its invalidation, for good in a group without a ttl. The fences keep
    /// each side's write before its read (the store and the version are different memory).
    fn fill_racing(
        &self,
        store: &Store,
        group: Group,
        key: &str,
        entry: Entry,
        lease: Lease,
        between: impl FnOnce(),
    ) -> bool {
        // A feed-backed group caches nothing until the feed has been read once (`drops` > 0):
        // a load that began before could miss a change committed before that first read. Nor
        // while its triggers are missing: no change would reach it.
        let unfollowed = self.follows_feed(group) && (lease.drops == 0 || self.unfed(group));
        let kept = !unfollowed && self.lease(group, key) == lease && {
            store.insert(group, key, entry);
            between();
            std::sync::atomic::fence(Ordering::SeqCst);
            self.lease(group, key) == lease || {
                store.remove(group, key);
                false
            }
        };
        if !kept {
            self.counters.group(group).fills_discarded.increment(1);
        }
        kept
    }
}

#[cfg(test)]
impl Core {
    /// A node alone (no ring), the demo groups, 1 MiB of stores: for unit tests.
    pub(crate) fn alone() -> Core {
        let groups = Groups::demo();
        Core::new(
            groups,
            Stores::new(
                groups,
                1 << 20,
                false,
                Duration::from_secs(10),
                Duration::from_secs(60),
            ),
            HotPolicy::new(10.0),
            Arc::new(Cluster::from_static(
                None,
                &[],
                true,
                groups,
                Default::default(),
                10,
            )),
            Duration::from_secs(10),
        )
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn core() -> Core {
        Core::alone()
    }

    fn value(v: &'static str) -> Entry {
        Entry::loaded(
            Some(Bytes::from_static(v.as_bytes())),
            0,
            clock::now_ms(),
            None,
        )
    }

    /// Each interleaving of a fill with an invalidation of its key, forced in turn: none
    /// leaves the value read before the invalidation in the store.
    #[test]
    fn no_interleaving_of_a_fill_and_an_invalidation_keeps_the_old_value() {
        let c = core();
        let g = c.groups.get("products").unwrap();
        let store = c.stores.main(g);
        let held = |c: &Core| c.stores.main(g).recheck(g, "k").is_some();

        // The invalidation before the fill: the lease is old, nothing is inserted.
        let lease = c.lease(g, "k");
        c.invalidate(g, "k");
        assert!(!c.fill(store, g, "k", value("v1"), lease));
        assert!(!held(&c));

        // Between the insert and the check (the window the old check-then-insert left open,
        // there between the check and the insert): the check sees the bump.
        let lease = c.lease(g, "k");
        let kept = c.fill_racing(store, g, "k", value("v1"), lease, || c.invalidate(g, "k"));
        assert!(!kept);
        assert!(
            !held(&c),
            "the value read before the invalidation stayed cached"
        );

        // The invalidation after the fill: its removal takes the value out.
        let lease = c.lease(g, "k");
        assert!(c.fill(store, g, "k", value("v1"), lease));
        assert!(held(&c));
        c.invalidate(g, "k");
        assert!(!held(&c));

        // A fill whose lease is current stays.
        let lease = c.lease(g, "k");
        assert!(c.fill(store, g, "k", value("v2"), lease));
        assert_eq!(
            c.stores.main(g).recheck(g, "k").unwrap().value.unwrap(),
            "v2"
        );
    }
}
