//! The fault schedule, drawn from the same seed as the workload: partitions
//! and their repair, held links and their release, latency spikes, client
//! disconnects, and server crashes with a restart on what survived on disk.

use rand::Rng;
use rand::rngs::StdRng;

/// One fault, with how long it lasts (ms) where it is lifted later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Both directions between the server and a device drop segments for good.
    Partition { device: String, for_ms: u64 },
    /// Traffic between the server and a device is queued, then delivered.
    Hold { device: String, for_ms: u64 },
    /// The link to a device gets slow.
    Latency {
        device: String,
        latency_ms: u64,
        for_ms: u64,
    },
    /// The device drops its connection without closing it.
    Disconnect { device: String },
    /// The server host crashes (un-synced writes lost) and boots again later.
    Crash { down_ms: u64 },
}

/// How often each kind of fault happens.
#[derive(Clone, Copy, Debug)]
pub struct FaultRates {
    /// Mean ms between two faults; 0 = no faults.
    pub mean_gap_ms: u64,
    /// At most this many crashes per run.
    pub max_crashes: u32,
}

impl Default for FaultRates {
    fn default() -> Self {
        FaultRates {
            mean_gap_ms: 1_500,
            max_crashes: 2,
        }
    }
}

/// The delay until the next fault.
pub fn next_gap(rng: &mut StdRng, rates: &FaultRates) -> u64 {
    rng.random_range(rates.mean_gap_ms / 2..=rates.mean_gap_ms * 3 / 2)
}

/// Draws one fault against `devices` (host names).
pub fn draw(rng: &mut StdRng, devices: &[String], crashes_left: bool) -> Fault {
    let device = devices[rng.random_range(0..devices.len())].clone();
    match rng.random_range(0..100) {
        0..=29 => Fault::Partition {
            device,
            for_ms: rng.random_range(500..8_000),
        },
        30..=49 => Fault::Hold {
            device,
            for_ms: rng.random_range(200..3_000),
        },
        50..=69 => Fault::Latency {
            device,
            latency_ms: rng.random_range(100..1_500),
            for_ms: rng.random_range(500..5_000),
        },
        70..=91 => Fault::Disconnect { device },
        _ if crashes_left => Fault::Crash {
            down_ms: rng.random_range(100..2_000),
        },
        _ => Fault::Disconnect { device },
    }
}
