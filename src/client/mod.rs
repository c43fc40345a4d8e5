//! The reference client: connects over WebSocket or native TCP (each with or
//! without TLS), authenticates as SPEC §3 says for that transport, answers
//! server pings, and hands the caller typed events. The conformance suite and
//! the loopback tests drive servers through it, so it can also misbehave on
//! purpose: raw bytes, text frames, tokens in any location or none, no pongs.
//!
//! One I/O task per client owns the connection (`io.rs`); the [`Client`]
//! talks to it through channels. Every timestamp the client writes comes
//! from [`ClientOptions::clock`]; nothing here is random.

mod inbox;
mod io;
mod reconnect;
#[cfg(test)]
mod tests;
mod tls;
mod upgrade;

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri, header};
use tokio_tungstenite::tungstenite::{self, Error as WsError};

use crate::codec::{self, DEFAULT_MAX_STANZA_BYTES, ErrorKind};
use crate::core::{Millis, Transport};
use crate::net::{Clock, SUBPROTOCOL, SystemClock, ws_config};
use crate::proto::message_scheme::Payload;
use crate::proto::{Authenticate, ErrorMessage, Logout, PingPong};
use io::{Command, Settings};

pub use inbox::{Inbox, Received};
pub use reconnect::{Backoff, Ended, FIRST_WAIT, LONGEST_WAIT, Next};

/// Where the client puts the token of a WebSocket upgrade (SPEC §3.2). On
/// native TCP the token always travels in the Authenticate stanza, except
/// with [`TokenPlacement::None`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenPlacement {
    /// `Authorization: Bearer <jwt>`.
    #[default]
    AuthorizationHeader,
    /// `token: <jwt>`.
    TokenHeader,
    /// `token: Bearer <jwt>`.
    TokenHeaderBearer,
    /// `Authorization: bearer <jwt>`: the scheme in lower case (SPEC 3.2: matched case-insensitively).
    AuthorizationLowercase,
    /// `?token=<jwt>` in the request URL.
    Query,
    /// No token anywhere. On TCP: no Authenticate is sent and
    /// [`Client::connect`] returns at once, so a test can send any first frame.
    None,
}

/// How a [`Client`] behaves.
#[derive(Clone)]
pub struct ClientOptions {
    /// Limit for each step of connecting: dialing, TLS, the upgrade, and the
    /// wait for the first stanza.
    pub timeout: Duration,
    /// How long a close handshake may take before the client drops the socket.
    pub close_timeout: Duration,
    /// Answer server pings (SPEC PING-3). Off for tests of the ping timeout.
    pub auto_pong: bool,
    /// Also deliver the pings answered automatically as events.
    pub surface_pings: bool,
    /// Wait for the Authenticate RESPONSE in `connect`. On WebSocket a server
    /// may send none (SPEC TRN-17): then `connect` returns after `timeout`
    /// with no [`Session`]; turn this off to return right after the upgrade.
    pub await_session: bool,
    pub token_placement: TokenPlacement,
    /// Subprotocol offered in the upgrade. An answer that selects none is
    /// accepted (SPEC TRN-4 is a SHOULD); one that selects another fails.
    pub subprotocol: Option<String>,
    /// Largest stanza accepted from the server.
    pub max_stanza_bytes: usize,
    /// Certificates trusted as roots for `wss://` and `tls://`.
    pub tls_roots: Vec<CertificateDer<'static>>,
    /// Accept any server certificate (development against self-signed ones).
    pub insecure_skip_verify: bool,
    /// A complete rustls configuration; overrides the two fields above.
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
    /// The name to verify the certificate against; default: the URL's host.
    pub server_name: Option<String>,
    /// The clock of every timestamp the client sends.
    pub clock: Arc<dyn Clock>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(2),
            auto_pong: true,
            surface_pings: false,
            await_session: true,
            token_placement: TokenPlacement::default(),
            subprotocol: Some(SUBPROTOCOL.to_string()),
            max_stanza_bytes: DEFAULT_MAX_STANZA_BYTES,
            tls_roots: Vec::new(),
            insecure_skip_verify: false,
            tls_config: None,
            server_name: None,
            clock: Arc::new(SystemClock),
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("timeout", &self.timeout)
            .field("close_timeout", &self.close_timeout)
            .field("auto_pong", &self.auto_pong)
            .field("surface_pings", &self.surface_pings)
            .field("await_session", &self.await_session)
            .field("token_placement", &self.token_placement)
            .field("subprotocol", &self.subprotocol)
            .field("max_stanza_bytes", &self.max_stanza_bytes)
            .field("tls_roots", &self.tls_roots.len())
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("tls_config", &self.tls_config.is_some())
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// What the server said its session is (SPEC §2.5, the Authenticate RESPONSE).
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub eid: String,
    pub device: String,
    pub ping_interval_ms: Millis,
    pub max_stanza_bytes: i64,
    /// The token's exp, ms.
    pub expires_at: Millis,
    /// The server's clock when it answered, ms.
    pub timestamp: Millis,
    /// The stanza as received.
    pub response: Authenticate,
}

impl Session {
    fn from_response(response: Authenticate) -> Session {
        let identity = response.identity.clone().unwrap_or_default();
        Session {
            eid: identity.eid,
            device: identity.connection_resource_id,
            ping_interval_ms: response.ping_interval_ms,
            max_stanza_bytes: response.max_stanza_bytes,
            expires_at: response.expires_at,
            timestamp: response.timestamp,
            response,
        }
    }
}

/// Something the server did.
// Payload is a large enum (see `crate::proto`); boxing it would make every
// `match` on events in tests clumsier for a saving that does not matter here.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Stanza(Payload),
    /// A binary message or frame that is not a valid stanza.
    Undecodable(Vec<u8>),
    /// A WebSocket text message (servers never send one).
    Text(String),
    /// The connection ended. `code` is the WebSocket close code, when a Close
    /// frame came; `reason` its reason text, or how the connection ended.
    Closed {
        code: Option<u16>,
        reason: String,
    },
}

/// An HTTP answer that refused a WebSocket upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRefusal {
    pub status: u16,
    pub content_type: Option<String>,
    pub www_authenticate: Option<String>,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("WebSocket: {0}")]
    WebSocket(Box<WsError>),
    /// The server refused the connection: HTTP status and body kind on
    /// WebSocket, ErrorMessage code and message on TCP.
    #[error("refused: {code} {kind} ({details})")]
    Refused {
        code: u16,
        kind: String,
        details: String,
        http: Option<Box<HttpRefusal>>,
    },
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("connection closed (close code {code:?}): {reason}")]
    Closed { code: Option<u16>, reason: String },
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    #[error("not supported: {0}")]
    Unsupported(&'static str),
}

impl ClientError {
    /// The refusal's kind ("token_expired", ...), if this is a refusal.
    pub fn refused_kind(&self) -> Option<&str> {
        match self {
            ClientError::Refused { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

/// A connection to a BIMIP server. Dropping it drops the connection abruptly;
/// use [`Client::close`] or [`Client::logout`] to end it cleanly.
pub struct Client {
    commands: mpsc::Sender<Command>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Events already read but not yet handed out (skipped by `expect`).
    buffer: VecDeque<Event>,
    session: Option<Session>,
    subprotocol: Option<String>,
    transport: Transport,
    options: ClientOptions,
    task: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("transport", &self.transport)
            .field("session", &self.session)
            .field("subprotocol", &self.subprotocol)
            .finish_non_exhaustive()
    }
}

/// A parsed `ws://`, `wss://`, `tcp://` or `tls://` URL.
struct Target {
    uri: Uri,
    transport: Transport,
    tls: bool,
    host: String,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> Result<Target, ClientError> {
        let bad = |reason: &str| ClientError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: tungstenite::http::uri::InvalidUri| bad(&e.to_string()))?;
        let (transport, tls, default_port) = match uri.scheme_str() {
            Some("ws") => (Transport::WebSocket, false, Some(80)),
            Some("wss") => (Transport::WebSocket, true, Some(443)),
            Some("tcp") => (Transport::Tcp, false, None),
            Some("tls") => (Transport::Tcp, true, None),
            _ => return Err(bad("the scheme must be ws, wss, tcp or tls")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?.to_string();
        let port = uri
            .port_u16()
            .or(default_port)
            .ok_or_else(|| bad("tcp:// and tls:// need a port"))?;
        Ok(Target {
            uri,
            transport,
            tls,
            host,
            port,
        })
    }

    /// The host as a socket address wants it (IPv6 without brackets).
    fn dial_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

impl Client {
    /// Dials `url` (`ws://host:port/path`, `wss://...`, `tcp://host:port`,
    /// `tls://host:port`), authenticates with `token` and waits for the
    /// session (see [`ClientOptions::await_session`]).
    pub async fn connect(url: &str, token: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let target = Target::parse(url)?;
        let dial = tokio::net::TcpStream::connect((target.dial_host(), target.port));
        let stream = tokio::time::timeout(options.timeout, dial)
            .await
            .map_err(|_| ClientError::Timeout(format!("a TCP connection to {url}")))??;
        let _ = stream.set_nodelay(true);
        Client::over_stream(stream, url, token, options).await
    }

    /// Like [`Client::connect`] over a stream the caller opened (a turmoil
    /// stream, say). `url` still says the transport, TLS, host and path.
    pub async fn over_stream<S>(
        stream: S,
        url: &str,
        token: &str,
        options: ClientOptions,
    ) -> Result<Client, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let target = Target::parse(url)?;
        if !target.tls {
            return Client::start(stream, &target, token, options).await;
        }
        let config = tls::client_config(&options)?;
        let name = tls::server_name(options.server_name.as_deref().unwrap_or(&target.host))?;
        let handshake = tokio_rustls::TlsConnector::from(config).connect(name, stream);
        let stream = tokio::time::timeout(options.timeout, handshake)
            .await
            .map_err(|_| ClientError::Timeout("the TLS handshake".into()))?
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        Client::start(stream, &target, token, options).await
    }

    async fn start<S>(stream: S, target: &Target, token: &str, options: ClientOptions) -> Result<Client, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (commands, command_rx) = mpsc::channel(64);
        let (event_tx, events) = mpsc::unbounded_channel();
        let settings = Settings {
            auto_pong: options.auto_pong,
            surface_pings: options.surface_pings,
            clock: Arc::clone(&options.clock),
            max_stanza_bytes: options.max_stanza_bytes,
            close_timeout: options.close_timeout,
        };
        let (task, subprotocol) = match target.transport {
            Transport::WebSocket => {
                let request = ws_request(target, token, &options)?;
                let config = ws_config(options.max_stanza_bytes);
                let handshake = upgrade::upgrade(stream, request, config);
                let (ws, response) = match tokio::time::timeout(options.timeout, handshake).await {
                    Err(_) => return Err(ClientError::Timeout("the WebSocket upgrade".into())),
                    Ok(Err(WsError::Http(response))) => return Err(http_refusal(&response)),
                    Ok(Err(error)) => return Err(ClientError::WebSocket(Box::new(error))),
                    Ok(Ok(upgraded)) => upgraded,
                };
                let subprotocol = response
                    .headers()
                    .get(header::SEC_WEBSOCKET_PROTOCOL)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                (
                    tokio::spawn(io::run_ws(ws, command_rx, event_tx, settings)),
                    subprotocol,
                )
            }
            Transport::Tcp => (tokio::spawn(io::run_tcp(stream, command_rx, event_tx, settings)), None),
        };
        let mut client = Client {
            commands,
            events,
            buffer: VecDeque::new(),
            session: None,
            subprotocol,
            transport: target.transport,
            options,
            task,
        };
        let authenticating = client.options.token_placement != TokenPlacement::None;
        if target.transport == Transport::Tcp && authenticating {
            let now = client.now_ms();
            client
                .send(Payload::Authenticate(Authenticate {
                    token: token.to_string(),
                    r#type: 1,
                    timestamp: now,
                    ..Authenticate::default()
                }))
                .await?;
        }
        if authenticating && client.options.await_session {
            client.await_session().await?;
        }
        Ok(client)
    }

    /// Reads the first stanza: the Authenticate RESPONSE, or the refusal.
    async fn await_session(&mut self) -> Result<(), ClientError> {
        let on_ws = self.transport == Transport::WebSocket;
        let first = match tokio::time::timeout(self.options.timeout, self.next_event()).await {
            // SPEC TRN-17: on WebSocket the RESPONSE is optional.
            Err(_) if on_ws => return Ok(()),
            Err(_) => return Err(ClientError::Timeout("the Authenticate RESPONSE".into())),
            Ok(None) => {
                return Err(ClientError::Closed {
                    code: None,
                    reason: "ended before the first stanza".into(),
                });
            }
            Ok(Some(event)) => event,
        };
        match first {
            Event::Stanza(Payload::Authenticate(response)) if response.r#type == 2 => {
                self.session = Some(Session::from_response(response));
                Ok(())
            }
            Event::Stanza(Payload::ErrorMessage(error)) if !on_ws || is_fatal(&error) => Err(ClientError::Refused {
                code: u16::try_from(error.code).unwrap_or(0),
                kind: error.message,
                details: error.details,
                http: None,
            }),
            Event::Closed { code, reason } => Err(ClientError::Closed { code, reason }),
            other if on_ws => {
                self.buffer.push_back(other);
                Ok(())
            }
            other => Err(ClientError::Protocol(format!(
                "the first stanza on TCP must be the Authenticate RESPONSE, got {other:?}"
            ))),
        }
    }

    /// The session the server announced, if it did.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// The subprotocol the server selected in its upgrade answer.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The client clock's current time, ms.
    pub fn now_ms(&self) -> Millis {
        self.options.clock.now_ms()
    }

    /// Sends a stanza, encoded canonically with the route of its payload.
    pub async fn send(&self, payload: Payload) -> Result<(), ClientError> {
        self.send_raw(codec::encode(&payload)).await
    }

    /// Sends any bytes as one WebSocket binary message or one TCP frame.
    pub async fn send_raw(&self, bytes: impl Into<Bytes>) -> Result<(), ClientError> {
        self.command(|ack| Command::Stanza(bytes.into(), ack)).await
    }

    /// Sends a WebSocket text message (an error on TCP).
    pub async fn send_text(&self, text: impl Into<String>) -> Result<(), ClientError> {
        self.command(|ack| Command::Text(text.into(), ack)).await
    }

    /// Writes bytes to a TCP connection as they are, with no length prefix:
    /// for frames split or joined at will, or bogus length headers (an error
    /// on WebSocket).
    pub async fn send_wire(&self, bytes: impl Into<Bytes>) -> Result<(), ClientError> {
        self.command(|ack| Command::Wire(bytes.into(), ack)).await
    }

    async fn command(&self, make: impl FnOnce(io::Ack) -> Command) -> Result<(), ClientError> {
        let closed = || ClientError::Closed {
            code: None,
            reason: "the connection has ended".into(),
        };
        let (ack, done) = oneshot::channel();
        self.commands.send(make(ack)).await.map_err(|_| closed())?;
        done.await.map_err(|_| closed())?
    }

    /// The next event; `None` after [`Event::Closed`] has been handed out.
    pub async fn next_event(&mut self) -> Option<Event> {
        match self.buffer.pop_front() {
            Some(event) => Some(event),
            None => self.events.recv().await,
        }
    }

    /// The first stanza satisfying `wanted`, within `timeout`. Events before
    /// it stay queued for [`Client::next_event`]; if the connection closes
    /// first, the error says how (and the Closed event stays queued too).
    pub async fn expect(
        &mut self,
        mut wanted: impl FnMut(&Payload) -> bool,
        timeout: Duration,
    ) -> Result<Payload, ClientError> {
        let found = self
            .buffer
            .iter()
            .position(|event| matches!(event, Event::Stanza(payload) if wanted(payload)));
        if let Some(Some(Event::Stanza(payload))) = found.map(|i| self.buffer.remove(i)) {
            return Ok(payload);
        }
        if let Some(error) = self.closed_in_buffer() {
            return Err(error);
        }
        let wait = async {
            loop {
                match self.events.recv().await {
                    Some(Event::Stanza(payload)) if wanted(&payload) => return Ok(payload),
                    Some(event) => {
                        let closed = match &event {
                            Event::Closed { code, reason } => Some(ClientError::Closed {
                                code: *code,
                                reason: reason.clone(),
                            }),
                            _ => None,
                        };
                        self.buffer.push_back(event);
                        if let Some(error) = closed {
                            return Err(error);
                        }
                    }
                    None => {
                        return Err(ClientError::Closed {
                            code: None,
                            reason: "the connection has ended".into(),
                        });
                    }
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| ClientError::Timeout("a matching stanza".into()))?
    }

    /// The first ErrorMessage of kind `kind` ("malformed", ...).
    pub async fn expect_error(&mut self, kind: &str, timeout: Duration) -> Result<ErrorMessage, ClientError> {
        let found = self
            .expect(|p| matches!(p, Payload::ErrorMessage(e) if e.message == kind), timeout)
            .await?;
        match found {
            Payload::ErrorMessage(error) => Ok(error),
            other => Err(ClientError::Protocol(format!(
                "expected an ErrorMessage, got {other:?}"
            ))),
        }
    }

    /// Waits until the connection ends; returns the close code and reason.
    /// Stanzas that arrive first stay queued.
    pub async fn expect_closed(&mut self, timeout: Duration) -> Result<(Option<u16>, String), ClientError> {
        let position = self.buffer.iter().position(|e| matches!(e, Event::Closed { .. }));
        if let Some(Some(Event::Closed { code, reason })) = position.map(|i| self.buffer.remove(i)) {
            return Ok((code, reason));
        }
        let wait = async {
            loop {
                match self.events.recv().await {
                    Some(Event::Closed { code, reason }) => return (code, reason),
                    Some(event) => self.buffer.push_back(event),
                    None => return (None, "the connection has ended".to_string()),
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| ClientError::Timeout("the connection to close".into()))
    }

    /// Pings the server and waits for its pong (SPEC PING-1).
    pub async fn ping(&mut self, id: &str) -> Result<PingPong, ClientError> {
        let ping = PingPong {
            r#type: 1,
            status: 1,
            request_time: self.now_ms(),
            id: id.to_string(),
            ..PingPong::default()
        };
        self.send(Payload::PingpongMessage(ping)).await?;
        let timeout = self.options.timeout;
        match self
            .expect(
                |p| matches!(p, Payload::PingpongMessage(pong) if pong.r#type == 2 && pong.id == id),
                timeout,
            )
            .await?
        {
            Payload::PingpongMessage(pong) => Ok(pong),
            other => Err(ClientError::Protocol(format!("expected a pong, got {other:?}"))),
        }
    }

    /// Logs out (SPEC §9): sends Logout REQUEST, waits for the RESPONSE and
    /// for the server to close. Returns the RESPONSE and the close code.
    pub async fn logout(&mut self) -> Result<(Logout, Option<u16>), ClientError> {
        let now = self.now_ms();
        self.send(Payload::Logout(Logout {
            r#type: 1,
            timestamp: now,
            ..Logout::default()
        }))
        .await?;
        let timeout = self.options.timeout;
        let response = match self
            .expect(|p| matches!(p, Payload::Logout(l) if l.r#type == 2), timeout)
            .await?
        {
            Payload::Logout(response) => response,
            other => return Err(ClientError::Protocol(format!("expected Logout, got {other:?}"))),
        };
        let (code, _) = self.expect_closed(timeout + self.options.close_timeout).await?;
        Ok((response, code))
    }

    /// Closes the connection (WebSocket Close 1000; TCP FIN) and waits for the
    /// server to finish closing. Returns the close code the server answered.
    pub async fn close(&mut self) -> Result<Option<u16>, ClientError> {
        // A connection that already ended has nothing left to close.
        let _ = self.command(|ack| Command::Close(1000, ack)).await;
        let timeout = self.options.close_timeout + Duration::from_millis(500);
        Ok(self.expect_closed(timeout).await?.0)
    }

    fn closed_in_buffer(&self) -> Option<ClientError> {
        self.buffer.iter().find_map(|event| match event {
            Event::Closed { code, reason } => Some(ClientError::Closed {
                code: *code,
                reason: reason.clone(),
            }),
            _ => None,
        })
    }
}

impl Stream for Client {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = self.get_mut();
        match this.buffer.pop_front() {
            Some(event) => Poll::Ready(Some(event)),
            None => this.events.poll_recv(cx),
        }
    }
}

/// An ErrorMessage ends the connection when its kind is fatal; a kind this
/// client does not know is judged by its code (SPEC ERR-7: 401 never lets a
/// session start).
fn is_fatal(error: &ErrorMessage) -> bool {
    ErrorKind::from_name(&error.message).map_or(error.code == 401, ErrorKind::is_fatal)
}

/// The upgrade request, with the token where `options` say.
fn ws_request(
    target: &Target,
    token: &str,
    options: &ClientOptions,
) -> Result<tungstenite::handshake::client::Request, ClientError> {
    let mut uri = target.uri.clone();
    if options.token_placement == TokenPlacement::Query {
        let path = target.uri.path();
        let query = match target.uri.query() {
            Some(query) => format!("{query}&token={}", query_encode(token)),
            None => format!("token={}", query_encode(token)),
        };
        let authority = target.uri.authority().map(|a| a.as_str()).unwrap_or(&target.host);
        let scheme = target.uri.scheme_str().unwrap_or("ws");
        uri = format!("{scheme}://{authority}{path}?{query}").parse().map_err(
            |e: tungstenite::http::uri::InvalidUri| ClientError::Url {
                url: target.uri.to_string(),
                reason: e.to_string(),
            },
        )?;
    }
    let mut request = uri
        .into_client_request()
        .map_err(|e| ClientError::WebSocket(Box::new(e)))?;
    let header_value = |value: String| {
        HeaderValue::from_str(&value).map_err(|e| ClientError::Url {
            url: target.uri.to_string(),
            reason: format!("the token cannot be a header value: {e}"),
        })
    };
    let headers = request.headers_mut();
    match options.token_placement {
        TokenPlacement::AuthorizationHeader => {
            headers.insert(header::AUTHORIZATION, header_value(format!("Bearer {token}"))?);
        }
        TokenPlacement::TokenHeader => {
            headers.insert("token", header_value(token.to_string())?);
        }
        TokenPlacement::TokenHeaderBearer => {
            headers.insert("token", header_value(format!("Bearer {token}"))?);
        }
        TokenPlacement::AuthorizationLowercase => {
            headers.insert(header::AUTHORIZATION, header_value(format!("bearer {token}"))?);
        }
        TokenPlacement::Query | TokenPlacement::None => {}
    }
    if let Some(subprotocol) = &options.subprotocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, header_value(subprotocol.clone())?);
    }
    Ok(request)
}

/// Percent-encodes everything but RFC 3986's unreserved characters (a JWT
/// is all unreserved, but a test may send anything).
fn query_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn http_refusal(response: &tungstenite::http::Response<Option<Vec<u8>>>) -> ClientError {
    let header_text = |name: header::HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let body = response
        .body()
        .as_deref()
        .map(|b| String::from_utf8_lossy(b).trim().to_string())
        .unwrap_or_default();
    let status = response.status().as_u16();
    ClientError::Refused {
        code: status,
        kind: body.clone(),
        details: format!("HTTP {} instead of the upgrade", response.status()),
        http: Some(Box::new(HttpRefusal {
            status,
            content_type: header_text(header::CONTENT_TYPE),
            www_authenticate: header_text(header::WWW_AUTHENTICATE),
            body,
        })),
    }
}
