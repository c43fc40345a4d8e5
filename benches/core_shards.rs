//! The partitioned core on threads: stanzas per second through 1, 2 and 4 shards of the sans-IO engine, each
//! shard on its own thread with a channel as its inbox, and mail between shards carried by those channels (no
//! sockets, no runtime, the in-memory chat store). Issue 16's target: at least 1.8x the one-shard rate with 2
//! shards on a 2-core machine.
//!
//! The workload is `bimip bench`'s chat between 2,000 sender/receiver pairs, in rounds: each round every sender sends
//! one TextPayloadRequest and every receiver acknowledges (DELIVERED) the message of the round before, whose id
//! it knows (`{chat}/{version}`, CHAT-8). A round ends when every shard is idle and no mail is in flight, so each
//! acknowledgment finds its message. Users hash to shards as in `bimip serve`, so with N shards about (N-1)/N of
//! the chats have a home on another shard than their sender.
//!
//! `cargo bench --bench core_shards`

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bimip::codec;
use bimip::core::chat::chat_id;
use bimip::core::shard::home;
use bimip::core::{ConnId, Engine, Mail, Output, ShardId, Transport};
use bimip::proto::message_scheme::Payload;
use bimip::proto::{AcknowledgmentRequest, Identity, TextPayloadRequest};
mod support;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use support::{NOW, engine, token};

/// As `bimip serve` allocates.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PAIRS: usize = 2000;

enum Input {
    Open(ConnId, String),
    /// A round's stanzas for one shard, in order.
    Stanzas(Vec<(ConnId, Vec<u8>)>),
    /// Mail from one shard, in the order it was sent.
    Mail(Vec<Mail>),
    Stop,
}

/// Inputs a shard takes from its inbox before it drains its outputs: mail to another shard goes in one message
/// per batch, so a thread is woken once for many.
const BATCH: usize = 256;

/// N engines on N threads; `pending` counts inputs and mail not yet handled.
struct Partition {
    inboxes: Vec<Sender<Input>>,
    pending: Arc<AtomicI64>,
    threads: Vec<JoinHandle<()>>,
    count: usize,
}

fn shard_loop(
    mut engine: Engine,
    inbox: Receiver<Input>,
    others: Vec<Sender<Input>>,
    pending: Arc<AtomicI64>,
    driver: std::thread::Thread,
) {
    let mut mail: Vec<Vec<Mail>> = others.iter().map(|_| Vec::new()).collect();
    while let Ok(first) = inbox.recv() {
        let mut handled: i64 = 0;
        let mut next = Some(first);
        while let Some(input) = next.take() {
            match input {
                Input::Open(conn, token) => engine
                    .open(conn, Transport::WebSocket, Some(&token), NOW)
                    .expect("a session"),
                Input::Stanzas(stanzas) => {
                    for (n, (conn, stanza)) in stanzas.into_iter().enumerate() {
                        engine.receive(conn, &stanza, NOW);
                        // Mail goes out every few stanzas, so the other shards work meanwhile.
                        if n % 64 == 63 {
                            flush(&mut engine, &mut mail, &others, &pending);
                        }
                    }
                }
                Input::Mail(letters) => {
                    for letter in letters {
                        engine.deliver(letter, NOW);
                    }
                }
                Input::Stop => return,
            }
            handled += 1;
            if handled < BATCH as i64 {
                next = inbox.try_recv().ok();
            }
        }
        flush(&mut engine, &mut mail, &others, &pending);
        if pending.fetch_sub(handled, Ordering::AcqRel) == handled {
            driver.unpark();
        }
    }
}

/// One round's stanzas, per shard, in order.
type Round = Vec<Vec<(ConnId, Vec<u8>)>>;

/// Drains the engine's outputs; its mail goes to the other shards, one message per shard.
fn flush(engine: &mut Engine, mail: &mut [Vec<Mail>], others: &[Sender<Input>], pending: &AtomicI64) {
    while let Some(output) = engine.poll_output() {
        match output {
            Output::Mail { to, mail: letter } => mail[to].push(letter),
            other => {
                std::hint::black_box(&other);
            }
        }
    }
    for (to, letters) in mail.iter_mut().enumerate() {
        if !letters.is_empty() {
            pending.fetch_add(1, Ordering::AcqRel);
            let _ = others[to].send(Input::Mail(std::mem::take(letters)));
        }
    }
}

impl Partition {
    fn start(count: usize) -> Partition {
        let (inboxes, receivers): (Vec<_>, Vec<_>) = (0..count).map(|_| channel()).unzip();
        let pending = Arc::new(AtomicI64::new(0));
        let threads = receivers
            .into_iter()
            .enumerate()
            .map(|(shard, inbox)| {
                let engine = engine(ShardId::new(shard, count));
                let others = inboxes.clone();
                let pending = Arc::clone(&pending);
                let driver = std::thread::current();
                std::thread::spawn(move || shard_loop(engine, inbox, others, pending, driver))
            })
            .collect();
        Partition {
            inboxes,
            pending,
            threads,
            count,
        }
    }

    fn send(&self, eid: &str, input: Input) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        let _ = self.inboxes[home(eid, self.count)].send(input);
    }

    /// Waits until every shard is idle and no mail is in flight.
    fn settle(&self) {
        while self.pending.load(Ordering::Acquire) > 0 {
            std::thread::park_timeout(Duration::from_millis(1));
        }
    }

    fn stop(self) {
        for inbox in &self.inboxes {
            let _ = inbox.send(Input::Stop);
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

struct Pair {
    sender: (ConnId, String),
    receiver: (ConnId, String),
    chat: String,
}

fn pairs() -> Vec<Pair> {
    (0..PAIRS)
        .map(|i| {
            let (s, r) = (format!("s{i}@bench.example"), format!("r{i}@bench.example"));
            let chat = chat_id(&s, &r);
            Pair {
                sender: (ConnId(2 * i as u64 + 1), s),
                receiver: (ConnId(2 * i as u64 + 2), r),
                chat,
            }
        })
        .collect()
}

fn text(to: &str, local: u64) -> Vec<u8> {
    codec::encode(&Payload::TextPayloadRequest(TextPayloadRequest {
        to: vec![Identity {
            eid: to.to_string(),
            connection_resource_id: String::new(),
        }],
        content: "x".repeat(100),
        message_id_local: local.to_string(),
        created_at: NOW,
        ..TextPayloadRequest::default()
    }))
}

fn delivered(message_id: String) -> Vec<u8> {
    codec::encode(&Payload::AcknowledgmentRequest(AcknowledgmentRequest {
        message_id,
        status: 2,
        timestamp: NOW,
        ..AcknowledgmentRequest::default()
    }))
}

/// `rounds` rounds on a fresh partition of `count` shards; the time of the rounds only.
fn run(count: usize, rounds: u64) -> Duration {
    run_with(count, rounds, false)
}

fn run_with(count: usize, rounds: u64, pings_only: bool) -> Duration {
    let partition = Partition::start(count);
    let pairs = pairs();
    for pair in &pairs {
        for (conn, eid) in [&pair.sender, &pair.receiver] {
            partition.send(eid, Input::Open(*conn, token(eid)));
        }
    }
    partition.settle();
    // Every round's stanzas made before the clock starts: encoding them is the clients' work, not the server's.
    let rounds: Vec<Round> = (1..=rounds)
        .map(|round| {
            let mut per_shard = vec![Vec::new(); count];
            for pair in &pairs {
                let (conn, eid) = &pair.sender;
                let (receiver, receiver_eid) = &pair.receiver;
                if pings_only {
                    let ping = codec::encode(&Payload::PingpongMessage(bimip::proto::PingPong {
                        r#type: 1,
                        status: 1,
                        request_time: NOW,
                        id: round.to_string(),
                        ..Default::default()
                    }));
                    per_shard[home(eid, count)].push((*conn, ping.clone()));
                    per_shard[home(receiver_eid, count)].push((*receiver, ping));
                    continue;
                }
                per_shard[home(eid, count)].push((*conn, text(receiver_eid, round)));
                if round > 1 {
                    let message_id = format!("{}/{}", pair.chat, round - 1);
                    per_shard[home(receiver_eid, count)].push((*receiver, delivered(message_id)));
                }
            }
            per_shard
        })
        .collect();
    let started = Instant::now();
    for round in rounds {
        for (shard, stanzas) in round.into_iter().enumerate() {
            partition.pending.fetch_add(1, Ordering::AcqRel);
            let _ = partition.inboxes[shard].send(Input::Stanzas(stanzas));
        }
        partition.settle();
    }
    let elapsed = started.elapsed();
    partition.stop();
    elapsed
}

/// The same rounds with every shard on this one thread: the total work of the partition, which the threads share.
fn run_on_one_thread(count: usize, rounds: u64) -> Duration {
    let mut engines: Vec<Engine> = (0..count).map(|s| engine(ShardId::new(s, count))).collect();
    let pairs = pairs();
    let mut mail = std::collections::VecDeque::new();
    let settle = |engines: &mut Vec<Engine>, mail: &mut std::collections::VecDeque<(usize, Mail)>| {
        loop {
            for engine in engines.iter_mut() {
                while let Some(output) = engine.poll_output() {
                    if let Output::Mail { to, mail: letter } = output {
                        mail.push_back((to, letter));
                    }
                }
            }
            let Some((to, letter)) = mail.pop_front() else { return };
            engines[to].deliver(letter, NOW);
        }
    };
    for pair in &pairs {
        for (conn, eid) in [&pair.sender, &pair.receiver] {
            engines[home(eid, count)]
                .open(*conn, Transport::WebSocket, Some(&token(eid)), NOW)
                .expect("a session");
        }
    }
    settle(&mut engines, &mut mail);
    let started = Instant::now();
    for round in 1..=rounds {
        for pair in &pairs {
            let (conn, eid) = &pair.sender;
            engines[home(eid, count)].receive(*conn, &text(&pair.receiver.1, round), NOW);
            if round > 1 {
                let (conn, eid) = &pair.receiver;
                let message_id = format!("{}/{}", pair.chat, round - 1);
                engines[home(eid, count)].receive(*conn, &delivered(message_id), NOW);
            }
            settle(&mut engines, &mut mail);
        }
    }
    started.elapsed()
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("core_shards");
    // A round: every sender's message and every receiver's acknowledgment.
    group.throughput(Throughput::Elements(2 * PAIRS as u64));
    for count in [1usize, 2, 4] {
        group.bench_function(format!("chat_rounds/{count}"), |b| {
            b.iter_custom(|iters| run(count, iters))
        });
    }
    for count in [1usize, 2] {
        group.bench_function(format!("pings/{count}"), |b| {
            b.iter_custom(|iters| run_with(count, iters, true))
        });
    }
    for count in [1usize, 2] {
        group.bench_function(format!("one_thread/{count}"), |b| {
            b.iter_custom(|iters| run_on_one_thread(count, iters))
        });
    }
    group.finish();
}

criterion_group! {
    name = shard_benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4))
        .sample_size(20);
    targets = benches
}
criterion_main!(shard_benches);
