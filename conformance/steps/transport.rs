//! Connections, transports and time (SPEC §2): opening sessions, raw bytes
//! and frames, closes, and letting time pass.

use std::time::Duration;

use super::{Args, CONN, DURATION, StepDef, duration};
use crate::client::Event;
use crate::conformance::driver::{ConnectOutcome, ConnectSpec, DriverError, Restart, ServerTweak, TransportKind};
use crate::conformance::world::{CaseWorld, conn_key, describe_event, driver_failed, fail, skip, summarize};
use crate::proto::PingPong;
use crate::proto::message_scheme::Payload;

pub fn steps() -> Vec<StepDef> {
    vec![
        StepDef {
            pattern: r#"(\w+) is connected(?: over (websocket|tcp))? as "([\w-]+)"( without answering pings| and sees server pings| without answering pings but sees server pings| with a token valid for (\d+) seconds)?"#,
            run: connected,
        },
        StepDef {
            pattern: r"(\w+) is connected(?: over (websocket|tcp))? with (\d+) devices",
            run: connected_many,
        },
        StepDef {
            pattern: r#"(\w+) is connected over tcp as "([\w-]+)" without authenticating"#,
            run: connected_raw,
        },
        StepDef {
            pattern: const_format(&[CONN, r#" sends a WebSocket Ping frame with data "([^"]*)""#]),
            run: sends_ws_ping,
        },
        StepDef {
            pattern: const_format(&[CONN, r#" receives a WebSocket Pong frame with data "([^"]*)""#]),
            run: receives_ws_pong,
        },
        StepDef {
            pattern: r"the server verifies RS256 tokens",
            run: |w, _| configure(w, ServerTweak::Rs256),
        },
        StepDef {
            pattern: r"the server has no key to sign tokens with",
            run: |w, _| configure(w, ServerTweak::NoSigningKey),
        },
        StepDef {
            pattern: const_format(&[CONN, r" loses its connection in the middle of the next ([A-Z]\w+)"]),
            run: cut_in_next,
        },
        StepDef {
            pattern: const_format(&[CONN, r"'s writes reach the server one byte at a time"]),
            run: split_writes,
        },
        StepDef {
            pattern: const_format(&[CONN, r" (stops reading|reads again)"]),
            run: stalls,
        },
        StepDef {
            pattern: const_format(&[CONN, r"'s writes reach the server ", DURATION, " late"]),
            run: delays_writes,
        },
        StepDef {
            pattern: RESTARTS,
            run: |w, _| restart(w, Restart::Graceful),
        },
        StepDef {
            pattern: KILLED,
            run: |w, _| restart(w, Restart::Kill),
        },
        StepDef {
            pattern: const_format(DURATION_PASS),
            run: time_passes,
        },
        StepDef {
            pattern: const_format(CLOSES),
            run: |w, a| {
                let key = w.resolve(&a.conn(1, 2));
                w.settle();
                w.driver.close(&key);
            },
        },
        StepDef {
            pattern: const_format(WRITES),
            run: writes,
        },
        StepDef {
            pattern: const_format(WRITES_PING_SLOWLY),
            run: writes_ping_slowly,
        },
        StepDef {
            pattern: const_format(WRITES_PINGS_AT_ONCE),
            run: writes_pings_at_once,
        },
        StepDef {
            pattern: const_format(SENDS_TEXT_FRAME),
            run: |w, a| {
                let key = w.resolve(&a.conn(1, 2));
                w.settle();
                if let Err(e) = w.driver.send_text(&key, a.s(3)) {
                    driver_failed(e)
                }
            },
        },
        StepDef {
            pattern: const_format(SUBPROTOCOL),
            run: subprotocol,
        },
        StepDef {
            pattern: r#"a client sends the HTTP request "([^"]*)" to the WebSocket listener"#,
            run: http_request,
        },
        StepDef {
            pattern: r"the answer is HTTP (\d+) and the connection closes",
            run: http_answer,
        },
        StepDef {
            pattern: const_format(STILL_CONNECTED),
            run: still_connected,
        },
        StepDef {
            pattern: const_format(STAYS_CONNECTED),
            run: stays_connected,
        },
        StepDef {
            pattern: const_format(IS_CLOSED),
            run: is_closed,
        },
        StepDef {
            pattern: const_format(NOTHING_MORE_THEN_CLOSED),
            run: nothing_more_then_closed,
        },
        StepDef {
            pattern: const_format(CLOSED_AFTER_AT_MOST),
            run: closed_after_at_most,
        },
    ]
}

// Patterns built from the shared pieces; leaked once at table creation.
const DURATION_PASS: &[&str] = &[DURATION, r" pass(?:es)?"];
const CLOSES: &[&str] = &[CONN, r" closes its connection"];
const WRITES: &[&str] = &[CONN, r#" writes the bytes "([0-9a-f ]*)""#];
const WRITES_PING_SLOWLY: &[&str] = &[CONN, r#" writes a ping with id "([^"]*)" one byte at a time"#];
const WRITES_PINGS_AT_ONCE: &[&str] = &[CONN, r#" writes pings "([^"]*)", "([^"]*)" and "([^"]*)" in one write"#];
const SENDS_TEXT_FRAME: &[&str] = &[CONN, r#" sends the text message "([^"]*)""#];
const SUBPROTOCOL: &[&str] = &[CONN, r#" was given the subprotocol "([^"]+)""#];
const STILL_CONNECTED: &[&str] = &[CONN, r" is still connected"];
const STAYS_CONNECTED: &[&str] = &[CONN, r" stays connected"];
const IS_CLOSED: &[&str] = &[CONN, r" is closed(?: with code (\d+))?(?: within ", DURATION, ")?"];
const NOTHING_MORE_THEN_CLOSED: &[&str] = &[CONN, r" receives nothing more and is closed with code (\d+)"];
const CLOSED_AFTER_AT_MOST: &[&str] = &[CONN, r" is closed with code (\d+) after at most error (\d+) (\w+)"];

/// Joins pattern pieces into one `'static` pattern.
pub fn const_format(parts: &[&str]) -> &'static str {
    Box::leak(parts.concat().into_boxed_str())
}

/// The transport a step names, or the case's own (the pass's) when it names none.
fn transport(w: &CaseWorld, name: Option<&str>) -> TransportKind {
    match name {
        Some("tcp") => TransportKind::Tcp,
        Some(_) => TransportKind::Ws,
        None => w.transport,
    }
}

/// The steps that take the server down (`lifecycle.rs`); the runner runs their cases alone (`spec::restarts`).
pub const RESTARTS: &str = r"the server restarts";
pub const KILLED: &str = r"the server is killed and started again";

/// A network fault under the client (`tap.rs`): the next such stanza from the server is cut short and the
/// connection fails, as when the network drops after the server sent it.
fn cut_in_next(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let route = super::route_of(a.s(3));
    let Some(tap) = w.driver.tap(&key) else {
        fail(format!("a connection {key}"), "none")
    };
    if let Err(why) = tap.cut_in_next(route) {
        skip(why)
    }
}

/// A network fault under the client (`tap.rs`): every later write of the connection reaches the server in
/// pieces of one byte, so the server reads each stanza in as many reads (TRN-3, TRN-9).
fn split_writes(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let Some(tap) = w.driver.tap(&key) else {
        fail(format!("a connection {key}"), "none")
    };
    w.settle();
    tap.split_writes(1);
}

/// A network fault under the client (`tap.rs`): the client stops reading, so its socket's buffers fill and the
/// server's writes back up (TRN-19); or it reads again.
fn stalls(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let Some(tap) = w.driver.tap(&key) else {
        fail(format!("a connection {key}"), "none")
    };
    let stop = a.s(3) == "stops reading";
    if stop {
        // What the case waited for before is read first.
        w.settle();
    }
    tap.stall(stop);
}

/// A network fault under the client (`tap.rs`): a slow link, each later write of the connection reaching the
/// server that much later, in order.
fn delays_writes(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    // A delay in ping intervals needs the interval the server announced (a WebSocket session may not have its
    // Authenticate RESPONSE yet).
    w.await_first_stanza(&key);
    let delay = duration(w, a.s(3), a.s(4));
    let Some(tap) = w.driver.tap(&key) else {
        fail(format!("a connection {key}"), "none")
    };
    w.settle();
    tap.delay_writes(delay);
}

/// Whatever the case sent before is answered first; then the server goes down and comes back.
fn restart(w: &mut CaseWorld, how: Restart) {
    w.settle();
    match w.driver.restart(how) {
        Ok(()) => {}
        Err(DriverError::Skip(reason)) => skip(reason.0),
        Err(e) => driver_failed(e),
    }
}

fn configure(w: &mut CaseWorld, tweak: ServerTweak) {
    if let Err(reason) = w.driver.configure(tweak) {
        skip(reason.0)
    }
}

/// Opens a session for (user, device) and checks it started (TRN-15 on TCP).
pub fn open_session(w: &mut CaseWorld, user: &str, device: &str, spec: ConnectSpec) -> String {
    let key = w.new_key(user, device);
    let transport = spec.transport;
    w.settle();
    let outcome = w.driver.connect(&key, &spec).unwrap_or_else(|e| driver_failed(e));
    match &outcome {
        ConnectOutcome::Session(s) if transport == TransportKind::Tcp && s.response.is_none() => fail(
            "the Authenticate RESPONSE as the first stanza of a TCP session (TRN-15)",
            "another stanza first",
        ),
        ConnectOutcome::Session(_) => {}
        other => fail(format!("a session for {user}'s {device}"), other.to_string()),
    }
    w.record_connect(&key, user, device, transport, outcome);
    key
}

fn connected(w: &mut CaseWorld, a: &Args) {
    let (user, device) = (a.s(1), a.s(3));
    let mut spec = ConnectSpec::new(&w.eid(user), device, transport(w, a.opt(2)));
    let mode = a.s(4);
    if mode.contains("without answering pings") {
        spec.auto_pong = false;
        spec.surface_pings = true;
    }
    if mode.contains("sees server pings") {
        spec.surface_pings = true;
    }
    if a.opt(5).is_some() {
        spec.token = crate::conformance::driver::TokenKind::ShortLived(a.n(5));
    }
    open_session(w, user, device, spec);
}

fn connected_many(w: &mut CaseWorld, a: &Args) {
    let user = a.s(1);
    for i in 1..=a.n(3) {
        let device = format!("d{i}");
        let spec = ConnectSpec::new(&w.eid(user), &device, transport(w, a.opt(2)));
        open_session(w, user, &device, spec);
    }
}

fn connected_raw(w: &mut CaseWorld, a: &Args) {
    let (user, device) = (a.s(1), a.s(2));
    let mut spec = ConnectSpec::new(&w.eid(user), device, TransportKind::Tcp);
    spec.token = crate::conformance::driver::TokenKind::Missing;
    let key = w.new_key(user, device);
    w.settle();
    let outcome = w.driver.connect(&key, &spec).unwrap_or_else(|e| driver_failed(e));
    w.record_connect(&key, user, device, TransportKind::Tcp, outcome);
}

fn time_passes(w: &mut CaseWorld, a: &Args) {
    let d = duration(w, a.s(1), a.s(2));
    w.driver.wait(d);
}

fn hex_bytes(text: &str) -> Vec<u8> {
    let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(&clean).unwrap_or_else(|e| fail("hex bytes in the step", format!("{e}: {text}")))
}

fn writes(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    w.settle();
    if let Err(e) = w.driver.send_wire(&key, hex_bytes(a.s(3))) {
        driver_failed(e)
    }
}

/// A TCP frame (length prefix + stanza) holding a client ping.
pub fn ping_frame(w: &CaseWorld, id: &str) -> Vec<u8> {
    let stanza = crate::codec::encode(&Payload::PingpongMessage(PingPong {
        r#type: 1,
        status: 1,
        request_time: w.now_ms(),
        id: id.to_string(),
        ..PingPong::default()
    }));
    let mut frame = u32::try_from(stanza.len()).unwrap_or(u32::MAX).to_be_bytes().to_vec();
    frame.extend(stanza);
    frame
}

fn writes_ping_slowly(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let frame = ping_frame(w, a.s(3));
    for byte in frame {
        w.settle();
        if let Err(e) = w.driver.send_wire(&key, vec![byte]) {
            driver_failed(e)
        }
        w.driver.wait(Duration::from_millis(5));
    }
}

fn writes_pings_at_once(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let mut bytes = Vec::new();
    for i in 3..=5 {
        bytes.extend(ping_frame(w, a.s(i)));
    }
    w.settle();
    if let Err(e) = w.driver.send_wire(&key, bytes) {
        driver_failed(e)
    }
}

fn subprotocol(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let got = w.conn(&key).session.as_ref().and_then(|s| s.subprotocol.clone());
    if got.as_deref() != Some(a.s(3)) {
        fail(
            format!("the server to select the subprotocol {:?} (TRN-4)", a.s(3)),
            format!("{got:?}"),
        );
    }
}

/// The request as the feature writes it, with `\r\n` for each line end.
fn http_request(w: &mut CaseWorld, a: &Args) {
    let request = a.s(1).replace("\\r\\n", "\r\n");
    w.settle();
    match w.driver.http(request.as_bytes()) {
        Ok(answer) => w.http = Some(answer),
        Err(e) => driver_failed(e),
    }
}

fn http_answer(w: &mut CaseWorld, a: &Args) {
    let Some(answer) = &w.http else {
        fail("an HTTP request sent first", "none was sent")
    };
    let expected = a.s(1).parse::<u16>().ok();
    let shown = || crate::conformance::driver::describe_answer(answer);
    if answer.status() != expected {
        fail(format!("HTTP {} (TRN-18)", a.s(1)), shown());
    }
    if !answer.closed {
        fail("the server to close the connection after its answer (TRN-18)", shown());
    }
}

fn still_connected(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let events = w.collect(&key, Duration::ZERO);
    // A fatal error announces the close (ERR-6), which may take a while to complete.
    let ending = |e: &&Event| match e {
        Event::Closed { .. } => true,
        Event::Stanza(Payload::ErrorMessage(error)) => {
            crate::codec::ErrorKind::from_name(&error.message).is_some_and(crate::codec::ErrorKind::is_fatal)
        }
        _ => false,
    };
    if let Some(end) = events.iter().find(ending) {
        fail(format!("{key} still connected"), describe_event(end));
    }
    w.unread(&key, events);
}

/// Checks the connection still works: a ping gets its pong.
fn stays_connected(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let id = format!("alive-{}", w.fresh());
    let ping = Payload::PingpongMessage(PingPong {
        r#type: 1,
        status: 1,
        request_time: w.now_ms(),
        id: id.clone(),
        ..PingPong::default()
    });
    w.send(&key, ping);
    let timeout = w.timeout();
    if let Err(seen) = w.take(
        &key,
        timeout,
        |p| matches!(p, Payload::PingpongMessage(p) if p.r#type == 2 && p.id == id),
    ) {
        fail(
            format!("{key} to stay connected (a pong to the ping {id:?})"),
            summarize(&seen),
        );
    }
}

/// The close code expected on this connection's transport: TCP has none.
fn expect_close(w: &mut CaseWorld, key: &str, code: Option<u16>, within: Duration) {
    let tcp = w.conn(key).transport == TransportKind::Tcp;
    match w.closed(key, within) {
        Ok(got) if tcp || code.is_none() || got == code => {}
        Ok(got) => fail(
            format!("{key} closed with code {code:?}"),
            format!("closed with code {got:?}"),
        ),
        Err(seen) => fail(
            format!(
                "{key} closed{} within {within:?}",
                code.map(|c| format!(" with code {c}")).unwrap_or_default()
            ),
            format!("still open; received {}", summarize(&seen)),
        ),
    }
}

fn is_closed(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let code = a.opt(3).map(|_| u16::try_from(a.n(3)).unwrap_or(0));
    let within = match a.opt(4) {
        Some(amount) => duration(w, amount, a.s(5)),
        None => w.timeout(),
    };
    expect_close(w, &key, code, within);
}

/// ERR-6: nothing after the fatal ErrorMessage, then the close.
fn nothing_more_then_closed(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let code = u16::try_from(a.n(3)).unwrap_or(0);
    let timeout = w.timeout();
    let skip = w.after_match.get(&key).copied().unwrap_or(0);
    let events = w.collect(&key, timeout);
    let before: Vec<&Event> = events
        .iter()
        .skip(skip)
        .take_while(|e| !matches!(e, Event::Closed { .. }))
        .collect();
    if let Some(first) = before.first() {
        fail(
            format!("nothing on {key} after the fatal ErrorMessage, then the close (ERR-6)"),
            describe_event(first),
        );
    }
    w.unread(&key, events);
    expect_close(w, &key, Some(code), Duration::ZERO);
}

/// TRN-6: a close, preceded by nothing but (when the server can) one 413.
fn closed_after_at_most(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let code = u16::try_from(a.n(3)).unwrap_or(0);
    let (error_code, kind) = (a.n(4), a.s(5).to_string());
    let timeout = w.timeout();
    let events = w.collect(&key, timeout);
    for event in events.iter().take_while(|e| !matches!(e, Event::Closed { .. })) {
        match event {
            Event::Stanza(Payload::ErrorMessage(e)) if i64::from(e.code) == error_code && e.message == kind => {}
            other => fail(
                format!("at most ErrorMessage {error_code} {kind} before the close"),
                describe_event(other),
            ),
        }
    }
    w.unread(
        &key,
        events
            .into_iter()
            .skip_while(|e| !matches!(e, Event::Closed { .. }))
            .collect(),
    );
    expect_close(w, &key, Some(code), Duration::ZERO);
}

/// `alice's phone` as written in a step, for [`CaseWorld::resolve`].
pub fn written(user: &str, device: &str) -> String {
    conn_key(user, device)
}

/// The raw-byte tap of a connection, or a skip when it cannot see (TLS).
pub fn plaintext_tap(w: &mut CaseWorld, key: &str) -> crate::conformance::tap::TapHandle {
    let Some(tap) = w.driver.tap(key) else {
        fail(format!("a connection {key}"), "no such connection")
    };
    if !tap.log().plaintext {
        skip("needs the raw bytes of the connection: give a plaintext ws:// or tcp:// target");
    }
    tap
}

/// TRN-7: a control frame the reference client cannot send, slipped under it.
fn sends_ws_ping(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let tap = plaintext_tap(w, &key);
    if let Err(error) = tap.inject_ws_ping(a.s(3).as_bytes()) {
        fail(format!("{key} to send a WebSocket Ping frame"), error);
    }
}

fn receives_ws_pong(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let tap = plaintext_tap(w, &key);
    let want = a.s(3).as_bytes().to_vec();
    let deadline = w.driver.elapsed_ms() + u64::try_from(w.timeout().as_millis()).unwrap_or(u64::MAX);
    loop {
        let log = tap.log();
        if log.pongs.contains(&want) {
            return;
        }
        if w.driver.elapsed_ms() >= deadline {
            let seen: Vec<String> = log
                .pongs
                .iter()
                .map(|p| format!("{:?}", String::from_utf8_lossy(p)))
                .collect();
            fail(
                format!("{key} receives a WebSocket Pong frame with data {:?}", a.s(3)),
                format!(
                    "Pong frames received: [{}]{}",
                    seen.join(", "),
                    log.broken.map(|b| format!("; the tap broke: {b}")).unwrap_or_default()
                ),
            );
        }
        w.driver.wait(Duration::from_millis(10));
    }
}
