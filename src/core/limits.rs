//! Per-connection stanza rate limit (SPEC SES): a token bucket refilled from
//! the time the caller passes in, so it is as deterministic as the clock.

use super::Millis;

/// A token bucket holding up to `burst` stanzas, refilled at `per_sec`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    // u32, as configured: every session holds two buckets.
    per_sec: u32,
    burst: u32,
    /// Tokens, in thousandths, so refills below one whole token are kept.
    milli_tokens: u64,
    last: Millis,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_sec: u32, burst: u32, now: Millis) -> Self {
        let burst = burst.max(1);
        TokenBucket {
            per_sec,
            burst,
            milli_tokens: u64::from(burst) * 1000,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Millis) -> bool {
        let elapsed = u64::try_from(now.saturating_sub(self.last)).unwrap_or(0);
        self.last = self.last.max(now);
        self.milli_tokens =
            (self.milli_tokens + elapsed.saturating_mul(u64::from(self.per_sec))).min(u64::from(self.burst) * 1000);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_sustained_rate() {
        let mut bucket = TokenBucket::new(100, 200, 0);
        assert_eq!((0..300).filter(|_| bucket.try_take(0)).count(), 200);
        // 100/s = one token per 10 ms.
        assert!(!bucket.try_take(9));
        assert!(bucket.try_take(10));
        assert_eq!((0..50).filter(|_| bucket.try_take(1_000)).count(), 50);
    }

    #[test]
    fn a_clock_going_backwards_does_not_refill() {
        let mut bucket = TokenBucket::new(100, 1, 1_000);
        assert!(bucket.try_take(1_000));
        assert!(!bucket.try_take(0));
        assert!(!bucket.try_take(1_000));
    }
}
