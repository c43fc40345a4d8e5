//! Opening a queue directory: what a crash left becomes a consistent store again.
//!
//! Segments are visited in id order (the log order). For each: the index chunks are applied without reading the
//! indexed bytes; the bytes after the last chunk are read and decoded record by record; the first record that
//! fails is classified by the damage rule of the module doc (torn tail: cut it and every later segment;
//! acknowledged data: [`QueueError::Corrupt`]). In write mode, indexes that were missing, damaged, stale or
//! extended by the scan are rewritten (temporary file, fsync, rename), and scanned bytes are fsynced before the
//! store acknowledges them (a process crash leaves un-synced data in the page cache that a power loss could still
//! take). Read-only mode (inspect) computes the same view and changes nothing.

use litemap::LiteMap;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use super::fs::{Fs, FsFile};
use super::index::{self, FILE_HEADER_LEN, ItemEntry};
use super::record::{self, Kind, RecordRef};
use super::store::{ChunkBuilder, DeviceState, EidState, EidStates, Forgotten, Loc, Segment};
use super::{OpenReport, QueueError, Truncation, idx_name, parse_name, seg_name};

pub(super) struct Recovered<Fl> {
    pub ids: BTreeMap<Arc<str>, u32>,
    pub eids: EidStates,
    pub segs: BTreeMap<u32, Segment<Fl>>,
    pub report: OpenReport,
    pub dir_dirty: bool,
}

type EidIds = BTreeMap<Arc<str>, u32>;

/// An EID as it is being put together from the log.
struct LoadEid {
    name: Arc<str>,
    /// Item locations in log order, as runs of consecutive increments; a later run wins where they overlap (an
    /// item copied by compaction).
    runs: Vec<(u64, Vec<Loc>)>,
    max_inc: u64,
    trim: u64,
    trim_seg: Option<u32>,
    devices: LiteMap<String, DeviceState>,
    forgotten: LiteMap<String, Forgotten>,
}

#[derive(Default)]
struct Loader {
    ids: BTreeMap<Arc<str>, u32>,
    eids: Vec<LoadEid>,
}

impl Loader {
    fn eid(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.eids.len() as u32;
        let name: Arc<str> = name.into();
        self.ids.insert(Arc::clone(&name), id);
        self.eids.push(LoadEid {
            name,
            runs: Vec::new(),
            max_inc: 0,
            trim: 1,
            trim_seg: None,
            devices: LiteMap::with_capacity(1),
            forgotten: LiteMap::new(),
        });
        id
    }

    fn item(&mut self, id: u32, increment: u64, loc: Loc) {
        let e = &mut self.eids[id as usize];
        e.max_inc = e.max_inc.max(increment);
        match e.runs.last_mut() {
            Some((start, locs)) if *start + locs.len() as u64 == increment => locs.push(loc),
            _ => e.runs.push((increment, vec![loc])),
        }
    }

    fn meta(&mut self, id: u32, rec: &RecordRef<'_>, seg: u32) {
        let e = &mut self.eids[id as usize];
        let device = String::from_utf8_lossy(rec.aux).into_owned();
        match rec.kind {
            Kind::Device => {
                e.forgotten.remove(&device);
                let last_seen = record::u64_to_millis(rec.b);
                e.devices.insert(
                    device,
                    DeviceState {
                        committed: rec.a,
                        last_seen,
                        rec_seg: seg,
                    },
                );
            }
            Kind::Forget => {
                e.devices.remove(&device);
                e.forgotten.insert(
                    device,
                    Forgotten {
                        at: record::u64_to_millis(rec.b),
                        rec_seg: seg,
                    },
                );
            }
            Kind::Trim if rec.a >= e.trim => {
                e.trim = rec.a;
                e.trim_seg = Some(seg);
            }
            _ => {}
        }
    }

    /// Applies one decoded record; `builder` collects it for an index rewrite.
    fn record(&mut self, rec: &RecordRef<'_>, seg: u32, offset: u64, builder: Option<&mut ChunkBuilder>) {
        if rec.kind == Kind::Mark {
            return;
        }
        // The decoder only accepts UTF-8 EIDs.
        let id = self.eid(&String::from_utf8_lossy(rec.eid));
        if rec.kind == Kind::Item {
            let loc = Loc {
                seg,
                off: offset as u32,
                rec_len: rec.len as u32,
                payload_len: rec.payload.len() as u32,
            };
            self.item(id, rec.a, loc);
            if let Some(b) = builder {
                let (increment, rec_len, payload_len) = (rec.a, loc.rec_len, loc.payload_len);
                b.items.push(ItemEntry {
                    eid: id,
                    increment,
                    offset: loc.off,
                    rec_len,
                    payload_len,
                });
            }
        } else {
            self.meta(id, rec, seg);
            if let Some(b) = builder {
                b.add_meta(id, rec);
            }
        }
    }

    fn finish(self) -> Result<(EidIds, EidStates), QueueError> {
        const MISSING: Loc = Loc {
            seg: u32::MAX,
            off: 0,
            rec_len: 0,
            payload_len: 0,
        };
        let mut eids = Vec::with_capacity(self.eids.len());
        for e in self.eids {
            let low = e.trim.max(1);
            let last = e.max_inc.max(low - 1);
            // More increments than item records means a gap; find it without allocating the whole range.
            let records: u64 = e.runs.iter().map(|(_, r)| r.len() as u64).sum();
            if last + 1 - low > records {
                let mut runs: Vec<(u64, u64)> = e.runs.iter().map(|(s, r)| (*s, s + r.len() as u64)).collect();
                runs.sort_unstable();
                let mut next = low;
                for (start, end) in runs {
                    if start > next {
                        break;
                    }
                    next = next.max(end);
                }
                return Err(QueueError::Missing {
                    eid: e.name.to_string(),
                    increment: next,
                });
            }
            let mut locs = std::collections::VecDeque::new();
            locs.resize((last + 1 - low) as usize, MISSING);
            for (start, run) in &e.runs {
                for (k, loc) in run.iter().enumerate() {
                    let inc = start + k as u64;
                    if inc >= low {
                        locs[(inc - low) as usize] = *loc;
                    }
                }
            }
            if let Some(k) = locs.iter().position(|l| *l == MISSING) {
                return Err(QueueError::Missing {
                    eid: e.name.to_string(),
                    increment: low + k as u64,
                });
            }
            let bytes = locs.iter().map(|l| l.payload_len as u64).sum();
            eids.push(Box::new(EidState {
                name: e.name,
                low,
                locs,
                bytes,
                durable_last: last,
                devices: e.devices,
                forgotten: e.forgotten,
                trim_seg: e.trim_seg,
                dirty: false,
            }));
        }
        Ok((self.ids, eids))
    }
}

fn read_all<F: Fs>(fs: &F, path: &Path) -> Result<Vec<u8>, QueueError> {
    let file = fs.open(path, false).map_err(QueueError::io("open", path))?;
    let len = file.len().map_err(QueueError::io("stat", path))?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(0, &mut buf).map_err(QueueError::io("read", path))?;
    Ok(buf)
}

/// Whether something durable proves that bytes at `x` of segment `seg` were acknowledged: a later mark past
/// `x` in `rest` (the segment's bytes after `x`), or a later segment with an index chunk or a mark. Also counts
/// the well-formed records seen after `x` (reported as discarded when there is no proof).
fn find_proof<F: Fs>(
    fs: &F,
    dir: &Path,
    rest: &[u8],
    x: u64,
    later: &[u32],
    idx_ids: &BTreeSet<u32>,
) -> Result<(bool, u64), QueueError> {
    let mut found = 0;
    let mut p = 1;
    while p < rest.len() {
        match record::decode(&rest[p..]) {
            Ok(rec) => {
                found += 1;
                if rec.kind == Kind::Mark && rec.a > x {
                    return Ok((true, found));
                }
                p += rec.len;
            }
            Err(_) => p += 1,
        }
    }
    for &j in later {
        if idx_ids.contains(&j) {
            let bytes = read_all(fs, &dir.join(idx_name(j)))?;
            if index::parse_index(&bytes, j).is_ok_and(|p| p.covered() > FILE_HEADER_LEN as u64) {
                return Ok((true, found));
            }
        }
        let bytes = read_all(fs, &dir.join(seg_name(j)))?;
        if index::check_header(&bytes, index::SEG_MAGIC, j).is_err() {
            continue;
        }
        let mut at = FILE_HEADER_LEN;
        while let Ok(rec) = record::decode(&bytes[at..]) {
            found += 1;
            if rec.kind == Kind::Mark && rec.a > FILE_HEADER_LEN as u64 {
                return Ok((true, found));
            }
            at += rec.len;
        }
    }
    Ok((false, found))
}

/// Where the run of zero bytes that ends `bytes` begins (`bytes.len()` when the last byte is not zero).
pub(super) fn zero_tail_start(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
}

/// Whether bytes `from..len` of `file` are all zero (read in pieces: a spare is a whole segment of zeros).
fn zeros_from<Fl: FsFile>(file: &Fl, from: u64, len: u64) -> std::io::Result<bool> {
    let mut buf = vec![0u8; len.saturating_sub(from).min(1 << 20) as usize];
    let mut at = from;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        file.read_exact_at(at, &mut buf[..n])?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

fn remove_if_present<F: Fs>(fs: &F, path: &Path) -> Result<(), QueueError> {
    match fs.remove(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(QueueError::Io {
            op: "remove",
            path: path.into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Rewrites segment `id`'s index as one chunk covering `(16, to]`; returns its length.
fn rewrite_index<F: Fs>(
    fs: &F,
    dir: &Path,
    id: u32,
    builder: &ChunkBuilder,
    to: u64,
    loader: &Loader,
) -> Result<u64, QueueError> {
    let mut bytes = index::file_header(index::IDX_MAGIC, id).to_vec();
    if to > builder.from {
        builder.encode(to, &|e| loader.eids[e as usize].name.to_string(), &mut bytes);
    }
    let tmp = dir.join(format!("{}.tmp", idx_name(id)));
    let path = dir.join(idx_name(id));
    let mut file = fs.create(&tmp).map_err(QueueError::io("create", &tmp))?;
    file.write_all_at(0, &bytes).map_err(QueueError::io("write", &tmp))?;
    file.sync().map_err(QueueError::io("fsync", &tmp))?;
    fs.rename(&tmp, &path).map_err(QueueError::io("rename", &tmp))?;
    Ok(bytes.len() as u64)
}

/// Recovers the queue in `dir` (module doc). `write` allows repairs; without it nothing is changed.
pub(super) fn recover<F: Fs>(fs: &F, dir: &Path, write: bool) -> Result<Recovered<F::File>, QueueError> {
    let names = fs.list(dir).map_err(QueueError::io("list", dir))?;
    let seg_ids: Vec<u32> = {
        let mut v: Vec<u32> = names.iter().filter_map(|n| parse_name(n, "seg")).collect();
        v.sort_unstable();
        v
    };
    let idx_ids: BTreeSet<u32> = names.iter().filter_map(|n| parse_name(n, "idx")).collect();
    let mut dir_dirty = false;
    if write {
        for n in names.iter().filter(|n| n.ends_with(".tmp")) {
            remove_if_present(fs, &dir.join(n))?;
            dir_dirty = true;
        }
        for id in idx_ids.iter().filter(|id| seg_ids.binary_search(id).is_err()) {
            remove_if_present(fs, &dir.join(idx_name(*id)))?;
            dir_dirty = true;
        }
    }
    let mut report = OpenReport::default();
    let mut loader = Loader::default();
    let mut segs = BTreeMap::new();
    let mut cut = false;
    for (pos, &id) in seg_ids.iter().enumerate() {
        let seg_path = dir.join(seg_name(id));
        let idx_path = dir.join(idx_name(id));
        if cut {
            if write {
                remove_if_present(fs, &seg_path)?;
                remove_if_present(fs, &idx_path)?;
                dir_dirty = true;
            }
            report.dropped_segments.push(id);
            continue;
        }
        let mut file = fs.open(&seg_path, write).map_err(QueueError::io("open", &seg_path))?;
        let len = file.len().map_err(QueueError::io("stat", &seg_path))?;
        let mut head = vec![0u8; len.min(FILE_HEADER_LEN as u64) as usize];
        file.read_exact_at(0, &mut head)
            .map_err(QueueError::io("read", &seg_path))?;
        let header = if len < FILE_HEADER_LEN as u64 {
            Err("file shorter than its header")
        } else {
            index::check_header(&head, index::SEG_MAGIC, id)
        };
        // A header that is not whole over a file with nothing after it is a torn start (on a spare, the zeros keep
        // the length a torn write would otherwise have cut short).
        let unwritten = match header {
            Ok(()) => false,
            Err(_) => {
                len < FILE_HEADER_LEN as u64
                    || head.iter().all(|b| *b == 0)
                    || zeros_from(&file, FILE_HEADER_LEN as u64, len).map_err(QueueError::io("read", &seg_path))?
            }
        };
        if unwritten {
            // A segment whose header never became durable held nothing acknowledged, nor does anything after it.
            if write {
                remove_if_present(fs, &seg_path)?;
                remove_if_present(fs, &idx_path)?;
                dir_dirty = true;
            }
            report.dropped_segments.push(id);
            cut = true;
            continue;
        }
        header.map_err(|reason| QueueError::Corrupt {
            segment: id,
            offset: 0,
            reason,
        })?;

        let parsed = if idx_ids.contains(&id) {
            let bytes = read_all(fs, &idx_path)?;
            index::parse_index(&bytes, id).ok().filter(|p| p.covered() <= len)
        } else {
            None
        };
        let idx_whole = parsed.as_ref().is_some_and(|p| p.damage.is_none());
        let covered = parsed.as_ref().map_or(FILE_HEADER_LEN as u64, |p| p.covered());
        // Only a segment whose index will be rewritten needs its entries collected again.
        let mut builder = (write && (!idx_whole || covered < len)).then(|| ChunkBuilder::new(FILE_HEADER_LEN as u64));
        for chunk in parsed.iter().flat_map(|p| &p.chunks) {
            let gids: Vec<u32> = chunk.eids.iter().map(|n| loader.eid(n)).collect();
            for it in &chunk.items {
                let gid = gids[it.eid as usize];
                let loc = Loc {
                    seg: id,
                    off: it.offset,
                    rec_len: it.rec_len,
                    payload_len: it.payload_len,
                };
                loader.item(gid, it.increment, loc);
                if let Some(b) = builder.as_mut() {
                    b.items.push(ItemEntry { eid: gid, ..*it });
                }
            }
            let mut at = 0;
            while let Ok(rec) = record::decode(&chunk.meta[at..]) {
                // Chunk::decode checked these are whole meta records.
                let gid = loader.eid(&String::from_utf8_lossy(rec.eid));
                loader.meta(gid, &rec, id);
                if let Some(b) = builder.as_mut() {
                    b.add_meta(gid, &rec);
                }
                at += rec.len;
            }
        }
        report.indexed_bytes += covered - FILE_HEADER_LEN as u64;

        let mut tail = vec![0u8; (len - covered) as usize];
        file.read_exact_at(covered, &mut tail)
            .map_err(QueueError::io("read", &seg_path))?;
        report.scanned_bytes += tail.len() as u64;
        // A preallocated segment's unused space is zeros, and no record starts with zeros (its length field is at
        // least 32): from here on there is nothing, torn or not.
        let data_end = zero_tail_start(&tail);
        let mut at = 0usize;
        while at < data_end {
            match record::decode(&tail[at..]) {
                Ok(rec) => {
                    loader.record(&rec, id, covered + at as u64, builder.as_mut());
                    at += rec.len;
                }
                Err(e) => {
                    let x = covered + at as u64;
                    let rest = &tail[at..data_end.max(at)];
                    let (proof, found) = find_proof(fs, dir, rest, x, &seg_ids[pos + 1..], &idx_ids)?;
                    if proof {
                        let reason = match e {
                            record::DecodeError::Incomplete => "record cut short",
                            record::DecodeError::Bad(r) => r,
                        };
                        return Err(QueueError::Corrupt {
                            segment: id,
                            offset: x,
                            reason,
                        });
                    }
                    report.truncated.push(Truncation {
                        segment: id,
                        offset: x,
                        bytes: len - x,
                    });
                    report.discarded_records += found;
                    cut = true;
                    break;
                }
            }
        }
        let end = covered + at as u64;
        let mut idx_len = 0;
        if write {
            if end < len {
                file.set_len(end).map_err(QueueError::io("truncate", &seg_path))?;
            }
            if end > covered || end < len {
                file.sync().map_err(QueueError::io("fsync", &seg_path))?;
            }
            if let Some(b) = builder.as_ref().filter(|_| end > covered || !idx_whole) {
                idx_len = rewrite_index(fs, dir, id, b, end, &loader)?;
                dir_dirty = true;
                if !idx_whole {
                    report.rebuilt_indexes.push(id);
                }
            } else if let Some(p) = &parsed {
                idx_len = p.valid_len as u64;
            }
        }
        segs.insert(
            id,
            Segment {
                file,
                written: end,
                durable: end,
                live_items: 0,
                live_bytes: 0,
                idx_len,
                preallocated: false,
            },
        );
    }
    report.segments = segs.len();
    let (ids, eids) = loader.finish()?;
    for st in &eids {
        for loc in &st.locs {
            let seg = segs.get_mut(&loc.seg).ok_or_else(|| QueueError::Missing {
                eid: st.name.to_string(),
                increment: st.low,
            })?;
            seg.live_items += 1;
            seg.live_bytes += loc.rec_len as u64;
        }
    }
    Ok(Recovered {
        ids,
        eids,
        segs,
        report,
        dir_dirty,
    })
}
