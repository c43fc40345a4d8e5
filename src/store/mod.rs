//! Durable state on disk: a generic checksummed journal, and on it the
//! revocation list and the social graph (and, as it lands, the offline queue).
//! The protocol core reaches these only through its traits.

pub mod journal;
pub mod queue;
pub mod revocations;

pub use journal::{Journal, OpenError};
pub use revocations::FileRevocations;
