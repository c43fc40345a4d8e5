//! Per-connection stanza rate limit (SPEC SES): a token bucket refilled from
//! the time the caller passes in, so it is as deterministic as the clock.

use super::Millis;

/// Up to `burst` stanzas at once, refilled at `per_sec`. The server's setting, passed to each take: every session's
/// bucket fills at the same rate, so a bucket keeps only its level (two per session, in every session's memory).
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    per_sec: u32,
    burst: u32,
}

impl Rate {
    pub const fn new(per_sec: u32, burst: u32) -> Rate {
        Rate {
            per_sec,
            burst: if burst == 0 { 1 } else { burst },
        }
    }

    fn full(self) -> u64 {
        u64::from(self.burst) * 1000
    }
}

/// Presence changes and intentions of one session (AWR-18).
pub const AWARENESS_RATE: Rate = Rate::new(5, 5);

/// A token bucket's level.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Tokens, in thousandths, so refills below one whole token are kept.
    milli_tokens: u64,
    last: Millis,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Millis) -> Self {
        TokenBucket {
            milli_tokens: rate.full(),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, rate: Rate, now: Millis) -> bool {
        let elapsed = u64::try_from(now.saturating_sub(self.last)).unwrap_or(0);
        self.last = self.last.max(now);
        self.milli_tokens = (self.milli_tokens + elapsed.saturating_mul(u64::from(rate.per_sec))).min(rate.full());
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
        const RATE: Rate = Rate::new(100, 200);
        let mut bucket = TokenBucket::new(RATE, 0);
        assert_eq!((0..300).filter(|_| bucket.try_take(RATE, 0)).count(), 200);
        // 100/s = one token per 10 ms.
        assert!(!bucket.try_take(RATE, 9));
        assert!(bucket.try_take(RATE, 10));
        assert_eq!((0..50).filter(|_| bucket.try_take(RATE, 1_000)).count(), 50);
    }

    #[test]
    fn a_clock_going_backwards_does_not_refill() {
        const RATE: Rate = Rate::new(100, 1);
        let mut bucket = TokenBucket::new(RATE, 1_000);
        assert!(bucket.try_take(RATE, 1_000));
        assert!(!bucket.try_take(RATE, 0));
        assert!(!bucket.try_take(RATE, 1_000));
    }
}
