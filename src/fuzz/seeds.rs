//! Seed corpora for the fuzz targets, built from the repository's own data rather than kept as copied files: every
//! vector's stanza bytes (`decode_stanza`), every framing vector's stream cut at its chunk boundaries
//! (`tcp_frames`), and the files of a small real queue store, cleanly closed and crashed (`queue_recovery`).
//! `engine` takes [`arbitrary`]-structured operations, whose byte layout is the derive's business; it starts from
//! an empty corpus. `tests/fuzz_regressions.rs` runs every seed through its driver and writes the corpora when
//! asked (`fuzz/run.sh` does).

use std::collections::BTreeMap;
use std::path::Path;

use crate::store::queue::{CrashPlan, Fs, QueueConfig, QueueStore, SimFs};
use crate::vectors::{self, LoadError};

/// Named seed inputs of `target` (empty for a target without seeds).
pub fn seeds(target: &str) -> Result<Vec<(String, Vec<u8>)>, LoadError> {
    Ok(match target {
        "decode_stanza" => stanzas()?,
        "tcp_frames" => streams()?,
        "queue_recovery" => stores(),
        _ => Vec::new(),
    })
}

fn unhex(s: &str) -> Vec<u8> {
    // The vector tests reject bad hex; a seed only needs bytes.
    hex::decode(s).unwrap_or_default()
}

fn stanzas() -> Result<Vec<(String, Vec<u8>)>, LoadError> {
    let mut out = Vec::new();
    for (_, file) in vectors::load_dir(&vectors::default_dir())? {
        out.extend(file.valid.iter().map(|c| (c.id.clone(), unhex(&c.hex))));
        out.extend(file.invalid.iter().map(|c| (c.id.clone(), unhex(&c.hex))));
    }
    Ok(out)
}

fn streams() -> Result<Vec<(String, Vec<u8>)>, LoadError> {
    let mut out = Vec::new();
    for (_, file) in vectors::load_dir(&vectors::default_dir())? {
        for case in &file.framing {
            let mut stream = Vec::new();
            let mut cuts = Vec::new();
            for chunk in &case.chunks {
                stream.extend(unhex(chunk));
                cuts.push(stream.len().min(u16::MAX as usize) as u16);
            }
            let max = case.max_stanza_bytes.min(u8::MAX as usize) as u8;
            out.push((case.id.clone(), super::tcp_frames_input(max, &cuts, &stream)));
        }
    }
    Ok(out)
}

/// A small store over several segments with index chunks, device states and an unsynced tail, as files.
fn stores() -> Vec<(String, Vec<u8>)> {
    let cfg = QueueConfig::tiny();
    let dir = Path::new("/queue");
    let snapshot = |fs: &SimFs| -> BTreeMap<String, Vec<u8>> {
        let names = fs.list(dir).unwrap_or_default();
        names
            .into_iter()
            .filter_map(|n| fs.read_file(&dir.join(&n)).map(|b| (n, b)))
            .collect()
    };
    let fs = SimFs::new();
    let mut out = Vec::new();
    let Ok(mut store) = QueueStore::open(fs.clone(), dir, cfg.clone()) else {
        return out;
    };
    let eids = ["alice@example.com", "bob@example.com"];
    let work = |store: &mut QueueStore<SimFs>, round: u8| -> Result<(), crate::store::queue::QueueError> {
        for i in 0..12u8 {
            let eid = eids[usize::from(i % 2)];
            let exclude = (i % 5 == 0).then_some("phone");
            store.append(eid, &[round, i, 0x5a, 0xa5, i ^ round], exclude)?;
            if i % 4 == 3 {
                store.sync()?;
                store.touch(eid, "phone", 1_761_831_141_000 + i64::from(i))?;
                let durable = store.durable_increment(eid);
                store.commit(eid, "phone", durable / 2)?;
            }
        }
        Ok(())
    };
    if work(&mut store, 1).and_then(|_| store.close()).is_err() {
        return out;
    }
    out.push(("store-closed".to_string(), super::pack_files(&snapshot(&fs))));
    let Ok(mut store) = QueueStore::open(fs.clone(), dir, cfg) else {
        return out;
    };
    if work(&mut store, 2).is_err() {
        return out;
    }
    // Unsynced writes past the last sync: a crash that keeps them, and one that tears the next.
    drop(store);
    let torn = fs.fork();
    fs.crash(CrashPlan::KEEP_ALL);
    out.push(("store-crashed".to_string(), super::pack_files(&snapshot(&fs))));
    torn.crash(CrashPlan { keep: 1, tear: Some(7) });
    out.push(("store-torn".to_string(), super::pack_files(&snapshot(&torn))));
    // Damaged-store mode (odd first byte): a short workload, then whatever the remaining bytes say.
    out.push((
        "scenario-small".to_string(),
        vec![1, 0, 0, 7, 0, 1, 9, 3, 0, 0, 2, 1, 3],
    ));
    out
}
