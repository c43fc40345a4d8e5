//! The seam between the engine and the connections where a test may alter
//! traffic as a broken (or merely different) server would: every stanza on
//! its way in, every engine output on its way out, and the timer ticks. The
//! protocol core knows nothing of it; a server without a layer routes the
//! engine's outputs untouched.

use bytes::Bytes;

use crate::core::{ConnId, Millis, Output, Transport};

/// A layer between the engine and the connections ([`crate::faults::FaultLayer`]
/// is one). Calls come in engine order, under the hub's lock.
pub trait Edge: Send {
    /// A stanza arrived on `conn`: what the engine gets instead (`None`: it
    /// gets nothing). Stanzas pushed to `out` go to connections after what
    /// the engine produced before.
    fn inbound(&mut self, conn: ConnId, stanza: Bytes, now: Millis, out: &mut Vec<Output>) -> Option<Bytes>;
    /// One engine output: push what goes to the connections instead.
    fn outbound(&mut self, output: Output, now: Millis, out: &mut Vec<Output>);
    /// The engine's timers ran, or the layer's own deadline came.
    fn tick(&mut self, now: Millis, out: &mut Vec<Output>);
    /// When the layer wants a tick of its own (it holds something until then).
    fn deadline(&self) -> Option<Millis> {
        None
    }
    /// A connection opened over `transport` (on this shard: a native TCP connection opens again on its user's
    /// home shard when its Authenticate moves it there).
    fn opened(&mut self, _conn: ConnId, _transport: Transport) {}
    /// The connection is gone.
    fn closed(&mut self, conn: ConnId);
}
