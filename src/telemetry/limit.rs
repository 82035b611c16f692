//! Rate limits for warnings a client can cause once per request (a failing source, a failing
//! owner): at most one line a second per call site, which says how many it held back. The
//! metrics count every occurrence.

use std::sync::atomic::{AtomicU64, Ordering};

/// One call site's limit.
pub struct Every {
    period_ms: u64,
    next_ms: AtomicU64,
    held: AtomicU64,
}

impl Every {
    pub const fn second() -> Every {
        Every {
            period_ms: 1000,
            next_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this occurrence may be logged (`n` were held back since the last one),
    /// `None` when it is to be held back.
    pub fn admit(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + self.period_ms,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::AcqRel));
        }
        self.held.fetch_add(1, Ordering::AcqRel);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_with_the_count_held_back() {
        let e = Every::second();
        assert_eq!(e.admit(10_000), Some(0));
        for t in 10_001..10_500 {
            assert_eq!(e.admit(t), None);
        }
        assert_eq!(e.admit(10_999), None);
        assert_eq!(e.admit(11_000), Some(500));
        assert_eq!(e.admit(11_001), None);
        assert_eq!(e.admit(20_000), Some(1));
    }
}
