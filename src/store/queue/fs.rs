//! The filesystem seam: the few operations the queue needs, on the real disk ([`RealFs`]) or in memory with an
//! exact durability model ([`SimFs`]).
//!
//! Why our own seam rather than turmoil's `unstable-fs`: turmoil's filesystem lives inside a running `Sim` host
//! and decides crash outcomes (which pending writes survive, where a write tears) with the simulation's random
//! generator, one block-sized piece at a time. The crash tests need the opposite: enumerate every operation as a
//! crash point, then choose exactly which prefix of the pending writes survives and at which byte the next one
//! tears, with no runtime around a synchronous store. A seam of ~300 lines gives that, and keeps the store free
//! of any simulator dependency.
//!
//! The model [`SimFs`] implements, per POSIX as the store relies on it:
//! - a write or `set_len` is pending until `sync` of that file;
//! - a create, rename or remove is pending until `sync_dir` of its directory (a synced file whose name was never
//!   made durable is lost, as on a real crash);
//! - on [`SimFs::crash`], an arbitrary prefix (in issue order) of the pending operations survives, optionally
//!   followed by a torn piece of the next write, and everything else is lost.
//!
//! [`SimFs::cut_power_after`] makes every operation after the n-th fail, which is how a test stops the store at
//! an exact point before crashing.
//!
//! [`FsFile::prefetch`] is a read-ahead hint (`posix_fadvise(POSIX_FADV_WILLNEED)` on Linux, nothing elsewhere and
//! in [`SimFs`]): it never changes what a read returns, so the crash model has nothing to say about it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Directory-level operations. Clones reach the same filesystem (a spare segment is prepared through a clone on
/// another thread).
pub trait Fs: Clone + Send + 'static {
    type File: FsFile;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the plain files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens an existing file; `write` asks for write access too.
    fn open(&self, path: &Path, write: bool) -> io::Result<Self::File>;
    /// Creates an empty file, replacing any file of that name.
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes creates, renames and removes in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file.
pub trait FsFile: Send + 'static {
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// A hint that the `len` bytes at `offset` will be read soon, so an implementation may start fetching them in
    /// the background (a reader keeps several reads in flight this way). Only a hint: it never changes what a
    /// read returns, never fails (a hint that cannot be given is dropped), and may be ignored, as the default
    /// does.
    fn prefetch(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Makes this file's data (and its length) durable.
    fn sync(&mut self) -> io::Result<()>;
    /// A second handle on the same open file (a pipelined sync fsyncs it on another thread while this one writes).
    fn try_clone(&self) -> io::Result<Self>
    where
        Self: Sized;
}

/// The real filesystem through `std::fs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

impl Fs for RealFs {
    type File = File;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Ok(name) = entry.file_name().into_string()
            {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn open(&self, path: &Path, write: bool) -> io::Result<File> {
        OpenOptions::new().read(true).write(write).open(path)
    }

    fn create(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl FsFile for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    /// `posix_fadvise(POSIX_FADV_WILLNEED)`: the kernel queues the reads and returns without waiting for them.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn prefetch(&self, offset: u64, len: u64) {
        if let Some(len) = std::num::NonZeroU64::new(len) {
            // A refused hint (an odd file type, a kernel without the call) costs nothing to ignore.
            let _ = rustix::fs::fadvise(self, offset, Some(len), rustix::fs::Advice::WillNeed);
        }
    }

    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, data, offset)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync(&mut self) -> io::Result<()> {
        // fdatasync: also flushes the size, which is all the metadata an append needs.
        self.sync_data()
    }

    fn try_clone(&self) -> io::Result<Self> {
        File::try_clone(self)
    }
}

/// How much of the pending state survives a [`SimFs::crash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashPlan {
    /// Pending operations (in issue order) that reach the disk; `usize::MAX` keeps them all, as when only the
    /// process dies and the kernel still writes its page cache out.
    pub keep: usize,
    /// If the first lost operation is a write, this many of its bytes reach the disk anyway (a torn write).
    pub tear: Option<usize>,
}

impl CrashPlan {
    /// Power loss: nothing that was not synced survives.
    pub const LOSE_ALL: CrashPlan = CrashPlan { keep: 0, tear: None };
    /// Process crash: the kernel still writes everything out.
    pub const KEEP_ALL: CrashPlan = CrashPlan {
        keep: usize::MAX,
        tear: None,
    };
}

#[derive(Debug, Clone)]
enum Op {
    Write { ino: usize, offset: u64, data: Vec<u8> },
    SetLen { ino: usize, len: u64 },
    Link { path: PathBuf, ino: usize },
    Unlink { path: PathBuf },
    Rename { from: PathBuf, to: PathBuf, ino: usize },
}

impl Op {
    fn file(&self) -> Option<usize> {
        match self {
            Op::Write { ino, .. } | Op::SetLen { ino, .. } => Some(*ino),
            _ => None,
        }
    }

    fn in_dir(&self, dir: &Path) -> bool {
        match self {
            Op::Link { path, .. } | Op::Unlink { path } => path.parent() == Some(dir),
            Op::Rename { from, to, .. } => from.parent() == Some(dir) || to.parent() == Some(dir),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct SimState {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    dirs: BTreeSet<PathBuf>,
    pending: Vec<Op>,
    /// Mutating operations issued so far (the crash-point counter).
    ops: u64,
    power_cut_at: Option<u64>,
    /// Bumped by each crash so handles from before it stop working.
    generation: u64,
    /// Test hook: the next file sync fails (an EIO from the disk).
    fail_next_sync: bool,
}

fn write_into(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let offset = offset as usize;
    if buf.len() < offset + data.len() {
        buf.resize(offset + data.len(), 0);
    }
    buf[offset..offset + data.len()].copy_from_slice(data);
}

impl SimState {
    fn apply_durable(&mut self, op: &Op) {
        match op {
            Op::Write { ino, offset, data } => write_into(&mut self.inodes[*ino].durable, *offset, data),
            Op::SetLen { ino, len } => self.inodes[*ino].durable.resize(*len as usize, 0),
            Op::Link { path, ino } => {
                self.durable_names.insert(path.clone(), *ino);
            }
            Op::Unlink { path } => {
                self.durable_names.remove(path);
            }
            Op::Rename { from, to, ino } => {
                self.durable_names.remove(from);
                self.durable_names.insert(to.clone(), *ino);
            }
        }
    }

    /// Counts a mutating operation, refusing it once the power is cut.
    fn mutate(&mut self) -> io::Result<()> {
        self.alive()?;
        if let Some(at) = self.power_cut_at
            && self.ops >= at
        {
            return Err(power_lost());
        }
        self.ops += 1;
        Ok(())
    }

    fn alive(&self) -> io::Result<()> {
        match self.power_cut_at {
            Some(at) if self.ops >= at => Err(power_lost()),
            _ => Ok(()),
        }
    }
}

fn power_lost() -> io::Error {
    io::Error::other("simulated power loss")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", path.display()))
}

/// An in-memory filesystem with an exact durability model (see the module doc). Clones share one filesystem.
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<SimState>>,
}

impl SimFs {
    pub fn new() -> SimFs {
        SimFs::default()
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock can only come from a test; the state is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An independent copy of the whole filesystem, pending state included (to try several crashes from one
    /// point).
    pub fn fork(&self) -> SimFs {
        let mut state = self.lock().clone();
        state.power_cut_at = None;
        SimFs {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Every mutating operation after the first `n` (counted from the filesystem's creation) fails.
    pub fn cut_power_after(&self, n: u64) {
        self.lock().power_cut_at = Some(n);
    }

    /// Mutating operations issued so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Whether the power is cut.
    pub fn is_dead(&self) -> bool {
        self.lock().alive().is_err()
    }

    /// Number of operations that a crash could lose.
    pub fn pending_ops(&self) -> usize {
        self.lock().pending.len()
    }

    /// Bytes of the first pending operation past `keep` if it is a write (to choose a tear point).
    pub fn pending_write_len(&self, index: usize) -> Option<usize> {
        match self.lock().pending.get(index) {
            Some(Op::Write { data, .. }) => Some(data.len()),
            _ => None,
        }
    }

    /// Makes the next file sync fail with an I/O error (data stays pending).
    pub fn fail_next_sync(&self) {
        self.lock().fail_next_sync = true;
    }

    /// Crashes: applies the surviving part of the pending operations per `plan`, discards the rest and every
    /// un-synced view, restores the power, and invalidates all open handles.
    pub fn crash(&self, plan: CrashPlan) {
        let mut s = self.lock();
        let pending = std::mem::take(&mut s.pending);
        let keep = plan.keep.min(pending.len());
        for op in &pending[..keep] {
            s.apply_durable(op);
        }
        if let (Some(tear), Some(Op::Write { ino, offset, data })) = (plan.tear, pending.get(keep)) {
            let n = tear.min(data.len());
            write_into(&mut s.inodes[*ino].durable, *offset, &data[..n]);
        }
        for inode in &mut s.inodes {
            inode.data = inode.durable.clone();
        }
        s.names = s.durable_names.clone();
        s.power_cut_at = None;
        s.generation += 1;
    }

    /// Durable or not, the current bytes of a file (for tests that damage files on purpose).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock();
        s.names.get(path).map(|ino| s.inodes[*ino].data.clone())
    }

    /// Overwrites bytes of a file durably, bypassing the model (bit rot for tests).
    pub fn corrupt(&self, path: &Path, offset: usize, xor: u8) -> bool {
        let mut s = self.lock();
        let Some(&ino) = s.names.get(path) else { return false };
        let inode = &mut s.inodes[ino];
        if offset >= inode.data.len() {
            return false;
        }
        inode.data[offset] ^= xor;
        if offset < inode.durable.len() {
            inode.durable[offset] ^= xor;
        }
        true
    }

    /// Removes a file durably, bypassing the model (for tests that lose index files).
    pub fn delete_durably(&self, path: &Path) -> bool {
        let mut s = self.lock();
        let found = s.names.remove(path).is_some();
        s.durable_names.remove(path);
        found
    }
}

/// A handle on a [`SimFs`] file.
#[derive(Debug)]
pub struct SimFile {
    fs: SimFs,
    ino: usize,
    generation: u64,
    write: bool,
}

impl SimFile {
    fn state(&self) -> io::Result<MutexGuard<'_, SimState>> {
        let s = self.fs.lock();
        if s.generation != self.generation {
            return Err(io::Error::other("handle from before a crash"));
        }
        Ok(s)
    }

    fn writable(&self) -> io::Result<()> {
        if self.write {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::PermissionDenied, "opened read-only"))
        }
    }
}

impl Fs for SimFs {
    type File = SimFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.alive()?;
        // Directories are durable at once: the store never relies on creating its own directory durably.
        for d in dir.ancestors() {
            s.dirs.insert(d.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock();
        s.alive()?;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path, write: bool) -> io::Result<SimFile> {
        let s = self.lock();
        s.alive()?;
        let ino = *s.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(SimFile {
            fs: self.clone(),
            ino,
            generation: s.generation,
            write,
        })
    }

    fn create(&self, path: &Path) -> io::Result<SimFile> {
        let mut s = self.lock();
        match path.parent() {
            Some(dir) if s.dirs.contains(dir) => {}
            _ => return Err(not_found(path)),
        }
        s.mutate()?;
        let ino = s.inodes.len();
        s.inodes.push(Inode::default());
        s.names.insert(path.to_path_buf(), ino);
        s.pending.push(Op::Link {
            path: path.to_path_buf(),
            ino,
        });
        Ok(SimFile {
            fs: self.clone(),
            ino,
            generation: s.generation,
            write: true,
        })
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let ino = *s.names.get(from).ok_or_else(|| not_found(from))?;
        s.mutate()?;
        s.names.remove(from);
        s.names.insert(to.to_path_buf(), ino);
        s.pending.push(Op::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            ino,
        });
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if !s.names.contains_key(path) {
            return Err(not_found(path));
        }
        s.mutate()?;
        s.names.remove(path);
        s.pending.push(Op::Unlink {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.mutate()?;
        let pending = std::mem::take(&mut s.pending);
        let (now, later): (Vec<Op>, Vec<Op>) = pending.into_iter().partition(|op| op.in_dir(dir));
        for op in &now {
            s.apply_durable(op);
        }
        s.pending = later;
        Ok(())
    }
}

impl FsFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        let s = self.state()?;
        s.alive()?;
        Ok(s.inodes[self.ino].data.len() as u64)
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let s = self.state()?;
        s.alive()?;
        let data = &s.inodes[self.ino].data;
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|end| *end <= data.len() as u64);
        let Some(end) = end else {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file"));
        };
        buf.copy_from_slice(&data[offset as usize..end as usize]);
        Ok(())
    }

    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.writable()?;
        let mut s = self.state()?;
        s.mutate()?;
        let ino = self.ino;
        write_into(&mut s.inodes[ino].data, offset, data);
        s.pending.push(Op::Write {
            ino,
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.writable()?;
        let mut s = self.state()?;
        s.mutate()?;
        let ino = self.ino;
        s.inodes[ino].data.resize(len as usize, 0);
        s.pending.push(Op::SetLen { ino, len });
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut s = self.state()?;
        s.mutate()?;
        if std::mem::take(&mut s.fail_next_sync) {
            return Err(io::Error::other("simulated fsync failure"));
        }
        let ino = self.ino;
        let pending = std::mem::take(&mut s.pending);
        let (now, later): (Vec<Op>, Vec<Op>) = pending.into_iter().partition(|op| op.file() == Some(ino));
        for op in &now {
            s.apply_durable(op);
        }
        s.pending = later;
        Ok(())
    }

    fn try_clone(&self) -> io::Result<Self> {
        // A handle from before a crash stays dead: state() refuses it.
        drop(self.state()?);
        Ok(SimFile {
            fs: self.fs.clone(),
            ino: self.ino,
            generation: self.generation,
            write: self.write,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_data_and_names_are_lost() {
        let fs = SimFs::new();
        let dir = Path::new("/q");
        fs.create_dir_all(dir).unwrap();
        let mut f = fs.create(&dir.join("a")).unwrap();
        f.write_all_at(0, b"hello").unwrap();
        f.sync().unwrap();
        fs.crash(CrashPlan::LOSE_ALL);
        // The data was synced, the name was not.
        assert!(fs.list(dir).unwrap().is_empty());

        let mut f = fs.create(&dir.join("b")).unwrap();
        fs.sync_dir(dir).unwrap();
        f.write_all_at(0, b"hello").unwrap();
        f.sync().unwrap();
        f.write_all_at(5, b" world").unwrap();
        fs.crash(CrashPlan { keep: 0, tear: Some(3) });
        let f = fs.open(&dir.join("b"), false).unwrap();
        let mut buf = vec![0; f.len().unwrap() as usize];
        f.read_exact_at(0, &mut buf).unwrap();
        assert_eq!(buf, b"hello wo");
    }

    #[test]
    fn prefetch_is_only_a_hint() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let mut f = RealFs.create(&path).unwrap();
        f.write_all_at(0, &data).unwrap();
        let f = RealFs.open(&path, false).unwrap();
        // Empty, inside, across and past the end, and at offsets no file reaches: all silently accepted.
        for (offset, len) in [
            (0, 0),
            (0, 4096),
            (5_000, 90_000),
            (99_000, 1 << 20),
            (1 << 40, 10),
            (u64::MAX, u64::MAX),
        ] {
            f.prefetch(offset, len);
        }
        let mut buf = vec![0; data.len()];
        f.read_exact_at(0, &mut buf).unwrap();
        assert_eq!(buf, data);
        let sim = SimFs::new();
        sim.create_dir_all(Path::new("/q")).unwrap();
        let mut g = sim.create(Path::new("/q/f")).unwrap();
        g.write_all_at(0, b"abc").unwrap();
        g.prefetch(0, u64::MAX);
        let mut buf = [0; 3];
        g.read_exact_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"abc");
    }

    #[test]
    fn power_cut_refuses_later_operations() {
        let fs = SimFs::new();
        let dir = Path::new("/q");
        fs.create_dir_all(dir).unwrap();
        fs.cut_power_after(1);
        let mut f = fs.create(&dir.join("a")).unwrap();
        assert!(f.write_all_at(0, b"x").is_err());
        assert!(fs.is_dead());
        fs.crash(CrashPlan::KEEP_ALL);
        assert_eq!(fs.list(dir).unwrap(), vec!["a".to_string()]);
    }
}
