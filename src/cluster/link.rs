//! A node's NATS connection at work: one task publishes the frames the hub hands it, in order, each to its node's
//! subject; another reads this node's subject and hands each frame to the hub.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Node, subject};

/// Where frames from other nodes go in (the hub).
pub trait FrameSink: Send + Sync {
    fn take_frame(&self, frame: &[u8]);
    /// The NATS connection was lost (`false`) or is back (`true`).
    fn link_state(&self, up: bool);
}

/// Starts the two tasks; they end at `shutdown`.
pub(crate) fn spawn(
    node: Node,
    mut outgoing: mpsc::UnboundedReceiver<(usize, Bytes)>,
    sink: Arc<dyn FrameSink>,
    shutdown: CancellationToken,
) {
    let Node {
        layout,
        client,
        mut incoming,
        mut up,
    } = node;
    let subjects: Vec<String> = layout.nodes.iter().map(|n| subject(n)).collect();
    let publisher = client.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                biased;
                next = outgoing.recv() => next,
                () = stop.cancelled() => None,
            };
            let Some((node, frame)) = next else { break };
            let Some(subject) = subjects.get(node) else { continue };
            if let Err(error) = publisher.publish(subject.clone(), frame).await {
                tracing::warn!(%error, subject, "frame not published");
            }
        }
        let _ = publisher.flush().await;
    });
    let watcher = Arc::clone(&sink);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                changed = up.recv() => {
                    let Some(now) = changed else { break };
                    watcher.link_state(now);
                }
            }
        }
    });
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                message = incoming.next() => message,
            };
            let Some(message) = message else {
                tracing::warn!("this node's NATS subscription ended");
                break;
            };
            // A frame is another process's bytes: a bug its content reaches must not stop this node's reading.
            let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.take_frame(&message.payload)));
            if taken.is_err() {
                tracing::error!(subject = %message.subject, "a frame from another node made this node panic; dropped");
            }
        }
    });
}
