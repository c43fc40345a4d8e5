//! Partitioning by user (src/core/README.md): which shard owns a user and a
//! chat, the mail shards send each other, and the two pieces of bookkeeping a
//! shard needs for work another shard finishes: the answers a connection waits
//! for, held in stanza order (ENV-14), and the queue appends a chat message
//! waits for before it is confirmed (QUE-2).
//!
//! An engine with one shard owns everything and never sends mail; every
//! branch below that sends mail is then dead, so a one-shard engine behaves
//! exactly as the engine did before it was partitioned.

use std::collections::{BTreeMap, VecDeque};

use super::chat::Proposal;
use super::engine::{Engine, Rejection};
use super::queue::{Accepted, ChatEvent, QueueItem, StateRaised};
use super::social::SocialEvent;
use super::{ConnId, Millis, Output};
use crate::proto::message_scheme::Payload;
use crate::proto::{AwarenessNotification, LocationStream};

impl Output {
    /// Whether this output waits for the shard's pending fsync (QUE-2). Everything does but an `Append`: a chat's
    /// home sends the copies of a message while its event is being made durable, and the answer that confirms the
    /// message waits for both ([`recover`] covers a crash in between).
    pub(super) fn waits_for_sync(&self) -> bool {
        !matches!(self, Output::Mail { mail: Mail(letter), .. } if matches!(**letter, Letter::Append { .. }))
    }
}

/// Which shard an engine is, of how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardId {
    pub index: usize,
    pub count: usize,
}

impl Default for ShardId {
    fn default() -> Self {
        ShardId { index: 0, count: 1 }
    }
}

impl ShardId {
    /// Shard `index` of `count` (at least one).
    pub fn new(index: usize, count: usize) -> ShardId {
        let count = count.max(1);
        ShardId {
            index: index.min(count - 1),
            count,
        }
    }

    /// The shard that owns `eid`: its sessions, queue, presence and the graph edges it changes.
    pub fn home_of(self, eid: &str) -> usize {
        home(eid, self.count)
    }

    pub fn owns(self, eid: &str) -> bool {
        self.count == 1 || self.home_of(eid) == self.index
    }

    /// Every shard but this one.
    fn others(self) -> impl Iterator<Item = usize> {
        (0..self.count).filter(move |s| *s != self.index)
    }
}

/// The home of a user or a chat among `count` shards: FNV-1a of the key, mixed by MurmurHash3's finalizer, so the
/// same key lands on the same shard in every process and every run. FNV-1a alone is not enough: its low bits
/// depend on few bits of the key (the lowest on the parity of the odd bytes only), and a shard is picked by them.
pub fn home(key: &str, count: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    usize::try_from(hash % u64::try_from(count.max(1)).unwrap_or(1)).unwrap_or(0)
}

/// Mail from one shard to another. The adapter delivers a shard's mail to another shard in the order it was sent
/// (FIFO per pair of shards); the orderings of src/core/README.md rest on that.
#[derive(Clone, Debug, PartialEq)]
pub struct Mail(pub(super) Box<Letter>);

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Letter {
    /// A user's presence changed on its home (`None`: offline since `at`): every other shard updates its replica
    /// and tells its own watchers (AWR-1, AWR-2, AWR-3).
    Presence {
        eid: String,
        status: Option<i32>,
        ttl: i32,
        at: Millis,
    },
    /// A graph change recorded on its owner's home: every other shard applies it to its replica and tells its own
    /// watchers who gained or lost sight (AWR-11, AWR-12).
    Social(SocialEvent),
    /// A location fix (LOC-2, LOC-3), `from` filled: every other shard keeps it and forwards it to its viewers.
    Fix {
        fix: Box<LocationStream>,
        peer: Option<String>,
    },
    /// An intention for `peer`'s devices (AWR-7), to the peer's home.
    Intention {
        peer: String,
        note: Box<AwarenessNotification>,
    },
    /// A user's queue became full or has room again (QUE-10), from the user's home to every other shard.
    QueueFull { eid: String, full: bool },
    /// A chat message, to the chat's home.
    Propose(Box<Proposal>),
    /// An acknowledgment, to the chat's home.
    Acknowledge(Box<super::ack::Acknowledgment>),
    /// An item for `eid`'s queue, to the user's home; `ticket`: tell the sender once it is durable.
    Append {
        eid: String,
        item: Box<QueueItem>,
        ticket: Option<u64>,
    },
    /// The append of `ticket` is durable (or failed) on `shard`, to the chat home that asked.
    Appended { ticket: u64, ok: bool, shard: usize },
    /// Follows the replicated changes a connection's stanza made (`Presence`, `Social`, `Fix`) to every other shard;
    /// FIFO per pair, so a shard that reads it has applied them. Answered with `Passed`.
    Fence { ticket: u64 },
    /// The `Fence` of `ticket` was reached on `shard`, to the shard that put it up.
    Passed { ticket: u64, shard: usize },
    /// The answer to a stanza another shard handled, to the connection's shard.
    Answer(Box<Answer>),
}

/// Where the stanza that asked for work on another shard came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Origin {
    pub shard: usize,
    pub conn: ConnId,
    /// The connection's answer slot, when the answer may arrive after later stanzas' outputs.
    pub seq: Option<u64>,
}

/// What a connection is told about a stanza another shard handled.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Answer {
    pub origin: Origin,
    /// The stanza's route and correlation id, for the ErrorMessage of a refusal (ERR-3).
    pub route: i64,
    pub reference: String,
    /// An acknowledgment's confirmation of queue items (QUE-4).
    pub confirm: Option<super::queue::Confirm>,
    pub result: Result<Payload, Rejection>,
}

/// A connection's outputs held back behind answers being prepared elsewhere (ENV-14).
#[derive(Debug, Default)]
pub(super) struct Held {
    slots: VecDeque<Slot>,
}

#[derive(Debug)]
struct Slot {
    /// The answer this slot waits for; `None` once it is in (or for outputs that waited for nothing).
    awaiting: Option<u64>,
    /// The shard that prepares the answer: if its node starts again, the answer may never come.
    from: usize,
    outputs: Vec<Output>,
}

/// An answer that waits for queue appends on other shards to be durable.
#[derive(Debug)]
pub(super) struct Waiting {
    /// The appends not yet reported durable: (the user's home, the user, the item), kept to be sent again if that
    /// home's node starts again ([`Engine::peer_restarted`]).
    pub owed: Vec<(usize, String, QueueItem)>,
    pub failed: bool,
    pub answer: Answer,
}

/// A shard's bookkeeping for work that crosses shards.
#[derive(Debug, Default)]
pub(super) struct Crossing {
    /// Connections with answers still out, and what they were to be sent meanwhile.
    pub held: BTreeMap<ConnId, Held>,
    /// The answer being applied now: its outputs go to its own slot.
    pub answering: Option<(ConnId, u64)>,
    next_seq: u64,
    /// Answers waiting for appends, by ticket.
    pub waiting: BTreeMap<u64, Waiting>,
    pub next_ticket: u64,
    /// Users of other shards whose queues are full (QUE-10), as their homes last said.
    pub full: std::collections::BTreeSet<String>,
    /// The connection whose stanza (or opening) is being handled, and the ticket of the fence it put up once it
    /// made a replicated change ([`Engine::fenced`]).
    fencing: Option<(ConnId, Option<u64>)>,
    /// Fences out, by ticket.
    fences: BTreeMap<u64, Fenced>,
    /// Users whose connections' outputs wait behind fences, by EID.
    holds: BTreeMap<String, UserHold>,
    /// Shards on other nodes: this shard's start could not reconcile its chats with their queues ([`recover`] runs
    /// over one node's shards), so a resend of a message accepted before it sends that message's copies there
    /// again (SES-11).
    pub remote: std::collections::BTreeSet<usize>,
    /// When each shard that started again was last seen to ([`Engine::peer_restarted`]): copies of a message
    /// accepted before then may have died there unsynced (those that went along with an answer to it are awaited
    /// by no one here), so a resend of that message sends them there again (SES-11).
    pub restarted: BTreeMap<usize, Millis>,
    /// Shards on nodes this one cannot reach now ([`Engine::set_unreachable`]).
    pub unreachable: std::collections::BTreeSet<usize>,
    /// The latest acceptance time among the messages this shard's start replayed or recovered.
    pub replayed_until: Millis,
    /// The user hold each connection with outputs in one uses (kept after the connection closes, so that its Close
    /// stays behind its last stanzas).
    held_for: BTreeMap<ConnId, String>,
}

/// A fence out: the user whose outputs wait for it, and the shards that have yet to pass it.
#[derive(Debug)]
struct Fenced {
    eid: String,
    remaining: std::collections::BTreeSet<usize>,
}

/// What a user's connections are sent from a fence on, in the order the engine produced it: a fence holds the
/// outputs to *every* connection of its user, not only to the changer's, so that orderings between a user's
/// devices hold as on one shard (SES-1: a replaced session's 409 before the new session's first stanza; TOK-7: a
/// revocation's answer before the revoked device's 401).
#[derive(Debug, Default)]
struct UserHold {
    queue: VecDeque<UserHeld>,
    conns: std::collections::BTreeSet<ConnId>,
}

#[derive(Debug)]
enum UserHeld {
    Fence { ticket: u64, passed: bool },
    Output(Output),
}

impl Engine {
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// Sends mail to shard `to` (in engine order, so behind a pending sync like any output).
    pub(super) fn mail(&mut self, to: usize, letter: Letter) {
        self.push_output(Output::Mail {
            to,
            mail: Mail(Box::new(letter)),
        });
    }

    /// Sends the same mail to every other shard. A replicated change made for a connection's stanza holds what the
    /// connection is sent next until every shard has applied it ([`Engine::fenced`]).
    pub(super) fn broadcast(&mut self, letter: Letter) {
        if matches!(letter, Letter::Presence { .. } | Letter::Social(_) | Letter::Fix { .. })
            && let Some((conn, None)) = self.crossing.fencing
            && let Some(eid) = self.identity(conn).map(|i| i.eid.to_string())
        {
            let ticket = self.ticket();
            self.crossing.fencing = Some((conn, Some(ticket)));
            let fence = UserHeld::Fence { ticket, passed: false };
            self.crossing
                .holds
                .entry(eid.clone())
                .or_default()
                .queue
                .push_back(fence);
            let remaining = std::collections::BTreeSet::new();
            self.crossing.fences.insert(ticket, Fenced { eid, remaining });
        }
        for to in self.shard.others().collect::<Vec<_>>() {
            self.mail(to, letter.clone());
        }
    }

    /// Mail from another shard.
    pub fn deliver(&mut self, mail: Mail, now: Millis) {
        match *mail.0 {
            Letter::Presence { eid, status, ttl, at } => self.presence_replica(&eid, status, ttl, at, now),
            Letter::Social(event) => self.social_replica(event, now),
            Letter::Fix { fix, peer } => self.fix_replica(*fix, peer),
            Letter::Intention { peer, note } => self.forward_intention(&peer, &note),
            Letter::QueueFull { eid, full } => {
                if full {
                    self.crossing.full.insert(eid);
                } else {
                    self.crossing.full.remove(&eid);
                }
            }
            Letter::Propose(proposal) => self.propose(*proposal, now),
            Letter::Acknowledge(ack) => self.acknowledge(*ack, now),
            Letter::Append { eid, item, ticket } => {
                let ok = self.enqueue(&eid, *item).is_ok();
                if let Some(ticket) = ticket {
                    let shard = self.shard.index;
                    self.mail(ticket_home(ticket), Letter::Appended { ticket, ok, shard });
                }
            }
            Letter::Appended { ticket, ok, shard } => self.appended(ticket, ok, shard, now),
            Letter::Fence { ticket } => {
                let shard = self.shard.index;
                self.mail(ticket_home(ticket), Letter::Passed { ticket, shard });
            }
            Letter::Passed { ticket, shard } => self.passed(ticket, shard),
            Letter::Answer(answer) => self.apply_answer(*answer, now),
        }
    }

    /// Handles a stanza of `conn`, or its opening, in `f`, so that once the connection hears anything after it, every
    /// shard has applied the replicated changes `f` made (presence, graph, location): a user told that a change is
    /// done, or answered anything later, may count on every other user's shard seeing it (SES-9). Across nodes a
    /// replica would otherwise lag the answer by the time the mail takes. From the first such change on, what the
    /// user's connections are sent waits ([`UserHold`]) until every other shard has passed the `Fence` sent behind
    /// the changes.
    pub(super) fn fenced<T>(&mut self, conn: ConnId, f: impl FnOnce(&mut Self) -> T) -> T {
        if self.shard.count == 1 {
            return f(self);
        }
        self.crossing.fencing = Some((conn, None));
        let result = f(self);
        if let Some((_, Some(ticket))) = self.crossing.fencing.take() {
            let others: Vec<usize> = self.shard.others().collect();
            for &to in &others {
                self.mail(to, Letter::Fence { ticket });
            }
            if let Some(fence) = self.crossing.fences.get_mut(&ticket) {
                fence.remaining = others.into_iter().collect();
            }
        }
        result
    }

    /// Shard `shard` passed the fence of `ticket`; the last one releases what it held.
    fn passed(&mut self, ticket: u64, shard: usize) {
        let Some(fence) = self.crossing.fences.get_mut(&ticket) else {
            return;
        };
        fence.remaining.remove(&shard);
        if !fence.remaining.is_empty() {
            return;
        }
        let Some(Fenced { eid, .. }) = self.crossing.fences.remove(&ticket) else {
            return;
        };
        let Some(hold) = self.crossing.holds.get_mut(&eid) else {
            return;
        };
        for entry in &mut hold.queue {
            if let UserHeld::Fence { ticket: t, passed } = entry
                && *t == ticket
            {
                *passed = true;
            }
        }
        let mut ready = Vec::new();
        while let Some(entry) = hold.queue.pop_front() {
            match entry {
                UserHeld::Fence { passed: true, .. } => {}
                UserHeld::Output(output) => ready.push(output),
                fence @ UserHeld::Fence { passed: false, .. } => {
                    hold.queue.push_front(fence);
                    break;
                }
            }
        }
        if hold.queue.is_empty()
            && let Some(hold) = self.crossing.holds.remove(&eid)
        {
            for conn in hold.conns {
                self.crossing.held_for.remove(&conn);
            }
        }
        for output in ready {
            self.emit_synced(output);
        }
    }

    /// The shards in `lost` (another node's) started again, and what they had not made durable is gone: what this
    /// shard still waits for there is sent again (the appends an answer waits for: a copy that was durable after
    /// all comes twice, and its device drops it by message id, QUE-7; the fences: each shard passes a fence once).
    /// The connections still waiting for an answer a lost shard prepares, which may have been lost there, end
    /// with 503 `unavailable` (their clients reconnect and send again what was not confirmed, CLI-2), after what
    /// waited behind those answers.
    pub fn peer_restarted(&mut self, lost: &[usize], now: Millis) {
        for shard in lost {
            self.crossing.restarted.insert(*shard, now);
        }
        let mut again = Vec::new();
        for (ticket, waiting) in &self.crossing.waiting {
            for (home, eid, item) in waiting.owed.iter().filter(|(home, _, _)| lost.contains(home)) {
                again.push((*home, eid.clone(), item.clone(), *ticket));
            }
        }
        for (home, eid, item, ticket) in again {
            let item = Box::new(item);
            self.mail(
                home,
                Letter::Append {
                    eid,
                    item,
                    ticket: Some(ticket),
                },
            );
        }
        let mut fences = Vec::new();
        for (ticket, fence) in &self.crossing.fences {
            fences.extend(
                fence
                    .remaining
                    .iter()
                    .filter(|s| lost.contains(s))
                    .map(|s| (*s, *ticket)),
            );
        }
        for (to, ticket) in fences {
            self.mail(to, Letter::Fence { ticket });
        }
        let stuck: Vec<ConnId> = self
            .crossing
            .held
            .iter()
            .filter(|(_, held)| (held.slots.iter()).any(|slot| slot.awaiting.is_some() && lost.contains(&slot.from)))
            .map(|(conn, _)| *conn)
            .collect();
        for conn in stuck {
            // What waited behind the answers goes out now, in order: among it may be the Close of a connection
            // that ended meanwhile (replaced, SES-1), and a Close never sent leaves its socket open and deaf.
            let held = self.crossing.held.remove(&conn).map(|h| h.slots).unwrap_or_default();
            for output in held.into_iter().flat_map(|slot| slot.outputs) {
                self.emit(output);
            }
            let rejection = Rejection::new(
                crate::codec::ErrorKind::Unavailable,
                "a node of the service started again; reconnect and send again what was not confirmed",
            );
            self.reject(conn, None, rejection, now);
            self.close(
                conn,
                super::CloseReason::Error(crate::codec::ErrorKind::Unavailable),
                now,
            );
        }
    }

    /// What this shard waits for from others, for a log line about work that does not finish: the fences out
    /// (with the shards yet to pass), the users held behind them, the connections waiting for answers and the
    /// answers waiting for appends. `None` when nothing waits.
    pub fn crossing_report(&self) -> Option<String> {
        let c = &self.crossing;
        if c.fences.is_empty() && c.holds.is_empty() && c.held.is_empty() && c.waiting.is_empty() {
            return None;
        }
        const SHOWN: usize = 40;
        let fences: Vec<String> = (c.fences.iter().take(SHOWN))
            .map(|(t, f)| format!("{t:#x}->{:?} for {}", f.remaining, f.eid))
            .collect();
        let holds: Vec<String> = (c.holds.iter().take(SHOWN))
            .map(|(eid, h)| format!("{eid}: {} queued, conns {:?}", h.queue.len(), h.conns))
            .collect();
        let held: Vec<String> = (c.held.iter().take(SHOWN))
            .map(|(conn, h)| {
                let mut awaiting = h.slots.iter().filter_map(|s| s.awaiting);
                let count = awaiting.clone().count();
                format!("{conn}: {count} awaited from {:?}", awaiting.next())
            })
            .collect();
        let waiting: Vec<String> = (c.waiting.iter().take(SHOWN))
            .map(|(t, w)| {
                let homes: Vec<usize> = w.owed.iter().map(|(home, _, _)| *home).collect();
                format!("{t:#x}: owed by {homes:?}")
            })
            .collect();
        Some(format!(
            "fences {} {fences:?}; holds {} {holds:?}; held {} {held:?}; waiting {} {waiting:?}",
            c.fences.len(),
            c.holds.len(),
            c.held.len(),
            c.waiting.len()
        ))
    }

    /// Holds an output to a connection whose user waits for a fence; gives it back otherwise.
    pub(super) fn hold_for_user(&mut self, output: Output) -> Option<Output> {
        if self.crossing.holds.is_empty() {
            return Some(output);
        }
        let conn = match &output {
            Output::Send { conn, .. } | Output::Close { conn, .. } => *conn,
            Output::Mail { .. } | Output::Sync(_) => return Some(output),
        };
        let eid = match self.crossing.held_for.get(&conn) {
            Some(eid) => eid.clone(),
            None => match self.identity(conn) {
                Some(id) if self.crossing.holds.contains_key(&*id.eid) => id.eid.to_string(),
                _ => return Some(output),
            },
        };
        let Some(hold) = self.crossing.holds.get_mut(&eid) else {
            return Some(output);
        };
        hold.queue.push_back(UserHeld::Output(output));
        hold.conns.insert(conn);
        self.crossing.held_for.insert(conn, eid);
        None
    }

    /// A new ticket for appends other shards make for one answer; it names this shard, so that their
    /// `Appended` finds its way back, and this start of it ([`Engine::with_start`]) in its top 16 bits.
    pub(super) fn ticket(&mut self) -> u64 {
        self.crossing.next_ticket += 1;
        (self.crossing.next_ticket << 16) | u64::try_from(self.shard.index).unwrap_or(0)
    }

    /// Names the shards whose node cannot be reached now (a cluster node that lost NATS: every other node's), or
    /// none once it can again. A chat or acknowledgment that needs one of them is refused with 503 `unavailable`
    /// at once (issue 17 part 6) rather than left waiting, with every later answer of its connection behind it.
    pub fn set_unreachable(&mut self, shards: impl IntoIterator<Item = usize>) {
        self.crossing.unreachable = shards.into_iter().filter(|s| *s != self.shard.index).collect();
    }

    /// Whether the homes of `keys` (users, chats) can be reached now; 503 `unavailable` if one cannot.
    pub(super) fn reachable(&self, keys: &[&str]) -> Result<(), Rejection> {
        if self.crossing.unreachable.is_empty()
            || keys
                .iter()
                .all(|key| !self.crossing.unreachable.contains(&self.shard.home_of(key)))
        {
            return Ok(());
        }
        Err(Rejection::new(
            crate::codec::ErrorKind::Unavailable,
            "a node this change needs cannot be reached",
        ))
    }

    /// Reserves the connection's next answer slot, for the answer shard `from` prepares: outputs to it from now on
    /// wait behind the answer.
    pub(super) fn await_answer(&mut self, conn: ConnId, from: usize) -> u64 {
        self.crossing.next_seq += 1;
        let seq = self.crossing.next_seq;
        self.crossing.held.entry(conn).or_default().slots.push_back(Slot {
            awaiting: Some(seq),
            from,
            outputs: Vec::new(),
        });
        seq
    }

    /// Holds an output to a connection that waits for an answer; gives it back otherwise.
    pub(super) fn hold(&mut self, output: Output) -> Option<Output> {
        let conn = match &output {
            Output::Send { conn, .. } | Output::Close { conn, .. } => *conn,
            Output::Mail { .. } | Output::Sync(_) => return Some(output),
        };
        let answering = self.crossing.answering.filter(|(c, _)| *c == conn).map(|(_, seq)| seq);
        let Some(held) = self.crossing.held.get_mut(&conn) else {
            return Some(output);
        };
        match answering {
            Some(seq) => {
                if let Some(slot) = held.slots.iter_mut().find(|s| s.awaiting == Some(seq)) {
                    slot.outputs.push(output);
                }
            }
            None => match held.slots.back_mut() {
                Some(slot) if slot.awaiting.is_none() => slot.outputs.push(output),
                _ => held.slots.push_back(Slot {
                    awaiting: None,
                    from: self.shard.index,
                    outputs: vec![output],
                }),
            },
        }
        None
    }

    /// Releases the connection's outputs up to the first answer still out.
    fn release_held(&mut self, conn: ConnId) {
        let Some(held) = self.crossing.held.get_mut(&conn) else {
            return;
        };
        let mut ready = Vec::new();
        while held.slots.front().is_some_and(|s| s.awaiting.is_none()) {
            if let Some(slot) = held.slots.pop_front() {
                ready.extend(slot.outputs);
            }
        }
        if held.slots.is_empty() {
            self.crossing.held.remove(&conn);
        }
        // Past the answer order already: through `push_output` they would queue behind the answers still out.
        for output in ready {
            self.emit(output);
        }
    }

    /// Sends `answer` to its connection: here, or by mail to the connection's shard.
    pub(super) fn answer(&mut self, answer: Answer, now: Millis) {
        if answer.origin.shard == self.shard.index {
            self.apply_answer(answer, now);
        } else {
            self.mail(answer.origin.shard, Letter::Answer(Box::new(answer)));
        }
    }

    /// Sends `answer` once the appends in `owed`, sent under `ticket`, are durable (none: at once).
    pub(super) fn answer_after(
        &mut self,
        ticket: u64,
        owed: Vec<(usize, String, QueueItem)>,
        answer: Answer,
        now: Millis,
    ) {
        if owed.is_empty() {
            return self.answer(answer, now);
        }
        let waiting = Waiting {
            owed,
            failed: false,
            answer,
        };
        self.crossing.waiting.insert(ticket, waiting);
    }

    /// `shard` made one of the appends of `ticket` durable (a report of one it no longer owes is a duplicate).
    fn appended(&mut self, ticket: u64, ok: bool, shard: usize, now: Millis) {
        let Some(waiting) = self.crossing.waiting.get_mut(&ticket) else {
            return;
        };
        let Some(at) = waiting.owed.iter().position(|(home, _, _)| *home == shard) else {
            return;
        };
        waiting.owed.remove(at);
        waiting.failed |= !ok;
        if !waiting.owed.is_empty() {
            return;
        }
        let Some(mut waiting) = self.crossing.waiting.remove(&ticket) else {
            return;
        };
        if waiting.failed {
            waiting.answer.result = Err(Rejection::new(
                crate::codec::ErrorKind::Unavailable,
                "could not store the queue item",
            ));
        }
        self.answer(waiting.answer, now);
    }

    /// Applies an answer on the connection's shard: the confirmation of queue items, then the stanza or the
    /// refusal, in the connection's stanza order.
    pub(super) fn apply_answer(&mut self, answer: Answer, now: Millis) {
        let Answer {
            origin,
            route,
            reference,
            confirm,
            result,
        } = answer;
        let conn = origin.conn;
        if let Some(seq) = origin.seq {
            self.crossing.answering = Some((conn, seq));
        }
        if let Some(confirm) = confirm {
            self.confirm_items(conn, &confirm);
        }
        match result {
            Ok(payload) => self.send(conn, payload),
            Err(rejection) => self.reject(conn, Some(route), rejection.with_ref(&reference), now),
        }
        self.crossing.answering = None;
        if let Some(seq) = origin.seq
            && let Some(held) = self.crossing.held.get_mut(&conn)
        {
            if let Some(slot) = held.slots.iter_mut().find(|s| s.awaiting == Some(seq)) {
                slot.awaiting = None;
            }
            self.release_held(conn);
        }
    }

    /// Appends `items` to their users' queues, then answers. Items of this shard's users are appended here, the
    /// others by mail to their homes; the answer waits until those appends are durable (QUE-2), except on the
    /// origin's own shard, where the answer follows the Append mail in FIFO order and so is held behind the same
    /// sync. When everything is here, the answer goes first, as on an unpartitioned engine.
    pub(super) fn append_then_answer(&mut self, items: Vec<(String, QueueItem)>, mut answer: Answer, now: Millis) {
        let here = self.shard.index;
        let elsewhere = |engine: &Self, eid: &str| {
            let home = engine.shard.home_of(eid);
            home != here && home != answer.origin.shard
        };
        let awaited = items.iter().filter(|(eid, _)| elsewhere(self, eid)).count();
        let unavailable = || Rejection::new(crate::codec::ErrorKind::Unavailable, "could not store the queue item");
        if awaited == 0 && answer.origin.shard == here {
            let (conn, route, reference) = (answer.origin.conn, answer.route, answer.reference.clone());
            self.answer(answer, now);
            for (eid, item) in items {
                if self.enqueue(&eid, item).is_err() {
                    self.reject(conn, Some(route), unavailable().with_ref(&reference), now);
                }
            }
            return;
        }
        if awaited > 0 && answer.origin.shard == here && answer.origin.seq.is_none() {
            answer.origin.seq = Some(self.await_answer(answer.origin.conn, here));
        }
        let ticket = (awaited > 0).then(|| self.ticket());
        let mut owed = Vec::with_capacity(awaited);
        for (eid, item) in items {
            let home = self.shard.home_of(&eid);
            if home == here {
                if self.enqueue(&eid, item).is_err() {
                    answer.result = Err(unavailable());
                }
            } else {
                let ticket = ticket.filter(|_| home != answer.origin.shard);
                if ticket.is_some() {
                    owed.push((home, eid.clone(), item.clone()));
                }
                self.mail(
                    home,
                    Letter::Append {
                        eid,
                        item: Box::new(item),
                        ticket,
                    },
                );
            }
        }
        match ticket {
            Some(ticket) => self.answer_after(ticket, owed, answer, now),
            None => self.answer(answer, now),
        }
    }

    /// The identity of a connection of this shard, for an origin.
    pub(super) fn origin(&self, conn: ConnId) -> Origin {
        Origin {
            shard: self.shard.index,
            conn,
            seq: None,
        }
    }
}

/// Start-up of a partitioned engine: each chat's home learns from every shard's queues the events it lost.
///
/// A chat's home sends a message's copies (`Append`) without waiting for its own fsync of the event, so that the
/// message waits for one fsync on each shard at once rather than for two in a row; a crash can therefore keep a
/// copy on the receiver's shard and lose the event on the chat's. Every copy and update carries what its event
/// holds (version, sender and device, local id, receiver, time; the state of an acknowledgment), so the home
/// records the event again here, before any stanza is handled. Nothing is released before the event is durable:
/// a device's commit waits for the answer of the chat's home, which waits for that home's fsync.
pub fn recover(engines: &mut [Engine]) -> usize {
    if engines.len() < 2 {
        return 0;
    }
    let mut items: Vec<QueueItem> = engines.iter().flat_map(Engine::retained_items).collect();
    // Copies before updates: a state raised on a message its home must learn first.
    items.sort_by_key(|item| item.kind() != Some(super::queue::ItemKind::Copy));
    engines.iter_mut().map(|engine| engine.recover_events(&items)).sum()
}

impl Engine {
    /// Every item retained in this shard's queues.
    fn retained_items(&self) -> Vec<QueueItem> {
        let store = &self.chat_store;
        store
            .users()
            .into_iter()
            .flat_map(|eid| store.items_after(&eid, 0).into_iter().map(|(_, item)| item))
            .collect()
    }

    /// Records the events of this shard's chats that `items` show and its log lost (see [`recover`]).
    fn recover_events(&mut self, items: &[QueueItem]) -> usize {
        let mut recovered = 0;
        for item in items {
            let Ok(stanza) = crate::codec::decode(item.encoded(), usize::MAX) else {
                continue;
            };
            let event = match stanza {
                Payload::ChatMessage(m) if self.owns(&m.chat_id) && !self.chat.contains(&m.message_id) => {
                    let (Some(from), Some(to)) = (m.from, m.to.first()) else {
                        continue;
                    };
                    ChatEvent::Accepted(Accepted {
                        message_id: m.message_id,
                        chat_id: m.chat_id,
                        version: m.version,
                        sender: from.eid,
                        sender_device: from.connection_resource_id,
                        message_id_local: m.message_id_local,
                        receiver: to.eid.clone(),
                        at: m.server_received_at,
                    })
                }
                Payload::AcknowledgmentResponse(r)
                    if self.owns(&r.chat_id)
                        && self
                            .chat
                            .message(&r.message_id)
                            .is_some_and(|meta| meta.state < r.status) =>
                {
                    ChatEvent::StateRaised(StateRaised {
                        message_id: r.message_id,
                        state: r.status,
                        at: r.timestamp,
                    })
                }
                _ => continue,
            };
            if self.chat_store.record(&event).is_ok() {
                if let ChatEvent::Accepted(accepted) = &event {
                    self.crossing.replayed_until = self.crossing.replayed_until.max(accepted.at);
                }
                self.chat.apply(&event);
                self.mark_unsynced();
                recovered += 1;
            }
        }
        recovered
    }

    /// Is this shard the home of `key` (a user or a chat)?
    fn owns(&self, key: &str) -> bool {
        self.shard.owns(key)
    }
}

/// The shard that issued a ticket.
fn ticket_home(ticket: u64) -> usize {
    usize::try_from(ticket & 0xffff).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homes_are_stable_and_spread() {
        assert_eq!(home("alice@example.com", 4), home("alice@example.com", 4));
        assert_eq!(home("anyone@x", 1), 0);
        // Users and chats alike, on every shard count: names that differ in a digit or two, as load tests and
        // real directories have them, must not land on one shard.
        for count in [2usize, 3, 4, 8] {
            let mut users = vec![0usize; count];
            let mut chats = vec![0usize; count];
            for i in 0..2000 {
                let (s, r) = (format!("s{i}@bench.example"), format!("r{i}@bench.example"));
                users[home(&s, count)] += 1;
                chats[home(&crate::core::chat::chat_id(&s, &r), count)] += 1;
            }
            let fair = 2000 / count;
            for spread in [&users, &chats] {
                assert!(
                    spread.iter().all(|n| n.abs_diff(fair) < fair / 5),
                    "{count} shards: {spread:?}"
                );
            }
        }
    }
}
