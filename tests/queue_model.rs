//! Model-based test of the durable queue: random operations run against the store (on the simulated filesystem)
//! and against a plain in-memory model of SPEC §17; every answer and every observable state must agree.
//!
//! Mid-sequence restarts come in every kind: a clean close and reopen, a reopen after simply dropping the store
//! (the process died, the kernel kept its writes), and crashes. With a write buffer larger than any workload
//! (`store_matches_model`), nothing reaches a file before a sync, so a power loss leaves exactly the state at the
//! last sync. With a small write buffer (`store_matches_model_through_partial_crashes`), unsynced records reach the
//! files in pieces, and a crash keeps any prefix of the pending writes plus a torn piece of the next: the store must
//! then come back as the model stood after some operation since the last sync, never anything else.

use std::collections::BTreeMap;

use bimip::store::queue::{
    CrashPlan, DAY_MS, DeviceInfo, DeviceStatus, QueueConfig, QueueError, QueueStore, SimFs, Usage,
};
use proptest::prelude::*;

const EIDS: [&str; 3] = ["alice", "bob", "carol"];
const DEVICES: [&str; 2] = ["phone", "laptop"];
const DIR: &str = "/model";

#[derive(Debug, Clone)]
enum Op {
    Append {
        eid: usize,
        len: usize,
        exclude: Option<usize>,
    },
    Sync,
    Read {
        eid: usize,
        after: u64,
        limit: usize,
    },
    Touch {
        eid: usize,
        dev: usize,
    },
    Commit {
        eid: usize,
        dev: usize,
        delta: u64,
    },
    Retain {
        hours: i64,
    },
    Reopen,
    Crash,
    /// Drop the store without closing it and reopen: buffered records are lost, written ones stay.
    DropReopen,
    /// Power loss keeping `keep` of the pending filesystem operations and maybe a torn piece of the next write.
    CrashPartial {
        keep: prop::sample::Index,
        tear: Option<prop::sample::Index>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..3usize, 0..60usize, proptest::option::of(0..2usize))
            .prop_map(|(eid, len, exclude)| Op::Append { eid, len, exclude }),
        3 => Just(Op::Sync),
        3 => (0..3usize, 0..12u64, 0..8usize).prop_map(|(eid, after, limit)| Op::Read { eid, after, limit }),
        3 => (0..3usize, 0..2usize).prop_map(|(eid, dev)| Op::Touch { eid, dev }),
        4 => (0..3usize, 0..2usize, 0..6u64).prop_map(|(eid, dev, delta)| Op::Commit { eid, dev, delta }),
        2 => prop_oneof![Just(0i64), Just(5), Just(24 * 31)].prop_map(|hours| Op::Retain { hours }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

fn op_with_partial_crashes() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => op(),
        1 => Just(Op::DropReopen),
        2 => (any::<prop::sample::Index>(), proptest::option::of(any::<prop::sample::Index>()))
            .prop_map(|(keep, tear)| Op::CrashPartial { keep, tear }),
    ]
}

#[derive(Debug, Clone, Default)]
struct MEid {
    items: Vec<(Vec<u8>, Option<String>)>,
    low: u64,
    durable_last: u64,
    devices: BTreeMap<String, (u64, i64)>,
    forgotten: BTreeMap<String, i64>,
}

impl MEid {
    fn new() -> MEid {
        MEid {
            low: 1,
            ..Default::default()
        }
    }
    fn last(&self) -> u64 {
        self.items.len() as u64
    }
}

#[derive(Debug, Clone, Default)]
struct Model {
    eids: BTreeMap<String, MEid>,
}

impl Model {
    fn sync(&mut self) {
        for e in self.eids.values_mut() {
            e.durable_last = e.last();
        }
    }

    fn retain(&mut self, now: i64) -> (Vec<(String, String)>, u64) {
        let mut forgotten = Vec::new();
        let mut removed = 0;
        for (name, e) in &mut self.eids {
            let stale: Vec<String> = e
                .devices
                .iter()
                .filter(|(_, (_, seen))| seen + 30 * DAY_MS <= now)
                .map(|(d, _)| d.clone())
                .collect();
            for d in stale {
                e.devices.remove(&d);
                e.forgotten.insert(d.clone(), now);
                forgotten.push((name.clone(), d));
            }
            if e.devices.is_empty() {
                continue;
            }
            while e.low <= e.durable_last {
                let i = e.low;
                let exclude = e.items[i as usize - 1].1.as_deref();
                if !e
                    .devices
                    .iter()
                    .all(|(d, (c, _))| *c >= i || exclude == Some(d.as_str()))
                {
                    break;
                }
                e.low += 1;
                removed += 1;
            }
        }
        self.sync();
        (forgotten, removed)
    }
}

fn config(write_buffer_bytes: usize) -> QueueConfig {
    QueueConfig {
        segment_bytes: 1024,
        index_interval_bytes: 256,
        write_buffer_bytes,
        ..QueueConfig::default()
    }
}

/// Nothing reaches the file before a sync, so a power loss leaves exactly the last synced state.
const NO_EARLY_WRITES: usize = 1 << 20;
/// Records reach the file every ~100 bytes, before any sync.
const EARLY_WRITES: usize = 100;

fn compare(store: &QueueStore<SimFs>, m: &Model) -> Result<(), TestCaseError> {
    for (name, e) in &m.eids {
        prop_assert_eq!(store.last_increment(name), e.last(), "last_increment of {}", name);
        prop_assert_eq!(store.oldest_retained(name), e.low, "oldest_retained of {}", name);
        prop_assert_eq!(store.durable_increment(name), e.durable_last, "durable of {}", name);
        let retained = &e.items[e.low as usize - 1..];
        let usage = Usage {
            items: retained.len() as u64,
            bytes: retained.iter().map(|(p, _)| p.len() as u64).sum(),
        };
        prop_assert_eq!(store.usage(name), usage);
        let devices: Vec<DeviceInfo> = e
            .devices
            .iter()
            .map(|(d, (c, seen))| DeviceInfo {
                device: d.clone(),
                committed: *c,
                last_seen: *seen,
            })
            .collect();
        prop_assert_eq!(store.devices(name), devices);
        for (d, at) in &e.forgotten {
            prop_assert_eq!(store.forgotten(name, d), Some(*at));
        }
    }
    prop_assert_eq!(store.eids().count(), m.eids.len());
    Ok(())
}

/// After a restart that may keep unsynced records: the store must equal one of the model's states since the last
/// sync (`since_sync[0]` is the state at the sync), every one of them made durable. Returns the one it equals.
fn recovered(store: &QueueStore<SimFs>, since_sync: &[Model]) -> Result<Model, TestCaseError> {
    for candidate in since_sync.iter().rev() {
        let mut c = candidate.clone();
        c.sync();
        if compare(store, &c).is_ok() {
            return Ok(c);
        }
    }
    Err(TestCaseError::fail(format!(
        "the recovered store matches none of the {} states since the last sync",
        since_sync.len()
    )))
}

fn run(ops: Vec<Op>, write_buffer_bytes: usize) -> Result<(), TestCaseError> {
    let config = || config(write_buffer_bytes);
    let fs = SimFs::new();
    let mut store = QueueStore::open(fs.clone(), DIR, config()).unwrap();
    let mut m = Model::default();
    let mut durable = Model::default();
    // The model after each operation since the last sync (or restart), oldest first.
    let mut since_sync: Vec<Model> = vec![Model::default()];
    let mut now: i64 = 1_700_000_000_000;
    let mut counter = 0u8;
    for op in ops {
        let settles = !matches!(
            op,
            Op::Append { .. } | Op::Read { .. } | Op::Touch { .. } | Op::Commit { .. }
        );
        match op {
            Op::Append { eid, len, exclude } => {
                counter = counter.wrapping_add(1);
                let payload: Vec<u8> = (0..len).map(|i| counter.wrapping_add(i as u8)).collect();
                let exclude = exclude.map(|d| DEVICES[d]);
                let a = store.append(EIDS[eid], &payload, exclude).unwrap();
                let e = m.eids.entry(EIDS[eid].to_string()).or_insert_with(MEid::new);
                e.items.push((payload, exclude.map(str::to_string)));
                prop_assert_eq!(a.increment, e.last());
            }
            Op::Sync => {
                store.sync().unwrap();
                m.sync();
                durable = m.clone();
            }
            Op::Read { eid, after, limit } => {
                let got = store.read(EIDS[eid], after, limit).unwrap();
                let want: Vec<(u64, Vec<u8>, Option<String>)> = match m.eids.get(EIDS[eid]) {
                    None => Vec::new(),
                    Some(e) => ((after + 1).max(e.low)..=e.durable_last)
                        .take(limit)
                        .map(|i| (i, e.items[i as usize - 1].0.clone(), e.items[i as usize - 1].1.clone()))
                        .collect(),
                };
                let got: Vec<(u64, Vec<u8>, Option<String>)> = got
                    .into_iter()
                    .map(|it| (it.increment, it.payload.to_vec(), it.exclude))
                    .collect();
                prop_assert_eq!(got, want);
            }
            Op::Touch { eid, dev } => {
                let status = store.touch(EIDS[eid], DEVICES[dev], now).unwrap();
                let e = m.eids.entry(EIDS[eid].to_string()).or_insert_with(MEid::new);
                let want = match e.devices.get_mut(DEVICES[dev]) {
                    Some((c, seen)) => {
                        *seen = (*seen).max(now);
                        DeviceStatus::Known { committed: *c }
                    }
                    None => {
                        let committed = e.low - 1;
                        e.devices.insert(DEVICES[dev].to_string(), (committed, now));
                        match e.forgotten.remove(DEVICES[dev]) {
                            Some(at) => DeviceStatus::Returning {
                                committed,
                                forgotten_at: at,
                            },
                            None => DeviceStatus::New { committed },
                        }
                    }
                };
                prop_assert_eq!(status, want);
            }
            Op::Commit { eid, dev, delta } => {
                let current = store.committed(EIDS[eid], DEVICES[dev]).unwrap_or(0);
                let to = current + delta;
                let res = store.commit(EIDS[eid], DEVICES[dev], to);
                match m.eids.get_mut(EIDS[eid]).and_then(|e| {
                    let durable = e.durable_last;
                    e.devices.get_mut(DEVICES[dev]).map(|d| (d, durable))
                }) {
                    None => prop_assert!(matches!(res, Err(QueueError::UnknownDevice { .. })), "{:?}", res),
                    Some((_, durable)) if to > durable => {
                        prop_assert!(matches!(res, Err(QueueError::NotDurable { .. })), "{:?}", res)
                    }
                    Some(((c, _), _)) => {
                        let moved = to > *c;
                        *c = (*c).max(to);
                        prop_assert_eq!(res.unwrap(), moved);
                    }
                }
            }
            Op::Retain { hours } => {
                now += hours * 3_600_000;
                let report = store.retain(now).unwrap();
                let (mut forgotten, removed) = m.retain(now);
                let mut got = report.forgotten.clone();
                got.sort();
                forgotten.sort();
                prop_assert_eq!(got, forgotten);
                prop_assert_eq!(report.removed_items, removed);
                durable = m.clone();
            }
            Op::Reopen => {
                store.close().unwrap();
                store = QueueStore::open(fs.clone(), DIR, config()).unwrap();
                prop_assert!(store.open_report().truncated.is_empty());
                prop_assert_eq!(
                    store.open_report().scanned_bytes,
                    0,
                    "a clean close leaves nothing to scan"
                );
                m.sync();
                durable = m.clone();
            }
            Op::Crash => {
                drop(store);
                fs.crash(CrashPlan::LOSE_ALL);
                store = QueueStore::open(fs.clone(), DIR, config()).unwrap();
                m = durable.clone();
            }
            Op::DropReopen => {
                drop(store);
                store = QueueStore::open(fs.clone(), DIR, config()).unwrap();
                m = recovered(&store, &since_sync)?;
                durable = m.clone();
            }
            Op::CrashPartial { keep, tear } => {
                drop(store);
                let keep = keep.index(fs.pending_ops() + 1);
                let tear = tear.and_then(|t| fs.pending_write_len(keep).map(|len| t.index(len + 1)));
                fs.crash(CrashPlan { keep, tear });
                store = QueueStore::open(fs.clone(), DIR, config()).unwrap();
                m = recovered(&store, &since_sync)?;
                durable = m.clone();
            }
        }
        compare(&store, &m)?;
        // A sync, retention or restart makes everything so far durable: the states to choose from start again.
        if settles {
            since_sync.clear();
        }
        since_sync.push(m.clone());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops, NO_EARLY_WRITES)?;
    }

    #[test]
    fn store_matches_model_through_partial_crashes(ops in proptest::collection::vec(op_with_partial_crashes(), 1..80)) {
        run(ops, EARLY_WRITES)?;
    }
}
