//! The network driver: real TCP and WebSocket connections (with or without
//! TLS) to any target, on the driver's own tokio runtime. Time is real: a
//! wait sleeps, an expectation blocks until its event or its timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::driver::{
    Command, ConnHandle, ConnTask, ConnectOutcome, ConnectSpec, Credentials, Driver, DriverError, DriverFactory,
    HttpAnswer, Report, ServerTweak, Skip, Stamp, TargetInfo, TokenKind, Transcript, TransportKind, http_exchange,
    run_connection,
};
use super::lifecycle::{Restart, ServerControl};
use super::tap::TapHandle;
use crate::client::{ClientOptions, Event};
use crate::core::Millis;
use crate::core::auth::Algorithm;
use crate::net::{Clock, SystemClock};
use crate::proto::PingPong;
use crate::proto::message_scheme::Payload;

/// Where and how the suite reaches a server.
#[derive(Clone, Debug)]
pub struct NetworkTarget {
    /// `ws://host:port/path` or `wss://...`.
    pub ws: Option<String>,
    /// `tcp://host:port` or `tls://host:port`.
    pub tcp: Option<String>,
    pub credentials: Credentials,
    pub info: TargetInfo,
    /// Accept any TLS certificate.
    pub insecure: bool,
    /// How the target is restarted, for the cases that need it (`lifecycle.rs`); `None`: those are skipped.
    pub control: Option<Control>,
}

/// A target's [`ServerControl`], shared by every case's driver.
#[derive(Clone)]
pub struct Control(pub Arc<dyn ServerControl>);

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

/// Longest wait for a restarted target to accept connections again.
const RESTART_WAIT: Duration = Duration::from_secs(30);

/// Makes one [`NetworkDriver`] per case, all on one runtime.
pub struct NetworkFactory {
    target: Arc<NetworkTarget>,
    runtime: Arc<tokio::runtime::Runtime>,
    /// Keeps the EIDs of this run apart from earlier runs on the same server.
    run_id: String,
}

impl NetworkFactory {
    pub fn new(target: NetworkTarget) -> std::io::Result<NetworkFactory> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let run_id = format!("{:x}", SystemClock.now_ms() % 0xff_ffff_ffff);
        Ok(NetworkFactory {
            target: Arc::new(target),
            runtime: Arc::new(runtime),
            run_id,
        })
    }

    /// Before any case: one session with a valid token over each transport the target offers. A target that
    /// cannot be reached, speaks something else, or never answers gets one line that says which and why, instead
    /// of the same failure in every case.
    pub fn preflight(&self) -> Result<(), String> {
        let mut driver = self.make(0)?;
        let offered = [
            (TransportKind::Ws, &self.target.ws),
            (TransportKind::Tcp, &self.target.tcp),
        ];
        for (transport, url) in offered {
            let Some(url) = url else { continue };
            let eid = format!("preflight{}@example.com", self.eid_suffix(0));
            let name = format!("preflight/{transport}");
            let mut spec = ConnectSpec::new(&eid, "preflight", transport);
            // Pings surface unanswered: an echo of the preflight's ping must not be answered (and echoed again).
            spec.auto_pong = false;
            spec.surface_pings = true;
            let outcome = driver.connect(&name, &spec);
            match outcome {
                Ok(ConnectOutcome::Session(_)) => {
                    let answered = answers_a_ping(driver.as_mut(), &name, self.target.info.timeout);
                    driver.close(&name);
                    answered.map_err(|why| format!("{url}: {why}"))?;
                }
                Ok(other) => return Err(format!("{url}: a session with a valid token was {other}")),
                Err(DriverError::Skip(Skip(reason))) => return Err(format!("{url}: {reason}")),
                Err(DriverError::Connect { error, .. }) => return Err(format!("{url}: {}", diagnose(&error, self))),
                Err(other) => return Err(format!("{url}: {other}")),
            }
        }
        Ok(())
    }
}

/// The preflight session's ping (PING-1): a BIMIP server answers it with a pong; an echo server sends it back.
fn answers_a_ping(driver: &mut dyn Driver, name: &str, timeout: Duration) -> Result<(), String> {
    let ping = PingPong {
        r#type: 1,
        status: 1,
        id: "preflight".into(),
        request_time: SystemClock.now_ms(),
        ..PingPong::default()
    };
    driver
        .send(name, &Payload::PingpongMessage(ping.clone()))
        .map_err(|e| e.to_string())?;
    let until = Instant::now() + timeout;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match driver.next(name, left) {
            Some(Event::Stanza(Payload::PingpongMessage(p))) if p.r#type == 2 && p.id == ping.id => return Ok(()),
            Some(Event::Stanza(Payload::PingpongMessage(p))) if p == ping => {
                return Err("it sent the ping back as it was sent: an echo server, not a BIMIP server".into());
            }
            Some(Event::Closed { .. }) => return Err("it closed the session when it got a ping".into()),
            // The start Body, the server's own pings, ...: the pong may come after them.
            Some(_) => {}
            None => break,
        }
    }
    Err(format!(
        "the session opened, but a ping got no pong within {timeout:?} (PING-1)"
    ))
}

/// What a failed first connection says about the target, in words, with the error it came from.
fn diagnose(error: &str, factory: &NetworkFactory) -> String {
    let lower = error.to_ascii_lowercase();
    let timeout = factory.target.info.timeout;
    let why = if lower.contains("refused") {
        "nothing listens there".to_string()
    } else if lower.contains("in time") || lower.contains("timed out") {
        format!("it accepted the connection but did not complete the handshake and authentication within {timeout:?}")
    } else if lower.contains("http") || lower.contains("handshake") || lower.contains("websocket") {
        "it answered, but not as a BIMIP WebSocket server".to_string()
    } else if lower.contains("closed") || lower.contains("eof") || lower.contains("reset") {
        "it closed the connection before a session started".to_string()
    } else {
        "no session could be opened".to_string()
    };
    format!("{why} ({error})")
}

impl DriverFactory for NetworkFactory {
    fn make(&self, _case: u64) -> Result<Box<dyn Driver>, String> {
        Ok(Box::new(NetworkDriver {
            runtime: Arc::clone(&self.runtime),
            target: Arc::clone(&self.target),
            conns: BTreeMap::new(),
            transcript: Transcript::default(),
            start: Instant::now(),
        }))
    }

    fn eid_suffix(&self, case: u64) -> String {
        format!(".{}.{case}", self.run_id)
    }

    fn alive(&self) -> Result<(), String> {
        self.preflight()
    }
}

/// The network driver. See the module docs.
pub struct NetworkDriver {
    runtime: Arc<tokio::runtime::Runtime>,
    target: Arc<NetworkTarget>,
    conns: BTreeMap<String, ConnHandle>,
    transcript: Transcript,
    start: Instant,
}

/// host and port of a ws://, wss://, tcp:// or tls:// URL.
fn host_port(url: &str) -> Result<(String, u16), String> {
    let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
    let default = match uri.scheme_str() {
        Some("ws") => Some(80),
        Some("wss") => Some(443),
        _ => None,
    };
    let port = uri.port_u16().or(default).ok_or_else(|| format!("{url}: no port"))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
}

impl NetworkDriver {
    fn deliver(&mut self, name: &str, command: Command) -> Result<(), DriverError> {
        let at = self.elapsed_ms();
        let conn = self
            .conns
            .get_mut(name)
            .ok_or_else(|| DriverError::NoSuchConnection(name.to_string()))?;
        self.transcript.command(at, name, &command);
        let _ = conn.commands.send(command);
        Ok(())
    }

    /// Blocks until `name` has an event or `until` passes.
    fn pump(&mut self, name: &str, until: Instant) {
        let Some(conn) = self.conns.get_mut(name) else {
            return;
        };
        conn.drain(name, &mut self.transcript);
        if !conn.events.is_empty() || conn.ended {
            return;
        }
        let now = Instant::now();
        if now >= until {
            return;
        }
        match conn.reports.recv_timeout(until - now) {
            Ok(Report::Event(at, event)) => {
                self.transcript.received(at, name, &event);
                if matches!(event, Event::Closed { .. }) {
                    conn.ended = true;
                }
                conn.events.push_back((at, event));
                conn.drain(name, &mut self.transcript);
            }
            Ok(Report::Connected(_)) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => conn.ended = true,
        }
    }
}

impl Driver for NetworkDriver {
    fn kind(&self) -> &'static str {
        "network"
    }

    fn info(&self) -> &TargetInfo {
        &self.target.info
    }

    fn configure(&mut self, tweak: ServerTweak) -> Result<(), Skip> {
        match tweak {
            ServerTweak::Rs256 if self.target.credentials.algorithm() == Some(Algorithm::Rs256) => Ok(()),
            ServerTweak::Rs256 => Err(Skip(
                "needs a target that verifies RS256 tokens and --jwt-key with its RSA key (--jwt-alg RS256)".into(),
            )),
            ServerTweak::NoSigningKey => Err(Skip(
                "needs a server without a token signing key; run it in simulation".into(),
            )),
        }
    }

    fn token(&mut self, eid: &str, device: &str, kind: &TokenKind) -> Result<String, Skip> {
        self.target.credentials.token(eid, device, kind, self.now_ms())
    }

    fn http(&mut self, request: &[u8]) -> Result<HttpAnswer, DriverError> {
        let url = self
            .target
            .ws
            .clone()
            .ok_or_else(|| Skip("no websocket target was given".into()))?;
        if !url.starts_with("ws://") {
            return Err(Skip("raw HTTP requests go to a ws:// target only".into()).into());
        }
        let (host, port) = host_port(&url).map_err(DriverError::Other)?;
        let path = url["ws://".len()..]
            .find('/')
            .map_or("/", |at| &url["ws://".len() + at..]);
        let request = String::from_utf8_lossy(request).replace("$path", path).into_bytes();
        let request = &request[..];
        let timeout = self.target.info.timeout;
        let at = self.elapsed_ms();
        self.transcript
            .note(at, "http", format!("sending {} bytes of HTTP to {url}", request.len()));
        let answer = self.runtime.block_on(async {
            let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port)))
                .await
                .map_err(|_| "dialing timed out".to_string())?
                .map_err(|e| e.to_string())?;
            http_exchange(stream, request, timeout).await.map_err(|e| e.to_string())
        });
        let at = self.elapsed_ms();
        self.transcript.http_answered(at, answer)
    }

    fn connect(&mut self, name: &str, spec: &ConnectSpec) -> Result<ConnectOutcome, DriverError> {
        let url = match spec.transport {
            TransportKind::Ws => self.target.ws.clone(),
            TransportKind::Tcp => self.target.tcp.clone(),
        }
        .ok_or_else(|| Skip(format!("no {} target was given", spec.transport)))?;
        let token = self.token(&spec.eid, &spec.device, &spec.token)?;
        let (host, port) = host_port(&url).map_err(DriverError::Other)?;
        let (mut handle, commands, reports) = ConnHandle::new();
        let start = self.start;
        let stamp: Stamp = Arc::new(move || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX));
        let timeout = self.target.info.timeout;
        let options = ClientOptions {
            timeout,
            insecure_skip_verify: self.target.insecure,
            ..ClientOptions::default()
        };
        let at = self.elapsed_ms();
        self.transcript.note(
            at,
            name,
            format!(
                "connecting to {url} as {}/{} with {}",
                spec.eid,
                spec.device,
                spec.token.describe()
            ),
        );
        let spec = spec.clone();
        let dial_reports = reports.clone();
        let tap = handle.tap.clone();
        self.runtime.spawn(async move {
            let dial = tokio::net::TcpStream::connect((host.as_str(), port));
            match tokio::time::timeout(timeout, dial).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let task = ConnTask {
                        url,
                        spec,
                        token,
                        options,
                        commands,
                        reports,
                        stamp,
                        tap,
                    };
                    run_connection(stream, task).await;
                }
                Ok(Err(error)) => {
                    let _ = dial_reports.send(Report::Connected(Err(error.to_string())));
                }
                Err(_) => {
                    let _ = dial_reports.send(Report::Connected(Err("dialing timed out".into())));
                }
            }
        });
        let deadline = timeout * 3;
        let outcome = match handle.reports.recv_timeout(deadline) {
            Ok(Report::Connected(outcome)) => outcome,
            Ok(Report::Event(..)) => Err("an event before the connect outcome".to_string()),
            Err(_) => Err("no outcome in time".to_string()),
        };
        let at = self.elapsed_ms();
        let outcome = self.transcript.connected(at, name, outcome)?;
        handle.drain(name, &mut self.transcript);
        self.conns.insert(name.to_string(), handle);
        Ok(outcome)
    }

    fn command(&mut self, name: &str, command: Command) -> Result<(), DriverError> {
        self.deliver(name, command)
    }

    fn next(&mut self, name: &str, within: Duration) -> Option<Event> {
        let until = Instant::now() + within;
        loop {
            let conn = self.conns.get_mut(name)?;
            if let Some(event) = conn.pop() {
                return Some(event);
            }
            if conn.ended || Instant::now() >= until {
                return None;
            }
            self.pump(name, until);
        }
    }

    fn arrived_ms(&self, name: &str) -> Option<u64> {
        self.conns.get(name).map(|c| c.last_arrival_ms)
    }

    fn wait(&mut self, duration: Duration) {
        std::thread::sleep(duration);
        let names: Vec<String> = self.conns.keys().cloned().collect();
        for name in names {
            if let Some(conn) = self.conns.get_mut(&name) {
                conn.drain(&name, &mut self.transcript);
            }
        }
    }

    fn close(&mut self, name: &str) {
        if self.command(name, Command::Close).is_err() {
            return;
        }
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until && self.conns.get(name).is_some_and(|c| !c.ended) {
            self.pump(name, until);
            if let Some(conn) = self.conns.get_mut(name) {
                // Keep the events for the steps; only watch for the end.
                if conn.events.iter().any(|(_, e)| matches!(e, Event::Closed { .. })) {
                    conn.ended = true;
                }
            }
        }
    }

    fn now_ms(&self) -> Millis {
        SystemClock.now_ms()
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    fn tap(&self, name: &str) -> Option<TapHandle> {
        self.conns.get(name).map(|c| c.tap.clone())
    }

    fn restart(&mut self, how: Restart) -> Result<(), DriverError> {
        let control = self.target.control.clone().ok_or_else(|| {
            Skip(format!(
                "to {how} the target, bimip-conform needs --restart-cmd, or --kill-cmd and --start-cmd"
            ))
        })?;
        if let Some(why) = control.0.unavailable(how) {
            return Err(Skip(why).into());
        }
        let at = self.elapsed_ms();
        self.transcript.note(at, "server", format!("{how} (hook)"));
        control.0.restart(how).map_err(DriverError::Other)?;
        // Every session of the case ends with the server.
        let until = Instant::now() + self.target.info.timeout;
        let names: Vec<String> = self.conns.keys().cloned().collect();
        for name in names {
            while Instant::now() < until && self.conns.get(&name).is_some_and(|c| !c.ended) {
                self.pump(&name, until);
                if let Some(conn) = self.conns.get_mut(&name)
                    && conn.events.iter().any(|(_, e)| matches!(e, Event::Closed { .. }))
                {
                    conn.ended = true;
                }
            }
        }
        let urls = [&self.target.ws, &self.target.tcp];
        for url in urls.into_iter().flatten() {
            let (host, port) = host_port(url).map_err(DriverError::Other)?;
            accepting_again(&host, port).map_err(|why| DriverError::Other(format!("{url}: {why}")))?;
        }
        let at = self.elapsed_ms();
        self.transcript.note(at, "server", "accepting connections again");
        Ok(())
    }
}

/// Waits until `host:port` accepts a TCP connection, at most [`RESTART_WAIT`].
fn accepting_again(host: &str, port: u16) -> Result<(), String> {
    use std::net::ToSocketAddrs as _;
    let until = Instant::now() + RESTART_WAIT;
    loop {
        let addrs: Vec<_> = (host, port).to_socket_addrs().map_err(|e| e.to_string())?.collect();
        let up = addrs
            .iter()
            .any(|addr| std::net::TcpStream::connect_timeout(addr, Duration::from_millis(500)).is_ok());
        if up {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(format!(
                "not accepting connections {RESTART_WAIT:?} after the restart hook"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
