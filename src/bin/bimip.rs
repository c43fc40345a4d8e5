//! `bimip`: the developer CLI. Verbs: decode, encode, token, serve, connect,
//! queue inspect / queue verify.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use base64::Engine;
use bytes::BytesMut;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::codec::Decoder;

use bimip::codec::{self, DEFAULT_MAX_STANZA_BYTES, TcpFrameCodec, json};

#[path = "bimip/console.rs"]
mod console;
#[path = "bimip/sim.rs"]
mod sim;

/// mimalloc, not glibc malloc: the engine allocates small objects all the time, and a partitioned server frees
/// on one core what another allocated (BENCHMARKS.md, reference server part 5).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "bimip", version, about = "BIMIP conformance kit: developer tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode stanza bytes (hex, base64 or a binary file) to readable YAML or JSON.
    Decode(DecodeArgs),
    /// Encode a stanza written in YAML or JSON (proto3 JSON mapping) to bytes.
    Encode(EncodeArgs),
    /// Mint a JWT for a user's device (development: signed with the data dir's key).
    Token(TokenArgs),
    /// Run the reference server (WebSocket, native TCP, admin endpoint, backend gRPC API).
    Serve(Box<ServeArgs>),
    /// Connect to a BIMIP server as a client: ping it, then log out (or stay).
    Connect(ConnectArgs),
    /// Look into an offline queue directory (the server's DATA_DIR/queue).
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Sweep seeds of the deterministic simulation (workload, faults, invariant checks).
    Sim(sim::SimArgs),
    /// An interactive console: connect as users, send stanzas, see what arrives, call the backend API.
    Console(Box<console::ConsoleArgs>),
    /// Load a BIMIP server (the reference server by default): chat pairs, or idle connections (--idle N).
    Bench(Box<bimip::load::BenchArgs>),
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Print what opening the queue would give: segments, each EID's retained items, devices and their
    /// committed offsets, and what recovery would cut. Reads only; never changes the directory.
    /// Exit codes: 0 printed, 2 the directory could not be read.
    Inspect {
        /// The queue directory.
        dir: PathBuf,
    },
    /// Read and check every record, index and EID's increments; list each problem found. Reads only.
    /// Exit codes: 0 no problem, 1 problems found (listed), 2 the directory could not be read.
    Verify {
        /// The queue directory.
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct ConnectArgs {
    /// ws://host:port/path, wss://..., tcp://host:port or tls://host:port.
    url: String,
    /// The JWT (see `bimip token`).
    #[arg(long)]
    token: String,
    /// How many pings to send.
    #[arg(long, default_value_t = 1)]
    pings: u32,
    /// Stay connected after the pings, printing what arrives, until Ctrl-C.
    #[arg(long)]
    stay: bool,
    /// Accept any TLS certificate (development servers with self-signed certs).
    #[arg(long)]
    insecure: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A TOML settings file (same keys as the flags; flags win).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// WebSocket listener address (default 127.0.0.1:7420).
    #[arg(long, value_name = "ADDR")]
    ws: Option<std::net::SocketAddr>,
    /// Native TCP listener address (default 127.0.0.1:7421).
    #[arg(long, value_name = "ADDR")]
    tcp: Option<std::net::SocketAddr>,
    /// Admin listener: GET /healthz, GET /metrics (default 127.0.0.1:7422).
    #[arg(long, value_name = "ADDR")]
    admin: Option<std::net::SocketAddr>,
    /// Backend gRPC API listener (default 127.0.0.1:7423; plaintext only on loopback).
    #[arg(long, value_name = "ADDR")]
    grpc: Option<std::net::SocketAddr>,
    /// The backend API's bearer secret, first line of FILE (default DATA_DIR/admin-secret, made on first start).
    #[arg(long, value_name = "FILE")]
    grpc_secret_file: Option<PathBuf>,
    /// This server's name in the backend API's session lists and stats, and its name in --cluster-nodes
    /// (default "local").
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// Run as one node of a cluster whose nodes reach each other through this NATS (URLs, comma-separated).
    #[arg(long, value_name = "URLS", requires_all = ["node", "cluster_nodes"])]
    cluster: Option<String>,
    /// Every node of the cluster, in the same order on every node (comma-separated names); each node runs
    /// --shards shards, the same number on all.
    #[arg(long, value_name = "NAMES", value_delimiter = ',', requires = "cluster")]
    cluster_nodes: Vec<String>,
    /// Turn a listener off.
    #[arg(long)]
    no_ws: bool,
    #[arg(long)]
    no_tcp: bool,
    #[arg(long)]
    no_admin: bool,
    #[arg(long)]
    no_grpc: bool,
    /// Keys, revocations, the social graph and the offline queue live here (default ./bimip-data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Where chat is kept: durable (DATA_DIR/queue, the default) or memory (lost at exit; for load tests).
    #[arg(long, value_name = "KIND")]
    store: Option<bimip::server::ChatStorage>,
    /// Engine shards, each owning the users whose EID hashes to it (default: the data directory's count, or 1 for
    /// a new one; see BENCHMARKS.md before raising it with the durable store).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    shards: Option<u16>,
    /// Token algorithm of --jwt-key: RS256, EdDSA or HS256 (default: the development EdDSA key).
    #[arg(long, requires = "jwt_key")]
    jwt_alg: Option<String>,
    /// Token verification key: public key PEM, or HS256 secret file.
    #[arg(long, value_name = "FILE", requires = "jwt_alg")]
    jwt_key: Option<PathBuf>,
    /// Private key (or secret) to sign refreshed tokens.
    #[arg(long, value_name = "FILE", requires = "jwt_key")]
    jwt_signing_key: Option<PathBuf>,
    /// TLS certificate chain PEM (both listeners become wss:// and tls://).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// TEST ONLY: break one protocol rule on purpose (conformance self-check;
    /// names in src/faults.rs). Repeatable.
    #[arg(long, value_name = "NAME", hide = true)]
    fault: Vec<bimip::faults::Fault>,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The user, e.g. alice@example.com (the `eid` claim).
    #[arg(long)]
    eid: String,
    /// The device, e.g. phone (the `device_id` claim; Identity.connection_resource_id).
    #[arg(long)]
    device: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: i64,
    /// The `jti` claim; default: unique per call.
    #[arg(long)]
    jti: Option<String>,
    /// Sign with this private key (or HS256 secret) file instead of the development key.
    #[arg(long, value_name = "FILE", requires = "alg")]
    key: Option<PathBuf>,
    /// Algorithm of --key: RS256, EdDSA or HS256.
    #[arg(long)]
    alg: Option<bimip::core::auth::Algorithm>,
    /// Where `bimip serve` keeps its development key.
    #[arg(long, default_value = "bimip-data")]
    data_dir: PathBuf,
}

#[derive(clap::Args)]
struct DecodeArgs {
    /// The bytes as hex ("0806...", spaces and a 0x prefix allowed). Read from
    /// standard input when absent and no --file is given.
    data: Option<String>,
    /// DATA (or standard input) is base64, not hex.
    #[arg(long)]
    base64: bool,
    /// Read raw binary bytes from this file ("-" = standard input).
    #[arg(long, conflicts_with_all = ["data", "base64"])]
    file: Option<PathBuf>,
    /// The bytes are a native TCP stream: 4-byte big-endian length-prefixed frames.
    #[arg(long)]
    tcp: bool,
    /// Decode as this message type instead of a MessageScheme envelope.
    #[arg(long, value_name = "TYPE")]
    message: Option<String>,
    /// Print JSON instead of YAML.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Hex,
    Base64,
    Binary,
}

#[derive(clap::Args)]
struct EncodeArgs {
    /// A YAML or JSON file ("-" or absent = standard input). Either the message
    /// itself or `bimip decode` output (its `fields:` are used).
    file: Option<PathBuf>,
    /// How to write the bytes.
    #[arg(long, value_enum, default_value = "hex")]
    output: OutputFormat,
    /// Encode as this message type instead of a MessageScheme envelope.
    #[arg(long, value_name = "TYPE")]
    message: Option<String>,
    /// Prefix the bytes with the native TCP 4-byte big-endian length.
    #[arg(long)]
    tcp: bool,
    /// Write a MessageScheme even if it breaks the envelope rule (for building test cases).
    #[arg(long)]
    allow_invalid: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Decode(args) => decode(args),
        Command::Encode(args) => encode(args),
        Command::Token(args) => token(args),
        Command::Serve(args) => serve(*args),
        Command::Connect(args) => connect(args),
        Command::Queue(command) => queue(command),
        Command::Sim(args) => sim::run(args),
        Command::Console(args) => console::run(*args),
        Command::Bench(args) => bench(&args),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn read_input(file: Option<&PathBuf>) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    match file {
        Some(path) if path.as_os_str() != "-" => {
            buf = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        }
        _ => {
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading standard input")?;
        }
    }
    Ok(buf)
}

fn parse_text_bytes(text: &str, base64: bool) -> Result<Vec<u8>> {
    let compact: String = text.split_whitespace().collect();
    if base64 {
        return base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .context("input is not valid base64");
    }
    let digits = compact.strip_prefix("0x").unwrap_or(&compact);
    hex::decode(digits).context("input is not valid hex (use --base64 or --file for other forms)")
}

/// Exit 0 when every stanza decodes and keeps the envelope rule, 1 otherwise.
fn decode(args: DecodeArgs) -> Result<ExitCode> {
    let bytes = match (&args.file, &args.data) {
        (Some(path), _) => read_input(Some(path))?,
        (None, Some(text)) => parse_text_bytes(text, args.base64)?,
        (None, None) => {
            let text = String::from_utf8(read_input(None)?).context("standard input is not text")?;
            parse_text_bytes(&text, args.base64)?
        }
    };
    let stanzas = if args.tcp { split_frames(&bytes)? } else { vec![bytes] };
    let mut all_ok = true;
    let mut documents = Vec::new();
    for stanza in &stanzas {
        let doc = match &args.message {
            Some(message) => json::bytes_to_json(message, stanza).inspect_err(|_| all_ok = false),
            None => {
                let description = codec::describe(stanza);
                all_ok &= description.envelope == "ok";
                Ok(serde_json::to_value(description)?)
            }
        };
        documents.push(doc?);
    }
    let out = if args.tcp {
        serde_json::Value::Array(documents)
    } else {
        documents.remove(0)
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", serde_norway::to_string(&out)?);
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn split_frames(stream: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut codec = TcpFrameCodec::new(DEFAULT_MAX_STANZA_BYTES);
    let mut buf = BytesMut::from(stream);
    let mut frames = Vec::new();
    while let Some(frame) = codec
        .decode_eof(&mut buf)
        .context("splitting the TCP stream into frames")?
    {
        frames.push(frame.to_vec());
    }
    Ok(frames)
}

fn encode(args: EncodeArgs) -> Result<ExitCode> {
    let text = String::from_utf8(read_input(args.file.as_ref())?).context("input is not UTF-8 text")?;
    // YAML is a superset of JSON, so one parser reads both.
    let mut value: serde_json::Value = serde_norway::from_str(&text).context("input is not YAML or JSON")?;
    if let Some(fields) = value.get("fields") {
        value = fields.clone();
    }
    let message = args.message.as_deref().unwrap_or("MessageScheme");
    let bytes = json::json_to_bytes(message, &value)?;
    if args.message.is_none()
        && !args.allow_invalid
        && let Err(e) = codec::decode(&bytes, usize::MAX)
    {
        bail!(
            "the stanza breaks the envelope rule: {e} [{}] (pass --allow-invalid to write it anyway)",
            e.kind()
        );
    }
    let mut out = Vec::with_capacity(bytes.len() + 4);
    if args.tcp {
        let len = u32::try_from(bytes.len()).context("stanza longer than a TCP frame can carry")?;
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(&bytes);
    match args.output {
        OutputFormat::Hex => println!("{}", hex::encode(&out)),
        OutputFormat::Base64 => println!("{}", base64::engine::general_purpose::STANDARD.encode(&out)),
        OutputFormat::Binary => std::io::stdout().write_all(&out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `inspect` fails with exit 2 (through `main`); `verify`'s code is [`bimip::store::queue::verify_exit_code`].
fn queue(command: QueueCommand) -> Result<ExitCode> {
    use bimip::store::queue;
    match command {
        QueueCommand::Inspect { dir } => {
            let text = queue::inspect(&dir).with_context(|| format!("inspecting {}", dir.display()))?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Verify { dir } => {
            let result = queue::verify(&dir);
            match &result {
                Ok(report) => print!("{report}"),
                Err(e) => eprintln!("error: verifying {}: {e}", dir.display()),
            }
            let code = queue::verify_exit_code(&result);
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(2)))
        }
    }
}

fn token(args: TokenArgs) -> Result<ExitCode> {
    use bimip::core::auth::{Claims, valid_device_id, valid_eid};
    if !valid_eid(&args.eid) {
        bail!("{:?} is not an EID (local@domain)", args.eid);
    }
    if !valid_device_id(&args.device) {
        bail!(
            "{:?} is not a device id (1 to 128 bytes, no spaces or control characters)",
            args.device
        );
    }
    let signer = match (&args.key, args.alg) {
        (Some(path), Some(alg)) => bimip::keys::load_signer(alg, path)?,
        _ => bimip::keys::ensure_dev_keys(&args.data_dir)?.1,
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let iat = i64::try_from(now.as_secs())?;
    let jti = args
        .jti
        .unwrap_or_else(|| format!("cli-{:x}-{:x}", now.as_nanos(), std::process::id()));
    let claims = Claims {
        eid: args.eid,
        device_id: args.device,
        jti,
        iat,
        exp: iat.saturating_add(args.ttl),
        ..Claims::default()
    };
    println!("{}", signer.mint(&claims)?);
    Ok(ExitCode::SUCCESS)
}

/// `bimip serve`'s exit code when the cluster's NATS cannot be reached at start (other errors exit 2).
const EXIT_NATS_UNREACHABLE: u8 = 3;

fn serve(args: ServeArgs) -> Result<ExitCode> {
    use bimip::cluster::ClusterError;
    use bimip::server::{JwtSettings, Settings, StartError, TlsSettings};
    // No transparent huge pages: a server of many small, mostly idle connections pays for a 2 MiB page per heap
    // region whatever it uses (about 200 B per connection at 10,000), and gained no measurable CPU from them
    // (BENCHMARKS.md, reference server part 8). Best effort: a kernel without the option keeps its default.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour on a terminal only: a log file gets plain lines.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).init();
    let mut settings = match &args.config {
        Some(path) => Settings::from_toml_file(path)?,
        None => Settings::default(),
    };
    settings.ws = if args.no_ws { None } else { args.ws.or(settings.ws) };
    settings.tcp = if args.no_tcp { None } else { args.tcp.or(settings.tcp) };
    settings.admin = if args.no_admin {
        None
    } else {
        args.admin.or(settings.admin)
    };
    settings.grpc = if args.no_grpc {
        None
    } else {
        args.grpc.or(settings.grpc)
    };
    if let Some(file) = args.grpc_secret_file {
        settings.grpc_secret_file = Some(file);
    }
    if let Some(node) = args.node {
        settings.node = node;
    }
    if let Some(nats) = args.cluster {
        // The command line names the NATS servers and the nodes; the rest stays as the configuration file says.
        let mut cluster = bimip::server::ClusterSettings::new(nats, args.cluster_nodes);
        if let Some(file) = &settings.cluster {
            cluster.compact_after_ops = file.compact_after_ops;
        }
        settings.cluster = Some(cluster);
    }
    if let Some(dir) = args.data_dir {
        settings.data_dir = dir;
    }
    if let Some(store) = args.store {
        settings.chat_store = store;
    }
    if let Some(shards) = args.shards {
        settings.shards = Some(usize::from(shards));
    }
    if let (Some(alg), Some(key)) = (args.jwt_alg, args.jwt_key) {
        let signing_key = args.jwt_signing_key;
        settings.jwt = Some(JwtSettings {
            alg,
            key,
            signing_key,
            issuer: None,
            audience: None,
            leeway_s: 0,
        });
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        settings.tls = Some(TlsSettings { cert, key });
    }
    if !args.fault.is_empty() {
        tracing::warn!(faults = ?args.fault, "TEST ONLY: this server breaks SPEC on purpose");
        settings.faults = bimip::faults::Faults::of(args.fault);
    }
    // One worker per CPU the process may use (`taskset` included): no worker waits for the disk, since each shard's
    // fsyncs run on a thread of their own (src/net/hub.rs), so a second worker on one CPU would only take turns
    // with the first, preempting whichever holds a shard.
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let running = match settings.start().await {
            Ok(running) => running,
            Err(e @ StartError::Cluster(ClusterError::Unreachable { .. })) => {
                // Its own exit code: a supervisor retries a node whose NATS is not up yet, not a bad setting.
                eprintln!("error: {e}");
                return Ok(ExitCode::from(EXIT_NATS_UNREACHABLE));
            }
            Err(e) => return Err(e.into()),
        };
        let (ws, tcp) = if settings.tls.is_some() {
            ("wss", "tls")
        } else {
            ("ws", "tcp")
        };
        println!("bimip reference server");
        if let Some(addr) = running.net.ws_addr() {
            println!("  WebSocket  {ws}://{addr}/ws");
        }
        if let Some(addr) = running.net.tcp_addr() {
            println!("  TCP        {tcp}://{addr}");
        }
        if let Some(addr) = running.admin {
            println!("  admin      http://{addr}/healthz  http://{addr}/metrics");
        }
        if let Some(addr) = running.grpc {
            let scheme = if settings.tls.is_some() { "https" } else { "http" };
            println!(
                "  gRPC       {scheme}://{addr}  (bimip.admin.v1.Admin; secret in {})",
                settings.grpc_secret_path().0.display()
            );
        }
        println!("  data       {}", settings.data_dir.display());
        println!("  shards     {}", settings.shard_count()?);
        if let Some(cluster) = &settings.cluster {
            println!(
                "  cluster    node {} of {} (NATS {})",
                settings.node,
                cluster.nodes.join(","),
                cluster.nats
            );
        }
        if settings.jwt.is_none() {
            println!();
            println!(
                "Mint a development token (signed with {}):",
                settings.data_dir.join(bimip::keys::DEV_PRIVATE_KEY).display()
            );
            println!(
                "  bimip token --eid alice@example.com --device phone --data-dir {}",
                settings.data_dir.display()
            );
            println!("  (from a checkout: cargo run --release -- token --eid alice@example.com --device phone)");
        }
        tracing::info!("ready");
        // SIGINT (a terminal) or SIGTERM (a service manager, `kill`): both close every session and the store.
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted?,
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
        running.shutdown().await;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// Prints the figures (text, or JSON with `--json -`) and writes `--json FILE`.
fn bench(args: &bimip::load::BenchArgs) -> Result<ExitCode> {
    let report = bimip::load::run(args)?;
    let json = serde_json::to_string_pretty(&report)?;
    match &args.json {
        Some(path) if path.as_os_str() == "-" => println!("{json}"),
        Some(path) => {
            std::fs::write(path, format!("{json}\n")).with_context(|| format!("writing {}", path.display()))?;
            println!("{report}");
        }
        None => println!("{report}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_stanza(label: &str, payload: &bimip::proto::message_scheme::Payload) -> Result<()> {
    let description = codec::describe(&codec::encode(payload));
    let fields = description.fields.unwrap_or_default();
    println!(
        "{label} {}:\n{}",
        description.payload.unwrap_or_default(),
        serde_norway::to_string(&fields)?
    );
    Ok(())
}

fn connect(args: ConnectArgs) -> Result<ExitCode> {
    use bimip::client::{Client, ClientOptions, Event};
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let options = ClientOptions {
            insecure_skip_verify: args.insecure,
            ..ClientOptions::default()
        };
        let mut client = Client::connect(&args.url, &args.token, options).await?;
        match client.session() {
            Some(s) => println!(
                "connected as {}/{} (server pings every {} ms)",
                s.eid, s.device, s.ping_interval_ms
            ),
            None => println!("connected (the server sent no Authenticate RESPONSE)"),
        }
        for i in 1..=args.pings {
            let started = std::time::Instant::now();
            let pong = client.ping(&format!("cli-{i}")).await?;
            println!("pong {} in {:.1} ms", pong.id, started.elapsed().as_secs_f64() * 1000.0);
        }
        if args.stay {
            loop {
                tokio::select! {
                    biased;
                    _ = tokio::signal::ctrl_c() => break,
                    event = client.next_event() => match event {
                        Some(Event::Stanza(payload)) => print_stanza("<-", &payload)?,
                        Some(Event::Closed { code, reason }) => {
                            println!("closed by the server: {code:?} {reason}");
                            return anyhow::Ok(());
                        }
                        Some(other) => println!("<- {other:?}"),
                        None => return anyhow::Ok(()),
                    },
                }
            }
        }
        let (logout, code) = client.logout().await?;
        println!("logged out (status {}), connection closed with {code:?}", logout.status);
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
