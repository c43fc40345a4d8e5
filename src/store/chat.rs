//! The engine's [`ChatStore`] on the durable queue ([`QueueStore`]): what `bimip serve` keeps in
//! `DATA_DIR/queue`.
//!
//! Everything chat needs to survive a restart lives in the one append-only log, so that one fsync makes a whole
//! batch durable (group commit, QUE-2):
//! - each user's queue items are the user's EID queue; an item's payload is the stanza's envelope encoding
//!   (`codec::encode`, so QUE-10's byte count is the store's payload sum) and its excluded device is the store's;
//! - device offsets and last-seen times are the store's device records ([`QueueStore::touch`] at session start);
//! - the chat event log ([`ChatEvent`]: accepted messages with their versions and idempotency keys, raised ack
//!   states) is the queue of [`EVENTS_EID`], a name no user can have (it has no `@`). It has no devices, so
//!   retention never removes from it (QUE-9's "EID with no known device"). Its payloads are JSON.
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
use std::path::Path;

use crate::codec;
use crate::core::queue::{ChatEvent, ChatStore, DeviceStart, QueueItem};
use crate::core::{Millis, StoreError};
use crate::store::queue::{DeviceStatus, Fs, QueueConfig, QueueError, QueueStore};

/// The queue that holds the chat event log. Not an EID: valid EIDs contain exactly one `@`.
pub const EVENTS_EID: &str = "#chat-events";

/// How often (in the engine's time) retention runs, at the next session start.
pub const RETAIN_EVERY_MS: Millis = 60 * 60 * 1000;

/// Why the durable chat store could not open.
#[derive(Debug, thiserror::Error)]
pub enum ChatStoreError {
    #[error("offline queue: {0}")]
    Queue(#[from] QueueError),
    #[error("chat event {increment} in the offline queue is not a chat event: {reason}")]
    BadEvent { increment: u64, reason: String },
}

/// [`ChatStore`] over a [`QueueStore`] (module doc).
#[derive(Debug)]
pub struct DurableChatStore<F: Fs> {
    queue: QueueStore<F>,
    /// Items appended since the last sync, per EID, in increment order.
    pending: BTreeMap<String, Vec<(u64, QueueItem)>>,
    /// When retention may run next (engine time); None before the first session start.
    next_retain: Option<Millis>,
    /// Items that could not be read back (damaged on disk): logged and counted, never sent.
    pub unreadable_items: u64,
}

fn store_error(e: QueueError) -> StoreError {
    StoreError::Io(std::io::Error::other(e))
}

impl<F: Fs> DurableChatStore<F> {
    /// Opens (recovering) the queue in `dir` and reads the chat event log the engine replays
    /// (`Engine::with_chat(store, &events)`).
    pub fn open(fs: F, dir: impl AsRef<Path>, cfg: QueueConfig) -> Result<(Self, Vec<ChatEvent>), ChatStoreError> {
        let queue = QueueStore::open(fs, dir, cfg)?;
        let mut events = Vec::new();
        for item in queue.read(EVENTS_EID, 0, usize::MAX)? {
            let event = serde_json::from_slice(&item.payload).map_err(|e| ChatStoreError::BadEvent {
                increment: item.increment,
                reason: e.to_string(),
            })?;
            events.push(event);
        }
        let store = DurableChatStore {
            queue,
            pending: BTreeMap::new(),
            next_retain: None,
            unreadable_items: 0,
        };
        Ok((store, events))
    }

    /// The underlying queue (inspection, stats).
    pub fn queue(&self) -> &QueueStore<F> {
        &self.queue
    }

    /// Syncs and closes the store cleanly (indexes written, nothing to scan at the next open).
    pub fn close(self) -> Result<(), QueueError> {
        self.queue.close()
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
        let payload = serde_json::to_vec(event).map_err(|e| StoreError::Io(e.into()))?;
        self.queue.append(EVENTS_EID, &payload, None).map_err(store_error)?;
        Ok(())
    }

    fn append(&mut self, eid: &str, item: QueueItem) -> Result<u64, StoreError> {
        let payload = codec::encode(&item.stanza);
        let appended = self
            .queue
            .append(eid, &payload, item.exclude_device.as_deref())
            .map_err(store_error)?;
        self.pending
            .entry(eid.to_string())
            .or_default()
            .push((appended.increment, item));
        Ok(appended.increment)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        if let Err(e) = self.queue.sync() {
            // After a failed fsync the store is poisoned (the kernel may have dropped the pages): every later sync
            // fails too and the engine keeps every chat output held, so nothing unacknowledged ever goes out. Only
            // a restart (which recovers the queue) clears it; say so loudly.
            tracing::error!(error = %e, "offline queue sync failed; chat is stalled until the server restarts");
            return Err(store_error(e));
        }
        self.pending.clear();
        Ok(())
    }

    fn items_after(&self, eid: &str, after: u64) -> Vec<(u64, QueueItem)> {
        let mut out = Vec::new();
        match self.queue.read(eid, after, usize::MAX) {
            Ok(items) => {
                for item in items {
                    match codec::decode(&item.payload, usize::MAX) {
                        Ok(stanza) => out.push((
                            item.increment,
                            QueueItem {
                                exclude_device: item.exclude,
                                stanza,
                            },
                        )),
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
        if let Some(pending) = self.pending.get(eid) {
            out.extend(pending.iter().filter(|(i, _)| *i > next).cloned());
        }
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
        self.retain_if_due(eid, device, now)?;
        let status = self.queue.touch(eid, device, now).map_err(store_error)?;
        Ok(DeviceStart {
            committed: status.committed(),
            returning: matches!(status, DeviceStatus::Returning { .. }),
        })
    }
}
