//! Idle connections: opens N authenticated connections that then send
//! nothing (the client still answers the server's pings), and reports the
//! server's resident memory per connection: VmRSS after minus VmRSS before,
//! over N. A few connections are opened and kept before the first reading,
//! so that one-off allocations (runtime, buffers reused afterwards) do not
//! count as per-connection cost.

use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use tokio::time::Instant;

use super::spawn::rss_bytes;
use super::{LoadError, Minter};
use crate::client::{Client, ClientOptions};

#[derive(Clone, Debug)]
pub struct IdleOptions {
    pub url: String,
    pub connections: usize,
    /// Connections kept open before the first reading.
    pub warm_connections: usize,
    /// Connects in flight at once.
    pub concurrency: usize,
    /// Wait after the last connect before reading the memory.
    pub settle: Duration,
    /// The server process whose VmRSS is read; `None` = not measured.
    pub server_pid: Option<u32>,
    pub progress: bool,
    pub client: ClientOptions,
}

impl Default for IdleOptions {
    fn default() -> Self {
        IdleOptions {
            url: String::new(),
            connections: 10_000,
            warm_connections: 16,
            concurrency: 64,
            settle: Duration::from_secs(2),
            server_pid: None,
            progress: false,
            client: ClientOptions::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct IdleReport {
    pub mode: &'static str,
    pub url: String,
    pub connections: usize,
    pub connect_s: f64,
    pub server_rss_before: Option<u64>,
    pub server_rss_after: Option<u64>,
    /// (after - before) / connections.
    pub server_bytes_per_connection: Option<f64>,
    /// The same for this process (the clients), for scale.
    pub bench_bytes_per_connection: f64,
}

impl std::fmt::Display for IdleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "idle: {} connections opened in {:.1} s",
            self.connections, self.connect_s
        )?;
        match (
            self.server_rss_before,
            self.server_rss_after,
            self.server_bytes_per_connection,
        ) {
            (Some(before), Some(after), Some(per)) => writeln!(
                f,
                "  server VmRSS     {:.1} MiB -> {:.1} MiB: {per:.0} bytes per connection",
                before as f64 / 1048576.0,
                after as f64 / 1048576.0
            )?,
            _ => writeln!(f, "  server VmRSS     not measured (no server process id)")?,
        }
        write!(
            f,
            "  bench (clients)  {:.0} bytes per connection",
            self.bench_bytes_per_connection
        )
    }
}

pub async fn run(options: &IdleOptions, minter: &Minter) -> Result<IdleReport, LoadError> {
    if options.connections == 0 {
        return Err(LoadError::Options("connections must be at least 1".into()));
    }
    let server_rss = || options.server_pid.map(rss_bytes).transpose();
    let warm = open(options, minter, "warm", options.warm_connections).await?;
    tokio::time::sleep(options.settle).await;
    let server_before = server_rss()?;
    let bench_before = rss_bytes(std::process::id())?;
    let started = Instant::now();
    let clients = open(options, minter, "idle", options.connections).await?;
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(options.settle).await;
    let server_after = server_rss()?;
    let bench_after = rss_bytes(std::process::id())?;
    let per = |before: u64, after: u64| (after as f64 - before as f64) / options.connections as f64;
    let report = IdleReport {
        mode: "idle",
        url: options.url.clone(),
        connections: clients.len(),
        connect_s,
        server_rss_before: server_before,
        server_rss_after: server_after,
        server_bytes_per_connection: server_before.zip(server_after).map(|(b, a)| per(b, a)),
        bench_bytes_per_connection: per(bench_before, bench_after),
    };
    drop(clients);
    drop(warm);
    Ok(report)
}

async fn open(options: &IdleOptions, minter: &Minter, label: &str, n: usize) -> Result<Vec<Client>, LoadError> {
    let mut wanted = Vec::with_capacity(n);
    for i in 0..n {
        let eid = format!("{label}{i}-{}@bench.example", minter.run());
        let token = minter.token(&eid, "d1")?;
        wanted.push((eid, token));
    }
    let mut connects = futures::stream::iter(wanted)
        .map(|(eid, token)| {
            let url = options.url.clone();
            let client_options = options.client.clone();
            async move {
                Client::connect(&url, &token, client_options)
                    .await
                    .map_err(|source| LoadError::Connect { who: eid, source })
            }
        })
        .buffer_unordered(options.concurrency.max(1));
    let mut clients = Vec::with_capacity(n);
    let mut last_print = Instant::now();
    while let Some(client) = connects.next().await {
        clients.push(client?);
        if options.progress && last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!("{label}: {} of {n} connected", clients.len());
        }
    }
    Ok(clients)
}
