//! Codec benches: `codec::encode` and `codec::decode` per stanza type, on the
//! first valid vector of each payload type in `vectors/` (the canonical
//! stanzas the conformance kit ships), plus a 100-byte-text
//! TextPayloadRequest and ChatMessage, the stanzas `bimip bench` sends most.
//! Throughput is in bytes so that stanzas of different sizes compare.
//!
//! `cargo bench --bench codec` (add a filter such as `decode/ChatMessage`).

use std::collections::BTreeMap;
use std::hint::black_box;

use bimip::codec::{self, DEFAULT_MAX_STANZA_BYTES};
use bimip::proto::message_scheme::Payload;
use bimip::proto::{ChatMessage, Identity, TextPayloadRequest, chat_message};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// One stanza per payload type: (type name, its canonical bytes).
fn stanzas() -> BTreeMap<String, Vec<u8>> {
    let mut by_type = BTreeMap::new();
    let files = bimip::vectors::load_dir(&bimip::vectors::default_dir()).expect("loading vectors/");
    for (_, file) in files {
        for case in file.valid.iter().filter(|c| c.message == "MessageScheme") {
            let bytes = hex::decode(&case.hex).expect("vector hex");
            // describe() names a payload "ChatMessage (chat_message)".
            let Some(name) = codec::describe(&bytes).payload else {
                continue;
            };
            let name = name.split(' ').next().unwrap_or_default().to_string();
            by_type.entry(name).or_insert(bytes);
        }
    }
    let alice = Identity {
        eid: "alice@example.com".into(),
        connection_resource_id: "phone".into(),
    };
    let bob = Identity {
        eid: "bob@example.com".into(),
        connection_resource_id: String::new(),
    };
    let text = "x".repeat(100);
    let request = Payload::TextPayloadRequest(TextPayloadRequest {
        to: vec![bob.clone()],
        content: text.clone(),
        message_id_local: "1234567".into(),
        text_size_count: "100".into(),
        created_at: 1_761_831_141_000,
        ..TextPayloadRequest::default()
    });
    let message = Payload::ChatMessage(ChatMessage {
        message_id: "m-0000000000001234".into(),
        message_id_local: "1234567".into(),
        version: 1234,
        chat_id: "c-00000000000000000042".into(),
        from: Some(alice),
        to: vec![bob],
        author: "receiver".into(),
        acknowledgment: 1,
        acknowledgment_timestamp: 1_761_831_141_005,
        created_at: 1_761_831_141_000,
        server_received_at: 1_761_831_141_005,
        payload: Some(chat_message::Payload::Text(text)),
        ..ChatMessage::default()
    });
    by_type.insert("TextPayloadRequest_100B".into(), codec::encode(&request));
    by_type.insert("ChatMessage_100B".into(), codec::encode(&message));
    by_type
}

fn benches(c: &mut Criterion) {
    let stanzas = stanzas();
    let mut decode = c.benchmark_group("decode");
    for (name, bytes) in &stanzas {
        decode.throughput(Throughput::Bytes(bytes.len() as u64));
        decode.bench_function(name, |b| {
            b.iter(|| codec::decode(black_box(bytes), DEFAULT_MAX_STANZA_BYTES).expect("a valid vector"))
        });
    }
    decode.finish();
    let mut encode = c.benchmark_group("encode");
    for (name, bytes) in &stanzas {
        let payload = codec::decode(bytes, DEFAULT_MAX_STANZA_BYTES).expect("a valid vector");
        encode.throughput(Throughput::Bytes(bytes.len() as u64));
        encode.bench_function(name, |b| b.iter(|| codec::encode(black_box(&payload))));
    }
    encode.finish();
}

criterion_group! {
    name = codec_benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    targets = benches
}
criterion_main!(codec_benches);
