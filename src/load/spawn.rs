//! The server under test when none is given: the reference server as a child
//! process (`bimip serve` on loopback ports picked by the OS, in a temporary
//! data directory, HS256 tokens), so that its memory (VmRSS) and CPU are its
//! own and it can be pinned to CPUs apart from the load. Also the token
//! minting for any server, and reading a process's resident memory.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::EncodingKey;
use serde::Serialize;

use super::LoadError;
use crate::core::auth::{Algorithm, Claims, Signer};

/// Where the server keeps accepted chats. Only the reference server spawned
/// by the bench can be told; for a server at `--url` it is whatever it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreMode {
    /// Accepted chats live in memory (no fsync before the VersionUpdate).
    #[default]
    Memory,
    /// Accepted chats are on disk (fsync) before the VersionUpdate (QUE-2).
    Durable,
}

/// The `bimip serve` arguments that select `store`.
fn store_args(store: StoreMode) -> [&'static str; 2] {
    match store {
        StoreMode::Memory => ["--store", "memory"],
        StoreMode::Durable => ["--store", "durable"],
    }
}

/// How to start the reference server.
#[derive(Clone, Debug)]
pub struct SpawnOptions {
    /// The `bimip` executable (normally the running one).
    pub program: PathBuf,
    /// CPU list for `taskset -c` (e.g. "0"); `None` = not pinned.
    pub cpus: Option<String>,
    pub store: StoreMode,
    /// Stanzas per second per connection (SES-5), also used as the burst. The
    /// default limit of 100/s would turn a flat-out run into a rate-limit test.
    pub rate_limit: u32,
    /// More `bimip serve` arguments, passed as they are.
    pub extra_args: Vec<String>,
}

/// A `bimip serve` child process; killed when dropped.
pub struct SpawnedServer {
    child: Child,
    pub ws_url: String,
    pub tcp_url: String,
    /// The server's own process id (`taskset` execs it, so the same one).
    pub pid: u32,
    pub minter: Minter,
    /// The exact command line, for the report.
    pub command: Vec<String>,
    _dir: tempfile::TempDir,
}

/// The HS256 secret the bench shares with the server it spawns (loopback only).
const BENCH_SECRET: &[u8] = b"bimip-bench-hs256-secret-loopback-only";

impl SpawnedServer {
    pub fn start(options: &SpawnOptions) -> Result<SpawnedServer, LoadError> {
        let io = |what: &'static str| move |source| LoadError::Io { what, source };
        let dir = tempfile::Builder::new()
            .prefix("bimip-bench-")
            .tempdir()
            .map_err(io("creating the server's data directory"))?;
        let secret = dir.path().join("hs256.secret");
        std::fs::write(&secret, BENCH_SECRET).map_err(io("writing the HS256 secret"))?;
        let config = dir.path().join("serve.toml");
        let mut file = std::fs::File::create(&config).map_err(io("writing the server settings"))?;
        writeln!(
            file,
            "[limits]\nrate_per_sec = {0}\nrate_burst = {0}",
            options.rate_limit.max(1)
        )
        .map_err(io("writing the server settings"))?;
        let path = |p: &Path| p.display().to_string();
        let mut args: Vec<String> = [
            "serve",
            "--config",
            &path(&config),
            "--data-dir",
            &path(&dir.path().join("data")),
            "--ws",
            "127.0.0.1:0",
            "--tcp",
            "127.0.0.1:0",
            "--no-admin",
            "--no-grpc",
            "--jwt-alg",
            "HS256",
            "--jwt-key",
            &path(&secret),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(store_args(options.store).map(String::from));
        args.extend(options.extra_args.iter().cloned());
        let mut command_line = Vec::new();
        if let Some(cpus) = &options.cpus {
            command_line.extend(["taskset".to_string(), "-c".to_string(), cpus.clone()]);
        }
        command_line.push(path(&options.program));
        command_line.extend(args);
        let mut child = Command::new(&command_line[0])
            .args(&command_line[1..])
            .env(
                "RUST_LOG",
                std::env::var("BIMIP_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(io("starting the reference server"))?;
        let pid = child.id();
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            return Err(LoadError::ServerStart("no standard output from the server".into()));
        };
        // The server prints its bound addresses; a thread reads them and then
        // keeps draining, so the pipe never fills.
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let (mut ws_url, mut tcp_url) = (None, None);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while ws_url.is_none() || tcp_url.is_none() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let word = line.split_whitespace().last().unwrap_or_default().to_string();
                    if word.starts_with("ws://") {
                        ws_url = Some(word);
                    } else if word.starts_with("tcp://") {
                        tcp_url = Some(word);
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    return Err(LoadError::ServerStart(format!(
                        "`{}` printed no listener addresses within 20 s (exit: {status:?})",
                        command_line.join(" ")
                    )));
                }
            }
        }
        Ok(SpawnedServer {
            child,
            ws_url: ws_url.unwrap_or_default(),
            tcp_url: tcp_url.unwrap_or_default(),
            pid,
            minter: Minter::new(Signer::new(Algorithm::Hs256, EncodingKey::from_secret(BENCH_SECRET))),
            command: command_line,
            _dir: dir,
        })
    }

    /// The server's resident memory now.
    pub fn rss_bytes(&self) -> Result<u64, LoadError> {
        rss_bytes(self.pid)
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mints a fresh token per connection: unique `jti`, valid for a day.
pub struct Minter {
    signer: Signer,
    next: AtomicU64,
    run: String,
}

impl Minter {
    pub fn new(signer: Signer) -> Minter {
        Minter {
            signer,
            next: AtomicU64::new(1),
            run: run_id(),
        }
    }

    /// A token for `eid` / `device`.
    pub fn token(&self, eid: &str, device: &str) -> Result<String, LoadError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let iat = i64::try_from(now).unwrap_or(i64::MAX);
        let claims = Claims {
            eid: eid.to_string(),
            device_id: device.to_string(),
            jti: format!("bench-{}-{}", self.run, self.next.fetch_add(1, Ordering::Relaxed)),
            iat,
            exp: iat.saturating_add(86_400),
            ..Claims::default()
        };
        self.signer.mint(&claims).map_err(|e| LoadError::Token(e.to_string()))
    }

    /// Tells this run's users apart from earlier runs' on the same server
    /// (whose queues, chats and idempotency records would otherwise mix in).
    pub fn run(&self) -> &str {
        &self.run
    }
}

fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:x}{:x}", nanos & 0xffff_ffff_ffff, std::process::id())
}

/// VmRSS of process `pid`, bytes (Linux `/proc`).
pub fn rss_bytes(pid: u32) -> Result<u64, LoadError> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
        what: "reading /proc/PID/status",
        source,
    })?;
    parse_vm_rss(&status).ok_or_else(|| LoadError::Proc(format!("no VmRSS line in {path}")))
}

/// CPU seconds (user + system) process `pid` has used so far (Linux `/proc`).
pub fn cpu_seconds(pid: u32) -> Result<f64, LoadError> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
        what: "reading /proc/PID/stat",
        source,
    })?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / CLOCK_TICKS_PER_SEC)
        .ok_or_else(|| LoadError::Proc(format!("no CPU times in {path}")))
}

/// USER_HZ: 100 on every Linux architecture the kit runs on.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// utime + stime: fields 14 and 15, counted after the parenthesised name
/// (which may itself hold spaces and parentheses).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next()? {
        "kB" => value.checked_mul(1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tbimip\nVmPeak:\t  999 kB\nVmRSS:\t    1536 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(1536 * 1024));
        assert_eq!(parse_vm_rss("VmRSS: 12 MB\n"), None);
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn cpu_ticks_are_utime_plus_stime() {
        let stat = "4242 (bimip (x) y) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("4242 (bimip) S 1"), None);
        assert!(cpu_seconds(std::process::id()).is_ok());
    }
}
