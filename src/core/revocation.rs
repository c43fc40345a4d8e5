//! The revoked-token list (SPEC TOK, AUTH): jtis that no connection may use
//! again, kept until their token would have expired anyway. The core sees only
//! this trait; the durable file store lives in `crate::store`.

use std::collections::BTreeMap;

use super::Millis;

/// Why the revocation list could not be updated.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("revocation store i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Revoked jtis. `revoke` returns only once the entry is durable.
pub trait Revocations: Send {
    fn is_revoked(&self, jti: &str) -> bool;
    /// Records that `jti` (a token valid until `exp`) is revoked.
    fn revoke(&mut self, jti: &str, exp: Millis) -> Result<(), StoreError>;
}

/// Revocations in memory only: for tests and simulations without restarts.
#[derive(Debug, Default)]
pub struct MemoryRevocations {
    revoked: BTreeMap<String, Millis>,
}

impl Revocations for MemoryRevocations {
    fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.contains_key(jti)
    }

    fn revoke(&mut self, jti: &str, exp: Millis) -> Result<(), StoreError> {
        self.revoked.insert(jti.to_string(), exp);
        Ok(())
    }
}
