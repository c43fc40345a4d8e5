//! Chat, acknowledgments and the offline queue (SPEC §15-17).

use super::envelope::next_stanza;
use super::transport::{const_format, open_session};
use super::{Args, CONN, StepDef};
use crate::client::Event;
use crate::conformance::driver::ConnectSpec;
use crate::conformance::world::{CaseWorld, describe_event, fail, skip};
use crate::proto::message_scheme::Payload;
use crate::proto::{AcknowledgmentRequest, ChatMessage, Identity, TextPayloadRequest, VersionUpdate, chat_message};

pub fn steps() -> Vec<StepDef> {
    vec![
        StepDef {
            pattern: const_format(&[CONN, r#" sends text "([^"]*)" to (\w+) as "([^"]+)""#]),
            run: sends_text,
        },
        StepDef {
            pattern: const_format(&[CONN, r#" receives a version update for "([^"]+)" with version (\d+)"#]),
            run: version_update,
        },
        StepDef {
            pattern: const_format(&[CONN, r#" sends text to (\w+) as "([^"]+)" and receives version (\d+)"#]),
            run: sends_and_confirms,
        },
        StepDef {
            pattern: const_format(&[
                CONN,
                r#" receives the chat message "([^"]+)" from (\w+)'s ([\w-]+) with version (\d+) as (receiver|sender)"#,
            ]),
            run: receives_chat,
        },
        StepDef {
            pattern: const_format(&[
                r"the next stanza ",
                CONN,
                r#" receives is the chat message "([^"]+)" from (\w+)'s ([\w-]+) with version (\d+) as (receiver|sender)"#,
            ]),
            run: next_is_chat,
        },
        StepDef {
            pattern: const_format(&[CONN, r#" acknowledges "([^"]+)" with status (\d+)"#]),
            run: acknowledges,
        },
        StepDef {
            pattern: const_format(&[
                CONN,
                r#" receives an acknowledgment of "([^"]+)" with status (\d+) from (\w+)'s ([\w-]+)"#,
            ]),
            run: receives_ack,
        },
        StepDef {
            pattern: const_format(&[
                r"the next stanza ",
                CONN,
                r#" receives is an acknowledgment of "([^"]+)" with status (\d+) from (\w+)'s ([\w-]+)"#,
            ]),
            run: next_is_ack,
        },
        StepDef {
            pattern: const_format(&[CONN, r" fills (\w+)'s queue"]),
            run: fills_queue,
        },
        StepDef {
            pattern: const_format(&[
                CONN,
                r#" sends (\d+) texts of (\d+) bytes to (\w+) as "([\w-]+)-1" to "[\w-]+-\d+""#,
            ]),
            run: sends_many,
        },
        StepDef {
            pattern: const_format(&[
                CONN,
                r#" gets "([\w-]+)-1" to "[\w-]+-(\d+)" from (\w+) in order and without a gap, (reconnecting if it is closed|on one connection)"#,
            ]),
            run: gets_without_gap,
        },
    ]
}

fn sends_text(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let request = TextPayloadRequest {
        to: vec![Identity {
            eid: w.eid(a.s(4)),
            connection_resource_id: String::new(),
        }],
        content: a.s(3).to_string(),
        message_id_local: a.s(5).to_string(),
        text_size_count: a.s(3).chars().count().to_string(),
        created_at: w.now_ms() - 5,
        ..TextPayloadRequest::default()
    };
    let payload = Payload::TextPayloadRequest(request);
    w.memory.sent_chats.insert(a.s(5).to_string(), payload.clone());
    w.send(&key, payload);
}

/// CHAT-5: the VersionUpdate to the sending device; remembered by local id.
fn expect_version(w: &mut CaseWorld, key: &str, local: &str, version: i64) -> VersionUpdate {
    let timeout = w.timeout();
    let payload = w.expect(
        key,
        format!("a VersionUpdate for {local:?}"),
        timeout,
        |p| matches!(p, Payload::VersionUpdate(v) if v.message_id_local == local),
    );
    let Payload::VersionUpdate(v) = payload else {
        unreachable!("matched a VersionUpdate")
    };
    let conn = w.conn(key).clone();
    let identity = w.identity(&conn.user, &conn.device);
    let sent = w.memory.chat_sent_ms.get(local).copied().unwrap_or(w.started_ms);
    let mut problems = Vec::new();
    if (v.r#type, v.status) != (1, 1) {
        problems.push(format!("type {} status {} (want 1, 1)", v.r#type, v.status));
    }
    if v.to.as_ref() != Some(&identity) {
        problems.push(format!("to {:?} (want the sending device)", v.to));
    }
    if v.version != version {
        problems.push(format!("version {} (want {version})", v.version));
    }
    if v.message_id.is_empty() || v.chat_id.is_empty() {
        problems.push("an empty message_id or chat_id".to_string());
    }
    if let Some(why) = w.stamp_problem(v.timestamp, sent) {
        problems.push(format!(
            "timestamp {} (want the server's ms of acceptance): {why}",
            v.timestamp
        ));
    }
    if let Some(before) = w.memory.versions.get(local)
        && (before.message_id != v.message_id || before.chat_id != v.chat_id || before.version != v.version)
    {
        problems.push(format!(
            "other ids than the first VersionUpdate for {local:?} (CHAT-14)"
        ));
    }
    if w.memory
        .versions
        .iter()
        .any(|(other, seen)| other != local && seen.message_id == v.message_id)
    {
        problems.push(format!("the message_id {:?} of another message (CHAT-6)", v.message_id));
    }
    if !problems.is_empty() {
        fail(
            format!("a VersionUpdate for {local:?} with version {version} (CHAT-5)"),
            problems.join("; "),
        );
    }
    w.memory.versions.insert(local.to_string(), v.clone());
    v
}

fn version_update(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    expect_version(w, &key, a.s(3), a.n(4));
}

fn sends_and_confirms(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let local = a.s(4).to_string();
    let request = TextPayloadRequest {
        to: vec![Identity {
            eid: w.eid(a.s(3)),
            connection_resource_id: String::new(),
        }],
        content: format!("text of {local}"),
        message_id_local: local.clone(),
        created_at: w.now_ms() - 5,
        ..TextPayloadRequest::default()
    };
    let payload = Payload::TextPayloadRequest(request);
    w.memory.sent_chats.insert(local.clone(), payload.clone());
    w.send(&key, payload);
    expect_version(w, &key, &local, a.n(5));
}

/// CHAT-9, CHAT-10, CHAT-11: one copy's fields.
fn check_chat(w: &mut CaseWorld, a: &Args, first: usize, c: &ChatMessage) {
    let local = a.s(first);
    let sender = w.identity(a.s(first + 1), a.s(first + 2));
    let version = a.n(first + 3);
    let author = a.s(first + 4);
    let mut problems = Vec::new();
    let ack = if author == "receiver" { 1 } else { 4 };
    if c.author != author || c.acknowledgment != ack {
        problems.push(format!(
            "author {:?} acknowledgment {} (want {author:?}, {ack})",
            c.author, c.acknowledgment
        ));
    }
    if c.version != version {
        problems.push(format!("version {} (want {version})", c.version));
    }
    if c.from.as_ref() != Some(&sender) {
        problems.push(format!("from {:?} (want the sending device)", c.from));
    }
    if let Some(v) = w.memory.versions.get(local)
        && (c.message_id != v.message_id || c.chat_id != v.chat_id)
    {
        problems.push(format!(
            "message_id/chat_id {}/{} (want the VersionUpdate's {}/{})",
            c.message_id, c.chat_id, v.message_id, v.chat_id
        ));
    }
    if c.message_id.is_empty() || c.chat_id.is_empty() {
        problems.push("an empty message_id or chat_id".to_string());
    }
    if c.server_received_at == 0 || c.acknowledgment_timestamp != c.server_received_at {
        problems.push(format!(
            "server_received_at {} acknowledgment_timestamp {} (want both the server's ms of acceptance)",
            c.server_received_at, c.acknowledgment_timestamp
        ));
    }
    // The acceptance the VersionUpdate reported (CHAT-5), made after the request was sent.
    if let Some(v) = w.memory.versions.get(local)
        && c.server_received_at != v.timestamp
    {
        problems.push(format!(
            "server_received_at {} (want the VersionUpdate's timestamp {}, CHAT-5)",
            c.server_received_at, v.timestamp
        ));
    }
    let sent = w.memory.chat_sent_ms.get(local).copied().unwrap_or(w.started_ms);
    if let Some(why) = w.stamp_problem(c.server_received_at, sent) {
        problems.push(format!("server_received_at {}: {why}", c.server_received_at));
    }
    if let Some(Payload::TextPayloadRequest(r)) = w.memory.sent_chats.get(local) {
        if c.payload != Some(chat_message::Payload::Text(r.content.clone())) {
            problems.push(format!("text {:?} (want {:?})", c.payload, r.content));
        }
        if c.created_at != r.created_at {
            problems.push(format!(
                "created_at {} (want the request's {})",
                c.created_at, r.created_at
            ));
        }
        let to: Vec<Identity> =
            r.to.iter()
                .map(|t| Identity {
                    eid: t.eid.clone(),
                    connection_resource_id: String::new(),
                })
                .collect();
        if c.to != to {
            problems.push(format!("to {:?} (want [{{eid: receiver}}])", c.to));
        }
    }
    if !problems.is_empty() {
        fail(
            format!("the chat message {local:?} with version {version} as the {author}'s copy (CHAT-9..11)"),
            problems.join("; "),
        );
    }
}

fn receives_chat(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let local = a.s(3).to_string();
    let timeout = w.timeout();
    let payload = w.expect(
        &key,
        format!("the chat message {local:?}"),
        timeout,
        |p| matches!(p, Payload::ChatMessage(c) if c.message_id_local == local),
    );
    if let Payload::ChatMessage(c) = payload {
        check_chat(w, a, 3, &c);
    }
}

fn next_is_chat(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let local = a.s(3).to_string();
    match next_stanza(w, &key) {
        Payload::ChatMessage(c) if c.message_id_local == local => check_chat(w, a, 3, &c),
        other => fail(
            format!("the next stanza on {key} to be the chat message {local:?}"),
            describe_event(&Event::Stanza(other)),
        ),
    }
}

fn acknowledges(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let local = a.s(3);
    let v = w
        .memory
        .versions
        .get(local)
        .cloned()
        .unwrap_or_else(|| fail(format!("a VersionUpdate for {local:?} earlier in the case"), "none"));
    let request = AcknowledgmentRequest {
        message_id: v.message_id,
        status: i32::try_from(a.n(4)).unwrap_or(0),
        timestamp: w.now_ms(),
        ..AcknowledgmentRequest::default()
    };
    w.send(&key, Payload::AcknowledgmentRequest(request));
}

/// ACK-4, ACK-5: an AcknowledgmentResponse's fields.
fn check_ack(w: &mut CaseWorld, key: &str, a: &Args, r: &crate::proto::AcknowledgmentResponse) {
    let local = a.s(3);
    let status = a.n(4);
    let from = w.identity(a.s(5), a.s(6));
    let conn = w.conn(key).clone();
    let me = w.identity(&conn.user, &conn.device);
    let mut problems = Vec::new();
    if i64::from(r.status) != status {
        problems.push(format!("status {} (want {status})", r.status));
    }
    if r.from.as_ref() != Some(&from) {
        problems.push(format!("from {:?} (want {from:?})", r.from));
    }
    if r.to.as_ref() != Some(&me) {
        problems.push(format!("to {:?} (want the receiving device)", r.to));
    }
    if let Some(v) = w.memory.versions.get(local)
        && (r.chat_id != v.chat_id || r.version != v.version)
    {
        problems.push(format!(
            "chat_id/version {}/{} (want {}/{})",
            r.chat_id, r.version, v.chat_id, v.version
        ));
    }
    // ACK-4, ACK-5: the timestamp of the acknowledgment that reached this state, as its request gave it; SENT (4)
    // is reached at the acceptance (CHAT-5).
    let mut reached: Vec<i64> = w
        .memory
        .acks_sent
        .get(&r.message_id)
        .map(|sent| sent.iter().filter(|(s, _)| *s == r.status).map(|(_, t)| *t).collect())
        .unwrap_or_default();
    if r.status == 4
        && let Some(v) = w.memory.versions.get(local)
    {
        reached.push(v.timestamp);
    }
    if reached.contains(&0) {
        if let Some(why) = w.stamp_problem(r.timestamp, w.started_ms) {
            problems.push(format!("timestamp {}: {why}", r.timestamp));
        }
    } else if !reached.contains(&r.timestamp) {
        problems.push(format!(
            "timestamp {} (want the timestamp of the request that reached status {}: one of {reached:?})",
            r.timestamp, r.status
        ));
    }
    if !problems.is_empty() {
        fail(
            format!("an acknowledgment of {local:?} with status {status} from {from:?}"),
            problems.join("; "),
        );
    }
}

fn message_id(w: &CaseWorld, local: &str) -> String {
    w.memory
        .versions
        .get(local)
        .map(|v| v.message_id.clone())
        .unwrap_or_else(|| fail(format!("a VersionUpdate for {local:?} earlier in the case"), "none"))
}

fn receives_ack(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let id = message_id(w, a.s(3));
    let timeout = w.timeout();
    let payload = w.expect(
        &key,
        format!("an acknowledgment of {:?}", a.s(3)),
        timeout,
        |p| matches!(p, Payload::AcknowledgmentResponse(r) if r.message_id == id),
    );
    if let Payload::AcknowledgmentResponse(r) = payload {
        check_ack(w, &key, a, &r);
    }
}

fn next_is_ack(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let id = message_id(w, a.s(3));
    match next_stanza(w, &key) {
        Payload::AcknowledgmentResponse(r) if r.message_id == id => check_ack(w, &key, a, &r),
        other => fail(
            format!("the next stanza on {key} to be an acknowledgment of {:?}", a.s(3)),
            describe_event(&Event::Stanza(other)),
        ),
    }
}

/// QUE-10: sends as many messages as the receiver's queue holds.
fn fills_queue(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let Some(limit) = w.driver.info().queue_max_items else {
        skip(
            "the target's queue limit (100000 items by default) is too large to reach; run in simulation or configure a lower limit",
        )
    };
    let to = w.eid(a.s(3));
    for i in 1..=limit {
        let local = format!("fill-{i}");
        let request = TextPayloadRequest {
            to: vec![Identity {
                eid: to.clone(),
                connection_resource_id: String::new(),
            }],
            content: "x".to_string(),
            message_id_local: local.clone(),
            created_at: w.now_ms(),
            ..TextPayloadRequest::default()
        };
        w.send(&key, Payload::TextPayloadRequest(request));
        let timeout = w.timeout();
        w.expect(
            &key,
            format!("a VersionUpdate for {local:?}"),
            timeout,
            |p| matches!(p, Payload::VersionUpdate(v) if v.message_id_local == local),
        );
    }
}

/// Texts `{prefix}-1` to `{prefix}-{n}` sent back to back, then their VersionUpdates awaited in order.
fn sends_many(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let (count, bytes, prefix) = (a.n(3), usize::try_from(a.n(4)).unwrap_or(1), a.s(6).to_string());
    let to = w.eid(a.s(5));
    let locals: Vec<String> = (1..=count).map(|i| format!("{prefix}-{i}")).collect();
    for local in &locals {
        let request = TextPayloadRequest {
            to: vec![Identity {
                eid: to.clone(),
                connection_resource_id: String::new(),
            }],
            content: "x".repeat(bytes),
            message_id_local: local.clone(),
            created_at: w.now_ms(),
            ..TextPayloadRequest::default()
        };
        w.send(&key, Payload::TextPayloadRequest(request));
    }
    for local in &locals {
        let timeout = w.timeout();
        w.expect(
            &key,
            format!("a VersionUpdate for {local:?}"),
            timeout,
            |p| matches!(p, Payload::VersionUpdate(v) if v.message_id_local == *local),
        );
    }
}

/// TRN-19: each of `{prefix}-1` to `{prefix}-{n}` reaches the device, and on one connection they come in order
/// with no gap: each session starts at or before the first one not yet seen (a replay may repeat some, QUE-7)
/// and goes on one by one. A closed connection is opened again (the server may close a peer that stopped reading),
/// unless the step wants them all on one connection (TRN-20: a server keeps at least 256 stanzas for such a peer).
fn gets_without_gap(w: &mut CaseWorld, a: &Args) {
    const MOST_RECONNECTS: u32 = 3;
    let (user, device, written) = (a.s(1).to_string(), a.s(2).to_string(), a.conn(1, 2));
    let (prefix, count, from) = (a.s(3).to_string(), a.n(4), w.eid(a.s(5)));
    let one_connection = a.s(6) == "on one connection";
    let mut seen = std::collections::BTreeSet::new();
    // The last one this connection got.
    let mut last: Option<i64> = None;
    let mut reconnects = 0;
    let first_unseen =
        |seen: &std::collections::BTreeSet<i64>| (1..=count).find(|i| !seen.contains(i)).unwrap_or(count + 1);
    while first_unseen(&seen) <= count {
        let key = w.resolve(&written);
        let timeout = w.timeout();
        let wanted = first_unseen(&seen);
        match w.next_event(&key, timeout) {
            Some(Event::Stanza(Payload::ChatMessage(m))) if m.from.as_ref().is_some_and(|f| f.eid == from) => {
                let Some(i) = m
                    .message_id_local
                    .strip_prefix(&format!("{prefix}-"))
                    .and_then(|n| n.parse::<i64>().ok())
                else {
                    continue;
                };
                match last {
                    Some(before) if i != before + 1 => fail(
                        format!("{prefix}-{} after {prefix}-{before} on one connection", before + 1),
                        format!("{prefix}-{i}"),
                    ),
                    None if i > wanted => fail(
                        format!("{prefix}-{wanted} (or one seen before) first on this connection"),
                        format!("{prefix}-{i}"),
                    ),
                    _ => {}
                }
                last = Some(i);
                seen.insert(i);
            }
            Some(Event::Closed { .. }) if one_connection => fail(
                format!("{prefix}-{wanted} on the same connection (at least 256 stanzas kept for it, TRN-20)"),
                "the connection closed",
            ),
            Some(Event::Closed { .. }) => {
                reconnects += 1;
                if reconnects > MOST_RECONNECTS {
                    fail(
                        format!("{prefix}-{wanted} within {MOST_RECONNECTS} reconnections"),
                        "the connection closed each time",
                    );
                }
                let spec = ConnectSpec::new(&w.eid(&user), &device, w.transport);
                open_session(w, &user, &device, spec);
                last = None;
            }
            Some(_) => {}
            None => fail(format!("{prefix}-{wanted}"), format!("nothing more within {timeout:?}")),
        }
    }
}
