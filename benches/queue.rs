//! Durable queue benches, each beside the raw disk it runs on, in the same run (BENCHMARKS.md, "Durable queue").
//!
//! - `raw/write_fsync`: one record-sized write + fdatasync at a time: the disk's fsync rate.
//! - `raw/seq_read`: sequential 1 MiB reads of the replay segments: the read bandwidth replay is held against.
//! - `group_commit/writers/N`: acknowledged 100-byte appends/s through [`GroupCommitter`] with N concurrent
//!   writers, each awaiting durability before its next append. The writers run on a tokio runtime with one worker
//!   fewer than the machine has cores ([`writer_workers`]), so the committer's fsync thread has a core of its own;
//!   the 100-writer comparison is also run with one worker per core, and both are reported.
//! - `replay`: reading whole EID queues back through `QueueStore::read`.
//! - `recovery/open_1GiB` (clean close, indexes complete), `recovery/open_1GiB_after_crash` (no clean close: the
//!   active segment's unindexed tail is scanned), `recovery/rebuild_1GiB` (every index deleted: full scan).
//!
//! Data lives under `$BIMIP_BENCH_DIR` (default `/var/tmp`), which must be a real disk, not tmpfs: the bench
//! prints the filesystem type it found. A summary table with the ratios and targets is printed at the end and
//! written to `target/queue-bench-summary.md` (or `$CARGO_TARGET_DIR`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bimip::store::queue::{GroupCommitConfig, GroupCommitter, QueueConfig, QueueStore, RealFs};
use criterion::{Criterion, Throughput};

const PAYLOAD: usize = 100;
const DATASET_BYTES: u64 = 1 << 30;
const DATASET_EIDS: usize = 16;
/// Items per EID burst in the dataset: a user's backlog arrives interleaved with other users' traffic.
const BURST: usize = 1000;
/// EIDs replayed per interleaved replay iteration (2 of 16: about 128 MiB).
const REPLAY_EIDS: usize = 2;
/// One EID's contiguous backlog for the contiguous replay.
const BACKLOG_BYTES: u64 = 256 << 20;

/// Drops `path`'s clean pages from the page cache (POSIX_FADV_DONTNEED), so the next read comes from the disk
/// without disturbing anyone else's cached files.
fn evict(path: &Path) {
    let file = std::fs::File::open(path).unwrap();
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).expect("posix_fadvise(DONTNEED)");
}

/// (metric, total units, total seconds).
static RESULTS: Mutex<Vec<(String, f64, f64)>> = Mutex::new(Vec::new());

fn record(name: &str, units: f64, elapsed: Duration) {
    let mut r = RESULTS.lock().unwrap();
    match r.iter_mut().find(|(n, _, _)| n == name) {
        Some(e) => {
            e.1 += units;
            e.2 += elapsed.as_secs_f64();
        }
        None => r.push((name.to_string(), units, elapsed.as_secs_f64())),
    }
}

fn rate(name: &str) -> f64 {
    let r = RESULTS.lock().unwrap();
    r.iter().find(|(n, _, _)| n == name).map_or(f64::NAN, |(_, u, s)| u / s)
}

fn seconds_per_run(name: &str) -> f64 {
    let r = RESULTS.lock().unwrap();
    r.iter().find(|(n, _, _)| n == name).map_or(f64::NAN, |(_, u, s)| s / u)
}

/// The filesystem type of the mount holding `path`, from /proc/mounts.
fn fs_type(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut best: Option<(usize, String, String)> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 || !path.starts_with(f[1]) {
            continue;
        }
        if best.as_ref().is_none_or(|b| f[1].len() >= b.0) {
            best = Some((f[1].len(), f[0].to_string(), f[2].to_string()));
        }
    }
    best.map_or_else(|| "unknown".into(), |(_, dev, ty)| format!("{ty} on {dev}"))
}

fn bench_root() -> PathBuf {
    let base = std::env::var_os("BIMIP_BENCH_DIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    let root = base.join(format!("bimip-queue-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let ty = fs_type(&root);
    println!("bench data in {} ({ty})", root.display());
    if ty.starts_with("tmpfs") || ty.starts_with("ramfs") {
        println!(
            "WARNING: {} is not a real disk: fsync figures are meaningless",
            root.display()
        );
    }
    root
}

fn payload(i: u64) -> Vec<u8> {
    let mut p = vec![0u8; PAYLOAD];
    p[..8].copy_from_slice(&i.to_le_bytes());
    p
}

fn raw_write_fsync(c: &mut Criterion, root: &Path, bench: &str) {
    use std::os::unix::fs::FileExt;
    let path = root.join("raw-fsync");
    let file = std::fs::File::create(&path).unwrap();
    // A record of the queue's size: 32-byte header + a short EID + the payload.
    let rec = vec![7u8; 32 + 8 + PAYLOAD];
    let mut off = 0u64;
    let mut g = c.benchmark_group("raw");
    g.throughput(Throughput::Elements(1));
    g.bench_function(bench, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                file.write_all_at(&rec, off).unwrap();
                file.sync_data().unwrap();
                off += rec.len() as u64;
            }
            let e = start.elapsed();
            record(&format!("raw fsync/s ({bench})"), iters as f64, e);
            e
        })
    });
    g.finish();
    let _ = std::fs::remove_file(path);
}

fn raw_seq_read(c: &mut Criterion, files: &[PathBuf]) {
    use std::os::unix::fs::FileExt;
    let total: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    let mut buf = vec![0u8; 1 << 20];
    let mut g = c.benchmark_group("raw");
    g.throughput(Throughput::Bytes(total));
    warm_and_cold(
        &mut g,
        ("seq_read", "raw read MB/s", "sequential"),
        files,
        total as f64 / 1e6,
        || {
            for f in files {
                let file = std::fs::File::open(f).unwrap();
                let len = file.metadata().unwrap().len();
                let mut off = 0;
                while off < len {
                    let n = (len - off).min(buf.len() as u64) as usize;
                    file.read_exact_at(&mut buf[..n], off).unwrap();
                    std::hint::black_box(&buf);
                    off += n as u64;
                }
            }
        },
    );
    g.finish();
}

/// Workers of the writers' runtime: one per core but one, which the committer's fsync thread (tokio's blocking
/// pool) runs on. Each batch's path is serial (fsync, wake the committer, acknowledge, the writers append again,
/// write, hand the next fsync over); when the runtime's workers take every core, the fsync thread waits for one
/// and the writers bounce between workers, which on a 2-core machine costs about a sixth of the throughput
/// (BENCHMARKS.md has both figures).
fn writer_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

fn group_commit(c: &mut Criterion, root: &Path) {
    let rt = runtime(writer_workers());
    let mut g = c.benchmark_group("group_commit");
    g.throughput(Throughput::Elements(1));
    for writers in [1usize, 10, 100] {
        let dir = root.join(format!("gc-{writers}"));
        let store = QueueStore::open(RealFs, &dir, QueueConfig::default()).unwrap();
        let (committer, task) = rt.block_on(async { GroupCommitter::spawn(store, GroupCommitConfig::default()) });
        settle(&rt, &committer);
        let name = format!("acked appends/s, {writers} writers");
        g.bench_function(format!("writers/{writers}"), |b| {
            b.iter_custom(|iters| {
                let per_writer = iters.div_ceil(writers as u64);
                let start = Instant::now();
                rt.block_on(async {
                    let tasks: Vec<_> = (0..writers)
                        .map(|w| {
                            let c = committer.clone();
                            tokio::spawn(async move {
                                let eid: std::sync::Arc<str> = format!("user{w}").into();
                                for i in 0..per_writer {
                                    c.append(eid.clone(), payload(i), None).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                });
                let e = start.elapsed();
                let done = per_writer * writers as u64;
                record(&name, done as f64, e);
                e.mul_f64(iters as f64 / done as f64)
            })
        });
        drop(committer);
        let store = rt.block_on(task.join()).unwrap();
        let stats = store.stats();
        record(
            &format!("appends per fsync, {writers} writers"),
            stats.appends as f64,
            Duration::from_secs_f64(stats.syncs as f64),
        );
        store.close().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
    g.finish();
}

/// Waits until the committer has a spare segment ready, so that no zero-filling (which the committer starts after
/// each roll, on its blocking thread) runs into the next measurement, raw or not.
fn settle(rt: &tokio::runtime::Runtime, committer: &GroupCommitter<RealFs>) {
    rt.block_on(async {
        for _ in 0..1000 {
            if committer.call(|s| s.spare_ready()).await.unwrap() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no spare segment after 5 s");
    })
}

/// 100 closed-loop writers on `committer` for `slice`: how many appends were acknowledged.
fn hundred_writers(rt: &tokio::runtime::Runtime, committer: &GroupCommitter<RealFs>, slice: Duration) -> u64 {
    let deadline = Instant::now() + slice;
    rt.block_on(async {
        let tasks: Vec<_> = (0..100)
            .map(|w| {
                let c = committer.clone();
                tokio::spawn(async move {
                    let eid: std::sync::Arc<str> = format!("user{w}").into();
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        c.append(eid.clone(), payload(n), None).await.unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total
    })
}

/// The 50x target compares two rates of a disk whose fsync latency drifts by an order of magnitude within
/// minutes on a shared machine, so besides the criterion runs this measures them in alternating 300 ms slices
/// (raw fsync, then 100 writers on a runtime of [`writer_workers`], then 100 writers on one worker per core) and
/// compares the sums.
fn fsync_vs_group_commit(root: &Path) {
    use std::os::unix::fs::FileExt;
    let shapes: Vec<_> = [("", writer_workers()), (", one worker per core", all_cores())]
        .into_iter()
        .enumerate()
        .map(|(i, (label, workers))| {
            let rt = runtime(workers);
            let dir = root.join(format!("gc-alternating-{i}"));
            let store = QueueStore::open(RealFs, &dir, QueueConfig::default()).unwrap();
            let (committer, task) = rt.block_on(async { GroupCommitter::spawn(store, GroupCommitConfig::default()) });
            (label, rt, dir, committer, task)
        })
        .collect();
    let path = root.join("raw-fsync-alternating");
    let file = std::fs::File::create(&path).unwrap();
    let rec = vec![7u8; 32 + 8 + PAYLOAD];
    let slice = Duration::from_millis(300);
    let mut off = 0u64;
    for _ in 0..8 {
        for (_, rt, _, committer, _) in &shapes {
            settle(rt, committer);
        }
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < slice {
            file.write_all_at(&rec, off).unwrap();
            file.sync_data().unwrap();
            off += rec.len() as u64;
            n += 1;
        }
        record("alternating raw fsync/s", n as f64, start.elapsed());
        for (label, rt, _, committer, _) in &shapes {
            settle(rt, committer);
            let start = Instant::now();
            let done = hundred_writers(rt, committer, slice);
            record(
                &format!("alternating acked appends/s, 100 writers{label}"),
                done as f64,
                start.elapsed(),
            );
        }
    }
    for (_, rt, dir, committer, task) in shapes {
        drop(committer);
        rt.block_on(task.join()).unwrap().close().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
    let _ = std::fs::remove_file(path);
}

/// Builds a queue of `total` bytes once (outside every timed loop) and closes it cleanly: `eids` users, each
/// receiving `burst` items at a time in turn.
fn build_dataset(dir: &Path, total: u64, eids: u64, burst: u64) {
    let started = Instant::now();
    let mut store = QueueStore::open(RealFs, dir, QueueConfig::default()).unwrap();
    let mut i = 0u64;
    let mut bytes = 0u64;
    while bytes < total {
        let eid = format!("user{:02}", (i / burst) % eids);
        store.append(&eid, &payload(i), None).unwrap();
        bytes += (32 + eid.len() + PAYLOAD) as u64;
        i += 1;
        if i.is_multiple_of(10_000) {
            store.sync().unwrap();
        }
    }
    store.close().unwrap();
    println!(
        "dataset {}: {i} items, {:.2} GiB in {:.1} s",
        dir.display(),
        bytes as f64 / (1u64 << 30) as f64,
        started.elapsed().as_secs_f64()
    );
}

fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Where `eids`' item records lie in `files`, per EID in log order, adjacent records merged into one run:
/// `(file index, offset, length)`. Found by decoding every segment once, outside any timing.
fn item_runs(files: &[PathBuf], eids: &[String]) -> Vec<(usize, u64, u64)> {
    use bimip::store::queue::{index::FILE_HEADER_LEN, record};
    let mut per_eid: Vec<Vec<(usize, u64, u64)>> = vec![Vec::new(); eids.len()];
    for (f, path) in files.iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        let mut at = FILE_HEADER_LEN;
        while let Ok(rec) = record::decode(&bytes[at..]) {
            if rec.kind == record::Kind::Item
                && let Some(e) = eids.iter().position(|e| e.as_bytes() == rec.eid)
            {
                let runs = &mut per_eid[e];
                match runs.last_mut() {
                    Some((rf, off, len)) if *rf == f && *off + *len == at as u64 => *len += rec.len as u64,
                    _ => runs.push((f, at as u64, rec.len as u64)),
                }
            }
            at += rec.len;
        }
    }
    per_eid.concat()
}

/// Benches `read` warm, then cold (`files` dropped from the page cache before each iteration, outside the timing),
/// as `{id}_warm` / `{id}_cold`, recording `mb` MB per iteration as `{metric} ({label}, warm|cold)`.
fn warm_and_cold(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    (id, metric, label): (&str, &str, &str),
    files: &[PathBuf],
    mb: f64,
    mut read: impl FnMut(),
) {
    for cold in [false, true] {
        let temp = if cold { "cold" } else { "warm" };
        let name = format!("{metric} ({label}, {temp})");
        g.bench_function(format!("{id}_{temp}"), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    if cold {
                        files.iter().for_each(|f| evict(f));
                    }
                    let start = Instant::now();
                    read();
                    elapsed += start.elapsed();
                }
                record(&name, iters as f64 * mb, elapsed);
                elapsed
            })
        });
    }
}

/// Reads `runs` with plain positioned reads of at most 1 MiB, in order, checking nothing: the raw read of exactly
/// the bytes a replay reads, in the same order.
fn raw_runs(c: &mut Criterion, files: &[PathBuf], runs: &[(usize, u64, u64)], label: &str) {
    use std::os::unix::fs::FileExt;
    let total: u64 = runs.iter().map(|r| r.2).sum();
    let mut buf = vec![0u8; 1 << 20];
    let mut g = c.benchmark_group("raw");
    g.throughput(Throughput::Bytes(total));
    let id = format!("runs_{label}");
    let metric = "raw read of the replayed runs MB/s";
    warm_and_cold(&mut g, (&id, metric, label), files, total as f64 / 1e6, || {
        let open: Vec<std::fs::File> = files.iter().map(|f| std::fs::File::open(f).unwrap()).collect();
        for &(f, off, len) in runs {
            let mut at = 0;
            while at < len {
                let n = (len - at).min(buf.len() as u64) as usize;
                open[f].read_exact_at(&mut buf[..n], off + at).unwrap();
                std::hint::black_box(&buf);
                at += n as u64;
            }
        }
    });
    g.finish();
}

/// Replays `n_eids` whole EID queues of the queue in `dir` (`label` names the data layout), after a raw read of the
/// same records for comparison.
fn replay(c: &mut Criterion, dir: &Path, label: &str, n_eids: usize) {
    let seg_files = seg_files(dir);
    let store = QueueStore::open(RealFs, dir, QueueConfig::default()).unwrap();
    let eids: Vec<String> = store.eids().take(n_eids).map(str::to_string).collect();
    raw_runs(c, &seg_files, &item_runs(&seg_files, &eids), label);
    let mut total_rec = 0u64;
    let mut total_payload = 0u64;
    for e in &eids {
        let u = store.usage(e);
        total_payload += u.bytes;
        total_rec += u.bytes + u.items * (32 + e.len() as u64);
    }
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Bytes(total_rec));
    let mut buf = Vec::new();
    warm_and_cold(
        &mut g,
        (label, "replay MB/s", label),
        &seg_files,
        total_rec as f64 / 1e6,
        || {
            let mut payload_bytes = 0u64;
            for e in &eids {
                let mut after = 0;
                loop {
                    let n = store
                        .read_each(e, after, 10_000, &mut buf, |item| {
                            payload_bytes += item.payload.len() as u64;
                            after = item.increment;
                        })
                        .unwrap();
                    if n == 0 {
                        break;
                    }
                }
            }
            assert_eq!(payload_bytes, total_payload);
        },
    );
    g.bench_function(format!("{label}_warm_allocating"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for e in &eids {
                    let mut after = 0;
                    loop {
                        let items = store.read(e, after, 10_000).unwrap();
                        let Some(last) = items.last() else { break };
                        after = last.increment;
                        std::hint::black_box(&items);
                    }
                }
            }
            let el = start.elapsed();
            record(
                &format!("replay MB/s ({label}, warm, allocating read)"),
                (iters * total_rec) as f64 / 1e6,
                el,
            );
            el
        })
    });
    g.finish();
}

fn recovery(c: &mut Criterion, dir: &Path) {
    let mut g = c.benchmark_group("recovery");
    g.sample_size(10);
    g.bench_function("open_1GiB", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let store = QueueStore::open(RealFs, dir, QueueConfig::default()).unwrap();
                let e = start.elapsed();
                assert_eq!(store.open_report().scanned_bytes, 0);
                total += e;
                record("recovery s (clean)", 1.0, e);
                drop(store);
            }
            total
        })
    });
    // A crash: appends since the last index chunk are only in the segment (up to index_interval_bytes), which is
    // a spare, as a group committer leaves it: the first open after the crash also reads its zero tail.
    let mut store = QueueStore::open(RealFs, dir, QueueConfig::default()).unwrap();
    assert!(store.prepare_spare().unwrap());
    for i in 0..28_000u64 {
        store.append("crash", &payload(i), None).unwrap();
    }
    store.sync().unwrap();
    drop(store);
    g.bench_function("open_1GiB_after_crash", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let store = QueueStore::open(RealFs, dir, QueueConfig::default()).unwrap();
                let e = start.elapsed();
                total += e;
                record("recovery s (after crash)", 1.0, e);
                let scanned = store.open_report().scanned_bytes;
                record("scanned MB after crash", scanned as f64 / 1e6, Duration::from_secs(1));
                drop(store);
            }
            total
        })
    });
    g.bench_function("rebuild_1GiB", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                for entry in std::fs::read_dir(dir).unwrap() {
                    let p = entry.unwrap().path();
                    if p.extension().is_some_and(|e| e == "idx") {
                        std::fs::remove_file(p).unwrap();
                    }
                }
                let start = Instant::now();
                let store = QueueStore::open(RealFs, dir, QueueConfig::default()).unwrap();
                let e = start.elapsed();
                total += e;
                record("recovery s (indexes rebuilt)", 1.0, e);
                drop(store);
            }
            total
        })
    });
    g.finish();
}

fn summary(root: &Path) -> String {
    // The raw fsync rate was measured before and after the appends; the higher one makes the stricter target.
    let (before, after) = (
        rate("raw fsync/s (write_fsync)"),
        rate("raw fsync/s (write_fsync_again)"),
    );
    let fsync = before.max(after);
    let warm = rate("raw read MB/s (sequential, warm)");
    let cold = rate("raw read MB/s (sequential, cold)");
    let mut out = String::new();
    out.push_str(&format!("disk: {}\n\n", fs_type(root)));
    out.push_str("| measurement | value | vs raw baseline | target | met |\n|---|---|---|---|---|\n");
    out.push_str(&format!(
        "| raw write+fdatasync of one {}-byte record (higher of {before:.0} before and {after:.0} after the appends) \
         | {fsync:.0} fsync/s | 1x | | |\n",
        40 + PAYLOAD
    ));
    out.push_str(&format!(
        "| raw sequential read, page cache cold (1 MiB reads) | {cold:.0} MB/s | 1x | | |\n"
    ));
    out.push_str(&format!(
        "| raw sequential read, page cache warm (1 MiB reads) | {warm:.0} MB/s | 1x | | |\n"
    ));
    for w in [1, 10, 100] {
        let r = rate(&format!("acked appends/s, {w} writers"));
        let per = rate(&format!("appends per fsync, {w} writers"));
        let (target, met) = ("", "");
        out.push_str(&format!(
            "| acknowledged 100-byte appends, {w} writer(s) ({per:.1} appends per fsync) | {r:.0} /s | {:.1}x fsync/s | {target} | {met} |\n",
            r / fsync
        ));
    }
    let alt_fsync = rate("alternating raw fsync/s");
    let alt = rate("alternating acked appends/s, 100 writers");
    let (w, cores) = (writer_workers(), all_cores());
    out.push_str(&format!(
        "| 100 writers ({w} runtime worker(s), the fsync thread on core {cores}) vs raw fsync in alternating 300 ms \
         slices (8 each): {alt:.0} acked appends/s vs {alt_fsync:.0} fsync/s | {alt:.0} /s | {:.1}x fsync/s | ≥ 50x \
         fsync/s | {} |\n",
        alt / alt_fsync,
        if alt >= 50.0 * alt_fsync { "yes" } else { "NO" }
    ));
    let every = rate("alternating acked appends/s, 100 writers, one worker per core");
    out.push_str(&format!(
        "| same, {cores} runtime workers (one per core, the fsync thread shares them) | {every:.0} /s | {:.1}x \
         fsync/s | | |\n",
        every / alt_fsync
    ));
    // The replay target compares a replay with a raw read of the same disk, page cache cold (BENCHMARKS.md,
    // "What the replay target compares"): the raw sequential read for a backlog laid out in sequence, the raw read
    // of the same runs for an interleaved one. Warm rows are reported, not judged: a page-cache copy is not a
    // disk's bandwidth, and a replay also checks each record's CRC.
    for layout in ["contiguous", "interleaved"] {
        let runs_cold = rate(&format!("raw read of the replayed runs MB/s ({layout}, cold)"));
        let runs_warm = rate(&format!("raw read of the replayed runs MB/s ({layout}, warm)"));
        out.push_str(&format!(
            "| raw read of the replayed records only, {layout} layout, cold / warm | {runs_cold:.0} / {runs_warm:.0} \
             MB/s | {:.2}x / {:.2}x sequential read | | |\n",
            runs_cold / cold,
            runs_warm / warm
        ));
        let (base, bname) = if layout == "contiguous" {
            (cold, "raw sequential read, cold")
        } else {
            (runs_cold, "raw read of the same runs, cold")
        };
        let r = rate(&format!("replay MB/s ({layout}, cold)"));
        out.push_str(&format!(
            "| replay MB/s ({layout}, cold) | {r:.0} MB/s | {:.2}x {bname} ({:.2}x sequential) | ≥ 0.5x | {} |\n",
            r / base,
            r / cold,
            if r >= 0.5 * base { "yes" } else { "NO" }
        ));
        for k in [
            format!("replay MB/s ({layout}, warm)"),
            format!("replay MB/s ({layout}, warm, allocating read)"),
        ] {
            let r = rate(&k);
            out.push_str(&format!(
                "| {k} | {r:.0} MB/s | {:.2}x warm sequential read, {:.2}x warm read of the same runs | | |\n",
                r / warm,
                r / runs_warm
            ));
        }
    }
    for (k, label) in [
        ("recovery s (clean)", "open 1 GiB after a clean close"),
        ("recovery s (after crash)", "open 1 GiB after a crash"),
        (
            "recovery s (indexes rebuilt)",
            "open 1 GiB with every index deleted (full scan)",
        ),
    ] {
        let s = seconds_per_run(k);
        let scan = DATASET_BYTES as f64 / 1e6 / cold;
        out.push_str(&format!(
            "| {label} | {:.0} ms | {:.2}x of reading 1 GiB cold | | |\n",
            s * 1e3,
            s / scan
        ));
    }
    let scanned = rate("scanned MB after crash");
    out.push_str(&format!("\nbytes scanned at open after the crash: {scanned:.1} MB\n"));
    out
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let root = bench_root();
    // BIMIP_BENCH_PARTS=commit (or replay, recovery; comma-separated) runs only those parts; default all.
    let parts = std::env::var("BIMIP_BENCH_PARTS").unwrap_or_else(|_| "commit,replay,recovery".into());
    let part = |p: &str| parts.split(',').any(|x| x.trim() == p);
    let data = root.join("dataset");
    let backlog = root.join("backlog");
    if part("replay") || part("recovery") {
        build_dataset(&data, DATASET_BYTES, DATASET_EIDS as u64, BURST as u64);
    }
    if part("replay") {
        // One user's backlog written without other traffic between its items.
        build_dataset(&backlog, BACKLOG_BYTES, 1, 1);
    }
    if part("commit") {
        raw_write_fsync(&mut c, &root, "write_fsync");
        group_commit(&mut c, &root);
        fsync_vs_group_commit(&root);
        // The disk's fsync rate drifts on a shared machine: measure it again right after the appends.
        raw_write_fsync(&mut c, &root, "write_fsync_again");
    }
    if part("replay") {
        raw_seq_read(&mut c, &seg_files(&backlog));
        replay(&mut c, &backlog, "contiguous", 1);
        replay(&mut c, &data, "interleaved", REPLAY_EIDS);
    }
    if part("recovery") {
        if !part("replay") {
            raw_seq_read(&mut c, &seg_files(&data));
        }
        recovery(&mut c, &data);
    }
    c.final_summary();

    let table = summary(&root);
    println!("\n{table}");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let _ = std::fs::write(target.join("queue-bench-summary.md"), &table);
    let _ = std::fs::remove_dir_all(&root);
}
