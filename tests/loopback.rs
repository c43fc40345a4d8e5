//! The reference server's network adapters and the reference client against
//! each other over real loopback sockets (127.0.0.1, ports picked by the OS).
//! Each test names the SPEC requirements it exercises and is bounded by a
//! timeout, so a hang fails instead of stalling the suite.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bimip::client::{Client, ClientError, ClientOptions, Event, TokenPlacement};
use bimip::codec;
use bimip::core::auth::{Algorithm, Claims, Signer, Verifier};
use bimip::core::{Config, Engine, MemoryRevocations};
use bimip::net::{self, NetConfig, ServerHandle, ServerOptions, SystemClock};
use bimip::proto::message_scheme::Payload;
use bimip::proto::{Identity, MessageScheme, PingPong, TokenRefreshRequest, TokenRevokeRequest, TokenRevokeResponse};
use jsonwebtoken::{DecodingKey, EncodingKey};
use prost::Message as _;
use rustls::pki_types::CertificateDer;

const SECRET: &[u8] = b"loopback-secret-for-hs256-tests!";
const OTHER_SECRET: &[u8] = b"some-other-secret-nobody-trusts!";
/// Limit for one expected event; tests fail fast instead of hanging.
const STEP: Duration = Duration::from_secs(3);

/// Runs a test body with an overall deadline.
async fn within<F: Future<Output = ()>>(limit: Duration, body: F) {
    if tokio::time::timeout(limit, body).await.is_err() {
        panic!("test did not finish within {limit:?}");
    }
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

fn signer(secret: &[u8]) -> Signer {
    Signer::new(Algorithm::Hs256, EncodingKey::from_secret(secret))
}

/// A fresh jti per token, across all tests of this file.
fn jti() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("jti-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn token_with(secret: &[u8], eid: &str, device: &str, iat: i64, exp: i64) -> String {
    let claims = Claims {
        eid: eid.into(),
        device_id: device.into(),
        jti: jti(),
        iat,
        exp,
        nbf: None,
        iss: None,
        aud: None,
    };
    signer(secret).mint(&claims).expect("minting a test token")
}

/// A valid token for an hour.
fn token(eid: &str, device: &str) -> String {
    let now = now_s();
    token_with(SECRET, eid, device, now, now + 3600)
}

struct Server {
    handle: ServerHandle,
    ws: String,
    tcp: String,
}

fn engine(config: Config) -> Engine {
    let verifier = Verifier::new(Algorithm::Hs256, DecodingKey::from_secret(SECRET));
    Engine::new(
        config,
        verifier,
        Some(signer(SECRET)),
        Box::new(MemoryRevocations::default()),
    )
}

async fn start(config: Config, options: ServerOptions, scheme: (&str, &str)) -> Server {
    let loopback = "127.0.0.1:0".parse().ok();
    let net_config = NetConfig {
        tcp: loopback,
        ws: loopback,
        options,
    };
    let handle = net::serve(net_config, vec![engine(config)], Arc::new(SystemClock))
        .await
        .expect("binding loopback listeners");
    let (ws_scheme, tcp_scheme) = scheme;
    let ws = format!("{ws_scheme}://{}/ws", handle.ws_addr().expect("a WebSocket address"));
    let tcp = format!("{tcp_scheme}://{}", handle.tcp_addr().expect("a TCP address"));
    Server { handle, ws, tcp }
}

async fn server(config: Config) -> Server {
    start(config, ServerOptions::default(), ("ws", "tcp")).await
}

fn options() -> ClientOptions {
    ClientOptions {
        timeout: STEP,
        ..ClientOptions::default()
    }
}

fn raw_options() -> ClientOptions {
    ClientOptions {
        token_placement: TokenPlacement::None,
        ..options()
    }
}

async fn connect(url: &str, token: &str) -> Client {
    match Client::connect(url, token, options()).await {
        Ok(client) => client,
        Err(error) => panic!("connecting to {url}: {error}"),
    }
}

fn ping(id: &str) -> Payload {
    Payload::PingpongMessage(PingPong {
        r#type: 1,
        status: 1,
        request_time: 1_700_000_000_000,
        id: id.into(),
        ..PingPong::default()
    })
}

fn refusal(result: Result<Client, ClientError>) -> (u16, String, ClientError) {
    let error = match result {
        Ok(client) => panic!("expected a refusal, got a session: {client:?}"),
        Err(error) => error,
    };
    let (code, kind) = match &error {
        ClientError::Refused { code, kind, .. } => (*code, kind.clone()),
        other => panic!("expected a refusal, got {other}"),
    };
    (code, kind, error)
}

/// Connect, session identity and Authenticate RESPONSE fields, ping/pong,
/// logout and the same token refused afterwards, on either transport.
async fn session_lifecycle(url: &str, ws: bool) {
    let now = now_s();
    let token = token_with(SECRET, "alice@example.com", "phone", now, now + 3600);
    let mut client = connect(url, &token).await;

    // TRN-15 / TRN-16 / AUTH-12: the first stanza, every listed field set.
    let session = client.session().expect("an Authenticate RESPONSE").clone();
    assert_eq!(
        (session.eid.as_str(), session.device.as_str()),
        ("alice@example.com", "phone")
    );
    assert_eq!((session.response.r#type, session.response.status), (2, 1));
    assert_eq!(session.ping_interval_ms, 30_000);
    assert_eq!(session.max_stanza_bytes, 65_536);
    assert_eq!(session.expires_at, (now + 3600) * 1000);
    assert!(session.timestamp > 0);

    // PING-1: the pong echoes id and request_time, names the session.
    let request_time = client.now_ms();
    let pong = client.ping("p-1").await.expect("a pong");
    assert_eq!((pong.r#type, pong.status, pong.id.as_str()), (2, 2, "p-1"));
    assert!(pong.request_time >= request_time && pong.request_time <= client.now_ms());
    assert_eq!(pong.rtt, pong.response_time - pong.request_time);
    let to = pong.to.expect("pong.to");
    assert_eq!(
        (to.eid.as_str(), to.connection_resource_id.as_str()),
        ("alice@example.com", "phone")
    );

    // OUT-1: Logout RESPONSE status 3, then close 1000 (WS) or EOF (TCP).
    let (logout, code) = client.logout().await.expect("logout");
    assert_eq!((logout.r#type, logout.status), (2, 3));
    assert_eq!(logout.entity.map(|e| e.eid), Some("alice@example.com".to_string()));
    assert_eq!(code, if ws { Some(1000) } else { None });

    // OUT-2 / AUTH-7: the token is revoked.
    let (code, kind, error) = refusal(Client::connect(url, &token, options()).await);
    assert_eq!((code, kind.as_str()), (401, "token_revoked"));
    if ws {
        // AUTH-10: the HTTP answer's headers.
        let ClientError::Refused { http: Some(http), .. } = error else {
            panic!("an HTTP refusal expected: {error}")
        };
        assert_eq!(http.content_type.as_deref(), Some("text/plain"));
        assert_eq!(http.www_authenticate.as_deref(), Some("Bearer error=\"invalid_token\""));
    }
}

/// TRN-16, AUTH-12, PING-1, OUT-1, OUT-2, AUTH-7, AUTH-10 over WebSocket.
#[tokio::test]
async fn ws_session_ping_logout_and_revoked_token() {
    within(Duration::from_secs(10), async {
        let server = server(Config::default()).await;
        session_lifecycle(&server.ws, true).await;
        server.handle.shutdown().await;
    })
    .await;
}

/// A stopping server ends its live sessions: WebSocket with Close 1001, TCP by closing the stream, and the
/// shutdown then completes (the hub tells every connection's queue, not a token per connection).
#[tokio::test]
async fn shutdown_closes_live_sessions() {
    within(Duration::from_secs(10), async {
        let server = server(Config::default()).await;
        let mut ws = connect(&server.ws, &token("alice@example.com", "phone")).await;
        let mut tcp = connect(&server.tcp, &token("bob@example.com", "phone")).await;
        let stopping = tokio::spawn(server.handle.shutdown());
        let (code, _) = ws.expect_closed(STEP).await.expect("the WebSocket session is closed");
        assert_eq!(code, Some(1001));
        tcp.expect_closed(STEP).await.expect("the TCP session is closed");
        stopping.await.expect("shutdown completes");
    })
    .await;
}

/// TRN-8, TRN-15, AUTH-12, PING-1, OUT-1, OUT-2, AUTH-7, AUTH-11 over native TCP.
#[tokio::test]
async fn tcp_session_ping_logout_and_revoked_token() {
    within(Duration::from_secs(10), async {
        let server = server(Config::default()).await;
        session_lifecycle(&server.tcp, false).await;

        // AUTH-11: the refusal is ErrorMessage 401 with route "27", then close.
        let revoked = token("bob@example.com", "laptop");
        let mut client = connect(&server.tcp, &revoked).await;
        client.logout().await.expect("logout");
        let mut raw = Client::connect(&server.tcp, "", raw_options()).await.expect("dial");
        raw.send(Payload::Authenticate(bimip::proto::Authenticate {
            token: revoked,
            r#type: 1,
            ..Default::default()
        }))
        .await
        .expect("send");
        let error = raw
            .expect_error("token_revoked", STEP)
            .await
            .expect("401 token_revoked");
        assert_eq!((error.code, error.route.as_str()), (401, "27"));
        assert_eq!(raw.expect_closed(STEP).await.expect("close").0, None);
        server.handle.shutdown().await;
    })
    .await;
}

/// AUTH-9, AUTH-10, AUTH-3, AUTH-4, AUTH-6 and SPEC 3.3: every token location
/// works; each failure has its kind and HTTP 401 before any upgrade.
#[tokio::test]
async fn ws_token_locations_and_refusals() {
    within(Duration::from_secs(10), async {
        let server = server(Config::default()).await;
        let placements = [
            TokenPlacement::AuthorizationHeader,
            TokenPlacement::TokenHeader,
            TokenPlacement::TokenHeaderBearer,
            TokenPlacement::Query,
        ];
        for (i, placement) in placements.into_iter().enumerate() {
            let device = format!("device-{i}");
            let opts = ClientOptions {
                token_placement: placement,
                ..options()
            };
            let client = Client::connect(&server.ws, &token("carol@example.com", &device), opts)
                .await
                .unwrap_or_else(|e| panic!("{placement:?}: {e}"));
            let session = client.session().expect("a session");
            assert_eq!(session.device, device, "{placement:?}");
        }

        let none = ClientOptions {
            token_placement: TokenPlacement::None,
            ..options()
        };
        let (code, kind, _) = refusal(Client::connect(&server.ws, "", none).await);
        assert_eq!((code, kind.as_str()), (401, "token_missing"));

        let (code, kind, _) = refusal(Client::connect(&server.ws, "garbage", options()).await);
        assert_eq!((code, kind.as_str()), (401, "token_malformed"));

        let now = now_s();
        let forged = token_with(OTHER_SECRET, "carol@example.com", "x", now, now + 60);
        let (code, kind, _) = refusal(Client::connect(&server.ws, &forged, options()).await);
        assert_eq!((code, kind.as_str()), (401, "token_signature"));

        let expired = token_with(SECRET, "carol@example.com", "x", now - 120, now - 60);
        let (code, kind, _) = refusal(Client::connect(&server.ws, &expired, options()).await);
        assert_eq!((code, kind.as_str()), (401, "token_expired"));

        // AUTH-9: the first present location decides, even when a later one is valid.
        let url = format!("{}?token={}", server.ws, token("carol@example.com", "y"));
        let (code, kind, _) = refusal(Client::connect(&url, "garbage", options()).await);
        assert_eq!((code, kind.as_str()), (401, "token_malformed"));
        server.handle.shutdown().await;
    })
    .await;
}

/// TRN-11: a first frame that is not Authenticate gets 401 token_missing, then close.
#[tokio::test]
async fn tcp_first_frame_must_be_authenticate() {
    within(Duration::from_secs(10), async {
        let server = server(Config::default()).await;
        let mut client = Client::connect(&server.tcp, "", raw_options()).await.expect("dial");
        client.send(ping("early")).await.expect("send");
        let error = client.expect_error("token_missing", STEP).await.expect("401");
        assert_eq!(error.code, 401);
        assert_eq!(client.expect_closed(STEP).await.expect("close").0, None);
        server.handle.shutdown().await;
    })
    .await;
}

/// TRN-10: a length over max_stanza_bytes gets 413 too_large and a close,
/// before the body is read: on the first frame and on an authenticated connection.
#[tokio::test]
async fn tcp_oversized_length_header() {
    within(Duration::from_secs(10), async {
        let server = server(Config::default()).await;
        let oversized = 65_537u32.to_be_bytes().to_vec();

        let mut first = Client::connect(&server.tcp, "", raw_options()).await.expect("dial");
        first.send_wire(oversized.clone()).await.expect("send");
        let error = first.expect_error("too_large", STEP).await.expect("413");
        assert_eq!((error.code, error.route.as_str()), (413, ""));
        assert_eq!(first.expect_closed(STEP).await.expect("close").0, None);

        let mut client = connect(&server.tcp, &token("dave@example.com", "d")).await;
        // The header and part of a body: the server must not wait for the rest.
        let mut bytes = oversized;
        bytes.extend_from_slice(&[0u8; 1000]);
        client.send_wire(bytes).await.expect("send");
        client.expect_error("too_large", STEP).await.expect("413");
        assert_eq!(client.expect_closed(STEP).await.expect("close").0, None);
        server.handle.shutdown().await;
    })
    .await;
}

/// ENV-3, ENV-5, ENV-7, ENV-8, TRN-9: envelope faults are answered and the
/// connection stays usable; frames reassemble however the bytes are split.
#[tokio::test]
async fn tcp_envelope_faults_keep_the_connection() {
    within(Duration::from_secs(10), async {
        let server = server(Config::default()).await;
        let mut client = connect(&server.tcp, &token("erin@example.com", "e")).await;

        // ENV-3: a truncated varint.
        client.send_raw(vec![0x08]).await.expect("send");
        let error = client.expect_error("malformed", STEP).await.expect("400 malformed");
        assert_eq!((error.code, error.route.as_str()), (400, ""));

        // ENV-5: route 7 holding a PingPong.
        let mismatch = MessageScheme {
            route: 7,
            payload: Some(ping("m")),
        };
        client.send_raw(mismatch.encode_to_vec()).await.expect("send");
        let error = client
            .expect_error("route_mismatch", STEP)
            .await
            .expect("400 route_mismatch");
        assert_eq!((error.code, error.route.as_str()), (400, "7"));

        // ENV-8: a server-only route.
        client
            .send(Payload::TokenRevokeResponse(TokenRevokeResponse {
                r#type: 2,
                status: 1,
                ..Default::default()
            }))
            .await
            .expect("send");
        let error = client.expect_error("not_allowed", STEP).await.expect("405");
        assert_eq!((error.code, error.route.as_str()), (405, "8"));

        // ENV-7: a spoofed "server fills" identity.
        let spoofed = Payload::PingpongMessage(PingPong {
            to: Some(Identity {
                eid: "mallory@example.com".into(),
                connection_resource_id: String::new(),
            }),
            r#type: 1,
            status: 1,
            id: "spoof".into(),
            ..PingPong::default()
        });
        client.send(spoofed).await.expect("send");
        let error = client.expect_error("identity_mismatch", STEP).await.expect("403");
        assert_eq!((error.code, error.ref_id.as_str()), (403, "spoof"));

        // TRN-9: one frame a byte at a time, then two frames in one write.
        let mut one = Vec::new();
        let stanza = codec::encode(&ping("split"));
        one.extend_from_slice(&u32::try_from(stanza.len()).expect("small").to_be_bytes());
        one.extend_from_slice(&stanza);
        for byte in one {
            client.send_wire(vec![byte]).await.expect("send");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let pong = |id: &'static str| move |p: &Payload| matches!(p, Payload::PingpongMessage(x) if x.id == id);
        client
            .expect(pong("split"), STEP)
            .await
            .expect("pong for the split frame");
        let mut two = Vec::new();
        for id in ["joined-1", "joined-2"] {
            let stanza = codec::encode(&ping(id));
            two.extend_from_slice(&u32::try_from(stanza.len()).expect("small").to_be_bytes());
            two.extend_from_slice(&stanza);
        }
        client.send_wire(two).await.expect("send");
        client.expect(pong("joined-1"), STEP).await.expect("first pong");
        client.expect(pong("joined-2"), STEP).await.expect("second pong");

        // Still usable, and nothing else arrived.
        client.ping("after").await.expect("pong");
        assert!(client.close().await.is_ok());
        server.handle.shutdown().await;
    })
    .await;
}

/// TRN-5: a text message gets 400 text_frame, then close 1003.
#[tokio::test]
async fn ws_text_frame_is_fatal() {
    within(Duration::from_secs(10), async {
        let server = server(Config::default()).await;
        let mut client = connect(&server.ws, &token("frank@example.com", "f")).await;
        client.send_text("hello").await.expect("send");
        let error = client.expect_error("text_frame", STEP).await.expect("400 text_frame");
        assert_eq!(error.code, 400);
        assert_eq!(client.expect_closed(STEP).await.expect("close").0, Some(1003));
        server.handle.shutdown().await;
    })
    .await;
}

/// MessageScheme{route 6, PingPong{id "padded", field 15: `padding` bytes}}.
fn padded_ping(padding: usize) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint, int64};
    let Payload::PingpongMessage(inner) = ping("padded") else {
        unreachable!()
    };
    let mut body = inner.encode_to_vec();
    encode_key(15, WireType::LengthDelimited, &mut body);
    encode_varint(padding as u64, &mut body);
    body.resize(body.len() + padding, b'x');
    let mut scheme = Vec::new();
    int64::encode(1, &6, &mut scheme);
    encode_key(6, WireType::LengthDelimited, &mut scheme);
    encode_varint(body.len() as u64, &mut scheme);
    scheme.extend_from_slice(&body);
    scheme
}

/// TRN-6, TRN-1, ENV-10: a message of max_stanza_bytes passes, one byte more gets
/// 413 too_large and close 1009.
#[tokio::test]
async fn ws_oversized_message_closes_1009() {
    within(Duration::from_secs(10), async {
        let server = server(Config::default()).await;
        let mut client = connect(&server.ws, &token("grace@example.com", "g")).await;
        // Exactly 65536 bytes: a ping padded with an unknown field, which the
        // server ignores (ENV-10), so its pong stays small.
        let exact = (65_400..65_536)
            .map(padded_ping)
            .find(|bytes| bytes.len() == 65_536)
            .expect("a padding that makes the stanza exactly 65536 bytes");
        client.send_raw(exact).await.expect("send");
        client
            .expect(|p| matches!(p, Payload::PingpongMessage(x) if x.id == "padded"), STEP)
            .await
            .expect("the largest stanza is accepted");

        client.send_raw(vec![0u8; 65_537]).await.expect("send");
        let error = client.expect_error("too_large", STEP).await.expect("413 too_large");
        assert_eq!(error.code, 413);
        assert_eq!(client.expect_closed(STEP).await.expect("close").0, Some(1009));
        server.handle.shutdown().await;
    })
    .await;
}

/// TRN-4: bimip.v1 is selected when offered; no offer is accepted too.
#[tokio::test]
async fn ws_subprotocol() {
    within(Duration::from_secs(10), async {
        let server = server(Config::default()).await;
        let client = connect(&server.ws, &token("heidi@example.com", "h1")).await;
        assert_eq!(client.subprotocol(), Some("bimip.v1"));
        let opts = ClientOptions {
            subprotocol: None,
            ..options()
        };
        let client = Client::connect(&server.ws, &token("heidi@example.com", "h2"), opts)
            .await
            .expect("no subprotocol offered");
        assert_eq!(client.subprotocol(), None);
        assert!(client.session().is_some());
        server.handle.shutdown().await;
    })
    .await;
}

/// TRN-7: a WebSocket Ping control frame is answered with a Pong carrying the
/// same application data; it is no BIMIP pong (PING-4), so nothing else comes.
#[tokio::test]
async fn ws_ping_frames_are_answered() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    within(Duration::from_secs(10), async {
        let server = server(Config::default()).await;
        let mut request = server.ws.as_str().into_client_request().expect("request");
        let bearer = format!("Bearer {}", token("ivan@example.com", "i1"));
        request
            .headers_mut()
            .insert("Authorization", bearer.parse().expect("header"));
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("upgrade");
        let first = ws.next().await.expect("a first message").expect("readable");
        let Message::Binary(bytes) = first else {
            panic!("expected the Authenticate RESPONSE, got {first:?}")
        };
        assert!(matches!(codec::decode(&bytes, 65_536), Ok(Payload::Authenticate(_))));
        for data in [&b"abc"[..], &b""[..], &[0xff; 125][..]] {
            ws.send(Message::Ping(data.to_vec().into())).await.expect("ping");
            let answer = tokio::time::timeout(STEP, ws.next()).await.expect("in time");
            match answer {
                Some(Ok(Message::Pong(echo))) => assert_eq!(&echo[..], data),
                other => panic!("expected a Pong, got {other:?}"),
            }
        }
        server.handle.shutdown().await;
    })
    .await;
}

/// SES-1: a second connection of a device replaces the first (409
/// session_replaced, close 4409 on WS, EOF on TCP), across transports.
#[tokio::test]
async fn same_device_replaces_the_session() {
    within(Duration::from_secs(10), async {
        let server = server(Config::default()).await;
        let mut old = connect(&server.ws, &token("ivan@example.com", "tablet")).await;
        let mut new = connect(&server.tcp, &token("ivan@example.com", "tablet")).await;
        let error = old.expect_error("session_replaced", STEP).await.expect("409");
        assert_eq!(error.code, 409);
        assert_eq!(old.expect_closed(STEP).await.expect("close").0, Some(4409));
        new.ping("alive").await.expect("the new session works");

        let mut newest = connect(&server.ws, &token("ivan@example.com", "tablet")).await;
        new.expect_error("session_replaced", STEP).await.expect("409");
        assert_eq!(new.expect_closed(STEP).await.expect("close").0, None);
        newest.ping("alive").await.expect("the newest session works");
        server.handle.shutdown().await;
    })
    .await;
}

/// SES-3: past max_sessions_per_eid devices, a new device is refused with 429
/// too_many_sessions (HTTP on WS, ErrorMessage on TCP); a replacement is not.
#[tokio::test]
async fn too_many_sessions() {
    within(Duration::from_secs(10), async {
        let config = Config {
            max_sessions_per_eid: 2,
            ..Config::default()
        };
        let server = server(config).await;
        let _one = connect(&server.ws, &token("judy@example.com", "d1")).await;
        let _two = connect(&server.tcp, &token("judy@example.com", "d2")).await;

        let (code, kind, error) =
            refusal(Client::connect(&server.ws, &token("judy@example.com", "d3"), options()).await);
        assert_eq!((code, kind.as_str()), (429, "too_many_sessions"));
        let ClientError::Refused { http: Some(http), .. } = error else {
            panic!("an HTTP refusal expected")
        };
        assert_eq!(http.content_type.as_deref(), Some("text/plain"));
        assert_eq!(http.www_authenticate, None);

        let (code, kind, _) = refusal(Client::connect(&server.tcp, &token("judy@example.com", "d3"), options()).await);
        assert_eq!((code, kind.as_str()), (429, "too_many_sessions"));

        let mut again = connect(&server.ws, &token("judy@example.com", "d1")).await;
        again.ping("replacement").await.expect("a replacement is not refused");
        assert_eq!(server.handle.stats().users_online, 1);
        server.handle.shutdown().await;
    })
    .await;
}

/// TOK-4, TOK-6, TOK-7, OUT-3: revoking another device's session answers the
/// caller first (status 1, sessions_ended 1); the victim gets 401
/// token_revoked and close 4401, and its token is refused afterwards.
#[tokio::test]
async fn revoking_another_device() {
    within(Duration::from_secs(10), async {
        let server = server(Config::default()).await;
        let mut caller = connect(&server.ws, &token("kim@example.com", "desk")).await;
        let victim_token = token("kim@example.com", "phone");
        let mut victim = connect(&server.ws, &victim_token).await;

        let request = TokenRevokeRequest {
            to: Some(Identity {
                eid: String::new(),
                connection_resource_id: "phone".into(),
            }),
            r#type: 1,
            timestamp: caller.now_ms(),
            ..Default::default()
        };
        caller.send(Payload::TokenRevokeRequest(request)).await.expect("send");
        let answer = caller
            .expect(|p| matches!(p, Payload::TokenRevokeResponse(_)), STEP)
            .await
            .expect("TokenRevokeResponse");
        let Payload::TokenRevokeResponse(answer) = answer else {
            unreachable!()
        };
        assert_eq!((answer.r#type, answer.status, answer.sessions_ended), (2, 1, 1));
        assert_eq!(
            answer.to.map(|t| (t.eid, t.connection_resource_id)),
            Some(("kim@example.com".to_string(), "phone".to_string()))
        );

        let error = victim.expect_error("token_revoked", STEP).await.expect("401");
        assert_eq!(error.code, 401);
        assert_eq!(victim.expect_closed(STEP).await.expect("close").0, Some(4401));
        caller.ping("still-here").await.expect("the caller's session continues");

        let (code, kind, _) = refusal(Client::connect(&server.ws, &victim_token, options()).await);
        assert_eq!((code, kind.as_str()), (401, "token_revoked"));
        server.handle.shutdown().await;
    })
    .await;
}

/// TOK-8, TOK-9: refresh returns a new token for the same identity that
/// connects; the old one is revoked while the session continues.
#[tokio::test]
async fn token_refresh() {
    within(Duration::from_secs(10), async {
        let server = server(Config::default()).await;
        let old_token = token("leo@example.com", "watch");
        let mut client = connect(&server.tcp, &old_token).await;
        client
            .send(Payload::TokenRefreshRequest(TokenRefreshRequest {
                to: None,
                timestamp: client.now_ms(),
            }))
            .await
            .expect("send");
        let answer = client
            .expect(|p| matches!(p, Payload::TokenRefreshResponse(_)), STEP)
            .await
            .expect("TokenRefreshResponse");
        let Payload::TokenRefreshResponse(answer) = answer else {
            unreachable!()
        };
        assert_eq!(answer.status, 1);
        assert!(!answer.token.is_empty() && answer.token != old_token);
        assert!(answer.expires_at > client.now_ms());
        client.ping("after-refresh").await.expect("the session continues");

        let (code, kind, _) = refusal(Client::connect(&server.ws, &old_token, options()).await);
        assert_eq!((code, kind.as_str()), (401, "token_revoked"));

        let fresh = connect(&server.ws, &answer.token).await;
        let session = fresh.session().expect("a session");
        assert_eq!(
            (session.eid.as_str(), session.device.as_str()),
            ("leo@example.com", "watch")
        );
        assert_eq!(session.expires_at, answer.expires_at);
        server.handle.shutdown().await;
    })
    .await;
}

const PING_MS: i64 = 200;

fn fast_pings() -> Config {
    Config {
        ping_interval_ms: PING_MS,
        ..Config::default()
    }
}

/// PING-2, PING-4, PING-5: a client that never answers gets pings every
/// interval, then 408 ping_timeout and close 4408 three intervals after start.
#[tokio::test]
async fn missed_pongs_end_the_session() {
    within(Duration::from_secs(10), async {
        let server = server(fast_pings()).await;
        let opts = ClientOptions {
            auto_pong: false,
            ..options()
        };
        let started = Instant::now();
        let mut client = Client::connect(&server.ws, &token("mia@example.com", "m"), opts)
            .await
            .expect("connect");
        let identity = client.session().map(|s| (s.eid.clone(), s.device.clone()));

        let mut pings = Vec::new();
        let closed_at = loop {
            match client.next_event().await {
                Some(Event::Stanza(Payload::PingpongMessage(ping))) => pings.push(ping),
                Some(Event::Stanza(Payload::ErrorMessage(error))) => {
                    assert_eq!((error.code, error.message.as_str()), (408, "ping_timeout"));
                }
                Some(Event::Closed { code, .. }) => {
                    assert_eq!(code, Some(4408));
                    break started.elapsed();
                }
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(pings.len(), 2, "{pings:?}");
        for ping in &pings {
            assert_eq!((ping.r#type, ping.status), (1, 1));
            assert!(!ping.id.is_empty() && ping.request_time > 0);
            assert_eq!(
                ping.to
                    .as_ref()
                    .map(|t| (t.eid.clone(), t.connection_resource_id.clone())),
                identity
            );
        }
        assert_ne!(pings[0].id, pings[1].id);
        let expected = Duration::from_millis(3 * PING_MS as u64);
        assert!(
            closed_at >= expected - Duration::from_millis(50) && closed_at < expected + Duration::from_millis(500),
            "closed after {closed_at:?}, expected about {expected:?}"
        );
        server.handle.shutdown().await;
    })
    .await;
}

/// PING-3, PING-4: a client that answers every ping keeps its session past
/// five intervals.
#[tokio::test]
async fn answered_pings_keep_the_session() {
    within(Duration::from_secs(10), async {
        let server = server(fast_pings()).await;
        let opts = ClientOptions {
            surface_pings: true,
            ..options()
        };
        let mut client = Client::connect(&server.tcp, &token("noah@example.com", "n"), opts)
            .await
            .expect("connect");
        let mut pings = 0;
        let watch = tokio::time::sleep(Duration::from_millis(5 * PING_MS as u64 + 100));
        tokio::pin!(watch);
        loop {
            tokio::select! {
                () = &mut watch => break,
                event = client.next_event() => match event {
                    Some(Event::Stanza(Payload::PingpongMessage(ping))) if ping.r#type == 1 => pings += 1,
                    other => panic!("unexpected {other:?}"),
                },
            }
        }
        assert!(pings >= 4, "only {pings} pings in five intervals");
        client.ping("alive").await.expect("the session is alive");
        server.handle.shutdown().await;
    })
    .await;
}

/// TRN-14 and SPEC 2.4: wss:// and tls:// with a self-signed certificate the
/// client trusts; a client trusting another root fails the handshake.
#[tokio::test]
async fn tls_transports() {
    within(Duration::from_secs(10), async {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("a certificate");
        let acceptor = net::tls::acceptor_from_pem(
            certified.cert.pem().as_bytes(),
            certified.signing_key.serialize_pem().as_bytes(),
        )
        .expect("a TLS acceptor");
        let server_options = ServerOptions {
            tls: Some(acceptor),
            ..ServerOptions::default()
        };
        let server = start(Config::default(), server_options, ("wss", "tls")).await;
        let root: CertificateDer<'static> = certified.cert.der().clone();
        let trusting = || ClientOptions {
            tls_roots: vec![root.clone()],
            server_name: Some("localhost".into()),
            ..options()
        };

        for url in [&server.ws, &server.tcp] {
            let mut client = Client::connect(url, &token("olga@example.com", "o"), trusting())
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(client.session().map(|s| s.eid.as_str()), Some("olga@example.com"));
            client.ping("tls").await.expect("pong over TLS");
            let (_, code) = client.logout().await.expect("logout");
            assert_eq!(code, if url.starts_with("wss") { Some(1000) } else { None });
        }

        let insecure = ClientOptions {
            insecure_skip_verify: true,
            ..options()
        };
        let client = Client::connect(&server.ws, &token("olga@example.com", "p"), insecure)
            .await
            .expect("insecure_skip_verify accepts the self-signed certificate");
        assert!(client.session().is_some());

        let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("a certificate");
        let distrusting = ClientOptions {
            tls_roots: vec![other.cert.der().clone()],
            server_name: Some("localhost".into()),
            ..options()
        };
        match Client::connect(&server.tcp, &token("olga@example.com", "q"), distrusting).await {
            Err(ClientError::Tls(_)) => {}
            other => panic!("expected a TLS failure, got {other:?}"),
        }
        server.handle.shutdown().await;
    })
    .await;
}

/// A chat store that counts syncs and can make each one slow (a slow disk), around any other store.
struct CountingStore<S> {
    inner: S,
    syncs: Arc<AtomicU64>,
    sync_delay: Duration,
}

impl<S: bimip::core::queue::ChatStore> bimip::core::queue::ChatStore for CountingStore<S> {
    fn record(&mut self, event: &bimip::core::queue::ChatEvent) -> Result<(), bimip::core::StoreError> {
        self.inner.record(event)
    }
    fn append(&mut self, eid: &str, item: bimip::core::queue::QueueItem) -> Result<u64, bimip::core::StoreError> {
        self.inner.append(eid, item)
    }
    fn sync(&mut self) -> Result<(), bimip::core::StoreError> {
        std::thread::sleep(self.sync_delay);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync()
    }
    fn items_after(&self, eid: &str, after: u64) -> Vec<(u64, bimip::core::queue::QueueItem)> {
        self.inner.items_after(eid, after)
    }
    fn oldest_retained(&self, eid: &str) -> u64 {
        self.inner.oldest_retained(eid)
    }
    fn usage(&self, eid: &str) -> (usize, usize) {
        self.inner.usage(eid)
    }
    fn committed(&self, eid: &str, device: &str) -> Option<u64> {
        self.inner.committed(eid, device)
    }
    fn commit(&mut self, eid: &str, device: &str, offset: u64) -> Result<(), bimip::core::StoreError> {
        self.inner.commit(eid, device, offset)
    }
    fn start_device(
        &mut self,
        eid: &str,
        device: &str,
        now: bimip::core::Millis,
    ) -> Result<bimip::core::queue::DeviceStart, bimip::core::StoreError> {
        self.inner.start_device(eid, device, now)
    }
    fn users(&self) -> Vec<String> {
        self.inner.users()
    }
}

/// A server whose engine stores chat durably in `dir`, counting syncs.
async fn durable_server(dir: &std::path::Path, sync_delay: Duration) -> (Server, Arc<AtomicU64>) {
    let (store, events) =
        bimip::store::DurableChatStore::open(bimip::store::queue::RealFs, dir, Default::default()).expect("queue");
    let syncs = Arc::new(AtomicU64::new(0));
    let counting = CountingStore {
        inner: store,
        syncs: syncs.clone(),
        sync_delay,
    };
    let config = Config {
        rate_per_sec: 100_000,
        rate_burst: 100_000,
        ..Config::default()
    };
    let engine = engine(config).with_chat(Box::new(counting), &events);
    let loopback = "127.0.0.1:0".parse().ok();
    let net_config = NetConfig {
        tcp: loopback,
        ws: loopback,
        options: ServerOptions::default(),
    };
    let handle = net::serve(net_config, vec![engine], Arc::new(SystemClock))
        .await
        .expect("binding loopback listeners");
    let ws = format!("ws://{}/ws", handle.ws_addr().expect("a WebSocket address"));
    let tcp = format!("tcp://{}", handle.tcp_addr().expect("a TCP address"));
    (Server { handle, ws, tcp }, syncs)
}

fn chat_text(to: &str, local: &str) -> Payload {
    Payload::TextPayloadRequest(bimip::proto::TextPayloadRequest {
        to: vec![Identity {
            eid: to.into(),
            connection_resource_id: String::new(),
        }],
        content: format!("text {local}"),
        message_id_local: local.into(),
        ..Default::default()
    })
}

/// `senders` clients on TCP each send `per_sender` messages to one offline receiver, each waiting for its
/// VersionUpdate (the acknowledgment) before the next. Returns the elapsed time and the syncs of the sending
/// phase.
async fn send_concurrently(server: &Server, syncs: &AtomicU64, senders: usize, per_sender: usize) -> (Duration, u64) {
    let mut clients = Vec::new();
    for i in 0..senders {
        clients.push(connect(&server.tcp, &token(&format!("sender{i}@example.com"), "phone")).await);
    }
    let before = syncs.load(Ordering::Relaxed);
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            tokio::spawn(async move {
                for n in 0..per_sender {
                    let local = format!("s{i}-m{n}");
                    client.send(chat_text("bob@example.com", &local)).await.expect("send");
                    let acked = client
                        .expect(
                            |p| matches!(p, Payload::VersionUpdate(v) if v.message_id_local == local),
                            Duration::from_secs(20),
                        )
                        .await;
                    assert!(acked.is_ok(), "{local}: {acked:?}");
                }
                client
            })
        })
        .collect();
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.expect("sender task"));
    }
    let elapsed = started.elapsed();
    drop(done);
    (elapsed, syncs.load(Ordering::Relaxed) - before)
}

/// QUE-2 with group commit across connections: while one sync runs, the stanzas of other connections gather and
/// share the next one, so 40 concurrent messages need far fewer than 40 syncs; every one is acknowledged, and the
/// receiver gets them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_share_syncs() {
    within(Duration::from_secs(30), async {
        let tmp = tempfile::tempdir().unwrap();
        // A slow disk makes the batching visible whatever the machine's fsync costs.
        let (server, syncs) = durable_server(tmp.path(), Duration::from_millis(20)).await;
        let senders: usize = 40;
        let mut clients = Vec::new();
        for i in 0..senders {
            clients.push(connect(&server.tcp, &token(&format!("sender{i}@example.com"), "phone")).await);
        }
        let before = syncs.load(Ordering::Relaxed);
        for (i, client) in clients.iter().enumerate() {
            client
                .send(chat_text("bob@example.com", &format!("m{i}")))
                .await
                .unwrap();
        }
        for (i, client) in clients.iter_mut().enumerate() {
            let local = format!("m{i}");
            client
                .expect(
                    |p| matches!(p, Payload::VersionUpdate(v) if v.message_id_local == local),
                    Duration::from_secs(10),
                )
                .await
                .expect("acknowledged");
        }
        let used = syncs.load(Ordering::Relaxed) - before;
        assert!(
            used >= 1 && used <= senders as u64 / 4,
            "{used} syncs for {senders} messages"
        );
        let mut bob = connect(&server.tcp, &token("bob@example.com", "phone")).await;
        let mut got = std::collections::BTreeSet::new();
        while got.len() < senders {
            match bob
                .expect(|p| matches!(p, Payload::ChatMessage(_)), Duration::from_secs(5))
                .await
            {
                Ok(Payload::ChatMessage(c)) => {
                    got.insert(c.message_id_local);
                }
                other => panic!("bob got {} of {senders}: {other:?}", got.len()),
            }
        }
        server.handle.shutdown().await;
    })
    .await;
}

/// Issue 4's figure: acknowledged chat messages per second over loopback with the durable store on this machine's
/// disk, 1 sender vs 50 concurrent senders (BENCHMARKS.md). Run with
/// `cargo test --release --test loopback -- --ignored --nocapture durable_chat_throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: prints figures"]
async fn durable_chat_throughput() {
    let dir = std::env::var_os("BIMIP_BENCH_DIR").map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let mut rates = Vec::new();
    for (senders, per_sender) in [(1, 400), (50, 40)] {
        let tmp = tempfile::tempdir_in(&dir).unwrap();
        let (server, syncs) = durable_server(tmp.path(), Duration::ZERO).await;
        let (elapsed, used) = send_concurrently(&server, &syncs, senders, per_sender).await;
        let messages = (senders * per_sender) as f64;
        let rate = messages / elapsed.as_secs_f64();
        println!(
            "{senders:>2} sender(s): {messages} acknowledged messages in {elapsed:.2?}: {rate:.0} msg/s, {used} syncs ({:.1} messages per sync)",
            messages / used.max(1) as f64
        );
        rates.push(rate);
        server.handle.shutdown().await;
    }
    println!("50 senders / 1 sender: {:.1}x", rates[1] / rates[0]);
}

/// SPEC TRN-18 (RFC 6455 4.2.1): a request that is not a WebSocket upgrade is answered HTTP 400 with the reason,
/// not with silence; the listener goes on serving.
#[tokio::test]
async fn a_request_that_is_not_an_upgrade_gets_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(Duration::from_secs(10), async {
        let server = server(Config::default()).await;
        let addr = server.handle.ws_addr().expect("a WebSocket address");
        for request in [
            "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
            "POST /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        ] {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connecting");
            stream.write_all(request.as_bytes()).await.expect("writing");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.expect("reading to the close");
            assert!(answer.starts_with("HTTP/1.1 400 "), "{request:?} -> {answer:?}");
            assert!(answer.contains("not a WebSocket upgrade request"), "{answer:?}");
        }
        // The listener still upgrades a real client.
        let mut client = connect(&server.ws, &token("alice@example.com", "phone")).await;
        client.ping("after").await.expect("a pong");
    })
    .await;
}
