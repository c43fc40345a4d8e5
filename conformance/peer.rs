//! Client mode's server (SPEC §21): a scripted peer on loopback that the client under test connects to, over
//! WebSocket or native TCP. It is no BIMIP server: the steps say what it sends and when, so it can also misbehave
//! on purpose (no Authenticate RESPONSE, routes and codes the client does not know, bytes that do not decode).
//!
//! The steps are synchronous; the peer's sockets run on a runtime of its own, and each accepted connection is an
//! actor the steps reach through channels (what to send, what came).

use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::codec::Framed;

use super::driver::TransportKind;
use crate::codec::{self, DEFAULT_MAX_STANZA_BYTES, TcpFrameCodec};
use crate::net::SUBPROTOCOL;
use crate::proto::message_scheme::Payload;
use crate::proto::{Authenticate, Identity};

/// The identity the peer gives the client's session.
pub const CLIENT_EID: &str = "client@conform.example";
pub const CLIENT_DEVICE: &str = "adapter";

/// What the peer does on its own when a client connects.
#[derive(Clone, Copy, Debug)]
pub struct Script {
    /// Send an Authenticate RESPONSE (after the upgrade on WebSocket, after the client's Authenticate on TCP).
    pub auth_response: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script { auth_response: true }
    }
}

/// What the peer saw on a connection.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    Stanza(Box<Payload>),
    /// A frame that is no MessageScheme, and why.
    Undecodable(Vec<u8>, String),
    /// The client closed (its WebSocket close code, if it sent one) or the connection dropped.
    Closed(Option<u16>),
}

enum Action {
    Send(Vec<u8>),
    Close(u16),
    /// Ends the connection without a close handshake: a lost connection, as the client sees it.
    Drop,
}

/// One accepted connection.
pub struct PeerConn {
    actions: mpsc::UnboundedSender<Action>,
    seen: std_mpsc::Receiver<Seen>,
}

impl PeerConn {
    /// Sends bytes as one WebSocket binary message or one TCP frame.
    pub fn send_raw(&self, bytes: Vec<u8>) -> Result<(), String> {
        self.actions
            .send(Action::Send(bytes))
            .map_err(|_| "the client's connection is gone".to_string())
    }

    pub fn send(&self, payload: &Payload) -> Result<(), String> {
        self.send_raw(codec::encode(payload))
    }

    /// Closes the connection (with this WebSocket close code).
    pub fn close(&self, code: u16) {
        let _ = self.actions.send(Action::Close(code));
    }

    /// Drops the connection without a close handshake.
    pub fn drop_connection(&self) {
        let _ = self.actions.send(Action::Drop);
    }

    /// What came next, waiting at most `within`.
    pub fn next(&self, within: Duration) -> Option<Seen> {
        self.seen.recv_timeout(within).ok()
    }
}

/// The listener and its runtime.
pub struct Peer {
    /// Runs the listener and every connection; they end with it.
    _runtime: tokio::runtime::Runtime,
    transport: TransportKind,
    addr: SocketAddr,
    accepted: std_mpsc::Receiver<PeerConn>,
    script: std::sync::Arc<std::sync::Mutex<Script>>,
}

impl Peer {
    /// Listens on a free loopback port for `transport` (WebSocket or TCP; TLS is not offered).
    pub fn start(transport: TransportKind) -> Result<Peer, String> {
        if !matches!(transport, TransportKind::Ws | TransportKind::Tcp) {
            return Err(format!("the scripted peer offers ws and tcp, not {transport}"));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("conform-peer")
            .enable_all()
            .build()
            .map_err(|e| format!("peer runtime: {e}"))?;
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| format!("peer listener: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (tx, accepted) = std_mpsc::channel();
        let script = std::sync::Arc::new(std::sync::Mutex::new(Script::default()));
        let shared = std::sync::Arc::clone(&script);
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let script = *shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let (actions, rx) = mpsc::unbounded_channel();
                let (seen_tx, seen) = std_mpsc::channel();
                if tx.send(PeerConn { actions, seen }).is_err() {
                    return;
                }
                tokio::spawn(serve(stream, transport, script, rx, seen_tx));
            }
        });
        Ok(Peer {
            _runtime: runtime,
            transport,
            addr,
            accepted,
            script,
        })
    }

    /// The URL a client connects to.
    pub fn url(&self) -> String {
        match self.transport {
            TransportKind::Tcp => format!("tcp://{}", self.addr),
            _ => format!("ws://{}/ws", self.addr),
        }
    }

    pub fn transport(&self) -> TransportKind {
        self.transport
    }

    /// What the peer does with the connections it accepts from now on.
    pub fn script(&self, script: Script) {
        *self.script.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = script;
    }

    /// The next connection a client opened, waiting at most `within`.
    pub fn accept(&self, within: Duration) -> Option<PeerConn> {
        self.accepted.recv_timeout(within).ok()
    }
}

/// The Authenticate RESPONSE the peer sends.
pub fn auth_response(now: i64) -> Payload {
    Payload::Authenticate(Authenticate {
        identity: Some(Identity {
            eid: CLIENT_EID.into(),
            connection_resource_id: CLIENT_DEVICE.into(),
        }),
        r#type: 2,
        status: 1,
        timestamp: now,
        ping_interval_ms: 30_000,
        max_stanza_bytes: i64::try_from(DEFAULT_MAX_STANZA_BYTES).unwrap_or(i64::MAX),
        expires_at: now + 3_600_000,
        ..Authenticate::default()
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn seen_frame(bytes: &[u8]) -> Seen {
    match codec::decode(bytes, DEFAULT_MAX_STANZA_BYTES) {
        Ok(payload) => Seen::Stanza(Box::new(payload)),
        Err(e) => Seen::Undecodable(bytes.to_vec(), e.to_string()),
    }
}

async fn serve(
    stream: TcpStream,
    transport: TransportKind,
    script: Script,
    actions: mpsc::UnboundedReceiver<Action>,
    seen: std_mpsc::Sender<Seen>,
) {
    let _ = stream.set_nodelay(true);
    match transport {
        TransportKind::Tcp => serve_tcp(stream, script, actions, seen).await,
        _ => serve_ws(stream, script, actions, seen).await,
    }
}

async fn serve_tcp(
    stream: TcpStream,
    script: Script,
    mut actions: mpsc::UnboundedReceiver<Action>,
    seen: std_mpsc::Sender<Seen>,
) {
    let mut framed = Framed::new(stream, TcpFrameCodec::default());
    let mut answered = !script.auth_response;
    loop {
        tokio::select! {
            action = actions.recv() => match action {
                Some(Action::Send(bytes)) => {
                    if framed.send(Bytes::from(bytes)).await.is_err() {
                        let _ = seen.send(Seen::Closed(None));
                        return;
                    }
                }
                Some(Action::Close(_) | Action::Drop) | None => return,
            },
            frame = framed.next() => match frame {
                Some(Ok(bytes)) => {
                    let frame = seen_frame(&bytes);
                    // On TCP the client authenticates first; the answer follows its Authenticate (SPEC §3.3).
                    let first_auth = matches!(&frame, Seen::Stanza(p) if matches!(**p, Payload::Authenticate(_)));
                    let _ = seen.send(frame);
                    if first_auth && !answered {
                        answered = true;
                        let _ = framed.send(Bytes::from(codec::encode(&auth_response(now_ms())))).await;
                    }
                }
                Some(Err(_)) | None => {
                    let _ = seen.send(Seen::Closed(None));
                    return;
                }
            },
        }
    }
}

async fn serve_ws(
    stream: TcpStream,
    script: Script,
    mut actions: mpsc::UnboundedReceiver<Action>,
    seen: std_mpsc::Sender<Seen>,
) {
    // The subprotocol is chosen when the client offers it (SPEC TRN-4). tungstenite's callback returns the whole
    // HTTP error response.
    #[allow(clippy::result_large_err)]
    let choose = |request: &Request, mut response: Response| {
        let offered = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|p| p.trim() == SUBPROTOCOL));
        if offered {
            response
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static(SUBPROTOCOL));
        }
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, choose).await else {
        let _ = seen.send(Seen::Closed(None));
        return;
    };
    if script.auth_response {
        let response = codec::encode(&auth_response(now_ms()));
        if ws.send(Message::Binary(response.into())).await.is_err() {
            let _ = seen.send(Seen::Closed(None));
            return;
        }
    }
    loop {
        tokio::select! {
            action = actions.recv() => match action {
                Some(Action::Send(bytes)) => {
                    if ws.send(Message::Binary(bytes.into())).await.is_err() {
                        let _ = seen.send(Seen::Closed(None));
                        return;
                    }
                }
                Some(Action::Close(code)) => {
                    let frame = CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from_static("") };
                    let _ = ws.close(Some(frame)).await;
                    // Read the client's answer to the close, then end.
                    let _ = tokio::time::timeout(Duration::from_secs(2), async { while ws.next().await.is_some() {} }).await;
                    return;
                }
                Some(Action::Drop) | None => return,
            },
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let _ = seen.send(seen_frame(&bytes));
                }
                Some(Ok(Message::Text(text))) => {
                    let _ = seen.send(Seen::Undecodable(text.as_bytes().to_vec(), "a text frame".into()));
                }
                Some(Ok(Message::Close(frame))) => {
                    let _ = seen.send(Seen::Closed(frame.map(|f| u16::from(f.code))));
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    let _ = seen.send(Seen::Closed(None));
                    return;
                }
            },
        }
    }
}
