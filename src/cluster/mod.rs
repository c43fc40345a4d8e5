//! Several `bimip serve` nodes as one BIMIP service (issue 17), linked by NATS.
//!
//! The engine is already partitioned into shards that own disjoint users and chats and reach each other only by
//! mail (src/core/README.md); a cluster spreads those shards over nodes. Every node knows the same list of nodes
//! and runs the same number of shards, so shard `s` of the `nodes × shards` lives on node `s % nodes` and every
//! node computes a user's home alike. What crosses a shard boundary on one node crosses a node boundary here, as
//! [`frame::Frame`]s on the receiving node's NATS subject: the inputs of a connection whose socket is on one node
//! and whose home shard is on another, the outputs going back to it, and mail between shards.
//!
//! Durable state is in JetStream: each shard's chats, queues and offsets as operations on a stream that the node
//! starting the shard replays and compacts (`chat_stream`), revoked tokens in a key-value bucket (`revocations`), the
//! social graph for every node to read at start (`graph`); backend API calls are forwarded to the user's home node
//! (`crate::admin::grpc`). What is not here yet (issue 17): a shard moving to another node when its node dies,
//! compacting a chat stream while its node runs (a start does).

pub mod chat_stream;
pub mod epoch;
pub mod frame;
pub mod graph;
pub mod jetstream;
mod link;
pub mod reliable;
pub mod revocations;

pub use frame::Frame;
pub use link::FrameSink;
pub(crate) use link::spawn;

use crate::core::ConnId;

/// Where shards and connections live in a cluster; the default is one node that holds every shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// This node's index in `nodes`.
    pub node: usize,
    /// Every node's name, in the order every node is given them.
    pub nodes: Vec<String>,
    /// Shards per node (the same on every node).
    pub shards_per_node: usize,
    /// This start of the node ([`Layout::first_conn_id`]); 0 for a lone server.
    pub epoch: u16,
}

/// The bits of a connection id above which its node's index sits: ids stay unique across the cluster, and a
/// home shard knows where to send a connection's outputs from its id alone.
const NODE_SHIFT: u32 = 48;
const EPOCH_SHIFT: u32 = 32;

impl Layout {
    /// A lone server with `shards` shards.
    pub fn single(shards: usize) -> Layout {
        Layout {
            node: 0,
            nodes: vec!["local".into()],
            shards_per_node: shards.max(1),
            epoch: 0,
        }
    }

    /// Node `name` of `nodes`, each with `shards_per_node` shards.
    pub fn of(name: &str, nodes: &[String], shards_per_node: usize) -> Result<Layout, ClusterError> {
        if nodes.is_empty() {
            return Err(ClusterError::NoNodes);
        }
        if nodes.len() > 1 << 15 {
            return Err(ClusterError::TooManyNodes(nodes.len()));
        }
        let mut sorted = nodes.to_vec();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != nodes.len() {
            return Err(ClusterError::DuplicateNode);
        }
        if let Some(bad) = nodes.iter().find(|n| !valid_node_name(n)) {
            return Err(ClusterError::BadNodeName(bad.clone()));
        }
        let node = nodes
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| ClusterError::NotListed(name.to_string()))?;
        Ok(Layout {
            node,
            nodes: nodes.to_vec(),
            shards_per_node: shards_per_node.max(1),
            epoch: 0,
        })
    }

    pub fn is_cluster(&self) -> bool {
        self.nodes.len() > 1
    }

    /// Shards in the whole service.
    pub fn shard_count(&self) -> usize {
        self.nodes.len() * self.shards_per_node
    }

    pub fn node_of_shard(&self, shard: usize) -> usize {
        shard % self.nodes.len()
    }

    pub fn is_local(&self, shard: usize) -> bool {
        self.node_of_shard(shard) == self.node
    }

    /// This node's shards, in order.
    pub fn local_shards(&self) -> impl Iterator<Item = usize> + '_ {
        (self.node..self.shard_count()).step_by(self.nodes.len())
    }

    /// The node whose socket a connection is.
    pub fn node_of_conn(&self, conn: ConnId) -> usize {
        usize::try_from(conn.0 >> NODE_SHIFT).unwrap_or(usize::MAX)
    }

    /// The first connection id this node hands out: its node's index above [`NODE_SHIFT`], and in a cluster this
    /// start's epoch in the 16 bits below, so that a node started again does not reuse the ids of connections its
    /// peers may still hold sessions for (their Closed frames may have been lost with the process).
    pub fn first_conn_id(&self) -> u64 {
        (u64::try_from(self.node).unwrap_or(0) << NODE_SHIFT) + (u64::from(self.epoch) << EPOCH_SHIFT) + 1
    }

    /// This layout for one start of the node, numbered `epoch` ([`epoch::next`]).
    pub fn with_epoch(mut self, epoch: u16) -> Layout {
        self.epoch = epoch;
        self
    }

    pub fn name(&self) -> &str {
        &self.nodes[self.node]
    }
}

/// Node names go into NATS subjects: letters, digits, `-` and `_` only.
fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `urls` with any `user:password@` taken out: for messages and logs.
fn without_credentials(urls: &str) -> String {
    urls.split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => format!("{}://{}", &url[..scheme], &url[at + 1..]),
            _ => url.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The NATS subject a node reads its frames from.
pub fn subject(node: &str) -> String {
    format!("bimip.node.{node}")
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("a cluster needs the list of its nodes (--cluster-nodes)")]
    NoNodes,
    #[error("{0} nodes: at most 32768")]
    TooManyNodes(usize),
    #[error("a node is listed twice in --cluster-nodes")]
    DuplicateNode,
    #[error("{0:?} is not a node name (1 to 64 letters, digits, '-' or '_')")]
    BadNodeName(String),
    #[error("this node ({0:?}) is not in --cluster-nodes")]
    NotListed(String),
    #[error("not a NATS URL list: {0}")]
    BadUrl(String),
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error("cannot reach NATS at {urls}: {why}")]
    Unreachable { urls: String, why: String },
}

/// The NATS servers of `--cluster`, a comma-separated list of URLs.
pub(crate) fn servers(urls: &str) -> Result<Vec<async_nats::ServerAddr>, ClusterError> {
    let shown = without_credentials(urls);
    let servers = urls
        .split(',')
        .map(|url| url.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClusterError::BadUrl(format!("{shown}: {e}")))?;
    if servers.is_empty() {
        return Err(ClusterError::BadUrl(shown));
    }
    Ok(servers)
}

/// A node's link to the others: its place in the layout and its NATS connection.
pub struct Node {
    pub layout: Layout,
    pub(crate) client: async_nats::Client,
    /// This node's subject, subscribed from the start: frames that come before the hub is up wait here.
    pub(crate) incoming: async_nats::Subscriber,
    /// Every change of the NATS connection, in order (the client reconnects by itself when it is lost): a loss
    /// and its return both arrive, however close together, since frames sent meanwhile are lost either way.
    pub(crate) up: tokio::sync::mpsc::UnboundedReceiver<bool>,
}

impl Node {
    /// Connects to NATS (`urls`, comma-separated); fails at once, with the reason, when none answers.
    pub async fn connect(urls: &str, layout: Layout) -> Result<Node, ClusterError> {
        let shown = without_credentials(urls);
        let unreachable = |why: String| ClusterError::Unreachable {
            urls: shown.clone(),
            why,
        };
        let servers = servers(urls)?;
        let (up_tx, up) = tokio::sync::mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name(format!("bimip-{}", layout.name()))
            .event_callback(move |event| {
                let up_tx = up_tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("NATS connection up");
                            let _ = up_tx.send(true);
                        }
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            tracing::warn!("NATS connection lost");
                            let _ = up_tx.send(false);
                        }
                        // Slow consumer (frames dropped, the link resends them), server errors, lame duck mode.
                        other => tracing::warn!(event = %other, "NATS"),
                    }
                }
            })
            .connection_timeout(std::time::Duration::from_secs(5))
            .connect(servers)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let incoming = client
            .subscribe(subject(layout.name()))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // A round trip to the server: the connection and the subscription are up, not only queued.
        client.flush().await.map_err(|e| unreachable(e.to_string()))?;
        Ok(Node {
            layout,
            client,
            incoming,
            up,
        })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shards_spread_over_nodes_and_connections_name_their_node() {
        let nodes = names(&["a", "b", "c"]);
        let b = Layout::of("b", &nodes, 2).unwrap();
        assert_eq!(b.shard_count(), 6);
        assert_eq!(b.local_shards().collect::<Vec<_>>(), vec![1, 4]);
        assert!(b.is_local(4) && !b.is_local(5));
        let first = ConnId(b.first_conn_id());
        assert_eq!(b.node_of_conn(first), 1);
        assert_eq!(
            Layout::single(3).first_conn_id(),
            1,
            "a lone server numbers connections from 1 as before"
        );
        assert_eq!(Layout::single(3).local_shards().count(), 3);
        let again = b.clone().with_epoch(7);
        assert_ne!(again.first_conn_id(), b.first_conn_id());
        assert_eq!(again.node_of_conn(ConnId(again.first_conn_id())), 1);
    }

    #[test]
    fn credentials_stay_out_of_messages() {
        assert_eq!(
            without_credentials("nats://u:secret@10.0.0.1:4222,nats://10.0.0.2:4222"),
            "nats://10.0.0.1:4222,nats://10.0.0.2:4222"
        );
    }

    #[test]
    fn bad_layouts_are_refused() {
        assert!(matches!(Layout::of("a", &[], 1), Err(ClusterError::NoNodes)));
        assert!(matches!(
            Layout::of("d", &names(&["a", "b"]), 1),
            Err(ClusterError::NotListed(_))
        ));
        assert!(matches!(
            Layout::of("a", &names(&["a", "a"]), 1),
            Err(ClusterError::DuplicateNode)
        ));
        assert!(matches!(
            Layout::of("a.b", &names(&["a.b"]), 1),
            Err(ClusterError::BadNodeName(_))
        ));
    }
}
