//! The arguments of `bimip bench` and the run they describe: start the target
//! (the reference server as a child process unless `--url` names one), run
//! the chat or idle load on a tokio runtime, print the figures, and write
//! them as JSON.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::chat::{self, ChatOptions, ChatReport};
use super::idle::{self, IdleOptions, IdleReport};
use super::spawn::{SpawnOptions, SpawnedServer, StoreMode, cpu_seconds};
use super::{LoadError, Minter};
use crate::client::ClientOptions;
use crate::core::auth::Algorithm;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TransportArg {
    Ws,
    Tcp,
}

/// `bimip bench`: chat load (default) or idle connections (`--idle N`).
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// The server to load (`ws://host:port/path`, `tcp://host:port`, wss://, tls://). Default: start the
    /// reference server (`bimip serve`) as a child process on loopback.
    #[arg(long)]
    pub url: Option<String>,
    /// Transport to the spawned reference server.
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: TransportArg,
    /// Sender/receiver pairs (two connections each).
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Bytes of text per message (at least 42).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Messages per second over all pairs; absent = flat out.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Per pair, messages sent and not yet acknowledged as delivered (flat out).
    #[arg(long, default_value_t = 100)]
    pub inflight: usize,
    /// Warm-up seconds (not measured).
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Send exactly this many messages per pair instead (no warm-up, all measured).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Seconds to wait for messages still in flight once sending stops.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Senders do not confirm the acknowledgment updates they receive (QUE-4).
    #[arg(long)]
    pub no_confirm: bool,
    /// Idle mode: open this many connections and report the server's memory per connection.
    #[arg(long, value_name = "N")]
    pub idle: Option<usize>,
    /// Idle mode: seconds to wait before each memory reading.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Idle mode with --url: the server's process id, whose VmRSS is read.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Where the spawned reference server keeps accepted chats.
    #[arg(long, value_enum, default_value = "memory")]
    pub store: StoreMode,
    /// Pin the spawned server to these CPUs (`taskset -c LIST`, e.g. 0).
    #[arg(long, value_name = "LIST")]
    pub server_cpus: Option<String>,
    /// Stanzas per second per connection allowed by the spawned server (SES-5; also its burst).
    #[arg(long, default_value_t = 1_000_000)]
    pub rate_limit: u32,
    /// One more argument for the spawned `bimip serve` (repeat for several).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub serve_arg: Vec<String>,
    /// With --url: sign tokens with this private key (or HS256 secret) file.
    #[arg(long, value_name = "FILE", requires = "jwt_alg")]
    pub jwt_key: Option<PathBuf>,
    /// Algorithm of --jwt-key: RS256, EdDSA or HS256.
    #[arg(long)]
    pub jwt_alg: Option<Algorithm>,
    /// With --url and no --jwt-key: the development key of `bimip serve` in this directory.
    #[arg(long, default_value = "bimip-data")]
    pub data_dir: PathBuf,
    /// Accept any TLS certificate.
    #[arg(long)]
    pub insecure: bool,
    /// Write the figures as JSON to this file ("-" = standard output, instead of the text).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// The server a run loaded, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct ServerInfo {
    pub spawned: bool,
    pub store: Option<StoreMode>,
    pub pid: Option<u32>,
    pub command: Vec<String>,
}

/// The machine while the run went on (2-core machines are shared).
#[derive(Clone, Debug, Serialize)]
pub struct MachineInfo {
    pub cpus: usize,
    /// /proc/loadavg at the start and the end.
    pub loadavg_start: String,
    pub loadavg_end: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Figures {
    Chat(Box<ChatReport>),
    Idle(IdleReport),
}

/// CPU seconds each side used during the load (connects included).
#[derive(Clone, Debug, Serialize)]
pub struct CpuUse {
    pub server_s: Option<f64>,
    pub bench_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub tool: &'static str,
    pub server: ServerInfo,
    pub cpu: CpuUse,
    pub machine: MachineInfo,
    #[serde(flatten)]
    pub figures: Figures,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.figures {
            Figures::Chat(report) => writeln!(f, "{report}")?,
            Figures::Idle(report) => writeln!(f, "{report}")?,
        }
        let server = self.cpu.server_s.map_or("-".to_string(), |s| format!("{s:.2} s"));
        write!(
            f,
            "  CPU              server {server}, bench {:.2} s (load average {} -> {})",
            self.cpu.bench_s, self.machine.loadavg_start, self.machine.loadavg_end
        )
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn seconds(value: f64, name: &str) -> Result<Duration, LoadError> {
    Duration::try_from_secs_f64(value).map_err(|_| LoadError::Options(format!("--{name} must be a number of seconds")))
}

/// Runs what `args` describe on a new tokio runtime.
pub fn run(args: &BenchArgs) -> Result<BenchReport, LoadError> {
    let loadavg_start = loadavg();
    let spawned = match &args.url {
        Some(_) => None,
        None => {
            let program = std::env::current_exe().map_err(|source| LoadError::Io {
                what: "finding the bimip executable",
                source,
            })?;
            Some(SpawnedServer::start(&SpawnOptions {
                program,
                cpus: args.server_cpus.clone(),
                store: args.store,
                rate_limit: args.rate_limit,
                extra_args: args.serve_arg.clone(),
            })?)
        }
    };
    let (url, minter) = match (&spawned, &args.url) {
        (Some(server), _) => {
            let url = match args.transport {
                TransportArg::Ws => server.ws_url.clone(),
                TransportArg::Tcp => server.tcp_url.clone(),
            };
            (url, None)
        }
        (None, Some(url)) => {
            let signer = match (&args.jwt_key, args.jwt_alg) {
                (Some(path), Some(alg)) => crate::keys::load_signer(alg, path),
                _ => crate::keys::ensure_dev_keys(&args.data_dir).map(|(_, signer)| signer),
            }
            .map_err(|e| LoadError::Token(e.to_string()))?;
            (url.clone(), Some(Minter::new(signer)))
        }
        (None, None) => unreachable!("a server is spawned when no URL is given"),
    };
    let minter = match (&minter, &spawned) {
        (Some(minter), _) => minter,
        (None, Some(server)) => &server.minter,
        (None, None) => unreachable!("a server is spawned when no URL is given"),
    };
    let client = ClientOptions {
        insecure_skip_verify: args.insecure,
        timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    };
    let server_pid = spawned.as_ref().map(|s| s.pid).or(args.server_pid);
    let server_cpu = || server_pid.map(cpu_seconds).transpose();
    let (server_cpu_start, bench_cpu_start) = (server_cpu()?, cpu_seconds(std::process::id())?);
    let runtime = tokio::runtime::Runtime::new().map_err(|source| LoadError::Io {
        what: "starting the tokio runtime",
        source,
    })?;
    let figures = match args.idle {
        Some(connections) => {
            let options = IdleOptions {
                url,
                connections,
                settle: seconds(args.settle, "settle")?,
                server_pid: spawned.as_ref().map(|s| s.pid).or(args.server_pid),
                progress: !args.quiet,
                client,
                ..IdleOptions::default()
            };
            Figures::Idle(runtime.block_on(idle::run(&options, minter))?)
        }
        None => {
            let options = ChatOptions {
                url,
                pairs: args.pairs,
                payload_bytes: args.payload,
                rate: args.rate,
                inflight: args.inflight,
                warmup: seconds(args.warmup, "warmup")?,
                duration: seconds(args.duration, "duration")?,
                messages: args.messages,
                drain: seconds(args.drain, "drain")?,
                confirm_acks: !args.no_confirm,
                progress: !args.quiet,
                client,
            };
            Figures::Chat(Box::new(runtime.block_on(chat::run(&options, minter))?))
        }
    };
    let cpu = CpuUse {
        server_s: server_cpu()?.zip(server_cpu_start).map(|(end, start)| end - start),
        bench_s: cpu_seconds(std::process::id())? - bench_cpu_start,
    };
    // Clients first, then the server: the server sees orderly ends.
    drop(runtime);
    let server = ServerInfo {
        spawned: spawned.is_some(),
        store: spawned.as_ref().map(|_| args.store),
        pid: spawned.as_ref().map(|s| s.pid).or(args.server_pid),
        command: spawned.as_ref().map(|s| s.command.clone()).unwrap_or_default(),
    };
    drop(spawned);
    Ok(BenchReport {
        tool: "bimip bench",
        server,
        cpu,
        machine: MachineInfo {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            loadavg_start,
            loadavg_end: loadavg(),
        },
        figures,
    })
}
