//! Frames between nodes delivered in order, each once, over core NATS, which delivers at most once: a frame in
//! flight when a NATS server dies, or queued for a node that NATS cut off as a slow consumer, is gone. A lost
//! `Append` would hold a message's VersionUpdate while its resend is answered from the resend record (CHAT-14),
//! losing an acknowledged message; a lost `Social` would leave a replica of the graph behind for good.
//!
//! So each frame a node sends another carries the sender's start (`epoch`, later for a later start) and a sequence
//! number per pair of nodes, and stays in the sender's resend window until the receiver acknowledges it. The
//! receiver delivers only the next number it expects, drops a duplicate, and on a gap drops the frame and says so
//! at once; it acknowledges what it delivered a few milliseconds later, one acknowledgment for many frames. The
//! sender drops what is acknowledged and sends the whole window again when told of a gap, when nothing was
//! acknowledged for [`RESEND_AFTER_MS`], and when its NATS connection is back (go-back-N, as TCP without
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

/// A window with nothing acknowledged for this long is sent again.
pub const RESEND_AFTER_MS: Millis = 200;
/// How long a receiver waits to acknowledge, so that one acknowledgment covers the frames of a burst.
pub const ACK_DELAY_MS: Millis = 5;
/// The least time between two resends of a window that a gap asked for: every frame after a gap reports it.
const GAP_RESEND_EVERY_MS: Millis = 20;

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
    /// Sent, not yet acknowledged, in order.
    window: VecDeque<(u64, Bytes)>,
    /// When the window last moved (an acknowledgment, a resend, its first frame).
    moved_at: Millis,
    /// When a gap last made it resend.
    gap_resent_at: Option<Millis>,
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
        let (me, epoch) = (self.me, self.epoch);
        let Some(out) = self.to.get_mut(to) else { return };
        let seq = out.next;
        out.next += 1;
        if out.window.is_empty() {
            out.moved_at = now;
        }
        let base = out.window.front().map_or(seq, |(first, _)| *first);
        out.window.push_back((seq, frame.clone()));
        self.output.push_back((to, data(me, epoch, seq, base, frame)));
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
                if out.window.len() != before {
                    out.moved_at = now;
                }
                let recently = out.gap_resent_at.is_some_and(|at| now < at + GAP_RESEND_EVERY_MS);
                if a.gap && !recently && self.up {
                    self.to[from].gap_resent_at = Some(now);
                    self.resend(from, now);
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
            let out = &self.to[node];
            if !out.window.is_empty() && now >= out.moved_at + RESEND_AFTER_MS {
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
            .map(|o| o.moved_at + RESEND_AFTER_MS);
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

    fn resend(&mut self, node: usize, now: Millis) {
        let (me, epoch) = (self.me, self.epoch);
        let out = &mut self.to[node];
        let Some(base) = out.window.front().map(|(seq, _)| *seq) else {
            return;
        };
        out.moved_at = now;
        for (seq, frame) in &out.window {
            self.output
                .push_back((node, data(me, epoch, *seq, base, frame.clone())));
        }
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
    pb::Link {
        kind: Some(pb::Kind::Data(data)),
    }
    .encode_to_vec()
    .into()
}

fn ack(from: usize, own: u64, epoch: u64, upto: u64, gap: bool) -> Bytes {
    let ack = pb::Ack {
        from: u32::try_from(from).unwrap_or(u32::MAX),
        epoch,
        upto,
        gap,
        own,
    };
    pb::Link {
        kind: Some(pb::Kind::Ack(ack)),
    }
    .encode_to_vec()
    .into()
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
