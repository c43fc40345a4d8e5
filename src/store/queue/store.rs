//! [`QueueStore`]: the in-memory view of the log and every operation on it.
//!
//! Memory holds, per EID, the location of every retained item (16 bytes each, so a replay is one positioned read
//! per run of adjacent items, with the runs of the next few MiB hinted to the disk ahead of it so that several
//! are in flight) and the device states; the log holds everything else. Every mutation is a record
//! appended to a buffer; [`QueueStore::sync`] turns the buffer into one write and one fsync, which is the whole
//! group-commit story at this layer.

use litemap::LiteMap;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::fs::{Fs, FsFile};
use super::index::{self, FILE_HEADER_LEN, ItemEntry};
use super::record::{self, Kind, MAX_DEVICE_LEN, MAX_EID_LEN};
use super::spare::Spare;
use super::{
    Appended, DeviceInfo, DeviceStatus, Item, ItemRef, Millis, OpenReport, QueueConfig, QueueError, RetainReport,
    SPARE_NAME, StoreStats, Usage, idx_name, seg_name,
};

/// Reads of adjacent items are merged up to this size.
const READ_SPAN: u64 = 1 << 20;
/// How far ahead of its read position a replay hints its records to the disk ([`FsFile::prefetch`]): enough runs
/// in flight to keep the disk busy while the current one is checked.
const READ_AHEAD: u64 = 8 << 20;
/// Records this close together count as one sequential stretch for the read-ahead (well inside the kernel's own
/// read-ahead window, so it reads through the gap anyway).
const SEQUENTIAL_GAP: u64 = 128 << 10;

/// The read-ahead position of one [`QueueStore::walk`]: its records are hinted in order, one hint per run of
/// adjacent records, until the hinted bytes reach [`READ_AHEAD`] past the end of the run being read.
#[derive(Debug, Default)]
struct ReadAhead {
    /// Items (from the walk's first) hinted so far.
    items: usize,
    /// Record bytes of those items.
    hinted: u64,
    /// Record bytes of the items already read.
    read: u64,
}

/// Where the last walk left its read-ahead, so that the next page of the same replay (the next call, from the
/// increment after the last one read) goes on from there instead of hinting its whole window again: a hint of
/// cached pages is not free (about as much CPU as checking their records when they are all cached).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ReadAheadCursor {
    eid: u32,
    /// The increment the next walk of the replay starts at.
    next: u64,
    /// Increments from `next` up to (excluding) this one are hinted.
    hinted_to: u64,
    /// Record bytes of those.
    hinted: u64,
}

impl ReadAhead {
    /// Continues from `cursor` if it is where a replay of `eid` from `start` left off.
    fn resume(cursor: ReadAheadCursor, eid: u32, start: u64, avail: usize) -> ReadAhead {
        if cursor.eid == eid && cursor.next == start && cursor.hinted_to >= start {
            let items = cursor.hinted_to - start;
            if items <= avail as u64 {
                return ReadAhead {
                    items: items as usize,
                    hinted: cursor.hinted,
                    read: 0,
                };
            }
        }
        ReadAhead::default()
    }

    /// The cursor for a replay that goes on at `next`, `read` items after `start`.
    fn suspend(&self, eid: u32, start: u64, read: usize) -> ReadAheadCursor {
        ReadAheadCursor {
            eid,
            next: start + read as u64,
            hinted_to: start + self.items as u64,
            hinted: self.hinted.saturating_sub(self.read),
        }
    }

    /// Hints, before a read of `span` bytes, what is not yet hinted of the window after it.
    fn hint<F: Fs>(&mut self, store: &QueueStore<F>, st: &EidState, first: usize, avail: usize, span: u64) {
        let want = self.read + span + READ_AHEAD;
        while self.items < avail && self.hinted < want {
            let head = st.locs[first + self.items];
            let mut len = head.rec_len as u64;
            let mut k = self.items + 1;
            while k < avail {
                let next = st.locs[first + k];
                let end = head.off as u64 + len;
                if next.seg != head.seg
                    || (next.off as u64) < end
                    || next.off as u64 - end > SEQUENTIAL_GAP
                    || len >= READ_AHEAD
                {
                    break;
                }
                len = next.off as u64 + next.rec_len as u64 - head.off as u64;
                k += 1;
            }
            // A run that continues the previous item's bytes (across at most a small gap: the mark record that
            // starts each batch, a few other records) is what the kernel's own sequential read-ahead already
            // fetches; hinting it only costs CPU (measured: contiguous cold replay 0.68x -> 0.38x of raw with
            // every run hinted). Only a run after a real gap (another segment, other EIDs' bursts) is hinted.
            let pos = first + self.items;
            let continues = pos > 0 && {
                let prev = st.locs[pos - 1];
                let end = prev.off as u64 + prev.rec_len as u64;
                prev.seg != head.seg || (head.off as u64 >= end && head.off as u64 - end <= SEQUENTIAL_GAP)
            };
            if !continues && let Some(seg) = store.segs.get(&head.seg) {
                seg.file.prefetch(head.off as u64, len);
            }
            self.items = k;
            self.hinted += len;
        }
    }

    fn consumed(&mut self, span: u64) {
        self.read += span;
    }
}

/// Where an item's record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Loc {
    pub seg: u32,
    pub off: u32,
    pub rec_len: u32,
    pub payload_len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DeviceState {
    pub committed: u64,
    pub last_seen: Millis,
    /// Segment holding this state's latest record (re-written before that segment is deleted).
    pub rec_seg: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Forgotten {
    pub at: Millis,
    pub rec_seg: u32,
}

/// Every user's state, by id. Boxed: a user's state is not small (136 bytes), and a vector that doubles keeps
/// up to as much again unused, which for a boxed one is a pointer's worth.
#[allow(clippy::vec_box)]
pub(super) type EidStates = Vec<Box<EidState>>;

#[derive(Debug, Clone)]
pub(super) struct EidState {
    /// Shared with the store's id map: one copy of the EID per user.
    pub name: Arc<str>,
    /// Oldest retained increment (`last + 1` when none is retained).
    pub low: u64,
    /// `locs[i]` is item `low + i`.
    pub locs: VecDeque<Loc>,
    /// Payload bytes of the retained items.
    pub bytes: u64,
    /// Highest increment known durable.
    pub durable_last: u64,
    /// A user has a handful of devices: sorted vectors, not a tree node each.
    pub devices: LiteMap<String, DeviceState>,
    pub forgotten: LiteMap<String, Forgotten>,
    /// Segment holding the latest trim record, if any.
    pub trim_seg: Option<u32>,
    /// Appended to since the last sync.
    pub dirty: bool,
}

impl EidState {
    pub fn new(name: Arc<str>) -> EidState {
        EidState {
            name,
            low: 1,
            locs: VecDeque::new(),
            bytes: 0,
            durable_last: 0,
            devices: LiteMap::with_capacity(1),
            forgotten: LiteMap::new(),
            trim_seg: None,
            dirty: false,
        }
    }

    pub fn last(&self) -> u64 {
        self.low + self.locs.len() as u64 - 1
    }

    fn loc(&self, increment: u64) -> Option<Loc> {
        increment
            .checked_sub(self.low)
            .and_then(|i| self.locs.get(i as usize))
            .copied()
    }
}

#[derive(Debug)]
pub(super) struct Segment<Fl> {
    pub file: Fl,
    /// Bytes in the file (the active segment's buffer is not counted).
    pub written: u64,
    /// Bytes known durable.
    pub durable: u64,
    pub live_items: u64,
    /// Record bytes of live items.
    pub live_bytes: u64,
    /// Length of the index file (0: none).
    pub idx_len: u64,
    /// The file was a spare: zeros from `written` to `segment_bytes` (cut at roll and at a clean close).
    pub preallocated: bool,
}

/// Index content gathered for a segment range not yet written to its index.
#[derive(Debug, Default)]
pub(super) struct ChunkBuilder {
    pub from: u64,
    /// `ItemEntry::eid` is the store-wide EID id here.
    pub items: Vec<ItemEntry>,
    /// Last device/forget/trim record per key: (eid id, is trim, device).
    pub meta: BTreeMap<(u32, bool, Box<[u8]>), MetaRec>,
}

/// A device, forget or trim record as the chunk's index will hold it, encoded only when the chunk is written: until
/// then every user whose session started or whose offset moved keeps these 24 bytes, not a copy of the record with
/// its EID.
#[derive(Debug, Clone, Copy)]
pub(super) struct MetaRec {
    pub kind: Kind,
    pub a: u64,
    pub b: u64,
}

impl ChunkBuilder {
    pub fn new(from: u64) -> ChunkBuilder {
        ChunkBuilder {
            from,
            ..Default::default()
        }
    }

    pub fn add_meta(&mut self, eid: u32, rec: &record::RecordRef<'_>) {
        let meta = MetaRec {
            kind: rec.kind,
            a: rec.a,
            b: rec.b,
        };
        self.meta.insert((eid, rec.kind == Kind::Trim, rec.aux.into()), meta);
    }

    /// The chunk for `(from, to]`, with EID ids mapped to a chunk-local table.
    /// Appends the chunk for bytes `(from, to]` to `out` (EIDs renumbered to the chunk's own list, as
    /// [`index::Chunk::decode`] reads them), encoded straight from the builder.
    pub fn encode(&self, to: u64, name: &dyn Fn(u32) -> String, out: &mut Vec<u8>) {
        let mut local: BTreeMap<u32, u32> = BTreeMap::new();
        let mut names = Vec::new();
        for it in &self.items {
            local.entry(it.eid).or_insert_with(|| {
                names.push(name(it.eid));
                names.len() as u32 - 1
            });
        }
        let items = self.items.iter().map(|it| ItemEntry {
            eid: local[&it.eid],
            ..*it
        });
        let mut meta = Vec::new();
        for ((eid, _, aux), m) in &self.meta {
            // Meta records never carry a payload (`put_meta`).
            record::encode(&mut meta, m.kind, name(*eid).as_bytes(), aux, m.a, m.b, b"");
        }
        index::encode_chunk(self.from, to, &names, items, &meta, out);
    }

    /// Empties the builder for the bytes after `from`, keeping its allocation: a chunk covers megabytes of log, so
    /// its item list is hundreds of kilobytes, which a fresh list would grow again by doubling for every chunk.
    pub fn reset(&mut self, from: u64) {
        self.from = from;
        self.items.clear();
        self.meta.clear();
    }
}

/// What a pipelined sync must fsync ([`QueueStore::begin_sync`]): cloned handles of the segments written since the
/// last sync, and what becomes durable once they are synced. Holds no borrow of the store, so the fsync can run on
/// another thread while the store buffers the next batch.
#[must_use = "finish it with QueueStore::finish_sync, or the store refuses the next plain sync"]
pub struct SyncTicket<Fl> {
    seq: u64,
    /// (segment, handle, bytes written when the ticket was taken).
    files: Vec<(u32, Fl, u64)>,
    lsn: u64,
    /// (eid, last increment when the ticket was taken).
    eids: Vec<(u32, u64)>,
    sealing: Vec<(u32, ChunkBuilder, u64)>,
    chunk: Option<(u32, ChunkBuilder, u64)>,
}

impl<Fl: FsFile> SyncTicket<Fl> {
    /// The store's append order position up to which this sync acknowledges.
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// Runs the fsyncs (blocking; call it off the async runtime).
    pub fn fsync(mut self) -> FsyncDone<Fl> {
        let mut result = Ok(());
        for (id, file, _) in &mut self.files {
            if let Err(e) = file.sync() {
                result = Err((*id, e));
                break;
            }
        }
        FsyncDone { ticket: self, result }
    }
}

/// A [`SyncTicket`] after its fsync, for [`QueueStore::finish_sync`].
#[must_use = "finish it with QueueStore::finish_sync"]
pub struct FsyncDone<Fl> {
    ticket: SyncTicket<Fl>,
    result: Result<(), (u32, std::io::Error)>,
}

impl<Fl> std::fmt::Debug for SyncTicket<Fl> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncTicket")
            .field("seq", &self.seq)
            .field("lsn", &self.lsn)
            .finish_non_exhaustive()
    }
}

/// The durable queue over a directory of `fs`.
pub struct QueueStore<F: Fs> {
    pub(super) fs: F,
    pub(super) dir: PathBuf,
    pub(super) cfg: QueueConfig,
    pub(super) segs: BTreeMap<u32, Segment<F::File>>,
    pub(super) active: u32,
    /// Encoded records for the active segment at `written`, not yet written.
    pub(super) buf: Vec<u8>,
    pub(super) ids: BTreeMap<Arc<str>, u32>,
    pub(super) eids: EidStates,
    pub(super) dirty: Vec<u32>,
    pub(super) next_lsn: u64,
    pub(super) durable_lsn: u64,
    /// Rolled segments whose last writes are not synced yet.
    pub(super) unsynced: Vec<u32>,
    /// Rolled segments whose final index chunk waits for the next sync.
    pub(super) sealing: Vec<(u32, ChunkBuilder, u64)>,
    pub(super) builder: ChunkBuilder,
    /// A written chunk's builder, emptied, for the next chunk ([`ChunkBuilder::reset`]).
    pub(super) recycled: Option<ChunkBuilder>,
    /// Where index chunks are encoded before they are written; kept, like `recycled`, so that writing an index
    /// chunk allocates nothing once the store runs.
    pub(super) chunk_buf: Vec<u8>,
    pub(super) dir_dirty: bool,
    /// The next record starts a batch and is preceded by a mark.
    pub(super) mark_needed: bool,
    pub(super) poisoned: bool,
    /// Pipelined syncs begun and finished ([`QueueStore::begin_sync`]).
    pub(super) tickets_begun: u64,
    pub(super) tickets_finished: u64,
    pub(super) report: OpenReport,
    pub(super) stats: StoreStats,
    /// Where the last read left its read-ahead (a hint position only: never affects what is read).
    pub(super) read_ahead: Mutex<ReadAheadCursor>,
    /// The next segment file, prepared off the append path (`spare.rs`).
    pub(super) spare: Spare<F::File>,
}

impl<F: Fs> std::fmt::Debug for QueueStore<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueStore")
            .field("dir", &self.dir)
            .field("segments", &self.segs.len())
            .field("eids", &self.eids.len())
            .field("durable_lsn", &self.durable_lsn)
            .finish_non_exhaustive()
    }
}

fn check_eid(eid: &str) -> Result<(), QueueError> {
    if eid.is_empty() || eid.len() > MAX_EID_LEN {
        return Err(QueueError::Invalid {
            what: "eid",
            why: "must be 1 to 256 bytes",
        });
    }
    Ok(())
}

fn check_device(device: &str) -> Result<(), QueueError> {
    if device.is_empty() || device.len() > MAX_DEVICE_LEN {
        return Err(QueueError::Invalid {
            what: "device id",
            why: "must be 1 to 128 bytes",
        });
    }
    Ok(())
}

impl<F: Fs> QueueStore<F> {
    /// Opens (creating if needed) the queue in `dir`, recovering from whatever a crash left (module doc).
    pub fn open(fs: F, dir: impl AsRef<Path>, cfg: QueueConfig) -> Result<QueueStore<F>, QueueError> {
        if cfg.segment_bytes > u32::MAX as u64 / 2 || cfg.segment_bytes < 1024 {
            return Err(QueueError::Invalid {
                what: "segment_bytes",
                why: "must be 1 KiB to 2 GiB",
            });
        }
        if cfg.max_payload_bytes > 16 << 20 {
            return Err(QueueError::Invalid {
                what: "max_payload_bytes",
                why: "must be at most 16 MiB",
            });
        }
        let dir = dir.as_ref().to_path_buf();
        fs.create_dir_all(&dir).map_err(QueueError::io("create", &dir))?;
        let rec = super::recovery::recover(&fs, &dir, true)?;
        let mut store = QueueStore {
            fs,
            dir,
            cfg,
            segs: rec.segs,
            active: 0,
            buf: Vec::new(),
            ids: rec.ids,
            eids: rec.eids,
            dirty: Vec::new(),
            next_lsn: 1,
            durable_lsn: 0,
            unsynced: Vec::new(),
            sealing: Vec::new(),
            builder: ChunkBuilder::new(FILE_HEADER_LEN as u64),
            recycled: None,
            chunk_buf: Vec::new(),
            dir_dirty: rec.dir_dirty,
            mark_needed: false,
            tickets_begun: 0,
            tickets_finished: 0,
            poisoned: false,
            report: rec.report,
            stats: StoreStats::default(),
            read_ahead: Mutex::default(),
            spare: Spare::Idle,
        };
        match store.segs.last_key_value() {
            Some((&id, seg)) => {
                store.active = id;
                store.builder = ChunkBuilder::new(seg.written);
            }
            None => store.new_segment(1)?,
        }
        if store.dir_dirty {
            store
                .fs
                .sync_dir(&store.dir)
                .map_err(QueueError::io("sync", &store.dir))?;
            store.dir_dirty = false;
        }
        Ok(store)
    }

    /// What recovery found and did.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The directory of this queue.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    pub(super) fn path(&self, name: String) -> PathBuf {
        self.dir.join(name)
    }

    fn check_usable(&self) -> Result<(), QueueError> {
        if self.poisoned {
            Err(QueueError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Runs a mutation; any failure poisons the store, since the state on disk is then unknown.
    fn guarded<R>(&mut self, f: impl FnOnce(&mut Self) -> Result<R, QueueError>) -> Result<R, QueueError> {
        self.check_usable()?;
        let r = f(self);
        if matches!(r, Err(QueueError::Io { .. })) {
            self.poisoned = true;
        }
        r
    }

    fn eid_id(&mut self, eid: &str) -> u32 {
        if let Some(&id) = self.ids.get(eid) {
            return id;
        }
        let id = self.eids.len() as u32;
        let name: Arc<str> = eid.into();
        self.ids.insert(Arc::clone(&name), id);
        self.eids.push(Box::new(EidState::new(name)));
        id
    }

    fn state(&self, eid: &str) -> Option<&EidState> {
        self.ids.get(eid).map(|&id| &*self.eids[id as usize])
    }

    /// Starts segment `id`: the spare renamed when one is ready, else a new empty file.
    fn new_segment(&mut self, id: u32) -> Result<(), QueueError> {
        let path = self.path(seg_name(id));
        let (file, preallocated) = match std::mem::take(&mut self.spare) {
            Spare::Ready(file) => {
                let spare = self.path(SPARE_NAME.into());
                self.fs.rename(&spare, &path).map_err(QueueError::io("rename", spare))?;
                self.stats.spare_segments += 1;
                (file, true)
            }
            other => {
                self.spare = other;
                (self.fs.create(&path).map_err(QueueError::io("create", &path))?, false)
            }
        };
        self.segs.insert(
            id,
            Segment {
                file,
                written: 0,
                durable: 0,
                live_items: 0,
                live_bytes: 0,
                idx_len: 0,
                preallocated,
            },
        );
        self.buf.clear();
        self.buf.extend_from_slice(&index::file_header(index::SEG_MAGIC, id));
        self.active = id;
        self.builder.reset(FILE_HEADER_LEN as u64);
        self.dir_dirty = true;
        self.mark_needed = false;
        Ok(())
    }

    pub(super) fn active_end(&self) -> u64 {
        self.segs[&self.active].written + self.buf.len() as u64
    }

    /// Writes the buffer out (no fsync).
    fn flush(&mut self) -> Result<(), QueueError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = self.path(seg_name(self.active));
        let seg = self.segs.get_mut(&self.active).expect("active segment exists");
        seg.file
            .write_all_at(seg.written, &self.buf)
            .map_err(QueueError::io("write", path))?;
        seg.written += self.buf.len() as u64;
        self.stats.bytes_written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn roll(&mut self) -> Result<(), QueueError> {
        self.flush()?;
        let old = self.active;
        let path = self.path(seg_name(old));
        let seg = self.segs.get_mut(&old).expect("active segment exists");
        // A sealed segment ends at its last record: only the active one may have a zero tail.
        let cut = std::mem::take(&mut seg.preallocated);
        if cut {
            seg.file
                .set_len(seg.written)
                .map_err(QueueError::io("truncate", path))?;
        }
        if seg.written > seg.durable || cut {
            self.unsynced.push(old);
        }
        let seg = &self.segs[&old];
        let written = seg.written;
        let builder = self.next_builder(FILE_HEADER_LEN as u64);
        self.sealing.push((old, builder, written));
        self.new_segment(old + 1)
    }

    /// Encodes one record into the buffer, rolling first if it would not fit; returns its location.
    fn put(&mut self, kind: Kind, eid: u32, aux: &[u8], a: u64, b: u64, payload: &[u8]) -> Result<Loc, QueueError> {
        let name_len = if kind == Kind::Mark {
            0
        } else {
            self.eids[eid as usize].name.len()
        };
        let len = (record::HEADER_LEN + name_len + aux.len() + payload.len()) as u64;
        let end = self.active_end();
        let full = end + len > self.cfg.segment_bytes && end > FILE_HEADER_LEN as u64;
        // A store on a plain segment (new, or just recovered) moves to the spare as soon as there is one.
        let to_spare = !self.segs[&self.active].preallocated && matches!(self.spare, Spare::Ready(_));
        if full || to_spare {
            self.roll()?;
        }
        if std::mem::take(&mut self.mark_needed) {
            let durable = self.segs[&self.active].durable;
            if durable > FILE_HEADER_LEN as u64 {
                record::encode(&mut self.buf, Kind::Mark, b"", b"", durable, 0, b"");
            }
        }
        let off = self.active_end();
        let eid_bytes = if kind == Kind::Mark {
            &b""[..]
        } else {
            self.eids[eid as usize].name.as_bytes()
        };
        record::encode(&mut self.buf, kind, eid_bytes, aux, a, b, payload);
        if self.buf.len() >= self.cfg.write_buffer_bytes {
            self.flush()?;
        }
        Ok(Loc {
            seg: self.active,
            off: off as u32,
            rec_len: len as u32,
            payload_len: payload.len() as u32,
        })
    }

    /// Appends a device/forget/trim record and notes it for the index.
    fn put_meta(&mut self, kind: Kind, eid: u32, aux: &[u8], a: u64, b: u64) -> Result<u32, QueueError> {
        let loc = self.put(kind, eid, aux, a, b, b"")?;
        let key = (eid, kind == Kind::Trim, aux.into());
        self.builder.meta.insert(key, MetaRec { kind, a, b });
        Ok(loc.seg)
    }

    fn put_item(&mut self, eid: u32, increment: u64, exclude: &[u8], payload: &[u8]) -> Result<Loc, QueueError> {
        let loc = self.put(Kind::Item, eid, exclude, increment, 0, payload)?;
        self.builder.items.push(ItemEntry {
            eid,
            increment,
            offset: loc.off,
            rec_len: loc.rec_len,
            payload_len: loc.payload_len,
        });
        let seg = self.segs.get_mut(&loc.seg).expect("segment of a new record exists");
        seg.live_items += 1;
        seg.live_bytes += loc.rec_len as u64;
        Ok(loc)
    }

    /// Appends an item to `eid`'s queue. Buffered: it is acknowledged (durable, readable) once a [`Self::sync`]
    /// returns a durable lsn at or past the returned `lsn`.
    pub fn append(&mut self, eid: &str, payload: &[u8], exclude: Option<&str>) -> Result<Appended, QueueError> {
        check_eid(eid)?;
        if let Some(d) = exclude {
            check_device(d)?;
        }
        if payload.len() > self.cfg.max_payload_bytes {
            return Err(QueueError::Invalid {
                what: "payload",
                why: "larger than max_payload_bytes",
            });
        }
        self.guarded(|s| {
            let id = s.eid_id(eid);
            let increment = s.eids[id as usize].last() + 1;
            let loc = s.put_item(id, increment, exclude.unwrap_or("").as_bytes(), payload)?;
            let st = &mut s.eids[id as usize];
            st.locs.push_back(loc);
            st.bytes += payload.len() as u64;
            if !st.dirty {
                st.dirty = true;
                s.dirty.push(id);
            }
            let lsn = s.next_lsn;
            s.next_lsn += 1;
            s.stats.appends += 1;
            Ok(Appended { increment, lsn })
        })
    }

    /// Makes every earlier append, touch, commit and retention step durable: one write of the buffer, one fsync
    /// (a second one only when a segment rolled or a file was created since the last sync). Returns the durable
    /// lsn. Refused while a pipelined sync ([`Self::begin_sync`]) is unfinished.
    pub fn sync(&mut self) -> Result<u64, QueueError> {
        self.guarded(|s| s.sync_inner())
    }

    fn sync_inner(&mut self) -> Result<u64, QueueError> {
        self.no_ticket_out()?;
        let ticket = self.begin_inner()?;
        let done = ticket.fsync();
        self.finish_inner(done)
    }

    fn no_ticket_out(&self) -> Result<(), QueueError> {
        if self.tickets_begun != self.tickets_finished {
            return Err(QueueError::Invalid {
                what: "call",
                why: "a pipelined sync is unfinished",
            });
        }
        Ok(())
    }

    /// The first half of a pipelined sync: writes the buffer out and returns the fsync to run, which needs no
    /// access to the store ([`SyncTicket::fsync`], on another thread), while appends go on buffering the next
    /// batch. [`Self::finish_sync`] then acknowledges exactly what was written here (the durable lsn becomes
    /// [`SyncTicket::lsn`]), never the appends made in between. Tickets finish in the order they began; `sync`,
    /// `retain` and `close` are refused while one is out.
    pub fn begin_sync(&mut self) -> Result<SyncTicket<F::File>, QueueError> {
        self.guarded(|s| s.begin_inner())
    }

    /// The second half of a pipelined sync (module doc of [`SyncTicket`]): after a successful fsync, marks what
    /// the ticket covered durable and returns the durable lsn; after a failed one, poisons the store.
    pub fn finish_sync(&mut self, done: FsyncDone<F::File>) -> Result<u64, QueueError> {
        self.guarded(|s| s.finish_inner(done))
    }

    fn begin_inner(&mut self) -> Result<SyncTicket<F::File>, QueueError> {
        self.flush()?;
        let mut to_sync = std::mem::take(&mut self.unsynced);
        let active = &self.segs[&self.active];
        if active.written > active.durable {
            to_sync.push(self.active);
        }
        if !to_sync.is_empty() {
            self.stats.syncs += 1;
        }
        let mut files = Vec::with_capacity(to_sync.len());
        for id in to_sync {
            self.stats.fsyncs += 1;
            let path = self.path(seg_name(id));
            let seg = &self.segs[&id];
            let file = seg.file.try_clone().map_err(QueueError::io("open", path))?;
            files.push((id, file, seg.written));
        }
        if self.dir_dirty {
            // Rare (a file was created): done here rather than in the ticket, which holds no `Fs`.
            self.stats.fsyncs += 1;
            self.fs
                .sync_dir(&self.dir)
                .map_err(QueueError::io("fsync", &self.dir))?;
            self.dir_dirty = false;
        }
        let eids = std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|id| {
                let st = &mut self.eids[id as usize];
                st.dirty = false;
                (id, st.last())
            })
            .collect();
        let written = self.segs[&self.active].written;
        // The periodic index chunk covers exactly the bytes written so far; the ticket writes it once durable.
        let chunk = (written - self.builder.from >= self.cfg.index_interval_bytes).then(|| {
            let builder = self.next_builder(written);
            (self.active, builder, written)
        });
        self.tickets_begun += 1;
        Ok(SyncTicket {
            seq: self.tickets_begun,
            files,
            lsn: self.next_lsn - 1,
            eids,
            sealing: std::mem::take(&mut self.sealing),
            chunk,
        })
    }

    fn finish_inner(&mut self, done: FsyncDone<F::File>) -> Result<u64, QueueError> {
        let FsyncDone { ticket, result } = done;
        if ticket.seq != self.tickets_finished + 1 {
            // Out of order: the durable state could no longer be described; only a reopen knows it.
            self.poisoned = true;
            return Err(QueueError::Invalid {
                what: "finish_sync",
                why: "tickets must finish in the order they began",
            });
        }
        self.tickets_finished = ticket.seq;
        if let Err((id, e)) = result {
            return Err(QueueError::io("fsync", self.path(seg_name(id)))(e));
        }
        for (id, _, written) in &ticket.files {
            if let Some(seg) = self.segs.get_mut(id) {
                seg.durable = seg.durable.max(*written);
            }
        }
        self.durable_lsn = self.durable_lsn.max(ticket.lsn);
        for (id, last) in ticket.eids {
            let st = &mut self.eids[id as usize];
            st.durable_last = st.durable_last.max(last);
        }
        self.mark_needed = true;
        for (id, builder, to) in ticket.sealing.into_iter().chain(ticket.chunk) {
            self.write_chunk(id, &builder, to)?;
            self.recycled = Some(builder);
        }
        Ok(self.durable_lsn)
    }

    /// Swaps in an empty builder for the bytes after `from` (a recycled one when there is) and returns the full one.
    pub(super) fn next_builder(&mut self, from: u64) -> ChunkBuilder {
        let mut next = self.recycled.take().unwrap_or_default();
        next.reset(from);
        std::mem::replace(&mut self.builder, next)
    }

    /// Appends an index chunk for durable bytes `(builder.from, to]` of segment `id`.
    fn write_chunk(&mut self, id: u32, builder: &ChunkBuilder, to: u64) -> Result<(), QueueError> {
        if to <= builder.from {
            return Ok(());
        }
        let mut bytes = std::mem::take(&mut self.chunk_buf);
        bytes.clear();
        let idx_len = self.segs[&id].idx_len;
        if idx_len == 0 {
            bytes.extend_from_slice(&index::file_header(index::IDX_MAGIC, id));
        }
        builder.encode(to, &|id| self.eids[id as usize].name.to_string(), &mut bytes);
        let path = self.path(idx_name(id));
        let mut file = if idx_len == 0 {
            self.dir_dirty = true;
            self.fs.create(&path).map_err(QueueError::io("create", &path))?
        } else {
            self.fs.open(&path, true).map_err(QueueError::io("open", &path))?
        };
        file.write_all_at(idx_len, &bytes)
            .map_err(QueueError::io("write", &path))?;
        file.sync().map_err(QueueError::io("fsync", &path))?;
        self.stats.fsyncs += 1;
        self.segs.get_mut(&id).expect("indexed segment exists").idx_len = idx_len + bytes.len() as u64;
        self.chunk_buf = bytes;
        Ok(())
    }

    /// Highest lsn known durable (every append with a lower or equal lsn is acknowledged).
    pub fn durable_lsn(&self) -> u64 {
        self.durable_lsn
    }

    /// Counters since open.
    pub fn stats(&self) -> StoreStats {
        self.stats
    }

    /// Appends not yet durable.
    pub fn pending(&self) -> u64 {
        self.next_lsn - 1 - self.durable_lsn
    }

    /// Up to `limit` durable items of `eid` with increment above `after`, in order (replay from any offset). The
    /// payloads of a run of adjacent records share one buffer.
    pub fn read(&self, eid: &str, after: u64, limit: usize) -> Result<Vec<Item>, QueueError> {
        let mut items = Vec::new();
        let mut shared = Bytes::new();
        self.walk(eid, after, limit, &mut Vec::new(), |span, at, rec| {
            if at == 0 {
                shared = Bytes::copy_from_slice(span);
            }
            let p = at + rec.payload_offset();
            let exclude = std::str::from_utf8(rec.aux)
                .ok()
                .filter(|d| !d.is_empty())
                .map(str::to_owned);
            items.push(Item {
                increment: rec.a,
                payload: shared.slice(p..p + rec.payload.len()),
                exclude,
            });
        })?;
        Ok(items)
    }

    /// Like [`Self::read`] without allocating per item: `f` sees each item borrowed from `buf`, which is reused
    /// across runs and calls (the replay path of a server that encodes each item straight into a frame). Returns
    /// how many items it saw.
    pub fn read_each(
        &self,
        eid: &str,
        after: u64,
        limit: usize,
        buf: &mut Vec<u8>,
        mut f: impl FnMut(ItemRef<'_>),
    ) -> Result<usize, QueueError> {
        let mut count = 0;
        self.walk(eid, after, limit, buf, |_, _, rec| {
            // Checked UTF-8 by the decoder; most items exclude no device.
            let exclude = if rec.aux.is_empty() {
                None
            } else {
                std::str::from_utf8(rec.aux).ok()
            };
            f(ItemRef {
                increment: rec.a,
                payload: rec.payload,
                exclude,
            });
            count += 1;
        })?;
        Ok(count)
    }

    /// The read loop of [`Self::read`] and [`Self::read_each`]: one positioned read (into `buf`) per run of
    /// adjacent records up to [`READ_SPAN`] bytes; every record is checked (CRC, kind, EID, increment) before
    /// `f(span, offset in span, record)` sees it. Before each read, the runs of the next [`READ_AHEAD`] bytes of
    /// `eid`'s durable records are hinted to the file ([`FsFile::prefetch`]), past `limit` too (a replay goes on
    /// with the next call), so that the disk works on them while this one is checked.
    fn walk(
        &self,
        eid: &str,
        after: u64,
        limit: usize,
        buf: &mut Vec<u8>,
        mut f: impl FnMut(&[u8], usize, &record::RecordRef<'_>),
    ) -> Result<(), QueueError> {
        let Some(&id) = self.ids.get(eid) else { return Ok(()) };
        let st = &self.eids[id as usize];
        let start = after.saturating_add(1).max(st.low);
        if start > st.durable_last || limit == 0 {
            return Ok(());
        }
        let first = (start - st.low) as usize;
        // Durable items from `start`: the read covers the first `n`, the read-ahead may go on to all of them.
        let avail = (st.durable_last - start + 1) as usize;
        let n = avail.min(limit);
        let cursor = *self.read_ahead.lock().unwrap_or_else(|e| e.into_inner());
        let mut ahead = ReadAhead::resume(cursor, id, start, avail);
        let mut i = 0;
        while i < n {
            let head = st.locs[first + i];
            let mut span = head.rec_len as u64;
            let mut j = i + 1;
            while j < n {
                let next = st.locs[first + j];
                if next.seg != head.seg
                    || next.off as u64 != head.off as u64 + span
                    || span + next.rec_len as u64 > READ_SPAN
                {
                    break;
                }
                span += next.rec_len as u64;
                j += 1;
            }
            ahead.hint(self, st, first, avail, span);
            let missing = || QueueError::Missing {
                eid: eid.into(),
                increment: start + i as u64,
            };
            let seg = self.segs.get(&head.seg).ok_or_else(missing)?;
            if buf.len() < span as usize {
                buf.resize(span as usize, 0);
            }
            let raw = &mut buf[..span as usize];
            seg.file
                .read_exact_at(head.off as u64, raw)
                .map_err(QueueError::io("read", self.path(seg_name(head.seg))))?;
            let raw = &*raw;
            let mut at = 0usize;
            for k in i..j {
                let increment = start + k as u64;
                let corrupt = |reason| QueueError::Corrupt {
                    segment: head.seg,
                    offset: head.off as u64 + at as u64,
                    reason,
                };
                let len = st.locs[first + k].rec_len as usize;
                let rec = record::decode_item(&raw[at..], eid.as_bytes(), increment, len).map_err(|e| match e {
                    record::DecodeError::Incomplete => corrupt("record shorter than indexed"),
                    record::DecodeError::Bad(r) => corrupt(r),
                })?;
                f(raw, at, &rec);
                at += rec.len;
            }
            ahead.consumed(span);
            i = j;
        }
        *self.read_ahead.lock().unwrap_or_else(|e| e.into_inner()) = ahead.suspend(id, start, n);
        Ok(())
    }

    /// Highest increment appended to `eid` (0 if none), durable or not.
    pub fn last_increment(&self, eid: &str) -> u64 {
        self.state(eid).map_or(0, EidState::last)
    }

    /// Highest increment of `eid` that is durable (readable, committable).
    pub fn durable_increment(&self, eid: &str) -> u64 {
        self.state(eid).map_or(0, |s| s.durable_last)
    }

    /// Oldest retained increment of `eid` (`last_increment + 1` when none is retained).
    pub fn oldest_retained(&self, eid: &str) -> u64 {
        self.state(eid).map_or(1, |s| s.low)
    }

    /// EIDs the store knows, in order.
    pub fn eids(&self) -> impl Iterator<Item = &str> {
        self.ids.keys().map(|k| &**k)
    }

    /// Session start of `device` on `eid` (SPEC 17.2): registers a new or returning device at the oldest
    /// retained item, refreshes a known one's last-seen time. Buffered like an append.
    pub fn touch(&mut self, eid: &str, device: &str, now: Millis) -> Result<DeviceStatus, QueueError> {
        check_eid(eid)?;
        check_device(device)?;
        self.guarded(|s| {
            let id = s.eid_id(eid);
            let st = &mut s.eids[id as usize];
            let (status, committed, seen) = match st.devices.get(device) {
                Some(d) => (
                    DeviceStatus::Known { committed: d.committed },
                    d.committed,
                    d.last_seen.max(now),
                ),
                None => {
                    let committed = st.low - 1;
                    match st.forgotten.remove(device) {
                        Some(f) => (
                            DeviceStatus::Returning {
                                committed,
                                forgotten_at: f.at,
                            },
                            committed,
                            now,
                        ),
                        None => (DeviceStatus::New { committed }, committed, now),
                    }
                }
            };
            let rec_seg = s.put_meta(
                Kind::Device,
                id,
                device.as_bytes(),
                committed,
                record::millis_to_u64(seen),
            )?;
            let st = &mut s.eids[id as usize];
            st.devices.insert(
                device.to_owned(),
                DeviceState {
                    committed,
                    last_seen: seen,
                    rec_seg,
                },
            );
            Ok(status)
        })
    }

    /// Confirms items up to `increment` for `device` (QUE-5): the offset only moves forward; returns whether it
    /// moved. Only durable items can be confirmed (they are the only ones ever read). Buffered like an append.
    pub fn commit(&mut self, eid: &str, device: &str, increment: u64) -> Result<bool, QueueError> {
        let unknown = || QueueError::UnknownDevice {
            eid: eid.into(),
            device: device.into(),
        };
        let &id = self.ids.get(eid).ok_or_else(unknown)?;
        let st = &self.eids[id as usize];
        let d = st.devices.get(device).ok_or_else(unknown)?;
        if increment > st.durable_last {
            return Err(QueueError::NotDurable {
                eid: eid.into(),
                increment,
                durable: st.durable_last,
            });
        }
        if increment <= d.committed {
            return Ok(false);
        }
        let seen = d.last_seen;
        self.guarded(|s| {
            let rec_seg = s.put_meta(
                Kind::Device,
                id,
                device.as_bytes(),
                increment,
                record::millis_to_u64(seen),
            )?;
            let d = s.eids[id as usize].devices.get_mut(device).expect("checked above");
            d.committed = increment;
            d.rec_seg = rec_seg;
            Ok(true)
        })
    }

    /// `device`'s committed offset on `eid`, if the device is known.
    pub fn committed(&self, eid: &str, device: &str) -> Option<u64> {
        self.state(eid)?.devices.get(device).map(|d| d.committed)
    }

    /// Known devices of `eid`.
    pub fn devices(&self, eid: &str) -> Vec<DeviceInfo> {
        self.state(eid).map_or_else(Vec::new, |s| {
            s.devices
                .iter()
                .map(|(d, st)| DeviceInfo {
                    device: d.clone(),
                    committed: st.committed,
                    last_seen: st.last_seen,
                })
                .collect()
        })
    }

    /// When `device` of `eid` was forgotten, if it was and has not returned since.
    pub fn forgotten(&self, eid: &str, device: &str) -> Option<Millis> {
        self.state(eid)?.forgotten.get(device).map(|f| f.at)
    }

    /// Retained items of `eid`.
    pub fn usage(&self, eid: &str) -> Usage {
        self.state(eid).map_or_else(Usage::default, |s| Usage {
            items: s.locs.len() as u64,
            bytes: s.bytes,
        })
    }

    /// QUE-10: whether appending a `payload_len`-byte item would take `eid` past its limits. The store only
    /// reports; the server answers 503 `queue_full` (and appends sender copies and updates regardless).
    pub fn would_overflow(&self, eid: &str, payload_len: usize) -> bool {
        let u = self.usage(eid);
        u.items + 1 > self.cfg.max_items_per_eid || u.bytes + payload_len as u64 > self.cfg.max_bytes_per_eid
    }

    fn item_exclude(&self, st: &EidState, increment: u64) -> Result<Vec<u8>, QueueError> {
        let loc = st.loc(increment).ok_or(QueueError::Missing {
            eid: st.name.to_string(),
            increment,
        })?;
        let mut raw = vec![0u8; loc.rec_len as usize];
        let seg = &self.segs[&loc.seg];
        seg.file
            .read_exact_at(loc.off as u64, &mut raw)
            .map_err(QueueError::io("read", self.path(seg_name(loc.seg))))?;
        let corrupt = |reason| QueueError::Corrupt {
            segment: loc.seg,
            offset: loc.off as u64,
            reason,
        };
        let rec = record::decode(&raw).map_err(|_| corrupt("damaged record"))?;
        if rec.kind != Kind::Item || rec.a != increment || rec.eid != st.name.as_bytes() {
            return Err(corrupt("record is not the indexed item"));
        }
        Ok(rec.aux.to_vec())
    }

    /// Retention at `now` (module doc): forgets devices unseen for `forget_after_ms` (QUE-11), removes items every
    /// known device confirmed or is excluded from (QUE-9), compacts and deletes segments. Durable when it returns
    /// (it syncs, which also acknowledges every earlier append).
    pub fn retain(&mut self, now: Millis) -> Result<RetainReport, QueueError> {
        self.guarded(|s| s.retain_inner(now))
    }

    /// Drops `eid`'s items below increment `below`, whatever its devices: for a queue its owner consumes itself
    /// (the chat event log once a checkpoint after them is durable), which QUE-9 retention never empties because it
    /// has no devices. Only durable items can go; the cut is buffered like an append (a crash before the next sync
    /// keeps them) and their segments are released by the next [`Self::retain`]. Returns how many were dropped.
    pub fn trim(&mut self, eid: &str, below: u64) -> Result<u64, QueueError> {
        check_eid(eid)?;
        self.guarded(|s| {
            let Some(&id) = s.ids.get(eid) else { return Ok(0) };
            let st = &s.eids[id as usize];
            if below > st.durable_last.saturating_add(1) {
                return Err(QueueError::Invalid {
                    what: "trim",
                    why: "past the durable end of the queue",
                });
            }
            if below <= st.low {
                return Ok(0);
            }
            let rec_seg = s.put_meta(Kind::Trim, id, b"", below, 0)?;
            let st = &mut s.eids[id as usize];
            st.trim_seg = Some(rec_seg);
            let mut dropped = 0;
            while st.low < below {
                let loc = st.locs.pop_front().expect("below is within the durable items");
                st.low += 1;
                st.bytes -= loc.payload_len as u64;
                let seg = s.segs.get_mut(&loc.seg).expect("segment of a live item exists");
                seg.live_items -= 1;
                seg.live_bytes -= loc.rec_len as u64;
                dropped += 1;
            }
            Ok(dropped)
        })
    }

    fn retain_inner(&mut self, now: Millis) -> Result<RetainReport, QueueError> {
        self.no_ticket_out()?;
        let mut report = RetainReport::default();
        for id in 0..self.eids.len() as u32 {
            let st = &self.eids[id as usize];
            let stale: Vec<String> = st
                .devices
                .iter()
                .filter(|(_, d)| d.last_seen.saturating_add(self.cfg.forget_after_ms) <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for device in stale {
                let rec_seg = self.put_meta(Kind::Forget, id, device.as_bytes(), 0, record::millis_to_u64(now))?;
                let st = &mut self.eids[id as usize];
                st.devices.remove(&device);
                st.forgotten.insert(device.clone(), Forgotten { at: now, rec_seg });
                report.forgotten.push((st.name.to_string(), device));
            }
            let new_low = self.removable_up_to(id)?;
            let st = &self.eids[id as usize];
            if new_low > st.low {
                let rec_seg = self.put_meta(Kind::Trim, id, b"", new_low, 0)?;
                let st = &mut self.eids[id as usize];
                st.trim_seg = Some(rec_seg);
                while st.low < new_low {
                    let loc = st.locs.pop_front().expect("new_low is within the retained items");
                    st.low += 1;
                    st.bytes -= loc.payload_len as u64;
                    let seg = self.segs.get_mut(&loc.seg).expect("segment of a live item exists");
                    seg.live_items -= 1;
                    seg.live_bytes -= loc.rec_len as u64;
                    report.removed_items += 1;
                }
            }
        }
        self.sync_inner()?;
        // Copy the live items out of mostly-dead sealed segments, so they can go too.
        let sparse: Vec<u32> = self
            .segs
            .iter()
            .filter(|(id, seg)| {
                **id != self.active
                    && seg.live_items > 0
                    && (seg.live_bytes as f64) < self.cfg.compact_below_live_ratio * seg.written as f64
            })
            .map(|(id, _)| *id)
            .collect();
        for id in sparse {
            report.copied_items += self.copy_live_items(id)?;
        }
        let dead: Vec<u32> = self
            .segs
            .iter()
            .filter(|(id, s)| **id != self.active && s.live_items == 0)
            .map(|(id, _)| *id)
            .collect();
        if dead.is_empty() {
            self.sync_inner()?;
            return Ok(report);
        }
        // The state records that live only in the dead segments are written again before they go.
        for id in 0..self.eids.len() as u32 {
            let st = &self.eids[id as usize];
            let devices: Vec<(String, u64, Millis)> = st
                .devices
                .iter()
                .filter(|(_, d)| dead.contains(&d.rec_seg))
                .map(|(k, d)| (k.clone(), d.committed, d.last_seen))
                .collect();
            let forgotten: Vec<(String, Millis)> = st
                .forgotten
                .iter()
                .filter(|(_, f)| dead.contains(&f.rec_seg))
                .map(|(k, f)| (k.clone(), f.at))
                .collect();
            let trim = st.trim_seg.filter(|s| dead.contains(s)).map(|_| st.low);
            for (device, committed, seen) in devices {
                let seg = self.put_meta(
                    Kind::Device,
                    id,
                    device.as_bytes(),
                    committed,
                    record::millis_to_u64(seen),
                )?;
                self.eids[id as usize]
                    .devices
                    .get_mut(&device)
                    .expect("listed above")
                    .rec_seg = seg;
            }
            for (device, at) in forgotten {
                let seg = self.put_meta(Kind::Forget, id, device.as_bytes(), 0, record::millis_to_u64(at))?;
                self.eids[id as usize]
                    .forgotten
                    .get_mut(&device)
                    .expect("listed above")
                    .rec_seg = seg;
            }
            if let Some(low) = trim {
                let seg = self.put_meta(Kind::Trim, id, b"", low, 0)?;
                self.eids[id as usize].trim_seg = Some(seg);
            }
        }
        self.sync_inner()?;
        for id in dead {
            self.segs.remove(&id);
            let seg_path = self.path(seg_name(id));
            self.fs.remove(&seg_path).map_err(QueueError::io("remove", &seg_path))?;
            let idx_path = self.path(idx_name(id));
            match self.fs.remove(&idx_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(QueueError::Io {
                        op: "remove",
                        path: idx_path,
                        source: e,
                    });
                }
                _ => {}
            }
            report.deleted_segments.push(id);
        }
        self.fs
            .sync_dir(&self.dir)
            .map_err(QueueError::io("fsync", &self.dir))?;
        Ok(report)
    }

    /// First increment of `eid` that must stay: every lower one is confirmed by, or excludes, each known device.
    fn removable_up_to(&self, id: u32) -> Result<u64, QueueError> {
        let st = &self.eids[id as usize];
        let Some(min_c) = st.devices.values().map(|d| d.committed).min() else {
            return Ok(st.low);
        };
        let mut i = st.low.max(min_c.saturating_add(1)).min(st.durable_last + 1);
        while i <= st.durable_last {
            let mut lagging = st.devices.iter().filter(|(_, d)| d.committed < i).map(|(k, _)| k);
            let (Some(only), None) = (lagging.next(), lagging.next()) else {
                break;
            };
            if self.item_exclude(st, i)? != only.as_bytes() {
                break;
            }
            i += 1;
        }
        Ok(i)
    }

    /// Re-appends the live items of segment `id` (same EID, increment and bytes); returns how many.
    fn copy_live_items(&mut self, id: u32) -> Result<u64, QueueError> {
        let path = self.path(seg_name(id));
        let seg = &self.segs[&id];
        let mut raw = vec![0u8; seg.written as usize];
        seg.file
            .read_exact_at(0, &mut raw)
            .map_err(QueueError::io("read", &path))?;
        let mut at = FILE_HEADER_LEN;
        let mut copied = 0;
        while at < raw.len() {
            let rec = record::decode(&raw[at..]).map_err(|_| QueueError::Corrupt {
                segment: id,
                offset: at as u64,
                reason: "damaged record",
            })?;
            if rec.kind == Kind::Item
                && let Some(&eid) = std::str::from_utf8(rec.eid).ok().and_then(|e| self.ids.get(e))
                && self.eids[eid as usize]
                    .loc(rec.a)
                    .is_some_and(|l| l.seg == id && l.off as usize == at)
            {
                let (inc, aux, payload) = (rec.a, rec.aux.to_vec(), rec.payload.to_vec());
                let loc = self.put_item(eid, inc, &aux, &payload)?;
                let st = &mut self.eids[eid as usize];
                let slot = (inc - st.low) as usize;
                let old = std::mem::replace(&mut st.locs[slot], loc);
                let seg = self.segs.get_mut(&id).expect("segment being compacted exists");
                seg.live_items -= 1;
                seg.live_bytes -= old.rec_len as u64;
                copied += 1;
            }
            at += rec.len;
        }
        Ok(copied)
    }

    /// Syncs and writes the active segment's index, so the next open scans nothing.
    pub fn close(mut self) -> Result<(), QueueError> {
        self.guarded(|s| {
            s.sync_inner()?;
            let written = s.segs[&s.active].written;
            let builder = s.next_builder(written);
            s.write_chunk(s.active, &builder, written)?;
            let path = s.path(seg_name(s.active));
            let seg = s.segs.get_mut(&s.active).expect("active segment exists");
            if std::mem::take(&mut seg.preallocated) {
                // The next open then scans nothing, not the zeros.
                seg.file.set_len(written).map_err(QueueError::io("truncate", &path))?;
                seg.file.sync().map_err(QueueError::io("fsync", &path))?;
            }
            if let Spare::Ready(file) = std::mem::take(&mut s.spare) {
                drop(file);
                let spare = s.path(SPARE_NAME.into());
                s.fs.remove(&spare).map_err(QueueError::io("remove", spare))?;
                s.dir_dirty = true;
            }
            if s.dir_dirty {
                s.fs.sync_dir(&s.dir).map_err(QueueError::io("fsync", &s.dir))?;
            }
            Ok(())
        })
    }

    /// Segments in the store: (id, bytes written, live items).
    pub fn segments(&self) -> Vec<(u32, u64, u64)> {
        self.segs.iter().map(|(id, s)| (*id, s.written, s.live_items)).collect()
    }
}
