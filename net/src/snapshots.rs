//! Snapshot files on disk, always streamed in bounded pieces: written from
//! a captured state machine, read in chunks to send to a follower, received
//! from the leader chunk by chunk, checked, and read back into a state
//! machine. No whole snapshot is ever held in memory as bytes.
//!
//! Every write goes to a temp file that is fsynced, renamed into place, and
//! the directory fsynced, so a snapshot file that exists is complete.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use kv_engine::kv::{KvBuilder, KvSnapshot, KvStore};
use kv_engine::raft::SnapshotInfo;
use kv_engine::storage::recovery::{received_name, snapshot_name, TEMP_SUFFIX};
use kv_engine::storage::snapshot_file::{
    data_len_of, stream_snapshot_file, SnapshotFileWriter, SnapshotReadError, HEADER_BYTES,
};
use kv_proto::raft::SnapshotMeta;

use crate::fs::{AppendFile, FileSystem};
use crate::storage::{io_err, StorageError};

/// Bytes read or written in one piece.
pub const PIECE_BYTES: usize = 1 << 20;

/// A snapshot being written is synced every this many bytes, so the disk
/// never holds a large backlog of its dirty pages: a final flush of a whole
/// multi-gigabyte file would stall the WAL's fsyncs behind it for seconds.
pub const SYNC_EVERY_BYTES: u64 = 8 << 20;

/// The snapshot file at `index` in `dir`.
pub fn snapshot_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(snapshot_name(index))
}

/// The file of the snapshot at `index` received from a leader, until its
/// install is in the WAL (see `received_name`).
pub fn received_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(received_name(index))
}

/// Where a file being written lives until it is complete.
fn temp_of(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(TEMP_SUFFIX);
    PathBuf::from(name)
}

/// A snapshot file being written: its temp file and running checksum.
pub struct SnapshotFileOut<F: FileSystem> {
    fs: F,
    dir: PathBuf,
    meta: SnapshotMeta,
    file: F::File,
    /// Where the file is written (`dest` with `.tmp`), and where it goes
    /// once complete. A snapshot taken here and one received from a leader
    /// never share either, so neither job can touch the other's file.
    tmp: PathBuf,
    dest: PathBuf,
    writer: SnapshotFileWriter,
    /// Bytes written since the last sync.
    unsynced: u64,
}

impl<F: FileSystem> SnapshotFileOut<F> {
    /// Starts the temp file of the snapshot at `meta`, taken locally
    /// (replacing any leftover); `finish` puts it in place.
    pub fn start(fs: &F, dir: &Path, meta: SnapshotMeta) -> Result<Self, StorageError> {
        Self::begin(fs, dir, meta, snapshot_path(dir, meta.index))
    }

    /// Starts the temp file of the snapshot at `meta` received from a
    /// leader; `finish` leaves it under `received_path`, and storage puts
    /// it in place once the install's marker is durable
    /// (`Storage::install_snapshot`).
    pub fn start_received(fs: &F, dir: &Path, meta: SnapshotMeta) -> Result<Self, StorageError> {
        Self::begin(fs, dir, meta, received_path(dir, meta.index))
    }

    fn begin(fs: &F, dir: &Path, meta: SnapshotMeta, dest: PathBuf) -> Result<Self, StorageError> {
        let tmp = temp_of(&dest);
        match fs.remove(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &tmp)(e)),
        }
        let mut file = fs.open_append(&tmp).map_err(io_err("create", &tmp))?;
        let (writer, header) = SnapshotFileWriter::start(meta);
        file.append(&header).map_err(io_err("write", &tmp))?;
        Ok(SnapshotFileOut {
            fs: fs.clone(),
            dir: dir.to_path_buf(),
            meta,
            file,
            tmp,
            dest,
            writer,
            unsynced: 0,
        })
    }

    /// Appends the next piece of data.
    pub fn append(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.writer.data(data);
        self.file.append(data).map_err(io_err("write", &self.tmp))?;
        self.unsynced += data.len() as u64;
        if self.unsynced >= SYNC_EVERY_BYTES {
            self.unsynced = 0;
            self.file.sync().map_err(io_err("fsync", &self.tmp))?;
        }
        Ok(())
    }

    /// Appends the whole of a captured state machine, in pieces.
    pub fn append_all(&mut self, captured: &KvSnapshot) -> Result<(), StorageError> {
        let mut encoder = captured.encoder();
        let mut piece = Vec::with_capacity(PIECE_BYTES + 4096);
        loop {
            piece.clear();
            let more = encoder.next_chunk(&mut piece, PIECE_BYTES);
            self.append(&piece)?;
            if !more {
                return Ok(());
            }
        }
    }

    /// The snapshot this file is for.
    pub fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    /// Gives the file up (the leader started over with another snapshot):
    /// removes the temp file, so abandoned transfers do not pile up on disk.
    pub fn abandon(self) -> Result<(), StorageError> {
        drop(self.file);
        match self.fs.remove(&self.tmp) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &self.tmp)(e)),
        }
    }

    /// Bytes of data so far.
    pub fn data_len(&self) -> u64 {
        self.writer.data_len()
    }

    /// Ends the file, makes it durable and moves it to where it goes
    /// (in place, or under `received_path`).
    pub fn finish(mut self) -> Result<SnapshotInfo, StorageError> {
        let size = self.writer.data_len();
        let trailer = self.writer.trailer();
        self.file
            .append(&trailer)
            .map_err(io_err("write", &self.tmp))?;
        self.file.sync().map_err(io_err("fsync", &self.tmp))?;
        self.fs
            .rename(&self.tmp, &self.dest)
            .map_err(io_err("rename", &self.tmp))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(io_err("sync directory", &self.dir))?;
        Ok(SnapshotInfo {
            meta: self.meta,
            size,
        })
    }
}

/// Writes the captured state machine as the snapshot at `meta`, streamed.
pub fn write_snapshot<F: FileSystem>(
    fs: &F,
    dir: &Path,
    meta: SnapshotMeta,
    captured: &KvSnapshot,
) -> Result<SnapshotInfo, StorageError> {
    let mut out = SnapshotFileOut::start(fs, dir, meta)?;
    out.append_all(captured)?;
    out.finish()
}

/// `len` bytes of the data of the snapshot at `meta`, from `offset`.
pub fn read_chunk<F: FileSystem>(
    fs: &F,
    dir: &Path,
    meta: SnapshotMeta,
    offset: u64,
    len: u64,
) -> Result<Bytes, StorageError> {
    let path = snapshot_path(dir, meta.index);
    let bytes = fs
        .read_range(&path, HEADER_BYTES + offset, len as usize)
        .map_err(io_err("read", &path))?;
    if bytes.len() as u64 != len {
        return Err(io_err("read", &path)(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "snapshot shorter than asked",
        )));
    }
    Ok(Bytes::from(bytes))
}

/// Reads the snapshot file at `path` through, handing its data to
/// `on_data`; Ok only if the whole file checks out.
fn stream<F: FileSystem>(
    fs: &F,
    path: &Path,
    on_data: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<SnapshotInfo, String> {
    let len = fs.file_len(path).map_err(|e| e.to_string())?;
    let size = data_len_of(len).map_err(|e| e.to_string())?;
    let read = |at: u64, n: usize| fs.read_range(path, at, n);
    match stream_snapshot_file(len, PIECE_BYTES, read, on_data) {
        Ok(meta) => Ok(SnapshotInfo { meta, size }),
        Err(SnapshotReadError::Io(e)) => Err(e.to_string()),
        Err(SnapshotReadError::File(e)) => Err(e.to_string()),
        Err(SnapshotReadError::Data(e)) => Err(e),
    }
}

/// Checks the snapshot file at `path` without building anything.
pub fn verify<F: FileSystem>(fs: &F, path: &Path) -> Result<SnapshotInfo, String> {
    stream(fs, path, |_| Ok(()))
}

/// Checks the snapshot file at `path` and rebuilds the state machine from
/// it in the same pass.
pub fn verify_and_restore<F: FileSystem>(
    fs: &F,
    path: &Path,
) -> Result<(SnapshotInfo, KvStore), String> {
    let mut builder = KvBuilder::new();
    let info = stream(fs, path, |piece| {
        builder.feed(piece).map_err(|e| e.to_string())
    })?;
    Ok((info, builder.finish().map_err(|e| e.to_string())?))
}

/// Rebuilds the state machine from the snapshot `info`, streamed from `path`.
pub fn restore<F: FileSystem>(fs: &F, path: &Path, info: SnapshotInfo) -> Result<KvStore, String> {
    let (read, kv) = verify_and_restore(fs, path)?;
    if read != info {
        return Err(format!("snapshot file holds {read:?}, not {info:?}"));
    }
    Ok(kv)
}

#[cfg(test)]
mod tests {
    use kv_proto::command::{command::Op, Command, Set};

    use super::*;
    use crate::fs::MemFs;

    fn store(n: usize) -> KvStore {
        let mut kv = KvStore::new();
        for i in 0..n {
            kv.apply(&Command {
                op: Some(Op::Set(Set {
                    key: Bytes::from(format!("key{i:06}")),
                    value: Bytes::from(vec![b'v'; i % 200]),
                })),
                ..Default::default()
            });
        }
        kv
    }

    const META: SnapshotMeta = SnapshotMeta { index: 77, term: 3 };

    #[test]
    fn a_captured_store_is_written_read_in_chunks_and_restored() {
        let fs = MemFs::new();
        let dir = Path::new("/d");
        let kv = store(5000);
        let info = write_snapshot(&fs, dir, META, &kv.capture()).unwrap();
        assert_eq!(info.meta, META);
        // Test only: an in-memory file system, which has no faults unless set.
        assert_eq!(verify(&fs, &snapshot_path(dir, 77)).unwrap(), info);
        // Test only: an in-memory file system, which has no faults unless set.
        assert_eq!(restore(&fs, &snapshot_path(dir, 77), info).unwrap(), kv);
        // Chunks read for a follower, received and written again: the same store.
        let mut incoming = SnapshotFileOut::start_received(&fs, Path::new("/f"), META).unwrap();
        let mut at = 0;
        while at < info.size {
            let len = (info.size - at).min(4096);
            incoming
                .append(&read_chunk(&fs, dir, META, at, len).unwrap())
                .unwrap();
            at += len;
        }
        let received = incoming.finish().unwrap();
        assert_eq!(received, info);
        let path = received_path(Path::new("/f"), 77);
        // Test only: an in-memory file system, which has no faults unless set.
        assert_eq!(restore(&fs, &path, received).unwrap(), kv);
        assert!(
            fs.read(&snapshot_path(Path::new("/f"), 77)).is_err(),
            "not in place until installed"
        );
    }

    #[test]
    fn a_local_snapshot_and_a_received_one_at_one_index_never_share_a_file() {
        // The saver and the receiving task run on their own threads: a
        // transfer starting over must not remove or rename the saver's file.
        let fs = MemFs::new();
        let dir = Path::new("/d");
        let kv = store(300);
        // Test only: an in-memory file system, which has no faults unless set.
        let mut local = SnapshotFileOut::start(&fs, dir, META).unwrap();
        // Test only: an in-memory file system, which has no faults unless set.
        let mut incoming = SnapshotFileOut::start_received(&fs, dir, META).unwrap();
        // Test only: an in-memory file system, which has no faults unless set.
        incoming.append(b"a partial chunk").unwrap();
        // Test only: an in-memory file system, which has no faults unless set.
        local.append_all(&kv.capture()).unwrap();
        // Test only: an in-memory file system, which has no faults unless set.
        let again = SnapshotFileOut::start_received(&fs, dir, META).unwrap();
        // Test only: an in-memory file system, which has no faults unless set.
        let info = local.finish().unwrap();
        // Test only: an in-memory file system, which has no faults unless set.
        assert_eq!(restore(&fs, &snapshot_path(dir, 77), info).unwrap(), kv);
        // Test only: an in-memory file system, which has no faults unless set.
        again.abandon().unwrap();
        assert!(fs.read(&received_path(dir, 77)).is_err());
    }

    #[test]
    fn a_damaged_snapshot_file_is_refused_and_restores_nothing() {
        let fs = MemFs::new();
        let dir = Path::new("/d");
        let info = write_snapshot(&fs, dir, META, &store(300).capture()).unwrap();
        fs.corrupt(&snapshot_path(dir, 77), 500, 3).unwrap();
        assert!(verify(&fs, &snapshot_path(dir, 77)).is_err());
        assert!(restore(&fs, &snapshot_path(dir, 77), info).is_err());
    }

    #[test]
    fn a_crash_before_the_rename_leaves_no_snapshot_file() {
        let fs = MemFs::new();
        let dir = Path::new("/d");
        let mut out = SnapshotFileOut::start(&fs, dir, META).unwrap();
        out.append(b"partial").unwrap();
        fs.crash(1);
        assert!(
            verify(&fs, &snapshot_path(dir, 77)).is_err(),
            "only a temp file, if anything"
        );
    }
}
