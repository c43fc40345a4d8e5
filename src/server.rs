//! `bimip serve`: the reference server assembled from its parts: settings
//! (flags over an optional TOML file over development defaults), keys, the
//! durable revocation list, the sans-IO engine, the network adapters and the
//! admin endpoint (health and Prometheus metrics).
//!
//! Development defaults just work: loopback addresses, a development Ed25519
//! key created on first run in the data directory, no TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::auth::{Algorithm, Signer, Verifier};
use crate::core::queue::{ChatEvent, ChatStore, MemoryChatStore};
use crate::core::social::SocialEvent;
use crate::core::{Config as EngineConfig, Engine, ShardId};
use crate::keys::{self, KeyError};
use crate::store::queue::{QueueConfig, RealFs};
use crate::store::{ChatStoreConfig, ChatStoreError, DurableChatStore, FileRevocations, Journal, OpenError, Spares};

/// Every setting of the reference server; the TOML file has the same shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// WebSocket listener (`ws://ADDR/ws`); none = off.
    pub ws: Option<SocketAddr>,
    /// Native TCP listener (`tcp://ADDR`); none = off.
    pub tcp: Option<SocketAddr>,
    /// Admin HTTP listener: GET /healthz, GET /metrics and POST /push; none = off.
    pub admin: Option<SocketAddr>,
    /// Backend gRPC API listener (`proto/bimip_admin.proto`); none = off. Plaintext only on loopback.
    pub grpc: Option<SocketAddr>,
    /// The backend API's bearer secret (first line of the file); absent = `data_dir/admin-secret`, created on
    /// first start.
    pub grpc_secret_file: Option<PathBuf>,
    /// This server's name in session lists and stats.
    pub node: String,
    /// Development key, revocation list, social graph and the offline queue (`queue/`) live here.
    pub data_dir: PathBuf,
    /// Token keys; absent = the development key in `data_dir`.
    pub jwt: Option<JwtSettings>,
    /// TLS for both listeners (wss://, tls://); absent = plaintext.
    pub tls: Option<TlsSettings>,
    /// Limits and timers (SPEC §19).
    pub limits: EngineConfig,
    /// Where chat lives: on disk in `data_dir/queue` (default), or in memory, lost at exit (for load tests and
    /// throwaway development servers).
    pub chat_store: ChatStorage,
    /// Shards of the engine (src/core/README.md): each owns the users and chats that hash to it. None: the count
    /// the data directory was created with, or one for a new one. A data directory keeps its count.
    pub shards: Option<usize>,
    /// One node of a cluster (src/cluster): its NATS and its peers; absent = a lone server.
    pub cluster: Option<ClusterSettings>,
    /// Deliberate faults (`crate::faults`), for the test-only `bimip serve --fault`; never read from a file.
    #[serde(skip)]
    pub faults: crate::faults::Faults,
    /// Behaviours SPEC allows that the reference server does not choose (`crate::variants`), for the test-only
    /// `bimip-conform --variant`; never read from a file.
    #[serde(skip)]
    pub variants: crate::variants::Variants,
}

/// Where the server keeps chat: queue items, device offsets and the chat history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ChatStorage {
    /// `data_dir/queue`: survives restarts and crashes (SPEC SES-8, QUE-2).
    #[default]
    Durable,
    /// Process memory: every message is lost when the server stops.
    Memory,
}

/// Where the token keys come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// "RS256", "EdDSA" or "HS256".
    pub alg: String,
    /// Verification key: a public key PEM (or private, or the HS256 secret file).
    pub key: PathBuf,
    /// Private key (or secret) to sign refreshed tokens; absent = refresh answers 503.
    pub signing_key: Option<PathBuf>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Seconds a token stays good past its `exp` (and before its `nbf`): SPEC AUTH-6 allows up to 60; sessions
    /// end that long after their token's exp (AUTH-13). 0 by default.
    #[serde(default)]
    pub leeway_s: u64,
}

/// PEM files of the server's certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One shard's durable state as opened at start.
struct OpenedShard {
    /// Its index in the service.
    shard: usize,
    revocations: ShardRevocations,
    social_log: Journal<SocialEvent>,
    social: Vec<SocialEvent>,
    chat_store: Box<dyn ChatStore>,
    chat_events: Vec<ChatEvent>,
}

/// Where a shard's revocation list lives: in the data directory, or (a cluster node with durable storage) in
/// JetStream, where it came from the data directory's list at start.
enum ShardRevocations {
    File(FileRevocations),
    Stream(Box<crate::cluster::revocations::StreamRevocations>),
}

impl ShardRevocations {
    fn boxed(self) -> Box<dyn crate::core::Revocations> {
        match self {
            ShardRevocations::File(file) => Box::new(file),
            ShardRevocations::Stream(stream) => stream,
        }
    }
}

/// A node of a cluster: every node is given the same `nodes`, and names itself by `Settings::node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// NATS server URLs, comma-separated (`nats://127.0.0.1:4222,...`); `--cluster` gives them too.
    #[serde(default)]
    pub nats: String,
    /// Every node's name, in the same order on every node; `--cluster-nodes` gives them too.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// A starting node writes a shard's chat state as a snapshot, and drops the stream messages before it, when it
    /// read more operations after the last snapshot than this and than twice the snapshot's own
    /// (`cluster::chat_stream`).
    #[serde(default = "ClusterSettings::default_compact_after_ops")]
    pub compact_after_ops: usize,
}

impl ClusterSettings {
    fn default_compact_after_ops() -> usize {
        10_000
    }

    /// The cluster of NATS `nats` and nodes `nodes`, with the defaults for the rest.
    pub fn new(nats: String, nodes: Vec<String>) -> ClusterSettings {
        ClusterSettings {
            nats,
            nodes,
            compact_after_ops: ClusterSettings::default_compact_after_ops(),
        }
    }
}

impl TlsSettings {
    /// The certificate chain's and the key's PEM bytes.
    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), StartError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| StartError::ReadConfig {
                path: path.to_path_buf(),
                source,
            })
        };
        Ok((read(&self.cert)?, read(&self.key)?))
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ws: Some(SocketAddr::from(([127, 0, 0, 1], 7420))),
            tcp: Some(SocketAddr::from(([127, 0, 0, 1], 7421))),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 7422))),
            grpc: Some(SocketAddr::from(([127, 0, 0, 1], 7423))),
            grpc_secret_file: None,
            node: "local".to_string(),
            data_dir: PathBuf::from("bimip-data"),
            jwt: None,
            tls: None,
            limits: EngineConfig::default(),
            chat_store: ChatStorage::default(),
            shards: None,
            cluster: None,
            faults: crate::faults::Faults::none(),
            variants: crate::variants::Variants::default(),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("reading {path}: {source}")]
    ReadConfig { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    ParseConfig {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("unknown JWT algorithm {0:?} (RS256, EdDSA or HS256)")]
    Algorithm(String),
    #[error("jwt.leeway_s = {0}: SPEC AUTH-6 allows at most 60 seconds")]
    Leeway(u64),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("durable state: {0}")]
    Store(#[from] OpenError),
    #[error("durable state: {0}")]
    Chat(#[from] ChatStoreError),
    #[error("creating {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("{what}: {source}")]
    Net { what: &'static str, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error(
        "{path} was created with {recorded} shard(s), not {requested}: a user's state lives on the shard its EID hashes to, so a data directory keeps its shard count (start without --shards to use it)"
    )]
    Shards {
        path: PathBuf,
        recorded: usize,
        requested: usize,
    },
    #[error("{path}: {why}")]
    ShardFile { path: PathBuf, why: String },
    #[error(transparent)]
    Grpc(#[from] crate::admin::grpc::ListenError),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

impl Settings {
    /// Reads a TOML settings file; missing keys keep their defaults.
    pub fn from_toml_file(path: &Path) -> Result<Settings, StartError> {
        let text = std::fs::read_to_string(path).map_err(|source| StartError::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| StartError::ParseConfig {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// The token verifier and (optional) signer these settings name. With no
    /// `jwt` section, the development key pair (created on first use).
    pub fn keys(&self) -> Result<(Verifier, Option<Signer>), StartError> {
        let Some(jwt) = &self.jwt else {
            let (verifier, signer) = keys::ensure_dev_keys(&self.data_dir)?;
            return Ok((verifier, Some(signer)));
        };
        let alg: Algorithm = jwt.alg.parse().map_err(|_| StartError::Algorithm(jwt.alg.clone()))?;
        let mut verifier = self.faults.verifier(keys::load_verifier(alg, &jwt.key)?);
        if let Some(iss) = &jwt.issuer {
            verifier = verifier.with_issuer(iss.clone());
        }
        if let Some(aud) = &jwt.audience {
            verifier = verifier.with_audience(aud.clone());
        }
        if jwt.leeway_s > 60 {
            return Err(StartError::Leeway(jwt.leeway_s));
        }
        verifier = verifier.with_leeway_s(jwt.leeway_s);
        let signer = jwt
            .signing_key
            .as_deref()
            .map(|path| keys::load_signer(alg, path))
            .transpose()?;
        Ok((verifier, signer))
    }

    /// The shard count: the data directory's (`DATA_DIR/shards`), or for a new directory the one asked for (or
    /// one), then recorded. A directory from before sharding holds one shard.
    pub fn shard_count(&self) -> Result<usize, StartError> {
        let path = self.data_dir.join("shards");
        let recorded =
            match std::fs::read_to_string(&path) {
                Ok(text) => Some(text.trim().parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    StartError::ShardFile {
                        path: path.clone(),
                        why: format!("{:?} is not a shard count", text.trim()),
                    }
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let used = ["queue", "social", "revoked-tokens"]
                        .iter()
                        .any(|name| self.data_dir.join(name).exists());
                    used.then_some(1)
                }
                Err(e) => {
                    return Err(StartError::ShardFile {
                        path,
                        why: e.to_string(),
                    });
                }
            };
        let count = match (recorded, self.shards) {
            (Some(recorded), Some(requested)) if recorded != requested => {
                return Err(StartError::Shards {
                    path: self.data_dir.clone(),
                    recorded,
                    requested,
                });
            }
            (Some(recorded), _) => recorded,
            (None, Some(requested)) => requested.max(1),
            // One until the durable path of a partitioned server catches up: across shards a chat message waits
            // for two fsyncs in a row (its event on the chat's home, then the receiver's item), and measured on 2
            // cores it delivers fewer messages than one shard does (BENCHMARKS.md, reference server part 5).
            (None, None) => 1,
        };
        if recorded.is_none() {
            std::fs::write(&path, format!("{count}\n")).map_err(|e| StartError::ShardFile {
                path,
                why: e.to_string(),
            })?;
        }
        Ok(count)
    }

    /// Where shard `shard` keeps its durable state: shard 0 in `data_dir` itself (as before sharding), the
    /// others in `data_dir/shard-N`.
    fn shard_dir(&self, shard: usize) -> PathBuf {
        match shard {
            0 => self.data_dir.clone(),
            n => self.data_dir.join(format!("shard-{n}")),
        }
    }

    /// The engine's shards, with their durable state opened from `data_dir`: per shard, the revocation list
    /// (`revoked-tokens`), the social changes its users made (`social`), and the offline queue with the chat
    /// event log (`queue/`, recovered after a crash). Every shard replays every shard's social changes: the
    /// graph is read everywhere (src/core/README.md).
    pub fn engines(&self, now_ms: i64) -> Result<Vec<Engine>, StartError> {
        let layout = self.layout()?;
        self.engines_of(&layout, now_ms)
    }

    /// Where this server's shards sit: all of them here, or this node's share of a cluster's (`nodes × shards`).
    pub fn layout(&self) -> Result<crate::cluster::Layout, StartError> {
        std::fs::create_dir_all(&self.data_dir).map_err(|source| StartError::DataDir {
            path: self.data_dir.clone(),
            source,
        })?;
        let count = self.shard_count()?;
        Ok(match &self.cluster {
            None => crate::cluster::Layout::single(count),
            // The start's number comes from the cluster, once NATS is reached (`Settings::start`).
            Some(cluster) => crate::cluster::Layout::of(&self.node, &cluster.nodes, count)?,
        })
    }

    /// This node's shards of `layout`, as [`Settings::engines`] says; the data directory holds them by their
    /// place on this node.
    fn engines_of(&self, layout: &crate::cluster::Layout, now_ms: i64) -> Result<Vec<Engine>, StartError> {
        let opened = self.open_shards(layout, now_ms)?;
        self.build_engines(layout, opened, None)
    }

    /// This node's shards' durable state, opened from the data directory (each by its place on this node).
    fn open_shards(&self, layout: &crate::cluster::Layout, now_ms: i64) -> Result<Vec<OpenedShard>, StartError> {
        std::fs::create_dir_all(&self.data_dir).map_err(|source| StartError::DataDir {
            path: self.data_dir.clone(),
            source,
        })?;
        let mut opened = Vec::new();
        for (place, shard) in layout.local_shards().enumerate() {
            let dir = self.shard_dir(place);
            std::fs::create_dir_all(&dir).map_err(|source| StartError::DataDir {
                path: dir.clone(),
                source,
            })?;
            let revocations = ShardRevocations::File(FileRevocations::open(&dir.join("revoked-tokens"), now_ms)?);
            let (social_log, social) = Journal::<SocialEvent>::open(&dir.join("social"))?;
            let (chat_store, chat_events) = if self.state_in_jetstream() {
                // Replaced by the shard's JetStream store once NATS is reached (`Settings::start`).
                (Box::new(MemoryChatStore::default()) as Box<dyn ChatStore>, Vec::new())
            } else {
                self.chat_store(&dir)?
            };
            opened.push(OpenedShard {
                shard,
                revocations,
                social_log,
                social,
                chat_store,
                chat_events,
            });
        }
        Ok(opened)
    }

    /// The engines of `opened`; with `graph` (a cluster), the social graph is the whole service's and each shard's
    /// new social events also go to the cluster's stream.
    fn build_engines(
        &self,
        layout: &crate::cluster::Layout,
        opened: Vec<OpenedShard>,
        graph: Option<&crate::cluster::graph::Graph>,
    ) -> Result<Vec<Engine>, StartError> {
        let (verifier, signer) = self.keys()?;
        let social_events: Vec<SocialEvent> = match graph {
            Some(graph) => graph.events.clone(),
            None => opened.iter().flat_map(|o| o.social.iter().cloned()).collect(),
        };
        let mut engines: Vec<Engine> = opened
            .into_iter()
            .map(|o| {
                let log: Box<dyn crate::core::social::EventLog> = match graph {
                    Some(graph) => Box::new(graph.log(o.shard, Box::new(o.social_log))),
                    None => Box::new(o.social_log),
                };
                Engine::new(
                    self.limits.clone(),
                    verifier.clone(),
                    signer.clone(),
                    o.revocations.boxed(),
                )
                .with_shard(ShardId::new(o.shard, layout.shard_count()))
                .with_social(log, &social_events)
                .with_chat(o.chat_store, &o.chat_events)
                .with_remote_shards((0..layout.shard_count()).filter(|s| !layout.is_local(*s)))
                .with_start(layout.epoch)
            })
            .collect();
        let recovered = crate::core::shard::recover(&mut engines);
        if recovered > 0 {
            tracing::info!(recovered, "chat events recovered from the queues of other shards");
        }
        Ok(engines)
    }

    /// Whether chats, queues, offsets (`cluster::chat_stream`) and revocations (`cluster::revocations`) live in the
    /// cluster's JetStream rather than in the data directory: a cluster node with durable storage.
    fn state_in_jetstream(&self) -> bool {
        self.cluster.is_some() && matches!(self.chat_store, ChatStorage::Durable)
    }

    /// One shard's chat store, opened from `dir/queue` (or in memory), with the events it replays.
    fn chat_store(&self, dir: &Path) -> Result<(Box<dyn ChatStore>, Vec<ChatEvent>), StartError> {
        let queue_config = QueueConfig {
            // Spares only for a log past a quarter of its first segment (QueueConfig::spare_after_bytes).
            spare_after_bytes: QueueConfig::default().segment_bytes / 4,
            max_items_per_eid: u64::try_from(self.limits.queue_max_items).unwrap_or(u64::MAX),
            max_bytes_per_eid: u64::try_from(self.limits.queue_max_bytes).unwrap_or(u64::MAX),
            ..QueueConfig::default()
        };
        Ok(match self.chat_store {
            ChatStorage::Durable => {
                // Syncs pipelined: the hub runs each fsync on a thread of its own while the shard goes on. No spare
                // segments: they save each fsync a metadata write, but zero-filling them took the shard's core in
                // bursts, and with the fsync off the shard's thread its length no longer stalls anyone
                // (BENCHMARKS.md, part 8).
                let chat_config = ChatStoreConfig {
                    spares: Spares::Off,
                    pipelined: true,
                    ..ChatStoreConfig::default()
                };
                let (store, events) =
                    DurableChatStore::open_with(RealFs, dir.join("queue"), queue_config, chat_config)?;
                (Box::new(store), events)
            }
            ChatStorage::Memory => (Box::new(MemoryChatStore::default()), Vec::new()),
        })
    }
}

/// A running reference server: its listeners, its admin endpoint and its backend API.
pub struct Running {
    pub net: crate::net::ServerHandle,
    pub admin: Option<SocketAddr>,
    admin_task: Option<tokio::task::JoinHandle<()>>,
    pub grpc: Option<SocketAddr>,
    grpc_task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, closes every connection, waits for the tasks.
    pub async fn shutdown(self) {
        for task in [self.admin_task, self.grpc_task].into_iter().flatten() {
            task.abort();
        }
        self.net.shutdown().await;
    }
}

impl Settings {
    /// Starts the server these settings describe, on the current tokio runtime.
    pub async fn start(&self) -> Result<Running, StartError> {
        if let Some(addr) = self.grpc {
            crate::admin::grpc::check_listen(addr, self.tls.is_some())?;
        }
        let clock: std::sync::Arc<dyn crate::net::Clock> = std::sync::Arc::new(crate::net::SystemClock);
        let layout = self.layout()?;
        let mut opened = self.open_shards(&layout, clock.now_ms())?;
        let (engines, node) = match &self.cluster {
            None => (self.build_engines(&layout, opened, None)?, None),
            Some(cluster) => {
                // Subscribed before the graph is read: what other nodes say meanwhile waits for the engines.
                let mut node = crate::cluster::Node::connect(&cluster.nats, layout.clone()).await?;
                // Numbered before anything that carries the number (connection ids, tickets, stream messages).
                let layout = layout
                    .clone()
                    .with_epoch(crate::cluster::epoch::next(node.client(), &self.node).await?);
                node.layout = layout.clone();
                let local = opened
                    .iter_mut()
                    .map(|o| crate::cluster::graph::LocalJournal {
                        shard: o.shard,
                        events: std::mem::take(&mut o.social),
                        journal: &mut o.social_log,
                    })
                    .collect();
                let graph = crate::cluster::graph::sync(node.client(), &layout, local).await?;
                if self.state_in_jetstream() {
                    let writer = crate::cluster::revocations::Writer::start(&cluster.nats, &self.node).await?;
                    for shard in &mut opened {
                        let (store, events) = crate::cluster::chat_stream::StreamChatStore::open(
                            node.client(),
                            shard.shard,
                            layout.epoch,
                            cluster.compact_after_ops,
                        )
                        .await?;
                        shard.chat_store = Box::new(store);
                        shard.chat_events = events;
                        let file = match &shard.revocations {
                            ShardRevocations::File(file) => Some(file),
                            ShardRevocations::Stream(_) => None,
                        };
                        let revocations = crate::cluster::revocations::StreamRevocations::open(
                            node.client(),
                            std::sync::Arc::clone(&writer),
                            shard.shard,
                            clock.now_ms(),
                            file,
                        )
                        .await?;
                        shard.revocations = ShardRevocations::Stream(Box::new(revocations));
                    }
                }
                (self.build_engines(&layout, opened, Some(&graph))?, Some(node))
            }
        };
        let mut options = crate::net::ServerOptions {
            faults: self.faults.clone(),
            variants: self.variants.clone(),
            ..crate::net::ServerOptions::default()
        };
        if let Some(tls) = &self.tls {
            let (cert, key) = tls.read()?;
            let acceptor =
                crate::net::tls::acceptor_from_pem(&cert, &key).map_err(|e| StartError::Tls(e.to_string()))?;
            options.tls = Some(acceptor);
        }
        let config = crate::net::NetConfig {
            tcp: self.tcp,
            ws: self.ws,
            options,
        };
        let net = crate::net::serve_node(config, engines, clock, node)
            .await
            .map_err(|source| StartError::Net {
                what: "binding the listeners",
                source,
            })?;
        let (admin, admin_task) = match self.admin {
            None => (None, None),
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Net {
                        what: "binding the admin listener",
                        source,
                    })?;
                let bound = listener.local_addr().map_err(|source| StartError::Net {
                    what: "admin address",
                    source,
                })?;
                let source = net.snapshot_source();
                let operator = Some(net.operator());
                (
                    Some(bound),
                    Some(tokio::spawn(crate::admin::http::serve(listener, source, operator))),
                )
            }
        };
        let (grpc, grpc_task) = match self.grpc {
            None => (None, None),
            Some(addr) => {
                let (bound, task) = self.start_grpc(addr, net.operator()).await?;
                (Some(bound), Some(task))
            }
        };
        Ok(Running {
            net,
            admin,
            admin_task,
            grpc,
            grpc_task,
        })
    }

    /// Where the backend API's secret lives, and whether the server creates it.
    pub fn grpc_secret_path(&self) -> (PathBuf, bool) {
        match &self.grpc_secret_file {
            Some(path) => (path.clone(), false),
            None => (self.data_dir.join(keys::ADMIN_SECRET), true),
        }
    }

    async fn start_grpc(
        &self,
        addr: SocketAddr,
        operator: crate::net::Operator,
    ) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), StartError> {
        let (path, create) = self.grpc_secret_path();
        let secret = keys::admin_secret(&path, create)?;
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &self.tls {
            let (cert, key) = tls.read()?;
            let identity = tonic::transport::Identity::from_pem(cert, key);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(|e| StartError::Tls(e.to_string()))?;
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Net {
                what: "binding the gRPC listener",
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| StartError::Net {
            what: "gRPC address",
            source,
        })?;
        let admin = crate::admin::grpc::AdminService::new(operator, self.node.clone(), &secret);
        // In a cluster, calls about users homed here may come from the other nodes too.
        let _forwarded = admin.clone().serve_forwarded();
        let service = admin.into_server();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            if let Err(e) = builder.add_service(service).serve_with_incoming(incoming).await {
                tracing::error!("the backend API stopped: {e}");
            }
        });
        Ok((bound, task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_engine(settings: &Settings, now: i64) -> Engine {
        let mut engines = settings.engines(now).unwrap();
        assert_eq!(engines.len(), 1);
        engines.remove(0)
    }

    #[test]
    fn toml_overrides_only_what_it_names() {
        let settings: Settings = toml::from_str(
            r#"
            tcp = "0.0.0.0:9000"
            [limits]
            ping_interval_ms = 5000
            "#,
        )
        .unwrap();
        assert_eq!(settings.tcp, Some("0.0.0.0:9000".parse().unwrap()));
        assert_eq!(settings.ws, Settings::default().ws);
        assert_eq!(settings.limits.ping_interval_ms, 5000);
        assert_eq!(settings.limits.max_missed_pongs, 2);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Settings>("tcpp = \"1.2.3.4:5\"").is_err());
        assert!(toml::from_str::<Settings>("[limits]\nping = 1").is_err());
    }

    #[test]
    fn revocations_survive_an_engine_restart() {
        // AUTH-14 through the engine: a logout's revocation outlives the process.
        use crate::codec;
        use crate::core::auth::Claims;
        use crate::core::{ConnId, Transport};
        use crate::proto::{Logout, message_scheme::Payload};
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            data_dir: dir.path().to_path_buf(),
            shards: Some(1),
            ..Settings::default()
        };
        let now = 1_761_831_141_000;
        let (_, signer) = settings.keys().unwrap();
        let claims = Claims {
            eid: "a@x.io".into(),
            device_id: "d".into(),
            jti: "j1".into(),
            iat: now / 1000,
            exp: now / 1000 + 600,
            ..Claims::default()
        };
        let token = signer.unwrap().mint(&claims).unwrap();
        let mut engine = one_engine(&settings, now);
        engine.open(ConnId(1), Transport::WebSocket, Some(&token), now).unwrap();
        let logout = Payload::Logout(Logout {
            r#type: 1,
            ..Logout::default()
        });
        engine.receive(ConnId(1), &codec::encode(&logout), now);
        drop(engine);
        let mut restarted = one_engine(&settings, now + 1);
        let refused = restarted.open(ConnId(1), Transport::WebSocket, Some(&token), now + 1);
        assert_eq!(refused, Err(codec::ErrorKind::TokenRevoked));
    }

    #[test]
    fn the_social_graph_survives_an_engine_restart() {
        // SES-8: subscribers, blocks and settings outlive the process.
        use crate::codec;
        use crate::core::auth::Claims;
        use crate::core::{ConnId, Output, Transport};
        use crate::proto::message_scheme::Payload;
        use crate::proto::*;
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            data_dir: dir.path().to_path_buf(),
            shards: Some(1),
            ..Settings::default()
        };
        let now = 1_761_831_141_000;
        let signer = settings.keys().unwrap().1.unwrap();
        let token = |eid: &str, jti: &str| {
            let claims = Claims {
                eid: eid.into(),
                device_id: "d".into(),
                jti: jti.into(),
                iat: now / 1000,
                exp: now / 1000 + 600,
                ..Claims::default()
            };
            signer.mint(&claims).unwrap()
        };
        let user = |eid: &str| {
            Some(Identity {
                eid: eid.into(),
                connection_resource_id: String::new(),
            })
        };
        let mut engine = one_engine(&settings, now);
        engine
            .open(ConnId(1), Transport::WebSocket, Some(&token("a@x.io", "1")), now)
            .unwrap();
        let changes = [
            Payload::SubscriberAddRequest(SubscriberAddRequest {
                subscriber: user("b@x.io"),
                ..Default::default()
            }),
            Payload::BlockSubscriber(BlockSubscriber {
                subscriber: user("c@x.io"),
                r#type: 1,
                ..Default::default()
            }),
            Payload::AwarenessVisibility(AwarenessVisibility {
                r#type: 1,
                location_sharing: 1,
                ..Default::default()
            }),
        ];
        for change in &changes {
            engine.receive(ConnId(1), &codec::encode(change), now);
        }
        drop(engine);
        let mut engine = one_engine(&settings, now);
        engine
            .open(ConnId(2), Transport::WebSocket, Some(&token("a@x.io", "2")), now)
            .unwrap();
        let query = Payload::AwarenessVisibility(AwarenessVisibility {
            r#type: 1,
            ..Default::default()
        });
        engine.receive(ConnId(2), &codec::encode(&query), now);
        engine.receive(ConnId(2), &codec::encode(&changes[0]), now);
        let answers: Vec<Payload> = std::iter::from_fn(|| engine.poll_output())
            .filter_map(|o| match o {
                Output::Send { stanza, .. } => codec::decode(&stanza, usize::MAX).ok(),
                // The server's store pipelines its syncs: the fsync runs here, and the next poll releases.
                Output::Sync(job) => {
                    job.run();
                    None
                }
                Output::Close { .. } | Output::Mail { .. } => None,
            })
            .collect();
        assert!(
            answers
                .iter()
                .any(|p| matches!(p, Payload::AwarenessVisibility(v) if v.location_sharing == 1)),
            "{answers:?}"
        );
        let resource_ids: Vec<_> = answers
            .iter()
            .filter_map(|p| match p {
                Payload::SubscriberAddResponse(r) => Some(r.subscriber_resource_id.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(resource_ids.len(), 1);
        let journal = std::fs::read_to_string(dir.path().join("social")).unwrap();
        assert!(
            journal.contains(&resource_ids[0]),
            "SUB-3: the same resource id as before the restart"
        );
        assert!(journal.contains("\"event\":\"blocked\""));
    }
}
