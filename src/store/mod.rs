//! Durable state on disk: a generic checksummed journal, and on it the
//! revocation list and the social graph; the offline queue, and on it the
//! engine's chat store. The protocol core reaches these only through its traits.

pub mod chat;
pub mod journal;
pub mod queue;
pub mod revocations;

pub use chat::{ChatOpenReport, ChatStoreConfig, ChatStoreError, DurableChatStore, Spares};
pub use journal::{Journal, OpenError};
pub use revocations::FileRevocations;
