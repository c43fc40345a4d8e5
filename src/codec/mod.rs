//! Bytes <-> stanzas: the envelope rule (SPEC §4), native TCP framing (SPEC §2),
//! canonical encoding, the proto3 JSON mapping, and the error table (SPEC §5).
//!
//! Everything here is pure: no I/O, no clock. Nothing here panics on any input.

pub mod describe;
pub mod envelope;
pub mod error_kind;
pub mod framing;
pub mod json;
pub mod route;

pub use describe::{Description, describe};
pub use envelope::{DEFAULT_MAX_STANZA_BYTES, EnvelopeError, decode, encode, encode_message_scheme};
pub use error_kind::{Blame, ErrorKind};
pub use framing::{FrameError, TcpFrameCodec};
pub use route::{Direction, Route};
