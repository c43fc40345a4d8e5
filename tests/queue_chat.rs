//! The engine's chat on the durable queue ([`DurableChatStore`]): restarts keep undelivered messages, versions,
//! resend detection and ack states; a crash at any filesystem operation never loses a message whose
//! VersionUpdate went out (QUE-2); forgotten devices are told `history_gap` (QUE-11).

use std::collections::BTreeSet;
use std::path::Path;

use bimip::codec;
use bimip::core::auth::{Algorithm, Claims, Signer, Verifier};
use bimip::core::queue::{ChatStore, FORGET_AFTER_MS, QueueItem, SyncJob};
use bimip::core::{Config, ConnId, Engine, MemoryRevocations, Millis, Output, Transport};
use bimip::proto::message_scheme::Payload;
use bimip::proto::{AcknowledgmentRequest, Identity, TextPayloadRequest};
use bimip::store::queue::{CrashPlan, Fs, QueueConfig, RealFs, SimFs};
use bimip::store::{ChatOpenReport, ChatStoreConfig, DurableChatStore, Spares};
use jsonwebtoken::{DecodingKey, EncodingKey};

const SECRET: &[u8] = b"queue-chat-test-secret";
const T0: Millis = 1_761_831_141_000;
const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";

/// An engine over one chat store, driven like an adapter that drains every output after each call.
struct Node {
    engine: Engine,
    signer: Signer,
    now: Millis,
    next_conn: u64,
    /// (conn, stanza) in engine order, not yet read.
    seen: Vec<(ConnId, Payload)>,
    /// Set for a pipelined store: its fsync waits here until the next input has been handled, as it runs on
    /// another thread while a server's engine goes on (`Output::Sync`).
    lagging: Option<Vec<SyncJob>>,
}

impl Node {
    fn new(store: Box<dyn ChatStore>, events: &[bimip::core::queue::ChatEvent], now: Millis) -> Node {
        let verifier = Verifier::new(Algorithm::Hs256, DecodingKey::from_secret(SECRET));
        let config = Config {
            rate_burst: 10_000,
            ..Config::default()
        };
        let engine =
            Engine::new(config, verifier, None, Box::new(MemoryRevocations::default())).with_chat(store, events);
        Node {
            engine,
            signer: Signer::new(Algorithm::Hs256, EncodingKey::from_secret(SECRET)),
            now,
            next_conn: 0,
            seen: Vec::new(),
            lagging: None,
        }
    }

    fn durable<F: Fs>(fs: F, dir: &Path, now: Millis) -> Node {
        let (store, events) = DurableChatStore::open(fs, dir, small_segments()).expect("the store opens");
        Node::new(Box::new(store), &events, now)
    }

    /// A node over the durable store with checkpoints every `checkpoint_min_events`, and what its open read.
    fn durable_with<F: Fs>(fs: F, dir: &Path, now: Millis, checkpoint_min_events: u64) -> (Node, ChatOpenReport) {
        let chat_cfg = ChatStoreConfig {
            checkpoint_min_events,
            ..ChatStoreConfig::default()
        };
        let (store, events) =
            DurableChatStore::open_with(fs, dir, small_segments(), chat_cfg).expect("the store opens");
        let report = store.open_report().clone();
        (Node::new(Box::new(store), &events, now), report)
    }

    fn pump(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Send { conn, stanza } => self
                    .seen
                    .push((conn, codec::decode(&stanza, usize::MAX).expect("valid stanza"))),
                Output::Sync(job) => match &mut self.lagging {
                    Some(jobs) => jobs.push(job),
                    None => job.run(),
                },
                Output::Close { .. } | Output::Mail { .. } => {}
            }
        }
    }

    /// Runs the fsyncs that lag behind, and what they release, until none is out.
    fn catch_up(&mut self) {
        while let Some(jobs) = self.lagging.as_mut().map(std::mem::take).filter(|j| !j.is_empty()) {
            jobs.into_iter().for_each(SyncJob::run);
            self.pump();
        }
    }

    fn connect(&mut self, eid: &str, device: &str) -> ConnId {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        let iat = self.now / 1000;
        let claims = Claims {
            eid: eid.into(),
            device_id: device.into(),
            jti: format!("j{}", self.next_conn),
            iat,
            exp: iat + 3600,
            nbf: None,
            iss: None,
            aud: None,
        };
        let token = self.signer.mint(&claims).unwrap();
        self.engine
            .open(conn, Transport::WebSocket, Some(&token), self.now)
            .expect("authenticated");
        self.pump();
        conn
    }

    fn send(&mut self, conn: ConnId, payload: Payload) {
        self.engine.receive(conn, &codec::encode(&payload), self.now);
        // The sync out before this stanza ends after it was handled.
        let lagging = self.lagging.as_mut().map(std::mem::take).unwrap_or_default();
        lagging.into_iter().for_each(SyncJob::run);
        self.pump();
    }

    /// Everything `conn` was sent since the last take.
    fn take(&mut self, conn: ConnId) -> Vec<Payload> {
        self.catch_up();
        let (mine, rest) = std::mem::take(&mut self.seen)
            .into_iter()
            .partition(|(c, _)| *c == conn);
        self.seen = rest;
        mine.into_iter().map(|(_, p)| p).collect()
    }
}

fn small_segments() -> QueueConfig {
    QueueConfig {
        segment_bytes: 2048,
        index_interval_bytes: 600,
        write_buffer_bytes: 700,
        ..QueueConfig::default()
    }
}

fn text(to: &str, local: &str) -> Payload {
    Payload::TextPayloadRequest(TextPayloadRequest {
        to: vec![Identity {
            eid: to.into(),
            connection_resource_id: String::new(),
        }],
        content: format!("text of {local}"),
        message_id_local: local.into(),
        created_at: T0,
        ..Default::default()
    })
}

fn ack(message_id: &str, status: i32) -> Payload {
    Payload::AcknowledgmentRequest(AcknowledgmentRequest {
        message_id: message_id.into(),
        status,
        ..Default::default()
    })
}

/// (message_id, version) of each VersionUpdate.
fn version_updates(stanzas: &[Payload]) -> Vec<(String, i64)> {
    stanzas
        .iter()
        .filter_map(|p| match p {
            Payload::VersionUpdate(v) => Some((v.message_id.clone(), v.version)),
            _ => None,
        })
        .collect()
}

fn chat_ids(stanzas: &[Payload]) -> Vec<String> {
    stanzas
        .iter()
        .filter_map(|p| match p {
            Payload::ChatMessage(c) => Some(c.message_id.clone()),
            _ => None,
        })
        .collect()
}

fn chat_versions(stanzas: &[Payload]) -> Vec<(String, i64)> {
    stanzas
        .iter()
        .filter_map(|p| match p {
            Payload::ChatMessage(c) => Some((c.message_id.clone(), c.version)),
            _ => None,
        })
        .collect()
}

fn error_kinds(stanzas: &[Payload]) -> Vec<String> {
    stanzas
        .iter()
        .filter_map(|p| match p {
            Payload::ErrorMessage(e) => Some(e.message.clone()),
            _ => None,
        })
        .collect()
}

/// SES-8, CHAT-7, CHAT-14, QUE-6, QUE-12 through the real store: undelivered messages, versions, resend detection
/// and raised ack states survive a restart (a clean one, then one without close).
/// With `Spares::Thread` (as `bimip serve` opens it), the chat log moves onto spare segments prepared by their own
/// thread, and everything appended reads back after a reopen.
#[test]
fn chat_log_runs_on_prepared_spares() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("queue");
    let spares = ChatStoreConfig {
        spares: Spares::Thread,
        ..ChatStoreConfig::default()
    };
    let (mut store, _) = DurableChatStore::open_with(RealFs, &dir, small_segments(), spares).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut appended = 0usize;
    while store.queue().stats().spare_segments < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{appended} items and syncs, {:?}",
            store.queue().stats()
        );
        let item = QueueItem::new(None, text(BOB, &format!("m{appended}")));
        store.append(BOB, item).unwrap();
        store.sync().unwrap();
        appended += 1;
        // The spare thread needs a moment of the disk; a sync picks its result up.
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    store.close().unwrap();
    assert!(!dir.join("spare.tmp").exists(), "close removes a ready spare");
    let (store, _) = DurableChatStore::open(RealFs, &dir, small_segments()).unwrap();
    assert_eq!(store.items_after(BOB, 0).len(), appended);
}

#[test]
fn restart_keeps_undelivered_messages_versions_and_states() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("queue");
    let mut node = Node::durable(RealFs, &dir, T0);
    let alice = node.connect(ALICE, "phone");
    let mut ids = Vec::new();
    for i in 0..5 {
        node.send(alice, text(BOB, &format!("m{i}")));
        ids.push(version_updates(&node.take(alice))[0].0.clone());
    }
    let bob = node.connect(BOB, "phone");
    assert_eq!(chat_ids(&node.take(bob)), ids, "QUE-3 before the restart");
    node.send(bob, ack(&ids[1], 3)); // confirms items 1 and 2, raises m1 to READ
    node.take(bob);
    drop(node); // no clean close: the next open recovers

    let mut node = Node::durable(RealFs, &dir, T0 + 1000);
    let bob = node.connect(BOB, "phone");
    assert_eq!(
        chat_ids(&node.take(bob)),
        ids[2..],
        "QUE-6: only the unconfirmed items again"
    );
    let alice = node.connect(ALICE, "phone");
    node.send(alice, text(BOB, "m0"));
    assert_eq!(
        version_updates(&node.take(alice)),
        [(ids[0].clone(), 1)],
        "CHAT-14: the resend is still recognised"
    );
    node.send(alice, text(BOB, "after"));
    assert_eq!(version_updates(&node.take(alice))[0].1, 6, "CHAT-7: versions continue");
    // The READ state survived: bob raising m1 to DELIVERED changes nothing and is confirmed as READ.
    node.send(bob, ack(&ids[1], 2));
    let confirmation = node.take(bob).into_iter().find_map(|p| match p {
        Payload::AcknowledgmentResponse(a) if a.message_id == ids[1] => Some(a.status),
        _ => None,
    });
    assert_eq!(confirmation, Some(3));
}

/// QUE-3 within one batch: a session that starts after an append but before the batch's sync still gets the item
/// (it is not durable yet, but nothing goes out before the sync that makes it so).
#[test]
fn session_starting_in_the_same_batch_as_an_append_gets_the_item() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::durable(RealFs, &tmp.path().join("queue"), T0);
    let alice = node.connect(ALICE, "phone");
    node.engine
        .receive(alice, &codec::encode(&text(BOB, "same-batch")), node.now);
    // No drain in between: the append is still buffered when bob's session starts.
    let bob = node.connect(BOB, "phone");
    let got = node.take(bob);
    assert_eq!(chat_ids(&got).len(), 1, "{got:?}");
    assert_eq!(version_updates(&node.take(alice)).len(), 1);
}

/// The server assembles the durable store from its data directory: `bimip serve` keeps messages across restarts.
#[test]
fn server_settings_open_the_queue_in_the_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = bimip::server::Settings {
        data_dir: tmp.path().to_path_buf(),
        shards: Some(1),
        ..bimip::server::Settings::default()
    };
    let mut engine = settings.engines(T0).expect("engine").remove(0);
    let signer = bimip::keys::ensure_dev_keys(tmp.path()).unwrap().1;
    let token = |eid: &str, jti: &str| {
        let iat = T0 / 1000;
        signer
            .mint(&Claims {
                eid: eid.into(),
                device_id: "phone".into(),
                jti: jti.into(),
                iat,
                exp: iat + 600,
                nbf: None,
                iss: None,
                aud: None,
            })
            .unwrap()
    };
    // The server's store pipelines its syncs: each fsync runs here, and the next poll releases what it covered.
    let drain = |engine: &mut Engine| {
        while let Some(output) = engine.poll_output() {
            if let Output::Sync(job) = output {
                job.run();
            }
        }
    };
    engine
        .open(ConnId(1), Transport::WebSocket, Some(&token(ALICE, "a")), T0)
        .unwrap();
    engine.receive(ConnId(1), &codec::encode(&text(BOB, "kept")), T0);
    drain(&mut engine);
    drop(engine);
    assert!(tmp.path().join("queue").is_dir());

    let mut engine = settings.engines(T0 + 1).expect("engine after restart").remove(0);
    engine
        .open(ConnId(1), Transport::WebSocket, Some(&token(BOB, "b")), T0 + 1)
        .unwrap();
    let got: Vec<Payload> = std::iter::from_fn(|| engine.poll_output())
        .filter_map(|o| match o {
            Output::Send { stanza, .. } => codec::decode(&stanza, usize::MAX).ok(),
            Output::Sync(job) => {
                job.run();
                None
            }
            Output::Close { .. } | Output::Mail { .. } => None,
        })
        .collect();
    assert_eq!(chat_ids(&got).len(), 1, "{got:?}");
}

/// QUE-11 on both stores: a device without a session for 30 days is forgotten (it holds nothing back), and on
/// return gets 410 `history_gap` right after the Authenticate RESPONSE, then starts at the oldest retained item.
#[test]
fn forgotten_device_gets_history_gap_then_starts_at_the_oldest_item() {
    let tmp = tempfile::tempdir().unwrap();
    let memory = Node::new(Box::new(bimip::core::queue::MemoryChatStore::default()), &[], T0);
    let durable = Node::durable(RealFs, &tmp.path().join("queue"), T0);
    for (name, mut node) in [("memory", memory), ("durable", durable)] {
        let old = node.connect(BOB, "old-phone");
        let phone = node.connect(BOB, "phone");
        node.take(old);
        node.take(phone);
        node.engine.closed(old, node.now);
        node.engine.closed(phone, node.now);
        let alice = node.connect(ALICE, "phone");
        node.send(alice, text(BOB, "m1"));
        node.send(alice, text(BOB, "m2"));
        let ids: Vec<String> = version_updates(&node.take(alice)).into_iter().map(|v| v.0).collect();

        // 29 days later bob's phone confirms m1; old-phone (not seen since) is still known.
        node.now = T0 + FORGET_AFTER_MS - 1000;
        let phone = node.connect(BOB, "phone");
        assert!(error_kinds(&node.take(phone)).is_empty(), "{name}");
        node.send(phone, ack(&ids[0], 2));
        node.take(phone);
        node.engine.closed(phone, node.now);

        // Past 30 days old-phone returns: forgotten, told, and m1 (confirmed by the only known device) is gone.
        node.now = T0 + FORGET_AFTER_MS;
        let old = node.connect(BOB, "old-phone");
        let got = node.take(old);
        assert!(matches!(got.first(), Some(Payload::Authenticate(_))), "{name}: {got:?}");
        assert!(
            matches!(&got.get(1), Some(Payload::ErrorMessage(e)) if e.code == 410 && e.message == "history_gap"),
            "{name}: history_gap right after the Authenticate RESPONSE: {got:?}"
        );
        assert_eq!(chat_ids(&got), ids[1..], "{name}: starts at the oldest retained item");
        // Known again: its next session is an ordinary one.
        node.engine.closed(old, node.now);
        let again = node.connect(BOB, "old-phone");
        assert!(error_kinds(&node.take(again)).is_empty(), "{name}");
    }
}

/// A device seen within 30 days is never forgotten and never told `history_gap`.
#[test]
fn device_seen_within_30_days_is_not_forgotten() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::durable(RealFs, &tmp.path().join("queue"), T0);
    let phone = node.connect(BOB, "phone");
    node.engine.closed(phone, node.now);
    let alice = node.connect(ALICE, "phone");
    node.send(alice, text(BOB, "m1"));
    node.now = T0 + FORGET_AFTER_MS - 1;
    let phone = node.connect(BOB, "phone");
    let got = node.take(phone);
    assert!(error_kinds(&got).is_empty(), "{got:?}");
    assert_eq!(chat_ids(&got).len(), 1);
}

/// What one run of the crash workload saw before the power went.
#[derive(Default)]
struct Seen {
    /// message_id of every VersionUpdate alice received (acknowledged messages), with the local id.
    acknowledged: Vec<(String, i64, String)>,
    /// The highest version bob sent an AcknowledgmentRequest for: it confirms every earlier item too (QUE-5).
    bob_acked: i64,
}

/// Alice sends to bob (offline, then online and acking every other message, then offline again); every engine
/// call is followed by a drain, which syncs. Stops quietly when the filesystem dies.
fn crash_workload(fs: &SimFs, pipelined: bool) -> Seen {
    let mut seen = Seen::default();
    // Spares prepared inline: the cuts also land in their zero-filling, renames and zero tails.
    // Two checkpoint entries per sync: checkpoints spread over several batches, their entries between other
    // batches' events, and cuts land inside them.
    let chat_cfg = ChatStoreConfig {
        checkpoint_min_events: 6,
        checkpoint_chunk: 2,
        spares: Spares::Inline,
        pipelined,
    };
    let Ok((store, events)) = DurableChatStore::open_with(fs.clone(), "/queue", small_segments(), chat_cfg) else {
        return seen;
    };
    let mut node = Node::new(Box::new(store), &events, T0);
    node.lagging = pipelined.then(Vec::new);
    let alice = node.connect(ALICE, "phone");
    let mut bob = None;
    for i in 0..24 {
        node.now += 10;
        if i == 8 {
            // Past the retention period: bob's session start runs retention, which releases the segments of the
            // event log trimmed after each checkpoint.
            node.now += bimip::store::chat::RETAIN_EVERY_MS;
            bob = Some(node.connect(BOB, "phone"));
        }
        if i == 16
            && let Some(b) = bob.take()
        {
            node.engine.closed(b, node.now);
        }
        let local = format!("m{i}");
        node.send(alice, text(BOB, &local));
        for (id, version) in version_updates(&node.take(alice)) {
            seen.acknowledged.push((id, version, local.clone()));
        }
        if let Some(b) = bob {
            for (id, version) in chat_versions(&node.take(b)) {
                if version % 2 == 0 {
                    node.send(b, ack(&id, 2));
                    seen.bob_acked = seen.bob_acked.max(version);
                }
            }
        }
        if fs.is_dead() {
            break;
        }
    }
    seen
}

/// QUE-2 and bounded start-up (SPEC §17) under crashes: for a power cut before every filesystem operation of the workload (which writes
/// checkpoints of the chat state every few events, trims the event log and releases its segments), and several
/// ways the pending writes survive, no message whose VersionUpdate went out is lost: bob's next session replays
/// every one he did not confirm, alice's resend of it is recognised (CHAT-14), and new messages get higher versions.
#[test]
fn acknowledged_messages_survive_a_crash_at_any_point() {
    crash_at_any_point(false);
}

/// The same with a pipelined store (`bimip serve`'s): each fsync runs after the next stanza was handled, so cuts
/// also land while a sync is out and later writes are buffered behind it.
#[test]
fn acknowledged_messages_survive_a_crash_at_any_point_with_pipelined_syncs() {
    crash_at_any_point(true);
}

fn crash_at_any_point(pipelined: bool) {
    let full = SimFs::new();
    crash_workload(&full, pipelined);
    let total_ops = full.ops();
    assert!(total_ops > 40, "the workload does real I/O: {total_ops} ops");
    // The log ran on spares: one is waiting, or the active segment still has its zero tail.
    let names = full.list(Path::new("/queue")).unwrap();
    let preallocated = names.iter().filter(|n| n.ends_with(".seg")).any(|n| {
        let bytes = full.read_file(&Path::new("/queue").join(n)).unwrap_or_default();
        bytes.len() as u64 == small_segments().segment_bytes && bytes.last() == Some(&0)
    });
    assert!(
        preallocated || names.iter().any(|n| n == "spare.tmp"),
        "no spare in {names:?}"
    );
    let mut checked = 0;
    let (mut from_checkpoint, mut torn_checkpoint) = (0, 0);
    for cut in 0..=total_ops {
        let fs = SimFs::new();
        fs.cut_power_after(cut);
        let seen = crash_workload(&fs, pipelined);
        let pending = fs.pending_ops();
        let plans = [
            CrashPlan::LOSE_ALL,
            CrashPlan::KEEP_ALL,
            CrashPlan {
                keep: pending / 2,
                tear: Some(7),
            },
        ];
        for plan in plans {
            let fs = fs.fork();
            fs.crash(plan);
            let (mut node, report) = Node::durable_with(fs.clone(), Path::new("/queue"), T0 + 10_000_000, 6);
            from_checkpoint += usize::from(report.checkpoint_entries > 0);
            torn_checkpoint += usize::from(report.ignored_records > 0);
            let bob = node.connect(BOB, "phone");
            let replayed: BTreeSet<String> = chat_ids(&node.take(bob)).into_iter().collect();
            for (id, version, _) in &seen.acknowledged {
                assert!(
                    replayed.contains(id) || *version <= seen.bob_acked,
                    "cut {cut}, {plan:?}: acknowledged {id} lost"
                );
            }
            let alice = node.connect(ALICE, "phone");
            if let Some((id, _, local)) = seen.acknowledged.last() {
                node.send(alice, text(BOB, local));
                assert_eq!(
                    version_updates(&node.take(alice)).first().map(|v| &v.0),
                    Some(id),
                    "cut {cut}, {plan:?}: CHAT-14 after recovery"
                );
            }
            node.send(alice, text(BOB, "after-crash"));
            let v = version_updates(&node.take(alice));
            assert_eq!(v.len(), 1, "cut {cut}, {plan:?}");
            assert!(
                v[0].1 > seen.acknowledged.len() as i64,
                "cut {cut}, {plan:?}: version {} reuses an acknowledged one",
                v[0].1
            );
            checked += 1;
        }
    }
    assert!(checked > 150);
    // Checkpoints under crashes: recoveries started from a checkpoint, and from the one before a torn checkpoint.
    assert!(from_checkpoint > checked / 2, "{from_checkpoint} of {checked}");
    assert!(torn_checkpoint > 0, "no crash tore a checkpoint");
}

/// Bytes of segment files in `dir`.
fn segment_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// The confirmation status `conn` got for `message_id`, or the error it got instead.
fn ack_answer(node: &mut Node, conn: ConnId, message_id: &str, status: i32) -> Result<i32, String> {
    node.send(conn, ack(message_id, status));
    let got = node.take(conn);
    if let Some(kind) = error_kinds(&got).first() {
        return Err(kind.clone());
    }
    got.into_iter()
        .find_map(|p| match p {
            Payload::AcknowledgmentResponse(a) if a.message_id == message_id => Some(a.status),
            _ => None,
        })
        .ok_or_else(|| "no answer".to_string())
}

/// SPEC §17 (bounded start-up), CHAT-15: start-up reads the latest checkpoint and the events after it, not the history. 200 messages
/// read and confirmed, then two days later a checkpoint forgets them (READ, older than the resend window, no item
/// left, not their chat's latest); the next open reads a few dozen records instead of the 400 events, the old
/// segments are gone, and what must survive did: versions, recent resend keys, a message still in a queue and one
/// below READ.
#[test]
fn open_reads_only_the_checkpoint_and_its_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("queue");
    // No checkpoint while the history is written.
    let (mut node, _) = Node::durable_with(RealFs, &dir, T0, 100_000);
    let alice = node.connect(ALICE, "phone");
    let bob = node.connect(BOB, "phone");
    let mut old = Vec::new();
    for i in 0..200 {
        node.now += 1000;
        node.send(alice, text(BOB, &format!("old{i}")));
        let (id, _) = chat_versions(&node.take(bob))[0].clone();
        node.send(bob, ack(&id, 3));
        node.take(bob);
        // Alice confirms the READ update (QUE-4), so no item of the message is left.
        node.send(alice, ack(&id, 3));
        node.take(alice);
        old.push(id);
    }
    // carol is offline: her copy stays in her queue. dave gets his but never reads it (DELIVERED).
    node.send(alice, text("carol@example.com", "to-carol"));
    let to_carol = version_updates(&node.take(alice))[0].0.clone();
    let dave = node.connect("dave@example.com", "phone");
    node.send(alice, text("dave@example.com", "to-dave"));
    let to_dave = version_updates(&node.take(alice))[0].0.clone();
    assert_eq!(ack_answer(&mut node, dave, &to_dave, 2), Ok(2));
    let sent = node.engine.stats().clone();
    drop(node);

    // Two days later, with checkpoints every 20 events.
    let later = T0 + 2 * 24 * 3600 * 1000;
    let (mut node, report) = Node::durable_with(RealFs, &dir, later, 20);
    assert_eq!(report.checkpoint_entries, 0, "{report:?}");
    assert!(
        report.records_read >= 400,
        "no checkpoint yet: the whole log is read: {report:?}"
    );
    let full_bytes = segment_bytes(&dir);
    let alice = node.connect(ALICE, "phone"); // retention: the confirmed items go
    let bob = node.connect(BOB, "phone");
    let mut recent = Vec::new();
    for i in 0..12 {
        node.now += 1000;
        node.send(alice, text(BOB, &format!("new{i}")));
        recent.push(version_updates(&node.take(alice))[0].clone());
        node.take(bob);
    }
    // An hour on, the next session start runs retention again: the trimmed log's segments are released.
    node.now += 2 * 3600 * 1000;
    let carol_phone = node.connect("eve@example.com", "phone");
    node.take(carol_phone);
    drop(node);
    assert!(
        segment_bytes(&dir) * 4 < full_bytes,
        "old segments released: {} bytes left of {full_bytes}",
        segment_bytes(&dir)
    );

    let (mut node, report) = Node::durable_with(RealFs, &dir, later + 3 * 3600 * 1000, 20);
    assert!(report.checkpoint_entries > 0, "{report:?}");
    assert_eq!(
        report.records_read,
        // The checkpoint's header and end record, its entries, and the events and item records after its header.
        2 + report.checkpoint_entries + report.tail_events + report.item_records + report.ignored_records,
        "{report:?}"
    );
    // The checkpoint (written at the first sync after the reopen, after retention) kept the chat's latest old
    // message (its version), carol's (still in her queue) and dave's (DELIVERED); the 12 new ones are the tail.
    assert_eq!(report.checkpoint_entries, 3, "{report:?}");
    assert_eq!(report.tail_events, 12, "{report:?}");
    assert!(report.records_read < 40, "{report:?}");
    assert_eq!(report.messages, 15, "{report:?}");

    let alice = node.connect(ALICE, "phone");
    node.send(alice, text(BOB, "new0"));
    assert_eq!(
        version_updates(&node.take(alice)),
        [recent[0].clone()],
        "CHAT-15: the resend key of a recent message survives"
    );
    node.send(alice, text(BOB, "next"));
    assert_eq!(
        version_updates(&node.take(alice))[0].1,
        213,
        "CHAT-7: versions continue"
    );
    let carol = node.connect("carol@example.com", "phone");
    let got = node.take(carol);
    assert_eq!(
        chat_ids(&got),
        std::slice::from_ref(&to_carol),
        "QUE-6: the retained copy is replayed"
    );
    assert_eq!(
        ack_answer(&mut node, carol, &to_carol, 3),
        Ok(3),
        "a retained message is known"
    );
    let dave = node.connect("dave@example.com", "phone");
    node.take(dave);
    assert_eq!(
        ack_answer(&mut node, dave, &to_dave, 3),
        Ok(3),
        "a message below READ can still be raised"
    );
    let bob = node.connect(BOB, "phone");
    node.take(bob);
    assert_eq!(
        ack_answer(&mut node, bob, &old[5], 3),
        Err("not_found".to_string()),
        "a forgotten message (SPEC §17, bounded start-up)"
    );
    assert!(sent.errors.is_empty(), "{:?}", sent.errors);
}
