//! The one place the engine lives: a `std::sync::Mutex<Engine>` that every
//! connection task locks for the length of one engine call, plus the routing
//! of the engine's outputs to the connections' writers and the timer task.
//!
//! Every engine call goes through [`Hub::with_engine`], which drains
//! `poll_output()` before it unlocks: outputs are therefore routed in the
//! engine's order, into per-connection FIFO queues, so each connection writes
//! them in that order too. No lock is ever held across an `.await`.
//!
//! Group commit across connections (QUE-2): draining `poll_output()` is when
//! the engine syncs its chat store, one fsync for everything written since the
//! last one. Stanzas therefore go into an inbox first: the task that finds the
//! engine free feeds it every stanza waiting in the inbox, then drains the
//! outputs once (one sync for the batch); a task that finds the engine busy
//! (typically inside an fsync) leaves its stanza in the inbox for the holder,
//! which looks at the inbox again before it lets go and once more after. So
//! while one fsync runs, the stanzas of every other connection gather and then
//! share the next one. Each connection's stanzas keep their order: the inbox is
//! FIFO, and every other engine call empties the inbox before it runs. A full
//! inbox makes senders wait for the engine (backpressure).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::outbox::{self, PushError};
use super::{Clock, Edge};
use crate::codec::{ErrorKind, FrameError};
use crate::core::{CloseReason, ConnId, Engine, Millis, Output, Stats, Transport};

/// What the engine asks one connection's writer to do.
#[derive(Debug)]
pub(crate) enum Out {
    Send(Bytes),
    /// Flush what came before, then close with this reason.
    Close(CloseReason),
}

/// A connection's side of the routing table: its writer queue, and the token
/// that aborts it when the hub gives up on it.
pub(crate) struct Endpoint {
    pub conn: ConnId,
    pub rx: outbox::Receiver,
    pub kill: CancellationToken,
}

struct Link {
    tx: outbox::Sender,
    kill: CancellationToken,
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

struct Core {
    engine: Engine,
    /// A layer that alters traffic at the edge (tests only; `edge.rs`).
    edge: Option<Box<dyn Edge>>,
    max_stanza_bytes: usize,
    links: BTreeMap<ConnId, Link>,
    /// The deadline the timer task sleeps until; an earlier one must wake it.
    armed: Option<Millis>,
    /// Stanzas fed to the engine in the last batch (between two output drains).
    last_batch: usize,
}

/// Stanzas waiting in the inbox beyond which a sender waits for the engine
/// instead of leaving its stanza for the current holder.
const INBOX_LIMIT: usize = 1024;

/// Longest wait for the stragglers of a batch before its sync (module doc).
const LINGER: Duration = Duration::from_millis(1);

pub(crate) struct Hub {
    core: Mutex<Core>,
    /// Stanzas received but not yet given to the engine, in arrival order.
    inbox: Mutex<VecDeque<(ConnId, Bytes)>>,
    clock: Arc<dyn Clock>,
    timer_wake: Notify,
    snapshot: watch::Sender<Snapshot>,
    next_conn: AtomicU64,
    queue_capacity: usize,
    max_stanza_bytes: usize,
    shutdown: CancellationToken,
}

impl Hub {
    pub fn new(
        engine: Engine,
        edge: Option<Box<dyn Edge>>,
        clock: Arc<dyn Clock>,
        queue_capacity: usize,
        shutdown: CancellationToken,
    ) -> Self {
        let max_stanza_bytes = engine.config().max_stanza_bytes;
        let (snapshot, _) = watch::channel(snapshot_of(&engine));
        Hub {
            core: Mutex::new(Core {
                engine,
                edge,
                max_stanza_bytes,
                links: BTreeMap::new(),
                armed: None,
                last_batch: 0,
            }),
            inbox: Mutex::new(VecDeque::new()),
            clock,
            timer_wake: Notify::new(),
            snapshot,
            next_conn: AtomicU64::new(1),
            queue_capacity: queue_capacity.max(1),
            max_stanza_bytes,
            shutdown,
        }
    }

    pub fn max_stanza_bytes(&self) -> usize {
        self.max_stanza_bytes
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.subscribe()
    }

    /// A new connection id with its writer queue. The link exists before the
    /// engine hears of the connection, so that nothing the engine says to it
    /// (the Authenticate RESPONSE sent from inside `open`) is lost.
    pub fn register(&self) -> Endpoint {
        let conn = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = outbox::outbox(self.queue_capacity);
        let kill = self.shutdown.child_token();
        self.lock().links.insert(conn, Link { tx, kill: kill.clone() });
        Endpoint { conn, rx, kill }
    }

    pub fn open(&self, conn: ConnId, transport: Transport, token: Option<&str>) -> Result<(), ErrorKind> {
        let opened = self.with_engine(|engine, now| engine.open(conn, transport, token, now));
        if opened.is_err() {
            self.lock().links.remove(&conn);
        }
        opened
    }

    /// One stanza from a connection: into the inbox, then into the engine by
    /// this task or by the one holding the engine (module doc).
    pub fn receive(&self, conn: ConnId, stanza: &[u8]) {
        let waiting = {
            let mut inbox = self.inbox();
            inbox.push_back((conn, Bytes::copy_from_slice(stanza)));
            inbox.len()
        };
        if waiting > INBOX_LIMIT {
            self.with_engine(|_, _| ());
        } else {
            self.drain_inbox();
        }
    }

    pub fn text_frame(&self, conn: ConnId) {
        self.with_engine(|engine, now| engine.text_frame(conn, now));
    }

    pub fn framing_error(&self, conn: ConnId, error: &FrameError) {
        self.with_engine(|engine, now| engine.framing_error(conn, error, now));
    }

    /// An operator push (SPEC PUSH-2): the devices it reached.
    pub fn push(
        &self,
        eid: &str,
        kind: &str,
        data: std::collections::BTreeMap<String, String>,
    ) -> Result<usize, ErrorKind> {
        self.with_engine(|engine, now| engine.push(eid, kind, data, now))
    }

    /// The connection is gone (or its task ends): forget its link, tell the
    /// engine. Safe to call more than once.
    pub fn closed(&self, conn: ConnId) {
        let known = self.lock().links.remove(&conn).is_some();
        if known {
            self.with_core(|core, now| core.closed(conn, now));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic inside the engine is a bug, but it must not take every other
        // connection down with it (SPEC SES-7): keep serving with the state as
        // the panicking call left it.
        self.core.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn inbox(&self) -> MutexGuard<'_, VecDeque<(ConnId, Bytes)>> {
        self.inbox.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Feeds the inbox to the engine unless another task holds it; that task
    /// then does it (it looks at the inbox after unlocking).
    fn drain_inbox(&self) {
        while !self.inbox().is_empty() {
            let core = match self.core.try_lock() {
                Ok(core) => core,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            self.run(core, |_, _| ());
        }
    }

    /// Runs one engine call at `now` (after the stanzas waiting in the inbox),
    /// then routes everything it produced.
    fn with_engine<R>(&self, f: impl FnOnce(&mut Engine, Millis) -> R) -> R {
        self.with_core(|core, now| f(&mut core.engine, now))
    }

    /// As [`Hub::with_engine`], for calls that also concern the edge layer.
    fn with_core<R>(&self, f: impl FnOnce(&mut Core, Millis) -> R) -> R {
        let core = self.lock();
        let result = self.run(core, f);
        // Stanzas that arrived while this call held the engine.
        self.drain_inbox();
        result
    }

    fn run<R>(&self, mut core: MutexGuard<'_, Core>, f: impl FnOnce(&mut Core, Millis) -> R) -> R {
        let now = self.clock.now_ms();
        let mut fed = 0;
        let feed = |core: &mut Core| {
            let batch = std::mem::take(&mut *self.inbox());
            let fed = batch.len();
            for (conn, stanza) in batch {
                core.receive(conn, stanza, now);
            }
            fed
        };
        let result = loop {
            fed += feed(&mut core);
            // Looked at again under the engine lock: what arrived meanwhile
            // joins this batch's sync.
            if self.inbox().is_empty() {
                break f(&mut core, now);
            }
        };
        if fed > 0 {
            // Senders answered by the last sync send their next stanzas a
            // moment apart; without a short wait for them, batches split into
            // cohorts that never merge again.
            let until = std::time::Instant::now() + LINGER;
            while fed < core.last_batch && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_micros(50));
                fed += feed(&mut core);
            }
            core.last_batch = fed;
        }
        core.route_outputs(now);
        if let Some(deadline) = core.engine.next_deadline()
            && core.armed.is_none_or(|armed| deadline < armed)
        {
            core.armed = Some(deadline);
            self.timer_wake.notify_one();
        }
        let snapshot = snapshot_of(&core.engine);
        drop(core);
        self.snapshot.send_replace(snapshot);
        result
    }

    /// Sleeps until the engine's next deadline and ticks it; woken early when
    /// an engine call sets an earlier deadline. Ends at shutdown.
    pub async fn run_timers(self: Arc<Self>) {
        loop {
            // Created before reading the deadline: `notify_one` stores a permit,
            // so a deadline set in between still wakes this loop.
            let woken = self.timer_wake.notified();
            let wait = {
                let mut core = self.lock();
                let deadline = core.engine.next_deadline();
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
                () = sleep => self.with_core(Core::tick),
            }
        }
    }
}

impl Core {
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
        if let Some(edge) = &mut self.edge {
            let mut released = Vec::new();
            edge.tick(&mut released);
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
                    Some(edge) => edge.outbound(output, &mut outputs),
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
            Output::Send { conn, stanza } => (conn, Out::Send(stanza), false),
            Output::Close { conn, reason } => (conn, Out::Close(reason), true),
        };
        let Some(link) = self.links.get(&conn) else {
            // Already given up on (and the engine told); nothing to deliver.
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
                    link.kill.cancel();
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

fn snapshot_of(engine: &Engine) -> Snapshot {
    Snapshot {
        stats: engine.stats().clone(),
        connections: engine.connection_count(),
        users_online: engine.registry().users_online(),
    }
}
