//! The server engine: connections, their sessions, dispatch of each stanza to
//! its area's handler, SPEC's answer to every bad input, and timers.
//!
//! Handlers live with their area (`pingpong.rs`, `token.rs`, ...) as further
//! `impl Engine` blocks; they return `Err(Rejection)` and this file turns it
//! into the ErrorMessage, the error counters and, for fatal kinds, the close.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use super::auth::{Signer, Verifier};
use super::awareness::AwarenessState;
use super::chat::ChatState;
use super::limits::Rate;
use super::queue::{ChatEvent, ChatStore, MemoryChatStore};
use super::session::{Conn, ConnState, Session};
use super::shard::{Crossing, Letter, ShardId};
use super::social::{EventLog, MemoryEventLog, Social, SocialEvent};
use super::timers::{Timer, Timers};
use super::{CloseReason, Config, ConnId, Millis, Output, Registry, Revocations, SessionIdentity, Transport};
use crate::codec::{self, Direction, ErrorKind, FrameError, Route};
use crate::proto::message_scheme::Payload;
use crate::proto::{Authenticate, Identity};

/// The longest correlation id an ErrorMessage echoes (ERR-3), and the
/// longest PingPong id accepted (PING-6), in bytes.
pub(super) const MAX_REF_BYTES: usize = 128;

/// A stanza's correlation id for `ErrorMessage.ref_id`: SPEC 5.2's table,
/// the one place it is decided (ERR-3).
fn ref_id_of(payload: &Payload) -> String {
    match payload {
        Payload::AwarenessRequest(request) => request.awareness_identifier.to_string(),
        Payload::PingpongMessage(ping) => ping.id.clone(),
        Payload::TextPayloadRequest(request) => request.message_id_local.clone(),
        Payload::MediaPayloadRequest(request) => request.message_id_local.clone(),
        Payload::AcknowledgmentRequest(request) => request.message_id.clone(),
        Payload::VersionUpdate(update) => update.message_id.clone(),
        Payload::AwarenessVisibility(request) => request.id.clone(),
        _ => String::new(),
    }
}

/// A stanza refused: the ErrorMessage to send (SPEC §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rejection {
    pub kind: ErrorKind,
    pub details: String,
    pub ref_id: String,
}

impl Rejection {
    pub fn new(kind: ErrorKind, details: impl Into<String>) -> Self {
        Rejection {
            kind,
            details: details.into(),
            ref_id: String::new(),
        }
    }

    /// Names the offending stanza's correlation id: its first 128 bytes at
    /// most, so no ErrorMessage can approach the stanza limit (ERR-3).
    pub fn with_ref(mut self, ref_id: impl Into<String>) -> Self {
        let mut ref_id: String = ref_id.into();
        if ref_id.len() > MAX_REF_BYTES {
            let cut = (0..=MAX_REF_BYTES)
                .rev()
                .find(|i| ref_id.is_char_boundary(*i))
                .unwrap_or(0);
            ref_id.truncate(cut);
        }
        self.ref_id = ref_id;
        self
    }
}

pub(super) type Handled = Result<(), Rejection>;

/// Clients send only the REQUEST (type 1) of a request/response stanza: a
/// RESPONSE from a client is 405 (ENV-8), any other type 400 (ENV-9).
pub(super) fn request_only(r#type: i32, stanza: &str) -> Handled {
    match r#type {
        1 => Ok(()),
        2 => Err(Rejection::new(
            ErrorKind::NotAllowed,
            format!("clients send {stanza} REQUEST (type 1) only"),
        )),
        _ => Err(Rejection::new(
            ErrorKind::InvalidField,
            format!("{stanza}.type must be 1"),
        )),
    }
}

/// Counters for metrics (never read by protocol logic).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub stanzas_in: BTreeMap<i64, u64>,
    pub stanzas_out: BTreeMap<i64, u64>,
    pub errors: BTreeMap<u16, u64>,
    pub sessions_started: u64,
    /// Failed syncs of the chat store (outputs stayed held).
    pub sync_failures: u64,
    pub connections_closed: u64,
}

/// The server's protocol state. See the module docs of [`crate::core`].
pub struct Engine {
    pub(super) config: Config,
    pub(super) verifier: Verifier,
    pub(super) signer: Option<Signer>,
    pub(super) revocations: Box<dyn Revocations>,
    pub(super) conns: BTreeMap<ConnId, Conn>,
    pub(super) registry: Registry,
    pub(super) timers: Timers,
    pub(super) social: Social,
    social_log: Box<dyn EventLog>,
    pub(super) awareness: AwarenessState,
    pub(super) chat_store: Box<dyn ChatStore>,
    pub(super) chat: ChatState,
    /// Outputs ready for the adapter.
    out: VecDeque<Output>,
    /// Outputs produced after a buffered durable write; released by the next
    /// successful sync (group commit, QUE-2).
    held: VecDeque<Output>,
    unsynced: bool,
    /// The outputs held for the pipelined sync that is out (`Output::Sync`), if one is.
    syncing: Option<VecDeque<Output>>,
    /// The adapter's group-commit window is closed: no new sync starts ([`Engine::pause_syncs`]).
    syncs_paused: bool,
    pub(super) stats: Stats,
    next_id: u64,
    /// Which shard this engine is; one of one unless partitioned.
    pub(super) shard: ShardId,
    pub(super) crossing: Crossing,
}

impl Engine {
    /// An engine with no connections. `signer` is needed for token refresh.
    pub fn new(config: Config, verifier: Verifier, signer: Option<Signer>, revocations: Box<dyn Revocations>) -> Self {
        Engine {
            config,
            verifier,
            signer,
            revocations,
            conns: BTreeMap::new(),
            registry: Registry::default(),
            timers: Timers::default(),
            social: Social::default(),
            social_log: Box::new(MemoryEventLog::default()),
            awareness: AwarenessState::default(),
            chat_store: Box::new(MemoryChatStore::default()),
            chat: ChatState::default(),
            out: VecDeque::new(),
            held: VecDeque::new(),
            unsynced: false,
            syncing: None,
            syncs_paused: false,
            stats: Stats::default(),
            next_id: 0,
            shard: ShardId::default(),
            crossing: Crossing::default(),
        }
    }

    /// Makes this engine shard `shard` of a partitioned server: it owns the users and chats that hash to it and
    /// reaches the others by mail (`Output::Mail`, [`Engine::deliver`]).
    pub fn with_shard(mut self, shard: ShardId) -> Self {
        self.shard = shard;
        self
    }

    /// Records social changes in `log`, starting from the graph `events`
    /// rebuild (what `log` held at startup).
    pub fn with_social(mut self, log: Box<dyn EventLog>, events: &[SocialEvent]) -> Self {
        self.social = Social::replay(events);
        self.social_log = log;
        self
    }

    /// Stores chats and queues in `store`, starting from the chat state
    /// `events` rebuild (what `store` held at startup).
    pub fn with_chat(mut self, store: Box<dyn ChatStore>, events: &[ChatEvent]) -> Self {
        self.chat = ChatState::default();
        for event in events {
            self.chat.apply(event);
            if let ChatEvent::Accepted(accepted) = event {
                self.crossing.replayed_until = self.crossing.replayed_until.max(accepted.at);
            }
        }
        self.chat_store = store;
        self
    }

    /// Names the shards that run on other nodes of a cluster (SES-11): what this shard sent them before it started
    /// may have been lost with its previous start.
    pub fn with_remote_shards(mut self, shards: impl IntoIterator<Item = usize>) -> Self {
        self.crossing.remote = shards.into_iter().filter(|s| *s != self.shard.index).collect();
        self
    }

    /// Numbers this start of the shard apart from its earlier ones (a cluster node's random start number): the
    /// answers other nodes owe an earlier start (`Appended`, `Passed`) may still reach this one, and must not count
    /// for the tickets it issues.
    pub fn with_start(mut self, start: u16) -> Self {
        self.crossing.next_ticket = u64::from(start) << 32;
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Connections the engine knows (authenticated or not).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The connections the engine knows, in id order.
    pub fn connection_ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns.keys().copied()
    }

    /// A transport accepted a connection. WebSocket passes the token from the
    /// upgrade request and learns here whether to upgrade: `Err` is the kind
    /// to answer with (HTTP 401 or 429, body = kind). Native TCP passes no
    /// token: it must send Authenticate first (SPEC TRN).
    pub fn open(
        &mut self,
        conn: ConnId,
        transport: Transport,
        token: Option<&str>,
        now: Millis,
    ) -> Result<(), ErrorKind> {
        if self.conns.contains_key(&conn) {
            return Err(ErrorKind::Internal);
        }
        match transport {
            Transport::WebSocket => {
                let token = token.filter(|t| !t.is_empty()).ok_or(ErrorKind::TokenMissing)?;
                self.conns.insert(
                    conn,
                    Conn {
                        transport,
                        state: ConnState::AwaitingAuth { deadline: None },
                    },
                );
                let started = self.fenced(conn, |engine| engine.start_session(conn, token, now));
                if started.is_err() {
                    self.conns.remove(&conn);
                }
                started
            }
            Transport::Tcp => {
                let deadline = now.saturating_add(self.config.auth_deadline_ms);
                self.conns.insert(
                    conn,
                    Conn {
                        transport,
                        state: ConnState::AwaitingAuth {
                            deadline: Some(deadline),
                        },
                    },
                );
                self.timers.set(deadline, Timer::AuthDeadline(conn));
                Ok(())
            }
        }
    }

    /// One stanza's bytes arrived (a WebSocket binary message or a TCP frame).
    pub fn receive(&mut self, conn: ConnId, stanza: &[u8], now: Millis) {
        self.fenced(conn, |engine| engine.handle(conn, stanza, now));
    }

    fn handle(&mut self, conn: ConnId, stanza: &[u8], now: Millis) {
        let rate = self.stanza_rate();
        let Some(state) = self.conns.get_mut(&conn).map(|c| &mut c.state) else {
            return;
        };
        let decoded = codec::decode(stanza, self.config.max_stanza_bytes);
        if let Ok(payload) = &decoded {
            *self.stats.stanzas_in.entry(Route::of(payload).number()).or_default() += 1;
        }
        match state {
            ConnState::AwaitingAuth { .. } => self.receive_first(conn, decoded, now),
            ConnState::Live(session) => {
                let reference = decoded.as_ref().map(ref_id_of).unwrap_or_default();
                if !session.bucket.try_take(rate, now) {
                    let rejection =
                        Rejection::new(ErrorKind::RateLimited, "stanza rate limit exceeded; stanza dropped");
                    let route = decoded.as_ref().ok().map(|p| Route::of(p).number());
                    return self.reject(conn, route, rejection.with_ref(&reference), now);
                }
                match decoded {
                    Err(e) => self.reject(conn, e.route(), Rejection::new(e.kind(), e.to_string()), now),
                    Ok(payload) => {
                        let route = Route::of(&payload).number();
                        match self.dispatch(conn, payload, now) {
                            Ok(()) => {
                                self.with_session(conn, |s| s.consecutive_errors = 0);
                            }
                            Err(rejection) => self.reject(conn, Some(route), rejection.with_ref(&reference), now),
                        }
                    }
                }
            }
        }
    }

    /// A WebSocket text frame arrived: fatal (SPEC TRN).
    pub fn text_frame(&mut self, conn: ConnId, now: Millis) {
        let rejection = Rejection::new(ErrorKind::TextFrame, "BIMIP uses binary WebSocket messages only");
        self.reject(conn, None, rejection, now);
    }

    /// The byte stream could not be framed (oversized length, or an oversized
    /// WebSocket message): fatal (SPEC TRN).
    pub fn framing_error(&mut self, conn: ConnId, error: &FrameError, now: Millis) {
        match error {
            FrameError::TooLarge { .. } => {
                self.reject(conn, None, Rejection::new(ErrorKind::TooLarge, error.to_string()), now);
            }
            FrameError::Truncated { .. } | FrameError::Io(_) => self.closed(conn, now),
        }
    }

    /// Lets go of a connection that has not authenticated yet, without a word to it: a partitioned adapter moves
    /// it to the shard its Authenticate names (the token's user's home), which opens it afresh. False (and no
    /// change) for a live session or an unknown connection.
    pub fn hand_off(&mut self, conn: ConnId) -> bool {
        let Some(Conn {
            state: ConnState::AwaitingAuth { deadline },
            ..
        }) = self.conns.get(&conn)
        else {
            return false;
        };
        if let Some(at) = *deadline {
            self.timers.cancel(at, Timer::AuthDeadline(conn));
        }
        self.conns.remove(&conn);
        true
    }

    /// The peer went away (EOF, reset, or the adapter gave up on it).
    pub fn closed(&mut self, conn: ConnId, now: Millis) {
        self.forget(conn, now);
    }

    /// Runs every timer due at `now`.
    pub fn tick(&mut self, now: Millis) {
        while let Some((at, timer)) = self.timers.pop_due(now) {
            match timer {
                Timer::AuthDeadline(conn) => {
                    let rejection = Rejection::new(ErrorKind::AuthTimeout, "no Authenticate stanza in time");
                    self.reject(conn, None, rejection, now);
                }
                Timer::Session(conn) => self.on_session_timer(conn, now),
                Timer::StatusTtl(eid) => self.on_status_ttl(&eid, at, now),
            }
        }
    }

    /// When `tick` next has work to do.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.timers.next()
    }

    /// The next thing the adapter must do. Outputs that wait on durable
    /// writes are released by one sync for all of them (group commit).
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.out.is_empty() {
            self.advance_sync();
        }
        self.out.pop_front()
    }

    /// Releases what a finished sync made durable, and starts the next sync when writes wait for one. A store
    /// that pipelines hands its fsync out (`Output::Sync`) and the engine goes on meanwhile: one sync is out at a
    /// time, and what is written while it runs waits for the next (group commit, QUE-2).
    fn advance_sync(&mut self) {
        if let Some(released) = &mut self.syncing {
            match self.chat_store.poll_sync() {
                std::task::Poll::Pending => return,
                std::task::Poll::Ready(Ok(())) => self.out.append(released),
                std::task::Poll::Ready(Err(_)) => {
                    // Nothing held back may go out before it is durable: it waits for a sync that succeeds.
                    self.stats.sync_failures += 1;
                    released.append(&mut self.held);
                    std::mem::swap(released, &mut self.held);
                    self.unsynced = true;
                    self.syncing = None;
                    return;
                }
            }
            self.syncing = None;
        }
        if !self.unsynced {
            // Held while the last sync was out, with nothing written since: durable now.
            self.out.append(&mut self.held);
            return;
        }
        if self.syncs_paused {
            return;
        }
        match self.chat_store.begin_sync() {
            Ok(None) => {
                self.unsynced = false;
                self.out.append(&mut self.held);
            }
            Ok(Some(job)) => {
                self.unsynced = false;
                self.syncing = Some(std::mem::take(&mut self.held));
                self.out.push_back(Output::Sync(job));
            }
            // The next poll tries again.
            Err(_) => self.stats.sync_failures += 1,
        }
    }

    /// Opens or closes an adapter's group-commit window: while paused, the engine starts no new sync (what is
    /// written waits, held), though a sync that finishes still releases what it covered. An adapter that hands
    /// fsyncs to a thread pauses between a sync's start and the earliest start of the next, so that everything
    /// written until then shares that next fsync, and releases the pause when it wants the sync to start.
    pub fn pause_syncs(&mut self, paused: bool) {
        self.syncs_paused = paused;
    }

    /// When a token with this exp stops being good (AUTH-6, AUTH-13): its exp plus the verifier's leeway. A session
    /// ends then, and a revocation is kept until then.
    pub(super) fn token_end(&self, exp_ms: Millis) -> Millis {
        exp_ms.saturating_add(self.verifier.leeway_ms())
    }

    /// Every session's stanza rate (SES).
    pub(super) fn stanza_rate(&self) -> Rate {
        Rate::new(self.config.rate_per_sec, self.config.rate_burst)
    }

    /// When a session's timer is due: its next ping or its token's end, whichever comes first.
    pub(super) fn session_due(&self, session: &Session) -> Millis {
        session.ping.next_at.min(self.token_end(session.token.exp_ms))
    }

    /// A session's timer: the ping tick if it is due (PING-2, PING-4), then the token's end (AUTH-13); the
    /// timer is set again for whichever comes next.
    fn on_session_timer(&mut self, conn: ConnId, now: Millis) {
        if self.with_session(conn, |s| s.ping.next_at <= now) == Some(true) {
            self.on_ping_timer(conn, now);
        }
        let Some(end) = self.with_session(conn, |s| s.token.exp_ms) else {
            return;
        };
        if self.token_end(end) <= now {
            let rejection = Rejection::new(ErrorKind::TokenExpired, "the session's token expired");
            return self.reject(conn, None, rejection, now);
        }
        if let Some(due) = self.session(conn).map(|s| self.session_due(s)) {
            self.timers.set(due, Timer::Session(conn));
        }
    }

    /// A durable write is buffered: outputs from now on wait for the sync.
    pub(super) fn mark_unsynced(&mut self) {
        self.unsynced = true;
    }

    pub(super) fn push_output(&mut self, output: Output) {
        // ENV-14: behind an answer another shard is preparing for the same connection.
        if let Some(output) = self.hold(output) {
            self.emit(output);
        }
    }

    /// An output past the connection's answer order: behind its user's fence ([`Engine::fenced`]), or on.
    pub(super) fn emit(&mut self, output: Output) {
        if let Some(output) = self.hold_for_user(output) {
            self.emit_synced(output);
        }
    }

    /// An output that depends on no durable write ([`Engine::send_volatile`], the server's ping), past the answer
    /// and user orders: while a pipelined sync is out (its store may be a replicated one that waits for a quorum,
    /// or for NATS to come back: issue 17), it goes out at once, so that pings and pongs keep sessions alive and
    /// refusals reach their clients; an `answer` only if no output of its connection is held (ENV-14). With no
    /// sync out it is ordered as any output.
    fn emit_volatile(&mut self, output: Output, answer: bool) {
        let conn = match &output {
            Output::Send { conn, .. } | Output::Close { conn, .. } => Some(*conn),
            Output::Mail { .. } | Output::Sync(_) => None,
        };
        let behind = |held: &VecDeque<Output>| {
            held.iter()
                .any(|o| matches!(o, Output::Send { conn: c, .. } | Output::Close { conn: c, .. } if Some(*c) == conn))
        };
        match &self.syncing {
            Some(syncing) if conn.is_some() && (!answer || (!behind(syncing) && !behind(&self.held))) => {
                self.out.push_back(output)
            }
            _ => self.emit_synced(output),
        }
    }

    /// An output past every order but durability's: out now, or after the pending sync (QUE-2).
    pub(super) fn emit_synced(&mut self, output: Output) {
        if (self.unsynced || self.syncing.is_some()) && output.waits_for_sync() {
            self.held.push_back(output);
        } else {
            self.out.push_back(output);
        }
    }

    fn receive_first(&mut self, conn: ConnId, decoded: Result<Payload, codec::EnvelopeError>, now: Millis) {
        let token = match decoded {
            Ok(Payload::Authenticate(Authenticate { token, r#type: 1, .. })) => token,
            other => {
                // ERR-2 (SPEC TRN-11's decision): the offending stanza's route when the frame decodes, else "".
                let route = other.ok().map(|payload| codec::Route::of(&payload).number());
                let rejection = Rejection::new(ErrorKind::TokenMissing, "the first stanza must be Authenticate");
                return self.reject(conn, route, rejection, now);
            }
        };
        if token.is_empty() {
            return self.reject(
                conn,
                Some(27),
                Rejection::new(ErrorKind::TokenMissing, "empty token"),
                now,
            );
        }
        if let Err(kind) = self.start_session(conn, &token, now) {
            self.reject(conn, Some(27), Rejection::new(kind, "authentication failed"), now);
        }
    }

    fn dispatch(&mut self, conn: ConnId, payload: Payload, now: Millis) -> Handled {
        let route = Route::of(&payload);
        if route.direction() == Direction::ServerToClient {
            return Err(Rejection::new(
                ErrorKind::NotAllowed,
                format!("route {route} is sent by servers only"),
            ));
        }
        match payload {
            Payload::PingpongMessage(ping) => self.on_pingpong(conn, ping, now),
            Payload::AwarenessNotification(note) => self.on_awareness_notification(conn, note, now),
            Payload::AwarenessRequest(request) => self.on_awareness_request(conn, request, now),
            Payload::AwarenessSubscription(sub) => self.on_awareness_subscription(conn, sub, now),
            Payload::SubscriberAddRequest(request) => self.on_subscriber_add(conn, request, now),
            Payload::SubscriberRemove(request) => self.on_subscriber_remove(conn, request, now),
            Payload::BlockSubscriber(request) => self.on_block(conn, request, now),
            Payload::AwarenessVisibility(request) => self.on_visibility(conn, request, now),
            Payload::LocationStream(fix) => self.on_location(conn, fix, now),
            Payload::TextPayloadRequest(request) => self.on_text(conn, request, now),
            Payload::MediaPayloadRequest(request) => self.on_media(conn, request, now),
            Payload::AcknowledgmentRequest(request) => self.on_ack(conn, request, now),
            Payload::TokenRevokeRequest(request) => self.on_token_revoke(conn, request, now),
            Payload::TokenRefreshRequest(request) => self.on_token_refresh(conn, request, now),
            Payload::Logout(logout) => self.on_logout(conn, logout, now),
            Payload::Authenticate(_) => Err(Rejection::new(
                ErrorKind::NotAllowed,
                "the session is already authenticated",
            )),
            Payload::VersionUpdate(update) => match update.r#type {
                // The sender's optional receipt (SPEC CHAT): accepted, no effect.
                2 => Ok(()),
                1 => Err(Rejection::new(
                    ErrorKind::NotAllowed,
                    "clients send VersionUpdate RESPONSE (type 2) only",
                )),
                _ => Err(Rejection::new(ErrorKind::InvalidField, "VersionUpdate.type must be 2")),
            },
            _ => Err(Rejection::new(
                ErrorKind::UnknownRoute,
                format!("route {route} is not implemented by this server"),
            )),
        }
    }

    /// Sends the ErrorMessage for `rejection`; closes the connection when the
    /// kind is fatal or the connection keeps failing (SPEC SES).
    pub(super) fn reject(&mut self, conn: ConnId, route: Option<i64>, rejection: Rejection, now: Millis) {
        // A closed connection still hears the refusals of stanzas handled before it closed (ENV-14).
        if !self.conns.contains_key(&conn) && !self.crossing.held.contains_key(&conn) {
            return;
        }
        let Rejection { kind, details, ref_id } = rejection;
        *self.stats.errors.entry(kind.code()).or_default() += 1;
        let message = kind.to_message(route, details, ref_id, now);
        if kind == ErrorKind::Unavailable {
            // A refused write, or a service that is away: nothing durable stands behind it.
            self.send_volatile(conn, Payload::ErrorMessage(message));
        } else {
            self.send(conn, Payload::ErrorMessage(message));
        }
        if kind.is_fatal() {
            return self.close(conn, CloseReason::Error(kind), now);
        }
        let limit = self.config.max_consecutive_errors;
        let mut too_many = false;
        self.with_session(conn, |s| {
            s.consecutive_errors += 1;
            too_many = s.consecutive_errors >= limit;
        });
        if too_many {
            let message = ErrorKind::RateLimited.to_message(None, "too many consecutive errors", "", now);
            *self.stats.errors.entry(ErrorKind::RateLimited.code()).or_default() += 1;
            self.send(conn, Payload::ErrorMessage(message));
            self.close(conn, CloseReason::Error(ErrorKind::RateLimited), now);
        }
    }

    /// Queues a stanza that answers nothing the client sent (the server's own ping): ENV-14 orders answers, so it
    /// goes out ahead of answers other shards are still preparing, or a session waiting for a slow node would miss
    /// its pings and be closed as dead; it stays behind its user's fence (SES-4, SES-9).
    pub(super) fn send_unanswering(&mut self, conn: ConnId, payload: Payload) {
        let route = Route::of(&payload);
        *self.stats.stanzas_out.entry(route.number()).or_default() += 1;
        let stanza = Bytes::from(codec::encode(&payload));
        if let Some(output) = self.hold_for_user(Output::Send { conn, stanza }) {
            self.emit_volatile(output, false);
        }
    }

    /// Queues an answer that no durable write stands behind (a pong, a 503 that refuses a write): it keeps its
    /// place among the connection's answers (ENV-14) but does not wait for a sync that covers only others' writes.
    pub(super) fn send_volatile(&mut self, conn: ConnId, payload: Payload) {
        let route = Route::of(&payload);
        *self.stats.stanzas_out.entry(route.number()).or_default() += 1;
        let stanza = Bytes::from(codec::encode(&payload));
        if let Some(output) = self.hold(Output::Send { conn, stanza })
            && let Some(output) = self.hold_for_user(output)
        {
            self.emit_volatile(output, true);
        }
    }

    /// Queues one stanza for a connection.
    pub(super) fn send(&mut self, conn: ConnId, payload: Payload) {
        let stanza = Bytes::from(codec::encode(&payload));
        self.send_encoded(conn, Route::of(&payload), stanza);
    }

    /// Sends every device of `eid` (a user of this shard) the stanza `make` builds for that device's identity;
    /// returns how many devices it reached.
    pub(super) fn send_to_devices(&mut self, eid: &str, mut make: impl FnMut(&mut Self, Identity) -> Payload) -> usize {
        let devices: Vec<ConnId> = self.registry.devices(eid).map(|(_, c)| c).collect();
        let mut reached = 0;
        for device in devices {
            let Some(to) = self.identity(device).map(SessionIdentity::to_proto) else {
                continue;
            };
            let payload = make(self, to);
            self.send(device, payload);
            reached += 1;
        }
        reached
    }

    /// Queues one stanza already encoded (shared by several copies).
    pub(super) fn send_encoded(&mut self, conn: ConnId, route: Route, stanza: Bytes) {
        *self.stats.stanzas_out.entry(route.number()).or_default() += 1;
        self.push_output(Output::Send { conn, stanza });
    }

    /// Ends a connection: forget it, then tell the adapter to close it.
    pub(super) fn close(&mut self, conn: ConnId, reason: CloseReason, now: Millis) {
        if self.forget(conn, now) {
            self.push_output(Output::Close { conn, reason });
        }
    }

    /// Drops every trace of a connection; false if it was unknown.
    fn forget(&mut self, conn: ConnId, now: Millis) -> bool {
        let Some(old) = self.conns.remove(&conn) else {
            return false;
        };
        self.stats.connections_closed += 1;
        // What waits behind answers still out on other shards stays held (the Close too): the answers come back,
        // go out first, then the rest (ENV-14 up to the last stanza handled). A peer that is gone misses them all.
        match old.state {
            ConnState::AwaitingAuth { deadline } => {
                if let Some(at) = deadline {
                    self.timers.cancel(at, Timer::AuthDeadline(conn));
                }
            }
            ConnState::Live(session) => {
                self.timers.cancel(self.session_due(&session), Timer::Session(conn));
                let eid = &session.identity.eid;
                // A replaced session is no longer the registered one: no flap (SES-2).
                let was_current = self.registry.remove(eid, &session.identity.device, conn);
                let last = was_current && self.registry.device_count(eid) == 0;
                self.session_ended(conn, eid, last, now);
            }
        }
        true
    }

    /// Records a social change durably, then applies it (SES-8).
    pub(super) fn record(&mut self, event: SocialEvent) -> Handled {
        self.social_log
            .append(&event)
            .map_err(|e| Rejection::new(ErrorKind::Unavailable, format!("could not record the change: {e}")))?;
        self.social.apply(&event);
        self.broadcast(Letter::Social(event));
        Ok(())
    }

    /// Runs `f` on the connection's live session, if it has one.
    pub(super) fn with_session<T>(&mut self, conn: ConnId, f: impl FnOnce(&mut Session) -> T) -> Option<T> {
        match &mut self.conns.get_mut(&conn)?.state {
            ConnState::Live(session) => Some(f(session)),
            ConnState::AwaitingAuth { .. } => None,
        }
    }

    /// The connection's session, once authenticated.
    pub(super) fn session(&self, conn: ConnId) -> Option<&Session> {
        match &self.conns.get(&conn)?.state {
            ConnState::Live(session) => Some(session),
            ConnState::AwaitingAuth { .. } => None,
        }
    }

    /// The identity of the connection's session.
    pub(super) fn identity(&self, conn: ConnId) -> Option<&SessionIdentity> {
        self.session(conn).map(|s| &s.identity)
    }

    /// A fresh id, unique in this engine's lifetime; `now` keeps ids unique
    /// across restarts without reading a clock or a random source.
    pub(super) fn fresh_id(&mut self, prefix: &str, now: Millis) -> String {
        self.next_id += 1;
        if self.shard.count > 1 {
            // Unique across shards too.
            return format!("{prefix}{now:x}-{}.{}", self.shard.index, self.next_id);
        }
        format!("{prefix}{now:x}-{}", self.next_id)
    }

    /// Fills an identity field the server owns, or refuses a spoofed one
    /// (SPEC ENV: the server never trusts a client's `from`).
    pub(super) fn claim(&self, conn: ConnId, slot: &mut Option<Identity>, field: &str) -> Handled {
        let Some(me) = self.identity(conn) else {
            return Err(Rejection::new(ErrorKind::Internal, "no session"));
        };
        if let Some(given) = slot {
            let eid_differs = !given.eid.is_empty() && given.eid != *me.eid;
            let device_differs = !given.connection_resource_id.is_empty() && given.connection_resource_id != *me.device;
            if eid_differs || device_differs {
                return Err(Rejection::new(
                    ErrorKind::IdentityMismatch,
                    format!(
                        "`{field}` names {}/{}, not this session",
                        given.eid, given.connection_resource_id
                    ),
                ));
            }
        }
        *slot = Some(me.to_proto());
        Ok(())
    }
}
