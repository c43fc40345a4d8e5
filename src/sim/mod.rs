//! Deterministic simulation (issue 8): a seeded workload of users with
//! several devices, seeded faults (partitions, held links, latency spikes,
//! client disconnects, server crashes that lose un-synced writes), the real
//! server and client under turmoil, and invariant checkers over the observed
//! history. One seed gives one history, byte for byte.
//!
//! - [`workload`]: what users do; [`faults`]: what the world does to them;
//! - [`runner`]: the turmoil set-up and the phases of one run;
//! - [`history`]: what was observed; [`invariants`]: what must hold of it;
//! - [`storage`]: what survives a crash (the seam for a durable store);
//! - [`tap`]: the raw bytes under each device's client (ENV-12);
//! - this module: one seed checked, the shortest failing prefix, the replay
//!   command, and sweeps.

pub mod faults;
pub mod history;
pub mod invariants;
pub mod runner;
pub mod storage;
pub mod tap;
pub mod workload;

pub use history::{Entry, What, render};
pub use invariants::{INVARIANTS, Violation, check};
pub use runner::{SimOptions, sim_config, simulate};

/// The result of one seed.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub history: Vec<Entry>,
    pub violations: Vec<Violation>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The shortest prefix of the history that still shows the first
    /// violation: for a safety property the checkers are re-run on shorter and
    /// shorter prefixes (binary search); an end-state property needs the
    /// whole history.
    pub fn shortest_failing_prefix(&self) -> &[Entry] {
        let Some(first) = self.violations.first() else {
            return &[];
        };
        if first.index.is_none() {
            return &self.history;
        }
        let shows = |len: usize| {
            check(&self.history[..len])
                .iter()
                .any(|v| v.invariant == first.invariant)
        };
        let (mut lo, mut hi) = (0, self.history.len());
        // Invariant: shows(hi); the prefix of length lo does not.
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            if shows(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        &self.history[..hi]
    }

    /// The command that replays this seed and prints its history.
    pub fn replay_command(&self, options: &SimOptions) -> String {
        let mut command = format!(
            "bimip sim --seeds 1 --from {} --clients {} --devices {} --chaos-ms {}",
            self.seed, options.users, options.devices, options.chaos_ms
        );
        let storage = match options.storage {
            storage::StorageModel::Durable => None,
            storage::StorageModel::CrashLosesUnsynced => Some("crash-model"),
            storage::StorageModel::Shared => Some("shared"),
            storage::StorageModel::ForgetsOnCrash => Some("forgets-on-crash"),
        };
        if let Some(storage) = storage {
            command.push_str(&format!(" --storage {storage}"));
        }
        if options.shards > 1 {
            command.push_str(&format!(" --shards {}", options.shards));
        }
        if options.mail_delay_ms != SimOptions::default().mail_delay_ms {
            command.push_str(&format!(" --mail-delay-ms {}", options.mail_delay_ms));
        }
        for fault in options.server_faults.iter() {
            command.push_str(&format!(" --fault {fault}"));
        }
        command.push_str(" --history");
        command
    }

    /// A failure report: seed, violations, the shortest prefix, the replay command.
    pub fn report(&self, options: &SimOptions) -> String {
        let mut out = format!("seed {} failed:\n", self.seed);
        for v in &self.violations {
            out.push_str(&format!("  {v}\n"));
        }
        let prefix = self.shortest_failing_prefix();
        out.push_str(&format!(
            "shortest prefix that shows it: {} of {} entries (last lines):\n",
            prefix.len(),
            self.history.len()
        ));
        let from = prefix.len().saturating_sub(15);
        let rendered = render(prefix);
        for line in rendered.lines().skip(from) {
            out.push_str(&format!("  {line}\n"));
        }
        out.push_str(&format!("replay: {}\n", self.replay_command(options)));
        out
    }
}

/// Simulates and checks one seed.
pub fn run_seed(options: &SimOptions, seed: u64) -> Outcome {
    let options = SimOptions {
        seed,
        ..options.clone()
    };
    let history = simulate(&options);
    let violations = check(&history);
    Outcome {
        seed,
        history,
        violations,
    }
}
