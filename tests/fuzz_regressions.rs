//! The fuzz drivers without libFuzzer: every saved finding in
//! `fuzz/regressions/<target>/`, every seed of `bimip::fuzz::seeds`, and a
//! seeded sweep of pseudo-random inputs, so `cargo test` keeps "no input
//! panics" true. With `BIMIP_WRITE_SEEDS=DIR` set, `seed_corpora_pass_their_drivers`
//! also writes the seed corpora to `DIR/<target>/` (what `fuzz/run.sh` uses).

use std::path::Path;

type Driver = fn(&[u8]);

const TARGETS: [(&str, Driver); 4] = [
    ("decode_stanza", bimip::fuzz::decode_stanza),
    ("tcp_frames", bimip::fuzz::tcp_frames),
    ("engine", bimip::fuzz::engine),
    ("queue_recovery", bimip::fuzz::queue_recovery),
];

/// The targets `fuzz/Cargo.toml` declares: a new target must be added to `TARGETS` too, so its findings replay.
#[test]
fn every_fuzz_target_is_replayed() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml")).unwrap();
    let mut declared: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "bimip-fuzz")
        .collect();
    declared.sort_unstable();
    let mut replayed: Vec<&str> = TARGETS.iter().map(|(t, _)| *t).collect();
    replayed.sort_unstable();
    assert_eq!(declared, replayed);
}

#[test]
fn seed_corpora_pass_their_drivers() {
    let out = std::env::var_os("BIMIP_WRITE_SEEDS").map(std::path::PathBuf::from);
    for (target, driver) in TARGETS {
        let seeds = bimip::fuzz::seeds::seeds(target).unwrap();
        if target != "engine" {
            assert!(seeds.len() >= 3, "{target} has {} seeds", seeds.len());
        }
        for (name, data) in &seeds {
            driver(data);
            if let Some(dir) = &out {
                let dir = dir.join(target);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
            }
        }
    }
}

/// The queue seeds are real stores: unpacked onto the real filesystem, the cleanly closed one opens without a
/// scan and holds every item its workload appended.
#[test]
fn queue_seeds_hold_a_real_store() {
    use bimip::store::queue::{QueueConfig, QueueStore, RealFs};
    let seeds = bimip::fuzz::seeds::seeds("queue_recovery").unwrap();
    let (_, closed) = seeds.iter().find(|(n, _)| n == "store-closed").unwrap();
    assert_eq!(closed[0] % 2, 0, "files mode");
    let dir = tempfile::tempdir().unwrap();
    let mut rest = &closed[1..];
    let mut names = Vec::new();
    while let [tag, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi]));
        let ext = match tag & 3 {
            0 => "seg",
            1 => "idx",
            _ => panic!("a closed store has only segments and indexes"),
        };
        let name = format!("{:010}.{ext}", tag >> 2);
        std::fs::write(dir.path().join(&name), &tail[..len]).unwrap();
        names.push(name);
        rest = &tail[len..];
    }
    assert!(names.len() >= 4, "several segments with indexes: {names:?}");
    let cfg = QueueConfig {
        segment_bytes: 1024,
        ..QueueConfig::default()
    };
    let store = QueueStore::open(RealFs, dir.path(), cfg).unwrap();
    assert_eq!(store.open_report().scanned_bytes, 0);
    for eid in ["alice@example.com", "bob@example.com"] {
        let items = store.read(eid, 0, usize::MAX).unwrap();
        assert_eq!(items.len(), 6, "{eid}");
    }
}

#[test]
fn saved_findings_stay_fixed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    for (target, driver) in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let data = std::fs::read(entry.path()).unwrap();
            driver(&data);
        }
    }
}

#[test]
fn every_vector_passes_the_decoder_driver() {
    let files = bimip::vectors::load_dir(&bimip::vectors::default_dir()).unwrap();
    let mut checked = 0;
    for (_, file) in files {
        let hexes = file
            .valid
            .iter()
            .map(|c| &c.hex)
            .chain(file.invalid.iter().map(|c| &c.hex));
        for hex_text in hexes {
            bimip::fuzz::decode_stanza(&hex::decode(hex_text).unwrap());
            checked += 1;
        }
    }
    assert!(checked > 100);
}

/// A small deterministic sweep (xorshift, fixed seed): a few hundred random
/// inputs per driver, cheap enough for every `cargo test`.
#[test]
fn seeded_sweep() {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (target, driver) in TARGETS {
        // Each queue input builds and reopens stores: fewer of them keep this test quick.
        let count = if target == "queue_recovery" { 100 } else { 300 };
        for _ in 0..count {
            let len = (next() % 2048) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            driver(&data);
        }
    }
}
