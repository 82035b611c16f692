//! The byte-bounded cache of one node: a moka cache keyed by (group, key).
//!
//! moka is itself concurrent (lock-free reads, striped writes), so a `Shard` is a cheap,
//! cloneable handle. `ShardActor` owns its maintenance and statistics; the request path may
//! read through the handle directly (see `HitPath` in the config for why).

use std::time::Duration;

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::sync::Cache;

use crate::groups::Group;

/// Bytes moka and the allocator spend per entry beyond key and value: the entry's Arcs, its
/// access-order deque node, its hash-table bucket, deferred frees, allocator slack. Measured by
/// `load/bench-hit.sh` (about 410 bytes with jemalloc for ~95-byte entries: 503 bytes of RSS
/// per entry against 94 of payload). Counting it makes `--cache-bytes` bound the memory the
/// cache really takes, not just its payload.
pub const ENTRY_OVERHEAD: u32 = 400;

#[derive(Clone)]
pub struct Shard {
    cache: Cache<Box<str>, Bytes>,
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
fn weigh(key: &Box<str>, value: &Bytes) -> u32 {
    entry_weight(key.len(), value.len())
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

impl Shard {
    /// A cache of at most `max_bytes` (key + value + `ENTRY_OVERHEAD` per entry); with `ttl`,
    /// entries also expire that long after they were written (the hot cache uses this).
    pub fn new(name: &'static str, max_bytes: u64, ttl: Option<Duration>) -> Self {
        let mut builder = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(weigh)
            .support_invalidation_closures()
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
        Shard {
            cache: builder.build(),
            name,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn get(&self, group: Group, key: &str) -> Option<Bytes> {
        self.cache.get(&*cache_key(group, key))
    }

    /// A second look for a key that was just missed (the loader's re-check inside a flight):
    /// a read only when it hits. A plain `get` would count the miss again in moka's popularity
    /// sketch, and TinyLFU would then admit cold keys over warm ones (measured: 1.2 points of
    /// hit rate under Zipf 0.99, `load/bench.sh`).
    pub fn recheck(&self, group: Group, key: &str) -> Option<Bytes> {
        let key = cache_key(group, key);
        if self.cache.contains_key(&*key) {
            self.cache.get(&*key)
        } else {
            None
        }
    }

    pub fn insert(&self, group: Group, key: &str, value: Bytes) {
        self.cache.insert(cache_key(group, key), value);
    }

    pub fn remove(&self, group: Group, key: &str) {
        self.cache.invalidate(&*cache_key(group, key));
    }

    /// Drops every entry of a group (lazily: moka removes them in its maintenance).
    pub fn purge_group(&self, group: Group) {
        let tag = (b'0' + group.index() as u8) as char;
        // Only fails when invalidation closures are not enabled, and they are.
        let _ = self
            .cache
            .invalidate_entries_if(move |k, _| k.starts_with(tag));
    }

    /// Runs moka's pending maintenance (evictions, expirations) and reports (bytes, items).
    pub fn maintain(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.weighted_size(), self.cache.entry_count())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn recheck_reads_only_what_is_there() {
        let s = Shard::new("main", 1 << 20, None);
        assert_eq!(s.recheck(Group::Products, "1"), None);
        s.insert(Group::Products, "1", Bytes::from_static(b"v"));
        assert_eq!(
            s.recheck(Group::Products, "1"),
            Some(Bytes::from_static(b"v"))
        );
        assert_eq!(
            s.recheck(Group::Scores, "1"),
            None,
            "groups do not share keys"
        );
    }
    use super::*;

    #[test]
    fn groups_are_separate_namespaces() {
        let s = Shard::new("main", 1 << 20, None);
        s.insert(Group::Scores, "1", Bytes::from_static(b"a"));
        assert_eq!(s.get(Group::Scores, "1").unwrap(), "a");
        assert_eq!(s.get(Group::Products, "1"), None);
        assert_eq!(group_of(&cache_key(Group::Products, "x")), "products");
        s.purge_group(Group::Scores);
        s.maintain();
        assert_eq!(s.get(Group::Scores, "1"), None);
    }

    #[test]
    fn stays_within_its_byte_bound() {
        let bound = 64 * 1024;
        let s = Shard::new("main", bound, None);
        for i in 0..10_000 {
            s.insert(
                Group::Products,
                &i.to_string(),
                Bytes::from(vec![b'x'; 100]),
            );
        }
        let (bytes, items) = s.maintain();
        assert!(bytes <= bound, "{bytes} > {bound}");
        assert!(items > 0 && items < 10_000, "{items}");
    }

    #[test]
    fn remove_drops_one_key() {
        let s = Shard::new("main", 1 << 20, None);
        s.insert(Group::Scores, "Tom", Bytes::from_static(b"630"));
        s.remove(Group::Scores, "Tom");
        assert_eq!(s.get(Group::Scores, "Tom"), None);
    }
}
