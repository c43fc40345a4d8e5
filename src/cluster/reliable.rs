//! Frames between nodes delivered in order, each once, over core NATS, which delivers at most once: a frame in
//! flight when a NATS server dies, or queued for a node that NATS cut off as a slow consumer, is gone. A lost
//! `Append` would hold a message's VersionUpdate while its resend is answered from the resend record (CHAT-14),
//! losing an acknowledged message; a lost `Social` would leave a replica of the graph behind for good.
//!
//! So each frame a node sends another carries the sender's start (`epoch`, later for a later start) and a sequence
//! number per pair of nodes, and stays in the sender's resend window until the receiver acknowledges it. The
//! receiver delivers only the next number it expects, drops a duplicate, and on a gap drops the frame and says so
//! at once; it acknowledges what it delivered a few milliseconds later, one acknowledgment for many frames. The
//! sender drops what is acknowledged and sends the window again (a new pass, at most [`IN_FLIGHT`] frames out) when
//! told of a gap, when nothing was acknowledged for [`RESEND_AFTER_MS`] (doubled per timeout), and when its NATS
//! connection is back (go-back-N, as TCP without
//! selective acknowledgments). NATS keeps a publisher's order, so a gap means a loss, never a reordering.
//!
//! A node started again has lost what its previous start sent and had not yet seen acknowledged (mail a shard
//! sends waits in no store): a frame carries its window's first number (`base`), and a receiver that meets a
//! later epoch, or meets a sender for the first time (it started again itself), follows it from there. A receiver
//! started again may thus get frames its previous start had already delivered: after a restart, delivery is at
//! least once, and what a frame causes is idempotent where that matters (a copy a device already has is dropped by
//! message id, QUE-7; an `Appended` or `Passed` counts each shard once).
//!
//! Sans-IO: the caller hands in bytes, frames and the time, and publishes what [`Reliable::poll_output`] returns.

use std::collections::VecDeque;

use bytes::Bytes;
use prost::Message;

use crate::core::Millis;

/// A window with nothing acknowledged for this long is sent again; each further timeout without progress doubles
/// the wait, up to [`RESEND_AFTER_MAX_MS`], so that a node that is slow to come back (starting, paused, its NATS
/// subscription overflowing) is not buried under copies of the same window.
pub const RESEND_AFTER_MS: Millis = 200;
pub const RESEND_AFTER_MAX_MS: Millis = 3_200;
/// How long a receiver waits to acknowledge, so that one acknowledgment covers the frames of a burst.
pub const ACK_DELAY_MS: Millis = 5;
/// Frames a node has out to one peer, unacknowledged, before it waits for acknowledgments (flow control): what
/// is sent beyond waits in order, and a resend sends at most this many.
pub const IN_FLIGHT: u64 = 4_096;

/// Why bytes from NATS are not a link message this node can use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LinkError {
    #[error("link message does not decode: {0}")]
    Undecodable(#[from] prost::DecodeError),
    #[error("link message of no known kind")]
    UnknownKind,
    #[error("link message from node {0}, which is not a peer")]
    NotAPeer(u32),
}

/// The link layer of one node towards every other.
#[derive(Debug)]
pub struct Reliable {
    me: usize,
    epoch: u64,
    to: Vec<Outgoing>,
    from: Vec<Incoming>,
    /// NATS is connected: resends go out only then.
    up: bool,
    output: VecDeque<(usize, Bytes)>,
    /// Each peer's start as last seen (its frames' and acknowledgments' epoch); 0: not seen yet.
    peer_epoch: Vec<u64>,
    /// Peers seen to have started again, for [`Reliable::poll_restarted`].
    restarted: VecDeque<usize>,
}

/// Frames to one node.
#[derive(Debug, Default)]
struct Outgoing {
    next: u64,
    /// Not yet acknowledged, in order: transmitted up to `sent_upto`, waiting for room after it.
    window: VecDeque<(u64, Bytes)>,
    /// The last number transmitted in this pass over the window (a resend starts a new pass).
    sent_upto: u64,
    /// When the window last moved (an acknowledgment, a resend, its first frame).
    moved_at: Millis,
    /// The wait for an acknowledgment before the window goes again ([`RESEND_AFTER_MS`], doubled per timeout).
    resend_after: Millis,
}

/// Frames from one node.
#[derive(Debug, Default)]
struct Incoming {
    /// The sender's start followed; 0: none yet.
    epoch: u64,
    expected: u64,
    ack_due: Option<Millis>,
    gap: bool,
}

impl Reliable {
    /// Node `me` of `nodes`, started at `epoch` (a time in milliseconds: a later start must have a larger one).
    pub fn new(me: usize, nodes: usize, epoch: u64) -> Reliable {
        let mut to = Vec::new();
        to.resize_with(nodes, || Outgoing {
            next: 1,
            resend_after: RESEND_AFTER_MS,
            ..Outgoing::default()
        });
        let mut from = Vec::new();
        from.resize_with(nodes, Incoming::default);
        Reliable {
            me,
            epoch: epoch.max(1),
            to,
            from,
            up: true,
            output: VecDeque::new(),
            peer_epoch: vec![0; nodes],
            restarted: VecDeque::new(),
        }
    }

    /// Sends `frame` to node `to`, and keeps it until `to` acknowledges it.
    pub fn send(&mut self, to: usize, frame: Bytes, now: Millis) {
        if to == self.me {
            return;
        }
        let Some(out) = self.to.get_mut(to) else { return };
        let seq = out.next;
        out.next += 1;
        if out.window.is_empty() {
            out.moved_at = now;
        }
        out.window.push_back((seq, frame));
        self.pump(to);
    }

    /// Transmits what the window holds after `sent_upto`, while fewer than [`IN_FLIGHT`] are out.
    fn pump(&mut self, node: usize) {
        let (me, epoch) = (self.me, self.epoch);
        let out = &mut self.to[node];
        let Some(base) = out.window.front().map(|(seq, _)| *seq) else {
            return;
        };
        out.sent_upto = out.sent_upto.max(base - 1);
        while out.sent_upto + 1 < out.next && out.sent_upto + 1 - base < IN_FLIGHT {
            let seq = out.sent_upto + 1;
            let Some((_, frame)) = usize::try_from(seq - base).ok().and_then(|at| out.window.get(at)) else {
                break;
            };
            self.output.push_back((node, data(me, epoch, seq, base, frame.clone())));
            out.sent_upto = seq;
        }
    }

    /// Bytes from this node's subject: the frame to deliver now, if they hold the next one; acknowledgments taken.
    /// A peer seen to have started again is reported by [`Reliable::poll_restarted`] before its frame is
    /// delivered.
    pub fn receive(&mut self, bytes: &[u8], now: Millis) -> Result<Option<Bytes>, LinkError> {
        match pb::Link::decode(bytes)?.kind.ok_or(LinkError::UnknownKind)? {
            pb::Kind::Data(d) => {
                let from = self.peer(d.from)?;
                self.seen(from, d.epoch);
                let incoming = &mut self.from[from];
                if d.epoch < incoming.epoch {
                    return Ok(None);
                }
                if d.epoch > incoming.epoch || incoming.expected < d.base {
                    incoming.epoch = d.epoch;
                    incoming.expected = d.base.max(1);
                }
                if d.seq == incoming.expected {
                    incoming.expected += 1;
                    incoming.ack_due.get_or_insert(now + ACK_DELAY_MS);
                    return Ok(Some(d.frame));
                }
                // A duplicate (acknowledge now, so the resending stops) or a gap (ask for the window again).
                incoming.gap |= d.seq > incoming.expected;
                incoming.ack_due = Some(now);
            }
            pb::Kind::Ack(a) => {
                let from = self.peer(a.from)?;
                self.seen(from, a.own);
                if a.epoch != self.epoch {
                    return Ok(None);
                }
                let out = &mut self.to[from];
                let before = out.window.len();
                while out.window.front().is_some_and(|(seq, _)| *seq <= a.upto) {
                    out.window.pop_front();
                }
                let progress = out.window.len() != before;
                if progress {
                    out.moved_at = now;
                    out.resend_after = RESEND_AFTER_MS;
                }
                // A gap: the pass in flight is lost from there on. Each frame after the gap reports it, so a new
                // pass starts on progress, or once a quarter of the wait went by without any.
                if a.gap && self.up && (progress || now >= out.moved_at + out.resend_after / 4) {
                    self.resend(from, now);
                } else if progress {
                    self.pump(from);
                }
            }
        }
        Ok(None)
    }

    /// Sends what is due: acknowledgments, and windows that waited too long.
    pub fn tick(&mut self, now: Millis) {
        for (node, incoming) in self.from.iter_mut().enumerate() {
            if incoming.ack_due.is_some_and(|due| due <= now) {
                incoming.ack_due = None;
                let gap = std::mem::take(&mut incoming.gap);
                let ack = ack(
                    self.me,
                    self.epoch,
                    incoming.epoch,
                    incoming.expected.saturating_sub(1),
                    gap,
                );
                self.output.push_back((node, ack));
            }
        }
        if !self.up {
            return;
        }
        for node in 0..self.to.len() {
            let out = &mut self.to[node];
            if !out.window.is_empty() && now >= out.moved_at + out.resend_after {
                out.resend_after = (out.resend_after * 2).min(RESEND_AFTER_MAX_MS);
                self.resend(node, now);
            }
        }
    }

    /// When [`Reliable::tick`] next has work.
    pub fn next_deadline(&self) -> Option<Millis> {
        let acks = self.from.iter().filter_map(|i| i.ack_due);
        let resends = self
            .to
            .iter()
            .filter(|o| self.up && !o.window.is_empty())
            .map(|o| o.moved_at + o.resend_after);
        acks.chain(resends).min()
    }

    /// NATS was lost (`false`) or is back (`true`): what was in flight meanwhile may be gone, so every window is
    /// sent again on the way back.
    pub fn link_state(&mut self, up: bool, now: Millis) {
        let back = up && !self.up;
        self.up = up;
        if back {
            for node in 0..self.to.len() {
                self.resend(node, now);
            }
        }
    }

    /// The next message to publish, and the node whose subject it goes to.
    pub fn poll_output(&mut self) -> Option<(usize, Bytes)> {
        self.output.pop_front()
    }

    /// Frames sent to `node` and not yet acknowledged.
    pub fn unacknowledged(&self, node: usize) -> usize {
        self.to.get(node).map_or(0, |o| o.window.len())
    }

    /// Where the link with `node` stands, for a log line about a link that does not drain.
    pub fn describe(&self, node: usize) -> String {
        let (Some(out), Some(incoming)) = (self.to.get(node), self.from.get(node)) else {
            return String::new();
        };
        format!(
            "up {} own epoch {} peer epoch {}; out: next {} window {:?}..={} sent to {} moved at {} resend after {}; \
             in: epoch {} expected {} gap {} ack due {:?}",
            self.up,
            self.epoch,
            self.peer_epoch[node],
            out.next,
            out.window.front().map(|(seq, _)| *seq),
            out.next - 1,
            out.sent_upto,
            out.moved_at,
            out.resend_after,
            incoming.epoch,
            incoming.expected,
            incoming.gap,
            incoming.ack_due,
        )
    }

    /// A peer that started again since this node last heard from it: what it had received and not made durable
    /// is gone, and the caller must send again what it waits for there.
    pub fn poll_restarted(&mut self) -> Option<usize> {
        self.restarted.pop_front()
    }

    fn seen(&mut self, peer: usize, epoch: u64) {
        let known = &mut self.peer_epoch[peer];
        if epoch > *known {
            if *known != 0 {
                self.restarted.push_back(peer);
            }
            *known = epoch;
        }
    }

    /// A new pass over the window, from its first frame.
    fn resend(&mut self, node: usize, now: Millis) {
        let out = &mut self.to[node];
        let Some(base) = out.window.front().map(|(seq, _)| *seq) else {
            return;
        };
        out.moved_at = now;
        out.sent_upto = base - 1;
        self.pump(node);
    }

    fn peer(&self, node: u32) -> Result<usize, LinkError> {
        usize::try_from(node)
            .ok()
            .filter(|n| *n < self.from.len() && *n != self.me)
            .ok_or(LinkError::NotAPeer(node))
    }
}

fn data(from: usize, epoch: u64, seq: u64, base: u64, frame: Bytes) -> Bytes {
    let data = pb::Data {
        from: u32::try_from(from).unwrap_or(u32::MAX),
        epoch,
        seq,
        base,
        frame,
    };
    link(pb::Kind::Data(data))
}

fn ack(from: usize, own: u64, epoch: u64, upto: u64, gap: bool) -> Bytes {
    let ack = pb::Ack {
        from: u32::try_from(from).unwrap_or(u32::MAX),
        epoch,
        upto,
        gap,
        own,
    };
    link(pb::Kind::Ack(ack))
}

fn link(kind: pb::Kind) -> Bytes {
    pb::Link { kind: Some(kind) }.encode_to_vec().into()
}

/// The link messages: field numbers are the format, never reuse one.
mod pb {
    use bytes::Bytes;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Link {
        #[prost(oneof = "Kind", tags = "1, 2")]
        pub kind: Option<Kind>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Data(Data),
        #[prost(message, tag = "2")]
        Ack(Ack),
    }

    /// One frame (`cluster::frame::Frame`'s bytes).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Data {
        #[prost(uint32, tag = "1")]
        pub from: u32,
        /// The sender's start.
        #[prost(uint64, tag = "2")]
        pub epoch: u64,
        #[prost(uint64, tag = "3")]
        pub seq: u64,
        /// The first number of the sender's window when this was sent.
        #[prost(uint64, tag = "4")]
        pub base: u64,
        #[prost(bytes = "bytes", tag = "5")]
        pub frame: Bytes,
    }

    /// Everything up to `upto` of the start `epoch` of the node this goes to was delivered.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Ack {
        #[prost(uint32, tag = "1")]
        pub from: u32,
        #[prost(uint64, tag = "2")]
        pub epoch: u64,
        #[prost(uint64, tag = "3")]
        pub upto: u64,
        /// A frame after a gap came: send the window again.
        #[prost(bool, tag = "4")]
        pub gap: bool,
        /// The acknowledging node's own start.
        #[prost(uint64, tag = "5")]
        pub own: u64,
    }
}

#[cfg(test)]
mod tests;
