//! Fuzz drivers: each takes raw fuzzer bytes and asserts the properties its
//! target protects. The cargo-fuzz targets in `fuzz/` call them, and
//! `tests/fuzz_regressions.rs` replays every saved finding and seed through the
//! same functions, so a fixed bug stays fixed without libFuzzer. [`seeds`]
//! builds the seed corpora (from `vectors/` and from a real queue store).

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::codec::{self, DEFAULT_MAX_STANZA_BYTES, TcpFrameCodec};

/// MessageScheme decoding: never panics; what decodes re-encodes canonically
/// to bytes that decode to the same stanza, and the canonical form is a fixed
/// point. Compared as bytes: a NaN double is never equal to itself, but its
/// bits survive the round trip.
pub fn decode_stanza(data: &[u8]) {
    if let Ok(payload) = codec::decode(data, DEFAULT_MAX_STANZA_BYTES) {
        let canonical = codec::encode(&payload);
        let again = codec::decode(&canonical, DEFAULT_MAX_STANZA_BYTES).expect("canonical bytes decode");
        assert_eq!(crate::codec::Route::of(&again), crate::codec::Route::of(&payload));
        assert_eq!(codec::encode(&again), canonical);
    }
    let _ = codec::describe(data);
}

fn frames(stream: &[u8], cuts: &[usize], max: usize) -> (Vec<Vec<u8>>, bool) {
    let mut codec = TcpFrameCodec::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
        buf.extend_from_slice(&stream[start..end]);
        start = end;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => out.push(f.to_vec()),
                Ok(None) => break,
                Err(_) => return (out, false),
            }
        }
    }
    match codec.decode_eof(&mut buf) {
        Ok(last) => {
            out.extend(last.map(|f| f.to_vec()));
            (out, true)
        }
        Err(_) => (out, false),
    }
}

/// TCP framing: the same stream gives the same frames (or the same error)
/// however it is cut into reads, and no frame exceeds the limit.
///
/// Input layout (hand-parsed, so [`seeds`] can write vectors as inputs): the
/// frame limit `max` (one byte), a cut count `n` (one byte), `n` cut points
/// (u16 little-endian, taken modulo the stream length + 1), then the stream.
pub fn tcp_frames(data: &[u8]) {
    let [max, n, rest @ ..] = data else { return };
    let cut_bytes = (usize::from(*n) * 2).min(rest.len());
    let (cut_bytes, stream) = rest.split_at(cut_bytes);
    let mut cuts: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    let max = usize::from(*max);
    let whole = frames(stream, &[], max);
    assert_eq!(whole, frames(stream, &cuts, max));
    assert!(whole.0.iter().all(|f| f.len() <= max));
}

/// Builds a `tcp_frames` input (the inverse of its layout).
pub fn tcp_frames_input(max: u8, cuts: &[u16], stream: &[u8]) -> Vec<u8> {
    let cuts = &cuts[..cuts.len().min(255)];
    let mut out = vec![max, cuts.len() as u8];
    for c in cuts {
        out.extend_from_slice(&c.to_le_bytes());
    }
    out.extend_from_slice(stream);
    out
}

mod queue_recovery;
pub mod seeds;

pub use queue_recovery::{pack_files, queue_recovery};

pub use engine::engine;

mod engine {
    use std::collections::BTreeSet;

    use arbitrary::{Arbitrary, Unstructured};
    use jsonwebtoken::{DecodingKey, EncodingKey};

    use crate::codec::{self, DEFAULT_MAX_STANZA_BYTES};
    use crate::core::auth::{Algorithm, Claims, Signer, Verifier};
    use crate::core::{Config, ConnId, Engine, MemoryRevocations, Output, Transport};
    use crate::proto::message_scheme::Payload;
    use crate::proto::*;

    const T0: i64 = 1_761_831_141_000;
    const USERS: [&str; 3] = ["alice@example.com", "bob@example.com", "carol@example.com"];

    #[derive(Debug, Arbitrary)]
    enum Op {
        Open {
            conn: u8,
            tcp: bool,
            token: u8,
        },
        Stanza {
            conn: u8,
            template: u8,
            target: u8,
            number: i32,
            raw: Vec<u8>,
        },
        Raw {
            conn: u8,
            bytes: Vec<u8>,
        },
        TextFrame {
            conn: u8,
        },
        Closed {
            conn: u8,
        },
        Advance {
            hundred_ms: u16,
        },
    }

    fn identity(eid: &str) -> Option<Identity> {
        Some(Identity {
            eid: eid.to_string(),
            connection_resource_id: String::new(),
        })
    }

    /// A client stanza of one of the protocol's flows, with fuzzer-chosen values.
    fn template(template: u8, target: &str, number: i32, raw: &[u8], message_ids: &[String]) -> Payload {
        let text = String::from_utf8_lossy(raw).into_owned();
        let message_id = message_ids
            .get(number.unsigned_abs() as usize % message_ids.len().max(1))
            .cloned();
        match template % 16 {
            0 => Payload::PingpongMessage(PingPong {
                r#type: number % 3,
                status: 1,
                id: text,
                ..Default::default()
            }),
            1 => Payload::AwarenessNotification(AwarenessNotification {
                status: number % 6,
                ttl: number % 4,
                ..Default::default()
            }),
            2 => Payload::AwarenessNotification(AwarenessNotification {
                to: identity(target),
                awareness_intention: number % 4,
                ..Default::default()
            }),
            3 => Payload::TextPayloadRequest(TextPayloadRequest {
                to: vec![Identity {
                    eid: target.into(),
                    connection_resource_id: String::new(),
                }],
                content: text,
                message_id_local: format!("l{}", number % 5),
                ..Default::default()
            }),
            4 => Payload::AcknowledgmentRequest(AcknowledgmentRequest {
                message_id: message_id.unwrap_or(text),
                status: number % 5,
                ..Default::default()
            }),
            5 => Payload::SubscriberAddRequest(SubscriberAddRequest {
                subscriber: identity(target),
                nickname: text,
                ..Default::default()
            }),
            6 => Payload::SubscriberRemove(SubscriberRemove {
                subscriber: identity(target),
                r#type: 1,
                ..Default::default()
            }),
            7 => Payload::BlockSubscriber(BlockSubscriber {
                subscriber: identity(target),
                r#type: 1,
                action: number % 3,
                ..Default::default()
            }),
            8 => Payload::AwarenessVisibility(AwarenessVisibility {
                r#type: 1,
                visibility: number % 4,
                location_sharing: (number / 4) % 3,
                ..Default::default()
            }),
            9 => Payload::LocationStream(LocationStream {
                to: if number % 2 == 0 { None } else { identity(target) },
                latitude: f64::from(number % 100),
                longitude: f64::from(number % 200),
                ..Default::default()
            }),
            10 => Payload::AwarenessRequest(AwarenessRequest {
                to: identity(target),
                awareness_identifier: i64::from(number),
                ..Default::default()
            }),
            11 => Payload::AwarenessSubscription(AwarenessSubscription {
                to: identity(target),
                r#type: 1,
                action: number % 3,
                ..Default::default()
            }),
            12 => Payload::TokenRevokeRequest(TokenRevokeRequest {
                to: Some(Identity {
                    eid: String::new(),
                    connection_resource_id: text,
                }),
                r#type: 1,
                ..Default::default()
            }),
            13 => Payload::TokenRefreshRequest(TokenRefreshRequest::default()),
            14 => Payload::Logout(Logout {
                r#type: 1 + number % 2,
                ..Default::default()
            }),
            _ => Payload::MediaPayloadRequest(MediaPayloadRequest {
                to: vec![Identity {
                    eid: target.into(),
                    connection_resource_id: String::new(),
                }],
                message_id_local: format!("m{}", number % 5),
                r#type: number % 6,
                cdn_url_id: text,
                ..Default::default()
            }),
        }
    }

    /// The sans-IO engine fed arbitrary connections, stanzas and clock ticks:
    /// it never panics, sends only valid stanzas within the size limit, and
    /// sends nothing to a connection after closing it.
    pub fn engine(data: &[u8]) {
        let mut input = Unstructured::new(data);
        let secret = b"fuzz-secret";
        let signer = Signer::new(Algorithm::Hs256, EncodingKey::from_secret(secret));
        let mint = |eid: &str, device: &str, jti: usize, exp: i64| {
            let claims = Claims {
                eid: eid.into(),
                device_id: device.into(),
                jti: format!("j{jti}"),
                iat: T0 / 1000,
                exp,
                ..Default::default()
            };
            signer.mint(&claims).unwrap_or_default()
        };
        let mut tokens: Vec<String> = Vec::new();
        for (i, eid) in USERS.iter().enumerate() {
            for device in ["phone", "laptop"] {
                tokens.push(mint(eid, device, tokens.len(), T0 / 1000 + 3600));
            }
            tokens.push(mint(eid, "old", 100 + i, T0 / 1000 - 1));
        }
        tokens.push("not.a.token".into());
        let verifier = Verifier::new(Algorithm::Hs256, DecodingKey::from_secret(secret));
        let config = Config {
            rate_burst: 50,
            ..Config::default()
        };
        let mut engine = Engine::new(
            config,
            verifier,
            Some(signer.clone()),
            Box::new(MemoryRevocations::default()),
        );
        let mut now = T0;
        let mut closed: BTreeSet<ConnId> = BTreeSet::new();
        let mut message_ids: Vec<String> = Vec::new();
        let mut ops = 0;
        while let Ok(op) = Op::arbitrary(&mut input) {
            ops += 1;
            if ops > 300 {
                break;
            }
            match op {
                Op::Open { conn, tcp, token } => {
                    let conn = ConnId(u64::from(conn % 8));
                    closed.remove(&conn);
                    let token = &tokens[usize::from(token) % tokens.len()];
                    if tcp {
                        if engine.open(conn, Transport::Tcp, None, now).is_ok() {
                            let auth = Payload::Authenticate(Authenticate {
                                token: token.clone(),
                                r#type: 1,
                                ..Default::default()
                            });
                            engine.receive(conn, &codec::encode(&auth), now);
                        }
                    } else {
                        let _ = engine.open(conn, Transport::WebSocket, Some(token), now);
                    }
                }
                Op::Stanza {
                    conn,
                    template: t,
                    target,
                    number,
                    raw,
                } => {
                    let target = USERS[usize::from(target) % USERS.len()];
                    let payload = template(t, target, number, &raw, &message_ids);
                    engine.receive(ConnId(u64::from(conn % 8)), &codec::encode(&payload), now);
                }
                Op::Raw { conn, bytes } => engine.receive(ConnId(u64::from(conn % 8)), &bytes, now),
                Op::TextFrame { conn } => engine.text_frame(ConnId(u64::from(conn % 8)), now),
                Op::Closed { conn } => engine.closed(ConnId(u64::from(conn % 8)), now),
                Op::Advance { hundred_ms } => {
                    now += i64::from(hundred_ms) * 100;
                    engine.tick(now);
                }
            }
            while let Some(output) = engine.poll_output() {
                match output {
                    Output::Send { conn, stanza } => {
                        assert!(!closed.contains(&conn), "a stanza after the close of {conn}");
                        assert!(
                            stanza.len() <= DEFAULT_MAX_STANZA_BYTES,
                            "TRN-1: {} bytes",
                            stanza.len()
                        );
                        let payload = codec::decode(&stanza, usize::MAX).expect("the engine sends valid stanzas");
                        if let Payload::VersionUpdate(v) = payload {
                            message_ids.push(v.message_id);
                        }
                    }
                    Output::Close { conn, .. } => {
                        assert!(closed.insert(conn), "{conn} closed twice");
                    }
                    Output::Mail { .. } => panic!("a one-shard engine sent mail"),
                    Output::Sync(job) => job.run(),
                }
            }
            assert!(engine.connection_count() <= 8);
        }
    }
}
