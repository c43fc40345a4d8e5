//! `bimip sim`: sweeps seeds of the deterministic simulation with a progress
//! line and a summary; exits 1 on any failure, printing each failing seed's
//! report and the command that replays it.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;

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
}

pub fn run(args: SimArgs) -> Result<ExitCode> {
    let options = SimOptions {
        users: args.clients.max(2),
        devices: args.devices.max(1),
        chaos_ms: args.chaos_ms,
        ..SimOptions::default()
    };
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut stderr = std::io::stderr();
    for (done, seed) in (args.from..args.from.saturating_add(args.seeds)).enumerate() {
        let outcome = sim::run_seed(&options, seed);
        if args.history {
            print!("{}", sim::render(&outcome.history));
        }
        if !outcome.passed() {
            let _ = writeln!(stderr, "\n{}", outcome.report(&options));
            failed.push(seed);
        }
        let done = done as u64 + 1;
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let _ = write!(
            stderr,
            "\r[{done}/{}] seed {seed}, {} failed, {rate:.2} seeds/s   ",
            args.seeds,
            failed.len()
        );
        let _ = stderr.flush();
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!();
    println!(
        "{} seeds ({}..{}) in {secs:.1} s ({:.2} seeds/s): {} passed, {} failed",
        args.seeds,
        args.from,
        args.from.saturating_add(args.seeds),
        args.seeds as f64 / secs.max(1e-9),
        args.seeds as usize - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    println!("failing seeds: {failed:?}");
    println!(
        "replay one: bimip sim --seeds 1 --from {} --clients {} --history",
        failed[0], options.users
    );
    Ok(ExitCode::from(1))
}
