//! The revocation list (SPEC AUTH-14, SES-8) as a [`Journal`] of revoked jtis
//! and their tokens' expiry, and of the backend API's revocations by issue
//! time (a device's or a user's tokens issued until then). Token entries whose
//! token has expired are dropped on open (an expired token is refused anyway,
//! AUTH-8), keeping the file small; of the issue-time entries only the latest
//! per device or user is kept, for good (the server cannot know how long an
//! external issuer's tokens live).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::journal::{Journal, OpenError};
use crate::core::{Millis, RevocationList, Revocations, StoreError};

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Revoked {
    Token {
        jti: String,
        exp: Millis,
    },
    Issued {
        eid: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        until: Millis,
    },
}

/// The durable revocation list.
#[derive(Debug)]
pub struct FileRevocations {
    journal: Journal<Revoked>,
    list: RevocationList,
}

impl FileRevocations {
    /// Opens (or creates) the list at `path`, dropping token entries expired at `now`.
    pub fn open(path: &Path, now: Millis) -> Result<Self, OpenError> {
        let (mut journal, records) = Journal::<Revoked>::open(path)?;
        let total = records.len();
        let mut list = RevocationList::default();
        let loaded = || Ok(());
        for record in records {
            // Nothing to store: the entries are the journal's.
            let _ = match record {
                Revoked::Token { jti, exp } if exp > now => list.revoke(&jti, exp, loaded),
                Revoked::Token { .. } => Ok(()),
                Revoked::Issued { eid, device, until } => {
                    list.revoke_issued_until(&eid, device.as_deref(), until, loaded)
                }
            };
        }
        let kept = list.len() + list.issued().iter().count();
        if kept < total {
            let live: Vec<Revoked> = list
                .tokens()
                .map(|(jti, exp)| Revoked::Token {
                    jti: jti.to_string(),
                    exp,
                })
                .chain(list.issued().iter().map(|((eid, device), until)| Revoked::Issued {
                    eid: eid.clone(),
                    device: device.clone(),
                    until: *until,
                }))
                .collect();
            journal.compact(&live).map_err(|source| OpenError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(FileRevocations { journal, list })
    }

    /// The list as it stands.
    pub fn list(&self) -> &RevocationList {
        &self.list
    }

    /// Number of revoked, unexpired tokens.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl Revocations for FileRevocations {
    fn is_revoked(&self, jti: &str) -> bool {
        self.list.is_revoked(jti)
    }

    fn revoke(&mut self, jti: &str, exp: Millis) -> Result<(), StoreError> {
        let journal = &mut self.journal;
        self.list.revoke(jti, exp, || {
            let entry = Revoked::Token {
                jti: jti.to_string(),
                exp,
            };
            Ok(journal.append(&entry)?)
        })
    }

    fn revoke_issued_until(&mut self, eid: &str, device: Option<&str>, until: Millis) -> Result<(), StoreError> {
        let journal = &mut self.journal;
        self.list.revoke_issued_until(eid, device, until, || {
            let entry = Revoked::Issued {
                eid: eid.to_string(),
                device: device.map(str::to_string),
                until,
            };
            Ok(journal.append(&entry)?)
        })
    }

    fn issued_until(&self, eid: &str, device: Option<&str>) -> Option<Millis> {
        self.list.issued_until(eid, device)
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

    #[test]
    fn issue_time_revocations_survive_reopen_and_keep_only_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked");
        let mut list = FileRevocations::open(&path, NOW).unwrap();
        list.revoke_issued_until("a@x.io", Some("phone"), NOW).unwrap();
        list.revoke_issued_until("a@x.io", Some("phone"), NOW + 7).unwrap();
        list.revoke_issued_until("a@x.io", Some("phone"), NOW + 3).unwrap();
        list.revoke_issued_until("b@x.io", None, NOW + 1).unwrap();
        drop(list);
        // Long after any token would have expired: still there.
        let list = FileRevocations::open(&path, NOW * 1000).unwrap();
        assert_eq!(list.issued_until("a@x.io", Some("phone")), Some(NOW + 7));
        assert_eq!(list.issued_until("a@x.io", Some("tablet")), None);
        assert_eq!(
            list.issued_until("a@x.io", None),
            Some(NOW + 7),
            "the latest of any device"
        );
        assert_eq!(
            list.issued_until("b@x.io", Some("any")),
            Some(NOW + 1),
            "a user's covers every device"
        );
        drop(list);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }
}
