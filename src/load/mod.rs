//! `bimip bench`: a load generator for any BIMIP server, built on the
//! reference client.
//!
//! - [`chat`]: N sender/receiver pairs chat with acknowledgments, at a fixed
//!   rate or flat out, after a warm-up; delivered msgs/s and the latency from
//!   a send to the receiver's ChatMessage, to the sender's VersionUpdate
//!   (accepted) and to the sender's delivered acknowledgment.
//! - [`durability`]: chat over several nodes that must lose nothing acknowledged while the test that runs it
//!   kills, pauses and restarts them (issue 17's fault test).
//! - [`idle`]: N idle connections, and the server's resident memory per
//!   connection.
//! - [`spawn`]: the reference server as a child process (the default target),
//!   token minting, `/proc` memory readings.
//! - [`stats`]: latency histograms and percentiles (shared with the MQTT
//!   comparison load in `examples/mqtt_load.rs`).

pub mod chat;
mod cli;
pub mod durability;
pub mod idle;
mod progress;
pub mod spawn;
pub mod stats;

pub use chat::{ChatOptions, ChatReport};
pub use cli::{BenchArgs, BenchReport, run};
pub use idle::{IdleOptions, IdleReport};
pub use spawn::{Minter, SpawnOptions, SpawnedServer, StoreMode};
pub use stats::{Latencies, Summary};

use crate::client::ClientError;

/// Why a load run could not be carried out. Misbehaviour of the server under
/// load (errors, losses, reordering) is not an error: the report counts it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("the server did not start: {0}")]
    ServerStart(String),
    #[error("minting a token: {0}")]
    Token(String),
    #[error("{0}")]
    Proc(String),
    #[error("invalid options: {0}")]
    Options(String),
    #[error("connecting {who}: {source}")]
    Connect { who: String, source: ClientError },
    #[error("connection of {who} failed during the run: {reason}")]
    Connection { who: String, reason: String },
}
