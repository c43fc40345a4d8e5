//! The engine's [`ChatStore`] on the durable queue ([`QueueStore`]): what `bimip serve` keeps in
//! `DATA_DIR/queue`.
//!
//! Everything chat needs to survive a restart lives in the one append-only log, so that one fsync makes a whole
//! batch durable (group commit, QUE-2):
//! - each user's queue items are the user's EID queue; an item's payload is the stanza's envelope encoding
//!   (`codec::encode`, so QUE-10's byte count is the store's payload sum) and its excluded device is the store's;
//! - device offsets and last-seen times are the store's device records ([`QueueStore::touch`] at session start);
//! - the chat event log is the queue of [`EVENTS_EID`], a name no user can have (it has no `@`), with binary
//!   (prost) payloads, `wire` below: the [`ChatEvent`]s (accepted messages with their versions and resend keys,
//!   raised states) and checkpoints of the chat state they build. Logs written as JSON before still open.
//!
//! # Checkpoints (SPEC §17, the decision on bounded start-up)
//!
//! Start-up reads the latest complete checkpoint and the events after it, never the whole history. A checkpoint is
//! a header record, one record per remembered message (its accepted fields, its state, and the highest increment of
//! its items in each queue), and an end record that counts the entries. The entries are written over the syncs
//! after the header, in message id order from a cursor, at each sync twice as many messages as the batch had
//! events (at least 64, at most [`ChatStoreConfig::checkpoint_chunk`]): so a checkpoint costs each batch work in
//! proportion to its own, never a pass over the whole state at once. Later
//! batches' events and item records come between the entries: each entry is its message as it is when written,
//! and an open applies every record after the header to the checkpoint being read as well, so an entry read after
//! an event already holds it and an event read after an entry is applied on top. Once the end record is durable
//! the event log is trimmed up to the header ([`QueueStore::trim`]) and retention releases the old segments. A
//! checkpoint without its end (a crash cut it, or a new header follows) is ignored: the one before it and its tail
//! still stand, because the trim that would drop them is only written after the new checkpoint is complete and
//! durable. (Logs written before name the entry count in the header, with no end record; they still open.)
//!
//! A checkpoint is written at a sync once the events since the last one reach the larger of
//! [`ChatStoreConfig::checkpoint_min_events`] and the last checkpoint's size, so writing them costs O(1) per event
//! and an open reads at most about twice the remembered state plus that minimum.
//!
//! A checkpoint keeps (as the cursor reaches it) every message that is the latest of its chat (the chat's version), was accepted less
//! than [`RESEND_WINDOW_MS`] ago (CHAT-15), still has an item in a queue (CHAT-15's "as long as retained", and so
//! that a device confirming it is not told `not_found`), or is below READ (its receiver may still raise it, which
//! appends items). Other messages are forgotten as the cursor passes them: no item of theirs is left and none can be appended (a READ
//! message's state never changes again, ACK-1); after the next restart an acknowledgment of one is answered 404
//! `not_found` and a resend of it is a new message.
//!
//! Item positions are tracked from the appends and logged once per batch, at its sync, as one record listing where
//! the batch's items went. For the events after the last such record (a crash cut their batch) an open takes each
//! queue's last increment as the bound (items of a message are only appended in the batch of its event, so none
//! can be higher), which can only keep a message longer.
//!
//! # Sync and reads
//!
//! Writes are buffered until [`ChatStore::sync`]. Items appended since the last sync are also returned by
//! `items_after`: the engine holds back every output produced after a buffered write until the sync succeeded, so
//! a device can never be sent an item that is not durable, and a session that starts in the same batch as an
//! append must still see that item (QUE-3). After a restart only durable items exist.
//!
//! Retention ([`QueueStore::retain`]: QUE-9 removal, QUE-11 forgetting, segment compaction) runs at a session
//! start once [`RETAIN_EVERY_MS`] of the engine's time has passed since the last run, and before the session
//! start of a device whose last session is older than the forgetting limit, so a returning device is always
//! recognised (QUE-11) whatever the schedule.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::core::queue::{Accepted, ChatEvent, ChatStore, DeviceStart, QueueItem, StateRaised, SyncJob};
use crate::core::{Millis, StoreError};
use crate::store::queue::{
    DeviceStatus, Fs, FsFile, FsyncDone, QueueConfig, QueueError, QueueStore, SpareDone, SyncTicket,
};

/// The queue that holds the chat event log. Not an EID: valid EIDs contain exactly one `@`.
pub const EVENTS_EID: &str = "#chat-events";

/// How often (in the engine's time) retention runs, at the next session start.
pub const RETAIN_EVERY_MS: Millis = 60 * 60 * 1000;

/// CHAT-15's minimum: resend detection lasts at least this long after acceptance (SPEC §19).
pub const RESEND_WINDOW_MS: Millis = 24 * 60 * 60 * 1000;

/// READ, the last message state (ACK-1).
const READ: i32 = 3;

/// Why the durable chat store could not open.
#[derive(Debug, thiserror::Error)]
pub enum ChatStoreError {
    #[error("offline queue: {0}")]
    Queue(#[from] QueueError),
    #[error("chat event {increment} in the offline queue is not a chat event: {reason}")]
    BadEvent { increment: u64, reason: String },
}

/// Tunables of the chat store (the queue's are [`QueueConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatStoreConfig {
    /// A checkpoint is written once at least this many events (and at least the last checkpoint's size) were
    /// recorded since the last one.
    pub checkpoint_min_events: u64,
    /// Checkpoint entries written per sync (module doc): the most one sync adds for a checkpoint.
    pub checkpoint_chunk: usize,
    /// How the log's spare segments are prepared ([`QueueStore::spare_job`]).
    pub spares: Spares,
    /// Syncs hand their fsync to the caller ([`ChatStore::begin_sync`]) instead of waiting for it: for a server
    /// that runs fsyncs on a thread of their own. Off, a sync returns once durable (simulations, crash tests).
    pub pipelined: bool,
}

impl Default for ChatStoreConfig {
    fn default() -> Self {
        ChatStoreConfig {
            checkpoint_min_events: 10_000,
            checkpoint_chunk: CHECKPOINT_CHUNK,
            spares: Spares::Off,
            pipelined: false,
        }
    }
}

/// Who prepares the log's spare segments, which make the fsync that acknowledges a batch write data only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spares {
    /// None: segments are created empty.
    Off,
    /// At a sync, when the log wants one, in the caller's thread: deterministic, for simulations and crash tests
    /// (the sync's caller waits for a whole segment of zeros, so only with small segments).
    Inline,
    /// On a thread of their own (`bimip serve`): I/O outside the caller's control, which a deterministic
    /// simulation cannot have.
    Thread,
}

/// What opening read of the chat event log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatOpenReport {
    /// Records of the event log read (checkpoint header and entries, events, torn checkpoints).
    pub records_read: u64,
    /// Entries of the checkpoint the state started from (0: none).
    pub checkpoint_entries: u64,
    /// Events after that checkpoint.
    pub tail_events: u64,
    /// Records of where items went, after that checkpoint.
    pub item_records: u64,
    /// Records of a torn checkpoint, ignored.
    pub ignored_records: u64,
    /// Messages remembered after the open.
    pub messages: u64,
}

/// One record of the event log: an engine event, or the store's checkpoint records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum LogRecord {
    Event(ChatEvent),
    Store(StoreRecord),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
enum StoreRecord {
    /// The next `entries` records are the checkpoint's messages (written whole before checkpoints were spread over
    /// syncs; still read).
    Checkpoint {
        entries: u64,
    },
    /// A checkpoint's header: its entries follow, up to the [`StoreRecord::CheckpointEnd`] that counts them.
    CheckpointStart,
    /// The end of the checkpoint begun by the last [`StoreRecord::CheckpointStart`], which wrote `entries` entries.
    CheckpointEnd {
        entries: u64,
    },
    Message(Remembered),
    /// Where one batch's items went: (message_id, eid, increment), written at the batch's sync.
    Items {
        items: Vec<(String, String, u64)>,
    },
}

/// A message as the store remembers it: what the engine's chat state holds of it, and where its items are.
/// Written as a checkpoint entry in its binary form (the prost tags below, [`wire`]).
/// (JSON checkpoints, written before, hold the accepted fields flat beside the others.)
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, prost::Message)]
struct Remembered {
    #[serde(flatten)]
    #[prost(message, required, tag = "1")]
    accepted: Accepted,
    #[prost(int32, tag = "2")]
    state: i32,
    #[prost(int64, tag = "3")]
    state_at: Millis,
    /// The highest increment of an item of this message in each queue (EID) that has one.
    #[prost(btree_map = "string, uint64", tag = "4")]
    items: BTreeMap<String, u64>,
}

impl Remembered {
    /// The events that rebuild this message in the engine (`ChatState::apply`).
    fn events(&self) -> impl Iterator<Item = ChatEvent> {
        let raised = (self.state > 1).then(|| {
            ChatEvent::StateRaised(StateRaised {
                message_id: self.accepted.message_id.clone(),
                state: self.state,
                at: self.state_at,
            })
        });
        std::iter::once(ChatEvent::Accepted(self.accepted.clone())).chain(raised)
    }
}

/// The chat state as the store sees it: what a checkpoint holds.
#[derive(Debug, Default)]
struct Mirror {
    messages: BTreeMap<String, Remembered>,
    /// chat_id -> (version, message_id) of the chat's latest message.
    latest: BTreeMap<String, (i64, String)>,
}

impl Mirror {
    /// Mirrors `ChatState::apply`.
    fn apply(&mut self, event: &ChatEvent) {
        match event {
            ChatEvent::Accepted(a) => self.insert(Remembered {
                accepted: a.clone(),
                state: 1,
                state_at: a.at,
                items: BTreeMap::new(),
            }),
            ChatEvent::StateRaised(r) => {
                if let Some(m) = self.messages.get_mut(&r.message_id)
                    && r.state > m.state
                {
                    m.state = r.state;
                    m.state_at = r.at;
                }
            }
        }
    }

    fn insert(&mut self, m: Remembered) {
        let a = &m.accepted;
        let latest = self
            .latest
            .entry(a.chat_id.clone())
            .or_insert((a.version, a.message_id.clone()));
        if a.version >= latest.0 {
            *latest = (a.version, a.message_id.clone());
        }
        self.messages.insert(a.message_id.clone(), m);
    }

    fn note_item(&mut self, message_id: &str, eid: &str, increment: u64) {
        if let Some(m) = self.messages.get_mut(message_id) {
            let at = m.items.entry(eid.to_string()).or_default();
            *at = (*at).max(increment);
        }
    }

    fn events(&self) -> Vec<ChatEvent> {
        self.messages.values().flat_map(Remembered::events).collect()
    }
}

/// The event log's records on disk: binary (prost) since the store stopped writing JSON, which cost more CPU
/// than the rest of a message's durable path (BENCHMARKS.md). A JSON record starts with `{`, which no binary
/// record does (a binary record starts with the tag of its kind, field 1 to 5 of wire type 2), so logs written
/// before still open.
mod wire {
    use super::{Accepted, ChatEvent, LogRecord, Remembered, StateRaised, StoreRecord};

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Record {
        #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6")]
        pub kind: Option<Kind>,
    }

    /// The field number of [`Kind::Message`], for entries encoded from a borrowed message.
    pub const MESSAGE_TAG: u32 = 4;

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Accepted(Accepted),
        #[prost(message, tag = "2")]
        Raised(StateRaised),
        #[prost(message, tag = "3")]
        Checkpoint(Checkpoint),
        #[prost(message, tag = "4")]
        Message(Remembered),
        #[prost(message, tag = "5")]
        Items(Items),
        #[prost(message, tag = "6")]
        CheckpointEnd(Checkpoint),
    }

    /// A header ([`Kind::Checkpoint`]) or an end ([`Kind::CheckpointEnd`]).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Checkpoint {
        #[prost(uint64, tag = "1")]
        pub entries: u64,
        /// A header whose entry count comes in its end record.
        #[prost(bool, tag = "2")]
        pub open: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Items {
        #[prost(message, repeated, tag = "1")]
        pub items: Vec<Item>,
    }

    /// Where one item of a message went.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Item {
        #[prost(string, tag = "1")]
        pub message_id: String,
        #[prost(string, tag = "2")]
        pub eid: String,
        #[prost(uint64, tag = "3")]
        pub increment: u64,
    }

    pub fn encode(kind: Kind) -> Vec<u8> {
        prost::Message::encode_to_vec(&Record { kind: Some(kind) })
    }

    pub fn event(event: &ChatEvent) -> Kind {
        match event {
            ChatEvent::Accepted(a) => Kind::Accepted(a.clone()),
            ChatEvent::StateRaised(r) => Kind::Raised(r.clone()),
        }
    }

    pub fn store(record: StoreRecord) -> Kind {
        match record {
            StoreRecord::Checkpoint { entries } => Kind::Checkpoint(Checkpoint { entries, open: false }),
            StoreRecord::CheckpointStart => Kind::Checkpoint(Checkpoint { entries: 0, open: true }),
            StoreRecord::CheckpointEnd { entries } => Kind::CheckpointEnd(Checkpoint { entries, open: false }),
            StoreRecord::Message(m) => Kind::Message(m),
            StoreRecord::Items { items } => Kind::Items(Items {
                items: items
                    .into_iter()
                    .map(|(message_id, eid, increment)| Item {
                        message_id,
                        eid,
                        increment,
                    })
                    .collect(),
            }),
        }
    }

    /// A record as read back, binary or (written before) JSON.
    pub fn decode(payload: &[u8]) -> Result<LogRecord, String> {
        if payload.first() == Some(&b'{') {
            return serde_json::from_slice(payload).map_err(|e| e.to_string());
        }
        let record: Record = prost::Message::decode(payload).map_err(|e| e.to_string())?;
        Ok(match record.kind.ok_or("a record of no known kind")? {
            Kind::Accepted(a) => LogRecord::Event(ChatEvent::Accepted(a)),
            Kind::Raised(r) => LogRecord::Event(ChatEvent::StateRaised(r)),
            Kind::Checkpoint(Checkpoint { open: true, .. }) => LogRecord::Store(StoreRecord::CheckpointStart),
            Kind::Checkpoint(c) => LogRecord::Store(StoreRecord::Checkpoint { entries: c.entries }),
            Kind::CheckpointEnd(c) => LogRecord::Store(StoreRecord::CheckpointEnd { entries: c.entries }),
            Kind::Message(m) => LogRecord::Store(StoreRecord::Message(m)),
            Kind::Items(i) => LogRecord::Store(StoreRecord::Items {
                items: i
                    .items
                    .into_iter()
                    .map(|i| (i.message_id, i.eid, i.increment))
                    .collect(),
            }),
        })
    }
}

fn encode_record(record: StoreRecord) -> Vec<u8> {
    wire::encode(wire::store(record))
}

/// A checkpoint entry from a borrowed message: the same bytes as `encode_record(StoreRecord::Message(..))`.
fn encode_message_entry(m: &Remembered, buf: &mut Vec<u8>) {
    prost::encoding::message::encode(wire::MESSAGE_TAG, m, buf);
}

/// Whether a checkpoint at `now` keeps `m` (module doc).
fn keeps<F: Fs>(latest: &BTreeMap<String, (i64, String)>, queue: &QueueStore<F>, now: Millis, m: &Remembered) -> bool {
    let a = &m.accepted;
    latest.get(&a.chat_id).is_some_and(|(_, id)| *id == a.message_id)
        || a.at.saturating_add(RESEND_WINDOW_MS) > now
        || m.state < READ
        || m.items.iter().any(|(eid, last)| *last >= queue.oldest_retained(eid))
}

/// Most messages a sync visits for a checkpoint, by default: a checkpoint of the whole remembered state in one
/// batch stalled every connection of the shard for as long as it took (p99 of chat at 10,000 msgs/s 206 ms with it,
/// 20 ms without; BENCHMARKS.md), so it is spread over the syncs that follow its header.
const CHECKPOINT_CHUNK: usize = 1_000;

/// Fewest messages a sync visits for a checkpoint (unless `checkpoint_chunk` is lower): a quiet log still finishes
/// its checkpoint.
const CHECKPOINT_MIN_VISITS: usize = 64;

/// A checkpoint whose header is written and whose entries are being written, in message id order.
#[derive(Debug)]
struct CheckpointInProgress {
    /// The header's increment: the log is trimmed to it once every entry is durable.
    header: u64,
    /// The last message visited: the next sync goes on after it.
    cursor: Option<String>,
    /// How many entries are written.
    written: u64,
}

/// [`ChatStore`] over a [`QueueStore`] (module doc).
#[derive(Debug)]
pub struct DurableChatStore<F: Fs> {
    queue: QueueStore<F>,
    cfg: ChatStoreConfig,
    mirror: Mirror,
    /// Events recorded since the last checkpoint (or the open's tail).
    events_since_checkpoint: u64,
    /// Events recorded since the last sync: a checkpoint in progress visits twice as many messages at that sync.
    batch_events: u64,
    /// Entries of the last checkpoint.
    checkpoint_size: u64,
    /// The header increment of a checkpoint made durable by a sync: the event log is trimmed to it at the next one.
    trim_to: Option<u64>,
    /// The checkpoint being written, a chunk per sync.
    checkpoint: Option<CheckpointInProgress>,
    /// The latest engine time seen (acceptances, session starts): a checkpoint judges the windows by it.
    now: Millis,
    report: ChatOpenReport,
    /// Items appended since the last sync: (EID, increment, item), in append order.
    /// A list, not a map by EID: it is emptied at every sync (keeping its allocation) and read only at session
    /// starts.
    pending: Vec<(String, u64, QueueItem)>,
    /// Where this batch's items of messages went, logged at its sync.
    batch_items: Vec<(String, String, u64)>,
    /// When retention may run next (engine time); None before the first session start.
    next_retain: Option<Millis>,
    /// Items that could not be read back (damaged on disk): logged and counted, never sent.
    pub unreadable_items: u64,
    /// The spare segment being prepared by its thread ([`Spares::Thread`]).
    spare: Option<std::thread::JoinHandle<SpareDone<F::File>>>,
    /// The pipelined sync that is out, if one is ([`ChatStoreConfig::pipelined`]).
    in_flight: Option<InFlight<F::File>>,
}

/// A pipelined sync that is out: its fsync, how many of the store's `pending` items it covers, and the checkpoint
/// whose end record it makes durable.
struct InFlight<Fl> {
    slot: Arc<FsyncSlot<Fl>>,
    pending: usize,
    completed: Option<u64>,
}

impl<Fl> std::fmt::Debug for InFlight<Fl> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("pending", &self.pending)
            .field("completed", &self.completed)
            .finish_non_exhaustive()
    }
}

/// Where a pipelined sync's fsync stands, shared by its [`SyncJob`] and the store: the job runs it on the
/// adapter's fsync thread, unless the store needs it finished first (retention, close) and runs or awaits it.
struct FsyncSlot<Fl> {
    state: Mutex<SlotState<Fl>>,
    ended: Condvar,
}

enum SlotState<Fl> {
    Waiting(SyncTicket<Fl>),
    Running,
    Done(FsyncDone<Fl>),
    Taken,
}

impl<Fl: FsFile> FsyncSlot<Fl> {
    fn lock(&self) -> MutexGuard<'_, SlotState<Fl>> {
        // Nothing panics while holding it.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs the fsync unless it has run or is running.
    fn run(&self) {
        let ticket = {
            let mut state = self.lock();
            match std::mem::replace(&mut *state, SlotState::Running) {
                SlotState::Waiting(ticket) => ticket,
                other => {
                    *state = other;
                    return;
                }
            }
        };
        let done = ticket.fsync();
        *self.lock() = SlotState::Done(done);
        self.ended.notify_all();
    }

    /// The finished fsync, if it has finished.
    fn try_take(&self) -> Option<FsyncDone<Fl>> {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, SlotState::Taken) {
            SlotState::Done(done) => Some(done),
            other => {
                *state = other;
                None
            }
        }
    }

    /// The finished fsync: run here if nobody has started it, awaited if it is running.
    fn wait(&self) -> Option<FsyncDone<Fl>> {
        self.run();
        let mut state = self.lock();
        while matches!(*state, SlotState::Running) {
            state = self
                .ended
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        match std::mem::replace(&mut *state, SlotState::Taken) {
            SlotState::Done(done) => Some(done),
            _ => None,
        }
    }
}

fn store_error(e: QueueError) -> StoreError {
    StoreError::Io(std::io::Error::other(e))
}

/// After a failed fsync the store is poisoned (the kernel may have dropped the pages): every later sync fails too
/// and the engine keeps every chat output held, so nothing unacknowledged ever goes out. Only a restart (which
/// recovers the queue) clears it; say so loudly.
fn sync_failed(e: QueueError) -> StoreError {
    tracing::error!(error = %e, "offline queue sync failed; chat is stalled until the server restarts");
    store_error(e)
}

/// The message an item belongs to.
impl<F: Fs> DurableChatStore<F> {
    /// Opens (recovering) the queue in `dir` and reads the chat state the engine replays
    /// (`Engine::with_chat(store, &events)`): the latest checkpoint and the events after it.
    pub fn open(fs: F, dir: impl AsRef<Path>, cfg: QueueConfig) -> Result<(Self, Vec<ChatEvent>), ChatStoreError> {
        Self::open_with(fs, dir, cfg, ChatStoreConfig::default())
    }

    /// [`Self::open`] with the chat store's own tunables.
    pub fn open_with(
        fs: F,
        dir: impl AsRef<Path>,
        cfg: QueueConfig,
        chat_cfg: ChatStoreConfig,
    ) -> Result<(Self, Vec<ChatEvent>), ChatStoreError> {
        let queue = QueueStore::open(fs, dir, cfg)?;
        let mut report = ChatOpenReport::default();
        // The state before the checkpoint being read, and the checkpoint being read (promoted once complete): its
        // entry count when the header names it, the state read so far, and the entries read.
        let mut mirror = Mirror::default();
        let mut building: Option<(Option<u64>, Mirror, u64)> = None;
        // Events read since the header of the checkpoint being read.
        let mut interleaved_events = 0;
        let mut interleaved_items = 0;
        let mut tail_touched: Vec<String> = Vec::new();
        let mut bad = None;
        let mut buf = Vec::new();
        queue.read_each(EVENTS_EID, 0, usize::MAX, &mut buf, |item| {
            if bad.is_some() {
                return;
            }
            report.records_read += 1;
            let record = match wire::decode(item.payload) {
                Ok(r) => r,
                Err(reason) => {
                    bad = Some(ChatStoreError::BadEvent {
                        increment: item.increment,
                        reason,
                    });
                    return;
                }
            };
            let message = match record {
                LogRecord::Store(StoreRecord::Message(m)) => m,
                other => {
                    // Events and item records of later batches come between a checkpoint's entries (it is written a
                    // chunk per sync): they apply to the checkpoint being read too. A new header means the one
                    // being read was torn: a crash cut it; the state before it stands.
                    if matches!(
                        other,
                        LogRecord::Store(StoreRecord::Checkpoint { .. } | StoreRecord::CheckpointStart)
                    ) && let Some((_, _, read)) = building.take()
                    {
                        report.ignored_records += read + 1;
                    }
                    match other {
                        LogRecord::Store(StoreRecord::Checkpoint { entries: 0 }) => {
                            mirror = Mirror::default();
                            report.checkpoint_entries = 0;
                            report.tail_events = 0;
                            report.item_records = 0;
                            tail_touched.clear();
                        }
                        LogRecord::Store(StoreRecord::Checkpoint { entries }) => {
                            building = Some((Some(entries), Mirror::default(), 0));
                            interleaved_events = 0;
                            interleaved_items = 0;
                        }
                        LogRecord::Store(StoreRecord::CheckpointStart) => {
                            building = Some((None, Mirror::default(), 0));
                            interleaved_events = 0;
                            interleaved_items = 0;
                        }
                        LogRecord::Store(StoreRecord::CheckpointEnd { entries }) => match building.take() {
                            Some((None, next, read)) if read == entries => {
                                mirror = next;
                                report.checkpoint_entries = entries;
                                report.tail_events = interleaved_events;
                                report.item_records = interleaved_items;
                                tail_touched.clear();
                            }
                            // An end that does not close the checkpoint being read: that one is not whole.
                            other => report.ignored_records += other.map_or(0, |(_, _, read)| read + 1) + 1,
                        },
                        LogRecord::Store(StoreRecord::Items { items }) => {
                            for (message_id, eid, increment) in &items {
                                mirror.note_item(message_id, eid, *increment);
                                if let Some((_, next, _)) = building.as_mut() {
                                    next.note_item(message_id, eid, *increment);
                                }
                            }
                            if building.is_some() {
                                interleaved_items += 1;
                            }
                            // Every event before this record had its items in this batch or an earlier one.
                            tail_touched.clear();
                            report.item_records += 1;
                        }
                        LogRecord::Event(event) => {
                            tail_touched.push(event.message_id().to_string());
                            mirror.apply(&event);
                            if let Some((_, next, _)) = building.as_mut() {
                                // An entry read later holds its message as it was when written, after this event.
                                next.apply(&event);
                                interleaved_events += 1;
                            }
                            report.tail_events += 1;
                        }
                        LogRecord::Store(StoreRecord::Message(_)) => {}
                    }
                    return;
                }
            };
            let Some((entries, next, read)) = building.as_mut() else {
                bad = Some(ChatStoreError::BadEvent {
                    increment: item.increment,
                    reason: "a checkpoint entry outside a checkpoint".into(),
                });
                return;
            };
            next.insert(message);
            *read += 1;
            if *entries == Some(*read)
                && let Some((_, next, entries)) = building.take()
            {
                mirror = next;
                report.checkpoint_entries = entries;
                report.tail_events = interleaved_events;
                report.item_records = interleaved_items;
                tail_touched.clear();
            }
        })?;
        if let Some(e) = bad {
            return Err(e);
        }
        if let Some((_, _, read)) = building {
            report.ignored_records += read + 1;
        }
        // Events after the last item record (a crash cut their batch's record): their items were appended in the
        // events' batch, so no higher than each queue's end.
        for id in tail_touched {
            if let Some(m) = mirror.messages.get_mut(&id) {
                for eid in [m.accepted.sender.clone(), m.accepted.receiver.clone()] {
                    let last = queue.last_increment(&eid);
                    if last > 0 {
                        let at = m.items.entry(eid).or_default();
                        *at = (*at).max(last);
                    }
                }
            }
        }
        report.messages = mirror.messages.len() as u64;
        let now = mirror.messages.values().map(|m| m.accepted.at).max().unwrap_or(0);
        let events = mirror.events();
        let store = DurableChatStore {
            queue,
            cfg: chat_cfg,
            events_since_checkpoint: report.tail_events,
            batch_events: 0,
            checkpoint_size: report.checkpoint_entries,
            mirror,
            trim_to: None,
            checkpoint: None,
            now,
            report,
            pending: Vec::new(),
            batch_items: Vec::new(),
            next_retain: None,
            unreadable_items: 0,
            spare: None,
            in_flight: None,
        };
        Ok((store, events))
    }

    /// The underlying queue (inspection, stats).
    pub fn queue(&self) -> &QueueStore<F> {
        &self.queue
    }

    /// What the open read of the chat event log.
    pub fn open_report(&self) -> &ChatOpenReport {
        &self.report
    }

    /// Messages the store remembers (what the next checkpoint starts from).
    pub fn remembered_messages(&self) -> usize {
        self.mirror.messages.len()
    }

    /// Syncs and closes the store cleanly (indexes written, nothing to scan at the next open).
    pub fn close(mut self) -> Result<(), QueueError> {
        let dir = self.queue.dir().to_path_buf();
        self.finish_in_flight(true).map_err(|e| QueueError::Io {
            op: "fsync",
            path: dir,
            source: match e {
                StoreError::Io(source) => source,
                StoreError::Unavailable(why) => std::io::Error::other(why),
            },
        })?;
        // A spare still being prepared is installed, so the close removes its file.
        self.tend_spare(true);
        self.queue.close()
    }

    /// Installs a spare the thread has finished (or, with `wait`, waits for it) and starts the next one when the log
    /// wants one. A spare is only an optimisation: failures are logged and the log goes on without.
    fn tend_spare(&mut self, wait: bool) {
        if let Some(thread) = self.spare.take_if(|t| wait || t.is_finished()) {
            match thread.join() {
                Ok(done) => {
                    if let Err(e) = self.queue.install_spare(done) {
                        tracing::warn!(error = %e, "offline queue: no spare segment; appends go on without");
                    }
                }
                Err(_) => tracing::warn!("offline queue: the spare segment thread panicked"),
            }
        }
        if wait || self.spare.is_some() {
            return;
        }
        match self.cfg.spares {
            Spares::Off => return,
            Spares::Inline => {
                if let Err(e) = self.queue.prepare_spare() {
                    tracing::warn!(error = %e, "offline queue: no spare segment; appends go on without");
                }
                return;
            }
            Spares::Thread => {}
        }
        if let Some(job) = self.queue.spare_job() {
            match std::thread::Builder::new()
                .name("bimip-spare-segment".into())
                .spawn(move || job.run())
            {
                Ok(thread) => self.spare = Some(thread),
                // The job is dropped: the store offers no other, and goes on without spares.
                Err(e) => tracing::warn!(error = %e, "offline queue: cannot start the spare segment thread"),
            }
        }
    }

    /// Starts a checkpoint: writes its header. Its entries follow at the next syncs ([`Self::continue_checkpoint`]),
    /// so starting costs one record whatever the remembered state.
    fn start_checkpoint(&mut self) -> Result<(), QueueError> {
        let header = self
            .queue
            .append(EVENTS_EID, &encode_record(StoreRecord::CheckpointStart), None)?
            .increment;
        self.checkpoint = Some(CheckpointInProgress {
            header,
            cursor: None,
            written: 0,
        });
        self.events_since_checkpoint = 0;
        Ok(())
    }

    /// Visits the next messages of the checkpoint in progress, in id order from where the last sync stopped: each
    /// one still worth remembering becomes an entry (its message as it is now, after the events logged since the
    /// header, which an open applies to it too; module doc), the others are forgotten. Messages accepted after the
    /// header are in the log after it, so the checkpoint needs none of them; those past the cursor become entries
    /// anyway, which an open reads like any other. `Some(header)` once the end record is written.
    fn continue_checkpoint(&mut self) -> Result<Option<u64>, QueueError> {
        let Self {
            mirror,
            queue,
            now,
            checkpoint,
            cfg,
            batch_events,
            ..
        } = self;
        let Some(progress) = checkpoint.as_mut() else {
            return Ok(None);
        };
        let twice = usize::try_from(batch_events.saturating_mul(2)).unwrap_or(usize::MAX);
        let budget = cfg.checkpoint_chunk.max(1).min(twice.max(CHECKPOINT_MIN_VISITS));
        let Mirror { messages, latest } = mirror;
        let rest = match &progress.cursor {
            Some(after) => messages.range::<str, _>((Bound::Excluded(after.as_str()), Bound::Unbounded)),
            None => messages.range::<str, _>(..),
        };
        let mut forget = Vec::new();
        let mut last = None;
        let mut buf = Vec::new();
        let mut finished = true;
        for (visited, (id, m)) in rest.enumerate() {
            if visited == budget {
                finished = false;
                break;
            }
            last = Some(id);
            if keeps(latest, queue, *now, m) {
                buf.clear();
                encode_message_entry(m, &mut buf);
                queue.append(EVENTS_EID, &buf, None)?;
                progress.written += 1;
            } else {
                forget.push(id.clone());
            }
        }
        if let Some(last) = last {
            progress.cursor = Some(last.clone());
        }
        for id in &forget {
            messages.remove(id);
        }
        if !finished {
            return Ok(None);
        }
        let entries = progress.written;
        queue.append(EVENTS_EID, &encode_record(StoreRecord::CheckpointEnd { entries }), None)?;
        self.checkpoint_size = entries;
        Ok(self.checkpoint.take().map(|p| p.header))
    }

    /// What a sync writes before its fsync: the trim a completed checkpoint allows, the batch's item positions,
    /// the next checkpoint chunk. Returns the header of the checkpoint this sync completes, if it does.
    fn before_sync(&mut self) -> Result<Option<u64>, QueueError> {
        if let Some(at) = self.trim_to.take() {
            self.queue.trim(EVENTS_EID, at)?;
        }
        if !self.batch_items.is_empty() {
            let items = StoreRecord::Items {
                items: std::mem::take(&mut self.batch_items),
            };
            self.queue.append(EVENTS_EID, &encode_record(items), None)?;
        }
        if self.checkpoint.is_none()
            && self.events_since_checkpoint >= self.cfg.checkpoint_min_events.max(self.checkpoint_size)
        {
            self.start_checkpoint()?;
        }
        let completed = self.continue_checkpoint()?;
        self.batch_events = 0;
        Ok(completed)
    }

    /// What follows a durable sync: the trim the completed checkpoint allows waits for the next one.
    fn after_sync(&mut self, completed: Option<u64>) {
        if completed.is_some() {
            self.trim_to = completed;
        }
        self.tend_spare(false);
    }

    /// Finishes the pipelined sync that is out, waiting for its fsync with `wait`: `Ok(true)` when none is out
    /// any more, `Ok(false)` when its fsync is still running.
    fn finish_in_flight(&mut self, wait: bool) -> Result<bool, StoreError> {
        let Some(in_flight) = &self.in_flight else {
            return Ok(true);
        };
        let done = if wait {
            in_flight.slot.wait()
        } else {
            in_flight.slot.try_take()
        };
        let Some(done) = done else {
            if wait {
                // Taken by an earlier call that failed: the store is poisoned.
                self.in_flight = None;
                return Err(sync_failed(QueueError::Invalid {
                    what: "sync",
                    why: "a pipelined sync was lost",
                }));
            }
            return Ok(false);
        };
        let Some(InFlight { pending, completed, .. }) = self.in_flight.take() else {
            return Ok(true);
        };
        self.queue.finish_sync(done).map_err(sync_failed)?;
        self.after_sync(completed);
        self.pending.drain(..pending);
        Ok(true)
    }

    fn retain_if_due(&mut self, eid: &str, device: &str, now: Millis) -> Result<(), StoreError> {
        let forget_after = self.queue.config().forget_after_ms;
        let stale = self
            .queue
            .devices(eid)
            .iter()
            .any(|d| d.device == device && d.last_seen.saturating_add(forget_after) <= now);
        let due = self.next_retain.is_none_or(|at| now >= at);
        if stale || due {
            // Retention syncs, which the log refuses while a pipelined sync is out: it is finished here first.
            self.finish_in_flight(true)?;
            self.queue.retain(now).map_err(store_error)?;
            // retain() synced: every pending append is durable now.
            self.pending.clear();
            self.next_retain = Some(now.saturating_add(RETAIN_EVERY_MS));
        }
        Ok(())
    }
}

impl<F: Fs> ChatStore for DurableChatStore<F> {
    fn record(&mut self, event: &ChatEvent) -> Result<(), StoreError> {
        let payload = wire::encode(wire::event(event));
        self.queue.append(EVENTS_EID, &payload, None).map_err(store_error)?;
        if let ChatEvent::Accepted(a) = event {
            self.now = self.now.max(a.at);
        }
        self.mirror.apply(event);
        self.events_since_checkpoint += 1;
        self.batch_events += 1;
        Ok(())
    }

    fn append(&mut self, eid: &str, item: QueueItem) -> Result<u64, StoreError> {
        let appended = self
            .queue
            .append(eid, item.encoded(), item.exclude_device.as_deref())
            .map_err(store_error)?;
        if let Some(id) = item.message_id() {
            self.mirror.note_item(id, eid, appended.increment);
            self.batch_items
                .push((id.to_string(), eid.to_string(), appended.increment));
        }
        self.pending.push((eid.to_string(), appended.increment, item));
        Ok(appended.increment)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.finish_in_flight(true)?;
        let result = self.before_sync().and_then(|completed| {
            self.queue.sync()?;
            self.after_sync(completed);
            Ok(())
        });
        result.map_err(sync_failed)?;
        self.pending.clear();
        Ok(())
    }

    fn begin_sync(&mut self) -> Result<Option<SyncJob>, StoreError> {
        if !self.cfg.pipelined {
            return self.sync().map(|()| None);
        }
        // One out at a time (the engine waits for it): tickets finish in the order they began.
        self.finish_in_flight(true)?;
        let (ticket, completed) = self
            .before_sync()
            .and_then(|completed| Ok((self.queue.begin_sync()?, completed)))
            .map_err(sync_failed)?;
        let slot = Arc::new(FsyncSlot {
            state: Mutex::new(SlotState::Waiting(ticket)),
            ended: Condvar::new(),
        });
        self.in_flight = Some(InFlight {
            slot: Arc::clone(&slot),
            pending: self.pending.len(),
            completed,
        });
        Ok(Some(SyncJob::new(move || slot.run())))
    }

    fn poll_sync(&mut self) -> std::task::Poll<Result<(), StoreError>> {
        match self.finish_in_flight(false) {
            Ok(true) => std::task::Poll::Ready(Ok(())),
            Ok(false) => std::task::Poll::Pending,
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
    fn items_after(&self, eid: &str, after: u64) -> Vec<(u64, QueueItem)> {
        let mut out = Vec::new();
        match self.queue.read(eid, after, usize::MAX) {
            Ok(items) => {
                for item in items {
                    match QueueItem::decode(item.exclude, item.payload) {
                        Ok(decoded) => out.push((item.increment, decoded)),
                        Err(e) => {
                            // Written by this store and CRC-checked: only a bug gets here. Stop at the item
                            // rather than skip it, so the device's offset cannot pass it.
                            tracing::error!(eid, increment = item.increment, error = %e, "queue item does not decode");
                            return out;
                        }
                    }
                }
            }
            Err(e) => {
                // Damage found by the read's checks: send nothing past it; `bimip queue verify` names it.
                tracing::error!(eid, error = %e, "offline queue read failed");
                return out;
            }
        }
        let next = out.last().map_or(after, |(i, _)| *i);
        let pending = self.pending.iter().filter(|(e, i, _)| e == eid && *i > next);
        out.extend(pending.map(|(_, i, item)| (*i, item.clone())));
        out
    }

    fn oldest_retained(&self, eid: &str) -> u64 {
        self.queue.oldest_retained(eid)
    }

    fn usage(&self, eid: &str) -> (usize, usize) {
        let usage = self.queue.usage(eid);
        (
            usize::try_from(usage.items).unwrap_or(usize::MAX),
            usize::try_from(usage.bytes).unwrap_or(usize::MAX),
        )
    }

    fn committed(&self, eid: &str, device: &str) -> Option<u64> {
        self.queue.committed(eid, device)
    }

    fn commit(&mut self, eid: &str, device: &str, offset: u64) -> Result<(), StoreError> {
        self.queue.commit(eid, device, offset).map_err(store_error)?;
        Ok(())
    }

    fn start_device(&mut self, eid: &str, device: &str, now: Millis) -> Result<DeviceStart, StoreError> {
        self.now = self.now.max(now);
        self.retain_if_due(eid, device, now)?;
        let status = self.queue.touch(eid, device, now).map_err(store_error)?;
        Ok(DeviceStart {
            committed: status.committed(),
            returning: matches!(status, DeviceStatus::Returning { .. }),
        })
    }

    fn users(&self) -> Vec<String> {
        self.queue
            .eids()
            .filter(|eid| *eid != EVENTS_EID)
            .map(str::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPEC: §17 (checkpoints): an entry written from a borrowed message must read back as the owned record.
    #[test]
    fn borrowed_checkpoint_entry_reads_back_as_a_message_record() {
        let m = Remembered {
            accepted: Accepted {
                message_id: "m\"1".into(),
                chat_id: "c1".into(),
                version: 7,
                sender: "a@x".into(),
                sender_device: "d1".into(),
                message_id_local: "l1".into(),
                receiver: "b@x".into(),
                at: 5,
            },
            state: 2,
            state_at: 6,
            items: BTreeMap::from([("a@x".to_string(), 3), ("b@x".to_string(), 4)]),
        };
        let mut borrowed = Vec::new();
        encode_message_entry(&m, &mut borrowed);
        assert_eq!(borrowed, encode_record(StoreRecord::Message(m.clone())));
        let read = wire::decode(&borrowed).unwrap();
        assert_eq!(read, LogRecord::Store(StoreRecord::Message(m.clone())));
        // Logs written before records were binary still open.
        let json = br#"{"record":"message","message_id":"m\"1","chat_id":"c1","version":7,"sender":"a@x","sender_device":"d1","message_id_local":"l1","receiver":"b@x","at":5,"state":2,"state_at":6,"items":{"a@x":3,"b@x":4}}"#;
        assert_eq!(wire::decode(json).unwrap(), LogRecord::Store(StoreRecord::Message(m)));
        let event = br#"{"event":"state_raised","message_id":"m","state":3,"at":9}"#;
        let raised = ChatEvent::StateRaised(StateRaised {
            message_id: "m".into(),
            state: 3,
            at: 9,
        });
        assert_eq!(wire::decode(event).unwrap(), LogRecord::Event(raised.clone()));
        assert_eq!(
            wire::decode(&wire::encode(wire::event(&raised))).unwrap(),
            LogRecord::Event(raised)
        );
        assert!(wire::decode(b"\xff\xff").is_err());
    }
}
