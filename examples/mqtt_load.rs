//! MQTT QoS 1 load of the same shape as `bimip bench`, for the side-by-side
//! table in BENCHMARKS: N publisher/subscriber pairs, each pair its own topic,
//! payloads of the same size carrying the same sequence number and send time,
//! flat out (at most `--inflight` unacknowledged PUBLISHes per publisher, the
//! MQTT client's own window) or at a fixed total rate, after a warm-up.
//!
//! Figures: delivered msgs/s (PUBLISHes received by subscribers inside the
//! measured window) and the latency from a send to the subscriber's PUBLISH
//! (delivery) and to the publisher's PUBACK (accepted by the broker). MQTT
//! has no end-to-end delivery acknowledgment, so there is no third latency.
//!
//! `cargo run --release --example mqtt_load -- --port 1883 --json out.json`

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bimip::load::spawn::cpu_seconds;
use bimip::load::stats::{Latencies, MIN_PAYLOAD_BYTES, Summary, parse_stamp, stamped_payload};
use clap::Parser;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Clone)]
#[command(about = "MQTT QoS 1 load of the same shape as `bimip bench`")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Messages per second over all pairs; absent = flat out.
    #[arg(long)]
    rate: Option<f64>,
    /// Unacknowledged PUBLISHes per publisher.
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// The broker's process id: its VmRSS goes into the report.
    #[arg(long)]
    broker_pid: Option<u32>,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

#[derive(Serialize)]
struct Report {
    tool: &'static str,
    mode: &'static str,
    broker: String,
    pairs: usize,
    payload_bytes: usize,
    rate: Option<f64>,
    inflight: u16,
    warmup_s: f64,
    measured_s: f64,
    delivered_per_sec: f64,
    sent: u64,
    accepted: u64,
    delivered: u64,
    undelivered: u64,
    duplicates: u64,
    out_of_order: u64,
    latency_delivery: Summary,
    latency_accepted: Summary,
    broker_rss_after: Option<u64>,
    /// CPU seconds used during the load (subscribes included).
    broker_cpu_s: Option<f64>,
    bench_cpu_s: f64,
    loadavg: String,
}

struct Shared {
    start: Instant,
    measure_from: Instant,
    measure_until: Instant,
    sent: AtomicU64,
    accepted: AtomicU64,
    delivered: AtomicU64,
    unique: AtomicU64,
    delivered_in_window: AtomicU64,
}

impl Shared {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    fn record(&self, into: &mut Latencies, sent_ns: u64) {
        let sent_at = self.start + Duration::from_nanos(sent_ns);
        if sent_at >= self.measure_from && sent_at < self.measure_until {
            into.record(Instant::now().saturating_duration_since(sent_at));
        }
    }
}

fn options(args: &Args, id: String) -> MqttOptions {
    let mut options = MqttOptions::new(id, args.host.clone(), args.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    options.set_inflight(args.inflight.max(1));
    options
}

async fn until_connected(eventloop: &mut EventLoop) -> Result<()> {
    loop {
        if let Event::Incoming(Incoming::ConnAck(_)) = eventloop.poll().await? {
            return Ok(());
        }
    }
}

struct Subscriber {
    eventloop: EventLoop,
    _client: AsyncClient,
}

async fn subscribe(args: &Args, run: &str, pair: usize) -> Result<Subscriber> {
    let (client, mut eventloop) = AsyncClient::new(options(args, format!("sub-{run}-{pair}")), 64);
    until_connected(&mut eventloop).await?;
    client
        .subscribe(format!("bench/{run}/{pair}"), QoS::AtLeastOnce)
        .await?;
    loop {
        if let Event::Incoming(Incoming::SubAck(_)) = eventloop.poll().await? {
            break;
        }
    }
    Ok(Subscriber {
        eventloop,
        _client: client,
    })
}

#[derive(Default)]
struct ReceiverOut {
    delivery: Latencies,
    duplicates: u64,
    out_of_order: u64,
}

async fn receive(mut sub: Subscriber, shared: Arc<Shared>, stop: CancellationToken) -> Result<ReceiverOut> {
    let mut out = ReceiverOut::default();
    let mut seen = HashSet::new();
    let mut highest = 0;
    loop {
        let event = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            event = sub.eventloop.poll() => event?,
        };
        let Event::Incoming(Incoming::Publish(publish)) = event else {
            continue;
        };
        let now = Instant::now();
        shared.delivered.fetch_add(1, Ordering::Relaxed);
        if now >= shared.measure_from && now < shared.measure_until {
            shared.delivered_in_window.fetch_add(1, Ordering::Relaxed);
        }
        let Some((seq, sent_ns)) = parse_stamp(&publish.payload) else {
            continue;
        };
        if !seen.insert(seq) {
            out.duplicates += 1;
            continue;
        }
        shared.unique.fetch_add(1, Ordering::Relaxed);
        if seq < highest {
            out.out_of_order += 1;
        }
        highest = highest.max(seq);
        shared.record(&mut out.delivery, sent_ns);
    }
    Ok(out)
}

/// Publishes on `topic` until the window ends; a second task (the event
/// loop) matches PUBACKs to send times through the packet ids, which the MQTT
/// client hands out in publish order.
async fn send(args: Arc<Args>, run: String, pair: usize, shared: Arc<Shared>) -> Result<Latencies> {
    let (client, mut eventloop) = AsyncClient::new(options(&args, format!("pub-{run}-{pair}")), 16);
    until_connected(&mut eventloop).await?;
    let stamps: Arc<Mutex<VecDeque<u64>>> = Arc::default();
    let stop_loop = CancellationToken::new();
    let acks = tokio::spawn({
        let stamps = Arc::clone(&stamps);
        let shared = Arc::clone(&shared);
        let stop = stop_loop.clone();
        async move {
            let mut by_pkid: BTreeMap<u16, u64> = BTreeMap::new();
            let mut accepted = Latencies::new();
            loop {
                let event = tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    event = eventloop.poll() => event?,
                };
                match event {
                    Event::Outgoing(Outgoing::Publish(pkid)) => {
                        let stamp = stamps.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop_front();
                        if let Some(sent_ns) = stamp {
                            by_pkid.insert(pkid, sent_ns);
                        }
                    }
                    Event::Incoming(Incoming::PubAck(ack)) => {
                        if let Some(sent_ns) = by_pkid.remove(&ack.pkid) {
                            shared.accepted.fetch_add(1, Ordering::Relaxed);
                            shared.record(&mut accepted, sent_ns);
                        }
                    }
                    _ => {}
                }
            }
            anyhow::Ok(accepted)
        }
    });
    let topic = format!("bench/{run}/{pair}");
    let interval = args.rate.map(|rate| Duration::from_secs_f64(args.pairs as f64 / rate));
    let mut next_at = interval.map(|every| shared.start + every.mul_f64(pair as f64 / args.pairs as f64));
    let mut seq = 0u64;
    while Instant::now() < shared.measure_until {
        let sent_at = match (next_at, interval) {
            (Some(at), Some(every)) => {
                tokio::time::sleep_until(at).await;
                next_at = Some(at + every);
                at
            }
            _ => Instant::now(),
        };
        seq += 1;
        let sent_ns = shared.nanos(sent_at);
        stamps
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .push_back(sent_ns);
        let payload = stamped_payload(seq, sent_ns, args.payload);
        client.publish(&topic, QoS::AtLeastOnce, false, payload).await?;
        shared.sent.fetch_add(1, Ordering::Relaxed);
    }
    // Drain: wait for the PUBACKs still due.
    let give_up = Instant::now() + Duration::from_secs_f64(args.drain);
    while Instant::now() < give_up && shared.accepted.load(Ordering::Relaxed) < shared.sent.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_loop.cancel();
    let accepted = acks.await??;
    let _ = client.disconnect().await;
    Ok(accepted)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    if args.payload < MIN_PAYLOAD_BYTES {
        bail!("--payload must be at least {MIN_PAYLOAD_BYTES}");
    }
    let run = format!("{:x}", std::process::id());
    let broker_cpu = || args.broker_pid.and_then(|pid| cpu_seconds(pid).ok());
    let (broker_cpu_start, bench_cpu_start) = (broker_cpu(), cpu_seconds(std::process::id()).unwrap_or(0.0));
    let mut subscribers = Vec::new();
    for pair in 0..args.pairs {
        subscribers.push(
            subscribe(&args, &run, pair)
                .await
                .with_context(|| format!("subscribing pair {pair} at {}:{}", args.host, args.port))?,
        );
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let shared = Arc::new(Shared {
        start,
        measure_from,
        measure_until: measure_from + Duration::from_secs_f64(args.duration),
        sent: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        unique: AtomicU64::new(0),
        delivered_in_window: AtomicU64::new(0),
    });
    let stop = CancellationToken::new();
    let receivers: Vec<_> = subscribers
        .into_iter()
        .map(|sub| tokio::spawn(receive(sub, Arc::clone(&shared), stop.clone())))
        .collect();
    let senders: Vec<_> = (0..args.pairs)
        .map(|pair| tokio::spawn(send(Arc::clone(&args), run.clone(), pair, Arc::clone(&shared))))
        .collect();
    let progress = tokio::spawn({
        let shared = Arc::clone(&shared);
        let quiet = args.quiet;
        async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let delivered = shared.delivered.load(Ordering::Relaxed);
                if !quiet {
                    eprintln!(
                        "{:>5.1} s sent {} accepted {} delivered {} ({}/s)",
                        shared.start.elapsed().as_secs_f64(),
                        shared.sent.load(Ordering::Relaxed),
                        shared.accepted.load(Ordering::Relaxed),
                        delivered,
                        delivered - last
                    );
                }
                last = delivered;
            }
        }
    });
    let mut accepted = Latencies::new();
    for sender in senders {
        accepted.merge(&sender.await??);
    }
    // Publishers are done: wait for subscribers to get what was sent.
    let give_up = Instant::now() + Duration::from_secs_f64(args.drain);
    while Instant::now() < give_up && shared.unique.load(Ordering::Relaxed) < shared.sent.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let mut received = ReceiverOut::default();
    for receiver in receivers {
        let out = receiver.await??;
        received.delivery.merge(&out.delivery);
        received.duplicates += out.duplicates;
        received.out_of_order += out.out_of_order;
    }
    progress.abort();
    let sent = shared.sent.load(Ordering::Relaxed);
    let report = Report {
        tool: "mqtt_load (rumqttc)",
        mode: "mqtt-qos1",
        broker: format!("{}:{}", args.host, args.port),
        pairs: args.pairs,
        payload_bytes: args.payload,
        rate: args.rate,
        inflight: args.inflight,
        warmup_s: args.warmup,
        measured_s: args.duration,
        delivered_per_sec: shared.delivered_in_window.load(Ordering::Relaxed) as f64 / args.duration,
        sent,
        accepted: shared.accepted.load(Ordering::Relaxed),
        delivered: shared.delivered.load(Ordering::Relaxed),
        undelivered: sent.saturating_sub(shared.unique.load(Ordering::Relaxed)),
        duplicates: received.duplicates,
        out_of_order: received.out_of_order,
        latency_delivery: received.delivery.summary(),
        latency_accepted: accepted.summary(),
        broker_rss_after: args.broker_pid.and_then(rss),
        broker_cpu_s: broker_cpu().zip(broker_cpu_start).map(|(end, start)| end - start),
        bench_cpu_s: cpu_seconds(std::process::id()).unwrap_or(0.0) - bench_cpu_start,
        loadavg: loadavg(),
    };
    println!(
        "mqtt qos1: {} pairs, {} B, {}: delivered {:.0} msgs/s\n  send->delivery   {}\n  send->puback     {}\n  sent {} delivered {} undelivered {} duplicates {}\n  CPU              broker {:?} s, bench {:.2} s",
        report.pairs,
        report.payload_bytes,
        report
            .rate
            .map_or("flat out".into(), |r| format!("{r:.0} msgs/s offered")),
        report.delivered_per_sec,
        report.latency_delivery,
        report.latency_accepted,
        report.sent,
        report.delivered,
        report.undelivered,
        report.duplicates,
        report.broker_cpu_s,
        report.bench_cpu_s
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
