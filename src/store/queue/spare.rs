//! Spare segments: the next segment file, zero-filled and fsynced before it is needed ([`QueueConfig::preallocate`]).
//!
//! Why: an fdatasync after an append that grows the file must also write the file's new size, and on ext4 without
//! a journal that is a second synchronous write (the inode) behind the data. Measured on this project's disks: a
//! 14 KB batch fsynced in 179 µs when it extended the file and in 97 µs when it overwrote a zero-filled one;
//! `fallocate` gives no gain, because its unwritten extents still need a metadata write when first written. So
//! segments are written with zeros ahead of time, where no writer waits.
//!
//! How, without threads or clocks in the store: [`QueueStore::spare_job`] hands out a [`SpareJob`] that needs no
//! access to the store (it holds a clone of the filesystem), the driver runs it wherever blocking is fine, and
//! [`QueueStore::install_spare`] takes the result. The next roll renames the spare to the new segment's name
//! instead of creating an empty file; a store whose active segment is not preallocated (a new store, or one just
//! recovered) rolls onto the spare as soon as one is ready. A sealed segment is cut back to its last record at
//! the roll, and a clean close cuts the active one, so only the active segment of a store that crashed ever has a
//! zero tail; recovery reads a zero tail as the end of the data (SPEC §17, "durability and throughput of the log").
//!
//! Crash safety: the spare is only named `spare.tmp` until the rename, and every `*.tmp` file is removed on open,
//! so a half-prepared spare is never mistaken for a segment. A renamed spare whose header never became durable is
//! all zeros at offset 0, which recovery already treats as a segment that held nothing.

use std::io;
use std::path::PathBuf;

use super::fs::{Fs, FsFile};
use super::{QueueError, QueueStore, SPARE_NAME};

/// Zeros are written and made durable in pieces of this size: preparing a spare never holds a whole segment in
/// memory, and an fsync of the log that runs meanwhile (which flushes the disk's cache, behind whatever writes it
/// holds) never waits behind more than one piece of it.
const ZERO_PIECE: u64 = 1 << 20;

/// Where the store's spare segment stands.
#[derive(Debug, Default)]
pub(super) enum Spare<Fl> {
    /// None prepared, none being prepared.
    #[default]
    Idle,
    /// A [`SpareJob`] is out.
    Preparing,
    /// Zero-filled and durable under [`SPARE_NAME`], waiting for the next roll.
    Ready(Fl),
    /// Preparing one failed (a full disk, say): the store goes on without preallocation until it is reopened.
    Off,
}

/// The work of preparing a spare segment; runs without the store ([`QueueStore::spare_job`]).
#[must_use = "run it and hand the result to QueueStore::install_spare"]
#[derive(Debug)]
pub struct SpareJob<F: Fs> {
    pub(super) fs: F,
    pub(super) path: PathBuf,
    pub(super) len: u64,
}

impl<F: Fs> SpareJob<F> {
    /// Creates the spare file and fills it with zeros, fsyncing each piece (blocking: about one segment's worth of
    /// sequential writing; call it off the async runtime).
    pub fn run(self) -> SpareDone<F::File> {
        let result = self.fill();
        SpareDone {
            result,
            path: self.path,
        }
    }

    fn fill(&self) -> io::Result<F::File> {
        let mut file = self.fs.create(&self.path)?;
        let zeros = vec![0u8; self.len.min(ZERO_PIECE) as usize];
        let mut at = 0;
        while at < self.len {
            let n = (self.len - at).min(ZERO_PIECE);
            file.write_all_at(at, &zeros[..n as usize])?;
            file.sync()?;
            at += n;
        }
        Ok(file)
    }
}

/// A finished [`SpareJob`], for [`QueueStore::install_spare`].
#[must_use = "hand it to QueueStore::install_spare"]
#[derive(Debug)]
pub struct SpareDone<Fl> {
    result: io::Result<Fl>,
    path: PathBuf,
}

impl<F: Fs> QueueStore<F> {
    /// A spare segment to prepare, when preallocation is on, none is ready or being prepared, and the active segment
    /// holds at least [`spare_after_bytes`](super::QueueConfig::spare_after_bytes). The store rolls onto the spare once
    /// [`Self::install_spare`] has it; until then it creates segments as empty files.
    pub fn spare_job(&mut self) -> Option<SpareJob<F>> {
        if !self.cfg.preallocate
            || self.poisoned
            || !matches!(self.spare, Spare::Idle)
            || self.active_end() < self.cfg.spare_after_bytes
        {
            return None;
        }
        self.spare = Spare::Preparing;
        Some(SpareJob {
            fs: self.fs.clone(),
            path: self.path(SPARE_NAME.into()),
            len: self.cfg.segment_bytes,
        })
    }

    /// Takes a prepared spare. A failed preparation turns preallocation off for this store (the error says why);
    /// the store itself is unharmed, since nothing it holds depends on the spare.
    pub fn install_spare(&mut self, done: SpareDone<F::File>) -> Result<(), QueueError> {
        if !matches!(self.spare, Spare::Preparing) {
            return Err(QueueError::Invalid {
                what: "install_spare",
                why: "no spare job is out",
            });
        }
        match done.result {
            Ok(file) => {
                self.spare = Spare::Ready(file);
                Ok(())
            }
            Err(source) => {
                self.spare = Spare::Off;
                Err(QueueError::Io {
                    op: "prepare spare",
                    path: done.path,
                    source,
                })
            }
        }
    }

    /// [`Self::spare_job`], run here and installed: for single-threaded drivers and tests. True if a spare was made.
    pub fn prepare_spare(&mut self) -> Result<bool, QueueError> {
        match self.spare_job() {
            Some(job) => {
                let done = job.run();
                self.install_spare(done).map(|()| true)
            }
            None => Ok(false),
        }
    }

    /// Whether a spare is ready for the next roll.
    pub fn spare_ready(&self) -> bool {
        matches!(self.spare, Spare::Ready(_))
    }
}
