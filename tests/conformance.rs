//! The conformance suite against the reference server in simulation: every
//! feature runs with the simulation driver (turmoil, simulated time), and
//! every MUST requirement of SPEC.md must have a scenario or a reasoned entry
//! in `conformance/uncovered.txt`.
//!
//! Then cases from every area over real loopback sockets against the
//! built-in reference server, a few over TLS, and every case against a
//! `bimip serve` process.
//!
//! Then the self-check (`conformance/selfcheck.rs`): for each built-in fault
//! of the reference server, the cases of its areas run against a server with
//! that fault, and at least one must fail; the catching cases are printed.
//! The mirror check: against the reference server using each behaviour SPEC
//! allows but it does not choose (`bimip::variants`, `selfcheck::run_variant`),
//! every case must pass.
//!
//! `cargo test --test conformance` runs everything; arguments after `--`
//! narrow it: `--tags EXPR`, `--req ID`, `--name TEXT`, `--verbose`,
//! `--no-network`, `--no-faults`; `--fault NAME` (repeatable) runs only the
//! self-check of those faults, `--all-areas` runs it over every feature;
//! `--variants` runs only the check of the allowed variants; `--client` only client mode (the Rust reference
//! client through its adapter, and the adapter's deliberate misbehaviours); `--proxy` only the self-check through
//! the fault proxy over real sockets (`conformance/fault_proxy.rs`; with `--fault NAME`, those faults).
//!
//! Cucumber runs under `futures::executor::block_on` on this thread (not
//! under `#[tokio::main]`: the simulation steps runtimes of its own).

use std::process::ExitCode;
use std::sync::Arc;

use bimip::conformance::builtin::BuiltIn;
use bimip::conformance::client_mode::ClientModeFactory;
use bimip::conformance::driver::TransportKind;
use bimip::conformance::fault_proxy::FaultProxy;
use bimip::conformance::network::NetworkFactory;
use bimip::conformance::report::Report;
use bimip::conformance::runner::{self, RunOptions};
use bimip::conformance::selfcheck;
use bimip::conformance::sim::SimFactory;
use bimip::conformance::spec;
use bimip::faults::{Fault, Faults};
use bimip::variants::{Variant, Variants};

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
    let mut faults = true;
    let mut only_faults: Vec<Fault> = Vec::new();
    let mut all_areas = false;
    let mut only_variants = false;
    let mut only_client = false;
    let mut only_proxy = false;
    let mut shards = 1;
    let mut shards_given = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--tags" => options.tags = args.next(),
            "--req" => options.requirements.extend(args.next()),
            "--name" => options.names.extend(args.next()),
            "--verbose" => verbose = true,
            "--progress" => options.progress = true,
            "--no-network" => network = false,
            "--no-faults" => faults = false,
            "--all-areas" => all_areas = true,
            "--variants" => only_variants = true,
            "--client" => only_client = true,
            "--proxy" => only_proxy = true,
            "--shards" => {
                shards = args.next().and_then(|n| n.parse().ok()).unwrap_or(1);
                shards_given = true;
            }
            "--fault" => match args.next().map(|n| n.parse::<Fault>()) {
                Some(Ok(fault)) => only_faults.push(fault),
                Some(Err(error)) => {
                    println!("{error}");
                    return ExitCode::FAILURE;
                }
                None => {}
            },
            _ => {}
        }
    }
    if only_client {
        return match client_mode(verbose) {
            Ok(summary) => {
                println!("client mode: {summary}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                println!("client mode FAILED: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if only_proxy {
        return match fault_proxy_self_check(&only_faults, verbose) {
            Ok(summary) => {
                println!("through the fault proxy: {summary}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                println!("through the fault proxy FAILED: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if only_variants {
        return if variant_self_check(&options.expected_failures, verbose) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if !only_faults.is_empty() {
        return if fault_self_check(&only_faults, all_areas, &options.expected_failures, verbose) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let mut ok = true;
    match coverage() {
        Ok(()) => println!("coverage: every MUST requirement has a scenario or a reason in conformance/uncovered.txt"),
        Err(problems) => {
            println!("coverage FAILED:\n{problems}");
            ok = false;
        }
    }
    // The reference server as one engine, and partitioned into three shards (src/core/README.md): every case
    // passes on both (or on the count asked for).
    let counts = if shards_given { vec![shards] } else { vec![1, 3] };
    for shards in counts {
        let mut factory = SimFactory::default();
        factory.options.shards = shards;
        let target = format!("simulation, {shards} shard(s)");
        match runner::run(&options, Arc::new(factory), &target) {
            Ok(report) => {
                print!("{}", report.render_tree(false, verbose));
                if !report.ok() {
                    println!("conformance FAILED ({target}): a case failed, or no case ran");
                    ok = false;
                }
            }
            Err(error) => {
                println!("conformance FAILED ({target}): {error}");
                ok = false;
            }
        }
    }
    if network {
        match network_smoke(verbose) {
            Ok(summary) => println!("network: {summary}"),
            Err(error) => {
                println!("network FAILED: {error}");
                ok = false;
            }
        }
        match single_transport_runs(verbose) {
            Ok(summary) => println!("single transports: {summary}"),
            Err(error) => {
                println!("single transports FAILED: {error}");
                ok = false;
            }
        }
        match fault_proxy_self_check(&[], verbose) {
            Ok(summary) => println!("through the fault proxy: {summary}"),
            Err(error) => {
                println!("through the fault proxy FAILED: {error}");
                ok = false;
            }
        }
        match a_target_that_goes_away_stops_the_run() {
            Ok(summary) => println!("a target that goes away: {summary}"),
            Err(error) => {
                println!("a target that goes away FAILED: {error}");
                ok = false;
            }
        }
        match against_bimip_serve() {
            Ok(summary) => println!("against `bimip serve`: {summary}"),
            Err(error) => {
                println!("against `bimip serve` FAILED: {error}");
                ok = false;
            }
        }
        match cli_reports() {
            Ok(summary) => println!("bimip-conform: {summary}"),
            Err(error) => {
                println!("bimip-conform FAILED: {error}");
                ok = false;
            }
        }
    }
    match client_mode(verbose) {
        Ok(summary) => println!("client mode: {summary}"),
        Err(error) => {
            println!("client mode FAILED: {error}");
            ok = false;
        }
    }
    if faults && !fault_self_check(&Fault::ALL, all_areas, &options.expected_failures, verbose) {
        ok = false;
    }
    if faults && !variant_self_check(&options.expected_failures, verbose) {
        ok = false;
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// The Rust reference client through its adapter passes every client case (SPEC §21), on both transports; and
/// each of the adapter's deliberate misbehaviours (`BIMIP_ADAPTER_FAULT`, at the adapter's edge) fails a case,
/// so no client check is one a broken client would pass too.
fn client_mode(verbose: bool) -> Result<String, String> {
    let adapter = env!("CARGO_BIN_EXE_bimip-client-adapter");
    let options = RunOptions {
        target: "the Rust reference client".into(),
        client_mode: true,
        jobs: 4,
        ..RunOptions::default()
    };
    let report =
        runner::run(&options, Arc::new(ClientModeFactory::new(adapter)), "client").map_err(|e| e.to_string())?;
    if !report.ok() || report.cases.len() < 32 {
        return Err(format!("{}{}", report.render_tree(false, verbose), report.summary()));
    }
    let mut caught = Vec::new();
    for fault in CLIENT_FAULTS {
        let broken = format!("BIMIP_ADAPTER_FAULT={fault} {adapter}");
        let report =
            runner::run(&options, Arc::new(ClientModeFactory::new(broken)), "client").map_err(|e| e.to_string())?;
        if report.ok() {
            return Err(format!(
                "a client that {fault} passed every client case: {}",
                report.summary()
            ));
        }
        let failed = report
            .cases
            .iter()
            .filter(|c| c.verdict != bimip::conformance::report::Verdict::Pass)
            .count();
        caught.push(format!("{fault} (caught by {failed})"));
    }
    Ok(format!(
        "{}; broken clients caught: {}",
        report.summary(),
        caught.join(", ")
    ))
}

/// The adapter's deliberate misbehaviours (src/bin/bimip-client-adapter.rs).
const CLIENT_FAULTS: [&str; 12] = [
    "never-pong",
    "require-auth-response",
    "blame-all-on-client",
    "close-on-bad-stanza",
    "resend-after-4xx",
    "no-dedupe",
    "no-confirm",
    "reconnect-after-replaced",
    "reconnect-same-token",
    "no-backoff",
    "new-local-on-resend",
    "forget-pending",
];

/// Against each behaviour SPEC allows, no case may fail.
fn variant_self_check(expected_failures: &[String], verbose: bool) -> bool {
    let mut ok = true;
    for variant in Variant::ALL {
        match selfcheck::run_variant(variant, expected_failures) {
            Ok(report) if !selfcheck::variant_in_effect(variant, &report) => {
                println!(
                    "allowed variant {variant} FAILED: its SHOULD case ({:?}) did not notice it, so the run proves nothing",
                    selfcheck::skipped_should(variant)
                );
                ok = false;
            }
            Ok(report) if report.ok() => {
                println!("allowed variant {variant}: every case passes ({})", report.summary())
            }
            Ok(report) => {
                print!("{}", report.render_tree(false, verbose));
                println!("allowed variant {variant} FAILED: a check is stricter than SPEC");
                ok = false;
            }
            Err(error) => {
                println!("allowed variant {variant} FAILED: {error}");
                ok = false;
            }
        }
    }
    ok
}

/// Every fault in `faults` must fail some case; prints which cases caught each.
fn fault_self_check(faults: &[Fault], all_areas: bool, expected_failures: &[String], verbose: bool) -> bool {
    let started = std::time::Instant::now();
    let mut ok = true;
    for fault in faults {
        match selfcheck::run_fault(*fault, all_areas, expected_failures) {
            Ok(run) => {
                let caught = run.caught_by();
                if caught.is_empty() {
                    ok = false;
                    println!(
                        "self-check FAILED: no case caught the fault {fault} ({})",
                        run.report.summary()
                    );
                    if verbose {
                        print!("{}", run.report.render_tree(false, true));
                    }
                } else {
                    println!(
                        "self-check: {fault} caught by {} of {} cases:",
                        caught.len(),
                        run.report.cases.len()
                    );
                    for case in caught {
                        println!("    {case}");
                    }
                }
            }
            Err(error) => {
                ok = false;
                println!("self-check FAILED for {fault}: {error}");
            }
        }
    }
    println!(
        "self-check: {} faults in {:.1} s",
        faults.len(),
        started.elapsed().as_secs_f64()
    );
    ok
}

/// Cases from every area over real loopback sockets against the built-in
/// reference server, then the network driver's own checks: a fault is caught
/// over the network, and TLS targets.
/// Runs `options` over real sockets against a started built-in server, then stops it.
fn run_against(server: BuiltIn, options: &RunOptions) -> Result<Report, String> {
    let mut target = server.target().map_err(|e| e.to_string())?;
    // A run over some transports only is a target that offers only those (issue 22).
    if !options.transports.is_empty() {
        if !options.transports.contains(&TransportKind::Ws) {
            target.ws = None;
        }
        if !options.transports.contains(&TransportKind::Tcp) {
            target.tcp = None;
        }
    }
    let factory = NetworkFactory::new(target).map_err(|e| e.to_string())?;
    runner::run(options, Arc::new(factory), "network").map_err(|e| e.to_string())
}

/// Issue 18.7: the self-check through a mutating layer between the suite and the server, as it would run in front
/// of any target. One built-in server: through a fault proxy without faults every case passes (the proxy alone
/// fails nothing), and through a proxy with each fault a stanza can carry (all but accept-expired-token, which is
/// the server's token check) a case of the fault's areas fails. Faults run side by side, each worker with a server
/// of its own; their runs skip the restart cases (no restart hooks), which the run without faults has.
fn fault_proxy_self_check(only: &[Fault], verbose: bool) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let through = |server: &BuiltIn, faults: &Faults, options: &RunOptions| -> Result<Report, String> {
        let mut target = server.target().map_err(|e| e.to_string())?;
        if !faults.is_empty() {
            target.control = None;
        }
        let proxy = FaultProxy::start(runtime.handle(), &target, faults).map_err(|e| e.to_string())?;
        let factory = NetworkFactory::new(proxy.in_front_of(&target)).map_err(|e| e.to_string())?;
        runner::run(options, Arc::new(factory), "network").map_err(|e| e.to_string())
    };
    let mut summary = Vec::new();
    if only.is_empty() {
        let options = RunOptions {
            target: "built-in reference server behind a fault proxy without faults".into(),
            jobs: 16,
            ..RunOptions::default()
        };
        let server = BuiltIn::start().map_err(|e| e.to_string())?;
        let clean = through(&server, &Faults::none(), &options)?;
        if !clean.ok() {
            return Err(format!(
                "a proxy without faults made cases fail:\n{}",
                clean.render_tree(false, verbose)
            ));
        }
        summary.push(format!("without faults {}", clean.summary()));
    }
    let started = std::time::Instant::now();
    let on_the_wire: Vec<Fault> = Fault::ALL
        .into_iter()
        .filter(|f| *f != Fault::AcceptExpiredToken && !ORDER_ACROSS_CONNECTIONS.contains(f))
        .filter(|f| only.is_empty() || only.contains(f))
        .collect();
    // A fault's run waits out the expectation timeout of every case it fails, so faults run side by side.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<String, String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..PROXY_FAULTS_AT_ONCE)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    let server = BuiltIn::start().map_err(|e| e.to_string());
                    while let Some(&fault) = on_the_wire.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                        let caught = match &server {
                            Ok(server) => {
                                caught_behind_proxy(fault, |faults, options| through(server, faults, options))
                            }
                            Err(error) => Err(error.clone()),
                        };
                        done.push((fault, caught));
                    }
                    done
                })
            })
            .collect();
        let mut all: Vec<(Fault, Result<String, String>)> =
            workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect();
        all.sort_by_key(|(fault, _)| *fault);
        all.into_iter().map(|(_, result)| result).collect()
    });
    let caught = results.into_iter().collect::<Result<Vec<String>, String>>()?;
    summary.push(format!(
        "{} faults caught in {:.1?} (order across connections left to the simulation): {}",
        caught.len(),
        started.elapsed(),
        caught.join(", ")
    ));
    Ok(summary.join("; "))
}

/// Faults that only change which of two connections hears first, by 50 ms (`HELD_MS`, src/faults.rs): over real sockets
/// the suite may see either order whatever the server does, so the proxy check leaves them to the simulation's
/// self-check, where the order is the server's.
const ORDER_ACROSS_CONNECTIONS: [Fault; 2] = [Fault::ReplacedCloseLate, Fault::RevokeResponseLast];

/// Fault runs through the proxy at the same time.
const PROXY_FAULTS_AT_ONCE: usize = 6;

/// The cases of `fault`'s areas against the server behind a proxy with `fault`: at least one must fail.
fn caught_behind_proxy(
    fault: Fault,
    through: impl Fn(&Faults, &RunOptions) -> Result<Report, String>,
) -> Result<String, String> {
    let options = RunOptions {
        files: selfcheck::areas(fault).iter().map(|f| f.to_string()).collect(),
        target: format!("built-in reference server behind a fault proxy with {fault}"),
        jobs: 8,
        ..RunOptions::default()
    };
    let report = through(&Faults::of([fault]), &options)?;
    let failed = report
        .cases
        .iter()
        .filter(|c| {
            use bimip::conformance::report::Verdict;
            matches!(c.verdict, Verdict::Fail | Verdict::Unimplemented)
        })
        .count();
    if report.ok() || failed == 0 {
        return Err(format!(
            "{fault} behind the fault proxy was not caught: {}",
            report.summary()
        ));
    }
    if report.halted.is_some() {
        return Err(format!(
            "{fault} behind the fault proxy: the run stopped early: {}",
            report.summary()
        ));
    }
    Ok(format!("{fault} ({failed})"))
}

/// Issue 18.4: a target that stops answering part-way stops the run at the first case that cannot connect: the
/// cases after it are skipped with one reason, the summary says so, the run fails, and it ends in seconds (each
/// case would otherwise wait out its own timeouts).
fn a_target_that_goes_away_stops_the_run() -> Result<String, String> {
    let server = BuiltIn::start().map_err(|e| e.to_string())?;
    let kill = server.killer();
    let options = RunOptions {
        files: vec!["chat.feature".into(), "awareness.feature".into()],
        target: "built-in reference server, killed part-way".into(),
        jobs: 1,
        ..RunOptions::default()
    };
    let started = std::time::Instant::now();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(2));
        kill();
    });
    let report = run_against(server, &options)?;
    let _ = killer.join();
    let not_run = report
        .cases
        .iter()
        .filter(|c| match &c.outcome {
            bimip::conformance::report::Outcome::Skipped { reason } => reason.contains("the target stopped answering"),
            _ => false,
        })
        .count();
    let summary = report.summary();
    let elapsed = started.elapsed();
    if report.ok() || not_run < 20 || !summary.contains("stopped early") || elapsed.as_secs() > 60 {
        return Err(format!("{not_run} cases not run, {elapsed:?}: {summary}"));
    }
    Ok(format!(
        "{not_run} of {} cases not run ({elapsed:.1?})",
        report.cases.len()
    ))
}

/// Issue 22: against a TCP-only and a WebSocket-only target, every transport-neutral case runs over that transport
/// and passes, the count is what `runner::list` promises, and a server that reorders chat on its TCP path alone is
/// caught by the TCP-only run and passes the WebSocket-only one.
fn single_transport_runs(verbose: bool) -> Result<String, String> {
    let neutral = spec::cases()?
        .iter()
        .filter(|c| c.neutral && c.file != spec::CLIENT_FEATURE)
        .count();
    let mut summaries = Vec::new();
    for transport in TransportKind::ALL {
        let options = RunOptions {
            target: format!("built-in reference server, {transport} only"),
            jobs: 16,
            transports: vec![transport],
            ..RunOptions::default()
        };
        let listed = runner::list(&options).map_err(|e| e.to_string())?.len();
        let report = run_against(BuiltIn::start().map_err(|e| e.to_string())?, &options)?;
        let over: Vec<_> = report.cases.iter().filter(|c| c.transport == Some(transport)).collect();
        let ran = over
            .iter()
            .filter(|c| c.verdict != bimip::conformance::report::Verdict::Skipped)
            .count();
        // TOK-10 needs a server without a signing key, which only the simulation can make.
        if !report.ok() || report.cases.len() != listed || over.len() != neutral || ran + 1 < neutral {
            return Err(format!(
                "{transport} only: {} cases of {listed} listed, {} neutral of {neutral}, {ran} of them ran:\n{}",
                report.cases.len(),
                over.len(),
                report.render_tree(false, verbose)
            ));
        }
        summaries.push(format!("{transport} only: {}", report.summary()));
    }
    for (transport, caught) in [(TransportKind::Tcp, true), (TransportKind::Ws, false)] {
        let faulty = BuiltIn::start_with_faults(Faults::of([Fault::ReorderChatTcp])).map_err(|e| e.to_string())?;
        let options = RunOptions {
            target: format!("built-in reference server with reorder-chat-tcp, {transport} only"),
            files: vec!["chat.feature".into()],
            jobs: 8,
            transports: vec![transport],
            ..RunOptions::default()
        };
        let report = run_against(faulty, &options)?;
        if report.ok() == caught {
            return Err(format!(
                "reorder-chat-tcp, {transport} only: expected {}:\n{}",
                if caught { "a failure" } else { "a pass" },
                report.render_tree(false, verbose)
            ));
        }
    }
    summaries.push("reorder-chat-tcp caught over tcp only".into());
    Ok(summaries.join("; "))
}

fn network_smoke(verbose: bool) -> Result<String, String> {
    let server = BuiltIn::start().map_err(|e| e.to_string())?;
    let options = RunOptions {
        tags: Some(NETWORK_SELECTION.into()),
        target: "built-in reference server".into(),
        jobs: 4,
        ..RunOptions::default()
    };
    let report = run_against(server, &options)?;
    if !report.ok() {
        return Err(report.render_tree(false, verbose));
    }
    // The test-only fault reaches the network server too (`bimip-conform --fault`).
    let faulty = BuiltIn::start_with_faults(Faults::of([Fault::NeverPong])).map_err(|e| e.to_string())?;
    let options = RunOptions {
        requirements: vec!["PING-1".into()],
        target: "built-in reference server with the fault never-pong".into(),
        jobs: 2,
        ..RunOptions::default()
    };
    let caught = run_against(faulty, &options)?;
    if caught.cases.is_empty() || caught.ok() {
        return Err(format!(
            "the never-pong server was not caught over the network: {}",
            caught.summary()
        ));
    }
    // A server that selects no subprotocol and sends no Authenticate RESPONSE on WebSocket (TRN-4, TRN-16 are
    // SHOULDs) passes over real sockets too, without waiting for the RESPONSE.
    let quiet = BuiltIn::start_with_variants(Variants::of([
        Variant::NoSubprotocol,
        Variant::NoWsAuthenticateResponse,
    ]))
    .map_err(|e| e.to_string())?;
    let options = RunOptions {
        tags: Some(NETWORK_SELECTION.into()),
        target: "built-in reference server without subprotocol and WebSocket Authenticate RESPONSE".into(),
        jobs: 4,
        ..RunOptions::default()
    };
    let allowed = run_against(quiet, &options)?;
    if !allowed.ok() {
        return Err(format!(
            "a server using allowed variants failed over the network:\n{}",
            allowed.render_tree(false, verbose)
        ));
    }
    // wss:// and tls:// targets: the same driver over TLS.
    let secure = BuiltIn::start_with(Faults::none(), Variants::default(), true).map_err(|e| e.to_string())?;
    let target = secure.target().map_err(|e| e.to_string())?;
    let urls = format!(
        "{}, {}",
        target.ws.clone().unwrap_or_default(),
        target.tcp.clone().unwrap_or_default()
    );
    if !urls.starts_with("wss://") || !urls.contains("tls://") {
        return Err(format!("the TLS built-in server has the targets {urls}"));
    }
    let options = RunOptions {
        requirements: vec!["PING-1".into(), "CHAT-14".into()],
        target: urls.clone(),
        jobs: 2,
        ..RunOptions::default()
    };
    let tls = run_against(secure, &options)?;
    // Only a network fault under the client may skip: the tap cannot read TLS.
    let skipped_for_another_reason = tls.cases.iter().any(|c| match &c.outcome {
        bimip::conformance::report::Outcome::Skipped { reason } => !reason.contains("cannot read a TLS stream"),
        _ => false,
    });
    if !tls.ok() || skipped_for_another_reason {
        return Err(format!("over TLS ({urls}):\n{}", tls.render_tree(false, verbose)));
    }
    Ok(format!(
        "{}; never-pong caught over the network; over TLS ({urls}): {}",
        report.summary(),
        tls.summary()
    ))
}

/// The `bimip-conform` binary against its built-in server: exit status, and
/// the JUnit, JSON and HTML reports of a small selection.
fn cli_reports() -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("bimip-conform-cli-{}", std::process::id()));
    let html = dir.join("html");
    let junit = dir.join("report.xml");
    let json = dir.join("report.json");
    let run = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_bimip-conform"))
            .args(args)
            .output()
            .map_err(|e| e.to_string())
    };
    let out = run(&[
        "--req".as_ref(),
        "ENV-5".as_ref(),
        "--no-color".as_ref(),
        "--html".as_ref(),
        html.as_os_str(),
        "--junit".as_ref(),
        junit.as_os_str(),
        "--json".as_ref(),
        json.as_os_str(),
    ])?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let result = (|| {
        if !out.status.success() {
            return Err(format!(
                "exit {:?}: {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let page = std::fs::read_to_string(html.join("index.html")).map_err(|e| format!("index.html: {e}"))?;
        let cases = page.matches("<details class=\"case v-pass\"").count();
        if cases == 0 || !page.contains("<b>PASSED</b>") || !page.contains("ENV-5") {
            return Err(format!("the HTML report lacks the passing ENV-5 cases:\n{page}"));
        }
        let xml = std::fs::read_to_string(&junit).map_err(|e| format!("report.xml: {e}"))?;
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).map_err(|e| format!("report.json: {e}"))?)
                .map_err(|e| format!("report.json: {e}"))?;
        let in_json = report["cases"].as_array().map_or(0, Vec::len);
        if in_json != cases || !xml.contains(&format!("tests=\"{cases}\"")) {
            return Err(format!(
                "the reports disagree: {cases} in HTML, {in_json} in JSON, JUnit:\n{xml}"
            ));
        }
        // stderr is a pipe here: progress comes as plain lines, one per case, without terminal escape codes.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let progress = stderr
            .lines()
            .filter(|l| l.starts_with('[') && l.contains(" ... "))
            .count();
        if stderr.contains('\x1b') || progress != cases {
            return Err(format!(
                "progress in a log: {progress} plain lines for {cases} cases, or escape codes:\n{stderr:?}"
            ));
        }
        // Selecting nothing is a failure, not a pass.
        let none = run(&["--req".as_ref(), "NO-SUCH-1".as_ref()])?;
        if none.status.success() {
            return Err("a run that selected no case exited 0".into());
        }
        // A target that is not there, or that never answers, gets one line that says so (exit 2), no case.
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let key = dir.join("hs256.secret");
        std::fs::write(&key, "a-secret-for-the-preflight").map_err(|e| e.to_string())?;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let closed_port = closed.local_addr().map_err(|e| e.to_string())?.port();
        drop(closed);
        let silent = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let silent_port = silent.local_addr().map_err(|e| e.to_string())?.port();
        // A WebSocket echo server: it completes the upgrade and sends every message back.
        let echo = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        echo.set_nonblocking(true).map_err(|e| e.to_string())?;
        let echo_port = echo.local_addr().map_err(|e| e.to_string())?.port();
        let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        runtime.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(echo) else {
                return;
            };
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    use futures::{SinkExt, StreamExt};
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        if (message.is_binary() || message.is_text()) && ws.send(message).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        // A plain HTTP server: every request gets 200 and a page.
        let http = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        http.set_nonblocking(true).map_err(|e| e.to_string())?;
        let http_port = http.local_addr().map_err(|e| e.to_string())?.port();
        runtime.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(http) else {
                return;
            };
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut request = [0u8; 4096];
                    let _ = stream.read(&mut request).await;
                    let page = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
                    let _ = stream.write_all(page.as_bytes()).await;
                });
            }
        });
        let targets = [
            (format!("ws://127.0.0.1:{http_port}/"), "HTTP 200"),
            (format!("tcp://127.0.0.1:{closed_port}"), "nothing listens there"),
            (format!("tcp://127.0.0.1:{silent_port}"), "did not complete"),
            (format!("ws://127.0.0.1:{echo_port}/ws"), "an echo server"),
        ];
        for (url, says) in targets {
            let started = std::time::Instant::now();
            let out = run(&[
                "--target".as_ref(),
                url.as_ref(),
                "--jwt-key".as_ref(),
                key.as_os_str(),
                "--jwt-alg".as_ref(),
                "HS256".as_ref(),
                "--timeout".as_ref(),
                "1".as_ref(),
            ])?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            let answer = lines
                .iter()
                .filter(|l| l.contains("not ready") && l.contains(says))
                .count();
            if out.status.code() != Some(2) || answer != 1 || lines.len() > 2 || started.elapsed().as_secs() > 10 {
                return Err(format!(
                    "{url}: expected exit 2 and one line saying {says:?} within 10 s; got {:?} after {:?}:\n{stderr}",
                    out.status.code(),
                    started.elapsed()
                ));
            }
        }
        drop(silent);
        drop(runtime);
        Ok(format!(
            "{cases} cases in the HTML, JUnit and JSON reports, {progress} plain progress lines; exit 0, and \
             non-zero when nothing ran; a plain HTTP, an absent, a silent and an echoing target each get one line"
        ))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Cases from every area, for the runs over real sockets.
const NETWORK_SELECTION: &str = "@PING-1 or @AUTH-9 or @TRN-7 or @TRN-9 or @ENV-5 or @ENV-12 or @SES-1 or @SES-5 or @TOK-1 \
     or @AWR-9 or @SUB-1 or @BLK-1 or @VIS-1 or @LOC-1 or @CHAT-14 or @ACK-1 or @QUE-6";

/// A `bimip serve` process (RS256, short timers from a settings file), and
/// `bimip-conform --target ... --jwt-key ...` against it: every case over real
/// loopback sockets must pass (the loopback test of each SPEC requirement).
/// Most of a case's time is waiting (deadlines, "nothing arrives"), so more
/// jobs than cores pay off. The server runs in the background with a pid file,
/// as an operator would run it, so that the suite's lifecycle hooks can kill
/// it with `kill -9`, stop it with SIGINT and start it again on the same ports:
/// the restart cases (SES-8, AUTH-14, CHAT-15, QUE-2 across a kill) run too.
fn against_bimip_serve() -> Result<String, String> {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");
    let dir = std::env::temp_dir().join(format!("bimip-serve-conform-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let config = dir.join("bimip.toml");
    std::fs::write(
        &config,
        // Two seconds between pings: the ping cases' timing has a second of slack for a loaded machine (a
        // 1-second interval once failed when the server's timer ran 330 ms late).
        "[limits]\nping_interval_ms = 2000\nauth_deadline_ms = 2000\nqueue_max_items = 20\n",
    )
    .map_err(|e| e.to_string())?;
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| e.to_string())
    };
    let (ws_port, tcp_port) = (free_port()?, free_port()?);
    let pid = dir.join("server.pid");
    let start = format!(
        "{bimip} serve --ws 127.0.0.1:{ws_port} --tcp 127.0.0.1:{tcp_port} --no-admin --no-grpc --jwt-alg RS256 \
         --config {config} --data-dir {data} --jwt-key {keys}/rs256-test.pub.pem \
         --jwt-signing-key {keys}/rs256-test.pem >> {log} 2>&1 & echo $! > {pid}",
        bimip = env!("CARGO_BIN_EXE_bimip"),
        config = config.display(),
        data = dir.join("data").display(),
        log = dir.join("serve.log").display(),
        pid = pid.display(),
    );
    // Gone, or a zombie nobody reaped: either way its sockets and files are closed.
    let stop = |signal: &str| {
        format!(
            "p=$(cat {pid}); kill -{signal} $p; while [ -d /proc/$p ] && [ \"$(cut -d' ' -f3 /proc/$p/stat)\" != Z ]; \
             do sleep 0.05; done",
            pid = pid.display()
        )
    };
    let (kill, restart) = (stop("9"), format!("{}; {start}", stop("INT")));
    bimip::conformance::lifecycle::run_hook("start", &start)?;
    let result = (|| {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        for port in [ws_port, tcp_port] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if std::time::Instant::now() > until {
                    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
                    return Err(format!("bimip serve did not listen on {port}:\n{log}"));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bimip-conform"))
            .args(["--target", &format!("ws://127.0.0.1:{ws_port}/ws")])
            .args(["--target", &format!("tcp://127.0.0.1:{tcp_port}"), "--jwt-alg", "RS256"])
            .args([
                "--auth-deadline",
                "2",
                "--queue-limit",
                "20",
                "--no-color",
                "--jobs",
                "8",
            ])
            .args(["--restart-cmd", &restart, "--kill-cmd", &kill, "--start-cmd", &start])
            .arg("--jwt-key")
            .arg(format!("{keys}/rs256-test.pem"))
            .output()
            .map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!("bimip-conform exited {:?}:\n{stdout}", out.status));
        }
        // The restart cases ran (a skip would pass the run without them).
        let restarts = stdout.lines().filter(|l| l.contains("SES-8")).count();
        if restarts < 4 || stdout.contains("needs --restart-cmd") || stdout.contains("needs --kill-cmd") {
            return Err(format!("the restart cases did not all run:\n{stdout}"));
        }
        // The same external server behind the binary's fault proxy (`--fault`, issue 18.7): the run must fail.
        let broken = std::process::Command::new(env!("CARGO_BIN_EXE_bimip-conform"))
            .args(["--target", &format!("ws://127.0.0.1:{ws_port}/ws")])
            .args(["--target", &format!("tcp://127.0.0.1:{tcp_port}"), "--jwt-alg", "RS256"])
            .args([
                "--fault",
                "wrong-ack-code",
                "--area",
                "ack",
                "--no-color",
                "--jobs",
                "8",
            ])
            .arg("--jwt-key")
            .arg(format!("{keys}/rs256-test.pem"))
            .output()
            .map_err(|e| e.to_string())?;
        let proxied = String::from_utf8_lossy(&broken.stdout).into_owned();
        if broken.status.code() != Some(1) || !proxied.contains("fail") {
            return Err(format!(
                "bimip serve behind a fault proxy with wrong-ack-code exited {:?}:\n{proxied}{}",
                broken.status,
                String::from_utf8_lossy(&broken.stderr)
            ));
        }
        Ok(format!(
            "{}; behind `--fault wrong-ack-code`: {}",
            stdout.lines().last().unwrap_or_default(),
            proxied.lines().last().unwrap_or_default()
        ))
    })();
    let _ = bimip::conformance::lifecycle::run_hook("kill", &kill);
    let _ = std::fs::remove_dir_all(&dir);
    result
}
