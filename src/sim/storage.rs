//! What the simulated server keeps across a crash, and what it loses.
//!
//! [`SimStorage`] is the seam: the runner asks it for a fresh engine's stores
//! at every boot and tells it when the server host crashed. [`CrashModel`]
//! models a disk whose un-synced writes vanish: every chat write is an
//! operation in a log, `sync` marks the log durable up to its end, and a crash
//! cuts the log back to that mark; the next boot replays the survivors into a
//! fresh in-memory store. A durable store on a simulated filesystem (the
//! queue store over `SimFs`) plugs in behind the same trait.
//!
//! The social journal and the revocation list append synchronously (their
//! traits say a write returns once durable), so they survive every crash.

use std::sync::{Arc, Mutex, PoisonError};

use crate::core::queue::{ChatEvent, ChatStore, DeviceStart, MemoryChatStore, QueueItem, SharedChatStore};
use crate::core::social::{EventLog, SocialEvent};
use crate::core::{MemoryRevocations, Millis, Revocations, StoreError};

/// The durable state of one simulated server, across its restarts.
pub trait SimStorage: Send + Sync {
    /// The chat store a booting engine uses, with the events it replays.
    fn boot_chat(&self) -> (Box<dyn ChatStore>, Vec<ChatEvent>);
    /// Power loss: whatever was not synced is gone.
    fn crash(&self);
    /// The social journal and the events it held at boot.
    fn boot_social(&self) -> (Box<dyn EventLog>, Vec<SocialEvent>);
    fn boot_revocations(&self) -> Box<dyn Revocations>;
}

/// Which storage model a simulation uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StorageModel {
    /// Un-synced chat writes are lost on a crash ([`CrashModel`]).
    #[default]
    CrashLosesUnsynced,
    /// Every write survives ([`SharedChatStore`]): no crash model at all.
    Shared,
}

impl StorageModel {
    pub fn build(self) -> Arc<dyn SimStorage> {
        match self {
            StorageModel::CrashLosesUnsynced => Arc::new(CrashModel::default()),
            StorageModel::Shared => Arc::new(SharedModel::default()),
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

/// Everything survives: [`SharedChatStore`] handed to each new engine.
#[derive(Default)]
pub struct SharedModel {
    chat: SharedChatStore,
    journals: Journals,
}

impl SimStorage for SharedModel {
    fn boot_chat(&self) -> (Box<dyn ChatStore>, Vec<ChatEvent>) {
        (Box::new(self.chat.clone()), self.chat.events())
    }
    fn crash(&self) {}
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
    Append(String, QueueItem),
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
                Op::Append(eid, item) => store.append(eid, item.clone()).map(|_| ()),
                Op::Commit(eid, device, offset) => store.commit(eid, device, *offset),
                Op::StartDevice(eid, device, now) => store.start_device(eid, device, *now).map(|_| ()),
            };
        }
        self.live = store;
    }
}

/// A disk that loses un-synced chat writes on a crash. See the module docs.
#[derive(Clone, Default)]
pub struct CrashModel {
    disk: Arc<Mutex<Disk>>,
    journals: Journals,
}

impl SimStorage for CrashModel {
    fn boot_chat(&self) -> (Box<dyn ChatStore>, Vec<ChatEvent>) {
        let events = lock(&self.disk).live.events.clone();
        (Box::new(self.clone()), events)
    }
    fn crash(&self) {
        let mut disk = lock(&self.disk);
        let durable = disk.durable;
        disk.ops.truncate(durable);
        disk.rebuild();
    }
    fn boot_social(&self) -> (Box<dyn EventLog>, Vec<SocialEvent>) {
        self.journals.social()
    }
    fn boot_revocations(&self) -> Box<dyn Revocations> {
        self.journals.revocations()
    }
}

impl ChatStore for CrashModel {
    fn record(&mut self, event: &ChatEvent) -> Result<(), StoreError> {
        let mut disk = lock(&self.disk);
        disk.ops.push(Op::Record(event.clone()));
        disk.live.record(event)
    }
    fn append(&mut self, eid: &str, item: QueueItem) -> Result<u64, StoreError> {
        let mut disk = lock(&self.disk);
        disk.ops.push(Op::Append(eid.to_string(), item.clone()));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loses_exactly_the_unsynced_writes() {
        let model = CrashModel::default();
        let (mut store, events) = model.boot_chat();
        assert!(events.is_empty());
        let event = |n: i64| ChatEvent::StateRaised {
            message_id: format!("m{n}"),
            state: 2,
            at: n,
        };
        store.record(&event(1)).unwrap();
        store.sync().unwrap();
        store.record(&event(2)).unwrap();
        model.crash();
        let (_, events) = model.boot_chat();
        assert_eq!(events, vec![event(1)]);
    }
}
