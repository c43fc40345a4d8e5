//! A partitioned engine driven directly (src/core/README.md): several shards, with the mail between them held by
//! the test until it says so, to show what waits for what.

use std::collections::{BTreeMap, VecDeque};

use super::*;
use crate::core::queue::SharedChatStore;
use crate::core::shard::home;
use crate::core::{Mail, ShardId};

struct Partition {
    shards: Vec<Engine>,
    signer: Signer,
    /// Mail sent and not yet delivered, in send order.
    mail: VecDeque<(usize, Mail)>,
    /// What each connection was sent, not yet read.
    outputs: BTreeMap<ConnId, Vec<Output>>,
    conns: BTreeMap<ConnId, usize>,
    /// Every connection output was for, in the order the shards gave them out.
    order: Vec<ConnId>,
    now: Millis,
    next: u64,
}

impl Partition {
    fn new(count: usize, config: Config) -> Partition {
        let stores = (0..count).map(|_| SharedChatStore::default()).collect();
        Partition::with_stores(config, stores)
    }

    /// A partition whose shard `i` keeps its chats in `stores[i]` and starts from what it holds (a restart).
    fn with_stores(config: Config, stores: Vec<SharedChatStore>) -> Partition {
        Partition::started(config, stores, false)
    }

    /// As [`Partition::with_stores`], each shard as if on a node of its own (a cluster, SES-11).
    fn started(config: Config, stores: Vec<SharedChatStore>, apart: bool) -> Partition {
        Partition::started_as(config, stores, apart, 0)
    }

    /// As [`Partition::started`], every shard in its start number `start` ([`Engine::with_start`]).
    fn started_as(config: Config, stores: Vec<SharedChatStore>, apart: bool, start: u16) -> Partition {
        let count = stores.len();
        let mut shards: Vec<Engine> = stores
            .into_iter()
            .enumerate()
            .map(|(shard, store)| {
                let verifier = Verifier::new(Algorithm::Hs256, DecodingKey::from_secret(SECRET));
                let signer = Signer::new(Algorithm::Hs256, EncodingKey::from_secret(SECRET));
                let events = store.events();
                Engine::new(
                    config.clone(),
                    verifier,
                    Some(signer),
                    Box::new(MemoryRevocations::default()),
                )
                .with_shard(ShardId::new(shard, count))
                .with_chat(Box::new(store), &events)
                .with_remote_shards((0..count).filter(|_| apart))
                .with_start(start)
            })
            .collect();
        crate::core::shard::recover(&mut shards);
        Partition {
            shards,
            signer: Signer::new(Algorithm::Hs256, EncodingKey::from_secret(SECRET)),
            mail: VecDeque::new(),
            outputs: BTreeMap::new(),
            conns: BTreeMap::new(),
            order: Vec::new(),
            now: T0,
            next: 0,
        }
    }

    fn home(&self, key: &str) -> usize {
        home(key, self.shards.len())
    }

    /// A WebSocket session on the user's home, with the mail its start sends delivered; its Authenticate RESPONSE
    /// is consumed.
    fn ws(&mut self, eid: &str, device: &str) -> ConnId {
        let conn = self.open_ws(eid, device);
        // The session's presence reaches every shard before it is told it is in (the fence of `Engine::fenced`).
        self.deliver_all();
        // The Authenticate RESPONSE only: a replay that follows it stays for the test to read.
        let first = self.outputs.get_mut(&conn).map(|o| o.remove(0));
        let Some(Output::Send { stanza, .. }) = first else {
            panic!("no Authenticate RESPONSE: {first:?}");
        };
        assert!(matches!(
            codec::decode(&stanza, usize::MAX),
            Ok(Payload::Authenticate(_))
        ));
        conn
    }

    /// Opens a WebSocket connection on the user's home, no mail delivered.
    fn open_ws(&mut self, eid: &str, device: &str) -> ConnId {
        self.next += 1;
        let conn = ConnId(self.next);
        let claims = Claims {
            eid: eid.into(),
            device_id: device.into(),
            jti: format!("j{}", self.next),
            iat: self.now / 1000,
            exp: self.now / 1000 + 3600,
            nbf: None,
            iss: None,
            aud: None,
        };
        let token = self.signer.mint(&claims).unwrap();
        let shard = self.home(eid);
        self.shards[shard]
            .open(conn, Transport::WebSocket, Some(&token), self.now)
            .unwrap();
        self.conns.insert(conn, shard);
        self.collect();
        conn
    }

    fn send(&mut self, conn: ConnId, payload: Payload) {
        let shard = self.conns[&conn];
        self.shards[shard].receive(conn, &codec::encode(&payload), self.now);
        self.collect();
    }

    /// Every shard's outputs: stanzas to their connections, mail to the undelivered pile.
    fn collect(&mut self) {
        for (shard, engine) in self.shards.iter_mut().enumerate() {
            while let Some(output) = engine.poll_output() {
                match output {
                    Output::Mail { to, mail } => {
                        assert_ne!(to, shard, "a shard mailed itself");
                        self.mail.push_back((to, mail));
                    }
                    Output::Send { conn, .. } | Output::Close { conn, .. } => {
                        self.order.push(conn);
                        self.outputs.entry(conn).or_default().push(output);
                    }
                    Output::Sync(job) => job.run(),
                }
            }
        }
    }

    /// Delivers mail, in order, until none is left.
    fn deliver_all(&mut self) -> usize {
        let mut delivered = 0;
        while let Some((to, mail)) = self.mail.pop_front() {
            self.shards[to].deliver(mail, self.now);
            self.collect();
            delivered += 1;
        }
        delivered
    }

    /// Delivers the oldest mail only.
    fn deliver_one(&mut self) {
        if let Some((to, mail)) = self.mail.pop_front() {
            self.shards[to].deliver(mail, self.now);
            self.collect();
        }
    }

    /// Delivers mail in order up to and including the first letter to shard `to`.
    fn deliver_through(&mut self, to: usize) {
        while let Some((next, _)) = self.mail.front() {
            let last = *next == to;
            self.deliver_one();
            if last {
                break;
            }
        }
    }

    /// The connection is gone.
    fn close(&mut self, conn: ConnId) {
        let shard = self.conns[&conn];
        self.shards[shard].closed(conn, self.now);
        self.collect();
    }

    /// The stanzas `conn` was sent since it was last read.
    fn take(&mut self, conn: ConnId) -> Vec<Payload> {
        self.outputs
            .remove(&conn)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|o| match o {
                Output::Send { stanza, .. } => Some(codec::decode(&stanza, usize::MAX).unwrap()),
                _ => None,
            })
            .collect()
    }
}

fn user(eid: &str) -> Option<Identity> {
    Some(Identity {
        eid: eid.into(),
        connection_resource_id: String::new(),
    })
}

fn text(to: &str, local: &str) -> Payload {
    Payload::TextPayloadRequest(TextPayloadRequest {
        to: vec![user(to).unwrap()],
        content: "hi".into(),
        message_id_local: local.into(),
        created_at: T0,
        ..Default::default()
    })
}

/// Two users on different shards of `count`, whose chat's home is neither the sender's shard nor, when there are
/// three shards or more, the receiver's: every hop of a chat message crosses shards.
fn apart(count: usize) -> (String, String) {
    for i in 0..1000 {
        let (a, b) = (format!("a{i}@x.io"), format!("b{i}@x.io"));
        let (ha, hb) = (home(&a, count), home(&b, count));
        let hc = home(&crate::core::chat::chat_id(&a, &b), count);
        if ha != hb && hc != ha && (count < 3 || hc != hb) {
            return (a, b);
        }
    }
    panic!("no pair of users apart on {count} shards");
}

/// ENV-14: a stanza whose answer another shard prepares holds back the answers to the connection's later stanzas.
#[test]
fn answers_keep_stanza_order_across_shards() {
    let mut p = Partition::new(3, Config::default());
    let (alice, bob) = apart(3);
    let phone = p.ws(&alice, "phone");
    p.send(phone, text(&bob, "m1"));
    p.send(phone, text(&bob, "m2"));
    p.send(phone, ping("p1", T0));
    assert!(
        p.take(phone).is_empty(),
        "the Pong went out ahead of the VersionUpdates"
    );
    assert!(p.deliver_all() >= 3, "propose, append, appended, answer");
    let seen = p.take(phone);
    assert!(
        matches!(&seen[..], [Payload::VersionUpdate(a), Payload::VersionUpdate(b), Payload::PingpongMessage(_)]
            if a.message_id_local == "m1" && b.message_id_local == "m2"),
        "{seen:?}"
    );
}

/// ENV-14 on a closing connection: a session that revokes itself right after a chat message whose answer another
/// shard prepares still gets that answer, then the revocation's answer and refusal, then the close.
#[test]
fn a_closing_connection_gets_the_answers_still_out_first() {
    let mut p = Partition::new(3, Config::default());
    let (alice, bob) = apart(3);
    let phone = p.ws(&alice, "phone");
    p.send(phone, text(&bob, "m1"));
    p.send(phone, revoke("", "phone"));
    assert!(
        p.outputs.get(&phone).is_none_or(Vec::is_empty),
        "the revocation went out ahead of the VersionUpdate"
    );
    p.deliver_all();
    let outputs = p.outputs.remove(&phone).unwrap_or_default();
    assert!(
        matches!(outputs.last(), Some(Output::Close { .. })),
        "the close is not last: {outputs:?}"
    );
    let seen: Vec<Payload> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { stanza, .. } => Some(codec::decode(stanza, usize::MAX).unwrap()),
            Output::Close { .. } | Output::Mail { .. } | Output::Sync(_) => None,
        })
        .collect();
    assert!(
        matches!(&seen[..], [Payload::VersionUpdate(v), Payload::TokenRevokeResponse(_), Payload::ErrorMessage(e)]
            if v.message_id_local == "m1" && e.message == "token_revoked"),
        "{seen:?}"
    );
    assert!(
        p.shards.iter().all(|s| s.crossing.held.is_empty()),
        "a closed connection is still held"
    );
}

/// CHAT-9, QUE-1, QUE-2, ACK-1 across shards: the receiver gets the copy from its home; the sender's confirmation
/// waits until the receiver's home has appended it; the acknowledgment travels back the same way.
#[test]
fn a_chat_and_its_acknowledgment_cross_shards() {
    let mut p = Partition::new(3, Config::default());
    let (alice, bob) = apart(3);
    let phone = p.ws(&alice, "phone");
    let laptop = p.ws(&alice, "laptop");
    let bobs = p.ws(&bob, "phone");
    p.send(phone, text(&bob, "m1"));
    p.deliver_all();
    let update = match &p.take(phone)[..] {
        [Payload::VersionUpdate(v)] => v.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(update.version, 1);
    let got = p.take(bobs);
    assert!(
        matches!(&got[..], [Payload::ChatMessage(m)] if m.message_id == update.message_id && m.author == "receiver"),
        "{got:?}"
    );
    let copy = p.take(laptop);
    assert!(
        matches!(&copy[..], [Payload::ChatMessage(m)] if m.author == "sender"),
        "{copy:?}"
    );
    let read = Payload::AcknowledgmentRequest(AcknowledgmentRequest {
        message_id: update.message_id.clone(),
        status: 3,
        ..Default::default()
    });
    p.send(bobs, read);
    p.deliver_all();
    let confirmed = p.take(bobs);
    assert!(
        matches!(&confirmed[..], [Payload::AcknowledgmentResponse(r)] if r.status == 3),
        "{confirmed:?}"
    );
    for device in [phone, laptop] {
        let got = p.take(device);
        assert!(
            matches!(&got[..], [Payload::AcknowledgmentResponse(r)] if r.status == 3 && r.message_id == update.message_id),
            "{got:?}"
        );
    }
    // An acknowledgment of a message nobody sent is refused by the chat's home, with its reference.
    let unknown = Payload::AcknowledgmentRequest(AcknowledgmentRequest {
        message_id: format!("{}/9", update.chat_id),
        status: 2,
        ..Default::default()
    });
    p.send(bobs, unknown);
    p.deliver_all();
    let refused = p.take(bobs);
    assert!(
        matches!(&refused[..], [Payload::ErrorMessage(e)] if e.code == 404 && e.ref_id.ends_with("/9")),
        "{refused:?}"
    );
}

/// AWR-11, AWR-12, BLK-1 across shards: a graph change on the owner's home reaches the watchers on other shards,
/// and a block recorded on one shard refuses a chat proposed on another.
#[test]
fn graph_changes_reach_every_shard() {
    let mut p = Partition::new(2, Config::default());
    let (alice, bob) = apart(2);
    let alices = p.ws(&alice, "phone");
    let bobs = p.ws(&bob, "phone");
    p.deliver_all();
    p.take(bobs);
    let add = Payload::SubscriberAddRequest(SubscriberAddRequest {
        subscriber: user(&bob),
        ..Default::default()
    });
    p.send(alices, add);
    assert!(p.take(bobs).is_empty(), "news before the mail arrived");
    p.deliver_all();
    let news = p.take(bobs);
    assert!(
        matches!(&news[..], [Payload::AwarenessNotification(n)] if n.status == awareness_status::ONLINE),
        "{news:?}"
    );
    let block = Payload::BlockSubscriber(BlockSubscriber {
        subscriber: user(&bob),
        r#type: 1,
        action: 1,
        ..Default::default()
    });
    p.send(alices, block);
    p.deliver_all();
    let hidden = p.take(bobs);
    assert!(
        matches!(&hidden[..], [Payload::AwarenessNotification(n)] if n.status == awareness_status::UNAVAILABLE),
        "{hidden:?}"
    );
    p.send(bobs, text(&alice, "m1"));
    p.deliver_all();
    let refused = p.take(bobs);
    assert!(
        matches!(&refused[..], [Payload::ErrorMessage(e)] if e.code == 403 && e.ref_id == "m1"),
        "{refused:?}"
    );
}

/// SES-9: a replicated change is answered once every shard has applied it, so a user told that it is done can count
/// on every other user's shard seeing it; until then the changer hears nothing more (its later answers wait too).
#[test]
fn a_change_is_answered_once_every_shard_applied_it() {
    let mut p = Partition::new(3, Config::default());
    let (alice, bob) = apart(3);
    let alices = p.ws(&alice, "phone");
    let bobs = p.ws(&bob, "phone");
    let add = Payload::SubscriberAddRequest(SubscriberAddRequest {
        subscriber: user(&bob),
        ..Default::default()
    });
    p.send(alices, add);
    p.deliver_all();
    p.take(alices);
    p.take(bobs);
    let ask = |n: i64| {
        Payload::AwarenessRequest(AwarenessRequest {
            to: user(&alice),
            awareness_identifier: n,
            ..Default::default()
        })
    };
    // Bob is told of the change too (AWR-11); the answer to his request is what this test reads.
    let status = |seen: &[Payload]| {
        seen.iter()
            .find_map(|p| match p {
                Payload::AwarenessResponse(r) => Some(r.status),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no AwarenessResponse: {seen:?}"))
    };
    p.send(bobs, ask(1));
    assert_eq!(status(&p.take(bobs)), awareness_status::ONLINE);

    let private = Payload::AwarenessVisibility(AwarenessVisibility {
        id: "v1".into(),
        r#type: 1,
        visibility: 3,
        ..Default::default()
    });
    p.send(alices, private);
    p.send(alices, ping("p1", T0));
    assert!(p.take(alices).is_empty(), "answered before any shard applied it");
    // The answer comes with the last shard's `Passed`; from then on bob's shard, asked without any more mail
    // moving, sees the change.
    let mut steps = 0;
    let answered = loop {
        assert!(!p.mail.is_empty(), "mail ran out with the answer still held");
        p.deliver_one();
        steps += 1;
        let seen = p.take(alices);
        if !seen.is_empty() {
            break seen;
        }
    };
    assert!(
        steps >= 4,
        "a Social and a Fence to each of two shards, then two Passed: {steps}"
    );
    assert!(
        matches!(&answered[..], [Payload::AwarenessVisibility(v), Payload::PingpongMessage(_)] if v.r#type == 2),
        "{answered:?}"
    );
    p.send(bobs, ask(2));
    assert_ne!(
        status(&p.take(bobs)),
        awareness_status::ONLINE,
        "bob's shard still saw alice"
    );
}

/// SES-9 at a session's start: a user's first session is told it is in once every shard knows the user is online,
/// so a peer asked after that sees it online (a reconnect racing its own close, LOC-4's second case); a second
/// device of the user changes nothing elsewhere and starts at once.
#[test]
fn a_session_starts_once_every_shard_knows_its_user_is_online() {
    let mut p = Partition::new(3, Config::default());
    let (alice, _) = apart(3);
    let phone = p.open_ws(&alice, "phone");
    assert!(p.take(phone).is_empty(), "in before the other shards knew");
    assert_eq!(
        p.deliver_all(),
        6,
        "a Presence and a Fence to each of two shards, a Passed from each"
    );
    assert!(matches!(&p.take(phone)[..], [Payload::Authenticate(a)] if a.status == 1));
    let laptop = p.open_ws(&alice, "laptop");
    assert!(matches!(&p.take(laptop)[..], [Payload::Authenticate(a)] if a.status == 1));
    assert!(p.mail.is_empty());
}

/// A fence holds what *every* connection of its user is sent, in the order the shard produced it, so orderings
/// between a user's devices hold as on one shard: SES-1, a replaced session's 409 and close before the new
/// session's first stanza, with the replaced session's start still behind its fence.
#[test]
fn a_fence_keeps_the_order_between_a_users_devices() {
    let mut p = Partition::new(3, Config::default());
    let (alice, _) = apart(3);
    let old = p.open_ws(&alice, "phone");
    let new = p.open_ws(&alice, "phone");
    assert!(p.order.is_empty(), "out before the fence passed: {:?}", p.order);
    p.deliver_all();
    let old_seen = p.take(old);
    assert!(
        matches!(&old_seen[..], [Payload::Authenticate(_), Payload::ErrorMessage(e)] if e.code == 409),
        "{old_seen:?}"
    );
    assert!(matches!(&p.take(new)[..], [Payload::Authenticate(_)]));
    let last_old = p.order.iter().rposition(|c| *c == old).unwrap();
    let first_new = p.order.iter().position(|c| *c == new).unwrap();
    assert!(last_old < first_new, "{:?}", p.order);
}

/// QUE-10 across shards: the receiver's home tells the chat's home that the queue is full before it confirms the
/// append that filled it, so a sender that waits for its VersionUpdate never passes the limit.
#[test]
fn a_full_queue_is_known_on_the_chats_home() {
    let config = Config {
        queue_max_items: 2,
        ..Config::default()
    };
    let mut p = Partition::new(3, config);
    let (alice, bob) = apart(3);
    let phone = p.ws(&alice, "phone");
    for n in 1..=3 {
        p.send(phone, text(&bob, &format!("m{n}")));
        p.deliver_all();
    }
    let seen = p.take(phone);
    let updates = seen.iter().filter(|s| matches!(s, Payload::VersionUpdate(_))).count();
    let full: Vec<_> = seen
        .iter()
        .filter_map(|s| match s {
            Payload::ErrorMessage(e) => Some((e.code, e.ref_id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!((updates, full), (2, vec![(503, "m3".to_string())]), "{seen:?}");
    // Room again once bob's device confirms: the news travels the same way.
    let bobs = p.ws(&bob, "phone");
    p.deliver_all();
    let replayed = p.take(bobs);
    let last = replayed
        .iter()
        .rev()
        .find_map(|s| match s {
            Payload::ChatMessage(m) => Some(m.message_id.clone()),
            _ => None,
        })
        .expect("the queue replayed");
    let delivered = Payload::AcknowledgmentRequest(AcknowledgmentRequest {
        message_id: last,
        status: 2,
        ..Default::default()
    });
    p.send(bobs, delivered);
    p.deliver_all();
    p.send(phone, text(&bob, "m4"));
    p.deliver_all();
    let seen = p.take(phone);
    let accepted = seen
        .iter()
        .any(|s| matches!(s, Payload::VersionUpdate(v) if v.version == 3 && v.message_id_local == "m4"));
    assert!(accepted, "{seen:?}");
}

/// A chat's home sends a message's copies before its own fsync of the event; a crash that keeps a copy and loses
/// the event must not give the version again: at start-up the home learns the event back from the copy.
#[test]
fn a_lost_event_is_recovered_from_its_copies() {
    let (alice, bob) = apart(3);
    let stores: Vec<SharedChatStore> = (0..3).map(|_| SharedChatStore::default()).collect();
    let mut p = Partition::with_stores(Config::default(), stores.clone());
    let phone = p.ws(&alice, "phone");
    p.send(phone, text(&bob, "m1"));
    p.send(phone, text(&bob, "m2"));
    p.deliver_all();
    assert_eq!(p.take(phone).len(), 2, "two VersionUpdates");
    drop(p);
    // The crash: the chat's home lost its log; the users' homes kept their queues.
    let home = home(&crate::core::chat::chat_id(&alice, &bob), 3);
    let mut stores = stores;
    stores[home] = SharedChatStore::default();
    let mut p = Partition::with_stores(Config::default(), stores);
    let phone = p.ws(&alice, "phone");
    p.take(phone);
    // The resend is recognised (CHAT-14) and the next message gets the next version, not 1 again.
    p.send(phone, text(&bob, "m2"));
    p.send(phone, text(&bob, "m3"));
    p.deliver_all();
    let versions: Vec<(String, i64)> = p
        .take(phone)
        .into_iter()
        .filter_map(|s| match s {
            Payload::VersionUpdate(v) => Some((v.message_id_local, v.version)),
            _ => None,
        })
        .collect();
    assert_eq!(versions, vec![("m2".to_string(), 2), ("m3".to_string(), 3)]);
}

/// SES-11: a chat's home on a node of its own recorded a message and died before its copy left for the receiver's
/// node. The sender, never confirmed, resends after the restart; the home recognises the resend (CHAT-14) and, the
/// message being older than its start, sends the copies to other nodes again before it confirms: the receiver gets
/// the message.
#[test]
fn a_resend_after_a_restart_sends_the_copies_again() {
    let (alice, bob) = apart(3);
    let chat_home = home(&crate::core::chat::chat_id(&alice, &bob), 3);
    let stores: Vec<SharedChatStore> = (0..3).map(|_| SharedChatStore::default()).collect();
    let mut p = Partition::started(Config::default(), stores.clone(), true);
    let phone = p.ws(&alice, "phone");
    p.send(phone, text(&bob, "m1"));
    p.deliver_all();
    p.send(phone, text(&bob, "m2"));
    // The proposal reaches the chat's home, which records it (durable: the harness runs each sync at once)...
    p.deliver_through(chat_home);
    // ...and dies with everything it had not yet sent.
    p.mail.clear();
    let confirmed = p.take(phone);
    assert_eq!(
        confirmed
            .iter()
            .filter(|s| matches!(s, Payload::VersionUpdate(_)))
            .count(),
        1,
        "{confirmed:?}"
    );
    drop(p);
    let mut p = Partition::started(Config::default(), stores, true);
    let phone = p.ws(&alice, "phone");
    p.take(phone);
    p.send(phone, text(&bob, "m2"));
    p.deliver_all();
    assert!(
        p.take(phone)
            .iter()
            .any(|s| matches!(s, Payload::VersionUpdate(v) if v.message_id_local == "m2" && v.version == 2))
    );
    let bobs = p.ws(&bob, "phone");
    let got: Vec<String> = p
        .take(bobs)
        .into_iter()
        .filter_map(|s| match s {
            Payload::ChatMessage(m) => Some(m.message_id_local),
            _ => None,
        })
        .collect();
    assert_eq!(got, ["m1", "m2"], "the receiver's copy of the confirmed m2 was lost");
}

/// QUE-4, QUE-5 across shards: an acknowledgment confirms only items sent to the device before it arrived. Here
/// the laptop's READ reaches the chat's home first and its update is sent to the phone after the phone's own READ
/// left; the chat's home answers the phone later, and that answer must not commit the update the phone may
/// not have received: the next session gets it again.
#[test]
fn an_acknowledgment_confirms_only_what_was_sent_before_it() {
    let mut p = Partition::new(3, Config::default());
    let (alice, bob) = apart(3);
    let alices = p.ws(&alice, "phone");
    let phone = p.ws(&bob, "phone");
    let laptop = p.ws(&bob, "laptop");
    p.deliver_all();
    p.send(alices, text(&bob, "m1"));
    p.deliver_all();
    let message_id = match &p.take(phone)[..] {
        [Payload::ChatMessage(m)] => m.message_id.clone(),
        other => panic!("{other:?}"),
    };
    p.take(laptop);
    let read = || {
        Payload::AcknowledgmentRequest(AcknowledgmentRequest {
            message_id: message_id.clone(),
            status: 3,
            ..Default::default()
        })
    };
    p.send(laptop, read());
    p.deliver_one(); // the laptop's READ on the chat's home: the update to the phone is on its way
    p.send(phone, read());
    p.deliver_all();
    let updates = |seen: &[Payload]| {
        seen.iter()
            .filter(|s| matches!(s, Payload::AcknowledgmentResponse(r) if r.from.as_ref().is_some_and(|f| f.connection_resource_id == "laptop")))
            .count()
    };
    assert_eq!(
        updates(&p.take(phone)),
        1,
        "the laptop's update reached the phone's session"
    );
    p.close(phone);
    let phone = p.ws(&bob, "phone");
    p.deliver_all();
    assert_eq!(
        updates(&p.take(phone)),
        1,
        "the update sent after the phone's READ arrived was committed by it"
    );
}

/// A native TCP connection that has not authenticated can be handed to another shard, and only then.
#[test]
fn only_an_unauthenticated_connection_is_handed_off() {
    let mut p = Partition::new(2, Config::default());
    let tcp = ConnId(999);
    p.shards[0].open(tcp, Transport::Tcp, None, T0).unwrap();
    assert!(p.shards[0].hand_off(tcp));
    assert_eq!(p.shards[0].connection_count(), 0);
    p.shards[0].tick(T0 + 60_000);
    assert!(
        p.shards[0].poll_output().is_none(),
        "the auth deadline of a connection handed off fired"
    );
    let ws = p.ws("a@x.io", "d");
    let shard = p.home("a@x.io");
    assert!(!p.shards[shard].hand_off(ws), "a live session was handed off");
}

mod awareness_status {
    pub const UNAVAILABLE: i32 = 0;
    pub const ONLINE: i32 = 1;
}

/// SES-1 with SES-11: a session replaced while an answer for it is out on another node keeps its 409 and its Close
/// behind that answer (ENV-14). When that node starts again the answer may never come: what waited goes out then,
/// so the replaced socket is closed rather than left open and deaf, its device no longer the user's.
#[test]
fn a_replaced_session_waiting_on_a_restarted_node_is_still_closed() {
    let mut p = Partition::new(3, Config::default());
    let (alice, bob) = apart(3);
    let phone = p.ws(&alice, "phone");
    // The chat's home is another shard: the VersionUpdate is out there.
    p.send(phone, text(&bob, "m1"));
    let again = p.open_ws(&alice, "phone");
    assert!(
        p.outputs.get(&phone).is_none_or(Vec::is_empty),
        "the replacement went out ahead of the answer still out"
    );
    let chat_home = p.home(&crate::core::chat::chat_id(&alice, &bob));
    // That shard's node starts again: its mail is gone.
    p.mail.clear();
    let home = p.home(&alice);
    p.shards[home].peer_restarted(&[chat_home], p.now);
    p.collect();
    let outputs = p.outputs.remove(&phone).unwrap_or_default();
    assert!(
        matches!(outputs.last(), Some(Output::Close { .. })),
        "the replaced session was not closed: {outputs:?}"
    );
    let replaced = outputs.iter().any(|o| match o {
        Output::Send { stanza, .. } => matches!(
            codec::decode(stanza, usize::MAX),
            Ok(Payload::ErrorMessage(e)) if e.message == "session_replaced"
        ),
        _ => false,
    });
    assert!(replaced, "no 409 session_replaced: {outputs:?}");
    assert!(
        !p.outputs
            .get(&again)
            .into_iter()
            .flatten()
            .any(|o| matches!(o, Output::Close { .. })),
        "the new session was closed"
    );
    assert!(p.shards[home].crossing.held.is_empty(), "still held");
}

/// SES-11: a node started again may still get the answers other nodes owed its previous start (`Appended` in
/// flight when it died). They name tickets of that start, and must not count for this start's: here such an
/// answer would have confirmed a new message before the receiver's home stored its copy (QUE-2).
#[test]
fn an_answer_owed_to_an_earlier_start_counts_for_nothing() {
    let (alice, bob) = apart(3);
    let chat_home = home(&crate::core::chat::chat_id(&alice, &bob), 3);
    let bobs_home = home(&bob, 3);
    let stores: Vec<SharedChatStore> = (0..3).map(|_| SharedChatStore::default()).collect();
    let mut p = Partition::started_as(Config::default(), stores.clone(), true, 1);
    let phone = p.ws(&alice, "phone");
    p.send(phone, text(&bob, "m1"));
    // Everything up to the receiver's home's `Appended`, which the chat's home dies before reading.
    let stale = loop {
        match p.mail.front() {
            Some((to, mail)) if *to == chat_home && format!("{mail:?}").contains("Appended") => {
                break p.mail.pop_front().unwrap().1;
            }
            Some(_) => p.deliver_one(),
            None => panic!("no Appended for the chat's home"),
        }
    };
    p.mail.clear();
    p.take(phone);
    // The chat's home starts again (a new start number) on its store.
    let mut again = Partition::started_as(Config::default(), stores, true, 2);
    p.shards[chat_home] = again.shards.swap_remove(chat_home);
    // Another device of the sender's (the first waits for an answer lost with the chat's home).
    let laptop = p.ws(&alice, "laptop");
    p.take(laptop);
    p.send(laptop, text(&bob, "m2"));
    // The proposal reaches the chat's home, which asks the receiver's home to append; that append is not done yet.
    p.deliver_through(chat_home);
    p.mail.retain(|(to, _)| *to != bobs_home);
    p.shards[chat_home].deliver(stale, p.now);
    p.collect();
    p.deliver_all();
    let seen = p.take(laptop);
    assert!(
        !seen
            .iter()
            .any(|s| matches!(s, Payload::VersionUpdate(v) if v.message_id_local == "m2")),
        "m2 confirmed on an answer owed to the previous start: {seen:?}"
    );
}

/// SES-11: only the answers a restarted node prepares may be lost with it; a session waiting for one another node
/// prepares goes on, and gets it.
#[test]
fn a_session_waiting_on_a_node_that_did_not_restart_goes_on() {
    let mut p = Partition::new(3, Config::default());
    let (alice, bob) = apart(3);
    let phone = p.ws(&alice, "phone");
    p.send(phone, text(&bob, "m1"));
    // The receiver's node starts again: the chat's home, which prepares the answer, did not.
    let home = p.home(&alice);
    let bobs_home = p.home(&bob);
    p.shards[home].peer_restarted(&[bobs_home], p.now);
    p.collect();
    assert!(
        p.outputs.get(&phone).is_none_or(Vec::is_empty),
        "the session heard something before its answer: {:?}",
        p.outputs.get(&phone)
    );
    p.deliver_all();
    let seen = p.take(phone);
    assert!(
        matches!(&seen[..], [Payload::VersionUpdate(v)] if v.message_id_local == "m1"),
        "{seen:?}"
    );
}

/// ENV-14 orders answers only: the server's ping is not held behind an answer another shard is preparing, or a
/// session waiting for a slow node would hear no ping, send no pong, and be closed as dead (PingTimeout).
#[test]
fn pings_go_out_while_an_answer_is_out() {
    let config = Config::default();
    let interval = config.ping_interval_ms;
    let mut p = Partition::new(3, config);
    let (alice, bob) = apart(3);
    let phone = p.ws(&alice, "phone");
    p.take(phone);
    p.send(phone, text(&bob, "m1"));
    // The chat's home does not answer (its node is paused); the phone's pings come anyway.
    p.now += interval;
    let home = p.home(&alice);
    p.shards[home].tick(p.now);
    p.collect();
    let seen = p.take(phone);
    assert!(
        matches!(&seen[..], [Payload::PingpongMessage(ping)] if ping.r#type == 1),
        "{seen:?}"
    );
    p.deliver_all();
    assert!(
        matches!(&p.take(phone)[..], [Payload::VersionUpdate(v)] if v.message_id_local == "m1"),
        "the answer did not follow"
    );
}

/// SES-11: the copies of a message for its sender's own shard go along with the answer, and no one waits for them
/// there. If that shard's node dies before they are durable and starts again, a resend of the message is answered
/// from the chat's record: the copies must go again with that answer, or the receiver never gets a message whose
/// sender was told it is accepted.
#[test]
fn a_resend_after_the_senders_node_started_again_sends_the_copies_again() {
    let (alice, bob) = (0..1000)
        .map(|i| (format!("a{i}@x.io"), format!("b{i}@x.io")))
        .find(|(a, b)| home(a, 3) == home(b, 3) && home(&crate::core::chat::chat_id(a, b), 3) != home(a, 3))
        .unwrap();
    let (ours, chat_home) = (home(&alice, 3), home(&crate::core::chat::chat_id(&alice, &bob), 3));
    let mut p = Partition::started(
        Config::default(),
        (0..3).map(|_| SharedChatStore::default()).collect(),
        true,
    );
    let phone = p.ws(&alice, "phone");
    p.send(phone, text(&bob, "m1"));
    // The chat's home records m1 and sends its answer, copies included, to the users' shard, whose node dies
    // before it has stored them.
    p.deliver_through(chat_home);
    assert!(
        p.mail.iter().any(|(to, _)| *to == ours),
        "no answer for the users' shard"
    );
    p.mail.clear();
    let mut again = Partition::started_as(
        Config::default(),
        (0..3).map(|_| SharedChatStore::default()).collect(),
        true,
        2,
    );
    p.shards[ours] = again.shards.swap_remove(ours);
    p.outputs.clear();
    for shard in (0..3).filter(|s| *s != ours) {
        p.shards[shard].peer_restarted(&[ours], p.now);
    }
    p.collect();
    p.deliver_all();

    let phone = p.ws(&alice, "phone");
    let bobs = p.ws(&bob, "phone");
    p.deliver_all();
    p.take(bobs);
    p.send(phone, text(&bob, "m1"));
    p.deliver_all();
    assert!(
        p.take(phone)
            .iter()
            .any(|s| matches!(s, Payload::VersionUpdate(v) if v.message_id_local == "m1")),
        "the resend is not confirmed"
    );
    assert!(
        p.take(bobs)
            .iter()
            .any(|s| matches!(s, Payload::ChatMessage(m) if m.version == 1)),
        "the receiver never got a message its sender was told is accepted"
    );
}
