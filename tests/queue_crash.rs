//! Crash consistency of the durable queue on the simulated filesystem.
//!
//! One deterministic workload (appends, syncs, session starts, commits, retention with segment copies and
//! deletes, clean reopens) runs over tiny segments and index intervals, so rolls, index chunks, index rewrites and
//! compactions happen every few operations. For every filesystem operation n of the workload, the power is cut
//! before operation n; from that point several crashes are tried (every pending write survives, none does, a
//! random prefix does, a random prefix plus a torn piece of the next write), the store is reopened, and the
//! invariants are checked against what the workload saw acknowledged.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use bimip::store::queue::{
    CrashPlan, DAY_MS, Finding, Fs, QueueConfig, QueueError, QueueStore, SimFile, SimFs, SpareJob, SyncTicket,
    verify_with,
};

const EIDS: [&str; 3] = ["alice", "bob", "carol"];
const DEVICES: [&str; 2] = ["d1", "d2"];
const DIR: &str = "/queue";

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// An appended item: payload and excluded device.
type Attempted = (Vec<u8>, Option<&'static str>);

/// What the workload knows: everything attempted, and what a completed sync acknowledged.
#[derive(Default, Clone)]
struct Model {
    /// Per EID, item i+1's (payload, exclude).
    attempted: BTreeMap<&'static str, Vec<Attempted>>,
    acked_last: BTreeMap<&'static str, u64>,
    commits: BTreeMap<(&'static str, &'static str), u64>,
    acked_commits: BTreeMap<(&'static str, &'static str), u64>,
    touched: BTreeMap<(&'static str, &'static str), i64>,
    acked_touched: BTreeMap<(&'static str, &'static str), i64>,
    /// Devices a retention call may have forgotten.
    maybe_forgotten: Vec<(&'static str, &'static str)>,
    /// What retention did: (removed items, copied items, deleted segments, forgotten devices).
    retained: (u64, u64, usize, usize),
    /// Segments started from a spare, over every store the workload opened.
    spare_segments: u64,
}

impl Model {
    /// A pipelined sync finished: what had been attempted when it began is acknowledged.
    fn acknowledge_from(&mut self, began: &Model) {
        for (eid, items) in &began.attempted {
            self.acked_last.insert(eid, items.len() as u64);
        }
        self.acked_commits = began.commits.clone();
        self.acked_touched = began.touched.clone();
    }

    fn acknowledge(&mut self) {
        for (eid, items) in &self.attempted {
            self.acked_last.insert(eid, items.len() as u64);
        }
        self.acked_commits = self.commits.clone();
        self.acked_touched = self.touched.clone();
    }
}

/// Runs the workload until it ends or the filesystem dies. Returns the model and whether it ran to the end. With
/// `spares`, a spare segment job is taken every 7 steps and run 3 steps later, in between the store's own writes,
/// as a committer's blocking thread would.
fn workload(fs: &SimFs, seed: u64, steps: usize, spares: bool) -> (Model, bool) {
    let mut rng = XorShift(seed);
    let mut m = Model::default();
    let mut now: i64 = 1_700_000_000_000;
    let Ok(mut store) = QueueStore::open(fs.clone(), DIR, QueueConfig::tiny()) else {
        return (m, false);
    };
    // A pipelined sync in flight (QueueStore::begin_sync) and the model when it began.
    let mut in_flight: Option<(SyncTicket<SimFile>, Model)> = None;
    // Runs the fsync of the ticket in flight and finishes it; false if that failed.
    let finish =
        |store: &mut QueueStore<SimFs>, m: &mut Model, in_flight: &mut Option<(SyncTicket<SimFile>, Model)>| {
            let Some((ticket, began)) = in_flight.take() else {
                return true;
            };
            let lsn = ticket.lsn();
            match store.finish_sync(ticket.fsync()) {
                Ok(durable) => {
                    assert!(durable >= lsn, "a finished sync acknowledges its lsn");
                    m.acknowledge_from(&began);
                    for eid in EIDS {
                        // Exactly what was written when the sync began is durable (readable, committable), not the
                        // appends made while it was in flight: only those were surely fsynced.
                        assert_eq!(
                            store.durable_increment(eid),
                            m.acked_last.get(eid).copied().unwrap_or(0),
                            "{eid}: durable after a pipelined sync"
                        );
                    }
                    true
                }
                Err(_) => false,
            }
        };
    let mut held: Option<(SpareJob<SimFs>, usize)> = None;
    for step in 0..steps {
        if spares {
            if let Some((job, _)) = held.take_if(|(_, at)| *at == step)
                && store.install_spare(job.run()).is_err()
            {
                return (m, false);
            }
            if step % 7 == 0 && held.is_none() {
                held = store.spare_job().map(|job| (job, step + 3));
            }
        }
        let eid = EIDS[rng.below(3) as usize];
        let dev = DEVICES[rng.below(2) as usize];
        let r = rng.below(100);
        // Everything but appends, touches and commits waits for the sync in flight, as the group committer does.
        if !matches!(r, 0..45 | 52..82 | 88..94) && !finish(&mut store, &mut m, &mut in_flight) {
            return (m, false);
        }
        let ok = match r {
            0..45 => {
                let len = 1 + rng.below(120) as usize;
                let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                let exclude = (rng.below(3) == 0).then_some(dev);
                let res = store.append(eid, &payload, exclude);
                if res.is_ok() {
                    m.attempted.entry(eid).or_default().push((payload, exclude));
                }
                res.is_ok()
            }
            45..52 => store.sync().map(|_| m.acknowledge()).is_ok(),
            // Pipelined: finish the sync in flight, whose batch was written while this one accumulated, then begin
            // the next.
            52..60 => {
                if finish(&mut store, &mut m, &mut in_flight) {
                    match store.begin_sync() {
                        Ok(ticket) => {
                            in_flight = Some((ticket, m.clone()));
                            true
                        }
                        Err(_) => false,
                    }
                } else {
                    false
                }
            }
            60..70 => {
                let res = store.touch(eid, dev, now);
                if res.is_ok() {
                    m.touched.insert((eid, dev), now);
                    m.commits.entry((eid, dev)).or_insert(0);
                }
                res.is_ok()
            }
            70..82 => match store.committed(eid, dev) {
                Some(c) => {
                    let durable = store.durable_increment(eid);
                    if durable > c {
                        let to = c + 1 + rng.below(durable - c);
                        let res = store.commit(eid, dev, to);
                        if res.is_ok() {
                            m.commits.insert((eid, dev), to);
                        }
                        res.is_ok()
                    } else {
                        true
                    }
                }
                None => true,
            },
            82..88 => {
                for (&(e, d), &seen) in &m.touched {
                    if seen + 30 * DAY_MS <= now && !m.maybe_forgotten.contains(&(e, d)) {
                        m.maybe_forgotten.push((e, d));
                    }
                }
                match store.retain(now) {
                    Ok(r) => {
                        m.acknowledge();
                        m.retained.0 += r.removed_items;
                        m.retained.1 += r.copied_items;
                        m.retained.2 += r.deleted_segments.len();
                        m.retained.3 += r.forgotten.len();
                        true
                    }
                    Err(_) => false,
                }
            }
            88..92 => {
                now += 3_600_000;
                true
            }
            92..94 => {
                now += 31 * DAY_MS;
                true
            }
            94..97 => {
                m.spare_segments += store.stats().spare_segments;
                // A job taken from the store being closed belongs to no store after the reopen.
                held = None;
                if store.close().is_err() {
                    return (m, false);
                }
                m.acknowledge();
                match QueueStore::open(fs.clone(), DIR, QueueConfig::tiny()) {
                    Ok(s) => {
                        store = s;
                        true
                    }
                    Err(_) => return (m, false),
                }
            }
            _ => store.sync().map(|_| m.acknowledge()).is_ok(),
        };
        if !ok {
            return (m, false);
        }
    }
    if !finish(&mut store, &mut m, &mut in_flight) {
        return (m, false);
    }
    m.spare_segments += store.stats().spare_segments;
    let ok = store.close().is_ok();
    if ok {
        m.acknowledge();
    }
    (m, ok)
}

/// Every invariant a recovered store must satisfy given what the workload saw acknowledged.
fn check(store: &QueueStore<SimFs>, m: &Model, what: &str) {
    for eid in EIDS {
        let attempted = m.attempted.get(eid).map_or(&[][..], |v| &v[..]);
        let acked = m.acked_last.get(eid).copied().unwrap_or(0);
        let last = store.last_increment(eid);
        let low = store.oldest_retained(eid);
        assert!(
            last >= acked,
            "{what}: {eid} lost acknowledged items: last {last} < acked {acked}"
        );
        assert!(last <= attempted.len() as u64, "{what}: {eid} has items never appended");
        assert_eq!(
            store.durable_increment(eid),
            last,
            "{what}: {eid} recovered items must be durable"
        );
        let items = store
            .read(eid, 0, usize::MAX)
            .unwrap_or_else(|e| panic!("{what}: read {eid}: {e}"));
        assert_eq!(
            items.len() as u64,
            last + 1 - low,
            "{what}: {eid} retained range has a gap"
        );
        for (k, item) in items.iter().enumerate() {
            let inc = low + k as u64;
            assert_eq!(item.increment, inc, "{what}: {eid} increments out of order");
            let (payload, exclude) = &attempted[inc as usize - 1];
            assert_eq!(&item.payload[..], &payload[..], "{what}: {eid} item {inc} bytes differ");
            assert_eq!(
                item.exclude.as_deref(),
                *exclude,
                "{what}: {eid} item {inc} exclude differs"
            );
        }
        // QUE-9: nothing a known device still needs is gone.
        for d in store.devices(eid) {
            assert!(d.committed <= last, "{what}: {eid}/{} committed past the end", d.device);
            let needed = (d.committed + 1..=last).find(|i| attempted[*i as usize - 1].1 != Some(d.device.as_str()));
            if let Some(needed) = needed {
                assert!(
                    low <= needed,
                    "{what}: {eid} removed item {needed} that {} still needs",
                    d.device
                );
            }
        }
        for dev in DEVICES {
            let key = (eid, dev);
            if m.maybe_forgotten.contains(&key) || !m.acked_touched.contains_key(&key) {
                continue;
            }
            let c = store
                .committed(eid, dev)
                .unwrap_or_else(|| panic!("{what}: {eid}/{dev} was forgotten wrongly"));
            let acked = m.acked_commits.get(&key).copied().unwrap_or(0);
            assert!(c >= acked, "{what}: {eid}/{dev} commit went back from {acked} to {c}");
            let attempted_c = m.commits.get(&key).copied().unwrap_or(0);
            assert!(
                c <= attempted_c.max(low - 1),
                "{what}: {eid}/{dev} committed {c} never asked for"
            );
        }
    }
}

/// After recovery the store must keep working: a new item lands right after the recovered ones and survives a
/// clean reopen.
fn continue_after(fs: &SimFs, mut store: QueueStore<SimFs>, eid: &str, what: &str) {
    let before = store.last_increment(eid);
    let a = store.append(eid, b"after the crash", None).unwrap();
    assert_eq!(a.increment, before + 1, "{what}");
    store.sync().unwrap();
    store.close().unwrap();
    let store = QueueStore::open(fs.clone(), DIR, QueueConfig::tiny()).unwrap();
    assert_eq!(store.last_increment(eid), before + 1, "{what}");
    let items = store.read(eid, before, 10).unwrap();
    assert_eq!(&items[0].payload[..], b"after the crash", "{what}");
    assert!(
        store.open_report().truncated.is_empty(),
        "{what}: a clean reopen cut bytes"
    );
}

#[test]
fn crash_at_every_operation() {
    let started = Instant::now();
    let mut points = 0u64;
    let mut truncations = 0u64;
    let mut spare_segments = 0;
    for (seed, spares) in [
        (0x9e37_79b9_7f4a_7c15u64, false),
        (0x2545_f491_4f6c_dd1d, true),
        (0x0123_4567_89ab_cdef, true),
    ] {
        let steps = 300;
        // A clean run gives the number of filesystem operations to cut at.
        let clean = SimFs::new();
        let (model, finished) = workload(&clean, seed, steps, spares);
        assert!(finished, "the workload must complete without faults");
        let total = clean.ops();
        let store = QueueStore::open(clean.clone(), DIR, QueueConfig::tiny()).unwrap();
        check(&store, &model, "clean run");
        println!(
            "seed {seed:x}: {total} filesystem operations, {} segments at the end, retention (removed, copied, \
             deleted segments, forgotten devices) = {:?}",
            store.segments().len(),
            model.retained
        );
        assert!(model.retained.0 > 0 && model.retained.1 > 0 && model.retained.2 > 0 && model.retained.3 > 0);
        assert_eq!(
            model.spare_segments > 0,
            spares,
            "segments started from spares: {}",
            model.spare_segments
        );
        spare_segments += model.spare_segments;

        let mut rng = XorShift(seed ^ 0xdead_beef);
        for n in 0..total {
            let fs = SimFs::new();
            fs.cut_power_after(n);
            let (model, _) = workload(&fs, seed, steps, spares);
            let pending = fs.pending_ops();
            let keep = rng.below(pending as u64 + 1) as usize;
            let tear_at = rng.below(pending.max(1) as u64) as usize;
            let tear = fs.pending_write_len(tear_at).map(|len| rng.below(len as u64) as usize);
            let plans = [
                ("keep all", CrashPlan::KEEP_ALL),
                ("lose all", CrashPlan::LOSE_ALL),
                ("prefix", CrashPlan { keep, tear: None }),
                (
                    "torn",
                    CrashPlan {
                        keep: tear_at,
                        tear: tear.or(Some(0)),
                    },
                ),
            ];
            for (name, plan) in plans {
                let crashed = fs.fork();
                crashed.crash(plan);
                let what = format!("seed {seed:x} op {n}/{total} {name} {plan:?}");
                // `bimip queue verify` reads a crash as recovery does: torn writes at most, never damage.
                if crashed.list(Path::new(DIR)).is_ok() {
                    let verified = verify_with(&crashed, Path::new(DIR)).unwrap();
                    assert!(
                        verified.findings.iter().all(|f| matches!(f, Finding::TornTail { .. })),
                        "{what}: verify: {verified}"
                    );
                }
                let store = match QueueStore::open(crashed.clone(), DIR, QueueConfig::tiny()) {
                    Ok(s) => s,
                    Err(e) => panic!("{what}: reopen failed: {e}"),
                };
                truncations += store.open_report().truncated.len() as u64;
                check(&store, &model, &what);
                let recovery_ops = crashed.ops();
                drop(store);
                // Crash again during that recovery (truncation, index rewrites): the next open must still be whole.
                if name == "torn" && n % 3 == 0 {
                    for k in 0..6 {
                        let again = fs.fork();
                        again.crash(plan);
                        let base = again.ops();
                        if base + k >= recovery_ops {
                            break;
                        }
                        again.cut_power_after(base + k);
                        let _ = QueueStore::open(again.clone(), DIR, QueueConfig::tiny());
                        again.crash(if k % 2 == 0 {
                            CrashPlan::LOSE_ALL
                        } else {
                            CrashPlan::KEEP_ALL
                        });
                        let store = QueueStore::open(again.clone(), DIR, QueueConfig::tiny())
                            .unwrap_or_else(|e| panic!("{what}: crash {k} ops into recovery: reopen failed: {e}"));
                        check(&store, &model, &format!("{what}, crash {k} ops into recovery"));
                        points += 1;
                    }
                }
                let store = QueueStore::open(crashed.clone(), DIR, QueueConfig::tiny()).unwrap();
                if n % 7 == 0 {
                    continue_after(&crashed, store, EIDS[(n % 3) as usize], &what);
                }
                points += 1;
            }
        }
    }
    println!(
        "crash points checked: {points} ({truncations} torn tails cut, {spare_segments} segments from spares in \
         the clean runs) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(points >= 1000, "only {points} crash points");
}

#[test]
fn fsync_failure_poisons_until_reopen() {
    let fs = SimFs::new();
    let mut store = QueueStore::open(fs.clone(), DIR, QueueConfig::tiny()).unwrap();
    store.append("alice", b"one", None).unwrap();
    store.sync().unwrap();
    store.append("alice", b"two", None).unwrap();
    fs.fail_next_sync();
    assert!(store.sync().is_err());
    assert!(matches!(
        store.append("alice", b"three", None),
        Err(QueueError::Poisoned)
    ));
    drop(store);
    fs.crash(CrashPlan::LOSE_ALL);
    let store = QueueStore::open(fs.clone(), DIR, QueueConfig::tiny()).unwrap();
    assert_eq!(store.last_increment("alice"), 1);
}

#[test]
fn rot_in_acknowledged_data_is_reported_not_skipped() {
    let fs = SimFs::new();
    let mut store = QueueStore::open(fs.clone(), DIR, QueueConfig::tiny()).unwrap();
    for i in 0..3u8 {
        store.append("alice", &[i; 40], None).unwrap();
        store.sync().unwrap();
    }
    drop(store); // no clean close: the tail stays unindexed, so open scans it
    let seg = Path::new(DIR).join("0000000001.seg");
    // Damage the first item (offset 16 + 32-byte header + "alice" + payload).
    assert!(fs.corrupt(&seg, 16 + 40, 0xff));
    match QueueStore::open(fs.clone(), DIR, QueueConfig::tiny()) {
        Err(QueueError::Corrupt {
            segment: 1, offset: 16, ..
        }) => {}
        other => panic!("expected a corruption error, got {other:?}"),
    }
    let report = bimip::store::queue::verify_with(&fs, Path::new(DIR)).unwrap();
    assert_eq!(report.exit_code(), 1);
    assert!(matches!(
        report.findings[0],
        bimip::store::queue::Finding::Corrupt {
            segment: 1,
            offset: 16,
            ..
        }
    ));
}

#[test]
fn rot_in_indexed_data_fails_the_read() {
    let fs = SimFs::new();
    let mut store = QueueStore::open(fs.clone(), DIR, QueueConfig::tiny()).unwrap();
    store.append("alice", &[1; 40], None).unwrap();
    store.append("alice", &[2; 40], None).unwrap();
    store.close().unwrap();
    assert!(fs.corrupt(&Path::new(DIR).join("0000000001.seg"), 16 + 40, 0xff));
    let store = QueueStore::open(fs.clone(), DIR, QueueConfig::tiny()).unwrap();
    assert!(matches!(
        store.read("alice", 0, 10),
        Err(QueueError::Corrupt {
            segment: 1,
            offset: 16,
            ..
        })
    ));
    assert_eq!(store.read("alice", 1, 10).unwrap().len(), 1);
}

#[test]
fn acknowledged_appends_in_rolled_segments_survive_power_loss() {
    let fs = SimFs::new();
    let mut store = QueueStore::open(fs.clone(), DIR, QueueConfig::tiny()).unwrap();
    for i in 0..30u8 {
        store.append("alice", &[i; 60], None).unwrap();
        store.sync().unwrap();
    }
    let segs = store.segments();
    drop(store);
    fs.crash(CrashPlan::LOSE_ALL);
    let store = QueueStore::open(fs.clone(), DIR, QueueConfig::tiny()).unwrap();
    assert_eq!(store.segments(), segs);
    assert_eq!(store.last_increment("alice"), 30);
}
