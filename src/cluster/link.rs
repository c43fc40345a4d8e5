//! A node's NATS connection at work: one task runs the link layer ([`Reliable`]): it numbers the frames the hub
//! hands it, reads this node's subject (frames for the hub, acknowledgments for the link layer) and resends what
//! went unacknowledged; another publishes what the first gives it, in order, each to its node's subject.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::reliable::Reliable;
use super::{Node, subject};
use crate::core::Millis;

/// Where frames from other nodes go in (the hub).
pub trait FrameSink: Send + Sync {
    fn take_frame(&self, frame: &[u8]);
    /// The NATS connection was lost (`false`) or is back (`true`).
    fn link_state(&self, up: bool);
    /// Node `node` started again: what it had received and not made durable is gone, its connections with it.
    fn peer_restarted(&self, node: usize);
}

/// Starts the two tasks; they end at `shutdown`, after handing NATS what the hub had sent until then.
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
    let (publish, mut to_publish) = mpsc::unbounded_channel::<(usize, Bytes)>();
    let publisher = client.clone();
    tokio::spawn(async move {
        while let Some((node, message)) = to_publish.recv().await {
            let Some(subject) = subjects.get(node) else { continue };
            if let Err(error) = publisher.publish(subject.clone(), message).await {
                tracing::warn!(%error, subject, "link message not published");
            }
        }
        let _ = publisher.flush().await;
    });
    // A later start has a later epoch: the wall clock, read once, at the edge.
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut links = Reliable::new(layout.node, layout.nodes.len(), epoch);
    let started = Instant::now();
    let now = move || Millis::try_from(started.elapsed().as_millis()).unwrap_or(Millis::MAX);
    let subjects_len = layout.nodes.len();
    let mut report_at: Millis = 0;
    tokio::spawn(async move {
        loop {
            let deadline = links
                .next_deadline()
                .map(|at| started + std::time::Duration::from_millis(u64::try_from(at).unwrap_or(0)));
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                changed = up.recv() => {
                    let Some(state) = changed else { break };
                    tracing::info!(up = state, now = now(), "link: NATS connection changed");
                    links.link_state(state, now());
                    sink.link_state(state);
                }
                message = incoming.next() => {
                    let Some(message) = message else {
                        tracing::warn!("this node's NATS subscription ended");
                        break;
                    };
                    match links.receive(&message.payload, now()) {
                        Ok(frame) => {
                            // Before the restarted node's first frame: what it held for us is gone first.
                            while let Some(node) = links.poll_restarted() {
                                tracing::warn!(node, "a node of the cluster started again");
                                sink.peer_restarted(node);
                            }
                            if let Some(frame) = frame {
                                take(sink.as_ref(), &frame);
                            }
                        }
                        Err(error) => tracing::warn!(%error, subject = %message.subject, "link message dropped"),
                    }
                }
                next = outgoing.recv() => {
                    let Some((node, frame)) = next else { break };
                    links.send(node, frame, now());
                }
                () = sleep_until(deadline) => {}
            }
            links.tick(now());
            // For a look at a link that does not drain (RUST_LOG=bimip::cluster=debug).
            if now() >= report_at {
                report_at = now() + 2_000;
                for node in 0..subjects_len {
                    let unacked = links.unacknowledged(node);
                    if unacked > 0 {
                        let link = links.describe(node);
                        tracing::debug!(node, unacked, now = now(), %link, "frames not yet acknowledged");
                    }
                }
            }
            while let Some(message) = links.poll_output() {
                let _ = publish.send(message);
            }
        }
        // What the hub sent before it stopped (the Closed frames of its last connections) still goes out.
        while let Ok((node, frame)) = outgoing.try_recv() {
            links.send(node, frame, now());
        }
        while let Some(message) = links.poll_output() {
            let _ = publish.send(message);
        }
    });
}

/// Hands one frame to the hub. A frame is another process's bytes: a bug its content reaches must not stop this
/// node's reading.
fn take(sink: &dyn FrameSink, frame: &[u8]) {
    let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.take_frame(frame)));
    if taken.is_err() {
        tracing::error!("a frame from another node made this node panic; dropped");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
