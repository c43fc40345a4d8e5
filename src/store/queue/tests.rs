//! The store on the real filesystem: reopen, damage, lost indexes, the CLI functions, the async committer.

use std::path::Path;

use super::*;

fn small() -> QueueConfig {
    QueueConfig {
        segment_bytes: 4096,
        index_interval_bytes: 1024,
        ..QueueConfig::default()
    }
}

fn fill(store: &mut QueueStore<RealFs>) {
    for i in 0..200u32 {
        let eid = ["alice", "bob", "carol"][i as usize % 3];
        let exclude = (i % 5 == 0).then_some("phone");
        store.append(eid, format!("message {i}").as_bytes(), exclude).unwrap();
        if i % 10 == 9 {
            store.sync().unwrap();
        }
    }
    store.touch("alice", "phone", 1_000).unwrap();
    store.touch("alice", "laptop", 1_000).unwrap();
    store.sync().unwrap();
    store.commit("alice", "phone", 30).unwrap();
    store.sync().unwrap();
}

fn expect_contents(store: &QueueStore<RealFs>) {
    let alice = store.read("alice", 0, usize::MAX).unwrap();
    assert_eq!(alice.len(), 67);
    assert_eq!(&alice[0].payload[..], b"message 0");
    assert_eq!(alice[0].exclude.as_deref(), Some("phone"));
    assert_eq!(&alice[66].payload[..], b"message 198");
    assert_eq!(store.last_increment("bob"), 67);
    assert_eq!(store.last_increment("carol"), 66);
    assert_eq!(store.committed("alice", "phone"), Some(30));
    assert_eq!(store.committed("alice", "laptop"), Some(0));
}

fn segment_files(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

#[test]
fn write_close_reopen_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = QueueStore::open(RealFs, tmp.path(), small()).unwrap();
    fill(&mut store);
    store.close().unwrap();
    let store = QueueStore::open(RealFs, tmp.path(), small()).unwrap();
    assert_eq!(
        store.open_report().scanned_bytes,
        0,
        "a clean close leaves nothing to scan"
    );
    assert!(store.open_report().segments > 1);
    expect_contents(&store);
    drop(store);
    // Without a clean close, only the active segment's unindexed tail is scanned.
    let mut store = QueueStore::open(RealFs, tmp.path(), small()).unwrap();
    store.append("dave", b"x", None).unwrap();
    store.sync().unwrap();
    drop(store);
    let store = QueueStore::open(RealFs, tmp.path(), small()).unwrap();
    let r = store.open_report();
    assert!(r.scanned_bytes > 0 && r.scanned_bytes < 4096, "{r:?}");
    expect_contents(&store);
    let report = verify(tmp.path()).unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    let dump = inspect(tmp.path()).unwrap();
    assert!(dump.contains("alice  last_increment 67"), "{dump}");
    assert!(dump.contains("device phone  committed 30"), "{dump}");
}

#[test]
fn flipped_byte_mid_segment_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = QueueStore::open(RealFs, tmp.path(), small()).unwrap();
    fill(&mut store);
    store.close().unwrap();
    let first = &segment_files(tmp.path(), "seg")[0];
    let mut bytes = std::fs::read(first).unwrap();
    let at = bytes.windows(10).position(|w| w == b"message 20").unwrap();
    bytes[at + 3] ^= 0x40;
    std::fs::write(first, &bytes).unwrap();
    let report = verify(tmp.path()).unwrap();
    assert_eq!(report.exit_code(), 1, "{report}");
    assert_eq!(report.findings.len(), 1, "{report}");
    let Finding::Corrupt { segment: 1, offset, .. } = report.findings[0] else {
        panic!("{report}")
    };
    assert!(offset < at as u64 && offset + 100 > at as u64, "{report}");
    // The index still opens the store; the damaged item is refused by the read, never returned.
    let store = QueueStore::open(RealFs, tmp.path(), small()).unwrap();
    let results: Vec<_> = ["alice", "bob", "carol"]
        .iter()
        .map(|e| store.read(e, 0, usize::MAX))
        .collect();
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(QueueError::Corrupt { segment: 1, .. })))
    );
}

#[test]
fn torn_tail_is_reported_then_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = QueueStore::open(RealFs, tmp.path(), small()).unwrap();
    fill(&mut store);
    drop(store);
    let last = segment_files(tmp.path(), "seg").pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let good = bytes.len() as u64;
    let mut rec = Vec::new();
    record::encode(&mut rec, record::Kind::Item, b"alice", b"", 68, 0, b"never synced");
    bytes.extend_from_slice(&rec[..rec.len() - 3]);
    std::fs::write(&last, &bytes).unwrap();
    let report = verify(tmp.path()).unwrap();
    assert_eq!(report.exit_code(), 1);
    assert!(
        matches!(report.findings[0], Finding::TornTail { offset, .. } if offset == good),
        "{report}"
    );
    let store = QueueStore::open(RealFs, tmp.path(), small()).unwrap();
    assert_eq!(store.open_report().truncated[0].offset, good);
    expect_contents(&store);
    drop(store);
    assert_eq!(verify(tmp.path()).unwrap().exit_code(), 0);
}

#[test]
fn lost_and_damaged_indexes_are_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = QueueStore::open(RealFs, tmp.path(), small()).unwrap();
    fill(&mut store);
    store.retain(2_000).unwrap();
    store.close().unwrap();
    let idx = segment_files(tmp.path(), "idx");
    assert!(idx.len() > 1);
    std::fs::remove_file(&idx[0]).unwrap();
    let mut damaged = std::fs::read(&idx[1]).unwrap();
    let n = damaged.len();
    damaged[n - 2] ^= 1;
    std::fs::write(&idx[1], &damaged).unwrap();
    let store = QueueStore::open(RealFs, tmp.path(), small()).unwrap();
    assert_eq!(
        store.open_report().rebuilt_indexes.len(),
        2,
        "{:?}",
        store.open_report()
    );
    expect_contents(&store);
    drop(store);
    assert_eq!(segment_files(tmp.path(), "idx").len(), idx.len());
    let store = QueueStore::open(RealFs, tmp.path(), small()).unwrap();
    assert!(store.open_report().rebuilt_indexes.is_empty());
    expect_contents(&store);
}

#[test]
fn verify_cannot_read_a_missing_directory() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(verify_exit_code(&verify(tmp.path().join("nope"))), 2);
    assert!(inspect(tmp.path().join("nope")).is_err());
}

#[test]
fn retention_and_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        max_items_per_eid: 3,
        ..small()
    };
    let mut store = QueueStore::open(RealFs, tmp.path(), cfg).unwrap();
    for i in 0..3u8 {
        store.append("alice", &[i; 10], None).unwrap();
    }
    assert!(store.would_overflow("alice", 1));
    store.sync().unwrap();
    // No known device: nothing may go (QUE-9).
    assert_eq!(store.retain(0).unwrap().removed_items, 0);
    assert_eq!(
        store.touch("alice", "phone", 0).unwrap(),
        DeviceStatus::New { committed: 0 }
    );
    store.commit("alice", "phone", 2).unwrap();
    assert_eq!(store.retain(1).unwrap().removed_items, 2);
    assert!(!store.would_overflow("alice", 1));
    let r = store.retain(31 * DAY_MS).unwrap();
    assert_eq!(r.forgotten, vec![("alice".to_string(), "phone".to_string())]);
    assert_eq!(
        store.touch("alice", "phone", 32 * DAY_MS).unwrap(),
        DeviceStatus::Returning {
            committed: 2,
            forgotten_at: 31 * DAY_MS
        }
    );
}

#[test]
fn group_committer_acknowledges_durable_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let store = QueueStore::open(RealFs, tmp.path(), small()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(async {
        let (committer, task) = GroupCommitter::spawn(store, GroupCommitConfig::default());
        let mut tasks = Vec::new();
        for w in 0..20 {
            let c = committer.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    let a = c
                        .append(format!("eid{}", w % 4), format!("{w}:{i}"), None)
                        .await
                        .unwrap();
                    assert!(a.increment >= 1);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let durable = committer.call(|s| s.durable_lsn()).await.unwrap();
        assert_eq!(durable, 500);
        drop(committer);
        task.join().await.unwrap()
    });
    for e in 0..4 {
        assert_eq!(store.read(&format!("eid{e}"), 0, usize::MAX).unwrap().len(), 125);
    }
    // The committer kept spares coming: the store moved onto one at once and rolled onto others.
    assert!(store.stats().spare_segments >= 2, "{:?}", store.stats());
    let segments = store.segments();
    store.close().unwrap();
    // Sealed segments and, after the close, the active one end at their last record; the spare is gone.
    for (id, written, _) in segments {
        let len = std::fs::metadata(tmp.path().join(seg_name(id))).unwrap().len();
        assert_eq!(len, written, "segment {id}");
    }
    assert!(!tmp.path().join(SPARE_NAME).exists());
    let store = QueueStore::open(RealFs, tmp.path(), small()).unwrap();
    assert_eq!(store.open_report().scanned_bytes, 0);
    for e in 0..4 {
        assert_eq!(store.read(&format!("eid{e}"), 0, usize::MAX).unwrap().len(), 125);
    }
}

/// Spares on the real filesystem, driven by hand: the roll renames the spare, seals the old segment at its last
/// record; a crash leaves the active segment's zero tail, which recovery reads as the end, not as a torn write.
#[test]
fn spare_segments_roll_seal_and_recover() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        segment_bytes: 64 << 10,
        ..small()
    };
    let mut store = QueueStore::open(RealFs, tmp.path(), cfg.clone()).unwrap();
    store.append("alice", b"before the spare", None).unwrap();
    store.sync().unwrap();
    assert!(store.prepare_spare().unwrap());
    assert!(store.spare_ready());
    assert!(!store.prepare_spare().unwrap(), "one spare at a time");
    // The first append after the spare is ready moves the store onto it.
    store.append("alice", b"on the spare", None).unwrap();
    store.sync().unwrap();
    assert_eq!(store.segments().len(), 2);
    let len = |id: u32| std::fs::metadata(tmp.path().join(seg_name(id))).unwrap().len();
    assert_eq!(len(1), store.segments()[0].1, "sealed at its last record");
    assert_eq!(len(2), cfg.segment_bytes, "the spare keeps its zeros");
    // Fill segment 2 past its size with a spare ready: the roll renames it.
    assert!(store.prepare_spare().unwrap());
    let mut i = 0u32;
    while store.segments().len() < 3 {
        store
            .append("bob", format!("item {i:05} {}", "x".repeat(200)).as_bytes(), None)
            .unwrap();
        store.sync().unwrap();
        i += 1;
    }
    assert_eq!(store.stats().spare_segments, 2);
    assert_eq!(len(2), store.segments()[1].1);
    assert_eq!(len(3), cfg.segment_bytes);
    assert!(store.prepare_spare().unwrap());
    let written = store.segments();
    drop(store); // a crash: no close, the zero tail stays

    let report = verify(tmp.path()).unwrap();
    assert!(report.findings.is_empty(), "{report}");
    let dump = inspect(tmp.path()).unwrap();
    assert!(
        dump.contains(&format!("spare segment: {} bytes", cfg.segment_bytes)),
        "{dump}"
    );
    // The active segment's zeros are not counted as its bytes.
    assert!(
        dump.contains(&format!("0000000003.seg  {} bytes", written[2].1)),
        "{dump}"
    );
    let store = QueueStore::open(RealFs, tmp.path(), cfg.clone()).unwrap();
    let open = store.open_report();
    assert!(
        open.truncated.is_empty() && open.dropped_segments.is_empty(),
        "{open:?}"
    );
    assert_eq!(store.last_increment("alice"), 2);
    assert_eq!(store.last_increment("bob"), i as u64);
    let bob = store.read("bob", 0, usize::MAX).unwrap();
    assert_eq!(
        &bob[i as usize - 1].payload[..11],
        format!("item {:05} ", i - 1).as_bytes()
    );
    assert_eq!(len(3), store.segments()[2].1, "recovery released the zeros");
    store.close().unwrap();
}

/// A torn write inside a spare's zeros is still a torn write: cut, reported, and nothing before it lost.
#[test]
fn torn_write_in_a_spare_is_cut() {
    let fs = SimFs::new();
    let dir = Path::new("/q");
    let cfg = QueueConfig::tiny();
    let mut store = QueueStore::open(fs.clone(), dir, cfg.clone()).unwrap();
    assert!(store.prepare_spare().unwrap());
    store.append("alice", &[1; 60], None).unwrap();
    store.sync().unwrap();
    assert_eq!(store.stats().spare_segments, 1);
    store.append("alice", &[2; 60], None).unwrap();
    // The batch's write is issued, its fsync is not.
    fs.cut_power_after(fs.ops() + 1);
    assert!(store.sync().is_err());
    drop(store);
    // 40 bytes of it land on the zeros: the batch's mark (32 bytes) and the start of the item's header.
    fs.crash(CrashPlan {
        keep: 0,
        tear: Some(40),
    });
    let report = verify_with(&fs, dir).unwrap();
    assert!(
        matches!(report.findings[..], [Finding::TornTail { segment: 2, .. }]),
        "{report}"
    );
    let store = QueueStore::open(fs.clone(), dir, cfg).unwrap();
    assert_eq!(store.last_increment("alice"), 1);
    assert_eq!(store.open_report().truncated.len(), 1, "{:?}", store.open_report());
    assert_eq!(&store.read("alice", 0, 10).unwrap()[0].payload[..], &[1; 60]);
}

/// `spare_after_bytes`: no spare while the active segment holds less.
#[test]
fn spares_wait_for_a_filled_quarter() {
    let fs = SimFs::new();
    let cfg = QueueConfig {
        spare_after_bytes: 512,
        ..QueueConfig::tiny()
    };
    let mut store = QueueStore::open(fs.clone(), Path::new("/q"), cfg).unwrap();
    let mut appended = 0;
    while store.spare_job().is_none() {
        assert!(store.active_end() < 512, "refused at {} bytes", store.active_end());
        store.append("alice", &[7; 40], None).unwrap();
        appended += 1;
    }
    assert!(store.active_end() >= 512);
    assert_eq!(
        appended, 7,
        "77-byte records after the 16-byte header: 16 + 7 x 77 is the first end past 512"
    );
}

/// A spare that could not be prepared turns preallocation off and leaves the store as it was.
#[test]
fn failed_spare_turns_preallocation_off() {
    let fs = SimFs::new();
    let dir = Path::new("/q");
    let mut store = QueueStore::open(fs.clone(), dir, QueueConfig::tiny()).unwrap();
    store.append("alice", b"kept", None).unwrap();
    store.sync().unwrap();
    let job = store.spare_job().unwrap();
    assert!(store.spare_job().is_none(), "one job at a time");
    let other = fs.fork();
    // The job runs on a filesystem whose power is cut: its create fails.
    other.cut_power_after(other.ops());
    let failed = SpareJob { fs: other, ..job }.run();
    assert!(matches!(store.install_spare(failed), Err(QueueError::Io { .. })));
    assert!(store.spare_job().is_none() && !store.spare_ready());
    store.append("alice", b"still works", None).unwrap();
    store.sync().unwrap();
    assert_eq!(store.stats().spare_segments, 0);
    assert_eq!(store.read("alice", 0, 10).unwrap().len(), 2);
}

/// `trim` drops an owner-consumed queue's durable items below a point, never undurable ones; the cut survives a
/// reopen once synced, and retention then releases the segments it emptied.
#[test]
fn trim_drops_durable_items_and_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = QueueStore::open(RealFs, tmp.path(), small()).unwrap();
    for i in 0..300u32 {
        store.append("#log", &[b'x'; 60], None).unwrap();
        if i % 10 == 9 {
            store.sync().unwrap();
        }
    }
    store.append("#log", b"pending", None).unwrap();
    assert!(
        matches!(store.trim("#log", 302), Err(QueueError::Invalid { .. })),
        "item 301 is not durable yet"
    );
    assert_eq!(store.trim("#log", 251).unwrap(), 250);
    assert_eq!(store.trim("#log", 100).unwrap(), 0, "never moves back");
    assert_eq!(store.oldest_retained("#log"), 251);
    store.sync().unwrap();
    let before = store.segments().len();
    let report = store.retain(1).unwrap();
    assert!(!report.deleted_segments.is_empty(), "{report:?}");
    assert!(store.segments().len() < before);
    drop(store); // no clean close
    let store = QueueStore::open(RealFs, tmp.path(), small()).unwrap();
    assert_eq!(store.oldest_retained("#log"), 251);
    let items = store.read("#log", 0, usize::MAX).unwrap();
    assert_eq!(items.len(), 51);
    assert_eq!(items[0].increment, 251);
    assert_eq!(&items[50].payload[..], b"pending");
}

/// An item read back, owned: (increment, payload, exclude).
type Owned = (u64, Vec<u8>, Option<String>);

/// A replay past several read-ahead windows through the real filesystem (hints on, `posix_fadvise` on Linux):
/// paged reads, interleaved between EIDs, from arbitrary starts, after a trim and a compaction moved items, all
/// return exactly what one whole `read` does and what was appended.
#[test]
fn replay_with_read_ahead_reads_what_was_written() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        segment_bytes: 4 << 20,
        ..QueueConfig::default()
    };
    let mut store = QueueStore::open(RealFs, tmp.path(), cfg.clone()).unwrap();
    let payload = |eid: usize, i: u64| {
        let mut p = vec![(i % 251) as u8; 12_000 + (i as usize * 7) % 5_000];
        p[..8].copy_from_slice(&i.to_le_bytes());
        p[8] = eid as u8;
        p
    };
    // Runs of 5 items per EID (~70 KB), ~24 MB per EID: three read-ahead windows, six segments each.
    let per_eid = 1_700u64;
    for i in 0..per_eid * 3 {
        let eid = ((i / 5) % 3) as usize;
        let n = i / 15 * 5 + i % 5 + 1;
        let exclude = n.is_multiple_of(7).then_some("phone");
        store.append(&format!("e{eid}"), &payload(eid, n), exclude).unwrap();
        if (i + 1).is_multiple_of(100) {
            store.sync().unwrap();
        }
    }
    store.sync().unwrap();
    let check = |store: &QueueStore<RealFs>, eid: usize, from: u64| {
        let name = format!("e{eid}");
        let all = store.read(&name, from - 1, usize::MAX).unwrap();
        assert_eq!(all.len() as u64, per_eid - from + 1);
        for (k, item) in all.iter().enumerate() {
            let n = from + k as u64;
            assert_eq!(item.increment, n);
            assert_eq!(&item.payload[..], &payload(eid, n)[..]);
            assert_eq!(item.exclude.as_deref(), n.is_multiple_of(7).then_some("phone"));
        }
        all
    };
    let whole: Vec<_> = (0..3).map(|e| check(&store, e, 1)).collect();
    // Paged replays of the three EIDs in turn (each call moves the read-ahead cursor to another EID), with page
    // sizes that do and do not divide the runs.
    for limit in [1, 3, 64, 1_000] {
        let mut after = [0u64; 3];
        let mut got: [Vec<Owned>; 3] = Default::default();
        let mut buf = Vec::new();
        while after.iter().any(|a| *a < per_eid) {
            for e in 0..3 {
                store
                    .read_each(&format!("e{e}"), after[e], limit, &mut buf, |item| {
                        got[e].push((item.increment, item.payload.to_vec(), item.exclude.map(str::to_owned)));
                        after[e] = item.increment;
                    })
                    .unwrap();
            }
        }
        for e in 0..3 {
            let want: Vec<_> = whole[e]
                .iter()
                .map(|i| (i.increment, i.payload.to_vec(), i.exclude.clone()))
                .collect();
            assert_eq!(got[e], want, "limit {limit}");
        }
    }
    // Starts that are not where the last read stopped: backwards, forwards, repeated.
    for from in [900, 2, 1_699, 901, 901, 1_700] {
        check(&store, 1, from);
    }
    // Items moved by compaction (a trim empties most of the early segments, retain copies their live items out):
    // the cursor's hints point at the old places, the reads must still be right.
    store.trim("e0", 1_600).unwrap();
    store.trim("e2", 1_650).unwrap();
    store.sync().unwrap();
    let mut buf = Vec::new();
    store.read_each("e1", 0, 10, &mut buf, |_| {}).unwrap();
    let report = store.retain(0).unwrap();
    assert!(
        report.copied_items > 0 && !report.deleted_segments.is_empty(),
        "{report:?}"
    );
    assert_eq!(store.read("e1", 10, usize::MAX).unwrap(), whole[1][10..].to_vec());
    check(&store, 0, 1_600);
    check(&store, 2, 1_650);
    store.close().unwrap();
    let store = QueueStore::open(RealFs, tmp.path(), cfg).unwrap();
    check(&store, 1, 1);
    check(&store, 1, 1_234);
}
