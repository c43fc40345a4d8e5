//! Deliberate protocol faults of the reference server, for the conformance
//! suite's and the simulation's self-checks only: each must be caught.
//!
//! None of them lives in the protocol core. A fault is applied at the edge,
//! by [`FaultLayer`]: a [`net::Edge`](crate::net::Edge) between the engine and
//! the connections that drops, holds, rewrites or answers stanzas on their
//! way in or out, as a broken server would. The one fault that is not about
//! stanzas (accepting expired tokens) is a verifier setting,
//! [`Faults::verifier`]. Faults are active only when a caller names them:
//! the simulation drivers, the built-in server of `bimip-conform --fault` and
//! the hidden, test-only `bimip serve --fault`; never a settings file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use crate::codec::{self, Route};
use crate::core::auth::Verifier;
use crate::core::{ConnId, Millis, Output, Transport};
use crate::net::Edge;
use crate::proto::message_scheme::Payload;
use crate::proto::{BlockSubscriber, Identity, TokenRevokeResponse};

/// One way the server can be wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// Never sends the sender its VersionUpdate (CHAT-9).
    SkipVersionUpdate,
    /// Holds each chat delivery back until the next one for the same
    /// connection (or the next timer), then sends it second (CHAT-16).
    ReorderChat,
    /// ReorderChat on native TCP connections only: WebSocket ones get their
    /// chat in order (CHAT-16; issue 22: a TCP-only run must catch it).
    ReorderChatTcp,
    /// A partial server: every LocationStream is answered 501 `unknown_route`
    /// (ERR-2), as by a server without location (issue 23: such a case ends at
    /// the 501, and `--without-route 24` makes it not applicable).
    NoLocation,
    /// Acknowledgment responses carry delivered and read swapped (ACK).
    WrongAckCode,
    /// Block requests are confirmed but change nothing: presence still
    /// flows and chats still pass (BLK-1, AWR-9).
    IgnoreBlock,
    /// Token revocation answers success but records nothing and ends no session (TOK).
    IgnoreRevocation,
    /// Client pings are never answered (PING-1).
    NeverPong,
    /// Tokens are accepted whatever their `exp` and `nbf` (AUTH).
    AcceptExpiredToken,
    /// The queue replay at session start is dropped (QUE-3).
    DropOfflineQueue,
    /// A client's `from` (or `owner`, `to`, `entity`) naming another identity
    /// is not refused (ENV-11).
    TrustClientFrom,
    /// Every stanza repeats its route field at the end: it decodes the
    /// same, but is not canonical (ENV-12).
    NonCanonicalEncoding,
    /// A LocationStream reaches its named peer, or every subscriber, whether
    /// or not they may see the sender's location (LOC-1, LOC-2).
    LeakLocation,
    /// Every AwarenessResponse's `from` names a device of the asked user,
    /// which tells which device is online, and could tell a block from
    /// other reasons (AWR-13, AWR-14).
    AwarenessFromDevice,
    /// A silent session is closed with 408 `ping_timeout` at the second
    /// unanswered ping tick instead of the third (PING-4, PING-5).
    EarlyPingTimeout,
    /// A VersionUpdate and the next stanza for the same connection leave in
    /// one WebSocket message or TCP frame (TRN-3, TRN-8).
    PackVersionUpdate,
    /// Each chat copy is sent once more, [`LATE_MS`] later, to the device that
    /// sent the message (CHAT-10): a leak that comes late.
    LateEcho,
    /// Each presence notification is sent once more, [`LATE_MS`] later, to
    /// every other session that did not get it: subscribers or not, blocked
    /// or not (AWR-9). A leak that comes late.
    LatePresenceLeak,
    /// ChatMessage copies carry a `server_received_at` (and
    /// `acknowledgment_timestamp`) an hour before the acceptance (CHAT-11).
    StaleReceivedAt,
    /// AcknowledgmentResponses carry a timestamp an hour before the request's (ACK-4, ACK-5).
    StaleAckTimestamp,
    /// `last_seen` is 90 s before the last session ended (AWR-2).
    StaleLastSeen,
    /// Presence notifications are stamped 90 s in the past (AWR-10).
    StalePresence,
    /// The TokenRevokeResponse leaves after the sessions it ended were closed (TOK-6).
    RevokeResponseLast,
    /// A replaced session's 409 and close leave [`HELD_MS`] late, after the new session's first stanza (SES-1).
    ReplacedCloseLate,
    /// A connection sent more than [`BEHIND_LIMIT`] chat copies within [`BEHIND_MS`] loses the later ones and
    /// gets the ones after: a server whose small outbound buffer overflowed and went on (TRN-19).
    DropWhenBehind,
    /// A pong counts only if it answers the latest ping sent: one for an earlier ping, late on a slow link, is
    /// ignored, so the session ends though every ping was answered (PING-4).
    OnlyLatestPing,
}

/// How late the late faults' leaks come: after every step's quiet window,
/// within the settle window every absence is held for (issue 21.2).
pub const LATE_MS: Millis = 600;

impl Fault {
    pub const ALL: [Fault; 26] = [
        Fault::SkipVersionUpdate,
        Fault::ReorderChat,
        Fault::ReorderChatTcp,
        Fault::NoLocation,
        Fault::WrongAckCode,
        Fault::IgnoreBlock,
        Fault::IgnoreRevocation,
        Fault::NeverPong,
        Fault::AcceptExpiredToken,
        Fault::DropOfflineQueue,
        Fault::TrustClientFrom,
        Fault::NonCanonicalEncoding,
        Fault::LeakLocation,
        Fault::AwarenessFromDevice,
        Fault::EarlyPingTimeout,
        Fault::PackVersionUpdate,
        Fault::LateEcho,
        Fault::LatePresenceLeak,
        Fault::StaleReceivedAt,
        Fault::StaleAckTimestamp,
        Fault::StaleLastSeen,
        Fault::StalePresence,
        Fault::RevokeResponseLast,
        Fault::ReplacedCloseLate,
        Fault::DropWhenBehind,
        Fault::OnlyLatestPing,
    ];

    /// The name on command lines: kebab-case.
    pub fn name(self) -> &'static str {
        match self {
            Fault::SkipVersionUpdate => "skip-version-update",
            Fault::ReorderChat => "reorder-chat",
            Fault::ReorderChatTcp => "reorder-chat-tcp",
            Fault::NoLocation => "no-location",
            Fault::WrongAckCode => "wrong-ack-code",
            Fault::IgnoreBlock => "ignore-block",
            Fault::IgnoreRevocation => "ignore-revocation",
            Fault::NeverPong => "never-pong",
            Fault::AcceptExpiredToken => "accept-expired-token",
            Fault::DropOfflineQueue => "drop-offline-queue",
            Fault::TrustClientFrom => "trust-client-from",
            Fault::NonCanonicalEncoding => "non-canonical-encoding",
            Fault::LeakLocation => "leak-location",
            Fault::AwarenessFromDevice => "awareness-from-device",
            Fault::EarlyPingTimeout => "early-ping-timeout",
            Fault::PackVersionUpdate => "pack-version-update",
            Fault::LateEcho => "late-echo",
            Fault::LatePresenceLeak => "late-presence-leak",
            Fault::StaleReceivedAt => "stale-received-at",
            Fault::StaleAckTimestamp => "stale-ack-timestamp",
            Fault::StaleLastSeen => "stale-last-seen",
            Fault::StalePresence => "stale-presence",
            Fault::RevokeResponseLast => "revoke-response-last",
            Fault::ReplacedCloseLate => "replaced-close-late",
            Fault::DropWhenBehind => "drop-when-behind",
            Fault::OnlyLatestPing => "only-latest-ping",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fault {given:?}; known: {}", Fault::ALL.map(Fault::name).join(", "))]
pub struct UnknownFault {
    pub given: String,
}

impl FromStr for Fault {
    type Err = UnknownFault;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownFault { given: s.to_string() })
    }
}

/// The active faults; empty (a correct server) by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults(BTreeSet<Fault>);

impl Faults {
    pub fn none() -> Faults {
        Faults::default()
    }

    pub fn of(faults: impl IntoIterator<Item = Fault>) -> Faults {
        Faults(faults.into_iter().collect())
    }

    pub fn has(&self, fault: Fault) -> bool {
        self.0.contains(&fault)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = Fault> + '_ {
        self.0.iter().copied()
    }

    /// The verifier a server with these faults checks tokens with:
    /// AcceptExpiredToken is an unbounded clock leeway (AUTH-6).
    pub fn verifier(&self, verifier: Verifier) -> Verifier {
        if self.has(Fault::AcceptExpiredToken) {
            verifier.with_leeway_s(u64::MAX)
        } else {
            verifier
        }
    }

    /// The edge layer that applies the stanza faults; `None` when there are
    /// none (a correct server runs with no layer at all).
    pub fn layer(&self) -> Option<Box<dyn Edge>> {
        let stanza_faults = self.iter().any(|f| f != Fault::AcceptExpiredToken);
        stanza_faults.then(|| {
            Box::new(FaultLayer {
                faults: self.clone(),
                ..FaultLayer::default()
            }) as Box<dyn Edge>
        })
    }
}

/// DropWhenBehind: the chat copies a connection may be sent within [`BEHIND_MS`] before the next are dropped.
pub const BEHIND_LIMIT: usize = 8;
pub const BEHIND_MS: Millis = 200;

/// How long the order faults hold a stanza at most, ms.
const HELD_MS: Millis = 50;

/// The connection an output is for (mail is for none).
fn output_conn(output: &Output) -> Option<ConnId> {
    match output {
        Output::Send { conn, .. } | Output::Close { conn, .. } => Some(*conn),
        Output::Mail { .. } | Output::Sync(_) => None,
    }
}

/// How stale the stale-stamp faults make their stamps.
const HOUR_MS: Millis = 3_600_000;
const STALE_MS: Millis = 90_000;

/// Acknowledgment states the WrongAckCode fault swaps.
const DELIVERED: i32 = 2;
const READ: i32 = 3;
/// `type` of a stanza's REQUEST and RESPONSE.
const REQUEST: i32 = 1;
const RESPONSE: i32 = 2;

/// Applies [`Faults`] to the stanzas between the engine and the connections.
/// It knows each connection's identity from the Authenticate RESPONSE the
/// engine sent it, as any proxy in front of a server could.
#[derive(Default)]
pub struct FaultLayer {
    faults: Faults,
    /// Live sessions: connection -> identity.
    sessions: BTreeMap<ConnId, Identity>,
    /// ReorderChat: the chat delivery held back, per connection.
    held_chat: BTreeMap<ConnId, Bytes>,
    /// ReorderChatTcp: the native TCP connections.
    tcp: BTreeSet<ConnId>,
    /// DropOfflineQueue: connections whose queue replay is under way (from
    /// the Authenticate RESPONSE to the first stanza that is not a queue item,
    /// within one batch of the engine's outputs).
    replaying: BTreeSet<ConnId>,
    /// EarlyPingTimeout: server pings sent since the connection's last pong.
    unanswered_pings: BTreeMap<ConnId, u32>,
    /// PackVersionUpdate: a VersionUpdate waiting for the next stanza to share its frame.
    held_version: BTreeMap<ConnId, Bytes>,
    /// DropWhenBehind: when each connection was sent its latest chat copies.
    chat_sent: BTreeMap<ConnId, std::collections::VecDeque<Millis>>,
    /// OnlyLatestPing: the id of the latest ping sent to each connection.
    latest_ping: BTreeMap<ConnId, String>,
    /// LateEcho, LatePresenceLeak: leaks due at a time, in the order made.
    late: Vec<(Millis, ConnId, Bytes)>,
    /// RevokeResponseLast: the response held until a session it ended is
    /// closed (or its deadline).
    held_revoke: Option<(Millis, ConnId, Bytes)>,
    /// ReplacedCloseLate: the replaced session's 409 and close, held until their deadline.
    held_replaced: Vec<(Millis, Output)>,
    /// LatePresenceLeak: presence notifications sent, with when the leak is
    /// due and who got them.
    presence_seen: Vec<(Millis, Bytes, BTreeSet<ConnId>)>,
}

impl FaultLayer {
    fn has(&self, fault: Fault) -> bool {
        self.faults.has(fault)
    }

    /// A stanza the layer itself sends, as the engine would have.
    fn answer(conn: ConnId, payload: &Payload, out: &mut Vec<Output>) {
        out.push(Output::Send {
            conn,
            stanza: Bytes::from(codec::encode(payload)),
        });
    }

    /// ReplacedCloseLate: the held 409s and closes go out, in order.
    fn release_replaced(&mut self, out: &mut Vec<Output>) {
        for (_, output) in std::mem::take(&mut self.held_replaced) {
            if let Output::Close { conn, .. } = &output {
                self.closed(*conn);
            }
            out.push(output);
        }
    }

    /// LateEcho and LatePresenceLeak: what the engine sends now that a late
    /// leak will repeat.
    fn plan_late_leaks(&mut self, conn: ConnId, payload: &Payload, stanza: &Bytes, now: Millis) {
        match payload {
            Payload::ChatMessage(copy) if self.has(Fault::LateEcho) => {
                let sender = self.sessions.iter().find(|(_, id)| copy.from.as_ref() == Some(*id));
                if let Some((&sender, _)) = sender
                    && !self.late.iter().any(|l| l.1 == sender && l.2 == *stanza)
                {
                    self.late.push((now + LATE_MS, sender, stanza.clone()));
                }
            }
            Payload::AwarenessNotification(n) if self.has(Fault::LatePresenceLeak) && n.awareness_intention == 0 => {
                // Known by what it says, not by its `to` (the receiving device).
                let mut about = n.clone();
                about.to = None;
                let key = Bytes::from(codec::encode(&Payload::AwarenessNotification(about)));
                match self.presence_seen.iter_mut().find(|(_, k, _)| *k == key) {
                    Some((_, _, got)) => {
                        got.insert(conn);
                    }
                    None => self.presence_seen.push((now + LATE_MS, key, BTreeSet::from([conn]))),
                }
            }
            _ => {}
        }
    }

    /// LatePresenceLeak: every other session that got none of a presence
    /// notification gets it when its leak is due, addressed to it.
    fn presence_leaks(&mut self, now: Millis, out: &mut Vec<Output>) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.presence_seen)
            .into_iter()
            .partition(|p| p.0 <= now);
        self.presence_seen = later;
        for (_, about, got) in due {
            let Ok(Payload::AwarenessNotification(n)) = codec::decode(&about, usize::MAX) else {
                continue;
            };
            let subject = n.from.as_ref().map(|f| f.eid.clone()).unwrap_or_default();
            for (&conn, identity) in &self.sessions {
                if got.contains(&conn) || identity.eid == subject {
                    continue;
                }
                let mut leaked = n.clone();
                leaked.to = Some(identity.clone());
                Self::answer(conn, &Payload::AwarenessNotification(leaked), out);
            }
        }
    }

    /// The identity slot the engine checks against the session (ENV-11).
    fn claimed_identity(payload: &mut Payload) -> Option<&mut Option<Identity>> {
        match payload {
            Payload::TextPayloadRequest(r) => Some(&mut r.from),
            Payload::MediaPayloadRequest(r) => Some(&mut r.from),
            Payload::AcknowledgmentRequest(r) => Some(&mut r.from),
            Payload::AwarenessNotification(r) => Some(&mut r.from),
            Payload::AwarenessRequest(r) => Some(&mut r.from),
            Payload::AwarenessSubscription(r) => Some(&mut r.from),
            Payload::AwarenessVisibility(r) => Some(&mut r.from),
            Payload::LocationStream(r) => Some(&mut r.from),
            Payload::PingpongMessage(r) => Some(&mut r.to),
            Payload::SubscriberAddRequest(r) => Some(&mut r.owner),
            Payload::SubscriberRemove(r) => Some(&mut r.owner),
            Payload::BlockSubscriber(r) => Some(&mut r.owner),
            Payload::TokenRefreshRequest(r) => Some(&mut r.to),
            Payload::Logout(r) => Some(&mut r.entity),
            _ => None,
        }
    }
}

impl Edge for FaultLayer {
    fn inbound(&mut self, conn: ConnId, stanza: Bytes, now: Millis, out: &mut Vec<Output>) -> Option<Bytes> {
        self.replaying.clear();
        let Ok(mut payload) = codec::decode(&stanza, usize::MAX) else {
            return Some(stanza);
        };
        if let Payload::PingpongMessage(pong) = &payload
            && pong.r#type == RESPONSE
        {
            if self.has(Fault::OnlyLatestPing) && self.latest_ping.get(&conn).is_some_and(|id| *id != pong.id) {
                return None;
            }
            self.unanswered_pings.remove(&conn);
        }
        let me = self.sessions.get(&conn).cloned();
        match &mut payload {
            Payload::TokenRevokeRequest(request) if self.has(Fault::IgnoreRevocation) && request.r#type == 1 => {
                let Some(me) = me else { return Some(stanza) };
                let to = request.to.clone().filter(|t| !t.eid.is_empty()).unwrap_or(Identity {
                    eid: me.eid,
                    connection_resource_id: String::new(),
                });
                let answer = TokenRevokeResponse {
                    to: Some(to),
                    status: 1,
                    r#type: RESPONSE,
                    timestamp: now,
                    rtt: if request.timestamp > 0 {
                        now.saturating_sub(request.timestamp)
                    } else {
                        0
                    },
                    sessions_ended: 1,
                };
                Self::answer(conn, &Payload::TokenRevokeResponse(answer), out);
                return None;
            }
            Payload::BlockSubscriber(request)
                if self.has(Fault::IgnoreBlock) && request.r#type == 1 && matches!(request.action, 0 | 1) =>
            {
                let (Some(me), Some(other)) = (me, request.subscriber.clone()) else {
                    return Some(stanza);
                };
                let answer = BlockSubscriber {
                    owner: Some(Identity {
                        eid: me.eid,
                        connection_resource_id: String::new(),
                    }),
                    subscriber: Some(Identity {
                        eid: other.eid,
                        connection_resource_id: String::new(),
                    }),
                    r#type: RESPONSE,
                    status: 1,
                    message: "blocked".into(),
                    timestamp: now,
                    action: 1,
                };
                Self::answer(conn, &Payload::BlockSubscriber(answer), out);
                return None;
            }
            Payload::LocationStream(_) if self.has(Fault::NoLocation) => {
                let error = crate::proto::ErrorMessage {
                    code: 501,
                    message: "unknown_route".into(),
                    route: Route::LocationStream.number().to_string(),
                    details: "this server has no location".into(),
                    timestamp: now,
                    ..Default::default()
                };
                Self::answer(conn, &Payload::ErrorMessage(error), out);
                return None;
            }
            Payload::LocationStream(fix) if self.has(Fault::LeakLocation) => {
                // Every other session hears it (or the named peer's), allowed or not.
                let peer = fix.to.as_ref().map(|t| t.eid.clone()).filter(|p| !p.is_empty());
                if let Some(me) = me {
                    for (other, identity) in &self.sessions {
                        let audience = peer.as_ref().map_or(identity.eid != me.eid, |p| *p == identity.eid);
                        if audience {
                            let mut leaked = fix.clone();
                            leaked.from = Some(me.clone());
                            leaked.to = Some(identity.clone());
                            Self::answer(*other, &Payload::LocationStream(leaked), out);
                        }
                    }
                }
            }
            _ => {}
        }
        if self.has(Fault::TrustClientFrom)
            && let Some(slot) = Self::claimed_identity(&mut payload)
            && slot.is_some()
        {
            // Whatever identity the client named, the engine sees none, so it
            // serves the stanza instead of refusing a spoof.
            *slot = None;
            return Some(Bytes::from(codec::encode(&payload)));
        }
        Some(stanza)
    }

    fn outbound(&mut self, output: Output, now: Millis, out: &mut Vec<Output>) {
        let (conn, stanza) = match output {
            Output::Send { conn, stanza } => (conn, stanza),
            Output::Close { conn, reason } => {
                if self.held_replaced.iter().any(|(_, o)| output_conn(o) == Some(conn)) {
                    self.held_replaced.push((now, Output::Close { conn, reason }));
                    return;
                }
                let held = self.held_revoke.take();
                if let Some((_, to, stanza)) = held.as_ref().filter(|h| h.1 == conn) {
                    out.push(Output::Send {
                        conn: *to,
                        stanza: stanza.clone(),
                    });
                }
                self.closed(conn);
                out.push(Output::Close { conn, reason });
                if let Some((_, to, stanza)) = held.filter(|h| h.1 != conn) {
                    out.push(Output::Send { conn: to, stanza });
                }
                return;
            }
            other @ (Output::Mail { .. } | Output::Sync(_)) => return out.push(other),
        };
        let Ok(mut payload) = codec::decode(&stanza, usize::MAX) else {
            out.push(Output::Send { conn, stanza });
            return;
        };
        if let Payload::Authenticate(answer) = &payload
            && answer.r#type == RESPONSE
            && let Some(identity) = &answer.identity
        {
            self.sessions.insert(conn, identity.clone());
            if self.has(Fault::DropOfflineQueue) {
                self.replaying.insert(conn);
            }
        }
        let queue_item = matches!(payload, Payload::ChatMessage(_) | Payload::AcknowledgmentResponse(_));
        if self.replaying.contains(&conn) && !matches!(payload, Payload::Authenticate(_)) {
            if queue_item {
                return;
            }
            self.replaying.remove(&conn);
        }
        self.plan_late_leaks(conn, &payload, &stanza, now);
        match &payload {
            Payload::TokenRevokeResponse(r) if self.has(Fault::RevokeResponseLast) && r.r#type == RESPONSE => {
                self.held_revoke = Some((now + HELD_MS, conn, stanza));
                return;
            }
            Payload::ErrorMessage(e) if self.has(Fault::ReplacedCloseLate) && e.code == 409 => {
                self.held_replaced.push((now + HELD_MS, Output::Send { conn, stanza }));
                return;
            }
            _ => {}
        }
        let mut rewritten = false;
        if let Payload::PingpongMessage(ping) = &payload
            && ping.r#type == REQUEST
            && self.has(Fault::OnlyLatestPing)
        {
            self.latest_ping.insert(conn, ping.id.clone());
        }
        if self.has(Fault::DropWhenBehind) && matches!(payload, Payload::ChatMessage(_)) {
            let sent = self.chat_sent.entry(conn).or_default();
            while sent.front().is_some_and(|at| at + BEHIND_MS <= now) {
                sent.pop_front();
            }
            if sent.len() >= BEHIND_LIMIT {
                return;
            }
            sent.push_back(now);
        }
        match &mut payload {
            Payload::VersionUpdate(_) if self.has(Fault::SkipVersionUpdate) => return,
            Payload::PingpongMessage(pong) if self.has(Fault::NeverPong) && pong.r#type == RESPONSE => return,
            Payload::AcknowledgmentResponse(ack) if self.has(Fault::WrongAckCode) => {
                ack.status = match ack.status {
                    DELIVERED => READ,
                    READ => DELIVERED,
                    other => other,
                };
                rewritten = true;
            }
            Payload::PingpongMessage(ping) if self.has(Fault::EarlyPingTimeout) && ping.r#type == REQUEST => {
                let unanswered = self.unanswered_pings.entry(conn).or_default();
                *unanswered += 1;
                if *unanswered >= 2 {
                    let error = crate::proto::ErrorMessage {
                        code: 408,
                        message: "ping_timeout".into(),
                        timestamp: ping.request_time,
                        ..Default::default()
                    };
                    Self::answer(conn, &Payload::ErrorMessage(error), out);
                    self.closed(conn);
                    out.push(Output::Close {
                        conn,
                        reason: crate::core::CloseReason::Error(crate::codec::ErrorKind::PingTimeout),
                    });
                    return;
                }
            }
            Payload::ChatMessage(copy) if self.has(Fault::StaleReceivedAt) => {
                copy.server_received_at -= HOUR_MS;
                copy.acknowledgment_timestamp -= HOUR_MS;
                rewritten = true;
            }
            Payload::AcknowledgmentResponse(ack) if self.has(Fault::StaleAckTimestamp) => {
                ack.timestamp -= HOUR_MS;
                rewritten = true;
            }
            Payload::AwarenessNotification(n)
                if self.has(Fault::StalePresence) || (self.has(Fault::StaleLastSeen) && n.last_seen != 0) =>
            {
                if self.has(Fault::StalePresence) {
                    n.timestamp -= STALE_MS;
                }
                if self.has(Fault::StaleLastSeen) && n.last_seen != 0 {
                    n.last_seen -= STALE_MS;
                }
                rewritten = true;
            }
            Payload::AwarenessResponse(r) if self.has(Fault::StaleLastSeen) && r.last_seen != 0 => {
                r.last_seen -= STALE_MS;
                rewritten = true;
            }
            Payload::AwarenessResponse(answer) if self.has(Fault::AwarenessFromDevice) => {
                if let Some(from) = &mut answer.from {
                    from.connection_resource_id = "phone".into();
                }
                rewritten = true;
            }
            _ => {}
        }
        let mut stanza = if rewritten {
            Bytes::from(codec::encode(&payload))
        } else {
            stanza
        };
        if self.has(Fault::NonCanonicalEncoding) {
            // Field 1 (the route) again: the last one counts, so it decodes the same.
            let mut bytes = stanza.to_vec();
            prost::encoding::int64::encode(1, &Route::of(&payload).number(), &mut bytes);
            stanza = Bytes::from(bytes);
        }
        if self.has(Fault::PackVersionUpdate) {
            if let Some(held) = self.held_version.remove(&conn) {
                let mut packed = held.to_vec();
                packed.extend_from_slice(&stanza);
                stanza = Bytes::from(packed);
            } else if matches!(payload, Payload::VersionUpdate(_)) {
                self.held_version.insert(conn, stanza);
                return;
            }
        }
        let reorder = self.has(Fault::ReorderChat) || (self.has(Fault::ReorderChatTcp) && self.tcp.contains(&conn));
        if reorder && matches!(payload, Payload::ChatMessage(_)) {
            match self.held_chat.remove(&conn) {
                None => {
                    self.held_chat.insert(conn, stanza);
                }
                Some(held) => {
                    out.push(Output::Send { conn, stanza });
                    out.push(Output::Send { conn, stanza: held });
                }
            }
            return;
        }
        out.push(Output::Send { conn, stanza });
    }

    fn tick(&mut self, now: Millis, out: &mut Vec<Output>) {
        self.replaying.clear();
        if self.held_replaced.first().is_some_and(|(due, _)| *due <= now) {
            self.release_replaced(out);
        }
        if let Some((_, conn, stanza)) = self.held_revoke.take_if(|(due, _, _)| *due <= now) {
            out.push(Output::Send { conn, stanza });
        }
        self.presence_leaks(now, out);
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.late).into_iter().partition(|l| l.0 <= now);
        self.late = later;
        for (_, conn, stanza) in due {
            if self.sessions.contains_key(&conn) {
                out.push(Output::Send { conn, stanza });
            }
        }
        for (conn, stanza) in std::mem::take(&mut self.held_chat) {
            out.push(Output::Send { conn, stanza });
        }
        for (conn, stanza) in std::mem::take(&mut self.held_version) {
            out.push(Output::Send { conn, stanza });
        }
    }

    fn deadline(&self) -> Option<Millis> {
        self.late
            .iter()
            .map(|l| l.0)
            .chain(self.presence_seen.iter().map(|p| p.0))
            .chain(self.held_revoke.iter().map(|h| h.0))
            .chain(self.held_replaced.first().map(|h| h.0))
            .min()
    }

    fn opened(&mut self, conn: ConnId, transport: Transport) {
        if transport == Transport::Tcp {
            self.tcp.insert(conn);
        } else {
            self.tcp.remove(&conn);
        }
    }

    fn closed(&mut self, conn: ConnId) {
        self.sessions.remove(&conn);
        self.tcp.remove(&conn);
        self.late.retain(|l| l.1 != conn);
        self.held_chat.remove(&conn);
        self.unanswered_pings.remove(&conn);
        self.held_version.remove(&conn);
        self.replaying.remove(&conn);
        self.chat_sent.remove(&conn);
        self.latest_ping.remove(&conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for fault in Fault::ALL {
            assert_eq!(fault.name().parse::<Fault>(), Ok(fault));
        }
        let error = "drop-everything".parse::<Fault>().unwrap_err();
        assert!(error.to_string().contains("never-pong"), "{error}");
        assert!(Faults::default().is_empty());
        assert!(Faults::of([Fault::NeverPong]).has(Fault::NeverPong));
        assert!(!Faults::of([Fault::NeverPong]).has(Fault::ReorderChat));
    }

    /// Faults are never active unless a test sets them: a settings file
    /// cannot name one, and no fault means no layer.
    #[test]
    fn faults_cannot_come_from_a_settings_file() {
        let parsed = toml::from_str::<crate::core::Config>("faults = [\"never-pong\"]");
        assert!(parsed.is_err(), "{parsed:?}");
        let parsed = toml::from_str::<crate::server::Settings>("faults = [\"never-pong\"]");
        assert!(parsed.is_err(), "{parsed:?}");
        assert!(Faults::none().layer().is_none());
        assert!(Faults::of([Fault::AcceptExpiredToken]).layer().is_none());
        assert!(Faults::of([Fault::NeverPong]).layer().is_some());
    }
}
