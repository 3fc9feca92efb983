//! A node's durable state in one directory: WAL segments and snapshots.
//!
//! ```text
//! meta                           whose data this is (cluster, node, format)
//! LOCK                           held by the one process using the dir
//! wal-00000000000000000001.log   records (see kv_engine::storage::record)
//! wal-00000000000000000002.log   ... rotated at segment_size_bytes
//! snap-00000000000000012345.snap the state machine at index 12345
//! snap-00000000000000012400.recv one received from a leader, not yet installed
//! *.damaged                      files set aside by a repair, for forensics
//! ```
//!
//! Rules:
//! - one `append` is one write and one fdatasync (group commit); within a
//!   write the hard state goes first, so no entry outlives the hard state
//!   written with it (which may mark the node recovering);
//! - each segment starts with the current hard state (a new one, or one
//!   cut back to nothing, gets it at open), so dropping old segments never
//!   drops the hard state;
//! - snapshot files are written by `crate::snapshots` (temp file, fsync,
//!   rename, directory fsync); only once one is durable does `compact`
//!   remove the segments it covers;
//! - a snapshot received from a leader stays `.recv` until `install_snapshot`
//!   has made its marker durable (a new segment that opens with it), and
//!   only then becomes `.snap`: every `.snap` was taken here or is vouched
//!   for by the WAL, so a fallback from a damaged newer snapshot to an older
//!   one always meets the marker of any install in between;
//! - a failed write or fsync is never followed by an acknowledgement of
//!   what it covered and never retried as if it had worked: the segment
//!   (or a new one whose rotation failed) is cut back to its last fsync and
//!   the error ends this storage's life (the node reopens it from disk);
//! - opening (`open.rs`) checks the dir's identity, makes every file it
//!   relies on durable, cuts a torn tail, and repairs damage by setting it
//!   aside and marking the node recovering (policy in
//!   `kv_engine::storage::recovery`).

mod open;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use kv_engine::kv::KvStore;
use kv_engine::raft::{Found, SnapshotInfo};
use kv_engine::storage::meta::DataDirMeta;
use kv_engine::storage::record::{encode_entry, encode_hard_state, encode_snapshot_marker};
use kv_engine::storage::recovery::{
    received_name, segment_name, snapshot_name, Damage, DirListing,
};
use kv_proto::raft::{Entry, HardState, SnapshotMeta};

pub use self::open::{inspect, Inspection};
use crate::fs::{AppendFile, FileSystem};
use crate::snapshots::{received_path, snapshot_path};

/// Name of the lock file.
pub const LOCK_FILE: &str = "LOCK";

/// Tuning of the storage layer.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// A segment is rotated once it grows past this.
    pub segment_size_bytes: u64,
    /// Snapshot files kept (the newest, plus older ones as fallbacks).
    pub snapshots_kept: usize,
    /// Who the data dir must belong to.
    pub identity: DataDirMeta,
    /// A segment to cut back to a length before reading it: what a failed
    /// fsync covered in an earlier life of this storage, which may sit in
    /// the page cache without being on disk.
    pub cut_back: Option<(PathBuf, u64)>,
    /// A start-up fsync failed in an earlier life of this storage: what the
    /// page cache shows beyond the disk's contents is unknown (a failed
    /// fsync leaves pages clean but unwritten), and so is where the disk's
    /// contents end. Nothing here is trusted: it is set aside and the node
    /// starts recovering, as after damage.
    pub cache_untrusted: bool,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            segment_size_bytes: 64 << 20,
            snapshots_kept: 2,
            identity: DataDirMeta::new(1, 1),
            cut_back: None,
            cache_untrusted: false,
        }
    }
}

/// What `open` recovered.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The last hard state written.
    pub hard_state: HardState,
    /// The newest valid snapshot (its data stays in its file).
    pub snapshot: Option<SnapshotInfo>,
    /// The durable entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// Whether storage was intact, empty, or damaged.
    pub found: Found,
    /// What was damaged (empty unless `found` is `Damaged`).
    pub damage: Vec<Damage>,
    /// The state machine rebuilt from `snapshot` (empty without one).
    pub state: KvStore,
}

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Another process uses the data dir.
    #[error(
        "data directory {dir} is in use by another process (it holds {dir}/{LOCK_FILE}); \
         one data directory serves one node"
    )]
    Locked {
        /// The data dir.
        dir: PathBuf,
    },
    /// The data dir belongs to another node or cluster.
    #[error(
        "data directory {dir} belongs to node {found_node} of cluster {found_cluster}, \
         but this is node {node} of cluster {cluster}: refusing to start \
         (check --id, --cluster-id and --data-dir)"
    )]
    IdentityMismatch {
        /// The data dir.
        dir: PathBuf,
        /// The node id in the dir.
        found_node: u64,
        /// The cluster id in the dir.
        found_cluster: u64,
        /// This node's id.
        node: u64,
        /// This node's cluster id.
        cluster: u64,
    },
    /// A later format than this code reads.
    #[error("data directory {dir} has format version {found}; this build reads {supported}")]
    Format {
        /// The data dir.
        dir: PathBuf,
        /// The version found.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
}

impl StorageError {
    /// Whether retrying later may help (a full or failing disk), as opposed
    /// to a mistake only an operator can fix.
    pub fn is_disk_fault(&self) -> bool {
        matches!(self, StorageError::Io { .. })
    }

    /// Whether this is a failed fsync of a file (not of a directory).
    pub fn is_failed_fsync(&self) -> bool {
        matches!(self, StorageError::Io { op: "fsync", .. })
    }
}

/// Encodes one batch: the hard state first, so no entry ever survives a
/// torn write without the hard state written with it (a recovering mark,
/// a term, a vote), but with its commit index cut below the batch's first
/// entry, since a torn write may keep the hard state and lose entries that
/// overwrite stale ones; then the entries; then, if the commit index was
/// cut, the hard state again with the whole of it.
fn encode_batch(hard_state: Option<&HardState>, entries: &[Entry], out: &mut Vec<u8>) {
    let first = entries.first().map(|e| e.index);
    let leading = hard_state.map(|hs| match first {
        Some(first) if hs.commit >= first => HardState {
            commit: first - 1,
            ..*hs
        },
        _ => *hs,
    });
    if let Some(hs) = &leading {
        encode_hard_state(hs, out);
    }
    for e in entries {
        encode_entry(e, out);
    }
    if let (Some(hs), Some(lead)) = (hard_state, leading) {
        if lead.commit != hs.commit {
            encode_hard_state(hs, out);
        }
    }
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
struct SegmentInfo {
    seq: u64,
    path: PathBuf,
    /// Highest entry index written to it (0: none).
    max_index: u64,
    /// Its length once closed (the current segment's is `current_len`).
    len: u64,
}

/// The WAL and snapshots of one node.
pub struct Storage<F: FileSystem> {
    fs: F,
    dir: PathBuf,
    opts: StorageOptions,
    segments: Vec<SegmentInfo>,
    current: F::File,
    /// Bytes in the current segment, written.
    current_len: u64,
    /// Bytes in the current segment as of its last successful fsync.
    synced_len: u64,
    hard_state: HardState,
    snapshot_index: u64,
    buf: Vec<u8>,
    /// A failed write or fsync left the current segment in doubt.
    failed: Option<(PathBuf, u64)>,
    _lock: F::Lock,
}

impl<F: FileSystem> Storage<F> {
    /// Group commit: writes `hard_state` and `entries` (replacing any stored
    /// suffix from the first one's index) in one write and one fdatasync.
    pub fn append(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        if self.write(hard_state, entries)? {
            self.sync()?;
        }
        Ok(())
    }

    /// The first half of `append`: one write, not yet durable. Returns
    /// whether anything was written. `sync` must follow before anything
    /// that depends on it is acknowledged.
    pub fn write(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<bool, StorageError> {
        self.check_usable()?;
        if hard_state.is_none() && entries.is_empty() {
            return Ok(false);
        }
        debug_assert!(
            entries.windows(2).all(|w| w[1].index == w[0].index + 1),
            "entries are contiguous"
        );
        self.buf.clear();
        encode_batch(hard_state, entries, &mut self.buf);
        let path = self.current_path();
        if let Err(e) = self.current.append(&self.buf) {
            return Err(self.fail("append", path, e));
        }
        if let Some(hs) = hard_state {
            self.hard_state = *hs;
        }
        self.current_len += self.buf.len() as u64;
        if let (Some(last), Some(seg)) = (entries.last(), self.segments.last_mut()) {
            seg.max_index = seg.max_index.max(last.index);
        }
        Ok(true)
    }

    /// The second half of `append`: fdatasync, then rotate a full segment.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.check_usable()?;
        let path = self.current_path();
        if let Err(e) = self.current.sync() {
            return Err(self.fail("fdatasync", path, e));
        }
        self.synced_len = self.current_len;
        if self.current_len >= self.opts.segment_size_bytes {
            self.rotate(None)?;
        }
        Ok(())
    }

    fn current_path(&self) -> PathBuf {
        self.segments
            .last()
            .map_or_else(|| self.dir.join(segment_name(1)), |s| s.path.clone())
    }

    /// Refuses any use after a failure: what the failed call covered is in
    /// doubt, and only a reopen from disk settles it.
    fn check_usable(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some((path, _)) => Err(StorageError::Io {
                op: "use after a failure of",
                path: path.clone(),
                source: std::io::Error::other("storage must be reopened"),
            }),
            None => Ok(()),
        }
    }

    /// A write or fsync of the current segment failed: cut it back to its
    /// last fsync (so nothing the failure covered can be read back as if
    /// durable, even from the page cache), and refuse further use.
    fn fail(&mut self, op: &'static str, path: PathBuf, source: std::io::Error) -> StorageError {
        tracing::error!(file = %path.display(), op, error = %source, "storage write failed");
        match self.current.truncate(self.synced_len) {
            Ok(()) => self.current_len = self.synced_len,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cutting back to the last fsync failed too");
            }
        }
        self.failed = Some((path.clone(), self.synced_len));
        StorageError::Io { op, path, source }
    }

    /// After a failure: the segment and length to cut back to when the
    /// data dir is reopened.
    pub fn cut_back(&self) -> Option<(PathBuf, u64)> {
        self.failed.clone()
    }

    /// Starts a new segment with the current hard state (and, after an
    /// installed snapshot, its marker first).
    fn rotate(&mut self, marker: Option<SnapshotMeta>) -> Result<(), StorageError> {
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let path = self.dir.join(segment_name(seq));
        let mut file = self
            .fs
            .open_append(&path)
            .map_err(io_err("create", &path))?;
        self.buf.clear();
        if let Some(meta) = marker {
            encode_snapshot_marker(&meta, &mut self.buf);
        }
        encode_hard_state(&self.hard_state, &mut self.buf);
        let made_durable = file
            .append(&self.buf)
            .map_err(io_err("append", &path))
            .and_then(|()| file.sync().map_err(io_err("fdatasync", &path)))
            .and_then(|()| {
                self.fs
                    .sync_dir(&self.dir)
                    .map_err(io_err("sync directory", &self.dir))
            });
        if let Err(e) = made_durable {
            // What the page cache shows of the new segment may never reach
            // the disk: a reopen must not read its marker and build on an
            // install a power loss would undo. Cut it to nothing now, and
            // again when the data dir is reopened.
            if let Err(cut) = file.truncate(0) {
                tracing::error!(file = %path.display(), error = %cut, "cutting back a new segment failed too");
            }
            self.failed = Some((path, 0));
            return Err(e);
        }
        self.current = file;
        if let Some(closed) = self.segments.last_mut() {
            closed.len = self.current_len;
        }
        self.current_len = self.buf.len() as u64;
        self.synced_len = self.current_len;
        self.segments.push(SegmentInfo {
            seq,
            path,
            max_index: 0,
            len: 0,
        });
        Ok(())
    }

    /// A snapshot taken locally at `meta` is durable: removes the WAL
    /// segments and older snapshot files it makes unnecessary, but for the
    /// files of the snapshots at `being_sent` (followers still read them).
    pub fn compact(&mut self, meta: SnapshotMeta, being_sent: &[u64]) -> Result<(), StorageError> {
        self.check_usable()?;
        if meta.index <= self.snapshot_index {
            return Ok(());
        }
        self.snapshot_index = meta.index;
        // Segments wholly at or below the snapshot go, oldest first, never the current one.
        let older = self.segments.len().saturating_sub(1);
        let covered = self.segments[..older]
            .iter()
            .take_while(|s| s.max_index <= meta.index)
            .count();
        self.remove_segments(covered)?;
        self.remove_old_snapshots(being_sent)
    }

    /// A snapshot received from the leader is durable in its file: starts a
    /// new segment that says the log restarts after it (with `hard_state`,
    /// the one written with it, so a recovering mark is never behind the
    /// marker), then drops every older segment.
    pub fn install_snapshot(
        &mut self,
        meta: SnapshotMeta,
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        self.check_usable()?;
        if let Some(hs) = hard_state {
            self.hard_state = *hs;
        }
        self.snapshot_index = self.snapshot_index.max(meta.index);
        self.rotate(Some(meta))?;
        self.put_received_in_place(meta.index)?;
        let older = self.segments.len().saturating_sub(1);
        self.remove_segments(older)?;
        self.remove_old_snapshots(&[])
    }

    /// Renames the file of a snapshot received from a leader into place,
    /// now that its marker is durable (see `received_name`). A file already
    /// in place (a snapshot written here at that index) is kept; with
    /// neither, the marker names a snapshot this node does not have, and
    /// storage fails rather than go on.
    fn put_received_in_place(&self, index: u64) -> Result<(), StorageError> {
        let (received, in_place) = (
            received_path(&self.dir, index),
            snapshot_path(&self.dir, index),
        );
        match self.fs.rename(&received, &in_place) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return match self.fs.file_len(&in_place) {
                    Ok(_) => Ok(()),
                    Err(e) => Err(io_err("find the snapshot to install", &in_place)(e)),
                };
            }
            Err(e) => return Err(io_err("rename", &received)(e)),
        }
        self.fs
            .sync_dir(&self.dir)
            .map_err(io_err("sync directory", &self.dir))
    }

    fn remove_segments(&mut self, count: usize) -> Result<(), StorageError> {
        if count == 0 {
            return Ok(());
        }
        for seg in self.segments.drain(..count) {
            self.fs
                .remove(&seg.path)
                .map_err(io_err("remove", &seg.path))?;
        }
        self.fs
            .sync_dir(&self.dir)
            .map_err(io_err("sync directory", &self.dir))
    }

    /// Removes snapshot files but for the newest `snapshots_kept` and those
    /// at `being_sent`.
    fn remove_old_snapshots(&mut self, being_sent: &[u64]) -> Result<(), StorageError> {
        let names = self.fs.list(&self.dir).map_err(io_err("list", &self.dir))?;
        let listing = DirListing::from_names(&names);
        let old: Vec<String> = listing
            .snapshots
            .into_iter()
            .skip(self.opts.snapshots_kept.max(1))
            .filter(|index| !being_sent.contains(index))
            .map(snapshot_name)
            // A received snapshot at or below the one now in use is no
            // longer needed (one the core did not install, as it had caught
            // up by then); newer ones may still await their install.
            .chain(
                listing
                    .received
                    .into_iter()
                    .filter(|&index| index <= self.snapshot_index)
                    .map(received_name),
            )
            .collect();
        for name in &old {
            let path = self.dir.join(name);
            self.fs.remove(&path).map_err(io_err("remove", &path))?;
        }
        if !old.is_empty() {
            self.fs
                .sync_dir(&self.dir)
                .map_err(io_err("sync directory", &self.dir))?;
        }
        Ok(())
    }

    /// Bytes in the WAL's segment files (for status and metrics).
    pub fn wal_bytes(&self) -> u64 {
        let closed = self.segments.len().saturating_sub(1);
        let closed: u64 = self.segments.iter().take(closed).map(|s| s.len).sum();
        closed + self.current_len
    }

    /// Number of WAL segment files (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
