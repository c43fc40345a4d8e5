//! Memory the protocol core holds per idle session: the engine's share of SPEC §19's per-connection budget
//! (issue 16 targets 2 KB per idle connection in all; `bimip bench --idle` measures the whole server).
//!
//! Counts the bytes the engine has allocated and not freed (a counting global allocator) after 10,000
//! WebSocket sessions of distinct users were opened and their start sequences drained, with the in-memory chat
//! store. Requested bytes, so the allocator's own overhead (about 16 B per allocation) comes on top.
//!
//! `cargo bench --bench core_memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use bimip::core::auth::{Algorithm, Claims, Signer, Verifier};
use bimip::core::{Config, ConnId, Engine, MemoryRevocations, Millis, Transport};
use jsonwebtoken::{DecodingKey, EncodingKey};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_BLOCKS: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: a block this allocator handed out, with its layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SECRET: &[u8] = b"core-memory-bench-secret-hs256-xx";
const NOW: Millis = 1_761_831_141_000;
const SESSIONS: usize = 10_000;

fn main() {
    let mut engine = Engine::new(
        Config::default(),
        Verifier::new(Algorithm::Hs256, DecodingKey::from_secret(SECRET)),
        None,
        Box::new(MemoryRevocations::default()),
    );
    let signer = Signer::new(Algorithm::Hs256, EncodingKey::from_secret(SECRET));
    let tokens: Vec<String> = (0..SESSIONS)
        .map(|i| {
            let claims = Claims {
                eid: format!("user{i}@bench.example"),
                device_id: "phone".into(),
                jti: format!("jti-{i:016}"),
                iat: NOW / 1000,
                exp: NOW / 1000 + 3600,
                ..Claims::default()
            };
            signer.mint(&claims).expect("minting")
        })
        .collect();
    let (bytes, blocks) = (LIVE_BYTES.load(Ordering::Relaxed), LIVE_BLOCKS.load(Ordering::Relaxed));
    for (i, token) in tokens.iter().enumerate() {
        engine
            .open(ConnId(i as u64), Transport::WebSocket, Some(token), NOW)
            .expect("a session");
        while engine.poll_output().is_some() {}
    }
    let per = |now: isize, before: isize| (now - before) as f64 / SESSIONS as f64;
    println!(
        "core memory: {SESSIONS} idle WebSocket sessions, memory chat store: {:.0} B and {:.1} allocations held per session",
        per(LIVE_BYTES.load(Ordering::Relaxed), bytes),
        per(LIVE_BLOCKS.load(Ordering::Relaxed), blocks),
    );
    assert_eq!(engine.connection_count(), SESSIONS);
}
