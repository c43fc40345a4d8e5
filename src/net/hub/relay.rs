//! The hub's side of a cluster (src/cluster): inputs of connections whose home shard is on another node go out as
//! frames, and frames from other nodes come in as inputs of this node's shards or outputs to its connections.
//!
//! A connection stays where its socket is; only its inputs and outputs travel. Its link (writer queue) moves from
//! the shard that took it to this relay when its home turns out to be remote, as it moves between shards of one
//! node, so every output of the home reaches the writer in the home's order.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{Hub, Input, Link, Out, unpoison};
use crate::cluster::frame::Kind;
use crate::cluster::{Frame, FrameSink};
use crate::codec::{ErrorKind, FrameError};
use crate::core::shard::home;
use crate::core::{CloseReason, ConnId, Mail, Transport};
use crate::net::outbox::PushError;

/// Frames for other nodes, in the order they were made: one task publishes them in that order
/// (`cluster::link`), so what one shard sends another node keeps its order (FIFO per pair, src/core/README.md).
/// Unbounded, as a shard's mailbox on one node is: a shard never waits for the network under its lock.
#[derive(Clone)]
pub(crate) struct Outward(mpsc::UnboundedSender<(usize, Bytes)>);

impl Outward {
    pub fn new() -> (Outward, mpsc::UnboundedReceiver<(usize, Bytes)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Outward(tx), rx)
    }

    pub fn send(&self, node: usize, frame: &Frame) {
        // Closed only once the node is shutting down: nothing is waiting for the frame then.
        let _ = self.0.send((node, frame.encode_to_bytes()));
    }
}

/// A connection on this node whose home is another node's shard.
struct Away {
    link: Link,
    home: usize,
}

pub(crate) struct Relay {
    outward: Outward,
    /// The NATS connection is lost: no new session opens on this node, since its home or the shards it would
    /// reach may be out of reach (SPEC 6.6).
    cut: std::sync::atomic::AtomicBool,
    away: Mutex<BTreeMap<ConnId, Away>>,
    /// WebSocket upgrades waiting for their home's answer.
    opens: Mutex<BTreeMap<ConnId, oneshot::Sender<Result<(), ErrorKind>>>>,
}

impl Relay {
    pub fn new(outward: Outward) -> Relay {
        Relay {
            outward,
            cut: std::sync::atomic::AtomicBool::new(false),
            away: Mutex::new(BTreeMap::new()),
            opens: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn send(&self, node: usize, frame: &Frame) {
        self.outward.send(node, frame);
    }

    fn adopt(&self, conn: ConnId, link: Link, home: usize) {
        unpoison(&self.away).insert(conn, Away { link, home });
    }

    /// Forgets a connection; whether it was known.
    pub fn forget(&self, conn: ConnId) -> bool {
        unpoison(&self.away).remove(&conn).is_some()
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn kill_links(&self) {
        for away in unpoison(&self.away).values() {
            away.link.tx.kill();
        }
    }
}

impl Hub {
    /// Whether this node is part of a cluster.
    pub fn is_clustered(&self) -> bool {
        self.relay.is_some()
    }

    /// A WebSocket upgrade whose token names a user homed on another node: that node decides it. Waits for its
    /// answer, at most `wait` (then 503 `unavailable`: nothing is open that the client could not see). `None`:
    /// the home is on this node, where [`Hub::open`] decides.
    pub async fn open_remote(
        &self,
        conn: &super::ConnRef,
        token: Option<&str>,
        wait: Duration,
    ) -> Option<Result<(), ErrorKind>> {
        let relay = self.relay.as_ref()?;
        if relay.is_cut() {
            return Some(Err(ErrorKind::Unavailable));
        }
        let eid = token.and_then(crate::core::auth::unverified_eid)?;
        let to = home(&eid, self.shards.len());
        if self.layout.is_local(to) {
            return None;
        }
        conn.routed.store(true, std::sync::atomic::Ordering::Relaxed);
        let Some(link) = self.lock(conn.shard()).links.remove(&conn.id) else {
            // Killed at shutdown meanwhile.
            return Some(Err(ErrorKind::Unavailable));
        };
        let (tx, rx) = oneshot::channel();
        unpoison(&relay.opens).insert(conn.id, tx);
        relay.adopt(conn.id, link, to);
        conn.shard.store(to, std::sync::atomic::Ordering::Relaxed);
        let node = self.layout.node_of_shard(to);
        relay.send(node, &Frame::open(conn.id, to, Transport::WebSocket, token));
        let result = match tokio::time::timeout(wait, rx).await {
            Ok(Ok(result)) => result,
            _ => {
                unpoison(&relay.opens).remove(&conn.id);
                // The home may open it after all: tell it the connection is gone.
                relay.send(node, &Frame::closed(conn.id, to));
                Err(ErrorKind::Unavailable)
            }
        };
        if result.is_err() {
            relay.forget(conn.id);
        }
        tracing::debug!(target: "bimip::cluster::conns", conn = %conn.id, eid, to, ?result, "opened at its home");
        Some(result)
    }

    /// A native TCP connection whose Authenticate names a user homed on another node: its shard here lets go of
    /// it, and its home opens it.
    pub(super) fn hand_off_remote(&self, conn: &super::ConnRef, to: usize) {
        let Some(relay) = &self.relay else { return };
        if relay.is_cut() {
            // Its home is out of reach: it ends as a connection of a node cut off does (SES-10).
            if let Some(link) = self.let_go(conn, conn.shard()) {
                link.tx.go_away();
            }
            return;
        }
        let Some(link) = self.let_go(conn, conn.shard()) else {
            return;
        };
        relay.adopt(conn.id, link, to);
        conn.shard.store(to, std::sync::atomic::Ordering::Relaxed);
        relay.send(
            self.layout.node_of_shard(to),
            &Frame::open(conn.id, to, Transport::Tcp, None),
        );
    }

    /// A frame for a shard of this node that names another node's connection, or `None` if it does not.
    fn checked(&self, conn: u64, shard: u32) -> Option<(ConnId, usize)> {
        let conn = ConnId(conn);
        let shard = usize::try_from(shard).ok()?;
        let from = self.layout.node_of_conn(conn);
        let ok = shard < self.shards.len()
            && self.layout.is_local(shard)
            && from != self.layout.node
            && from < self.layout.nodes.len();
        if !ok {
            tracing::warn!(%conn, shard, "frame for a shard or from a connection that does not fit the layout");
        }
        ok.then_some((conn, shard))
    }

    fn open_for(&self, conn: ConnId, shard: usize, websocket: bool, token: Option<&str>) {
        let transport = if websocket {
            Transport::WebSocket
        } else {
            Transport::Tcp
        };
        let opened = self.with_core(shard, |core, now| core.open(conn, transport, token, now));
        tracing::debug!(target: "bimip::cluster::conns", %conn, shard, ?opened, eid = ?token.and_then(crate::core::auth::unverified_eid), "opened for another node");
        let node = self.layout.node_of_conn(conn);
        if let Some(relay) = &self.relay {
            match (transport, opened) {
                (Transport::WebSocket, result) => relay.send(node, &Frame::opened(conn, result)),
                (Transport::Tcp, Ok(())) => {}
                (Transport::Tcp, Err(kind)) => relay.send(node, &Frame::close(conn, CloseReason::Error(kind))),
            }
        }
    }

    fn queue(&self, shard: usize, input: Input) {
        self.inbox(shard).push_back(input);
        self.pump(vec![shard]);
    }

    /// An output of another node's shard for a connection of this node.
    fn deliver(&self, conn: ConnId, out: Out) {
        let Some(relay) = &self.relay else { return };
        let last = matches!(out, Out::Close(_));
        let mut away = unpoison(&relay.away);
        let Some(entry) = away.get(&conn) else {
            tracing::debug!(target: "bimip::cluster::conns", %conn, last, "output for a connection gone from here dropped");
            return;
        };
        let home = entry.home;
        match entry.link.tx.try_send(out) {
            Ok(()) if last => {
                away.remove(&conn);
            }
            Ok(()) => {}
            Err(PushError::Full) => {
                tracing::debug!(%conn, "outbound queue full; dropping the connection");
                if let Some(gone) = away.remove(&conn) {
                    gone.link.tx.kill();
                }
                drop(away);
                if !last {
                    relay.send(self.layout.node_of_shard(home), &Frame::closed(conn, home));
                }
            }
            Err(PushError::Closed) => {
                away.remove(&conn);
                drop(away);
                if !last {
                    relay.send(self.layout.node_of_shard(home), &Frame::closed(conn, home));
                }
            }
        }
    }
}

impl FrameSink for Hub {
    /// Lost: every connection of this node whose home is on another node ends as at a shutdown (WebSocket 1001),
    /// so its client reconnects, to this node once NATS is back or to another; new connections are refused with
    /// 503 `unavailable` until then. Sessions homed here go on; their chats and acknowledgments that need another
    /// node are refused with 503 at once (`Engine::set_unreachable`).
    fn link_state(&self, up: bool) {
        let Some(relay) = &self.relay else { return };
        relay.cut.store(!up, std::sync::atomic::Ordering::Relaxed);
        let elsewhere: Vec<usize> = match up {
            true => Vec::new(),
            false => (0..self.layout.shard_count())
                .filter(|s| !self.layout.is_local(*s))
                .collect(),
        };
        for shard in self.layout.local_shards().collect::<Vec<_>>() {
            self.with_core(shard, |core, _| core.engine.set_unreachable(elsewhere.iter().copied()));
        }
        if !up {
            let gone = std::mem::take(&mut *unpoison(&relay.away));
            tracing::debug!(target: "bimip::cluster::conns", conns = ?gone.keys().collect::<Vec<_>>(), "NATS lost: going away");
            for away in gone.values() {
                away.link.tx.go_away();
            }
            // Their homes hear of it when NATS is back (Closed frames wait in the client's buffer).
            for (conn, away) in gone {
                relay.send(self.layout.node_of_shard(away.home), &Frame::closed(conn, away.home));
            }
        }
    }

    /// Node `node` started again (SES-11): the sessions of this node homed there are gone with it, so their
    /// connections end as at a shutdown (1001) and their clients reconnect; the sessions homed here whose sockets
    /// were there are gone too; and each shard here sends again what it waits for there, ending the connections
    /// whose answers may have been lost with it ([`crate::core::Engine::peer_restarted`]).
    fn peer_restarted(&self, node: usize) {
        if let Some(relay) = &self.relay {
            let mut away = unpoison(&relay.away);
            let homed_there: Vec<ConnId> = away
                .iter()
                .filter(|(_, a)| self.layout.node_of_shard(a.home) == node)
                .map(|(conn, _)| *conn)
                .collect();
            for conn in homed_there {
                tracing::debug!(target: "bimip::cluster::conns", %conn, node, "its home started again: going away");
                if let Some(gone) = away.remove(&conn) {
                    gone.link.tx.go_away();
                }
            }
        }
        let lost: Vec<usize> = (0..self.layout.shard_count())
            .filter(|s| self.layout.node_of_shard(*s) == node)
            .collect();
        for shard in self.layout.local_shards().collect::<Vec<_>>() {
            self.with_core(shard, |core, now| {
                let orphans: Vec<ConnId> = core
                    .engine
                    .connection_ids()
                    .filter(|conn| self.layout.node_of_conn(*conn) == node)
                    .collect();
                for conn in orphans {
                    tracing::debug!(target: "bimip::cluster::conns", %conn, node, "its node started again: closed");
                    core.closed(conn, now);
                }
                core.engine.peer_restarted(&lost, now);
            });
        }
    }

    fn take_frame(&self, bytes: &[u8]) {
        let kind = match Frame::decode_kind(bytes) {
            Ok(kind) => kind,
            Err(error) => {
                tracing::warn!(%error, "frame from another node dropped");
                return;
            }
        };
        match kind {
            Kind::Open(open) => {
                if let Some((conn, shard)) = self.checked(open.conn, open.shard) {
                    self.open_for(conn, shard, open.websocket, open.token.as_deref());
                }
            }
            Kind::Stanza(carried) => {
                if let Some((conn, shard)) = self.checked(carried.conn, carried.shard) {
                    self.queue(shard, Input::Stanza(conn, carried.stanza));
                }
            }
            Kind::TextFrame(at) => {
                if let Some((conn, shard)) = self.checked(at.conn, at.shard) {
                    self.with_engine(shard, |engine, now| engine.text_frame(conn, now));
                }
            }
            Kind::TooLarge(large) => {
                if let Some((conn, shard)) = self.checked(large.conn, large.shard) {
                    let error = FrameError::TooLarge {
                        declared: large.declared,
                        max: usize::try_from(large.max).unwrap_or(usize::MAX),
                    };
                    self.with_engine(shard, |engine, now| engine.framing_error(conn, &error, now));
                }
            }
            Kind::Closed(at) => {
                if let Some((conn, shard)) = self.checked(at.conn, at.shard) {
                    tracing::debug!(target: "bimip::cluster::conns", %conn, shard, "closed on its node");
                    self.with_core(shard, |core, now| core.closed(conn, now));
                }
            }
            Kind::Mail(letter) => {
                let shard = usize::try_from(letter.shard).unwrap_or(usize::MAX);
                if shard >= self.shards.len() || !self.layout.is_local(shard) {
                    tracing::warn!(shard, "mail for a shard not on this node dropped");
                    return;
                }
                match Mail::decode(&letter.mail) {
                    Ok(mail) => self.queue(shard, Input::Mail(mail)),
                    Err(error) => tracing::warn!(%error, shard, "undecodable mail from another node dropped"),
                }
            }
            Kind::Send(carried) => self.deliver(ConnId(carried.conn), Out::Send(carried.stanza)),
            Kind::Close(close) => match close.reason() {
                Ok(reason) => self.deliver(ConnId(close.conn), Out::Close(reason)),
                Err(error) => {
                    tracing::warn!(%error, "close from another node with an unknown reason");
                    self.deliver(ConnId(close.conn), Out::Close(CloseReason::Error(ErrorKind::Internal)));
                }
            },
            Kind::Opened(opened) => {
                let Some(relay) = &self.relay else { return };
                let waiting = unpoison(&relay.opens).remove(&ConnId(opened.conn));
                if let Some(waiting) = waiting {
                    let _ = waiting.send(opened.result().unwrap_or(Err(ErrorKind::Internal)));
                }
            }
        }
    }
}
