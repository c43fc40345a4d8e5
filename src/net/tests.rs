//! The adapters under turmoil: the generic listener entry, simulated time for
//! the engine's timers ([`SimClock`] + `sleep`), and reproducibility: the same
//! seed gives the same observations.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{DecodingKey, EncodingKey};

use super::{ServerHandle, ServerOptions, SimClock};
use crate::client::{Client, ClientOptions};
use crate::core::auth::{Algorithm, Claims, Signer, Verifier};
use crate::core::{Config, Engine, MemoryRevocations};
use crate::proto::message_scheme::Payload;

const SECRET: &[u8] = b"turmoil-secret-for-hs256-tests!!";
/// Simulated wall clock at the start of the simulation, ms.
const BASE_MS: i64 = 1_700_000_000_000;
const PING_MS: i64 = 5_000;

fn token(device: &str) -> String {
    let iat = BASE_MS / 1000;
    let claims = Claims {
        eid: "sim@example.com".into(),
        device_id: device.into(),
        jti: format!("jti-{device}"),
        iat,
        exp: iat + 3600,
        ..Claims::default()
    };
    Signer::new(Algorithm::Hs256, EncodingKey::from_secret(SECRET))
        .mint(&claims)
        .expect("minting a token")
}

/// Runs one simulation; returns what the client observed, in order.
fn simulate(seed: u64) -> Vec<String> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .tick_duration(Duration::from_millis(5))
        .simulation_duration(Duration::from_secs(120))
        .build();
    sim.host("server", || async {
        let config = Config {
            ping_interval_ms: PING_MS,
            ..Config::default()
        };
        let verifier = Verifier::new(Algorithm::Hs256, DecodingKey::from_secret(SECRET));
        let engine = Engine::new(config, verifier, None, Box::new(MemoryRevocations::default()));
        let clock = Arc::new(SimClock::new(BASE_MS));
        let mut server = ServerHandle::start(engine, clock, ServerOptions::default());
        server.listen_tcp(turmoil::net::TcpListener::bind("0.0.0.0:7000").await?)?;
        server.listen_ws(turmoil::net::TcpListener::bind("0.0.0.0:7001").await?)?;
        server.stopped().await;
        Ok(())
    });
    let observed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&observed);
    sim.client("client", async move {
        let note = |line: String| log.lock().expect("log").push(line);
        let options = || ClientOptions {
            clock: Arc::new(SimClock::new(BASE_MS)),
            timeout: Duration::from_secs(10),
            ..ClientOptions::default()
        };

        let stream = turmoil::net::TcpStream::connect("server:7001").await?;
        let mut ws = Client::over_stream(stream, "ws://server:7001/ws", &token("ws"), options()).await?;
        let session = ws.session().cloned().ok_or("no session")?;
        note(format!("ws session {} at {}", session.device, session.timestamp));
        let pong = ws.ping("p").await?;
        note(format!("pong {} rtt {}", pong.id, pong.rtt));

        // Missed pongs on TCP: the close comes 3 intervals after the session starts.
        let stream = turmoil::net::TcpStream::connect("server:7000").await?;
        let silent = ClientOptions {
            auto_pong: false,
            ..options()
        };
        let mut tcp = Client::over_stream(stream, "tcp://server:7000", &token("tcp"), silent).await?;
        let started = tcp.session().ok_or("no session")?.timestamp;
        let timeout = tcp.expect_error("ping_timeout", Duration::from_secs(60)).await?;
        let after = timeout.timestamp - started;
        note(format!("ping_timeout after {after} ms"));
        assert_eq!(after, 3 * PING_MS, "PING-5 in simulated time");
        tcp.expect_closed(Duration::from_secs(10)).await?;

        // The WebSocket client answered every ping meanwhile.
        ws.expect(|p| matches!(p, Payload::PingpongMessage(_)), Duration::ZERO)
            .await
            .err()
            .ok_or("auto-answered pings must not surface")?;
        ws.ping("still").await?;
        note("ws alive".into());
        Ok(())
    });
    sim.run().expect("the simulation runs");
    observed.lock().expect("log").clone()
}

#[test]
fn turmoil_sessions_pings_and_reproducibility() {
    let first = simulate(7);
    assert_eq!(first.len(), 4, "{first:?}");
    assert_eq!(first, simulate(7), "same seed, same observations");
}
