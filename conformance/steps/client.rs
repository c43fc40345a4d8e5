//! Clients (SPEC §21, client mode): the scripted peer's side of the conversation and what the client under test
//! reports through its adapter. Every step fails in a server run (`not_applicable`), and the server steps skip in
//! a client run.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Args, StepDef};
use crate::conformance::client_mode::{Harness, HarnessError};
use crate::conformance::peer::{CLIENT_DEVICE, CLIENT_EID, Script};
use crate::conformance::world::{CaseWorld, fail, not_applicable};
use crate::proto::message_scheme::Payload;
use crate::proto::{AcknowledgmentResponse, ChatMessage, ErrorMessage, Identity, PingPong, chat_message};

pub fn steps() -> Vec<StepDef> {
    vec![
        StepDef {
            pattern: r"the peer (sends|does not send) an Authenticate RESPONSE",
            run: script_auth,
        },
        StepDef {
            pattern: r"the peer listens for WebSocket connections",
            run: listens_ws,
        },
        StepDef {
            pattern: r"the client connects to the peer",
            run: connects,
        },
        StepDef {
            pattern: r#"the peer pings the client with id "([^"]*)""#,
            run: peer_pings,
        },
        StepDef {
            pattern: r#"the peer receives a pong for "([^"]*)""#,
            run: receives_pong,
        },
        StepDef {
            pattern: r"the peer sends a stanza of a route the client does not know",
            run: sends_unknown_route,
        },
        StepDef {
            pattern: r"the peer sends bytes that are no MessageScheme",
            run: sends_undecodable,
        },
        StepDef {
            pattern: r"the client reports a bad stanza",
            run: reports_bad_stanza,
        },
        StepDef {
            pattern: r#"the client sends the text "([^"]*)" to "([^"]*)" as "([^"]*)""#,
            run: sends_text,
        },
        StepDef {
            pattern: r#"the peer receives a TextPayloadRequest with the text "([^"]*)""#,
            run: receives_request,
        },
        StepDef {
            pattern: r#"the peer answers that request with error (\d+) "([^"]*)""#,
            run: answers_error,
        },
        StepDef {
            pattern: r#"the client reports error (\d+) for "([^"]*)" blamed on the (client|server)"#,
            run: reports_error,
        },
        StepDef {
            pattern: r"the peer receives no TextPayloadRequest within (\d+) ms",
            run: no_request,
        },
        StepDef {
            pattern: r#"the peer sends (the chat message|the client's own message) "([^"]*)" of version (\d+)( twice)?"#,
            run: sends_message,
        },
        StepDef {
            pattern: r"the peer sends the update (delivered|read) for version (\d+)( twice)?",
            run: sends_update,
        },
        StepDef {
            pattern: r"the client reports the message of version (\d+) once",
            run: reports_message_once,
        },
        StepDef {
            pattern: r"the client reports the update (delivered|read) for version (\d+) once",
            run: reports_update_once,
        },
        StepDef {
            pattern: r"the peer receives an AcknowledgmentRequest with status (\d) for version (\d+)",
            run: receives_confirmation,
        },
        StepDef {
            pattern: r"the peer (replaces the session|refuses the token|drops the connection)",
            run: peer_ends,
        },
        StepDef {
            pattern: r"the client connects to the peer again after (\d+) to (\d+) ms",
            run: connects_again,
        },
        StepDef {
            pattern: r"the client does not connect to the peer again within (\d+) ms",
            run: stays_away,
        },
        StepDef {
            pattern: r#"the peer receives the same TextPayloadRequest with the text "([^"]*)" again"#,
            run: receives_same_request,
        },
    ]
}

/// The client-mode harness, or "not applicable" in a server run.
fn harness(w: &mut CaseWorld) -> &mut Harness {
    match w.driver.client_mode() {
        Some(h) => h,
        None => not_applicable("a client-mode step (bimip-conform client); this run checks a server"),
    }
}

/// Fails with the adapter's standard error, or ends the case as not applicable for a command it does not know.
fn check<T>(h: &Harness, result: Result<T, HarnessError>) -> T {
    match result {
        Ok(value) => value,
        Err(HarnessError::Unsupported(why)) => not_applicable(why),
        Err(HarnessError::Failed(why)) => fail(why, format!("adapter stderr: {}", tail(&h.adapter_log()))),
    }
}

fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(2000);
    let start = (start..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    &text[start..]
}

/// The next adapter event of `kind` within the target's timeout, or a failure naming what came instead.
fn expect_event(h: &mut Harness, kind: &str) -> Value {
    let within = h.timeout();
    let result = h.event(kind, within);
    match check(h, result) {
        Some(event) => event,
        None => {
            let others = h.events(Duration::ZERO).unwrap_or_default();
            fail(
                format!("a `{kind}` event from the client within {within:?}"),
                format!("other events: {others:?}; adapter stderr: {}", tail(&h.adapter_log())),
            )
        }
    }
}

fn listens_ws(w: &mut CaseWorld, _: &Args) {
    let h = harness(w);
    if h.transport() != crate::conformance::driver::TransportKind::Ws {
        not_applicable("a WebSocket case; this pass is native TCP");
    }
}

fn script_auth(w: &mut CaseWorld, a: &Args) {
    let auth_response = a.s(1) == "sends";
    harness(w).script(Script { auth_response });
}

/// SPEC TRN-17: the client is connected once its adapter says so, with or without an Authenticate RESPONSE.
fn connects(w: &mut CaseWorld, _: &Args) {
    let h = harness(w);
    let result = h.connect();
    check(h, result);
    let within = h.timeout();
    let deadline = std::time::Instant::now() + within;
    loop {
        let result = h.events(Duration::from_millis(50));
        let events = check(h, result);
        if let Some(failed) = events.iter().find(|e| e["event"] == "connect_failed") {
            fail("the client to connect", format!("connect_failed: {}", failed["reason"]));
        }
        let connected = events.iter().any(|e| e["event"] == "connected");
        // What else came stays for later steps.
        for event in events.into_iter().filter(|e| e["event"] != "connected") {
            h.keep(event);
        }
        if connected {
            return;
        }
        if std::time::Instant::now() >= deadline {
            fail(
                format!("a `connected` event within {within:?}"),
                format!("none; adapter stderr: {}", tail(&h.adapter_log())),
            );
        }
    }
}

fn peer_pings(w: &mut CaseWorld, a: &Args) {
    let now = w.driver.now_ms();
    let h = harness(w);
    let ping = PingPong {
        to: Some(Identity {
            eid: CLIENT_EID.into(),
            connection_resource_id: CLIENT_DEVICE.into(),
        }),
        r#type: 1,
        status: 1,
        request_time: now,
        id: a.s(1).to_string(),
        ..PingPong::default()
    };
    h.remember_ping(a.s(1), now);
    let result = h.send(&Payload::PingpongMessage(ping));
    check(h, result);
}

/// SPEC PING-3: a pong with status 2, echoing the ping's id and request_time.
fn receives_pong(w: &mut CaseWorld, a: &Args) {
    let h = harness(w);
    let id = a.s(1).to_string();
    let Some(request_time) = h.ping_sent(&id) else {
        fail(format!("a ping with id {id:?} sent before"), "none");
    };
    let within = h.timeout();
    let result = h.seen_stanza(
        within,
        |p| matches!(p, Payload::PingpongMessage(pp) if pp.r#type == 2 && pp.id == id),
    );
    match check(h, result) {
        Some(Payload::PingpongMessage(pong)) => {
            if pong.status != 2 || pong.request_time != request_time {
                fail(
                    format!("a pong for {id:?} with status 2 and request_time {request_time}"),
                    format!("status {}, request_time {}", pong.status, pong.request_time),
                );
            }
        }
        _ => fail(format!("a pong for {id:?} within {within:?}"), "none"),
    }
}

fn sends_unknown_route(w: &mut CaseWorld, _: &Args) {
    // route 40 and a field 40 of length 0: a route SPEC does not define (yet), in a well-formed envelope.
    let bytes = vec![0x08, 40, 0xC2, 0x02, 0x00];
    let h = harness(w);
    let result = h.send_raw(bytes);
    check(h, result);
}

fn sends_undecodable(w: &mut CaseWorld, _: &Args) {
    // A length-delimited field whose length runs past the end: no protobuf decoder accepts it.
    let bytes = vec![0x72, 0x7f, 0x01];
    let h = harness(w);
    let result = h.send_raw(bytes);
    check(h, result);
}

/// SPEC CLI-7: an undecodable stanza is reported to the application.
fn reports_bad_stanza(w: &mut CaseWorld, _: &Args) {
    let h = harness(w);
    expect_event(h, "bad_stanza");
}

fn sends_text(w: &mut CaseWorld, a: &Args) {
    let h = harness(w);
    let result = h.command(json!({"cmd": "send_text", "to": a.s(2), "text": a.s(1), "ref": a.s(3)}));
    check(h, result);
}

fn receives_request(w: &mut CaseWorld, a: &Args) {
    let h = harness(w);
    let text = a.s(1).to_string();
    let within = h.timeout();
    let result = h.seen_stanza(
        within,
        |p| matches!(p, Payload::TextPayloadRequest(r) if r.content == text),
    );
    match check(h, result) {
        Some(Payload::TextPayloadRequest(request)) => h.remember_request(request.message_id_local),
        _ => fail(
            format!("a TextPayloadRequest with the text {text:?} within {within:?}"),
            "none",
        ),
    }
}

fn answers_error(w: &mut CaseWorld, a: &Args) {
    let now = w.driver.now_ms();
    let h = harness(w);
    let Some(local) = h.last_request() else {
        fail("a TextPayloadRequest the peer received before", "none");
    };
    let code = i32::try_from(a.n(1)).unwrap_or_else(|_| fail("an error code", a.s(1)));
    let error = ErrorMessage {
        code,
        message: a.s(2).to_string(),
        route: "14".into(),
        details: "sent by the conformance suite's scripted peer".into(),
        ref_id: local,
        timestamp: now,
    };
    let result = h.send(&Payload::ErrorMessage(error));
    check(h, result);
}

/// SPEC ERR-7: an error is blamed by its code's hundred, and tied to the request it answers.
fn reports_error(w: &mut CaseWorld, a: &Args) {
    let h = harness(w);
    let event = expect_event(h, "error");
    let (code, reference, blame) = (a.n(1), a.s(2), a.s(3));
    if event["code"] != code || event["ref"] != reference || event["blame"] != blame {
        fail(
            format!("an error event with code {code}, ref {reference:?}, blame {blame:?}"),
            event.to_string(),
        );
    }
}

/// SPEC ERR-7: a request the server blamed on the client is not sent again unchanged.
fn no_request(w: &mut CaseWorld, a: &Args) {
    let h = harness(w);
    let within = Duration::from_millis(u64::try_from(a.n(1)).unwrap_or(0));
    let result = h.seen_stanza(within, |p| matches!(p, Payload::TextPayloadRequest(_)));
    if let Some(again) = check(h, result) {
        fail(format!("no TextPayloadRequest within {within:?}"), format!("{again:?}"));
    }
}

/// The other user of the scripted chats.
const PEER_USER: &str = "bob@conform.example";

fn peer_chat() -> String {
    crate::core::chat::chat_id(CLIENT_EID, PEER_USER)
}

fn identity(eid: &str, device: &str) -> Option<Identity> {
    Some(Identity {
        eid: eid.into(),
        connection_resource_id: device.into(),
    })
}

fn version(a: &Args, i: usize) -> i64 {
    a.n(i)
}

fn times(a: &Args, i: usize) -> usize {
    if a.opt(i).is_some() { 2 } else { 1 }
}

/// A queue item as the reference server makes it (SPEC 15.2): a receiver copy from the peer user, or the sender copy
/// of a message the client's user sent from another device.
fn sends_message(w: &mut CaseWorld, a: &Args) {
    let now = w.driver.now_ms();
    let own = a.s(1) == "the client's own message";
    let version = version(a, 3);
    let chat = peer_chat();
    let (from, to, author, acknowledgment) = if own {
        (identity(CLIENT_EID, "other-device"), PEER_USER, "sender", 4)
    } else {
        (identity(PEER_USER, "phone"), CLIENT_EID, "receiver", 1)
    };
    let message = ChatMessage {
        message_id: format!("{chat}/{version}"),
        message_id_local: format!("peer-{version}"),
        version,
        chat_id: chat,
        from,
        to: vec![Identity {
            eid: to.into(),
            connection_resource_id: String::new(),
        }],
        author: author.into(),
        acknowledgment,
        acknowledgment_timestamp: now,
        created_at: now,
        server_received_at: now,
        payload: Some(chat_message::Payload::Text(a.s(2).to_string())),
        ..ChatMessage::default()
    };
    let h = harness(w);
    for _ in 0..times(a, 4) {
        let result = h.send(&Payload::ChatMessage(message.clone()));
        check(h, result);
    }
}

/// An acknowledgment update item: the peer user acknowledged the client's message (the client is its sender).
fn sends_update(w: &mut CaseWorld, a: &Args) {
    let now = w.driver.now_ms();
    let status = if a.s(1) == "read" { 3 } else { 2 };
    let version = version(a, 2);
    let chat = peer_chat();
    let update = AcknowledgmentResponse {
        from: identity(PEER_USER, "phone"),
        to: identity(CLIENT_EID, CLIENT_DEVICE),
        message_id: format!("{chat}/{version}"),
        status,
        timestamp: now,
        chat_id: chat,
        version,
    };
    let h = harness(w);
    for _ in 0..times(a, 3) {
        let result = h.send(&Payload::AcknowledgmentResponse(update.clone()));
        check(h, result);
    }
}

/// The events of one kind about one version that the client reports within the target's quiet window.
fn reported(w: &mut CaseWorld, kind: &str, version: i64) -> Vec<Value> {
    let quiet = w.driver.info().quiet.max(Duration::from_millis(500));
    let h = harness(w);
    // Whatever the client reports until it has been quiet for a while.
    let mut events = Vec::new();
    loop {
        let result = h.events(quiet);
        let batch = check(h, result);
        if batch.is_empty() {
            break;
        }
        events.extend(batch);
    }
    let (matching, others): (Vec<Value>, Vec<Value>) = events
        .into_iter()
        .partition(|e| e["event"] == kind && e["version"] == version);
    for event in others {
        h.keep(event);
    }
    matching
}

/// SPEC QUE-7: a message replayed is handed to the application once.
fn reports_message_once(w: &mut CaseWorld, a: &Args) {
    let version = version(a, 1);
    let events = reported(w, "message", version);
    if events.len() != 1 {
        fail(
            format!("one `message` event for version {version}"),
            format!("{events:?}"),
        );
    }
}

/// SPEC QUE-7: an update replayed is applied once.
fn reports_update_once(w: &mut CaseWorld, a: &Args) {
    let status = if a.s(1) == "read" { 3 } else { 2 };
    let version = version(a, 2);
    let events: Vec<Value> = reported(w, "acknowledged", version)
        .into_iter()
        .filter(|e| e["status"] == status)
        .collect();
    if events.len() != 1 {
        fail(
            format!("one `acknowledged` event with status {status} for version {version}"),
            format!("{events:?}"),
        );
    }
}

/// SPEC CLI-3 (QUE-4): the item is confirmed with the status QUE-4 names for it.
fn receives_confirmation(w: &mut CaseWorld, a: &Args) {
    let (status, version) = (a.n(1), version(a, 2));
    let message_id = format!("{}/{version}", peer_chat());
    let h = harness(w);
    let within = h.timeout();
    let result = h.seen_stanza(
        within,
        |p| matches!(p, Payload::AcknowledgmentRequest(r) if r.message_id == message_id),
    );
    match check(h, result) {
        Some(Payload::AcknowledgmentRequest(ack)) if i64::from(ack.status) == status => {}
        Some(other) => fail(
            format!("an AcknowledgmentRequest with status {status} for {message_id}"),
            format!("{other:?}"),
        ),
        None => fail(
            format!("an AcknowledgmentRequest with status {status} for {message_id} within {within:?}"),
            "none",
        ),
    }
}

/// How the peer ends the session, as a server would (SPEC §5, §6): an ErrorMessage saying why, then the close
/// (4409, 4401; on TCP the connection just closes), or a connection that is simply lost.
fn peer_ends(w: &mut CaseWorld, a: &Args) {
    let now = w.driver.now_ms();
    let h = harness(w);
    let (code, kind, close) = match a.s(1) {
        "replaces the session" => (409, "session_replaced", 4409),
        "refuses the token" => (401, "token_expired", 4401),
        _ => {
            let result = h.drop_connection();
            return check(h, result);
        }
    };
    let error = ErrorMessage {
        code,
        message: kind.into(),
        route: String::new(),
        details: "sent by the conformance suite's scripted peer".into(),
        ref_id: String::new(),
        timestamp: now,
    };
    let result = h.send(&Payload::ErrorMessage(error));
    check(h, result);
    let result = h.close(close);
    check(h, result);
}

/// SPEC CLI-6: the wait before an attempt is within the bounds, measured from the step (right after the end).
fn connects_again(w: &mut CaseWorld, a: &Args) {
    let (least, most) = (a.n(1), a.n(2));
    let within = Duration::from_millis(u64::try_from(most).unwrap_or(0)) + w.driver.info().timeout;
    let h = harness(w);
    let result = h.reaccept(within);
    match check(h, result) {
        Some(took) if (least..=most).contains(&i64::try_from(took.as_millis()).unwrap_or(i64::MAX)) => {}
        Some(took) => fail(
            format!("the client to connect again after {least} to {most} ms"),
            format!("after {} ms", took.as_millis()),
        ),
        None => fail(
            format!("the client to connect again within {within:?}"),
            "no connection",
        ),
    }
}

/// SPEC CLI-4, CLI-5: no attempt of the client's own.
fn stays_away(w: &mut CaseWorld, a: &Args) {
    let within = Duration::from_millis(u64::try_from(a.n(1)).unwrap_or(0));
    let h = harness(w);
    let result = h.reaccept(within);
    if let Some(took) = check(h, result) {
        fail(
            format!("no new connection from the client within {within:?}"),
            format!("one after {} ms", took.as_millis()),
        );
    }
}

/// SPEC CLI-1, CLI-2: the request without its VersionUpdate comes again in the new session, with the same
/// `message_id_local` and content.
fn receives_same_request(w: &mut CaseWorld, a: &Args) {
    let h = harness(w);
    let Some(local) = h.last_request() else {
        fail("a TextPayloadRequest the peer received before", "none");
    };
    let text = a.s(1).to_string();
    let within = h.timeout();
    let result = h.seen_stanza(within, |p| matches!(p, Payload::TextPayloadRequest(_)));
    match check(h, result) {
        Some(Payload::TextPayloadRequest(again)) if again.message_id_local == local && again.content == text => {}
        Some(other) => fail(
            format!("the TextPayloadRequest {local:?} with the text {text:?} again"),
            format!("{other:?}"),
        ),
        None => fail(
            format!("the TextPayloadRequest {local:?} again within {within:?}"),
            "none",
        ),
    }
}
