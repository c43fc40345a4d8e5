//! The observed history of one simulation: what the workload and the fault
//! schedule did and what every device saw, in the order it happened. Checkers
//! read only this; two runs of one seed render it to the same bytes.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, PoisonError};

use crate::proto::message_scheme::Payload;

/// One line of the history.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Simulated ms since the start.
    pub at: u64,
    /// A device (`u0d1`), `server`, `net` or `sim`.
    pub who: String,
    pub what: What,
}

#[derive(Clone, Debug, PartialEq)]
pub enum What {
    /// A phase of the run begins (`chaos`, `heal`, `settle`, `check`).
    Phase(String),
    /// A fault was injected or lifted.
    Fault(String),
    /// The server host booted (`restart` after a crash).
    Boot {
        restart: bool,
    },
    /// The server host crashed.
    Crash,
    /// A device dials with the token of `jti` (`expired`: its `exp` has passed).
    Connect {
        jti: String,
        expired: bool,
    },
    /// The device got its session (Authenticate RESPONSE).
    Session {
        jti: String,
    },
    /// Dialing or authenticating failed.
    Refused {
        jti: String,
        reason: String,
    },
    /// The device's connection ended.
    Closed {
        code: Option<u16>,
        reason: String,
    },
    /// The device dropped its connection without a close (a client fault).
    Dropped,
    Sent(Payload),
    Received(Payload),
    /// A host panicked or the simulation failed: the server must never do this.
    Panic(String),
    /// The bytes of a stanza the server sent (hex) are not the canonical
    /// encoding of what they decode to (ENV-12), or do not decode at all.
    NotCanonical(String),
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>8} {:<6} ", self.at, self.who)?;
        match &self.what {
            What::Phase(p) => write!(f, "== {p}"),
            What::Fault(s) => write!(f, "fault {s}"),
            What::Boot { restart } => write!(f, "boot{}", if *restart { " (restart)" } else { "" }),
            What::Crash => write!(f, "crash"),
            What::Connect { jti, expired } => {
                write!(f, "connect jti={jti}{}", if *expired { " (expired)" } else { "" })
            }
            What::Session { jti } => write!(f, "session jti={jti}"),
            What::Refused { jti, reason } => write!(f, "refused jti={jti}: {reason}"),
            What::Closed { code, reason } => write!(f, "closed code={code:?} {reason}"),
            What::Dropped => write!(f, "dropped its connection"),
            What::Sent(p) => write!(f, "> {p:?}"),
            What::Received(p) => write!(f, "< {p:?}"),
            What::Panic(m) => write!(f, "PANIC {m}"),
            What::NotCanonical(hex) => write!(f, "< not canonical: {hex}"),
        }
    }
}

/// The history, shared by the runner and every host of one simulation.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Entry>>>);

impl Log {
    pub fn push(&self, who: &str, what: What) {
        let at = turmoil::sim_elapsed().map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.push_at(at, who, what);
    }

    pub fn push_at(&self, at: u64, who: &str, what: What) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(Entry {
            at,
            who: who.to_string(),
            what,
        });
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries from index `from` on.
    pub fn since(&self, from: usize) -> Vec<Entry> {
        let guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        guard.get(from..).map(<[Entry]>::to_vec).unwrap_or_default()
    }

    pub fn take(&self) -> Vec<Entry> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The history as text, one entry a line: what the determinism test compares.
pub fn render(entries: &[Entry]) -> String {
    let mut out = String::new();
    for (i, entry) in entries.iter().enumerate() {
        let _ = writeln!(out, "{i:>6} {entry}");
    }
    out
}
