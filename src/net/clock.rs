//! Where the adapters get `now` from. The engine never reads a clock (it is
//! sans-IO), so the adapter that feeds it decides what time is: the wall clock
//! in production, tokio's clock in a simulation, where turmoil makes it
//! simulated and therefore reproducible.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::core::Millis;

/// Milliseconds since the Unix epoch, as the engine and the client see them.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> Millis;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        // A clock before 1970 is a broken host; 0 ("not set") is the least
        // surprising answer, and it must not panic.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// `base_ms` plus the tokio time elapsed since `start`. Under turmoil tokio's
/// time is simulated, so two runs of one simulation see the same timestamps.
#[derive(Clone, Copy, Debug)]
pub struct SimClock {
    pub base_ms: Millis,
    pub start: tokio::time::Instant,
}

impl SimClock {
    /// A clock reading `base_ms` now. Call it inside the runtime whose time it
    /// should follow (inside the turmoil host or client).
    pub fn new(base_ms: Millis) -> Self {
        SimClock {
            base_ms,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> Millis {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.base_ms.saturating_add(elapsed)
    }
}

/// A clock that reads what a test set; for clients whose timestamps a test
/// wants to control exactly.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    pub fn new(now_ms: Millis) -> Self {
        ManualClock(std::sync::atomic::AtomicI64::new(now_ms))
    }

    pub fn set(&self, now_ms: Millis) {
        self.0.store(now_ms, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn advance(&self, by_ms: Millis) {
        self.0.fetch_add(by_ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<C: Clock> Clock for std::sync::Arc<C> {
    fn now_ms(&self) -> Millis {
        (**self).now_ms()
    }
}
