//! The fuzz drivers without libFuzzer: every saved finding in
//! `fuzz/regressions/<target>/`, every vector's bytes, and a seeded sweep of
//! pseudo-random inputs, so `cargo test` keeps "no input panics" true.

use std::path::Path;

type Driver = fn(&[u8]);

const TARGETS: [(&str, Driver); 3] = [
    ("decode_stanza", bimip::fuzz::decode_stanza),
    ("tcp_frames", bimip::fuzz::tcp_frames),
    ("engine", bimip::fuzz::engine),
];

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
    for (_, driver) in TARGETS {
        for _ in 0..300 {
            let len = (next() % 2048) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            driver(&data);
        }
    }
}
