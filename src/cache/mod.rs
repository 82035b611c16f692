//! The read-through core, without actix-web: how a key is read, top to bottom, as groupcache's
//! `Group.Get -> load -> getFromPeer | getLocally -> populateCache`.
//!
//! ```text
//! Cache::get(group, key)                      a client's get, on the HTTP worker's thread
//!   key_pattern refuses it                    -> 404, no query
//!   main store: fresh                         -> HIT (a value, or a cached "no such row")
//!               stale, within revalidate      -> STALE at once; one reload in the background
//!               stale, within stale-if-error  -> kept as the fallback of the load below
//!   hot store: fresh (owned elsewhere, hot)   -> HIT
//!   Cache::load: LoaderActor (singleflight)   one flight per key; the others wait on it
//!     Loader::load, detached from every caller, on the loader's thread
//!       Loader::as_owner       owner is me, and the ring just moved the key here -> the
//!                              handoff store, else a peek at its previous owner (`handoff`)
//!       Loader::get_from_peer  owner is another member -> its peer port; keep a copy if hot;
//!                              its ring is newer -> catch up, retry once; fails -> load_from_source
//!       Loader::load_from_source    owner is me -> the source, on the loader's own lane of it
//!                              (its connections live on that thread); populate the store,
//!                              unless the key was invalidated or purged while it loaded
//!   the load failed, a fallback is kept       -> STALE (stale-if-error)
//! Cache::get_for_peer(group, key, epoch)      a peer's get: the same on the main store, then
//!                                             a local load; never forwarded
//! Cache::delete(group, key)                   invalidate here, at the owner, then everywhere
//! ```
//!
//! [`Core`] (`shared.rs`) is what every request and flight reads and fills; [`Core::fill`] is
//! the one way into a store. Beside it: [`store`] (the byte-bounded moka store), [`flights`]
//! (the in-flight table, owned by `LoaderActor`), `versions` (per-key leases against the fill
//! race), [`hot`] (the hot-cache policy), [`handoff`] (values from the previous owner of a
//! key the ring moved).

pub mod flights;
pub mod handoff;
pub mod hot;
mod shared;
pub mod store;
pub mod versions;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;

use crate::clock;
use crate::error::{LoadError, SourceError};
use crate::group::{Group, validate_key};
use crate::peer::{PeerClient, PeerError};
use crate::ring::Route;
use crate::source::Source;
use store::{Entry, Store};

pub use shared::{Core, FeedState, Lease, Stores};
pub(crate) use shared::{Found, fresh_left};

/// Where a miss goes: one flight per key, owned by the loader the key hashes to (the loader
/// actors, `actors::loader::Loaders`, whose flights run [`Loader::load`]). A trait, so that the
/// read path does not name the actors that serve it: they sit above the cache and call into it.
pub trait Flights: Send + Sync {
    /// Joins the key's flight, or opens one; the receiver gets its result. `Overloaded` when
    /// the loader's mailbox is full, `Stopped` when the loader is gone.
    fn join(
        &self,
        group: Group,
        key: &str,
        local_only: bool,
    ) -> Result<tokio::sync::oneshot::Receiver<LoadResult>, LoadError>;
}

/// What a flight hands its waiters: a value, or why there is none (`NotFound` included).
pub type LoadResult = Result<Loaded, LoadError>;

/// A value a flight loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub value: Bytes,
    /// How long ago the source answered it: 0 when this flight asked the source, the owner's
    /// age when it came from the owner's store.
    pub age_ms: u64,
    /// How long it stays fresh (`None`: no ttl).
    pub fresh_ms: Option<u64>,
    /// The owner answered it stale (revalidating, or its reload failed).
    pub stale: bool,
}

/// How a client answer came about (`X-Cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// From this node's memory, fresh.
    Hit,
    /// Loaded for this request (from the source, or from the owner).
    Miss,
    /// A value past its ttl: within stale-while-revalidate, or stale-if-error.
    Stale,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
        }
    }
}

/// A client's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub result: Result<Bytes, LoadError>,
    pub status: CacheStatus,
    /// How long ago the source answered, for values that came from a cache.
    pub age_ms: Option<u64>,
}

impl Reply {
    fn miss(result: Result<Bytes, LoadError>) -> Reply {
        Reply {
            result,
            status: CacheStatus::Miss,
            age_ms: None,
        }
    }

    fn from_entry(entry: Entry, status: CacheStatus, now: u64) -> Reply {
        let age_ms = Some(entry.age_ms(now));
        Reply {
            result: entry.value.ok_or(LoadError::NotFound),
            status,
            age_ms,
        }
    }
}

/// A peer's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerHit {
    pub loaded: Loaded,
    /// How often peers ask this node for the key.
    pub minute_qps: f64,
    /// The group's purge generation here, as of the answer.
    pub generation: u64,
}

/// What a DELETE reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// Nodes (this one included) and frontends that dropped the key.
    pub confirmed: usize,
    /// Peer URLs that could not be told.
    pub unreachable: Vec<String>,
}

/// The read-through cache of a node: what the HTTP handlers call.
pub struct Cache {
    pub core: Arc<Core>,
    /// Loaders, each owning the flights of the keys that hash to it.
    pub loaders: Arc<dyn Flights>,
    /// Deadline of one client request that misses.
    pub request_timeout: Duration,
    /// Tells other nodes and frontends about a DELETE.
    pub peers: Arc<PeerClient>,
    /// Frontends that follow this member's ring, by peer URL (DELETEs reach them too).
    pub frontends: Arc<crate::ring::Frontends>,
}

impl Cache {
    /// A client's get: the main store, the hot store, then a load (from the owner, or from
    /// the source when this node owns the key), with the group's freshness rules.
    pub async fn get(&self, group: Group, key: &str) -> Reply {
        if let Err(e) = validate_key(key) {
            return Reply::miss(Err(e.into()));
        }
        let core = &self.core;
        let counters = core.counters.group(group);
        counters.gets.increment(1);
        if !group.accepts(key) {
            return Reply::miss(Err(LoadError::NotFound));
        }
        let now = clock::now_ms();
        let mut fallback = None;
        match core.find(core.stores.main(group), group, key, now) {
            Found::Fresh(entry) => {
                counters.cache_hits.increment(1);
                return Reply::from_entry(entry, CacheStatus::Hit, now);
            }
            Found::Stale(entry) if self.revalidates(group, &entry, now) => {
                counters.stale_served.increment(1);
                self.revalidate(group, key, false);
                return Reply::from_entry(entry, CacheStatus::Stale, now);
            }
            Found::Stale(entry) => fallback = Some(entry),
            Found::Absent => {}
        }
        if !core.cluster.owns(key) {
            core.policy.requested_remote(group, key);
        }
        if let Found::Fresh(entry) = core.find(core.stores.hot(group), group, key, now) {
            counters.cache_hits.increment(1);
            counters.hot_cache_hits.increment(1);
            return Reply::from_entry(entry, CacheStatus::Hit, now);
        }
        match self.load(group, key, false).await {
            Ok(l) => Reply {
                status: if l.stale {
                    CacheStatus::Stale
                } else {
                    CacheStatus::Miss
                },
                age_ms: (l.age_ms > 0).then_some(l.age_ms),
                result: Ok(l.value),
            },
            Err(e) => match fallback {
                Some(entry) if e.is_transient() => {
                    counters.stale_served.increment(1);
                    Reply::from_entry(entry, CacheStatus::Stale, clock::now_ms())
                }
                _ => Reply::miss(Err(e)),
            },
        }
    }

    /// Whether a stale entry is still within stale-while-revalidate.
    fn revalidates(&self, group: Group, entry: &Entry, now: u64) -> bool {
        let window = clock::ms(group.def().freshness.stale_while_revalidate);
        now < entry.fresh_until_ms.saturating_add(window)
    }

    /// Starts the key's reload through singleflight without waiting for it (all the stale
    /// answers meanwhile join the same one flight).
    fn revalidate(&self, group: Group, key: &str, local_only: bool) {
        let _ = self.loaders.join(group, key, local_only);
    }

    /// A peer's get: this node's main store, then a load from this node's source; never
    /// forwarded. A caller on an older ring (`epoch`) that asks for a key this node does not
    /// own under its own newer ring is told so instead, so that exactly the owner loads.
    pub async fn get_for_peer(
        &self,
        group: Group,
        key: &str,
        epoch: Option<u64>,
    ) -> Result<PeerHit, LoadError> {
        validate_key(key)?;
        let core = &self.core;
        let counters = core.counters.group(group);
        counters.server_requests.increment(1);
        let mine = core.cluster.epoch();
        if epoch.is_some_and(|e| e < mine) && !core.cluster.owns(key) {
            return Err(LoadError::NotOwner(mine));
        }
        if !group.accepts(key) {
            return Err(LoadError::NotFound);
        }
        let now = clock::now_ms();
        let stale = |entry: Entry, now: u64| Loaded {
            age_ms: entry.age_ms(now),
            fresh_ms: Some(0),
            stale: true,
            value: entry.value.unwrap_or_default(),
        };
        let loaded = match core.find(core.stores.main(group), group, key, now) {
            Found::Fresh(entry) => {
                let (age_ms, fresh_ms) = (entry.age_ms(now), fresh_left(&entry, now));
                let value = entry.value.ok_or(LoadError::NotFound)?;
                Loaded {
                    value,
                    age_ms,
                    fresh_ms,
                    stale: false,
                }
            }
            Found::Stale(entry) if self.revalidates(group, &entry, now) => {
                counters.stale_served.increment(1);
                self.revalidate(group, key, true);
                stale(entry, now)
            }
            found => match (self.load(group, key, true).await, found) {
                (Ok(loaded), _) => loaded,
                (Err(e), Found::Stale(entry)) if e.is_transient() => {
                    counters.stale_served.increment(1);
                    stale(entry, clock::now_ms())
                }
                (Err(e), _) => return Err(e),
            },
        };
        Ok(PeerHit {
            loaded,
            minute_qps: core.policy.served_to_peer(group, key),
            generation: core.cluster.generation(group),
        })
    }

    /// Joins or opens the key's flight at its loader and waits for it, up to the deadline
    /// (the flight goes on for the other waiters).
    async fn load(&self, group: Group, key: &str, local_only: bool) -> LoadResult {
        let rx = self.loaders.join(group, key, local_only)?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Err(_) => Err(LoadError::Timeout),
            Ok(Err(_)) => Err(LoadError::Stopped),
            Ok(Ok(result)) => result,
        }
    }

    /// `DELETE`: drops the key here, then at its owner, then on every other member and every
    /// frontend that follows this member (and on members that left within the handoff's grace
    /// window), and says who confirmed. The owner goes before the
    /// others: a node told first could otherwise reload the old value from an owner not yet
    /// told (a copy the others' versions then cannot refuse, as it is fetched after them).
    pub async fn delete(&self, group: Group, key: &str) -> Result<Deleted, LoadError> {
        validate_key(key)?;
        let core = &self.core;
        core.invalidate(group, key);
        let mut done = Deleted {
            confirmed: 1,
            unreachable: Vec::new(),
        };
        let me = core.cluster.self_name().unwrap_or_default().to_owned();
        let owner = match core.cluster.route(key) {
            Route::Remote(owner) => Some(owner.to_string()),
            Route::Local => None,
        };
        let tell = |peer: String| async move {
            let ok = self.peers.invalidate(&peer, group, key).await.is_ok();
            (peer, ok)
        };
        let mut record = |(peer, ok): (String, bool)| {
            if ok {
                done.confirmed += 1;
            } else {
                done.unreachable.push(peer);
            }
        };
        if let Some(owner) = &owner {
            record(tell(owner.clone()).await);
        }
        let view = core.cluster.view();
        let others = view
            .ring
            .members()
            .iter()
            .map(|m| m.name.to_string())
            .chain(self.frontends.current())
            .filter(|p| *p != me && Some(p) != owner.as_ref());
        // Nodes that left within the handoff's grace window may still answer peeks while they
        // drain: told too, without waiting (one that has exited may cost a connect timeout,
        // and is not a failure of this DELETE). A new owner does not depend on it: it takes no
        // peeked value read before its own invalidation of the key (`handoff::may_keep`).
        let grace = core.handoff_grace_ms.load(Ordering::Relaxed);
        let departed: Vec<String> = core
            .cluster
            .departed(grace)
            .iter()
            .map(|p| p.to_string())
            .filter(|p| *p != me && Some(p) != owner.as_ref())
            .collect();
        if !departed.is_empty() {
            let (peers, key) = (Arc::clone(&self.peers), key.to_owned());
            tokio::spawn(async move {
                let tells = departed.iter().map(|p| peers.invalidate(p, group, &key));
                join_all(tells).await;
            });
        }
        let told = join_all(others.map(tell)).await;
        for result in told {
            record(result);
        }
        Ok(done)
    }
}

/// What a flight does, cloned into each detached load task.
#[derive(Clone)]
pub struct Loader {
    pub core: Arc<Core>,
    /// The source, and this loader's lane of it (its own connections).
    pub source: Arc<dyn Source>,
    pub lane: usize,
    pub peers: Arc<PeerClient>,
    /// Values larger than this are refused (and not cached), as peers refuse them.
    pub max_value_bytes: usize,
}

impl Loader {
    /// The owner to ask, or `None` to load from this node's source.
    pub fn peer_for(&self, key: &str, local_only: bool) -> Option<Arc<str>> {
        match self.core.cluster.route(key) {
            Route::Remote(peer) if !local_only => Some(peer),
            _ => None,
        }
    }

    /// The key's lease now.
    pub fn lease(&self, group: Group, key: &str) -> Lease {
        self.core.lease(group, key)
    }

    /// The flight's body: from the owner, or as the owner.
    pub async fn load(
        &self,
        group: Group,
        key: &str,
        peer: Option<Arc<str>>,
        lease: Lease,
    ) -> LoadResult {
        match peer {
            Some(peer) => self.get_from_peer(group, key, &peer, lease).await,
            None => self.as_owner(group, key, lease).await,
        }
    }

    /// A load of a key this node owns: from its previous owner if the ring just moved it here
    /// and that one still holds it fresh (a warm handoff), else from the source.
    async fn as_owner(&self, group: Group, key: &str, lease: Lease) -> LoadResult {
        if let Some(loaded) = handoff::from_handoff_store(&self.core, group, key, lease) {
            return Ok(loaded);
        }
        if let Some(loaded) =
            handoff::ask_previous_owner(&self.core, &self.peers, group, key, lease).await
        {
            return Ok(loaded);
        }
        self.load_from_source(group, key, self.core.stores.main(group), lease)
            .await
    }

    async fn get_from_peer(&self, group: Group, key: &str, peer: &str, lease: Lease) -> LoadResult {
        let core = &self.core;
        let counters = core.counters.group(group);
        let mut peer: Arc<str> = peer.into();
        let mut retried = false;
        loop {
            match self
                .peers
                .fetch(&peer, group, key, core.cluster.epoch())
                .await
            {
                Ok(answer) => {
                    counters.peer_loads.increment(1);
                    if !answer.content_type.is_empty() {
                        group.learn_content_type(&answer.content_type);
                    }
                    let loaded = Loaded {
                        value: answer.value,
                        age_ms: answer.age_ms,
                        fresh_ms: answer.fresh_ms,
                        stale: answer.stale,
                    };
                    let members = core.cluster.view().ring.members().len();
                    // No copy of a stale answer, nor of one from an owner that has not yet
                    // applied a purge, or a change from the feed, that we have (it may be
                    // from before it).
                    let keep = !loaded.stale
                        && core.caught_up(group, key, answer.feed_xmin)
                        && answer.generation >= lease.generation
                        && core.policy.keep(group, key, answer.minute_qps, members);
                    if keep {
                        self.keep_copy(group, key, &loaded, lease);
                    }
                    return Ok(loaded);
                }
                Err(PeerError::NotFound) => {
                    counters.peer_loads.increment(1);
                    return Err(LoadError::NotFound);
                }
                // The owner's ring is newer than ours: fetch it and ask the key's owner under
                // it, once. Not a peer error: the ring moved on, nothing failed.
                Err(PeerError::StaleEpoch(theirs)) if !retried => {
                    retried = true;
                    counters.stale_epoch_retries.increment(1);
                    self.catch_up(&peer, theirs).await;
                    match self.peer_for(key, false) {
                        Some(owner) => peer = owner,
                        None => return self.as_owner(group, key, lease).await,
                    }
                }
                Err(e) => {
                    // As groupcache: a failing owner does not fail the request; load here. The
                    // value goes to the hot cache, whose TTL bounds how long this copy can live.
                    counters.peer_errors.increment(1);
                    static WARN: crate::telemetry::limit::Every =
                        crate::telemetry::limit::Every::second();
                    if let Some(held_back) = WARN.admit(clock::now_ms()) {
                        tracing::warn!(%peer, group = %group, key, error = %e, held_back, "peer load failed; loading locally");
                    }
                    let hot = core.stores.hot(group);
                    return self.load_from_source(group, key, hot, lease).await;
                }
            }
        }
    }

    /// Keeps a hot copy of an owner's answer: it lives as long as the owner's value stays
    /// fresh, and at most `hot_ttl`.
    fn keep_copy(&self, group: Group, key: &str, loaded: &Loaded, lease: Lease) {
        let now = clock::now_ms();
        let hot_ms = clock::ms(self.core.hot_ttl);
        let fresh = loaded.fresh_ms.map_or(hot_ms, |f| f.min(hot_ms));
        let entry = Entry {
            value: Some(loaded.value.clone()),
            generation: lease.generation,
            filled_ms: now.saturating_sub(loaded.age_ms),
            fresh_until_ms: now.saturating_add(fresh),
        };
        self.populate(self.core.stores.hot(group), group, key, entry, lease);
    }

    /// Adopts the newer ring of `peer` (at epoch `theirs` or later), if it has one.
    async fn catch_up(&self, peer: &str, theirs: u64) {
        let cluster = &self.core.cluster;
        if cluster.epoch() >= theirs {
            return; // the local membership caught up meanwhile
        }
        match self.peers.ring_members(peer, None).await {
            Ok(ring) if cluster.publish(ring.epoch, &ring.members, &ring.generations) => {
                tracing::info!(
                    epoch = ring.epoch,
                    from = peer,
                    "caught up with a newer ring"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(%peer, error = %e, "could not fetch the newer ring"),
        }
    }

    /// Fetches from the source on this loader's lane, on this thread, and fills `into` (a "no
    /// such row" too, when the group remembers those).
    async fn load_from_source(
        &self,
        group: Group,
        key: &str,
        into: &Store,
        lease: Lease,
    ) -> LoadResult {
        let counters = self.core.counters.group(group);
        counters.loads.increment(1);
        let f = group.def().freshness;
        let started = std::time::Instant::now();
        // The entry's fill time is when the read began, not when it landed: a warm handoff
        // compares it with invalidations (`handoff::may_keep`), and the row may have changed during
        // the query.
        let started_ms = clock::now_ms();
        let fetched = self.source.fetch(self.lane, group, key).await;
        let outcome = match &fetched {
            Ok(Some(_)) => "found",
            Ok(None) => "not_found",
            Err(SourceError::Timeout(_)) => "timeout",
            Err(SourceError::Unavailable(_)) => "unavailable",
            Err(SourceError::Query(_)) => "error",
            Err(SourceError::TooLarge(_)) => "too_large",
        };
        metrics::histogram!("geecache_source_duration_seconds",
            "group" => group.name(), "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
        if let Err(e) = &fetched {
            // One line a second at most, with how many were held back: a client asking for
            // keys that fail (or a database that is down) must not flood the log.
            static WARN: crate::telemetry::limit::Every = crate::telemetry::limit::Every::second();
            if let Some(held_back) = WARN.admit(clock::now_ms()) {
                tracing::warn!(group = %group, key, error = %e, held_back, "source fetch failed");
            }
        }
        match fetched {
            Ok(Some(value)) if value.len() > self.max_value_bytes => {
                counters.local_load_errors.increment(1);
                Err(LoadError::Source(SourceError::TooLarge(format!(
                    "the value is {} bytes, larger than --max-value-bytes {}",
                    value.len(),
                    self.max_value_bytes
                ))))
            }
            Ok(Some(value)) => {
                let ttl = f.ttl.map(|t| clock::jittered(t, f.ttl_jitter));
                let entry = Entry::loaded(Some(value.clone()), lease.generation, started_ms, ttl);
                let fresh_ms = ttl.map(clock::ms);
                self.populate(into, group, key, entry, lease);
                Ok(Loaded {
                    value,
                    age_ms: 0,
                    fresh_ms,
                    stale: false,
                })
            }
            Ok(None) => {
                if !f.negative_ttl.is_zero() {
                    let entry =
                        Entry::loaded(None, lease.generation, started_ms, Some(f.negative_ttl));
                    self.populate(into, group, key, entry, lease);
                }
                Err(LoadError::NotFound)
            }
            Err(e) => {
                counters.local_load_errors.increment(1);
                Err(e.into())
            }
        }
    }

    /// Caches what was loaded, unless the key was invalidated or its group purged while it
    /// loaded: a value read before a change must not outlive it (see [`versions`]).
    fn populate(&self, store: &Store, group: Group, key: &str, entry: Entry, lease: Lease) {
        self.core.fill(store, group, key, entry, lease);
    }
}
