//! Smoke tests of `bimip bench` (src/load): small, bounded runs whose counts
//! must come out exact. Speed figures are not checked here (BENCHMARKS.md, "Load").

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bimip::core::auth::{Algorithm, Signer, Verifier};
use bimip::core::{Config, Engine, MemoryRevocations};
use bimip::load::{ChatOptions, Minter, chat};
use bimip::net::{self, NetConfig, ServerOptions, SystemClock};
use jsonwebtoken::{DecodingKey, EncodingKey};

const SECRET: &[u8] = b"bench-tool-test-secret-hs256!!!!";

async fn server() -> net::ServerHandle {
    let config = Config {
        // SES-5's default 100/s would reject a flat-out sender's stanzas.
        rate_per_sec: 1_000_000,
        rate_burst: 1_000_000,
        ..Config::default()
    };
    let engine = Engine::new(
        config,
        Verifier::new(Algorithm::Hs256, DecodingKey::from_secret(SECRET)),
        None,
        Box::new(MemoryRevocations::default()),
    );
    let loopback = "127.0.0.1:0".parse().ok();
    let net_config = NetConfig {
        tcp: loopback,
        ws: loopback,
        options: ServerOptions::default(),
    };
    net::serve(net_config, vec![engine], Arc::new(SystemClock))
        .await
        .expect("loopback listeners")
}

fn minter() -> Minter {
    Minter::new(Signer::new(Algorithm::Hs256, EncodingKey::from_secret(SECRET)))
}

/// CHAT-5, CHAT-9, ACK-4, CHAT-16: every message of 2 pairs x 200 is accepted,
/// delivered once and in order, and acknowledged back to its sender.
async fn exact_counts(url: String) {
    let options = ChatOptions {
        url,
        pairs: 2,
        messages: Some(200),
        inflight: 16,
        drain: Duration::from_secs(20),
        ..ChatOptions::default()
    };
    let report = tokio::time::timeout(Duration::from_secs(60), chat::run(&options, &minter()))
        .await
        .expect("the run finishes")
        .expect("the run succeeds");
    assert_eq!(report.sent, 400, "{report}");
    assert_eq!(report.accepted, 400, "{report}");
    assert_eq!(report.delivered, 400, "{report}");
    assert_eq!(report.acked, 400, "{report}");
    assert_eq!(report.undelivered, 0, "{report}");
    assert_eq!(report.duplicates, 0, "{report}");
    assert_eq!(report.out_of_order, 0, "{report}");
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(report.latency_delivery.count, 400, "{report}");
    assert_eq!(report.latency_accepted.count, 400, "{report}");
    assert_eq!(report.latency_delivered_ack.count, 400, "{report}");
    assert!(report.delivered_per_sec > 0.0, "{report}");
}

#[tokio::test]
async fn chat_counts_are_exact_over_websocket() {
    let server = server().await;
    exact_counts(format!("ws://{}/ws", server.ws_addr().unwrap())).await;
    server.shutdown().await;
}

#[tokio::test]
async fn chat_counts_are_exact_over_tcp() {
    let server = server().await;
    exact_counts(format!("tcp://{}", server.tcp_addr().unwrap())).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_server_that_rate_limits_shows_up_as_errors_not_a_hang() {
    // SES-5 at its default (100/s, burst 200): a flat-out run of 230 messages
    // on one pair gets `rate_limited` answers, which the report counts, and
    // the refused messages leave the window. (Fewer than 50 refusals in a
    // row, so SES-6 does not close the connection; no confirms, which would
    // spend the sender's tokens too.)
    let engine = Engine::new(
        Config::default(),
        Verifier::new(Algorithm::Hs256, DecodingKey::from_secret(SECRET)),
        None,
        Box::new(MemoryRevocations::default()),
    );
    let loopback = "127.0.0.1:0".parse().ok();
    let server = net::serve(
        NetConfig {
            tcp: None,
            ws: loopback,
            options: ServerOptions::default(),
        },
        vec![engine],
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let options = ChatOptions {
        url: format!("ws://{}/ws", server.ws_addr().unwrap()),
        pairs: 1,
        messages: Some(230),
        inflight: 300,
        confirm_acks: false,
        drain: Duration::from_secs(5),
        ..ChatOptions::default()
    };
    let report = tokio::time::timeout(Duration::from_secs(30), chat::run(&options, &minter()))
        .await
        .expect("the run finishes")
        .expect("the run succeeds");
    assert!(report.errors.get("rate_limited").copied().unwrap_or(0) > 0, "{report}");
    assert_eq!(report.sent, 230, "{report}");
    // Every refused request is counted (the receiver's refused acknowledgments
    // may add to the count), and every accepted message is delivered.
    let refused = report.errors.get("rate_limited").copied().unwrap_or(0);
    assert!(report.accepted < 230 && report.accepted + refused >= 230, "{report}");
    assert_eq!(report.delivered, report.accepted, "{report}");
    server.shutdown().await;
}

/// The CLI end to end: spawns `bimip serve` as a child, runs a counted chat
/// and an idle run, and writes JSON.
#[test]
fn the_cli_spawns_the_reference_server_and_writes_json() {
    let bimip = env!("CARGO_BIN_EXE_bimip");
    let run = |args: &[&str]| -> serde_json::Value {
        let output = Command::new(bimip)
            .args(["bench", "--quiet", "--json", "-"])
            .args(args)
            .output()
            .expect("running bimip bench");
        assert!(
            output.status.success(),
            "bimip bench {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("JSON on standard output")
    };
    let chat = run(&["--pairs", "2", "--messages", "50", "--transport", "tcp"]);
    assert_eq!(chat["mode"], "chat");
    assert_eq!(chat["server"]["spawned"], true);
    assert_eq!(chat["server"]["store"], "memory");
    assert_eq!(chat["delivered"], 100);
    assert_eq!(chat["acked"], 100);
    assert!(chat["url"].as_str().unwrap().starts_with("tcp://127.0.0.1:"));
    let idle = run(&["--idle", "20", "--settle", "0.2"]);
    assert_eq!(idle["mode"], "idle");
    assert_eq!(idle["connections"], 20);
    assert!(idle["server_rss_after"].as_u64().unwrap() > 0);
    assert!(idle["server_bytes_per_connection"].is_number());
}
