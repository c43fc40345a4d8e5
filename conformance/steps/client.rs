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
use crate::proto::{ErrorMessage, Identity, PingPong};

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
