//! The revoked-token list (SPEC TOK, AUTH): jtis that no connection may use
//! again, kept until their token would have expired anyway; and, for the
//! backend API's device and user revocations, the time until which every token
//! of a device or of a user counts as revoked. The core sees only this trait;
//! the durable file store lives in `crate::store`.

use std::collections::BTreeMap;

use super::Millis;

/// Why a durable store (the revocation list, the chat store) could not be updated.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The store lives elsewhere (a cluster's JetStream) and cannot be reached now: nothing was written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Revoked jtis, and revoked issue times. Updates return only once the entry is durable.
pub trait Revocations: Send {
    fn is_revoked(&self, jti: &str) -> bool;
    /// Records that `jti` (a token valid until `exp`) is revoked.
    fn revoke(&mut self, jti: &str, exp: Millis) -> Result<(), StoreError>;
    /// Records that every token of `eid` issued at or before `until` is revoked: of one `device`, or of all.
    fn revoke_issued_until(&mut self, eid: &str, device: Option<&str>, until: Millis) -> Result<(), StoreError>;
    /// The latest such time that covers `device` of `eid` (its own, or its user's), if any; with no device, the
    /// latest of the user's and of all its devices'.
    fn issued_until(&self, eid: &str, device: Option<&str>) -> Option<Millis>;
}

/// Who a revocation by issue time covers: one device of a user, or all of them (`None`).
pub type IssuedKey = (String, Option<String>);

/// The issue-time revocations of one list: the latest time per user or device.
#[derive(Debug, Default, Clone)]
pub struct IssuedUntil(BTreeMap<IssuedKey, Millis>);

impl IssuedUntil {
    /// Records `until` for the key; an earlier time never replaces a later one. Whether it changed anything.
    pub fn insert(&mut self, eid: &str, device: Option<&str>, until: Millis) -> bool {
        let slot = self
            .0
            .entry((eid.to_string(), device.map(str::to_string)))
            .or_insert(Millis::MIN);
        let changed = until > *slot;
        *slot = (*slot).max(until);
        changed
    }

    pub fn get(&self, eid: &str, device: Option<&str>) -> Option<Millis> {
        let user = self.0.get(&(eid.to_string(), None)).copied();
        match device {
            Some(device) => user.max(self.0.get(&(eid.to_string(), Some(device.to_string()))).copied()),
            None => self
                .0
                .range((eid.to_string(), None)..)
                .take_while(|((e, _), _)| e == eid)
                .map(|(_, until)| *until)
                .max(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&IssuedKey, &Millis)> {
        self.0.iter()
    }
}

/// A revocation list in memory, as every implementation keeps it. A durable list writes each change to its storage
/// (`store`) first and keeps it here only once that succeeded; a change that changes nothing is not stored.
#[derive(Debug, Default, Clone)]
pub struct RevocationList {
    revoked: BTreeMap<String, Millis>,
    issued: IssuedUntil,
}

impl RevocationList {
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.contains_key(jti)
    }

    pub fn issued_until(&self, eid: &str, device: Option<&str>) -> Option<Millis> {
        self.issued.get(eid, device)
    }

    /// Records that `jti` (a token good until `exp`) is revoked, once `store` has stored it.
    pub fn revoke(
        &mut self,
        jti: &str,
        exp: Millis,
        store: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if self.revoked.contains_key(jti) {
            return Ok(());
        }
        store()?;
        self.revoked.insert(jti.to_string(), exp);
        Ok(())
    }

    /// Records a revocation by issue time, once `store` has stored it; an earlier time than the one kept changes
    /// nothing.
    pub fn revoke_issued_until(
        &mut self,
        eid: &str,
        device: Option<&str>,
        until: Millis,
        store: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut probe = self.issued.clone();
        if !probe.insert(eid, device, until) {
            return Ok(());
        }
        store()?;
        self.issued = probe;
        Ok(())
    }

    /// The revoked jtis with their tokens' end.
    pub fn tokens(&self) -> impl Iterator<Item = (&str, Millis)> {
        self.revoked.iter().map(|(jti, exp)| (jti.as_str(), *exp))
    }

    /// The revocations by issue time.
    pub fn issued(&self) -> &IssuedUntil {
        &self.issued
    }

    /// Number of revoked jtis.
    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }
}

/// Revocations in memory only: for tests and simulations without restarts.
#[derive(Debug, Default)]
pub struct MemoryRevocations(RevocationList);

impl Revocations for MemoryRevocations {
    fn is_revoked(&self, jti: &str) -> bool {
        self.0.is_revoked(jti)
    }

    fn revoke(&mut self, jti: &str, exp: Millis) -> Result<(), StoreError> {
        self.0.revoke(jti, exp, || Ok(()))
    }

    fn revoke_issued_until(&mut self, eid: &str, device: Option<&str>, until: Millis) -> Result<(), StoreError> {
        self.0.revoke_issued_until(eid, device, until, || Ok(()))
    }

    fn issued_until(&self, eid: &str, device: Option<&str>) -> Option<Millis> {
        self.0.issued_until(eid, device)
    }
}
