//! The small file-system interface all persistent state goes through, with
//! a real implementation (`StdFs`) and an in-memory one (`MemFs`) that models
//! a crash: writes not yet synced are lost, and the last one may be torn.
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
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Opens `path` for appending, creating it if needed. A newly created
    /// file's name is durable only after `sync_dir`.
    fn open_append(&self, path: &Path) -> io::Result<Self::File>;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
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
    /// Current contents.
    data: Vec<u8>,
    /// Contents as of the last sync.
    durable: Vec<u8>,
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
        s.last_written = Some(self.id);
        let file = s
            .files
            .get_mut(&self.id)
            .ok_or_else(|| io::Error::other("file removed"))?;
        file.data.extend_from_slice(data);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut s = self.fs.lock();
        s.syncs += 1;
        let file = s
            .files
            .get_mut(&self.id)
            .ok_or_else(|| io::Error::other("file removed"))?;
        file.durable = file.data.clone();
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let mut s = self.fs.lock();
        let file = s
            .files
            .get_mut(&self.id)
            .ok_or_else(|| io::Error::other("file removed"))?;
        file.data.truncate(len as usize);
        file.durable = file.data.clone();
        Ok(())
    }
}

impl FileSystem for MemFs {
    type File = MemFileHandle;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.lock().dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn open_append(&self, path: &Path) -> io::Result<MemFileHandle> {
        let mut s = self.lock();
        let id = match s.names.get(path) {
            Some(&id) => id,
            None => {
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

    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        let id = s.next_id;
        s.next_id += 1;
        s.files.insert(
            id,
            MemFile {
                data: data.to_vec(),
                durable: data.to_vec(),
            },
        );
        s.names.insert(path.to_path_buf(), id);
        s.syncs += 1;
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let id = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
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
