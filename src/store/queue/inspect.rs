//! `bimip queue inspect DIR` and `bimip queue verify DIR`: read-only looks at a queue directory.
//!
//! `inspect` shows what an open would see (it runs recovery in read-only mode). `verify` reads every byte of
//! every segment, index chunks included, and classifies each damaged record by the store's damage rule (module
//! doc): the first unprovable one is a torn tail (an open cuts it), a provably acknowledged one is corruption.
//! Neither writes anything, so both are safe on a live or damaged directory.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use super::fs::{Fs, FsFile, RealFs};
use super::index::{self, FILE_HEADER_LEN};
use super::record::{self, Kind};
use super::{QueueError, SPARE_NAME, idx_name, parse_name, recovery, seg_name};

/// One segment as `verify` saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    pub id: u32,
    /// Bytes up to the end of the data (a preallocated segment's zero tail is not counted).
    pub bytes: u64,
    /// Well-formed records.
    pub records: u64,
    pub items: u64,
    /// The index's state: `ok`, `missing`, `stale (covers N of M bytes)`, `damaged (...)`.
    pub index: String,
}

/// A problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Never-acknowledged bytes from an interrupted write; opening the store cuts them (and every later segment).
    TornTail {
        segment: u32,
        offset: u64,
        bytes: u64,
        records_after: u64,
    },
    /// A damaged record in acknowledged data; opening the store refuses until it is dealt with.
    Corrupt {
        segment: u32,
        offset: u64,
        reason: &'static str,
    },
    /// An index entry that does not point at the item it names; the index is rebuilt once deleted.
    IndexMismatch { segment: u32, offset: u64 },
    /// An EID's retained increments have a hole.
    Gap { eid: String, increment: u64 },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::TornTail {
                segment,
                offset,
                bytes,
                records_after,
            } => write!(
                f,
                "torn tail: segment {segment} offset {offset}: {bytes} bytes never acknowledged \
                 ({records_after} well-formed records after it); opening the store cuts them"
            ),
            Finding::Corrupt {
                segment,
                offset,
                reason,
            } => {
                write!(
                    f,
                    "corrupt: segment {segment} offset {offset}: {reason} (acknowledged data)"
                )
            }
            Finding::IndexMismatch { segment, offset } => {
                write!(
                    f,
                    "index mismatch: segment {segment} index names no such item at offset {offset}"
                )
            }
            Finding::Gap { eid, increment } => write!(f, "gap: {eid} is missing increment {increment}"),
        }
    }
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub dir: PathBuf,
    pub segments: Vec<SegmentSummary>,
    pub findings: Vec<Finding>,
    /// Whether the per-EID check ran (it does not when records are damaged: recovery would refuse them).
    pub eids_checked: bool,
    pub eids: usize,
    pub items: u64,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.findings.is_empty()
    }

    /// 0: no problem; 1: problems found (`Err` from [`verify`] is 2: could not read).
    pub fn exit_code(&self) -> i32 {
        if self.is_ok() { 0 } else { 1 }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "queue {}", self.dir.display())?;
        for s in &self.segments {
            writeln!(
                f,
                "  segment {:010}: {} bytes, {} records, {} items, index {}",
                s.id, s.bytes, s.records, s.items, s.index
            )?;
        }
        if self.eids_checked {
            writeln!(
                f,
                "  {} EIDs, {} retained items, increments checked for gaps",
                self.eids, self.items
            )?;
        } else {
            writeln!(f, "  EIDs not checked: damaged records must be dealt with first")?;
        }
        if self.findings.is_empty() {
            writeln!(f, "ok")
        } else {
            for finding in &self.findings {
                writeln!(f, "{finding}")?;
            }
            writeln!(f, "{} problem(s) found", self.findings.len())
        }
    }
}

/// The exit code of `bimip queue verify` for a [`verify`] result: 0 no problem, 1 problems found, 2 could not
/// read the directory.
pub fn verify_exit_code(result: &Result<VerifyReport, QueueError>) -> i32 {
    match result {
        Ok(report) => report.exit_code(),
        Err(_) => 2,
    }
}

/// [`verify_with`] on the real filesystem.
pub fn verify(dir: impl AsRef<Path>) -> Result<VerifyReport, QueueError> {
    verify_with(&RealFs, dir.as_ref())
}

/// [`inspect_with`] on the real filesystem.
pub fn inspect(dir: impl AsRef<Path>) -> Result<String, QueueError> {
    inspect_with(&RealFs, dir.as_ref())
}

fn read_all<F: Fs>(fs: &F, path: &Path) -> Result<Vec<u8>, QueueError> {
    let file = fs.open(path, false).map_err(QueueError::io("open", path))?;
    let len = file.len().map_err(QueueError::io("stat", path))?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(0, &mut buf).map_err(QueueError::io("read", path))?;
    Ok(buf)
}

struct Scanned {
    id: u32,
    len: u64,
    /// (offset, kind, a) of each well-formed record.
    records: Vec<(u64, Kind, u64)>,
    /// Offsets where a damaged stretch starts.
    bad: Vec<u64>,
    /// The index proves durable bytes in this segment.
    indexed: bool,
}

/// Reads and checks everything in `dir` (module doc).
pub fn verify_with<F: Fs>(fs: &F, dir: &Path) -> Result<VerifyReport, QueueError> {
    let names = fs.list(dir).map_err(QueueError::io("list", dir))?;
    let mut ids: Vec<u32> = names.iter().filter_map(|n| parse_name(n, "seg")).collect();
    ids.sort_unstable();
    let has_idx: Vec<bool> = ids.iter().map(|id| names.contains(&idx_name(*id))).collect();
    let mut segments = Vec::new();
    let mut findings = Vec::new();
    let mut scanned = Vec::new();
    for (&id, &idx) in ids.iter().zip(&has_idx) {
        let bytes = read_all(fs, &dir.join(seg_name(id)))?;
        let mut s = Scanned {
            id,
            len: bytes.len() as u64,
            records: Vec::new(),
            bad: Vec::new(),
            indexed: false,
        };
        let mut items: BTreeMap<u64, (Vec<u8>, u64)> = BTreeMap::new();
        // As recovery reads it: a header that never became whole, or a torn one over a spare's zeros.
        let header_zero = bytes.len() < FILE_HEADER_LEN
            || bytes[..FILE_HEADER_LEN].iter().all(|b| *b == 0)
            || (index::check_header(&bytes, index::SEG_MAGIC, id).is_err()
                && recovery::zero_tail_start(&bytes) <= FILE_HEADER_LEN);
        if header_zero {
            s.bad.push(0);
        } else if let Err(reason) = index::check_header(&bytes, index::SEG_MAGIC, id) {
            findings.push(Finding::Corrupt {
                segment: id,
                offset: 0,
                reason,
            });
        } else {
            let mut at = FILE_HEADER_LEN;
            let mut in_bad = false;
            // A preallocated segment's zero tail is unused space, not damage (recovery reads it the same way).
            let data_end = recovery::zero_tail_start(&bytes);
            while at < data_end {
                match record::decode(&bytes[at..]) {
                    Ok(rec) => {
                        s.records.push((at as u64, rec.kind, rec.a));
                        if rec.kind == Kind::Item {
                            items.insert(at as u64, (rec.eid.to_vec(), rec.a));
                        }
                        at += rec.len;
                        in_bad = false;
                    }
                    Err(_) => {
                        if !in_bad {
                            s.bad.push(at as u64);
                            in_bad = true;
                        }
                        at += 1;
                    }
                }
            }
            s.len = at as u64;
        }
        let index_state = if !idx {
            "missing".to_string()
        } else {
            let raw = read_all(fs, &dir.join(idx_name(id)))?;
            match index::parse_index(&raw, id) {
                Err(e) => format!("damaged ({e})"),
                Ok(p) => {
                    s.indexed = p.covered() > FILE_HEADER_LEN as u64;
                    for chunk in &p.chunks {
                        for it in &chunk.items {
                            let ok = items.get(&(it.offset as u64)).is_some_and(|(eid, inc)| {
                                chunk
                                    .eids
                                    .get(it.eid as usize)
                                    .is_some_and(|n| n.as_bytes() == eid.as_slice())
                                    && *inc == it.increment
                            });
                            // A damaged record is reported as such, not again as an index mismatch.
                            if !ok && !s.bad.contains(&(it.offset as u64)) {
                                findings.push(Finding::IndexMismatch {
                                    segment: id,
                                    offset: it.offset as u64,
                                });
                            }
                        }
                    }
                    match (p.damage, p.covered()) {
                        (Some(d), c) => format!("damaged after {c} bytes ({d})"),
                        (None, c) if c > s.len => format!("stale (covers {c} bytes of a {}-byte segment)", s.len),
                        (None, c) if c < s.len => format!("partial (covers {c} of {} bytes)", s.len),
                        (None, _) => "ok".to_string(),
                    }
                }
            }
        };
        segments.push(SegmentSummary {
            id,
            bytes: s.len,
            records: s.records.len() as u64,
            items: items.len() as u64,
            index: index_state,
        });
        scanned.push(s);
    }
    // Classify each damaged stretch in log order by the damage rule.
    'classify: for (i, s) in scanned.iter().enumerate() {
        for &x in &s.bad {
            let later_mark = s
                .records
                .iter()
                .any(|(off, k, a)| *off > x && *k == Kind::Mark && *a > x);
            let later_seg = scanned[i + 1..].iter().any(|t| {
                t.indexed
                    || t.records
                        .iter()
                        .any(|(_, k, a)| *k == Kind::Mark && *a > FILE_HEADER_LEN as u64)
            });
            if later_mark || later_seg {
                findings.push(Finding::Corrupt {
                    segment: s.id,
                    offset: x,
                    reason: "record fails its checks",
                });
                continue;
            }
            let after = s.records.iter().filter(|(off, _, _)| *off > x).count() as u64
                + scanned[i + 1..].iter().map(|t| t.records.len() as u64).sum::<u64>();
            let bytes = s.len - x + scanned[i + 1..].iter().map(|t| t.len).sum::<u64>();
            findings.push(Finding::TornTail {
                segment: s.id,
                offset: x,
                bytes,
                records_after: after,
            });
            break 'classify;
        }
    }
    let (mut eids, mut items) = (0, 0);
    let eids_checked = !findings.iter().any(|f| matches!(f, Finding::Corrupt { .. }));
    if eids_checked {
        match recovery::recover(fs, dir, false) {
            Ok(r) => {
                eids = r.eids.len();
                items = r.eids.iter().map(|e| e.locs.len() as u64).sum();
            }
            Err(QueueError::Missing { eid, increment }) => findings.push(Finding::Gap { eid, increment }),
            Err(QueueError::Corrupt {
                segment,
                offset,
                reason,
            }) => findings.push(Finding::Corrupt {
                segment,
                offset,
                reason,
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(VerifyReport {
        dir: dir.to_path_buf(),
        segments,
        findings,
        eids_checked,
        eids,
        items,
    })
}

/// A human-readable dump of what opening `dir` would give: segments, each EID's retained items, devices and
/// offsets, and what recovery would cut.
pub fn inspect_with<F: Fs>(fs: &F, dir: &Path) -> Result<String, QueueError> {
    let r = recovery::recover(fs, dir, false)?;
    let mut out = String::new();
    let _ = writeln!(out, "queue {}", dir.display());
    let total: u64 = r.segs.values().map(|s| s.written).sum();
    let _ = writeln!(out, "segments: {} ({} bytes)", r.segs.len(), total);
    for (id, s) in &r.segs {
        let _ = writeln!(
            out,
            "  {:010}.seg  {} bytes  {} live items",
            id, s.written, s.live_items
        );
    }
    if let Ok(spare) = fs.open(&dir.join(SPARE_NAME), false)
        && let Ok(len) = spare.len()
    {
        // Prepared ahead for the next roll (spare.rs); like every *.tmp file, an open removes it.
        let _ = writeln!(out, "spare segment: {len} bytes (removed by the next open)");
    }
    for t in &r.report.truncated {
        let _ = writeln!(
            out,
            "recovery would cut segment {} at offset {} ({} bytes)",
            t.segment, t.offset, t.bytes
        );
    }
    for id in &r.report.dropped_segments {
        let _ = writeln!(out, "recovery would drop segment {id}");
    }
    let _ = writeln!(out, "eids: {}", r.eids.len());
    for e in &r.eids {
        let last = e.last();
        let _ = writeln!(
            out,
            "  {}  last_increment {}  retained {}..={} ({} items, {} bytes)",
            e.name,
            last,
            e.low,
            last,
            e.locs.len(),
            e.bytes
        );
        for (d, st) in &e.devices {
            let _ = writeln!(
                out,
                "    device {}  committed {}  last_seen {} ms",
                d, st.committed, st.last_seen
            );
        }
        for (d, f) in &e.forgotten {
            let _ = writeln!(out, "    forgotten {}  at {} ms", d, f.at);
        }
    }
    Ok(out)
}
