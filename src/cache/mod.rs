//! The read-through core, without actix-web: how a key is read, top to bottom, as groupcache's
//! `Group.Get -> load -> getFromPeer | getLocally -> populateCache`.
//!
//! ```text
//! Cache::get(group, key)                      a client's get, on the HTTP worker's thread
//!   main store hit (this node owns the key)   -> value
//!   hot store hit (owned elsewhere, hot)      -> value
//!   Cache::load: LoaderActor (singleflight)   one flight per key; the others wait on it
//!     Loader::load, detached from every caller
//!       Loader::get_from_peer  owner is another member -> its peer port; keep a copy if hot;
//!                              its ring is newer -> catch up, retry once; fails -> locally
//!       Loader::locally        owner is me -> DbActor -> the source; populate the store
//! Cache::get_for_peer(group, key, epoch)      a peer's get: main store, else a local load;
//!                                             never forwarded (no A -> B -> A loops)
//! ```
//!
//! Leaves beside it: [`store`] (the byte-bounded moka store, used for both the main shard and
//! the hot cache), [`flights`] (the in-flight table, owned by `LoaderActor`), [`hot`] (the
//! hot-cache policy), [`group`] (groups and key validation), [`error`].

pub mod error;
pub mod flights;
pub mod group;
pub mod hot;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use bytes::Bytes;

use crate::actors::ask;
use crate::actors::db::{DbActor, Fetch};
use crate::actors::loader::{Load, LoaderActor};
use crate::peer::{PeerClient, PeerError};
use crate::raft::membership::MemberInfo;
use crate::ring::{Cluster, Route};
use crate::telemetry::metrics::Counters;
use error::{LoadError, SourceError};
use group::{Group, validate_key};
use hot::HotPolicy;
use store::{Entry, Store};

pub type LoadResult = Result<Bytes, LoadError>;

/// What the request path and every flight read and fill.
pub struct Core {
    /// Keys this node owns.
    pub main: Store,
    /// Copies of hot keys owned elsewhere (a frontend's whole budget).
    pub hot: Store,
    pub policy: HotPolicy,
    pub cluster: Arc<Cluster>,
    pub counters: Counters,
}

impl Core {
    /// A store's entry for the key, if it is of the group's current purge generation.
    fn lookup(&self, store: &Store, group: Group, key: &str) -> Option<Bytes> {
        let entry = store.get(group, key)?;
        if entry.generation == self.cluster.generation(group) {
            return Some(entry.value);
        }
        store.remove(group, key); // purged since it was filled
        None
    }

    /// Both stores again, for a key that was just missed (the recheck inside singleflight):
    /// between a request's miss and its `Load` reaching the loader, an earlier flight for the
    /// same key may have landed and filled the cache (groupcache's `load()` comment spells out
    /// this interleaving).
    pub fn recheck(&self, group: Group, key: &str) -> Option<Bytes> {
        let current = self.cluster.generation(group);
        [&self.main, &self.hot]
            .into_iter()
            .filter_map(|s| s.recheck(group, key))
            .find(|e| e.generation == current)
            .map(|e| e.value)
    }
}

/// The read-through cache of a node: what the HTTP handlers call.
pub struct Cache {
    pub core: Arc<Core>,
    /// Loaders, each owning the flights of the keys that hash to it.
    pub loaders: Vec<Addr<LoaderActor>>,
    /// Deadline of one client request that misses.
    pub request_timeout: Duration,
}

/// A peer's get answered: the value and how often peers ask this node for it.
pub struct PeerHit {
    pub value: Bytes,
    pub minute_qps: f64,
    /// The group's purge generation here, as of the answer.
    pub generation: u64,
}

impl Cache {
    /// A client's get: the main store, the hot store, then a load (from the owner, or from
    /// the source when this node owns the key).
    pub async fn get(&self, group: Group, key: &str) -> Result<Bytes, LoadError> {
        validate_key(key).map_err(LoadError::BadKey)?;
        let core = &self.core;
        let counters = core.counters.group(group);
        counters.gets.increment(1);
        if let Some(value) = core.lookup(&core.main, group, key) {
            counters.cache_hits.increment(1);
            return Ok(value);
        }
        if let Route::Remote(_) = core.cluster.route(key) {
            core.policy.requested_remote(group, key);
        }
        if let Some(value) = core.lookup(&core.hot, group, key) {
            counters.cache_hits.increment(1);
            counters.hot_cache_hits.increment(1);
            return Ok(value);
        }
        self.load(group, key, false).await
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
        validate_key(key).map_err(LoadError::BadKey)?;
        let core = &self.core;
        core.counters.group(group).server_requests.increment(1);
        let mine = core.cluster.epoch();
        if epoch.is_some_and(|e| e < mine) && core.cluster.route(key) != Route::Local {
            return Err(LoadError::NotOwner(mine));
        }
        let value = match core.lookup(&core.main, group, key) {
            Some(value) => value,
            None => self.load(group, key, true).await?,
        };
        Ok(PeerHit {
            value,
            minute_qps: core.policy.served_to_peer(group, key),
            generation: core.cluster.generation(group),
        })
    }

    /// Joins or opens the key's flight at its loader and waits for it, up to the deadline
    /// (the flight goes on for the other waiters).
    async fn load(&self, group: Group, key: &str, local_only: bool) -> LoadResult {
        let i = crc32fast::hash(key.as_bytes()) as usize % self.loaders.len();
        let rx = ask(&self.loaders[i], "loader", |reply| Load {
            group,
            key: key.to_owned(),
            local_only,
            reply,
        })?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Err(_) => Err(LoadError::Timeout),
            Ok(Err(_)) => Err(LoadError::Stopped),
            Ok(Ok(result)) => result,
        }
    }
}

/// What a flight does, cloned into each detached load task.
#[derive(Clone)]
pub struct Loader {
    pub core: Arc<Core>,
    pub db: Addr<DbActor>,
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

    /// The flight's body: from the owner, or from the source.
    pub async fn load(&self, group: Group, key: &str, peer: Option<Arc<str>>) -> LoadResult {
        match peer {
            Some(peer) => self.get_from_peer(group, key, &peer).await,
            None => self.locally(group, key, &self.core.main).await,
        }
    }

    async fn get_from_peer(&self, group: Group, key: &str, peer: &str) -> LoadResult {
        let core = &self.core;
        let counters = core.counters.group(group);
        let generation = core.cluster.generation(group);
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
                    let members = core.cluster.view().ring.members().len();
                    // An owner that has not applied a purge we have may answer with a value
                    // from before it: pass it on, keep no copy.
                    let current = answer.generation >= generation;
                    if current && core.policy.keep(group, key, answer.minute_qps, members) {
                        let entry = Entry {
                            value: answer.value.clone(),
                            generation,
                        };
                        self.populate(&core.hot, group, key, entry);
                    }
                    return Ok(answer.value);
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
                        None => return self.locally(group, key, &core.main).await,
                    }
                }
                Err(e) => {
                    // As groupcache: a failing owner does not fail the request; load here. The
                    // value goes to the hot cache, whose TTL bounds how long this copy can live.
                    counters.peer_errors.increment(1);
                    tracing::warn!(%peer, group = %group, key, error = %e, "peer load failed; loading locally");
                    return self.locally(group, key, &core.hot).await;
                }
            }
        }
    }

    /// Adopts the newer ring of `peer` (at epoch `theirs` or later), if it has one.
    async fn catch_up(&self, peer: &str, theirs: u64) {
        let cluster = &self.core.cluster;
        if cluster.epoch() >= theirs {
            return; // the local membership caught up meanwhile
        }
        match self.peers.ring_members(peer).await {
            Ok(ring) if ring.epoch > cluster.epoch() => {
                let members: Vec<&MemberInfo> = ring.members.iter().collect();
                if cluster.publish(ring.epoch, members, &ring.generations) {
                    tracing::info!(
                        epoch = ring.epoch,
                        from = peer,
                        "caught up with a newer ring"
                    );
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(%peer, error = %e, "could not fetch the newer ring"),
        }
    }

    /// Fetches from the source through `DbActor` and fills `into`.
    async fn locally(&self, group: Group, key: &str, into: &Store) -> LoadResult {
        let core = &self.core;
        let counters = core.counters.group(group);
        counters.loads.increment(1);
        let generation = core.cluster.generation(group);
        let rx = ask(&self.db, "source", |reply| Fetch {
            group,
            key: key.to_owned(),
            reply,
        })?;
        match rx.await.map_err(|_| LoadError::Stopped)? {
            Ok(Some(value)) if value.len() > self.max_value_bytes => {
                counters.local_load_errors.increment(1);
                Err(LoadError::Source(SourceError::Query(format!(
                    "the value is {} bytes, larger than --max-value-bytes {}",
                    value.len(),
                    self.max_value_bytes
                ))))
            }
            Ok(Some(value)) => {
                let entry = Entry {
                    value: value.clone(),
                    generation,
                };
                self.populate(into, group, key, entry);
                Ok(value)
            }
            Ok(None) => Err(LoadError::NotFound),
            Err(e) => {
                counters.local_load_errors.increment(1);
                Err(e.into())
            }
        }
    }

    /// Caches what was loaded, unless the group was purged while it loaded: a value read
    /// before a purge must not outlive it.
    fn populate(&self, store: &Store, group: Group, key: &str, entry: Entry) {
        if entry.generation == self.core.cluster.generation(group) {
            store.insert(group, key, entry);
        }
    }
}
