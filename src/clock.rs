//! The cache's clock: milliseconds since the process started, monotonic. Entries keep their
//! fill time and freshness deadline in it; across nodes only durations travel (ages, time
//! left), never instants.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Now, in milliseconds since the process started.
pub fn now_ms() -> u64 {
    start().elapsed().as_millis() as u64
}

/// `Duration` in whole milliseconds, saturating.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A ttl drawn from `ttl × (1 ± jitter)`, uniformly, so that keys filled together do not
/// expire together.
pub fn jittered(ttl: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return ttl;
    }
    // xorshift64* on a per-thread state: no lock, no syscall, good enough for spreading.
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(
            0x9E37_79B9_7F4A_7C15 ^ (now_ms() << 17) ^ (std::process::id() as u64)
                ^ (&() as *const () as u64)
        );
    }
    let r = STATE.with(|s| {
        let mut x = s.get().max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    });
    ttl.mul_f64(1.0 - jitter + 2.0 * jitter * r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_spreads_within_its_bounds() {
        let ttl = Duration::from_secs(10);
        assert_eq!(jittered(ttl, 0.0), ttl);
        let draws: Vec<Duration> = (0..10_000).map(|_| jittered(ttl, 0.2)).collect();
        let (lo, hi) = (draws.iter().min().unwrap(), draws.iter().max().unwrap());
        assert!(*lo >= Duration::from_secs(8) && *hi <= Duration::from_secs(12));
        assert!(*lo < Duration::from_millis(8_200) && *hi > Duration::from_millis(11_800));
        let below = draws.iter().filter(|d| **d < ttl).count();
        assert!((4_000..6_000).contains(&below), "{below}");
    }
}
