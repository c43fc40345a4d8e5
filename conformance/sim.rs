//! The simulation driver: the reference server and every client connection
//! as turmoil hosts, seeded, in simulated time. Waiting costs no wall time
//! beyond the simulation's steps, so the timeout rules run with SPEC's
//! default timers.
//!
//! The server host is the real stack (the sans-IO engine behind the network
//! adapters, [`ServerHandle`] with turmoil listeners, [`SimClock`]); each
//! connection is a turmoil client host running the reference client through
//! [`run_connection`]. The steps talk to the hosts over channels, and
//! [`Driver::next`] steps the simulation until an event arrives or the
//! simulated deadline passes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{DecodingKey, EncodingKey};

use super::driver::{
    Command, ConnHandle, ConnTask, ConnectOutcome, ConnectSpec, Credentials, Driver, DriverError, DriverFactory,
    HttpAnswer, Restart, ServerTweak, Skip, Stamp, TargetInfo, TokenKind, Transcript, TransportKind, http_exchange,
    run_connection,
};
use super::tap::TapHandle;
use crate::client::{ClientOptions, Event};
use crate::core::auth::{Algorithm, Signer, Verifier};
use crate::core::{Config, Engine, Millis, ShardId};
use crate::faults::Faults;
use crate::net::{MailSteps, ServerHandle, ServerOptions, SimClock};
use crate::sim::storage::{SimStorage, StorageModel};
use crate::variants::{Variant, Variants};

/// The simulated Unix time at the start of every case, ms (2026-01-01).
pub const BASE_MS: Millis = 1_767_225_600_000;
const SECRET: &[u8] = b"bimip-conformance-simulation-hs256-secret";
const RS256_PRIVATE: &str = include_str!("../tests/fixtures/keys/rs256-test.pem");
const RS256_PUBLIC: &str = include_str!("../tests/fixtures/keys/rs256-test.pkcs1.pub.pem");
const TCP_PORT: u16 = 7000;
const WS_PORT: u16 = 7001;

/// How the simulation is set up.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    /// Simulated time per step.
    pub tick: Duration,
    /// The reference server's limits and timers.
    pub config: Config,
    /// Deliberate server faults, applied at the edge (the self-check).
    pub faults: Faults,
    /// Behaviours SPEC allows that the reference server does not choose (the variant self-check).
    pub variants: Variants,
    pub info: TargetInfo,
    /// Shards of the reference server's engine (src/core/README.md).
    pub shards: usize,
    /// What the server keeps across a restart or a kill: everything (the reference server makes each write
    /// durable before it says so), or a broken disk for the test that the restart cases can fail.
    pub storage: StorageModel,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 7,
            tick: Duration::from_millis(1),
            config: Config {
                // Reachable in simulation; the rule (QUE-10) is the same at any limit.
                queue_max_items: 20,
                ..Config::default()
            },
            faults: Faults::none(),
            variants: Variants::default(),
            info: TargetInfo {
                queue_max_items: Some(20),
                timeout: Duration::from_secs(5),
                quiet: Duration::from_millis(500),
                // Simulated time: long enough that nothing is still on its way.
                settle: Duration::from_secs(3),
                clock_tolerance_ms: 1_000,
                timer_tolerance_ms: 50,
                // One simulated network: what the server sends first arrives first.
                order_slack_ms: 0,
                ..TargetInfo::default()
            },
            shards: 1,
            storage: StorageModel::Shared,
        }
    }
}

/// Makes one [`SimDriver`] per case.
#[derive(Clone, Debug, Default)]
pub struct SimFactory {
    pub options: SimOptions,
}

impl DriverFactory for SimFactory {
    fn make(&self, case: u64) -> Result<Box<dyn Driver>, String> {
        let mut options = self.options.clone();
        options.seed = options.seed.wrapping_add(case);
        Ok(Box::new(SimDriver::new(options)))
    }

    fn eid_suffix(&self, _case: u64) -> String {
        String::new()
    }
}

/// The server's keys in a simulation.
#[derive(Clone)]
struct Keys {
    verifier: Verifier,
    signer: Signer,
    server_signs: bool,
}

impl Keys {
    fn hs256() -> Keys {
        Keys {
            verifier: Verifier::new(Algorithm::Hs256, DecodingKey::from_secret(SECRET)),
            signer: Signer::new(Algorithm::Hs256, EncodingKey::from_secret(SECRET)),
            server_signs: true,
        }
    }

    fn rs256() -> Result<Keys, Skip> {
        let bad = |e: jsonwebtoken::errors::Error| Skip(format!("the RS256 test key: {e}"));
        Ok(Keys {
            verifier: Verifier::new(
                Algorithm::Rs256,
                DecodingKey::from_rsa_pem(RS256_PUBLIC.as_bytes()).map_err(bad)?,
            ),
            signer: Signer::new(
                Algorithm::Rs256,
                EncodingKey::from_rsa_pem(RS256_PRIVATE.as_bytes()).map_err(bad)?,
            ),
            server_signs: true,
        })
    }
}

/// The simulation driver. See the module docs.
pub struct SimDriver {
    sim: turmoil::Sim<'static>,
    options: SimOptions,
    keys: Keys,
    started: bool,
    /// What the server keeps across its restarts: every write (the reference server makes a write durable
    /// before it says so; the crash models of `bimip sim` test that, not the suite).
    storage: Arc<dyn SimStorage>,
    /// Tells the server host to shut down and boot again ([`Restart::Graceful`]).
    reboot: Arc<tokio::sync::Notify>,
    conns: BTreeMap<String, ConnHandle>,
    transcript: Transcript,
    hosts: u64,
}

impl SimDriver {
    pub fn new(options: SimOptions) -> SimDriver {
        let sim = turmoil::Builder::new()
            .rng_seed(options.seed)
            .tick_duration(options.tick)
            .min_message_latency(Duration::from_millis(1))
            .max_message_latency(Duration::from_millis(2))
            // Segments in flight per direction: turmoil's default (64) is far
            // below a real socket buffer, and a burst of stanzas (SES-5)
            // would deadlock client and server writing to each other.
            .tcp_capacity(4096)
            .simulation_duration(Duration::from_secs(30 * 24 * 3600))
            .build();
        let storage = options.storage.build();
        SimDriver {
            sim,
            options,
            keys: Keys::hs256(),
            started: false,
            storage,
            reboot: Arc::new(tokio::sync::Notify::new()),
            conns: BTreeMap::new(),
            transcript: Transcript::default(),
            hosts: 0,
        }
    }

    fn ensure_server(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        let mut config = self.options.config.clone();
        config.revoke_notice |= self.options.variants.has(Variant::RevokeNotice);
        let faults = self.options.faults.clone();
        let variants = self.options.variants.clone();
        let mut verifier = faults.verifier(self.keys.verifier.clone());
        if variants.has(Variant::TokenLeeway) {
            verifier = verifier.with_leeway_s(crate::variants::TOKEN_LEEWAY_S);
        }
        let signer = self.keys.server_signs.then(|| self.keys.signer.clone());
        let shards = self.options.shards.max(1);
        let mail_steps = MailSteps::Seeded {
            seed: self.options.seed,
            max_delay: Duration::from_millis(3),
        };
        let (storage, reboot) = (Arc::clone(&self.storage), Arc::clone(&self.reboot));
        self.sim.host("server", move || {
            let config = config.clone();
            let verifier = verifier.clone();
            let signer = signer.clone();
            let options = ServerOptions {
                faults: faults.clone(),
                variants: variants.clone(),
                mail_steps: mail_steps.clone(),
                ..ServerOptions::default()
            };
            let (storage, reboot) = (Arc::clone(&storage), Arc::clone(&reboot));
            async move {
                // Each pass is one boot: a graceful restart shuts the server down and boots it again from its
                // storage; a kill crashes the host, and turmoil runs this again.
                loop {
                    let (social, social_events) = storage.boot_social();
                    let mut social = Some(social);
                    let mut engines = Vec::new();
                    for shard in 0..shards {
                        let (chat, chat_events) = storage.boot_chat(shard)?;
                        let engine = Engine::new(
                            config.clone(),
                            verifier.clone(),
                            signer.clone(),
                            storage.boot_revocations(),
                        )
                        .with_shard(ShardId::new(shard, shards))
                        .with_social(social.take().unwrap_or_else(|| storage.boot_social().0), &social_events)
                        .with_chat(chat, &chat_events);
                        engines.push(engine);
                    }
                    crate::core::shard::recover(&mut engines);
                    let now = turmoil::sim_elapsed().map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
                    let clock = Arc::new(SimClock::new(BASE_MS + now));
                    let mut server = ServerHandle::start_shards(engines, clock, options.clone());
                    server.listen_tcp(turmoil::net::TcpListener::bind(("0.0.0.0", TCP_PORT)).await?)?;
                    server.listen_ws(turmoil::net::TcpListener::bind(("0.0.0.0", WS_PORT)).await?)?;
                    tokio::select! {
                        () = server.stopped() => return Ok(()),
                        () = reboot.notified() => server.shutdown().await,
                    }
                }
            }
        });
    }

    /// One simulation step, then every report moved to its connection.
    fn step(&mut self) {
        if let Err(error) = self.sim.step() {
            panic!("the simulation failed: {error}");
        }
        for (name, conn) in &mut self.conns {
            conn.drain(name, &mut self.transcript);
        }
    }

    fn elapsed(&self) -> Duration {
        self.sim.elapsed()
    }

    fn deliver(&mut self, name: &str, command: Command) -> Result<(), DriverError> {
        let at = self.elapsed_ms();
        let conn = self
            .conns
            .get_mut(name)
            .ok_or_else(|| DriverError::NoSuchConnection(name.to_string()))?;
        self.transcript.command(at, name, &command);
        // A connection that has ended drops the command, as a socket would.
        let _ = conn.commands.send(command);
        Ok(())
    }
}

impl Driver for SimDriver {
    fn kind(&self) -> &'static str {
        "simulation"
    }

    fn info(&self) -> &TargetInfo {
        &self.options.info
    }

    fn configure(&mut self, tweak: ServerTweak) -> Result<(), Skip> {
        if self.started {
            return Err(Skip(
                "server settings must be changed before the first connection".into(),
            ));
        }
        match tweak {
            ServerTweak::Rs256 => self.keys = Keys::rs256()?,
            ServerTweak::NoSigningKey => self.keys.server_signs = false,
        }
        Ok(())
    }

    fn token(&mut self, eid: &str, device: &str, kind: &TokenKind) -> Result<String, Skip> {
        Credentials::Key(Arc::new(self.keys.signer.clone())).token(eid, device, kind, self.now_ms())
    }

    fn http(&mut self, request: &[u8]) -> Result<HttpAnswer, DriverError> {
        self.ensure_server();
        self.hosts += 1;
        let host = format!("client{}", self.hosts);
        let timeout = self.options.info.timeout;
        let (tx, rx) = std::sync::mpsc::channel();
        let request_for_host = String::from_utf8_lossy(request).replace("$path", "/ws").into_bytes();
        self.sim.client(host, async move {
            let answer = match turmoil::net::TcpStream::connect(("server", WS_PORT)).await {
                Ok(stream) => http_exchange(stream, &request_for_host, timeout)
                    .await
                    .map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            let _ = tx.send(answer);
            Ok(())
        });
        let at = self.elapsed_ms();
        self.transcript.note(
            at,
            "http",
            format!("sending {} bytes of HTTP to the WebSocket listener", request.len()),
        );
        let deadline = self.elapsed() + timeout * 2;
        let answer = loop {
            self.step();
            if let Ok(answer) = rx.try_recv() {
                break answer;
            }
            if self.elapsed() > deadline {
                break Err("no answer in time".to_string());
            }
        };
        let at = self.elapsed_ms();
        self.transcript.http_answered(at, answer)
    }

    fn connect(&mut self, name: &str, spec: &ConnectSpec) -> Result<ConnectOutcome, DriverError> {
        self.ensure_server();
        let token = self.token(&spec.eid, &spec.device, &spec.token)?;
        let (mut handle, commands, reports) = ConnHandle::new();
        self.hosts += 1;
        let host = format!("client{}", self.hosts);
        let (port, url) = match spec.transport {
            TransportKind::Ws => (WS_PORT, format!("ws://server:{WS_PORT}/ws")),
            TransportKind::Tcp => (TCP_PORT, format!("tcp://server:{TCP_PORT}")),
        };
        let timeout = self.options.info.timeout;
        let tap = handle.tap.clone();
        let spec_for_host = spec.clone();
        let token_for_host = token.clone();
        self.sim.client(host, async move {
            let stamp: Stamp =
                Arc::new(|| turmoil::sim_elapsed().map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
            let base = BASE_MS + i64::try_from(stamp()).unwrap_or(0);
            let options = ClientOptions {
                timeout,
                clock: Arc::new(SimClock::new(base)),
                ..ClientOptions::default()
            };
            match turmoil::net::TcpStream::connect(("server", port)).await {
                Ok(stream) => {
                    let task = ConnTask {
                        url,
                        spec: spec_for_host,
                        token: token_for_host,
                        options,
                        commands,
                        reports,
                        stamp,
                        tap,
                    };
                    run_connection(stream, task).await;
                }
                Err(error) => {
                    let _ = reports.send(super::driver::Report::Connected(Err(error.to_string())));
                }
            }
            Ok(())
        });
        let at = self.elapsed_ms();
        self.transcript.note(
            at,
            name,
            format!(
                "connecting over {} as {}/{} with {}",
                spec.transport,
                spec.eid,
                spec.device,
                spec.token.describe()
            ),
        );
        let deadline = self.elapsed() + timeout * 2;
        let outcome = loop {
            self.step();
            if let Some(outcome) = handle.drain(name, &mut self.transcript) {
                break outcome;
            }
            if self.elapsed() > deadline {
                break Err("no outcome in time".to_string());
            }
        };
        let at = self.elapsed_ms();
        let outcome = self.transcript.connected(at, name, outcome)?;
        self.conns.insert(name.to_string(), handle);
        Ok(outcome)
    }

    fn command(&mut self, name: &str, command: Command) -> Result<(), DriverError> {
        self.deliver(name, command)
    }

    fn next(&mut self, name: &str, within: Duration) -> Option<Event> {
        let deadline = self.elapsed() + within;
        loop {
            let conn = self.conns.get_mut(name)?;
            if let Some(event) = conn.pop() {
                return Some(event);
            }
            if conn.ended || self.elapsed() >= deadline {
                return None;
            }
            self.step();
        }
    }

    fn arrived_ms(&self, name: &str) -> Option<u64> {
        self.conns.get(name).map(|c| c.last_arrival_ms)
    }

    fn wait(&mut self, duration: Duration) {
        let deadline = self.elapsed() + duration;
        while self.elapsed() < deadline {
            self.step();
        }
    }

    fn close(&mut self, name: &str) {
        if self.command(name, Command::Close).is_err() {
            return;
        }
        let deadline = self.elapsed() + Duration::from_secs(5);
        while self.elapsed() < deadline && self.conns.get(name).is_some_and(|c| !c.ended) {
            self.step();
        }
    }

    fn now_ms(&self) -> Millis {
        BASE_MS + i64::try_from(self.elapsed().as_millis()).unwrap_or(0)
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    fn tap(&self, name: &str) -> Option<TapHandle> {
        self.conns.get(name).map(|c| c.tap.clone())
    }

    fn restart(&mut self, how: Restart) -> Result<(), DriverError> {
        self.ensure_server();
        let at = self.elapsed_ms();
        self.transcript.note(at, "server", format!("{how}"));
        match how {
            Restart::Graceful => self.reboot.notify_one(),
            Restart::Kill => {
                self.sim.crash("server");
                let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(self.options.seed);
                self.storage.crash(&mut rng);
                self.sim.bounce("server");
            }
        }
        // Until every session of the case has seen its end, and then as long again for the listeners.
        let deadline = self.elapsed() + self.options.info.timeout;
        while self.elapsed() < deadline && self.conns.values().any(|c| !c.ended) {
            self.step();
        }
        self.wait(Duration::from_millis(100));
        Ok(())
    }
}
