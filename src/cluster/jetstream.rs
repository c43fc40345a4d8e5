//! What the cluster's JetStream streams share: a context that gives up on an unanswered request soon, a stream made
//! on first use with its replicas, and reading one subject of a stream from its start.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use futures::StreamExt;

use super::ClusterError;

/// A JetStream context for `client`. A JetStream that is electing its leaders (a NATS server just came back) answers
/// nothing: asking again every 2 s serves sooner than waiting out the client's default 10 s.
pub fn context(client: &async_nats::Client) -> jetstream::Context {
    let mut js = jetstream::new(client.clone());
    js.set_timeout(Duration::from_secs(2));
    js
}

/// Three replicas on a NATS cluster; a lone NATS server (development, tests) keeps one.
pub fn replicas(client: &async_nats::Client) -> usize {
    if client.server_info().cluster.is_some() { 3 } else { 1 }
}

/// The stream `config` describes, made on first use. A NATS cluster that has just started elects its JetStream
/// leader first and answers nothing until then: this asks again for up to 30 s.
pub async fn stream(js: &jetstream::Context, config: stream::Config) -> Result<stream::Stream, ClusterError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let error = match js.get_or_create_stream(config.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(e) => format!("the stream {} ({} replicas): {e}", config.name, config.num_replicas),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(ClusterError::JetStream(error));
        }
        tracing::info!(%error, "JetStream not ready; retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The key-value bucket `bucket` (one value per key, as `async_nats` makes one) with `replicas`, made on first use as
/// [`stream`] makes a stream; and its stream, to read or purge it whole.
pub async fn key_value(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<(kv::Store, stream::Stream), ClusterError> {
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    let stream = stream(js, config).await?;
    // Asked again as the stream was: a NATS server lost now leaves the request unanswered while a leader is elected.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let error = match js.get_key_value(bucket).await {
            Ok(store) => return Ok((store, stream)),
            Err(e) => format!("the bucket {bucket}: {e}"),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(ClusterError::JetStream(error));
        }
        tracing::info!(%error, "JetStream not ready; retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One message read back from a stream.
pub struct Stored<'a> {
    pub subject: &'a str,
    pub sequence: u64,
    pub payload: &'a [u8],
}

/// Where a [`read`] ends. Known from the stream's leader before the read: the consumer that reads may sit on a
/// replica still catching up after a restart, which would report nothing pending before the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// At the message with this stream sequence, the filter's last (0: the filter holds none).
    Sequence(u64),
    /// After this many messages, all the filter holds.
    Count(u64),
}

/// Hands `each` the messages of `stream` on `filter`, in order, from the first to where `until` says. A JetStream
/// that stops answering (a NATS server lost, a leader being elected) or ends short of that is asked again, from the
/// message after the last one handed over, for up to a minute; an error of `each` ends the read at once.
pub async fn read(
    stream: &stream::Stream,
    filter: &str,
    until: Until,
    mut each: impl FnMut(Stored<'_>) -> Result<(), ClusterError>,
) -> Result<(), ClusterError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut at = Position { next: 1, read: 0 };
    loop {
        match read_from(stream, filter, &mut at, until, &mut each).await {
            Ok(()) => return Ok(()),
            Err(Failed::Refused(error)) => return Err(error),
            Err(Failed::Stream(error)) if tokio::time::Instant::now() < deadline => {
                tracing::info!(%error, filter, next = at.next, "reading the stream again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(Failed::Stream(error)) => return Err(error),
        }
    }
}

/// How many messages `stream` holds on `filter`, as its leader says: for [`Until::Count`]. Asked again for up to
/// 30 s while no leader answers.
pub async fn count(stream: &stream::Stream, filter: &str) -> Result<u64, ClusterError> {
    use futures::TryStreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let counted = async {
            let subjects = stream.info_with_subjects(filter).await.map_err(|e| e.to_string())?;
            subjects
                .map_err(|e| e.to_string())
                .try_fold(0u64, |sum, (_, n)| async move { Ok(sum + n as u64) })
                .await
        };
        match counted.await {
            Ok(count) => return Ok(count),
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::info!(%error, filter, "counting the stream's messages again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(ClusterError::JetStream(format!("counting {filter}: {error}"))),
        }
    }
}

/// How far a [`read`] got: the next stream sequence to read, and how many messages it handed over.
struct Position {
    next: u64,
    read: u64,
}

impl Position {
    fn done(&self, until: Until) -> bool {
        match until {
            Until::Sequence(last) => self.next > last,
            Until::Count(count) => self.read >= count,
        }
    }
}

enum Failed {
    /// The stream did not answer, or not all of it: worth asking again.
    Stream(ClusterError),
    /// What it gave was refused.
    Refused(ClusterError),
}

/// One attempt of [`read`], from `at` on, which it moves past each message handed over.
async fn read_from(
    stream: &stream::Stream,
    filter: &str,
    at: &mut Position,
    until: Until,
    each: &mut impl FnMut(Stored<'_>) -> Result<(), ClusterError>,
) -> Result<(), Failed> {
    if at.done(until) {
        return Ok(());
    }
    let failed = |e: &dyn std::fmt::Display| Failed::Stream(ClusterError::JetStream(format!("reading {filter}: {e}")));
    let short = || failed(&"the stream ended short of its last message (a replica catching up?)");
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.into(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: at.next,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| failed(&e))?;
    if consumer.info().await.map_err(|e| failed(&e))?.num_pending == 0 {
        return Err(short());
    }
    let mut messages = consumer.messages().await.map_err(|e| failed(&e))?;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .map_err(|_| failed(&"the stream stopped answering"))?
            .ok_or_else(short)?
            .map_err(|e| failed(&e))?;
        let info = message.info().map_err(|e| failed(&e))?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        each(Stored {
            subject: &message.subject,
            sequence,
            payload: &message.payload,
        })
        .map_err(Failed::Refused)?;
        at.next = sequence + 1;
        at.read += 1;
        if at.done(until) {
            return Ok(());
        }
        if pending == 0 {
            return Err(short());
        }
    }
}
