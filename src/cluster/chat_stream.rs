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
    Accepted, ChatEvent, ChatStore, DeviceStart, MemoryChatStore, QueueItem, StateRaised, SyncJob,
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
        // The state is the sum of the operations: none is removed (compaction is not built yet, issue 17).
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
        #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5")]
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
        };
        written.map_err(|e| e.to_string())
    }

    fn record(&mut self, event: ChatEvent) -> Result<(), StoreError> {
        self.state.record(&event)?;
        // The memory store keeps every event for tests; here they are the stream's, and only a start needs them.
        self.state.events.clear();
        self.events.push(event);
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
        let mut replica = Replica::default();
        let mut operations = 0usize;
        super::jetstream::read(&publisher.stream, &publisher.subject, last, |stored| {
            let bad = |why: String| {
                ClusterError::JetStream(format!("message {} of {}: {why}", stored.sequence, stored.subject))
            };
            let batch = wire::Batch::decode(stored.payload).map_err(|e| bad(e.to_string()))?;
            operations += batch.ops.len();
            for op in batch.ops {
                replica.apply(op).map_err(bad)?;
            }
            Ok(())
        })
        .await?;
        tracing::info!(shard, operations, last, "chat state replayed from JetStream");
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
    let mut messages = Vec::new();
    let mut batch = wire::Batch::default();
    let mut size = 0;
    for op in ops {
        let len = op.encoded_len() + 8;
        if size + len > MAX_MESSAGE_BYTES && !batch.ops.is_empty() {
            messages.push(Bytes::from(std::mem::take(&mut batch).encode_to_vec()));
            size = 0;
        }
        size += len;
        batch.ops.push(op);
    }
    if !batch.ops.is_empty() {
        messages.push(Bytes::from(batch.encode_to_vec()));
    }
    messages
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
