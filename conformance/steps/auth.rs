//! Authentication (SPEC §3): connecting with tokens of every kind and in
//! every location, refusals on each transport, and the Authenticate RESPONSE.

use base64::Engine;

use super::transport::const_format;
use super::{Args, CONN, StepDef};
use crate::client::TokenPlacement;
use crate::conformance::driver::{ClaimEdit, ConnectOutcome, ConnectSpec, TokenKind, TransportKind, alter_signature};
use crate::conformance::world::{CaseWorld, driver_failed, fail, shown, skip};
use crate::proto::message_scheme::Payload;

pub fn steps() -> Vec<StepDef> {
    vec![
        StepDef {
            pattern: const_format(&[
                CONN,
                r" connects(?: again)?(?: over (websocket|tcp))? with (.+?)(?: in the (authorization header|token header|bearer token header|lower-case bearer header|query))?(?: and (.+?) in the query)?",
            ]),
            run: connects_with,
        },
        StepDef {
            pattern: const_format(&[CONN, r" gets a session"]),
            run: gets_session,
        },
        StepDef {
            pattern: const_format(&[CONN, r" is refused with (\d+) (\w+)"]),
            run: is_refused,
        },
        StepDef {
            pattern: const_format(&[CONN, r" received an Authenticate response"]),
            run: authenticate_response,
        },
        StepDef {
            // Optional on WebSocket (TRN-16), due on TCP (TRN-15); correct whenever sent (AUTH-12).
            pattern: const_format(&[CONN, r"'s Authenticate response, if it got one, is correct"]),
            run: |w, a| {
                let key = w.resolve(&a.conn(1, 2));
                w.await_first_stanza(&key);
                let conn = w.conn(&key);
                let sent = conn.session.as_ref().is_some_and(|s| s.response.is_some());
                if sent || conn.transport == TransportKind::Tcp {
                    authenticate_response(w, a);
                }
            },
        },
        StepDef {
            pattern: const_format(&[CONN, r" received no Authenticate response"]),
            run: |w, a| {
                let key = w.resolve(&a.conn(1, 2));
                w.await_first_stanza(&key);
                if w.conn(&key).session.as_ref().is_some_and(|s| s.response.is_some()) {
                    fail("no Authenticate RESPONSE", "one");
                }
            },
        },
    ]
}

/// The token a phrase names, for (user, device) of connection `written`.
fn token_for(w: &mut CaseWorld, written: &str, user: &str, device: &str, phrase: &str) -> TokenKind {
    let eid = w.eid(user);
    let remembered = |w: &CaseWorld, label: &str| {
        w.memory
            .tokens
            .get(label)
            .cloned()
            .unwrap_or_else(|| fail(format!("a token {label:?} earlier in the case"), "none"))
    };
    let claim = phrase
        .strip_prefix("a token without the \"")
        .and_then(|rest| rest.strip_suffix("\" claim"));
    if let Some(claim) = claim {
        return TokenKind::MissingClaim(claim.to_string());
    }
    // AUTH-8's order: "an expired token without the "eid" claim".
    if let Some(claim) = phrase
        .strip_prefix("an expired token without the \"")
        .and_then(|rest| rest.strip_suffix("\" claim"))
    {
        return TokenKind::Edited {
            expired: true,
            claims: vec![(claim.to_string(), ClaimEdit::Remove)],
        };
    }
    // AUTH-5: "a token whose "exp" claim is "tomorrow"" (any JSON), or "... is an hour from now".
    if let Some((claim, value)) = phrase
        .strip_prefix("a token whose \"")
        .and_then(|rest| rest.split_once("\" claim is "))
    {
        let edit = match value {
            "an hour from now" => ClaimEdit::SecondsFromNow(3600),
            json => ClaimEdit::Set(
                serde_json::from_str(json).unwrap_or_else(|e| fail("a claim value in JSON", format!("{json}: {e}"))),
            ),
        };
        return TokenKind::Edited {
            expired: false,
            claims: vec![(claim.to_string(), edit)],
        };
    }
    if let Some(other) = phrase.strip_suffix("'s token") {
        return TokenKind::Given(remembered(w, &w.resolve(&format!("{other}/{device}"))));
    }
    match phrase {
        "a valid token" => TokenKind::Valid,
        "an expired token" => TokenKind::Expired,
        "a not-yet-valid token" => TokenKind::NotYetValid,
        "a token with a bad signature" => TokenKind::BadSignature,
        "an unsigned token" => TokenKind::AlgNone,
        "a malformed token" => TokenKind::Malformed,
        "no token" => TokenKind::Missing,
        "an expired token with a bad signature" => {
            let expired = w
                .driver
                .token(&eid, device, &TokenKind::Expired)
                .unwrap_or_else(|reason| skip(reason.0));
            TokenKind::Given(alter_signature(&expired))
        }
        "its previous token" => TokenKind::Given(remembered(w, &w.resolve(written))),
        "its refreshed token" => TokenKind::Given(remembered(w, &format!("{} refreshed", w.resolve(written)))),
        other => fail("a token phrase the suite knows", other),
    }
}

fn connects_with(w: &mut CaseWorld, a: &Args) {
    let (user, device) = (a.s(1).to_string(), a.s(2).to_string());
    if device.starts_with("previous ") {
        fail("a device name, not a previous connection", &device);
    }
    let written = a.conn(1, 2);
    // A step that names no transport connects over the case's own (the pass's, `world::set_pass`).
    let transport = match a.opt(3) {
        Some("tcp") => TransportKind::Tcp,
        Some(_) => TransportKind::Ws,
        None => w.transport,
    };
    let token = token_for(w, &written, &user, &device, a.s(4));
    let mut spec = ConnectSpec::new(&w.eid(&user), &device, transport);
    spec.token = token;
    spec.placement = match a.opt(5) {
        Some("token header") => TokenPlacement::TokenHeader,
        Some("bearer token header") => TokenPlacement::TokenHeaderBearer,
        Some("lower-case bearer header") => TokenPlacement::AuthorizationLowercase,
        Some("query") => TokenPlacement::Query,
        _ => TokenPlacement::AuthorizationHeader,
    };
    if let Some(second) = a.opt(6) {
        let kind = token_for(w, &written, &user, &device, second);
        let token = w
            .driver
            .token(&spec.eid, &device, &kind)
            .unwrap_or_else(|reason| skip(reason.0));
        spec.extra_query = Some(format!("token={token}"));
    }
    let key = w.new_key(&user, &device);
    w.settle();
    let outcome = w.driver.connect(&key, &spec).unwrap_or_else(|e| driver_failed(e));
    w.record_connect(&key, &user, &device, transport, outcome);
}

fn outcome(w: &CaseWorld, key: &str) -> ConnectOutcome {
    w.conn(key)
        .outcome
        .clone()
        .unwrap_or_else(|| fail(format!("a connection attempt of {key}"), "none"))
}

fn gets_session(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    match outcome(w, &key) {
        ConnectOutcome::Session(s) => {
            if w.conn(&key).transport == TransportKind::Tcp && s.response.is_none() {
                fail("the Authenticate RESPONSE first on TCP (TRN-15)", "another stanza");
            }
        }
        other => fail(format!("a session for {key}"), other.to_string()),
    }
}

/// AUTH-10 on WebSocket, AUTH-11 (and SES-3, TRN-11) on TCP.
fn is_refused(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let (code, kind) = (u16::try_from(a.n(3)).unwrap_or(0), a.s(4).to_string());
    let refusal = match outcome(w, &key) {
        ConnectOutcome::Refused(r) => r,
        other => fail(format!("{key} refused with {code} {kind}"), other.to_string()),
    };
    match w.conn(&key).transport {
        TransportKind::Ws => {
            let Some(http) = refusal.http else {
                fail("an HTTP answer instead of the upgrade (AUTH-10)", refusal.to_string());
            };
            if http.status != code || http.body != kind {
                fail(
                    format!("HTTP {code} with the body {kind:?}"),
                    format!("HTTP {} with the body {:?}", http.status, http.body),
                );
            }
            let content_type = http.content_type.unwrap_or_default();
            if !content_type.starts_with("text/plain") {
                fail("Content-Type text/plain", content_type);
            }
            if code == 401 {
                let challenge = http.www_authenticate.unwrap_or_default();
                if challenge != r#"Bearer error="invalid_token""# {
                    fail(r#"WWW-Authenticate: Bearer error="invalid_token" (AUTH-10)"#, challenge);
                }
            }
        }
        TransportKind::Tcp => {
            let Some(error) = refusal.error else {
                fail(format!("ErrorMessage {code} {kind}"), refusal.to_string());
            };
            if error.code != i32::from(code) || error.message != kind {
                fail(
                    format!("ErrorMessage {code} {kind}"),
                    format!(
                        "ErrorMessage {} {}: {}",
                        error.code,
                        error.message,
                        shown(Payload::ErrorMessage(error.clone()))
                    ),
                );
            }
            if error.route != "27" {
                fail(
                    "ErrorMessage.route \"27\" for a refused Authenticate (AUTH-11)",
                    format!("{:?}", error.route),
                );
            }
            if !refusal.closed {
                fail(
                    "the server to close the connection after the refusal (AUTH-11)",
                    "still open",
                );
            }
            w.check_error(&key, &error);
        }
    }
}

/// The claims of a JWT, unverified.
pub fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// TRN-15, TRN-16, AUTH-12: every field of the RESPONSE.
fn authenticate_response(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    w.await_first_stanza(&key);
    let conn = w.conn(&key).clone();
    let Some(session) = conn.session else {
        fail(format!("a session for {key}"), format!("{:?}", conn.outcome));
    };
    let Some(r) = session.response else {
        fail("the Authenticate RESPONSE as the first stanza (TRN-15, TRN-16)", "none");
    };
    let identity = w.identity(&conn.user, &conn.device);
    let exp = claims(&session.token)
        .get("exp")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0);
    let stamp = w.stamp_problem(r.timestamp, conn.opened_ms);
    let checks: [(&str, bool, String); 7] = [
        ("type 2", r.r#type == 2, r.r#type.to_string()),
        ("status 1", r.status == 1, r.status.to_string()),
        (
            "identity = the token's eid and device_id (AUTH-12)",
            r.identity.as_ref() == Some(&identity),
            format!("{:?}", r.identity),
        ),
        (
            "timestamp = server ms, between the connect and now",
            stamp.is_none(),
            format!("{}: {}", r.timestamp, stamp.clone().unwrap_or_default()),
        ),
        (
            "ping_interval_ms > 0",
            r.ping_interval_ms > 0,
            r.ping_interval_ms.to_string(),
        ),
        (
            "max_stanza_bytes >= 65536 (TRN-1)",
            r.max_stanza_bytes >= 65_536,
            r.max_stanza_bytes.to_string(),
        ),
        (
            "expires_at = the token's exp x 1000 (AUTH-12)",
            r.expires_at == exp * 1000,
            format!("{} (exp {exp})", r.expires_at),
        ),
    ];
    for (what, ok, got) in checks {
        if !ok {
            fail(format!("Authenticate RESPONSE with {what}"), got);
        }
    }
}
