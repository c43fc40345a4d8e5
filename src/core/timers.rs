//! Deadlines of all connections in one ordered set, so `tick` touches only the
//! timers that are due and `next_deadline` is the first entry.

use std::collections::BTreeSet;

use super::{ConnId, Millis};

/// What happens when a deadline passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// A native TCP connection has not authenticated in time (TRN).
    AuthDeadline,
    /// Time for the next server ping (PING).
    Ping,
    /// The session's token expires (AUTH).
    TokenExpiry,
}

/// Every connection's deadlines, ordered by time.
#[derive(Debug, Default)]
pub struct Timers {
    due: BTreeSet<(Millis, ConnId, Timer)>,
}

impl Timers {
    pub fn set(&mut self, at: Millis, conn: ConnId, timer: Timer) {
        self.due.insert((at, conn, timer));
    }

    pub fn cancel(&mut self, at: Millis, conn: ConnId, timer: Timer) {
        self.due.remove(&(at, conn, timer));
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Millis> {
        self.due.first().map(|(at, _, _)| *at)
    }

    /// Removes and returns the first deadline at or before `now`.
    pub fn pop_due(&mut self, now: Millis) -> Option<(Millis, ConnId, Timer)> {
        match self.due.first() {
            Some(&(at, _, _)) if at <= now => self.due.pop_first(),
            _ => None,
        }
    }
}
