//! The engine driven directly: no sockets, simulated time. Each test names the
//! SPEC requirements it proves.

use jsonwebtoken::{DecodingKey, EncodingKey};

use super::auth::{Algorithm, Claims, Signer, Verifier};
use super::*;
use crate::codec::{self, ErrorKind};
use crate::proto::message_scheme::Payload;
use crate::proto::*;

const SECRET: &[u8] = b"engine-test-secret";
const T0: Millis = 1_761_831_141_000;

struct Harness {
    engine: Engine,
    signer: Signer,
    /// Engine output not yet read by a test, in engine order.
    pending: std::collections::VecDeque<Output>,
    now: Millis,
    next_conn: u64,
    next_jti: u64,
}

/// What one connection was sent: stanzas in order, then maybe a close.
#[derive(Debug, Default)]
struct Seen {
    stanzas: Vec<Payload>,
    close: Option<CloseReason>,
}

impl Seen {
    fn errors(&self) -> Vec<(i32, String)> {
        self.stanzas
            .iter()
            .filter_map(|p| match p {
                Payload::ErrorMessage(e) => Some((e.code, e.message.clone())),
                _ => None,
            })
            .collect()
    }
}

impl Harness {
    fn new(config: Config) -> Self {
        let verifier = Verifier::new(Algorithm::Hs256, DecodingKey::from_secret(SECRET));
        let signer = Signer::new(Algorithm::Hs256, EncodingKey::from_secret(SECRET));
        let engine_signer = Signer::new(Algorithm::Hs256, EncodingKey::from_secret(SECRET));
        let engine = Engine::new(
            config,
            verifier,
            Some(engine_signer),
            Box::new(MemoryRevocations::default()),
        );
        Harness {
            engine,
            signer,
            pending: Default::default(),
            now: T0,
            next_conn: 0,
            next_jti: 0,
        }
    }

    fn token_for(&mut self, eid: &str, device: &str, lifetime_s: i64) -> String {
        self.next_jti += 1;
        let iat = self.now / 1000;
        let claims = Claims {
            eid: eid.into(),
            device_id: device.into(),
            jti: format!("j{}", self.next_jti),
            iat,
            exp: iat + lifetime_s,
            nbf: None,
            iss: None,
            aud: None,
        };
        self.signer.mint(&claims).unwrap()
    }

    fn conn(&mut self) -> ConnId {
        self.next_conn += 1;
        ConnId(self.next_conn)
    }

    /// A WebSocket session for eid/device; its Authenticate RESPONSE is consumed.
    fn ws(&mut self, eid: &str, device: &str) -> ConnId {
        let token = self.token_for(eid, device, 3600);
        self.ws_with(&token).unwrap()
    }

    fn ws_with(&mut self, token: &str) -> Result<ConnId, ErrorKind> {
        let conn = self.conn();
        self.engine.open(conn, Transport::WebSocket, Some(token), self.now)?;
        let seen = self.drain(conn);
        assert!(
            matches!(seen.stanzas.first(), Some(Payload::Authenticate(_))),
            "{seen:?}"
        );
        Ok(conn)
    }

    fn send(&mut self, conn: ConnId, payload: Payload) {
        let bytes = codec::encode(&payload);
        self.engine.receive(conn, &bytes, self.now);
    }

    fn advance_to(&mut self, at: Millis) {
        self.now = at;
        self.engine.tick(at);
    }

    /// What `conn` was sent since it was last read; other connections'
    /// output stays pending for them.
    fn drain(&mut self, conn: ConnId) -> Seen {
        self.pending.extend(std::iter::from_fn(|| self.engine.poll_output()));
        let mut seen = Seen::default();
        let mut others = std::collections::VecDeque::new();
        for out in self.pending.drain(..) {
            match out {
                Output::Send { conn: c, stanza } if c == conn => {
                    seen.stanzas
                        .push(codec::decode(&stanza, usize::MAX).expect("the engine sends valid stanzas"));
                }
                Output::Close { conn: c, reason } if c == conn => seen.close = Some(reason),
                other => others.push_back(other),
            }
        }
        self.pending = others;
        seen
    }

    /// Everything pending, for every connection, in engine order.
    fn drain_all(&mut self) -> Vec<Output> {
        self.pending.extend(std::iter::from_fn(|| self.engine.poll_output()));
        self.pending.drain(..).collect()
    }
}

fn ping(id: &str, request_time: Millis) -> Payload {
    Payload::PingpongMessage(PingPong {
        r#type: 1,
        status: 1,
        request_time,
        id: id.into(),
        ..Default::default()
    })
}

fn pong(id: &str, request_time: Millis) -> Payload {
    Payload::PingpongMessage(PingPong {
        r#type: 2,
        status: 2,
        request_time,
        id: id.into(),
        ..Default::default()
    })
}

fn me(eid: &str, device: &str) -> Option<Identity> {
    Some(Identity {
        eid: eid.into(),
        connection_resource_id: device.into(),
    })
}

/// TRN-16, AUTH-12: the session starts with Authenticate RESPONSE naming the token's identity.
#[test]
fn session_starts_with_authenticate_response() {
    let mut h = Harness::new(Config::default());
    let token = h.token_for("alice@example.com", "phone", 600);
    let conn = h.conn();
    h.engine.open(conn, Transport::WebSocket, Some(&token), h.now).unwrap();
    let seen = h.drain(conn);
    let Some(Payload::Authenticate(a)) = seen.stanzas.first() else {
        panic!("{seen:?}")
    };
    assert_eq!((a.r#type, a.status), (2, 1));
    assert_eq!(a.identity, me("alice@example.com", "phone"));
    assert_eq!(a.ping_interval_ms, 30_000);
    assert_eq!(a.max_stanza_bytes, 65_536);
    assert_eq!(a.expires_at, (T0 / 1000 + 600) * 1000);
    assert_eq!(h.engine.stats().sessions_started, 1);
    assert_eq!(h.engine.stats().stanzas_out.get(&27), Some(&1));
}

/// AUTH-3..7, AUTH-10: a WebSocket upgrade learns the exact refusal kind.
#[test]
fn websocket_refusals_name_their_kind() {
    let mut h = Harness::new(Config::default());
    let conn = h.conn();
    assert_eq!(
        h.engine.open(conn, Transport::WebSocket, None, h.now),
        Err(ErrorKind::TokenMissing)
    );
    assert_eq!(
        h.engine.open(conn, Transport::WebSocket, Some("x.y"), h.now),
        Err(ErrorKind::TokenMalformed)
    );
    let expired = h.token_for("a@x.io", "d", -1);
    assert_eq!(
        h.engine.open(conn, Transport::WebSocket, Some(&expired), h.now),
        Err(ErrorKind::TokenExpired)
    );
    let other_key = Signer::new(Algorithm::Hs256, EncodingKey::from_secret(b"another secret"));
    let forged = other_key
        .mint(&Claims {
            eid: "a@x.io".into(),
            device_id: "d".into(),
            jti: "f".into(),
            iat: 0,
            exp: i64::MAX / 2000,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        h.engine.open(conn, Transport::WebSocket, Some(&forged), h.now),
        Err(ErrorKind::TokenSignature)
    );
    assert_eq!(h.engine.connection_count(), 0, "refused upgrades leave nothing behind");
}

/// TRN-11, AUTH-11: on TCP the first frame must be Authenticate; anything else is 401 and a close.
#[test]
fn tcp_first_frame_must_authenticate() {
    let mut h = Harness::new(Config::default());
    let conn = h.conn();
    h.engine.open(conn, Transport::Tcp, None, h.now).unwrap();
    h.send(conn, ping("p", 1));
    let seen = h.drain(conn);
    assert_eq!(seen.errors(), [(401, "token_missing".into())]);
    assert_eq!(seen.close, Some(CloseReason::Error(ErrorKind::TokenMissing)));

    let conn = h.conn();
    h.engine.open(conn, Transport::Tcp, None, h.now).unwrap();
    let token = h.token_for("bob@example.com", "laptop", 600);
    h.send(
        conn,
        Payload::Authenticate(Authenticate {
            token,
            r#type: 1,
            ..Default::default()
        }),
    );
    let seen = h.drain(conn);
    assert!(matches!(&seen.stanzas[..], [Payload::Authenticate(a)] if a.identity == me("bob@example.com", "laptop")));
    assert_eq!(seen.close, None);
}

/// TRN-12: no Authenticate within 10 s gives 408 auth_timeout, at 10 s and not before.
#[test]
fn tcp_auth_deadline() {
    let mut h = Harness::new(Config::default());
    let conn = h.conn();
    h.engine.open(conn, Transport::Tcp, None, h.now).unwrap();
    assert_eq!(h.engine.next_deadline(), Some(T0 + 10_000));
    h.advance_to(T0 + 9_999);
    assert!(h.drain(conn).stanzas.is_empty());
    h.advance_to(T0 + 10_000);
    let seen = h.drain(conn);
    assert_eq!(seen.errors(), [(408, "auth_timeout".into())]);
    assert_eq!(seen.close.map(CloseReason::ws_close_code), Some(4408));
}

/// TRN-13: a second Authenticate is 405 and the session lives on.
#[test]
fn authenticate_twice_is_not_allowed() {
    let mut h = Harness::new(Config::default());
    let conn = h.ws("a@x.io", "d");
    h.send(
        conn,
        Payload::Authenticate(Authenticate {
            token: "t".into(),
            r#type: 1,
            ..Default::default()
        }),
    );
    let seen = h.drain(conn);
    assert_eq!(seen.errors(), [(405, "not_allowed".into())]);
    assert_eq!(seen.close, None);
}

/// ENV-3..6, ENV-8, TRN-2: envelope faults get their error, the route as text, and the connection survives.
#[test]
fn envelope_faults_are_answered_and_survived() {
    let mut h = Harness::new(Config::default());
    let conn = h.ws("a@x.io", "d");
    let mismatch = encode_scheme(7, Some(ping("p", 1)));
    let cases: Vec<(Vec<u8>, i32, &str, &str)> = vec![
        (vec![0x08], 400, "malformed", ""),
        (vec![], 400, "missing_payload", "0"),
        (mismatch, 400, "route_mismatch", "7"),
        (encode_scheme(99, None), 501, "unknown_route", "99"),
        (
            codec::encode(&Payload::ChatMessage(ChatMessage::default())),
            405,
            "not_allowed",
            "13",
        ),
    ];
    for (bytes, code, kind, route) in cases {
        h.engine.receive(conn, &bytes, h.now);
        let seen = h.drain(conn);
        let [Payload::ErrorMessage(e)] = &seen.stanzas[..] else {
            panic!("{kind}: {seen:?}")
        };
        assert_eq!((e.code, e.message.as_str(), e.route.as_str()), (code, kind, route));
        assert_eq!(seen.close, None, "{kind} is not fatal");
    }
    h.send(conn, ping("still-here", 5));
    assert!(matches!(&h.drain(conn).stanzas[..], [Payload::PingpongMessage(p)] if p.id == "still-here"));
}

fn encode_scheme(route: i64, payload: Option<Payload>) -> Vec<u8> {
    codec::encode_message_scheme(&MessageScheme { route, payload })
}

/// ENV-7: the server fills an empty identity and refuses a spoofed one.
#[test]
fn spoofed_identity_is_refused() {
    let mut h = Harness::new(Config::default());
    let conn = h.ws("alice@example.com", "phone");
    for spoof in [me("mallory@example.com", ""), me("alice@example.com", "laptop")] {
        let spoofed = PingPong {
            to: spoof,
            r#type: 1,
            status: 1,
            ..Default::default()
        };
        h.send(conn, Payload::PingpongMessage(spoofed));
        assert_eq!(h.drain(conn).errors(), [(403, "identity_mismatch".into())]);
    }
    h.send(
        conn,
        Payload::PingpongMessage(PingPong {
            to: me("alice@example.com", ""),
            r#type: 1,
            status: 1,
            ..Default::default()
        }),
    );
    let seen = h.drain(conn);
    let [Payload::PingpongMessage(p)] = &seen.stanzas[..] else {
        panic!("{seen:?}")
    };
    assert_eq!(
        p.to,
        me("alice@example.com", "phone"),
        "the server completes the identity"
    );
}

/// PING-1: a client ping is answered at once, echoing id and request_time.
#[test]
fn client_ping_gets_pong() {
    let mut h = Harness::new(Config::default());
    let conn = h.ws("a@x.io", "d");
    h.now += 7;
    h.send(conn, ping("abc", T0));
    let seen = h.drain(conn);
    let [Payload::PingpongMessage(p)] = &seen.stanzas[..] else {
        panic!("{seen:?}")
    };
    assert_eq!((p.r#type, p.status, p.id.as_str(), p.request_time), (2, 2, "abc", T0));
    assert_eq!((p.response_time, p.rtt), (T0 + 7, 7));
}

/// PING-2, PING-4, PING-5: pings every 30 s; two unanswered ticks close the session at 90 s.
#[test]
fn missed_pongs_end_the_session_at_the_third_tick() {
    let mut h = Harness::new(Config::default());
    let conn = h.ws("a@x.io", "d");
    h.advance_to(T0 + 29_999);
    assert!(h.drain(conn).stanzas.is_empty());
    for tick in [30_000, 60_000] {
        h.advance_to(T0 + tick);
        let seen = h.drain(conn);
        let [Payload::PingpongMessage(p)] = &seen.stanzas[..] else {
            panic!("{seen:?}")
        };
        assert_eq!((p.r#type, p.status, p.request_time), (1, 1, T0 + tick));
        assert!(!p.id.is_empty());
        // Other traffic does not count as a pong.
        h.send(conn, ping("mine", 1));
        h.drain(conn);
    }
    h.advance_to(T0 + 90_000);
    let seen = h.drain(conn);
    assert_eq!(seen.errors(), [(408, "ping_timeout".into())]);
    assert_eq!(seen.close.map(CloseReason::ws_close_code), Some(4408));
}

/// PING-3, PING-4, PING-7: a matching pong (by id, or by request_time without id) keeps the session.
#[test]
fn answered_pings_keep_the_session() {
    let mut h = Harness::new(Config::default());
    let conn = h.ws("a@x.io", "d");
    for (i, tick) in (1..=6).map(|k| k * 30_000).enumerate() {
        h.advance_to(T0 + tick);
        let seen = h.drain(conn);
        assert_eq!(seen.close, None, "closed at tick {tick}");
        let [Payload::PingpongMessage(p)] = &seen.stanzas[..] else {
            panic!("{seen:?}")
        };
        h.send(conn, pong("no-such-ping", 0)); // PING-7: ignored, no answer
        assert!(h.drain(conn).stanzas.is_empty());
        let answer = if i % 2 == 0 {
            pong(&p.id, p.request_time)
        } else {
            pong("", p.request_time)
        };
        h.send(conn, answer);
        assert!(h.drain(conn).stanzas.is_empty(), "pongs are not answered");
    }
}

/// PING-6: bad type or status is 400.
#[test]
fn bad_pingpong_codes() {
    let mut h = Harness::new(Config::default());
    let conn = h.ws("a@x.io", "d");
    for (r#type, status) in [(3, 1), (0, 1), (1, 0), (1, 7)] {
        h.send(
            conn,
            Payload::PingpongMessage(PingPong {
                r#type,
                status,
                ..Default::default()
            }),
        );
        assert_eq!(
            h.drain(conn).errors(),
            [(400, "invalid_field".into())],
            "type {type} status {status}"
        );
    }
    // An id over 128 bytes is refused, and the ErrorMessage echoes only 128 bytes of it (ERR-3).
    let long = "é".repeat(100);
    h.send(conn, ping(&long, 1));
    let seen = h.drain(conn);
    let [Payload::ErrorMessage(e)] = &seen.stanzas[..] else {
        panic!("{seen:?}")
    };
    assert_eq!((e.code, e.ref_id.len()), (400, 128));
    // ENV-13: a spoofed identity is reported before a bad status.
    let both = PingPong {
        to: me("mallory@x.io", ""),
        r#type: 1,
        status: 9,
        ..Default::default()
    };
    h.send(conn, Payload::PingpongMessage(both));
    assert_eq!(h.drain(conn).errors(), [(403, "identity_mismatch".into())]);
}

/// SES-5: a burst beyond 200 stanzas is refused with 429 and the stanza dropped.
#[test]
fn stanza_rate_limit() {
    let mut h = Harness::new(Config::default());
    let conn = h.ws("a@x.io", "d");
    for i in 0..200 {
        h.send(conn, ping(&i.to_string(), 1));
    }
    let seen = h.drain(conn);
    assert_eq!(seen.stanzas.len(), 200);
    assert!(seen.errors().is_empty());
    h.send(conn, ping("201", 1));
    assert_eq!(h.drain(conn).errors(), [(429, "rate_limited".into())]);
    h.now += 10; // 100/s: one token per 10 ms
    h.send(conn, ping("later", 1));
    assert!(h.drain(conn).errors().is_empty());
}

/// SES-6: 50 consecutive rejected stanzas end the connection with 4429; one good stanza resets the count.
#[test]
fn consecutive_errors_close_the_connection() {
    let mut h = Harness::new(Config::default());
    let conn = h.ws("a@x.io", "d");
    for _ in 0..49 {
        h.engine.receive(conn, &[0x08], h.now);
    }
    h.send(conn, ping("reset", 1));
    for _ in 0..49 {
        h.engine.receive(conn, &[0x08], h.now);
    }
    assert_eq!(h.drain(conn).close, None);
    h.engine.receive(conn, &[0x08], h.now);
    let seen = h.drain(conn);
    let last: Vec<_> = seen.errors().into_iter().rev().take(2).collect();
    assert_eq!(
        last,
        [(429, "rate_limited".to_string()), (400, "malformed".to_string())]
    );
    assert_eq!(seen.close.map(CloseReason::ws_close_code), Some(4429));
}

/// SES-1: the same device connecting again replaces the old session (409, 4409).
#[test]
fn a_device_reconnecting_replaces_its_session() {
    let mut h = Harness::new(Config::default());
    let old = h.ws("a@x.io", "phone");
    let token = h.token_for("a@x.io", "phone", 600);
    let new = h.conn();
    h.engine.open(new, Transport::WebSocket, Some(&token), h.now).unwrap();
    let outputs = h.drain_all();
    let to_old: Vec<_> = outputs
        .iter()
        .filter(|o| matches!(o, Output::Send { conn, .. } | Output::Close { conn, .. } if *conn == old))
        .collect();
    assert!(matches!(
        to_old.last(),
        Some(Output::Close {
            reason: CloseReason::Error(ErrorKind::SessionReplaced),
            ..
        })
    ));
    assert_eq!(h.engine.registry().conn_of("a@x.io", "phone"), Some(new));
    h.engine.closed(old, h.now); // the adapter reporting the old socket gone changes nothing
    assert_eq!(h.engine.registry().conn_of("a@x.io", "phone"), Some(new));
}

/// SES-3: an EID may hold at most `max_sessions_per_eid` devices.
#[test]
fn too_many_devices() {
    let mut h = Harness::new(Config {
        max_sessions_per_eid: 2,
        ..Config::default()
    });
    h.ws("a@x.io", "1");
    h.ws("a@x.io", "2");
    let token = h.token_for("a@x.io", "3", 600);
    assert_eq!(h.ws_with(&token), Err(ErrorKind::TooManySessions));
    let again = h.token_for("a@x.io", "2", 600);
    assert!(h.ws_with(&again).is_ok(), "replacing a device does not count");
}

/// AUTH-13: at the token's exp the session is closed with 401 token_expired, 4401.
#[test]
fn token_expiry_ends_the_session() {
    let mut h = Harness::new(Config {
        ping_interval_ms: 3_600_000,
        ..Config::default()
    });
    let token = h.token_for("a@x.io", "d", 45);
    let conn = h.ws_with(&token).unwrap();
    let exp = (T0 / 1000 + 45) * 1000;
    h.advance_to(exp - 1);
    assert_eq!(h.drain(conn).close, None);
    h.advance_to(exp);
    let seen = h.drain(conn);
    assert_eq!(seen.errors(), [(401, "token_expired".into())]);
    assert_eq!(seen.close.map(CloseReason::ws_close_code), Some(4401));
}

fn revoke(token: &str, device: &str) -> Payload {
    Payload::TokenRevokeRequest(TokenRevokeRequest {
        to: Some(Identity {
            eid: String::new(),
            connection_resource_id: device.into(),
        }),
        token: token.into(),
        r#type: 1,
        timestamp: T0,
        rtt: 0,
    })
}

/// TOK-4, TOK-6, TOK-7, AUTH-7: revoking a device ends its session at once and its token is refused afterwards.
#[test]
fn revoke_a_device() {
    let mut h = Harness::new(Config::default());
    let phone = h.ws("a@x.io", "phone");
    let laptop_token = h.token_for("a@x.io", "laptop", 600);
    let laptop = h.ws_with(&laptop_token).unwrap();
    h.send(phone, revoke("", "laptop"));
    let outputs = h.drain_all();
    let response_at = outputs
        .iter()
        .position(|o| matches!(o, Output::Send { conn, .. } if *conn == phone))
        .unwrap();
    let close_at = outputs
        .iter()
        .position(|o| matches!(o, Output::Close { conn, .. } if *conn == laptop))
        .unwrap();
    assert!(response_at < close_at, "TOK-6: the caller hears first");
    let Output::Send { stanza, .. } = &outputs[response_at] else {
        unreachable!()
    };
    let Ok(Payload::TokenRevokeResponse(r)) = codec::decode(stanza, usize::MAX) else {
        panic!()
    };
    assert_eq!((r.status, r.r#type, r.sessions_ended), (1, 2, 1));
    assert!(matches!(
        outputs[close_at],
        Output::Close {
            reason: CloseReason::Error(ErrorKind::TokenRevoked),
            ..
        }
    ));
    assert_eq!(h.ws_with(&laptop_token), Err(ErrorKind::TokenRevoked));
    assert!(
        h.engine.registry().conn_of("a@x.io", "phone").is_some(),
        "the caller stays"
    );
}

/// OUT-4: with `revoke_notice`, a revoked session hears Logout DISCONNECT before 401 token_revoked; the caller
/// revoking its own session (revoke all) does not, and without the option nobody does.
#[test]
fn revoke_notice_comes_before_token_revoked() {
    for notice in [false, true] {
        let mut h = Harness::new(Config {
            revoke_notice: notice,
            ..Config::default()
        });
        let phone = h.ws("a@x.io", "phone");
        let laptop = h.ws("a@x.io", "laptop");
        h.drain(phone);
        h.drain(laptop);
        h.send(phone, revoke("", ""));
        let (phone_seen, laptop_seen) = (h.drain(phone), h.drain(laptop));
        let logouts = |seen: &Seen| {
            seen.stanzas
                .iter()
                .filter_map(|p| match p {
                    Payload::Logout(l) => Some((l.r#type, l.status, l.entity.clone())),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(logouts(&phone_seen), vec![], "the caller ended its own session");
        assert_eq!(phone_seen.errors(), vec![(401, "token_revoked".to_string())]);
        if notice {
            assert_eq!(logouts(&laptop_seen), vec![(2, 1, me("a@x.io", "laptop"))]);
            assert!(matches!(
                laptop_seen.stanzas[..],
                [Payload::Logout(_), Payload::ErrorMessage(_)]
            ));
        } else {
            assert_eq!(logouts(&laptop_seen), vec![]);
        }
        assert_eq!(laptop_seen.errors(), vec![(401, "token_revoked".to_string())]);
        assert_eq!(laptop_seen.close, Some(CloseReason::Error(ErrorKind::TokenRevoked)));
    }
}

/// TOK-3, TOK-5: revoke by token value, and revoke every session of the eid (the caller's included).
#[test]
fn revoke_by_token_and_all() {
    let mut h = Harness::new(Config::default());
    let caller = h.ws("a@x.io", "phone");
    let offline = h.token_for("a@x.io", "tablet", 600);
    h.send(caller, revoke(&offline, ""));
    let seen = h.drain(caller);
    assert!(matches!(&seen.stanzas[..], [Payload::TokenRevokeResponse(r)] if r.sessions_ended == 0 && r.status == 1));
    assert_eq!(h.ws_with(&offline), Err(ErrorKind::TokenRevoked));

    h.ws("a@x.io", "laptop");
    h.send(caller, revoke("", ""));
    let outputs = h.drain_all();
    let closes = outputs.iter().filter(|o| matches!(o, Output::Close { .. })).count();
    assert_eq!(closes, 2);
    assert_eq!(h.engine.registry().device_count("a@x.io"), 0);
}

/// TOK-1, TOK-2, TOK-4: another eid's token is 403; garbage is 400; a device with no session is 404.
#[test]
fn revoke_refusals() {
    let mut h = Harness::new(Config::default());
    let caller = h.ws("a@x.io", "phone");
    let bobs = h.token_for("bob@x.io", "phone", 600);
    h.send(caller, revoke(&bobs, ""));
    assert_eq!(h.drain(caller).errors(), [(403, "forbidden".into())]);
    h.send(caller, revoke("not-a-token", ""));
    assert_eq!(h.drain(caller).errors(), [(400, "invalid_field".into())]);
    h.send(caller, revoke("", "nowhere"));
    assert_eq!(h.drain(caller).errors(), [(404, "not_found".into())]);
    let mut other = revoke("", "");
    if let Payload::TokenRevokeRequest(r) = &mut other {
        r.to = me("bob@x.io", "");
    }
    h.send(caller, other);
    assert_eq!(h.drain(caller).errors(), [(403, "forbidden".into())]);
    assert!(h.ws_with(&bobs).is_ok(), "nothing was revoked");
}

/// TOK-8, TOK-9: refresh gives a working token of the same lifetime; the old jti is revoked; expiry moves.
#[test]
fn refresh_rotates_the_token() {
    let mut h = Harness::new(Config {
        ping_interval_ms: 3_600_000,
        ..Config::default()
    });
    let old = h.token_for("a@x.io", "d", 100);
    let conn = h.ws_with(&old).unwrap();
    h.advance_to(T0 + 50_000);
    h.send(
        conn,
        Payload::TokenRefreshRequest(TokenRefreshRequest {
            to: None,
            timestamp: h.now,
        }),
    );
    let seen = h.drain(conn);
    let [Payload::TokenRefreshResponse(r)] = &seen.stanzas[..] else {
        panic!("{seen:?}")
    };
    assert_eq!(r.status, 1);
    assert_eq!(r.expires_at, (h.now / 1000 + 100) * 1000);
    assert_eq!(h.ws_with(&old), Err(ErrorKind::TokenRevoked));
    // The old expiry passes: the session lives on.
    h.advance_to((T0 / 1000 + 100) * 1000);
    assert_eq!(h.drain(conn).close, None);
    let fresh = r.token.clone();
    h.engine.closed(conn, h.now);
    assert!(h.ws_with(&fresh).is_ok());
}

/// TOK-10: without a signing key, refresh is 503.
#[test]
fn refresh_without_signing_key() {
    let verifier = Verifier::new(Algorithm::Hs256, DecodingKey::from_secret(SECRET));
    let mut h = Harness::new(Config::default());
    h.engine = Engine::new(
        Config::default(),
        verifier,
        None,
        Box::new(MemoryRevocations::default()),
    );
    let conn = h.ws("a@x.io", "d");
    h.send(conn, Payload::TokenRefreshRequest(TokenRefreshRequest::default()));
    assert_eq!(h.drain(conn).errors(), [(503, "unavailable".into())]);
}

/// OUT-1, OUT-2, OUT-3: logout confirms, closes normally, revokes that token only.
#[test]
fn logout() {
    let mut h = Harness::new(Config::default());
    let token = h.token_for("a@x.io", "phone", 600);
    let phone = h.ws_with(&token).unwrap();
    let laptop = h.ws("a@x.io", "laptop");
    h.send(
        phone,
        Payload::Logout(Logout {
            r#type: 1,
            timestamp: h.now,
            ..Default::default()
        }),
    );
    let seen = h.drain(phone);
    let [Payload::Logout(l)] = &seen.stanzas[..] else {
        panic!("{seen:?}")
    };
    assert_eq!((l.r#type, l.status), (2, 3));
    assert_eq!(l.entity, me("a@x.io", "phone"));
    assert_eq!(seen.close.map(CloseReason::ws_close_code), Some(1000));
    assert_eq!(h.ws_with(&token), Err(ErrorKind::TokenRevoked));
    assert_eq!(h.engine.registry().conn_of("a@x.io", "laptop"), Some(laptop));
}

/// ENV-8, CHAT-13: VersionUpdate RESPONSE from a client is accepted silently; REQUEST is 405.
#[test]
fn version_update_directions() {
    let mut h = Harness::new(Config::default());
    let conn = h.ws("a@x.io", "d");
    h.send(
        conn,
        Payload::VersionUpdate(VersionUpdate {
            r#type: 2,
            ..Default::default()
        }),
    );
    assert!(h.drain(conn).stanzas.is_empty());
    h.send(
        conn,
        Payload::VersionUpdate(VersionUpdate {
            r#type: 1,
            ..Default::default()
        }),
    );
    assert_eq!(h.drain(conn).errors(), [(405, "not_allowed".into())]);
}

/// Determinism: the same inputs give byte-identical outputs.
#[test]
fn replays_are_identical() {
    fn run() -> Vec<Output> {
        let mut h = Harness::new(Config::default());
        let a = h.ws("a@x.io", "1");
        let b = h.ws("a@x.io", "2");
        h.send(a, ping("x", 3));
        h.send(b, Payload::TokenRefreshRequest(TokenRefreshRequest::default()));
        h.advance_to(T0 + 95_000);
        h.send(a, revoke("", ""));
        h.drain_all()
    }
    let first = run();
    assert!(first.len() > 5);
    assert_eq!(first, run());
}
mod awareness;
mod chat;
mod shards;

/// PUSH-2, PUSH-3, PUSH-5: a push reaches every online device of its user, now or never.
#[test]
fn push_notifications() {
    let mut h = Harness::new(Config::default());
    let phone = h.ws("a@x.io", "phone");
    let laptop = h.ws("a@x.io", "laptop");
    let data: std::collections::BTreeMap<String, String> = [("k".to_string(), "v".to_string())].into();
    assert_eq!(h.engine.push("a@x.io", "billing", data.clone(), h.now), Ok(2));
    for (conn, device) in [(phone, "phone"), (laptop, "laptop")] {
        let seen = h.drain(conn);
        let [Payload::PushNotification(p)] = &seen.stanzas[..] else {
            panic!("{seen:?}")
        };
        assert_eq!((p.r#type.as_str(), p.timestamp, &p.data), ("billing", h.now, &data));
        assert_eq!(p.to, me("a@x.io", device));
        assert!(!p.id.is_empty());
    }
    assert_eq!(
        h.engine.push("b@x.io", "billing", data.clone(), h.now),
        Ok(0),
        "offline: nobody, and nothing kept"
    );
    h.ws("b@x.io", "phone");
    let empty_value: std::collections::BTreeMap<String, String> = [("k".to_string(), String::new())].into();
    assert_eq!(
        h.engine.push("a@x.io", "x", empty_value, h.now),
        Err(ErrorKind::InvalidField)
    );
    assert_eq!(h.engine.push("a@x.io", "", data, h.now), Err(ErrorKind::InvalidField));
}
