//! Durable state on disk: the revocation list (and, as it lands, the offline
//! queue). The protocol core reaches these only through its traits.

pub mod revocations;

pub use revocations::{FileRevocations, OpenError};
