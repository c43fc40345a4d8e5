//! Protocol-core benches: stanzas per second through the sans-IO
//! [`Engine`] alone (no sockets, no runtime, the in-memory chat store), on
//! one thread. What the network adapters and the client add on top is what
//! `bimip bench` measures; the gap between the two says where the time goes.
//!
//! - `core/ping`: a client PingPong request in, the pong out.
//! - `core/chat_round/P`: one message of `bimip bench`'s chat with P pairs
//!   online: TextPayloadRequest in (VersionUpdate and ChatMessage out), the
//!   receiver's AcknowledgmentRequest DELIVERED in (its confirmation and the
//!   sender's update out), the sender's confirming AcknowledgmentRequest in
//!   (its confirmation out). Throughput counts the 3 stanzas in; the
//!   VersionUpdate is decoded to learn the message id, as a client would.
//!
//! Each sample starts a fresh engine (outside the timed part), so the memory
//! store's growth stays bounded by one sample.
//!
//! `cargo bench --bench core`

use std::hint::black_box;
use std::time::{Duration, Instant};

use bimip::codec;
use bimip::core::{ConnId, Engine, Output, ShardId, Transport};
use bimip::proto::message_scheme::Payload;
use bimip::proto::{AcknowledgmentRequest, Identity, PingPong, TextPayloadRequest};
mod support;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use support::{NOW, engine, token};

fn drain(engine: &mut Engine) -> usize {
    let mut n = 0;
    while let Some(output) = engine.poll_output() {
        black_box(&output);
        n += 1;
    }
    n
}

/// An engine with `pairs` sender/receiver sessions: (sender, receiver eid, receiver) per pair.
fn with_pairs(pairs: usize) -> (Engine, Vec<(ConnId, String, ConnId)>) {
    let mut engine = engine(ShardId::default());
    let mut sessions = Vec::new();
    for pair in 0..pairs {
        let (s, r) = (ConnId(2 * pair as u64 + 1), ConnId(2 * pair as u64 + 2));
        let receiver = format!("r{pair}@bench.example");
        engine
            .open(
                s,
                Transport::WebSocket,
                Some(&token(&format!("s{pair}@bench.example"))),
                NOW,
            )
            .expect("sender session");
        engine
            .open(r, Transport::WebSocket, Some(&token(&receiver)), NOW)
            .expect("receiver session");
        sessions.push((s, receiver, r));
    }
    drain(&mut engine);
    (engine, sessions)
}

/// One chat message with its delivered acknowledgment; returns the outputs.
fn chat_round(engine: &mut Engine, seq: u64, sender: ConnId, to: &str, receiver: ConnId, text: &str) -> usize {
    let request = Payload::TextPayloadRequest(TextPayloadRequest {
        to: vec![Identity {
            eid: to.to_string(),
            connection_resource_id: String::new(),
        }],
        content: text.to_string(),
        message_id_local: seq.to_string(),
        created_at: NOW,
        ..TextPayloadRequest::default()
    });
    engine.receive(sender, &codec::encode(&request), NOW);
    let mut message_id = None;
    let mut outputs = 0;
    while let Some(output) = engine.poll_output() {
        outputs += 1;
        if let Output::Send { conn, stanza } = output
            && conn == sender
            && let Ok(Payload::VersionUpdate(v)) = codec::decode(&stanza, usize::MAX)
        {
            message_id = Some(v.message_id);
        }
    }
    let message_id = message_id.expect("a VersionUpdate for every message");
    let ack = |status| {
        codec::encode(&Payload::AcknowledgmentRequest(AcknowledgmentRequest {
            message_id: message_id.clone(),
            status,
            timestamp: NOW,
            ..AcknowledgmentRequest::default()
        }))
    };
    engine.receive(receiver, &ack(2), NOW);
    outputs += drain(engine);
    engine.receive(sender, &ack(2), NOW);
    outputs + drain(engine)
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(1));
    group.bench_function("ping", |b| {
        b.iter_custom(|iters| {
            let (mut engine, sessions) = with_pairs(1);
            let conn = sessions[0].0;
            let ping = codec::encode(&Payload::PingpongMessage(PingPong {
                r#type: 1,
                status: 1,
                request_time: NOW,
                id: "p".into(),
                ..PingPong::default()
            }));
            let started = Instant::now();
            for _ in 0..iters {
                engine.receive(conn, black_box(&ping), NOW);
                drain(&mut engine);
            }
            started.elapsed()
        })
    });
    let text = "x".repeat(100);
    for pairs in [1usize, 100] {
        group.throughput(Throughput::Elements(3));
        group.bench_function(format!("chat_round/{pairs}"), |b| {
            b.iter_custom(|iters| {
                let (mut engine, sessions) = with_pairs(pairs);
                let started = Instant::now();
                for i in 0..iters {
                    let (sender, to, receiver) = &sessions[(i as usize) % sessions.len()];
                    black_box(chat_round(&mut engine, i + 1, *sender, to, *receiver, &text));
                }
                started.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = core_benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(core_benches);
