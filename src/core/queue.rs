//! The offline queue as the engine sees it (SPEC §17): per-EID items with
//! gapless increments, per-device committed offsets, and the per-session
//! record of what was sent, which turns acknowledgments into commits.
//!
//! Storage sits behind [`ChatStore`]; writes are buffered and made durable by
//! one `sync` per batch (group commit): the engine holds back every output
//! produced after a buffered write until that sync succeeded (QUE-2).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use litemap::LiteMap;
use smallvec::SmallVec;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::engine::Engine;
use super::shard::Letter;
use super::{ConnId, Millis, StoreError};
use crate::codec::{self, ErrorKind, Route};
use crate::proto::message_scheme::Payload;

/// One queued stanza: a ChatMessage copy or an AcknowledgmentResponse update.
///
/// The stanza is encoded once, when the item is made: that envelope encoding is what the store writes and what
/// every device is sent of a ChatMessage copy (the copies share its bytes), and its length is the item's size for
/// QUE-10. Besides it the item keeps only what the queue needs to know (which message, which kind): an item is
/// made on a chat's home and kept on its user's, and a decoded stanza would cost a dozen allocations to move and
/// to free on another core.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueItem {
    /// The device that must not receive it (the sending or acking device).
    pub exclude_device: Option<String>,
    /// The message it is about and which kind of item it is; `None` for a stanza that is neither. Shared, not
    /// copied, by every session that records the item as delivered.
    about: Option<(Arc<str>, ItemKind)>,
    encoded: Bytes,
}

impl QueueItem {
    pub fn new(exclude_device: Option<String>, stanza: Payload) -> QueueItem {
        let encoded = Bytes::from(codec::encode(&stanza));
        QueueItem {
            exclude_device,
            about: about(&stanza),
            encoded,
        }
    }

    /// An item read back from its envelope encoding.
    pub fn decode(exclude_device: Option<String>, encoded: Bytes) -> Result<QueueItem, codec::EnvelopeError> {
        let stanza = codec::decode(&encoded, usize::MAX)?;
        Ok(QueueItem {
            exclude_device,
            about: about(&stanza),
            encoded,
        })
    }

    /// Which kind of item it is: a message copy or a state update.
    pub fn kind(&self) -> Option<ItemKind> {
        self.about.as_ref().map(|(_, kind)| *kind)
    }

    /// The message the item is about (a copy's or an update's `message_id`).
    pub fn message_id(&self) -> Option<&str> {
        self.about.as_ref().map(|(id, _)| &**id)
    }

    /// The stanza's envelope encoding, as appended (QUE-12); an AcknowledgmentResponse's `to` is filled per
    /// device on delivery.
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }
}

fn about(stanza: &Payload) -> Option<(Arc<str>, ItemKind)> {
    match stanza {
        Payload::ChatMessage(m) => Some((m.message_id.as_str().into(), ItemKind::Copy)),
        Payload::AcknowledgmentResponse(r) => Some((r.message_id.as_str().into(), ItemKind::Update(r.status))),
        _ => None,
    }
}

/// A durable fact about chat messages, replayed at startup. Each kind is a
/// prost message too: the durable store writes them in that binary form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ChatEvent {
    Accepted(Accepted),
    StateRaised(StateRaised),
}

impl ChatEvent {
    pub fn message_id(&self) -> &str {
        match self {
            ChatEvent::Accepted(a) => &a.message_id,
            ChatEvent::StateRaised(r) => &r.message_id,
        }
    }
}

/// A message accepted (CHAT-4..8), with its resend key (CHAT-14).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, prost::Message)]
pub struct Accepted {
    #[prost(string, tag = "1")]
    pub message_id: String,
    #[prost(string, tag = "2")]
    pub chat_id: String,
    #[prost(int64, tag = "3")]
    pub version: i64,
    #[prost(string, tag = "4")]
    pub sender: String,
    #[prost(string, tag = "5")]
    pub sender_device: String,
    #[prost(string, tag = "6")]
    pub message_id_local: String,
    #[prost(string, tag = "7")]
    pub receiver: String,
    #[prost(int64, tag = "8")]
    pub at: Millis,
}

/// A message's state raised by its receiver (ACK-1).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, prost::Message)]
pub struct StateRaised {
    #[prost(string, tag = "1")]
    pub message_id: String,
    #[prost(int32, tag = "2")]
    pub state: i32,
    #[prost(int64, tag = "3")]
    pub at: Millis,
}

/// A device's session start as the store sees it (QUE-8, QUE-11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceStart {
    /// Replay items above this offset.
    pub committed: u64,
    /// The device had been forgotten (QUE-11): it starts like a new one and is told `history_gap`.
    pub returning: bool,
}

/// QUE-11's limit: a device without a session for this long is forgotten (SPEC §19).
pub const FORGET_AFTER_MS: Millis = 30 * 24 * 60 * 60 * 1000;

/// Durable chat storage: events, queues and offsets. Writes are buffered until `sync`.
pub trait ChatStore: Send {
    fn record(&mut self, event: &ChatEvent) -> Result<(), StoreError>;
    /// Appends to `eid`'s queue; returns the item's increment (1, 2, 3, ... per EID).
    fn append(&mut self, eid: &str, item: QueueItem) -> Result<u64, StoreError>;
    /// Makes every earlier write durable.
    fn sync(&mut self) -> Result<(), StoreError>;
    /// Starts making every earlier write durable without waiting for the disk: `Ok(None)` when that is done
    /// already (the default, a plain [`ChatStore::sync`]), or the fsync to run off the engine's thread
    /// ([`SyncJob`]), whose end [`ChatStore::poll_sync`] reports. Writes made meanwhile wait for the next sync.
    fn begin_sync(&mut self) -> Result<Option<SyncJob>, StoreError> {
        self.sync().map(|()| None)
    }
    /// Whether the sync [`ChatStore::begin_sync`] started has ended (`Ready` also when none is out).
    fn poll_sync(&mut self) -> std::task::Poll<Result<(), StoreError>> {
        std::task::Poll::Ready(Ok(()))
    }
    /// Retained items of `eid` with increment > `after`, in order.
    fn items_after(&self, eid: &str, after: u64) -> Vec<(u64, QueueItem)>;
    /// The oldest retained increment of `eid` (last_increment + 1 when none is retained).
    fn oldest_retained(&self, eid: &str) -> u64;
    /// (retained items, their encoded bytes) of `eid` (QUE-10).
    fn usage(&self, eid: &str) -> (usize, usize);
    /// The committed offset of a known device; None for a device never seen.
    fn committed(&self, eid: &str, device: &str) -> Option<u64>;
    /// Sets a device's committed offset (never lower; buffered until `sync`).
    fn commit(&mut self, eid: &str, device: &str, offset: u64) -> Result<(), StoreError>;
    /// A session of `device` starts at `now` (its last-seen time, buffered until `sync`): a device never seen, or
    /// forgotten because its last session started [`FORGET_AFTER_MS`] or more before `now`, starts at the oldest
    /// retained item (QUE-8, QUE-11); a known one at its committed offset.
    fn start_device(&mut self, eid: &str, device: &str, now: Millis) -> Result<DeviceStart, StoreError>;
    /// The users with a queue here.
    fn users(&self) -> Vec<String>;
}

/// The blocking half of a pipelined sync ([`ChatStore::begin_sync`]): the adapter runs it where blocking is fine
/// (not on the thread that runs the engine), then polls the engine again, which then releases what waited for it.
/// Clones share the one job: whichever runs first runs it (outputs are `Clone` for the tests that compare them).
#[must_use = "run it, or the engine's outputs that wait for it never leave"]
#[derive(Clone)]
pub struct SyncJob(std::sync::Arc<std::sync::Mutex<Option<Fsync>>>);

type Fsync = Box<dyn FnOnce() + Send>;

impl SyncJob {
    pub fn new(run: impl FnOnce() + Send + 'static) -> SyncJob {
        SyncJob(std::sync::Arc::new(std::sync::Mutex::new(Some(Box::new(run)))))
    }

    /// Runs the fsync (blocking), unless a clone already did.
    pub fn run(self) {
        let job = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(job) = job {
            job();
        }
    }
}

impl PartialEq for SyncJob {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for SyncJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncJob")
    }
}

/// Chat storage in memory: for tests and simulations without restarts.
#[derive(Debug, Default)]
pub struct MemoryChatStore {
    pub events: Vec<ChatEvent>,
    queues: BTreeMap<String, MemoryQueue>,
    /// Writes since the last sync (observable in tests: QUE-2).
    pub unsynced_writes: usize,
    pub syncs: usize,
    /// When every queue is next swept for devices to forget (QUE-11), as the durable store's retention runs: a
    /// sweep at every session start would cost every session start a pass over every user.
    next_sweep: Millis,
}

/// How often (engine time) every queue is swept for devices to forget; a starting device's own queue always is.
const SWEEP_EVERY_MS: Millis = 60 * 60 * 1000;

/// One EID's whole queue: what a store that writes its state out whole (a cluster's snapshot, `cluster::chat_stream`)
/// writes and reads back.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueImage {
    pub eid: String,
    /// The increment of `items[0]`; the queue's last increment is that of its last item (`low - 1` with none).
    pub low: u64,
    pub items: Vec<QueueItem>,
    /// Each known device's committed offset.
    pub offsets: Vec<(String, u64)>,
    /// When each known device's latest session started.
    pub last_seen: Vec<(String, Millis)>,
    /// Devices forgotten (QUE-11) that have not returned since.
    pub forgotten: Vec<String>,
}

impl MemoryChatStore {
    /// Every queue, whole.
    pub fn queue_images(&self) -> Vec<QueueImage> {
        self.queues
            .iter()
            .map(|(eid, queue)| QueueImage {
                eid: eid.clone(),
                low: queue.low,
                items: queue.items.iter().cloned().collect(),
                offsets: queue.offsets.iter().map(|(d, o)| (d.clone(), *o)).collect(),
                last_seen: queue.last_seen.iter().map(|(d, at)| (d.clone(), *at)).collect(),
                forgotten: queue.forgotten.iter().map(|(d, ())| d.clone()).collect(),
            })
            .collect()
    }

    /// Puts back a queue [`MemoryChatStore::queue_images`] gave, in place of any queue of its EID.
    pub fn restore_queue(&mut self, image: QueueImage) {
        let low = image.low.max(1);
        let queue = MemoryQueue {
            last_increment: low - 1 + image.items.len() as u64,
            low,
            bytes: image.items.iter().map(encoded_len).sum(),
            items: image.items.into(),
            offsets: image.offsets.into_iter().collect(),
            last_seen: image.last_seen.into_iter().collect(),
            forgotten: image.forgotten.into_iter().map(|d| (d, ())).collect(),
        };
        self.queues.insert(image.eid, queue);
    }

    /// Puts `items` back after those of `eid`'s restored queue, as they were: none is released here.
    pub fn restore_items(&mut self, eid: &str, items: Vec<QueueItem>) {
        let queue = self.queues.entry(eid.to_string()).or_default();
        queue.last_increment += items.len() as u64;
        queue.bytes += items.iter().map(encoded_len).sum::<usize>();
        queue.items.extend(items);
    }
}

/// One EID's queue. Items are released only from the front (QUE-9), so they are a deque from `low` on; the
/// per-device state is a few entries per user, so sorted vectors rather than a tree node each.
#[derive(Debug)]
struct MemoryQueue {
    last_increment: u64,
    /// The increment of `items[0]` (`last_increment + 1` when empty).
    low: u64,
    items: VecDeque<QueueItem>,
    bytes: usize,
    offsets: LiteMap<String, u64>,
    /// When each known device's latest session started.
    last_seen: LiteMap<String, Millis>,
    /// Devices forgotten (QUE-11) that have not returned since.
    forgotten: LiteMap<String, ()>,
}

impl Default for MemoryQueue {
    fn default() -> Self {
        MemoryQueue {
            last_increment: 0,
            low: 1,
            items: VecDeque::new(),
            bytes: 0,
            // Room for the one device most users have: a vector's first growth would make room for four.
            offsets: LiteMap::with_capacity(1),
            last_seen: LiteMap::with_capacity(1),
            forgotten: LiteMap::new(),
        }
    }
}

impl MemoryQueue {
    /// QUE-11: forgets the devices whose latest session started `FORGET_AFTER_MS` or more before `now`; they no
    /// longer hold items back.
    fn forget_stale(&mut self, now: Millis) {
        let stale: Vec<String> = self
            .last_seen
            .iter()
            .filter(|(_, seen)| seen.saturating_add(FORGET_AFTER_MS) <= now)
            .map(|(d, _)| d.clone())
            .collect();
        for device in stale {
            self.last_seen.remove(&device);
            self.offsets.remove(&device);
            self.forgotten.insert(device, ());
        }
        self.retain();
    }

    /// QUE-9: drop items every known device confirmed (or is excluded from).
    fn retain(&mut self) {
        if self.offsets.is_empty() {
            return;
        }
        while let Some(item) = self.items.front() {
            let i = self.low;
            let done = self
                .offsets
                .iter()
                .all(|(device, c)| *c >= i || item.exclude_device.as_deref() == Some(device.as_str()));
            if !done {
                break;
            }
            if let Some(item) = self.items.pop_front() {
                self.bytes -= encoded_len(&item);
                self.low += 1;
            }
        }
    }
}

fn encoded_len(item: &QueueItem) -> usize {
    item.encoded.len()
}

impl ChatStore for MemoryChatStore {
    fn record(&mut self, event: &ChatEvent) -> Result<(), StoreError> {
        self.events.push(event.clone());
        self.unsynced_writes += 1;
        Ok(())
    }

    fn append(&mut self, eid: &str, item: QueueItem) -> Result<u64, StoreError> {
        let queue = self.queues.entry(eid.to_string()).or_default();
        queue.last_increment += 1;
        queue.bytes += encoded_len(&item);
        queue.items.push_back(item);
        let increment = queue.last_increment;
        // An item only the excluded device could hold back is not retained.
        queue.retain();
        self.unsynced_writes += 1;
        Ok(increment)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.unsynced_writes = 0;
        self.syncs += 1;
        Ok(())
    }

    fn items_after(&self, eid: &str, after: u64) -> Vec<(u64, QueueItem)> {
        let Some(queue) = self.queues.get(eid) else {
            return Vec::new();
        };
        let skip = usize::try_from((after + 1).saturating_sub(queue.low)).unwrap_or(usize::MAX);
        (queue.low..)
            .zip(&queue.items)
            .skip(skip)
            .map(|(i, item)| (i, item.clone()))
            .collect()
    }

    fn oldest_retained(&self, eid: &str) -> u64 {
        self.queues.get(eid).map_or(1, |q| q.low)
    }

    fn usage(&self, eid: &str) -> (usize, usize) {
        self.queues.get(eid).map_or((0, 0), |q| (q.items.len(), q.bytes))
    }

    fn committed(&self, eid: &str, device: &str) -> Option<u64> {
        self.queues.get(eid)?.offsets.get(device).copied()
    }

    fn commit(&mut self, eid: &str, device: &str, offset: u64) -> Result<(), StoreError> {
        let queue = self.queues.entry(eid.to_string()).or_default();
        match queue.offsets.get_mut(device) {
            Some(c) => *c = (*c).max(offset),
            None => {
                queue.offsets.insert(device.to_string(), offset);
            }
        }
        queue.retain();
        self.unsynced_writes += 1;
        Ok(())
    }

    fn start_device(&mut self, eid: &str, device: &str, now: Millis) -> Result<DeviceStart, StoreError> {
        if now >= self.next_sweep {
            for queue in self.queues.values_mut() {
                queue.forget_stale(now);
            }
            self.next_sweep = now.saturating_add(SWEEP_EVERY_MS);
        }
        let queue = self.queues.entry(eid.to_string()).or_default();
        queue.forget_stale(now);
        let start = match queue.offsets.get(device) {
            Some(&committed) => DeviceStart {
                committed,
                returning: false,
            },
            None => {
                let committed = queue.low - 1;
                queue.offsets.insert(device.to_string(), committed);
                DeviceStart {
                    committed,
                    returning: queue.forgotten.remove(device).is_some(),
                }
            }
        };
        match queue.last_seen.get_mut(device) {
            Some(seen) => *seen = now,
            None => {
                queue.last_seen.insert(device.to_string(), now);
            }
        }
        self.unsynced_writes += 1;
        Ok(start)
    }

    fn users(&self) -> Vec<String> {
        self.queues.keys().cloned().collect()
    }
}

/// A [`MemoryChatStore`] shared between engines: a simulated restart hands the
/// same storage to a new engine, as a durable store would survive one.
#[derive(Debug, Clone, Default)]
pub struct SharedChatStore(pub std::sync::Arc<std::sync::Mutex<MemoryChatStore>>);

impl SharedChatStore {
    fn with<T>(&self, f: impl FnOnce(&mut MemoryChatStore) -> T) -> T {
        // A poisoned lock means a test already failed; keep its data visible.
        let mut guard = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// The events a restarted engine replays.
    pub fn events(&self) -> Vec<ChatEvent> {
        self.with(|s| s.events.clone())
    }
}

impl ChatStore for SharedChatStore {
    fn record(&mut self, event: &ChatEvent) -> Result<(), StoreError> {
        self.with(|s| s.record(event))
    }
    fn append(&mut self, eid: &str, item: QueueItem) -> Result<u64, StoreError> {
        self.with(|s| s.append(eid, item))
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        self.with(|s| s.sync())
    }
    fn items_after(&self, eid: &str, after: u64) -> Vec<(u64, QueueItem)> {
        self.with(|s| s.items_after(eid, after))
    }
    fn oldest_retained(&self, eid: &str) -> u64 {
        self.with(|s| s.oldest_retained(eid))
    }
    fn usage(&self, eid: &str) -> (usize, usize) {
        self.with(|s| s.usage(eid))
    }
    fn committed(&self, eid: &str, device: &str) -> Option<u64> {
        self.with(|s| s.committed(eid, device))
    }
    fn commit(&mut self, eid: &str, device: &str, offset: u64) -> Result<(), StoreError> {
        self.with(|s| s.commit(eid, device, offset))
    }
    fn start_device(&mut self, eid: &str, device: &str, now: Millis) -> Result<DeviceStart, StoreError> {
        self.with(|s| s.start_device(eid, device, now))
    }
    fn users(&self) -> Vec<String> {
        self.with(|s| s.users())
    }
}

/// Which queued stanza an item is: a message copy, or a state update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ItemKind {
    Copy,
    Update(i32),
}

/// What an acknowledgment confirms of the acking device's items (QUE-4, QUE-5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Confirm {
    pub message_id: String,
    pub status: i32,
    pub receiver_side: bool,
    /// The session's highest increment when the acknowledgment arrived.
    pub upto: u64,
}

/// What one session was sent from its user's queue (SPEC 17.2's `s`).
#[derive(Debug, Default)]
pub(super) struct Delivered {
    /// message_id -> (kind, increment) of each item about it sent in this session: a message has a copy and a few
    /// updates, and the id is the queue item's own (shared, not copied), so an acknowledgment finds its items by
    /// the id it carries without building a key.
    pub items: BTreeMap<Arc<str>, SmallVec<[(ItemKind, u64); 2]>>,
    /// The highest increment sent in this session.
    pub last: u64,
}

impl Engine {
    /// Sends one queue item to a device, recording it for later confirmation.
    pub(super) fn deliver_item(&mut self, conn: ConnId, increment: u64, item: &QueueItem) {
        let Some(me) = self.identity(conn).cloned() else { return };
        if item.exclude_device.as_deref() == Some(&*me.device) {
            return;
        }
        let Some((message_id, kind)) = item.about.clone() else {
            return;
        };
        self.with_session(conn, |s| {
            let delivered = s.delivered.get_or_insert_with(Box::default);
            let items = delivered.items.entry(message_id).or_default();
            match items.iter_mut().find(|(k, _)| *k == kind) {
                Some(known) => known.1 = increment,
                None => items.push((kind, increment)),
            }
            delivered.last = delivered.last.max(increment);
        });
        match kind {
            ItemKind::Copy => self.send_encoded(conn, Route::ChatMessage, item.encoded.clone()),
            ItemKind::Update(_) => {
                // Made by this server, so it decodes; its `to` names each device.
                if let Ok(Payload::AcknowledgmentResponse(mut update)) = codec::decode(&item.encoded, usize::MAX) {
                    update.to = Some(me.to_proto());
                    self.send(conn, Payload::AcknowledgmentResponse(update));
                }
            }
        }
    }

    /// QUE-3, QUE-8, QUE-11: at session start, tells a returning forgotten device `history_gap`, then replays
    /// the device's unconfirmed items.
    pub(super) fn replay_queue(&mut self, conn: ConnId, now: Millis) {
        let Some(me) = self.identity(conn).cloned() else { return };
        let Ok(start) = self.chat_store.start_device(&me.eid, &me.device, now) else {
            // Nothing is replayed this session; the items stay for the next one (QUE-6).
            return;
        };
        self.mark_unsynced();
        if start.returning {
            // Informational (SPEC SES-4's order: right after the Authenticate RESPONSE); not a failure of the
            // client, so it does not count towards the consecutive-error limit.
            let kind = ErrorKind::HistoryGap;
            *self.stats.errors.entry(kind.code()).or_default() += 1;
            let details = "this device was forgotten after 30 days without a session; older history is gone";
            let message = kind.to_message(None, details, "", now);
            self.send(conn, Payload::ErrorMessage(message));
        }
        for (increment, item) in self.chat_store.items_after(&me.eid, start.committed) {
            self.deliver_item(conn, increment, &item);
        }
        self.report_usage(&me.eid);
    }

    /// QUE-10 on the chat's home: is `eid`'s queue full? Exact for a user of this shard; for another shard's user,
    /// as its home last said ([`Engine::report_usage`]), so messages already on their way may pass the limit.
    pub(super) fn queue_full(&self, eid: &str) -> bool {
        if !self.shard.owns(eid) {
            return self.crossing.full.contains(eid);
        }
        let (items, bytes) = self.chat_store.usage(eid);
        items + 1 > self.config.queue_max_items || bytes > self.config.queue_max_bytes
    }

    /// Tells the other shards when a user's queue became full or has room again (QUE-10). The news goes out
    /// before this shard's `Appended` for the item that filled it, so a sender that waits for its VersionUpdate
    /// never passes the limit.
    fn report_usage(&mut self, eid: &str) {
        if self.shard.count == 1 {
            return;
        }
        let full = self.queue_full(eid);
        if full == self.crossing.full.contains(eid) {
            return;
        }
        if full {
            self.crossing.full.insert(eid.to_string());
        } else {
            self.crossing.full.remove(eid);
        }
        self.broadcast(Letter::QueueFull {
            eid: eid.to_string(),
            full,
        });
    }

    /// Appends an item to `eid`'s queue and delivers it live to the online
    /// devices it does not exclude (QUE-1).
    pub(super) fn enqueue(&mut self, eid: &str, item: QueueItem) -> Result<(), StoreError> {
        let increment = self.chat_store.append(eid, item.clone())?;
        self.mark_unsynced();
        let devices: Vec<ConnId> = self.registry.devices(eid).map(|(_, c)| c).collect();
        for conn in devices {
            self.deliver_item(conn, increment, &item);
        }
        self.report_usage(eid);
        Ok(())
    }

    /// QUE-4, QUE-5: commits the device's offset up to the items this
    /// acknowledgment confirms among those sent in this session.
    /// Only items sent before the acknowledgment arrived count (`upto`, the session's highest increment then): one
    /// sent while the chat's home was deciding may still be on its way to the device.
    pub(super) fn confirm_items(&mut self, conn: ConnId, confirm: &Confirm) {
        let Confirm {
            message_id,
            status,
            receiver_side,
            upto,
        } = confirm;
        let (status, receiver_side) = (*status, *receiver_side);
        let Some(me) = self.identity(conn).cloned() else { return };
        let confirmed = self.with_session(conn, |s| {
            s.delivered
                .as_ref()?
                .items
                .get(message_id.as_str())?
                .iter()
                .filter(|(_, i)| *i <= *upto)
                .filter(|(kind, _)| match kind {
                    ItemKind::Copy => (receiver_side && status >= 2) || (!receiver_side && status == 4),
                    // A receiver device acknowledges what its user did, which may be what a sibling's update it never
                    // received says too: only a sender device's echo proves an update arrived (QUE-4).
                    ItemKind::Update(s) => !receiver_side && *s == status,
                })
                .map(|(_, i)| *i)
                .max()
        });
        if let Some(Some(n)) = confirmed
            && self.chat_store.commit(&me.eid, &me.device, n).is_ok()
        {
            self.mark_unsynced();
            self.report_usage(&me.eid);
        }
    }
}
