//! `bimip-conform`: checks a BIMIP server against SPEC.md over the network, or
//! (`bimip-conform client --adapter CMD`) a client, through an adapter.
//!
//! With no `--target` it starts the built-in reference server on loopback
//! (WebSocket and native TCP, fresh data directory, short timers) and checks
//! that; otherwise it checks the given server. Every case is a scenario of
//! `features/`, tagged with the requirement IDs it checks; the verdicts come
//! as a tree by SPEC section, and optionally as JUnit XML, JSON and HTML.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;

use bimip::conformance::adapter::Adapter;
use bimip::conformance::builtin::BuiltIn;
use bimip::conformance::client_mode::ClientModeFactory;
use bimip::conformance::driver::{Credentials, TargetInfo, TransportKind};
use bimip::conformance::fault_proxy::FaultProxy;
use bimip::conformance::lifecycle::ShellHooks;
use bimip::conformance::network::{Control, NetworkFactory, NetworkTarget};
use bimip::conformance::report::Report;
use bimip::conformance::runner::{self, RunOptions};
use bimip::core::auth::Algorithm;

const AFTER_HELP: &str = "\
Targets:
  Give --target once per transport: a ws:// or wss:// URL (any path, e.g.
  ws://127.0.0.1:7420/ws) and a tcp:// or tls:// URL. Cases on a transport
  without a target are skipped. A case about no particular transport (most of
  them) runs once per transport given, its name ending in [websocket] or [tcp].
  With no --target at all, the built-in reference server is started on loopback
  and checked over both.

Clusters:
  Several --target URLs of one transport are the nodes of one cluster, node 0
  first (--target ws://127.0.0.1:7420/ws --target ws://127.0.0.1:7430/ws). Each
  case spreads its devices over the nodes, round robin and the same every run:
  the k-th distinct (user, device) a case connects goes to node k mod n, and a
  device that connects again goes to the node after its previous one (a
  replaced session, a resumption, a token presented again: on another node).
  Raw HTTP requests (the upgrade refusal cases) take the WebSocket nodes in
  turn (a case's first goes to node 0). Every node must pass the preflight.
  --restart-cmd, --kill-cmd and --start-cmd act on the whole cluster; the
  suite then waits for every node to accept connections again.
  The reports name every URL.

Credentials (for an external target; one of):
  --jwt-key FILE --jwt-alg ALG   the suite mints every token itself (RS256: a
                                 private key PEM; EdDSA: a PKCS#8 PEM; HS256:
                                 the secret file). Needed for the expired,
                                 not-yet-valid, short-lived and missing-claim
                                 cases.
  --token-cmd 'CMD {eid} {device}'
                                 run through `sh -c` with {eid} and {device}
                                 replaced; its trimmed stdout is the token.
                                 Cases that need the key are skipped.

Selection:
  --tags '@must and not @PING-2'   cucumber tag expression (tags without @ in
                                   the report; every scenario has its
                                   requirement IDs and @must/@should/@may)
  --req ENV-5 --req AUTH-3         only cases tagged with these IDs
  --exclude '@should'              leave out cases matching the expression

Verdicts:
  pass; fail; non-strict (a SHOULD/MAY case failed: fails only with --strict);
  unimplemented (the server answered 501 unknown_route to a SPEC route: fails
  unless listed in --expected-failures); skipped (cannot run against this
  target: the reason is shown); expected failure; unexpected pass (a listed
  case passed: fails the run). Exit status 0 only when every selected case
  passed; 1 when a case failed or none ran; 2 on a usage or setup error.

Client mode:
  bimip-conform client --adapter 'CMD' checks a client (an SDK) instead: the
  suite plays the server on loopback (WebSocket and TCP) and drives the client
  through CMD, an adapter speaking JSON lines on stdin/stdout (the protocol:
  conformance/README.md, \"Client mode\"). Selection and report options apply.

Examples:
  bimip-conform
  bimip-conform client --adapter 'target/debug/bimip-client-adapter' --junit client.xml
  bimip-conform --target ws://chat.example.com/bimip --target tcp://chat.example.com:7421 \\
                --jwt-key issuer.pem --jwt-alg RS256 --junit report.xml
  bimip-conform --target ws://127.0.0.1:7420/ws --token-cmd 'bimip token {eid} {device}' --req AUTH-9
  bimip-conform --target ws://10.0.0.1:7420/ws --target ws://10.0.0.2:7420/ws \\
                --target tcp://10.0.0.1:7421 --target tcp://10.0.0.2:7421 \\
                --jwt-key issuer.pem --jwt-alg RS256
";

/// Checks a BIMIP server against SPEC.md.
#[derive(Debug, Parser)]
#[command(name = "bimip-conform", version, after_help = AFTER_HELP)]
struct Args {
    /// A server URL: ws://, wss://, tcp:// or tls://; once per transport, or once per node of a cluster.
    #[arg(long, value_name = "URL")]
    target: Vec<String>,
    /// Accept any TLS certificate (self-signed development servers).
    #[arg(long)]
    insecure: bool,
    /// A shell command that restarts the target gracefully and returns (e.g. `systemctl restart my-server`):
    /// with it the restart cases run (SES-8, AUTH-14, CHAT-15). The suite then waits for the target (every node of
    /// a cluster) to accept connections again.
    #[arg(long, value_name = "CMD", requires = "target")]
    restart_cmd: Option<String>,
    /// A shell command that kills the target without warning (e.g. `kill -9 $(cat server.pid)`); with
    /// --start-cmd the durability cases run (QUE-2 across a kill).
    #[arg(long, value_name = "CMD", requires_all = ["target", "start_cmd"])]
    kill_cmd: Option<String>,
    /// A shell command that starts the target after --kill-cmd and returns (it backgrounds the server).
    #[arg(long, value_name = "CMD", requires_all = ["target", "kill_cmd"])]
    start_cmd: Option<String>,
    /// The key the suite signs tokens with (see below).
    #[arg(long, value_name = "FILE", requires = "jwt_alg", conflicts_with = "token_cmd")]
    jwt_key: Option<PathBuf>,
    /// RS256, EdDSA or HS256.
    #[arg(long, value_name = "ALG")]
    jwt_alg: Option<String>,
    /// A shell command that prints a token for {eid} and {device}.
    #[arg(long, value_name = "CMD")]
    token_cmd: Option<String>,
    /// Only cases matching this cucumber tag expression.
    #[arg(long, value_name = "EXPR", global = true)]
    tags: Option<String>,
    /// Only cases tagged with this requirement ID (repeatable).
    #[arg(long = "req", value_name = "ID", global = true)]
    requirements: Vec<String>,
    /// Only cases whose name contains this text (repeatable).
    #[arg(long = "name", value_name = "TEXT", global = true)]
    names: Vec<String>,
    /// Only cases checking a requirement of this area: AWR selects @AWR-1, @AWR-2, ... (repeatable or
    /// comma-separated).
    #[arg(long = "area", value_name = "AREA", value_delimiter = ',', global = true)]
    areas: Vec<String>,
    /// Leave out cases checking a requirement of this area (repeatable or comma-separated).
    #[arg(long = "exclude-area", value_name = "AREA", value_delimiter = ',', global = true)]
    exclude_areas: Vec<String>,
    /// Routes the target does not implement on purpose (e.g. 2,4,21): a case that needs one is reported as not
    /// applicable, not as a failure or unimplemented.
    #[arg(long = "without-route", value_name = "ROUTE", value_delimiter = ',')]
    without_routes: Vec<i64>,
    /// The target's token leeway (SPEC AUTH-6, at most 60): a session may end up to this long after its
    /// token's exp.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    leeway: f64,
    /// Leave out cases matching this tag expression.
    #[arg(long, value_name = "EXPR", global = true)]
    exclude: Option<String>,
    /// SHOULD and MAY failures fail the run.
    #[arg(long, global = true)]
    strict: bool,
    /// Scenario names, FILE:LINE or requirement IDs expected to fail, one per
    /// line (`#` comments); one that passes fails the run.
    #[arg(long, value_name = "FILE", global = true)]
    expected_failures: Option<PathBuf>,
    /// Cases run side by side (each has its own users; most of a case's time is waiting).
    #[arg(long, short = 'j', value_name = "N", default_value_t = 16, global = true)]
    jobs: usize,
    /// Longest wait for an expected stanza, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0, global = true)]
    timeout: f64,
    /// Longest the whole run may take, seconds: the cases not begun by then are skipped and the run fails
    /// (exit 1) saying so. A target that stops answering part-way stops the run at once, the same way.
    #[arg(long, value_name = "SECONDS", default_value_t = 1800.0, global = true)]
    deadline: f64,
    /// The target's TCP auth deadline, seconds (SPEC default 10).
    #[arg(long, value_name = "SECONDS")]
    auth_deadline: Option<f64>,
    /// The target's receiver queue limit, when low enough to reach (QUE-10);
    /// without it those cases are skipped.
    #[arg(long, value_name = "ITEMS")]
    queue_limit: Option<usize>,
    /// Print the selected cases with their tags; run nothing.
    #[arg(long, global = true)]
    list: bool,
    /// Print the step vocabulary (the patterns feature files may use); run nothing.
    #[arg(long, global = true)]
    steps: bool,
    /// Write a JUnit XML report.
    #[arg(long, value_name = "FILE", global = true)]
    junit: Option<PathBuf>,
    /// Write a JSON report (every case, failures with transcripts).
    #[arg(long, value_name = "FILE", global = true)]
    json: Option<PathBuf>,
    /// Write a self-contained HTML report to DIR/index.html (filters,
    /// Expected/Actual, transcripts).
    #[arg(long, value_name = "DIR", global = true)]
    html: Option<PathBuf>,
    /// Show details and transcripts for every case that did not pass.
    #[arg(long, short, global = true)]
    verbose: bool,
    /// No colours in the terminal report.
    #[arg(long, global = true)]
    no_color: bool,
    /// Check the suite, not the server: break this rule on purpose and expect the run to fail (names in
    /// src/faults.rs). The built-in server breaks it itself; in front of a --target (ws:// or tcp://) a fault proxy
    /// breaks it on the wire (conformance/fault_proxy.rs). A run that passes is a hole in the suite. Repeatable.
    #[arg(long, value_name = "NAME")]
    fault: Vec<bimip::faults::Fault>,
    /// TEST ONLY: the built-in server uses this behaviour SPEC allows but it
    /// does not choose (names in src/variants.rs); the suite must pass it. Repeatable.
    #[arg(long, value_name = "NAME", hide = true)]
    variant: Vec<bimip::variants::Variant>,
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Check a client (an SDK) instead of a server: the suite plays the server on loopback and drives the
    /// client through an adapter speaking JSON lines (conformance/README.md, "Client mode").
    Client {
        /// The adapter, run with `sh -c` once per case (e.g. `node sdk/adapter.js`).
        #[arg(long, value_name = "CMD")]
        adapter: String,
    },
}

fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .map(|l| l.split(" #").next().unwrap_or(l).trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

fn write_report(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The transports the given targets offer, WebSocket first; none given (the built-in server): both.
fn transports_of(targets: &[String]) -> Vec<TransportKind> {
    let offers = |schemes: [&str; 2]| {
        targets
            .iter()
            .any(|t| schemes.iter().any(|s| t.starts_with(&format!("{s}://"))))
    };
    let mut out = Vec::new();
    if offers(["ws", "wss"]) {
        out.push(TransportKind::Ws);
    }
    if offers(["tcp", "tls"]) {
        out.push(TransportKind::Tcp);
    }
    out
}

fn run(args: Args) -> Result<bool> {
    let options = RunOptions {
        tags: args.tags.clone(),
        exclude: args.exclude.clone(),
        requirements: args.requirements.clone(),
        areas: args.areas.clone(),
        exclude_areas: args.exclude_areas.clone(),
        names: args.names.clone(),
        files: Vec::new(),
        strict: args.strict,
        expected_failures: match &args.expected_failures {
            Some(path) => read_list(path)?,
            None => Vec::new(),
        },
        progress: !args.list,
        target: String::new(),
        targets: Vec::new(),
        jobs: args.jobs,
        transports: transports_of(&args.target),
        deadline: Some(Duration::from_secs_f64(args.deadline)),
        client_mode: args.mode.is_some(),
    };
    if args.steps {
        for phrase in bimip::conformance::steps::phrases() {
            println!("{phrase}");
        }
        return Ok(true);
    }
    runner::check_selectors(&options)?;
    runner::check_baseline(&options.expected_failures)?;
    if args.list {
        let cases = runner::list(&options)?;
        for case in &cases {
            let tags: Vec<String> = case.tags.iter().map(|t| format!("@{t}")).collect();
            println!(
                "{}:{}  §{} {}: {}  {}",
                case.file,
                case.line,
                case.section,
                case.area,
                case.name,
                tags.join(" ")
            );
        }
        println!("{} cases", cases.len());
        return Ok(!cases.is_empty());
    }
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    if !(args.deadline > 0.0 && args.deadline.is_finite()) {
        bail!("--deadline must be a positive number of seconds");
    }
    if !(0.0..=60.0).contains(&args.leeway) {
        bail!("--leeway {}: SPEC AUTH-6 allows 0 to 60 seconds", args.leeway);
    }
    let mut info = TargetInfo {
        timeout: Duration::from_secs_f64(args.timeout),
        queue_max_items: args.queue_limit,
        leeway: Duration::from_secs_f64(args.leeway),
        without_routes: args.without_routes.clone(),
        ..TargetInfo::default()
    };
    if let Some(s) = args.auth_deadline {
        info.auth_deadline = Duration::from_secs_f64(s);
    }
    if let Some(Mode::Client { adapter }) = &args.mode {
        if !args.target.is_empty() {
            bail!("client mode checks a client: the suite is the server, so it takes no --target");
        }
        // One adapter started before the run: a command that cannot start says so once, not once per case.
        Adapter::start(adapter)
            .map_err(|why| anyhow::anyhow!("the adapter is not ready, so no case was run: {why}"))?;
        eprintln!("bimip-conform: checking the client behind `{adapter}`");
        let factory = ClientModeFactory {
            adapter: adapter.clone(),
            info,
        };
        let options = RunOptions {
            target: format!("the client behind `{adapter}`"),
            ..options
        };
        let report = runner::run(&options, Arc::new(factory), "client")?;
        return publish(&args, &report);
    }
    let mut built_in = None;
    let target = if args.target.is_empty() {
        if args.jwt_key.is_some() || args.token_cmd.is_some() {
            bail!("--jwt-key and --token-cmd need a --target (the built-in server brings its own key)");
        }
        let faults = bimip::faults::Faults::of(args.fault.iter().copied());
        let variants = bimip::variants::Variants::of(args.variant.iter().copied());
        let server = BuiltIn::start_with(faults, variants, false).context("starting the built-in reference server")?;
        let mut target = server.target()?;
        target.info.timeout = info.timeout;
        target.info.without_routes = info.without_routes.clone();
        built_in = Some(server);
        target
    } else {
        if !args.variant.is_empty() {
            bail!("--variant applies to the built-in server only (no --target)");
        }
        // Several URLs of a transport are the nodes of one cluster, in the order given (node 0 first).
        let mut ws: Vec<String> = Vec::new();
        let mut tcp: Vec<String> = Vec::new();
        for url in &args.target {
            let nodes = match url.split("://").next() {
                Some("ws" | "wss") => &mut ws,
                Some("tcp" | "tls") => &mut tcp,
                _ => bail!("{url}: a target is ws://, wss://, tcp:// or tls://"),
            };
            if nodes.contains(url) {
                bail!("{url}: given twice (each --target of a transport is another node of the cluster)");
            }
            nodes.push(url.clone());
        }
        let hooks = ShellHooks {
            restart: args.restart_cmd.clone(),
            kill: args.kill_cmd.clone(),
            start: args.start_cmd.clone(),
        };
        let credentials = match (&args.jwt_key, &args.jwt_alg, &args.token_cmd) {
            (Some(key), Some(alg), None) => {
                let alg: Algorithm = alg.parse().map_err(|e| anyhow::anyhow!("--jwt-alg: {e}"))?;
                Credentials::Key(Arc::new(bimip::keys::load_signer(alg, key)?))
            }
            (None, _, Some(cmd)) => Credentials::Command(cmd.clone()),
            _ => bail!("an external target needs --jwt-key FILE --jwt-alg ALG or --token-cmd CMD"),
        };
        NetworkTarget {
            ws: ws.first().cloned(),
            tcp: tcp.first().cloned(),
            more_ws: ws.iter().skip(1).cloned().collect(),
            more_tcp: tcp.iter().skip(1).cloned().collect(),
            credentials,
            info,
            insecure: args.insecure,
            control: hooks.any().then(|| Control(Arc::new(hooks))),
        }
    };
    let description = match &built_in {
        Some(_) => format!(
            "the built-in reference server ({}, {}){}",
            target.ws.as_deref().unwrap_or_default(),
            target.tcp.as_deref().unwrap_or_default(),
            if args.fault.is_empty() {
                String::new()
            } else {
                let names: Vec<&str> = args.fault.iter().map(|f| f.name()).collect();
                format!(" with the test-only faults {}", names.join(", "))
            }
        ),
        None if args.fault.is_empty() => external(&target, &args.target),
        None => {
            let names: Vec<&str> = args.fault.iter().map(|f| f.name()).collect();
            format!(
                "{} behind a fault proxy with {}",
                external(&target, &args.target),
                names.join(", ")
            )
        }
    };
    // The URLs checked, for the JSON and JUnit reports: the target's own (not the fault proxy's).
    let urls: Vec<String> = target.urls().into_iter().map(str::to_string).collect();
    // In front of an external target, faults are applied on the wire; the proxy runs until the run ends.
    let mut proxied = None;
    let target = if built_in.is_none() && !args.fault.is_empty() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the fault proxy's runtime")?;
        let faults = bimip::faults::Faults::of(args.fault.iter().copied());
        let proxy = FaultProxy::start(runtime.handle(), &target, &faults)?;
        let target = proxy.in_front_of(&target);
        proxied = Some((proxy, runtime));
        target
    } else {
        target
    };
    let factory = NetworkFactory::new(target).context("starting the network driver")?;
    if let Err(problem) = factory.preflight() {
        bail!("the target is not ready, so no case was run: {problem}");
    }
    eprintln!("bimip-conform: checking {description}");
    let options = RunOptions {
        target: description,
        targets: urls,
        ..options
    };
    let report = runner::run(&options, Arc::new(factory), "network")?;
    drop(built_in);
    drop(proxied);
    publish(&args, &report)
}

/// An external target in words: its URLs as given, and for a cluster each transport's nodes in order.
fn external(target: &NetworkTarget, given: &[String]) -> String {
    if !target.is_cluster() {
        return given.join(", ");
    }
    let mut parts = Vec::new();
    for transport in TransportKind::ALL {
        let nodes = target.nodes(transport);
        if nodes.is_empty() {
            continue;
        }
        let listed: Vec<String> = nodes.iter().enumerate().map(|(i, url)| format!("{i}: {url}")).collect();
        parts.push(format!("{} {transport} nodes ({})", nodes.len(), listed.join(", ")));
    }
    format!("a cluster of {}", parts.join(" and "))
}

/// Prints the report and writes the files asked for; whether the run passed.
fn publish(args: &Args, report: &Report) -> Result<bool> {
    let colour = !args.no_color && std::io::IsTerminal::is_terminal(&std::io::stdout());
    print!("{}", report.render_tree(colour, args.verbose));
    if let Some(path) = &args.junit {
        write_report(path, &report.junit())?;
    }
    if let Some(path) = &args.json {
        write_report(path, &report.json())?;
    }
    if let Some(dir) = &args.html {
        let path =
            bimip::conformance::html::write(report, dir).with_context(|| format!("writing {}", dir.display()))?;
        eprintln!("bimip-conform: HTML report in {}", path.display());
    }
    if report.cases.is_empty() {
        eprintln!("bimip-conform: no case was selected");
    }
    if let Some(why) = &report.halted {
        eprintln!("bimip-conform: the run stopped before its last case: {why}");
    }
    Ok(report.ok())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("bimip-conform: {error:#}");
            ExitCode::from(2)
        }
    }
}
