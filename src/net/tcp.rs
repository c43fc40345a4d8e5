//! Native TCP connections (SPEC §2.3): length-prefixed frames in both
//! directions through [`TcpFrameCodec`]; the engine sees each frame's bytes.
//! The connection authenticates with its first frame, so the engine learns of
//! it with no token (`open(.., Transport::Tcp, None, ..)`).

use std::future::Future;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use super::hub::{ConnRef, Endpoint, Hub, Out};
use super::lean::{poll_fill, release};
use super::outbox::Receiver;
use super::{ServerOptions, linger};
use crate::codec::{FrameError, TcpFrameCodec};
use crate::core::Transport;

/// What one read brought.
enum Read {
    /// Bytes (in the connection's pending buffer).
    Bytes,
    Eof,
    Failed(std::io::Error),
}

enum End {
    /// The engine closed it: flush, FIN, then let the peer finish.
    Engine,
    /// The peer went away or the stream failed.
    Peer,
    /// The hub gave up on it (queue full) or the server is stopping.
    Killed,
}

/// Not an `async fn`, whose arguments the future would hold twice (as arguments and as locals): the future is
/// as large as its largest stage, and an idle connection waits in the smallest (the write is boxed).
#[allow(clippy::manual_async_fn)] // see above: an `async fn` would be larger
pub(crate) fn serve<S>(
    hub: Arc<Hub>,
    mut io: S,
    endpoint: Endpoint,
    options: Arc<ServerOptions>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let (conn, rx) = (&endpoint.conn, &endpoint.rx);
        if hub.open(conn, Transport::Tcp, None).is_err() {
            return;
        }
        let mut codec = TcpFrameCodec::new(hub.max_stanza_bytes());
        // Bytes of a frame not complete yet; no buffer between frames (`lean`).
        let mut pending = BytesMut::new();
        // False once the framing is broken (an oversized length): the rest of the
        // byte stream cannot be trusted, so it is never parsed (SPEC TRN-10).
        let mut reading = true;
        let end = loop {
            tokio::select! {
                biased;
                out = rx.recv() => {
                    let Some(out) = out else { break End::Killed };
                    if let Some(end) = Box::pin(write(&mut io, &mut codec, out, rx, conn)).await {
                        break end;
                    }
                }
                read = std::future::poll_fn(|cx| poll_fill(&mut io, cx, &mut pending)), if reading => {
                    let read = match read {
                        Ok(0) => Read::Eof,
                        Ok(_) => Read::Bytes,
                        Err(error) => Read::Failed(error),
                    };
                    if let Some(end) = take_frames(&hub, conn, &mut codec, &mut pending, read, &mut reading) {
                        break end;
                    }
                }
            }
        };
        hub.closed(conn);
        // The close is boxed too: its timers would otherwise be part of the task's size while it is idle.
        Box::pin(close(io, end, &hub, &options)).await;
    }
}

/// Hands every complete frame in `pending` to the engine; `Some` when the connection ends.
fn take_frames(
    hub: &Hub,
    conn: &ConnRef,
    codec: &mut TcpFrameCodec,
    pending: &mut BytesMut,
    read: Read,
    reading: &mut bool,
) -> Option<End> {
    let eof = match read {
        Read::Bytes => false,
        Read::Eof => true,
        Read::Failed(error) => {
            tracing::debug!(%conn, %error, "read failed");
            return Some(End::Peer);
        }
    };
    let outcome = loop {
        let frame = if eof {
            codec.decode_eof(pending)
        } else {
            codec.decode(pending)
        };
        match frame {
            Ok(Some(bytes)) => hub.receive(conn, &bytes),
            Ok(None) if eof => break Some(End::Peer),
            Ok(None) => break None,
            Err(error @ FrameError::TooLarge { .. }) => {
                *reading = false;
                hub.framing_error(conn, &error);
                *pending = BytesMut::new();
                break None;
            }
            Err(error) => {
                tracing::debug!(%conn, %error, "read failed");
                break Some(End::Peer);
            }
        }
    };
    release(pending);
    outcome
}

/// After the loop: what closing the stream needs, by how the connection ended.
async fn close<S>(mut io: S, end: End, hub: &Hub, options: &ServerOptions)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match end {
        End::Engine => {
            // FIN after the last frame, as SPEC's "Close" says for TCP; then
            // read until the peer closes too, because closing a socket with
            // unread input makes the kernel send RST, which can destroy the
            // ErrorMessage the peer has not read yet.
            if io.shutdown().await.is_ok() {
                linger(&mut io, options.close_linger).await;
            }
        }
        End::Killed if hub.shutdown_token().is_cancelled() => {
            let _ = tokio::time::timeout(options.close_linger, io.shutdown()).await;
        }
        End::Killed | End::Peer => {}
    }
}

/// Writes `out` and what follows it in the queue, unless the connection is killed meanwhile; `Some` when the
/// connection ends.
async fn write<S>(io: &mut S, codec: &mut TcpFrameCodec, out: Out, rx: &Receiver, conn: &ConnRef) -> Option<End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let written = tokio::select! {
        biased;
        () = rx.killed() => return Some(End::Killed),
        written = write_batch(io, codec, out, rx) => written,
    };
    match written {
        Ok(false) => None,
        Ok(true) => Some(End::Engine),
        Err(error) => {
            tracing::debug!(%conn, %error, "write failed");
            Some(End::Peer)
        }
    }
}

/// Writes `first` and whatever else is queued, then flushes once. `Ok(true)`
/// when a Close was among them (everything before it is flushed).
async fn write_batch<S>(io: &mut S, codec: &mut TcpFrameCodec, first: Out, rx: &Receiver) -> Result<bool, FrameError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut batch = BytesMut::new();
    let mut next = Some(first);
    let mut closing = false;
    while let Some(out) = next.take() {
        match out {
            Out::Send(stanza) => codec.encode(stanza, &mut batch)?,
            Out::Close(_) => {
                closing = true;
                break;
            }
        }
        next = rx.try_recv();
    }
    io.write_all(&batch).await?;
    io.flush().await?;
    Ok(closing)
}
