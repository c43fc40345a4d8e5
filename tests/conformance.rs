//! The conformance suite against the reference server in simulation: every
//! feature runs with the simulation driver (turmoil, simulated time), and
//! every MUST requirement of SPEC.md must have a scenario or a reasoned entry
//! in `conformance/uncovered.txt`.
//!
//! It also smoke-tests the network driver: a few cases over real loopback
//! sockets against the built-in reference server (`bimip-conform` runs all).
//!
//! `cargo test --test conformance` runs everything; arguments after `--`
//! narrow it: `--tags EXPR`, `--req ID`, `--name TEXT`, `--verbose`,
//! `--no-network`.
//!
//! Cucumber runs under `futures::executor::block_on` on this thread (not
//! under `#[tokio::main]`: the simulation steps runtimes of its own).

use std::process::ExitCode;
use std::sync::Arc;

use bimip::conformance::builtin::BuiltIn;
use bimip::conformance::network::NetworkFactory;
use bimip::conformance::runner::{self, RunOptions};
use bimip::conformance::sim::SimFactory;
use bimip::conformance::spec;

/// Known failures of the reference server in simulation (scenario names or
/// requirement IDs), each a bug to fix in the server, not in the suite.
const EXPECTED_FAILURES: &str = include_str!("../conformance/expected-failures.txt");

fn coverage() -> Result<(), String> {
    let cases = spec::cases()?;
    let (missing, stale) = spec::coverage_gaps(spec::SPEC, &cases, spec::UNCOVERED);
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "MUST requirements with no scenario and no entry in conformance/uncovered.txt: {}",
            missing.join(", ")
        ));
    }
    if !stale.is_empty() {
        problems.push(format!(
            "conformance/uncovered.txt names IDs that are not MUST requirements of SPEC.md: {}",
            stale.join(", ")
        ));
    }
    let on_disk: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/features"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".feature"))
        .collect();
    for file in on_disk {
        if !spec::FEATURES.iter().any(|(f, ..)| *f == file) {
            problems.push(format!("features/{file} is not listed in conformance/spec.rs FEATURES"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn main() -> ExitCode {
    let mut options = RunOptions {
        target: "reference server in simulation".into(),
        expected_failures: EXPECTED_FAILURES
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.split(" #").next().unwrap_or(l).trim().to_string())
            .collect(),
        ..RunOptions::default()
    };
    let mut verbose = false;
    let mut network = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--tags" => options.tags = args.next(),
            "--req" => options.requirements.extend(args.next()),
            "--name" => options.names.extend(args.next()),
            "--verbose" => verbose = true,
            "--progress" => options.progress = true,
            "--no-network" => network = false,
            _ => {}
        }
    }
    let mut ok = true;
    match coverage() {
        Ok(()) => println!("coverage: every MUST requirement has a scenario or a reason in conformance/uncovered.txt"),
        Err(problems) => {
            println!("coverage FAILED:\n{problems}");
            ok = false;
        }
    }
    match runner::run(&options, Arc::new(SimFactory::default()), "simulation") {
        Ok(report) => {
            print!("{}", report.render_tree(false, verbose));
            if !report.ok() {
                println!("conformance FAILED: a case failed, or no case ran");
                ok = false;
            }
        }
        Err(error) => {
            println!("conformance FAILED: {error}");
            ok = false;
        }
    }
    if network {
        match network_smoke(verbose) {
            Ok(summary) => println!("network smoke test: {summary}"),
            Err(error) => {
                println!("network smoke test FAILED: {error}");
                ok = false;
            }
        }
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// A few cases over real sockets against the built-in reference server.
fn network_smoke(verbose: bool) -> Result<String, String> {
    let server = BuiltIn::start().map_err(|e| e.to_string())?;
    let target = server.target().map_err(|e| e.to_string())?;
    let factory = NetworkFactory::new(target).map_err(|e| e.to_string())?;
    let options = RunOptions {
        tags: Some("@PING-1 or @AUTH-9 or @TRN-9 or @ENV-5 or @CHAT-14 or @SES-1 or @QUE-6".into()),
        target: "built-in reference server".into(),
        jobs: 2,
        ..RunOptions::default()
    };
    let report = runner::run(&options, Arc::new(factory), "network").map_err(|e| e.to_string())?;
    drop(server);
    if report.ok() {
        Ok(report.summary())
    } else {
        Err(report.render_tree(false, verbose))
    }
}
