//! The small file-system interface all persistent state goes through, with
//! a real implementation (`StdFs`) and an in-memory one (`MemFs`) that models
//! what disks do: a process crash keeps the page cache; a power loss drops
//! writes not yet synced (the last one may be torn); bits rot; a disk gets
//! replaced; writes, fsyncs and renames fail with EIO or ENOSPC, and a
//! failed fsync leaves its pages clean but not on disk, as Linux does.
//! The simulation keeps a `MemFs` outside each node, so it survives kills.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A file opened for appending.
pub trait AppendFile: Send + 'static {
    /// Appends `data` at the end (not yet durable).
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes; later appends go after it.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

/// The operations storage needs. Paths are absolute or relative to the
/// process; directories hold flat lists of files.
pub trait FileSystem: Clone + Send + Sync + 'static {
    /// The handle type for appending.
    type File: AppendFile;
    /// An exclusive lock, held until dropped.
    type Lock: Send + 'static;
    /// Takes an exclusive lock on `path` (created if needed) without
    /// waiting: `ErrorKind::WouldBlock` if another holder has it.
    fn lock(&self, path: &Path) -> io::Result<Self::Lock>;
    /// Makes a file's whole contents durable (it may have been written by
    /// an earlier process whose writes are still only in the page cache).
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Opens `path` for appending, creating it if needed. A newly created
    /// file's name is durable only after `sync_dir`.
    fn open_append(&self, path: &Path) -> io::Result<Self::File>;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Reads `len` bytes at `offset` (fewer only at the end of the file).
    fn read_range(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// A file's length in bytes.
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    /// Creates or replaces `path` with `data` and syncs it.
    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Renames a file (atomic; durable after `sync_dir`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file (durable after `sync_dir`).
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Names of the files in `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

impl StdFs {
    /// The real file system.
    pub fn new() -> Self {
        StdFs
    }
}

/// An append handle on a real file.
#[derive(Debug)]
pub struct StdFile(std::fs::File);

impl AppendFile for StdFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.write_all(data)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)?;
        self.0.sync_all()
    }
}

impl FileSystem for StdFs {
    type File = StdFile;
    type Lock = std::fs::File;

    fn lock(&self, path: &Path) -> io::Result<std::fs::File> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked by another process", path.display()),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn open_append(&self, path: &Path) -> io::Result<StdFile> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(StdFile(file))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn read_range(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::io::{Read as _, Seek as _};
        let mut file = std::fs::File::open(path)?;
        file.seek(io::SeekFrom::Start(offset))?;
        let mut buf = Vec::with_capacity(len);
        file.take(len as u64).read_to_end(&mut buf)?;
        Ok(buf)
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut file = std::fs::File::create(path)?;
        file.write_all(data)?;
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

/// One in-memory file: what a crash keeps and what it may lose.
#[derive(Debug, Clone, Default)]
struct MemFile {
    /// Current contents (the page cache).
    data: Vec<u8>,
    /// Contents on the disk.
    durable: Vec<u8>,
    /// Byte ranges a failed fsync left clean in the page cache but never
    /// wrote: later syncs skip them, so the disk holds zeros there.
    lost: Vec<(usize, usize)>,
}

impl MemFile {
    /// A successful sync: the disk gets the page cache, except lost ranges.
    fn sync(&mut self) {
        self.durable.clone_from(&self.data);
        for &(from, to) in &self.lost {
            let to = to.min(self.durable.len());
            if let Some(bytes) = self.durable.get_mut(from.min(to)..to) {
                bytes.fill(0);
            }
        }
    }

    /// A failed fsync: what was not yet on disk never will be.
    fn fail_sync(&mut self) {
        let (from, to) = (self.durable.len(), self.data.len());
        if to > from {
            self.lost.push((from, to));
        }
    }

    fn truncate(&mut self, len: usize) {
        self.data.truncate(len);
        self.lost.retain_mut(|(from, to)| {
            *to = (*to).min(len);
            from < to
        });
        self.sync();
    }
}

/// Faults a `MemFs` injects on request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DiskFaults {
    /// Fail this many coming appends with EIO (nothing written).
    pub failing_writes: u32,
    /// Fail this many coming fsyncs with EIO (their pages are lost).
    pub failing_syncs: u32,
    /// Fail this many coming renames with EIO (nothing renamed).
    pub failing_renames: u32,
    /// Total bytes the disk holds; writes past it fail with ENOSPC after
    /// writing what fits (None: unlimited).
    pub capacity: Option<usize>,
    /// The machine dies after this many more changes to the disk: every
    /// later change fails (a crash point, for tests; None: never).
    pub dies_after: Option<u32>,
    /// The machine dies right after the next operation of this kind
    /// succeeds: every later change fails (a crash point the simulation
    /// aims at a moment: after a batch is written but before its fsync,
    /// after an fsync but before anything is announced, after a snapshot's
    /// rename but before the log is compacted).
    pub dies_after_next: Option<DiskOp>,
}

/// An operation a fault can be aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskOp {
    /// Appends and whole-file writes.
    Write,
    /// fsync of a file.
    Sync,
    /// Renames.
    Rename,
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("injected EIO on {what}"))
}

fn enospc() -> io::Error {
    io::Error::new(io::ErrorKind::StorageFull, "injected ENOSPC: disk full")
}

#[derive(Debug, Default)]
struct MemState {
    /// File ids by name, as the process sees them.
    names: BTreeMap<PathBuf, u64>,
    /// File ids by name, as a crash would leave them.
    durable_names: BTreeMap<PathBuf, u64>,
    files: BTreeMap<u64, MemFile>,
    dirs: BTreeSet<PathBuf>,
    next_id: u64,
    /// The file written most recently, whose unsynced tail a crash may tear.
    last_written: Option<u64>,
    syncs: u64,
    /// Paths locked by a live holder, with the holder's token.
    locks: BTreeMap<PathBuf, u64>,
    next_lock_token: u64,
    faults: DiskFaults,
}

impl MemState {
    /// Bytes held by live files.
    fn used(&self) -> usize {
        let live: BTreeSet<u64> = self.names.values().copied().collect();
        self.files
            .iter()
            .filter(|(id, _)| live.contains(id))
            .map(|(_, f)| f.data.len())
            .sum()
    }

    /// How many of `wanted` bytes fit on the disk.
    fn room_for(&self, wanted: usize) -> usize {
        match self.faults.capacity {
            Some(cap) => cap.saturating_sub(self.used()).min(wanted),
            None => wanted,
        }
    }

    /// Counts one change to the disk toward `dies_after`; fails once dead.
    fn change(&mut self) -> io::Result<()> {
        match self.faults.dies_after.as_mut() {
            Some(0) => Err(io::Error::other(
                "injected crash point: the machine is dead",
            )),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// An operation of kind `op` succeeded: the machine dies now if it was
    /// set to die after one.
    fn done(&mut self, op: DiskOp) {
        if self.faults.dies_after_next == Some(op) {
            self.faults.dies_after_next = None;
            self.faults.dies_after = Some(0);
        }
    }

    /// Takes one injected failure of `op`, if any is pending.
    fn take_fault(&mut self, op: DiskOp) -> bool {
        let counter = match op {
            DiskOp::Write => &mut self.faults.failing_writes,
            DiskOp::Sync => &mut self.faults.failing_syncs,
            DiskOp::Rename => &mut self.faults.failing_renames,
        };
        let fail = *counter > 0;
        *counter = counter.saturating_sub(1);
        fail
    }
}

/// The lock on a `MemFs` path; dropping it releases the path (unless the
/// holder's process already died and someone else took it since).
#[derive(Debug)]
pub struct MemLock {
    fs: MemFs,
    path: PathBuf,
    token: u64,
}

impl Drop for MemLock {
    fn drop(&mut self) {
        let mut s = self.fs.lock();
        if s.locks.get(&self.path) == Some(&self.token) {
            s.locks.remove(&self.path);
        }
    }
}

/// What a simulated crash did to the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Bytes written but not synced when the crash came.
    pub unsynced_bytes: usize,
    /// Of those, bytes that survived as a torn prefix of the last write.
    pub torn_bytes_kept: usize,
}

/// An in-memory file system with crash semantics, shared by clones.
#[derive(Debug, Clone, Default)]
pub struct MemFs(Arc<Mutex<MemState>>);

/// An append handle on a `MemFs` file.
#[derive(Debug)]
pub struct MemFileHandle {
    fs: MemFs,
    id: u64,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl MemFs {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulates power loss: unsynced data and unsynced directory changes
    /// are lost, except that a random prefix of the most recently written
    /// file's unsynced tail may survive (a torn write). Seeded. Returns what
    /// was lost, for traces.
    pub fn crash(&self, seed: u64) -> CrashReport {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut report = CrashReport::default();
        let mut s = self.lock();
        let torn = s.last_written.take();
        for (id, file) in s.files.iter_mut() {
            let mut keep = file.durable.clone();
            if !file.lost.is_empty() {
                // Lost pages stay lost: torn tails are not modelled on top.
                file.data.clone_from(&file.durable);
                continue;
            }
            let unsynced = file.data.len().saturating_sub(file.durable.len());
            if Some(*id) == torn
                && file.data.starts_with(&file.durable)
                && unsynced > 0
                && rng.random_bool(0.5)
            {
                let tail = &file.data[file.durable.len()..];
                let cut = rng.random_range(0..=tail.len());
                keep.extend_from_slice(&tail[..cut]);
                report.torn_bytes_kept += cut;
            }
            report.unsynced_bytes += unsynced;
            file.data = keep.clone();
            file.durable = keep;
        }
        s.names = s.durable_names.clone();
        let live: BTreeSet<u64> = s.names.values().copied().collect();
        s.files.retain(|id, _| live.contains(id));
        report
    }

    /// The process using this disk died: the OS drops its locks (its
    /// handles may be dropped later; they no longer count).
    pub fn release_locks(&self) {
        self.lock().locks.clear();
    }

    /// A replaced disk: every file and directory is gone, durable copies
    /// too. Call it while no process holds the disk.
    pub fn wipe(&self) {
        *self.lock() = MemState::default();
    }

    /// Makes the next `times` operations of kind `op` fail with EIO.
    pub fn fail_next(&self, op: DiskOp, times: u32) {
        let mut s = self.lock();
        match op {
            DiskOp::Write => s.faults.failing_writes = times,
            DiskOp::Sync => s.faults.failing_syncs = times,
            DiskOp::Rename => s.faults.failing_renames = times,
        }
    }

    /// Limits the disk to `bytes` (None: unlimited): a full disk fails
    /// writes with ENOSPC until space is freed.
    pub fn set_capacity(&self, bytes: Option<usize>) {
        self.lock().faults.capacity = bytes;
    }

    /// Bytes held by files now.
    pub fn used_bytes(&self) -> usize {
        self.lock().used()
    }

    /// Faults still pending.
    pub fn faults(&self) -> DiskFaults {
        self.lock().faults
    }

    /// Replaces every pending fault (`DiskFaults::default()` clears them).
    pub fn set_faults(&self, faults: DiskFaults) {
        self.lock().faults = faults;
    }

    /// An independent copy of this disk, page cache, durable state and
    /// faults included (locks are not copied).
    pub fn deep_copy(&self) -> MemFs {
        let s = self.lock();
        let copy = MemState {
            names: s.names.clone(),
            durable_names: s.durable_names.clone(),
            files: s.files.clone(),
            dirs: s.dirs.clone(),
            next_id: s.next_id,
            last_written: s.last_written,
            syncs: s.syncs,
            locks: BTreeMap::new(),
            next_lock_token: 0,
            faults: s.faults,
        };
        MemFs(Arc::new(Mutex::new(copy)))
    }

    /// Names of the files in `dir` (a listing for tests and the harness).
    pub fn files_in(&self, dir: &Path) -> Vec<PathBuf> {
        let s = self.lock();
        s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect()
    }

    /// Flips one bit of a file's bytes, durable copy included (bit rot).
    pub fn corrupt(&self, path: &Path, offset: usize, bit: u8) -> io::Result<()> {
        let mut s = self.lock();
        let id = *s.names.get(path).ok_or_else(|| not_found(path))?;
        let file = s.files.get_mut(&id).ok_or_else(|| not_found(path))?;
        for bytes in [&mut file.data, &mut file.durable] {
            if let Some(b) = bytes.get_mut(offset) {
                *b ^= 1 << (bit % 8);
            }
        }
        Ok(())
    }

    /// Whether the machine died at a crash point (`DiskFaults::dies_after`
    /// ran out): its process should be killed now.
    pub fn is_dead(&self) -> bool {
        self.lock().faults.dies_after == Some(0)
    }

    /// How many syncs were issued (for tests of group commit).
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }

    /// The current length of a file.
    pub fn len(&self, path: &Path) -> Option<usize> {
        let s = self.lock();
        s.names
            .get(path)
            .and_then(|id| s.files.get(id))
            .map(|f| f.data.len())
    }
}

impl AppendFile for MemFileHandle {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let mut s = self.fs.lock();
        s.change()?;
        if s.take_fault(DiskOp::Write) {
            return Err(eio("write"));
        }
        let room = s.room_for(data.len());
        s.last_written = Some(self.id);
        let file = s
            .files
            .get_mut(&self.id)
            .ok_or_else(|| io::Error::other("file removed"))?;
        file.data.extend_from_slice(&data[..room]);
        if room < data.len() {
            return Err(enospc());
        }
        s.done(DiskOp::Write);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut s = self.fs.lock();
        s.change()?;
        s.syncs += 1;
        let fail = s.take_fault(DiskOp::Sync);
        let file = s
            .files
            .get_mut(&self.id)
            .ok_or_else(|| io::Error::other("file removed"))?;
        if fail {
            file.fail_sync();
            return Err(eio("fsync"));
        }
        file.sync();
        s.done(DiskOp::Sync);
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let mut s = self.fs.lock();
        s.change()?;
        let file = s
            .files
            .get_mut(&self.id)
            .ok_or_else(|| io::Error::other("file removed"))?;
        file.truncate(len as usize);
        Ok(())
    }
}

impl FileSystem for MemFs {
    type File = MemFileHandle;
    type Lock = MemLock;

    fn lock(&self, path: &Path) -> io::Result<MemLock> {
        let mut s = self.lock();
        if s.locks.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked by another process", path.display()),
            ));
        }
        s.next_lock_token += 1;
        let token = s.next_lock_token;
        s.locks.insert(path.to_path_buf(), token);
        Ok(MemLock {
            fs: self.clone(),
            path: path.to_path_buf(),
            token,
        })
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.change()?;
        s.syncs += 1;
        let fail = s.take_fault(DiskOp::Sync);
        let id = *s.names.get(path).ok_or_else(|| not_found(path))?;
        let file = s.files.get_mut(&id).ok_or_else(|| not_found(path))?;
        if fail {
            file.fail_sync();
            return Err(eio("fsync"));
        }
        file.sync();
        s.done(DiskOp::Sync);
        Ok(())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.lock().dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn open_append(&self, path: &Path) -> io::Result<MemFileHandle> {
        let mut s = self.lock();
        let id = match s.names.get(path) {
            Some(&id) => id,
            None => {
                s.change()?;
                let id = s.next_id;
                s.next_id += 1;
                s.files.insert(id, MemFile::default());
                s.names.insert(path.to_path_buf(), id);
                id
            }
        };
        Ok(MemFileHandle {
            fs: self.clone(),
            id,
        })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.lock();
        let id = s.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(s.files.get(id).map(|f| f.data.clone()).unwrap_or_default())
    }

    fn read_range(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let s = self.lock();
        let id = s.names.get(path).ok_or_else(|| not_found(path))?;
        let data = s
            .files
            .get(id)
            .map(|f| f.data.as_slice())
            .unwrap_or_default();
        let from = (offset as usize).min(data.len());
        let to = from.saturating_add(len).min(data.len());
        Ok(data[from..to].to_vec())
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let s = self.lock();
        let id = s.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(s.files.get(id).map_or(0, |f| f.data.len() as u64))
    }

    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        s.change()?;
        if s.take_fault(DiskOp::Write) {
            return Err(eio("write"));
        }
        if s.room_for(data.len()) < data.len() {
            return Err(enospc());
        }
        if s.take_fault(DiskOp::Sync) {
            return Err(eio("fsync"));
        }
        let id = s.next_id;
        s.next_id += 1;
        s.files.insert(
            id,
            MemFile {
                data: data.to_vec(),
                durable: data.to_vec(),
                lost: Vec::new(),
            },
        );
        s.names.insert(path.to_path_buf(), id);
        s.syncs += 1;
        s.done(DiskOp::Write);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.change()?;
        if s.take_fault(DiskOp::Rename) {
            return Err(eio("rename"));
        }
        let id = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), id);
        s.done(DiskOp::Rename);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.change()?;
        s.names.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock();
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.change()?;
        s.syncs += 1;
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        s.durable_names.retain(|p, _| !in_dir(p));
        let current: Vec<(PathBuf, u64)> = s
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        s.durable_names.extend(current);
        s.done(DiskOp::Sync);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_synced_data_and_loses_the_rest() {
        let dir = Path::new("/d");
        let path = dir.join("f");
        let unsynced = dir.join("new");
        for seed in 0..20 {
            let fs = MemFs::new();
            let mut f = fs.open_append(&path).unwrap();
            f.append(b"durable").unwrap();
            f.sync().unwrap();
            fs.sync_dir(dir).unwrap();
            fs.open_append(&unsynced).unwrap().append(b"x").unwrap();
            f.append(b"-lost").unwrap();
            fs.crash(seed);
            let data = fs.read(&path).unwrap();
            assert!(data.starts_with(b"durable"), "seed {seed}");
            assert!(b"durable-lost".starts_with(&data), "seed {seed}: {data:?}");
            assert!(fs.read(&unsynced).is_err(), "an unsynced creation is lost");
        }
    }

    #[test]
    fn torn_tails_happen_for_some_seeds_and_not_others() {
        let mut lengths = BTreeSet::new();
        for seed in 0..40 {
            let fs = MemFs::new();
            let path = Path::new("/d/f");
            let mut f = fs.open_append(path).unwrap();
            fs.sync_dir(Path::new("/d")).unwrap();
            f.append(b"0123456789").unwrap();
            fs.crash(seed);
            lengths.insert(fs.read(path).unwrap().len());
        }
        assert!(lengths.contains(&0));
        assert!(
            lengths.len() > 2,
            "a torn write keeps a random prefix: {lengths:?}"
        );
    }

    #[test]
    fn renames_and_removals_are_durable_only_after_a_directory_sync() {
        let fs = MemFs::new();
        let dir = Path::new("/d");
        fs.write_synced(&dir.join("a.tmp"), b"snap").unwrap();
        fs.sync_dir(dir).unwrap();
        fs.rename(&dir.join("a.tmp"), &dir.join("a")).unwrap();
        fs.crash(1);
        assert_eq!(fs.list(dir).unwrap(), vec!["a.tmp".to_string()]);
        fs.rename(&dir.join("a.tmp"), &dir.join("a")).unwrap();
        fs.sync_dir(dir).unwrap();
        fs.crash(2);
        assert_eq!(fs.read(&dir.join("a")).unwrap(), b"snap");
    }

    #[test]
    fn the_machine_dies_right_after_the_chosen_operation() {
        let fs = MemFs::new();
        let path = Path::new("/d/wal");
        let mut f = fs.open_append(path).unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        fs.set_faults(DiskFaults {
            dies_after_next: Some(DiskOp::Sync),
            ..DiskFaults::default()
        });
        f.append(b"first").unwrap();
        assert!(!fs.is_dead(), "a write is not the chosen operation");
        f.sync().unwrap();
        assert!(fs.is_dead(), "the fsync succeeded, then the machine died");
        assert!(
            f.append(b"second").is_err(),
            "a dead machine writes nothing"
        );
        fs.crash(3);
        assert_eq!(fs.read(path).unwrap(), b"first");
    }

    #[test]
    fn std_fs_round_trips_in_a_temp_dir() {
        let dir = std::env::temp_dir().join(format!("kv-fs-test-{}", std::process::id()));
        let fs = StdFs::new();
        fs.create_dir_all(&dir).unwrap();
        let path = dir.join("seg");
        let mut f = fs.open_append(&path).unwrap();
        f.append(b"hello ").unwrap();
        f.append(b"world").unwrap();
        f.sync().unwrap();
        f.truncate(5).unwrap();
        f.append(b"!").unwrap();
        assert_eq!(fs.read(&path).unwrap(), b"hello!");
        fs.rename(&path, &dir.join("seg2")).unwrap();
        fs.sync_dir(&dir).unwrap();
        assert_eq!(fs.list(&dir).unwrap(), vec!["seg2".to_string()]);
        fs.remove(&dir.join("seg2")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
