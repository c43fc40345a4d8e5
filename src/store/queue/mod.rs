//! The durable offline queue (SPEC §17, seed 002's "queue file" and "queue index file").
//!
//! One [`QueueStore`] holds every EID's queue in one append-only log of segment files, so that one fsync makes a
//! whole batch of appends to many users durable (group commit, QUE-2). It is synchronous and deterministic: time is
//! an argument, never read from a clock, and all I/O goes through the [`Fs`] seam, so the sans-IO chat core can
//! drive it and the crash tests can run it on [`SimFs`]. [`GroupCommitter`] is the thin async layer for servers
//! with many concurrent writers.
//!
//! # Files (in the queue directory)
//!
//! - `NNNNNNNNNN.seg`: a segment, 16-byte header then records ([`record`] has the layout; each carries a CRC32C).
//!   Segments roll at [`QueueConfig::segment_bytes`]; ids only grow. Records are: items `(eid, increment_id,
//!   excluded device, payload)`, device states `(eid, device, committed offset, last seen)` (seed 002's
//!   `last_offset`), forgets, trims (retention's new oldest increment) and marks (see recovery).
//! - `NNNNNNNNNN.idx`: the segment's index ([`index`] has the layout): item locations and the last device/trim
//!   state per key for each already-durable range. An accelerator only, always rebuildable from its segment.
//! - `*.tmp`: a half-written index rewrite; removed on open.
//!
//! # State and its rules
//!
//! Per EID: items `oldest_retained..=last_increment` with no gaps (`last_increment` is seed 002's name), each
//! known device's committed offset (cumulative, never moves back), last-seen time, and the devices forgotten
//! after [`QueueConfig::forget_after_ms`] without a session (QUE-11: [`QueueStore::touch`] reports
//! [`DeviceStatus::Returning`] so the server can send 410 `history_gap`). Appends are buffered; [`QueueStore::sync`]
//! writes the buffer with one write and makes it durable with one fsync, and only then are the appends
//! acknowledged: `read` returns durable items only, and a commit may not pass the durable end, so nothing a
//! device was sent or confirmed can be lost by a crash. The same sync in two halves ([`QueueStore::begin_sync`]
//! writes and hands out the fsync, [`QueueStore::finish_sync`] acknowledges what it covered) lets a committer
//! append the next batch while an fsync runs. [`QueueStore::trim`] cuts a queue its owner consumes itself (the
//! chat event log after a checkpoint). [`QueueStore::retain`] forgets stale devices, removes
//! the items every known device has confirmed or is excluded from (QUE-9: never one a known device still needs,
//! never any of an EID with no known device), copies the few live items out of mostly-dead segments, and deletes
//! dead segments. The store reports usage against the QUE-10 limits ([`QueueStore::usage`],
//! [`QueueStore::would_overflow`]); the server decides to answer 503 `queue_full`.
//!
//! # Recovery and the damage rule
//!
//! On open, each segment's index chunks are applied and only the bytes after the last chunk are scanned: with
//! clean shutdowns nothing is scanned, after a crash at most what was written since the last index chunk
//! ([`QueueConfig::index_interval_bytes`]) plus one segment's tail. Start-up reads the indexes (24 bytes per item: a
//! sixth of the data with 100-byte items, less with larger ones) and scans the unindexed tail; it never reads the
//! indexed data itself.
//!
//! The first record in the log (segments in id order) that fails its checks while being scanned is either a torn
//! write, which was never acknowledged, or damage to acknowledged data. The rule:
//! - it is **acknowledged data** if something durable proves a sync completed after it was written: a later
//!   valid mark record whose durable length passes it (each batch after a sync starts with one), a later segment
//!   with an index chunk, or a later segment's mark. Open then fails with [`QueueError::Corrupt`] naming the
//!   segment and offset, and `bimip queue verify` lists it: the store never skips acknowledged data silently and
//!   never guesses. The operator restores the segment or moves it aside knowingly.
//! - otherwise it is a **torn tail**: that record and everything after it in the log (the rest of the segment,
//!   any later segments) was never acknowledged and is cut; [`OpenReport`] says where and how much.
//!
//! Zeros that run to the end of a segment are unused space of a preallocated segment (`spare.rs`), read like the
//! end of the file: no record starts with zeros. Likewise a segment whose header is not whole and holds only zeros
//! after it never got its first write, like one too short for its header.
//!
//! Damage inside indexed (already durable) data is not scanned at open; it is found by every read, which checks
//! each record's CRC, EID and increment before returning it ([`QueueError::Corrupt`] for that read, never bad
//! bytes), and by `verify`, which reads everything. A damaged, torn, missing or stale index is rebuilt from its
//! segment on open.
//!
//! A write or fsync error poisons the store ([`QueueError::Poisoned`]): after a failed fsync the kernel may have
//! dropped the dirty pages, so the only safe state is the one a reopen recovers.
//!
//! # Files of this module
//!
//! - [`record`]: the record codec (one format for segments and index meta).
//! - [`index`]: segment/index headers and index chunks.
//! - [`fs`]: the filesystem seam, the real filesystem and the simulated one. The seam is our own rather than
//!   turmoil's `unstable-fs`: the crash tests need to pick the exact surviving prefix of pending writes and the byte
//!   where the next one tears at every operation, without a simulation runtime (the `fs` doc says more).
//! - `store.rs`: [`QueueStore`]: appends, group sync, reads, commits, retention.
//! - `recovery.rs`: open: indexes, tail scans, the damage rule, index rebuilds.
//! - `spare.rs`: spare segments, zero-filled off the append path so that a batch's fsync writes data only.
//! - `group_commit.rs`: [`GroupCommitter`], the async layer.
//! - `inspect.rs`: [`inspect`] and [`verify`] for the CLI.
//! - `tests.rs`: the store on the real filesystem (reopen, damage, lost indexes, the CLI functions, the committer).
//!   The crash and model tests are `tests/queue_crash.rs` and `tests/queue_model.rs`.

pub mod fs;
mod group_commit;
pub mod index;
mod inspect;
pub mod record;
mod recovery;
mod spare;
mod store;

use std::io;
use std::path::PathBuf;

pub use crate::core::Millis;
pub use fs::{CrashPlan, Fs, FsFile, RealFs, SimFile, SimFs};
pub use group_commit::{CommitError, CommitterTask, GroupCommitConfig, GroupCommitter};
pub use inspect::{
    Finding, SegmentSummary, VerifyReport, inspect, inspect_with, verify, verify_exit_code, verify_with,
};
pub use spare::{SpareDone, SpareJob};
pub use store::{FsyncDone, QueueStore, SyncTicket};

/// A day in milliseconds.
pub const DAY_MS: Millis = 24 * 60 * 60 * 1000;

/// Tunables. The defaults are SPEC §19's.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// A segment rolls when the next record would take it past this size.
    pub segment_bytes: u64,
    /// An index chunk is appended once the active segment has this many durable, unindexed bytes; it bounds the
    /// bytes a recovery must scan.
    pub index_interval_bytes: u64,
    /// Buffered appends are written out (without fsync) once they reach this size.
    pub write_buffer_bytes: usize,
    /// Largest payload accepted.
    pub max_payload_bytes: usize,
    /// QUE-10: retained items per EID.
    pub max_items_per_eid: u64,
    /// QUE-10: retained payload bytes per EID.
    pub max_bytes_per_eid: u64,
    /// QUE-11: a device without a session for this long is forgotten.
    pub forget_after_ms: Millis,
    /// Retention copies the live items out of a sealed segment whose live share of bytes is below this, so the
    /// segment can be deleted (0 disables copying).
    pub compact_below_live_ratio: f64,
    /// Offer spare segments ([`QueueStore::spare_job`]): files of `segment_bytes` zeros prepared and fsynced off the
    /// append path, so that appends overwrite allocated blocks and an fsync writes data only, not the file's size
    /// too. Nothing happens unless the store's driver runs the jobs (the [`GroupCommitter`] does).
    pub preallocate: bool,
    /// A spare is offered only once the active segment holds this many bytes: a small log (a development server,
    /// a test) then never writes a whole segment of zeros, and a busy one still has the rest of the segment's
    /// worth of appends to prepare it in.
    pub spare_after_bytes: u64,
}

impl QueueConfig {
    /// Tiny segments, index intervals and write buffer, so that a few hundred bytes of appends roll segments and
    /// write index chunks: what crash tests, fuzzing and its seed corpus run on.
    pub fn tiny() -> QueueConfig {
        QueueConfig {
            segment_bytes: 1024,
            index_interval_bytes: 300,
            write_buffer_bytes: 400,
            ..QueueConfig::default()
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            segment_bytes: 64 << 20,
            index_interval_bytes: 4 << 20,
            write_buffer_bytes: 1 << 20,
            max_payload_bytes: 1 << 20,
            max_items_per_eid: 100_000,
            max_bytes_per_eid: 64 << 20,
            forget_after_ms: 30 * DAY_MS,
            compact_below_live_ratio: 0.5,
            preallocate: true,
            spare_after_bytes: 0,
        }
    }
}

/// Everything that can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "segment {segment} is damaged at offset {offset} ({reason}) in acknowledged data; \
         run `bimip queue verify`, restore the segment or move it aside knowingly"
    )]
    Corrupt {
        segment: u32,
        offset: u64,
        reason: &'static str,
    },
    #[error("the queue of {eid} is missing increment {increment}: a segment was lost or altered")]
    Missing { eid: String, increment: u64 },
    #[error("the store failed a write or an fsync earlier; reopen it to recover")]
    Poisoned,
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: &'static str },
    #[error("device {device} is not known for {eid}")]
    UnknownDevice { eid: String, device: String },
    #[error("cannot commit increment {increment} for {eid}: only up to {durable} is durable")]
    NotDurable { eid: String, increment: u64, durable: u64 },
}

impl QueueError {
    fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> QueueError {
        let path = path.into();
        move |source| QueueError::Io { op, path, source }
    }
}

/// What an append returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The item's increment_id in its EID's queue.
    pub increment: u64,
    /// Its position in the store's append order: acknowledged once [`QueueStore::durable_lsn`] reaches it.
    pub lsn: u64,
}

/// One queue item as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub increment: u64,
    pub payload: bytes::Bytes,
    /// The device this item is not for (the sending device of a sender copy, the acking device of an update).
    pub exclude: Option<String>,
}

/// One queue item borrowed from the read buffer ([`QueueStore::read_each`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemRef<'a> {
    pub increment: u64,
    pub payload: &'a [u8],
    pub exclude: Option<&'a str>,
}

/// A device's standing after [`QueueStore::touch`] (the session-start call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Known before: replay from `committed`.
    Known { committed: u64 },
    /// First session: starts at the oldest retained item (QUE-8).
    New { committed: u64 },
    /// Was forgotten at `forgotten_at` (QUE-11): send 410 `history_gap`, then start like a new device.
    Returning { committed: u64, forgotten_at: Millis },
}

impl DeviceStatus {
    pub fn committed(&self) -> u64 {
        match *self {
            DeviceStatus::Known { committed }
            | DeviceStatus::New { committed }
            | DeviceStatus::Returning { committed, .. } => committed,
        }
    }
}

/// A known device of an EID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub device: String,
    pub committed: u64,
    pub last_seen: Millis,
}

/// Retained items of an EID (QUE-10 counts these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub items: u64,
    /// Sum of payload sizes.
    pub bytes: u64,
}

/// Counters since open, for benches and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    pub appends: u64,
    /// `sync` calls that had something to make durable.
    pub syncs: u64,
    /// fsync calls of any file or directory.
    pub fsyncs: u64,
    /// Bytes written to segment files.
    pub bytes_written: u64,
    /// Segments started from a prepared spare ([`QueueStore::spare_job`]).
    pub spare_segments: u64,
}

/// What [`QueueStore::retain`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetainReport {
    /// `(eid, device)` pairs forgotten by this call (QUE-11).
    pub forgotten: Vec<(String, String)>,
    /// Items removed because every known device confirmed or was excluded from them (QUE-9).
    pub removed_items: u64,
    /// Live items copied out of mostly-dead segments.
    pub copied_items: u64,
    /// Segment files deleted.
    pub deleted_segments: Vec<u32>,
}

/// A cut made by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub segment: u32,
    pub offset: u64,
    pub bytes: u64,
}

/// What opening found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub segments: usize,
    /// Segment bytes covered by index chunks (not read).
    pub indexed_bytes: u64,
    /// Segment bytes read and checked record by record.
    pub scanned_bytes: u64,
    /// Torn tails cut off (never acknowledged).
    pub truncated: Vec<Truncation>,
    /// Segments deleted because they came after a torn tail or never got a whole header.
    pub dropped_segments: Vec<u32>,
    /// Well-formed records found after a torn tail and discarded with it.
    pub discarded_records: u64,
    /// Segments whose index was missing, damaged or stale and was rewritten.
    pub rebuilt_indexes: Vec<u32>,
}

/// The spare segment being prepared or ready ([`SpareJob`]); like every `*.tmp` file, removed on open.
const SPARE_NAME: &str = "spare.tmp";

fn seg_name(id: u32) -> String {
    format!("{id:010}.seg")
}

fn idx_name(id: u32) -> String {
    format!("{id:010}.idx")
}

/// Parses `NNNNNNNNNN.ext` names.
fn parse_name(name: &str, ext: &str) -> Option<u32> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() == 10 && stem.bytes().all(|b| b.is_ascii_digit()) {
        stem.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
