//! `bimip-client-adapter`: the adapter through which `bimip-conform client` drives this repository's reference
//! client, `bimip::client::Client`. It reads commands on standard input and writes events on standard output, one
//! JSON object per line, as conformance/README.md ("Client mode") specifies; its logs go to standard error. It is
//! also the model for the adapters of other SDKs.
//!
//! `BIMIP_ADAPTER_FAULT` makes it misbehave on purpose (see [`Fault`]): the suite's self-check runs each fault to
//! show that every client rule it checks is one a broken client fails.

use std::collections::HashMap;
use std::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use futures::FutureExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, ErrorKind, Stdout};

use bimip::client::{Backoff, Client, ClientOptions, Ended, Event, Inbox, Next};
use bimip::codec::{self, Blame, EnvelopeError};
use bimip::proto::message_scheme::Payload;
use bimip::proto::{AcknowledgmentRequest, ChatMessage, Identity, TextPayloadRequest, chat_message};

/// The ping interval this adapter assumes for CLI-6's "a session that lasted one ping interval" (SPEC's default).
const PING_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
enum Command {
    Connect {
        url: String,
        token: String,
    },
    SendText {
        to: String,
        text: String,
        // Echoed as it came: the suite may name its requests with strings or numbers.
        #[serde(rename = "ref", default)]
        reference: Value,
    },
    Ack {
        message_id: String,
        status: i32,
    },
    Close,
    Quit,
}

/// Deliberate misbehaviours, each breaking one client rule.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Breaks PING-3.
    NeverPong,
    /// Breaks TRN-17: on WebSocket a session without an Authenticate RESPONSE is a failed connect.
    RequireAuthResponse,
    /// Breaks ERR-7: every error is the client's.
    BlameAllOnClient,
    /// Breaks CLI-7: an undecodable stanza ends the session.
    CloseOnBadStanza,
    /// Breaks ERR-7: a request refused with a 4xx is sent again unchanged (once).
    ResendAfter4xx,
    /// Breaks QUE-7: a replayed message or update is handed over again.
    NoDedupe,
    /// Breaks CLI-3: received items are never confirmed.
    NoConfirm,
    /// Breaks CLI-4: a replaced session connects again.
    ReconnectAfterReplaced,
    /// Breaks CLI-5: a refused token is tried again.
    ReconnectSameToken,
    /// Breaks CLI-6: connects again at once.
    NoBackoff,
    /// Breaks CLI-1: a request sent again gets a new message_id_local.
    NewLocalOnResend,
    /// Breaks CLI-2: requests without a VersionUpdate are forgotten when the connection ends.
    ForgetPending,
}

impl Fault {
    fn from_env() -> Option<Fault> {
        let name = std::env::var("BIMIP_ADAPTER_FAULT").ok()?;
        let fault = match name.as_str() {
            "never-pong" => Fault::NeverPong,
            "require-auth-response" => Fault::RequireAuthResponse,
            "blame-all-on-client" => Fault::BlameAllOnClient,
            "close-on-bad-stanza" => Fault::CloseOnBadStanza,
            "resend-after-4xx" => Fault::ResendAfter4xx,
            "no-dedupe" => Fault::NoDedupe,
            "no-confirm" => Fault::NoConfirm,
            "reconnect-after-replaced" => Fault::ReconnectAfterReplaced,
            "reconnect-same-token" => Fault::ReconnectSameToken,
            "no-backoff" => Fault::NoBackoff,
            "new-local-on-resend" => Fault::NewLocalOnResend,
            "forget-pending" => Fault::ForgetPending,
            _ => {
                eprintln!("bimip-client-adapter: unknown BIMIP_ADAPTER_FAULT {name:?}: behaving correctly");
                return None;
            }
        };
        eprintln!("bimip-client-adapter: misbehaving on purpose: {name}");
        Some(fault)
    }
}

struct Adapter {
    out: Stdout,
    client: Option<Client>,
    /// The suite's ref of each request sent, by its message_id_local.
    refs: HashMap<String, Value>,
    /// Kept for [`Fault::ResendAfter4xx`] only, by message_id_local.
    requests_kept: HashMap<String, TextPayloadRequest>,
    fault: Option<Fault>,
    /// What this device received, across its sessions: duplicates dropped (QUE-7), items confirmed (CLI-3).
    inbox: Inbox,
    /// Where and with which token the application asked to be connected; kept for reconnecting.
    target: Option<(String, String)>,
    /// Chat requests without their VersionUpdate yet, in the order sent: sent again, unchanged, in every new
    /// session (CLI-1, CLI-2).
    pending: Vec<TextPayloadRequest>,
    backoff: Backoff,
    /// When the next attempt to connect is due (CLI-6).
    reconnect_at: Option<tokio::time::Instant>,
    /// When the current session opened.
    opened_at: Option<tokio::time::Instant>,
    /// The last ErrorMessage's kind in this session: on TCP, which has no close codes, it says why the server
    /// closed (SPEC §5).
    last_error: Option<String>,
    /// The application closed the connection itself.
    closing: bool,
    /// Prefix of every message_id_local. A server remembers a device's ids across sessions (CHAT-14), so a counter
    /// alone would make a second run with the same token look like a resend of the first run's messages (CLI-1).
    run: String,
    requests: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut adapter = Adapter {
        out: tokio::io::stdout(),
        client: None,
        refs: HashMap::new(),
        requests_kept: HashMap::new(),
        fault: Fault::from_env(),
        inbox: Inbox::default(),
        target: None,
        pending: Vec::new(),
        backoff: Backoff::default(),
        reconnect_at: None,
        opened_at: None,
        last_error: None,
        closing: false,
        run: format!("l-{started}-{}", std::process::id()),
        requests: 0,
    };
    adapter
        .emit(json!({"event": "ready", "name": "bimip::client", "version": env!("CARGO_PKG_VERSION")}))
        .await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        // Both branches are cancel-safe, so an event is reported as soon as it comes while no command is pending.
        tokio::select! {
            biased;
            event = next_event(adapter.client.as_mut()) => match event {
                Some(event) => adapter.on_event(event).await?,
                None => adapter.ended(None).await?,
            },
            () = reconnect(adapter.reconnect_at) => {
                adapter.reconnect_at = None;
                adapter.open().await?;
            },
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    if !adapter.on_line(&line).await? {
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                // Lines drops the undecodable line and goes on with the next one.
                Err(error) if error.kind() == ErrorKind::InvalidData => adapter.unsupported(Value::Null).await?,
                Err(error) => return Err(error.into()),
            },
        }
    }
}

async fn reconnect(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The random part of a wait (CLI-6): the adapter is the edge, so it may read the clock for it.
fn random_fraction() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1_000_000) / 1_000_000.0
}

async fn next_event(client: Option<&mut Client>) -> Option<Event> {
    match client {
        Some(client) => client.next_event().await,
        None => std::future::pending().await,
    }
}

impl Adapter {
    /// Runs one command line; false on `quit`.
    async fn on_line(&mut self, line: &str) -> Result<bool> {
        let value: Value = match serde_json::from_str(line) {
            Ok(value) => value,
            Err(error) => {
                eprintln!("bimip-client-adapter: not a JSON line ({error}): {line}");
                self.unsupported(Value::Null).await?;
                return Ok(true);
            }
        };
        let cmd = value.get("cmd").cloned().unwrap_or(Value::Null);
        // An unknown command and a known one with fields this adapter cannot use both get "not applicable".
        let command = match Command::deserialize(&value) {
            Ok(command) => command,
            Err(error) => {
                eprintln!("bimip-client-adapter: cannot run {line}: {error}");
                self.unsupported(cmd).await?;
                return Ok(true);
            }
        };
        match command {
            Command::Connect { url, token } => self.connect(&url, &token).await?,
            Command::SendText { to, text, reference } => self.send_text(to, text, reference).await,
            Command::Ack { message_id, status } => self.ack(message_id, status).await,
            Command::Close => self.close().await?,
            Command::Quit => return Ok(false),
        }
        Ok(true)
    }

    async fn connect(&mut self, url: &str, token: &str) -> Result<()> {
        self.target = Some((url.to_string(), token.to_string()));
        self.backoff = Backoff::default();
        self.reconnect_at = None;
        self.closing = false;
        self.open().await
    }

    /// Connects to the target, and sends again what waits for a VersionUpdate (CLI-2).
    async fn open(&mut self) -> Result<()> {
        let Some((url, token)) = self.target.clone() else {
            return Ok(());
        };
        let (url, token) = (url.as_str(), token.as_str());
        let websocket = url
            .split_once("://")
            .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("ws") || scheme.eq_ignore_ascii_case("wss"));
        let options = ClientOptions {
            // TRN-17: on WebSocket the session is open after the upgrade, with or without an Authenticate RESPONSE;
            // on TCP the RESPONSE (or the refusal) is what says whether it opened.
            await_session: !websocket || self.fault == Some(Fault::RequireAuthResponse),
            // PING-3.
            auto_pong: self.fault != Some(Fault::NeverPong),
            ..ClientOptions::default()
        };
        if self.client.take().is_some() {
            eprintln!("bimip-client-adapter: connect while connected: the old connection is dropped");
        }
        match Client::connect(url, token, options).await {
            // The client itself accepts a WebSocket session without a RESPONSE once it waited `timeout` for one.
            Ok(client) if websocket && client.session().is_none() && self.fault == Some(Fault::RequireAuthResponse) => {
                let reason = "no Authenticate RESPONSE";
                self.emit(json!({"event": "connect_failed", "reason": reason})).await
            }
            Ok(client) => {
                self.opened_at = Some(tokio::time::Instant::now());
                self.last_error = None;
                for request in &mut self.pending {
                    if self.fault == Some(Fault::NewLocalOnResend) {
                        request.message_id_local.push_str("-again");
                    }
                    if let Err(error) = client.send(Payload::TextPayloadRequest(request.clone())).await {
                        eprintln!("bimip-client-adapter: sending again: {error}");
                    }
                }
                self.client = Some(client);
                self.emit(json!({"event": "connected"})).await
            }
            Err(error) => {
                let refused = error.refused_kind().is_some_and(|kind| kind.starts_with("token"));
                self.emit(json!({"event": "connect_failed", "reason": error.to_string()}))
                    .await?;
                self.plan(if refused { Ended::TokenRefused } else { Ended::Other }, Duration::ZERO);
                Ok(())
            }
        }
    }

    /// Whether and when to connect again after a connection ended (CLI-4, CLI-5, CLI-6).
    fn plan(&mut self, ended: Ended, lasted: Duration) {
        let ended = match (ended, self.fault) {
            (Ended::Replaced, Some(Fault::ReconnectAfterReplaced))
            | (Ended::TokenRefused, Some(Fault::ReconnectSameToken)) => Ended::Other,
            _ => ended,
        };
        let next = self.backoff.next(ended, lasted, PING_INTERVAL, random_fraction());
        eprintln!("bimip-client-adapter: after {ended:?}: {next:?}");
        self.reconnect_at = match next {
            Next::After(_) if self.fault == Some(Fault::NoBackoff) => Some(tokio::time::Instant::now()),
            Next::After(wait) => Some(tokio::time::Instant::now() + wait),
            Next::Stop | Next::NewToken => None,
        };
        if self.fault == Some(Fault::ForgetPending) {
            self.pending.clear();
        }
    }

    async fn send_text(&mut self, to: String, text: String, reference: Value) {
        self.requests += 1;
        let local = format!("{}-{}", self.run, self.requests);
        let request = TextPayloadRequest {
            to: vec![Identity {
                eid: to,
                ..Identity::default()
            }],
            content: text,
            message_id_local: local.clone(),
            created_at: self.client.as_ref().map_or(0, Client::now_ms),
            ..TextPayloadRequest::default()
        };
        self.refs.insert(local.clone(), reference.clone());
        if self.fault == Some(Fault::ResendAfter4xx) {
            self.requests_kept.insert(local, request.clone());
        }
        // Kept until its VersionUpdate (CLI-2); without a connection it goes out with the next session.
        self.pending.push(request.clone());
        let Some(client) = &self.client else {
            eprintln!("bimip-client-adapter: send_text {reference} while not connected: sent with the next session");
            return;
        };
        // A connection that ended reports itself as an event; there is nothing more to say here.
        if let Err(error) = client.send(Payload::TextPayloadRequest(request)).await {
            eprintln!("bimip-client-adapter: send_text {reference}: {error}");
        }
    }

    async fn ack(&mut self, message_id: String, status: i32) {
        let Some(client) = &self.client else {
            eprintln!("bimip-client-adapter: ack {message_id} while not connected: not sent");
            return;
        };
        let request = AcknowledgmentRequest {
            message_id,
            status,
            timestamp: client.now_ms(),
            ..AcknowledgmentRequest::default()
        };
        if let Err(error) = client.send(Payload::AcknowledgmentRequest(request)).await {
            eprintln!("bimip-client-adapter: ack: {error}");
        }
    }

    async fn close(&mut self) -> Result<()> {
        // The application's own close: no attempt of the client's own follows (CLI-4).
        self.reconnect_at = None;
        self.target = None;
        let Some(mut client) = self.client.take() else {
            return self.emit(json!({"event": "closed", "code": null})).await;
        };
        let code = client.close().await.unwrap_or_else(|error| {
            eprintln!("bimip-client-adapter: close: {error}");
            None
        });
        // `close` reads past the stanzas that came before the server's close and keeps them: report them first.
        while let Some(Some(event)) = client.next_event().now_or_never() {
            if !matches!(event, Event::Closed { .. }) {
                self.on_event(event).await?;
            }
        }
        self.emit(json!({"event": "closed", "code": code})).await
    }

    async fn on_event(&mut self, event: Event) -> Result<()> {
        match event {
            Event::Stanza(payload) => self.on_stanza(payload).await,
            // The client does not say why; decoding again does.
            Event::Undecodable(bytes) => match codec::decode(&bytes, usize::MAX) {
                // A route of a later protocol version is a stanza this client cannot use, not a broken one (CLI-7).
                Ok(_) | Err(EnvelopeError::UnknownRoute { .. }) => Ok(()),
                Err(error) => self.bad_stanza(&error.to_string()).await,
            },
            Event::Text(_) => self.bad_stanza("a WebSocket text message, not a stanza").await,
            Event::Closed { code, reason } => {
                eprintln!("bimip-client-adapter: connection ended ({code:?}): {reason}");
                self.ended(code).await
            }
        }
    }

    async fn on_stanza(&mut self, payload: Payload) -> Result<()> {
        let now = self.client.as_ref().map_or(0, Client::now_ms);
        let received = self.inbox.receive(&payload, now);
        let new = received.as_ref().is_none_or(|r| r.new) || self.fault == Some(Fault::NoDedupe);
        if new {
            self.hand_over(payload).await?;
        }
        // Confirmed once the application has it (CLI-3), duplicates too: unconfirmed, they would come again.
        if let (Some(confirm), Some(client)) = (received.and_then(|r| r.confirm), &self.client)
            && self.fault != Some(Fault::NoConfirm)
        {
            let _ = client.send(Payload::AcknowledgmentRequest(confirm)).await;
        }
        Ok(())
    }

    async fn hand_over(&mut self, payload: Payload) -> Result<()> {
        match payload {
            Payload::ChatMessage(ChatMessage {
                message_id,
                chat_id,
                version,
                from,
                payload: Some(chat_message::Payload::Text(text)),
                ..
            }) => {
                let from = from.map(|identity| identity.eid);
                let event = json!({"event": "message", "message_id": message_id, "chat_id": chat_id,
                    "version": version, "from": from, "text": text});
                self.emit(event).await
            }
            // An update about a message (the confirmation of the device's own acknowledgment names it twice).
            Payload::AcknowledgmentResponse(update) if update.from != update.to => {
                let event = json!({"event": "acknowledged", "message_id": update.message_id,
                    "chat_id": update.chat_id, "version": update.version, "status": update.status});
                self.emit(event).await
            }
            // Type 1 is the server's confirmation (CHAT-5); any other type confirms nothing.
            Payload::VersionUpdate(update) if update.r#type == 1 => {
                self.pending.retain(|r| r.message_id_local != update.message_id_local);
                let reference = self.refs.get(&update.message_id_local).cloned().unwrap_or(Value::Null);
                let event = json!({"event": "sent", "ref": reference, "message_id": update.message_id,
                    "chat_id": update.chat_id, "version": update.version});
                self.emit(event).await
            }
            Payload::ErrorMessage(error) => {
                // ERR-7: by the code's hundred, so that codes and kinds this client does not know are judged too.
                let blame = match Blame::of_code(error.code) {
                    _ if self.fault == Some(Fault::BlameAllOnClient) => "client",
                    Some(Blame::Sender) => "client",
                    Some(Blame::Server) => "server",
                    None => "unknown",
                };
                let reference = self.refs.get(&error.ref_id).cloned().unwrap_or(Value::Null);
                self.last_error = Some(error.message.clone());
                // ERR-7: a request the server blamed on the client is not sent again unchanged; a server fault's may be.
                if Blame::of_code(error.code) == Some(Blame::Sender) {
                    self.pending.retain(|r| r.message_id_local != error.ref_id);
                }
                let again = self.requests_kept.remove(&error.ref_id);
                if let (Some(request), Some(client), Some(Blame::Sender)) =
                    (again, &self.client, Blame::of_code(error.code))
                {
                    let _ = client.send(Payload::TextPayloadRequest(request)).await;
                }
                let event = json!({"event": "error", "code": error.code, "kind": error.message, "blame": blame,
                    "ref": reference});
                self.emit(event).await
            }
            // The Authenticate RESPONSE (TRN-17 on WebSocket: it may come after `connected`), and every stanza
            // this adapter has no event for, which CLI-7 says to ignore.
            _ => Ok(()),
        }
    }

    async fn ended(&mut self, code: Option<u16>) -> Result<()> {
        self.client = None;
        let lasted = self.opened_at.take().map_or(Duration::ZERO, |at| at.elapsed());
        // The close code says why on WebSocket; on TCP the ErrorMessage before the close does.
        let ended = match (code, self.last_error.as_deref()) {
            (Some(4409), _) | (_, Some("session_replaced")) => Ended::Replaced,
            (Some(4401), _) | (_, Some("token_expired" | "token_revoked")) => Ended::TokenRefused,
            _ => Ended::Other,
        };
        self.emit(json!({"event": "closed", "code": code})).await?;
        if self.target.is_some() {
            self.plan(ended, lasted);
        }
        Ok(())
    }

    async fn bad_stanza(&mut self, reason: &str) -> Result<()> {
        self.emit(json!({"event": "bad_stanza", "reason": reason})).await?;
        // No client here means `close` is already reporting what came before the end.
        if self.fault == Some(Fault::CloseOnBadStanza) && self.client.is_some() {
            return Box::pin(self.close()).await;
        }
        Ok(())
    }

    async fn unsupported(&mut self, cmd: Value) -> Result<()> {
        self.emit(json!({"event": "unsupported", "cmd": cmd})).await
    }

    /// Writes one event line; flushed at once, since the suite waits for each event before its next command.
    async fn emit(&mut self, event: Value) -> Result<()> {
        let mut line = event.to_string();
        line.push('\n');
        self.out.write_all(line.as_bytes()).await?;
        self.out.flush().await?;
        Ok(())
    }
}
