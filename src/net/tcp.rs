//! Native TCP connections (SPEC §2.3): length-prefixed frames in both
//! directions through [`TcpFrameCodec`]; the engine sees each frame's bytes.
//! The connection authenticates with its first frame, so the engine learns of
//! it with no token (`open(.., Transport::Tcp, None, ..)`).

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use super::hub::{ConnRef, Endpoint, Hub, Out};
use super::lean::{poll_fill, release};
use super::outbox::Receiver;
use super::{ServerOptions, linger};
use crate::codec::{FrameError, TcpFrameCodec};
use crate::core::Transport;

/// A frame begun and not complete: its bytes and the codec's state. None between frames, which is nearly
/// always, so an idle connection holds a pointer instead of both.
struct Partial {
    codec: TcpFrameCodec,
    pending: BytesMut,
}

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

/// What woke an idle connection.
enum Woke {
    /// The queue has stanzas (or a kill) for the writer.
    Write,
    /// Frames were read and handed over.
    Read,
    End(End),
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
        if hub.open(&endpoint.conn, Transport::Tcp, None).is_err() {
            return;
        }
        let mut partial: Option<Box<Partial>> = None;
        // False once the framing is broken (an oversized length): the rest of the
        // byte stream cannot be trusted, so it is never parsed (SPEC TRN-10).
        let mut reading = true;
        let end = loop {
            // One hand-written poll of the queue, then the stream: no select! and its futures in the idle task.
            let woke = std::future::poll_fn(|cx| {
                // Only a wake-up: the write takes the stanzas itself, so this future holds none.
                if endpoint.rx.poll_ready(cx).is_ready() {
                    return Poll::Ready(Woke::Write);
                }
                if !reading {
                    return Poll::Pending;
                }
                let read = match ready!(poll_read(&mut io, cx, &mut partial, hub.max_stanza_bytes())) {
                    Ok(0) => Read::Eof,
                    Ok(_) => Read::Bytes,
                    Err(error) => Read::Failed(error),
                };
                let mut state = partial
                    .take()
                    .unwrap_or_else(|| Box::new(Partial::new(hub.max_stanza_bytes())));
                let end = take_frames(&hub, &endpoint.conn, &mut state, read, &mut reading);
                if !state.pending.is_empty() || !state.codec.between_frames() {
                    partial = Some(state);
                }
                Poll::Ready(end.map_or(Woke::Read, Woke::End))
            })
            .await;
            match woke {
                Woke::Write => {
                    if let Some(end) = Box::pin(write(&mut io, hub.max_stanza_bytes(), &endpoint)).await {
                        break end;
                    }
                }
                Woke::Read => {}
                Woke::End(end) => break end,
            }
        };
        hub.closed(&endpoint.conn);
        // The close is boxed too: its timers would otherwise be part of the task's size while it is idle.
        Box::pin(close(io, end, endpoint.rx.going_away(), &hub, &options)).await;
    }
}

impl Partial {
    fn new(max_stanza_bytes: usize) -> Partial {
        Partial {
            codec: TcpFrameCodec::new(max_stanza_bytes),
            pending: BytesMut::new(),
        }
    }
}

/// Reads into the frame begun, or, between frames, into a new one only once bytes came (`lean`).
fn poll_read<S: AsyncRead + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    partial: &mut Option<Box<Partial>>,
    max_stanza_bytes: usize,
) -> Poll<std::io::Result<usize>> {
    match partial {
        Some(state) => poll_fill(io, cx, &mut state.pending),
        None => {
            let mut bytes = BytesMut::new();
            let read = ready!(poll_fill(io, cx, &mut bytes));
            if !bytes.is_empty() {
                let mut state = Box::new(Partial::new(max_stanza_bytes));
                state.pending = bytes;
                *partial = Some(state);
            }
            Poll::Ready(read)
        }
    }
}

/// Hands every complete frame in the partial frame's bytes to the engine; `Some` when the connection ends.
fn take_frames(hub: &Hub, conn: &ConnRef, state: &mut Partial, read: Read, reading: &mut bool) -> Option<End> {
    let Partial { codec, pending } = state;
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
async fn close<S>(mut io: S, end: End, away: bool, hub: &Hub, options: &ServerOptions)
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
        End::Killed if hub.shutdown_token().is_cancelled() || away => {
            let _ = tokio::time::timeout(options.close_linger, io.shutdown()).await;
        }
        End::Killed | End::Peer => {}
    }
}

/// Writes what the queue holds, unless the connection is killed meanwhile; `Some` when the connection ends
/// (a queue with nothing to give ended: killed, or the hub dropped it).
async fn write<S>(io: &mut S, max_stanza_bytes: usize, endpoint: &Endpoint) -> Option<End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (rx, conn) = (&endpoint.rx, &endpoint.conn);
    let Some(out) = rx.try_recv() else {
        return Some(End::Killed);
    };
    let written = tokio::select! {
        biased;
        () = rx.killed() => return Some(End::Killed),
        written = write_batch(io, max_stanza_bytes, out, rx) => written,
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
async fn write_batch<S>(io: &mut S, max_stanza_bytes: usize, first: Out, rx: &Receiver) -> Result<bool, FrameError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Encoding keeps no state between frames: a codec for this batch only.
    let mut codec = TcpFrameCodec::new(max_stanza_bytes);
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
