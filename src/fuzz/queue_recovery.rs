//! The `queue_recovery` driver: the durable queue opened over arbitrary files, or over a real store that was then
//! crashed and damaged, must never panic, never hand out a record that is not a whole, checksummed record of the
//! files it was given, and keep every acknowledged item that sits before the first damaged byte.
//!
//! Input layout (hand-parsed, so seeds can be written from a real store; see [`pack_files`]):
//! - byte 0 even: **files**. The rest is `{tag u8, len u16 le, len bytes}*` (a short last file is kept short).
//!   `tag & 3` picks the name (0 `.seg`, 1 `.idx`, 2 `.tmp`, 3 a foreign file) and `tag >> 2` the segment id.
//! - byte 0 odd: **damaged store**. The rest is an [`Arbitrary`] [`Scenario`]: a workload on a fresh store, how it
//!   ends (clean close or a crash that keeps a prefix of the unsynced writes and tears the next), then truncations,
//!   byte flips and deletions of its files.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU8;
use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};

use crate::store::queue::record::{self, Kind};
use crate::store::queue::{CrashPlan, Fs, FsFile, QueueConfig, QueueError, QueueStore, SimFs};

const DIR: &str = "/queue";
const EIDS: [&str; 3] = ["alice@example.com", "bob@example.com", "carol@example.com"];
const DEVICES: [&str; 2] = ["phone", "laptop"];
const NOW: i64 = 1_761_831_141_000;
/// Bounds one input's work (and keeps every execution fast).
const MAX_OPS: usize = 200;

/// One valid item record found in the bytes handed to the store: (eid, increment, excluded device, payload).
type RecordKey = (Vec<u8>, u64, Vec<u8>, Vec<u8>);

/// What the workload appended, per EID: item `i + 1`'s (payload, excluded device).
type Appended = BTreeMap<&'static str, Vec<(Vec<u8>, Option<&'static str>)>>;

#[derive(Debug, Arbitrary)]
enum BuildOp {
    Append {
        eid: u8,
        len: u8,
        exclude: Option<bool>,
    },
    Sync,
    Touch {
        eid: u8,
        phone: bool,
    },
    Commit {
        eid: u8,
        phone: bool,
        delta: u8,
    },
    Reopen,
    /// Prepares a spare segment: the next append moves onto it, and a crash can leave its zero tail.
    Spare,
}

#[derive(Debug, Arbitrary)]
enum End {
    Close,
    /// `keep` of the pending operations survive, then `tear` bytes of the next write.
    Crash {
        keep: u16,
        tear: Option<u16>,
    },
}

#[derive(Debug, Arbitrary)]
enum Damage {
    Truncate { file: u8, len: u16 },
    Flip { file: u8, offset: u16, xor: NonZeroU8 },
    Delete { file: u8 },
}

#[derive(Debug, Arbitrary)]
struct Scenario {
    ops: Vec<BuildOp>,
    end: End,
    damage: Vec<Damage>,
}

/// See the module doc.
pub fn queue_recovery(data: &[u8]) {
    match data.split_first() {
        None => {}
        Some((mode, rest)) if mode % 2 == 0 => files(rest),
        Some((_, rest)) => {
            if let Ok(s) = Scenario::arbitrary_take_rest(Unstructured::new(rest)) {
                damaged(s);
            }
        }
    }
}

fn file_name(tag: u8) -> String {
    let id = u32::from(tag >> 2);
    match tag & 3 {
        0 => format!("{id:010}.seg"),
        1 => format!("{id:010}.idx"),
        2 => format!("{id:010}.idx.tmp"),
        _ => format!("notes-{id}.txt"),
    }
}

/// The inverse of the files layout: what [`super::seeds`] writes from a real store. Files whose name the layout
/// cannot express are left out.
pub fn pack_files(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut out = vec![0u8];
    for (name, bytes) in files {
        let Some(tag) = (0..=u8::MAX).find(|&t| file_name(t) == *name) else {
            continue;
        };
        let len = bytes.len().min(u16::MAX as usize);
        out.push(tag);
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(&bytes[..len]);
    }
    out
}

fn files(mut rest: &[u8]) {
    let mut files = BTreeMap::new();
    while let [tag, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        files.insert(file_name(*tag), tail[..len].to_vec());
        rest = &tail[len..];
    }
    let fs = fs_with(&files);
    let valid = valid_items(&files);
    if let Ok(store) = QueueStore::open(fs.clone(), DIR, QueueConfig::tiny()) {
        read_all(&store, &valid, None);
        still_works(store, &fs);
    }
}

/// A fresh simulated filesystem holding exactly `files`, durably.
fn fs_with(files: &BTreeMap<String, Vec<u8>>) -> SimFs {
    let fs = SimFs::new();
    let dir = Path::new(DIR);
    fs.create_dir_all(dir).expect("a fresh SimFs takes a directory");
    for (name, bytes) in files {
        let mut f = fs.create(&dir.join(name)).expect("a fresh SimFs takes a file");
        f.write_all_at(0, bytes).expect("a fresh SimFs takes a write");
        f.sync().expect("a fresh SimFs syncs");
    }
    fs.sync_dir(dir).expect("a fresh SimFs syncs its directory");
    fs
}

/// Every checksummed item record at any offset of any segment file: whatever a read returns must be one of these.
fn valid_items(files: &BTreeMap<String, Vec<u8>>) -> BTreeSet<RecordKey> {
    let mut found = BTreeSet::new();
    for bytes in files.iter().filter(|(n, _)| n.ends_with(".seg")).map(|(_, b)| b) {
        for at in 0..bytes.len() {
            if let Ok(rec) = record::decode(&bytes[at..])
                && rec.kind == Kind::Item
            {
                found.insert((rec.eid.to_vec(), rec.a, rec.aux.to_vec(), rec.payload.to_vec()));
            }
        }
    }
    found
}

/// Reads every retained item of every EID, one at a time and all at once. An item read must be a valid record of
/// the input (and, when `expected` is known, exactly what was appended); a failed read must say why in the
/// store's terms (damage or a missing item), never as an I/O error on a healthy filesystem.
fn read_all(
    store: &QueueStore<SimFs>,
    valid: &BTreeSet<RecordKey>,
    expected: Option<&Appended>,
) -> BTreeMap<String, BTreeSet<u64>> {
    let mut readable: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let eids: Vec<String> = store.eids().map(str::to_owned).collect();
    for eid in &eids {
        let check = |item: &crate::store::queue::Item| {
            let key = (
                eid.as_bytes().to_vec(),
                item.increment,
                item.exclude.clone().unwrap_or_default().into_bytes(),
                item.payload.to_vec(),
            );
            assert!(
                valid.contains(&key),
                "{eid} #{} is not a valid record of the files",
                item.increment
            );
            if let Some(want) = expected.and_then(|e| e.get(eid.as_str())) {
                let (payload, exclude) = want
                    .get(item.increment as usize - 1)
                    .unwrap_or_else(|| panic!("{eid} #{} was never appended", item.increment));
                assert_eq!((&item.payload[..], item.exclude.as_deref()), (&payload[..], *exclude));
            }
        };
        let low = store.oldest_retained(eid);
        let high = store.durable_increment(eid);
        assert!(low <= high.saturating_add(1), "{eid}: oldest {low} past durable {high}");
        for inc in low..=high {
            match store.read(eid, inc - 1, 1) {
                Ok(items) => {
                    assert_eq!(
                        items.len(),
                        1,
                        "{eid} #{inc}: a retained durable item reads as one item"
                    );
                    assert_eq!(items[0].increment, inc);
                    check(&items[0]);
                    readable.entry(eid.clone()).or_default().insert(inc);
                }
                Err(e) => assert_store_error(&e),
            }
        }
        match store.read(eid, 0, usize::MAX) {
            Ok(items) => {
                let incs: Vec<u64> = items.iter().map(|i| i.increment).collect();
                assert_eq!(
                    incs,
                    (low..=high).collect::<Vec<_>>(),
                    "{eid}: a whole read is every item in order"
                );
                items.iter().for_each(check);
            }
            Err(e) => assert_store_error(&e),
        }
    }
    readable
}

fn assert_store_error(e: &QueueError) {
    assert!(
        matches!(e, QueueError::Corrupt { .. } | QueueError::Missing { .. }),
        "unexpected error: {e}"
    );
}

/// A recovered store takes new appends, and a clean reopen finds them.
fn still_works(mut store: QueueStore<SimFs>, fs: &SimFs) {
    let eid = "zed@example.com";
    let before = store.last_increment(eid);
    let a = store
        .append(eid, b"after recovery", None)
        .expect("append after recovery");
    assert_eq!(a.increment, before + 1);
    store.sync().expect("sync after recovery");
    store.close().expect("close after recovery");
    let store = QueueStore::open(fs.clone(), DIR, QueueConfig::tiny()).expect("a clean close reopens");
    let items = store.read(eid, before, 1).expect("the new item reads back");
    assert_eq!(items.len(), 1);
    assert_eq!(&items[0].payload[..], b"after recovery");
}

/// Item locations in a segment: (eid, increment) -> end offset, by walking its records from the header.
fn item_ends(bytes: &[u8]) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let mut at = crate::store::queue::index::FILE_HEADER_LEN;
    while at < bytes.len() {
        let Ok(rec) = record::decode(&bytes[at..]) else { break };
        if rec.kind == Kind::Item {
            out.push((
                String::from_utf8_lossy(rec.eid).into_owned(),
                rec.a,
                (at + rec.len) as u64,
            ));
        }
        at += rec.len;
    }
    out
}

fn seg_id(name: &str) -> Option<u32> {
    name.strip_suffix(".seg")?.parse().ok()
}

fn damaged(s: Scenario) {
    let fs = SimFs::new();
    let mut store = QueueStore::open(fs.clone(), DIR, QueueConfig::tiny()).expect("a fresh store opens");
    let mut expected: Appended = BTreeMap::new();
    let mut acked: BTreeMap<&str, u64> = BTreeMap::new();
    let mut counter = 0u8;
    for op in s.ops.into_iter().take(MAX_OPS) {
        match op {
            BuildOp::Append { eid, len, exclude } => {
                let eid = EIDS[usize::from(eid) % EIDS.len()];
                counter = counter.wrapping_add(1);
                let payload: Vec<u8> = (0..len).map(|i| counter ^ i).collect();
                let exclude = exclude.map(|p| DEVICES[usize::from(p)]);
                let a = store.append(eid, &payload, exclude).expect("append");
                let items = expected.entry(eid).or_default();
                items.push((payload, exclude));
                assert_eq!(a.increment, items.len() as u64);
            }
            BuildOp::Sync => {
                store.sync().expect("sync");
                for (eid, items) in &expected {
                    assert_eq!(store.durable_increment(eid), items.len() as u64);
                    acked.insert(eid, items.len() as u64);
                }
            }
            BuildOp::Touch { eid, phone } => {
                let eid = EIDS[usize::from(eid) % EIDS.len()];
                store.touch(eid, DEVICES[usize::from(phone)], NOW).expect("touch");
            }
            BuildOp::Commit { eid, phone, delta } => {
                let eid = EIDS[usize::from(eid) % EIDS.len()];
                let device = DEVICES[usize::from(phone)];
                if let Some(c) = store.committed(eid, device) {
                    let to = c + u64::from(delta);
                    if to <= store.durable_increment(eid) {
                        store.commit(eid, device, to).expect("commit");
                    }
                }
            }
            BuildOp::Spare => {
                store.prepare_spare().expect("spare");
            }
            BuildOp::Reopen => {
                store.close().expect("close");
                store = QueueStore::open(fs.clone(), DIR, QueueConfig::tiny()).expect("a clean close reopens");
                for (eid, items) in &expected {
                    acked.insert(eid, items.len() as u64);
                }
            }
        }
    }
    match s.end {
        End::Close => {
            store.close().expect("close");
            for (eid, items) in &expected {
                acked.insert(eid, items.len() as u64);
            }
        }
        End::Crash { keep, tear } => {
            drop(store);
            fs.crash(CrashPlan {
                keep: usize::from(keep),
                tear: tear.map(usize::from),
            });
        }
    }

    let dir = Path::new(DIR);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for name in fs.list(dir).expect("list") {
        let bytes = fs.read_file(&dir.join(&name)).expect("a listed file reads");
        files.insert(name, bytes);
    }
    // Where every item record ends, before any damage.
    let mut ends: BTreeMap<(String, u64), (u32, u64)> = BTreeMap::new();
    for (name, bytes) in &files {
        if let Some(id) = seg_id(name) {
            for (eid, inc, end) in item_ends(bytes) {
                ends.insert((eid, inc), (id, end));
            }
        }
    }

    // The first damaged byte of the log, as (segment, offset); damage to other files is not damage to data.
    let mut first: Option<(u32, u64)> = None;
    for d in s.damage.into_iter().take(8) {
        let names: Vec<String> = files.keys().cloned().collect();
        if names.is_empty() {
            break;
        }
        let pick = |f: u8| names[usize::from(f) % names.len()].clone();
        let (name, at) = match d {
            Damage::Truncate { file, len } => {
                let name = pick(file);
                let bytes = files.get_mut(&name).expect("picked from the keys");
                let len = usize::from(len);
                if len >= bytes.len() {
                    continue;
                }
                bytes.truncate(len);
                (name, len as u64)
            }
            Damage::Flip { file, offset, xor } => {
                let name = pick(file);
                let bytes = files.get_mut(&name).expect("picked from the keys");
                if bytes.is_empty() {
                    continue;
                }
                let at = usize::from(offset) % bytes.len();
                bytes[at] ^= xor.get();
                (name, at as u64)
            }
            Damage::Delete { file } => {
                let name = pick(file);
                files.remove(&name);
                (name, 0)
            }
        };
        if let Some(id) = seg_id(&name) {
            first = Some(first.map_or((id, at), |f| f.min((id, at))));
        }
    }

    let fs = fs_with(&files);
    let valid = valid_items(&files);
    match QueueStore::open(fs.clone(), DIR, QueueConfig::tiny()) {
        Ok(store) => {
            let readable = read_all(&store, &valid, Some(&expected));
            // Every acknowledged item before the first damaged byte survives, exactly.
            for (eid, &last) in &acked {
                for inc in 1..=last {
                    let &(seg, end) = ends
                        .get(&(eid.to_string(), inc))
                        .unwrap_or_else(|| panic!("acknowledged {eid} #{inc} has a record"));
                    let intact = first.is_none_or(|f| (seg, end) <= f);
                    if intact {
                        assert!(
                            readable.get(*eid).is_some_and(|r| r.contains(&inc)),
                            "acknowledged {eid} #{inc} (segment {seg}, end {end}) lost; first damage {first:?}"
                        );
                    }
                }
            }
            still_works(store, &fs);
        }
        Err(e) => {
            // Refusing to open is allowed only for damaged segments, and only as damage or a missing item.
            assert!(first.is_some(), "no segment was damaged, yet open failed: {e}");
            assert_store_error(&e);
        }
    }
}
