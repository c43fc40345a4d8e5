//! Chat that must survive faults: N sender/receiver pairs over several nodes of one service, each device going
//! back to the next node whenever its connection ends (a killed or paused node, a lost link), and a tally of
//! what was acknowledged against what arrived.
//!
//! A sender keeps every text it has not seen a VersionUpdate for and, after a reconnect, sends each again with the
//! same `message_id_local`, as CLI-2 asks of a client; so a server's "accepted" is all that counts. A receiver
//! acknowledges every ChatMessage as DELIVERED (which commits its offset, QUE-4) and drops one it already has, by
//! message id (QUE-7). The faults themselves come from outside (the test that runs this); this only keeps the
//! clients going and reports:
//! - **lost**: messages with a VersionUpdate that never reached the receiver (the figure that must be 0);
//! - **version faults**: a chat's versions, as VersionUpdates gave them, that are not exactly 1, 2, 3, ... (one
//!   per message: none skipped, none reused), or a ChatMessage whose version differs from its VersionUpdate's;
//! - duplicates and reconnections, for the record.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{LoadError, Minter};
use crate::client::{Client, ClientOptions, Event};
use crate::proto::message_scheme::Payload;
use crate::proto::{AcknowledgmentRequest, Identity, TextPayloadRequest};

/// One run.
#[derive(Clone, Debug)]
pub struct DurabilityOptions {
    /// One URL per node, of one transport. Device k of a pair starts on node k mod n and moves on from there.
    pub urls: Vec<String>,
    pub pairs: usize,
    /// Texts per pair.
    pub messages: u64,
    /// Per pair: texts sent and not yet accepted.
    pub inflight: usize,
    /// Per pair: the time between two new texts (resends are not paced), so that a run lasts long enough for the
    /// faults to fall inside it.
    pub interval: Duration,
    /// Give up after this long (faults included); what is missing then is reported.
    pub deadline: Duration,
    pub client: ClientOptions,
}

/// What a run saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DurabilityReport {
    pub pairs: usize,
    /// Texts the senders had accepted (a VersionUpdate).
    pub accepted: u64,
    /// Accepted texts that reached their receiver, once counted.
    pub delivered: u64,
    /// ChatMessages a receiver already had (replays after a reconnect, QUE-7).
    pub duplicates: u64,
    /// Accepted and never delivered: must be empty.
    pub lost: Vec<String>,
    /// Versions skipped, reused or contradicted: must be empty.
    pub version_faults: Vec<String>,
    /// Texts never accepted before the deadline (the run was too short, or the service never recovered).
    pub unaccepted: u64,
    /// For each pair with texts never accepted or lost: what its sender or receiver was doing last.
    pub stalled: Vec<String>,
    /// Connections that ended and were made again, over all devices.
    pub reconnects: u64,
    /// Every device, by `index`.
    pub devices: Vec<DeviceRecord>,
    pub seconds: f64,
}

/// One device of a run: who it is, whom it chats with, and how often its connection ended.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeviceRecord {
    pub eid: String,
    pub peer: String,
    /// Its place among the devices: its first connection went to `urls[index % urls.len()]`.
    pub index: usize,
    pub reconnects: u64,
    /// What it was doing last.
    pub last: String,
}

impl DurabilityReport {
    /// Nothing acknowledged was lost, every version is in place, and every text was accepted.
    pub fn passed(&self) -> bool {
        self.lost.is_empty() && self.version_faults.is_empty() && self.unaccepted == 0
    }
}

impl std::fmt::Display for DurabilityReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} pairs, {:.1} s: accepted {}, delivered {}, lost {}, version faults {}, unaccepted {}, duplicates {}, \
             reconnects {}",
            self.pairs,
            self.seconds,
            self.accepted,
            self.delivered,
            self.lost.len(),
            self.version_faults.len(),
            self.unaccepted,
            self.duplicates,
            self.reconnects
        )?;
        let lost = self.lost.iter().take(5);
        for line in self.stalled.iter().chain(&self.version_faults).take(20).chain(lost) {
            write!(f, "\n  {line}")?;
        }
        Ok(())
    }
}

/// What one pair's two devices learned.
#[derive(Default)]
struct Tally {
    /// message_id_local -> (message_id, version), from VersionUpdates.
    accepted: BTreeMap<String, (String, i64)>,
    /// message_id -> version, as the receiver got them.
    received: BTreeMap<String, i64>,
    duplicates: u64,
    sender_reconnects: u64,
    receiver_reconnects: u64,
    faults: Vec<String>,
    /// What the sender was doing last, for a report of a pair that did not finish.
    sender_at: String,
    /// What the receiver was doing last, for a report of a pair that lost messages.
    receiver_at: String,
}

/// Runs the pairs until every text is accepted and delivered, or the deadline.
pub async fn run(options: &DurabilityOptions, minter: &Minter) -> Result<DurabilityReport, LoadError> {
    if options.urls.is_empty() || options.pairs == 0 {
        return Err(LoadError::Options("no URL or no pairs".into()));
    }
    let started = Instant::now();
    let deadline = started + options.deadline;
    let options = Arc::new(options.clone());
    let mut tasks = Vec::new();
    let mut names = Vec::new();
    for pair in 0..options.pairs {
        let sender = format!("s{pair}-{}@durability.example", minter.run());
        let receiver = format!("r{pair}-{}@durability.example", minter.run());
        names.push((sender.clone(), receiver.clone()));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let tokens = (minter.token(&sender, "d1")?, minter.token(&receiver, "d1")?);
        let done = tokio_util::sync::CancellationToken::new();
        let send = tokio::spawn(send(
            Arc::clone(&options),
            (sender, tokens.0),
            receiver.clone(),
            2 * pair,
            Arc::clone(&tally),
            deadline,
        ));
        let receive = tokio::spawn(receive(
            Arc::clone(&options),
            tokens.1,
            2 * pair + 1,
            Arc::clone(&tally),
            deadline,
            done.clone(),
        ));
        tasks.push((send, receive, done, tally));
    }
    let mut report = DurabilityReport {
        pairs: options.pairs,
        ..DurabilityReport::default()
    };
    for (pair, (send, receive, done, tally)) in tasks.into_iter().enumerate() {
        let unaccepted = send.await.unwrap_or(options.messages);
        // The sender is done: the receiver goes on until it has everything accepted, or the deadline.
        loop {
            let complete = {
                let tally = tally.lock().await;
                tally.accepted.values().all(|(id, _)| tally.received.contains_key(id))
            };
            if complete || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done.cancel();
        let _ = receive.await;
        let tally = tally.lock().await;
        report.unaccepted += unaccepted;
        if unaccepted > 0 {
            report.stalled.push(format!(
                "pair {pair}: {unaccepted} unaccepted; sender {}",
                tally.sender_at
            ));
        }
        report.accepted += tally.accepted.len() as u64;
        report.duplicates += tally.duplicates;
        report.reconnects += tally.sender_reconnects + tally.receiver_reconnects;
        let (sender, receiver) = &names[pair];
        report.devices.push(DeviceRecord {
            eid: sender.clone(),
            peer: receiver.clone(),
            index: 2 * pair,
            reconnects: tally.sender_reconnects,
            last: tally.sender_at.clone(),
        });
        report.devices.push(DeviceRecord {
            eid: receiver.clone(),
            peer: sender.clone(),
            index: 2 * pair + 1,
            reconnects: tally.receiver_reconnects,
            last: tally.receiver_at.clone(),
        });
        report
            .version_faults
            .extend(tally.faults.iter().map(|f| format!("pair {pair}: {f}")));
        let mut versions: Vec<i64> = tally.accepted.values().map(|(_, v)| *v).collect();
        versions.sort_unstable();
        // A text still unaccepted at the deadline holds a version no VersionUpdate named: a gap only counts when
        // every text of the pair was accepted.
        let first_fault = versions.iter().zip(1i64..).find(|(v, want)| **v != *want);
        if let Some((got, want)) = first_fault.filter(|_| unaccepted == 0) {
            report.version_faults.push(format!(
                "pair {pair}: accepted versions go {want} -> {got} ({} accepted)",
                versions.len()
            ));
        }
        let missing = tally
            .accepted
            .values()
            .filter(|(id, _)| !tally.received.contains_key(id))
            .count();
        if missing > 0 {
            report
                .stalled
                .push(format!("pair {pair}: {missing} lost; receiver {}", tally.receiver_at));
        }
        for (local, (id, version)) in &tally.accepted {
            match tally.received.get(id) {
                None => report
                    .lost
                    .push(format!("pair {pair}: {local} ({id}, version {version})")),
                Some(got) if got != version => report.version_faults.push(format!(
                    "pair {pair}: {id} accepted as version {version}, delivered as {got}"
                )),
                Some(_) => report.delivered += 1,
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Connects device `index` on its next node: after `attempt` ends, the one after; `attempt` becomes the attempt
/// that connected.
async fn connect(
    options: &DurabilityOptions,
    token: &str,
    index: usize,
    attempt: &mut u64,
    deadline: Instant,
) -> Option<Client> {
    while Instant::now() < deadline {
        let url = &options.urls[(index + *attempt as usize) % options.urls.len()];
        if let Ok(client) = Client::connect(url, token, options.client.clone()).await {
            return Some(client);
        }
        *attempt += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// A sender: returns how many texts were never accepted.
async fn send(
    options: Arc<DurabilityOptions>,
    (eid, token): (String, String),
    to: String,
    index: usize,
    tally: Arc<Mutex<Tally>>,
    deadline: Instant,
) -> u64 {
    let text = |n: u64| {
        Payload::TextPayloadRequest(TextPayloadRequest {
            to: vec![Identity {
                eid: to.clone(),
                connection_resource_id: String::new(),
            }],
            content: format!("durability {n}"),
            message_id_local: format!("{eid}#{n}"),
            ..TextPayloadRequest::default()
        })
    };
    let mut next = 0u64;
    let mut next_at = Instant::now();
    let mut pending: BTreeSet<u64> = BTreeSet::new();
    let mut attempt = 0u64;
    while Instant::now() < deadline && (next < options.messages || !pending.is_empty()) {
        let Some(mut client) = connect(&options, &token, index, &mut attempt, deadline).await else {
            break;
        };
        let mark = |what: String| {
            let tally = Arc::clone(&tally);
            async move { tally.lock().await.sender_at = what }
        };
        mark(format!(
            "connected (attempt {attempt}), {} pending, next {next}",
            pending.len()
        ))
        .await;
        // CLI-2: what was not accepted goes again, with its own local id.
        let mut alive = true;
        for n in &pending {
            alive &= client.send(text(*n)).await.is_ok();
        }
        let mut refused: Vec<u64> = Vec::new();
        let mut retry_at = Instant::now();
        while alive && Instant::now() < deadline && (next < options.messages || !pending.is_empty()) {
            // A text refused for now (429, 503) goes again a little later: it is still not accepted.
            if !refused.is_empty() && Instant::now() >= retry_at {
                for n in std::mem::take(&mut refused) {
                    alive &= client.send(text(n)).await.is_ok();
                }
            }
            while next < options.messages && pending.len() < options.inflight && Instant::now() >= next_at {
                alive &= client.send(text(next)).await.is_ok();
                pending.insert(next);
                next += 1;
                next_at += options.interval;
            }
            let room = next < options.messages && pending.len() < options.inflight;
            let mut wake = if room { next_at.min(deadline) } else { deadline };
            if !refused.is_empty() {
                wake = wake.min(retry_at);
            }
            let event = tokio::select! {
                event = client.next_event() => event,
                () = tokio::time::sleep_until(wake) => continue,
            };
            match event {
                Some(Event::Stanza(Payload::VersionUpdate(v))) if v.r#type == 1 => {
                    let Some(n) = v
                        .message_id_local
                        .rsplit('#')
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                    else {
                        continue;
                    };
                    pending.remove(&n);
                    let mut tally = tally.lock().await;
                    let known = tally
                        .accepted
                        .insert(v.message_id_local.clone(), (v.message_id.clone(), v.version));
                    if let Some((id, version)) = known.filter(|known| *known != (v.message_id.clone(), v.version)) {
                        tally.faults.push(format!(
                            "{} accepted twice: {id} version {version}, then {} version {}",
                            v.message_id_local, v.message_id, v.version
                        ));
                    }
                }
                // The confirmation of this device's own confirm (ACK-5) is no item: confirming it would be answered
                // again, a loop as fast as the round trip (the stanza rate limit ended it, 429 then a close).
                Some(Event::Stanza(Payload::AcknowledgmentResponse(r)))
                    if r.from.as_ref().is_some_and(|from| from.eid == eid) => {}
                Some(Event::Stanza(Payload::AcknowledgmentResponse(r))) => {
                    // The receiver's DELIVERED (ACK-4): confirmed, as a real client must for its queue to go (QUE-4).
                    let confirm = AcknowledgmentRequest {
                        message_id: r.message_id,
                        status: r.status,
                        timestamp: client.now_ms(),
                        ..AcknowledgmentRequest::default()
                    };
                    alive &= client.send(Payload::AcknowledgmentRequest(confirm)).await.is_ok();
                }
                Some(Event::Closed { code, reason }) => {
                    mark(format!("closed {code:?} {reason} (attempt {attempt})")).await;
                    alive = false;
                }
                None => alive = false,
                Some(Event::Stanza(Payload::ErrorMessage(e))) => {
                    let ours = e.ref_id.rsplit('#').next().and_then(|n| n.parse::<u64>().ok());
                    if let Some(n) = ours.filter(|n| pending.contains(n) && e.ref_id.starts_with(eid.as_str())) {
                        refused.push(n);
                        retry_at = Instant::now() + Duration::from_millis(200);
                    }
                    mark(format!(
                        "error {} {} {} (attempt {attempt})",
                        e.code, e.message, e.details
                    ))
                    .await;
                }
                Some(_) => {}
            }
        }
        attempt += 1;
        if next < options.messages || !pending.is_empty() {
            tally.lock().await.sender_reconnects += 1;
        }
    }
    options.messages - next + pending.len() as u64
}

/// A receiver: takes ChatMessages until `done`.
async fn receive(
    options: Arc<DurabilityOptions>,
    token: String,
    index: usize,
    tally: Arc<Mutex<Tally>>,
    deadline: Instant,
    done: tokio_util::sync::CancellationToken,
) {
    let mut attempt = 0u64;
    while !done.is_cancelled() && Instant::now() < deadline {
        let Some(mut client) = connect(&options, &token, index, &mut attempt, deadline).await else {
            return;
        };
        let url = &options.urls[(index + attempt as usize) % options.urls.len()];
        tally.lock().await.receiver_at = format!("connected (attempt {attempt}) near {url}");
        loop {
            let event = tokio::select! {
                event = client.next_event() => event,
                () = done.cancelled() => return,
            };
            match event {
                Some(Event::Stanza(Payload::ChatMessage(m))) => {
                    {
                        let mut tally = tally.lock().await;
                        if tally.received.insert(m.message_id.clone(), m.version).is_some() {
                            tally.duplicates += 1;
                        }
                    }
                    let ack = AcknowledgmentRequest {
                        message_id: m.message_id,
                        status: 2,
                        timestamp: client.now_ms(),
                        ..AcknowledgmentRequest::default()
                    };
                    if client.send(Payload::AcknowledgmentRequest(ack)).await.is_err() {
                        break;
                    }
                }
                Some(Event::Closed { code, reason }) => {
                    tally.lock().await.receiver_at = format!("closed {code:?} {reason} (attempt {attempt})");
                    break;
                }
                None => break,
                Some(Event::Stanza(Payload::ErrorMessage(e))) => {
                    tally.lock().await.receiver_at = format!("error {} {} (attempt {attempt})", e.code, e.details);
                }
                Some(_) => {}
            }
        }
        attempt += 1;
        tally.lock().await.receiver_reconnects += 1;
    }
}
