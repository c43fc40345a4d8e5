//! Token control and logout (SPEC §8, §9): revoking by token, device or all,
//! refreshing, logging out, and what each sends.

use super::auth::claims;
use super::transport::const_format;
use super::{Args, CONN, StepDef};
use crate::conformance::world::{CaseWorld, fail, shown};
use crate::proto::message_scheme::Payload;
use crate::proto::{Identity, Logout, TokenRefreshRequest, TokenRevokeRequest};

pub fn steps() -> Vec<StepDef> {
    vec![
        StepDef {
            pattern: const_format(&[
                CONN,
                r" revokes (all its sessions|the session of its ([\w-]+)|the token of (\w+)'s ([\w-]+))",
            ]),
            run: revokes,
        },
        StepDef {
            pattern: const_format(&[
                CONN,
                r" receives a revoke response(?: for its ([\w-]+))? ending (\d+) sessions?",
            ]),
            run: revoke_response,
        },
        StepDef {
            pattern: const_format(&[CONN, r" refreshes its token"]),
            run: |w, a| {
                let key = w.resolve(&a.conn(1, 2));
                let now = w.now_ms();
                w.send(
                    &key,
                    Payload::TokenRefreshRequest(TokenRefreshRequest {
                        to: None,
                        timestamp: now,
                    }),
                );
            },
        },
        StepDef {
            pattern: const_format(&[CONN, r" receives a refreshed token"]),
            run: refreshed,
        },
        StepDef {
            pattern: const_format(&[
                r"that error on ",
                CONN,
                r" came when its (token|refreshed token) expired",
            ]),
            run: error_at_expiry,
        },
        StepDef {
            pattern: const_format(&[r"the first token of ", CONN, r" has expired"]),
            run: first_token_expired,
        },
        StepDef {
            pattern: const_format(&[CONN, r" logs out"]),
            run: |w, a| {
                let key = w.resolve(&a.conn(1, 2));
                let now = w.now_ms();
                w.send(
                    &key,
                    Payload::Logout(Logout {
                        r#type: 1,
                        timestamp: now,
                        ..Logout::default()
                    }),
                );
            },
        },
        StepDef {
            pattern: const_format(&[CONN, r" receives a logout confirmation"]),
            run: logout_confirmation,
        },
    ]
}

fn revokes(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let now = w.now_ms();
    let mut request = TokenRevokeRequest {
        r#type: 1,
        timestamp: now,
        ..TokenRevokeRequest::default()
    };
    if let Some(device) = a.opt(4) {
        request.to = Some(Identity {
            eid: String::new(),
            connection_resource_id: device.to_string(),
        });
    } else if let Some(user) = a.opt(5) {
        let target = w.resolve(&format!("{user}/{}", a.s(6)));
        request.token = w
            .memory
            .tokens
            .get(&target)
            .cloned()
            .unwrap_or_else(|| fail(format!("a token of {target} earlier in the case"), "none"));
    }
    w.send(&key, Payload::TokenRevokeRequest(request));
}

/// TOK-6: the response's fields.
fn revoke_response(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let timeout = w.timeout();
    let payload = w.expect(&key, "a TokenRevokeResponse", timeout, |p| {
        matches!(p, Payload::TokenRevokeResponse(_))
    });
    let Payload::TokenRevokeResponse(r) = payload else {
        return;
    };
    let user = w.conn(&key).user.clone();
    let want_to = Identity {
        eid: w.eid(&user),
        connection_resource_id: a.opt(3).unwrap_or_default().to_string(),
    };
    let ended = i32::try_from(a.n(4)).unwrap_or(-1);
    let opened = w.conn(&key).opened_ms;
    let mut problems = Vec::new();
    if (r.r#type, r.status) != (2, 1) {
        problems.push(format!("type {} status {} (want 2, 1)", r.r#type, r.status));
    }
    if r.to.as_ref() != Some(&want_to) {
        problems.push(format!("to {:?} (want {want_to:?})", r.to));
    }
    if r.sessions_ended != ended {
        problems.push(format!("sessions_ended {} (want {ended})", r.sessions_ended));
    }
    if let Some(why) = w.stamp_problem(r.timestamp, opened) {
        problems.push(format!("timestamp {} (want the server's ms): {why}", r.timestamp));
    }
    if !problems.is_empty() {
        fail("a TokenRevokeResponse as TOK-6 describes", problems.join("; "));
    }
}

/// TOK-8: the refreshed token and its claims.
fn refreshed(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let timeout = w.timeout();
    let payload = w.expect(&key, "a TokenRefreshResponse", timeout, |p| {
        matches!(p, Payload::TokenRefreshResponse(_))
    });
    let Payload::TokenRefreshResponse(r) = payload else {
        return;
    };
    let conn = w.conn(&key).clone();
    let identity = w.identity(&conn.user, &conn.device);
    let old = conn.session.map(|s| claims(&s.token)).unwrap_or_default();
    let new = claims(&r.token);
    let int = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_i64).unwrap_or(0);
    let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
    let tolerance = w.driver.info().clock_tolerance_ms;
    let now = w.now_ms();
    let mut problems = Vec::new();
    if r.status != 1 {
        problems.push(format!("status {} (want 1)", r.status));
    }
    if r.to.as_ref() != Some(&identity) {
        problems.push(format!("to {:?} (want the session identity)", r.to));
    }
    if let Some(why) = w.stamp_problem(r.timestamp, conn.opened_ms) {
        problems.push(format!("timestamp {} (want the server's ms): {why}", r.timestamp));
    }
    if text(&new, "eid") != identity.eid || text(&new, "device_id") != identity.connection_resource_id {
        problems.push(format!("claims {new} (want the same eid and device_id)"));
    }
    if text(&new, "jti").is_empty() || text(&new, "jti") == text(&old, "jti") {
        problems.push("no new jti".to_string());
    }
    if (int(&new, "iat") * 1000 - now).abs() > tolerance.max(1000) {
        problems.push(format!("iat {} (want now)", int(&new, "iat")));
    }
    if int(&new, "exp") - int(&new, "iat") != int(&old, "exp") - int(&old, "iat") {
        problems.push("a lifetime other than the old token's".to_string());
    }
    if r.expires_at != int(&new, "exp") * 1000 {
        problems.push(format!("expires_at {} (want the new exp x 1000)", r.expires_at));
    }
    if !problems.is_empty() {
        fail("a TokenRefreshResponse as TOK-8 describes", problems.join("; "));
    }
    w.memory.tokens.insert(format!("{key} refreshed"), r.token);
}

/// OUT-1: the Logout RESPONSE.
fn logout_confirmation(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let timeout = w.timeout();
    let payload = w.expect(&key, "a Logout RESPONSE", timeout, |p| matches!(p, Payload::Logout(_)));
    let Payload::Logout(l) = payload else {
        return;
    };
    let conn = w.conn(&key).clone();
    let identity = w.identity(&conn.user, &conn.device);
    let stamp = w.stamp_problem(l.timestamp, conn.opened_ms);
    if (l.r#type, l.status) != (2, 3) || l.entity.as_ref() != Some(&identity) || stamp.is_some() {
        fail(
            format!("Logout{{type: 2, status: 3, entity: {identity:?}, timestamp: server ms}} (OUT-1)"),
            shown(Payload::Logout(l.clone())),
        );
    }
}

/// The exp of a connection's token (or of its refreshed token), in ms.
fn expiry_ms(w: &CaseWorld, key: &str, refreshed: bool) -> i64 {
    let token = if refreshed {
        w.memory.tokens.get(&format!("{key} refreshed")).cloned()
    } else {
        w.conn(key).session.as_ref().map(|s| s.token.clone())
    }
    .unwrap_or_else(|| fail(format!("a token of {key} earlier in the case"), "none"));
    claims(&token)
        .get("exp")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0)
        * 1000
}

/// AUTH-13, TOK-9: the expiry error comes at exp, or up to the target's
/// leeway after it (`--leeway`; 0 on the reference server; SPEC AUTH-6 allows
/// up to 60 s).
fn error_at_expiry(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let exp = expiry_ms(w, &key, a.s(3) == "refreshed token");
    let at = w
        .memory
        .errors
        .get(&key)
        .map(|e| e.timestamp)
        .unwrap_or_else(|| fail(format!("an ErrorMessage on {key} earlier"), "none"));
    let info = w.driver.info();
    let leeway = i64::try_from(info.leeway.as_millis()).unwrap_or(60_000);
    if at < exp || at > exp + leeway + info.timer_tolerance_ms {
        fail(
            format!(
                "the ErrorMessage at the token's exp {exp}, or at most the target's leeway of {leeway} ms later \
                 (AUTH-6, AUTH-13; --leeway)"
            ),
            format!("at {at} ({} ms after exp)", at - exp),
        );
    }
}

/// Waits until the session's first token has expired (plus a margin).
fn first_token_expired(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let exp = expiry_ms(w, &key, false);
    let leeway = i64::try_from(w.driver.info().leeway.as_millis()).unwrap_or(60_000);
    let wait = exp + leeway + 300 - w.now_ms();
    if let Ok(ms) = u64::try_from(wait) {
        w.driver.wait(std::time::Duration::from_millis(ms));
    }
}
