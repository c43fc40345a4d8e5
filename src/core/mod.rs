//! The sans-IO protocol core (as in quinn-proto and rustls): every rule of
//! SPEC.md that concerns sessions lives here, and nothing here touches a
//! socket, a file or a clock.
//!
//! The caller (a tokio adapter, the turmoil simulation, a test) feeds it
//! inputs: a connection opened with its token, bytes of one stanza, a WebSocket
//! text frame, a framing error, the peer going away, the current time. It
//! drains outputs: stanzas to send to a connection and connections to close.
//! Time is always an argument (`Millis`, ms since the Unix epoch); the only
//! storage it reaches is the one the caller hands it ([`Revocations`]), so the
//! same inputs replay the same outputs.

mod ack;
pub mod auth;
mod awareness;
mod block;
pub mod chat;
mod engine;
mod limits;
mod location;
mod logout;
pub mod operator;
mod pingpong;
mod push;
pub mod queue;
mod registry;
mod revocation;
mod session;
pub mod shard;
pub mod social;
mod subscriber;
mod timers;
mod token;
mod visibility;
mod wire;
pub use wire::WireError;

pub use engine::{Engine, Stats};
pub use registry::Registry;
pub use revocation::{IssuedUntil, MemoryRevocations, RevocationList, Revocations, StoreError};
pub use shard::{Mail, ShardId};

use bytes::Bytes;

use crate::codec::{DEFAULT_MAX_STANZA_BYTES, ErrorKind};

/// Milliseconds since the Unix epoch (UTC). Every time the core sees is one.
pub type Millis = i64;

/// A connection, named by the adapter that owns its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// How a connection reached the server (SPEC §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The token came with the HTTP upgrade request.
    WebSocket,
    /// The token comes in the first frame, an Authenticate stanza.
    Tcp,
}

/// Why the server ends a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client logged out (WebSocket close 1000).
    Normal,
    /// A fatal error of SPEC's table; the ErrorMessage went out just before.
    Error(ErrorKind),
}

impl CloseReason {
    /// The WebSocket close code (SPEC TRN): 1000, or the error kind's code.
    pub fn ws_close_code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::Error(kind) => kind.ws_close_code().unwrap_or(4000 + kind.code()),
        }
    }
}

/// What the core asks its adapter to do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send one encoded MessageScheme on the connection.
    Send { conn: ConnId, stanza: Bytes },
    /// Flush what was sent, then close the connection. The core has already
    /// forgotten it: later inputs for it are ignored.
    Close { conn: ConnId, reason: CloseReason },
    /// Deliver mail to another shard ([`Engine::deliver`]), after this shard's earlier mail to it.
    Mail { to: usize, mail: Mail },
    /// Run this fsync off the engine's thread, then poll the engine again: the outputs that wait for it leave
    /// once it has run (a pipelined group commit, QUE-2; only from a store that pipelines, `ChatStore::begin_sync`).
    Sync(queue::SyncJob),
}

/// Limits and timers of SPEC §19; `Default` is SPEC's defaults.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Largest stanza accepted, bytes (TRN).
    pub max_stanza_bytes: usize,
    /// A native TCP connection must authenticate within this many ms (TRN).
    pub auth_deadline_ms: Millis,
    /// The server pings every session this often, ms (PING).
    pub ping_interval_ms: Millis,
    /// Consecutive unanswered server pings that end a session (PING).
    pub max_missed_pongs: u32,
    /// Sustained stanzas per second per connection (SES).
    pub rate_per_sec: u32,
    /// Burst of stanzas per connection above the sustained rate (SES).
    pub rate_burst: u32,
    /// Consecutive rejected stanzas that end a connection (SES).
    pub max_consecutive_errors: u32,
    /// Concurrent sessions (devices) per EID (SES).
    pub max_sessions_per_eid: usize,
    /// Retained queue items per receiver before new chats get 503 (QUE-10).
    pub queue_max_items: usize,
    /// Retained queue bytes per receiver before new chats get 503 (QUE-10).
    pub queue_max_bytes: usize,
    /// OUT-4 (MAY): send `Logout{type: 2, status: 1}` (DISCONNECT) to a
    /// session another device revoked, ahead of 401 `token_revoked`. Off by
    /// default; the conformance suite is run with it on too, so that checks
    /// stay tolerant of a server that uses the MAY.
    pub revoke_notice: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_stanza_bytes: DEFAULT_MAX_STANZA_BYTES,
            auth_deadline_ms: 10_000,
            ping_interval_ms: 30_000,
            max_missed_pongs: 2,
            rate_per_sec: 100,
            rate_burst: 200,
            max_consecutive_errors: 50,
            max_sessions_per_eid: 10,
            queue_max_items: 100_000,
            queue_max_bytes: 64 * 1024 * 1024,
            revoke_notice: false,
        }
    }
}

/// Who a session is: the token's eid and device id (SPEC AUTH). The server
/// only ever uses this, never a client's `from`. Shared strings: handlers
/// copy the identity of the session they serve for every stanza.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionIdentity {
    pub eid: std::sync::Arc<str>,
    pub device: std::sync::Arc<str>,
}

impl SessionIdentity {
    pub fn new(eid: &str, device: &str) -> SessionIdentity {
        SessionIdentity {
            eid: eid.into(),
            device: device.into(),
        }
    }

    /// As a protobuf Identity.
    pub fn to_proto(&self) -> crate::proto::Identity {
        crate::proto::Identity {
            eid: self.eid.to_string(),
            connection_resource_id: self.device.to_string(),
        }
    }
}

#[cfg(test)]
mod tests;
