//! Awareness, subscribers, blocking, visibility and location (SPEC §10-14),
//! and the Body of the start sequence (§18).

use super::transport::const_format;
use super::{Args, CONN, DURATION, StepDef, duration, status_code};
use crate::client::Event;
use crate::conformance::world::{CaseWorld, describe_event, fail, shown};
use crate::proto::message_scheme::Payload;
use crate::proto::{
    AwarenessNotification, AwarenessRequest, AwarenessResponse, AwarenessSubscription, AwarenessVisibility,
    BlockSubscriber, Identity, LocationStream, SubscriberAddRequest, SubscriberRemove,
};

const STATUS: &str = r"(online|offline|away|busy|do not disturb|unavailable)";
const COORDS: &str = r"(-?\d+(?:\.\d+)?), (-?\d+(?:\.\d+)?)";

pub fn steps() -> Vec<StepDef> {
    vec![
        StepDef {
            pattern: const_format(&[CONN, r#" adds (\w+) as a subscriber(?: with nickname "([^"]*)")?"#]),
            run: adds_subscriber,
        },
        StepDef {
            pattern: const_format(&[CONN, r" removes (\w+) as a subscriber"]),
            run: removes_subscriber,
        },
        StepDef {
            pattern: const_format(&[CONN, r" (blocks|unblocks) (\w+)"]),
            run: blocks,
        },
        StepDef {
            pattern: const_format(&[CONN, r" sets (?:her|his|its) visibility to (public|contacts|private)"]),
            run: |w, a| {
                let v = match a.s(3) {
                    "public" => 1,
                    "contacts" => 2,
                    _ => 3,
                };
                set_visibility(w, a, v, 0);
            },
        },
        StepDef {
            pattern: const_format(&[CONN, r" turns location sharing (on|off)"]),
            run: |w, a| {
                let l = if a.s(3) == "on" { 1 } else { 2 };
                set_visibility(w, a, 0, l);
            },
        },
        StepDef {
            pattern: const_format(&[
                CONN,
                r" sets (?:her|his|its) status to ",
                STATUS,
                r"(?: for (\d+) seconds)?",
            ]),
            run: sets_status,
        },
        StepDef {
            pattern: const_format(&[
                CONN,
                r" signals (typing|recording|stopped) to (\w+)(?: for (\d+) seconds)?",
            ]),
            run: signals,
        },
        StepDef {
            pattern: const_format(&[CONN, r" asks about (\w+)"]),
            run: asks,
        },
        StepDef {
            pattern: const_format(&[CONN, r" learns that (\w+) is ", STATUS, r"(?: at ", COORDS, ")?"]),
            run: learns,
        },
        StepDef {
            pattern: const_format(&[CONN, r" (subscribes to|unsubscribes from) (\w+)'s awareness"]),
            run: subscribes,
        },
        StepDef {
            pattern: const_format(&[
                CONN,
                r" receives (\w+)'s status as ",
                STATUS,
                r"(?: with ttl (\d+))?(?: at ",
                COORDS,
                ")?(?: within ",
                DURATION,
                ")?",
            ]),
            run: receives_status,
        },
        StepDef {
            pattern: const_format(&[CONN, r" receives nothing about (\w+)"]),
            run: nothing_about,
        },
        StepDef {
            pattern: const_format(&[
                CONN,
                r" receives (\w+)'s (typing|recording|stopped) signal from (?:her|his|its) ([\w-]+)(?: for (\d+) seconds)?",
            ]),
            run: receives_signal,
        },
        StepDef {
            pattern: const_format(&[CONN, r" shares (?:her|his|its) location ", COORDS, r"(?: with (\w+))?"]),
            run: shares_location,
        },
        StepDef {
            pattern: const_format(&[
                CONN,
                r" receives (\w+)'s location ",
                COORDS,
                r" from (?:her|his|its) ([\w-]+)",
            ]),
            run: receives_location,
        },
        StepDef {
            pattern: const_format(&[CONN, r" receives a Body listing (.+?)(, if the server sends one)?"]),
            run: receives_body,
        },
    ]
}

fn user(eid: String) -> Option<Identity> {
    Some(Identity {
        eid,
        connection_resource_id: String::new(),
    })
}

/// Sends `request` and takes the answer `wanted` names (failing otherwise).
fn call(w: &mut CaseWorld, key: &str, request: Payload, what: &str, wanted: impl FnMut(&Payload) -> bool) -> Payload {
    w.send(key, request);
    let timeout = w.timeout();
    let payload = w.take(key, timeout, wanted);
    match payload {
        Ok(p) => p,
        Err(seen) => {
            // Name an ErrorMessage if that is what came instead.
            let error = seen
                .iter()
                .find(|e| matches!(e, Event::Stanza(Payload::ErrorMessage(_))));
            fail(
                format!("{key} receives {what}"),
                error.map_or_else(|| crate::conformance::world::summarize(&seen), describe_event),
            )
        }
    }
}

/// A stamp made while the case ran (issue 21.3): `None` when it agrees with the case's other stamps.
fn stamp(w: &mut CaseWorld, what: &str, t: i64) -> Option<String> {
    let started = w.started_ms;
    w.stamp_problem(t, started).map(|why| format!("{what} {t}: {why}"))
}

/// `last_seen` of `user` (AWR-2): the end of the user's last session, so after every session of the user the
/// case opened began.
fn last_seen_problem(w: &mut CaseWorld, user_eid: &str, last_seen: i64) -> Option<String> {
    let after = w
        .conns
        .values()
        .filter(|c| w.eid(&c.user) == user_eid && c.session.is_some())
        .map(|c| c.opened_ms)
        .max()
        .unwrap_or(w.started_ms);
    w.stamp_problem(last_seen, after)
        .map(|why| format!("last_seen {last_seen} (want the time the last session ended): {why}"))
}

/// SUB-2: the SubscriberAddResponse.
fn adds_subscriber(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let owner = w.conn(&key).user.clone();
    let (owner_eid, subscriber_eid) = (w.eid(&owner), w.eid(a.s(3)));
    let request = Payload::SubscriberAddRequest(SubscriberAddRequest {
        subscriber: user(subscriber_eid.clone()),
        nickname: a.opt(4).unwrap_or_default().to_string(),
        timestamp: w.now_ms(),
        ..SubscriberAddRequest::default()
    });
    let payload = call(w, &key, request, "a SubscriberAddResponse", |p| {
        matches!(p, Payload::SubscriberAddResponse(_))
    });
    let Payload::SubscriberAddResponse(r) = payload else {
        return;
    };
    let ok = r.status == 1
        && r.message == "subscriber added"
        && r.owner.as_ref().map(|o| o.eid.as_str()) == Some(owner_eid.as_str())
        && r.subscriber == user(subscriber_eid.clone())
        && !r.subscriber_resource_id.is_empty()
        && stamp(w, "timestamp", r.timestamp).is_none();
    if !ok {
        fail(
            "SubscriberAddResponse{status: 1, message: \"subscriber added\", owner, subscriber, a resource id, timestamp} (SUB-2)",
            shown(Payload::SubscriberAddResponse(r.clone())),
        );
    }
    let pair = format!("{owner_eid}>{subscriber_eid}");
    if let Some(before) = w.memory.resource_ids.get(&pair)
        && *before != r.subscriber_resource_id
    {
        fail(
            format!("the same subscriber_resource_id {before:?} as before (SUB-3)"),
            &r.subscriber_resource_id,
        );
    }
    w.memory.resource_ids.insert(pair, r.subscriber_resource_id);
}

/// SUB-6: the SubscriberRemove RESPONSE.
fn removes_subscriber(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let owner = w.conn(&key).user.clone();
    let (owner_eid, subscriber_eid) = (w.eid(&owner), w.eid(a.s(3)));
    let request = Payload::SubscriberRemove(SubscriberRemove {
        subscriber: user(subscriber_eid.clone()),
        r#type: 1,
        timestamp: w.now_ms(),
        ..SubscriberRemove::default()
    });
    let payload = call(
        w,
        &key,
        request,
        "a SubscriberRemove RESPONSE",
        |p| matches!(p, Payload::SubscriberRemove(r) if r.r#type == 2),
    );
    let Payload::SubscriberRemove(r) = payload else {
        return;
    };
    if r.status != 1
        || r.owner.as_ref().map(|o| o.eid.as_str()) != Some(owner_eid.as_str())
        || r.subscriber.as_ref().map(|s| s.eid.as_str()) != Some(subscriber_eid.as_str())
    {
        fail(
            "SubscriberRemove{type: 2, status: 1, owner, subscriber} (SUB-6)",
            shown(Payload::SubscriberRemove(r.clone())),
        );
    }
}

/// BLK-1: the BlockSubscriber RESPONSE.
fn blocks(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let owner = w.conn(&key).user.clone();
    let (owner_eid, other_eid) = (w.eid(&owner), w.eid(a.s(4)));
    let action = if a.s(3) == "blocks" { 1 } else { 2 };
    let request = Payload::BlockSubscriber(BlockSubscriber {
        subscriber: user(other_eid.clone()),
        r#type: 1,
        action,
        timestamp: w.now_ms(),
        ..BlockSubscriber::default()
    });
    let payload = call(
        w,
        &key,
        request,
        "a BlockSubscriber RESPONSE",
        |p| matches!(p, Payload::BlockSubscriber(b) if b.r#type == 2),
    );
    let Payload::BlockSubscriber(b) = payload else {
        return;
    };
    if b.status != 1
        || b.action != action
        || b.owner.as_ref().map(|o| o.eid.as_str()) != Some(owner_eid.as_str())
        || b.subscriber.as_ref().map(|s| s.eid.as_str()) != Some(other_eid.as_str())
    {
        fail(
            format!("BlockSubscriber{{type: 2, status: 1, action: {action}, owner, subscriber}} (BLK-1)"),
            shown(Payload::BlockSubscriber(b.clone())),
        );
    }
}

/// VIS-1: the AwarenessVisibility RESPONSE with the settings in force.
fn set_visibility(w: &mut CaseWorld, a: &Args, visibility: i32, sharing: i32) {
    let key = w.resolve(&a.conn(1, 2));
    let owner = w.conn(&key).user.clone();
    let id = format!("vis-{}", w.fresh());
    let request = Payload::AwarenessVisibility(AwarenessVisibility {
        id: id.clone(),
        r#type: 1,
        visibility,
        location_sharing: sharing,
        timestamp: w.now_ms(),
        ..AwarenessVisibility::default()
    });
    let payload = call(
        w,
        &key,
        request,
        "an AwarenessVisibility RESPONSE",
        |p| matches!(p, Payload::AwarenessVisibility(v) if v.r#type == 2),
    );
    let Payload::AwarenessVisibility(v) = payload else {
        return;
    };
    let ok = v.status == 1
        && v.id == id
        && v.from.as_ref().map(|f| f.eid.clone()) == Some(w.eid(&owner))
        && (visibility == 0 || v.visibility == visibility)
        && (sharing == 0 || v.location_sharing == sharing)
        && v.visibility != 0
        && v.location_sharing != 0;
    if !ok {
        fail(
            format!("AwarenessVisibility{{type: 2, status: 1, id: {id:?}, from, the settings in force}} (VIS-1)"),
            shown(Payload::AwarenessVisibility(v.clone())),
        );
    }
}

fn sets_status(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let status = status_code(a.s(3));
    let ttl = a.opt(4).map_or(0, |_| i32::try_from(a.n(4)).unwrap_or(0));
    let note = AwarenessNotification {
        status,
        ttl,
        timestamp: w.now_ms(),
        ..AwarenessNotification::default()
    };
    w.send(&key, Payload::AwarenessNotification(note));
    barrier(w, &key);
}

/// Waits until the server has handled everything `key` sent so far: stanzas
/// of one connection are handled in order (ENV-14), so a pong means it.
pub fn barrier(w: &mut CaseWorld, key: &str) {
    let id = format!("barrier-{}", w.fresh());
    let ping = crate::proto::PingPong {
        r#type: 1,
        status: 1,
        request_time: w.now_ms(),
        id: id.clone(),
        ..crate::proto::PingPong::default()
    };
    w.send(key, Payload::PingpongMessage(ping));
    let timeout = w.timeout();
    // A connection that has ended cannot answer; the steps after say so.
    let _ = w.take(
        key,
        timeout,
        |p| matches!(p, Payload::PingpongMessage(p) if p.r#type == 2 && p.id == id),
    );
}

fn intention_code(name: &str) -> i32 {
    match name {
        "typing" => 1,
        "recording" => 2,
        _ => 3,
    }
}

fn signals(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let peer = w.eid(a.s(4));
    let ttl = a.opt(5).map_or(0, |_| i32::try_from(a.n(5)).unwrap_or(0));
    let note = AwarenessNotification {
        to: user(peer),
        awareness_intention: intention_code(a.s(3)),
        ttl,
        timestamp: w.now_ms(),
        ..AwarenessNotification::default()
    };
    w.send(&key, Payload::AwarenessNotification(note));
    barrier(w, &key);
}

fn asks(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let id = i64::try_from(w.fresh()).unwrap_or(0) + 1000;
    let about = w.eid(a.s(3));
    w.memory.asked.insert(key.clone(), id);
    let request = AwarenessRequest {
        to: user(about),
        awareness_identifier: id,
        timestamp: w.now_ms(),
        ..AwarenessRequest::default()
    };
    w.send(&key, Payload::AwarenessRequest(request));
}

fn coords(a: &Args, first: usize) -> (f64, f64) {
    let parse = |i: usize| a.opt(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (parse(first), parse(first + 1))
}

/// AWR-13, AWR-14, LOC-1, LOC-4: the AwarenessResponse to the last question.
fn learns(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let about = w.eid(a.s(3));
    let status = status_code(a.s(4));
    let (lat, lon) = coords(a, 5);
    let id = w
        .memory
        .asked
        .get(&key)
        .copied()
        .unwrap_or_else(|| fail(format!("an AwarenessRequest from {key} earlier"), "none"));
    let timeout = w.timeout();
    let payload = w.expect(
        &key,
        "an AwarenessResponse",
        timeout,
        |p| matches!(p, Payload::AwarenessResponse(r) if r.awareness_identifier == id.to_string()),
    );
    let Payload::AwarenessResponse(r) = payload else {
        return;
    };
    let conn = w.conn(&key).clone();
    let identity = w.identity(&conn.user, &conn.device);
    let mut problems = Vec::new();
    if r.status != status {
        problems.push(format!("status {} (want {status})", r.status));
    }
    // The user, never a device: a device would tell which one is online, or a block from other reasons (AWR-14).
    if r.from != user(about.clone()) {
        problems.push(format!("from {:?} (want {{eid: {about}}} and no device)", r.from));
    }
    if r.to.as_ref() != Some(&identity) {
        problems.push(format!("to {:?} (want the asking device)", r.to));
    }
    if r.awareness_intention != 0 {
        problems.push(format!("awareness_intention {}", r.awareness_intention));
    }
    if (status == 2) != (r.last_seen != 0) {
        problems.push(format!("last_seen {} (set with status 2 only)", r.last_seen));
    }
    if status == 2
        && let Some(why) = last_seen_problem(w, &about, r.last_seen)
    {
        problems.push(why);
    }
    if (r.latitude, r.longitude) != (lat, lon) {
        problems.push(format!(
            "latitude/longitude {}, {} (want {lat}, {lon})",
            r.latitude, r.longitude
        ));
    }
    if let Some(why) = stamp(w, "timestamp", r.timestamp) {
        problems.push(why);
    }
    if !problems.is_empty() {
        fail(
            format!("an AwarenessResponse saying {} is {}", a.s(3), a.s(4)),
            problems.join("; "),
        );
    }
    if status == 0 {
        same_as_other_hidden_users(w, &key, r);
    }
}

/// AWR-14: every answer about a user the asker may not see is the same in every field but those that name the
/// user, the question and the time, whatever the reason (private, not a subscriber, blocked, unknown).
fn same_as_other_hidden_users(w: &mut CaseWorld, key: &str, answer: AwarenessResponse) {
    let blank = |r: &AwarenessResponse| AwarenessResponse {
        from: None,
        awareness_identifier: String::new(),
        timestamp: 0,
        ..r.clone()
    };
    let hidden = w.memory.hidden_answers.entry(key.to_string()).or_default();
    if let Some(first) = hidden.first()
        && blank(first) != blank(&answer)
    {
        fail(
            format!(
                "the same answer as for the hidden user before (AWR-14): {:?}",
                blank(first)
            ),
            format!("{:?}", blank(&answer)),
        );
    }
    hidden.push(answer);
}

/// AWR-15: the AwarenessSubscription RESPONSE.
fn subscribes(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let action = if a.s(3) == "subscribes to" { 1 } else { 2 };
    let to = w.eid(a.s(4));
    let request = Payload::AwarenessSubscription(AwarenessSubscription {
        to: user(to.clone()),
        r#type: 1,
        action,
        timestamp: w.now_ms(),
        ..AwarenessSubscription::default()
    });
    let payload = call(
        w,
        &key,
        request,
        "an AwarenessSubscription RESPONSE",
        |p| matches!(p, Payload::AwarenessSubscription(s) if s.r#type == 2),
    );
    let Payload::AwarenessSubscription(s) = payload else {
        return;
    };
    if s.status != 1 || s.action != action || s.to.as_ref().map(|t| t.eid.as_str()) != Some(to.as_str()) {
        fail(
            format!("AwarenessSubscription{{type: 2, status: 1, action: {action}, to}} (AWR-15)"),
            shown(Payload::AwarenessSubscription(s.clone())),
        );
    }
}

fn about(p: &Payload, eid: &str) -> bool {
    match p {
        Payload::AwarenessNotification(n) => n.from.as_ref().is_some_and(|f| f.eid == eid),
        Payload::LocationStream(l) => l.from.as_ref().is_some_and(|f| f.eid == eid),
        Payload::Body(b) => b
            .awareness_list
            .iter()
            .any(|n| n.from.as_ref().is_some_and(|f| f.eid == eid)),
        _ => false,
    }
}

/// AWR-10 (and AWR-12, LOC-1): a notification about `user`'s status.
fn receives_status(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let eid = w.eid(a.s(3));
    let status = status_code(a.s(4));
    let ttl = a.opt(5).map_or(0, |_| i32::try_from(a.n(5)).unwrap_or(0));
    let (lat, lon) = coords(a, 6);
    let timeout = match a.opt(8) {
        Some(n) => duration(w, n, a.s(9)),
        None => w.timeout(),
    };
    let payload = w.expect(
        &key,
        format!("a notification that {} is {}", a.s(3), a.s(4)),
        timeout,
        |p| {
            matches!(p, Payload::AwarenessNotification(n)
            if n.from.as_ref().is_some_and(|f| f.eid == eid) && n.awareness_intention == 0 && n.status == status)
        },
    );
    let Payload::AwarenessNotification(n) = payload else {
        return;
    };
    let conn = w.conn(&key).clone();
    let identity = w.identity(&conn.user, &conn.device);
    let mut problems = Vec::new();
    if n.status != status {
        problems.push(format!("status {} (want {status} {})", n.status, a.s(4)));
    }
    if n.from.as_ref().map(|f| f.connection_resource_id.as_str()) != Some("") {
        problems.push(format!("from {:?} (want the user, no device)", n.from));
    }
    if n.to.as_ref() != Some(&identity) {
        problems.push(format!("to {:?} (want the receiving device)", n.to));
    }
    if (status == 2) != (n.last_seen != 0) {
        problems.push(format!("last_seen {} (set with status 2 only)", n.last_seen));
    }
    if status == 2
        && let Some(why) = last_seen_problem(w, &eid, n.last_seen)
    {
        problems.push(why);
    }
    if n.ttl != ttl {
        problems.push(format!("ttl {} (want {ttl})", n.ttl));
    }
    if (n.latitude, n.longitude) != (lat, lon) {
        problems.push(format!(
            "latitude/longitude {}, {} (want {lat}, {lon})",
            n.latitude, n.longitude
        ));
    }
    if let Some(why) = stamp(w, "timestamp", n.timestamp) {
        problems.push(why);
    }
    if !problems.is_empty() {
        fail(
            format!("a notification that {} is {} (AWR-10)", a.s(3), a.s(4)),
            problems.join("; "),
        );
    }
}

fn nothing_about(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let eid = w.eid(a.s(3));
    w.expect_none(&key, format!("stanza about {}", a.s(3)), move |p| about(p, &eid));
}

/// AWR-7: an intention forwarded to a device.
fn receives_signal(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let sender = w.identity(a.s(3), a.s(5));
    let intention = intention_code(a.s(4));
    let ttl = a.opt(6).map_or(0, |_| i32::try_from(a.n(6)).unwrap_or(0));
    let timeout = w.timeout();
    let payload = w.expect(
        &key,
        format!("{}'s {} signal", a.s(3), a.s(4)),
        timeout,
        |p| matches!(p, Payload::AwarenessNotification(n) if n.awareness_intention != 0),
    );
    let Payload::AwarenessNotification(n) = payload else {
        return;
    };
    let conn = w.conn(&key).clone();
    let identity = w.identity(&conn.user, &conn.device);
    let ok = n.from.as_ref() == Some(&sender)
        && n.to.as_ref() == Some(&identity)
        && n.awareness_intention == intention
        && n.ttl == ttl
        && n.status == 0
        && stamp(w, "timestamp", n.timestamp).is_none();
    if !ok {
        fail(
            format!(
                "AwarenessNotification{{from: {sender:?}, to: {identity:?}, awareness_intention: {intention}, ttl: {ttl}, status: 0, timestamp}} (AWR-7)"
            ),
            shown(Payload::AwarenessNotification(n.clone())),
        );
    }
}

fn shares_location(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let (lat, lon) = coords(a, 3);
    let to = a.opt(5).map(|u| w.eid(u));
    let fix = LocationStream {
        id: format!("fix-{}", w.fresh()),
        to: to.map(|eid| Identity {
            eid,
            connection_resource_id: String::new(),
        }),
        latitude: lat,
        longitude: lon,
        altitude: 34.0,
        timestamp: w.now_ms(),
        ..LocationStream::default()
    };
    w.send(&key, Payload::LocationStream(fix));
    barrier(w, &key);
}

/// LOC-2: a forwarded fix.
fn receives_location(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let sender = w.identity(a.s(3), a.s(6));
    let (lat, lon) = coords(a, 4);
    let timeout = w.timeout();
    let payload = w.expect(&key, format!("{}'s location", a.s(3)), timeout, |p| {
        matches!(p, Payload::LocationStream(_))
    });
    let Payload::LocationStream(l) = payload else {
        return;
    };
    let conn = w.conn(&key).clone();
    let identity = w.identity(&conn.user, &conn.device);
    let ok = l.from.as_ref() == Some(&sender)
        && l.to.as_ref() == Some(&identity)
        && (l.latitude, l.longitude) == (lat, lon)
        && l.altitude == 34.0
        && l.id.starts_with("fix-")
        && l.timestamp != 0;
    if !ok {
        fail(
            format!(
                "LocationStream{{from: {sender:?}, to: {identity:?}, {lat}, {lon}, id, altitude and timestamp as sent}} (LOC-2)"
            ),
            shown(Payload::LocationStream(l.clone())),
        );
    }
}

/// AWR-17, PUSH-4: "alice as online and carol as away".
fn receives_body(w: &mut CaseWorld, a: &Args) {
    let key = w.resolve(&a.conn(1, 2));
    let mut wanted = Vec::new();
    for part in a.s(3).split(" and ") {
        let Some((who, status)) = part.split_once(" as ") else {
            fail("\"USER as STATUS and ...\"", part);
        };
        wanted.push((w.eid(who.trim()), status_code(status.trim())));
    }
    let payload = if a.opt(4).is_some() {
        // The start Body is a SHOULD (AWR-17); when one comes, PUSH-4 holds.
        let quiet = w.quiet();
        match w.take(&key, quiet, |p| matches!(p, Payload::Body(_))) {
            Ok(payload) => payload,
            Err(_) => return,
        }
    } else {
        let timeout = w.timeout();
        w.expect(&key, "a Body", timeout, |p| matches!(p, Payload::Body(_)))
    };
    let Payload::Body(body) = payload else {
        return;
    };
    let conn = w.conn(&key).clone();
    let identity = w.identity(&conn.user, &conn.device);
    let mut listed: Vec<(String, i32)> = Vec::new();
    for n in &body.awareness_list {
        let eid = n.from.as_ref().map(|f| f.eid.clone()).unwrap_or_default();
        if n.to.as_ref() != Some(&identity) {
            fail(
                "every Body entry addressed to the receiving device (PUSH-4)",
                shown(Payload::AwarenessNotification(n.clone())),
            );
        }
        if listed.iter().any(|(e, _)| *e == eid) {
            fail("at most one Body entry per user (PUSH-4)", format!("{eid} twice"));
        }
        listed.push((eid, n.status));
    }
    if let Some(why) = stamp(w, "timestamp", body.timestamp) {
        fail("Body.timestamp = the server's ms (PUSH-4)", why);
    }
    listed.sort();
    wanted.sort();
    if listed != wanted {
        fail(format!("a Body listing {wanted:?} (AWR-17)"), format!("{listed:?}"));
    }
}
