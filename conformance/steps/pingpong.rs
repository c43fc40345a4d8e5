//! PingPong (SPEC §7): client pings and their pongs, server pings, answering
//! them by id or by request time, and timing against the ping interval.

use std::time::Duration;

use super::envelope::{next_stanza, padded_stanza};
use super::transport::const_format;
use super::{Args, CONN, DURATION, StepDef, duration};
use crate::client::Event;
use crate::codec;
use crate::conformance::world::{CaseWorld, describe_event, fail};
use crate::proto::PingPong;
use crate::proto::message_scheme::Payload;

pub fn steps() -> Vec<StepDef> {
    vec![
        StepDef {
            pattern: const_format(&[CONN, r#" sends a ping with id "([^"]*)"(?: padded to (\d+) bytes)?"#]),
            run: sends_ping,
        },
        StepDef {
            pattern: const_format(&[CONN, r" sends (\d+) pings at once"]),
            run: sends_pings,
        },
        StepDef {
            pattern: const_format(&[CONN, r" sends a ping every ", DURATION, r" for ", DURATION]),
            run: pings_every,
        },
        StepDef {
            pattern: const_format(&[CONN, r#" receives a pong for "([^"]*)"(?: within "#, DURATION, ")?"]),
            run: receives_pong,
        },
        StepDef {
            pattern: const_format(&[r"the next stanza ", CONN, r#" receives is a pong for "([^"]*)""#]),
            run: next_is_pong,
        },
        StepDef {
            pattern: const_format(&[CONN, r" receives (?:a|another) server ping(?: within ", DURATION, ")?"]),
            run: receives_server_ping,
        },
        StepDef {
            pattern: const_format(&[CONN, r" answers the server ping by (its id|its request time only)"]),
            run: answers_server_ping,
        },
        StepDef {
            pattern: const_format(&[
                r"(?:that|the last) (server ping|error) (?:of|on) ",
                CONN,
                r" came (\d+(?:\.\d+)?) ping intervals? after the session started",
            ]),
            run: came_after,
        },
    ]
}

fn ping(w: &CaseWorld, id: &str) -> PingPong {
    PingPong {
        r#type: 1,
        status: 1,
        request_time: w.now_ms(),
        id: id.to_string(),
        ..PingPong::default()
    }
}

fn sends_ping(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let p = ping(w, a.s(3));
    w.memory.sent_pings.insert(p.id.clone(), p.clone());
    match a.opt(4) {
        None => w.send(&key, Payload::PingpongMessage(p)),
        Some(_) => {
            let size = usize::try_from(a.n(4)).unwrap_or(0);
            let inner = crate::codec::encode(&Payload::PingpongMessage(p));
            // The PingPong's own fields, without the envelope's 4 leading bytes.
            let fields = crate::codec::json::bytes_to_json("MessageScheme", &inner)
                .ok()
                .and_then(|v| v.get("pingpongMessage").cloned())
                .unwrap_or_default();
            let fields = crate::codec::json::json_to_bytes("PingPong", &fields).unwrap_or_default();
            w.send_raw(&key, padded_stanza(&fields, size));
        }
    }
}

fn sends_pings(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let burst = (1..=a.n(3))
        .map(|i| codec::encode(&Payload::PingpongMessage(ping(w, &format!("burst-{i}")))))
        .collect();
    w.send_burst(&key, burst);
}

fn pings_every(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let every = duration(w, a.s(3), a.s(4));
    let total = duration(w, a.s(5), a.s(6));
    let mut spent = Duration::ZERO;
    while spent + every <= total {
        w.driver.wait(every);
        spent += every;
        let id = format!("keepalive-{}", w.fresh());
        let p = ping(w, &id);
        w.send(&key, Payload::PingpongMessage(p));
    }
}

/// PING-1: every field of the pong.
fn check_pong(w: &mut CaseWorld, key: &str, id: &str, pong: &PingPong) {
    let conn = w.conn(key).clone();
    let identity = w.identity(&conn.user, &conn.device);
    let sent = w.memory.sent_pings.get(id).cloned();
    let mut problems = Vec::new();
    if (pong.r#type, pong.status) != (2, 2) {
        problems.push(format!("type {} status {} (want 2, 2)", pong.r#type, pong.status));
    }
    if pong.to.as_ref() != Some(&identity) {
        problems.push(format!("to {:?} (want the session identity)", pong.to));
    }
    if let Some(sent) = sent
        && pong.request_time != sent.request_time
    {
        problems.push(format!(
            "request_time {} (want the ping's {})",
            pong.request_time, sent.request_time
        ));
    }
    if let Some(why) = w.stamp_problem(pong.response_time, conn.opened_ms) {
        problems.push(format!(
            "response_time {} (want the server's ms): {why}",
            pong.response_time
        ));
    }
    if pong.rtt != pong.response_time - pong.request_time {
        problems.push(format!("rtt {} (want response_time - request_time)", pong.rtt));
    }
    if !problems.is_empty() {
        fail(format!("a pong for {id:?} as PING-1 describes"), problems.join("; "));
    }
    w.memory.pongs.insert(key.to_string(), pong.clone());
}

fn receives_pong(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let id = a.s(3).to_string();
    let within = match a.opt(4) {
        Some(n) => duration(w, n, a.s(5)),
        None => w.timeout(),
    };
    let payload = w.expect(
        &key,
        format!("a pong for {id:?}"),
        within,
        |p| matches!(p, Payload::PingpongMessage(p) if p.r#type == 2 && p.id == id),
    );
    if let Payload::PingpongMessage(pong) = payload {
        check_pong(w, &key, &id, &pong);
    }
}

fn next_is_pong(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let id = a.s(3).to_string();
    match next_stanza(w, &key) {
        Payload::PingpongMessage(pong) if pong.r#type == 2 && pong.id == id => check_pong(w, &key, &id, &pong),
        other => fail(
            format!("the next stanza on {key} to be the pong for {id:?}"),
            describe_event(&Event::Stanza(other)),
        ),
    }
}

/// PING-2: a server ping's fields; its id differs from the one before.
fn receives_server_ping(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let within = match a.opt(3) {
        Some(n) => duration(w, n, a.s(4)),
        None => w.ping_interval() + w.timeout(),
    };
    let payload = w.expect(
        &key,
        "a server ping",
        within,
        |p| matches!(p, Payload::PingpongMessage(p) if p.r#type == 1),
    );
    let Payload::PingpongMessage(ping) = payload else {
        return;
    };
    let conn = w.conn(&key).clone();
    let identity = w.identity(&conn.user, &conn.device);
    let mut problems = Vec::new();
    if ping.status != 1 {
        problems.push(format!("status {} (want 1)", ping.status));
    }
    if ping.to.as_ref() != Some(&identity) {
        problems.push(format!("to {:?} (want the session identity)", ping.to));
    }
    if let Some(why) = w.stamp_problem(ping.request_time, conn.opened_ms) {
        problems.push(format!(
            "request_time {} (want the server's ms): {why}",
            ping.request_time
        ));
    }
    if ping.id.is_empty() {
        problems.push("an empty id".to_string());
    }
    if let Some(before) = w.memory.server_pings.get(&key)
        && before.id == ping.id
    {
        problems.push(format!("the id {:?} of the ping before", ping.id));
    }
    if !problems.is_empty() {
        fail("a server ping as PING-2 describes", problems.join("; "));
    }
    w.memory.server_pings.insert(key, ping);
}

fn answers_server_ping(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let ping = w
        .memory
        .server_pings
        .get(&key)
        .cloned()
        .unwrap_or_else(|| fail(format!("a server ping on {key} earlier"), "none"));
    let by_id = a.s(3) == "its id";
    let now = w.now_ms();
    let pong = PingPong {
        to: None,
        r#type: 2,
        status: 2,
        request_time: ping.request_time,
        response_time: now,
        rtt: now - ping.request_time,
        id: if by_id { ping.id } else { String::new() },
    };
    w.send(&key, Payload::PingpongMessage(pong));
}

fn came_after(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(2, 3));
    let at = match a.s(1) {
        "server ping" => w.memory.server_pings.get(&key).map(|p| p.request_time),
        _ => w.memory.errors.get(&key).map(|e| e.timestamp),
    }
    .unwrap_or_else(|| fail(format!("a {} on {key} earlier", a.s(1)), "none"));
    // The RESPONSE's timestamp, or (none on WebSocket, TRN-16) when the suite saw the session open.
    let conn = w.conn(&key);
    let started = conn
        .session
        .as_ref()
        .and_then(|s| s.response.as_ref())
        .map_or(conn.opened_ms, |r| r.timestamp);
    let intervals: f64 = a.s(4).parse().unwrap_or(0.0);
    let interval = i64::try_from(w.ping_interval().as_millis()).unwrap_or(0);
    let want = (intervals * interval as f64) as i64;
    // Never half an interval or more, or a neighbouring tick would pass for this one (PING-4, PING-5).
    let tolerance = w.driver.info().timer_tolerance_ms.min(interval / 2 - 1);
    if (at - started - want).abs() > tolerance {
        fail(
            format!(
                "the {} {want} ms after the session started (+/- {tolerance} ms)",
                a.s(1)
            ),
            format!("{} ms after", at - started),
        );
    }
}
