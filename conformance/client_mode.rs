//! Client mode (SPEC §21, `bimip-conform client --adapter CMD`): each case gets a scripted peer
//! ([`super::peer`]) on the pass's transport and a fresh adapter process ([`super::adapter`]) driving the client
//! under test. The driver implements [`Driver`] so that client cases run, report and replay like server cases;
//! the steps of `features/client.feature` reach the pair through [`Driver::client_mode`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::adapter::Adapter;
use super::driver::{
    Command, ConnectOutcome, ConnectSpec, Driver, DriverError, DriverFactory, Restart, ServerTweak, Skip, TargetInfo,
    TokenKind, Transcript, TransportKind, describe_bytes,
};
use super::peer::{Peer, PeerConn, Script, Seen};
use super::tap::TapHandle;
use crate::client::Event;
use crate::core::Millis;
use crate::proto::message_scheme::Payload;

/// The transcript's name for the client under test, and for the peer's side of its connection.
pub const CLIENT: &str = "client";
pub const PEER: &str = "peer";

/// Makes a client-mode driver per case.
pub struct ClientModeFactory {
    /// The adapter command (`sh -c`).
    pub adapter: String,
    pub info: TargetInfo,
}

impl ClientModeFactory {
    pub fn new(adapter: impl Into<String>) -> ClientModeFactory {
        ClientModeFactory {
            adapter: adapter.into(),
            info: TargetInfo::default(),
        }
    }
}

impl DriverFactory for ClientModeFactory {
    fn make(&self, _case: u64) -> Result<Box<dyn Driver>, String> {
        let peer = Peer::start(super::world::pass())?;
        let adapter = Adapter::start(&self.adapter)?;
        let mut transcript = Transcript::default();
        transcript.note(0, CLIENT, format!("adapter ready: {}", adapter.ready));
        Ok(Box::new(ClientModeDriver {
            harness: Harness {
                peer,
                adapter,
                conn: None,
                backlog: VecDeque::new(),
                pings: Vec::new(),
                requests: Vec::new(),
                transcript,
                started: Instant::now(),
                timeout: self.info.timeout,
            },
            info: self.info.clone(),
        }))
    }

    fn eid_suffix(&self, _case: u64) -> String {
        String::new()
    }
}

/// The scripted peer and the client under test, for the steps.
pub struct Harness {
    peer: Peer,
    adapter: Adapter,
    conn: Option<PeerConn>,
    /// Adapter events read while waiting for another kind.
    backlog: VecDeque<Value>,
    /// Pings the peer sent: (id, request_time).
    pings: Vec<(String, Millis)>,
    /// The `message_id_local` of each chat request the peer received, in order.
    requests: Vec<String>,
    transcript: Transcript,
    started: Instant,
    timeout: Duration,
}

/// Why a client-mode step could not go on: a failure, or a command the adapter does not support.
#[derive(Debug)]
pub enum HarnessError {
    Failed(String),
    Unsupported(String),
}

impl Harness {
    fn at(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn transport(&self) -> TransportKind {
        self.peer.transport()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// What the peer does with the next connection.
    pub fn script(&mut self, script: Script) {
        self.transcript.note(self.at(), PEER, format!("script: {script:?}"));
        self.peer.script(script);
    }

    /// Hands the adapter one command.
    pub fn command(&mut self, command: Value) -> Result<(), HarnessError> {
        self.transcript.note(self.at(), CLIENT, format!("command {command}"));
        self.adapter.send(&command).map_err(HarnessError::Failed)
    }

    /// The next adapter event whose `event` is `kind`, waiting at most `within`; other events wait in order for
    /// a later call. An `unsupported` answer ends the wait.
    pub fn event(&mut self, kind: &str, within: Duration) -> Result<Option<Value>, HarnessError> {
        if let Some(at) = self.backlog.iter().position(|e| e["event"] == kind) {
            return Ok(self.backlog.remove(at));
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(line) = self.adapter.next(left) else {
                return Ok(None);
            };
            let at = self.at();
            match line {
                Ok(event) => {
                    self.transcript.note(at, CLIENT, format!("event {event}"));
                    if event["event"] == "unsupported" {
                        return Err(HarnessError::Unsupported(format!(
                            "the adapter does not support {}",
                            event["cmd"]
                        )));
                    }
                    if event["event"] == kind {
                        return Ok(Some(event));
                    }
                    self.backlog.push_back(event);
                }
                Err(line) => {
                    self.transcript.note(at, CLIENT, format!("not a JSON object: {line:?}"));
                    return Err(HarnessError::Failed(format!(
                        "the adapter wrote a line that is no JSON object: {line:?}"
                    )));
                }
            }
        }
    }

    /// Every event that came and was not taken yet, after waiting `within` for more.
    pub fn events(&mut self, within: Duration) -> Result<Vec<Value>, HarnessError> {
        // A kind no adapter writes: everything read meanwhile goes to the backlog.
        let _ = self.event("\u{0}none", within)?;
        Ok(self.backlog.drain(..).collect())
    }

    /// Puts an event back for a later [`Harness::event`].
    pub fn keep(&mut self, event: Value) {
        self.backlog.push_back(event);
    }

    pub fn remember_ping(&mut self, id: &str, request_time: Millis) {
        self.pings.push((id.to_string(), request_time));
    }

    /// The request_time of the last ping sent with this id.
    pub fn ping_sent(&self, id: &str) -> Option<Millis> {
        self.pings.iter().rev().find(|(i, _)| i == id).map(|(_, t)| *t)
    }

    pub fn remember_request(&mut self, message_id_local: String) {
        self.requests.push(message_id_local);
    }

    /// The `message_id_local` of the last chat request the peer received.
    pub fn last_request(&self) -> Option<String> {
        self.requests.last().cloned()
    }

    /// Asks the client to connect to the peer and takes the connection it opens.
    pub fn connect(&mut self) -> Result<(), HarnessError> {
        let url = self.peer.url();
        self.command(json!({"cmd": "connect", "url": url, "token": "client-mode-token"}))?;
        let conn = self.peer.accept(self.timeout).ok_or_else(|| {
            HarnessError::Failed(format!(
                "the client opened no connection to {url} within {:?}",
                self.timeout
            ))
        })?;
        self.transcript
            .note(self.at(), PEER, format!("accepted a connection on {url}"));
        self.conn = Some(conn);
        Ok(())
    }

    fn conn(&self) -> Result<&PeerConn, HarnessError> {
        self.conn
            .as_ref()
            .ok_or_else(|| HarnessError::Failed("the client has no connection to the peer".into()))
    }

    /// The peer sends a stanza to the client.
    pub fn send(&mut self, payload: &Payload) -> Result<(), HarnessError> {
        self.send_raw(crate::codec::encode(payload))
    }

    /// The peer sends any bytes as one frame.
    pub fn send_raw(&mut self, bytes: Vec<u8>) -> Result<(), HarnessError> {
        self.transcript.sent(self.at(), PEER, &bytes);
        self.conn()?.send_raw(bytes).map_err(HarnessError::Failed)
    }

    /// The next thing the peer saw from the client, waiting at most `within`.
    pub fn seen(&mut self, within: Duration) -> Result<Option<Seen>, HarnessError> {
        let seen = self.conn()?.next(within);
        let at = self.at();
        match &seen {
            Some(Seen::Stanza(payload)) => {
                self.transcript.received(at, PEER, &Event::Stanza((**payload).clone()));
            }
            Some(Seen::Undecodable(bytes, why)) => {
                self.transcript
                    .note(at, PEER, format!("<- undecodable ({why}): {}", describe_bytes(bytes)));
            }
            Some(Seen::Closed(code)) => self
                .transcript
                .note(at, PEER, format!("closed by the client ({code:?})")),
            None => {}
        }
        Ok(seen)
    }

    /// The first stanza the peer sees that `wanted` accepts, within `within`; what comes before it is skipped.
    pub fn seen_stanza(
        &mut self,
        within: Duration,
        wanted: impl Fn(&Payload) -> bool,
    ) -> Result<Option<Payload>, HarnessError> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.seen(left)? {
                Some(Seen::Stanza(payload)) if wanted(&payload) => return Ok(Some(*payload)),
                Some(Seen::Closed(_)) | None => return Ok(None),
                Some(_) => {}
            }
        }
    }

    /// The next connection the client opens by itself (a reconnection), waiting at most `within`; it becomes the
    /// connection the steps talk to. How long the client took is returned.
    pub fn reaccept(&mut self, within: Duration) -> Result<Option<Duration>, HarnessError> {
        let since = Instant::now();
        let Some(conn) = self.peer.accept(within) else {
            return Ok(None);
        };
        let took = since.elapsed();
        self.transcript.note(
            self.at(),
            PEER,
            format!("the client connected again ({} ms)", took.as_millis()),
        );
        self.conn = Some(conn);
        Ok(Some(took))
    }

    /// The peer drops the connection without a close handshake.
    pub fn drop_connection(&mut self) -> Result<(), HarnessError> {
        self.transcript.note(self.at(), PEER, "drops the connection");
        self.conn()?.drop_connection();
        Ok(())
    }

    /// The peer closes the connection with this WebSocket close code.
    pub fn close(&mut self, code: u16) -> Result<(), HarnessError> {
        self.transcript.note(self.at(), PEER, format!("closes with {code}"));
        self.conn()?.close(code);
        Ok(())
    }

    /// The adapter's standard error, for failure messages.
    pub fn adapter_log(&self) -> String {
        self.adapter.stderr()
    }
}

/// The [`Driver`] of a client-mode case. The server-side vocabulary does not apply: its methods say so.
pub struct ClientModeDriver {
    harness: Harness,
    info: TargetInfo,
}

fn server_only() -> DriverError {
    Skip("a server-side step; this is a client-mode run".into()).into()
}

impl Driver for ClientModeDriver {
    fn kind(&self) -> &'static str {
        "client"
    }

    fn info(&self) -> &TargetInfo {
        &self.info
    }

    fn configure(&mut self, _tweak: ServerTweak) -> Result<(), Skip> {
        Err(Skip("client mode configures no server".into()))
    }

    fn token(&mut self, _eid: &str, _device: &str, _kind: &TokenKind) -> Result<String, Skip> {
        Err(Skip("client mode mints no tokens".into()))
    }

    fn connect(&mut self, _name: &str, _spec: &ConnectSpec) -> Result<ConnectOutcome, DriverError> {
        Err(server_only())
    }

    fn command(&mut self, _name: &str, _command: Command) -> Result<(), DriverError> {
        Err(server_only())
    }

    fn next(&mut self, _name: &str, _within: Duration) -> Option<Event> {
        None
    }

    fn arrived_ms(&self, _name: &str) -> Option<u64> {
        None
    }

    fn wait(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }

    fn close(&mut self, _name: &str) {}

    fn now_ms(&self) -> Millis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX))
    }

    fn elapsed_ms(&self) -> u64 {
        self.harness.at()
    }

    fn transcript(&self) -> &Transcript {
        &self.harness.transcript
    }

    fn tap(&self, _name: &str) -> Option<TapHandle> {
        None
    }

    fn restart(&mut self, _how: Restart) -> Result<(), DriverError> {
        Err(server_only())
    }

    fn client_mode(&mut self) -> Option<&mut Harness> {
        Some(&mut self.harness)
    }
}
