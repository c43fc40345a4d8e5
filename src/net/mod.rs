//! The network adapters of the reference server: sockets in, engine calls,
//! engine outputs back onto sockets. All protocol decisions stay in the
//! sans-IO [`crate::core::Engine`]; this module only moves bytes, frames them
//! (WebSocket messages, TCP length prefixes), runs TLS and the engine's timers.
//!
//! # Design: the engine behind a mutex, not in its own task
//!
//! The engine is not `Sync`, so something must serialise access to it. A
//! dedicated engine task fed by a channel is the usual answer, but the
//! WebSocket upgrade decides *synchronously*: tungstenite's handshake callback
//! must return the HTTP response (101, or 401/429 before any upgrade, SPEC
//! AUTH-10) without awaiting, and the answer depends on the engine (token,
//! revocations, session limits). A channel round-trip from a sync callback
//! would block a runtime thread, and upgrading first to decide later would
//! break the SPEC. So each shard of the engine lives in a `std::sync::Mutex`
//! inside the hub (`hub.rs`, which also carries the shards' mail): every
//! event (open, stanza, text frame, framing error, close, timer tick) locks
//! its shard for one engine call, drains `poll_output()`
//! into per-connection bounded queues *before unlocking*, and never holds it
//! across an `.await`. That keeps outputs in engine order per connection, and
//! a given interleaving of events always yields the same outputs (under
//! turmoil, whose single-threaded hosts and `biased` selects make the
//! interleaving reproducible).
//!
//! Each connection is one task: it reads frames and calls the engine, and it
//! writes what its queue holds. A queue that fills up means the peer does not
//! read; the hub then drops the connection (and tells the engine) instead of
//! buffering without bound. One timer task sleeps until the engine's next
//! deadline (tokio time: simulated under turmoil) and ticks it.
//!
//! Observers read a [`Snapshot`]: each shard leaves its counters in a slot of
//! their own after every batch, and a read sums the slots, so metrics never
//! contend for a shard's lock.

mod accept;
mod clock;
mod edge;
mod hub;
mod lean;
mod outbox;
mod tcp;
pub mod tls;
mod ws;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use accept::Accept;
pub use clock::{Clock, ManualClock, SimClock, SystemClock};
pub use edge::Edge;
pub use hub::{MailSteps, Snapshot};

/// Runs operator calls (the backend API, `POST /push`) in a running server, each on the shard that owns the
/// user it concerns (see [`ServerHandle::operator`]).
#[derive(Clone)]
pub struct Operator {
    hub: Arc<Hub>,
    /// A cluster's NATS: calls about users homed on another node go there.
    cluster: Option<Arc<ClusterLink>>,
}

/// What an operator needs of a cluster: its NATS connection and where users live.
struct ClusterLink {
    client: async_nats::Client,
    layout: crate::cluster::Layout,
}

/// The subject on which a node serves the backend API's calls forwarded by other nodes.
pub fn admin_subject(node: &str) -> String {
    format!("bimip.admin.{node}")
}

impl Operator {
    /// Runs `f` on the engine that owns `eid` (its home shard) with the server's time; what it outputs goes out
    /// as any other call's.
    /// `None` when that shard is on another node of a cluster (operator calls are served by the user's home node).
    pub fn on_home<R>(&self, eid: &str, f: impl FnOnce(&mut Engine, crate::core::Millis) -> R) -> Option<R> {
        self.hub.on_home(eid, f)
    }

    /// The node of a cluster that is `eid`'s home, when that is another node.
    pub fn remote_home(&self, eid: &str) -> Option<usize> {
        let cluster = self.cluster.as_ref()?;
        let node = cluster
            .layout
            .node_of_shard(crate::core::shard::home(eid, cluster.layout.shard_count()));
        (node != cluster.layout.node).then_some(node)
    }

    /// Sends `payload` to node `node`'s backend API over NATS and waits for its answer (at most 5 s).
    pub async fn request(&self, node: usize, payload: bytes::Bytes) -> Result<bytes::Bytes, String> {
        let cluster = self.cluster.as_ref().ok_or("not a cluster")?;
        let name = cluster.layout.nodes.get(node).ok_or("no such node")?;
        let asked = cluster.client.request(admin_subject(name), payload);
        match tokio::time::timeout(Duration::from_secs(5), asked).await {
            Ok(Ok(message)) => Ok(message.payload),
            Ok(Err(e)) => Err(format!("node {name}: {e}")),
            Err(_) => Err(format!("node {name} did not answer within 5 s")),
        }
    }

    /// This node's NATS connection and its name, in a cluster.
    pub fn nats(&self) -> Option<(async_nats::Client, String)> {
        let cluster = self.cluster.as_ref()?;
        Some((cluster.client.clone(), cluster.layout.name().to_string()))
    }

    /// The server's counters, summed over its shards.
    pub fn snapshot(&self) -> Snapshot {
        self.hub.snapshot()
    }

    /// How many shards the engine runs on.
    pub fn shards(&self) -> usize {
        self.hub.shard_count()
    }
}
pub use ws::{SUBPROTOCOL, subprotocols as ws_subprotocols, ws_config};

use crate::core::Engine;
use hub::Hub;

/// Adapter settings that are not protocol rules (those are the engine's
/// [`crate::core::Config`]).
#[derive(Clone)]
pub struct ServerOptions {
    /// TLS for every listener (wss://, tls://); `None` = plaintext.
    pub tls: Option<TlsAcceptor>,
    /// Time allowed for the TLS handshake and the WebSocket upgrade. The TCP
    /// auth deadline (SPEC TRN-12) is the engine's and starts after TLS.
    pub handshake_timeout: Duration,
    /// Stanzas queued for one connection before it counts as dead.
    pub outbound_queue: usize,
    /// After the server closes a connection: how long it waits for the peer
    /// to close its side before dropping the socket.
    pub close_linger: Duration,
    /// Deliberate faults, applied at the edge (`crate::faults`): tests only.
    pub faults: crate::faults::Faults,
    /// Behaviours SPEC allows that the reference server does not choose (`crate::variants`): tests only.
    pub variants: crate::variants::Variants,
    /// When shards handle each other's mail: at once (a server), or stepped by a seeded scheduler (simulation).
    pub mail_steps: MailSteps,
    /// Least time between the starts of two fsyncs of one shard (a pipelined store's, [`Hub::run_syncs`]): a
    /// group-commit window. Every fsync costs the same whatever it covers, so at 10,000 stanzas/s a shard that
    /// synced as soon as the last fsync ended spent a fifth of its core on them (BENCHMARKS.md, part 8).
    pub sync_gap: Duration,
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("tls", &self.tls.is_some())
            .field("handshake_timeout", &self.handshake_timeout)
            .field("outbound_queue", &self.outbound_queue)
            .field("close_linger", &self.close_linger)
            .field("faults", &self.faults)
            .field("variants", &self.variants)
            .field("mail_steps", &self.mail_steps)
            .field("sync_gap", &self.sync_gap)
            .finish()
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            tls: None,
            handshake_timeout: Duration::from_secs(10),
            outbound_queue: 1024,
            close_linger: Duration::from_secs(2),
            faults: crate::faults::Faults::none(),
            variants: crate::variants::Variants::default(),
            mail_steps: MailSteps::Eager,
            sync_gap: Duration::from_millis(1),
        }
    }
}

/// What [`serve`] binds.
#[derive(Clone, Debug, Default)]
pub struct NetConfig {
    /// Native TCP listener (`tcp://` or, with TLS, `tls://`); `None` = off.
    pub tcp: Option<SocketAddr>,
    /// WebSocket listener (`ws://` or `wss://`, any path); `None` = off.
    pub ws: Option<SocketAddr>,
    pub options: ServerOptions,
}

/// Binds the listeners of `config` (port 0 picks a free port) and serves them
/// with `engines`, the shards of one engine ([`ServerHandle::start_shards`]). The returned handle names the
/// bound addresses.
pub async fn serve(config: NetConfig, engines: Vec<Engine>, clock: Arc<dyn Clock>) -> io::Result<ServerHandle> {
    serve_node(config, engines, clock, None).await
}

/// As [`serve`], for one node of a cluster when `node` is given: `engines` are this node's shards of its layout.
pub async fn serve_node(
    config: NetConfig,
    engines: Vec<Engine>,
    clock: Arc<dyn Clock>,
    node: Option<crate::cluster::Node>,
) -> io::Result<ServerHandle> {
    let tcp = match config.tcp {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
        None => None,
    };
    let ws = match config.ws {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
        None => None,
    };
    let mut server = match node {
        None => ServerHandle::start_shards(engines, clock, config.options),
        Some(node) => ServerHandle::start_node(engines, clock, config.options, node),
    };
    if let Some(listener) = tcp {
        server.listen_tcp(listener)?;
    }
    if let Some(listener) = ws {
        server.listen_ws(listener)?;
    }
    Ok(server)
}

/// A running server: its engine, timer task and listeners. Dropping the handle
/// leaves the server running (for as long as its runtime runs); call
/// [`ServerHandle::shutdown`] to stop it.
pub struct ServerHandle {
    hub: Arc<Hub>,
    cluster: Option<Arc<ClusterLink>>,
    options: Arc<ServerOptions>,
    /// Every task holds a clone; the receiver sees `None` once all are gone.
    tasks: mpsc::Sender<()>,
    tasks_done: mpsc::Receiver<()>,
    tcp_addrs: Vec<SocketAddr>,
    ws_addrs: Vec<SocketAddr>,
}

impl ServerHandle {
    /// Starts the engine's timer task; add listeners with [`listen_tcp`] and
    /// [`listen_ws`]. Must be called inside a tokio runtime (a turmoil host is
    /// one).
    ///
    /// [`listen_tcp`]: ServerHandle::listen_tcp
    /// [`listen_ws`]: ServerHandle::listen_ws
    pub fn start(engine: Engine, clock: Arc<dyn Clock>, options: ServerOptions) -> ServerHandle {
        Self::start_shards(vec![engine], clock, options)
    }

    /// As [`ServerHandle::start`], for a partitioned engine: `engines[i]` is shard `i` of `engines.len()`
    /// ([`Engine::with_shard`]).
    pub fn start_shards(engines: Vec<Engine>, clock: Arc<dyn Clock>, options: ServerOptions) -> ServerHandle {
        let layout = crate::cluster::Layout::single(engines.len());
        Self::start_with(engines, layout, None, clock, options)
    }

    /// As [`ServerHandle::start_shards`], for one node of a cluster: `engines` are the node's shards of its
    /// layout, in order; frames to and from the other nodes go through its NATS connection.
    pub fn start_node(
        engines: Vec<Engine>,
        clock: Arc<dyn Clock>,
        options: ServerOptions,
        node: crate::cluster::Node,
    ) -> ServerHandle {
        let (outward, outgoing) = hub::Outward::new();
        let layout = node.layout.clone();
        let mut server = Self::start_with(engines, layout.clone(), Some(outward), clock, options);
        server.cluster = Some(Arc::new(ClusterLink {
            client: node.client().clone(),
            layout,
        }));
        let sink: Arc<dyn crate::cluster::FrameSink> = server.hub.clone();
        crate::cluster::spawn(node, outgoing, sink, server.hub.shutdown_token().clone());
        server
    }

    fn start_with(
        engines: Vec<Engine>,
        layout: crate::cluster::Layout,
        outward: Option<hub::Outward>,
        clock: Arc<dyn Clock>,
        options: ServerOptions,
    ) -> ServerHandle {
        let shutdown = CancellationToken::new();
        let faults = options.faults.clone();
        let variants = options.variants.clone();
        let hub = Arc::new(Hub::new(
            engines,
            layout,
            outward,
            // One layer at a time: the self-checks apply a fault or a variant, never both.
            || faults.layer().or_else(|| variants.layer()),
            clock,
            options.outbound_queue,
            shutdown,
            options.mail_steps.clone(),
            options.sync_gap,
        ));
        let (tasks, tasks_done) = mpsc::channel(1);
        let guard = tasks.clone();
        tokio::spawn({
            let hub = Arc::clone(&hub);
            async move {
                tokio::join!(
                    Arc::clone(&hub).run_timers(),
                    Arc::clone(&hub).run_syncs(),
                    hub.run_mail_steps()
                );
                drop(guard);
            }
        });
        ServerHandle {
            hub,
            cluster: None,
            options: Arc::new(options),
            tasks,
            tasks_done,
            tcp_addrs: Vec::new(),
            ws_addrs: Vec::new(),
        }
    }

    /// Serves native TCP (with TLS when configured) on `listener`.
    pub fn listen_tcp<L: Accept>(&mut self, listener: L) -> io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        self.spawn_accept_loop(listener, Kind::Tcp);
        self.tcp_addrs.push(addr);
        Ok(addr)
    }

    /// Serves WebSocket (with TLS when configured) on `listener`, any path.
    pub fn listen_ws<L: Accept>(&mut self, listener: L) -> io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        self.spawn_accept_loop(listener, Kind::Ws);
        self.ws_addrs.push(addr);
        Ok(addr)
    }

    /// The first native TCP address, if any.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addrs.first().copied()
    }

    /// The first WebSocket address, if any.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addrs.first().copied()
    }

    /// Sends an operator PushNotification to every online device of `eid`
    /// (SPEC PUSH-2); returns how many devices it reached.
    pub fn push(
        &self,
        eid: &str,
        kind: &str,
        data: std::collections::BTreeMap<String, String>,
    ) -> Result<usize, crate::codec::ErrorKind> {
        self.hub
            .on_home(eid, |engine, now| engine.push(eid, kind, data, now))
            .unwrap_or(Err(crate::codec::ErrorKind::Unavailable))
    }

    /// A handle for pushing from other tasks (the admin endpoint).
    pub fn operator(&self) -> Operator {
        Operator {
            hub: self.hub.clone(),
            cluster: self.cluster.clone(),
        }
    }

    /// The latest snapshot of the engine's counters.
    pub fn stats(&self) -> Snapshot {
        self.hub.snapshot()
    }

    /// Where observers (the admin endpoint's metrics) read the counters, whenever they want them.
    pub fn snapshot_source(&self) -> crate::admin::SnapshotSource {
        let hub = Arc::clone(&self.hub);
        Arc::new(move || hub.snapshot())
    }

    /// Resolves once shutdown has been requested.
    pub async fn stopped(&self) {
        self.hub.shutdown_token().cancelled().await;
    }

    /// Stops accepting, closes every connection (WebSocket code 1001), stops
    /// the timers, and waits for every task to finish.
    pub async fn shutdown(self) {
        let ServerHandle {
            hub,
            tasks,
            mut tasks_done,
            ..
        } = self;
        hub.stop();
        drop(tasks);
        while tasks_done.recv().await.is_some() {}
    }

    fn spawn_accept_loop<L: Accept>(&self, mut listener: L, kind: Kind) {
        let hub = Arc::clone(&self.hub);
        let options = Arc::clone(&self.options);
        let tasks = self.tasks.clone();
        tokio::spawn(async move {
            let shutdown = hub.shutdown_token().clone();
            loop {
                let accepted = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        tracing::trace!(%peer, "accepted");
                        spawn_connection(Arc::clone(&hub), stream, kind, Arc::clone(&options), tasks.clone());
                    }
                    Err(error) => {
                        // Typically out of file descriptors: retrying at once
                        // would spin; a pause lets connections finish.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            drop(tasks);
        });
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Tcp,
    Ws,
}

/// One accepted stream as one task: TLS if configured, then its transport; `guard` goes when it ends.
///
/// Without TLS the transport's future is the task itself, one allocation; with TLS, every stage is boxed: an
/// async function's state is as large as its largest stage, and a task that held the TLS handshake or the other
/// transport's future inline would carry their size for as long as the connection lives (most connections are
/// idle: SPEC §19's memory budget is per connection).
fn spawn_connection<S>(hub: Arc<Hub>, stream: S, kind: Kind, options: Arc<ServerOptions>, guard: mpsc::Sender<()>)
where
    S: tokio::io::AsyncWrite + AsyncRead + Unpin + Send + 'static,
{
    let endpoint = hub.register();
    match (options.tls.clone(), kind) {
        // `map`, not an `async` block that awaits it: that would hold the transport's future twice (rustc moves
        // an awaited capture into a local of its own).
        (None, Kind::Tcp) => tokio::spawn(tcp::serve(hub, stream, endpoint, options).map(move |()| drop(guard))),
        (None, Kind::Ws) => tokio::spawn(ws::serve(hub, stream, endpoint, options).map(move |()| drop(guard))),
        (Some(acceptor), _) => tokio::spawn(async move {
            Box::pin(over_tls(hub, stream, endpoint, kind, options, acceptor)).await;
            drop(guard);
        }),
    };
}

/// The TLS handshake, then the transport over TLS.
async fn over_tls<S>(
    hub: Arc<Hub>,
    stream: S,
    endpoint: hub::Endpoint,
    kind: Kind,
    options: Arc<ServerOptions>,
    acceptor: TlsAcceptor,
) where
    S: tokio::io::AsyncWrite + AsyncRead + Unpin + Send + 'static,
{
    let conn = &endpoint.conn;
    let handshake = Box::pin(tokio::time::timeout(options.handshake_timeout, acceptor.accept(stream)));
    let tls = tokio::select! {
        biased;
        () = endpoint.rx.killed() => None,
        tls = handshake => match tls {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(error)) => {
                tracing::debug!(%conn, %error, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%conn, "TLS handshake timed out");
                None
            }
        },
    };
    match tls {
        None => hub.closed(&endpoint.conn),
        Some(tls) => transport(hub, tls, endpoint, kind, options).await,
    }
}

/// The connection's transport loop, boxed (see [`connection`]).
async fn transport<S>(hub: Arc<Hub>, stream: S, endpoint: hub::Endpoint, kind: Kind, options: Arc<ServerOptions>)
where
    S: tokio::io::AsyncWrite + AsyncRead + Unpin + Send + 'static,
{
    match kind {
        Kind::Tcp => Box::pin(tcp::serve(hub, stream, endpoint, options)).await,
        Kind::Ws => Box::pin(ws::serve(hub, stream, endpoint, options)).await,
    }
}

/// Reads and discards input until the peer closes, an error, or `limit`.
async fn linger<S: AsyncRead + Unpin>(io: &mut S, limit: Duration) {
    let mut scratch = [0u8; 1024];
    let _ = tokio::time::timeout(limit, async {
        while matches!(io.read(&mut scratch).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests;
