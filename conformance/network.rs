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
///
/// A cluster (several nodes serving as one) is given as several URLs of a transport: `ws` (or `tcp`) is node 0,
/// `more_ws` (`more_tcp`) nodes 1, 2, ... Each case spreads its devices over the nodes ([`Placement`]).
#[derive(Clone, Debug)]
pub struct NetworkTarget {
    /// `ws://host:port/path` or `wss://...`: node 0.
    pub ws: Option<String>,
    /// `tcp://host:port` or `tls://host:port`: node 0.
    pub tcp: Option<String>,
    /// The other WebSocket nodes of a cluster (nodes 1, 2, ...); empty for a single server, and unused without `ws`.
    pub more_ws: Vec<String>,
    /// The other TCP nodes of a cluster (nodes 1, 2, ...); empty for a single server, and unused without `tcp`.
    pub more_tcp: Vec<String>,
    pub credentials: Credentials,
    pub info: TargetInfo,
    /// Accept any TLS certificate.
    pub insecure: bool,
    /// How the target is restarted, for the cases that need it (`lifecycle.rs`); `None`: those are skipped.
    pub control: Option<Control>,
}

impl NetworkTarget {
    /// The URLs of `transport`'s nodes, node 0 first; none when the target does not offer it.
    pub fn nodes(&self, transport: TransportKind) -> Vec<&str> {
        let (first, more) = match transport {
            TransportKind::Ws => (&self.ws, &self.more_ws),
            TransportKind::Tcp => (&self.tcp, &self.more_tcp),
        };
        match first {
            Some(first) => std::iter::once(first.as_str())
                .chain(more.iter().map(String::as_str))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Every URL of the target, WebSocket nodes first.
    pub fn urls(&self) -> Vec<&str> {
        let mut all = self.nodes(TransportKind::Ws);
        all.extend(self.nodes(TransportKind::Tcp));
        all
    }

    /// Whether some transport has more than one node.
    pub fn is_cluster(&self) -> bool {
        TransportKind::ALL.iter().any(|t| self.nodes(*t).len() > 1)
    }
}

/// Which node of a cluster each connection of one case goes to (issue 17): deterministic, round robin.
///
/// The k-th distinct (EID, device) the case connects (from 0, whatever the transport) goes to node `k mod n`, `n`
/// being the number of nodes of the connection's transport; each later connection of the same (EID, device) goes
/// to the node after its previous one, so a device that comes back (a replaced session, a resumption, a token
/// presented again) does so on another node. Raw HTTP requests rotate on their own: the i-th of a case goes to
/// node `i mod n`. With one node everything goes to node 0, as before clusters.
///
/// No scenario keeps a reconnection on the node it left: every one that connects a device again (SES-1's
/// replacement and its order, CHAT-14's resend, QUE-3/QUE-6's redelivery, TRN-19's reconnection, TOK and AUTH
/// tokens presented again, the restarts) means something a cluster owes its clients on any node.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// Per (EID, device): its rank among the case's devices, and how many connections it opened so far.
    devices: BTreeMap<(String, String), (usize, usize)>,
    /// Raw HTTP requests sent so far.
    requests: usize,
}

impl Placement {
    /// The node (of `nodes`, at least 1) of the next connection of `eid`'s `device`.
    pub fn connection(&mut self, eid: &str, device: &str, nodes: usize) -> usize {
        let rank = self.devices.len();
        let (rank, opened) = self
            .devices
            .entry((eid.to_string(), device.to_string()))
            .or_insert((rank, 0));
        let node = (*rank + *opened) % nodes.max(1);
        *opened += 1;
        node
    }

    /// The node (of `nodes`, at least 1) of the next raw HTTP request.
    pub fn request(&mut self, nodes: usize) -> usize {
        let node = self.requests % nodes.max(1);
        self.requests += 1;
        node
    }
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
    ///
    /// A cluster's every node is asked, one after the other.
    pub fn preflight(&self) -> Result<(), String> {
        let mut driver = self.driver();
        let offered: Vec<(TransportKind, usize, String)> = TransportKind::ALL
            .iter()
            .flat_map(|t| {
                let nodes = self.target.nodes(*t).into_iter().enumerate();
                nodes.map(|(node, url)| (*t, node, url.to_string()))
            })
            .collect();
        for (transport, node, url) in &offered {
            let url = url.as_str();
            let eid = format!("preflight{}@example.com", self.eid_suffix(0));
            // One name per node: a cluster's nodes are asked in turn, each connection closed before the next.
            let name = match node {
                0 => format!("preflight/{transport}"),
                _ => format!("preflight/{transport}#{node}"),
            };
            let mut spec = ConnectSpec::new(&eid, "preflight", *transport);
            // Pings surface unanswered: an echo of the preflight's ping must not be answered (and echoed again).
            spec.auto_pong = false;
            spec.surface_pings = true;
            let outcome = driver.open(&name, &spec, url.to_string(), None);
            match outcome {
                Ok(ConnectOutcome::Session(_)) => {
                    let answered = answers_a_ping(&mut driver, &name, self.target.info.timeout);
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

    fn driver(&self) -> NetworkDriver {
        NetworkDriver {
            runtime: Arc::clone(&self.runtime),
            target: Arc::clone(&self.target),
            conns: BTreeMap::new(),
            transcript: Transcript::default(),
            start: Instant::now(),
            placement: Placement::default(),
        }
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
        Ok(Box::new(self.driver()))
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
    /// Which node of a cluster each of the case's connections goes to.
    placement: Placement,
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

    /// Opens connection `name` to `url` (node `node` of a cluster, for the transcript).
    fn open(
        &mut self,
        name: &str,
        spec: &ConnectSpec,
        url: String,
        node: Option<usize>,
    ) -> Result<ConnectOutcome, DriverError> {
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
                "connecting to {url}{} as {}/{} with {}",
                node.map(|n| format!(" (node {n})")).unwrap_or_default(),
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
        // A cluster's nodes answer in turn ([`Placement::request`]): every node must refuse a bad upgrade.
        let nodes = self.target.nodes(TransportKind::Ws);
        if nodes.is_empty() {
            return Err(Skip("no websocket target was given".into()).into());
        }
        let url = nodes[self.placement.request(nodes.len())].to_string();
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
        let nodes = self.target.nodes(spec.transport);
        if nodes.is_empty() {
            return Err(Skip(format!("no {} target was given", spec.transport)).into());
        }
        let node = self.placement.connection(&spec.eid, &spec.device, nodes.len());
        let url = nodes[node].to_string();
        let node = (nodes.len() > 1).then_some(node);
        self.open(name, spec, url, node)
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
        // The hooks restart the whole target: every node of a cluster must accept connections again.
        for url in self.target.urls() {
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
