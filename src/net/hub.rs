//! The engine's shards and the routing between them and the connections.
//!
//! Each shard (one `Engine` owning the users that hash to it, src/core/README.md) lives in a
//! `std::sync::Mutex` that a task locks for the length of one batch of engine calls, draining `poll_output()`
//! before it unlocks: outputs are routed in the engine's order, into per-connection FIFO queues, so each
//! connection writes them in that order too. No lock is ever held across an `.await`. A shard's state is reached
//! only through its inbox: stanzas of its connections and mail from other shards wait there, in arrival order,
//! for whichever task holds the shard next; mail one shard sends another is put in the other's inbox before the
//! sender lets go of its own lock, so mail between two shards keeps its order (FIFO per pair).
//!
//! Group commit across connections (QUE-2), pipelined: draining `poll_output()` is when a shard starts a sync of
//! its chat store, one fsync for everything written since the last one, and the engine hands that fsync out
//! (`Output::Sync`) to the shard's fsync thread instead of waiting for it. The shard goes on handling stanzas
//! meanwhile; their outputs that need durability wait in the engine, and when the fsync has run the thread
//! wakes [`Hub::run_syncs`], which runs the shard again: what the sync covered leaves, and the writes made
//! meanwhile share the next fsync, which starts when the group-commit window after the last start ends (the engine
//! is paused until then, [`Engine::pause_syncs`], so the fsync covers everything written before it). So no runtime worker ever waits for the disk (a server on one core runs one
//! worker), and shards sync independently of each other. The task that finds the shard free feeds it every
//! input waiting in the inbox; a task that finds it busy leaves its input in the inbox for the holder, which
//! looks at the inbox again before it lets go and once more after. A full inbox makes senders wait for the
//! shard (backpressure).
//!
//! Who runs the mail ([`MailSteps`]): in a server, the task that sent it runs the receiving shard at once (or
//! leaves it to the task holding it). Under the simulation a stepping task runs it later, picking the shard and
//! the wait with a seeded generator, so a seed replays one interleaving of the shards and seeds differ in which:
//! stanzas of other connections, timer ticks and other shards' mail come between a letter and its handling, as
//! on threads. Mail is in the receiver's inbox before the sender lets go either way; only the moment it is
//! handled moves.
//!
//! A connection belongs to its user's home shard. A WebSocket connection's token names the user before the
//! upgrade; a native TCP connection starts on a shard picked by its id and moves with its first stanza, the
//! Authenticate, to the shard of the user its token names (read unverified, only to route: the home verifies).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::outbox::{self, PushError};
use super::{Clock, Edge};
use crate::cluster::{Frame, Layout};
use crate::codec::{ErrorKind, FrameError};
use crate::core::queue::SyncJob;
use crate::core::shard::home;
use crate::core::{CloseReason, ConnId, Engine, Mail, Millis, Output, Stats, Transport};

mod relay;
pub(crate) use relay::Outward;

/// What the engine asks one connection's writer to do.
#[derive(Debug)]
pub(crate) enum Out {
    Send(Bytes),
    /// Flush what came before, then close with this reason.
    Close(CloseReason),
}

/// A connection as its task holds it: its id, and the shard that holds it now.
pub(crate) struct ConnRef {
    pub id: ConnId,
    shard: AtomicUsize,
    /// The shard is final: the connection is open on its user's home (or never will be).
    routed: AtomicBool,
}

impl ConnRef {
    fn shard(&self) -> usize {
        self.shard.load(Ordering::Relaxed)
    }
}

impl std::fmt::Display for ConnRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.id.fmt(f)
    }
}

/// A connection's side of the routing table: its writer queue, which also
/// tells it when the hub gives up on it.
pub(crate) struct Endpoint {
    pub conn: ConnRef,
    pub rx: outbox::Receiver,
}

struct Link {
    tx: outbox::Sender,
}

/// What observers (metrics, health checks) may read about the engine, taken
/// after every batch of engine work so that reading it never touches the
/// engine's lock.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub stats: Stats,
    /// Connections the engine knows, authenticated or not.
    pub connections: usize,
    /// EIDs with at least one session.
    pub users_online: usize,
}

impl Snapshot {
    /// The sum of two shards' snapshots (they own disjoint users and connections).
    fn add(&mut self, other: &Snapshot) {
        let sum = |into: &mut BTreeMap<i64, u64>, from: &BTreeMap<i64, u64>| {
            for (key, n) in from {
                *into.entry(*key).or_default() += n;
            }
        };
        sum(&mut self.stats.stanzas_in, &other.stats.stanzas_in);
        sum(&mut self.stats.stanzas_out, &other.stats.stanzas_out);
        for (code, n) in &other.stats.errors {
            *self.stats.errors.entry(*code).or_default() += n;
        }
        self.stats.sessions_started += other.stats.sessions_started;
        self.stats.sync_failures += other.stats.sync_failures;
        self.stats.connections_closed += other.stats.connections_closed;
        self.connections += other.connections;
        self.users_online += other.users_online;
    }
}

/// When a shard handles the mail other shards put in its inbox (module doc).
#[derive(Clone, Debug, Default)]
pub enum MailSteps {
    /// At once, by the task that sent it.
    #[default]
    Eager,
    /// By a stepping task that waits up to `max_delay` (simulated time under turmoil) and picks the next shard to
    /// run with a generator seeded by `seed`.
    Seeded { seed: u64, max_delay: Duration },
}

/// The stepping task's state ([`MailSteps::Seeded`]): shards with mail to handle.
struct Stepper {
    rng: StdRng,
    max_delay_ms: u64,
    ready: BTreeSet<usize>,
}

/// What waits in a shard's inbox.
enum Input {
    Stanza(ConnId, Bytes),
    Mail(Mail),
}

struct Core {
    engine: Engine,
    /// The way to the other nodes of a cluster, for outputs to connections whose socket is on another node.
    remote: Option<Remote>,
    /// A layer that alters traffic at the edge (tests only; `edge.rs`).
    edge: Option<Box<dyn Edge>>,
    max_stanza_bytes: usize,
    links: BTreeMap<ConnId, Link>,
    /// The deadline the timer task sleeps until; an earlier one must wake it.
    armed: Option<Millis>,
    /// Mail the engine sent in this batch, in order: (shard, mail).
    mail: Vec<(usize, Mail)>,
    /// The fsync the engine handed out in this batch (at most one is out at a time).
    syncs: Vec<SyncJob>,
    /// The group-commit window: no sync starts before this (`ServerOptions::sync_gap` after the last start).
    next_sync_at: Option<std::time::Instant>,
    /// When the next report of what the shard waits for is due (debug logs, `bimip::cluster::crossing`).
    report_at: Millis,
}

/// One shard: its engine and what waits for it.
struct Shard {
    core: Mutex<Core>,
    inbox: Mutex<VecDeque<Input>>,
    timer_wake: Notify,
    /// The shard's counters as its last batch left them: observers sum the shards' when they read, so that no
    /// batch pays for the others and reading never touches a shard's lock.
    snapshot: Mutex<Snapshot>,
    /// The shard's fsync thread, started with the first job ([`Hub::run_syncs`]).
    syncer: Mutex<Option<std::sync::mpsc::Sender<SyncJob>>>,
    /// Told by the fsync thread when a job has run (the engine may release what waited for it) and when the
    /// group-commit window after its start ends (the engine may start the next).
    synced: Arc<Notify>,
}

/// Stanzas waiting in the inbox beyond which a sender waits for the engine
/// instead of leaving its stanza for the current holder.
const INBOX_LIMIT: usize = 1024;

pub(crate) struct Hub {
    /// Every shard of the service by its index; `None` for a shard on another node of a cluster.
    shards: Vec<Option<Shard>>,
    /// This node's shards, in order.
    local: Vec<usize>,
    layout: Layout,
    /// The other nodes of a cluster (`relay.rs`).
    relay: Option<relay::Relay>,
    clock: Arc<dyn Clock>,
    next_conn: AtomicU64,
    queue_capacity: usize,
    max_stanza_bytes: usize,
    shutdown: CancellationToken,
    /// `None`: mail is handled at once ([`MailSteps::Eager`]).
    stepper: Option<Mutex<Stepper>>,
    stepper_wake: Notify,
    /// Least time between the starts of a shard's fsyncs (`ServerOptions::sync_gap`).
    sync_gap: Duration,
}

fn unpoison<T>(lock: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic inside the engine is a bug, but it must not take every other
    // connection down with it (SPEC SES-7): keep serving with the state as
    // the panicking call left it.
    lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Hub {
    /// A hub for `engines`, this node's shards in `layout` (every shard of a lone server), in order; `edge` makes
    /// each shard's edge layer; `relay` carries frames to the other nodes of a cluster.
    #[allow(clippy::too_many_arguments)] // one place builds it: ServerHandle::start_with
    pub fn new(
        engines: Vec<Engine>,
        layout: Layout,
        relay: Option<relay::Outward>,
        mut edge: impl FnMut() -> Option<Box<dyn Edge>>,
        clock: Arc<dyn Clock>,
        queue_capacity: usize,
        shutdown: CancellationToken,
        steps: MailSteps,
        sync_gap: Duration,
    ) -> Self {
        let max_stanza_bytes = engines.first().map_or(0, |e| e.config().max_stanza_bytes);
        let local: Vec<usize> = layout.local_shards().collect();
        let remote = relay.as_ref().map(|outward| Remote {
            outward: outward.clone(),
            layout: layout.clone(),
        });
        let mut shards: Vec<Option<Shard>> = (0..layout.shard_count()).map(|_| None).collect();
        for (index, engine) in local.iter().copied().zip(engines) {
            shards[index] = Some(Shard {
                snapshot: Mutex::new(snapshot_of(&engine)),
                core: Mutex::new(Core {
                    engine,
                    remote: remote.clone(),
                    edge: edge(),
                    max_stanza_bytes,
                    links: BTreeMap::new(),
                    armed: None,
                    mail: Vec::new(),
                    syncs: Vec::new(),
                    next_sync_at: None,
                    report_at: 0,
                }),
                inbox: Mutex::new(VecDeque::new()),
                timer_wake: Notify::new(),
                syncer: Mutex::new(None),
                synced: Arc::new(Notify::new()),
            });
        }
        Hub {
            shards,
            local,
            next_conn: AtomicU64::new(layout.first_conn_id()),
            layout,
            relay: relay.map(relay::Relay::new),
            clock,
            queue_capacity: queue_capacity.max(1),
            max_stanza_bytes,
            shutdown,
            stepper: match steps {
                MailSteps::Eager => None,
                MailSteps::Seeded { seed, max_delay } => Some(Mutex::new(Stepper {
                    rng: StdRng::seed_from_u64(seed),
                    max_delay_ms: u64::try_from(max_delay.as_millis()).unwrap_or(u64::MAX),
                    ready: BTreeSet::new(),
                })),
            },
            stepper_wake: Notify::new(),
            sync_gap,
        }
    }

    pub fn max_stanza_bytes(&self) -> usize {
        self.max_stanza_bytes
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The engine's counters now: the sum of every shard's, as its last batch left them.
    pub fn snapshot(&self) -> Snapshot {
        let mut total = Snapshot::default();
        for shard in self.shards.iter().flatten() {
            total.add(&unpoison(&shard.snapshot));
        }
        total
    }

    /// A new connection id with its writer queue. The link exists before the
    /// engine hears of the connection, so that nothing the engine says to it
    /// (the Authenticate RESPONSE sent from inside `open`) is lost.
    pub fn register(&self) -> Endpoint {
        let id = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let shard = self.local[usize::try_from(id.0 % self.local.len() as u64).unwrap_or(0)];
        let (tx, rx) = outbox::outbox(self.queue_capacity);
        {
            // `stop` cancels, then kills every link under its shard's lock: a link made meanwhile is killed
            // by one of the two.
            let mut core = self.lock(shard);
            if self.shutdown.is_cancelled() {
                tx.kill();
            }
            core.links.insert(id, Link { tx });
        }
        let conn = ConnRef {
            id,
            shard: AtomicUsize::new(shard),
            routed: AtomicBool::new(self.shards.len() == 1),
        };
        Endpoint { conn, rx }
    }

    /// Stops the server: shutdown is flagged, and every connection's writer is told to end (its adapter then
    /// closes it, WebSocket with 1001).
    pub fn stop(&self) {
        self.shutdown.cancel();
        for &shard in &self.local {
            for link in self.lock(shard).links.values() {
                link.tx.kill();
            }
        }
        if let Some(relay) = &self.relay {
            relay.kill_links();
        }
    }

    pub fn open(&self, conn: &ConnRef, transport: Transport, token: Option<&str>) -> Result<(), ErrorKind> {
        if self.relay.as_ref().is_some_and(relay::Relay::is_cut) {
            self.lock(conn.shard()).links.remove(&conn.id);
            return Err(ErrorKind::Unavailable);
        }
        if transport == Transport::WebSocket && !conn.routed.swap(true, Ordering::Relaxed) {
            // The engine has not heard of the connection yet: only its link moves.
            if let Some(eid) = token.and_then(crate::core::auth::unverified_eid) {
                let to = home(&eid, self.shards.len());
                if !self.layout.is_local(to) {
                    // The caller asks the home's node first (`open_remote`); reaching here means it did not.
                    self.lock(conn.shard()).links.remove(&conn.id);
                    return Err(ErrorKind::Unavailable);
                }
                let from = conn.shard();
                // One shard's lock at a time: two connections moving in opposite directions must not deadlock.
                let link = (to != from).then(|| self.lock(from).links.remove(&conn.id)).flatten();
                if let Some(link) = link {
                    self.lock(to).links.insert(conn.id, link);
                    conn.shard.store(to, Ordering::Relaxed);
                }
            }
        }
        let shard = conn.shard();
        if !self.layout.is_local(shard) {
            // Routed to another node already (its answer did not come in time): this node cannot open it.
            return Err(ErrorKind::Unavailable);
        }
        let opened = self.with_core(shard, |core, now| core.open(conn.id, transport, token, now));
        tracing::debug!(target: "bimip::cluster::conns", conn = %conn.id, shard, ?opened, eid = ?token.and_then(crate::core::auth::unverified_eid), "opened here");
        if opened.is_err() {
            self.lock(shard).links.remove(&conn.id);
        }
        opened
    }

    /// One stanza from a connection: into its shard's inbox, then into the engine by this task or by the one
    /// holding the shard (module doc).
    pub fn receive(&self, conn: &ConnRef, stanza: &[u8]) {
        if !conn.routed.swap(true, Ordering::Relaxed) {
            self.route_first(conn, stanza);
        }
        let shard = conn.shard();
        if let Some(relay) = self.remote_relay(shard) {
            let frame = Frame::stanza(conn.id, shard, Bytes::copy_from_slice(stanza));
            return relay.send(self.layout.node_of_shard(shard), &frame);
        }
        let waiting = {
            let mut inbox = self.inbox(shard);
            inbox.push_back(Input::Stanza(conn.id, Bytes::copy_from_slice(stanza)));
            inbox.len()
        };
        if waiting > INBOX_LIMIT {
            self.with_engine(shard, |_, _| ());
        } else {
            self.pump(vec![shard]);
        }
    }

    /// A native TCP connection's first stanza: if it is an Authenticate whose token names a user of another
    /// shard, the connection moves there before the stanza is handled.
    fn route_first(&self, conn: &ConnRef, stanza: &[u8]) {
        let Ok(crate::proto::message_scheme::Payload::Authenticate(auth)) =
            crate::codec::decode(stanza, self.max_stanza_bytes)
        else {
            return;
        };
        let Some(eid) = crate::core::auth::unverified_eid(&auth.token) else {
            return;
        };
        let (from, to) = (conn.shard(), home(&eid, self.shards.len()));
        if from == to {
            return;
        }
        if !self.layout.is_local(to) {
            return self.hand_off_remote(conn, to);
        }
        let Some(link) = self.let_go(conn, from) else {
            return;
        };
        self.lock(to).links.insert(conn.id, link);
        conn.shard.store(to, Ordering::Relaxed);
        let opened = self.with_core(to, |core, now| core.open(conn.id, Transport::Tcp, None, now));
        if opened.is_err() {
            self.lock(to).links.remove(&conn.id);
        }
    }

    /// Shard `from` lets go of a connection that has not authenticated yet, and hands back its link; `None` if
    /// the engine there no longer holds it that way.
    fn let_go(&self, conn: &ConnRef, from: usize) -> Option<Link> {
        self.with_core(from, |core, _| {
            if !core.engine.hand_off(conn.id) {
                return None;
            }
            if let Some(edge) = &mut core.edge {
                edge.closed(conn.id);
            }
            core.links.remove(&conn.id)
        })
    }

    pub fn text_frame(&self, conn: &ConnRef) {
        let shard = conn.shard();
        if let Some(relay) = self.remote_relay(shard) {
            return relay.send(self.layout.node_of_shard(shard), &Frame::text_frame(conn.id, shard));
        }
        self.with_engine(shard, |engine, now| engine.text_frame(conn.id, now));
    }

    pub fn framing_error(&self, conn: &ConnRef, error: &FrameError) {
        let shard = conn.shard();
        if let Some(relay) = self.remote_relay(shard) {
            match Frame::framing_error(conn.id, shard, error) {
                Some(frame) => relay.send(self.layout.node_of_shard(shard), &frame),
                None => self.closed(conn),
            }
            return;
        }
        self.with_engine(shard, |engine, now| engine.framing_error(conn.id, error, now));
    }

    /// An operator call, on the shard that owns `eid`; `None` when that shard is on another node.
    pub fn on_home<R>(&self, eid: &str, f: impl FnOnce(&mut Engine, Millis) -> R) -> Option<R> {
        let shard = home(eid, self.shards.len());
        self.layout.is_local(shard).then(|| self.with_engine(shard, f))
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The connection is gone (or its task ends): forget its link, tell the
    /// engine. Safe to call more than once.
    pub fn closed(&self, conn: &ConnRef) {
        let shard = conn.shard();
        if let Some(relay) = self.remote_relay(shard) {
            if relay.forget(conn.id) {
                relay.send(self.layout.node_of_shard(shard), &Frame::closed(conn.id, shard));
            }
            return;
        }
        let known = self.lock(shard).links.remove(&conn.id).is_some();
        if known {
            self.with_core(shard, |core, now| core.closed(conn.id, now));
        }
    }

    /// A shard of this node. Shards of other nodes are never reached here: inputs for them go out as frames
    /// (`remote_relay`), and frames from other nodes name a shard of this one or are dropped (`relay.rs`).
    fn shard(&self, shard: usize) -> &Shard {
        match &self.shards[shard] {
            Some(local) => local,
            None => unreachable!("shard {shard} is on another node"),
        }
    }

    /// The relay, when `shard` is on another node.
    fn remote_relay(&self, shard: usize) -> Option<&relay::Relay> {
        self.relay.as_ref().filter(|_| !self.layout.is_local(shard))
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Core> {
        unpoison(&self.shard(shard).core)
    }

    fn inbox(&self, shard: usize) -> MutexGuard<'_, VecDeque<Input>> {
        unpoison(&self.shard(shard).inbox)
    }

    /// Feeds each shard in `work` its inbox unless another task holds it (that task then does it: it looks at the
    /// inbox after unlocking); a shard that sends mail joins the work.
    fn pump(&self, mut work: Vec<usize>) {
        while let Some(shard) = work.pop() {
            while !self.inbox(shard).is_empty() {
                let core = match self.shard(shard).core.try_lock() {
                    Ok(core) => core,
                    Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                    Err(TryLockError::WouldBlock) => break,
                };
                let ((), mailed) = self.run(shard, core, |_, _| ());
                self.follow(&mut work, mailed);
            }
        }
    }

    /// The shards `mailed` wrote to: into `work` now, or to the stepping task for later.
    fn follow(&self, work: &mut Vec<usize>, mailed: Vec<usize>) {
        match &self.stepper {
            None => work.extend(mailed),
            Some(stepper) if !mailed.is_empty() => {
                unpoison(stepper).ready.extend(mailed);
                self.stepper_wake.notify_one();
            }
            Some(_) => {}
        }
    }

    /// Runs the shards that have mail waiting, one at a time, each after a seeded wait, in a seeded order, until
    /// shutdown ([`MailSteps::Seeded`]; returns at once for [`MailSteps::Eager`]).
    pub async fn run_mail_steps(self: Arc<Self>) {
        let Some(stepper) = &self.stepper else { return };
        loop {
            let woken = self.stepper_wake.notified();
            let next = {
                let mut stepper = unpoison(stepper);
                let Stepper {
                    rng,
                    max_delay_ms,
                    ready,
                } = &mut *stepper;
                let pick = (!ready.is_empty()).then(|| rng.random_range(0..ready.len()));
                let shard = pick.and_then(|i| ready.iter().nth(i).copied());
                shard.map(|shard| {
                    ready.remove(&shard);
                    // Half the letters are handled as soon as the sender's task yields, the rest after a wait in
                    // which the network and the timers move on.
                    let delay = if rng.random_bool(0.5) {
                        0
                    } else {
                        rng.random_range(1..=(*max_delay_ms).max(1))
                    };
                    (shard, delay)
                })
            };
            let Some((shard, delay)) = next else {
                tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => return,
                    () = woken => continue,
                }
            };
            if delay == 0 {
                tokio::task::yield_now().await;
            } else {
                tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(delay)) => {}
                }
            }
            self.pump(vec![shard]);
        }
    }

    /// Runs one engine call at `now` (after the inputs waiting in the inbox),
    /// then routes everything it produced.
    fn with_engine<R>(&self, shard: usize, f: impl FnOnce(&mut Engine, Millis) -> R) -> R {
        self.with_core(shard, |core, now| f(&mut core.engine, now))
    }

    /// As [`Hub::with_engine`], for calls that also concern the edge layer.
    fn with_core<R>(&self, shard: usize, f: impl FnOnce(&mut Core, Millis) -> R) -> R {
        let core = self.lock(shard);
        let (result, mailed) = self.run(shard, core, f);
        // Inputs that arrived while this call held the shard.
        let mut work = vec![shard];
        self.follow(&mut work, mailed);
        self.pump(work);
        result
    }

    /// Runs a batch on `shard`; returns the call's result and the shards it sent mail to.
    fn run<R>(
        &self,
        shard: usize,
        mut core: MutexGuard<'_, Core>,
        f: impl FnOnce(&mut Core, Millis) -> R,
    ) -> (R, Vec<usize>) {
        let now = self.clock.now_ms();
        let feed = |core: &mut Core| {
            let batch = std::mem::take(&mut *self.inbox(shard));
            for input in batch {
                match input {
                    Input::Stanza(conn, stanza) => core.receive(conn, stanza, now),
                    Input::Mail(mail) => core.engine.deliver(mail, now),
                }
            }
        };
        let result = loop {
            feed(&mut core);
            // Looked at again under the engine lock: what arrived meanwhile
            // joins this batch's sync.
            if self.inbox(shard).is_empty() {
                break f(&mut core, now);
            }
        };
        let window_closed = core.next_sync_at.is_some_and(|at| std::time::Instant::now() < at);
        core.engine.pause_syncs(window_closed);
        core.route_outputs(now);
        if !core.syncs.is_empty() {
            core.next_sync_at = Some(std::time::Instant::now() + self.sync_gap);
        }
        // Into the other shards' inboxes before this shard lets go: mail between two shards keeps its order.
        let mut mailed = BTreeSet::new();
        for (to, mail) in core.mail.drain(..) {
            if to >= self.shards.len() {
                // Only mail decoded from another node can name such a shard (a node started with another
                // --shards or --cluster-nodes): an answer to a connection that cannot exist here.
                tracing::warn!(shard = to, "mail for a shard the service does not have dropped");
                continue;
            }
            match self.remote_relay(to) {
                Some(relay) => relay.send(self.layout.node_of_shard(to), &Frame::mail(to, mail.encode())),
                None => {
                    self.inbox(to).push_back(Input::Mail(mail));
                    mailed.insert(to);
                }
            }
        }
        if let Some(deadline) = core.next_deadline()
            && core.armed.is_none_or(|armed| deadline < armed)
        {
            core.armed = Some(deadline);
            self.shard(shard).timer_wake.notify_one();
        }
        let snapshot = snapshot_of(&core.engine);
        let syncs = std::mem::take(&mut core.syncs);
        drop(core);
        for job in syncs {
            self.start_sync(shard, job);
        }
        self.publish(shard, snapshot);
        (result, mailed.into_iter().collect())
    }

    /// Hands a pipelined fsync to the shard's fsync thread: the engine's thread never waits for the disk, and
    /// stanzas handled meanwhile have their outputs held for the next sync (group commit, QUE-2).
    fn start_sync(&self, shard: usize, job: SyncJob) {
        let mut syncer = unpoison(&self.shard(shard).syncer);
        let job = match syncer.as_ref() {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(std::sync::mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = std::sync::mpsc::channel::<SyncJob>();
        let synced = Arc::clone(&self.shard(shard).synced);
        let gap = self.sync_gap;
        // The thread ends when the hub (and with it the sender) is gone.
        let spawned = std::thread::Builder::new()
            .name(format!("bimip-fsync-{shard}"))
            .spawn(move || {
                for job in rx {
                    let started = std::time::Instant::now();
                    job.run();
                    synced.notify_one();
                    // The group-commit window (`ServerOptions::sync_gap`): the shard starts no sync before it
                    // ends, so that what it writes meanwhile shares the next fsync; then it is run again, to
                    // start that sync even if no stanza comes.
                    if let Some(wait) = (started + gap).checked_duration_since(std::time::Instant::now()) {
                        std::thread::sleep(wait);
                        synced.notify_one();
                    }
                }
            });
        match spawned {
            Ok(_) => {
                let _ = tx.send(job);
                *syncer = Some(tx);
            }
            Err(error) => {
                // No thread: the fsync runs here, late but never skipped.
                tracing::warn!(%error, "cannot start the fsync thread; syncing on the engine's thread");
                job.run();
                self.shard(shard).synced.notify_one();
            }
        }
    }

    /// Runs each shard's engine after each of its fsyncs, until shutdown: what waited for the sync leaves then.
    pub async fn run_syncs(self: Arc<Self>) {
        let loops = self.local.clone().into_iter().map(|shard| {
            let hub = Arc::clone(&self);
            async move {
                let synced = Arc::clone(&hub.shard(shard).synced);
                loop {
                    tokio::select! {
                        biased;
                        () = hub.shutdown.cancelled() => return,
                        () = synced.notified() => hub.with_core(shard, |_, _| ()),
                    }
                }
            }
        });
        futures::future::join_all(loops).await;
    }

    fn publish(&self, shard: usize, snapshot: Snapshot) {
        *unpoison(&self.shard(shard).snapshot) = snapshot;
    }

    /// Runs every shard's timers until shutdown.
    pub async fn run_timers(self: Arc<Self>) {
        let loops = self
            .local
            .clone()
            .into_iter()
            .map(|shard| Arc::clone(&self).shard_timers(shard));
        futures::future::join_all(loops).await;
    }

    /// Sleeps until the shard's next deadline and ticks it; woken early when
    /// an engine call sets an earlier deadline. Ends at shutdown.
    async fn shard_timers(self: Arc<Self>, shard: usize) {
        loop {
            // Created before reading the deadline: `notify_one` stores a permit,
            // so a deadline set in between still wakes this loop.
            let woken = self.shard(shard).timer_wake.notified();
            let wait = {
                let mut core = self.lock(shard);
                let deadline = core.next_deadline();
                core.armed = deadline;
                deadline.map(|at| at.saturating_sub(self.clock.now_ms()))
            };
            let sleep = async {
                match wait {
                    Some(ms) => tokio::time::sleep(Duration::from_millis(u64::try_from(ms).unwrap_or(0))).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                () = woken => {}
                () = sleep => self.with_core(shard, Core::tick),
            }
        }
    }
}

impl Core {
    /// The engine's next timer, or the edge layer's if that comes first.
    fn next_deadline(&self) -> Option<Millis> {
        let edge = self.edge.as_ref().and_then(|e| e.deadline());
        match (self.engine.next_deadline(), edge) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A connection opens: the edge layer hears of it first.
    fn open(&mut self, conn: ConnId, transport: Transport, token: Option<&str>, now: Millis) -> Result<(), ErrorKind> {
        if let Some(edge) = &mut self.edge {
            edge.opened(conn, transport);
        }
        self.engine.open(conn, transport, token, now)
    }

    /// One stanza, through the edge layer if there is one.
    fn receive(&mut self, conn: ConnId, stanza: Bytes, now: Millis) {
        let Some(edge) = &mut self.edge else {
            return self.engine.receive(conn, &stanza, now);
        };
        let mut answers = Vec::new();
        let passed = edge.inbound(conn, stanza, now, &mut answers);
        if !answers.is_empty() {
            // After what the engine said before, in order.
            self.route_outputs(now);
            self.route(answers, now);
        }
        if let Some(stanza) = passed {
            self.engine.receive(conn, &stanza, now);
        }
    }

    fn tick(&mut self, now: Millis) {
        self.engine.tick(now);
        if now >= self.report_at && tracing::enabled!(target: "bimip::cluster::crossing", tracing::Level::DEBUG) {
            self.report_at = now + 2_000;
            if let Some(report) = self.engine.crossing_report() {
                let shard = self.engine.shard().index;
                tracing::debug!(target: "bimip::cluster::crossing", shard, %report, "waiting on other shards");
            }
        }
        if let Some(edge) = &mut self.edge {
            let mut released = Vec::new();
            edge.tick(now, &mut released);
            self.route_outputs(now);
            self.route(released, now);
        }
    }

    fn closed(&mut self, conn: ConnId, now: Millis) {
        if let Some(edge) = &mut self.edge {
            edge.closed(conn);
        }
        self.engine.closed(conn, now);
    }

    /// Routes everything the engine has to say now, through the edge layer if any. A connection found dead is
    /// told to the engine, whose answer (for other connections) is routed too.
    fn route_outputs(&mut self, now: Millis) {
        let mut outputs = Vec::new();
        loop {
            let mut dead = Vec::new();
            while let Some(output) = self.engine.poll_output() {
                match &mut self.edge {
                    Some(edge) => edge.outbound(output, now, &mut outputs),
                    None => outputs.push(output),
                }
                for output in outputs.drain(..) {
                    self.route_one(output, &mut dead);
                }
            }
            if dead.is_empty() {
                return;
            }
            for conn in dead {
                self.closed(conn, now);
            }
        }
    }

    /// Routes outputs that did not come from the engine (the edge layer's), then the engine's.
    fn route(&mut self, outputs: Vec<Output>, now: Millis) {
        let mut dead = Vec::new();
        for output in outputs {
            self.route_one(output, &mut dead);
        }
        for conn in dead {
            self.closed(conn, now);
        }
        self.route_outputs(now);
    }

    /// Puts one output on its connection's queue; a connection found dead goes to `dead`.
    fn route_one(&mut self, output: Output, dead: &mut Vec<ConnId>) {
        let (conn, out, last) = match output {
            Output::Send { conn, stanza } if stanza.len() > self.max_stanza_bytes => {
                // SPEC TRN-1: never send more than the limit. The engine
                // should not produce it; dropping this one stanza keeps
                // the session, where a write error would end it.
                tracing::error!(%conn, len = stanza.len(), "engine produced an oversized stanza; not sent");
                return;
            }
            Output::Send { conn, stanza } => {
                if tracing::enabled!(target: "bimip::cluster::errors", tracing::Level::DEBUG)
                    && let Ok(crate::proto::message_scheme::Payload::ErrorMessage(e)) =
                        crate::codec::decode(&stanza, usize::MAX)
                {
                    tracing::debug!(target: "bimip::cluster::errors", %conn, code = e.code, message = e.message, details = e.details, ref_id = e.ref_id, "error sent");
                }
                (conn, Out::Send(stanza), false)
            }
            Output::Close { conn, reason } => {
                tracing::debug!(target: "bimip::cluster::conns", %conn, ?reason, local = self.links.contains_key(&conn), "engine closes");
                (conn, Out::Close(reason), true)
            }
            Output::Mail { to, mail } => return self.mail.push((to, mail)),
            Output::Sync(job) => return self.syncs.push(job),
        };
        let Some(link) = self.links.get(&conn) else {
            // A connection whose socket is on another node; or one already given up on (and the engine told),
            // with nothing to deliver.
            if let Some(remote) = &self.remote {
                remote.to_conn(conn, out);
            }
            return;
        };
        match link.tx.try_send(out) {
            Ok(()) if last => {
                // The engine has forgotten the connection; dropping our
                // sender lets its writer see the end after the Close.
                self.links.remove(&conn);
            }
            Ok(()) => {}
            Err(PushError::Full) => {
                // A peer that does not read its stanzas is as good as
                // dead, and an unbounded queue would let it eat memory.
                tracing::debug!(%conn, "outbound queue full; dropping the connection");
                if let Some(link) = self.links.remove(&conn) {
                    link.tx.kill();
                }
                if !last {
                    dead.push(conn);
                }
            }
            Err(PushError::Closed) => {
                self.links.remove(&conn);
                if !last {
                    dead.push(conn);
                }
            }
        }
    }
}

/// What a shard needs to reach connections on other nodes.
#[derive(Clone)]
struct Remote {
    outward: relay::Outward,
    layout: Layout,
}

impl Remote {
    fn to_conn(&self, conn: ConnId, out: Out) {
        let node = self.layout.node_of_conn(conn);
        if node == self.layout.node || node >= self.layout.nodes.len() {
            return;
        }
        let frame = match out {
            Out::Send(stanza) => Frame::send(conn, stanza),
            Out::Close(reason) => Frame::close(conn, reason),
        };
        self.outward.send(node, &frame);
    }
}

fn snapshot_of(engine: &Engine) -> Snapshot {
    Snapshot {
        stats: engine.stats().clone(),
        connections: engine.connection_count(),
        users_online: engine.registry().users_online(),
    }
}
