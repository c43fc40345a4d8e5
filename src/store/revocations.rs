//! The revocation list as an append-only file (SPEC AUTH-14, SES-8).
//!
//! One record per line: `<crc32c, 8 hex> <exp ms> <jti as a JSON string>`;
//! the checksum covers everything after its separating space. `revoke`
//! returns once the line is fsynced, so a confirmed revocation survives a
//! crash. On open, a torn last line (a write that never completed, so was
//! never confirmed) is cut off; a damaged line anywhere else refuses to open,
//! because skipping it could make a revoked token valid again.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::core::{Millis, Revocations, StoreError};

/// Why the revocation file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: line {line} is damaged ({reason}); restore the file or move it aside knowingly")]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
}

/// The durable revocation list.
#[derive(Debug)]
pub struct FileRevocations {
    path: PathBuf,
    file: File,
    revoked: BTreeMap<String, Millis>,
}

impl FileRevocations {
    /// Opens (or creates) the list at `path`, dropping entries whose token
    /// expired before `now` (an expired token is refused anyway, AUTH-8).
    pub fn open(path: &Path, now: Millis) -> Result<Self, OpenError> {
        let io_err = |source| OpenError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(e)),
        };
        let mut revoked = BTreeMap::new();
        let mut good_len = 0;
        let mut lines = bytes.split_inclusive(|b| *b == b'\n').enumerate().peekable();
        while let Some((index, line)) = lines.next() {
            let is_last = lines.peek().is_none();
            let complete = line.ends_with(b"\n");
            match parse_line(line) {
                Ok((jti, exp)) if complete => {
                    revoked.insert(jti, exp);
                    good_len += line.len();
                }
                // Only the last line may be torn.
                _ if is_last && !complete => break,
                Ok(_) => unreachable!("an incomplete line is always the last"),
                Err(reason) => {
                    return Err(OpenError::Corrupt {
                        path: path.to_path_buf(),
                        line: index + 1,
                        reason,
                    });
                }
            }
        }
        let expired = revoked.values().filter(|exp| **exp <= now).count();
        revoked.retain(|_, exp| *exp > now);
        if expired > 0 || good_len < bytes.len() {
            rewrite(path, &revoked).map_err(io_err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err)?;
        Ok(FileRevocations {
            path: path.to_path_buf(),
            file,
            revoked,
        })
    }

    /// Where the list lives.
    pub fn path(&self) -> &Path {
        &self.path
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
        self.file.write_all(format_line(jti, exp).as_bytes())?;
        self.file.sync_data()?;
        self.revoked.insert(jti.to_string(), exp);
        Ok(())
    }
}

fn format_line(jti: &str, exp: Millis) -> String {
    let body = format!("{exp} {}", serde_json::Value::String(jti.to_string()));
    format!("{:08x} {body}\n", crc32c::crc32c(body.as_bytes()))
}

fn parse_line(line: &[u8]) -> Result<(String, Millis), &'static str> {
    let text = std::str::from_utf8(line)
        .map_err(|_| "not UTF-8")?
        .trim_end_matches('\n');
    let (crc, body) = text.split_once(' ').ok_or("no checksum")?;
    let crc = u32::from_str_radix(crc, 16).map_err(|_| "bad checksum field")?;
    if crc32c::crc32c(body.as_bytes()) != crc {
        return Err("checksum mismatch");
    }
    let (exp, jti) = body.split_once(' ').ok_or("no jti")?;
    let exp = exp.parse().map_err(|_| "bad expiry")?;
    let jti: String = serde_json::from_str(jti).map_err(|_| "bad jti")?;
    Ok((jti, exp))
}

/// Replaces the file with exactly `revoked`, atomically (write, fsync, rename, fsync dir).
fn rewrite(path: &Path, revoked: &BTreeMap<String, Millis>) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    for (jti, exp) in revoked {
        file.write_all(format_line(jti, *exp).as_bytes())?;
    }
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_000_000;

    #[test]
    fn revocations_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked");
        let mut list = FileRevocations::open(&path, NOW).unwrap();
        list.revoke("a", NOW + 10).unwrap();
        list.revoke("with space and \"quotes\"\n", NOW + 10).unwrap();
        list.revoke("old", NOW + 1).unwrap();
        drop(list);
        let list = FileRevocations::open(&path, NOW + 5).unwrap();
        assert!(list.is_revoked("a"));
        assert!(list.is_revoked("with space and \"quotes\"\n"));
        assert!(!list.is_revoked("old"), "expired entries are dropped");
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn a_torn_last_line_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked");
        FileRevocations::open(&path, NOW)
            .unwrap()
            .revoke("kept", NOW + 10)
            .unwrap();
        let mut raw = std::fs::read(&path).unwrap();
        raw.extend_from_slice(&format_line("torn", NOW + 10).as_bytes()[..9]);
        std::fs::write(&path, &raw).unwrap();
        let mut list = FileRevocations::open(&path, NOW).unwrap();
        assert!(list.is_revoked("kept") && !list.is_revoked("torn"));
        list.revoke("after", NOW + 10).unwrap();
        drop(list);
        let list = FileRevocations::open(&path, NOW).unwrap();
        assert!(list.is_revoked("after"), "appends after a repair are readable");
    }

    #[test]
    fn a_damaged_middle_line_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked");
        let mut list = FileRevocations::open(&path, NOW).unwrap();
        list.revoke("first", NOW + 10).unwrap();
        list.revoke("second", NOW + 10).unwrap();
        drop(list);
        let mut raw = std::fs::read(&path).unwrap();
        raw[12] ^= 0x01; // a digit of the first line's expiry
        std::fs::write(&path, &raw).unwrap();
        let err = FileRevocations::open(&path, NOW).unwrap_err();
        assert!(
            matches!(
                err,
                OpenError::Corrupt {
                    line: 1,
                    reason: "checksum mismatch",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), raw, "nothing is rewritten");
    }
}
