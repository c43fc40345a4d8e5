//! Native TCP connections (SPEC §2.3): length-prefixed frames in both
//! directions through [`TcpFrameCodec`]; the engine sees each frame's bytes.
//! The connection authenticates with its first frame, so the engine learns of
//! it with no token (`open(.., Transport::Tcp, None, ..)`).

use std::sync::Arc;

use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Encoder, FramedRead};

use super::hub::{Endpoint, Hub, Out};
use super::{ServerOptions, linger};
use crate::codec::{FrameError, TcpFrameCodec};
use crate::core::Transport;

/// Read buffer a connection starts with; it grows for larger frames. Idle
/// connections are the common case, so start small. Writes take a buffer
/// only while a batch is written (`write_batch`): `Framed` would keep 8 KiB.
const READ_CAPACITY: usize = 256;

enum End {
    /// The engine closed it: flush, FIN, then let the peer finish.
    Engine,
    /// The peer went away or the stream failed.
    Peer,
    /// The hub gave up on it (queue full) or the server is stopping.
    Killed,
}

pub(crate) async fn serve<S>(hub: Arc<Hub>, io: S, endpoint: Endpoint, options: Arc<ServerOptions>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Endpoint { conn, mut rx, kill } = endpoint;
    if hub.open(&conn, Transport::Tcp, None).is_err() {
        return;
    }
    let codec = TcpFrameCodec::new(hub.max_stanza_bytes());
    let mut framed = FramedRead::with_capacity(io, codec, READ_CAPACITY);
    // False once the framing is broken (an oversized length): the rest of the
    // byte stream cannot be trusted, so it is never parsed (SPEC TRN-10).
    let mut reading = true;
    let end = loop {
        tokio::select! {
            biased;
            () = kill.cancelled() => break End::Killed,
            out = rx.recv() => {
                let Some(out) = out else { break End::Killed };
                let written = tokio::select! {
                    biased;
                    () = kill.cancelled() => break End::Killed,
                    // Boxed: while idle, the task holds no room for a write.
                    written = Box::pin(write_batch(&mut framed, out, &mut rx)) => written,
                };
                match written {
                    Ok(false) => {}
                    Ok(true) => break End::Engine,
                    Err(error) => {
                        tracing::debug!(%conn, %error, "write failed");
                        break End::Peer;
                    }
                }
            }
            frame = framed.next(), if reading => match frame {
                Some(Ok(bytes)) => hub.receive(&conn, &bytes),
                Some(Err(error @ FrameError::TooLarge { .. })) => {
                    reading = false;
                    hub.framing_error(&conn, &error);
                }
                Some(Err(error)) => {
                    tracing::debug!(%conn, %error, "read failed");
                    break End::Peer;
                }
                None => break End::Peer,
            },
        }
    };
    hub.closed(&conn);
    // The close is boxed too: its timers would otherwise be part of the task's size while it is idle.
    Box::pin(close(framed.into_inner(), end, &hub, &options)).await;
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

/// Writes `first` and whatever else is queued, then flushes once. `Ok(true)`
/// when a Close was among them (everything before it is flushed).
async fn write_batch<S>(
    framed: &mut FramedRead<S, TcpFrameCodec>,
    first: Out,
    rx: &mut super::outbox::Receiver,
) -> Result<bool, FrameError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut batch = BytesMut::new();
    let mut next = Some(first);
    let mut closing = false;
    while let Some(out) = next.take() {
        match out {
            Out::Send(stanza) => framed.decoder_mut().encode(stanza, &mut batch)?,
            Out::Close(_) => {
                closing = true;
                break;
            }
        }
        next = rx.try_recv();
    }
    let io = framed.get_mut();
    io.write_all(&batch).await?;
    io.flush().await?;
    Ok(closing)
}
