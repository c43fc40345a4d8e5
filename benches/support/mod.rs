//! What the engine benches share: an engine whose token bucket holds every stanza, and tokens for it.

use bimip::core::auth::{Algorithm, Claims, Signer, Verifier};
use bimip::core::{Config, Engine, MemoryRevocations, Millis, ShardId};
use jsonwebtoken::{DecodingKey, EncodingKey};

pub const SECRET: &[u8] = b"core-bench-secret-hs256-loopback";
pub const NOW: Millis = 1_761_831_141_000;

/// Shard `shard` of an engine (the one shard of one by default) with the in-memory chat store.
pub fn engine(shard: ShardId) -> Engine {
    let config = Config {
        // The clock stands still in these benches: the token bucket never refills, so it must hold every stanza.
        rate_per_sec: u32::MAX,
        rate_burst: u32::MAX,
        ..Config::default()
    };
    Engine::new(
        config,
        Verifier::new(Algorithm::Hs256, DecodingKey::from_secret(SECRET)),
        None,
        Box::new(MemoryRevocations::default()),
    )
    .with_shard(shard)
}

/// A token for `eid`'s device `d1`, valid for an hour from [`NOW`].
pub fn token(eid: &str) -> String {
    let claims = Claims {
        eid: eid.into(),
        device_id: "d1".into(),
        jti: format!("jti-{eid}"),
        iat: NOW / 1000,
        exp: NOW / 1000 + 3600,
        ..Claims::default()
    };
    Signer::new(Algorithm::Hs256, EncodingKey::from_secret(SECRET))
        .mint(&claims)
        .expect("minting")
}
