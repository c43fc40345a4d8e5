//! The social graph across nodes: every shard reads the whole graph (src/core/README.md), but each node keeps only
//! its own shards' social journals. A JetStream stream, `BIMIP_SOCIAL` (subject `bimip.social.<shard>`, replicated
//! over the NATS cluster), holds every shard's events in order, so a node that starts reads the graph of the
//! whole service there; while it runs, changes reach it as `Social` mail like any shard's.
//!
//! Each node's own journal stays the truth for its shards (the engine appends there and waits for its fsync); the
//! stream follows it: at start a node publishes what the stream lacks of its shards' journals, then each new event
//! as it is recorded ([`MirroredLog`]), in order, retrying until NATS has stored it. A journal that lacks the end of
//! what the stream holds of its shard (a node started on an empty or older data directory) is brought up to the
//! stream first, so a lost disk loses no block, subscription or visibility setting that reached the stream.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tokio::sync::mpsc;

use super::{ClusterError, Layout};
use crate::core::StoreError;
use crate::core::social::{EventLog, SocialEvent};

const STREAM: &str = "BIMIP_SOCIAL";

fn subject(shard: usize) -> String {
    format!("bimip.social.{shard}")
}

/// A shard's social journal that also hands each event to the mirror task.
pub struct MirroredLog {
    local: Box<dyn EventLog>,
    shard: usize,
    /// The index the next event will have in the shard's journal.
    next: u64,
    mirror: mpsc::UnboundedSender<Entry>,
}

struct Entry {
    shard: usize,
    index: u64,
    event: SocialEvent,
}

impl EventLog for MirroredLog {
    fn append(&mut self, event: &SocialEvent) -> Result<(), StoreError> {
        self.local.append(event)?;
        let entry = Entry {
            shard: self.shard,
            index: self.next,
            event: event.clone(),
        };
        self.next += 1;
        // Gone only at shutdown; a node that starts again publishes what the stream lacks.
        let _ = self.mirror.send(entry);
        Ok(())
    }
}

/// The graph of the whole service at a node's start, and the way to keep the stream following this node's journals.
pub struct Graph {
    /// Every shard's events: this node's from its journals, the others' from the stream.
    pub events: Vec<SocialEvent>,
    mirror: mpsc::UnboundedSender<Entry>,
    /// Events in each local shard's journal, by shard.
    counts: std::collections::BTreeMap<usize, u64>,
}

impl Graph {
    /// Wraps `shard`'s journal so that its new events reach the stream.
    pub fn log(&self, shard: usize, local: Box<dyn EventLog>) -> MirroredLog {
        MirroredLog {
            local,
            shard,
            next: self.counts.get(&shard).copied().unwrap_or(0),
            mirror: self.mirror.clone(),
        }
    }
}

/// One local shard's social journal at start: its events, and the journal to append what it lacks.
pub struct LocalJournal<'a> {
    pub shard: usize,
    pub events: Vec<SocialEvent>,
    pub journal: &'a mut dyn EventLog,
}

/// Reads the graph of the whole service, brings each local journal up to what the stream holds of its shard, and
/// the stream up to date with this node's journals; then starts the task that publishes later events.
pub async fn sync(
    client: &async_nats::Client,
    layout: &Layout,
    local: Vec<LocalJournal<'_>>,
) -> Result<Graph, ClusterError> {
    let js = super::jetstream::context(client);
    let stream = super::jetstream::stream(&js, social_stream(super::jetstream::replicas(client))).await?;
    let mut by_shard: std::collections::BTreeMap<usize, Vec<SocialEvent>> = std::collections::BTreeMap::new();
    let last = stream.cached_info().state.last_sequence;
    super::jetstream::read(
        &stream,
        "bimip.social.>",
        super::jetstream::Until::Sequence(last),
        |stored| {
            let shard = stored
                .subject
                .strip_prefix("bimip.social.")
                .and_then(|s| s.parse::<usize>().ok());
            match (shard, serde_json::from_slice::<SocialEvent>(stored.payload)) {
                (Some(shard), Ok(event)) => by_shard.entry(shard).or_default().push(event),
                (_, Err(e)) => {
                    tracing::warn!(%e, sequence = stored.sequence, "undecodable social event in the stream skipped")
                }
                (None, _) => tracing::warn!(subject = stored.subject, "social event on an unknown subject skipped"),
            }
            Ok(())
        },
    )
    .await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut counts = std::collections::BTreeMap::new();
    let mut events = Vec::new();
    for LocalJournal {
        shard,
        events: mut journal,
        journal: log,
    } in local
    {
        let stored = by_shard.remove(&shard).unwrap_or_default();
        if stored.len() > journal.len() {
            if stored.starts_with(&journal) {
                let missing = &stored[journal.len()..];
                for event in missing {
                    log.append(event)
                        .map_err(|e| ClusterError::JetStream(format!("shard {shard}'s social journal: {e}")))?;
                }
                tracing::info!(
                    shard,
                    copied = missing.len(),
                    "social events copied from the stream to the journal"
                );
                journal = stored.clone();
            } else {
                tracing::warn!(
                    shard,
                    stored = stored.len(),
                    journal = journal.len(),
                    "the social stream and this shard's journal differ: the journal is kept (was the data directory replaced?)"
                );
            }
        }
        for (index, event) in journal.iter().enumerate().skip(stored.len()) {
            let _ = tx.send(Entry {
                shard,
                index: index as u64,
                event: event.clone(),
            });
        }
        counts.insert(shard, journal.len() as u64);
        events.extend(journal);
    }
    for (shard, stored) in by_shard {
        if layout.is_local(shard) || shard >= layout.shard_count() {
            continue;
        }
        events.extend(stored);
    }
    tokio::spawn(mirror(js, rx));
    Ok(Graph {
        events,
        mirror: tx,
        counts,
    })
}

/// The stream every shard's social events go to.
fn social_stream(replicas: usize) -> stream::Config {
    stream::Config {
        name: STREAM.into(),
        subjects: vec!["bimip.social.>".into()],
        num_replicas: replicas,
        // A journal's events are never removed: the graph is their sum.
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// Publishes each entry in order, each once NATS has stored the one before; retries while NATS is away.
async fn mirror(js: jetstream::Context, mut rx: mpsc::UnboundedReceiver<Entry>) {
    while let Some(entry) = rx.recv().await {
        let payload = bytes::Bytes::from(serde_json::to_vec(&entry.event).unwrap_or_default());
        let mut headers = async_nats::HeaderMap::new();
        // The same event published twice (a retry, a restart) is stored once.
        headers.insert(
            "Nats-Msg-Id",
            format!("social-{}-{}", entry.shard, entry.index).as_str(),
        );
        let mut wait = Duration::from_millis(100);
        loop {
            let stored = match js
                .publish_with_headers(subject(entry.shard), headers.clone(), payload.clone())
                .await
            {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match stored {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(%error, shard = entry.shard, "social event not stored in JetStream yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
