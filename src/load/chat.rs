//! Chat load: N sender/receiver pairs, each its own two connections. A sender
//! sends `TextPayloadRequest`s to its receiver (flat out with at most
//! `inflight` messages not yet acknowledged as delivered, or at a fixed
//! rate); the receiver answers every `ChatMessage` with
//! `AcknowledgmentRequest{status: 2}` (DELIVERED); the sender sees the
//! `VersionUpdate` (accepted, CHAT-5) and then the `AcknowledgmentResponse`
//! update (ACK-4), which it confirms (QUE-4) as a real client must for its
//! queue to be released.
//!
//! Each message's body carries its sequence number and send time, so the
//! receiver measures the delivery latency without a shared table. At a fixed
//! rate, the send time is the *scheduled* one: a server that stalls the
//! sender shows up in the latency instead of silently lowering the rate
//! (no coordinated omission).
//!
//! Throughput counts the ChatMessages received inside the measured window
//! (after the warm-up); latencies count the messages sent inside it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::stats::{Latencies, MIN_PAYLOAD_BYTES, Summary, parse_stamp, stamped_payload};
use super::{LoadError, Minter, progress};
use crate::client::{Client, ClientOptions, Event};
use crate::proto::message_scheme::Payload;
use crate::proto::{AcknowledgmentRequest, Identity, TextPayloadRequest, chat_message};

/// One chat run.
#[derive(Clone, Debug)]
pub struct ChatOptions {
    /// `ws://...` or `tcp://...` (or with TLS: `wss://`, `tls://`).
    pub url: String,
    pub pairs: usize,
    /// Bytes of each message's text.
    pub payload_bytes: usize,
    /// Messages per second over all pairs; `None` = flat out.
    pub rate: Option<f64>,
    /// Per pair: messages sent but not yet acknowledged as delivered. Flat
    /// out this is the window; at a fixed rate, ten times it caps a backlog.
    pub inflight: usize,
    pub warmup: Duration,
    /// The measured window (after the warm-up).
    pub duration: Duration,
    /// Instead of a duration: exactly this many messages per pair, all
    /// measured (no warm-up). For exact checks.
    pub messages: Option<u64>,
    /// How long, after sending stops, to wait for what is still in flight.
    pub drain: Duration,
    /// Confirm the sender's acknowledgment updates (QUE-4).
    pub confirm_acks: bool,
    /// Print a progress line every second.
    pub progress: bool,
    pub client: ClientOptions,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            url: String::new(),
            pairs: 100,
            payload_bytes: 100,
            rate: None,
            inflight: 100,
            warmup: Duration::from_secs(3),
            duration: Duration::from_secs(10),
            messages: None,
            drain: Duration::from_secs(10),
            confirm_acks: true,
            progress: false,
            client: ClientOptions::default(),
        }
    }
}

/// What a chat run measured.
#[derive(Clone, Debug, Serialize)]
pub struct ChatReport {
    pub mode: &'static str,
    pub url: String,
    pub pairs: usize,
    pub payload_bytes: usize,
    /// Offered rate over all pairs, msgs/s; absent = flat out.
    pub rate: Option<f64>,
    pub inflight: usize,
    pub warmup_s: f64,
    pub measured_s: f64,
    /// Delivered ChatMessages per second inside the measured window.
    pub delivered_per_sec: f64,
    /// Totals over the whole run (warm-up and drain included).
    pub sent: u64,
    pub accepted: u64,
    pub delivered: u64,
    pub acked: u64,
    /// Messages sent and never delivered before the drain ended.
    pub undelivered: u64,
    /// ChatMessages received twice (at-least-once delivery, QUE-7).
    pub duplicates: u64,
    /// ChatMessages received after a later one of the same chat (CHAT-16).
    pub out_of_order: u64,
    /// ErrorMessages received, by kind.
    pub errors: BTreeMap<String, u64>,
    /// Send -> the receiver's ChatMessage.
    pub latency_delivery: Summary,
    /// Send -> the sender's VersionUpdate (accepted: stored, CHAT-5 / QUE-2).
    pub latency_accepted: Summary,
    /// Send -> the sender's AcknowledgmentResponse DELIVERED (ACK-4).
    pub latency_delivered_ack: Summary,
}

impl std::fmt::Display for ChatReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self
            .rate
            .map_or("flat out".to_string(), |r| format!("{r:.0} msgs/s offered"));
        writeln!(
            f,
            "chat: {} pairs, {} B, {rate}, inflight {} per pair, {:.1} s warm-up, {:.1} s measured",
            self.pairs, self.payload_bytes, self.inflight, self.warmup_s, self.measured_s
        )?;
        writeln!(f, "  delivered        {:.0} msgs/s", self.delivered_per_sec)?;
        writeln!(
            f,
            "  totals           sent {} accepted {} delivered {} acked {} undelivered {} duplicates {} out of order {}",
            self.sent, self.accepted, self.delivered, self.acked, self.undelivered, self.duplicates, self.out_of_order
        )?;
        if !self.errors.is_empty() {
            writeln!(f, "  errors           {:?}", self.errors)?;
        }
        writeln!(f, "  send->delivery   {}", self.latency_delivery)?;
        writeln!(f, "  send->accepted   {}", self.latency_accepted)?;
        write!(f, "  send->acked      {}", self.latency_delivered_ack)
    }
}

/// Counters every task updates, read by the progress line and the report.
struct Shared {
    start: Instant,
    /// Sends from here on are measured.
    measure_from: Instant,
    /// Sending stops here; `None` with a message count.
    measure_until: Option<Instant>,
    sent: AtomicU64,
    accepted: AtomicU64,
    delivered: AtomicU64,
    delivered_in_window: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    /// ns after `start` of the latest delivery (count mode's throughput).
    last_delivery_ns: AtomicU64,
}

impl Shared {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    fn measured(&self, at: Instant) -> bool {
        at >= self.measure_from && self.measure_until.is_none_or(|until| at < until)
    }
}

#[derive(Default)]
struct SenderOut {
    accepted: Latencies,
    acked: Latencies,
    errors: BTreeMap<String, u64>,
}

#[derive(Default)]
struct ReceiverOut {
    delivery: Latencies,
    duplicates: u64,
    out_of_order: u64,
    errors: BTreeMap<String, u64>,
}

/// Runs one chat load against `options.url`, minting tokens with `minter`.
pub async fn run(options: &ChatOptions, minter: &Minter) -> Result<ChatReport, LoadError> {
    if options.pairs == 0 || options.inflight == 0 {
        return Err(LoadError::Options("pairs and inflight must be at least 1".into()));
    }
    if options.payload_bytes < MIN_PAYLOAD_BYTES {
        return Err(LoadError::Options(format!(
            "the payload must be at least {MIN_PAYLOAD_BYTES} bytes (it carries a sequence number and a send time)"
        )));
    }
    if options.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err(LoadError::Options("the rate must be a positive number".into()));
    }
    let peers = connect_all(options, minter).await?;

    let start = Instant::now();
    let (measure_from, measure_until) = match options.messages {
        Some(_) => (start, None),
        None => (start + options.warmup, Some(start + options.warmup + options.duration)),
    };
    let shared = Arc::new(Shared {
        start,
        measure_from,
        measure_until,
        sent: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        delivered_in_window: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
    });
    let stop_receivers = CancellationToken::new();
    let stop_progress = CancellationToken::new();
    let progress = options
        .progress
        .then(|| progress::spawn(stop_progress.clone(), progress_line(&shared)));

    let options = Arc::new(options.clone());
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (pair, (sender, receiver)) in peers.into_iter().enumerate() {
        let to = receiver.eid.clone();
        receivers.push(tokio::spawn(run_receiver(
            receiver,
            Arc::clone(&shared),
            stop_receivers.clone(),
        )));
        senders.push(tokio::spawn(run_sender(
            sender,
            to,
            pair,
            Arc::clone(&shared),
            Arc::clone(&options),
        )));
    }
    let mut sent_side = SenderOut::default();
    let mut first_error = None;
    for task in senders {
        match task.await {
            Ok(Ok(out)) => merge_sender(&mut sent_side, out),
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(join) => {
                first_error.get_or_insert(LoadError::Connection {
                    who: "a sender task".into(),
                    reason: join.to_string(),
                });
            }
        }
    }
    // Every sender has its acknowledgments (or gave up): what receivers could
    // still get are duplicates.
    stop_receivers.cancel();
    let mut received_side = ReceiverOut::default();
    for task in receivers {
        match task.await {
            Ok(Ok(out)) => merge_receiver(&mut received_side, out),
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(join) => {
                first_error.get_or_insert(LoadError::Connection {
                    who: "a receiver task".into(),
                    reason: join.to_string(),
                });
            }
        }
    }
    stop_progress.cancel();
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    if let Some(error) = first_error {
        return Err(error);
    }

    let sent = shared.sent.load(Ordering::Relaxed);
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let (measured_s, delivered_per_sec) = match options.messages {
        Some(_) => {
            let secs = shared.last_delivery_ns.load(Ordering::Relaxed) as f64 / 1e9;
            (secs, if secs > 0.0 { delivered as f64 / secs } else { 0.0 })
        }
        None => {
            let secs = options.duration.as_secs_f64();
            let in_window = shared.delivered_in_window.load(Ordering::Relaxed) as f64;
            (secs, if secs > 0.0 { in_window / secs } else { 0.0 })
        }
    };
    let mut errors = sent_side.errors;
    for (kind, n) in received_side.errors {
        *errors.entry(kind).or_default() += n;
    }
    Ok(ChatReport {
        mode: "chat",
        url: options.url.clone(),
        pairs: options.pairs,
        payload_bytes: options.payload_bytes,
        rate: options.rate,
        inflight: options.inflight,
        warmup_s: if options.messages.is_some() {
            0.0
        } else {
            options.warmup.as_secs_f64()
        },
        measured_s,
        delivered_per_sec,
        sent,
        accepted: shared.accepted.load(Ordering::Relaxed),
        delivered,
        acked: shared.acked.load(Ordering::Relaxed),
        undelivered: sent.saturating_sub(delivered.saturating_sub(received_side.duplicates)),
        duplicates: received_side.duplicates,
        out_of_order: received_side.out_of_order,
        errors,
        latency_delivery: received_side.delivery.summary(),
        latency_accepted: sent_side.accepted.summary(),
        latency_delivered_ack: sent_side.acked.summary(),
    })
}

fn merge_sender(into: &mut SenderOut, out: SenderOut) {
    into.accepted.merge(&out.accepted);
    into.acked.merge(&out.acked);
    for (kind, n) in out.errors {
        *into.errors.entry(kind).or_default() += n;
    }
}

fn merge_receiver(into: &mut ReceiverOut, out: ReceiverOut) {
    into.delivery.merge(&out.delivery);
    into.duplicates += out.duplicates;
    into.out_of_order += out.out_of_order;
    for (kind, n) in out.errors {
        *into.errors.entry(kind).or_default() += n;
    }
}

fn progress_line(shared: &Arc<Shared>) -> impl FnMut() -> String + Send + 'static {
    let shared = Arc::clone(shared);
    let mut last = 0;
    move || {
        let now = Instant::now();
        let delivered = shared.delivered.load(Ordering::Relaxed);
        let phase = if now < shared.measure_from {
            "warm-up"
        } else if shared.measure_until.is_none_or(|until| now < until) {
            "measuring"
        } else {
            "draining"
        };
        let line = format!(
            "{:>5.1} s {phase:<9} sent {} accepted {} delivered {} ({}/s) acked {} errors {}",
            now.saturating_duration_since(shared.start).as_secs_f64(),
            shared.sent.load(Ordering::Relaxed),
            shared.accepted.load(Ordering::Relaxed),
            delivered,
            delivered - last,
            shared.acked.load(Ordering::Relaxed),
            shared.errors.load(Ordering::Relaxed),
        );
        last = delivered;
        line
    }
}

/// One connected side of a pair.
struct Peer {
    eid: String,
    client: Client,
}

/// Connects every receiver and sender (receivers first within a pair is not
/// needed: nothing is sent until all are connected).
async fn connect_all(options: &ChatOptions, minter: &Minter) -> Result<Vec<(Peer, Peer)>, LoadError> {
    let mut wanted = Vec::with_capacity(options.pairs * 2);
    for pair in 0..options.pairs {
        for role in ["s", "r"] {
            let eid = format!("{role}{pair}-{}@bench.example", minter.run());
            let token = minter.token(&eid, "d1")?;
            wanted.push((eid, token));
        }
    }
    let url = options.url.clone();
    let client_options = options.client.clone();
    let connected: Vec<Result<Peer, LoadError>> = futures::stream::iter(wanted)
        .map(|(eid, token)| {
            let url = url.clone();
            let client_options = client_options.clone();
            async move {
                match Client::connect(&url, &token, client_options).await {
                    Ok(client) => Ok(Peer { eid, client }),
                    Err(source) => Err(LoadError::Connect { who: eid, source }),
                }
            }
        })
        .buffered(32)
        .collect()
        .await;
    let mut peers = Vec::with_capacity(options.pairs);
    let mut connected = connected.into_iter();
    while let (Some(sender), Some(receiver)) = (connected.next(), connected.next()) {
        peers.push((sender?, receiver?));
    }
    Ok(peers)
}

fn closed(who: &str, event: Option<Event>) -> LoadError {
    let reason = match event {
        Some(Event::Closed { code, reason }) => format!("closed (code {code:?}): {reason}"),
        _ => "the connection ended".into(),
    };
    LoadError::Connection {
        who: who.to_string(),
        reason,
    }
}

fn send_failed(who: &str, error: crate::client::ClientError) -> LoadError {
    LoadError::Connection {
        who: who.to_string(),
        reason: error.to_string(),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn run_sender(
    peer: Peer,
    to: String,
    pair: usize,
    shared: Arc<Shared>,
    options: Arc<ChatOptions>,
) -> Result<SenderOut, LoadError> {
    let Peer { eid, mut client } = peer;
    let mut out = SenderOut::default();
    // message_id_local -> send ns, until the VersionUpdate.
    let mut pending: HashMap<String, u64> = HashMap::new();
    // message_id -> send ns, until the delivered acknowledgment.
    let mut awaiting: HashMap<String, u64> = HashMap::new();
    let interval = options
        .rate
        .map(|rate| Duration::from_secs_f64(options.pairs as f64 / rate));
    let window = match interval {
        None => options.inflight,
        Some(_) => options.inflight.saturating_mul(10),
    };
    // Pairs start spread over one interval, so a fixed rate is not a burst
    // of every pair at once.
    let mut next_at = interval.map(|every| {
        let offset = every.mul_f64(pair as f64 / options.pairs as f64);
        shared.start + offset
    });
    let mut seq = 0u64;
    let mut stopped_at: Option<Instant> = None;
    let receiver = vec![Identity {
        eid: to,
        connection_resource_id: String::new(),
    }];
    loop {
        let in_flight = pending.len() + awaiting.len();
        if stopped_at.is_some() && in_flight == 0 {
            break;
        }
        let may_send = stopped_at.is_none() && in_flight < window;
        let stop_sending = if stopped_at.is_none() {
            shared.measure_until
        } else {
            None
        };
        let give_up = stopped_at.map(|at| at + options.drain);
        tokio::select! {
            biased;
            event = client.next_event() => {
                let payload = match event {
                    Some(Event::Stanza(payload)) => payload,
                    Some(Event::Closed { .. }) | None => return Err(closed(&eid, event)),
                    Some(_) => continue,
                };
                match payload {
                    Payload::VersionUpdate(v) if v.r#type == 1 => {
                        if let Some(sent_ns) = pending.remove(&v.message_id_local) {
                            shared.accepted.fetch_add(1, Ordering::Relaxed);
                            record(&shared, &mut out.accepted, sent_ns);
                            awaiting.insert(v.message_id, sent_ns);
                        }
                    }
                    Payload::AcknowledgmentResponse(r) => {
                        // The update from the receiver (ACK-4), not the
                        // confirmation of our own confirm (ACK-5).
                        let from_me = r.from.as_ref().is_some_and(|from| from.eid == eid);
                        if from_me || r.status < 2 {
                            continue;
                        }
                        if let Some(sent_ns) = awaiting.remove(&r.message_id) {
                            shared.acked.fetch_add(1, Ordering::Relaxed);
                            record(&shared, &mut out.acked, sent_ns);
                        }
                        if options.confirm_acks {
                            let confirm = AcknowledgmentRequest {
                                message_id: r.message_id,
                                status: r.status,
                                timestamp: client.now_ms(),
                                ..AcknowledgmentRequest::default()
                            };
                            client
                                .send(Payload::AcknowledgmentRequest(confirm))
                                .await
                                .map_err(|e| send_failed(&eid, e))?;
                        }
                    }
                    Payload::ErrorMessage(e) => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        *out.errors.entry(e.message).or_default() += 1;
                        // A refused chat request (ref_id = its message_id_local)
                        // will never be accepted: free its place in the window.
                        pending.remove(&e.ref_id);
                    }
                    _ => {}
                }
            }
            () = sleep_until_opt(stop_sending) => stopped_at = Some(Instant::now()),
            () = sleep_until_opt(next_at), if may_send && next_at.is_some() => {
                let scheduled = next_at.unwrap_or_else(Instant::now);
                next_at = next_at.zip(interval).map(|(at, every)| at + every);
                seq += 1;
                send_chat(&client, &eid, &receiver, seq, shared.nanos(scheduled), &options).await?;
                pending.insert(seq.to_string(), shared.nanos(scheduled));
                shared.sent.fetch_add(1, Ordering::Relaxed);
                if options.messages.is_some_and(|n| seq >= n) {
                    stopped_at = Some(Instant::now());
                }
            }
            () = std::future::ready(()), if may_send && next_at.is_none() => {
                seq += 1;
                let now = shared.nanos(Instant::now());
                send_chat(&client, &eid, &receiver, seq, now, &options).await?;
                pending.insert(seq.to_string(), now);
                shared.sent.fetch_add(1, Ordering::Relaxed);
                if options.messages.is_some_and(|n| seq >= n) {
                    stopped_at = Some(Instant::now());
                }
            }
            () = sleep_until_opt(give_up) => break,
        }
    }
    Ok(out)
}

async fn send_chat(
    client: &Client,
    eid: &str,
    to: &[Identity],
    seq: u64,
    sent_ns: u64,
    options: &ChatOptions,
) -> Result<(), LoadError> {
    let content = stamped_payload(seq, sent_ns, options.payload_bytes);
    let request = TextPayloadRequest {
        to: to.to_vec(),
        text_size_count: content.len().to_string(),
        content,
        message_id_local: seq.to_string(),
        created_at: client.now_ms(),
        ..TextPayloadRequest::default()
    };
    client
        .send(Payload::TextPayloadRequest(request))
        .await
        .map_err(|e| send_failed(eid, e))
}

/// Records the latency of a message sent at `sent_ns` if it was sent inside
/// the measured window.
fn record(shared: &Shared, into: &mut Latencies, sent_ns: u64) {
    let sent_at = shared.start + Duration::from_nanos(sent_ns);
    if shared.measured(sent_at) {
        into.record(Instant::now().saturating_duration_since(sent_at));
    }
}

async fn run_receiver(peer: Peer, shared: Arc<Shared>, stop: CancellationToken) -> Result<ReceiverOut, LoadError> {
    let Peer { eid, mut client } = peer;
    let mut out = ReceiverOut::default();
    let mut seen = SeqSet::default();
    let mut highest = 0u64;
    loop {
        let event = tokio::select! {
            biased;
            event = client.next_event() => event,
            () = stop.cancelled() => break,
        };
        let payload = match event {
            Some(Event::Stanza(payload)) => payload,
            Some(Event::Closed { .. }) | None => return Err(closed(&eid, event)),
            Some(_) => continue,
        };
        match payload {
            Payload::ChatMessage(message) if message.author == "receiver" => {
                let now = Instant::now();
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                if shared.measure_until.is_none_or(|until| now < until) && now >= shared.measure_from {
                    shared.delivered_in_window.fetch_add(1, Ordering::Relaxed);
                }
                shared.last_delivery_ns.fetch_max(shared.nanos(now), Ordering::Relaxed);
                let stamp = match &message.payload {
                    Some(chat_message::Payload::Text(text)) => parse_stamp(text.as_bytes()),
                    _ => None,
                };
                if let Some((seq, sent_ns)) = stamp {
                    if seen.insert(seq) {
                        if seq < highest {
                            out.out_of_order += 1;
                        }
                        highest = highest.max(seq);
                        record(&shared, &mut out.delivery, sent_ns);
                    } else {
                        out.duplicates += 1;
                    }
                }
                let ack = AcknowledgmentRequest {
                    message_id: message.message_id,
                    status: 2,
                    timestamp: client.now_ms(),
                    ..AcknowledgmentRequest::default()
                };
                client
                    .send(Payload::AcknowledgmentRequest(ack))
                    .await
                    .map_err(|e| send_failed(&eid, e))?;
            }
            Payload::ErrorMessage(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                *out.errors.entry(e.message).or_default() += 1;
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The sequence numbers a receiver has seen: one bit each (a run's numbers
/// are dense from 1).
#[derive(Default)]
struct SeqSet(Vec<u64>);

impl SeqSet {
    /// False if `seq` was already there.
    fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = (usize::try_from(seq / 64).unwrap_or(usize::MAX), seq % 64);
        if word >= self.0.len() {
            // A sender never gets far ahead of what it has sent; a number
            // beyond that is not one of ours and is not tracked.
            if word > self.0.len() + (1 << 20) {
                return true;
            }
            self.0.resize(word + 1, 0);
        }
        let was = self.0[word] & (1 << bit) != 0;
        self.0[word] |= 1 << bit;
        !was
    }
}

#[cfg(test)]
mod tests {
    use super::SeqSet;

    #[test]
    fn seq_set_reports_repeats() {
        let mut set = SeqSet::default();
        assert!(set.insert(1));
        assert!(set.insert(130));
        assert!(!set.insert(130));
        assert!(set.insert(64));
        assert!(!set.insert(1));
    }
}
