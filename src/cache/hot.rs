//! The hot-cache policy, in one place: which keys owned elsewhere are requested often enough to
//! keep a copy of here (instead of groupcache's random 1-in-10), and the `minute_qps` an owner
//! reports to its callers so that they can tell a key hot on the whole cluster.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::cache::group::Group;

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
            local: RateTracker::new(Duration::from_secs(1), 100_000),
            served: RateTracker::new(Duration::from_secs(60), 100_000),
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

/// Two consecutive windows of counts; the rate blends the full previous window with the
/// current partial one, so it neither forgets a burst at a window edge nor lags a minute.
#[derive(Debug)]
struct Windows {
    start: Instant,
    previous: u32,
    current: u32,
}

/// Approximate per-key rates over a sliding window, for a bounded number of keys.
pub struct RateTracker {
    keys: Cache<(Group, Box<str>), Arc<Mutex<Windows>>>,
    window: Duration,
}

impl RateTracker {
    /// Tracks up to `max_keys` keys (least recently seen forgotten first).
    pub fn new(window: Duration, max_keys: u64) -> Self {
        RateTracker {
            keys: Cache::builder()
                .max_capacity(max_keys)
                .time_to_idle(window * 2)
                .build(),
            window,
        }
    }

    /// Counts one request for the key and returns its rate in requests per second.
    pub fn hit(&self, group: Group, key: &str) -> f64 {
        self.hit_at(group, key, Instant::now())
    }

    /// The key's rate in requests per second, without counting a request.
    pub fn rate(&self, group: Group, key: &str) -> f64 {
        let Some(entry) = self.keys.get(&(group, key.into())) else {
            return 0.0;
        };
        let w = entry.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = Instant::now().saturating_duration_since(w.start);
        if elapsed >= self.window * 2 {
            return 0.0;
        }
        let (previous, current) = if elapsed >= self.window {
            (w.current, 0)
        } else {
            (w.previous, w.current)
        };
        let frac = 1.0 - (elapsed.as_secs_f64() / self.window.as_secs_f64()).fract();
        (previous as f64 * frac + current as f64) / self.window.as_secs_f64()
    }

    fn hit_at(&self, group: Group, key: &str, now: Instant) -> f64 {
        let entry = self.keys.get_with((group, key.into()), || {
            Arc::new(Mutex::new(Windows {
                start: now,
                previous: 0,
                current: 0,
            }))
        });
        // A poisoned lock only means another request panicked mid-count; the counts are
        // still usable.
        let mut w = entry.lock().unwrap_or_else(|e| e.into_inner());
        let mut elapsed = now.saturating_duration_since(w.start);
        if elapsed >= self.window {
            w.previous = if elapsed < self.window * 2 {
                w.current
            } else {
                0
            };
            w.current = 0;
            w.start += self.window * (elapsed.as_nanos() / self.window.as_nanos()) as u32;
            elapsed = now.saturating_duration_since(w.start);
        }
        w.current = w.current.saturating_add(1);
        // Weight the previous window by the part of it still inside the sliding window.
        let frac = 1.0 - elapsed.as_secs_f64() / self.window.as_secs_f64();
        (w.previous as f64 * frac + w.current as f64) / self.window.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_follows_the_request_rate() {
        let demo = crate::cache::group::Groups::demo();
        let (products, scores) = (demo.get("products").unwrap(), demo.get("scores").unwrap());
        let t = RateTracker::new(Duration::from_secs(1), 100);
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
}
