//! A cluster node's revocation list (SPEC AUTH-14, SES-8, issue 17): revoked jtis and revocations by issue time in
//! the JetStream key-value bucket `BIMIP_REVOKED` (3 replicas on a NATS cluster), not on the node's disk.
//!
//! A jti or a user is checked by its home shard only, so each shard keeps its own entries, under keys that start
//! with its number: `<shard>.jti.<jti>`, `<shard>.user.<eid>` and `<shard>.device.<eid>.<device>`, each name
//! base64url-encoded (KV keys allow few characters) and the value the time in ms as decimal text. The node that
//! starts a shard reads its keys into memory; a write returns only once JetStream has stored it with its replicas
//! (the trait's promise), so a logout, a refresh or a backend revocation is answered only after that, and answered
//! 503 `unavailable` (nothing revoked, nothing minted) when it cannot be stored within [`PUT_WAIT`].
//!
//! A write blocks the shard's thread for that round trip (a few ms on a healthy cluster, [`PUT_WAIT`] at most):
//! revocations are rare next to chats, and the engine's `Revocations` is synchronous. The put itself runs on the
//! node's [`Writer`], a thread with a runtime and a NATS connection of its own: the server's runtime workers may all
//! be waiting for the shard meanwhile, and the NATS client's I/O must not need one of them.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;

use super::ClusterError;
use crate::core::{Millis, RevocationList, Revocations, StoreError};
use crate::store::FileRevocations;

const BUCKET: &str = "BIMIP_REVOKED";

/// How long a revocation may wait for JetStream before it is refused: under the ping timeout, so the shard's
/// sessions survive a write that waits out a leader election.
pub const PUT_WAIT: Duration = Duration::from_secs(3);

/// One entry of the list, as its key names it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    /// A revoked jti; the value is its token's end.
    Jti(String),
    /// Every token of a user (`device: None`) or of one device issued until the value.
    Issued { eid: String, device: Option<String> },
}

/// A name as one token of a key: base64url, after a letter so that an empty name is not an empty token.
fn encode(name: &str) -> String {
    format!("k{}", URL_SAFE_NO_PAD.encode(name))
}

fn decode(token: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(token.strip_prefix('k')?).ok()?;
    String::from_utf8(bytes).ok()
}

impl Key {
    fn of(&self, shard: usize) -> String {
        match self {
            Key::Jti(jti) => format!("{shard}.jti.{}", encode(jti)),
            Key::Issued { eid, device: None } => format!("{shard}.user.{}", encode(eid)),
            Key::Issued {
                eid,
                device: Some(device),
            } => format!("{shard}.device.{}.{}", encode(eid), encode(device)),
        }
    }

    /// The entry a key of `shard` names (the key without the bucket's subject prefix).
    fn parse(key: &str, shard: usize) -> Option<Key> {
        let mut tokens = key.split('.');
        if tokens.next()?.parse::<usize>().ok()? != shard {
            return None;
        }
        let key = match (tokens.next()?, tokens.next()?, tokens.next()) {
            ("jti", jti, None) => Key::Jti(decode(jti)?),
            ("user", eid, None) => Key::Issued {
                eid: decode(eid)?,
                device: None,
            },
            ("device", eid, Some(device)) => Key::Issued {
                eid: decode(eid)?,
                device: Some(decode(device)?),
            },
            _ => return None,
        };
        tokens.next().is_none().then_some(key)
    }
}

/// One put for the [`Writer`], and where its outcome goes.
struct Put {
    key: String,
    value: Bytes,
    done: std::sync::mpsc::SyncSender<Result<(), String>>,
}

/// A node's writer of revocations: a thread with a current-thread runtime and a NATS connection of its own, which
/// stores each put it is handed and says how it went. It ends when every [`StreamRevocations`] is gone.
pub struct Writer {
    puts: tokio::sync::mpsc::UnboundedSender<Put>,
    client: async_nats::Client,
}

impl Writer {
    /// Connects to the NATS servers of `urls` (`--cluster`) as node `name`'s writer, on a thread of its own.
    pub async fn start(urls: &str, name: &str) -> Result<Arc<Writer>, ClusterError> {
        let servers = super::servers(urls)?;
        let name = format!("bimip-{name}-revocations");
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let (puts, queue) = tokio::sync::mpsc::unbounded_channel::<Put>();
        std::thread::Builder::new()
            .name("bimip-revocations".into())
            .spawn(
                move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime.block_on(Writer::run(servers, name, ready_tx, queue)),
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("a runtime for the revocation writer: {e}")));
                    }
                },
            )
            .map_err(|e| ClusterError::JetStream(format!("a thread for the revocation writer: {e}")))?;
        let client = ready
            .await
            .map_err(|_| ClusterError::JetStream("the revocation writer ended at its start".into()))?
            .map_err(|why| ClusterError::JetStream(format!("the revocation writer: {why}")))?;
        Ok(Arc::new(Writer { puts, client }))
    }

    /// The writer's thread: connects, says so on `ready`, then stores each put in turn.
    async fn run(
        servers: Vec<async_nats::ServerAddr>,
        name: String,
        ready: tokio::sync::oneshot::Sender<Result<async_nats::Client, String>>,
        mut queue: tokio::sync::mpsc::UnboundedReceiver<Put>,
    ) {
        let connected = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .connect(servers)
            .await;
        let client = match connected {
            Ok(client) => client,
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return;
            }
        };
        let js = super::jetstream::context(&client);
        if ready.send(Ok(client)).is_err() {
            return;
        }
        let mut bucket: Option<kv::Store> = None;
        while let Some(put) = queue.recv().await {
            let stored = tokio::time::timeout(PUT_WAIT, async {
                let opened = match bucket.take() {
                    Some(opened) => opened,
                    None => js
                        .get_key_value(BUCKET)
                        .await
                        .map_err(|e| format!("the bucket {BUCKET}: {e}"))?,
                };
                let stored = opened.put(&put.key, put.value).await.map(|_revision| ());
                bucket = Some(opened);
                stored.map_err(|e| format!("JetStream did not store the revocation: {e}"))
            })
            .await
            .unwrap_or_else(|_| Err(format!("JetStream did not store the revocation within {PUT_WAIT:?}")));
            let _ = put.done.send(stored);
        }
    }

    /// Stores `value` under `key`; returns once JetStream has it with its replicas, or failed to.
    fn put(&self, key: String, value: Millis) -> Result<(), StoreError> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(StoreError::Unavailable("NATS is unreachable".into()));
        }
        let (done, outcome) = std::sync::mpsc::sync_channel(1);
        let put = Put {
            key,
            value: value.to_string().into(),
            done,
        };
        self.puts
            .send(put)
            .map_err(|_| StoreError::Unavailable("the revocation writer has ended".into()))?;
        // A little past the writer's own limit: its answer, not this timeout, says why in the normal case.
        match outcome.recv_timeout(PUT_WAIT + Duration::from_millis(500)) {
            Ok(stored) => stored.map_err(StoreError::Unavailable),
            Err(_) => Err(StoreError::Unavailable(format!(
                "JetStream did not store the revocation within {PUT_WAIT:?}"
            ))),
        }
    }
}

/// One shard's revocation list, read from the bucket at start and written through to it.
pub struct StreamRevocations {
    writer: Arc<Writer>,
    shard: usize,
    list: RevocationList,
}

impl StreamRevocations {
    /// Opens shard `shard`'s list: makes the bucket on first use, reads the shard's keys, and copies what `file`
    /// (the node's list from before its state moved to JetStream) holds and the bucket lacks, so that no token
    /// revoked there becomes good again. Entries of tokens expired at `now` are not kept, and are removed from the
    /// bucket in the background. Puts go through `writer`.
    pub async fn open(
        client: &async_nats::Client,
        writer: Arc<Writer>,
        shard: usize,
        now: Millis,
        file: Option<&FileRevocations>,
    ) -> Result<Self, ClusterError> {
        let js = super::jetstream::context(client);
        let (bucket, stream) = super::jetstream::key_value(&js, BUCKET, super::jetstream::replicas(client)).await?;
        let prefix = format!("$KV.{BUCKET}.");
        let mut list = RevocationList::default();
        // Nothing to store: the entries are the bucket's.
        let read = || Ok(());
        let mut expired = Vec::new();
        let filter = format!("{prefix}{shard}.>");
        let until = super::jetstream::Until::Count(super::jetstream::count(&stream, &filter).await?);
        super::jetstream::read(&stream, &filter, until, |stored| {
            let bad = || {
                ClusterError::JetStream(format!(
                    "message {} of {} is not a revocation",
                    stored.sequence, stored.subject
                ))
            };
            let key = stored
                .subject
                .strip_prefix(&prefix)
                .and_then(|key| Key::parse(key, shard))
                .ok_or_else(bad)?;
            let until = std::str::from_utf8(stored.payload)
                .ok()
                .and_then(|text| text.parse::<Millis>().ok())
                .ok_or_else(bad)?;
            match key {
                Key::Jti(jti) if until > now => list.revoke(&jti, until, read),
                Key::Jti(_) => {
                    expired.push(stored.subject.to_string());
                    Ok(())
                }
                Key::Issued { eid, device } => list.revoke_issued_until(&eid, device.as_deref(), until, read),
            }
            .map_err(|e| ClusterError::JetStream(e.to_string()))
        })
        .await?;
        tracing::info!(
            shard,
            revoked = list.len(),
            issued = list.issued().iter().count(),
            expired = expired.len(),
            "revocations read from JetStream"
        );
        if !expired.is_empty() {
            tokio::spawn(async move {
                for subject in expired {
                    if let Err(error) = stream.purge().filter(subject.as_str()).await {
                        tracing::info!(%error, subject, "an expired revocation stays in the bucket until the next start");
                    }
                }
            });
        }
        let mut opened = StreamRevocations { writer, shard, list };
        if let Some(file) = file {
            let copied = opened.copy(&bucket, file.list()).await?;
            if copied > 0 {
                tracing::info!(shard, copied, "revocations copied from the data directory to JetStream");
            }
        }
        Ok(opened)
    }

    /// What `file` holds and this list lacks, stored in `bucket` and added; how many entries that was.
    async fn copy(&mut self, bucket: &kv::Store, file: &RevocationList) -> Result<usize, ClusterError> {
        let mut copied = self.list.clone();
        let mut missing = Vec::new();
        for (jti, exp) in file.tokens() {
            let _ = copied.revoke(jti, exp, || {
                missing.push((Key::Jti(jti.to_string()), exp));
                Ok(())
            });
        }
        for ((eid, device), until) in file.issued().iter() {
            let _ = copied.revoke_issued_until(eid, device.as_deref(), *until, || {
                let key = Key::Issued {
                    eid: eid.clone(),
                    device: device.clone(),
                };
                missing.push((key, *until));
                Ok(())
            });
        }
        for (key, value) in &missing {
            let put = bucket.put(key.of(self.shard), value.to_string().into());
            match tokio::time::timeout(PUT_WAIT, put).await {
                Ok(Ok(_revision)) => {}
                Ok(Err(e)) => return Err(ClusterError::JetStream(format!("copying a revocation: {e}"))),
                Err(_) => return Err(ClusterError::JetStream("copying a revocation: no answer".into())),
            }
        }
        self.list = copied;
        Ok(missing.len())
    }
}

impl Revocations for StreamRevocations {
    fn is_revoked(&self, jti: &str) -> bool {
        self.list.is_revoked(jti)
    }

    fn revoke(&mut self, jti: &str, exp: Millis) -> Result<(), StoreError> {
        let (writer, shard) = (&self.writer, self.shard);
        self.list
            .revoke(jti, exp, || writer.put(Key::Jti(jti.to_string()).of(shard), exp))
    }

    fn revoke_issued_until(&mut self, eid: &str, device: Option<&str>, until: Millis) -> Result<(), StoreError> {
        let (writer, shard) = (&self.writer, self.shard);
        self.list.revoke_issued_until(eid, device, until, || {
            let key = Key::Issued {
                eid: eid.to_string(),
                device: device.map(str::to_string),
            };
            writer.put(key.of(shard), until)
        })
    }

    fn issued_until(&self, eid: &str, device: Option<&str>) -> Option<Millis> {
        self.list.issued_until(eid, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_names_its_entry_and_its_shard_only() {
        let keys = [
            Key::Jti("alice@x.io-phone-17".into()),
            Key::Jti(String::new()),
            Key::Issued {
                eid: "a.b@x.io".into(),
                device: None,
            },
            Key::Issued {
                eid: "a@x.io".into(),
                device: Some("phone.1 (é)".into()),
            },
        ];
        for key in keys {
            let name = key.of(12);
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || "-_=./".contains(c)),
                "{name} is a valid KV key"
            );
            assert!(name.split('.').all(|token| !token.is_empty()), "{name}");
            assert_eq!(Key::parse(&name, 12), Some(key.clone()), "{name}");
            assert_eq!(Key::parse(&name, 1), None, "{name} is shard 12's");
        }
    }

    #[test]
    fn a_key_that_names_nothing_is_refused() {
        for key in [
            "",
            "x.jti.kYQ",
            "3",
            "3.jti",
            "3.jti.kYQ.kYQ",
            "3.user.YQ",
            "3.device.kYQ",
            "3.nothing.kYQ",
            "3.jti.k!!",
        ] {
            assert_eq!(Key::parse(key, 3), None, "{key}");
        }
    }
}
