//! The fault proxy (issue 18.7): a mutating layer between the suite and any
//! target. It listens on loopback, opens one connection to the target per
//! connection of the suite, and applies deliberate faults (`crate::faults`)
//! to the stanzas in both directions, as a broken server would. The suite's
//! self-check runs through it against the built-in server over the network,
//! and a server author runs it in front of their own server
//! (`bimip-conform --target URL --fault NAME`): a run that passes with a
//! fault in front of the server is a hole in the suite, not in the server.
//!
//! What it changes is what [`FaultLayer`](crate::faults::FaultLayer) changes
//! in the reference server's own edge: the same [`Edge`] runs here over real
//! sockets. Everything else passes unchanged: the WebSocket upgrade (bytes as
//! they come, so handshake checks see the target's own answer), control
//! frames, text frames, the target's close frame, and any frame longer than
//! [`LONGEST_FRAME`] (that direction is copied raw from then on, so an
//! oversized frame reaches the target as sent). A stanza split into
//! fragments reaches the target as sent when the layer leaves it alone.
//! Plaintext targets only: a proxy cannot see into TLS.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_util::sync::CancellationToken;

use super::driver::TransportKind;
use super::network::NetworkTarget;
use crate::core::{CloseReason, ConnId, Millis, Output, Transport};
use crate::faults::{Fault, Faults};
use crate::net::{Clock, Edge, SystemClock};

/// Frames longer than SPEC's default stanza limit (LIM-1) are copied raw, from their first byte and for the rest of
/// that direction: a server answers an oversized length as soon as it reads it (TRN-10), so the proxy must not
/// wait for the body.
pub const LONGEST_FRAME: u64 = 65_536;

/// How long a connection whose both sides ended keeps writing what is queued for the suite.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Longest HTTP upgrade request or answer the proxy reads before passing bytes on raw.
const LONGEST_HEAD: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the fault proxy cannot apply {0}: it is the server's token check, not a stanza on the wire")]
    NotOnTheWire(Fault),
    #[error("{0}: the fault proxy sees plaintext only (ws:// or tcp://), not TLS")]
    Encrypted(String),
    #[error("{url}: not a target address: {why}")]
    Address { url: String, why: String },
    #[error("cannot listen on loopback: {0}")]
    Listen(std::io::Error),
}

/// A running proxy: its listeners stop when it is dropped.
pub struct FaultProxy {
    /// The proxied URL of each WebSocket node of the target, node 0 first.
    ws: Vec<String>,
    /// The proxied URL of each TCP node of the target, node 0 first.
    tcp: Vec<String>,
    stop: CancellationToken,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FaultProxy {
    /// Starts the proxy on `runtime` in front of `target`'s WebSocket and TCP addresses, applying `faults` (none:
    /// a proxy that changes nothing, which every case must pass through). In front of a cluster it listens once per
    /// node, all through one fault layer.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        target: &NetworkTarget,
        faults: &Faults,
    ) -> Result<Self, ProxyError> {
        if let Some(fault) = faults.iter().find(|f| *f == Fault::AcceptExpiredToken) {
            return Err(ProxyError::NotOnTheWire(fault));
        }
        let edge = faults.layer().unwrap_or_else(|| Box::new(PassThrough));
        let shared = Arc::new(Shared {
            layer: Mutex::new(Layer {
                edge,
                clients: BTreeMap::new(),
            }),
            next_conn: AtomicU64::new(1),
            timer: Notify::new(),
        });
        let stop = CancellationToken::new();
        let _guard = runtime.enter();
        let listen = |url: &str, transport: Transport| -> Result<String, ProxyError> {
            let upstream = Upstream::parse(url, transport)?;
            let std_listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(ProxyError::Listen)?;
            std_listener.set_nonblocking(true).map_err(ProxyError::Listen)?;
            let local = std_listener.local_addr().map_err(ProxyError::Listen)?;
            let listener = TcpListener::from_std(std_listener).map_err(ProxyError::Listen)?;
            let proxied = upstream.proxied(local);
            runtime.spawn(accept(listener, upstream, Arc::clone(&shared), stop.clone()));
            Ok(proxied)
        };
        let ws = target
            .nodes(TransportKind::Ws)
            .into_iter()
            .map(|url| listen(url, Transport::WebSocket))
            .collect::<Result<Vec<_>, _>>()?;
        let tcp = target
            .nodes(TransportKind::Tcp)
            .into_iter()
            .map(|url| listen(url, Transport::Tcp))
            .collect::<Result<Vec<_>, _>>()?;
        runtime.spawn(ticks(Arc::clone(&shared), stop.clone()));
        Ok(FaultProxy { ws, tcp, stop })
    }

    /// `target` reached through the proxy.
    pub fn in_front_of(&self, target: &NetworkTarget) -> NetworkTarget {
        NetworkTarget {
            ws: self.ws.first().cloned(),
            tcp: self.tcp.first().cloned(),
            more_ws: self.ws.iter().skip(1).cloned().collect(),
            more_tcp: self.tcp.iter().skip(1).cloned().collect(),
            ..target.clone()
        }
    }
}

/// The layer of a proxy without faults.
struct PassThrough;

impl Edge for PassThrough {
    fn inbound(&mut self, _: ConnId, stanza: Bytes, _: Millis, _: &mut Vec<Output>) -> Option<Bytes> {
        Some(stanza)
    }

    fn outbound(&mut self, output: Output, _: Millis, out: &mut Vec<Output>) {
        out.push(output);
    }

    fn tick(&mut self, _: Millis, _: &mut Vec<Output>) {}

    fn closed(&mut self, _: ConnId) {}
}

/// Where the proxy connects, and how the suite's URL for it is written.
#[derive(Clone, Debug)]
struct Upstream {
    transport: Transport,
    /// host:port of the target.
    address: String,
    /// The URL's path and query (WebSocket), kept for the proxied URL.
    rest: String,
}

impl Upstream {
    fn parse(url: &str, transport: Transport) -> Result<Upstream, ProxyError> {
        let (scheme, after) = url.split_once("://").ok_or_else(|| ProxyError::Address {
            url: url.into(),
            why: "no scheme".into(),
        })?;
        match scheme {
            "ws" | "tcp" => {}
            "wss" | "tls" => return Err(ProxyError::Encrypted(url.into())),
            other => {
                return Err(ProxyError::Address {
                    url: url.into(),
                    why: format!("unknown scheme {other}"),
                });
            }
        }
        let (address, rest) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        Ok(Upstream {
            transport,
            address: address.into(),
            rest: rest.into(),
        })
    }

    fn proxied(&self, local: SocketAddr) -> String {
        match self.transport {
            Transport::WebSocket => format!("ws://{local}{}", self.rest),
            Transport::Tcp => format!("tcp://{local}"),
        }
    }
}

/// The layer and the connections it may send to, shared by every connection's tasks (never locked across an
/// `.await`).
struct Shared {
    layer: Mutex<Layer>,
    next_conn: AtomicU64,
    /// Told after every call into the layer: its deadline may have moved.
    timer: Notify,
}

struct Layer {
    edge: Box<dyn Edge>,
    clients: BTreeMap<ConnId, mpsc::UnboundedSender<ToClient>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Layer> {
        self.layer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the layer and sends what it produced to the connections.
    fn with_layer<R>(&self, f: impl FnOnce(&mut dyn Edge, Millis, &mut Vec<Output>) -> R) -> R {
        let mut layer = self.lock();
        let mut out = Vec::new();
        let result = f(layer.edge.as_mut(), SystemClock.now_ms(), &mut out);
        for output in out {
            let (conn, message) = match output {
                Output::Send { conn, stanza } => (conn, ToClient::Stanza(stanza)),
                Output::Close { conn, reason } => (conn, ToClient::Close(reason)),
                Output::Mail { .. } | Output::Sync(_) => continue,
            };
            if let Some(client) = layer.clients.get(&conn) {
                // A connection whose writer has ended takes nothing more.
                let _ = client.send(message);
            }
        }
        drop(layer);
        self.timer.notify_one();
        result
    }
}

/// What goes to the suite's side of a connection, in order.
enum ToClient {
    /// A stanza, framed by the writer.
    Stanza(Bytes),
    /// Bytes as the target sent them (control frames, text frames, raw copies).
    Raw(Bytes),
    /// The layer closes the connection: the target's own close frame if it sent one, else one with this reason.
    Close(CloseReason),
}

/// What goes to the target's side of a connection, in order.
enum ToTarget {
    Stanza(Bytes),
    Raw(Bytes),
}

async fn accept(listener: TcpListener, upstream: Upstream, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else { continue };
        let (upstream, shared, stop) = (upstream.clone(), Arc::clone(&shared), stop.clone());
        tokio::spawn(async move {
            let Ok(target) = TcpStream::connect(&upstream.address).await else {
                // Nothing listens behind the proxy: the suite sees its connection refused as a close.
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = target.set_nodelay(true);
            tokio::select! {
                () = stop.cancelled() => {}
                () = proxy(client, target, upstream.transport, shared) => {}
            }
        });
    }
}

/// The layer's own deadlines (held stanzas, late leaks).
async fn ticks(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let deadline = shared.lock().edge.deadline();
        let wait = deadline.map(|at| {
            let now = SystemClock.now_ms();
            std::time::Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
        });
        let sleep = async {
            match wait {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = shared.timer.notified() => continue,
            () = sleep => shared.with_layer(|edge, now, out| edge.tick(now, out)),
        }
    }
}

/// One proxied connection, from its upgrade (WebSocket) to its end.
async fn proxy(mut client: TcpStream, mut target: TcpStream, transport: Transport, shared: Arc<Shared>) {
    let (mut up_left, mut down_left) = (BytesMut::new(), BytesMut::new());
    if transport == Transport::WebSocket {
        let (mut client_rd, mut client_wr) = client.split();
        let (mut target_rd, mut target_wr) = target.split();
        match upgrade(&mut client_rd, &mut client_wr, &mut target_rd, &mut target_wr).await {
            Upgrade::Frames { up, down } => (up_left, down_left) = (up, down),
            Upgrade::Raw { up, down } => {
                if target.write_all(&up).await.is_ok() && client.write_all(&down).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut target).await;
                }
                return;
            }
        }
    }
    let (client_rd, client_wr) = client.into_split();
    let (target_rd, target_wr) = target.into_split();
    let conn = ConnId(shared.next_conn.fetch_add(1, Ordering::Relaxed));
    let (to_client, client_queue) = mpsc::unbounded_channel();
    let (to_target, target_queue) = mpsc::unbounded_channel();
    shared.lock().clients.insert(conn, to_client.clone());
    shared.with_layer(|edge, _, _| edge.opened(conn, transport));
    let ws = transport == Transport::WebSocket;
    // The target's close frame, sent on when the layer closes the connection.
    let close_frame: Mutex<Option<Bytes>> = Mutex::default();
    let up = pump_up(client_rd, up_left, ws, conn, &shared, to_target);
    let down = pump_down(target_rd, down_left, ws, conn, &shared, &to_client, &close_frame);
    let write_client = write_client(client_wr, client_queue, ws, &close_frame);
    let write_target = write_target(target_wr, target_queue, ws);
    tokio::pin!(write_client);
    tokio::select! {
        // Both sides ended: what is still queued for the suite gets a moment to leave.
        _ = async { tokio::join!(up, down, write_target) } => {
            let _ = tokio::time::timeout(LINGER, &mut write_client).await;
        }
        // The layer (or a failed write) ended the suite's side: the target's goes with it.
        () = &mut write_client => {}
    }
    shared.lock().clients.remove(&conn);
    shared.with_layer(|edge, _, _| edge.closed(conn));
}

enum Upgrade {
    /// The target switched protocols: frames follow, after what was read past each head.
    Frames { up: BytesMut, down: BytesMut },
    /// Anything else: what was read past each head, then the rest, is copied as it comes.
    Raw { up: BytesMut, down: BytesMut },
}

/// Passes the WebSocket upgrade on as it comes, byte for byte, reading each side up to the end of its head.
async fn upgrade(
    client_rd: &mut (impl AsyncRead + Unpin),
    client_wr: &mut (impl AsyncWrite + Unpin),
    target_rd: &mut (impl AsyncRead + Unpin),
    target_wr: &mut (impl AsyncWrite + Unpin),
) -> Upgrade {
    let up = head(client_rd, target_wr);
    let down = head(target_rd, client_wr);
    tokio::pin!(up, down);
    let mut request = None;
    let answer = loop {
        tokio::select! {
            done = &mut up, if request.is_none() => request = Some(done),
            done = &mut down => break done,
        }
    };
    let up = request.flatten().map(|(_, past)| past);
    match (up, answer) {
        (Some(up), Some((head, down))) if head.starts_with(b"HTTP/1.1 101") => Upgrade::Frames { up, down },
        // A refusal (its body follows the head), an answer before the request ended, or no head at all.
        (up, answer) => Upgrade::Raw {
            up: up.unwrap_or_default(),
            down: answer.map(|(_, past)| past).unwrap_or_default(),
        },
    }
}

/// Copies `from` to `to` up to the end of an HTTP head (a blank line): the head and what was read past it.
/// `None` at the end of the stream, on an error, or when no head ends within [`LONGEST_HEAD`].
async fn head(from: &mut (impl AsyncRead + Unpin), to: &mut (impl AsyncWrite + Unpin)) -> Option<(Vec<u8>, BytesMut)> {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = from.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        let start = seen.len().saturating_sub(3);
        seen.extend_from_slice(&chunk[..n]);
        match seen[start..].windows(4).position(|w| w == b"\r\n\r\n") {
            Some(at) => {
                let end = start + at + 4;
                to.write_all(&seen[..end]).await.ok()?;
                let rest = BytesMut::from(&seen[end..]);
                seen.truncate(end);
                return Some((seen, rest));
            }
            None => {
                to.write_all(&chunk[..n]).await.ok()?;
                if seen.len() > LONGEST_HEAD {
                    return None;
                }
            }
        }
    }
}

/// One frame off a connection: WebSocket frames (unmasked payload) or native TCP's length-prefixed stanzas.
enum Read {
    /// A stanza, and the raw frames it came in (WebSocket fragments, to pass on unchanged).
    Stanza(Bytes, Bytes),
    /// A frame passed on as it is: control frames, text messages.
    Other {
        raw: Bytes,
        close: bool,
    },
    /// The stream is not framed as expected any more (too long, unparsable): these bytes and the rest go raw.
    Raw(Bytes),
    End,
}

/// Reads frames from one side, keeping what was read past each.
struct Framer<R> {
    from: R,
    buf: BytesMut,
    ws: bool,
    /// A fragmented binary message: its payload so far, and its raw frames.
    partial: Option<(BytesMut, BytesMut)>,
}

impl<R: AsyncRead + Unpin> Framer<R> {
    async fn next(&mut self) -> Read {
        loop {
            if let Some(read) = self.parse() {
                return read;
            }
            if !matches!(self.from.read_buf(&mut self.buf).await, Ok(n) if n > 0) {
                return match self.rest() {
                    rest if rest.is_empty() => Read::End,
                    rest => Read::Raw(rest),
                };
            }
        }
    }

    /// Everything read and not passed on: a fragmented message's frames so far, then the buffer.
    fn rest(&mut self) -> Bytes {
        let mut all = self.partial.take().map(|(_, frames)| frames).unwrap_or_default();
        all.extend_from_slice(&self.buf.split());
        all.freeze()
    }

    /// The next whole frame (or fragmented message) in the buffer, if there is one.
    fn parse(&mut self) -> Option<Read> {
        if !self.ws {
            let length = u32::from_be_bytes(self.buf.get(..4)?.try_into().ok()?);
            if u64::from(length) > LONGEST_FRAME {
                return Some(Read::Raw(self.rest()));
            }
            let length = usize::try_from(length).ok()?;
            if self.buf.len() < 4 + length {
                return None;
            }
            let mut frame = self.buf.split_to(4 + length);
            let raw = frame.clone().freeze();
            frame.advance(4);
            return Some(Read::Stanza(frame.freeze(), raw));
        }
        loop {
            let mut cursor = Cursor::new(&self.buf[..]);
            let (header, length) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return None,
                Err(_) => return Some(Read::Raw(self.rest())),
            };
            if length > LONGEST_FRAME {
                return Some(Read::Raw(self.rest()));
            }
            let header_len = usize::try_from(cursor.position()).ok()?;
            let total = header_len.checked_add(usize::try_from(length).ok()?)?;
            if self.buf.len() < total {
                return None;
            }
            let raw = self.buf.split_to(total);
            let mut payload = BytesMut::from(&raw[header_len..]);
            if let Some(mask) = header.mask {
                for (i, byte) in payload.iter_mut().enumerate() {
                    *byte ^= mask[i % 4];
                }
            }
            let (whole, frames) = match (header.opcode, self.partial.take()) {
                (OpCode::Data(Data::Binary), None) => (payload, raw),
                (OpCode::Data(Data::Continue), Some((mut whole, mut frames))) => {
                    whole.extend_from_slice(&payload);
                    frames.extend_from_slice(&raw);
                    (whole, frames)
                }
                (opcode, partial) => {
                    // Control frames may come between fragments; anything else passes on as it is.
                    self.partial = partial;
                    let close = opcode == OpCode::Control(Control::Close);
                    return Some(Read::Other {
                        raw: raw.freeze(),
                        close,
                    });
                }
            };
            if header.is_final {
                return Some(Read::Stanza(whole.freeze(), frames.freeze()));
            }
            self.partial = Some((whole, frames));
        }
    }
}

/// The suite's side to the target: each stanza through the layer's `inbound`.
async fn pump_up(
    client_rd: impl AsyncRead + Unpin,
    left: BytesMut,
    ws: bool,
    conn: ConnId,
    shared: &Shared,
    to_target: mpsc::UnboundedSender<ToTarget>,
) {
    let mut framer = Framer {
        from: client_rd,
        buf: left,
        ws,
        partial: None,
    };
    loop {
        match framer.next().await {
            Read::Stanza(stanza, raw) => {
                let passed = shared.with_layer(|edge, now, out| edge.inbound(conn, stanza.clone(), now, out));
                match passed {
                    Some(same) if same == stanza => send(&to_target, ToTarget::Raw(raw)),
                    Some(changed) => send(&to_target, ToTarget::Stanza(changed)),
                    None => {}
                }
            }
            Read::Other { raw, .. } => send(&to_target, ToTarget::Raw(raw)),
            Read::Raw(bytes) => {
                send(&to_target, ToTarget::Raw(bytes));
                let mut rest = framer.from;
                let mut chunk = vec![0u8; 16 * 1024];
                while let Ok(n) = rest.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    send(&to_target, ToTarget::Raw(Bytes::copy_from_slice(&chunk[..n])));
                }
                return;
            }
            Read::End => return,
        }
    }
}

/// The target's side to the suite: each stanza, and the target's close, through the layer's `outbound`.
async fn pump_down(
    target_rd: impl AsyncRead + Unpin,
    left: BytesMut,
    ws: bool,
    conn: ConnId,
    shared: &Shared,
    to_client: &mpsc::UnboundedSender<ToClient>,
    close_frame: &Mutex<Option<Bytes>>,
) {
    let mut framer = Framer {
        from: target_rd,
        buf: left,
        ws,
        partial: None,
    };
    let closed = |shared: &Shared| {
        let reason = CloseReason::Normal;
        shared.with_layer(|edge, now, out| edge.outbound(Output::Close { conn, reason }, now, out));
    };
    loop {
        match framer.next().await {
            Read::Stanza(stanza, _) => {
                shared.with_layer(|edge, now, out| edge.outbound(Output::Send { conn, stanza }, now, out));
            }
            Read::Other { raw, close: true } => {
                *close_frame.lock().unwrap_or_else(PoisonError::into_inner) = Some(raw);
                return closed(shared);
            }
            Read::Other { raw, close: false } => {
                let _ = to_client.send(ToClient::Raw(raw));
            }
            Read::Raw(bytes) => {
                let _ = to_client.send(ToClient::Raw(bytes));
                let mut rest = framer.from;
                let mut chunk = vec![0u8; 16 * 1024];
                while let Ok(n) = rest.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    let _ = to_client.send(ToClient::Raw(Bytes::copy_from_slice(&chunk[..n])));
                }
                return closed(shared);
            }
            Read::End => return closed(shared),
        }
    }
}

fn send(to: &mpsc::UnboundedSender<ToTarget>, message: ToTarget) {
    // The writer has ended with its connection: nothing more goes out.
    let _ = to.send(message);
}

/// Writes to the suite's side; a close from the layer ends the connection (and so the proxy's other half).
async fn write_client(
    mut client_wr: impl AsyncWrite + Unpin,
    mut queue: mpsc::UnboundedReceiver<ToClient>,
    ws: bool,
    close_frame: &Mutex<Option<Bytes>>,
) {
    while let Some(message) = queue.recv().await {
        let bytes = match message {
            ToClient::Raw(bytes) => bytes,
            ToClient::Stanza(stanza) => frame(stanza, ws, None),
            ToClient::Close(reason) => {
                if ws {
                    let recorded = close_frame.lock().unwrap_or_else(PoisonError::into_inner).take();
                    let frame = recorded.unwrap_or_else(|| close(reason));
                    let _ = client_wr.write_all(&frame).await;
                }
                let _ = client_wr.shutdown().await;
                return;
            }
        };
        if client_wr.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

async fn write_target(mut target_wr: impl AsyncWrite + Unpin, mut queue: mpsc::UnboundedReceiver<ToTarget>, ws: bool) {
    while let Some(message) = queue.recv().await {
        let bytes = match message {
            ToTarget::Raw(bytes) => bytes,
            ToTarget::Stanza(stanza) => frame(stanza, ws, Some(rand::random())),
        };
        if target_wr.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = target_wr.shutdown().await;
}

/// A stanza as one frame: a binary WebSocket message (masked toward a server), or native TCP's length prefix.
fn frame(stanza: Bytes, ws: bool, mask: Option<[u8; 4]>) -> Bytes {
    let mut out = Vec::with_capacity(stanza.len() + 14);
    if ws {
        let header = FrameHeader {
            opcode: OpCode::Data(Data::Binary),
            mask,
            ..FrameHeader::default()
        };
        // Writing into a Vec cannot fail.
        let _ = Frame::from_payload(header, stanza).format(&mut out);
    } else {
        let length = u32::try_from(stanza.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&stanza);
    }
    Bytes::from(out)
}

/// A WebSocket close frame with the close code of `reason` (SPEC TRN), toward the suite.
fn close(reason: CloseReason) -> Bytes {
    let mut out = Vec::new();
    let header = FrameHeader {
        opcode: OpCode::Control(Control::Close),
        ..FrameHeader::default()
    };
    let _ = Frame::from_payload(header, Bytes::copy_from_slice(&reason.ws_close_code().to_be_bytes())).format(&mut out);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framer(bytes: &[u8], ws: bool) -> Framer<&'static [u8]> {
        Framer {
            from: &[],
            buf: BytesMut::from(bytes),
            ws,
            partial: None,
        }
    }

    fn ws_frame(opcode: OpCode, is_final: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let header = FrameHeader {
            is_final,
            opcode,
            mask,
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        Frame::from_payload(header, Bytes::copy_from_slice(payload))
            .format(&mut out)
            .unwrap();
        out
    }

    #[tokio::test]
    async fn a_fragmented_masked_message_is_one_stanza_with_its_frames_kept() {
        let mask = Some([1, 2, 3, 4]);
        let mut bytes = ws_frame(OpCode::Data(Data::Binary), false, b"ab", mask);
        bytes.extend(ws_frame(OpCode::Control(Control::Ping), true, b"p", mask));
        bytes.extend(ws_frame(OpCode::Data(Data::Continue), true, b"cd", mask));
        let mut f = framer(&bytes, true);
        // The ping between the fragments passes on first, as it came.
        let Read::Other { raw, close: false } = f.next().await else {
            panic!("the ping")
        };
        assert_eq!(raw[0], 0x89);
        let Read::Stanza(stanza, frames) = f.next().await else {
            panic!("the stanza")
        };
        assert_eq!(&stanza[..], b"abcd");
        assert_eq!(frames.len(), bytes.len() - raw.len());
        assert!(matches!(f.next().await, Read::End));
    }

    #[tokio::test]
    async fn frames_past_the_limit_and_unparsable_ones_go_raw_from_their_first_byte() {
        let mut tcp = (u32::try_from(LONGEST_FRAME).unwrap() + 1).to_be_bytes().to_vec();
        tcp.extend_from_slice(b"xyz");
        let Read::Raw(raw) = framer(&tcp, false).next().await else {
            panic!("raw")
        };
        assert_eq!(&raw[..], &tcp[..]);
        // A reserved opcode does not parse: raw, nothing lost.
        let odd = [0x83, 0x00, 0x82, 0x00];
        let Read::Raw(raw) = framer(&odd, true).next().await else {
            panic!("raw")
        };
        assert_eq!(&raw[..], &odd[..]);
        // A stream that ends inside a frame hands on what it had.
        let cut = [0, 0, 0, 9, 1, 2];
        let Read::Raw(raw) = framer(&cut, false).next().await else {
            panic!("raw")
        };
        assert_eq!(&raw[..], &cut[..]);
    }

    #[test]
    fn frame_writes_what_the_framer_reads() {
        let stanza = Bytes::from_static(b"\x08\x06");
        for (ws, mask) in [(true, Some([9, 8, 7, 6])), (true, None), (false, None)] {
            let written = frame(stanza.clone(), ws, mask);
            let mut f = framer(&written, ws);
            let Some(Read::Stanza(read, raw)) = f.parse() else {
                panic!("a stanza")
            };
            assert_eq!(read, stanza);
            assert_eq!(raw, written);
        }
    }

    #[test]
    fn targets_are_plaintext_and_keep_their_path() {
        let ws = Upstream::parse("ws://127.0.0.1:4000/socket?x=1", Transport::WebSocket).unwrap();
        assert_eq!(ws.address, "127.0.0.1:4000");
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(ws.proxied(local), "ws://127.0.0.1:5000/socket?x=1");
        assert!(matches!(
            Upstream::parse("wss://example.com/", Transport::WebSocket),
            Err(ProxyError::Encrypted(_))
        ));
        assert!(matches!(
            Upstream::parse("tls://example.com:1", Transport::Tcp),
            Err(ProxyError::Encrypted(_))
        ));
    }
}
