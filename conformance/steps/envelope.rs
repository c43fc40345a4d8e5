//! The envelope and the error table (SPEC §4, §5): stanzas written as
//! `Message {json}` in the proto3 JSON mapping, raw bytes, ErrorMessages, and
//! "nothing arrives" checks.

use std::time::Duration;

use super::transport::const_format;
use super::{
    Args, CONN, DURATION, StepDef, duration, parse_json, payload_json, payload_matches, route_of, stanza_bytes,
};
use crate::client::Event;
use crate::codec::Route;
use crate::conformance::world::{CaseWorld, describe_event, fail, shown, summarize};
use crate::proto::message_scheme::Payload;

pub fn steps() -> Vec<StepDef> {
    vec![
        StepDef {
            pattern: const_format(&[r"every stanza ", CONN, r" received was encoded canonically"]),
            run: received_canonically,
        },
        StepDef {
            pattern: const_format(&[CONN, r" sends ([A-Z]\w+) (\{.*\})"]),
            run: sends_json,
        },
        StepDef {
            pattern: const_format(&[CONN, r#" sends the bytes "([0-9a-f ]*)"(?: (\d+) times)?"#]),
            run: sends_bytes,
        },
        StepDef {
            pattern: const_format(&[CONN, r" sends a stanza of (\d+) bytes"]),
            run: sends_sized,
        },
        StepDef {
            pattern: const_format(&[
                CONN,
                r" receives (?:an? )?([A-Z]\w+) matching (\{.*\})(?: within ",
                DURATION,
                ")?",
            ]),
            run: receives_json,
        },
        StepDef {
            pattern: const_format(&[
                r"the next stanza ",
                CONN,
                r" receives is (?:an? )?([A-Z]\w+) matching (\{.*\})(, if the server sends one)?",
            ]),
            run: next_is_json,
        },
        StepDef {
            pattern: const_format(&[
                CONN,
                r#" receives error (\d+) (\w+)(?: for route "(-?\d*)")?(?: with ref_id "([^"]*)")?(?: within "#,
                DURATION,
                ")?",
            ]),
            run: receives_error,
        },
        StepDef {
            pattern: const_format(&[
                r"the next stanza ",
                CONN,
                r#" receives is error (\d+) (\w+)(?: for route "(-?\d*)")?"#,
            ]),
            run: next_is_error,
        },
        StepDef {
            pattern: const_format(&[CONN, r" receives (\d+) errors (\d+) (\w+)"]),
            run: receives_errors,
        },
        StepDef {
            pattern: const_format(&[CONN, r" receives no error"]),
            run: |w, a| receives_none_of(w, a, "ErrorMessage"),
        },
        StepDef {
            pattern: const_format(&[CONN, r" receives no ([A-Z]\w+)"]),
            run: |w, a| {
                let message = a.s(3).to_string();
                receives_none_of(w, a, &message)
            },
        },
        StepDef {
            pattern: const_format(&[CONN, r" receives nothing"]),
            run: receives_nothing,
        },
        StepDef {
            pattern: const_format(&[
                CONN,
                r"'s (\w+|close|first stanza) came before ",
                CONN,
                r"'s (\w+|close|first stanza)",
            ]),
            run: came_before,
        },
        StepDef {
            pattern: r"every stanza received so far was a valid stanza",
            run: all_valid,
        },
    ]
}

fn sends_json(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let fields = parse_json(w, a.s(4));
    let bytes = stanza_bytes(a.s(3), &fields);
    w.send_raw(&key, bytes);
}

fn hex_bytes(text: &str) -> Vec<u8> {
    let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(&clean).unwrap_or_else(|e| fail("hex bytes in the step", format!("{e}: {text}")))
}

fn sends_bytes(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let bytes = hex_bytes(a.s(3));
    let times = if a.opt(4).is_some() { a.n(4) } else { 1 };
    for _ in 0..times {
        w.send_raw(&key, bytes.clone());
    }
}

/// A PingPong stanza padded with an unknown field to exactly `size` bytes.
fn sends_sized(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let size = usize::try_from(a.n(3)).unwrap_or(0);
    let mut inner = vec![0x10, 0x01, 0x18, 0x01, 0x3a, 0x05];
    inner.extend(b"sized");
    w.send_raw(&key, padded_stanza(&inner, size));
}

/// `08 06 32 L <inner> <unknown field 99 of filler>` totalling `size` bytes
/// (with `inner` the PingPong fields); the unknown field is ignored (ENV-10).
pub fn padded_stanza(inner: &[u8], size: usize) -> Vec<u8> {
    fn varint(mut n: usize, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push(u8::try_from(n & 0x7f).unwrap_or(0) | 0x80);
            n >>= 7;
        }
        out.push(u8::try_from(n).unwrap_or(0));
    }
    // Try filler lengths until the total is exact (varint widths shift it).
    for filler in (0..size).rev() {
        let mut ping = inner.to_vec();
        ping.extend([0x9a, 0x06]); // field 99, wire type 2
        varint(filler, &mut ping);
        ping.extend(std::iter::repeat_n(b'x', filler));
        let mut stanza = vec![0x08, 0x06, 0x32];
        varint(ping.len(), &mut stanza);
        stanza.extend(&ping);
        if stanza.len() == size {
            return stanza;
        }
        if stanza.len() < size {
            break;
        }
    }
    fail(format!("a way to pad a stanza to {size} bytes"), "none")
}

fn within(w: &CaseWorld, a: &Args, amount: usize) -> Duration {
    match a.opt(amount) {
        Some(n) => duration(w, n, a.s(amount + 1)),
        None => w.timeout(),
    }
}

fn receives_json(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let message = a.s(3).to_string();
    route_of(&message);
    let expected = parse_json(w, a.s(4));
    let timeout = within(w, a, 5);
    match w.take(&key, timeout, |p| payload_matches(p, &message, &expected)) {
        Ok(payload) => {
            w.memory.matched.insert(key, payload);
        }
        Err(seen) => {
            let same: Vec<String> = seen
                .iter()
                .filter_map(|e| match e {
                    Event::Stanza(p) if Route::of(p).message_name() == message => Some(payload_json(p).to_string()),
                    _ => None,
                })
                .collect();
            fail(
                format!("{key} receives {message} matching {expected}"),
                if same.is_empty() {
                    format!("no {message}; received {}", summarize(&seen))
                } else {
                    format!("{message} {}", same.join(", "))
                },
            );
        }
    }
}

/// The next stanza in arrival order (events are not skipped).
pub fn next_stanza(w: &mut CaseWorld, key: &str) -> Payload {
    let timeout = w.timeout();
    match w.next_event(key, timeout) {
        Some(Event::Stanza(payload)) => payload,
        Some(other) => fail(format!("a stanza next on {key}"), describe_event(&other)),
        None => fail(format!("a stanza next on {key} within {timeout:?}"), "nothing"),
    }
}

fn next_is_json(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let message = a.s(3).to_string();
    let expected = parse_json(w, a.s(4));
    // A stanza SPEC makes optional (a SHOULD, such as the start Body of AWR-17): none may come, but if something
    // comes next it must be this.
    let payload = if a.opt(5).is_some() {
        let quiet = w.quiet();
        match w.next_event(&key, quiet) {
            None => return,
            Some(Event::Stanza(payload)) => payload,
            Some(other) => fail(format!("{message} next on {key}, or nothing"), describe_event(&other)),
        }
    } else {
        next_stanza(w, &key)
    };
    if !payload_matches(&payload, &message, &expected) {
        fail(
            format!("the next stanza on {key} to be {message} matching {expected}"),
            describe_event(&Event::Stanza(payload)),
        );
    }
    w.memory.matched.insert(key, payload);
}

/// Checks an ErrorMessage against code, kind and optional route and ref_id.
fn check_error_fields(
    w: &mut CaseWorld,
    key: &str,
    payload: &Payload,
    code: i64,
    kind: &str,
    route: Option<&str>,
    ref_id: Option<&str>,
) {
    let Payload::ErrorMessage(error) = payload else {
        fail(
            format!("ErrorMessage {code} {kind}"),
            describe_event(&Event::Stanza(payload.clone())),
        );
    };
    if i64::from(error.code) != code || error.message != kind {
        fail(
            format!("ErrorMessage {code} {kind}"),
            format!(
                "ErrorMessage {} {} ({}): {}",
                error.code,
                error.message,
                error.details,
                shown(payload.clone())
            ),
        );
    }
    if let Some(route) = route
        && error.route != route
    {
        fail(
            format!("ErrorMessage.route {route:?} (ERR-2)"),
            format!("{:?}", error.route),
        );
    }
    if let Some(ref_id) = ref_id {
        let ok = if ref_id == "$any" {
            !error.ref_id.is_empty()
        } else {
            error.ref_id == ref_id
        };
        if !ok {
            fail(
                format!("ErrorMessage.ref_id {ref_id:?} (ERR-3)"),
                format!("{:?}", error.ref_id),
            );
        }
    }
    let error = error.clone();
    w.check_error(key, &error);
}

fn receives_error(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let (code, kind) = (a.n(3), a.s(4).to_string());
    let ref_id = a.opt(6).map(|r| crate::conformance::steps::substitute(w, r));
    let timeout = within(w, a, 7);
    let payload = w.expect(&key, format!("ErrorMessage {code} {kind}"), timeout, |p| {
        matches!(p, Payload::ErrorMessage(_))
    });
    check_error_fields(w, &key, &payload, code, &kind, a.opt(5), ref_id.as_deref());
}

fn next_is_error(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let payload = next_stanza(w, &key);
    check_error_fields(w, &key, &payload, a.n(3), a.s(4), a.opt(5), None);
}

fn receives_errors(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let (count, code, kind) = (a.n(3), a.n(4), a.s(5).to_string());
    for i in 1..=count {
        let timeout = w.timeout();
        let payload = w.expect(
            &key,
            format!("ErrorMessage {code} {kind} number {i} of {count}"),
            timeout,
            |p| matches!(p, Payload::ErrorMessage(_)),
        );
        check_error_fields(w, &key, &payload, code, &kind, None, None);
    }
}

fn receives_none_of(w: &mut CaseWorld, a: &Args, message: &str) {
    let key = w.resolve(&a.conn(1, 2));
    let name = message.to_string();
    w.expect_none(&key, message, move |p| Route::of(p).message_name() == name);
}

fn receives_nothing(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let since = w.driver.elapsed_ms();
    let quiet = w.quiet();
    let events = w.collect(&key, quiet);
    if !events.is_empty() {
        fail(format!("nothing on {key}"), summarize(&events));
    }
    // Held to the case's end, but a server may ping at any time (PING-2).
    w.forbid(
        &key,
        "stanza",
        since,
        |p| !matches!(p, Payload::PingpongMessage(ping) if ping.r#type == 1),
    );
}

/// Order across connections where SPEC fixes it (TOK-6: the revoke response before the sessions it ends; SES-1:
/// the replaced session's close before the new session's start sequence), by when the suite saw each arrive. An
/// empty start sequence (a WebSocket session without RESPONSE, queue or Body) has nothing to be late.
fn came_before(w: &mut CaseWorld, a: &Args) {
    let first = (w.resolve(&a.conn(1, 2)), a.s(3).to_string());
    let then = (w.resolve(&a.conn(4, 5)), a.s(6).to_string());
    let matcher = |what: String| {
        move |e: &Event| match (what.as_str(), e) {
            ("close", Event::Closed { .. }) => true,
            ("first stanza", Event::Stanza(_)) => true,
            (name, Event::Stanza(p)) => Route::of(p).message_name() == name,
            _ => false,
        }
    };
    let at = |w: &mut CaseWorld, (key, what): &(String, String)| w.first_arrival(key, matcher(what.clone()));
    let Some(first_at) = at(w, &first) else {
        fail(format!("{}'s {} earlier in the case", first.0, first.1), "none arrived");
    };
    let Some(then_at) = at(w, &then) else {
        if then.1 == "first stanza" {
            return;
        }
        fail(format!("{}'s {} earlier in the case", then.0, then.1), "none arrived");
    };
    let slack = w.driver.info().order_slack_ms;
    if first_at > then_at + slack {
        fail(
            format!("{}'s {} before {}'s {}", first.0, first.1, then.0, then.1),
            format!(
                "it arrived at {first_at} ms, {} ms after the other (at {then_at} ms; {slack} ms allowed for two sockets)",
                first_at - then_at
            ),
        );
    }
}

fn all_valid(w: &mut CaseWorld, _: &Args) {
    let keys: Vec<String> = w.conns.keys().cloned().collect();
    for key in keys {
        // Pulling runs the checks every received event gets.
        let events = w.collect(&key, Duration::ZERO);
        w.unread(&key, events);
    }
}

/// ENV-12: each stanza's bytes as the server sent them are what the codec's
/// canonical encoding of the decoded stanza gives.
fn received_canonically(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let tap = super::transport::plaintext_tap(w, &key);
    // Whatever is still on its way arrives first.
    w.driver.wait(w.quiet());
    let log = tap.log();
    if let Some(why) = log.broken {
        fail(format!("the stanzas {key} received, readable"), why);
    }
    if log.stanzas.is_empty() {
        fail(format!("stanzas received by {key}"), "none");
    }
    for bytes in &log.stanzas {
        let payload = crate::codec::decode(bytes, usize::MAX)
            .unwrap_or_else(|e| fail("a stanza that decodes", format!("{e}: {}", hex::encode(bytes))));
        let canonical = crate::codec::encode(&payload);
        if canonical != *bytes {
            fail(
                format!("the canonical encoding {}", hex::encode(&canonical)),
                format!("{key} received {}", hex::encode(bytes)),
            );
        }
    }
}
