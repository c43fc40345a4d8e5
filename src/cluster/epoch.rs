//! Numbers each start of a node apart from its earlier ones ([`super::Layout::epoch`]): connection ids, the tickets
//! of work handed to other nodes and the chat stream's message ids carry it, so nothing an earlier start left in
//! flight is taken for this one's. The number is a counter per node in the JetStream key-value bucket `BIMIP_NODES`
//! (key `<node>.start`), moved on by compare-and-set at each start: never the number of the start before, where a
//! random one would be, once in 65,536 starts.

use std::time::Duration;

use super::ClusterError;

const BUCKET: &str = "BIMIP_NODES";

/// The number after `last`, in 1..=65535 (0 is a lone server's).
fn after(last: u16) -> u16 {
    last % u16::MAX + 1
}

/// The number of this start of node `node`: the one after its last start's. A JetStream electing its leader, or
/// another start of the same node racing this one, is waited out for up to 30 s.
pub async fn next(client: &async_nats::Client, node: &str) -> Result<u16, ClusterError> {
    let js = super::jetstream::context(client);
    let (bucket, _) = super::jetstream::key_value(&js, BUCKET, super::jetstream::replicas(client)).await?;
    let key = format!("{node}.start");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            match bucket.entry(&key).await.map_err(|e| e.to_string())? {
                Some(entry) => {
                    let last = std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|text| text.parse::<u16>().ok())
                        .ok_or_else(|| format!("{key} holds no start number"))?;
                    let next = after(last);
                    bucket
                        .update(&key, next.to_string().into(), entry.revision)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(next)
                }
                None => {
                    let first = after(0);
                    bucket
                        .create(&key, first.to_string().into())
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(first)
                }
            }
        };
        match attempt.await {
            Ok(start) => return Ok(start),
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::info!(%error, node, "numbering this start; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => {
                return Err(ClusterError::JetStream(format!(
                    "numbering this start of {node}: {error}"
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_number_is_never_the_last_one_nor_zero() {
        assert_eq!(after(0), 1);
        assert_eq!(after(1), 2);
        assert_eq!(after(u16::MAX - 1), u16::MAX);
        assert_eq!(after(u16::MAX), 1);
        for last in [0, 1, 77, u16::MAX] {
            assert_ne!(after(last), last);
            assert_ne!(after(last), 0);
        }
    }
}
