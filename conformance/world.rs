//! The cucumber World of one case: a driver, the case's users and
//! connections, the events received but not yet consumed by a step, and what
//! the steps remember (message ids, tokens, the last pong, ...).
//!
//! Steps fail by panicking with an "Expected: ... / Actual: ..." message
//! ([`fail`]); a step that cannot run against the target panics with
//! [`SKIP_PREFIX`] and a reason ([`skip`]), which the report turns into the
//! verdict "skipped"; one that needs a route the target says it lacks
//! (`--without-route`) panics with [`NOT_APPLICABLE_PREFIX`]
//! ([`not_applicable`]): "not applicable". An answer 501 `unknown_route` to a
//! route SPEC defines ends the case at once ("unimplemented").

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::driver::{ConnectOutcome, Driver, DriverError, DriverFactory, SessionInfo, TransportKind};
use crate::client::Event;
use crate::codec::{self, ErrorKind};
use crate::core::Millis;
use crate::proto::message_scheme::Payload;
use crate::proto::{ErrorMessage, Identity, PingPong, VersionUpdate};

/// The panic message prefix of a skipped step.
pub const SKIP_PREFIX: &str = "SKIPPED: ";

/// The panic message prefix of a step the target cannot take part in: it lacks a route on purpose.
pub const NOT_APPLICABLE_PREFIX: &str = "NOT APPLICABLE: ";

/// Fails the step with what SPEC expects and what happened.
pub fn fail(expected: impl fmt::Display, actual: impl fmt::Display) -> ! {
    panic!("Expected: {expected}\nActual: {actual}")
}

/// Marks the case skipped: it cannot run against this target.
pub fn skip(reason: impl fmt::Display) -> ! {
    panic!("{SKIP_PREFIX}{reason}")
}

/// A stanza for an "Actual:" line: its route, type and fields in the proto3 JSON mapping, tokens abbreviated.
pub fn shown(payload: Payload) -> String {
    format!("the stanza {}", super::driver::describe_bytes(&codec::encode(&payload)))
}

/// Marks the case not applicable: it needs what the target says it does not implement.
pub fn not_applicable(reason: impl fmt::Display) -> ! {
    panic!("{NOT_APPLICABLE_PREFIX}{reason}")
}

/// Turns a driver error into a step failure or skip.
pub fn driver_failed(error: DriverError) -> ! {
    match error {
        DriverError::Skip(reason) => skip(reason.0),
        other => {
            if matches!(other, DriverError::Connect { .. }) {
                CONNECT_FAILED.with(|c| c.set(true));
            }
            fail("the driver to carry out the step", other)
        }
    }
}

/// A driver factory shared by the runner's worker threads.
pub type SharedFactory = Arc<dyn DriverFactory + Send + Sync>;

/// Why a run stops before its last case ([`Halt::why`]), shared by its workers.
#[derive(Clone, Debug, Default)]
pub struct Halt {
    reason: Arc<std::sync::Mutex<Option<String>>>,
    deadline: Option<(std::time::Instant, Duration)>,
}

impl Halt {
    /// A run that stops `deadline` after now, if given.
    pub fn new(deadline: Option<Duration>) -> Halt {
        Halt {
            reason: Arc::default(),
            deadline: deadline.map(|d| (std::time::Instant::now() + d, d)),
        }
    }

    /// Why no more case may start, if none may.
    pub fn why(&self) -> Option<String> {
        if let Some(why) = self
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            return Some(why);
        }
        match self.deadline {
            Some((at, total)) if std::time::Instant::now() >= at => {
                Some(format!("the run's deadline ({} s) passed", total.as_secs()))
            }
            _ => None,
        }
    }

    /// Stops the run: the cases not yet started are skipped with `why`.
    pub fn stop(&self, why: String) {
        self.reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(why);
    }
}

thread_local! {
    static HALT: RefCell<Halt> = RefCell::new(Halt::default());
    /// A step of this thread's current case could not connect (`driver_failed`).
    static CONNECT_FAILED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static FACTORY: RefCell<Option<SharedFactory>> = const { RefCell::new(None) };
    static NEXT_CASE: RefCell<u64> = const { RefCell::new(0) };
    static PASS: std::cell::Cell<TransportKind> = const { std::cell::Cell::new(TransportKind::Ws) };
}

/// Sets the transport of this thread's pass: the one a step that names none ("alice is connected as ...") opens
/// its connections over, in the cases started from now on (`runner`: a transport-neutral scenario runs once per
/// transport the target offers).
pub fn set_pass(transport: TransportKind) {
    PASS.with(|p| p.set(transport));
}

/// The transport of this thread's pass ([`set_pass`]).
pub fn pass() -> TransportKind {
    PASS.with(std::cell::Cell::get)
}

/// Sets the factory the worlds of this thread get their driver from; the
/// cases of worker `worker` are numbered from `worker * 100_000 + 1`.
/// The run's [`Halt`], for the cases this thread starts from now on.
pub fn set_halt(halt: Halt) {
    HALT.with(|h| *h.borrow_mut() = halt);
}

/// After a case: whether a step of it could not connect (and forget it for the next case).
pub fn take_connect_failure() -> bool {
    CONNECT_FAILED.with(|c| c.replace(false))
}

pub fn set_factory(factory: Option<SharedFactory>, worker: u64) {
    FACTORY.with(|f| *f.borrow_mut() = factory);
    NEXT_CASE.with(|n| *n.borrow_mut() = worker * 100_000);
}

/// One open (or ended) connection of the case.
#[derive(Clone, Debug)]
pub struct Conn {
    pub user: String,
    pub device: String,
    pub transport: TransportKind,
    pub session: Option<SessionInfo>,
    /// The connect outcome, for Then steps about a refusal.
    pub outcome: Option<ConnectOutcome>,
    /// The suite's clock when the case began to open the connection, ms.
    pub opened_ms: Millis,
    /// A stanza (or the Authenticate RESPONSE) arrived (see [`CaseWorld::receive`]).
    pub first_stanza_seen: bool,
}

/// What steps remember between each other.
#[derive(Debug, Default)]
pub struct Memory {
    /// VersionUpdates received, by message_id_local.
    pub versions: BTreeMap<String, VersionUpdate>,
    /// Client pings sent, by id.
    pub sent_pings: BTreeMap<String, PingPong>,
    /// Chat requests sent, by message_id_local.
    pub sent_chats: BTreeMap<String, Payload>,
    /// When each message_id_local was first sent (the suite's clock, ms).
    pub chat_sent_ms: BTreeMap<String, Millis>,
    /// AcknowledgmentRequests sent, by message_id: (status, timestamp).
    pub acks_sent: BTreeMap<String, Vec<(i32, i64)>>,
    /// The last AwarenessRequest's identifier per connection.
    pub asked: BTreeMap<String, i64>,
    /// The last pong per connection.
    pub pongs: BTreeMap<String, PingPong>,
    /// The last server ping per connection.
    pub server_pings: BTreeMap<String, PingPong>,
    /// The last ErrorMessage per connection.
    pub errors: BTreeMap<String, ErrorMessage>,
    /// The last stanza a JSON expectation matched, per connection.
    pub matched: BTreeMap<String, Payload>,
    /// Tokens the case holds, by label ("alice/phone", "alice/phone refreshed").
    pub tokens: BTreeMap<String, String>,
    /// Subscriber resource ids by "owner>subscriber".
    pub resource_ids: BTreeMap<String, String>,
    /// AwarenessResponses about users the asker may not see, per connection (AWR-14).
    pub hidden_answers: BTreeMap<String, Vec<crate::proto::AwarenessResponse>>,
    /// Ids the case made up, to keep them unique.
    pub counter: u64,
}

/// An absence a step asserted ("bob's phone receives no ChatMessage"). It
/// holds past the step's own short watch, until the case's next action or its
/// end, and the world waits out a settle window before either (issue 21.2):
/// a leak that comes late fails like one that comes at once.
#[derive(Clone)]
pub struct Forbidden {
    pub key: String,
    /// What must not arrive, for the failure message ("ChatMessage").
    pub what: String,
    /// `driver.elapsed_ms()` when the step began watching.
    pub since_ms: u64,
    pub matches: Arc<dyn Fn(&Payload) -> bool + Send + Sync>,
}

/// The World of one case.
pub struct CaseWorld {
    pub driver: Box<dyn Driver>,
    pub case: u64,
    /// Why this case does not run: the run stopped before it began ([`Halt`]).
    pub halted: Option<String>,
    /// What "alice is connected as ..." connects over: the pass's transport ([`set_pass`]).
    pub transport: TransportKind,
    suffix: String,
    pub conns: BTreeMap<String, Conn>,
    /// Events received and not yet consumed, per connection.
    pub inbox: BTreeMap<String, VecDeque<Event>>,
    pub memory: Memory,
    /// "alice/phone" -> the driver key of the phone's latest connection.
    latest: BTreeMap<String, String>,
    /// "alice/phone" -> the driver key of the connection before it.
    previous: BTreeMap<String, String>,
    /// Per connection: how many queued events came before the last stanza
    /// [`CaseWorld::take`] matched (the rest came after it).
    pub after_match: BTreeMap<String, usize>,
    /// Absences asserted since the case's last action.
    forbidden: Vec<Forbidden>,
    /// The suite's clock when the case began, ms.
    pub started_ms: Millis,
    /// The suite's clock when the case last began an action (a send, a
    /// connect, a close), ms.
    pub acted_ms: Millis,
    /// What the case's stamps say of the server's clock ([`CaseWorld::stamp_problem`]).
    clock: Option<ClockBand>,
    /// Every event received, with its connection and when it arrived (ms
    /// since the case started), for order across connections.
    pub arrivals: Vec<(String, u64, Event)>,
    /// The answer to the case's last raw HTTP request ([`Driver::http`]).
    pub http: Option<super::driver::HttpAnswer>,
}

/// The offsets (server clock minus the suite's, ms) that every stamp the case
/// saw allows: a stamp made between suite times `after` and `seen` puts the
/// offset in `[stamp - seen, stamp - after]`.
#[derive(Clone, Copy, Debug)]
struct ClockBand {
    lo: i64,
    hi: i64,
}

impl ClockBand {
    /// Narrows the band by a stamp made between suite times `after` and
    /// `now`, or says why the stamp fits no offset the band allows.
    fn admit(&mut self, stamp: Millis, after: Millis, now: Millis) -> Result<(), String> {
        let (lo, hi) = (stamp - now - STAMP_SLACK_MS, stamp - after + STAMP_SLACK_MS);
        let (new_lo, new_hi) = (lo.max(self.lo), hi.min(self.hi));
        if new_lo <= new_hi {
            (self.lo, self.hi) = (new_lo, new_hi);
            return Ok(());
        }
        let off = if hi < self.lo { hi - self.lo } else { lo - self.hi };
        Err(format!(
            "{} ms {} what the clock tolerance and the case's other stamps allow (it was made between {after} and \
             {now} on the suite's clock; the server's clock is {}..{} ms from the suite's)",
            off.abs(),
            if off < 0 { "before" } else { "after" },
            self.lo,
            self.hi
        ))
    }
}

/// Slack on each side of a stamp's window, ms: clocks read in whole ms, and
/// the server may read its clock a moment before it takes the stanza in.
const STAMP_SLACK_MS: i64 = 25;

impl fmt::Debug for CaseWorld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaseWorld")
            .field("driver", &self.driver.kind())
            .field("case", &self.case)
            .field("conns", &self.conns.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why a world could not be made.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("no driver factory is set for this thread")]
    NoFactory,
    #[error("making the driver: {0}")]
    Driver(String),
}

impl cucumber::World for CaseWorld {
    type Error = WorldError;

    async fn new() -> Result<Self, WorldError> {
        let factory = FACTORY.with(|f| f.borrow().clone()).ok_or(WorldError::NoFactory)?;
        let case = NEXT_CASE.with(|n| {
            let mut n = n.borrow_mut();
            *n += 1;
            *n
        });
        let driver = factory.make(case).map_err(WorldError::Driver)?;
        Ok(CaseWorld {
            driver,
            case,
            halted: HALT.with(|h| h.borrow().why()),
            transport: pass(),
            suffix: factory.eid_suffix(case),
            conns: BTreeMap::new(),
            inbox: BTreeMap::new(),
            memory: Memory::default(),
            latest: BTreeMap::new(),
            previous: BTreeMap::new(),
            after_match: BTreeMap::new(),
            forbidden: Vec::new(),
            started_ms: 0,
            acted_ms: 0,
            clock: None,
            arrivals: Vec::new(),
            http: None,
        }
        .started())
    }
}

/// The key of a connection: "alice/phone".
pub fn conn_key(user: &str, device: &str) -> String {
    format!("{user}/{device}")
}

impl CaseWorld {
    fn started(mut self) -> Self {
        self.started_ms = self.driver.now_ms();
        self.acted_ms = self.started_ms;
        self
    }

    /// Checks a server-filled time that means "now" when the server made the
    /// stanza (issue 21.3): it was made after suite time `after` (the action
    /// that caused it, or the case's start) and before now, so it must agree
    /// with every other stamp of the case on one offset between the two
    /// clocks, and that offset must be within the target's clock tolerance.
    /// A stale or future stamp says why; a good one narrows the band.
    pub fn stamp_problem(&mut self, stamp: Millis, after: Millis) -> Option<String> {
        let now = self.now_ms();
        let after = after.max(self.started_ms);
        let tolerance = self.driver.info().clock_tolerance_ms;
        let band = self.clock.get_or_insert(ClockBand {
            lo: -tolerance,
            hi: tolerance,
        });
        band.admit(stamp, after, now).err()
    }

    /// The EID of a named user of this case, e.g. "alice@example.com".
    pub fn eid(&self, user: &str) -> String {
        if user.contains('@') {
            return user.to_string();
        }
        format!("{user}{}@example.com", self.suffix)
    }

    /// The device identity of a connection.
    pub fn identity(&self, user: &str, device: &str) -> Identity {
        Identity {
            eid: self.eid(user),
            connection_resource_id: device.to_string(),
        }
    }

    /// The identity of a user (eid only).
    pub fn user_identity(&self, user: &str) -> Identity {
        Identity {
            eid: self.eid(user),
            connection_resource_id: String::new(),
        }
    }

    /// The driver key for a new connection of (user, device): "alice/phone",
    /// then "alice/phone#2", ...; the older one becomes "previous".
    pub fn new_key(&mut self, user: &str, device: &str) -> String {
        let written = conn_key(user, device);
        let mut key = written.clone();
        let mut n = 1;
        while self.conns.contains_key(&key) {
            n += 1;
            key = format!("{written}#{n}");
        }
        if let Some(old) = self.latest.insert(written.clone(), key.clone()) {
            self.previous.insert(written, old);
        }
        key
    }

    /// The driver key of a connection as steps write it ("alice/phone",
    /// "alice/previous phone").
    pub fn resolve(&self, written: &str) -> String {
        if let Some((user, device)) = written.split_once("/previous ") {
            let base = conn_key(user, device);
            return self
                .previous
                .get(&base)
                .cloned()
                .unwrap_or_else(|| fail(format!("an earlier connection of {base}"), "none"));
        }
        self.latest.get(written).cloned().unwrap_or_else(|| written.to_string())
    }

    /// A fresh number for made-up ids.
    pub fn fresh(&mut self) -> u64 {
        self.memory.counter += 1;
        self.memory.counter
    }

    pub fn conn(&self, key: &str) -> &Conn {
        self.conns
            .get(key)
            .unwrap_or_else(|| fail(format!("a connection {key} opened earlier in the case"), "none"))
    }

    /// The connections of a user, keys in order.
    pub fn devices_of(&self, user: &str) -> Vec<String> {
        self.conns
            .iter()
            .filter(|(_, c)| c.user == user && c.session.is_some())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Sends one stanza on a connection.
    pub fn send(&mut self, key: &str, payload: Payload) {
        self.applicable(codec::Route::of(&payload).number());
        self.settle();
        match &payload {
            Payload::TextPayloadRequest(r) => self.remember_chat_sent(&r.message_id_local),
            Payload::MediaPayloadRequest(r) => self.remember_chat_sent(&r.message_id_local),
            Payload::AcknowledgmentRequest(r) => {
                let sent = (r.status, r.timestamp);
                self.memory
                    .acks_sent
                    .entry(r.message_id.clone())
                    .or_default()
                    .push(sent);
            }
            _ => {}
        }
        if let Err(e) = self.driver.send(key, &payload) {
            driver_failed(e)
        }
    }

    fn remember_chat_sent(&mut self, local: &str) {
        self.memory
            .chat_sent_ms
            .entry(local.to_string())
            .or_insert(self.acted_ms);
    }

    /// Ends the case as not applicable when it is about to send a route the target does not implement on
    /// purpose (`--without-route`).
    fn applicable(&self, route: i64) {
        if self.driver.info().without_routes.contains(&route) {
            not_applicable(format!(
                "the case sends route {route}, which the target does not implement (--without-route)"
            ));
        }
    }

    fn applicable_bytes(&self, bytes: &[u8]) {
        if let Some(route) = codec::describe(bytes).route {
            self.applicable(route);
        }
    }

    pub fn send_burst(&mut self, key: &str, stanzas: Vec<Vec<u8>>) {
        for stanza in &stanzas {
            self.applicable_bytes(stanza);
        }
        self.settle();
        if let Err(e) = self.driver.send_burst(key, stanzas) {
            driver_failed(e)
        }
    }

    pub fn send_raw(&mut self, key: &str, bytes: Vec<u8>) {
        self.applicable_bytes(&bytes);
        self.settle();
        if let Err(e) = self.driver.send_raw(key, bytes) {
            driver_failed(e)
        }
    }

    /// The server's clock now, as far as the suite can tell.
    pub fn now_ms(&self) -> i64 {
        self.driver.now_ms()
    }

    pub fn timeout(&self) -> Duration {
        self.driver.info().timeout
    }

    pub fn quiet(&self) -> Duration {
        self.driver.info().quiet
    }

    /// The ping interval the server announced (or the default).
    pub fn ping_interval(&self) -> Duration {
        self.conns
            .values()
            .filter_map(|c| c.session.as_ref()?.response.as_ref())
            .map(|r| r.ping_interval_ms)
            .find(|ms| *ms > 0)
            .and_then(|ms| u64::try_from(ms).ok())
            .map_or(self.driver.info().ping_interval, Duration::from_millis)
    }

    /// One event for `key`: queued first, else from the driver within `within`.
    /// Checks what SPEC says of every stanza a server sends.
    fn pull(&mut self, key: &str, within: Duration) -> Option<Event> {
        if let Some(event) = self.inbox.get_mut(key).and_then(VecDeque::pop_front) {
            return Some(event);
        }
        self.receive(key, within)
    }

    /// The next event from the driver, checked (`check_server_event`). On
    /// WebSocket a first stanza that is the Authenticate RESPONSE becomes the
    /// session's, not an event: it is optional there (TRN-16, TRN-17), so
    /// the suite never waits for it except in the case that asks for it.
    fn receive(&mut self, key: &str, within: Duration) -> Option<Event> {
        loop {
            let event = self.driver.next(key, within)?;
            check_server_event(&event);
            if let Event::Stanza(Payload::ErrorMessage(e)) = &event
                && e.code == 501
                && e.route.parse::<i64>().is_ok_and(|r| (2..=27).contains(&r))
            {
                // Nothing the case waits for can come after this: waiting out the timeout would only be slower.
                fail(
                    format!("{key}'s route {} handled (SPEC defines it)", e.route),
                    format!("501 unknown_route: {}", e.message),
                );
            }
            self.arrived(key, &event);
            if !self.greeted(key, &event) {
                return Some(event);
            }
        }
    }

    fn arrived(&mut self, key: &str, event: &Event) {
        let at = self.driver.arrived_ms(key).unwrap_or_else(|| self.driver.elapsed_ms());
        self.arrivals.push((key.to_string(), at, event.clone()));
    }

    /// When the first event on `key` that `wanted` accepts arrived, after
    /// pulling in what the driver already has.
    pub fn first_arrival(&mut self, key: &str, wanted: impl Fn(&Event) -> bool) -> Option<u64> {
        let mut pulled = Vec::new();
        while let Some(event) = self.receive(key, Duration::ZERO) {
            self.check_forbidden(key, &event);
            pulled.push(event);
        }
        self.inbox.entry(key.to_string()).or_default().extend(pulled);
        self.arrivals
            .iter()
            .find(|(k, _, e)| k == key && wanted(e))
            .map(|(_, at, _)| *at)
    }

    /// Whether `event` is the WebSocket session's first stanza and its
    /// Authenticate RESPONSE (then kept in the session).
    fn greeted(&mut self, key: &str, event: &Event) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        if conn.transport != TransportKind::Ws || conn.first_stanza_seen || matches!(event, Event::Closed { .. }) {
            return false;
        }
        conn.first_stanza_seen = true;
        match (event, &mut conn.session) {
            (Event::Stanza(Payload::Authenticate(response)), Some(session))
                if response.r#type == 2 && session.response.is_none() =>
            {
                session.response = Some(response.clone());
                true
            }
            _ => false,
        }
    }

    /// Waits until the WebSocket session `key` showed its first stanza (within
    /// the timeout), so that `session.response` says whether it was the
    /// Authenticate RESPONSE. Other events stay queued.
    pub fn await_first_stanza(&mut self, key: &str) {
        let within = self.timeout();
        let start = self.driver.elapsed_ms();
        let budget = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
        while self.conns.get(key).is_some_and(|c| !c.first_stanza_seen) {
            let spent = self.driver.elapsed_ms().saturating_sub(start);
            if spent >= budget {
                break;
            }
            // Not `receive`: it would go on waiting for an event after the RESPONSE.
            let Some(event) = self.driver.next(key, Duration::from_millis(budget - spent)) else {
                break;
            };
            check_server_event(&event);
            self.check_forbidden(key, &event);
            self.arrived(key, &event);
            if self.greeted(key, &event) {
                continue;
            }
            let closed = matches!(event, Event::Closed { .. });
            self.inbox.entry(key.to_string()).or_default().push_back(event);
            if closed {
                break;
            }
        }
    }

    /// Takes the first stanza on `key` that satisfies `wanted`, waiting at most
    /// `within`. Stanzas before it stay queued. Err holds what arrived.
    pub fn take(
        &mut self,
        key: &str,
        within: Duration,
        mut wanted: impl FnMut(&Payload) -> bool,
    ) -> Result<Payload, Vec<Event>> {
        let queue = self.inbox.entry(key.to_string()).or_default();
        if let Some(i) = queue.iter().position(|e| matches!(e, Event::Stanza(p) if wanted(p)))
            && let Some(Event::Stanza(payload)) = queue.remove(i)
        {
            self.after_match.insert(key.to_string(), i);
            self.lift(key, &payload);
            return Ok(payload);
        }
        let start = self.driver.elapsed_ms();
        let budget = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
        let mut seen = Vec::new();
        loop {
            if self.inbox[key].iter().any(|e| matches!(e, Event::Closed { .. })) {
                break;
            }
            let spent = self.driver.elapsed_ms().saturating_sub(start);
            if spent >= budget {
                break;
            }
            let Some(event) = self.receive(key, Duration::from_millis(budget - spent)) else {
                break;
            };
            if let Event::Stanza(p) = &event
                && wanted(p)
            {
                self.lift(key, p);
                let before = self.inbox[key].len();
                self.after_match.insert(key.to_string(), before);
                return Ok(p.clone());
            }
            self.check_forbidden(key, &event);
            seen.push(event.clone());
            if let Some(q) = self.inbox.get_mut(key) {
                q.push_back(event);
            }
        }
        let mut all: Vec<Event> = self.inbox[key].iter().cloned().collect();
        if all.is_empty() {
            all = seen;
        }
        Err(all)
    }

    /// Like [`CaseWorld::take`], failing the step with `what` when nothing matches.
    pub fn expect(
        &mut self,
        key: &str,
        what: impl fmt::Display,
        within: Duration,
        wanted: impl FnMut(&Payload) -> bool,
    ) -> Payload {
        match self.take(key, within, wanted) {
            Ok(payload) => payload,
            Err(seen) => fail(
                format!("{key} receives {what} within {within:?}"),
                format!("{} received {}", key, summarize(&seen)),
            ),
        }
    }

    /// The next event on `key` in arrival order (None after `within`). The
    /// caller judges it, so it lifts an absence it matches.
    pub fn next_event(&mut self, key: &str, within: Duration) -> Option<Event> {
        self.inbox.entry(key.to_string()).or_default();
        let event = self.pull(key, within)?;
        if let Event::Stanza(p) = &event {
            self.lift(key, p);
        }
        Some(event)
    }

    /// Everything that arrives on `key` during `window` (plus what is queued).
    pub fn collect(&mut self, key: &str, window: Duration) -> Vec<Event> {
        let mut got: Vec<Event> = self.inbox.entry(key.to_string()).or_default().drain(..).collect();
        if got.iter().any(|e| matches!(e, Event::Closed { .. })) {
            return got;
        }
        let start = self.driver.elapsed_ms();
        let budget = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        loop {
            let spent = self.driver.elapsed_ms().saturating_sub(start);
            if spent >= budget {
                break;
            }
            match self.receive(key, Duration::from_millis(budget - spent)) {
                Some(event) => {
                    self.check_forbidden(key, &event);
                    let last = matches!(event, Event::Closed { .. });
                    got.push(event);
                    if last {
                        break;
                    }
                }
                None => {
                    // Ended or quiet until the window's end.
                    let spent = self.driver.elapsed_ms().saturating_sub(start);
                    if spent < budget {
                        self.driver.wait(Duration::from_millis(budget - spent));
                    }
                    break;
                }
            }
        }
        got
    }

    /// Puts events back at the front of the queue, in order.
    pub fn unread(&mut self, key: &str, events: Vec<Event>) {
        let queue = self.inbox.entry(key.to_string()).or_default();
        for event in events.into_iter().rev() {
            queue.push_front(event);
        }
    }

    /// Waits for the connection to end; returns the close code. Stanzas before
    /// the end stay queued.
    pub fn closed(&mut self, key: &str, within: Duration) -> Result<Option<u16>, Vec<Event>> {
        let queue = self.inbox.entry(key.to_string()).or_default();
        if let Some(i) = queue.iter().position(|e| matches!(e, Event::Closed { .. }))
            && let Some(Event::Closed { code, .. }) = queue.remove(i)
        {
            return Ok(code);
        }
        let start = self.driver.elapsed_ms();
        let budget = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
        loop {
            let spent = self.driver.elapsed_ms().saturating_sub(start);
            if spent >= budget {
                break;
            }
            match self.receive(key, Duration::from_millis(budget - spent)) {
                Some(Event::Closed { code, .. }) => return Ok(code),
                Some(event) => {
                    self.check_forbidden(key, &event);
                    if let Some(q) = self.inbox.get_mut(key) {
                        q.push_back(event);
                    }
                }
                None => break,
            }
        }
        Err(self.inbox[key].iter().cloned().collect())
    }

    /// Remembers a connect outcome under `key`.
    pub fn record_connect(
        &mut self,
        key: &str,
        user: &str,
        device: &str,
        transport: TransportKind,
        outcome: ConnectOutcome,
    ) {
        let session = match &outcome {
            ConnectOutcome::Session(s) => Some(s.clone()),
            _ => None,
        };
        let token = match &outcome {
            ConnectOutcome::Session(s) => Some(s.token.clone()),
            ConnectOutcome::Refused(r) => Some(r.token.clone()),
            ConnectOutcome::Opened => None,
        };
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            self.memory.tokens.insert(key.to_string(), token);
        }
        self.inbox.insert(key.to_string(), VecDeque::new());
        self.conns.insert(
            key.to_string(),
            Conn {
                user: user.to_string(),
                device: device.to_string(),
                transport,
                session,
                outcome: Some(outcome),
                opened_ms: self.acted_ms,
                first_stanza_seen: transport == TransportKind::Tcp,
            },
        );
    }

    /// What every case checks at its end, whatever its steps: on each plaintext connection, every WebSocket
    /// message or TCP frame from the server was exactly one stanza, canonically encoded (ENV-12, TRN-3, TRN-8).
    /// Two stanzas packed into one frame decode as one merged message, so the steps alone would not notice.
    pub fn check_at_end(&mut self) {
        self.wait_out_absences();
        let keys: Vec<String> = self.conns.keys().cloned().collect();
        for key in keys {
            let Some(tap) = self.driver.tap(&key) else { continue };
            let log = tap.log();
            if !log.plaintext {
                continue;
            }
            for bytes in &log.stanzas {
                let Ok(payload) = codec::decode(bytes, usize::MAX) else {
                    continue; // reported as undecodable when a step read it (ENV-1)
                };
                if codec::encode(&payload) != *bytes {
                    fail(
                        "every WebSocket message or TCP frame from the server to be one stanza, canonically encoded (ENV-12, TRN-3, TRN-8)",
                        format!("{key} received {}", hex::encode(bytes)),
                    );
                }
            }
        }
    }

    /// Asserts that nothing `matches` arrives on `key`: watched for the quiet
    /// window now, then held until the next action or the case's end
    /// ([`Forbidden`]). Events seen stay queued for later steps.
    pub fn expect_none(
        &mut self,
        key: &str,
        what: impl Into<String>,
        matches: impl Fn(&Payload) -> bool + Send + Sync + 'static,
    ) {
        let what = what.into();
        let since_ms = self.driver.elapsed_ms();
        let quiet = self.quiet();
        let events = self.collect(key, quiet);
        if let Some(found) = events.iter().find(|e| matches!(e, Event::Stanza(p) if matches(p))) {
            fail(format!("no {what} on {key}"), describe_event(found));
        }
        self.unread(key, events);
        self.forbid(key, what, since_ms, matches);
    }

    /// Holds an absence a step watched from `since_ms` on until the next
    /// action or the case's end ([`Forbidden`]).
    pub fn forbid(
        &mut self,
        key: &str,
        what: impl Into<String>,
        since_ms: u64,
        matches: impl Fn(&Payload) -> bool + Send + Sync + 'static,
    ) {
        self.forbidden.push(Forbidden {
            key: key.to_string(),
            what: what.into(),
            since_ms,
            matches: Arc::new(matches),
        });
    }

    /// Fails the step when `event` is something an earlier step said would not come.
    fn check_forbidden(&self, key: &str, event: &Event) {
        let Event::Stanza(payload) = event else { return };
        if let Some(f) = self.forbidden.iter().find(|f| f.key == key && (f.matches)(payload)) {
            let after = self.driver.elapsed_ms().saturating_sub(f.since_ms);
            fail(
                format!(
                    "no {} on {key}, from the step that said so to the end of the case",
                    f.what
                ),
                format!("{} arrived {after} ms after that step", describe_event(event)),
            );
        }
    }

    /// A step expected `payload` on `key`: the absences it matches were
    /// bounded in time by the scenario ("nothing about alice, then her status
    /// within 2 seconds"), and end.
    fn lift(&mut self, key: &str, payload: &Payload) {
        self.forbidden.retain(|f| !(f.key == key && (f.matches)(payload)));
    }

    /// Waits until every absence asserted so far has been watched for the
    /// target's settle window, checking what arrives meanwhile, then lets
    /// them go: the case's next action may cause what they forbade.
    pub fn settle(&mut self) {
        self.wait_out_absences();
        self.acted_ms = self.driver.now_ms();
    }

    fn wait_out_absences(&mut self) {
        let Some(since) = self.forbidden.iter().map(|f| f.since_ms).max() else {
            return;
        };
        let settle = u64::try_from(self.driver.info().settle.as_millis()).unwrap_or(u64::MAX);
        let spent = self.driver.elapsed_ms().saturating_sub(since);
        if spent < settle {
            self.driver.wait(Duration::from_millis(settle - spent));
        }
        let mut keys: Vec<String> = self.forbidden.iter().map(|f| f.key.clone()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let mut arrived = Vec::new();
            while let Some(event) = self.receive(&key, Duration::ZERO) {
                self.check_forbidden(&key, &event);
                let closed = matches!(event, Event::Closed { .. });
                arrived.push(event);
                if closed {
                    break;
                }
            }
            self.inbox.entry(key).or_default().extend(arrived);
        }
        self.forbidden.clear();
    }

    /// Checks an ErrorMessage's common fields (ERR-1, ERR-4) and remembers it.
    pub fn check_error(&mut self, key: &str, error: &ErrorMessage) {
        let after = self.conns.get(key).map_or(0, |c| c.opened_ms);
        if let Some(why) = self.stamp_problem(error.timestamp, after) {
            fail(
                "ErrorMessage.timestamp to be the server's clock in ms when it was sent (ERR-4)",
                format!("{}: {why}", error.timestamp),
            );
        }
        self.memory.errors.insert(key.to_string(), error.clone());
    }
}

/// What SPEC requires of every event a server causes: one valid stanza per
/// message or frame (ENV-1, ENV-2, TRN-3, TRN-8), binary only (TRN-3), and
/// ErrorMessages from the error table (ERR-1).
pub fn check_server_event(event: &Event) {
    match event {
        Event::Undecodable(bytes) => fail(
            "every stanza from the server to be one MessageScheme with one payload and the matching route (ENV-1, ENV-2)",
            format!("{} ({})", hex::encode(bytes), codec::describe(bytes).envelope),
        ),
        Event::Text(text) => fail(
            "only binary WebSocket messages from the server (TRN-3)",
            format!("a text message {text:?}"),
        ),
        Event::Stanza(Payload::ErrorMessage(error)) => {
            let known = ErrorKind::from_name(&error.message);
            if known.map(|k| i32::from(k.code())) != Some(error.code) {
                fail(
                    "an ErrorMessage whose code and message are one row of the error table (ERR-1)",
                    format!("code {} message {:?}", error.code, error.message),
                );
            }
        }
        _ => {}
    }
}

/// A short account of events for failure messages.
pub fn summarize(events: &[Event]) -> String {
    if events.is_empty() {
        return "nothing".to_string();
    }
    let parts: Vec<String> = events.iter().map(describe_event).collect();
    parts.join("; ")
}

/// One event, readably.
pub fn describe_event(event: &Event) -> String {
    match event {
        Event::Stanza(payload) => super::driver::describe_bytes(&codec::encode(payload)),
        Event::Undecodable(bytes) => format!("undecodable bytes {}", hex::encode(bytes)),
        Event::Text(text) => format!("text message {text:?}"),
        Event::Closed { code, reason } => format!("close (code {code:?}, {reason})"),
    }
}

#[cfg(test)]
mod tests {
    use super::ClockBand;

    /// A target's clock may be far from the suite's (the tolerance), but one case's stamps must agree on one offset:
    /// a stamp 90 s stale passes a 120 s tolerance alone and fails beside a fresh one.
    #[test]
    fn stamps_of_one_case_agree_on_one_clock_offset() {
        let tolerance = 120_000;
        let fresh = |band: &mut ClockBand, stamp, after, now| band.admit(stamp, after, now);
        let mut band = ClockBand {
            lo: -tolerance,
            hi: tolerance,
        };
        // The server runs 40 s ahead: its answers to requests sent at 1,000 and 5,000 say so.
        assert_eq!(fresh(&mut band, 41_010, 1_000, 1_020), Ok(()));
        assert_eq!(fresh(&mut band, 45_030, 5_000, 5_040), Ok(()));
        // Made between 6,000 and 6,050 by the suite's clock, stamped 90 s earlier.
        let stale = fresh(&mut band, 46_020 - 90_000, 6_000, 6_050).unwrap_err();
        assert!(stale.contains("before what the clock tolerance"), "{stale}");
        // A stamp from the future fails the same way.
        assert!(fresh(&mut band, 46_020 + 5_000, 6_000, 6_050).is_err());
        // And a fresh one still passes: a failure leaves the band as it was.
        assert_eq!(fresh(&mut band, 47_030, 7_000, 7_050), Ok(()));
        // Alone, the stale stamp is within the tolerance.
        let mut alone = ClockBand {
            lo: -tolerance,
            hi: tolerance,
        };
        assert_eq!(fresh(&mut alone, 46_020 - 90_000, 6_000, 6_050), Ok(()));
    }
}
