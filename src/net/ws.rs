//! WebSocket connections (SPEC §2.2): one binary message per stanza. The token
//! travels in the upgrade request (SPEC §3.2), so the engine decides inside
//! tungstenite's handshake callback whether to upgrade; a refusal is an HTTP
//! answer (401 or 429, `text/plain` body = the kind) and no WebSocket opens.
//!
//! tungstenite's callback is synchronous, which is why the engine sits behind
//! a mutex (see [`super`]): the callback locks it for one `open` call, the
//! same as every other connection event.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use std::task::{Context, Poll};

use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::CapacityError};

use super::hub::{ConnRef, Endpoint, Hub, Out};
use super::lean::Gate;
use super::outbox::Receiver;
use super::{ServerOptions, linger};
use crate::codec::{ErrorKind, FrameError};
use crate::core::auth::token_from_request;
use crate::core::{CloseReason, Transport};

/// The subprotocol the server selects when a client offers it (SPEC TRN-4).
pub const SUBPROTOCOL: &str = "bimip.v1";

/// tungstenite's default buffers are 128 KiB each, allocated per connection;
/// a BIMIP server holds mostly idle connections with small stanzas. The read
/// buffer is also the most one read takes, so it is not made smaller still:
/// a 64 KiB stanza already takes 64 reads.
const READ_BUFFER: usize = 1024;
const WRITE_BUFFER: usize = 16 * 1024;

/// WebSocket settings for a peer whose stanzas may be up to `max_stanza_bytes`.
pub fn ws_config(max_stanza_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(max_stanza_bytes))
        .max_frame_size(Some(max_stanza_bytes))
}

enum End {
    /// The engine closed it and the Close frame went out; `reading` says
    /// whether the WebSocket can still be read (to await the peer's Close).
    Engine { reading: bool },
    /// The peer sent Close: answer it and go.
    PeerClose,
    /// The stream ended or failed.
    Peer,
    /// The hub gave up on it (queue full) or the server is stopping.
    Killed,
}

/// What a connection's WebSocket phase works with.
struct Link<'a> {
    hub: &'a Hub,
    conn: &'a ConnRef,
    rx: &'a Receiver,
    style: Style,
    /// False after a read error (an oversized message): tungstenite stops
    /// mid-frame, so what follows on the wire is never parsed (SPEC TRN-6).
    reading: bool,
    /// False while a parking attempt found output not yet flushed; true again after the next event.
    may_rest: bool,
}

impl<'a> Link<'a> {
    /// Made anew for each open phase: what it tracks does not outlive one (a connection that stopped reading
    /// never rests again), and the resting connection's future does not hold it.
    fn new(hub: &'a Hub, endpoint: &'a Endpoint, options: &ServerOptions) -> Link<'a> {
        Link {
            hub,
            conn: &endpoint.conn,
            rx: &endpoint.rx,
            style: Style::of(&options.variants),
            reading: true,
            may_rest: true,
        }
    }
}

/// How one [`step`] of an open WebSocket ended.
enum Step {
    Going,
    /// Nothing is buffered either way: the WebSocket state may go.
    Rest,
    End(End),
}

/// An upgraded connection rests as its stream alone: no WebSocket state, no buffers, no wakers (see `lean`).
/// Input or output opens a WebSocket over it again ([`run_open`]), until the stream is at rest once more.
///
/// Not an `async fn`: the gate is made before the future, so the future holds the stream once, and each
/// phase is boxed, because a future is as large as its largest stage and an idle connection waits in the
/// smallest.
pub(crate) fn serve<S>(
    hub: Arc<Hub>,
    io: S,
    endpoint: Endpoint,
    options: Arc<ServerOptions>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut gate = Gate::new(io);
    async move {
        if !Box::pin(upgrade(&mut gate, &hub, &endpoint, &options)).await {
            return;
        }
        let end = loop {
            // Parked: one hand-written poll of the queue, then the stream (no select! and its futures in the task).
            let woke = std::future::poll_fn(|cx| match endpoint.rx.poll_ready(cx) {
                Poll::Ready(()) => Poll::Ready(true),
                Poll::Pending => gate.poll_wait(cx).map(|read| match read {
                    Ok(n) => n > 0,
                    Err(error) => {
                        let conn = &endpoint.conn;
                        tracing::debug!(%conn, %error, "read failed");
                        false
                    }
                }),
            })
            .await;
            if !woke {
                break End::Peer;
            }
            let ws = Box::pin(open(&mut gate, &hub)).await;
            if !Box::pin(run_open(ws, Link::new(&hub, &endpoint, &options), &options)).await {
                return;
            }
        };
        hub.closed(&endpoint.conn);
        let ws = Box::pin(open(&mut gate, &hub)).await;
        Box::pin(close(ws, end, endpoint.rx.going_away(), &hub, &options)).await;
    }
}

/// The upgrade, and the frames a client sent before its answer: `true` once the connection rests with no
/// WebSocket state, `false` when it ended (and was closed here).
// tungstenite's callback signature returns the whole HTTP error response.
#[allow(clippy::result_large_err)]
async fn upgrade<S>(gate: &mut Gate<S>, hub: &Hub, endpoint: &Endpoint, options: &ServerOptions) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (conn, rx) = (&endpoint.conn, &endpoint.rx);
    let decided = if hub.is_clustered() {
        ask_home(gate, hub, conn, options.handshake_timeout).await
    } else {
        None
    };
    let callback = {
        let select = !options.variants.has(crate::variants::Variant::NoSubprotocol);
        move |request: &Request, response: Response| match decided {
            None => decide(hub, conn, request, response, select),
            Some(result) => answer(result, request, response, select),
        }
    };
    // Boxed: it borrows the stream, so that a request that is no WebSocket upgrade can still be answered on it.
    let handshake = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
        &mut *gate,
        callback,
        Some(ws_config(hub.max_stanza_bytes())),
    ));
    let accepted = tokio::select! {
        biased;
        () = rx.killed() => Err(None),
        accepted = tokio::time::timeout(options.handshake_timeout, handshake) => match accepted {
            Ok(Ok(ws)) => Ok(ws),
            Ok(Err(WsError::Http(response))) => {
                tracing::debug!(%conn, status = %response.status(), "upgrade refused");
                Err(None)
            }
            Ok(Err(WsError::Protocol(error))) => {
                tracing::debug!(%conn, %error, "not a WebSocket upgrade request");
                Err(Some(error))
            }
            Ok(Err(error)) => {
                tracing::debug!(%conn, %error, "WebSocket handshake failed");
                Err(None)
            }
            Err(_) => {
                tracing::debug!(%conn, "WebSocket handshake timed out");
                Err(None)
            }
        },
    };
    match accepted {
        // RFC 6455 4.1 says a client waits for the answer before it sends frames; one that did not left them
        // in the handshake's WebSocket, which runs until it holds none.
        Ok(ws) if !ws.get_ref().watch.at_rest() => run_open(ws, Link::new(hub, endpoint, options), options).await,
        Ok(_) => true,
        Err(not_an_upgrade) => {
            hub.closed(conn);
            if let Some(error) = not_an_upgrade {
                // SPEC TRN-18 (RFC 6455 4.2.1): a handshake that is not a valid upgrade gets 400, not silence.
                let _ = tokio::time::timeout(options.close_linger, bad_request(gate.get_mut(), &error)).await;
            }
            false
        }
    }
}

/// A WebSocket over a stream that rested with none.
async fn open<'g, S>(gate: &'g mut Gate<S>, hub: &Hub) -> WebSocketStream<&'g mut Gate<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    WebSocketStream::from_raw_socket(gate, Role::Server, Some(ws_config(hub.max_stanza_bytes()))).await
}

/// An open WebSocket, step by step: `true` when it rests (and goes), `false` when the connection ended (and
/// was closed here).
async fn run_open<S>(mut ws: WebSocketStream<&mut Gate<S>>, mut link: Link<'_>, options: &ServerOptions) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match step(&mut ws, &mut link).await {
            Step::Going => {}
            Step::Rest => return true,
            Step::End(end) => {
                link.hub.closed(link.conn);
                Box::pin(close(ws, end, link.rx.going_away(), link.hub, options)).await;
                return false;
            }
        }
    }
}

/// One event of an open WebSocket: output written, a message read, or the finding that it may rest.
async fn step<S>(ws: &mut WebSocketStream<&mut Gate<S>>, link: &mut Link<'_>) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let rx = link.rx;
    let may_rest = link.may_rest;
    tokio::select! {
        biased;
        out = rx.recv() => {
            let Some(out) = out else { return Step::End(End::Killed) };
            link.may_rest = true;
            let written = tokio::select! {
                biased;
                () = rx.killed() => return Step::End(End::Killed),
                // Boxed: while idle, the task holds no room for a write.
                written = Box::pin(write_batch(ws, out, rx, link.style)) => written,
            };
            match written {
                Ok(false) => Step::Going,
                Ok(true) => Step::End(End::Engine { reading: link.reading }),
                Err(error) => {
                    let conn = link.conn;
                    tracing::debug!(%conn, %error, "write failed");
                    Step::End(End::Peer)
                }
            }
        }
        read = std::future::poll_fn(|cx| poll_next_or_rest(ws, cx, may_rest)), if link.reading => match read {
            None => match ws.flush().now_or_never() {
                Some(Ok(())) => Step::Rest,
                Some(Err(_)) => Step::End(End::Peer),
                None => {
                    // A pong or a Close reply still on its way: rest once it is out.
                    link.may_rest = false;
                    Step::Going
                }
            },
            Some(message) => {
                link.may_rest = true;
                received(link, message)
            }
        },
    }
}

/// The next message; `None` when there is none and the stream is at rest (with `may_rest`).
fn poll_next_or_rest<S>(
    ws: &mut WebSocketStream<&mut Gate<S>>,
    cx: &mut Context<'_>,
    may_rest: bool,
) -> Poll<Option<Option<Result<Message, WsError>>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match ws.poll_next_unpin(cx) {
        Poll::Ready(message) => Poll::Ready(Some(message)),
        Poll::Pending if may_rest && ws.get_ref().watch.at_rest() => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    }
}

/// What a message read from the WebSocket means for the connection.
fn received(link: &mut Link<'_>, message: Option<Result<Message, WsError>>) -> Step {
    let (hub, conn) = (link.hub, link.conn);
    match message {
        Some(Ok(Message::Binary(stanza))) => hub.receive(conn, &stanza),
        Some(Ok(Message::Text(_))) => hub.text_frame(conn),
        // tungstenite answers Pings itself (SPEC TRN-7); control frames
        // are no BIMIP liveness signal (SPEC PING-4).
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
        Some(Ok(Message::Close(_))) => return Step::End(End::PeerClose),
        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
            link.reading = false;
            let error = FrameError::TooLarge {
                declared: u64::try_from(size).unwrap_or(u64::MAX),
                max: max_size,
            };
            hub.framing_error(conn, &error);
        }
        Some(Err(error)) => {
            tracing::debug!(%conn, %error, "read failed");
            return Step::End(End::Peer);
        }
        None => return Step::End(End::Peer),
    }
    Step::Going
}

/// After the loop: the close handshake the way the connection ended needs.
async fn close<S>(mut ws: WebSocketStream<S>, end: End, away: bool, hub: &Hub, options: &ServerOptions)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match end {
        End::Engine { reading: true } => {
            // RFC 6455: wait for the peer's Close, then the server closes TCP.
            let _ = tokio::time::timeout(options.close_linger, async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
        End::Engine { reading: false } => {
            // The frame parser is stuck mid-message: FIN, then discard raw
            // input until the peer closes (closing with unread input sends RST,
            // which can destroy the ErrorMessage and Close before they are read).
            let io = ws.get_mut();
            if io.shutdown().await.is_ok() {
                linger(io, options.close_linger).await;
            }
        }
        End::PeerClose => {
            // tungstenite queued the Close reply; flushing sends it.
            let _ = tokio::time::timeout(options.close_linger, ws.flush()).await;
        }
        End::Killed if hub.shutdown_token().is_cancelled() || away => {
            let frame = CloseFrame {
                code: CloseCode::Away,
                reason: if away {
                    "node cut off from its cluster".into()
                } else {
                    "server shutting down".into()
                },
            };
            let _ = tokio::time::timeout(options.close_linger, ws.close(Some(frame))).await;
        }
        End::Killed | End::Peer => {}
    }
}

/// HTTP 400 for a request that is not a WebSocket upgrade, `text/plain` body = why; then the connection closes.
async fn bad_request<S>(io: &mut S, error: &tokio_tungstenite::tungstenite::error::ProtocolError) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let body = format!("not a WebSocket upgrade request: {error}\n");
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    io.write_all(head.as_bytes()).await?;
    io.write_all(body.as_bytes()).await?;
    io.shutdown().await
}

/// The handshake callback: the engine decides whether this request upgrades.
#[allow(clippy::result_large_err)] // the signature tungstenite's Callback imposes
fn decide(
    hub: &Hub,
    conn: &ConnRef,
    request: &Request,
    response: Response,
    select_subprotocol: bool,
) -> Result<Response, ErrorResponse> {
    let headers = request
        .headers()
        .iter()
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
    let token = token_from_request(headers, request.uri().query());
    answer(
        hub.open(conn, Transport::WebSocket, token.as_deref()),
        request,
        response,
        select_subprotocol,
    )
}

/// The upgrade's answer once the token's home has decided.
#[allow(clippy::result_large_err)] // the signature tungstenite's Callback imposes
fn answer(
    opened: Result<(), ErrorKind>,
    request: &Request,
    mut response: Response,
    select_subprotocol: bool,
) -> Result<Response, ErrorResponse> {
    match opened {
        Ok(()) => {
            if select_subprotocol && offers_subprotocol(request) {
                response
                    .headers_mut()
                    .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
            }
            Ok(response)
        }
        Err(kind) => Err(refusal(kind)),
    }
}

/// Longest upgrade request head read ahead of the handshake in a cluster; a longer one is left to the handshake,
/// which refuses it as it would anyway.
const MAX_HEAD: usize = 16 * 1024;

/// In a cluster, the token may name a user homed on another node, and that node decides the upgrade: the request's
/// head is read ahead (and kept for the handshake, which reads it again) to ask it before answering. `None`: the
/// home is on this node (or the head is not a request), and the handshake decides here as on a lone server.
async fn ask_home<S>(
    gate: &mut Gate<S>,
    hub: &Hub,
    conn: &ConnRef,
    wait: std::time::Duration,
) -> Option<Result<(), ErrorKind>>
where
    S: AsyncRead + Unpin,
{
    let token = {
        // Only the read is bounded here: the home's answer has its own wait, and cutting it short would leave
        // the connection routed to a home that never answered.
        let head = tokio::time::timeout(wait, gate.read_head(MAX_HEAD))
            .await
            .ok()?
            .ok()??;
        let mut headers = [httparse::EMPTY_HEADER; 124];
        let mut request = httparse::Request::new(&mut headers);
        if !request.parse(head).ok()?.is_complete() {
            return None;
        }
        let query = request
            .path
            .and_then(|path| path.split_once('?'))
            .map(|(_, query)| query);
        let headers = request
            .headers
            .iter()
            .filter_map(|h| Some((h.name, std::str::from_utf8(h.value).ok()?)));
        token_from_request(headers, query)
    };
    hub.open_remote(conn, token.as_deref(), wait).await
}

fn offers_subprotocol(request: &Request) -> bool {
    subprotocols(request.headers()).any(|offered| offered == SUBPROTOCOL)
}

/// The subprotocols a `Sec-WebSocket-Protocol` header list names (one header or several, comma-separated).
pub fn subprotocols(headers: &header::HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
}

/// SPEC AUTH-10 / SES-3: status = the kind's code, `text/plain` body = the kind.
fn refusal(kind: ErrorKind) -> ErrorResponse {
    let body = kind.as_str().to_string();
    let mut response = ErrorResponse::new(None);
    *response.status_mut() = StatusCode::from_u16(kind.code()).unwrap_or(StatusCode::UNAUTHORIZED);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if kind.code() == 401 {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    }
    *response.body_mut() = Some(body);
    response
}

/// How the adapter writes where SPEC leaves a choice; the reference server
/// takes the plainest, and the suite's self-check tries the others
/// (`crate::variants`).
#[derive(Clone, Copy, Debug, Default)]
struct Style {
    /// Each message in several frames.
    fragmented: bool,
    /// Words in the Close frame's reason.
    close_reason: bool,
}

impl Style {
    fn of(variants: &crate::variants::Variants) -> Style {
        use crate::variants::Variant;
        Style {
            fragmented: variants.has(Variant::FragmentedMessages),
            close_reason: variants.has(Variant::CloseReasons),
        }
    }

    /// One stanza as what goes on the wire: one binary message, or the same
    /// message in up to three fragments (RFC 6455 5.4).
    fn messages(self, stanza: Bytes) -> Vec<Message> {
        if !self.fragmented || stanza.len() < 2 {
            return vec![Message::Binary(stanza)];
        }
        let piece = stanza.len().div_ceil(3);
        let pieces: Vec<Bytes> = (0..stanza.len())
            .step_by(piece)
            .map(|at| stanza.slice(at..(at + piece).min(stanza.len())))
            .collect();
        let last = pieces.len() - 1;
        pieces
            .into_iter()
            .enumerate()
            .map(|(i, data)| {
                let opcode = if i == 0 { OpData::Binary } else { OpData::Continue };
                Message::Frame(Frame::message(data, OpCode::Data(opcode), i == last))
            })
            .collect()
    }

    /// The Close frame for `reason`: SPEC fixes the code; the reason text is free.
    fn close_frame(self, reason: CloseReason) -> CloseFrame {
        let words = match reason {
            CloseReason::Normal => "goodbye",
            CloseReason::Error(kind) => kind.as_str(),
        };
        CloseFrame {
            code: CloseCode::from(reason.ws_close_code()),
            reason: if self.close_reason { words } else { "" }.into(),
        }
    }
}

/// Sends `first` and whatever else is queued, then flushes once. `Ok(true)`
/// when a Close was among them: everything before it is flushed and the Close
/// frame is sent.
async fn write_batch<S>(ws: &mut WebSocketStream<S>, first: Out, rx: &Receiver, style: Style) -> Result<bool, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut next = Some(first);
    while let Some(out) = next.take() {
        match out {
            Out::Send(stanza) if !style.fragmented => ws.feed(Message::Binary(stanza)).await?,
            Out::Send(stanza) => {
                for message in style.messages(stanza) {
                    ws.feed(message).await?;
                }
            }
            Out::Close(reason) => {
                ws.flush().await?;
                ws.close(Some(style.close_frame(reason))).await?;
                return Ok(true);
            }
        }
        next = rx.try_recv();
    }
    ws.flush().await?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(messages: &[Message]) -> Vec<(bool, OpCode, Vec<u8>)> {
        messages
            .iter()
            .map(|m| match m {
                Message::Frame(f) => (f.header().is_final, f.header().opcode, f.payload().to_vec()),
                Message::Binary(b) => (true, OpCode::Data(OpData::Binary), b.to_vec()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_fragmented_style_splits_a_message_into_a_binary_frame_and_continuations() {
        let stanza = Bytes::from_static(b"0123456789");
        let plain = Style::default().messages(stanza.clone());
        assert_eq!(
            frames(&plain),
            vec![(true, OpCode::Data(OpData::Binary), b"0123456789".to_vec())]
        );
        let split = frames(
            &Style {
                fragmented: true,
                ..Style::default()
            }
            .messages(stanza),
        );
        assert_eq!(
            split,
            vec![
                (false, OpCode::Data(OpData::Binary), b"0123".to_vec()),
                (false, OpCode::Data(OpData::Continue), b"4567".to_vec()),
                (true, OpCode::Data(OpData::Continue), b"89".to_vec()),
            ]
        );
    }

    #[test]
    fn close_reasons_are_words_only_in_their_style() {
        let reason = CloseReason::Error(ErrorKind::SessionReplaced);
        assert_eq!(Style::default().close_frame(reason).reason.as_str(), "");
        let worded = Style {
            close_reason: true,
            ..Style::default()
        }
        .close_frame(reason);
        assert_eq!(
            (u16::from(worded.code), worded.reason.as_str()),
            (4409, "session_replaced")
        );
    }
}
