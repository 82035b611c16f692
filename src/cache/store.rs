//! The byte-bounded store of a node's cached values: a moka cache keyed by (group, key), used
//! for both the main shard (keys this node owns) and the hot cache (keys it does not).
//!
//! moka is itself concurrent (lock-free reads, striped writes), so a `Store` is a cheap,
//! cloneable handle that the request path reads directly from the HTTP worker's thread; the
//! `ShardActor` owns its maintenance and statistics. (Reading through the actor's mailbox cost
//! a cross-thread round trip per hit: 0.76x a bare handler's throughput against 0.86x when
//! measured with `load/bench-hit.sh`; see the README.)

use std::time::Duration;

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::sync::Cache;

use crate::cache::group::Group;

/// Bytes moka and the allocator spend per entry beyond key and value: the entry's Arcs, its
/// access-order deque node, its hash-table bucket, deferred frees, allocator slack. Measured by
/// `load/bench-hit.sh` (about 410 bytes with jemalloc for ~95-byte entries: 503 bytes of RSS
/// per entry against 94 of payload). Counting it makes `--cache-bytes` bound the memory the
/// cache really takes, not just its payload.
pub const ENTRY_OVERHEAD: u32 = 400;

/// A cached value and what the read path checks before it answers with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    /// The group's purge generation when the value was loaded: an entry of an older
    /// generation is a miss.
    pub generation: u64,
}

#[derive(Clone)]
pub struct Store {
    cache: Cache<Box<str>, Entry>,
    name: &'static str,
}

/// The composite key: one byte for the group, then the key. Group names never clash.
fn cache_key(group: Group, key: &str) -> Box<str> {
    let mut s = String::with_capacity(key.len() + 1);
    s.push((b'0' + group.index() as u8) as char);
    s.push_str(key);
    s.into_boxed_str()
}

/// Weight of an entry in bytes: key + value + `ENTRY_OVERHEAD`.
#[allow(clippy::borrowed_box)] // moka hands the key type by reference
fn weigh(key: &Box<str>, entry: &Entry) -> u32 {
    entry_weight(key.len(), entry.value.len())
}

/// The bytes an entry of `key_len` (group byte included) and `value_len` counts against
/// `--cache-bytes`; the benchmark sizes caches with it.
pub fn entry_weight(key_len: usize, value_len: usize) -> u32 {
    u32::try_from(key_len + value_len)
        .unwrap_or(u32::MAX)
        .saturating_add(ENTRY_OVERHEAD)
}

fn group_of(cache_key: &str) -> &'static str {
    cache_key
        .bytes()
        .next()
        .and_then(|b| Group::ALL.get(b.wrapping_sub(b'0') as usize))
        .map_or("unknown", |g| g.name())
}

impl Store {
    /// A cache of at most `max_bytes` (key + value + `ENTRY_OVERHEAD` per entry); with `ttl`,
    /// entries also expire that long after they were written (the hot cache uses this).
    pub fn new(name: &'static str, max_bytes: u64, ttl: Option<Duration>) -> Self {
        let mut builder = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(weigh)
            .eviction_listener(move |k: std::sync::Arc<Box<str>>, _v, cause| {
                if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                    metrics::counter!("geecache_cache_evictions_total",
                        "group" => group_of(&k), "cache" => name)
                    .increment(1);
                }
            });
        if let Some(ttl) = ttl {
            builder = builder.time_to_live(ttl);
        }
        Store {
            cache: builder.build(),
            name,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn get(&self, group: Group, key: &str) -> Option<Entry> {
        self.cache.get(&*cache_key(group, key))
    }

    /// A second look for a key that was just missed (the loader's re-check inside a flight):
    /// a read only when it hits. A plain `get` would count the miss again in moka's popularity
    /// sketch, and TinyLFU would then admit cold keys over warm ones (measured: 1.2 points of
    /// hit rate under Zipf 0.99, `load/bench.sh`).
    pub fn recheck(&self, group: Group, key: &str) -> Option<Entry> {
        let key = cache_key(group, key);
        if self.cache.contains_key(&*key) {
            self.cache.get(&*key)
        } else {
            None
        }
    }

    pub fn insert(&self, group: Group, key: &str, entry: Entry) {
        self.cache.insert(cache_key(group, key), entry);
    }

    pub fn remove(&self, group: Group, key: &str) {
        self.cache.invalidate(&*cache_key(group, key));
    }

    /// Runs moka's pending maintenance (evictions, expirations) and reports (bytes, items).
    pub fn maintain(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.weighted_size(), self.cache.entry_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(v: &'static [u8]) -> Entry {
        Entry {
            value: Bytes::from_static(v),
            generation: 0,
        }
    }

    #[test]
    fn recheck_reads_only_what_is_there() {
        let s = Store::new("main", 1 << 20, None);
        assert_eq!(s.recheck(Group::Products, "1"), None);
        s.insert(Group::Products, "1", entry(b"v"));
        assert_eq!(s.recheck(Group::Products, "1"), Some(entry(b"v")));
        assert_eq!(
            s.recheck(Group::Scores, "1"),
            None,
            "groups do not share keys"
        );
    }

    #[test]
    fn groups_are_separate_namespaces() {
        let s = Store::new("main", 1 << 20, None);
        s.insert(Group::Scores, "1", entry(b"a"));
        assert_eq!(s.get(Group::Scores, "1").unwrap().value, "a");
        assert_eq!(s.get(Group::Products, "1"), None);
        assert_eq!(group_of(&cache_key(Group::Products, "x")), "products");
    }

    #[test]
    fn stays_within_its_byte_bound() {
        let bound = 64 * 1024;
        let s = Store::new("main", bound, None);
        for i in 0..10_000 {
            s.insert(
                Group::Products,
                &i.to_string(),
                Entry {
                    value: Bytes::from(vec![b'x'; 100]),
                    generation: 0,
                },
            );
        }
        let (bytes, items) = s.maintain();
        assert!(bytes <= bound, "{bytes} > {bound}");
        assert!(items > 0 && items < 10_000, "{items}");
    }

    #[test]
    fn remove_drops_one_key() {
        let s = Store::new("main", 1 << 20, None);
        s.insert(Group::Scores, "Tom", entry(b"630"));
        s.remove(Group::Scores, "Tom");
        assert_eq!(s.get(Group::Scores, "Tom"), None);
    }
}
