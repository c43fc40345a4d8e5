//! What the simulated server keeps across a crash, and what it loses.
//!
//! [`SimStorage`] is the seam: the runner asks it for a fresh engine's stores
//! at every boot and tells it when the server host crashed. The default,
//! [`DurableModel`], is what `bimip serve` runs: the durable chat store
//! ([`DurableChatStore`]: the queue store) on [`SimFs`], whose model of a disk
//! is exact (a write is pending until its file's sync, a create or rename
//! until its directory's); a crash keeps a seeded prefix of the pending
//! operations, maybe with a torn piece of the next write, and the next boot
//! recovers the store from what is on the simulated disk. [`CrashModel`]
//! models the same loss one level up, without the store: every chat write is
//! an operation in a log, `sync` marks the log durable up to its end, and a
//! crash cuts the log back to that mark.
//!
//! The social journal and the revocation list append synchronously (their
//! traits say a write returns once durable), so they survive every crash.

use std::sync::{Arc, Mutex, PoisonError};

use rand::Rng;
use rand::rngs::StdRng;

use crate::core::queue::{ChatEvent, ChatStore, DeviceStart, MemoryChatStore, QueueItem, SharedChatStore};
use crate::core::social::{EventLog, SocialEvent};
use crate::core::{MemoryRevocations, Millis, Revocations, StoreError};
use crate::store::DurableChatStore;
use crate::store::queue::{CrashPlan, QueueConfig, SimFs};

/// The durable state of one simulated server, across its restarts.
pub trait SimStorage: Send + Sync {
    /// The chat store a booting engine's shard `shard` uses, with the events it replays, or why it could not
    /// open (a server that cannot recover its own store).
    fn boot_chat(&self, shard: usize) -> Result<(Box<dyn ChatStore>, Vec<ChatEvent>), String>;
    /// Power loss: whatever was not synced is gone (`rng` may choose how
    /// much of it reached the disk anyway).
    fn crash(&self, rng: &mut StdRng);
    /// The social journal and the events it held at boot.
    fn boot_social(&self) -> (Box<dyn EventLog>, Vec<SocialEvent>);
    fn boot_revocations(&self) -> Box<dyn Revocations>;
}

/// Which storage model a simulation uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StorageModel {
    /// The durable chat store on a simulated filesystem ([`DurableModel`]).
    #[default]
    Durable,
    /// Un-synced chat writes are lost on a crash ([`CrashModel`]).
    CrashLosesUnsynced,
    /// Every write survives ([`SharedChatStore`]): no crash model at all.
    Shared,
    /// A broken disk that loses every chat write on a crash, synced or not:
    /// for the checkers' self-test (they must notice lost durable data).
    ForgetsOnCrash,
}

impl StorageModel {
    pub fn build(self) -> Arc<dyn SimStorage> {
        match self {
            StorageModel::Durable => Arc::new(DurableModel::default()),
            StorageModel::CrashLosesUnsynced => Arc::new(CrashModel::default()),
            StorageModel::Shared => Arc::new(SharedModel::default()),
            StorageModel::ForgetsOnCrash => Arc::new(Forgetful::default()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a host panicked mid-write; the runner reports the
    // panic, and the data stays readable for the report.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Journals shared by every boot (synchronous, so crash-proof).
#[derive(Clone, Default)]
struct Journals {
    social: Arc<Mutex<Vec<SocialEvent>>>,
    revocations: Arc<Mutex<MemoryRevocations>>,
}

struct SharedSocial(Arc<Mutex<Vec<SocialEvent>>>);

impl EventLog for SharedSocial {
    fn append(&mut self, event: &SocialEvent) -> Result<(), StoreError> {
        lock(&self.0).push(event.clone());
        Ok(())
    }
}

struct SharedRevocations(Arc<Mutex<MemoryRevocations>>);

impl Revocations for SharedRevocations {
    fn is_revoked(&self, jti: &str) -> bool {
        lock(&self.0).is_revoked(jti)
    }
    fn revoke(&mut self, jti: &str, exp: Millis) -> Result<(), StoreError> {
        lock(&self.0).revoke(jti, exp)
    }
    fn revoke_issued_until(&mut self, eid: &str, device: Option<&str>, until: Millis) -> Result<(), StoreError> {
        lock(&self.0).revoke_issued_until(eid, device, until)
    }
    fn issued_until(&self, eid: &str, device: Option<&str>) -> Option<Millis> {
        lock(&self.0).issued_until(eid, device)
    }
}

impl Journals {
    fn social(&self) -> (Box<dyn EventLog>, Vec<SocialEvent>) {
        let events = lock(&self.social).clone();
        (Box::new(SharedSocial(Arc::clone(&self.social))), events)
    }
    fn revocations(&self) -> Box<dyn Revocations> {
        Box::new(SharedRevocations(Arc::clone(&self.revocations)))
    }
}

/// Every shard's store, made on its first boot.
#[derive(Default)]
struct PerShard<T>(Mutex<std::collections::BTreeMap<usize, T>>);

impl<T: Clone + Default> PerShard<T> {
    fn get(&self, shard: usize) -> T {
        lock(&self.0).entry(shard).or_default().clone()
    }
    fn clear(&self) {
        lock(&self.0).clear();
    }
}

/// Everything survives: [`SharedChatStore`] handed to each new engine.
#[derive(Default)]
pub struct SharedModel {
    chat: PerShard<SharedChatStore>,
    journals: Journals,
}

impl SimStorage for SharedModel {
    fn boot_chat(&self, shard: usize) -> Result<(Box<dyn ChatStore>, Vec<ChatEvent>), String> {
        let chat = self.chat.get(shard);
        let events = chat.events();
        Ok((Box::new(chat), events))
    }
    fn crash(&self, _: &mut StdRng) {}
    fn boot_social(&self) -> (Box<dyn EventLog>, Vec<SocialEvent>) {
        self.journals.social()
    }
    fn boot_revocations(&self) -> Box<dyn Revocations> {
        self.journals.revocations()
    }
}

/// Where the simulated server keeps its queue on [`SimFs`].
const QUEUE_DIR: &str = "/data/queue";

/// The durable chat store on [`SimFs`]. See the module docs.
#[derive(Default)]
pub struct DurableModel {
    fs: SimFs,
    journals: Journals,
}

impl DurableModel {
    /// Small segments and buffers, so that a run rolls segments, writes
    /// index chunks and flushes buffers: more of the store is exercised.
    fn queue_config() -> QueueConfig {
        QueueConfig {
            segment_bytes: 64 << 10,
            index_interval_bytes: 16 << 10,
            write_buffer_bytes: 4 << 10,
            ..QueueConfig::default()
        }
    }

    /// The simulated disk (for tests).
    pub fn fs(&self) -> &SimFs {
        &self.fs
    }
}

impl SimStorage for DurableModel {
    fn boot_chat(&self, shard: usize) -> Result<(Box<dyn ChatStore>, Vec<ChatEvent>), String> {
        // As `bimip serve` lays a data directory out: shard 0 at the top, the others in `shard-N`.
        let dir = match shard {
            0 => QUEUE_DIR.to_string(),
            n => format!("/data/shard-{n}/queue"),
        };
        let (store, events) = DurableChatStore::open(self.fs.clone(), dir, Self::queue_config())
            .map_err(|e| format!("the durable chat store did not open after a crash: {e}"))?;
        Ok((Box::new(store), events))
    }
    fn crash(&self, rng: &mut StdRng) {
        // Any prefix of the pending operations may have reached the disk, and
        // the next write may have torn part-way.
        let pending = self.fs.pending_ops();
        let keep = rng.random_range(0..=pending);
        let tear = self
            .fs
            .pending_write_len(keep)
            .filter(|_| rng.random_bool(0.5))
            .map(|len| rng.random_range(0..=len));
        self.fs.crash(CrashPlan { keep, tear });
    }
    fn boot_social(&self) -> (Box<dyn EventLog>, Vec<SocialEvent>) {
        self.journals.social()
    }
    fn boot_revocations(&self) -> Box<dyn Revocations> {
        self.journals.revocations()
    }
}

/// See [`StorageModel::ForgetsOnCrash`].
#[derive(Default)]
struct Forgetful {
    chat: PerShard<SharedChatStore>,
    journals: Journals,
}

impl SimStorage for Forgetful {
    fn boot_chat(&self, shard: usize) -> Result<(Box<dyn ChatStore>, Vec<ChatEvent>), String> {
        let chat = self.chat.get(shard);
        let events = chat.events();
        Ok((Box::new(chat), events))
    }
    fn crash(&self, _: &mut StdRng) {
        self.chat.clear();
    }
    fn boot_social(&self) -> (Box<dyn EventLog>, Vec<SocialEvent>) {
        self.journals.social()
    }
    fn boot_revocations(&self) -> Box<dyn Revocations> {
        self.journals.revocations()
    }
}

/// One chat write, as the disk saw it.
#[derive(Clone, Debug)]
enum Op {
    Record(ChatEvent),
    Append(String, Box<QueueItem>),
    Commit(String, String, u64),
    StartDevice(String, String, Millis),
}

#[derive(Default)]
struct Disk {
    ops: Vec<Op>,
    /// `ops[..durable]` survive a crash.
    durable: usize,
    live: MemoryChatStore,
}

impl Disk {
    fn rebuild(&mut self) {
        let mut store = MemoryChatStore::default();
        for op in &self.ops {
            // MemoryChatStore never fails a write.
            let _ = match op {
                Op::Record(event) => store.record(event),
                Op::Append(eid, item) => store.append(eid, (**item).clone()).map(|_| ()),
                Op::Commit(eid, device, offset) => store.commit(eid, device, *offset),
                Op::StartDevice(eid, device, now) => store.start_device(eid, device, *now).map(|_| ()),
            };
        }
        self.live = store;
    }
}

/// A disk that loses un-synced chat writes on a crash. See the module docs.
#[derive(Default)]
pub struct CrashModel {
    disks: PerShard<CrashDisk>,
    journals: Journals,
}

/// One shard's chat store on a [`CrashModel`] disk.
#[derive(Clone, Default)]
struct CrashDisk {
    disk: Arc<Mutex<Disk>>,
}

impl SimStorage for CrashModel {
    fn boot_chat(&self, shard: usize) -> Result<(Box<dyn ChatStore>, Vec<ChatEvent>), String> {
        let store = self.disks.get(shard);
        let events = lock(&store.disk).live.events.clone();
        Ok((Box::new(store), events))
    }
    fn crash(&self, _: &mut StdRng) {
        for store in lock(&self.disks.0).values() {
            let mut disk = lock(&store.disk);
            let durable = disk.durable;
            disk.ops.truncate(durable);
            disk.rebuild();
        }
    }
    fn boot_social(&self) -> (Box<dyn EventLog>, Vec<SocialEvent>) {
        self.journals.social()
    }
    fn boot_revocations(&self) -> Box<dyn Revocations> {
        self.journals.revocations()
    }
}

impl ChatStore for CrashDisk {
    fn record(&mut self, event: &ChatEvent) -> Result<(), StoreError> {
        let mut disk = lock(&self.disk);
        disk.ops.push(Op::Record(event.clone()));
        disk.live.record(event)
    }
    fn append(&mut self, eid: &str, item: QueueItem) -> Result<u64, StoreError> {
        let mut disk = lock(&self.disk);
        disk.ops.push(Op::Append(eid.to_string(), Box::new(item.clone())));
        disk.live.append(eid, item)
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        let mut disk = lock(&self.disk);
        disk.durable = disk.ops.len();
        disk.live.sync()
    }
    fn items_after(&self, eid: &str, after: u64) -> Vec<(u64, QueueItem)> {
        lock(&self.disk).live.items_after(eid, after)
    }
    fn oldest_retained(&self, eid: &str) -> u64 {
        lock(&self.disk).live.oldest_retained(eid)
    }
    fn usage(&self, eid: &str) -> (usize, usize) {
        lock(&self.disk).live.usage(eid)
    }
    fn committed(&self, eid: &str, device: &str) -> Option<u64> {
        lock(&self.disk).live.committed(eid, device)
    }
    fn commit(&mut self, eid: &str, device: &str, offset: u64) -> Result<(), StoreError> {
        let mut disk = lock(&self.disk);
        disk.ops.push(Op::Commit(eid.to_string(), device.to_string(), offset));
        disk.live.commit(eid, device, offset)
    }
    fn start_device(&mut self, eid: &str, device: &str, now: Millis) -> Result<DeviceStart, StoreError> {
        let mut disk = lock(&self.disk);
        disk.ops.push(Op::StartDevice(eid.to_string(), device.to_string(), now));
        disk.live.start_device(eid, device, now)
    }
    fn users(&self) -> Vec<String> {
        lock(&self.disk).live.users()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loses_exactly_the_unsynced_writes() {
        let model = CrashModel::default();
        let (mut store, events) = model.boot_chat(0).unwrap();
        assert!(events.is_empty());
        let event = |n: i64| {
            ChatEvent::StateRaised(crate::core::queue::StateRaised {
                message_id: format!("m{n}"),
                state: 2,
                at: n,
            })
        };
        store.record(&event(1)).unwrap();
        store.sync().unwrap();
        store.record(&event(2)).unwrap();
        model.crash(&mut rand::SeedableRng::seed_from_u64(1));
        let (_, events) = model.boot_chat(0).unwrap();
        assert_eq!(events, vec![event(1)]);
    }

    #[test]
    fn the_durable_model_keeps_synced_events_across_crashes() {
        // Acceptances: the durable store's open keeps only the state of known
        // messages, so a state change of a message it never saw is dropped.
        let event = |n: i64| {
            ChatEvent::Accepted(crate::core::queue::Accepted {
                message_id: format!("c/{n}"),
                chat_id: "c".into(),
                version: n,
                sender: "a@sim.test".into(),
                sender_device: "d0".into(),
                message_id_local: format!("l{n}"),
                receiver: "b@sim.test".into(),
                at: n,
            })
        };
        for seed in 0..20 {
            let model = DurableModel::default();
            let (mut store, events) = model.boot_chat(0).unwrap();
            assert!(events.is_empty());
            store.record(&event(1)).unwrap();
            store.sync().unwrap();
            store.record(&event(2)).unwrap();
            drop(store);
            let mut rng = rand::SeedableRng::seed_from_u64(seed);
            model.crash(&mut rng);
            let (_, events) = model.boot_chat(0).unwrap();
            // The synced event survives; the other may or may not have.
            assert_eq!(events.first(), Some(&event(1)), "seed {seed}");
            assert!(events.len() <= 2, "seed {seed}: {events:?}");
        }
    }
}
