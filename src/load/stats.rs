//! Latency recording and the figures a run reports: an HdrHistogram per task
//! (no lock on the hot path), merged at the end into percentiles in
//! milliseconds. Shared with the MQTT load example so both tools compute
//! their figures the same way.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies in microseconds, from 1 µs to 10 min, 3 significant digits.
#[derive(Clone, Debug)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    pub fn new() -> Latencies {
        Latencies(Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds within hdrhistogram's range"))
    }

    /// Records one latency; values past the top bound count as the top bound.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.max(1));
    }

    /// Adds another task's recordings (same bounds, so this cannot fail).
    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// p50 / p99 / p99.9 / max / mean, in milliseconds.
    pub fn summary(&self) -> Summary {
        let ms = |micros: u64| micros as f64 / 1000.0;
        if self.0.is_empty() {
            return Summary::default();
        }
        Summary {
            count: self.0.len(),
            p50_ms: ms(self.0.value_at_quantile(0.50)),
            p99_ms: ms(self.0.value_at_quantile(0.99)),
            p999_ms: ms(self.0.value_at_quantile(0.999)),
            max_ms: ms(self.0.max()),
            mean_ms: self.0.mean() / 1000.0,
        }
    }
}

/// The percentiles of one latency, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (n = {})",
            self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }
}

/// A payload of exactly `len` bytes that carries its sequence number and the
/// send time (ns since the run's start): `"<seq>:<nanos>:"` padded with `x`.
/// Both tools put it in the message body so that the receiving side can
/// compute the latency without any shared table.
pub fn stamped_payload(seq: u64, sent_ns: u64, len: usize) -> String {
    let mut text = format!("{seq}:{sent_ns}:");
    if text.len() < len {
        text.extend(std::iter::repeat_n('x', len - text.len()));
    }
    text
}

/// The smallest payload that [`stamped_payload`] keeps exact for any run.
pub const MIN_PAYLOAD_BYTES: usize = 42;

/// Reads back what [`stamped_payload`] wrote: `(seq, sent_ns)`.
pub fn parse_stamp(payload: &[u8]) -> Option<(u64, u64)> {
    let mut fields = payload.splitn(3, |b| *b == b':');
    let number = |field: Option<&[u8]>| std::str::from_utf8(field?).ok()?.parse::<u64>().ok();
    let seq = number(fields.next())?;
    let sent = number(fields.next())?;
    fields.next()?;
    Some((seq, sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_at_the_requested_length() {
        let payload = stamped_payload(u64::MAX, u64::MAX, MIN_PAYLOAD_BYTES);
        assert_eq!(payload.len(), MIN_PAYLOAD_BYTES);
        assert_eq!(parse_stamp(payload.as_bytes()), Some((u64::MAX, u64::MAX)));
        let payload = stamped_payload(7, 1234, 100);
        assert_eq!(payload.len(), 100);
        assert_eq!(parse_stamp(payload.as_bytes()), Some((7, 1234)));
        assert_eq!(parse_stamp(b"7:x:"), None);
        assert_eq!(parse_stamp(b"7:12"), None);
    }

    #[test]
    fn percentiles_come_from_what_was_recorded() {
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        for ms in 1..=99 {
            a.record(Duration::from_millis(ms));
        }
        b.record(Duration::from_millis(1000));
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() < 1.0, "{s:?}");
        assert_eq!(Latencies::new().summary(), Summary::default());
    }
}
