//! The seam between the steps and a server: a synchronous [`Driver`] that
//! opens named connections, sends stanzas (well-formed or not), hands out what
//! the server did, lets time pass, and keeps a timestamped transcript.
//!
//! Two drivers implement it: [`crate::conformance::sim::SimDriver`] (the
//! reference server and every client as turmoil hosts, in simulated time) and
//! [`crate::conformance::network::NetworkDriver`] (real sockets to any
//! target). Both run each connection as one task around the reference
//! [`Client`] ([`run_connection`]), so they differ only in how time passes.

pub use super::lifecycle::Restart;
use super::tap::{Framing, TapHandle};
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::client::{Client, ClientError, ClientOptions, Event, HttpRefusal, TokenPlacement};
use crate::codec::{self, describe};
use crate::core::Millis;
use crate::core::auth::{Algorithm, Claims, Signer};
use crate::net::Clock;
use crate::proto::message_scheme::Payload;
use crate::proto::{Authenticate, ErrorMessage};

/// The transport of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    #[serde(rename = "websocket")]
    Ws,
    Tcp,
}

impl TransportKind {
    pub const ALL: [TransportKind; 2] = [TransportKind::Ws, TransportKind::Tcp];
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Ws => "websocket",
            TransportKind::Tcp => "tcp",
        })
    }
}

/// Which token a connection presents. Revocation by logout is a flow (log
/// out, then connect with [`TokenKind::Given`] the old token), not a kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// Valid for an hour.
    Valid,
    /// Valid, expiring this many seconds from now.
    ShortLived(i64),
    /// exp in the past.
    Expired,
    /// nbf in the future.
    NotYetValid,
    /// A valid token whose signature was altered.
    BadSignature,
    /// A valid token's claims under the header `{"alg":"none"}`, no signature.
    AlgNone,
    /// Not a JWT at all.
    Malformed,
    /// Signed, but without this claim.
    MissingClaim(String),
    /// Signed, from a valid token's claims (an expired one's with `expired`) with these changed (AUTH-5, AUTH-8).
    Edited {
        expired: bool,
        claims: Vec<(String, ClaimEdit)>,
    },
    /// No token: on WebSocket none in the upgrade; on TCP no Authenticate is
    /// sent, so the steps decide the first frame.
    Missing,
    /// This exact token.
    Given(String),
}

impl TokenKind {
    /// The kind in words, for messages.
    pub fn describe(&self) -> String {
        match self {
            TokenKind::Valid => "a valid token".into(),
            TokenKind::ShortLived(s) => format!("a token valid for {s} seconds"),
            TokenKind::Expired => "an expired token".into(),
            TokenKind::NotYetValid => "a not-yet-valid token".into(),
            TokenKind::BadSignature => "a token with a bad signature".into(),
            TokenKind::AlgNone => "an unsigned token".into(),
            TokenKind::Malformed => "a malformed token".into(),
            TokenKind::MissingClaim(c) => format!("a token without the {c:?} claim"),
            TokenKind::Edited { expired, claims } => {
                let edits: Vec<String> = claims.iter().map(|(name, edit)| format!("{name:?} {edit}")).collect();
                let base = if *expired { "an expired token" } else { "a token" };
                format!("{base} with {}", edits.join(", "))
            }
            TokenKind::Missing => "no token".into(),
            TokenKind::Given(_) => "a given token".into(),
        }
    }

    /// Kinds that need the signing key (the suite mints them itself).
    pub fn needs_key(&self) -> bool {
        matches!(
            self,
            TokenKind::ShortLived(_)
                | TokenKind::Expired
                | TokenKind::NotYetValid
                | TokenKind::MissingClaim(_)
                | TokenKind::Edited { .. }
        )
    }
}

/// One claim's change in a [`TokenKind::Edited`] token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimEdit {
    Remove,
    /// This JSON value, whatever its type.
    Set(serde_json::Value),
    /// A NumericDate this many seconds from the time of minting.
    SecondsFromNow(i64),
}

impl fmt::Display for ClaimEdit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimEdit::Remove => f.write_str("removed"),
            ClaimEdit::Set(value) => write!(f, "= {value}"),
            ClaimEdit::SecondsFromNow(s) => write!(f, "= now {s:+} s"),
        }
    }
}

/// How to open one connection.
#[derive(Clone, Debug)]
pub struct ConnectSpec {
    pub eid: String,
    pub device: String,
    pub transport: TransportKind,
    pub token: TokenKind,
    /// Where a WebSocket upgrade carries the token.
    pub placement: TokenPlacement,
    /// Appended to the WebSocket URL's query (for token-location tests).
    pub extra_query: Option<String>,
    /// Answer server pings (SPEC PING-3).
    pub auto_pong: bool,
    /// Hand out server pings as events too.
    pub surface_pings: bool,
}

impl ConnectSpec {
    pub fn new(eid: &str, device: &str, transport: TransportKind) -> Self {
        ConnectSpec {
            eid: eid.to_string(),
            device: device.to_string(),
            transport,
            token: TokenKind::Valid,
            placement: TokenPlacement::AuthorizationHeader,
            extra_query: None,
            auto_pong: true,
            surface_pings: false,
        }
    }
}

/// A session the server opened.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionInfo {
    /// The Authenticate RESPONSE (optional on WebSocket, SPEC TRN-16).
    pub response: Option<Authenticate>,
    /// The subprotocol the server selected (WebSocket).
    pub subprotocol: Option<String>,
    /// The token presented.
    pub token: String,
}

/// A connection the server refused.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// HTTP status (WebSocket) or ErrorMessage code (TCP).
    pub code: u16,
    /// HTTP body or ErrorMessage kind.
    pub kind: String,
    /// The HTTP answer, on WebSocket.
    pub http: Option<HttpRefusal>,
    /// The ErrorMessage, on TCP.
    pub error: Option<ErrorMessage>,
    /// TCP: the server closed the connection after the ErrorMessage.
    pub closed: bool,
    pub token: String,
}

/// What came of [`Driver::connect`].
#[derive(Clone, Debug, PartialEq)]
pub enum ConnectOutcome {
    Session(SessionInfo),
    Refused(Refusal),
    /// TCP without a token: connected, nothing sent yet.
    Opened,
}

impl fmt::Display for ConnectOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectOutcome::Session(s) => match &s.response {
                Some(_) => f.write_str("a session, with its Authenticate RESPONSE"),
                None => f.write_str("a session"),
            },
            ConnectOutcome::Refused(refusal) => write!(f, "refused: {refusal}"),
            ConnectOutcome::Opened => f.write_str("connected, with nothing sent and nothing answered yet"),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.http, &self.error) {
            (Some(http), _) => write!(f, "HTTP {} with the body {:?}", self.code, http.body)?,
            (None, Some(error)) => write!(
                f,
                "{}",
                describe_bytes(&crate::codec::encode(&Payload::ErrorMessage(error.clone())))
            )?,
            (None, None) => write!(f, "{} {}", self.code, self.kind)?,
        }
        if self.closed {
            f.write_str(", then closed")?;
        }
        Ok(())
    }
}

/// A scenario cannot run against this target; the reason says why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("skipped: {0}")]
pub struct Skip(pub String);

/// What came back for a raw HTTP request ([`Driver::http`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAnswer {
    pub bytes: Vec<u8>,
    /// The server closed the connection (within the timeout).
    pub closed: bool,
}

impl HttpAnswer {
    /// The status code of the answer's status line (`HTTP/1.1 400 Bad Request`), if it has one.
    pub fn status(&self) -> Option<u16> {
        let line = self.bytes.split(|b| *b == b'\n').next()?;
        let line = std::str::from_utf8(line).ok()?;
        let mut words = line.split_whitespace();
        words.next().filter(|w| w.starts_with("HTTP/"))?;
        words.next()?.parse().ok()
    }
}

/// A raw HTTP answer for the transcript: its head, and whether the connection closed.
pub fn describe_answer(answer: &HttpAnswer) -> String {
    let text = String::from_utf8_lossy(&answer.bytes);
    let head = text.split("\r\n\r\n").next().unwrap_or_default().replace("\r\n", " | ");
    let end = if answer.closed { "then closed" } else { "still open" };
    format!("answered {} bytes: {head} ({end})", answer.bytes.len())
}

/// Sends `request` on `stream` and reads until the peer closes it or `timeout`.
pub async fn http_exchange<S>(mut stream: S, request: &[u8], timeout: Duration) -> std::io::Result<HttpAnswer>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request).await?;
    let mut bytes = Vec::new();
    let closed = match tokio::time::timeout(timeout, stream.read_to_end(&mut bytes)).await {
        Ok(Ok(_)) => true,
        // A reset after the answer is a close too (the server may close with unread input).
        Ok(Err(error)) if !bytes.is_empty() && error.kind() == std::io::ErrorKind::ConnectionReset => true,
        Ok(Err(error)) => return Err(error),
        Err(_) => false,
    };
    Ok(HttpAnswer { bytes, closed })
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Skip(#[from] Skip),
    #[error("connecting {name}: {error}")]
    Connect { name: String, error: String },
    #[error("no connection named {0}")]
    NoSuchConnection(String),
    #[error("{0}")]
    Other(String),
}

/// Server settings a scenario may need. Only the simulation can change them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerTweak {
    /// The server verifies RS256 tokens (SPEC AUTH-1).
    Rs256,
    /// The server has no key to sign refreshed tokens with (SPEC TOK-10).
    NoSigningKey,
}

/// What the suite knows about the target besides what it announces.
#[derive(Clone, Debug)]
pub struct TargetInfo {
    /// The ping interval, when the Authenticate RESPONSE does not say.
    pub ping_interval: Duration,
    /// The TCP auth deadline (SPEC TRN-12).
    pub auth_deadline: Duration,
    /// The receiver queue limit, when it is small enough to reach.
    pub queue_max_items: Option<usize>,
    /// Sessions per EID (SPEC SES-3).
    pub max_sessions_per_eid: usize,
    /// Longest wait for something expected.
    pub timeout: Duration,
    /// How long "nothing arrives" is watched by the step that says so.
    pub quiet: Duration,
    /// How long an absence is watched in all before the case acts again or
    /// ends (at least 1 s against a target over the network).
    pub settle: Duration,
    /// Allowed difference between the server's clock and the suite's, ms.
    pub clock_tolerance_ms: Millis,
    /// Allowed lateness of the server's timers, ms.
    pub timer_tolerance_ms: Millis,
    /// How much later than an event on another connection the suite may see
    /// one the server sent first, ms: two sockets are read by two tasks.
    pub order_slack_ms: u64,
    /// The target's token leeway (SPEC AUTH-6, at most 60 s): a session may
    /// outlive its token's exp by this much (`--leeway`).
    pub leeway: Duration,
    /// Routes the target does not implement on purpose (`--without-route`):
    /// a case that sends one is not applicable.
    pub without_routes: Vec<i64>,
}

impl Default for TargetInfo {
    fn default() -> Self {
        TargetInfo {
            ping_interval: Duration::from_secs(30),
            auth_deadline: Duration::from_secs(10),
            queue_max_items: None,
            max_sessions_per_eid: 10,
            timeout: Duration::from_secs(5),
            quiet: Duration::from_millis(300),
            settle: Duration::from_secs(1),
            clock_tolerance_ms: 120_000,
            timer_tolerance_ms: 1_000,
            order_slack_ms: 20,
            leeway: Duration::ZERO,
            without_routes: Vec::new(),
        }
    }
}

/// One line of a transcript.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Entry {
    /// ms since the case started.
    pub at_ms: u64,
    /// The connection, "alice/phone".
    pub conn: String,
    /// "->" sent, "<-" received, "--" a note (connect, close).
    pub dir: &'static str,
    pub text: String,
}

/// Every stanza sent and received in a case, per connection, with times.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Transcript {
    pub entries: Vec<Entry>,
    /// Routes SPEC defines that the server answered with 501 unknown_route.
    pub unknown_routes: Vec<i64>,
}

impl Transcript {
    /// Records a command a step gave a connection.
    pub fn command(&mut self, at_ms: u64, conn: &str, command: &Command) {
        match command {
            Command::Stanza(bytes) => self.sent(at_ms, conn, bytes),
            Command::Burst(stanzas) => {
                self.note(at_ms, conn, format!("a burst of {} stanzas:", stanzas.len()));
                for bytes in stanzas {
                    self.sent(at_ms, conn, bytes);
                }
            }
            Command::Wire(bytes) => self.note(
                at_ms,
                conn,
                format!("wrote {} raw bytes {}", bytes.len(), hex::encode(bytes)),
            ),
            Command::Text(text) => self.note(at_ms, conn, format!("sent text message {text:?}")),
            Command::Close => self.note(at_ms, conn, "client closes"),
        }
    }

    pub fn note(&mut self, at_ms: u64, conn: &str, text: impl Into<String>) {
        self.push(at_ms, conn, "--", text.into());
    }

    /// Notes how opening `conn` ended, and turns a failure into the drivers' error.
    /// Records how a raw HTTP request ([`Driver::http`]) went; a failure is a failed connect.
    pub fn http_answered(&mut self, at_ms: u64, answer: Result<HttpAnswer, String>) -> Result<HttpAnswer, DriverError> {
        match answer {
            Ok(answer) => {
                self.note(at_ms, "http", describe_answer(&answer));
                Ok(answer)
            }
            Err(error) => {
                self.note(at_ms, "http", format!("request failed: {error}"));
                Err(DriverError::Connect {
                    name: "http".into(),
                    error,
                })
            }
        }
    }

    pub fn connected(
        &mut self,
        at_ms: u64,
        conn: &str,
        outcome: Result<ConnectOutcome, String>,
    ) -> Result<ConnectOutcome, DriverError> {
        match outcome {
            Ok(outcome) => {
                self.note(at_ms, conn, describe_outcome(&outcome));
                Ok(outcome)
            }
            Err(error) => {
                self.note(at_ms, conn, format!("connect failed: {error}"));
                Err(DriverError::Connect {
                    name: conn.to_string(),
                    error,
                })
            }
        }
    }

    pub fn sent(&mut self, at_ms: u64, conn: &str, bytes: &[u8]) {
        self.push(at_ms, conn, "->", describe_bytes(bytes));
    }

    pub fn received(&mut self, at_ms: u64, conn: &str, event: &Event) {
        if let Event::Stanza(Payload::ErrorMessage(e)) = event
            && e.code == 501
            && let Ok(route) = e.route.parse::<i64>()
            && (2..=27).contains(&route)
        {
            self.unknown_routes.push(route);
        }
        let text = match event {
            Event::Stanza(payload) => describe_bytes(&codec::encode(payload)),
            Event::Undecodable(bytes) => format!("undecodable {} ({})", hex::encode(bytes), describe(bytes).envelope),
            Event::Text(text) => format!("text message {text:?}"),
            Event::Closed { code, reason } => match code {
                Some(code) => format!("closed with code {code} ({reason})"),
                None => format!("closed without a close code ({reason})"),
            },
        };
        let dir = if matches!(event, Event::Closed { .. }) {
            "--"
        } else {
            "<-"
        };
        self.push(at_ms, conn, dir, text);
    }

    fn push(&mut self, at_ms: u64, conn: &str, dir: &'static str, text: String) {
        self.entries.push(Entry {
            at_ms,
            conn: conn.to_string(),
            dir,
            text,
        });
    }

    /// The entries in time order (stable for equal times).
    pub fn sorted(&self) -> Vec<&Entry> {
        let mut entries: Vec<&Entry> = self.entries.iter().collect();
        entries.sort_by_key(|e| e.at_ms);
        entries
    }

    /// Readable lines, one per entry (long transcripts keep their first 20
    /// and last 60 entries; `render_all` has every one).
    pub fn render(&self) -> String {
        self.render_limited(20, 60)
    }

    /// Every entry, one line each.
    pub fn render_all(&self) -> String {
        self.render_limited(usize::MAX, 0)
    }

    fn render_limited(&self, head: usize, tail: usize) -> String {
        let entries = self.sorted();
        let line = |e: &Entry| format!("{:>8} ms  {:<16} {} {}\n", e.at_ms, e.conn, e.dir, e.text);
        if entries.len() <= head.saturating_add(tail) {
            return entries.iter().map(|e| line(e)).collect();
        }
        let mut out: String = entries[..head].iter().map(|e| line(e)).collect();
        out.push_str(&format!("     ... {} more entries ...\n", entries.len() - head - tail));
        out.extend(entries[entries.len() - tail..].iter().map(|e| line(e)));
        out
    }

    /// Whether the server answered 501 `unknown_route` to a stanza on a
    /// route SPEC defines: the mark of an unimplemented feature (ENV-6).
    pub fn saw_unimplemented_route(&self) -> bool {
        !self.unknown_routes.is_empty()
    }
}

/// `route N Message {json}` for bytes (the envelope verdict when it fails).
pub fn describe_bytes(bytes: &[u8]) -> String {
    let d = describe(bytes);
    let fields = d
        .fields
        .map(|mut f| {
            redact_tokens(&mut f);
            f.to_string()
        })
        .unwrap_or_default();
    let mut text = match (d.route, d.payload) {
        (Some(route), Some(payload)) => format!("route {route} {payload} {fields}"),
        (Some(route), None) => format!("route {route}, no payload {fields}"),
        _ => format!("{} bytes {}", bytes.len(), abbreviate_hex(bytes)),
    };
    if d.envelope != "ok" {
        text.push_str(&format!(" [{}]", d.envelope));
    }
    if text.len() > 600 {
        let cut = (0..=600).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// Replaces every `token` string in a stanza's JSON by its first and last characters and its length: a report
/// (a CI log, an HTML page someone shares) must never carry a usable credential.
pub fn redact_tokens(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                match field {
                    serde_json::Value::String(token) if key == "token" && !token.is_empty() => {
                        *token = abbreviate_secret(token);
                    }
                    other => redact_tokens(other),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_tokens),
        _ => {}
    }
}

/// `eyJ0eX...Ks (212 chars)`: enough to tell two tokens apart, not enough to use one.
pub fn abbreviate_secret(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() <= 12 {
        return format!("({} chars)", chars.len());
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}...{tail} ({} chars)", chars.len())
}

fn abbreviate_hex(bytes: &[u8]) -> String {
    if bytes.len() <= 48 {
        hex::encode(bytes)
    } else {
        format!("{}...", hex::encode(&bytes[..48]))
    }
}

/// The interface every step is written against.
pub trait Driver {
    /// "simulation" or "network".
    fn kind(&self) -> &'static str;

    /// What the suite knows about the target.
    fn info(&self) -> &TargetInfo;

    /// Changes a server setting before the case's first connection.
    fn configure(&mut self, tweak: ServerTweak) -> Result<(), Skip>;

    /// A token for (eid, device) of the given kind.
    fn token(&mut self, eid: &str, device: &str, kind: &TokenKind) -> Result<String, Skip>;

    /// Opens the connection `name` (a transcript label like "alice/phone").
    fn connect(&mut self, name: &str, spec: &ConnectSpec) -> Result<ConnectOutcome, DriverError>;

    /// Sends one stanza, encoded canonically.
    fn send(&mut self, name: &str, payload: &Payload) -> Result<(), DriverError> {
        self.send_raw(name, codec::encode(payload))
    }

    /// Hands `command` to connection `name`'s client task and notes it in the
    /// transcript: the one way the drivers send anything.
    fn command(&mut self, name: &str, command: Command) -> Result<(), DriverError>;

    /// Sends any bytes as one WebSocket binary message or one TCP frame.
    fn send_raw(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), DriverError> {
        self.command(name, Command::Stanza(bytes))
    }

    /// Sends stanzas as one burst: all handed to the connection at once, so
    /// they leave together (in simulation, within a tick or two).
    fn send_burst(&mut self, name: &str, stanzas: Vec<Vec<u8>>) -> Result<(), DriverError> {
        self.command(name, Command::Burst(stanzas))
    }

    /// Writes bytes to a TCP connection as they are (no length prefix).
    fn send_wire(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), DriverError> {
        self.command(name, Command::Wire(bytes))
    }

    /// Sends a WebSocket text message.
    fn send_text(&mut self, name: &str, text: &str) -> Result<(), DriverError> {
        self.command(name, Command::Text(text.to_string()))
    }

    /// Sends `request` as it is (with the listener's path for `$path`) to the WebSocket listener, on a TCP
    /// connection of its own, and reads the answer until the server closes it or the target's timeout (SPEC
    /// TRN-18).
    fn http(&mut self, request: &[u8]) -> Result<HttpAnswer, DriverError> {
        let _ = request;
        Err(Skip("this driver sends no raw HTTP requests".into()).into())
    }

    /// The next event of `name`, waiting at most `within` (simulated time in
    /// the simulation, real time on the network).
    fn next(&mut self, name: &str, within: Duration) -> Option<Event>;

    /// When the event `next` last handed out for `name` arrived, ms since
    /// the case started (arrival order across connections, SES-1, TOK-6).
    fn arrived_ms(&self, name: &str) -> Option<u64>;

    /// Lets time pass.
    fn wait(&mut self, duration: Duration);

    /// Closes `name` from the client side and waits for the close to finish.
    fn close(&mut self, name: &str);

    /// The suite's clock, ms since the Unix epoch (the server's, in simulation).
    fn now_ms(&self) -> Millis;

    /// ms since the case started.
    fn elapsed_ms(&self) -> u64;

    fn transcript(&self) -> &Transcript;

    /// The raw-byte tap of `name` (see `tap.rs`).
    fn tap(&self, name: &str) -> Option<TapHandle>;

    /// Takes the server down and up again (`lifecycle.rs`) and returns once it accepts connections; every
    /// session of the case ends. `Skip` when the target cannot be restarted that way.
    fn restart(&mut self, how: Restart) -> Result<(), DriverError>;

    /// Client mode's scripted peer and client under test (`client_mode.rs`); `None` for the drivers that check
    /// a server.
    fn client_mode(&mut self) -> Option<&mut super::client_mode::Harness> {
        None
    }
}

/// Makes one driver per case.
pub trait DriverFactory {
    fn make(&self, case: u64) -> Result<Box<dyn Driver>, String>;

    /// Suffix that keeps the EIDs of different cases apart on a shared server.
    fn eid_suffix(&self, case: u64) -> String;

    /// Whether the target still answers, asked after a case could not connect: `Err` says why not, and the
    /// run stops there instead of failing every case after it.
    fn alive(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Where tokens come from.
#[derive(Clone)]
pub enum Credentials {
    /// The suite signs them itself.
    Key(Arc<Signer>),
    /// `sh -c CMD` with `{eid}` and `{device}` replaced; stdout is the token.
    Command(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Key(signer) => write!(f, "Key({})", signer.algorithm()),
            Credentials::Command(cmd) => write!(f, "Command({cmd:?})"),
        }
    }
}

static JTI: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Credentials {
    pub fn algorithm(&self) -> Option<Algorithm> {
        match self {
            Credentials::Key(signer) => Some(signer.algorithm()),
            Credentials::Command(_) => None,
        }
    }

    /// A token of `kind` for (eid, device) at `now_ms`.
    pub fn token(&self, eid: &str, device: &str, kind: &TokenKind, now_ms: Millis) -> Result<String, Skip> {
        let now = now_ms.div_euclid(1000);
        let claims = |lifetime: i64| Claims {
            eid: eid.to_string(),
            device_id: device.to_string(),
            jti: format!(
                "conform-{now_ms:x}-{}",
                JTI.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            iat: now,
            exp: now + lifetime,
            ..Claims::default()
        };
        let signer = match (self, kind.needs_key()) {
            (Credentials::Key(signer), _) => Some(signer),
            (Credentials::Command(_), true) => {
                return Err(Skip(format!(
                    "the suite must mint {} itself: give --jwt-key instead of --token-cmd",
                    kind.describe()
                )));
            }
            (Credentials::Command(_), false) => None,
        };
        let mint = |claims: &Claims| -> Result<String, Skip> {
            match signer {
                Some(signer) => signer.mint(claims).map_err(|e| Skip(format!("minting a token: {e}"))),
                None => self.run_command(eid, device),
            }
        };
        match kind {
            TokenKind::Valid => mint(&claims(3600)),
            TokenKind::ShortLived(s) => mint(&claims(*s)),
            TokenKind::Expired => {
                let mut c = claims(3600);
                c.iat = now - 7200;
                c.exp = now - 3600;
                mint(&c)
            }
            TokenKind::NotYetValid => {
                let mut c = claims(7200);
                c.nbf = Some(now + 3600);
                mint(&c)
            }
            TokenKind::BadSignature => Ok(alter_signature(&mint(&claims(3600))?)),
            TokenKind::AlgNone => Ok(alg_none(&mint(&claims(3600))?)),
            TokenKind::Malformed => Ok("this-is-not.a-jwt".to_string()),
            TokenKind::MissingClaim(claim) => {
                let mut value = serde_json::to_value(claims(3600)).map_err(|e| Skip(e.to_string()))?;
                if let Some(map) = value.as_object_mut() {
                    map.remove(claim);
                }
                let signer = signer.ok_or_else(|| Skip("no key".into()))?;
                signer
                    .mint_json(&value)
                    .map_err(|e| Skip(format!("minting a token: {e}")))
            }
            TokenKind::Edited { expired, claims: edits } => {
                let mut base = claims(3600);
                if *expired {
                    base.iat = now - 7200;
                    base.exp = now - 3600;
                }
                let mut value = serde_json::to_value(base).map_err(|e| Skip(e.to_string()))?;
                if let Some(map) = value.as_object_mut() {
                    for (name, edit) in edits {
                        match edit {
                            ClaimEdit::Remove => map.remove(name),
                            ClaimEdit::Set(v) => map.insert(name.clone(), v.clone()),
                            ClaimEdit::SecondsFromNow(s) => map.insert(name.clone(), (now + s).into()),
                        };
                    }
                }
                let signer = signer.ok_or_else(|| Skip("no key".into()))?;
                signer
                    .mint_json(&value)
                    .map_err(|e| Skip(format!("minting a token: {e}")))
            }
            TokenKind::Missing => Ok(String::new()),
            TokenKind::Given(token) => Ok(token.clone()),
        }
    }

    fn run_command(&self, eid: &str, device: &str) -> Result<String, Skip> {
        let Credentials::Command(template) = self else {
            return Err(Skip("no token command".into()));
        };
        let command = template.replace("{eid}", eid).replace("{device}", device);
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .output()
            .map_err(|e| Skip(format!("running the token command {command:?}: {e}")))?;
        if !output.status.success() {
            return Err(Skip(format!(
                "the token command {command:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if token.is_empty() {
            return Err(Skip(format!("the token command {command:?} printed nothing")));
        }
        Ok(token)
    }
}

/// The token with the first character of its signature changed.
pub fn alter_signature(token: &str) -> String {
    let Some(dot) = token.rfind('.') else {
        return format!("{token}x");
    };
    let (head, signature) = token.split_at(dot + 1);
    let mut chars: Vec<char> = signature.chars().collect();
    match chars.first_mut() {
        Some(c) => *c = if *c == 'A' { 'B' } else { 'A' },
        None => chars.push('A'),
    }
    format!("{head}{}", chars.into_iter().collect::<String>())
}

/// The token's payload under `{"alg":"none"}` with an empty signature.
pub fn alg_none(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap_or_default();
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{payload}.")
}

/// A command to a connection task.
#[derive(Debug)]
pub enum Command {
    Stanza(Vec<u8>),
    /// Stanzas handed to the client all at once, none waiting for the write
    /// of the one before: a burst within one simulated tick (SES-5).
    Burst(Vec<Vec<u8>>),
    Wire(Vec<u8>),
    Text(String),
    Close,
}

/// What a connection task reports, stamped with ms since the case started.
#[derive(Debug)]
pub enum Report {
    Connected(Result<ConnectOutcome, String>),
    Event(u64, Event),
}

/// Where a connection task reads the time since the case started.
pub type Stamp = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Everything a connection task needs besides its stream.
pub struct ConnTask {
    pub url: String,
    pub spec: ConnectSpec,
    pub token: String,
    pub options: ClientOptions,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub reports: std::sync::mpsc::Sender<Report>,
    pub stamp: Stamp,
    /// Sees the raw bytes under the client (plaintext only).
    pub tap: TapHandle,
}

/// Connects over `stream` as `task.spec` says, reports the outcome, then
/// relays commands to the client and events back until the connection ends.
/// Shared by both drivers.
pub async fn run_connection<S>(stream: S, task: ConnTask)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let ConnTask {
        url,
        spec,
        token,
        mut options,
        mut commands,
        reports,
        stamp,
        tap,
    } = task;
    let framing = match url.split("://").next() {
        Some("ws") => Framing::WebSocket,
        Some("tcp") => Framing::Tcp,
        _ => Framing::Opaque,
    };
    let stream = tap.wrap(stream, framing);
    options.auto_pong = spec.auto_pong;
    options.surface_pings = spec.surface_pings;
    let tcp = spec.transport == TransportKind::Tcp;
    // The RESPONSE is optional on WebSocket (TRN-16): the world takes it from the first stanza, if it is one.
    options.await_session = tcp;
    let missing = spec.token == TokenKind::Missing;
    options.token_placement = if tcp || missing {
        TokenPlacement::None
    } else {
        spec.placement
    };
    let url = match (&spec.extra_query, tcp) {
        (Some(query), false) => {
            let separator = if url.contains('?') { '&' } else { '?' };
            format!("{url}{separator}{query}")
        }
        _ => url,
    };
    let timeout = options.timeout;
    let clock = Arc::clone(&options.clock);
    let mut client = match Client::over_stream(stream, &url, &token, options).await {
        Ok(client) => client,
        Err(error) => {
            let outcome = match error {
                ClientError::Refused { code, kind, http, .. } => Ok(ConnectOutcome::Refused(Refusal {
                    code,
                    kind,
                    http: http.map(|h| *h),
                    error: None,
                    closed: true,
                    token,
                })),
                other => Err(other.to_string()),
            };
            let _ = reports.send(Report::Connected(outcome));
            return;
        }
    };
    let mut early: VecDeque<Event> = VecDeque::new();
    let outcome = if !tcp {
        Ok(ConnectOutcome::Session(SessionInfo {
            response: client.session().map(|s| s.response.clone()),
            subprotocol: client.subprotocol().map(str::to_string),
            token,
        }))
    } else if missing {
        Ok(ConnectOutcome::Opened)
    } else {
        let authenticate = Payload::Authenticate(Authenticate {
            token: token.clone(),
            r#type: 1,
            timestamp: clock.now_ms(),
            ..Authenticate::default()
        });
        match client.send(authenticate).await {
            Err(error) => Err(error.to_string()),
            Ok(()) => match tokio::time::timeout(timeout, client.next_event()).await {
                Err(_) => Err("no answer to Authenticate in time".to_string()),
                Ok(None) => Err("the connection ended before any answer".to_string()),
                Ok(Some(Event::Stanza(Payload::Authenticate(response)))) if response.r#type == 2 => {
                    Ok(ConnectOutcome::Session(SessionInfo {
                        response: Some(response),
                        subprotocol: None,
                        token,
                    }))
                }
                Ok(Some(Event::Stanza(Payload::ErrorMessage(error)))) => {
                    let closed = matches!(
                        tokio::time::timeout(timeout, client.next_event()).await,
                        Ok(Some(Event::Closed { .. }) | None)
                    );
                    Ok(ConnectOutcome::Refused(Refusal {
                        code: u16::try_from(error.code).unwrap_or(0),
                        kind: error.message.clone(),
                        http: None,
                        error: Some(error),
                        closed,
                        token,
                    }))
                }
                // Anything else is the steps' to judge (TRN-15).
                Ok(Some(other)) => {
                    early.push_back(other);
                    Ok(ConnectOutcome::Session(SessionInfo {
                        response: None,
                        subprotocol: None,
                        token,
                    }))
                }
            },
        }
    };
    let refused = !matches!(outcome, Ok(ConnectOutcome::Session(_) | ConnectOutcome::Opened));
    let _ = reports.send(Report::Connected(outcome));
    if refused {
        return;
    }
    for event in early {
        let _ = reports.send(Report::Event(stamp(), event));
    }
    loop {
        tokio::select! {
            biased;
            command = commands.recv() => {
                let result = match command {
                    None => return,
                    Some(Command::Stanza(bytes)) => client.send_raw(Bytes::from(bytes)).await,
                    Some(Command::Burst(stanzas)) => {
                        let writes = stanzas.into_iter().map(|bytes| client.send_raw(Bytes::from(bytes)));
                        futures::future::join_all(writes).await.into_iter().collect()
                    }
                    Some(Command::Wire(bytes)) => client.send_wire(Bytes::from(bytes)).await,
                    Some(Command::Text(text)) => client.send_text(text).await,
                    Some(Command::Close) => {
                        let code = client.close().await.ok().flatten();
                        while let Some(event) = client.next_event().await {
                            let _ = reports.send(Report::Event(stamp(), event));
                        }
                        let closed = Event::Closed { code, reason: "closed by the client".into() };
                        let _ = reports.send(Report::Event(stamp(), closed));
                        return;
                    }
                };
                if let Err(error) = result {
                    tracing::debug!(%error, "a write failed");
                }
            }
            event = client.next_event() => match event {
                Some(event) => {
                    let last = matches!(event, Event::Closed { .. });
                    let _ = reports.send(Report::Event(stamp(), event));
                    if last {
                        return;
                    }
                }
                None => return,
            },
        }
    }
}

/// The client side of one connection, as a driver holds it.
pub struct ConnHandle {
    pub commands: mpsc::UnboundedSender<Command>,
    pub reports: std::sync::mpsc::Receiver<Report>,
    /// Events received and not yet handed out, with when each arrived (ms
    /// since the case started).
    pub events: VecDeque<(u64, Event)>,
    /// When the event last handed out arrived.
    pub last_arrival_ms: u64,
    pub ended: bool,
    pub tap: TapHandle,
}

impl ConnHandle {
    /// A handle and the task ends of its channels.
    pub fn new() -> (
        ConnHandle,
        mpsc::UnboundedReceiver<Command>,
        std::sync::mpsc::Sender<Report>,
    ) {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (report_tx, reports) = std::sync::mpsc::channel();
        (
            ConnHandle {
                commands,
                reports,
                events: VecDeque::new(),
                last_arrival_ms: 0,
                ended: false,
                tap: TapHandle::default(),
            },
            command_rx,
            report_tx,
        )
    }

    /// The next event, remembering when it arrived.
    pub fn pop(&mut self) -> Option<Event> {
        let (at, event) = self.events.pop_front()?;
        self.last_arrival_ms = at;
        Some(event)
    }

    /// Moves every report waiting in the channel into `events`, recording
    /// them; returns a connect outcome if one arrived.
    pub fn drain(&mut self, name: &str, transcript: &mut Transcript) -> Option<Result<ConnectOutcome, String>> {
        let mut connected = None;
        while let Ok(report) = self.reports.try_recv() {
            match report {
                Report::Connected(outcome) => connected = Some(outcome),
                Report::Event(at, event) => {
                    transcript.received(at, name, &event);
                    if matches!(event, Event::Closed { .. }) {
                        self.ended = true;
                    }
                    self.events.push_back((at, event));
                }
            }
        }
        connected
    }
}

/// Describes a connect outcome for the transcript.
pub fn describe_outcome(outcome: &ConnectOutcome) -> String {
    match outcome {
        ConnectOutcome::Session(s) => match &s.response {
            Some(r) => format!(
                "session: {}",
                describe_bytes(&codec::encode(&Payload::Authenticate(r.clone())))
            ),
            None => "session (no Authenticate RESPONSE)".to_string(),
        },
        ConnectOutcome::Refused(r) => match (&r.http, &r.error) {
            (Some(http), _) => format!(
                "refused: HTTP {} body {:?} content-type {:?} www-authenticate {:?}",
                http.status, http.body, http.content_type, http.www_authenticate
            ),
            (None, Some(e)) => format!(
                "refused: {}{}",
                describe_bytes(&codec::encode(&Payload::ErrorMessage(e.clone()))),
                if r.closed { ", then closed" } else { ", not closed" }
            ),
            _ => format!("refused: {} {}", r.code, r.kind),
        },
        ConnectOutcome::Opened => "connected (nothing sent)".to_string(),
    }
}

/// A clock that reads the Unix time from a closure (simulation or system).
pub struct FnClock(pub Arc<dyn Fn() -> Millis + Send + Sync>);

impl Clock for FnClock {
    fn now_ms(&self) -> Millis {
        (self.0)()
    }
}
