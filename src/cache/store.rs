//! The byte-bounded store of a node's cached answers: a moka cache keyed by (group, key), used
//! for the main shard (keys this node owns), the hot cache (keys it does not), and for groups
//! with a budget of their own, one pair of each per group.
//!
//! moka is itself concurrent (lock-free reads, striped writes), so a `Store` is a cheap,
//! cloneable handle that the request path reads directly from the HTTP worker's thread; the
//! `ShardActor` owns its maintenance and statistics. (Reading through the actor's mailbox would
//! cost every hit a cross-thread round trip.)

use std::time::Duration;

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::sync::Cache;

use crate::group::{Group, Groups};

/// Bytes moka and the allocator spend per entry beyond key and value: the entry's Arcs, its
/// access-order deque node, its hash-table bucket, deferred frees, allocator slack. Measured by
/// `load/bench.sh hit` (about 410 bytes with jemalloc for ~95-byte entries: 503 bytes of RSS
/// per entry against 94 of payload). Counting it makes `--cache-bytes` bound the memory the
/// cache really takes, not just its payload.
pub const ENTRY_OVERHEAD: u32 = 400;

/// The hash of moka's table and sketch: foldhash, seeded at random per process (keys come from
/// clients), a few times cheaper than std's SipHash, which was 4 % of a miss's CPU in `perf`.
type Hasher = foldhash::fast::RandomState;

/// The most entries a store can ever hold is `max_bytes / ENTRY_OVERHEAD`; moka's hash table
/// is sized for that many at startup (capped at 2^26), so that it never grows. A table that
/// grows is rehashed in one go by the insert that crossed the threshold, which holds that HTTP
/// worker for tens of milliseconds at a million entries, a spike in the miss p99 at every
/// doubling. The price is about 50
/// bytes of RSS per possible entry taken at startup (66 MB for `--cache-bytes 512MiB`), memory
/// that `ENTRY_OVERHEAD` already counts for a full store of small entries.
fn table_entries(max_bytes: u64) -> usize {
    (max_bytes / u64::from(ENTRY_OVERHEAD)).min(1 << 26) as usize
}

/// A cached answer and what the read path checks before it answers with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value, or `None`: the source has no such row (negative caching).
    pub value: Option<Bytes>,
    /// The group's purge generation when it was loaded: an entry of an older one is a miss.
    pub generation: u64,
    /// When the read from the source began (the owner's, for a copy), in `clock::now_ms`.
    pub filled_ms: u64,
    /// Fresh until then (`u64::MAX`: no ttl); after it, stale within the group's windows.
    pub fresh_until_ms: u64,
}

impl Entry {
    /// A value just loaded, fresh for `ttl` (`None`: no ttl).
    pub fn loaded(value: Option<Bytes>, generation: u64, now: u64, ttl: Option<Duration>) -> Entry {
        Entry {
            value,
            generation,
            filled_ms: now,
            fresh_until_ms: ttl.map_or(u64::MAX, |t| now.saturating_add(super::clock::ms(t))),
        }
    }

    pub fn age_ms(&self, now: u64) -> u64 {
        now.saturating_sub(self.filled_ms)
    }
}

#[derive(Clone)]
pub struct Store {
    cache: Cache<Box<str>, Entry, Hasher>,
    name: &'static str,
    /// The group whose budget this is; `None`: the node's shared store.
    owner: Option<Group>,
}

/// The composite key: the group's index as one private-use character, then the key.
fn cache_key(group: Group, key: &str) -> Box<str> {
    let mut s = String::with_capacity(key.len() + 3);
    s.push(char::from_u32(0xE000 + group.index() as u32).unwrap_or('\u{E000}'));
    s.push_str(key);
    s.into_boxed_str()
}

/// Weight of an entry in bytes: key + value + `ENTRY_OVERHEAD`.
#[allow(clippy::borrowed_box)] // moka hands the key type by reference
fn weigh(key: &Box<str>, entry: &Entry) -> u32 {
    entry_weight(key.len(), entry.value.as_ref().map_or(0, Bytes::len))
}

/// The bytes an entry of `key_len` (group prefix included) and `value_len` counts against
/// `--cache-bytes`; the benchmark sizes caches with it.
pub fn entry_weight(key_len: usize, value_len: usize) -> u32 {
    u32::try_from(key_len + value_len)
        .unwrap_or(u32::MAX)
        .saturating_add(ENTRY_OVERHEAD)
}

/// The group a composite key belongs to, for the eviction metric's label.
fn group_of(groups: Groups, cache_key: &str) -> &'static str {
    cache_key
        .chars()
        .next()
        .and_then(|c| (c as u32).checked_sub(0xE000))
        .and_then(|i| groups.all().nth(i as usize))
        .map_or("unknown", Group::name)
}

impl Store {
    /// A store of at most `max_bytes` (key + value + `ENTRY_OVERHEAD` per entry); with `ttl`,
    /// entries also expire that long after they were written (the hot cache uses this).
    pub fn new(
        name: &'static str,
        max_bytes: u64,
        ttl: Option<Duration>,
        groups: Groups,
        owner: Option<Group>,
    ) -> Self {
        let mut builder = Cache::builder()
            .max_capacity(max_bytes)
            .initial_capacity(table_entries(max_bytes))
            .weigher(weigh)
            .eviction_listener(move |k: std::sync::Arc<Box<str>>, _v, cause| {
                if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                    metrics::counter!("geecache_cache_evictions_total",
                        "group" => group_of(groups, &k), "cache" => name)
                    .increment(1);
                }
            });
        if let Some(ttl) = ttl {
            builder = builder.time_to_live(ttl);
        }
        Store {
            cache: builder.build_with_hasher(Hasher::default()),
            name,
            owner,
        }
    }

    /// `main`, `hot` or `handoff`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The group whose own budget this is, if it is one.
    pub fn owner(&self) -> Option<Group> {
        self.owner
    }

    pub fn get(&self, group: Group, key: &str) -> Option<Entry> {
        self.cache.get(&*cache_key(group, key))
    }

    /// A second look for a key that was just missed (the loader's re-check inside a flight):
    /// a read only when it hits. A plain `get` would count the miss again in moka's popularity
    /// sketch, and TinyLFU would then admit cold keys over warm ones.
    pub fn recheck(&self, group: Group, key: &str) -> Option<Entry> {
        let key = cache_key(group, key);
        if self.cache.contains_key(&*key) {
            self.cache.get(&*key)
        } else {
            None
        }
    }

    /// Whether the store holds the key, without counting a read in moka's sketch.
    pub fn holds(&self, group: Group, key: &str) -> bool {
        self.cache.contains_key(&*cache_key(group, key))
    }

    pub fn insert(&self, group: Group, key: &str, entry: Entry) {
        self.cache.insert(cache_key(group, key), entry);
    }

    /// Every entry that holds a value, with its group and key, in no order (what a leaving
    /// node hands off).
    pub fn values(&self, groups: Groups) -> impl Iterator<Item = (Group, String, Entry)> + '_ {
        self.cache.iter().filter_map(move |(k, entry)| {
            entry.value.as_ref()?;
            let mut chars = k.chars();
            let index = (chars.next()? as u32).checked_sub(0xE000)?;
            let group = groups.all().nth(index as usize)?;
            Some((group, chars.as_str().to_owned(), entry))
        })
    }

    pub fn remove(&self, group: Group, key: &str) {
        self.cache.invalidate(&*cache_key(group, key));
    }

    /// Bytes this store can take before it evicts, as of its last maintenance.
    pub fn room(&self) -> u64 {
        let max = self.cache.policy().max_capacity().unwrap_or(u64::MAX);
        max.saturating_sub(self.cache.weighted_size())
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
        Entry::loaded(Some(Bytes::from_static(v)), 0, 0, None)
    }

    fn store(bytes: u64) -> Store {
        Store::new("main", bytes, None, Groups::demo(), None)
    }

    fn g(name: &str) -> Group {
        Groups::demo().get(name).unwrap()
    }

    #[test]
    fn the_table_is_sized_for_the_most_entries_the_budget_holds() {
        // 64 MiB of entries that weigh at least ENTRY_OVERHEAD each: at most 167,772 of them.
        assert_eq!(table_entries(64 << 20), 167_772);
        assert_eq!(table_entries(0), 0);
        // A budget of terabytes does not allocate a table for billions of entries up front.
        assert_eq!(table_entries(1 << 40), 1 << 26);
    }

    #[test]
    fn recheck_reads_only_what_is_there() {
        let s = store(1 << 20);
        assert_eq!(s.recheck(g("products"), "1"), None);
        s.insert(g("products"), "1", entry(b"v"));
        assert_eq!(s.recheck(g("products"), "1"), Some(entry(b"v")));
        assert_eq!(
            s.recheck(g("scores"), "1"),
            None,
            "groups do not share keys"
        );
    }

    #[test]
    fn groups_are_separate_namespaces() {
        let s = store(1 << 20);
        s.insert(g("scores"), "1", entry(b"a"));
        assert_eq!(s.get(g("scores"), "1").unwrap().value.unwrap(), "a");
        assert_eq!(s.get(g("products"), "1"), None);
        assert_eq!(
            group_of(Groups::demo(), &cache_key(g("products"), "x")),
            "products"
        );
    }

    #[test]
    fn stays_within_its_byte_bound() {
        let bound = 64 * 1024;
        let s = store(bound);
        for i in 0..10_000 {
            let value = Some(Bytes::from(vec![b'x'; 100]));
            s.insert(
                g("products"),
                &i.to_string(),
                Entry::loaded(value, 0, 0, None),
            );
        }
        let (bytes, items) = s.maintain();
        assert!(bytes <= bound, "{bytes} > {bound}");
        assert!(items > 0 && items < 10_000, "{items}");
    }

    /// Why handed-off entries do not go into a full main store (`handoff::receive` keeps them
    /// in the handoff store instead): a full store admits a new key only if it was asked for
    /// more often than the resident it would evict (moka's TinyLFU counts reads, not writes).
    /// An entry pushed that nobody asked for is dropped; a key being asked for gets in.
    #[test]
    fn a_full_store_admits_keys_it_is_asked_for_not_pushed_ones() {
        let p = g("products");
        let s = store(100 * u64::from(entry_weight(cache_key(p, "r000").len(), 1)));
        let read_through = |key: &str, reads: usize| {
            for _ in 0..reads {
                assert_eq!(s.get(p, key), None);
            }
            s.insert(p, key, entry(b"v"));
            s.maintain();
        };
        for i in 0..100 {
            read_through(&format!("r{i:03}"), 1);
        }
        let held = |prefix: &str| {
            (0..20)
                .filter(|i| s.recheck(p, &format!("{prefix}{i:03}")).is_some())
                .count()
        };
        assert_eq!(held("r"), 20, "the residents fill the store");
        for i in 0..20 {
            read_through(&format!("x{i:03}"), 0);
        }
        // (moka's popularity sketch hashes with a random seed: a collision can overcount a key
        // that was never read: about one key in 5,000 here.)
        let pushed = held("x");
        assert!(
            pushed <= 2,
            "pushed, never asked for: {pushed} of 20 admitted"
        );
        // Asked for a few times (a successor's requests): admitted over residents read once
        // (a few reads, not one more than the residents, for the same overcounting).
        for i in 0..20 {
            read_through(&format!("y{i:03}"), 4);
        }
        assert_eq!(held("y"), 20, "asked for: all admitted");
    }

    #[test]
    fn remove_drops_one_key() {
        let s = store(1 << 20);
        s.insert(g("scores"), "Tom", entry(b"630"));
        s.remove(g("scores"), "Tom");
        assert_eq!(s.get(g("scores"), "Tom"), None);
    }

    #[test]
    fn freshness_is_counted_from_the_fill() {
        let e = Entry::loaded(None, 0, 1_000, Some(Duration::from_secs(5)));
        assert_eq!((e.fresh_until_ms, e.age_ms(3_500)), (6_000, 2_500));
        assert_eq!(entry(b"v").fresh_until_ms, u64::MAX);
    }
}
