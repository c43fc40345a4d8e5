//! A cluster node's chat store (issue 17): chats, queues and device offsets in JetStream, not on the node's disk.
//!
//! Each shard's chat state is a [`MemoryChatStore`] rebuilt at start from the shard's subject of the `BIMIP_CHAT`
//! stream (`bimip.chat.<shard>`, 3 replicas on a NATS cluster). Every write the engine makes through [`ChatStore`]
//! is an operation (an accepted message, a raised state, a queue item, a device's offset or session start), and
//! each sync publishes the operations written since the last one, in order, as one or more stream messages. The
//! sync ends, and what the engine held back for it (VersionUpdates, deliveries) goes out, only once JetStream has
//! stored them on its replicas (the PubAck): nothing is acknowledged that the replicas do not hold (QUE-2, with
//! JetStream as the stable storage). A node started on an empty data directory serves its shards as they were.
//!
//! Compaction: a node that starts a shard and reads many more operations than its last snapshot held writes the
//! state it rebuilt as a new snapshot ([`wire::Base`] first in the first of its messages, [`wire::Part`] in the
//! others), then purges the subject's messages before it. A snapshot is read as a whole or not at all: one whose
//! writer died before its last message is dropped at replay, and the state goes on from before it.
//!
//! Order and fencing: each message expects the subject's last sequence to be the one this store last saw
//! (`Nats-Expected-Last-Subject-Sequence`) and is named by it (`Nats-Msg-Id`): a retry of a message NATS stored but
//! whose ack was lost is recognised (in the duplicate window, or as the subject's last message), and a second writer
//! of one shard is refused rather than interleaved.
//!
//! NATS away: a sync retries until it succeeds (its outputs stay held), and while the NATS connection is down or a
//! sync attempt has failed, the writes that start a change (a message accepted, a state raised, an offset
//! committed) are refused with [`StoreError::Unavailable`], which the engine answers 503 `unavailable`, and leave
//! no trace. The writes that finish a change already recorded (a queue item of an accepted message) and session
//! starts (a device's last-seen time) are not refused: they wait for the sync like any write. Pings, pongs and
//! refusals do not wait for a sync (`Engine::send_volatile`), so live sessions go on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use prost::Message as _;

use super::ClusterError;
use crate::core::queue::{
    Accepted, ChatEvent, ChatStore, DeviceStart, MemoryChatStore, QueueImage, QueueItem, StateRaised, SyncJob,
};
use crate::core::{Millis, StoreError};

const STREAM: &str = "BIMIP_CHAT";

/// Under NATS's default 1 MiB payload limit with room for headers: a larger batch goes as several messages.
const MAX_MESSAGE_BYTES: usize = 512 * 1024;

fn subject(shard: usize) -> String {
    format!("bimip.chat.{shard}")
}

/// The stream every shard's chat operations go to.
fn chat_stream(replicas: usize) -> stream::Config {
    stream::Config {
        name: STREAM.into(),
        subjects: vec!["bimip.chat.>".into()],
        num_replicas: replicas,
        // The state is the sum of the operations since the last snapshot; a start removes those before it.
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// The operations as stored: one [`wire::Batch`] per stream message.
mod wire {
    use super::{Accepted, StateRaised};

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Batch {
        #[prost(message, repeated, tag = "1")]
        pub ops: Vec<Op>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Op {
        #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
        pub kind: Option<Kind>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Accepted(Accepted),
        #[prost(message, tag = "2")]
        Raised(StateRaised),
        #[prost(message, tag = "3")]
        Append(Append),
        #[prost(message, tag = "4")]
        Commit(Commit),
        #[prost(message, tag = "5")]
        Start(Start),
        #[prost(message, tag = "6")]
        Base(Base),
        #[prost(message, tag = "7")]
        Part(Part),
        #[prost(message, tag = "8")]
        Queue(Queue),
        #[prost(message, tag = "9")]
        Items(Items),
    }

    /// More items of a queue a [`Queue`] restored, after those it had: a large queue takes several operations, so
    /// that none is larger than a message.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Items {
        #[prost(string, tag = "1")]
        pub eid: String,
        #[prost(message, repeated, tag = "2")]
        pub items: Vec<Item>,
    }

    /// First in a snapshot's first message: from here the shard's state is what the snapshot's `parts` messages
    /// hold, once all of them are read.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Base {
        #[prost(uint32, tag = "1")]
        pub parts: u32,
    }

    /// First in each later message of a snapshot.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Part {}

    /// One EID's whole queue, in a snapshot.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Queue {
        #[prost(string, tag = "1")]
        pub eid: String,
        #[prost(uint64, tag = "2")]
        pub low: u64,
        #[prost(message, repeated, tag = "3")]
        pub items: Vec<Item>,
        #[prost(message, repeated, tag = "4")]
        pub offsets: Vec<Offset>,
        #[prost(message, repeated, tag = "5")]
        pub last_seen: Vec<Seen>,
        #[prost(string, repeated, tag = "6")]
        pub forgotten: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Item {
        #[prost(string, optional, tag = "1")]
        pub exclude_device: Option<String>,
        #[prost(bytes = "bytes", tag = "2")]
        pub encoded: bytes::Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Offset {
        #[prost(string, tag = "1")]
        pub device: String,
        #[prost(uint64, tag = "2")]
        pub offset: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Seen {
        #[prost(string, tag = "1")]
        pub device: String,
        #[prost(int64, tag = "2")]
        pub at: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Append {
        #[prost(string, tag = "1")]
        pub eid: String,
        #[prost(string, optional, tag = "2")]
        pub exclude_device: Option<String>,
        /// The item's stanza, as the queue holds it (QUE-12).
        #[prost(bytes = "bytes", tag = "3")]
        pub encoded: bytes::Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Commit {
        #[prost(string, tag = "1")]
        pub eid: String,
        #[prost(string, tag = "2")]
        pub device: String,
        #[prost(uint64, tag = "3")]
        pub offset: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Start {
        #[prost(string, tag = "1")]
        pub eid: String,
        #[prost(string, tag = "2")]
        pub device: String,
        #[prost(int64, tag = "3")]
        pub now: i64,
    }
}

/// A shard's state and the operations it is made of: what the store applies as it writes, and what a start replays.
#[derive(Default)]
struct Replica {
    state: MemoryChatStore,
    events: Vec<ChatEvent>,
}

impl Replica {
    /// Applies one stored operation.
    fn apply(&mut self, op: wire::Op) -> Result<(), String> {
        let written = match op.kind.ok_or("an operation of no known kind")? {
            wire::Kind::Accepted(accepted) => self.record(ChatEvent::Accepted(accepted)),
            wire::Kind::Raised(raised) => self.record(ChatEvent::StateRaised(raised)),
            wire::Kind::Append(append) => {
                let item = QueueItem::decode(append.exclude_device, append.encoded).map_err(|e| e.to_string())?;
                self.state.append(&append.eid, item).map(|_| ())
            }
            wire::Kind::Commit(commit) => self.state.commit(&commit.eid, &commit.device, commit.offset),
            wire::Kind::Start(start) => self
                .state
                .start_device(&start.eid, &start.device, start.now)
                .map(|_| ()),
            wire::Kind::Queue(queue) => {
                let items = decode_items(queue.items)?;
                self.state.restore_queue(QueueImage {
                    eid: queue.eid,
                    low: queue.low,
                    items,
                    offsets: queue.offsets.into_iter().map(|o| (o.device, o.offset)).collect(),
                    last_seen: queue.last_seen.into_iter().map(|s| (s.device, s.at)).collect(),
                    forgotten: queue.forgotten,
                });
                Ok(())
            }
            wire::Kind::Items(more) => {
                let items = decode_items(more.items)?;
                self.state.restore_items(&more.eid, items);
                Ok(())
            }
            wire::Kind::Base(_) | wire::Kind::Part(_) => return Err("a snapshot's marker inside a message".into()),
        };
        written.map_err(|e| e.to_string())
    }

    /// The state as operations that rebuild it: every chat event, then every queue whole.
    fn image(&self) -> Vec<wire::Op> {
        let events = self.events.iter().map(|event| match event {
            ChatEvent::Accepted(accepted) => wire::Kind::Accepted(accepted.clone()),
            ChatEvent::StateRaised(raised) => wire::Kind::Raised(raised.clone()),
        });
        let queues = self.state.queue_images().into_iter().flat_map(|image| {
            let mut chunks = item_chunks(image.items).into_iter();
            let first = wire::Kind::Queue(wire::Queue {
                eid: image.eid.clone(),
                low: image.low,
                items: chunks.next().unwrap_or_default(),
                offsets: image
                    .offsets
                    .into_iter()
                    .map(|(device, offset)| wire::Offset { device, offset })
                    .collect(),
                last_seen: image
                    .last_seen
                    .into_iter()
                    .map(|(device, at)| wire::Seen { device, at })
                    .collect(),
                forgotten: image.forgotten,
            });
            let eid = image.eid;
            std::iter::once(first).chain(chunks.map(move |items| {
                wire::Kind::Items(wire::Items {
                    eid: eid.clone(),
                    items,
                })
            }))
        });
        events.chain(queues).map(|kind| wire::Op { kind: Some(kind) }).collect()
    }

    fn record(&mut self, event: ChatEvent) -> Result<(), StoreError> {
        self.state.record(&event)?;
        // The memory store keeps every event for tests; here they are the stream's, and only a start needs them.
        self.state.events.clear();
        self.events.push(event);
        Ok(())
    }
}

fn decode_items(items: Vec<wire::Item>) -> Result<Vec<QueueItem>, String> {
    items
        .into_iter()
        .map(|item| QueueItem::decode(item.exclude_device, item.encoded).map_err(|e| e.to_string()))
        .collect()
}

/// A queue's items as operations' lists of at most a quarter of [`MAX_MESSAGE_BYTES`] each (an item larger than that
/// alone), so that a snapshot's messages stay under the limit as the chat's own do.
fn item_chunks(items: Vec<QueueItem>) -> Vec<Vec<wire::Item>> {
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut size = 0;
    for item in items {
        let len = item.encoded().len() + 16;
        if size + len > MAX_MESSAGE_BYTES / 4 && !chunk.is_empty() {
            chunks.push(std::mem::take(&mut chunk));
            size = 0;
        }
        size += len;
        chunk.push(wire::Item {
            encoded: item.encoded().clone(),
            exclude_device: item.exclude_device,
        });
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

/// A shard rebuilt from its stream messages in order. A snapshot ([`wire::Base`] and its parts) replaces the state
/// once all its messages are read; one cut short (its writer died while writing it) is dropped, and the state goes
/// on from before it.
#[derive(Default)]
struct Replay {
    replica: Replica,
    /// A snapshot being read: what it holds so far, and how many of its messages are still to come.
    building: Option<(Replica, u32)>,
    /// Operations in the last complete snapshot, and applied after it.
    base_ops: usize,
    since_base: usize,
}

impl Replay {
    fn message(&mut self, batch: wire::Batch) -> Result<(), String> {
        let mut ops = batch.ops.into_iter().peekable();
        match ops.peek().and_then(|op| op.kind.as_ref()) {
            Some(wire::Kind::Base(base)) => {
                if self.building.is_some() {
                    tracing::warn!("a snapshot cut short is dropped");
                }
                self.building = Some((Replica::default(), base.parts.max(1)));
                self.base_ops = 0;
                ops.next();
            }
            Some(wire::Kind::Part(_)) => {
                ops.next();
                if self.building.is_none() {
                    // The rest of a snapshot whose start was not read: its state is not this one's.
                    tracing::warn!("a snapshot's part without its start is skipped");
                    return Ok(());
                }
            }
            _ => {
                if self.building.take().is_some() {
                    tracing::warn!("a snapshot cut short is dropped");
                }
            }
        }
        let Some((building, left)) = &mut self.building else {
            for op in ops {
                self.replica.apply(op)?;
                self.since_base += 1;
            }
            return Ok(());
        };
        let mut applied = 0;
        for op in ops {
            building.apply(op)?;
            applied += 1;
        }
        self.base_ops += applied;
        *left -= 1;
        if *left == 0
            && let Some((built, _)) = self.building.take()
        {
            self.replica = built;
            self.since_base = 0;
        }
        Ok(())
    }
}

/// What a sync's publishing task shares with the store.
struct Publisher {
    js: jetstream::Context,
    stream: stream::Stream,
    client: async_nats::Client,
    runtime: tokio::runtime::Handle,
    shard: usize,
    /// This start of the node ([`super::Layout::epoch`]): in each message id, so that a message a previous start
    /// left in flight is never taken for this one's.
    start: u16,
    subject: String,
    /// A sync attempt failed and none has succeeded since: JetStream is not storing.
    failing: AtomicBool,
    /// The store is gone: a sync still retrying gives up.
    closed: AtomicBool,
}

impl Publisher {
    /// Publishes `messages` in order, each after the one before is stored; returns the subject's last sequence.
    /// Retries each until it is stored; fails only when another writer has the subject, or the store is gone.
    async fn publish_all(self: Arc<Self>, messages: Vec<Bytes>, mut last: u64) -> Result<u64, StoreError> {
        for payload in messages {
            last = self.publish(payload, last).await?;
        }
        Ok(last)
    }

    async fn publish(&self, payload: Bytes, last: u64) -> Result<u64, StoreError> {
        let id = format!("chat-{}-{}-{last}", self.shard, self.start);
        let mut wait = Duration::from_millis(50);
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return Err(StoreError::Unavailable("the store was closed".into()));
            }
            let message = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(&id)
                .expected_last_subject_sequence(last);
            let attempt = match self.js.send_publish(self.subject.clone(), message).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match attempt {
                Ok(ack) => {
                    if self.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(shard = self.shard, "chat operations stored in JetStream again");
                    }
                    return Ok(ack.sequence);
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => match self.last_stored().await {
                    // An earlier attempt was stored and its ack lost, past the duplicate window.
                    Ok(Some((sequence, stored_id))) if stored_id == id => {
                        self.failing.store(false, Ordering::Relaxed);
                        return Ok(sequence);
                    }
                    Ok(_) => {
                        let why = format!("shard {}'s chat stream was written by another node", self.shard);
                        tracing::error!(shard = self.shard, "{why}: this node no longer writes it");
                        return Err(StoreError::Unavailable(why));
                    }
                    Err(error) => tracing::warn!(%error, shard = self.shard, "chat stream unreadable; retrying"),
                },
                Err(error) => {
                    tracing::debug!(%error, shard = self.shard, last, "chat operations not stored");
                    if !self.failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(%error, shard = self.shard, "chat operations not stored in JetStream yet; retrying");
                    }
                }
            }
            self.failing.store(true, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }

    /// Writes `replica` as a snapshot after the subject's message `last`, then removes the subject's messages before
    /// it; returns the subject's new last sequence. The next start reads the snapshot and what follows. Removing
    /// the old messages may fail (they are only read again, and dropped, at the next start).
    async fn compact(&self, replica: &Replica, mut last: u64) -> Result<u64, ClusterError> {
        let messages = snapshot(replica);
        let count = messages.len();
        let mut first = None;
        for payload in messages {
            last = self
                .publish(payload, last)
                .await
                .map_err(|e| ClusterError::JetStream(format!("writing shard {}'s snapshot: {e}", self.shard)))?;
            first.get_or_insert(last);
        }
        let Some(first) = first else { return Ok(last) };
        match self.stream.purge().filter(self.subject.as_str()).sequence(first).await {
            Ok(purged) => tracing::info!(
                shard = self.shard,
                messages = count,
                removed = purged.purged,
                "chat stream compacted: a snapshot replaces what came before"
            ),
            Err(error) => {
                tracing::warn!(%error, shard = self.shard, "the chat stream's older messages stay until the next start")
            }
        }
        Ok(last)
    }

    /// The sequence and message id of the subject's last message, if it has one.
    async fn last_stored(&self) -> Result<Option<(u64, String)>, String> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self.stream.get_last_raw_message_by_subject(&self.subject).await {
            Ok(message) => {
                let id = message
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default();
                Ok(Some((message.sequence, id)))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Where a sync's job leaves its result: the subject's new last sequence, or why the shard can write no more.
type Outcome = Arc<Mutex<Option<Result<u64, StoreError>>>>;

/// The [`ChatStore`] of one shard of a cluster node; see the module docs.
pub struct StreamChatStore {
    replica: Replica,
    /// Operations written since the last sync began, in order.
    pending: Vec<wire::Op>,
    publisher: Arc<Publisher>,
    /// The subject's last sequence as this store knows it: what its next message expects.
    last: u64,
    /// The result of the sync that is out, once it has ended.
    out: Option<Outcome>,
    /// Another node wrote the shard's subject: this store writes no more.
    fenced: Option<String>,
}

impl Drop for StreamChatStore {
    fn drop(&mut self) {
        self.publisher.closed.store(true, Ordering::Relaxed);
    }
}

impl StreamChatStore {
    /// Opens shard `shard`'s store: makes the stream on first use and replays the shard's operations. Returns the
    /// store and the chat events it holds, for [`crate::core::Engine::with_chat`].
    pub async fn open(
        client: &async_nats::Client,
        shard: usize,
        start: u16,
        compact_after: usize,
    ) -> Result<(StreamChatStore, Vec<ChatEvent>), ClusterError> {
        let js = super::jetstream::context(client);
        let stream = super::jetstream::stream(&js, chat_stream(super::jetstream::replicas(client))).await?;
        let publisher = Arc::new(Publisher {
            js,
            stream,
            client: client.clone(),
            runtime: tokio::runtime::Handle::current(),
            shard,
            start,
            subject: subject(shard),
            failing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        // A stream just made elects its leader before it answers: ask again for up to 30 s.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let last = loop {
            match publisher.last_stored().await {
                Ok(last) => break last.map_or(0, |(sequence, _)| sequence),
                Err(error) if tokio::time::Instant::now() < deadline => {
                    tracing::info!(%error, shard, "the chat stream is not ready; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => return Err(ClusterError::JetStream(format!("the chat stream: {error}"))),
            }
        };
        let mut replay = Replay::default();
        super::jetstream::read(
            &publisher.stream,
            &publisher.subject,
            super::jetstream::Until::Sequence(last),
            |stored| {
                let bad = |why: String| {
                    ClusterError::JetStream(format!("message {} of {}: {why}", stored.sequence, stored.subject))
                };
                let batch = wire::Batch::decode(stored.payload).map_err(|e| bad(e.to_string()))?;
                replay.message(batch).map_err(bad)
            },
        )
        .await?;
        let Replay {
            mut replica,
            base_ops,
            since_base,
            ..
        } = replay;
        tracing::info!(shard, base_ops, since_base, last, "chat state replayed from JetStream");
        let mut last = last;
        if since_base > compact_after.max(2 * base_ops) {
            last = publisher.compact(&replica, last).await?;
        }
        let events = std::mem::take(&mut replica.events);
        let store = StreamChatStore {
            replica,
            pending: Vec::new(),
            publisher,
            last,
            out: None,
            fenced: None,
        };
        Ok((store, events))
    }

    /// Whether a write may be made now: not while NATS is unreachable or JetStream is failing to store.
    fn writable(&self) -> Result<(), StoreError> {
        if let Some(why) = &self.fenced {
            return Err(StoreError::Unavailable(why.clone()));
        }
        if self.publisher.failing.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable("JetStream is not storing".into()));
        }
        if self.publisher.client.connection_state() != async_nats::connection::State::Connected {
            return Err(StoreError::Unavailable("NATS is unreachable".into()));
        }
        Ok(())
    }

    fn push(&mut self, kind: wire::Kind) {
        self.pending.push(wire::Op { kind: Some(kind) });
    }
}

/// `ops` as stream messages of at most [`MAX_MESSAGE_BYTES`] each (one operation larger than that alone).
fn messages(ops: Vec<wire::Op>) -> Vec<Bytes> {
    batches(ops)
        .iter()
        .map(|batch| Bytes::from(batch.encode_to_vec()))
        .collect()
}

/// `ops` cut into batches of at most [`MAX_MESSAGE_BYTES`] each, in order.
fn batches(ops: Vec<wire::Op>) -> Vec<wire::Batch> {
    let mut batches = Vec::new();
    let mut batch = wire::Batch::default();
    let mut size = 0;
    for op in ops {
        let len = op.encoded_len() + 8;
        if size + len > MAX_MESSAGE_BYTES && !batch.ops.is_empty() {
            batches.push(std::mem::take(&mut batch));
            size = 0;
        }
        size += len;
        batch.ops.push(op);
    }
    if !batch.ops.is_empty() {
        batches.push(batch);
    }
    batches
}

/// `replica` as a snapshot's stream messages: [`wire::Base`] first in the first, [`wire::Part`] in the others.
fn snapshot(replica: &Replica) -> Vec<Bytes> {
    let mut batches = batches(replica.image());
    if batches.is_empty() {
        batches.push(wire::Batch::default());
    }
    let parts = u32::try_from(batches.len()).unwrap_or(u32::MAX);
    batches
        .into_iter()
        .enumerate()
        .map(|(n, mut batch)| {
            let marker = match n {
                0 => wire::Kind::Base(wire::Base { parts }),
                _ => wire::Kind::Part(wire::Part {}),
            };
            batch.ops.insert(0, wire::Op { kind: Some(marker) });
            Bytes::from(batch.encode_to_vec())
        })
        .collect()
}

impl ChatStore for StreamChatStore {
    fn record(&mut self, event: &ChatEvent) -> Result<(), StoreError> {
        self.writable()?;
        self.replica.state.record(event)?;
        self.replica.state.events.clear();
        self.push(match event {
            ChatEvent::Accepted(accepted) => wire::Kind::Accepted(accepted.clone()),
            ChatEvent::StateRaised(raised) => wire::Kind::Raised(raised.clone()),
        });
        Ok(())
    }

    fn append(&mut self, eid: &str, item: QueueItem) -> Result<u64, StoreError> {
        // Never refused: an item is appended for a message its chat's home has recorded already, and refusing it
        // would leave that message without its copy, resent or not (CHAT-14 answers a resend from the record). It
        // waits for the sync like any write.
        let op = wire::Append {
            eid: eid.to_string(),
            exclude_device: item.exclude_device.clone(),
            encoded: item.encoded().clone(),
        };
        let increment = self.replica.state.append(eid, item)?;
        self.push(wire::Kind::Append(op));
        Ok(increment)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        if let Some(job) = self.begin_sync()? {
            job.run();
        }
        match self.poll_sync() {
            Poll::Ready(result) => result,
            Poll::Pending => Err(StoreError::Unavailable("the sync did not end".into())),
        }
    }

    fn begin_sync(&mut self) -> Result<Option<SyncJob>, StoreError> {
        if let Some(why) = &self.fenced {
            return Err(StoreError::Unavailable(why.clone()));
        }
        if self.pending.is_empty() {
            return Ok(None);
        }
        let messages = messages(std::mem::take(&mut self.pending));
        let slot = Arc::new(Mutex::new(None));
        self.out = Some(Arc::clone(&slot));
        let publisher = Arc::clone(&self.publisher);
        let last = self.last;
        // Run on the shard's sync thread: it waits for the PubAcks there, never on a runtime worker.
        Ok(Some(SyncJob::new(move || {
            let runtime = publisher.runtime.clone();
            let task = runtime.spawn(publisher.publish_all(messages, last));
            let result = futures::executor::block_on(task)
                .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("the sync task ended: {e}"))));
            *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(result);
        })))
    }

    fn poll_sync(&mut self) -> Poll<Result<(), StoreError>> {
        let Some(slot) = &self.out else {
            return Poll::Ready(Ok(()));
        };
        let Some(result) = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() else {
            return Poll::Pending;
        };
        self.out = None;
        Poll::Ready(match result {
            Ok(last) => {
                self.last = last;
                self.replica.state.sync()
            }
            Err(e) => {
                // Its operations are applied here but not stored: the shard cannot go on writing after them.
                self.fenced = Some(e.to_string());
                Err(e)
            }
        })
    }

    fn items_after(&self, eid: &str, after: u64) -> Vec<(u64, QueueItem)> {
        self.replica.state.items_after(eid, after)
    }

    fn oldest_retained(&self, eid: &str) -> u64 {
        self.replica.state.oldest_retained(eid)
    }

    fn usage(&self, eid: &str) -> (usize, usize) {
        self.replica.state.usage(eid)
    }

    fn committed(&self, eid: &str, device: &str) -> Option<u64> {
        self.replica.state.committed(eid, device)
    }

    fn commit(&mut self, eid: &str, device: &str, offset: u64) -> Result<(), StoreError> {
        self.writable()?;
        self.replica.state.commit(eid, device, offset)?;
        self.push(wire::Kind::Commit(wire::Commit {
            eid: eid.to_string(),
            device: device.to_string(),
            offset,
        }));
        Ok(())
    }

    fn start_device(&mut self, eid: &str, device: &str, now: Millis) -> Result<DeviceStart, StoreError> {
        let start = self.replica.state.start_device(eid, device, now)?;
        self.push(wire::Kind::Start(wire::Start {
            eid: eid.to_string(),
            device: device.to_string(),
            now,
        }));
        Ok(start)
    }

    fn users(&self) -> Vec<String> {
        self.replica.state.users()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::message_scheme::Payload;

    fn item(text: &str, exclude: Option<&str>) -> QueueItem {
        let stanza = Payload::PingpongMessage(crate::proto::PingPong {
            id: text.to_string(),
            ..Default::default()
        });
        QueueItem::new(exclude.map(str::to_string), stanza)
    }

    fn append(eid: &str, item: &QueueItem) -> wire::Op {
        wire::Op {
            kind: Some(wire::Kind::Append(wire::Append {
                eid: eid.into(),
                exclude_device: item.exclude_device.clone(),
                encoded: item.encoded().clone(),
            })),
        }
    }

    /// What a store writes, replayed from its stream messages, is the state it had: items, offsets, forgotten
    /// devices, events; however the operations were cut into messages.
    #[test]
    fn a_replayed_shard_is_the_shard_that_was_written() {
        let mut direct = MemoryChatStore::default();
        let mut ops = Vec::new();
        let accepted = ChatEvent::Accepted(Accepted {
            message_id: "c/1".into(),
            version: 1,
            ..Default::default()
        });
        direct.record(&accepted).unwrap();
        ops.push(wire::Op {
            kind: Some(wire::Kind::Accepted(match &accepted {
                ChatEvent::Accepted(a) => a.clone(),
                ChatEvent::StateRaised(_) => unreachable!(),
            })),
        });
        direct.start_device("bob", "phone", 1_000).unwrap();
        ops.push(wire::Op {
            kind: Some(wire::Kind::Start(wire::Start {
                eid: "bob".into(),
                device: "phone".into(),
                now: 1_000,
            })),
        });
        // Large enough items that the operations take several messages.
        let big = "x".repeat(200 * 1024);
        for n in 0..5 {
            let item = item(&format!("{n}{big}"), (n == 2).then_some("laptop"));
            direct.append("bob", item.clone()).unwrap();
            ops.push(append("bob", &item));
        }
        direct.commit("bob", "phone", 3).unwrap();
        ops.push(wire::Op {
            kind: Some(wire::Kind::Commit(wire::Commit {
                eid: "bob".into(),
                device: "phone".into(),
                offset: 3,
            })),
        });
        // Past QUE-11's limit: the phone is forgotten at the laptop's start.
        let later = 1_000 + crate::core::queue::FORGET_AFTER_MS;
        direct.start_device("bob", "laptop", later).unwrap();
        ops.push(wire::Op {
            kind: Some(wire::Kind::Start(wire::Start {
                eid: "bob".into(),
                device: "laptop".into(),
                now: later,
            })),
        });

        let stored = messages(ops);
        assert!(stored.len() >= 2, "1 MiB of items in messages of 512 KiB at most");
        assert!(stored.iter().all(|m| m.len() <= MAX_MESSAGE_BYTES + 1024));
        let mut replayed = Replica::default();
        for message in &stored {
            for op in wire::Batch::decode(message.as_ref()).unwrap().ops {
                replayed.apply(op).unwrap();
            }
        }
        assert_eq!(replayed.events, vec![accepted]);
        let r = &replayed.state;
        assert_eq!(r.items_after("bob", 0), direct.items_after("bob", 0));
        assert_eq!(
            r.items_after("bob", 0).len(),
            2,
            "the three the phone confirmed are released"
        );
        assert_eq!(r.committed("bob", "phone"), None, "the phone is forgotten (QUE-11)");
        assert_eq!(r.committed("bob", "phone"), direct.committed("bob", "phone"));
        assert_eq!(r.committed("bob", "laptop"), direct.committed("bob", "laptop"));
        assert_eq!(r.usage("bob"), direct.usage("bob"));
        assert_eq!(r.oldest_retained("bob"), direct.oldest_retained("bob"));
    }

    /// A replica with every kind of state: events, items (some large), offsets, a forgotten device.
    fn written(big: usize) -> (Replica, Vec<wire::Op>) {
        let mut replica = Replica::default();
        let mut ops = Vec::new();
        let mut apply = |replica: &mut Replica, kind: wire::Kind| {
            let op = wire::Op { kind: Some(kind) };
            replica.apply(op.clone()).unwrap();
            ops.push(op);
        };
        for version in 1..=3 {
            let accepted = Accepted {
                message_id: format!("c/{version}"),
                version,
                ..Default::default()
            };
            apply(&mut replica, wire::Kind::Accepted(accepted));
        }
        let raised = StateRaised {
            message_id: "c/1".into(),
            state: 3,
            at: 5,
        };
        apply(&mut replica, wire::Kind::Raised(raised));
        for (eid, device, now) in [
            ("bob", "phone", 1_000),
            ("bob", "tablet", 1_000),
            ("carol", "laptop", 2_000),
        ] {
            let start = wire::Start {
                eid: eid.into(),
                device: device.into(),
                now,
            };
            apply(&mut replica, wire::Kind::Start(start));
        }
        let padding = "x".repeat(big);
        for n in 0..6 {
            for eid in ["bob", "carol"] {
                let item = item(&format!("{eid}{n}{padding}"), (n == 2).then_some("tablet"));
                let wire::Op { kind: Some(kind) } = append(eid, &item) else {
                    unreachable!()
                };
                apply(&mut replica, kind);
            }
        }
        let commit = wire::Commit {
            eid: "bob".into(),
            device: "phone".into(),
            offset: 4,
        };
        apply(&mut replica, wire::Kind::Commit(commit));
        // The tablet is forgotten at the phone's later start (QUE-11), which releases what it held back; the phone
        // came back just before, so it is not.
        let forget = crate::core::queue::FORGET_AFTER_MS;
        for now in [forget + 999, forget + 1_000] {
            let later = wire::Start {
                eid: "bob".into(),
                device: "phone".into(),
                now,
            };
            apply(&mut replica, wire::Kind::Start(later));
        }
        (replica, ops)
    }

    fn replay(messages: &[Bytes]) -> Replay {
        let mut replay = Replay::default();
        for message in messages {
            replay.message(wire::Batch::decode(message.as_ref()).unwrap()).unwrap();
        }
        replay
    }

    fn assert_same(replayed: &Replica, written: &Replica) {
        assert_eq!(replayed.events, written.events);
        assert_eq!(replayed.state.queue_images(), written.state.queue_images());
        for eid in ["bob", "carol"] {
            assert_eq!(replayed.state.usage(eid), written.state.usage(eid), "{eid}");
        }
    }

    /// A snapshot holds the whole state, events and queues (items, offsets, start times, forgotten devices), in one
    /// message or in several; what follows it applies on top.
    #[test]
    fn a_snapshot_replays_as_the_state_it_was_taken_from() {
        for big in [10, 200 * 1024] {
            let (written, _) = written(big);
            let image = snapshot(&written);
            assert_eq!(image.len() > 1, big > 1024, "large items take several messages");
            assert!(image.iter().all(|m| m.len() <= MAX_MESSAGE_BYTES + 1024));
            let replayed = replay(&image);
            assert!(replayed.building.is_none());
            assert_eq!(replayed.since_base, 0);
            assert_same(&replayed.replica, &written);
            assert_eq!(
                replayed.replica.state.items_after("bob", 0).len(),
                2,
                "bob's first four are confirmed"
            );
            let mut returning = replayed.replica;
            let start = returning.state.start_device("bob", "tablet", 3_000_000_000).unwrap();
            assert!(start.returning, "the forgotten tablet is known as such");
        }
    }

    #[test]
    fn operations_after_a_snapshot_apply_on_top_and_are_counted() {
        // The state written, then the same operations once more on top.
        let (first, more) = written(10);
        let mut expected = first_replica(&first);
        for op in more.clone() {
            expected.apply(op).unwrap();
        }
        let mut messages = snapshot(&first);
        messages.extend(super::messages(more.clone()));
        let replayed = replay(&messages);
        assert_same(&replayed.replica, &expected);
        assert_eq!(replayed.since_base, more.len());
        assert_eq!(replayed.base_ops, first.image().len());
    }

    /// `replica` rebuilt from its own image (a copy).
    fn first_replica(replica: &Replica) -> Replica {
        replay(&snapshot(replica)).replica
    }

    /// A writer that died while writing a snapshot leaves its first messages only: they are dropped, and the state
    /// goes on from before the snapshot with what the next writer wrote.
    #[test]
    fn a_snapshot_cut_short_is_dropped() {
        let (written, ops) = written(200 * 1024);
        let mut messages = super::messages(ops);
        let image = snapshot(&written);
        assert!(image.len() >= 3);
        messages.extend(image[..image.len() - 1].iter().cloned());
        let after = wire::Commit {
            eid: "carol".into(),
            device: "laptop".into(),
            offset: 2,
        };
        let after = wire::Op {
            kind: Some(wire::Kind::Commit(after)),
        };
        messages.extend(super::messages(vec![after.clone()]));
        let replayed = replay(&messages);
        let mut expected = first_replica(&written);
        expected.apply(after).unwrap();
        assert!(replayed.building.is_none());
        assert_same(&replayed.replica, &expected);
        // And a snapshot's later part whose start is gone (purged) is skipped, not applied.
        let replayed = replay(&image[1..]);
        assert!(replayed.replica.state.queue_images().is_empty());
        assert!(replayed.replica.events.is_empty());
    }

    #[test]
    fn a_corrupt_operation_is_an_error_not_a_panic() {
        let mut replica = Replica::default();
        assert!(replica.apply(wire::Op { kind: None }).is_err());
        let bad = wire::Op {
            kind: Some(wire::Kind::Append(wire::Append {
                eid: "bob".into(),
                exclude_device: None,
                encoded: Bytes::from_static(&[0xff, 0xff, 0xff]),
            })),
        };
        assert!(replica.apply(bad).is_err());
        assert!(wire::Batch::decode(&[0x0a, 0xff][..]).is_err());
    }
}
