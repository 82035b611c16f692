//! The hot-cache policy, in one place: which keys owned elsewhere are requested often enough to
//! keep a copy of here (instead of groupcache's random 1-in-10), and the `minute_qps` an owner
//! reports to its callers so that they can tell a key hot on the whole cluster.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::group::Group;

/// Counts requests and decides promotion to the hot cache.
pub struct HotPolicy {
    /// Local request rates of keys owned elsewhere, over one second.
    local: RateTracker,
    /// Rates of keys this node served to peers, over a minute (groupcache's `minute_qps`).
    served: RateTracker,
    /// Requests per second, here or on every member, that make a key hot.
    min_qps: f64,
}

impl HotPolicy {
    pub fn new(min_qps: f64) -> HotPolicy {
        HotPolicy {
            local: RateTracker::new(Duration::from_secs(1)),
            served: RateTracker::new(Duration::from_secs(60)),
            min_qps,
        }
    }

    /// Counts a local request for a key another member owns.
    pub fn requested_remote(&self, group: Group, key: &str) {
        self.local.hit(group, key);
    }

    /// Counts a request a peer made for a key this node owns; returns its `minute_qps`.
    pub fn served_to_peer(&self, group: Group, key: &str) -> f64 {
        self.served.hit(group, key)
    }

    /// Whether to keep a copy of a remote key: requested here at `min_qps` or more, or, by the
    /// owner's count, at that rate on every one of `members`.
    pub fn keep(&self, group: Group, key: &str, owner_qps: f64, members: usize) -> bool {
        self.local.rate(group, key) >= self.min_qps
            || owner_qps >= self.min_qps * members.max(1) as f64
    }
}

/// Approximate per-key rates over a sliding window: a count-min sketch of the two latest
/// windows. A request is a hash and two atomic increments, with no allocation and no lock:
/// it is counted on every request for a remote key (hot hits included) and on every fetch an
/// owner serves, and the moka cache of per-key counters this replaced (a boxed key, an LRU
/// deque and a mutex per request) was a tenth of an owner's CPU serving remote hits.
///
/// A key's count is the smallest of its `ROWS` cells, so it can only be overestimated, by the
/// other keys that share all its cells: with `WIDTH` cells per row, by about one request per
/// window for every `WIDTH` requests of the window. An overestimate keeps a copy that was not
/// needed; it never serves a value that should not be served.
pub struct RateTracker {
    /// `ROWS` rows of `WIDTH` cells, each a pair (even and odd window) of packed
    /// `window number << 32 | count`.
    cells: Box<[[AtomicU64; 2]]>,
    hasher: foldhash::fast::RandomState,
    window: Duration,
    start: Instant,
}

const ROWS: usize = 2;
const WIDTH: usize = 1 << 16;

impl RateTracker {
    pub fn new(window: Duration) -> Self {
        RateTracker {
            cells: (0..ROWS * WIDTH).map(|_| Default::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
            window,
            start: Instant::now(),
        }
    }

    /// Counts one request for the key and returns its rate in requests per second.
    pub fn hit(&self, group: Group, key: &str) -> f64 {
        self.hit_at(group, key, Instant::now())
    }

    /// The key's rate in requests per second, without counting a request.
    pub fn rate(&self, group: Group, key: &str) -> f64 {
        self.rate_at(group, key, Instant::now(), false)
    }

    fn hit_at(&self, group: Group, key: &str, now: Instant) -> f64 {
        self.rate_at(group, key, now, true)
    }

    fn rate_at(&self, group: Group, key: &str, now: Instant, count: bool) -> f64 {
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
        let windows = elapsed / self.window.as_secs_f64();
        let w = windows as u64 as u32;
        // Weight the previous window by the part of it still inside the sliding window.
        let frac = 1.0 - windows.fract();
        let hash = {
            use std::hash::BuildHasher;
            self.hasher.hash_one((group.index(), key))
        };
        let (h1, h2) = (hash as usize, (hash >> 32) as usize | 1);
        let mut best = f64::MAX;
        for row in 0..ROWS {
            let slot = row * WIDTH + (h1.wrapping_add(row.wrapping_mul(h2)) % WIDTH);
            let pair = &self.cells[slot];
            let current = if count {
                bump(&pair[(w % 2) as usize], w)
            } else {
                read(&pair[(w % 2) as usize], w)
            };
            let previous = w
                .checked_sub(1)
                .map_or(0, |p| read(&pair[(p % 2) as usize], p));
            best = best.min(previous as f64 * frac + current as f64);
        }
        best / self.window.as_secs_f64()
    }
}

/// The cell's count if it counts window `w`, else 0.
fn read(cell: &AtomicU64, w: u32) -> u32 {
    let v = cell.load(Ordering::Relaxed);
    if (v >> 32) as u32 == w { v as u32 } else { 0 }
}

/// Adds one to the cell's count for window `w` (starting it over if it counted an older one).
fn bump(cell: &AtomicU64, w: u32) -> u32 {
    let mut v = cell.load(Ordering::Relaxed);
    loop {
        let n = if (v >> 32) as u32 == w {
            (v as u32).saturating_add(1)
        } else {
            1
        };
        let next = (u64::from(w) << 32) | u64::from(n);
        match cell.compare_exchange_weak(v, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return n,
            Err(seen) => v = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_follows_the_request_rate() {
        let demo = crate::group::Groups::demo();
        let (products, scores) = (demo.get("products").unwrap(), demo.get("scores").unwrap());
        let t = RateTracker::new(Duration::from_secs(1));
        let start = Instant::now();
        let mut rate = 0.0;
        // 50 requests per second for 3 seconds.
        for i in 0..150u64 {
            rate = t.hit_at(products, "k", start + Duration::from_millis(i * 20));
        }
        assert!((40.0..=60.0).contains(&rate), "{rate}");
        assert_eq!(t.rate(products, "never"), 0.0);
        // A cold key has a low rate; another group is another key.
        assert!(t.hit_at(products, "cold", start) <= 1.0);
        assert!(t.hit_at(scores, "k", start + Duration::from_secs(3)) <= 1.0);
        // After a long silence the rate starts over.
        let later = t.hit_at(products, "k", start + Duration::from_secs(30));
        assert!(later <= 1.0, "{later}");
    }

    /// Keys that share cells make a key look hotter than it is, never colder; with as many
    /// keys in a window as a row has cells, a key never asked reads as cold, and a hot key's
    /// rate stays its own.
    #[test]
    fn many_keys_inflate_a_rate_little() {
        let products = crate::group::Groups::demo().get("products").unwrap();
        let t = RateTracker::new(Duration::from_secs(60));
        let at = t.start + Duration::from_secs(30);
        for i in 0..WIDTH {
            t.hit_at(products, &i.to_string(), at);
        }
        for _ in 0..6_000 {
            t.hit_at(products, "hot", at);
        }
        let hot = t.rate_at(products, "hot", at, false) * 60.0;
        assert!((6_000.0..6_010.0).contains(&hot), "{hot}");
        let over: Vec<f64> = (0..1_000)
            .map(|i| t.rate_at(products, &format!("cold{i}"), at, false) * 60.0)
            .collect();
        let mean = over.iter().sum::<f64>() / over.len() as f64;
        assert!(
            mean < 1.0,
            "a key never asked reads {mean} requests on average"
        );
        assert!(over.iter().all(|&n| n < 10.0), "{over:?}");
    }
}
