//! The revocation list (SPEC AUTH-14, SES-8) as a [`Journal`] of revoked jtis
//! and their tokens' expiry. Entries whose token has expired are dropped on
//! open (an expired token is refused anyway, AUTH-8), keeping the file small.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::journal::{Journal, OpenError};
use crate::core::{Millis, Revocations, StoreError};

#[derive(Debug, Serialize, Deserialize)]
struct Revoked {
    jti: String,
    exp: Millis,
}

/// The durable revocation list.
#[derive(Debug)]
pub struct FileRevocations {
    journal: Journal<Revoked>,
    revoked: BTreeMap<String, Millis>,
}

impl FileRevocations {
    /// Opens (or creates) the list at `path`, dropping entries expired at `now`.
    pub fn open(path: &Path, now: Millis) -> Result<Self, OpenError> {
        let (mut journal, records) = Journal::<Revoked>::open(path)?;
        let total = records.len();
        let live: Vec<Revoked> = records.into_iter().filter(|r| r.exp > now).collect();
        if live.len() < total {
            journal.compact(&live).map_err(|source| OpenError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let revoked = live.into_iter().map(|r| (r.jti, r.exp)).collect();
        Ok(FileRevocations { journal, revoked })
    }

    /// Number of revoked, unexpired tokens.
    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }
}

impl Revocations for FileRevocations {
    fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.contains_key(jti)
    }

    fn revoke(&mut self, jti: &str, exp: Millis) -> Result<(), StoreError> {
        if self.revoked.contains_key(jti) {
            return Ok(());
        }
        self.journal.append(&Revoked {
            jti: jti.to_string(),
            exp,
        })?;
        self.revoked.insert(jti.to_string(), exp);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_000_000;

    #[test]
    fn revocations_survive_reopen_until_their_token_expires() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked");
        let mut list = FileRevocations::open(&path, NOW).unwrap();
        list.revoke("a", NOW + 10).unwrap();
        list.revoke("old", NOW + 1).unwrap();
        drop(list);
        let list = FileRevocations::open(&path, NOW + 5).unwrap();
        assert!(list.is_revoked("a"));
        assert!(!list.is_revoked("old"), "expired entries are dropped");
        assert_eq!(list.len(), 1);
        drop(list);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().lines().count(),
            1,
            "and compacted away"
        );
    }
}
