//! Step definitions, written once against the [`Driver`] seam, one file per
//! SPEC area group. Every phrase is registered for Given, When and Then alike,
//! so a feature may use whichever keyword reads best.
//!
//! Steps are plain functions `fn(&mut CaseWorld, &Args)` in a table; cucumber
//! sees one dispatcher per pattern, which finds the function by matching the
//! step text again. (No macros: the table is explicit and needs no linker
//! tricks to be collected from a library.)
//!
//! [`Driver`]: super::driver::Driver

pub mod auth;
pub mod awareness;
pub mod chat;
pub mod client;
pub mod envelope;
pub mod pingpong;
pub mod token;
pub mod transport;

use crate::codec::describe::camel;
use std::sync::LazyLock;
use std::time::Duration;

use cucumber::codegen::{LocalBoxFuture, Regex};
use cucumber::step::{Collection, Context};
use serde_json::Value;

use super::world::{CaseWorld, fail};
use crate::codec::{self, Route};
use crate::proto::message_scheme::Payload;

/// A step's implementation.
pub type Handler = fn(&mut CaseWorld, &Args);

/// A phrase and what it does.
pub struct StepDef {
    pub pattern: &'static str,
    pub run: Handler,
}

/// The captures of a step's pattern, and the step (for doc strings).
pub struct Args {
    caps: Vec<Option<String>>,
    pub docstring: Option<String>,
}

impl Args {
    /// Capture `i` (1-based); empty when the group did not take part.
    pub fn s(&self, i: usize) -> &str {
        self.caps.get(i).and_then(|c| c.as_deref()).unwrap_or("")
    }

    pub fn opt(&self, i: usize) -> Option<&str> {
        self.caps.get(i).and_then(|c| c.as_deref())
    }

    pub fn n(&self, i: usize) -> i64 {
        self.s(i)
            .parse()
            .unwrap_or_else(|_| fail(format!("a number in capture {i}"), self.s(i)))
    }

    /// "alice" + "phone" -> "alice/phone" from two captures.
    pub fn conn(&self, user: usize, device: usize) -> String {
        super::world::conn_key(self.s(user), self.s(device))
    }
}

fn all_defs() -> Vec<StepDef> {
    let mut defs = Vec::new();
    defs.extend(transport::steps());
    defs.extend(auth::steps());
    defs.extend(envelope::steps());
    defs.extend(pingpong::steps());
    defs.extend(token::steps());
    defs.extend(awareness::steps());
    defs.extend(chat::steps());
    defs.extend(client::steps());
    defs
}

static TABLE: LazyLock<Vec<(Regex, Handler)>> = LazyLock::new(|| {
    all_defs()
        .into_iter()
        .map(|d| {
            let regex =
                Regex::new(&format!("^{}$", d.pattern)).unwrap_or_else(|e| panic!("step pattern {:?}: {e}", d.pattern));
            (regex, d.run)
        })
        .collect()
});

/// Every phrase the suite knows, for `--list-steps` and documentation.
pub fn phrases() -> Vec<&'static str> {
    all_defs().into_iter().map(|d| d.pattern).collect()
}

fn dispatch(world: &mut CaseWorld, context: Context) -> LocalBoxFuture<'_, ()> {
    Box::pin(async move {
        if let Some(why) = &world.halted {
            crate::conformance::world::skip(format!("not run: {why}"));
        }
        let text = context.step.value.as_str();
        let found = TABLE.iter().find_map(|(re, run)| re.captures(text).map(|c| (c, *run)));
        let Some((captures, run)) = found else {
            fail("a step definition for this text", text);
        };
        let args = Args {
            caps: captures.iter().map(|m| m.map(|m| m.as_str().to_string())).collect(),
            docstring: context.step.docstring.clone(),
        };
        run(world, &args);
    })
}

/// The steps as cucumber wants them: every phrase under Given, When and Then.
pub fn collection() -> Collection<CaseWorld> {
    let mut collection = Collection::new();
    for (regex, _) in TABLE.iter() {
        collection = collection
            .given(None, regex.clone(), dispatch)
            .when(None, regex.clone(), dispatch)
            .then(None, regex.clone(), dispatch);
    }
    collection
}

// ---------------------------------------------------------------------------
// Shared vocabulary
// ---------------------------------------------------------------------------

/// A user's connection in step text: `alice's phone`.
/// `alice's previous phone` is the connection the phone had before its latest.
pub const CONN: &str = r"(\w+)'s ((?:previous )?[\w-]+)";

/// A duration phrase: "90 seconds", "500 ms", "3 ping intervals", "1.5 ping intervals".
pub const DURATION: &str = r"(\d+(?:\.\d+)?) (seconds? plus the token leeway|seconds?|ms|milliseconds?|minutes?|ping intervals?|auth deadlines?)";

/// Parses the two captures of [`DURATION`].
pub fn duration(world: &CaseWorld, amount: &str, unit: &str) -> Duration {
    let amount: f64 = amount
        .parse()
        .unwrap_or_else(|_| fail("a number of time units", amount));
    if unit.ends_with("plus the token leeway") {
        // AUTH-6: a server may end a session up to its leeway after the token's exp (`--leeway`).
        return Duration::from_secs(1).mul_f64(amount) + world.driver.info().leeway;
    }
    let unit = if unit.starts_with("ping interval") {
        world.ping_interval()
    } else if unit.starts_with("auth deadline") {
        world.driver.info().auth_deadline
    } else if unit.starts_with("second") {
        Duration::from_secs(1)
    } else if unit.starts_with("minute") {
        Duration::from_secs(60)
    } else {
        Duration::from_millis(1)
    };
    unit.mul_f64(amount)
}

/// The presence code of a status name.
pub fn status_code(name: &str) -> i32 {
    match name {
        "unavailable" => 0,
        "online" => 1,
        "offline" => 2,
        "away" => 3,
        "busy" => 4,
        "do not disturb" | "do-not-disturb" => 5,
        other => fail("a presence status name", other),
    }
}

/// Replaces `$name` placeholders in step text: `$alice` is alice's EID,
/// `$message(local-1)` the message_id the server gave "local-1",
/// `$chat(local-1)` its chat_id, `$accepted(local-1)` its VersionUpdate's timestamp (when the server accepted
/// it), `$token(alice/phone)` a token the case
/// holds, `$x(129)` 129 letters "x", `$server_ping_id(alice/phone)` and
/// `$server_ping_time(alice/phone)` the last server ping's id and request_time,
/// `$now` the current time in ms.
pub fn substitute(world: &CaseWorld, text: &str) -> String {
    static PLACEHOLDER: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\$(\w+)(?:\(([^)]*)\))?").expect("placeholder pattern"));
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for c in PLACEHOLDER.captures_iter(text) {
        let Some(whole) = c.get(0) else { continue };
        out.push_str(&text[last..whole.start()]);
        last = whole.end();
        let name = c.get(1).map_or("", |m| m.as_str());
        let arg = c.get(2).map(|m| m.as_str());
        out.push_str(&placeholder(world, name, arg));
    }
    out.push_str(&text[last..]);
    out
}

fn placeholder(world: &CaseWorld, name: &str, arg: Option<&str>) -> String {
    let version = |local: &str| {
        world
            .memory
            .versions
            .get(local)
            .cloned()
            .unwrap_or_else(|| fail(format!("a VersionUpdate for {local:?} earlier in the case"), "none"))
    };
    let server_ping = |key: &str| {
        world
            .memory
            .server_pings
            .get(key)
            .cloned()
            .unwrap_or_else(|| fail(format!("a server ping on {key} earlier in the case"), "none"))
    };
    match (name, arg) {
        ("message", Some(local)) => version(local).message_id,
        ("chat", Some(local)) => version(local).chat_id,
        ("accepted", Some(local)) => version(local).timestamp.to_string(),
        ("token", Some(label)) => world
            .memory
            .tokens
            .get(label)
            .cloned()
            .unwrap_or_else(|| fail(format!("a token {label:?} earlier in the case"), "none")),
        ("bad_signature", Some(label)) => crate::conformance::driver::alter_signature(
            &world
                .memory
                .tokens
                .get(label)
                .cloned()
                .unwrap_or_else(|| fail(format!("a token {label:?} earlier in the case"), "none")),
        ),
        ("x", Some(n)) => "x".repeat(n.parse().unwrap_or(0)),
        ("server_ping_id", Some(key)) => server_ping(key).id,
        ("server_ping_time", Some(key)) => server_ping(key).request_time.to_string(),
        ("now", None) => world.now_ms().to_string(),
        ("any", None) => "$any".to_string(),
        (user, None) => world.eid(user),
        (other, Some(_)) => fail("a known placeholder", other),
    }
}

/// The route of a message name ("PingPong" -> 6).
pub fn route_of(message: &str) -> Route {
    Route::ALL
        .iter()
        .copied()
        .find(|r| r.message_name() == message)
        .unwrap_or_else(|| fail("a BIMIP message name (as in proto/bimip.proto)", message))
}

/// Object keys in snake_case become the JSON mapping's lowerCamelCase.
fn camel_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (camel(&k), camel_keys(v))).collect()),
        Value::Array(items) => Value::Array(items.into_iter().map(camel_keys).collect()),
        other => other,
    }
}

/// Parses step JSON after placeholder substitution.
pub fn parse_json(world: &CaseWorld, text: &str) -> Value {
    let text = substitute(world, text);
    let value: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| fail("valid JSON in the step", format!("{e}: {text}")));
    camel_keys(value)
}

/// The bytes of `Message {fields}` in a MessageScheme with the right route.
pub fn stanza_bytes(message: &str, fields: &Value) -> Vec<u8> {
    let route = route_of(message);
    let scheme = serde_json::json!({
        "route": route.number().to_string(),
        camel(route.field_name()): fields,
    });
    codec::json::json_to_bytes("MessageScheme", &scheme)
        .unwrap_or_else(|e| fail(format!("fields that make a valid {message}"), e))
}

/// A payload's message in the proto3 JSON mapping.
pub fn payload_json(payload: &Payload) -> Value {
    let bytes = codec::encode(payload);
    let scheme = codec::json::bytes_to_json("MessageScheme", &bytes).unwrap_or(Value::Null);
    let field = camel(Route::of(payload).field_name());
    scheme.get(&field).cloned().unwrap_or(Value::Object(Default::default()))
}

fn is_default(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || s == "0",
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_default),
    }
}

/// Whether `actual` holds everything `expected` says. Numbers match their
/// string forms (64-bit integers are strings in the mapping); an expected
/// default matches an absent field; `"$any"` matches any non-default value.
pub fn json_matches(expected: &Value, actual: Option<&Value>) -> bool {
    match (expected, actual) {
        (Value::String(s), actual) if s == "$any" => actual.is_some_and(|a| !is_default(a)),
        (e, None) => is_default(e),
        (Value::Object(e), Some(Value::Object(a))) => e.iter().all(|(k, v)| json_matches(v, a.get(k))),
        (Value::Array(e), Some(Value::Array(a))) => {
            e.len() == a.len() && e.iter().zip(a).all(|(e, a)| json_matches(e, Some(a)))
        }
        (Value::Number(e), Some(Value::String(a))) => a.parse::<f64>().ok() == e.as_f64(),
        (Value::String(e), Some(Value::Number(a))) => e.parse::<f64>().ok() == a.as_f64(),
        (Value::Number(e), Some(Value::Number(a))) => e.as_f64() == a.as_f64(),
        (e, Some(a)) => e == a,
    }
}

/// Whether a payload is `message` and matches `expected`.
pub fn payload_matches(payload: &Payload, message: &str, expected: &Value) -> bool {
    Route::of(payload).message_name() == message && json_matches(expected, Some(&payload_json(payload)))
}
