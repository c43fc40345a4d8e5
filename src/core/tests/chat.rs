//! Chat, acknowledgments and the offline queue (SPEC §15-17), through the engine.

use super::*;
use crate::core::queue::SharedChatStore;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const CAROL: &str = "carol@example.com";

fn text(to: &str, local: &str, content: &str) -> Payload {
    Payload::TextPayloadRequest(TextPayloadRequest {
        to: vec![Identity {
            eid: to.into(),
            connection_resource_id: String::new(),
        }],
        content: content.into(),
        message_id_local: local.into(),
        created_at: T0 - 5,
        ..Default::default()
    })
}

fn ack(message_id: &str, status: i32) -> Payload {
    Payload::AcknowledgmentRequest(AcknowledgmentRequest {
        message_id: message_id.into(),
        status,
        timestamp: T0 + 9,
        ..Default::default()
    })
}

fn chats(seen: &Seen) -> Vec<ChatMessage> {
    seen.stanzas
        .iter()
        .filter_map(|p| match p {
            Payload::ChatMessage(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

fn acks(seen: &Seen) -> Vec<AcknowledgmentResponse> {
    seen.stanzas
        .iter()
        .filter_map(|p| match p {
            Payload::AcknowledgmentResponse(a) => Some(a.clone()),
            _ => None,
        })
        .collect()
}

fn version_update(seen: &Seen) -> VersionUpdate {
    let updates: Vec<_> = seen
        .stanzas
        .iter()
        .filter_map(|p| match p {
            Payload::VersionUpdate(v) => Some(v.clone()),
            _ => None,
        })
        .collect();
    match &updates[..] {
        [v] => v.clone(),
        _ => panic!("expected one VersionUpdate, got {:?}", seen.stanzas),
    }
}

impl Harness {
    fn with_store(store: SharedChatStore, config: Config) -> Self {
        let mut h = Harness::new(config);
        let events = store.events();
        let engine = std::mem::replace(
            &mut h.engine,
            Engine::new(
                Config::default(),
                Verifier::new(Algorithm::Hs256, DecodingKey::from_secret(SECRET)),
                None,
                Box::new(MemoryRevocations::default()),
            ),
        );
        h.engine = engine.with_chat(Box::new(store), &events);
        h
    }

    fn send_text(&mut self, conn: ConnId, to: &str, local: &str) -> VersionUpdate {
        self.send(conn, text(to, local, &format!("text of {local}")));
        version_update(&self.drain(conn))
    }
}

/// CHAT-5, CHAT-6, CHAT-9..12, ACK: one message, two devices on each side.
#[test]
fn fan_out_to_every_device() {
    let mut h = Harness::new(Config::default());
    let alice_phone = h.ws(ALICE, "phone");
    let alice_laptop = h.ws(ALICE, "laptop");
    let bob_phone = h.ws(BOB, "phone");
    let bob_tablet = h.ws(BOB, "tablet");
    h.drain_all();
    h.now += 3;
    h.send(alice_phone, text(BOB, "local-1", "Hey Bob! 👋"));
    let seen = h.drain(alice_phone);
    let v = version_update(&seen);
    assert_eq!(
        (v.r#type, v.status, v.version, v.message_id_local.as_str()),
        (1, 1, 1, "local-1")
    );
    assert_eq!((v.to.clone(), v.timestamp), (me(ALICE, "phone"), h.now));
    assert!(!v.message_id.is_empty() && !v.chat_id.is_empty());
    for (conn, device) in [(bob_phone, "phone"), (bob_tablet, "tablet")] {
        let got = chats(&h.drain(conn));
        assert_eq!(got.len(), 1, "{device}");
        let c = &got[0];
        assert_eq!((c.author.as_str(), c.acknowledgment, c.version), ("receiver", 1, 1));
        assert_eq!(
            (c.message_id.clone(), c.chat_id.clone()),
            (v.message_id.clone(), v.chat_id.clone())
        );
        assert_eq!(c.payload, Some(chat_message::Payload::Text("Hey Bob! 👋".into())));
        assert_eq!(
            (c.from.clone(), c.to.clone()),
            (
                me(ALICE, "phone"),
                vec![Identity {
                    eid: BOB.into(),
                    connection_resource_id: String::new()
                }]
            )
        );
        assert_eq!(
            (c.created_at, c.server_received_at, c.acknowledgment_timestamp),
            (T0 - 5, h.now, h.now)
        );
    }
    let laptop = chats(&h.drain(alice_laptop));
    assert_eq!(
        laptop
            .iter()
            .map(|c| (c.author.as_str(), c.acknowledgment))
            .collect::<Vec<_>>(),
        [("sender", 4)]
    );
}

/// QUE-2: nothing that follows an accepted message leaves the engine before its writes are synced.
#[test]
fn version_update_waits_for_the_sync() {
    let store = SharedChatStore::default();
    let mut h = Harness::with_store(store.clone(), Config::default());
    let alice = h.ws(ALICE, "phone");
    h.ws(BOB, "phone");
    h.drain_all();
    h.send(alice, text(BOB, "l", "x"));
    let syncs_before = store.0.lock().unwrap().syncs;
    assert!(store.0.lock().unwrap().unsynced_writes > 0);
    let first = h.engine.poll_output().expect("an output");
    assert!(matches!(first, Output::Send { .. }));
    let s = store.0.lock().unwrap();
    assert_eq!(
        (s.unsynced_writes, s.syncs),
        (0, syncs_before + 1),
        "one sync released the batch"
    );
}

/// CHAT-7, CHAT-8: versions count per chat, in both directions, without gaps.
#[test]
fn versions_per_chat() {
    let mut h = Harness::new(Config::default());
    let alice = h.ws(ALICE, "phone");
    let bob = h.ws(BOB, "phone");
    let carol = h.ws(CAROL, "phone");
    let a1 = h.send_text(alice, BOB, "a1");
    let b1 = h.send_text(bob, ALICE, "b1");
    let c1 = h.send_text(carol, ALICE, "c1");
    let a2 = h.send_text(alice, BOB, "a2");
    assert_eq!((a1.version, b1.version, a2.version, c1.version), (1, 2, 3, 1));
    assert_eq!(a1.chat_id, b1.chat_id);
    assert_ne!(a1.chat_id, c1.chat_id);
    let ids: std::collections::BTreeSet<_> = [&a1, &b1, &c1, &a2].iter().map(|v| v.message_id.clone()).collect();
    assert_eq!(ids.len(), 4, "CHAT-6");
}

/// CHAT-14: a resend repeats the VersionUpdate and nothing else.
#[test]
fn resend_is_idempotent() {
    let mut h = Harness::new(Config::default());
    let alice = h.ws(ALICE, "phone");
    let bob = h.ws(BOB, "phone");
    let first = h.send_text(alice, BOB, "same");
    assert_eq!(chats(&h.drain(bob)).len(), 1);
    h.send(alice, text(BOB, "same", "different content"));
    let again = version_update(&h.drain(alice));
    assert_eq!(
        (again.message_id.clone(), again.version, again.chat_id.clone()),
        (first.message_id, first.version, first.chat_id)
    );
    assert!(h.drain(bob).stanzas.is_empty(), "no second ChatMessage");
    assert_eq!(h.send_text(alice, BOB, "next").version, 2, "no version used");
}

/// CHAT-1..3: field rules.
#[test]
fn request_rules() {
    let mut h = Harness::new(Config::default());
    let alice = h.ws(ALICE, "phone");
    let two = Payload::TextPayloadRequest(TextPayloadRequest {
        to: vec![
            Identity {
                eid: BOB.into(),
                ..Default::default()
            },
            Identity {
                eid: CAROL.into(),
                ..Default::default()
            },
        ],
        content: "x".into(),
        message_id_local: "l".into(),
        ..Default::default()
    });
    let media = |f: fn(&mut MediaPayloadRequest)| {
        let mut m = MediaPayloadRequest {
            to: vec![Identity {
                eid: BOB.into(),
                ..Default::default()
            }],
            message_id_local: "m".into(),
            r#type: 1,
            cdn_url_id: "https://cdn/x".into(),
            ..Default::default()
        };
        f(&mut m);
        Payload::MediaPayloadRequest(m)
    };
    let bad = [
        two,
        text(ALICE, "l", "to myself"),
        text("nobody", "l", "x"),
        text(BOB, "", "x"),
        text(BOB, &"l".repeat(129), "x"),
        text(BOB, "l", ""),
        text(BOB, "l", &"x".repeat(16_385)),
        media(|m| m.r#type = 5),
        media(|m| m.cdn_url_id.clear()),
        media(|m| m.media_size_bytes = -1),
        media(|m| m.chat_id = "c.other".into()),
    ];
    for payload in bad {
        assert_eq!(h.call_errors(alice, payload), [(400, "invalid_field".to_string())]);
    }
    h.send(alice, media(|_| {}));
    let v = version_update(&h.drain(alice));
    h.send(
        alice,
        media(|m| {
            m.message_id_local = "m2".into();
            m.chat_id = crate::core::chat::chat_id(ALICE, BOB);
        }),
    );
    assert_eq!(
        version_update(&h.drain(alice)).version,
        v.version + 1,
        "the pair's own chat_id is accepted"
    );
}

impl Harness {
    fn call_errors(&mut self, conn: ConnId, payload: Payload) -> Vec<(i32, String)> {
        self.send(conn, payload);
        self.drain(conn).errors()
    }
}

/// BLK-3, BLK-4, QUE-13: no chat or acknowledgment across a block; the blocked ack still commits.
#[test]
fn blocks_stop_chat_and_acks() {
    let mut h = Harness::new(Config::default());
    let alice = h.ws(ALICE, "phone");
    let bob = h.ws(BOB, "phone");
    let v = h.send_text(alice, BOB, "before");
    h.drain(bob);
    h.send(
        bob,
        Payload::BlockSubscriber(BlockSubscriber {
            subscriber: Some(Identity {
                eid: ALICE.into(),
                ..Default::default()
            }),
            r#type: 1,
            ..Default::default()
        }),
    );
    h.drain_all();
    assert_eq!(
        h.call_errors(alice, text(BOB, "after", "x")),
        [(403, "blocked".to_string())]
    );
    assert_eq!(
        h.call_errors(bob, text(ALICE, "reply", "x")),
        [(403, "blocked".to_string())]
    );
    assert_eq!(
        h.call_errors(bob, ack(&v.message_id, 3)),
        [(403, "blocked".to_string())]
    );
    assert!(h.drain(alice).stanzas.is_empty(), "nothing reached alice");
    // QUE-13: the refused ack still confirmed the item: no replay for bob.
    h.engine.closed(bob, h.now);
    let bob = h.ws(BOB, "phone");
    let _ = bob;
    let token = h.token_for(BOB, "phone", 600);
    let again = h.conn();
    h.engine.open(again, Transport::WebSocket, Some(&token), h.now).unwrap();
    assert!(chats(&h.drain(again)).is_empty());
}

/// ACK-1, ACK-4..7: state only rises; raises reach the sender's devices and the receiver's others.
#[test]
fn acknowledgments() {
    let mut h = Harness::new(Config::default());
    let alice_phone = h.ws(ALICE, "phone");
    let alice_laptop = h.ws(ALICE, "laptop");
    let bob_phone = h.ws(BOB, "phone");
    let bob_tablet = h.ws(BOB, "tablet");
    let v = h.send_text(alice_phone, BOB, "m");
    h.drain_all();
    h.send(bob_phone, ack(&v.message_id, 2));
    let confirm = acks(&h.drain(bob_phone));
    assert_eq!(confirm.len(), 1);
    assert_eq!(
        (confirm[0].status, confirm[0].from.clone(), confirm[0].to.clone()),
        (2, me(BOB, "phone"), me(BOB, "phone"))
    );
    assert_eq!(
        (confirm[0].chat_id.clone(), confirm[0].version, confirm[0].timestamp),
        (v.chat_id.clone(), 1, T0 + 9)
    );
    for (conn, who) in [
        (alice_phone, "alice phone"),
        (alice_laptop, "alice laptop"),
        (bob_tablet, "bob tablet"),
    ] {
        let got = acks(&h.drain(conn));
        assert_eq!(
            got.iter().map(|a| (a.status, a.from.clone())).collect::<Vec<_>>(),
            [(2, me(BOB, "phone"))],
            "{who}"
        );
        assert_eq!(
            got[0].to,
            h.engine.identity(conn).map(SessionIdentity::to_proto),
            "{who}: addressed to the device"
        );
    }
    h.send(bob_tablet, ack(&v.message_id, 3));
    h.drain(bob_tablet);
    assert_eq!(
        acks(&h.drain(alice_phone)).iter().map(|a| a.status).collect::<Vec<_>>(),
        [3]
    );
    assert_eq!(
        acks(&h.drain(alice_laptop))
            .iter()
            .map(|a| a.status)
            .collect::<Vec<_>>(),
        [3]
    );
    assert_eq!(
        acks(&h.drain(bob_phone)).iter().map(|a| a.status).collect::<Vec<_>>(),
        [3],
        "read syncs the receiver's other device"
    );
    h.send(bob_phone, ack(&v.message_id, 2));
    assert_eq!(
        acks(&h.drain(bob_phone)).iter().map(|a| a.status).collect::<Vec<_>>(),
        [3],
        "ACK-6: confirmation of the recorded state"
    );
    assert!(h.drain(alice_phone).stanzas.is_empty(), "ACK-6: never a lower state");
    h.send(alice_laptop, ack(&v.message_id, 4));
    assert_eq!(
        acks(&h.drain(alice_laptop))
            .iter()
            .map(|a| a.status)
            .collect::<Vec<_>>(),
        [4],
        "ACK-7"
    );
    h.send(alice_laptop, ack(&v.message_id, 3));
    assert_eq!(
        acks(&h.drain(alice_laptop))
            .iter()
            .map(|a| a.status)
            .collect::<Vec<_>>(),
        [3]
    );
}

/// ACK-2, ACK-3: unknown or foreign messages are 404 alike; wrong statuses are 400.
#[test]
fn acknowledgment_refusals() {
    let mut h = Harness::new(Config::default());
    let alice = h.ws(ALICE, "phone");
    let bob = h.ws(BOB, "phone");
    let carol = h.ws(CAROL, "phone");
    let v = h.send_text(alice, BOB, "m");
    assert_eq!(
        h.call_errors(carol, ack(&v.message_id, 2)),
        [(404, "not_found".to_string())]
    );
    assert_eq!(
        h.call_errors(carol, ack("no-such-id", 2)),
        [(404, "not_found".to_string())]
    );
    assert_eq!(
        h.call_errors(bob, ack(&v.message_id, 4)),
        [(400, "invalid_field".to_string())]
    );
    for status in [0, 1, 5] {
        assert_eq!(
            h.call_errors(bob, ack(&v.message_id, status)),
            [(400, "invalid_field".to_string())]
        );
    }
}

/// QUE-3, QUE-5, QUE-6, QUE-8, QUE-12, CHAT-16: offline delivery in order, before anything else,
/// and again until confirmed.
#[test]
fn offline_delivery_and_commit() {
    let mut h = Harness::new(Config::default());
    let alice = h.ws(ALICE, "phone");
    let ids: Vec<String> = (1..=3)
        .map(|i| h.send_text(alice, BOB, &format!("m{i}")).message_id)
        .collect();
    let token = h.token_for(BOB, "phone", 600);
    let bob = h.conn();
    h.engine.open(bob, Transport::WebSocket, Some(&token), h.now).unwrap();
    let seen = h.drain(bob);
    assert!(matches!(seen.stanzas.first(), Some(Payload::Authenticate(_))));
    let got: Vec<_> = chats(&seen).iter().map(|c| (c.message_id.clone(), c.version)).collect();
    assert_eq!(got, ids.iter().cloned().zip(1..=3).collect::<Vec<_>>());
    assert!(
        matches!(
            &seen.stanzas[1..4],
            [
                Payload::ChatMessage(_),
                Payload::ChatMessage(_),
                Payload::ChatMessage(_)
            ]
        ),
        "QUE-3: right after Authenticate"
    );
    h.send(bob, ack(&ids[1], 3)); // cumulative: confirms items 1 and 2
    // QUE-12: the state change reaches alice as an update, not folded into copies.
    assert!(
        acks(&h.drain(alice))
            .iter()
            .any(|a| a.status == 3 && a.message_id == ids[1])
    );
    h.drain_all();
    h.engine.closed(bob, h.now);
    let again = h.conn();
    let token = h.token_for(BOB, "phone", 600);
    h.engine.open(again, Transport::WebSocket, Some(&token), h.now).unwrap();
    let replayed = chats(&h.drain(again));
    assert_eq!(
        replayed.iter().map(|c| c.message_id.clone()).collect::<Vec<_>>(),
        [ids[2].clone()],
        "QUE-6"
    );
    // A new device of bob starts at the oldest retained item (QUE-8): item 3 only,
    // since items 1-2 were confirmed by bob's only known device and removed.
    let tablet = h.conn();
    let token = h.token_for(BOB, "tablet", 600);
    h.engine
        .open(tablet, Transport::WebSocket, Some(&token), h.now)
        .unwrap();
    let first = chats(&h.drain(tablet));
    assert_eq!(
        first
            .iter()
            .map(|c| (c.message_id.clone(), c.acknowledgment))
            .collect::<Vec<_>>(),
        [(ids[2].clone(), 1)]
    );
}

/// QUE-4, QUE-5: a receiver device's acknowledgment confirms its copy, never a sibling's update, which the device
/// may not have received (here: every stanza after the first copy is lost on the way, as on a half-open
/// connection). Confirming the update would skip the second message.
#[test]
fn a_receiver_acknowledgment_does_not_confirm_an_update_it_may_not_have_seen() {
    let mut h = Harness::new(Config::default());
    let alice = h.ws(ALICE, "phone");
    let bob_phone = h.ws(BOB, "phone");
    let bob_tablet = h.ws(BOB, "tablet");
    let first = h.send_text(alice, BOB, "m1").message_id;
    assert_eq!(chats(&h.drain(bob_phone)).len(), 1);
    let second = h.send_text(alice, BOB, "m2").message_id;
    h.drain_all();
    h.send(bob_tablet, ack(&first, 3));
    h.drain_all(); // the phone's copy of m2 and the tablet's READ update never arrive
    h.send(bob_phone, ack(&first, 3)); // the phone's user read m1
    h.drain_all();
    h.engine.closed(bob_phone, h.now);
    let again = h.conn();
    let token = h.token_for(BOB, "phone", 600);
    h.engine.open(again, Transport::WebSocket, Some(&token), h.now).unwrap();
    let seen = h.drain(again);
    assert_eq!(
        chats(&seen).iter().map(|c| c.message_id.clone()).collect::<Vec<_>>(),
        [second],
        "m2 comes again, m1 (confirmed) does not"
    );
    assert_eq!(
        acks(&seen)
            .iter()
            .map(|a| (a.message_id.clone(), a.status))
            .collect::<Vec<_>>(),
        [(first, 3)],
        "the unconfirmed update comes again too"
    );
}

/// QUE-10: a full receiver queue refuses new chats with 503 and stores nothing.
#[test]
fn queue_full() {
    let mut h = Harness::new(Config {
        queue_max_items: 2,
        ..Config::default()
    });
    let alice = h.ws(ALICE, "phone");
    h.send_text(alice, BOB, "1");
    h.send_text(alice, BOB, "2");
    assert_eq!(
        h.call_errors(alice, text(BOB, "3", "x")),
        [(503, "queue_full".to_string())]
    );
    let carol = h.ws(CAROL, "phone");
    assert_eq!(
        h.send_text(carol, ALICE, "to alice").version,
        1,
        "other receivers are unaffected"
    );
}

/// Issue 4: a receiver offline for 10,000 messages gets them all, in order, once.
#[test]
fn ten_thousand_offline_messages() {
    let mut h = Harness::new(Config {
        rate_burst: 20_000,
        ..Config::default()
    });
    let alice = h.ws(ALICE, "phone");
    for i in 0..10_000 {
        h.send(alice, text(BOB, &format!("m{i}"), "x"));
    }
    h.drain_all();
    let token = h.token_for(BOB, "phone", 600);
    let bob = h.conn();
    h.engine.open(bob, Transport::WebSocket, Some(&token), h.now).unwrap();
    let versions: Vec<i64> = chats(&h.drain(bob)).iter().map(|c| c.version).collect();
    assert_eq!(versions, (1..=10_000).collect::<Vec<_>>());
}

/// SES-8, CHAT-7, CHAT-15, QUE-6: a restart keeps versions, resend detection and undelivered messages.
#[test]
fn restart_with_undelivered_messages() {
    let store = SharedChatStore::default();
    let mut h = Harness::with_store(store.clone(), Config::default());
    let alice = h.ws(ALICE, "phone");
    let first = h.send_text(alice, BOB, "before-restart");
    drop(h);
    let mut h = Harness::with_store(store, Config::default());
    let alice = h.ws(ALICE, "phone");
    h.send(alice, text(BOB, "before-restart", "resent"));
    assert_eq!(version_update(&h.drain(alice)).message_id, first.message_id, "CHAT-15");
    assert_eq!(h.send_text(alice, BOB, "after-restart").version, 2, "CHAT-7");
    let token = h.token_for(BOB, "phone", 600);
    let bob = h.conn();
    h.engine.open(bob, Transport::WebSocket, Some(&token), h.now).unwrap();
    assert_eq!(
        chats(&h.drain(bob)).iter().map(|c| c.version).collect::<Vec<_>>(),
        [1, 2]
    );
}

/// A store whose syncs stay out until the test ends them, and that refuses writes while `away` (as a cluster's
/// JetStream store does while NATS is unreachable).
#[derive(Clone, Default)]
struct SlowStore {
    inner: SharedChatStore,
    /// Whether the sync out has ended; `None` when none is out.
    out: std::sync::Arc<std::sync::Mutex<Option<bool>>>,
    away: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Syncs stay out (else they end at once).
    slow: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SlowStore {
    fn end_sync(&self) {
        if let Some(done) = self.out.lock().unwrap().as_mut() {
            *done = true;
        }
    }

    fn refuse(&self) -> Result<(), StoreError> {
        match self.away.load(std::sync::atomic::Ordering::Relaxed) {
            true => Err(StoreError::Unavailable("away".into())),
            false => Ok(()),
        }
    }
}

impl queue::ChatStore for SlowStore {
    fn record(&mut self, event: &queue::ChatEvent) -> Result<(), StoreError> {
        self.refuse()?;
        self.inner.record(event)
    }
    fn append(&mut self, eid: &str, item: queue::QueueItem) -> Result<u64, StoreError> {
        self.refuse()?;
        self.inner.append(eid, item)
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        self.inner.sync()
    }
    fn begin_sync(&mut self) -> Result<Option<queue::SyncJob>, StoreError> {
        if !self.slow.load(std::sync::atomic::Ordering::Relaxed) {
            return self.inner.sync().map(|()| None);
        }
        *self.out.lock().unwrap() = Some(false);
        Ok(Some(queue::SyncJob::new(|| ())))
    }
    fn poll_sync(&mut self) -> std::task::Poll<Result<(), StoreError>> {
        let mut out = self.out.lock().unwrap();
        match *out {
            Some(false) => std::task::Poll::Pending,
            _ => {
                *out = None;
                std::task::Poll::Ready(Ok(()))
            }
        }
    }
    fn items_after(&self, eid: &str, after: u64) -> Vec<(u64, queue::QueueItem)> {
        self.inner.items_after(eid, after)
    }
    fn oldest_retained(&self, eid: &str) -> u64 {
        self.inner.oldest_retained(eid)
    }
    fn usage(&self, eid: &str) -> (usize, usize) {
        self.inner.usage(eid)
    }
    fn committed(&self, eid: &str, device: &str) -> Option<u64> {
        self.inner.committed(eid, device)
    }
    fn commit(&mut self, eid: &str, device: &str, offset: u64) -> Result<(), StoreError> {
        self.refuse()?;
        self.inner.commit(eid, device, offset)
    }
    fn start_device(&mut self, eid: &str, device: &str, now: Millis) -> Result<queue::DeviceStart, StoreError> {
        self.inner.start_device(eid, device, now)
    }
    fn users(&self) -> Vec<String> {
        self.inner.users()
    }
}

/// QUE-2 with a store that is slow to sync or away (issue 17): what a sync covers waits for it, but a pong, the
/// server's ping and a 503 refusing a write do not, unless their connection has an earlier answer waiting (ENV-14).
#[test]
fn pings_pongs_and_refusals_do_not_wait_for_a_sync_that_covers_others() {
    let store = SlowStore::default();
    let mut h = Harness::new(Config::default());
    let engine = std::mem::replace(&mut h.engine, Harness::new(Config::default()).engine);
    h.engine = engine.with_chat(Box::new(store.clone()), &[]);
    let alice = h.ws(ALICE, "phone");
    let bob = h.ws(BOB, "phone");
    let carol = h.ws(CAROL, "phone");
    h.drain_all();
    store.slow.store(true, std::sync::atomic::Ordering::Relaxed);

    h.send(alice, text(BOB, "m1", "held"));
    assert!(
        h.drain(alice).stanzas.is_empty(),
        "the VersionUpdate waits for the sync"
    );
    assert!(chats(&h.drain(bob)).is_empty(), "so does the copy");
    h.send(carol, ping("c1", T0));
    assert!(
        matches!(&h.drain(carol).stanzas[..], [Payload::PingpongMessage(p)] if p.r#type == 2),
        "carol's pong covers nothing being synced"
    );
    h.send(alice, ping("a1", T0));
    assert!(
        h.drain(alice).stanzas.is_empty(),
        "alice's pong stays behind her VersionUpdate (ENV-14)"
    );

    store.away.store(true, std::sync::atomic::Ordering::Relaxed);
    h.send(carol, text(BOB, "m2", "refused"));
    let refused = h.drain(carol);
    assert_eq!(refused.errors().len(), 1, "{refused:?}");
    assert_eq!(refused.errors()[0].0, 503);
    // The server's own ping answers nothing: it goes out even to a session with answers held (alice), or the
    // session would be closed for pongs it could not send.
    h.advance_to(T0 + Config::default().ping_interval_ms + 1);
    for conn in [carol, alice] {
        assert!(
            h.drain(conn)
                .stanzas
                .iter()
                .any(|p| matches!(p, Payload::PingpongMessage(p) if p.r#type == 1)),
            "{conn:?} is pinged"
        );
    }

    store.away.store(false, std::sync::atomic::Ordering::Relaxed);
    store.end_sync();
    let seen = h.drain(alice);
    assert!(
        matches!(&seen.stanzas[..], [Payload::VersionUpdate(_), Payload::PingpongMessage(p), ..] if p.r#type == 2),
        "in order once synced: {:?}",
        seen.stanzas
    );
    assert_eq!(chats(&h.drain(bob)).len(), 1);
}
