//! An append-only journal of small records, one per line:
//! `<crc32c, 8 hex> <record as JSON>`; the checksum covers the JSON.
//!
//! `append` returns once the line is fsynced, so a confirmed record survives a
//! crash. On open, a torn last line (a write that never completed, so was never
//! confirmed) is cut off; a damaged line anywhere else refuses to open, because
//! the records are decisions (revocations, blocks) that must not silently
//! vanish. Used for the revocation list and the social graph.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a journal could not be opened.
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

/// A journal file of records of type `R`.
#[derive(Debug)]
pub struct Journal<R> {
    path: PathBuf,
    file: File,
    records: PhantomData<fn(R)>,
}

impl<R: Serialize + DeserializeOwned> Journal<R> {
    /// Opens (or creates) the journal and returns it with every record in it.
    pub fn open(path: &Path) -> Result<(Self, Vec<R>), OpenError> {
        let io_err = |source| OpenError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(e)),
        };
        let mut records = Vec::new();
        let mut good_len = 0;
        let mut lines = bytes.split_inclusive(|b| *b == b'\n').enumerate().peekable();
        while let Some((index, line)) = lines.next() {
            let complete = line.ends_with(b"\n");
            if !complete && lines.peek().is_none() {
                break; // a torn last line: never confirmed
            }
            let record = parse_line(line).map_err(|reason| OpenError::Corrupt {
                path: path.to_path_buf(),
                line: index + 1,
                reason,
            })?;
            records.push(record);
            good_len += line.len();
        }
        if good_len < bytes.len() {
            rewrite(path, &records).map_err(io_err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err)?;
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                records: PhantomData,
            },
            records,
        ))
    }

    /// Appends one record durably.
    pub fn append(&mut self, record: &R) -> io::Result<()> {
        self.file.write_all(format_line(record)?.as_bytes())?;
        self.file.sync_data()
    }

    /// Replaces the whole journal with `records`, atomically.
    pub fn compact(&mut self, records: &[R]) -> io::Result<()> {
        rewrite(&self.path, records)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        Ok(())
    }

    /// Where the journal lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn format_line<R: Serialize>(record: &R) -> io::Result<String> {
    let body = serde_json::to_string(record).map_err(io::Error::other)?;
    Ok(format!("{:08x} {body}\n", crc32c::crc32c(body.as_bytes())))
}

fn parse_line<R: DeserializeOwned>(line: &[u8]) -> Result<R, &'static str> {
    let text = std::str::from_utf8(line)
        .map_err(|_| "not UTF-8")?
        .trim_end_matches('\n');
    let (crc, body) = text.split_once(' ').ok_or("no checksum")?;
    let crc = u32::from_str_radix(crc, 16).map_err(|_| "bad checksum field")?;
    if crc32c::crc32c(body.as_bytes()) != crc {
        return Err("checksum mismatch");
    }
    serde_json::from_str(body).map_err(|_| "not a record of this journal")
}

/// Replaces the file with exactly `records` (write, fsync, rename, fsync dir).
fn rewrite<R: Serialize>(path: &Path, records: &[R]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    for record in records {
        file.write_all(format_line(record)?.as_bytes())?;
    }
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl crate::core::social::EventLog for Journal<crate::core::social::SocialEvent> {
    fn append(&mut self, event: &crate::core::social::SocialEvent) -> Result<(), crate::core::StoreError> {
        Ok(Journal::append(self, event)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Entry = (String, i64);

    fn open(path: &Path) -> (Journal<Entry>, Vec<Entry>) {
        Journal::open(path).unwrap()
    }

    #[test]
    fn records_survive_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut journal, none) = open(&path);
        assert!(none.is_empty());
        journal.append(&("a".into(), 1)).unwrap();
        journal
            .append(&("with space, \"quotes\"\nand newline".into(), 2))
            .unwrap();
        drop(journal);
        let (_, records) = open(&path);
        assert_eq!(
            records,
            [("a".into(), 1), ("with space, \"quotes\"\nand newline".into(), 2)]
        );
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        open(&path).0.append(&("kept".into(), 1)).unwrap();
        let mut raw = std::fs::read(&path).unwrap();
        raw.extend_from_slice(&format_line(&("torn".to_string(), 2)).unwrap().as_bytes()[..9]);
        std::fs::write(&path, &raw).unwrap();
        let (mut journal, records) = open(&path);
        assert_eq!(records, [("kept".into(), 1)]);
        journal.append(&("after".into(), 3)).unwrap();
        drop(journal);
        assert_eq!(open(&path).1, [("kept".into(), 1), ("after".into(), 3)]);
    }

    #[test]
    fn a_damaged_line_refuses_to_open_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut journal, _) = open(&path);
        journal.append(&("first".into(), 1)).unwrap();
        journal.append(&("second".into(), 2)).unwrap();
        drop(journal);
        let mut raw = std::fs::read(&path).unwrap();
        raw[12] ^= 0x01;
        std::fs::write(&path, &raw).unwrap();
        let err = Journal::<Entry>::open(&path).unwrap_err();
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
        assert_eq!(std::fs::read(&path).unwrap(), raw);
    }

    #[test]
    fn compaction_replaces_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut journal, _) = open(&path);
        journal.append(&("a".into(), 1)).unwrap();
        journal.compact(&[("b".into(), 2)]).unwrap();
        journal.append(&("c".into(), 3)).unwrap();
        drop(journal);
        assert_eq!(open(&path).1, [("b".into(), 2), ("c".into(), 3)]);
    }
}
