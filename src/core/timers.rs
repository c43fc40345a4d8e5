//! Deadlines of the whole engine in one ordered set, so `tick` touches only the
//! timers that are due and `next_deadline` is the first entry.

use std::collections::BTreeSet;

use super::{ConnId, Millis};

/// What happens when a deadline passes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// A native TCP connection has not authenticated in time (TRN-12).
    AuthDeadline(ConnId),
    /// A live session's next deadline: its next server ping (PING-2) or its token's end (AUTH-13), whichever
    /// comes first. One timer per session, not one per deadline: an idle connection's memory is mostly timers.
    Session(ConnId),
    /// A user-set status lapses back to ONLINE (AWR-5). Boxed, not a `String`: every timer of every
    /// connection is as large as the largest variant.
    StatusTtl(Box<str>),
}

/// Every deadline, ordered by time.
#[derive(Debug, Default)]
pub struct Timers {
    due: BTreeSet<(Millis, Timer)>,
}

impl Timers {
    pub fn set(&mut self, at: Millis, timer: Timer) {
        self.due.insert((at, timer));
    }

    pub fn cancel(&mut self, at: Millis, timer: Timer) {
        self.due.remove(&(at, timer));
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Millis> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Removes and returns the first deadline at or before `now`.
    pub fn pop_due(&mut self, now: Millis) -> Option<(Millis, Timer)> {
        match self.due.first() {
            Some((at, _)) if *at <= now => self.due.pop_first(),
            _ => None,
        }
    }
}
