//! Awareness, subscribers, blocking, visibility and location (SPEC §10-14),
//! ending with the privacy matrix: no path shows a user's state or location to
//! someone not allowed to see it.

use super::*;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const CAROL: &str = "carol@example.com";

fn user(eid: &str) -> Option<Identity> {
    Some(Identity {
        eid: eid.into(),
        connection_resource_id: String::new(),
    })
}

fn add_subscriber(subscriber: &str) -> Payload {
    Payload::SubscriberAddRequest(SubscriberAddRequest {
        subscriber: user(subscriber),
        ..Default::default()
    })
}

fn remove_subscriber(subscriber: &str) -> Payload {
    Payload::SubscriberRemove(SubscriberRemove {
        subscriber: user(subscriber),
        r#type: 1,
        ..Default::default()
    })
}

fn block(other: &str, action: i32) -> Payload {
    Payload::BlockSubscriber(BlockSubscriber {
        subscriber: user(other),
        r#type: 1,
        action,
        ..Default::default()
    })
}

fn visibility(visibility: i32, location_sharing: i32) -> Payload {
    Payload::AwarenessVisibility(AwarenessVisibility {
        id: "v1".into(),
        r#type: 1,
        visibility,
        location_sharing,
        ..Default::default()
    })
}

fn presence(status: i32, ttl: i32) -> Payload {
    Payload::AwarenessNotification(AwarenessNotification {
        status,
        ttl,
        ..Default::default()
    })
}

fn intention(peer: &str, kind: i32) -> Payload {
    Payload::AwarenessNotification(AwarenessNotification {
        to: user(peer),
        awareness_intention: kind,
        ttl: 5,
        ..Default::default()
    })
}

fn ask(about: &str, n: i64) -> Payload {
    Payload::AwarenessRequest(AwarenessRequest {
        to: user(about),
        awareness_identifier: n,
        ..Default::default()
    })
}

fn subscribe(to: &str, action: i32) -> Payload {
    Payload::AwarenessSubscription(AwarenessSubscription {
        to: user(to),
        r#type: 1,
        action,
        ..Default::default()
    })
}

fn location(to: &str, latitude: f64, longitude: f64) -> Payload {
    Payload::LocationStream(LocationStream {
        id: "fix".into(),
        to: user(to),
        latitude,
        longitude,
        ..Default::default()
    })
}

/// Awareness notifications about `owner` in what a connection saw.
fn notes_about(seen: &Seen, owner: &str) -> Vec<AwarenessNotification> {
    seen.stanzas
        .iter()
        .filter_map(|p| match p {
            Payload::AwarenessNotification(n) if n.from.as_ref().is_some_and(|f| f.eid == owner) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

impl Harness {
    /// Sends `payload` and returns what came back on the same connection.
    fn call(&mut self, conn: ConnId, payload: Payload) -> Seen {
        self.send(conn, payload);
        self.drain(conn)
    }

    /// What each of `conns` was sent since last read.
    fn seen_by(&mut self, conns: &[ConnId]) -> Vec<Seen> {
        conns.iter().map(|c| self.drain(*c)).collect()
    }

    /// Asks about `owner` and returns the one AwarenessResponse (other stanzas stay unread).
    fn response_about(&mut self, conn: ConnId, owner: &str) -> AwarenessResponse {
        let seen = self.call(conn, ask(owner, 7));
        let responses: Vec<_> = seen
            .stanzas
            .iter()
            .filter_map(|p| match p {
                Payload::AwarenessResponse(r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        match &responses[..] {
            [r] => r.clone(),
            other => panic!("expected one AwarenessResponse, got {other:?}"),
        }
    }
}

/// AWR-1, AWR-2, AWR-10: a subscriber hears the owner come online and go offline with last_seen.
#[test]
fn subscribers_hear_online_and_offline() {
    let mut h = Harness::new(Config::default());
    let bob = h.ws(BOB, "phone");
    let alice = h.ws(ALICE, "phone");
    h.call(alice, add_subscriber(BOB));
    let added = notes_about(&h.drain(bob), ALICE);
    assert_eq!(
        added.iter().map(|n| n.status).collect::<Vec<_>>(),
        [1],
        "AWR-11 on being added"
    );
    h.now += 5;
    h.engine.closed(alice, h.now);
    let notes = notes_about(&h.drain(bob), ALICE);
    assert_eq!(notes.len(), 1);
    assert_eq!(
        (notes[0].status, notes[0].last_seen, notes[0].timestamp),
        (2, h.now, h.now)
    );
    assert_eq!(
        (notes[0].from.clone(), notes[0].to.clone()),
        (user(ALICE), me(BOB, "phone"))
    );
    assert_eq!(h.response_about(bob, ALICE).last_seen, h.now);
    h.now += 1;
    h.ws(ALICE, "laptop");
    let notes = notes_about(&h.drain(bob), ALICE);
    assert_eq!(
        notes.iter().map(|n| (n.status, n.last_seen)).collect::<Vec<_>>(),
        [(1, 0)]
    );
}

/// SES-2: a device replacing its own session causes no awareness notification.
#[test]
fn replacement_does_not_flap() {
    let mut h = Harness::new(Config::default());
    let bob = h.ws(BOB, "phone");
    let alice = h.ws(ALICE, "phone");
    h.call(alice, add_subscriber(BOB));
    h.drain_all();
    h.ws(ALICE, "phone");
    let seen = h.seen_by(&[bob]);
    assert!(notes_about(&seen[0], ALICE).is_empty(), "{seen:?}");
}

/// AWR-3, AWR-5, AWR-6: user-set status reaches watchers and the user's other devices, lapses after ttl.
#[test]
fn user_set_status_and_its_ttl() {
    let mut h = Harness::new(Config {
        ping_interval_ms: 3_600_000,
        ..Config::default()
    });
    let bob = h.ws(BOB, "phone");
    let alice_phone = h.ws(ALICE, "phone");
    let alice_laptop = h.ws(ALICE, "laptop");
    h.call(alice_phone, add_subscriber(BOB));
    h.drain_all();
    h.send(alice_phone, presence(3, 60));
    let seen = h.seen_by(&[bob, alice_phone, alice_laptop]);
    let to_bob = notes_about(&seen[0], ALICE);
    assert_eq!((to_bob.len(), to_bob[0].status, to_bob[0].ttl), (1, 3, 60));
    assert!(
        seen[1].stanzas.is_empty(),
        "AWR-3: no answer; AWR-6: not to the device that set it"
    );
    assert_eq!(notes_about(&seen[2], ALICE).len(), 1, "AWR-6: the user's other device");
    h.send(alice_laptop, presence(3, 60));
    assert!(h.seen_by(&[bob])[0].stanzas.is_empty(), "same status: nothing");
    h.advance_to(h.now + 59_999);
    assert!(h.seen_by(&[bob])[0].stanzas.is_empty());
    h.advance_to(h.now + 1);
    let seen = h.seen_by(&[bob]);
    let lapse = notes_about(&seen[0], ALICE);
    assert_eq!(
        (lapse.len(), lapse[0].status),
        (1, 1),
        "AWR-5: the ttl (restarted at the repeat) lapsed"
    );
}

/// AWR-4, AWR-18: malformed awareness notifications and the awareness rate limit.
#[test]
fn awareness_notification_rules() {
    let mut h = Harness::new(Config::default());
    let alice = h.ws(ALICE, "phone");
    let bad = [
        presence(2, 0),
        presence(0, 0),
        presence(3, -1),
        Payload::AwarenessNotification(AwarenessNotification {
            status: 3,
            awareness_intention: 1,
            ..Default::default()
        }),
        intention(ALICE, 1),
        intention("not-an-eid", 1),
        intention(BOB, 4),
    ];
    for payload in bad {
        assert_eq!(
            h.call(alice, payload.clone()).errors(),
            [(400, "invalid_field".into())],
            "{payload:?}"
        );
    }
    for status in [3, 4, 5, 1, 3] {
        assert!(h.call(alice, presence(status, 0)).errors().is_empty());
    }
    assert_eq!(h.call(alice, presence(4, 0)).errors(), [(429, "rate_limited".into())]);
    h.now += 200;
    assert!(
        h.call(alice, presence(4, 0)).errors().is_empty(),
        "one token per 200 ms"
    );
}

/// AWR-7, AWR-8: intentions reach every device of the peer, and vanish silently across a block.
#[test]
fn intentions() {
    let mut h = Harness::new(Config::default());
    let alice = h.ws(ALICE, "phone");
    let bob_phone = h.ws(BOB, "phone");
    let bob_laptop = h.ws(BOB, "laptop");
    h.send(alice, intention(BOB, 1));
    let seen = h.seen_by(&[alice, bob_phone, bob_laptop]);
    assert!(seen[0].stanzas.is_empty());
    for (device, seen) in [("phone", &seen[1]), ("laptop", &seen[2])] {
        let [Payload::AwarenessNotification(n)] = &seen.stanzas[..] else {
            panic!("{seen:?}")
        };
        assert_eq!((n.awareness_intention, n.ttl, n.status), (1, 5, 0));
        assert_eq!((n.from.clone(), n.to.clone()), (me(ALICE, "phone"), me(BOB, device)));
    }
    h.call(bob_phone, block(ALICE, 1));
    h.drain_all();
    h.send(alice, intention(BOB, 2));
    h.send(bob_laptop, intention(ALICE, 2));
    let seen = h.seen_by(&[alice, bob_phone, bob_laptop]);
    assert!(seen.iter().all(|s| s.stanzas.is_empty()), "{seen:?}");
}

/// AWR-11, AWR-12, VIS-1, VIS-2: tightening visibility tells watchers UNAVAILABLE once; loosening restores.
#[test]
fn visibility_changes_tell_watchers() {
    let mut h = Harness::new(Config::default());
    let bob = h.ws(BOB, "phone");
    let alice = h.ws(ALICE, "phone");
    h.call(alice, add_subscriber(BOB));
    h.drain_all();
    let seen = h.call(alice, visibility(3, 0));
    let [Payload::AwarenessVisibility(v)] = &seen.stanzas[..] else {
        panic!("{seen:?}")
    };
    assert_eq!(
        (v.r#type, v.status, v.visibility, v.location_sharing, v.id.as_str()),
        (2, 1, 3, 2, "v1")
    );
    let notes = notes_about(&h.seen_by(&[bob])[0], ALICE);
    assert_eq!(notes.len(), 1);
    assert_eq!((notes[0].status, notes[0].last_seen, notes[0].latitude), (0, 0, 0.0));
    h.send(alice, presence(4, 0));
    assert!(
        notes_about(&h.seen_by(&[bob])[0], ALICE).is_empty(),
        "nothing while hidden"
    );
    h.call(alice, visibility(2, 0));
    let notes = notes_about(&h.seen_by(&[bob])[0], ALICE);
    assert_eq!(
        (notes.len(), notes[0].status),
        (1, 4),
        "AWR-11: current state on regaining sight"
    );
}

/// VIS-3, VIS-4: defaults, and out-of-range values change nothing.
#[test]
fn visibility_defaults_and_range() {
    let mut h = Harness::new(Config::default());
    let alice = h.ws(ALICE, "phone");
    let seen = h.call(alice, visibility(0, 0));
    assert!(
        matches!(&seen.stanzas[..], [Payload::AwarenessVisibility(v)] if (v.visibility, v.location_sharing) == (2, 2))
    );
    for (v, l) in [(4, 0), (-1, 0), (0, 3)] {
        assert_eq!(
            h.call(alice, visibility(v, l)).errors(),
            [(400, "invalid_field".into())]
        );
    }
    let seen = h.call(alice, visibility(0, 1));
    assert!(
        matches!(&seen.stanzas[..], [Payload::AwarenessVisibility(v)] if (v.visibility, v.location_sharing) == (2, 1))
    );
}

/// SUB-2, SUB-3, SUB-4, SUB-6, SUB-7.
#[test]
fn subscriber_add_and_remove() {
    let mut h = Harness::new(Config::default());
    let alice = h.ws(ALICE, "phone");
    let bob = h.ws(BOB, "phone");
    let seen = h.call(alice, add_subscriber(BOB));
    let [Payload::SubscriberAddResponse(first)] = &seen.stanzas[..] else {
        panic!("{seen:?}")
    };
    assert_eq!((first.status, first.message.as_str()), (1, "subscriber added"));
    assert!(!first.subscriber_resource_id.is_empty());
    assert_eq!(first.owner, user(ALICE));
    let notes = notes_about(&h.seen_by(&[bob])[0], ALICE);
    assert_eq!(
        (notes.len(), notes[0].status),
        (1, 1),
        "AWR-11: the new subscriber learns the state"
    );
    let seen = h.call(alice, add_subscriber(BOB));
    let [Payload::SubscriberAddResponse(again)] = &seen.stanzas[..] else {
        panic!("{seen:?}")
    };
    assert_eq!(again.subscriber_resource_id, first.subscriber_resource_id);
    for bad in [
        add_subscriber(ALICE),
        add_subscriber("nobody"),
        remove_subscriber(ALICE),
    ] {
        assert_eq!(h.call(alice, bad).errors(), [(400, "invalid_field".into())]);
    }
    let long = Payload::SubscriberAddRequest(SubscriberAddRequest {
        subscriber: user(BOB),
        nickname: "n".repeat(129),
        ..Default::default()
    });
    assert_eq!(h.call(alice, long).errors(), [(400, "invalid_field".into())]);
    let seen = h.call(alice, remove_subscriber(BOB));
    assert!(matches!(&seen.stanzas[..], [Payload::SubscriberRemove(r)] if r.status == 1 && r.r#type == 2));
    let notes = notes_about(&h.seen_by(&[bob])[0], ALICE);
    assert_eq!((notes.len(), notes[0].status), (1, 0), "SUB-7");
    assert_eq!(h.response_about(bob, ALICE).status, 0);
    let seen = h.call(alice, remove_subscriber(BOB));
    assert!(
        matches!(&seen.stanzas[..], [Payload::SubscriberRemove(r)] if r.status == 1),
        "idempotent"
    );
}

/// BLK-1, BLK-2, BLK-5, BLK-6: a block hides both ways and is never announced.
#[test]
fn blocking() {
    let mut h = Harness::new(Config::default());
    let alice = h.ws(ALICE, "phone");
    let bob = h.ws(BOB, "phone");
    h.call(alice, add_subscriber(BOB));
    h.call(bob, add_subscriber(ALICE));
    h.drain_all();
    let to_alice = h.call(alice, block(BOB, 0));
    let Some(Payload::BlockSubscriber(b)) = to_alice.stanzas.first() else {
        panic!("{to_alice:?}")
    };
    assert_eq!((b.r#type, b.status, b.action), (2, 1, 1));
    assert_eq!(
        notes_about(&to_alice, BOB).iter().map(|n| n.status).collect::<Vec<_>>(),
        [0],
        "hidden both ways"
    );
    let seen = h.seen_by(&[bob]);
    let to_bob = notes_about(&seen[0], ALICE);
    assert_eq!((to_bob.len(), to_bob[0].status), (1, 0));
    assert!(
        seen[0]
            .stanzas
            .iter()
            .all(|p| !matches!(p, Payload::BlockSubscriber(_))),
        "BLK-6"
    );
    assert_eq!(h.response_about(bob, ALICE).status, 0);
    assert_eq!(h.response_about(alice, BOB).status, 0);
    assert_eq!(
        h.call(alice, block(BOB, 1)).errors(),
        Vec::<(i32, String)>::new(),
        "idempotent"
    );
    for bad in [block(ALICE, 1), block("x", 1), block(BOB, 3)] {
        assert_eq!(h.call(alice, bad).errors(), [(400, "invalid_field".into())]);
    }
    h.drain_all();
    h.call(alice, block(BOB, 2));
    let seen = h.seen_by(&[bob]);
    assert_eq!(
        notes_about(&seen[0], ALICE)
            .iter()
            .map(|n| n.status)
            .collect::<Vec<_>>(),
        [1],
        "unblocked: state again"
    );
}

/// AWR-13, AWR-15, AWR-16: requests and live subscriptions.
#[test]
fn requests_and_subscriptions() {
    let mut h = Harness::new(Config::default());
    let alice = h.ws(ALICE, "phone");
    let carol = h.ws(CAROL, "phone");
    h.call(alice, visibility(1, 0));
    let r = h.response_about(carol, ALICE);
    assert_eq!(
        (r.status, r.awareness_identifier.as_str(), r.from.clone(), r.to.clone()),
        (1, "7", user(ALICE), me(CAROL, "phone"))
    );
    assert_eq!(h.call(carol, ask("nope", 1)).errors(), [(400, "invalid_field".into())]);
    let seen = h.call(carol, subscribe(ALICE, 1));
    let [Payload::AwarenessSubscription(s), Payload::AwarenessNotification(n)] = &seen.stanzas[..] else {
        panic!("{seen:?}")
    };
    assert_eq!((s.r#type, s.status, s.action), (2, 1, 1));
    assert_eq!(n.status, 1);
    h.send(alice, presence(5, 0));
    assert_eq!(
        notes_about(&h.seen_by(&[carol])[0], ALICE)
            .iter()
            .map(|n| n.status)
            .collect::<Vec<_>>(),
        [5]
    );
    h.call(carol, subscribe(ALICE, 2));
    h.send(alice, presence(1, 0));
    assert!(
        notes_about(&h.seen_by(&[carol])[0], ALICE).is_empty(),
        "AWR-16: unsubscribed"
    );
    h.call(alice, visibility(3, 0));
    let seen = h.call(carol, subscribe(ALICE, 1));
    assert!(
        matches!(&seen.stanzas[..], [Payload::AwarenessSubscription(s)] if s.status == 1),
        "AWR-15: no leak: {seen:?}"
    );
    assert_eq!(
        h.call(carol, subscribe(ALICE, 3)).errors(),
        [(400, "invalid_field".into())]
    );
}

/// AWR-17: a new session learns, in one Body, the state of every user it follows and may see.
#[test]
fn start_body() {
    let mut h = Harness::new(Config::default());
    let alice = h.ws(ALICE, "phone");
    let carol = h.ws(CAROL, "phone");
    h.call(alice, add_subscriber(BOB));
    h.call(carol, add_subscriber(BOB));
    h.call(carol, visibility(3, 0));
    h.drain_all();
    let token = h.token_for(BOB, "phone", 600);
    let bob = h.conn();
    h.engine.open(bob, Transport::WebSocket, Some(&token), h.now).unwrap();
    let seen = h.drain(bob);
    let [Payload::Authenticate(_), Payload::Body(body)] = &seen.stanzas[..] else {
        panic!("{seen:?}")
    };
    let listed: Vec<_> = body
        .awareness_list
        .iter()
        .map(|n| (n.from.clone().unwrap().eid, n.status))
        .collect();
    assert_eq!(listed, [(ALICE.to_string(), 1)], "carol is private");
}

/// LOC-1..6: location goes only to allowed subscribers, lives in memory, and needs sharing on.
#[test]
fn location_sharing() {
    let mut h = Harness::new(Config::default());
    let alice = h.ws(ALICE, "phone");
    let bob = h.ws(BOB, "phone");
    let carol = h.ws(CAROL, "phone");
    h.call(alice, add_subscriber(BOB));
    h.call(alice, visibility(1, 0));
    let seen = h.call(alice, location("", 52.5, 13.4));
    assert_eq!(seen.errors(), [(403, "forbidden".into())], "LOC-6");
    h.call(alice, visibility(0, 1));
    h.drain_all();
    for bad in [
        location("", 91.0, 0.0),
        location("", 0.0, -180.5),
        location("", f64::NAN, 0.0),
        location(ALICE, 1.0, 1.0),
    ] {
        assert_eq!(h.call(alice, bad).errors(), [(400, "invalid_field".into())]);
    }
    h.send(alice, location("", 52.5, 13.4));
    h.send(alice, location(CAROL, 52.5, 13.4));
    let seen = h.seen_by(&[alice, bob, carol]);
    assert!(seen[0].stanzas.is_empty(), "no answer to the sender");
    let [Payload::LocationStream(l)] = &seen[1].stanzas[..] else {
        panic!("{:?}", seen[1])
    };
    assert_eq!(
        (l.latitude, l.longitude, l.from.clone(), l.to.clone()),
        (52.5, 13.4, me(ALICE, "phone"), me(BOB, "phone"))
    );
    assert!(
        seen[2].stanzas.is_empty(),
        "LOC-1: carol sees alice (PUBLIC) but is no subscriber"
    );
    let r = h.response_about(bob, ALICE);
    assert_eq!((r.latitude, r.longitude), (52.5, 13.4), "LOC-4");
    let r = h.response_about(carol, ALICE);
    assert_eq!((r.status, r.latitude, r.longitude), (1, 0.0, 0.0));
    h.engine.closed(alice, h.now);
    h.drain_all();
    let alice = h.ws(ALICE, "phone");
    let _ = alice;
    let r = h.response_about(bob, ALICE);
    assert_eq!(
        (r.latitude, r.longitude),
        (0.0, 0.0),
        "LOC-4: the fix went with the session"
    );
}

/// The privacy matrix (issue 5): visibility x relationship x block x location sharing.
/// Every path that can carry alice's state or location to viewer v (AwarenessRequest,
/// watcher notifications, live subscription, LocationStream to v and to all, the
/// start Body) carries it exactly when SPEC allows, and UNAVAILABLE with zero
/// coordinates otherwise.
#[test]
fn privacy_matrix() {
    let mut cases = 0;
    for vis in [1, 2, 3] {
        for is_subscriber in [false, true] {
            for blocker in [None, Some(ALICE), Some("v@example.com")] {
                for sharing in [1, 2] {
                    check_privacy_case(vis, is_subscriber, blocker, sharing);
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 36);
}

fn check_privacy_case(vis: i32, is_subscriber: bool, blocker: Option<&str>, sharing: i32) {
    const V: &str = "v@example.com";
    let case = format!("visibility {vis}, subscriber {is_subscriber}, blocker {blocker:?}, sharing {sharing}");
    let mut h = Harness::new(Config::default());
    let alice = h.ws(ALICE, "phone");
    if is_subscriber {
        h.call(alice, add_subscriber(V));
    }
    h.call(alice, visibility(vis, sharing));
    let v = h.ws(V, "phone");
    match blocker {
        Some(ALICE) => {
            h.call(alice, block(V, 1));
        }
        Some(_) => {
            h.call(v, block(ALICE, 1));
        }
        None => {}
    }
    h.call(v, subscribe(ALICE, 1));
    h.drain_all();
    let sees = blocker.is_none() && (vis == 1 || (vis == 2 && is_subscriber));
    let sees_location = sees && is_subscriber && sharing == 1;

    // Alice moves and changes status; v asks; v reconnects (Body).
    if sharing == 1 {
        h.send(alice, location("", 10.5, 20.5));
        h.send(alice, location(V, 10.5, 20.5));
    }
    h.send(alice, presence(4, 0));
    let live = h.seen_by(&[v]).remove(0);
    let asked = h.response_about(v, ALICE);
    h.engine.closed(v, h.now);
    let token = h.token_for(V, "phone", 600);
    let again = h.conn();
    h.engine.open(again, Transport::WebSocket, Some(&token), h.now).unwrap();
    let restart = h.drain(again);

    let locations = live
        .stanzas
        .iter()
        .filter(|p| matches!(p, Payload::LocationStream(_)))
        .count();
    assert_eq!(locations, if sees_location { 2 } else { 0 }, "LocationStreams: {case}");
    let statuses: Vec<i32> = notes_about(&live, ALICE).iter().map(|n| n.status).collect();
    assert_eq!(statuses, if sees { vec![4] } else { vec![] }, "notifications: {case}");
    let expected_location = if sees_location { (10.5, 20.5) } else { (0.0, 0.0) };
    assert_eq!(
        (asked.status, (asked.latitude, asked.longitude)),
        (if sees { 4 } else { 0 }, expected_location),
        "response: {case}"
    );
    let in_body: Vec<(i32, f64)> = restart
        .stanzas
        .iter()
        .flat_map(|p| match p {
            Payload::Body(b) => b.awareness_list.clone(),
            _ => vec![],
        })
        .map(|n| (n.status, n.latitude))
        .collect();
    let expected_body = if sees && is_subscriber {
        vec![(4, expected_location.0)]
    } else {
        vec![]
    };
    assert_eq!(in_body, expected_body, "body: {case}");
    for payload in live.stanzas.iter().chain(&restart.stanzas) {
        if let Payload::AwarenessNotification(n) = payload
            && !sees
        {
            assert_eq!(
                (n.status, n.latitude, n.longitude, n.last_seen),
                (0, 0.0, 0.0, 0),
                "leak: {case}"
            );
        }
    }
}

/// SUB-5: adding a subscriber across a block succeeds, and the block still decides.
#[test]
fn adding_across_a_block() {
    let mut h = Harness::new(Config::default());
    let alice = h.ws(ALICE, "phone");
    let bob = h.ws(BOB, "phone");
    h.call(bob, block(ALICE, 1));
    let seen = h.call(alice, add_subscriber(BOB));
    assert!(
        matches!(&seen.stanzas[..], [Payload::SubscriberAddResponse(r)] if r.status == 1),
        "{seen:?}"
    );
    assert_eq!(h.response_about(bob, ALICE).status, 0, "the blocked pair stays hidden");
    h.call(bob, block(ALICE, 2));
    assert_eq!(
        h.response_about(bob, ALICE).status,
        1,
        "the relationship holds once the block is lifted"
    );
}

/// PUSH-1: PushNotification and Body are server-only: 405 from a client.
#[test]
fn clients_may_not_send_push_or_body() {
    let mut h = Harness::new(Config::default());
    let alice = h.ws(ALICE, "phone");
    for payload in [
        Payload::PushNotification(PushNotification::default()),
        Payload::Body(Body::default()),
    ] {
        assert_eq!(h.call(alice, payload).errors(), [(405, "not_allowed".into())]);
    }
}
