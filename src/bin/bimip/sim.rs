//! `bimip sim`: sweeps seeds of the deterministic simulation with a progress
//! line and a summary; exits 1 on any failure, printing each failing seed's
//! report and the command that replays it.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;

use bimip::faults::{Fault, Faults};
use bimip::sim::storage::StorageModel;
use bimip::sim::{self, SimOptions};

#[derive(clap::Args)]
pub struct SimArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Users (each with --devices devices).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    #[arg(long, default_value_t = 2)]
    devices: usize,
    /// Simulated ms of workload and faults per seed.
    #[arg(long, default_value_t = 20_000)]
    chaos_ms: u64,
    /// Print each seed's whole history (for a replay).
    #[arg(long)]
    history: bool,
    /// Run a deliberately faulty server (repeatable): the sweep should fail.
    #[arg(long = "fault", value_name = "NAME")]
    faults: Vec<Fault>,
    /// Stop at the first failing seed.
    #[arg(long)]
    first_failure: bool,
    /// Shards of the server's engine (src/core/README.md).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    shards: u16,
    /// Longest simulated wait before a shard handles another shard's mail, ms: a seeded scheduler picks the order
    /// and the waits, so each seed tries another interleaving of the shards (0: at once).
    #[arg(long, default_value_t = 3)]
    mail_delay_ms: u64,
    /// What survives a server crash.
    #[arg(long, value_enum, default_value_t = Storage::Durable)]
    storage: Storage,
}

/// `--storage`: see `bimip::sim::storage`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Storage {
    /// The durable chat store (the queue store) on a simulated filesystem.
    Durable,
    /// An in-memory log that loses un-synced chat writes.
    CrashModel,
    /// Nothing is ever lost.
    Shared,
    /// A broken disk that loses everything on a crash (the checkers must fail).
    ForgetsOnCrash,
}

pub fn run(args: SimArgs) -> Result<ExitCode> {
    let mut options = SimOptions {
        users: args.clients.max(2),
        devices: args.devices.max(1),
        chaos_ms: args.chaos_ms,
        storage: match args.storage {
            Storage::Durable => StorageModel::Durable,
            Storage::CrashModel => StorageModel::CrashLosesUnsynced,
            Storage::Shared => StorageModel::Shared,
            Storage::ForgetsOnCrash => StorageModel::ForgetsOnCrash,
        },
        shards: usize::from(args.shards),
        mail_delay_ms: args.mail_delay_ms,
        ..SimOptions::default()
    };
    options.server_faults = Faults::of(args.faults.iter().copied());
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut ran = 0u64;
    let mut stderr = std::io::stderr();
    // A progress line only on a terminal: in a log, `\r` updates are noise.
    let progress = std::io::IsTerminal::is_terminal(&stderr);
    for seed in args.from..args.from.saturating_add(args.seeds) {
        let outcome = sim::run_seed(&options, seed);
        ran += 1;
        if args.history {
            print!("{}", sim::render(&outcome.history));
        }
        if !outcome.passed() {
            let _ = writeln!(stderr, "\n{}", outcome.report(&options));
            failed.push(seed);
        }
        if args.first_failure && !failed.is_empty() {
            break;
        }
        if !progress {
            continue;
        }
        let rate = ran as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let _ = write!(
            stderr,
            "\r[{ran}/{}] seed {seed}, {} failed, {rate:.2} seeds/s   ",
            args.seeds,
            failed.len()
        );
        let _ = stderr.flush();
    }
    let secs = started.elapsed().as_secs_f64();
    if progress {
        eprintln!();
    }
    println!(
        "{ran} seeds ({}..{}) in {secs:.1} s ({:.2} seeds/s): {} passed, {} failed",
        args.from,
        args.from.saturating_add(ran),
        ran as f64 / secs.max(1e-9),
        ran as usize - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    println!("failing seeds: {failed:?}");
    let first = sim::Outcome {
        seed: failed[0],
        history: Vec::new(),
        violations: Vec::new(),
    };
    println!("replay one: {}", first.replay_command(&options));
    Ok(ExitCode::from(1))
}
