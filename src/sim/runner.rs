//! One simulation: the real server (engine behind the network adapters) as a
//! turmoil host, each device as a turmoil host running the reference client,
//! and this runner between steps drawing the workload and the faults from the
//! seed and writing what it does into the history.
//!
//! Phases: `setup` (every device connects), `chaos` (workload and faults),
//! `heal` (faults lifted, every device reconnects, each user re-asserts its
//! social choices and sets ONLINE), `check` (every user asks every other for
//! its awareness), `end`. The checkers in `invariants` read the history.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jsonwebtoken::{DecodingKey, EncodingKey};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::mpsc;

use super::faults::{self, Fault, FaultRates};
use super::history::{Entry, Log, What};
use super::storage::StorageModel;
use super::workload::{self, Action, Model, Token, device_name, eid};
use crate::client::{Client, ClientOptions, Event};
use crate::core::auth::{Algorithm, Claims, Signer, Verifier};
use crate::core::{Config, Engine, Millis, ShardId};
use crate::faults::Faults;
use crate::net::{MailSteps, ServerHandle, ServerOptions, SimClock};
use crate::proto::message_scheme::Payload;
use crate::proto::{AcknowledgmentRequest, AwarenessNotification, AwarenessRequest, Identity};

/// The simulated Unix time at the start, ms (2026-01-01).
pub const BASE_MS: Millis = 1_767_225_600_000;
const SECRET: &[u8] = b"bimip-simulation-hs256-secret-0123456789";
const PORT: u16 = 7000;
const URL: &str = "tcp://server:7000";
/// The `awareness_identifier` of the final awareness check's requests.
pub const CHECK_ID_BASE: i64 = 9_000_000;

/// How a simulation is set up. `config` is the engine's; `server_faults`
/// are deliberate server faults applied at the edge (`crate::faults`), for
/// the self-check that the checkers catch each.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub users: usize,
    pub devices: usize,
    /// Length of the workload-and-faults phase, simulated ms.
    pub chaos_ms: u64,
    /// Simulated time per turmoil step, ms.
    pub tick_ms: u64,
    /// Mean simulated ms between two workload actions.
    pub action_gap_ms: u64,
    pub faults: FaultRates,
    pub storage: StorageModel,
    pub config: Config,
    pub server_faults: Faults,
    /// Shards of the server's engine (src/core/README.md).
    pub shards: usize,
    /// Longest wait before a shard handles mail from another, simulated ms (`net::MailSteps::Seeded`, seeded by
    /// the run's seed); 0 handles it at once, as a server does.
    pub mail_delay_ms: u64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 1,
            users: 4,
            devices: 2,
            chaos_ms: 20_000,
            tick_ms: 10,
            action_gap_ms: 60,
            faults: FaultRates::default(),
            storage: StorageModel::default(),
            config: sim_config(),
            server_faults: Faults::none(),
            shards: 1,
            mail_delay_ms: 3,
        }
    }
}

/// The engine settings of a simulation: short ping timers, so a partition is
/// noticed within seconds of simulated time.
pub fn sim_config() -> Config {
    Config {
        ping_interval_ms: 1_000,
        max_missed_pongs: 2,
        ..Config::default()
    }
}

/// What the runner tells a device host.
// Payload is large; these are short-lived commands, boxing buys nothing here.
#[allow(clippy::large_enum_variant)]
enum Cmd {
    Connect { token: String, jti: String, expired: bool },
    Send(Payload),
    Drop,
}

thread_local! {
    /// The history of the simulation running on this thread: turmoil runs
    /// every host on the caller's thread, so a panic in a host lands here.
    static PANIC_LOG: RefCell<Option<Log>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let captured = PANIC_LOG.with(|slot| {
                slot.borrow().as_ref().map(|log| {
                    log.push("panic", What::Panic(info.to_string()));
                })
            });
            if captured.is_none() {
                previous(info);
            }
        }));
    });
}

fn elapsed_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now_ms() -> Millis {
    BASE_MS + i64::try_from(elapsed_ms()).unwrap_or(0)
}

/// Runs one simulation and returns its history.
pub fn simulate(options: &SimOptions) -> Vec<Entry> {
    install_panic_hook();
    let log = Log::default();
    PANIC_LOG.with(|slot| *slot.borrow_mut() = Some(log.clone()));
    let mut runner = Runner::new(options, log.clone());
    runner.run();
    drop(runner);
    PANIC_LOG.with(|slot| *slot.borrow_mut() = None);
    log.take()
}

/// Server-side pending lifts of faults, by due time.
#[derive(Debug)]
enum Lift {
    Repair(String),
    Release(String),
    Latency(String),
    Boot,
}

struct Runner {
    options: SimOptions,
    sim: turmoil::Sim<'static>,
    log: Log,
    rng: StdRng,
    model: Model,
    signer: Signer,
    hosts: Vec<String>,
    commands: BTreeMap<String, mpsc::UnboundedSender<Cmd>>,
    lifts: Vec<(u64, Lift)>,
    server_up: bool,
    disk: Arc<dyn super::storage::SimStorage>,
    crashes: u32,
    seen: usize,
}

impl Runner {
    fn new(options: &SimOptions, log: Log) -> Runner {
        let mut sim = turmoil::Builder::new()
            .rng_seed(options.seed)
            .tick_duration(Duration::from_millis(options.tick_ms))
            .min_message_latency(Duration::from_millis(1))
            .max_message_latency(Duration::from_millis(3))
            .simulation_duration(Duration::from_secs(24 * 3600))
            .build();
        let signer = Signer::new(Algorithm::Hs256, EncodingKey::from_secret(SECRET));
        let storage = options.storage.build();
        let disk = Arc::clone(&storage);
        let boots = Arc::new(AtomicU32::new(0));
        {
            let config = options.config.clone();
            let server_faults = options.server_faults.clone();
            let signer = signer.clone();
            let log = log.clone();
            let shards = options.shards.max(1);
            let seed = options.seed;
            let mail_delay_ms = options.mail_delay_ms;
            sim.host("server", move || {
                let config = config.clone();
                let server_faults = server_faults.clone();
                let signer = signer.clone();
                let storage = Arc::clone(&storage);
                let log = log.clone();
                let boot = boots.fetch_add(1, Ordering::Relaxed);
                let restart = boot > 0;
                async move {
                    log.push("server", What::Boot { restart });
                    let verifier =
                        server_faults.verifier(Verifier::new(Algorithm::Hs256, DecodingKey::from_secret(SECRET)));
                    let (social_log, social_events) = storage.boot_social();
                    let mut social_log = Some(social_log);
                    let mut engines = Vec::new();
                    for shard in 0..shards {
                        let (chat, chat_events) = match storage.boot_chat(shard) {
                            Ok(booted) => booted,
                            Err(why) => {
                                log.push("server", What::Panic(why.clone()));
                                return Err(why.into());
                            }
                        };
                        // The simulated journal is one shared log: every shard appends its users' changes to it.
                        let social = match social_log.take() {
                            Some(log) => log,
                            None => storage.boot_social().0,
                        };
                        let engine = Engine::new(
                            config.clone(),
                            verifier.clone(),
                            Some(signer.clone()),
                            storage.boot_revocations(),
                        )
                        .with_shard(ShardId::new(shard, shards))
                        .with_social(social, &social_events)
                        .with_chat(chat, &chat_events);
                        engines.push(engine);
                    }
                    crate::core::shard::recover(&mut engines);
                    let clock = Arc::new(SimClock::new(now_ms()));
                    let options = ServerOptions {
                        faults: server_faults,
                        // A new order of mail after each restart, as on threads.
                        mail_steps: match mail_delay_ms {
                            0 => MailSteps::Eager,
                            ms => MailSteps::Seeded {
                                seed: seed.wrapping_add(u64::from(boot)),
                                max_delay: Duration::from_millis(ms),
                            },
                        },
                        ..ServerOptions::default()
                    };
                    let mut server = ServerHandle::start_shards(engines, clock, options);
                    server.listen_tcp(turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?)?;
                    server.stopped().await;
                    Ok(())
                }
            });
        }
        let mut hosts = Vec::new();
        let mut commands = BTreeMap::new();
        for u in 0..options.users {
            for d in 0..options.devices {
                let name = device_name(u, d);
                let (tx, rx) = mpsc::unbounded_channel();
                sim.client(name.clone(), device_task(name.clone(), eid(u), rx, log.clone()));
                hosts.push(name.clone());
                commands.insert(name, tx);
            }
        }
        Runner {
            options: options.clone(),
            sim,
            log,
            rng: StdRng::seed_from_u64(options.seed),
            model: Model::new(options.users, options.devices),
            signer,
            hosts,
            commands,
            lifts: Vec::new(),
            server_up: true,
            disk,
            crashes: 0,
            seen: 0,
        }
    }

    fn elapsed(&self) -> u64 {
        u64::try_from(self.sim.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn note(&self, who: &str, what: What) {
        self.log.push_at(self.elapsed(), who, what);
    }

    fn step(&mut self) -> bool {
        if let Err(error) = self.sim.step() {
            self.note("sim", What::Panic(format!("the simulation failed: {error}")));
            return false;
        }
        self.learn();
        true
    }

    /// Updates the runner's beliefs from what the devices observed.
    fn learn(&mut self) {
        let fresh = self.log.since(self.seen);
        self.seen += fresh.len();
        for entry in fresh {
            let Some((u, d)) = parse_device(&entry.who) else {
                continue;
            };
            let dev = &mut self.model.dev[u][d];
            match entry.what {
                What::Session { .. } => {
                    dev.online = true;
                    dev.dialing = false;
                }
                What::Refused { .. } => {
                    dev.dialing = false;
                    dev.token_spent = true;
                }
                What::Closed { .. } | What::Dropped => {
                    dev.online = false;
                    dev.token_spent = true;
                }
                What::Received(Payload::ChatMessage(m)) if m.author == "receiver" => {
                    if dev.inbox.len() >= 16 {
                        dev.inbox.remove(0);
                    }
                    dev.inbox.push(m.message_id);
                }
                _ => {}
            }
        }
    }

    fn run_until(&mut self, until: u64) -> bool {
        while self.elapsed() < until {
            self.lift_due();
            if !self.step() {
                return false;
            }
        }
        true
    }

    fn send(&self, host: &str, cmd: Cmd) {
        if let Some(tx) = self.commands.get(host) {
            // A device host that ended drops the command, as a dead phone would.
            let _ = tx.send(cmd);
        }
    }

    fn connect(&mut self, u: usize, d: usize, token: Token) {
        let name = device_name(u, d);
        let now = now_ms();
        let dev = &mut self.model.dev[u][d];
        if dev.dialing || dev.online {
            return;
        }
        if token != Token::Reuse || dev.jti.is_empty() {
            dev.minted += 1;
            dev.jti = format!("{name}-t{}", dev.minted);
            dev.token_spent = false;
        }
        dev.dialing = true;
        let expired = token == Token::Expired;
        // An expired token was issued two hours ago for one hour.
        let (iat, exp) = if expired {
            (now / 1000 - 7_200, now / 1000 - 3_600)
        } else {
            (now / 1000, now / 1000 + 24 * 3600)
        };
        let claims = Claims {
            eid: eid(u),
            device_id: name.clone(),
            jti: dev.jti.clone(),
            iat,
            exp,
            ..Claims::default()
        };
        let jti = dev.jti.clone();
        match self.signer.mint(&claims) {
            Ok(token) => self.send(&name, Cmd::Connect { token, jti, expired }),
            Err(error) => self.note("sim", What::Panic(format!("minting a token: {error}"))),
        }
    }

    fn lift_due(&mut self) {
        let now = self.elapsed();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.lifts)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.lifts = later;
        for (_, lift) in due {
            self.lift(lift);
        }
    }

    fn lift(&mut self, lift: Lift) {
        match &lift {
            Lift::Repair(device) => self.sim.repair("server", device.as_str()),
            Lift::Release(device) => self.sim.release("server", device.as_str()),
            Lift::Latency(device) => {
                self.sim
                    .set_link_latency("server", device.as_str(), Duration::from_millis(2));
            }
            Lift::Boot => {
                if self.server_up {
                    return;
                }
                self.sim.bounce("server");
                self.server_up = true;
            }
        }
        self.note("net", What::Fault(format!("lift {lift:?}")));
    }

    fn inject(&mut self, fault: Fault) {
        let now = self.elapsed();
        self.note("net", What::Fault(format!("{fault:?}")));
        match fault {
            Fault::Partition { device, for_ms } => {
                self.sim.partition("server", device.as_str());
                self.lifts.push((now + for_ms, Lift::Repair(device)));
            }
            Fault::Hold { device, for_ms } => {
                self.sim.hold("server", device.as_str());
                self.lifts.push((now + for_ms, Lift::Release(device)));
            }
            Fault::Latency {
                device,
                latency_ms,
                for_ms,
            } => {
                self.sim
                    .set_link_latency("server", device.as_str(), Duration::from_millis(latency_ms));
                self.lifts.push((now + for_ms, Lift::Latency(device)));
            }
            Fault::Disconnect { device } => self.send(&device, Cmd::Drop),
            Fault::Crash { down_ms } => {
                if !self.server_up {
                    return;
                }
                self.crashes += 1;
                self.server_up = false;
                self.sim.crash("server");
                self.disk.crash(&mut self.rng);
                self.note("server", What::Crash);
                self.lifts.push((now + down_ms, Lift::Boot));
            }
        }
    }

    fn run(&mut self) {
        let o = self.options.clone();
        self.note(
            "sim",
            What::Phase(format!("setup seed={} users={} devices={}", o.seed, o.users, o.devices)),
        );
        for u in 0..o.users {
            for d in 0..o.devices {
                self.connect(u, d, Token::Fresh);
            }
        }
        if !self.run_until(1_000) {
            return;
        }
        self.note("sim", What::Phase("chaos".into()));
        let chaos_end = 1_000 + o.chaos_ms;
        let mut next_action = self.elapsed();
        let mut next_fault = if o.faults.mean_gap_ms == 0 {
            u64::MAX
        } else {
            self.elapsed() + faults::next_gap(&mut self.rng, &o.faults)
        };
        while self.elapsed() < chaos_end {
            let now = self.elapsed();
            if now >= next_action {
                use rand::Rng;
                if let Some(action) = self.model.next_action(&mut self.rng, now_ms_at(now)) {
                    match action {
                        Action::Send(u, d, payload) => self.send(&device_name(u, d), Cmd::Send(payload)),
                        Action::Connect(u, d, token) => self.connect(u, d, token),
                    }
                }
                next_action = now + self.rng.random_range(1..=o.action_gap_ms * 2);
            }
            if now >= next_fault {
                let fault = faults::draw(&mut self.rng, &self.hosts, self.crashes < o.faults.max_crashes);
                self.inject(fault);
                next_fault = now + faults::next_gap(&mut self.rng, &o.faults);
            }
            self.lift_due();
            if !self.step() {
                return;
            }
        }
        self.heal();
    }

    fn heal(&mut self) {
        let o = self.options.clone();
        self.note("sim", What::Phase("heal".into()));
        for (_, lift) in std::mem::take(&mut self.lifts) {
            self.lift(lift);
        }
        // Half-open connections end by the ping timeout; then every device dials.
        let ping_timeout =
            u64::try_from(o.config.ping_interval_ms).unwrap_or(1_000) * u64::from(o.config.max_missed_pongs + 2);
        let mut until = self.elapsed() + ping_timeout;
        if !self.run_until(until) {
            return;
        }
        // A client does not ping, so a connection the server already dropped
        // behind a partition can look alive to it: every device starts afresh.
        for host in self.hosts.clone() {
            self.send(&host, Cmd::Drop);
        }
        until = self.elapsed() + 100;
        if !self.run_until(until) {
            return;
        }
        for _ in 0..4 {
            for u in 0..o.users {
                for d in 0..o.devices {
                    self.connect(u, d, Token::Fresh);
                }
            }
            until = self.elapsed() + 2_000;
            if !self.run_until(until) {
                return;
            }
        }
        // Each user re-asserts its social choices from device 0, then goes ONLINE.
        let now = now_ms_at(self.elapsed());
        for u in 0..o.users {
            let intent = self.model.social[u].clone();
            let host = device_name(u, 0);
            self.send(
                &host,
                Cmd::Send(workload::visibility_request(
                    intent.visibility,
                    intent.location_sharing,
                    now,
                )),
            );
            for v in (0..o.users).filter(|v| *v != u) {
                let sub = if intent.subscribers.contains(&v) {
                    workload::add_subscriber(v, now)
                } else {
                    workload::remove_subscriber(u, v)
                };
                self.send(&host, Cmd::Send(sub));
                let block = workload::block_request(u, v, intent.blocks.contains(&v), now);
                self.send(&host, Cmd::Send(block));
            }
            let online = Payload::AwarenessNotification(AwarenessNotification {
                status: 1,
                timestamp: now,
                ..AwarenessNotification::default()
            });
            self.send(&host, Cmd::Send(online));
        }
        until = self.elapsed() + 3_000;
        if !self.run_until(until) {
            return;
        }
        self.note("sim", What::Phase("check".into()));
        for u in 0..o.users {
            for v in (0..o.users).filter(|v| *v != u) {
                let ask = Payload::AwarenessRequest(AwarenessRequest {
                    to: Some(Identity {
                        eid: eid(v),
                        connection_resource_id: String::new(),
                    }),
                    awareness_identifier: CHECK_ID_BASE + i64::try_from(v).unwrap_or(0),
                    timestamp: now_ms_at(self.elapsed()),
                    ..AwarenessRequest::default()
                });
                self.send(&device_name(u, 0), Cmd::Send(ask));
            }
        }
        until = self.elapsed() + 2_000;
        if self.run_until(until) {
            self.note("sim", What::Phase("end".into()));
        }
    }
}

fn now_ms_at(elapsed: u64) -> Millis {
    BASE_MS + i64::try_from(elapsed).unwrap_or(0)
}

/// (user, device) of a device host name.
pub fn parse_device(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix('u')?;
    let (u, d) = rest.split_once('d')?;
    Some((u.parse().ok()?, d.parse().ok()?))
}

enum Step {
    Cmd(Option<Cmd>),
    Event(Option<Event>),
}

/// One device: dials when told, sends what it is told, records every stanza
/// it receives, and acknowledges as a well-behaved client does (DELIVERED for
/// a receiver copy, SENT for its own copy, an echo for a state update).
async fn device_task(name: String, eid: String, mut rx: mpsc::UnboundedReceiver<Cmd>, log: Log) -> turmoil::Result {
    let mut client: Option<Client> = None;
    loop {
        let step = match client.as_mut() {
            Some(c) => tokio::select! {
                biased;
                cmd = rx.recv() => Step::Cmd(cmd),
                event = c.next_event() => Step::Event(event),
            },
            None => Step::Cmd(rx.recv().await),
        };
        match step {
            Step::Cmd(None) => return Ok(()),
            Step::Cmd(Some(Cmd::Connect { token, jti, expired })) => {
                drop(client.take());
                log.push(
                    &name,
                    What::Connect {
                        jti: jti.clone(),
                        expired,
                    },
                );
                match dial(&token, &log, &name).await {
                    Ok(c) if c.session().is_some() => {
                        log.push(&name, What::Session { jti });
                        client = Some(c);
                    }
                    Ok(_) => log.push(
                        &name,
                        What::Refused {
                            jti,
                            reason: "no session".into(),
                        },
                    ),
                    Err(reason) => log.push(&name, What::Refused { jti, reason }),
                }
            }
            Step::Cmd(Some(Cmd::Send(payload))) => {
                if let Some(c) = &client {
                    log.push(&name, What::Sent(payload.clone()));
                    // A dead connection shows up as Closed on the event side.
                    let _ = c.send(payload).await;
                }
            }
            Step::Cmd(Some(Cmd::Drop)) => {
                if client.take().is_some() {
                    log.push(&name, What::Dropped);
                }
            }
            Step::Event(Some(Event::Stanza(payload))) => {
                log.push(&name, What::Received(payload.clone()));
                if let (Some(ack), Some(c)) = (auto_ack(&name, &eid, &payload), &client) {
                    log.push(&name, What::Sent(ack.clone()));
                    let _ = c.send(ack).await;
                }
            }
            Step::Event(Some(Event::Closed { code, reason })) => {
                log.push(&name, What::Closed { code, reason });
                client = None;
            }
            Step::Event(Some(other)) => {
                log.push(
                    &name,
                    What::Closed {
                        code: None,
                        reason: format!("unexpected event {other:?}"),
                    },
                );
                client = None;
            }
            Step::Event(None) => {
                log.push(
                    &name,
                    What::Closed {
                        code: None,
                        reason: "event stream ended".into(),
                    },
                );
                client = None;
            }
        }
    }
}

async fn dial(token: &str, log: &Log, name: &str) -> Result<Client, String> {
    let options = ClientOptions {
        timeout: Duration::from_secs(3),
        clock: Arc::new(SimClock::new(now_ms())),
        ..ClientOptions::default()
    };
    let attempt = async {
        let stream = turmoil::net::TcpStream::connect(("server", PORT))
            .await
            .map_err(|e| format!("dial: {e}"))?;
        Client::over_stream(super::tap::Tap::new(stream, log.clone(), name), URL, token, options)
            .await
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(4), attempt)
        .await
        .map_err(|_| "connect timed out".to_string())?
}

fn auto_ack(device: &str, eid: &str, payload: &Payload) -> Option<Payload> {
    let ack = |message_id: &str, status: i32, to: Option<Identity>| {
        Payload::AcknowledgmentRequest(AcknowledgmentRequest {
            to,
            message_id: message_id.to_string(),
            status,
            ..AcknowledgmentRequest::default()
        })
    };
    match payload {
        Payload::ChatMessage(m) if m.author == "receiver" => Some(ack(&m.message_id, 2, m.from.clone())),
        Payload::ChatMessage(m) if m.author == "sender" => Some(ack(&m.message_id, 4, None)),
        Payload::AcknowledgmentResponse(r) => {
            let mine = r
                .from
                .as_ref()
                .is_some_and(|f| f.eid == eid && f.connection_resource_id == device);
            (!mine).then(|| ack(&r.message_id, r.status, None))
        }
        _ => None,
    }
}
