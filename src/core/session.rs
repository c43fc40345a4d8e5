//! One connection's state machine (SPEC SES): awaiting authentication (native
//! TCP only), then a live session bound to one token; and how a session starts.
//!
//! ```text
//!  TCP accept ──> AwaitingAuth ──Authenticate ok──> Live ──> (closed: forgotten)
//!  WS upgrade (token ok) ─────────────────────────> Live
//! ```

use super::engine::Engine;
use super::limits::{AWARENESS_RATE, TokenBucket};
use super::timers::Timer;
use super::{ConnId, Millis, SessionIdentity, Transport};
use crate::codec::ErrorKind;
use crate::proto::Authenticate;
use crate::proto::message_scheme::Payload;

pub(super) struct Conn {
    #[allow(dead_code)] // read by the awareness and queue areas as they land
    pub transport: Transport,
    pub state: ConnState,
}

pub(super) enum ConnState {
    /// Native TCP before its Authenticate; `deadline` is the auth deadline.
    AwaitingAuth {
        deadline: Option<Millis>,
    },
    Live(Box<Session>),
}

/// The token a session runs on.
pub(super) struct SessionToken {
    pub jti: Box<str>,
    pub iat_ms: Millis,
    pub exp_ms: Millis,
}

/// Server pings sent and not yet answered (SPEC PING).
#[derive(Default)]
pub(super) struct PingState {
    /// When the next ping tick is due.
    pub next_at: Millis,
    /// Unanswered pings: (id, request_time).
    pub outstanding: Vec<(String, Millis)>,
    /// Consecutive ticks that found a ping unanswered.
    pub missed: u32,
}

pub(super) struct Session {
    pub identity: SessionIdentity,
    pub token: SessionToken,
    pub ping: PingState,
    pub bucket: TokenBucket,
    /// Presence changes and intentions: 5 per second (AWR-18).
    pub awareness_bucket: TokenBucket,
    pub consecutive_errors: u32,
    /// Queue items sent in this session (SPEC 17.2's `s`), from the first one on: an idle session holds none.
    pub delivered: Option<Box<super::queue::Delivered>>,
    /// When the session started (for the backend API's session list).
    pub since: Millis,
}

impl Engine {
    /// Verifies `token` and makes `conn` a live session (SPEC AUTH, SES):
    /// refuses revoked tokens and an eleventh device, replaces an older
    /// session of the same device, then sends Authenticate RESPONSE.
    pub(super) fn start_session(&mut self, conn: ConnId, token: &str, now: Millis) -> Result<(), ErrorKind> {
        let verified = self.verifier.verify(token, now)?;
        let issued_until = self.revocations.issued_until(&verified.eid, Some(&verified.device_id));
        if self.revocations.is_revoked(&verified.jti) || issued_until.is_some_and(|until| verified.iat_ms <= until) {
            return Err(ErrorKind::TokenRevoked);
        }
        let identity = SessionIdentity::new(&verified.eid, &verified.device_id);
        let previous = self.registry.conn_of(&identity.eid, &identity.device);
        if previous.is_none() && self.registry.device_count(&identity.eid) >= self.config.max_sessions_per_eid {
            return Err(ErrorKind::TooManySessions);
        }
        let first_of_user = self.registry.device_count(&identity.eid) == 0;
        let rate = self.stanza_rate();
        let Some(entry) = self.conns.get_mut(&conn) else {
            return Err(ErrorKind::Internal);
        };
        if let ConnState::AwaitingAuth { deadline: Some(at) } = entry.state {
            self.timers.cancel(at, Timer::AuthDeadline(conn));
        }
        let ping_at = now.saturating_add(self.config.ping_interval_ms);
        let session = Session {
            identity: identity.clone(),
            token: SessionToken {
                jti: verified.jti.into(),
                iat_ms: verified.iat_ms,
                exp_ms: verified.exp_ms,
            },
            ping: PingState {
                next_at: ping_at,
                ..PingState::default()
            },
            bucket: TokenBucket::new(rate, now),
            awareness_bucket: TokenBucket::new(AWARENESS_RATE, now),
            consecutive_errors: 0,
            delivered: Default::default(),
            since: now,
        };
        entry.state = ConnState::Live(Box::new(session));
        // Register first: the replaced session then ends as a non-current one (SES-2).
        self.registry.insert(&identity.eid, identity.device.clone(), conn);
        if let Some(old) = previous.filter(|old| *old != conn) {
            let rejection = super::engine::Rejection::new(ErrorKind::SessionReplaced, "a newer session of this device");
            self.reject(old, None, rejection, now);
        }
        self.stats.sessions_started += 1;
        let due = ping_at.min(self.token_end(verified.exp_ms));
        self.timers.set(due, Timer::Session(conn));
        let answer = Authenticate {
            token: String::new(),
            identity: Some(identity.to_proto()),
            r#type: 2,
            status: 1,
            timestamp: now,
            ping_interval_ms: self.config.ping_interval_ms,
            max_stanza_bytes: i64::try_from(self.config.max_stanza_bytes).unwrap_or(i64::MAX),
            expires_at: verified.exp_ms,
        };
        // Before the answer: the session hears nothing until every shard knows the user is online (`Engine::fenced`).
        if first_of_user {
            self.user_came_online(&identity.eid, now);
        }
        self.send(conn, Payload::Authenticate(answer));
        self.replay_queue(conn, now);
        self.send_start_body(conn, now);
        Ok(())
    }
}
