//! Invariant checkers over an observed history. Each reads only what devices
//! saw and what the runner did, never the server's internals, so they judge
//! any server the simulation can drive. Safety properties are checked on
//! every prefix (a violation names the entry that shows it); end-state
//! properties (delivery, no version gaps, presence convergence) only on a
//! history that reached its `end` phase.

use std::collections::{BTreeMap, BTreeSet};

use super::history::{Entry, What};
use super::runner::{BASE_MS, CHECK_ID_BASE, parse_device};
use super::workload::{eid, user_of};
use crate::core::Millis;
use crate::proto::message_scheme::Payload;
use crate::proto::{ErrorMessage, LocationStream, PingPong};

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The checker's name (see [`INVARIANTS`]).
    pub invariant: &'static str,
    /// The history entry that shows it; `None` for an end-state property.
    pub index: Option<usize>,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "[{}] at entry {i}: {}", self.invariant, self.detail),
            None => write!(f, "[{}] at the end: {}", self.invariant, self.detail),
        }
    }
}

/// Every checker's name.
pub const INVARIANTS: &[&str] = &[
    "no_panic",
    "recipient",
    "exactly_once",
    "chat_order",
    "version_unique",
    "versions_grow",
    "ack_forward",
    "answered",
    "answer_order",
    "revoked_session",
    "expired_session",
    "spoof_refused",
    "canonical",
    "blocked",
    "visibility",
    "awareness_identity",
    "location_integrity",
    "location_audience",
    "location_live",
    "location_answer",
    "delivery",
    "version_gaps",
    "heal",
    "presence",
];

/// How long a request may wait for its answer on an undisturbed connection.
const ANSWER_MS: u64 = 3_000;
/// Tolerance between the server's clock and simulated time at window edges.
const EDGE_MS: Millis = 20;

fn server_ms(at: u64) -> Millis {
    BASE_MS + i64::try_from(at).unwrap_or(0)
}

/// A social request from a user's device 0, and its answer.
#[derive(Clone, Debug)]
struct SocialChange {
    sent_at: Millis,
    /// When the answer arrived (server ms); `None` = never: uncertain from `sent_at` on.
    confirmed_at: Option<Millis>,
    change: Change,
}

#[derive(Clone, Debug, PartialEq)]
enum Change {
    /// AwarenessVisibility: (visibility, location_sharing), 0 = unchanged (VIS-2).
    Settings(i32, i32),
    Subscriber(usize, bool),
    Block(usize, bool),
}

/// Every user's social changes, from device 0's requests and answers.
#[derive(Debug, Default)]
struct Social {
    changes: BTreeMap<usize, Vec<SocialChange>>,
}

impl Social {
    fn build(entries: &[Entry]) -> Social {
        let mut social = Social::default();
        for entry in entries {
            let Some((u, 0)) = parse_device(&entry.who) else {
                continue;
            };
            let at = server_ms(entry.at);
            let list = social.changes.entry(u).or_default();
            match &entry.what {
                What::Sent(payload) => {
                    let change = match payload {
                        // Every request, even one that changes nothing: answers are matched in order.
                        Payload::AwarenessVisibility(r) => Change::Settings(r.visibility, r.location_sharing),
                        Payload::SubscriberAddRequest(r) => Change::Subscriber(subject(r.subscriber.as_ref()), true),
                        Payload::SubscriberRemove(r) => Change::Subscriber(subject(r.subscriber.as_ref()), false),
                        Payload::BlockSubscriber(r) => Change::Block(subject(r.subscriber.as_ref()), r.action != 2),
                        _ => continue,
                    };
                    list.push(SocialChange {
                        sent_at: at,
                        confirmed_at: None,
                        change,
                    });
                }
                What::Received(payload) => {
                    let answered = match payload {
                        Payload::AwarenessVisibility(r) if r.r#type == 2 => {
                            |c: &Change| matches!(c, Change::Settings(..))
                        }
                        Payload::SubscriberAddResponse(_) | Payload::SubscriberRemove(_) => {
                            |c: &Change| matches!(c, Change::Subscriber(..))
                        }
                        Payload::BlockSubscriber(r) if r.r#type == 2 => |c: &Change| matches!(c, Change::Block(..)),
                        _ => continue,
                    };
                    // Answers come in request order on one connection.
                    if let Some(c) = list
                        .iter_mut()
                        .find(|c| c.confirmed_at.is_none() && answered(&c.change))
                    {
                        c.confirmed_at = Some(at);
                    }
                }
                What::Connect { .. } => {
                    // Requests of an earlier connection never answered stay uncertain.
                }
                _ => {}
            }
        }
        social
    }

    /// User `u`'s settings at `t`, or `None` when a change was in flight.
    fn state_at(&self, u: usize, t: Millis) -> Option<State> {
        let mut state = State {
            visibility: 2,
            sharing: 2,
            ..State::default()
        };
        for c in self.changes.get(&u).into_iter().flatten() {
            match c.confirmed_at {
                None if c.sent_at - EDGE_MS <= t => return None,
                Some(done) if c.sent_at - EDGE_MS <= t && t <= done + EDGE_MS => return None,
                Some(done) if done < t => match c.change {
                    Change::Settings(visibility, sharing) => {
                        if visibility != 0 {
                            state.visibility = visibility;
                        }
                        if sharing != 0 {
                            state.sharing = sharing;
                        }
                    }
                    Change::Subscriber(v, true) => {
                        state.subs.insert(v);
                    }
                    Change::Subscriber(v, false) => {
                        state.subs.remove(&v);
                    }
                    Change::Block(v, true) => {
                        state.blocks.insert(v);
                    }
                    Change::Block(v, false) => {
                        state.blocks.remove(&v);
                    }
                },
                _ => {}
            }
        }
        Some(state)
    }

    /// Whether no change of `users` was in flight at any time of `from..=to`:
    /// their settings then held still over the whole span.
    fn still(&self, users: &[usize], from: Millis, to: Millis) -> bool {
        users.iter().all(|u| {
            self.changes.get(u).into_iter().flatten().all(|c| {
                let start = c.sent_at - EDGE_MS;
                match c.confirmed_at {
                    None => to < start,
                    Some(done) => to < start || done + EDGE_MS < from,
                }
            })
        })
    }

    /// Whether either user blocks the other at `t`, when known.
    fn blocked_pair(&self, a: usize, b: usize, t: Millis) -> Option<bool> {
        let a_blocks = self.state_at(a, t)?.blocks;
        let b_blocks = self.state_at(b, t)?.blocks;
        Some(a_blocks.contains(&b) || b_blocks.contains(&a))
    }

    /// AWR-9: may `viewer` see `owner` at `t`, when known.
    fn may_see(&self, viewer: usize, owner: usize, t: Millis) -> Option<bool> {
        if self.blocked_pair(viewer, owner, t)? {
            return Some(false);
        }
        let state = self.state_at(owner, t)?;
        Some(state.visibility == 1 || (state.visibility == 2 && state.subs.contains(&viewer)))
    }

    /// LOC-1: may `viewer` see `owner`'s location at `t`, when known.
    fn may_see_location(&self, viewer: usize, owner: usize, t: Millis) -> Option<bool> {
        let sees = self.may_see(viewer, owner, t)?;
        let state = self.state_at(owner, t)?;
        Some(viewer != owner && sees && state.subs.contains(&viewer) && state.sharing == 1)
    }

    /// A's location sharing at `t` (1 ON, 2 OFF), when known.
    fn sharing(&self, owner: usize, t: Millis) -> Option<i32> {
        Some(self.state_at(owner, t)?.sharing)
    }
}

/// One user's social settings at a time (see [`Social::state_at`]).
#[derive(Debug, Default)]
struct State {
    visibility: i32,
    sharing: i32,
    subs: BTreeSet<usize>,
    blocks: BTreeSet<usize>,
}

/// Whether an identity field a device filled names someone else (ENV-11).
/// The identity is this device's.
fn names_me(identity: Option<&crate::proto::Identity>, eid: &str, device: &str) -> bool {
    identity.is_some_and(|i| i.eid == eid && i.connection_resource_id == device)
}

fn names_other(identity: Option<&crate::proto::Identity>, eid: &str, device: &str) -> bool {
    identity.is_some_and(|i| {
        (!i.eid.is_empty() && i.eid != eid)
            || (!i.connection_resource_id.is_empty() && i.connection_resource_id != device)
    })
}

fn subject(identity: Option<&crate::proto::Identity>) -> usize {
    identity.and_then(|i| user_of(&i.eid)).unwrap_or(usize::MAX)
}

/// A request waiting for its answer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pending {
    Text(String),
    Ping(String),
    Ack(String),
    /// The session of this jti was reported ended by a revocation (TOK-4,
    /// TOK-7): its connection must close.
    Revoked(String),
}

#[derive(Default)]
struct DeviceView {
    jti: Option<String>,
    online: bool,
    /// message_id -> what it held, for dedupe.
    messages: BTreeMap<String, (i64, String, String)>,
    /// chat -> highest version first seen.
    chat_top: BTreeMap<String, i64>,
    /// message_id -> (statuses seen, highest).
    acks: BTreeMap<String, (BTreeSet<i32>, i32)>,
    /// message_id -> statuses of this device's AcknowledgmentRequests not yet confirmed, in order.
    asked: BTreeMap<String, std::collections::VecDeque<i32>>,
    pending: BTreeMap<Pending, u64>,
    /// (local id) -> text, of the TextPayloadRequests it sent.
    texts: BTreeMap<String, String>,
    /// (local id) -> how often it was sent: an answer to a resend carries
    /// the resend's time (CHAT-14 names only the original ids), not the
    /// acceptance time.
    text_sends: BTreeMap<String, usize>,
    sessions: usize,
    session_in_heal: bool,
    /// The current dial used an expired token.
    dialed_expired: bool,
    /// Index of the current dial's Connect entry.
    connected_at: usize,
    /// When the current dial began (the Connect entry's time).
    dialed_at: u64,
    /// Ids of the pings sent on this connection -> the indexes of their
    /// sends, unanswered (ENV-14: answers come in order).
    answerable: BTreeMap<String, std::collections::VecDeque<usize>>,
    /// The requests of this connection that each get one answer (pings, chat messages, acknowledgments), in
    /// the order sent, not yet answered: (index of the send, the id the answer names).
    in_order: std::collections::VecDeque<(usize, String)>,
    /// LocationStreams sent on this connection whose handling time is not
    /// bounded yet: (index of the send, id).
    loc_open: Vec<(usize, String)>,
    /// Ping ids and local ids of stanzas that named another identity.
    spoofed: BTreeSet<String>,
    /// Target device -> indexes of this device's revocation requests for it, unanswered.
    revoking: BTreeMap<String, std::collections::VecDeque<usize>>,
}

/// A LocationStream a device sent (SPEC §14).
struct LocSent {
    at: u64,
    user: usize,
    fix: LocationStream,
    /// LOC-5: coordinates in range and finite, `to` empty or another user.
    valid: bool,
    /// An upper bound on when the server handled it: the time (and entry) of
    /// an answer on the same connection that comes after its own (ENV-14).
    handled_by: Option<(u64, usize)>,
}

fn valid_fix(fix: &LocationStream, me: &str) -> bool {
    let peer = fix.to.as_ref().map(|t| t.eid.as_str()).unwrap_or_default();
    fix.latitude.is_finite()
        && fix.longitude.is_finite()
        && fix.altitude.is_finite()
        && (-90.0..=90.0).contains(&fix.latitude)
        && (-180.0..=180.0).contains(&fix.longitude)
        && (peer.is_empty() || (crate::core::auth::valid_eid(peer) && peer != me))
}

/// LOC-1 and LOC-4 in an awareness stanza about `owner` that viewer `u`
/// received: nonzero coordinates only for a viewer that may see the owner's
/// location (location_audience), and only a fix the owner sent (location_integrity).
/// The location an awareness stanza carries: (whose, latitude, longitude, when).
fn location_of(payload: &Payload) -> Option<(Option<&crate::proto::Identity>, f64, f64, Millis)> {
    match payload {
        Payload::AwarenessNotification(n) => Some((n.from.as_ref(), n.latitude, n.longitude, n.timestamp)),
        Payload::AwarenessResponse(r) => Some((r.from.as_ref(), r.latitude, r.longitude, r.timestamp)),
        _ => None,
    }
}

fn location_leak(
    social: &Social,
    fixes: &BTreeMap<usize, BTreeSet<(u64, u64)>>,
    u: usize,
    owner: Option<&crate::proto::Identity>,
    latitude: f64,
    longitude: f64,
    t: Millis,
) -> Option<(&'static str, String)> {
    let a = owner.and_then(|f| user_of(&f.eid)).filter(|a| *a != u)?;
    if latitude == 0.0 && longitude == 0.0 {
        return None;
    }
    if social.may_see_location(u, a, t) == Some(false) {
        return Some((
            "location_audience",
            format!(
                "location {latitude}, {longitude} of {} at {t} but may not see it (LOC-1)",
                eid(a)
            ),
        ));
    }
    let bits = (latitude.to_bits(), longitude.to_bits());
    (!fixes.get(&a).is_some_and(|f| f.contains(&bits))).then(|| {
        (
            "location_integrity",
            format!(
                "location {latitude}, {longitude} of {} was never sent by it (LOC-4)",
                eid(a)
            ),
        )
    })
}

/// chat -> message_id -> (acceptance time, version), as devices saw them.
type Accepted = BTreeMap<String, BTreeMap<String, (Millis, i64)>>;

/// versions_grow: records one message's acceptance and says what it
/// contradicts, if anything: a later acceptance in one chat has a higher version.
fn grow(accepted: &mut Accepted, chat: &str, message_id: &str, t: Millis, version: i64) -> Option<String> {
    let list = accepted.entry(chat.to_string()).or_default();
    if list.contains_key(message_id) {
        return None;
    }
    let clash = list
        .values()
        .find(|(t0, v0)| (*t0 < t && *v0 >= version) || (*t0 > t && *v0 <= version))
        .map(|(t0, v0)| format!("{chat}: version {version} accepted at {t} against version {v0} at {t0}"));
    list.insert(message_id.to_string(), (t, version));
    clash
}

/// Checks every invariant on `entries`; see the module docs.
pub fn check(entries: &[Entry]) -> Vec<Violation> {
    let mut out = Vec::new();
    let social = Social::build(entries);
    let mut devices: BTreeMap<String, DeviceView> = BTreeMap::new();
    let mut revoked: BTreeMap<String, usize> = BTreeMap::new();
    let mut connect_after_revoke: BTreeMap<String, String> = BTreeMap::new();
    // (chat, version) -> (sender eid, sender device, local, text)
    let mut versions: BTreeMap<(String, i64), (String, String, String, String)> = BTreeMap::new();
    // chat -> message_id -> (acceptance time, version)
    let mut accepted: Accepted = BTreeMap::new();
    // message_id -> (sender eid, sender device, chat, version)
    let mut confirmed: BTreeMap<String, (String, String, String, i64)> = BTreeMap::new();
    let mut phase = String::new();
    let mut ended = false;
    // Devices whose link has a fault now, and whether the server is down:
    // their requests are not expected to be answered in time.
    let mut disturbed: BTreeSet<String> = BTreeSet::new();
    let mut broken: BTreeSet<String> = BTreeSet::new();
    let mut server_down = false;
    let mut check_answers: BTreeMap<(usize, usize), (usize, i32, Millis)> = BTreeMap::new();
    // (sending device, id) -> the LocationStream it sent.
    let mut loc_sent: BTreeMap<(String, String), LocSent> = BTreeMap::new();
    // LocationStreams received: (entry, receiving device, its dial time, (sending device, id)).
    let mut loc_received: Vec<(usize, String, u64, (String, String))> = Vec::new();
    // user -> the (latitude, longitude) bits of every valid fix it sent (LOC-4).
    let mut fixes: BTreeMap<usize, BTreeSet<(u64, u64)>> = BTreeMap::new();
    let violation = |out: &mut Vec<Violation>, invariant: &'static str, index: usize, detail: String| {
        out.push(Violation {
            invariant,
            index: Some(index),
            detail,
        });
    };

    for (i, entry) in entries.iter().enumerate() {
        match &entry.what {
            What::Panic(m) => violation(&mut out, "no_panic", i, m.clone()),
            What::NotCanonical(hex) => violation(
                &mut out,
                "canonical",
                i,
                format!("{} got a stanza not in canonical encoding: {hex}", entry.who),
            ),
            What::Phase(p) => {
                phase = p.split(' ').next().unwrap_or_default().to_string();
                ended |= phase == "end";
            }
            What::Crash => {
                server_down = true;
                for d in devices.values_mut() {
                    d.pending.clear();
                }
            }
            What::Boot { .. } => server_down = false,
            What::Fault(f) => {
                // A link fault disturbs its device until lifted; a
                // disconnect ends the connection, which the device records.
                if let Some(device) = f.split('"').nth(1) {
                    if f.starts_with("lift ") {
                        disturbed.remove(device);
                    } else if !f.starts_with("Disconnect") {
                        disturbed.insert(device.to_string());
                    }
                    // Segments dropped for good leave the connection dead,
                    // though neither end may know it yet: until the device dials again.
                    if f.starts_with("Partition") {
                        broken.insert(device.to_string());
                    }
                }
                for (name, d) in devices.iter_mut() {
                    if f.contains(&format!("\"{name}\"")) {
                        d.pending.clear();
                    }
                }
            }
            _ => {}
        }
        let Some((u, _)) = parse_device(&entry.who) else {
            continue;
        };
        let me = eid(u);
        let name = entry.who.clone();
        let dev = devices.entry(name.clone()).or_default();
        let overdue: Vec<Pending> = dev
            .pending
            .iter()
            .filter(|(_, sent)| sent.saturating_add(ANSWER_MS) < entry.at)
            .map(|(p, _)| p.clone())
            .collect();
        for p in overdue {
            dev.pending.remove(&p);
            let (invariant, detail) = match &p {
                Pending::Revoked(jti) => (
                    "revoked_session",
                    format!(
                        "{name}: the session of jti {jti} was reported ended by a revocation but is still open {ANSWER_MS} ms later"
                    ),
                ),
                _ => ("answered", format!("{name}: no answer to {p:?} within {ANSWER_MS} ms")),
            };
            violation(&mut out, invariant, i, detail);
        }
        // A revocation reported to end a device's session: applied below.
        let mut ended_by_revocation: Option<(String, usize)> = None;
        // LocationStreams and pings sent, and answers that bound when the
        // server handled the streams sent before them on this connection.
        match &entry.what {
            What::Sent(Payload::LocationStream(fix)) => {
                dev.loc_open.push((i, fix.id.clone()));
                let valid = valid_fix(fix, &me);
                if valid {
                    let bits = (fix.latitude.to_bits(), fix.longitude.to_bits());
                    fixes.entry(u).or_default().insert(bits);
                }
                loc_sent.entry((name.clone(), fix.id.clone())).or_insert(LocSent {
                    at: entry.at,
                    user: u,
                    fix: fix.clone(),
                    valid,
                    handled_by: None,
                });
            }
            What::Sent(Payload::PingpongMessage(p)) if p.r#type == 1 => {
                dev.answerable.entry(p.id.clone()).or_default().push_back(i);
            }
            // ERR-3 gives a LocationStream's ErrorMessage no ref_id, but
            // ENV-14 orders answers: the n-th one on a connection answers its
            // n-th open fix or a later one, so that one was handled by now.
            What::Received(Payload::ErrorMessage(e)) if e.route == "24" && !dev.loc_open.is_empty() => {
                let t = server_ms(entry.at);
                let open: Vec<&LocSent> = dev
                    .loc_open
                    .iter()
                    .filter_map(|(_, id)| loc_sent.get(&(name.clone(), id.clone())))
                    .collect();
                let sharing_on = |l: &LocSent| {
                    let s = server_ms(l.at);
                    social.still(&[u], s, t) && social.sharing(u, s) == Some(1)
                };
                // location_answer: 400 for an invalid fix (LOC-5, first by
                // ENV-13), 403 forbidden for a valid one while sharing is
                // OFF (LOC-6), nothing else (LOC-2).
                let wrong = match e.code {
                    401 | 429 => None,
                    400 if open.iter().any(|l| !l.valid) => None,
                    400 => Some("400 though every fix awaiting an answer is valid (LOC-5)".to_string()),
                    403 if e.message != "forbidden" => Some(format!("403 {:?}, not forbidden (LOC-6)", e.message)),
                    403 if !open.iter().any(|l| l.valid) => {
                        Some("403 though every fix awaiting an answer is invalid (LOC-5 first, ENV-13)".to_string())
                    }
                    403 if open.iter().all(|l| !l.valid || sharing_on(l)) => {
                        Some("403 though sharing was ON for every valid fix awaiting an answer (LOC-2)".to_string())
                    }
                    403 => None,
                    code => Some(format!("{code} {:?} (LOC-2)", e.message)),
                };
                if let Some(wrong) = wrong {
                    let ids: Vec<&str> = open.iter().map(|l| l.fix.id.as_str()).collect();
                    violation(
                        &mut out,
                        "location_answer",
                        i,
                        format!("{name}: a LocationStream answered {wrong}; awaiting {ids:?}"),
                    );
                }
                let (_, first) = dev.loc_open.remove(0);
                if let Some(l) = loc_sent.get_mut(&(name.clone(), first)) {
                    l.handled_by = Some((entry.at, i));
                }
            }
            What::Received(Payload::PingpongMessage(PingPong { r#type: 2, id, .. }))
            | What::Received(Payload::ErrorMessage(ErrorMessage { ref_id: id, .. })) => {
                if let Some(sent) = dev
                    .answerable
                    .get_mut(id)
                    .and_then(std::collections::VecDeque::pop_front)
                {
                    for (_, open) in dev.loc_open.iter().filter(|(k, _)| *k <= sent) {
                        if let Some(l) = loc_sent.get_mut(&(name.clone(), open.clone())) {
                            l.handled_by = Some((entry.at, i));
                        }
                    }
                    dev.loc_open.retain(|(k, _)| *k > sent);
                }
            }
            _ => {}
        }
        // answer_order (ENV-14): a connection's answers come in the order of its requests, however the server
        // spreads the work (src/core/README.md, ordering 1).
        let asked = match &entry.what {
            What::Sent(Payload::PingpongMessage(p)) if p.r#type == 1 => Some(p.id.clone()),
            What::Sent(Payload::TextPayloadRequest(t)) => Some(t.message_id_local.clone()),
            What::Sent(Payload::AcknowledgmentRequest(a)) => Some(a.message_id.clone()),
            _ => None,
        };
        if let Some(id) = asked {
            dev.in_order.push_back((i, id));
        }
        let answered = match &entry.what {
            What::Received(Payload::PingpongMessage(PingPong { r#type: 2, id, .. }))
            | What::Received(Payload::ErrorMessage(ErrorMessage { ref_id: id, .. })) => Some(id.clone()),
            What::Received(Payload::VersionUpdate(v)) => Some(v.message_id_local.clone()),
            What::Received(Payload::AcknowledgmentResponse(r))
                if names_me(r.from.as_ref(), &me, &name) && names_me(r.to.as_ref(), &me, &name) =>
            {
                Some(r.message_id.clone())
            }
            _ => None,
        };
        if let Some(id) = answered
            && let Some(at) = dev.in_order.iter().position(|(_, asked)| *asked == id)
        {
            if at > 0 {
                let (sent, earlier) = &dev.in_order[0];
                violation(
                    &mut out,
                    "answer_order",
                    i,
                    format!(
                        "{name} got the answer to {id:?} before the answer to {earlier:?}, sent earlier (entry {sent})"
                    ),
                );
            }
            dev.in_order.drain(..=at);
        }
        match &entry.what {
            What::Connect { jti, expired } => {
                broken.remove(&name);
                dev.dialed_at = entry.at;
                dev.answerable.clear();
                dev.in_order.clear();
                dev.loc_open.clear();
                dev.dialed_expired = *expired;
                dev.connected_at = i;
                dev.revoking.clear();
                dev.pending.clear();
                // Acknowledgments of an ended connection get no answer any more.
                dev.asked.clear();
                dev.online = false;
                dev.jti = Some(jti.clone());
                if revoked.contains_key(jti) {
                    connect_after_revoke.insert(name.clone(), jti.clone());
                } else {
                    connect_after_revoke.remove(&name);
                }
            }
            What::Session { jti } => {
                dev.online = true;
                dev.sessions += 1;
                if dev.dialed_expired {
                    violation(
                        &mut out,
                        "expired_session",
                        i,
                        format!("{name} got a session with expired token jti {jti}"),
                    );
                }
                dev.session_in_heal |= phase == "heal";
                if connect_after_revoke.get(&name) == Some(jti) {
                    violation(
                        &mut out,
                        "revoked_session",
                        i,
                        format!("{name} got a session with revoked jti {jti}"),
                    );
                }
            }
            What::Refused { .. } | What::Closed { .. } | What::Dropped => {
                dev.online = false;
                dev.pending.clear();
                dev.asked.clear();
                dev.revoking.clear();
            }
            // A request on a disturbed link or to a crashed server is not timed.
            What::Sent(payload) if server_down || disturbed.contains(&name) || broken.contains(&name) => {
                match payload {
                    Payload::TextPayloadRequest(r) => {
                        if names_other(r.from.as_ref(), &me, &name) {
                            dev.spoofed.insert(r.message_id_local.clone());
                        }
                        *dev.text_sends.entry(r.message_id_local.clone()).or_default() += 1;
                        dev.texts.insert(r.message_id_local.clone(), r.content.clone());
                    }
                    Payload::PingpongMessage(p) if names_other(p.to.as_ref(), &me, &name) => {
                        dev.spoofed.insert(p.id.clone());
                    }
                    Payload::AcknowledgmentRequest(a) => {
                        dev.asked.entry(a.message_id.clone()).or_default().push_back(a.status);
                    }
                    _ => {}
                }
            }
            What::Sent(payload) => match payload {
                Payload::TextPayloadRequest(r) => {
                    if names_other(r.from.as_ref(), &me, &name) {
                        dev.spoofed.insert(r.message_id_local.clone());
                    }
                    *dev.text_sends.entry(r.message_id_local.clone()).or_default() += 1;
                    dev.texts.insert(r.message_id_local.clone(), r.content.clone());
                    dev.pending.insert(Pending::Text(r.message_id_local.clone()), entry.at);
                }
                Payload::PingpongMessage(p) => {
                    if names_other(p.to.as_ref(), &me, &name) {
                        dev.spoofed.insert(p.id.clone());
                    }
                    dev.pending.insert(Pending::Ping(p.id.clone()), entry.at);
                }
                Payload::TokenRevokeRequest(r) if r.token.is_empty() => {
                    if let Some(to) = r.to.as_ref().filter(|t| !t.connection_resource_id.is_empty()) {
                        dev.revoking
                            .entry(to.connection_resource_id.clone())
                            .or_default()
                            .push_back(i);
                    }
                }
                Payload::AcknowledgmentRequest(a) => {
                    dev.asked.entry(a.message_id.clone()).or_default().push_back(a.status);
                    dev.pending.insert(Pending::Ack(a.message_id.clone()), entry.at);
                }
                _ => {}
            },
            What::Received(payload) => {
                if let Some((from, latitude, longitude, t)) = location_of(payload)
                    && let Some((kind, detail)) = location_leak(&social, &fixes, u, from, latitude, longitude, t)
                {
                    violation(&mut out, kind, i, format!("{name}: {detail}"));
                }
                match payload {
                    Payload::ErrorMessage(e) => {
                        // A refused acknowledgment gets no confirmation.
                        if let Some(asks) = dev.asked.get_mut(&e.ref_id) {
                            asks.pop_front();
                        }
                        for p in [
                            Pending::Text(e.ref_id.clone()),
                            Pending::Ping(e.ref_id.clone()),
                            Pending::Ack(e.ref_id.clone()),
                        ] {
                            dev.pending.remove(&p);
                        }
                        if e.code == 401
                            && e.message.contains("revoked")
                            && let Some(jti) = &dev.jti
                        {
                            revoked.entry(jti.clone()).or_insert(i);
                        }
                    }
                    Payload::Logout(l) if l.r#type == 2 && l.status == 3 => {
                        if let Some(jti) = &dev.jti {
                            revoked.entry(jti.clone()).or_insert(i);
                        }
                    }
                    Payload::PingpongMessage(p) if p.r#type == 2 => {
                        dev.pending.remove(&Pending::Ping(p.id.clone()));
                        if dev.spoofed.contains(&p.id) {
                            violation(
                                &mut out,
                                "spoof_refused",
                                i,
                                format!(
                                    "{name} was answered a pong to ping {} whose `to` named another identity",
                                    p.id
                                ),
                            );
                        }
                    }
                    Payload::TokenRevokeResponse(r) if r.status == 1 => {
                        let target = r.to.as_ref().filter(|t| t.eid == me);
                        if let Some(target) = target.map(|t| t.connection_resource_id.clone())
                            && let Some(sent) = dev.revoking.get_mut(&target).and_then(|q| q.pop_front())
                            && r.sessions_ended >= 1
                        {
                            ended_by_revocation = Some((target, sent));
                        }
                    }
                    Payload::VersionUpdate(v) => {
                        dev.pending.remove(&Pending::Text(v.message_id_local.clone()));
                        if dev.spoofed.contains(&v.message_id_local) {
                            violation(
                                &mut out,
                                "spoof_refused",
                                i,
                                format!(
                                    "{name}: message {} accepted though its `from` named another identity",
                                    v.message_id_local
                                ),
                            );
                        }
                        let text = dev.texts.get(&v.message_id_local).cloned().unwrap_or_default();
                        let who = (me.clone(), name.clone(), v.message_id_local.clone(), text);
                        let key = (v.chat_id.clone(), v.version);
                        if let Some(old) = versions.get(&key).filter(|old| **old != who) {
                            violation(
                                &mut out,
                                "version_unique",
                                i,
                                format!(
                                    "{} version {} confirmed for {who:?} but held {old:?}",
                                    v.chat_id, v.version
                                ),
                            );
                        }
                        versions.entry(key).or_insert(who);
                        // Only the answer to a first send carries the acceptance time (CHAT-5).
                        if dev.text_sends.get(&v.message_id_local).copied().unwrap_or(0) <= 1
                            && let Some(detail) = grow(&mut accepted, &v.chat_id, &v.message_id, v.timestamp, v.version)
                        {
                            violation(&mut out, "versions_grow", i, detail);
                        }
                        confirmed
                            .entry(v.message_id.clone())
                            .or_insert_with(|| (me.clone(), name.clone(), v.chat_id.clone(), v.version));
                    }
                    Payload::ChatMessage(m) => {
                        let from = m.from.as_ref().map(|f| f.eid.clone()).unwrap_or_default();
                        let to = m.to.first().map(|t| t.eid.clone()).unwrap_or_default();
                        if me != from && me != to {
                            violation(
                                &mut out,
                                "recipient",
                                i,
                                format!("{name} got {} between {from} and {to}", m.message_id),
                            );
                        }
                        if me == from && m.from.as_ref().is_some_and(|f| f.connection_resource_id == name) {
                            violation(
                                &mut out,
                                "recipient",
                                i,
                                format!("{name} got a copy of {}, which it sent (CHAT-10)", m.message_id),
                            );
                        }
                        let text = match &m.payload {
                            Some(crate::proto::chat_message::Payload::Text(t)) => t.clone(),
                            other => format!("{other:?}"),
                        };
                        let held = (m.version, m.chat_id.clone(), text.clone());
                        match dev.messages.get(&m.message_id) {
                            Some(old) if *old != held => violation(
                                &mut out,
                                "exactly_once",
                                i,
                                format!(
                                    "{name} got {} again with different content: {held:?} after {old:?}",
                                    m.message_id
                                ),
                            ),
                            Some(_) => {}
                            None => {
                                let top = dev.chat_top.entry(m.chat_id.clone()).or_insert(0);
                                if m.version <= *top {
                                    violation(
                                        &mut out,
                                        "chat_order",
                                        i,
                                        format!(
                                            "{name} got version {} of {} after version {top}",
                                            m.version, m.chat_id
                                        ),
                                    );
                                }
                                *top = (*top).max(m.version);
                                dev.messages.insert(m.message_id.clone(), held);
                            }
                        }
                        if let Some(detail) = grow(
                            &mut accepted,
                            &m.chat_id,
                            &m.message_id,
                            m.server_received_at,
                            m.version,
                        ) {
                            violation(&mut out, "versions_grow", i, detail);
                        }
                        let sender_device = m
                            .from
                            .as_ref()
                            .map(|f| f.connection_resource_id.clone())
                            .unwrap_or_default();
                        let who = (from.clone(), sender_device, m.message_id_local.clone(), text);
                        let key = (m.chat_id.clone(), m.version);
                        if let Some(old) = versions.get(&key).filter(|old| **old != who) {
                            violation(
                                &mut out,
                                "version_unique",
                                i,
                                format!(
                                    "{} version {} delivered as {who:?} but held {old:?}",
                                    m.chat_id, m.version
                                ),
                            );
                        }
                        versions.entry(key).or_insert(who);
                        if m.author == "receiver"
                            && let (Some(a), Some(b)) = (user_of(&from), user_of(&to))
                            && social.blocked_pair(a, b, m.server_received_at) == Some(true)
                        {
                            violation(
                                &mut out,
                                "blocked",
                                i,
                                format!(
                                    "{name} got {} accepted at {} while a block stood between {from} and {to}",
                                    m.message_id, m.server_received_at
                                ),
                            );
                        }
                    }
                    Payload::AcknowledgmentResponse(r) => {
                        dev.pending.remove(&Pending::Ack(r.message_id.clone()));
                        if !(1..=4).contains(&r.status) {
                            violation(
                                &mut out,
                                "ack_forward",
                                i,
                                format!("{name}: state {} for {}", r.status, r.message_id),
                            );
                        }
                        let mine = r
                            .from
                            .as_ref()
                            .is_some_and(|f| f.eid == me && f.connection_resource_id == name);
                        let oldest = if mine {
                            dev.asked
                                .get_mut(&r.message_id)
                                .and_then(std::collections::VecDeque::pop_front)
                        } else {
                            None
                        };
                        if let Some(asked) = &oldest
                            && *asked <= 3
                            && r.status < *asked
                        {
                            violation(
                                &mut out,
                                "ack_forward",
                                i,
                                format!(
                                    "{name} acknowledged {} with {asked} and was answered {}",
                                    r.message_id, r.status
                                ),
                            );
                        }
                        if r.status != 4 {
                            let (seen, top) = dev.acks.entry(r.message_id.clone()).or_default();
                            if seen.insert(r.status) && r.status < *top {
                                violation(
                                    &mut out,
                                    "ack_forward",
                                    i,
                                    format!("{name}: {} moved back to {} after {top}", r.message_id, r.status),
                                );
                            }
                            *top = (*top).max(r.status);
                        }
                    }
                    Payload::LocationStream(f) => {
                        let from = f.from.clone().unwrap_or_default();
                        let key = (from.connection_resource_id.clone(), f.id.clone());
                        let Some(l) = loc_sent.get(&key) else {
                            violation(
                                &mut out,
                                "location_integrity",
                                i,
                                format!("{name} got LocationStream {} from {from:?}, which never sent it", f.id),
                            );
                            continue;
                        };
                        let peer = l.fix.to.as_ref().map(|t| t.eid.clone()).unwrap_or_default();
                        let to = f.to.clone().unwrap_or_default();
                        let same = f.latitude.to_bits() == l.fix.latitude.to_bits()
                            && f.longitude.to_bits() == l.fix.longitude.to_bits()
                            && f.altitude.to_bits() == l.fix.altitude.to_bits()
                            && f.timestamp == l.fix.timestamp;
                        let wrong = if from.eid != eid(l.user) {
                            Some(format!("`from` {:?} is not the sender {}", from.eid, eid(l.user)))
                        } else if l.user == u {
                            Some("an echo to the sender's own device".to_string())
                        } else if !l.valid {
                            Some("an invalid fix was forwarded (LOC-5)".to_string())
                        } else if !peer.is_empty() && peer != me {
                            Some(format!("it was sent to {peer}"))
                        } else if to.eid != me || to.connection_resource_id != name {
                            Some(format!("`to` {to:?} is not the receiving device"))
                        } else if !same {
                            Some(format!("fields differ from those sent: {f:?} vs {:?}", l.fix))
                        } else {
                            None
                        };
                        if let Some(wrong) = wrong {
                            violation(
                                &mut out,
                                "location_integrity",
                                i,
                                format!("{name} got LocationStream {}: {wrong} (LOC-2)", f.id),
                            );
                        }
                        // LOC-1, LOC-6, BLK-5: the server handled it between
                        // its send and now; judged when neither user's
                        // settings moved in that span.
                        let (s, r) = (server_ms(l.at), server_ms(entry.at));
                        if l.user != u
                            && social.still(&[l.user, u], s, r)
                            && social.may_see_location(u, l.user, s) == Some(false)
                        {
                            violation(
                                &mut out,
                                "location_audience",
                                i,
                                format!(
                                    "{name} got LocationStream {} of {} (sharing {:?}) but may not see its location",
                                    f.id,
                                    eid(l.user),
                                    social.sharing(l.user, s)
                                ),
                            );
                        }
                        loc_received.push((i, name.clone(), dev.dialed_at, key));
                    }
                    Payload::AwarenessNotification(n) => {
                        let owner = n.from.as_ref().and_then(|f| user_of(&f.eid));
                        if let Some(a) = owner.filter(|a| *a != u) {
                            let shows = n.status != 0 || n.awareness_intention != 0;
                            if shows && social.blocked_pair(a, u, n.timestamp) == Some(true) {
                                violation(
                                    &mut out,
                                    "blocked",
                                    i,
                                    format!("{name} got awareness of {} at {} across a block", eid(a), n.timestamp),
                                );
                            } else if n.status != 0
                                && n.awareness_intention == 0
                                && social.may_see(u, a, n.timestamp) == Some(false)
                            {
                                violation(
                                    &mut out,
                                    "visibility",
                                    i,
                                    format!(
                                        "{name} got status {} of {} at {} but may not see it",
                                        n.status,
                                        eid(a),
                                        n.timestamp
                                    ),
                                );
                            }
                        }
                    }
                    Payload::AwarenessResponse(r) => {
                        if let Some(from) = r.from.as_ref().filter(|f| !f.connection_resource_id.is_empty()) {
                            violation(
                                &mut out,
                                "awareness_identity",
                                i,
                                format!("{name} was answered about a device, {from:?}, not a user (AWR-13, AWR-14)"),
                            );
                        }
                        let Some(a) = r.from.as_ref().and_then(|f| user_of(&f.eid)) else {
                            continue;
                        };
                        if r.status != 0 && a != u && social.may_see(u, a, r.timestamp) == Some(false) {
                            violation(
                                &mut out,
                                "visibility",
                                i,
                                format!(
                                    "{name} was answered status {} of {} at {} but may not see it",
                                    r.status,
                                    eid(a),
                                    r.timestamp
                                ),
                            );
                        }
                        if phase == "check"
                            && let Ok(id) = r.awareness_identifier.parse::<i64>()
                            && id >= CHECK_ID_BASE
                        {
                            check_answers.insert((u, a), (i, r.status, r.timestamp));
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        // The target's session known at the request (dialed before it) is the
        // one ended; a session dialed since may be a newer one.
        if let Some((target, sent)) = ended_by_revocation
            && !server_down
            && !disturbed.contains(&target)
            && !broken.contains(&target)
            && let Some(d) = devices.get_mut(&target).filter(|d| d.online && d.connected_at < sent)
            && let Some(jti) = d.jti.clone()
        {
            d.pending.insert(Pending::Revoked(jti.clone()), entry.at);
            revoked.entry(jti).or_insert(i);
        }
    }

    // location_live (LOC-3): a stream received on a connection dialed after
    // the server had already handled it was queued or replayed.
    for (ri, name, dialed_at, key) in &loc_received {
        if let Some((handled, hi)) = loc_sent.get(key).and_then(|l| l.handled_by)
            && handled < *dialed_at
        {
            violation(
                &mut out,
                "location_live",
                (*ri).max(hi),
                format!(
                    "{name} got LocationStream {} of {} on a connection dialed at {dialed_at}, after the server handled it (by {handled})",
                    key.1, key.0
                ),
            );
        }
    }

    if !ended {
        return out;
    }
    let end = |out: &mut Vec<Violation>, invariant: &'static str, detail: String| {
        out.push(Violation {
            invariant,
            index: None,
            detail,
        });
    };
    // Requests still unanswered when the history ends.
    let last = entries.last().map_or(0, |e| e.at);
    for (name, d) in &devices {
        for (p, sent) in &d.pending {
            if sent.saturating_add(ANSWER_MS) < last {
                let invariant = if matches!(p, Pending::Revoked(_)) {
                    "revoked_session"
                } else {
                    "answered"
                };
                end(&mut out, invariant, format!("{name}: {p:?} still open at the end"));
            }
        }
    }
    let users: BTreeSet<usize> = devices.keys().filter_map(|n| parse_device(n)).map(|(u, _)| u).collect();
    let reachable: BTreeSet<&String> = devices.iter().filter(|(_, d)| d.online).map(|(n, _)| n).collect();
    for (name, d) in &devices {
        if !d.online {
            end(
                &mut out,
                "heal",
                format!("{name} has no session once the network healed"),
            );
        }
        let _ = d.session_in_heal;
    }
    // Delivery: every confirmed message reached every device of its receiver
    // and the sender's other devices.
    for (message_id, (sender, sender_device, chat, version)) in &confirmed {
        let receiver = users
            .iter()
            .map(|v| eid(*v))
            .find(|r| r != sender && crate::core::chat::chat_id(sender, r) == *chat);
        for name in &reachable {
            let Some((u, _)) = parse_device(name) else { continue };
            let owner = eid(u);
            let due = Some(&owner) == receiver.as_ref() || (owner == *sender && *name != sender_device);
            if due && !devices[*name].messages.contains_key(message_id) {
                end(
                    &mut out,
                    "delivery",
                    format!("{name} never got {message_id} (version {version} of {chat})"),
                );
            }
        }
    }
    // No gaps: each chat's versions seen anywhere are 1..=max.
    let mut per_chat: BTreeMap<&String, BTreeSet<i64>> = BTreeMap::new();
    for (chat, version) in versions.keys() {
        per_chat.entry(chat).or_default().insert(*version);
    }
    for (chat, seen) in per_chat {
        let top = seen.last().copied().unwrap_or(0);
        if let Some(missing) = (1..=top).find(|v| !seen.contains(v)) {
            end(
                &mut out,
                "version_gaps",
                format!("{chat}: version {missing} never seen, {top} was"),
            );
        }
    }
    // Presence converged: after healing, each user sees each other as AWR-9 says.
    for &u in &users {
        if !reachable.contains(&super::workload::device_name(u, 0)) {
            continue;
        }
        for &a in users.iter().filter(|a| **a != u) {
            match check_answers.get(&(u, a)) {
                None => end(
                    &mut out,
                    "presence",
                    format!("{} got no answer about {}", eid(u), eid(a)),
                ),
                Some((_, status, t)) => {
                    let expected = match social.may_see(u, a, *t) {
                        Some(true) => 1,
                        Some(false) => 0,
                        None => continue,
                    };
                    if *status != expected {
                        end(
                            &mut out,
                            "presence",
                            format!("{} sees {} as {status}, expected {expected}", eid(u), eid(a)),
                        );
                    }
                }
            }
        }
    }
    out
}
