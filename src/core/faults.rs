//! Deliberate protocol faults of the reference server, for the conformance
//! suite's self-check only (issue 7: every built-in fault must be caught).
//!
//! A fault is active only when it is in [`Config::faults`](super::Config),
//! which is empty by default, is never read from a settings file, and is set
//! only by the simulation driver, the built-in server of `bimip-conform
//! --fault` and the hidden, test-only `bimip serve --fault`. Each fault is
//! consulted at one obvious point: the engine's output path for faults that
//! drop, reorder or rewrite stanzas, and the one rule it breaks otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use super::{ConnId, Output};
use crate::proto::message_scheme::Payload;

/// Acknowledgment states the WrongAckCode fault swaps.
const DELIVERED: i32 = 2;
const READ: i32 = 3;

/// One way the server can be wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// Never sends the sender its VersionUpdate (CHAT-9).
    SkipVersionUpdate,
    /// Holds each chat delivery back until the next one for the same
    /// connection (or the next timer), then sends it second (CHAT-16).
    ReorderChat,
    /// Acknowledgment responses carry delivered and read swapped (ACK).
    WrongAckCode,
    /// A block does not hide presence: sight ignores blocks (BLK, AWR-9).
    LeakPresenceToBlocked,
    /// Token revocation answers success but records nothing and ends no session (TOK).
    IgnoreRevocation,
    /// Client pings are never answered (PING-1).
    NeverPong,
    /// Tokens are accepted whatever their `exp` and `nbf` (AUTH).
    AcceptExpiredToken,
    /// The queue replay at session start is dropped (QUE-3).
    DropOfflineQueue,
    /// A client's `from`/`to` naming another identity is trusted (ENV-11).
    TrustClientFrom,
    /// Every stanza repeats its route field at the end: it decodes the
    /// same, but is not canonical (ENV-12).
    NonCanonicalEncoding,
    /// A LocationStream reaches its named peer, or every subscriber, whether
    /// or not they may see the sender's location (LOC-1, LOC-2).
    LeakLocation,
}

impl Fault {
    pub const ALL: [Fault; 11] = [
        Fault::SkipVersionUpdate,
        Fault::ReorderChat,
        Fault::WrongAckCode,
        Fault::LeakPresenceToBlocked,
        Fault::IgnoreRevocation,
        Fault::NeverPong,
        Fault::AcceptExpiredToken,
        Fault::DropOfflineQueue,
        Fault::TrustClientFrom,
        Fault::NonCanonicalEncoding,
        Fault::LeakLocation,
    ];

    /// The name on command lines: kebab-case.
    pub fn name(self) -> &'static str {
        match self {
            Fault::SkipVersionUpdate => "skip-version-update",
            Fault::ReorderChat => "reorder-chat",
            Fault::WrongAckCode => "wrong-ack-code",
            Fault::LeakPresenceToBlocked => "leak-presence-to-blocked",
            Fault::IgnoreRevocation => "ignore-revocation",
            Fault::NeverPong => "never-pong",
            Fault::AcceptExpiredToken => "accept-expired-token",
            Fault::DropOfflineQueue => "drop-offline-queue",
            Fault::TrustClientFrom => "trust-client-from",
            Fault::NonCanonicalEncoding => "non-canonical-encoding",
            Fault::LeakLocation => "leak-location",
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
}

/// What the output-path faults remember between stanzas.
#[derive(Debug, Default)]
pub(super) struct FaultState {
    /// ReorderChat: the chat delivery held back, per connection.
    pub held_chat: BTreeMap<ConnId, Output>,
    /// DropOfflineQueue: the connection whose queue replay is under way
    /// (from its Authenticate RESPONSE to the first stanza that is not a
    /// queue item, within one engine input).
    pub replaying: Option<ConnId>,
}

impl FaultState {
    /// The output-path faults: false drops the stanza, and the stanza may
    /// be rewritten. ReorderChat is the engine's (it holds whole outputs).
    pub fn on_send(&mut self, faults: &Faults, conn: ConnId, payload: &mut Payload) -> bool {
        if faults.has(Fault::DropOfflineQueue) {
            match payload {
                Payload::Authenticate(answer) if answer.r#type == 2 => self.replaying = Some(conn),
                Payload::ChatMessage(_) | Payload::AcknowledgmentResponse(_) if self.replaying == Some(conn) => {
                    return false;
                }
                _ if self.replaying == Some(conn) => self.replaying = None,
                _ => {}
            }
        }
        match payload {
            Payload::VersionUpdate(_) if faults.has(Fault::SkipVersionUpdate) => false,
            Payload::AcknowledgmentResponse(ack) if faults.has(Fault::WrongAckCode) => {
                ack.status = match ack.status {
                    DELIVERED => READ,
                    READ => DELIVERED,
                    other => other,
                };
                true
            }
            _ => true,
        }
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

    /// Faults are never active unless a test sets them: the default has
    /// none, and a settings file cannot name one.
    #[test]
    fn faults_cannot_come_from_a_settings_file() {
        assert!(super::super::Config::default().faults.is_empty());
        let parsed = toml::from_str::<super::super::Config>("faults = [\"never-pong\"]");
        assert!(parsed.is_err(), "{parsed:?}");
        let parsed = toml::from_str::<super::super::Config>("ping_interval_ms = 5000").expect("a valid file");
        assert!(parsed.faults.is_empty());
    }
}
