//! Per-key invalidation versions, the lease that closes the fill-versus-invalidate race.
//!
//! The race (Meta's "Cache made consistent", 2022; Facebook memcache's leases, NSDI 2013):
//!
//! ```text
//! load L starts, reads row v1 ... row updated to v2, committed ... invalidate(key) ... L fills v1
//! ```
//!
//! leaves v1 cached after the invalidation, possibly forever. Here every key hashes to one of
//! `BUCKETS` counters; an invalidation bumps the key's counter before it removes the entries,
//! a flight records the counter when it starts and fills only if it is unchanged when the load
//! lands, and the counter is part of the flight's key, so that a request after the invalidation
//! never joins the flight that began before it. Two keys sharing a counter only cost an extra
//! load (a fill refused that need not have been), never a stale value. Memory is fixed
//! (1.5 MiB: versions, feed transactions, times); nothing is evicted that a long load could still need.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock;
use crate::group::Group;

const BUCKETS: usize = 1 << 16;

pub struct Versions {
    buckets: Box<[AtomicU64]>,
    /// The newest transaction (xid) of the change feed that invalidated a key of the bucket: a
    /// copy from an owner that has not applied it yet is not kept.
    last_xid: Box<[AtomicU64]>,
    /// When (the cache's clock) a key of the bucket was last invalidated: a warm handoff takes
    /// no value its previous owner read before that (one that missed the DELETE holds it).
    bumped_ms: Box<[AtomicU64]>,
}

impl Default for Versions {
    fn default() -> Self {
        let counters = || (0..BUCKETS).map(|_| AtomicU64::new(0)).collect();
        Versions {
            buckets: counters(),
            last_xid: counters(),
            bumped_ms: counters(),
        }
    }
}

impl Versions {
    fn bucket(&self, group: Group, key: &str) -> usize {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), group.index() as u64);
        h as usize % BUCKETS
    }

    /// The key's version now: record it when a load starts.
    pub fn current(&self, group: Group, key: &str) -> u64 {
        self.buckets[self.bucket(group, key)].load(Ordering::Acquire)
    }

    /// Moves the key's version forward (before its entries are removed).
    pub fn bump(&self, group: Group, key: &str) {
        let b = self.bucket(group, key);
        self.bumped_ms[b].fetch_max(clock::now_ms() + 1, Ordering::AcqRel);
        self.buckets[b].fetch_add(1, Ordering::AcqRel);
    }

    /// Moves it forward for a change of transaction `xid` from the feed.
    pub fn bump_at(&self, group: Group, key: &str, xid: u64) {
        let b = self.bucket(group, key);
        self.last_xid[b].fetch_max(xid, Ordering::AcqRel);
        self.bumped_ms[b].fetch_max(clock::now_ms() + 1, Ordering::AcqRel);
        self.buckets[b].fetch_add(1, Ordering::AcqRel);
    }

    /// When the key (or a key sharing its bucket) was last invalidated, plus 1 ms; 0: never.
    pub fn bumped_ms(&self, group: Group, key: &str) -> u64 {
        self.bumped_ms[self.bucket(group, key)].load(Ordering::Acquire)
    }

    /// The newest feed transaction that invalidated the key (or a key sharing its bucket).
    pub fn last_xid(&self, group: Group, key: &str) -> u64 {
        self.last_xid[self.bucket(group, key)].load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::Groups;

    #[test]
    fn a_bump_moves_only_the_key_forward() {
        let v = Versions::default();
        let g = Groups::demo().get("products").unwrap();
        let before = v.current(g, "1");
        let other = v.current(g, "2");
        v.bump(g, "1");
        assert_eq!(v.current(g, "1"), before + 1);
        // Another key moves only if it shares the bucket (1 in 65,536).
        assert!(v.current(g, "2") == other || v.current(g, "2") == other + 1);
    }
}
