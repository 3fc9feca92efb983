//! A node's durable state in one directory: WAL segments and snapshots.
//!
//! ```text
//! wal-00000000000000000001.log   records (see kv_engine::storage::record)
//! wal-00000000000000000002.log   ... rotated at segment_size_bytes
//! snap-00000000000000012345.snap the state machine at index 12345
//! ```
//!
//! Rules:
//! - one `append` is one write and one fdatasync (group commit);
//! - each new segment starts with the current hard state, so dropping old
//!   segments never drops the hard state;
//! - a snapshot is written to a temp file, synced, renamed, and the
//!   directory synced; only then are the segments it covers removed;
//! - on open, a torn record at the very tail of the last segment is cut off;
//!   anything else that does not check out (a bad record followed by good
//!   ones, a missing segment, a contradiction) refuses to start, naming the
//!   file and offset.

use std::path::{Path, PathBuf};

use kv_engine::storage::record::{self, Record};
use kv_engine::storage::replay::ReplayedLog;
use kv_engine::storage::snapshot_file;
use kv_proto::raft::{Entry, HardState, Snapshot};

use crate::fs::{AppendFile, FileSystem};

/// Tuning of the storage layer.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// A segment is rotated once it grows past this.
    pub segment_size_bytes: u64,
    /// Snapshot files kept (the newest, plus older ones as fallbacks).
    pub snapshots_kept: usize,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            segment_size_bytes: 64 << 20,
            snapshots_kept: 2,
        }
    }
}

/// What `open` recovered.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The last hard state written.
    pub hard_state: HardState,
    /// The newest valid snapshot.
    pub snapshot: Option<Snapshot>,
    /// The durable entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
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
    /// Durable data is damaged or inconsistent; the node must not start.
    #[error("corrupt data in {file} at offset {offset}: {reason} (refusing to start; the data directory needs repair)")]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// Byte offset in it.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct SegmentInfo {
    seq: u64,
    path: PathBuf,
    /// Highest entry index written to it (0: none).
    max_index: u64,
}

/// The WAL and snapshots of one node.
pub struct Storage<F: FileSystem> {
    fs: F,
    dir: PathBuf,
    opts: StorageOptions,
    segments: Vec<SegmentInfo>,
    current: F::File,
    current_len: u64,
    hard_state: HardState,
    snapshot_index: u64,
    buf: Vec<u8>,
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn segment_name(seq: u64) -> String {
    format!("wal-{seq:020}.log")
}

fn snapshot_name(index: u64) -> String {
    format!("snap-{index:020}.snap")
}

fn parse_number(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

impl<F: FileSystem> Storage<F> {
    /// Opens (or creates) the data directory and recovers its state.
    pub fn open(
        fs: F,
        dir: &Path,
        opts: StorageOptions,
    ) -> Result<(Self, Recovered), StorageError> {
        fs.create_dir_all(dir)
            .map_err(io_err("create directory", dir))?;
        let names = fs.list(dir).map_err(io_err("list", dir))?;
        for tmp in names.iter().filter(|n| n.ends_with(".tmp")) {
            let path = dir.join(tmp);
            fs.remove(&path).map_err(io_err("remove", &path))?;
        }
        let snapshot = Self::newest_snapshot(&fs, dir, &names)?;
        let (snap_index, snap_term) = snapshot
            .as_ref()
            .and_then(|s| s.meta)
            .map_or((0, 0), |m| (m.index, m.term));

        let mut seqs: Vec<u64> = names
            .iter()
            .filter_map(|n| parse_number(n, "wal-", ".log"))
            .collect();
        seqs.sort_unstable();
        for pair in seqs.windows(2) {
            if pair[1] != pair[0] + 1 {
                return Err(StorageError::Corrupt {
                    file: dir.join(segment_name(pair[0] + 1)),
                    offset: 0,
                    reason: format!("segment missing between {} and {}", pair[0], pair[1]),
                });
            }
        }

        let mut log = ReplayedLog::new(snap_index, snap_term);
        let mut segments = Vec::new();
        let mut last_valid_len = 0;
        for (i, &seq) in seqs.iter().enumerate() {
            let path = dir.join(segment_name(seq));
            let bytes = fs.read(&path).map_err(io_err("read", &path))?;
            let segment = record::decode_segment(&bytes).map_err(|c| StorageError::Corrupt {
                file: path.clone(),
                offset: c.offset,
                reason: format!(
                    "{} followed by a valid record at offset {}",
                    c.reason, c.valid_after
                ),
            })?;
            let is_last = i + 1 == seqs.len();
            if let Some(reason) = &segment.torn {
                if !is_last {
                    return Err(StorageError::Corrupt {
                        file: path,
                        offset: segment.valid_len,
                        reason: format!("{reason} at the end of a segment that is not the last"),
                    });
                }
                tracing::warn!(file = %path.display(), offset = segment.valid_len, %reason, "cutting off a torn WAL tail");
            }
            let mut max_index = 0;
            for (offset, rec) in segment.records {
                if let Record::Snapshot(meta) = &rec {
                    if meta.index > snap_index {
                        return Err(StorageError::Corrupt {
                            file: path,
                            offset,
                            reason: format!(
                                "snapshot {} was installed but its file is missing",
                                meta.index
                            ),
                        });
                    }
                }
                if let Record::Entry(e) = &rec {
                    max_index = max_index.max(e.index);
                }
                log.apply(rec).map_err(|e| StorageError::Corrupt {
                    file: path.clone(),
                    offset,
                    reason: e.reason,
                })?;
            }
            if is_last {
                last_valid_len = segment.valid_len;
                if segment.torn.is_some() {
                    let mut f = fs.open_append(&path).map_err(io_err("open", &path))?;
                    f.truncate(segment.valid_len)
                        .map_err(io_err("truncate", &path))?;
                }
            }
            segments.push(SegmentInfo {
                seq,
                path,
                max_index,
            });
        }
        let last_file = segments
            .last()
            .map(|s| s.path.clone())
            .unwrap_or_else(|| dir.to_path_buf());
        let log = log.finish().map_err(|e| StorageError::Corrupt {
            file: last_file,
            offset: 0,
            reason: e.reason,
        })?;

        let current_path = match segments.last() {
            Some(s) => s.path.clone(),
            None => {
                let path = dir.join(segment_name(1));
                segments.push(SegmentInfo {
                    seq: 1,
                    path: path.clone(),
                    max_index: 0,
                });
                path
            }
        };
        let current = fs
            .open_append(&current_path)
            .map_err(io_err("open", &current_path))?;
        if seqs.is_empty() {
            fs.sync_dir(dir).map_err(io_err("sync directory", dir))?;
        }
        let recovered = Recovered {
            hard_state: log.hard_state,
            snapshot,
            entries: log.entries,
        };
        let storage = Storage {
            fs,
            dir: dir.to_path_buf(),
            opts,
            segments,
            current,
            current_len: last_valid_len,
            hard_state: recovered.hard_state,
            snapshot_index: snap_index,
            buf: Vec::with_capacity(64 * 1024),
        };
        Ok((storage, recovered))
    }

    /// The newest snapshot file that decodes; older ones are fallbacks.
    fn newest_snapshot(
        fs: &F,
        dir: &Path,
        names: &[String],
    ) -> Result<Option<Snapshot>, StorageError> {
        let mut indexes: Vec<u64> = names
            .iter()
            .filter_map(|n| parse_number(n, "snap-", ".snap"))
            .collect();
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        for index in indexes {
            let path = dir.join(snapshot_name(index));
            let bytes = fs.read(&path).map_err(io_err("read", &path))?;
            match snapshot_file::decode(&bytes) {
                Ok(s) if s.meta.is_some_and(|m| m.index == index) => return Ok(Some(s)),
                Ok(_) => {
                    tracing::error!(file = %path.display(), "snapshot index does not match its name; trying an older one")
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "invalid snapshot; trying an older one")
                }
            }
        }
        Ok(None)
    }

    /// Group commit: writes `entries` (replacing any stored suffix from the
    /// first one's index) and then `hard_state`, in one write and one fdatasync.
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
        if hard_state.is_none() && entries.is_empty() {
            return Ok(false);
        }
        debug_assert!(
            entries.windows(2).all(|w| w[1].index == w[0].index + 1),
            "entries are contiguous"
        );
        self.buf.clear();
        for e in entries {
            record::encode(&Record::Entry(e.clone()), &mut self.buf);
        }
        if let Some(hs) = hard_state {
            record::encode(&Record::HardState(*hs), &mut self.buf);
            self.hard_state = *hs;
        }
        let path = &self.segments[self.segments.len() - 1].path;
        self.current
            .append(&self.buf)
            .map_err(io_err("append", path))?;
        self.current_len += self.buf.len() as u64;
        if let (Some(last), Some(seg)) = (entries.last(), self.segments.last_mut()) {
            seg.max_index = seg.max_index.max(last.index);
        }
        Ok(true)
    }

    /// The second half of `append`: fdatasync, then rotate a full segment.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        let path = &self.segments[self.segments.len() - 1].path;
        self.current.sync().map_err(io_err("fdatasync", path))?;
        if self.current_len >= self.opts.segment_size_bytes {
            self.rotate(None)?;
        }
        Ok(())
    }

    /// Starts a new segment with the current hard state (and, after an
    /// installed snapshot, its marker first).
    fn rotate(&mut self, marker: Option<&Snapshot>) -> Result<(), StorageError> {
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let path = self.dir.join(segment_name(seq));
        let mut file = self
            .fs
            .open_append(&path)
            .map_err(io_err("create", &path))?;
        self.buf.clear();
        if let Some(meta) = marker.and_then(|s| s.meta) {
            record::encode(&Record::Snapshot(meta), &mut self.buf);
        }
        record::encode(&Record::HardState(self.hard_state), &mut self.buf);
        file.append(&self.buf).map_err(io_err("append", &path))?;
        file.sync().map_err(io_err("fdatasync", &path))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(io_err("sync directory", &self.dir))?;
        self.current = file;
        self.current_len = self.buf.len() as u64;
        self.segments.push(SegmentInfo {
            seq,
            path,
            max_index: 0,
        });
        Ok(())
    }

    /// Durably saves a snapshot taken locally, then removes the WAL
    /// segments and older snapshots it makes unnecessary.
    pub fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let Some(meta) = snapshot.meta else {
            return Ok(());
        };
        if meta.index <= self.snapshot_index {
            return Ok(());
        }
        self.write_snapshot_file(snapshot)?;
        self.snapshot_index = meta.index;
        // Segments wholly at or below the snapshot go, oldest first, never the current one.
        let covered = self.segments[..self.segments.len() - 1]
            .iter()
            .take_while(|s| s.max_index <= meta.index)
            .count();
        self.remove_segments(covered)?;
        self.remove_old_snapshots()
    }

    /// Installs a snapshot received from the leader: saves it, then starts a
    /// new segment that says the log restarts after it, then drops every
    /// older segment.
    pub fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let Some(meta) = snapshot.meta else {
            return Ok(());
        };
        self.write_snapshot_file(snapshot)?;
        self.snapshot_index = self.snapshot_index.max(meta.index);
        self.rotate(Some(snapshot))?;
        let older = self.segments.len() - 1;
        self.remove_segments(older)?;
        self.remove_old_snapshots()
    }

    fn write_snapshot_file(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let index = snapshot.meta.map_or(0, |m| m.index);
        let path = self.dir.join(snapshot_name(index));
        let tmp = self.dir.join(format!("{}.tmp", snapshot_name(index)));
        self.fs
            .write_synced(&tmp, &snapshot_file::encode(snapshot))
            .map_err(io_err("write", &tmp))?;
        self.fs
            .rename(&tmp, &path)
            .map_err(io_err("rename", &tmp))?;
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

    fn remove_old_snapshots(&mut self) -> Result<(), StorageError> {
        let names = self.fs.list(&self.dir).map_err(io_err("list", &self.dir))?;
        let mut indexes: Vec<u64> = names
            .iter()
            .filter_map(|n| parse_number(n, "snap-", ".snap"))
            .collect();
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        let old: Vec<u64> = indexes
            .into_iter()
            .skip(self.opts.snapshots_kept.max(1))
            .collect();
        for index in &old {
            let path = self.dir.join(snapshot_name(*index));
            self.fs.remove(&path).map_err(io_err("remove", &path))?;
        }
        if !old.is_empty() {
            self.fs
                .sync_dir(&self.dir)
                .map_err(io_err("sync directory", &self.dir))?;
        }
        Ok(())
    }

    /// Number of WAL segment files (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kv_proto::raft::SnapshotMeta;

    use super::*;
    use crate::fs::MemFs;

    fn dir() -> PathBuf {
        PathBuf::from("/data")
    }

    fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
        (from..=to)
            .map(|i| Entry {
                index: i,
                term,
                data: Bytes::from(format!("e{i}")),
            })
            .collect()
    }

    fn hs(term: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote: 1,
            commit,
        }
    }

    fn small() -> StorageOptions {
        StorageOptions {
            segment_size_bytes: 200,
            snapshots_kept: 2,
        }
    }

    fn open(fs: &MemFs) -> Result<(Storage<MemFs>, Recovered), StorageError> {
        Storage::open(fs.clone(), &dir(), small())
    }

    fn snapshot(index: u64, term: u64) -> Snapshot {
        Snapshot {
            meta: Some(SnapshotMeta { index, term }),
            data: Bytes::from(format!("state@{index}")),
        }
    }

    #[test]
    fn appends_survive_a_restart_and_rotate_segments() {
        let fs = MemFs::new();
        let (mut s, r) = open(&fs).unwrap();
        assert!(r.entries.is_empty());
        for i in 1..=30 {
            s.append(Some(&hs(1, i - 1)), &entries(i, i, 1)).unwrap();
        }
        assert!(s.segment_count() > 3, "segments rotate at 200 bytes");
        fs.crash(7);
        let (_, r) = open(&fs).unwrap();
        assert_eq!(r.entries.len(), 30);
        assert_eq!(r.hard_state, hs(1, 29));
    }

    #[test]
    fn an_overwritten_suffix_stays_overwritten_after_restart() {
        let fs = MemFs::new();
        let (mut s, _) = open(&fs).unwrap();
        s.append(Some(&hs(1, 0)), &entries(1, 5, 1)).unwrap();
        s.append(Some(&hs(2, 2)), &entries(3, 3, 2)).unwrap();
        let (_, r) = open(&fs).unwrap();
        assert_eq!(
            r.entries
                .iter()
                .map(|e| (e.index, e.term))
                .collect::<Vec<_>>(),
            vec![(1, 1), (2, 1), (3, 2)]
        );
    }

    #[test]
    fn a_crash_loses_only_unsynced_writes() {
        for seed in 0..50 {
            let fs = MemFs::new();
            let (mut s, _) = open(&fs).unwrap();
            s.append(Some(&hs(1, 0)), &entries(1, 3, 1)).unwrap();
            // A write that never reaches its fsync: append by hand.
            let path = dir().join(segment_name(1));
            let mut buf = Vec::new();
            record::encode(&Record::Entry(entries(4, 4, 1)[0].clone()), &mut buf);
            fs.open_append(&path).unwrap().append(&buf).unwrap();
            fs.crash(seed);
            let (mut s, r) = open(&fs).unwrap();
            // The synced entries survive; the unsynced one survives only whole.
            assert!(
                matches!(r.entries.len(), 3 | 4),
                "seed {seed}: {}",
                r.entries.len()
            );
            assert!(
                r.entries
                    .iter()
                    .enumerate()
                    .all(|(i, e)| e.index == i as u64 + 1),
                "seed {seed}"
            );
            // The torn tail was cut, so later appends decode cleanly.
            s.append(Some(&hs(1, 0)), &entries(4, 4, 1)).unwrap();
            assert_eq!(open(&fs).unwrap().1.entries.len(), 4, "seed {seed}");
        }
    }

    #[test]
    fn cutting_the_last_segment_at_every_byte_recovers_the_complete_records() {
        let fs = MemFs::new();
        let opts = StorageOptions {
            segment_size_bytes: 1 << 20,
            snapshots_kept: 2,
        };
        let (mut s, _) = Storage::open(fs.clone(), &dir(), opts.clone()).unwrap();
        let mut ends = Vec::new();
        for i in 1..=4 {
            s.append(None, &entries(i, i, 1)).unwrap();
            ends.push(fs.len(&dir().join(segment_name(1))).unwrap());
        }
        let path = dir().join(segment_name(1));
        let full = fs.read(&path).unwrap();
        for cut in 0..=full.len() {
            let copy = MemFs::new();
            copy.write_synced(&path, &full[..cut]).unwrap();
            copy.sync_dir(&dir()).unwrap();
            let (_, r) = Storage::open(copy, &dir(), opts.clone())
                .unwrap_or_else(|e| panic!("cut {cut}: {e}"));
            let complete = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(r.entries.len(), complete, "cut at {cut}");
        }
    }

    #[test]
    fn a_bad_record_in_the_middle_refuses_to_start_and_names_file_and_offset() {
        let fs = MemFs::new();
        let opts = StorageOptions {
            segment_size_bytes: 1 << 20,
            snapshots_kept: 2,
        };
        let (mut s, _) = Storage::open(fs.clone(), &dir(), opts.clone()).unwrap();
        for i in 1..=5 {
            s.append(Some(&hs(1, 0)), &entries(i, i, 1)).unwrap();
        }
        let path = dir().join(segment_name(1));
        fs.corrupt(&path, 30, 2).unwrap();
        let err = Storage::open(fs.clone(), &dir(), opts)
            .err()
            .expect("must refuse");
        let msg = err.to_string();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{msg}");
        assert!(
            msg.contains("wal-00000000000000000001.log") && msg.contains("offset"),
            "{msg}"
        );
    }

    #[test]
    fn a_missing_segment_refuses_to_start() {
        let fs = MemFs::new();
        let (mut s, _) = open(&fs).unwrap();
        for i in 1..=30 {
            s.append(Some(&hs(1, 0)), &entries(i, i, 1)).unwrap();
        }
        fs.remove(&dir().join(segment_name(2))).unwrap();
        fs.sync_dir(&dir()).unwrap();
        let err = open(&fs).err().expect("must refuse");
        assert!(err.to_string().contains("segment missing"), "{err}");
    }

    #[test]
    fn a_snapshot_compacts_covered_segments_and_restart_gives_the_same_state() {
        let fs = MemFs::new();
        let (mut s, _) = open(&fs).unwrap();
        for i in 1..=40 {
            s.append(Some(&hs(1, i)), &entries(i, i, 1)).unwrap();
        }
        let before = s.segment_count();
        s.save_snapshot(&snapshot(30, 1)).unwrap();
        assert!(s.segment_count() < before, "covered segments removed");
        let (_, r) = open(&fs).unwrap();
        assert_eq!(r.snapshot, Some(snapshot(30, 1)));
        assert_eq!(r.entries.first().map(|e| e.index), Some(31));
        assert_eq!(r.entries.last().map(|e| e.index), Some(40));
        assert_eq!(r.hard_state, hs(1, 40));
    }

    #[test]
    fn an_installed_snapshot_replaces_the_whole_log() {
        let fs = MemFs::new();
        let (mut s, _) = open(&fs).unwrap();
        s.append(Some(&hs(1, 2)), &entries(1, 10, 1)).unwrap();
        s.install_snapshot(&snapshot(50, 3)).unwrap();
        s.append(Some(&hs(3, 51)), &entries(51, 51, 3)).unwrap();
        let (_, r) = open(&fs).unwrap();
        assert_eq!(r.snapshot.and_then(|s| s.meta).map(|m| m.index), Some(50));
        assert_eq!(
            r.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![51]
        );
    }

    #[test]
    fn a_damaged_newest_snapshot_falls_back_only_if_the_wal_covers_the_gap() {
        let fs = MemFs::new();
        let (mut s, _) = open(&fs).unwrap();
        for i in 1..=40 {
            s.append(Some(&hs(1, i)), &entries(i, i, 1)).unwrap();
        }
        s.save_snapshot(&snapshot(10, 1)).unwrap();
        s.save_snapshot(&snapshot(35, 1)).unwrap();
        fs.corrupt(&dir().join(snapshot_name(35)), 40, 0).unwrap();
        // Segments up to 35 are gone, so the older snapshot at 10 cannot be
        // completed from the WAL: refuse.
        let err = open(&fs).err().expect("must refuse");
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
